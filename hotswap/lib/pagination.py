"""Page-number pagination with a client-chosen page size, capped."""

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """`?page=N&page_size=M` (max 500)."""

    page_size_query_param = "page_size"
    max_page_size = 500


def paginated_response(*, request, view, queryset, serializer_class):
    """Paginates a queryset with the view's paginator and serializes the page."""
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer_class(page, many=True, context={"request": request}).data)
