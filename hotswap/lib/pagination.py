"""Page-number pagination with a client-chosen page size, capped."""

from rest_framework import pagination, serializers


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&page_size=M` (max 500)."""

    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        # DRF quietly falls back to the default on a bad page_size; the API refuses it, as it does any bad parameter.
        value = request.query_params.get(self.page_size_query_param)
        if value and not (value.isascii() and value.isdigit() and value.strip("0")):
            raise serializers.ValidationError({self.page_size_query_param: ["A whole number from 1 (at most "
                                                                            f"{self.max_page_size} are given)."]})
        return super().get_page_size(request)


def paginated_response(*, request, view, queryset, serializer_class):
    """Paginates a queryset with the view's paginator and serializes the page."""
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True, context={"request": request}).data)
