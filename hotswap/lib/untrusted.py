"""Untrusted input refused where it enters: text PostgreSQL cannot store and JSON nested too deep to walk.

One home for every way in: the check-in, the DRF parsers (JSON, form, multipart), JSON form fields
and the query string (hotswap/middleware.py) all call these, so no view checks a field by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

import orjson

from hotswap.exceptions import ApplicationError

# Deeper than any body HotSwap accepts (a check-in is 4 levels, a tensor schema about 6), far below
# where recursive code (json, DRF, Django's JSONField, PostgreSQL's jsonb) hits its own limits.
MAX_JSON_DEPTH = 32

UNSTORABLE_MESSAGE = "Contains a character that cannot be stored: NUL (\\u0000) or a lone UTF-16 surrogate."

# The JSON escapes that decode to NUL or to a surrogate (a valid pair matches too: the walk decides).
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# What too_deep keeps of a body: brackets, and quotes to tell which brackets sit inside strings.
_NOT_STRUCTURE = bytes(set(range(256)) - set(b'[]{}"'))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class InputRejected(ApplicationError):
    """Input refused before anything reads it: 400, with the fields named in details."""

    code = "VALIDATION_ERROR"


def printable(text: str) -> str:
    """The text with its unstorable characters spelled as escapes, safe to echo in an error or a log line."""
    if not unstorable(text):
        return text
    return "".join(f"\\u{ord(char):04x}" if char == "\x00" or "\ud800" <= char <= "\udfff" else char
                   for char in text)


def unstorable(text: str) -> bool:
    """Whether the text holds NUL (PostgreSQL text and jsonb refuse it) or a lone surrogate (no UTF-8 for it)."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def unstorable_items(items: Iterable[tuple[str, Iterable[Any]]]) -> list[dict[str, str]]:
    """Details naming each field of a form or query string (`QueryDict.lists()`) with an unstorable name or value."""
    return [{"field": printable(name), "message": UNSTORABLE_MESSAGE} for name, values in items
            if unstorable(name) or any(isinstance(value, str) and unstorable(value) for value in values)]


def too_deep(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON body nests arrays and objects deeper than max_depth (answered for valid JSON).

    Cheap enough for every check-in: a few passes of C over the bytes (about a tenth of json.loads'
    time on a 30 KB body) and one step per bracket outside strings.
    """
    if b"\\" in body:  # escaped backslashes, then escaped quotes, go: every quote left opens or closes a string
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = body.translate(None, _NOT_STRUCTURE)
    if structure.count(b"[") + structure.count(b"{") <= max_depth:
        return False
    brackets = b"".join(structure.split(b'"')[::2])  # what lies outside strings
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def json_parse(body: bytes | str, *, allow_nan: bool = False, max_depth: int = MAX_JSON_DEPTH,
               bounded_integers: bool = False) -> Any:
    """json.loads for a body from outside: UTF-8, at most max_depth deep, every string and key storable.

    Raises InputRejected: MALFORMED_REQUEST for what is not JSON or nests too deep, VALIDATION_ERROR
    naming each field that holds NUL or a lone surrogate. allow_nan lets NaN and ±Infinity through as
    floats, for callers that validate every number and name the bad ones.

    bounded_integers: the caller refuses every integer beyond 64 bits (the check-in bounds each one), so the
    body is parsed with orjson, three times faster than json, which reads such integers as floats. What
    orjson refuses (NaN, a lone surrogate, broken JSON) is parsed again by json, which then decides and words
    the error as it always does.
    """
    raw = body.encode(errors="surrogatepass") if isinstance(body, str) else body
    if too_deep(raw, max_depth=max_depth):
        raise _nested_too_deep(max_depth)
    if bounded_integers:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            return _storable(raw, data)
    try:
        # Strict UTF-8: json.loads would decode bytes with 'surrogatepass' and let encoded surrogates in.
        text = raw.decode()
        data = json.loads(text, parse_constant=None if allow_nan else _refuse_constant)
    except RecursionError:  # too_deep answers for valid JSON only; json.loads may meet deep garbage first
        raise _nested_too_deep(max_depth) from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise InputRejected(f"The body is not valid JSON: {exc}.", code="MALFORMED_REQUEST") from None
    return _storable(raw, data)


def _storable(raw: bytes, data: Any) -> Any:
    # A raw NUL is not valid JSON and strict UTF-8 has no surrogates: only escapes can bring them in.
    if b"\\u" in raw and _RISKY_ESCAPE.search(raw) and (details := unstorable_fields(data)):
        raise rejected(details)
    return data


def unstorable_fields(data: Any) -> list[dict[str, str]]:
    """Details naming each string or key in parsed JSON that cannot be stored, e.g. `metrics[3].model`."""
    details: list[dict[str, str]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if unstorable(value):
                details.append({"field": where, "message": UNSTORABLE_MESSAGE})
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{printable(key)}" if where else printable(key)
                if unstorable(key):
                    details.append({"field": path, "message": "Its name: " + UNSTORABLE_MESSAGE})
                stack.append((path, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{index}]", item) for index, item in enumerate(value))
    return sorted(details, key=lambda detail: detail["field"])


def rejected(details: list[dict[str, str]]) -> InputRejected:
    """The error for unstorable input, naming the fields."""
    named = ", ".join(d["field"] or "body" for d in details[:5]) + (
        f" (and {len(details) - 5} more)" if len(details) > 5 else "")
    return InputRejected(f"The request is invalid: {named}: {UNSTORABLE_MESSAGE}", details=details)


def _nested_too_deep(max_depth: int) -> InputRejected:
    return InputRejected(f"The JSON nests arrays and objects more than {max_depth} levels deep.",
                         code="MALFORMED_REQUEST")


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


class UntrustedJSONDecoder(json.JSONDecoder):
    """json_parse as a decoder class, for Django's forms.JSONField(decoder=...) (the console's JSON fields).

    Its refusals are JSONDecodeErrors, which the form shows as "Enter a valid JSON." instead of a 500.
    """

    def decode(self, s, _w=None):
        try:
            return json_parse(s)
        except InputRejected as exc:
            raise json.JSONDecodeError(exc.message, s if isinstance(s, str) else "", 0) from None
