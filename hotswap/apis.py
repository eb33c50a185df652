"""The API root: where a person or a client starts (the schema, the docs and the main collections)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

# Link name -> (URL name, what it is): the documents, then the collections an operator or CI starts from.
LINKS = {
    "schema": ("schema", "The OpenAPI 3 document."),
    "docs": ("api-docs", "Swagger UI."),
    "auth_token": ("auth-token-obtain", "POST a username and password: a JWT pair."),
    "me": ("auth-me", "Who the caller is."),
    "models": ("model-collection", "Model versions: list, upload."),
    "devices": ("device-collection", "The fleet: list, pre-register."),
    "distributions": ("distribution-collection", "Rollouts: list, create."),
    "enrollment_keys": ("enrollment-keys", "Keys devices enroll with."),
    "tokens": ("api-tokens", "API tokens for CI."),
}

ApiRootLinksSerializer = type("ApiRootLinksSerializer", (serializers.Serializer,), {
    "__doc__": "Absolute URLs.",
    **{name: serializers.URLField(help_text=help_text) for name, (_url_name, help_text) in LINKS.items()},
})


class ApiRootApi(APIView):
    """Links to the OpenAPI schema, Swagger UI and the main collections; open to everyone."""

    # Only links: nothing here needs an identity, and a new user's first request has none.
    authentication_classes: list = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        name = serializers.CharField()
        version = serializers.CharField()
        links = ApiRootLinksSerializer()

    @extend_schema(tags=["api"], summary="API root",
                   description="Open to everyone. Links to the OpenAPI schema (`schema`), Swagger UI (`docs`), "
                               "login, who-am-I, and the main collections; every other operation needs a JWT or an "
                               "API token.",
                   responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        links = {name: reverse(url_name, request=request) for name, (url_name, _help) in LINKS.items()}
        return Response(self.OutputSerializer({"name": settings.SPECTACULAR_SETTINGS["TITLE"],
                                               "version": settings.SPECTACULAR_SETTINGS["VERSION"],
                                               "links": links}).data)
