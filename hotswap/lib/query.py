"""Query-string filters: an empty value is no filter, as the OpenAPI document says (`allowEmptyValue`)."""

from django.http import QueryDict
from rest_framework import serializers


def query_filters(query_params: QueryDict) -> QueryDict:
    """`query_params` without empty values: `?status=&status=active` filters on active, `?status=` on nothing."""
    filters = QueryDict(mutable=True)
    for name, values in query_params.lists():
        if present := [value for value in values if value != ""]:
            filters.setlist(name, present)
    return filters


def query_flag(query_params: QueryDict, name: str) -> bool:
    """A boolean query parameter: true/false (or 1/0, yes/no); absent or empty is false; anything else a 400."""
    value = query_params.get(name, "")
    if value == "":
        return False
    try:
        return serializers.BooleanField().to_internal_value(value)
    except serializers.ValidationError:
        raise serializers.ValidationError({name: ["Must be true or false."]}) from None
