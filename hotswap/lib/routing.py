"""One URL served by one APIView per HTTP method, so GET and POST on a collection stay separate operations."""

from collections.abc import Callable

from rest_framework.views import APIView


def method_router(name: str, **views: type[APIView]) -> Callable:
    """A view for one path that hands each request to the operation view for its method.

    `method_router("ApiTokens", get=ApiTokenListApi, post=ApiTokenCreateApi)`. Each operation
    keeps its own serializers, permissions and throttles; OpenAPI sees every operation's
    `extend_schema`. Other methods get 405 in the standard error shape.
    """
    callbacks = {method.upper(): view.as_view() for method, view in views.items()}
    if "GET" in callbacks:
        callbacks.setdefault("HEAD", callbacks["GET"])
    # OPTIONS is answered by the first operation, with its own permission check.
    callbacks.setdefault("OPTIONS", next(iter(callbacks.values())))
    allow = ", ".join(callbacks)

    class Router(APIView):
        """Dispatches to the operation view registered for the request's method."""

        # Only methods that no operation handles reach APIView's own dispatch, which answers 405.
        permission_classes = ()
        # The schema generator documents each operation with its own view's permissions and throttles.
        operations = {method.upper(): view for method, view in views.items()}

        def dispatch(self, request, *args, **kwargs):
            callback = callbacks.get(request.method or "")
            if callback is None:
                return super().dispatch(request, *args, **kwargs)
            response = callback(request, *args, **kwargs)
            if response.has_header("Allow"):  # the operation view knows only its own method
                response["Allow"] = allow
            return response

    for method, view in views.items():
        # The schema generator reads each method's annotations (extend_schema) from here.
        setattr(Router, method.lower(), getattr(view, method.lower()))
    Router.__name__ = Router.__qualname__ = name
    return Router.as_view()
