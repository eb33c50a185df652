"""DRF parsers (and a JSON form field) refusing text PostgreSQL cannot store and JSON nested too deep."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.serializers import JSONField as DrfJSONField
from rest_framework.serializers import ValidationError

from hotswap.lib.untrusted import InputRejected, json_parse, rejected, unstorable_items


class JSONParser(parsers.JSONParser):
    """JSON bodies: UTF-8, at most MAX_JSON_DEPTH deep, no NaN, no NUL or lone surrogate in any string."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        return json_parse(stream.read())


class MultiPartParser(parsers.MultiPartParser):
    """Multipart forms whose field names, values and file names can all be stored.

    (URL-encoded forms are checked by hotswap.middleware.UnstorableInputMiddleware, for the console too.)
    """

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        names = [(name, [upload.name or "" for upload in uploads]) for name, uploads in parsed.files.lists()]
        if details := unstorable_items(parsed.data.lists()) + unstorable_items(names):
            raise rejected(details)
        return parsed


class JSONField(DrfJSONField):
    """A serializer JSONField whose text (binary=True, e.g. a multipart field) is parsed like a JSON body."""

    def to_internal_value(self, data):
        if not self.binary:
            return super().to_internal_value(data)
        try:
            return json_parse(data)
        except InputRejected as exc:
            raise ValidationError([detail["message"] for detail in exc.details] or [exc.message]) from None
