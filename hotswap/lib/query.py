"""Query-string filters: an empty value is no filter, as the OpenAPI document says (`allowEmptyValue`)."""

from django.http import QueryDict


def query_filters(query_params: QueryDict) -> QueryDict:
    """`query_params` without empty values: `?status=&status=active` filters on active, `?status=` on nothing."""
    filters = QueryDict(mutable=True)
    for name, values in query_params.lists():
        if present := [value for value in values if value != ""]:
            filters.setlist(name, present)
    return filters
