"""Turn query strings and JSON bodies into typed requests, or errors that name the field."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from ..config import Limits
from ..types import FORBIDDEN_IN_IDS, RecommendationRequest


class RequestError(ValueError):
    """Bad input: ``status`` (4xx), the offending ``field`` and a human message."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


_INTEGER = re.compile(r"[0-9]{1,11}", re.ASCII)
_SURROGATE = re.compile("[\ud800-\udfff]")
#: ``FORBIDDEN_IN_IDS`` as the OpenAPI ``pattern`` of every id (lone surrogates cannot be
#: written in an ECMA-262 pattern without refusing every astral character: the schema's
#: descriptions say it).
ID_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
ID_RULE = "1-{} characters: no control characters (U+0000-U+001F, U+007F-U+009F) or lone " \
          "surrogates"


def check_text(value: Any, field: str, max_length: int) -> str:
    """Return ``value`` if it is a non-empty string of at most ``max_length`` characters
    without a control character or a lone surrogate (the OpenAPI :data:`ID_PATTERN`)."""
    if not isinstance(value, str):
        raise RequestError(field, "must be a string")
    if not value:
        raise RequestError(field, "must not be empty")
    if len(value) > max_length:
        raise RequestError(field, f"must be at most {max_length} characters")
    if FORBIDDEN_IN_IDS.search(value):  # percent-encoded surrogates fail as invalid UTF-8
        raise RequestError(field, "must not contain control characters, lone surrogates or "
                                  "bytes that are not UTF-8")
    return value


def check_id(value: Any, field: str, limits: Limits) -> str:
    """Return ``value`` as an id: a JSON string (numbers are refused, as the schema says) of
    1..``max_id_length`` characters (see :func:`check_text`)."""
    return check_text(value, field, limits.max_id_length)


#: An event's ``context``: a flat object of at most this many keys, and keys and string values
#: of at most this many characters (a bound, unlike a byte count, the OpenAPI schema states;
#: for keys only in its description: OpenAPI 3.0 has no ``propertyNames``). A recommendation
#: request's context is written with every impression of its answer, so all of it is bounded.
CONTEXT_MAX_KEYS = 16
CONTEXT_MAX_TEXT = 256
INT64_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what the event log's encoder (orjson) can write


def check_context(value: Any, field: str = "context") -> dict[str, Any]:
    """Return an event's ``context`` if it is a flat JSON object of at most
    :data:`CONTEXT_MAX_KEYS` keys of at most :data:`CONTEXT_MAX_TEXT` characters whose values
    are strings (at most :data:`CONTEXT_MAX_TEXT`
    characters), numbers in :data:`INT64_RANGE` (what the log's encoder writes as integers)
    or booleans; no lone surrogates."""
    if not isinstance(value, dict):
        raise RequestError(field, "must be an object")
    if len(value) > CONTEXT_MAX_KEYS:
        raise RequestError(field, f"must have at most {CONTEXT_MAX_KEYS} keys")
    for key, v in value.items():
        if _SURROGATE.search(key):
            raise RequestError(field, "keys must not contain lone surrogates")
        if len(key) > CONTEXT_MAX_TEXT:
            raise RequestError(field, f"keys must be at most {CONTEXT_MAX_TEXT} characters "
                                      f"(one has {len(key)})")
        if isinstance(v, str):
            if len(v) > CONTEXT_MAX_TEXT or _SURROGATE.search(v):
                raise RequestError(field, f"{key!r}: must be at most {CONTEXT_MAX_TEXT} "
                                          "characters without lone surrogates")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            if not INT64_RANGE[0] <= v <= INT64_RANGE[1]:  # also NaN and inf
                raise RequestError(field, f"{key!r}: numbers must be in "
                                          f"{INT64_RANGE[0]}..{INT64_RANGE[1]}")
        elif not isinstance(v, bool):
            raise RequestError(field, f"{key!r}: must be a string, a number or a boolean")
    return value


def check_no_surrogates(value: Any, field: str = "body") -> None:
    """Raise a 422 naming the path (``variants[0].name``) of the first string, key or
    value, in a parsed JSON ``value`` that holds a lone surrogate: a JSON ``\\ud800``
    escape parses to one, and text holding one cannot be encoded again (an answer, a
    metric label or a log line with it fails)."""
    stack: list[tuple[str, Any]] = [(field, value)]
    while stack:  # not recursive: json.loads takes nesting deeper than a recursive walk
        path, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise RequestError(path, "must not contain lone surrogates")
        elif isinstance(item, dict):
            for key, v in item.items():
                if _SURROGATE.search(key):
                    raise RequestError(path, "keys must not contain lone surrogates")
                stack.append((key if path == field else f"{path}.{key}", v))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))


_UTF8 = frozenset(("utf-8", "utf8"))


def require_json(headers: Mapping[str, str]) -> None:
    """Raise a 415 unless the request says its body is ``application/json``, in UTF-8 when
    it names a charset (JSON is UTF-8, RFC 8259: a ``charset=latin-1`` body was read as
    UTF-8 anyway)."""
    media, _, params = headers.get("content-type", "").partition(";")
    if media.strip().lower() != "application/json":
        raise RequestError("content-type", "must be application/json", status=415)
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if (name.strip().lower() == "charset"
                and value.strip().strip('"').lower() not in _UTF8):
            raise RequestError("content-type", "must be application/json in UTF-8 (a "
                                               "charset other than utf-8)", status=415)


def check_query_encoding(raw: bytes) -> None:
    """Raise a 422 naming the parameter whose percent-encoded bytes are not UTF-8 text.

    Starlette decodes them with replacement characters, so ``%FF%FE`` and ``%FE%FF`` would
    both become "\ufffd\ufffd", one user (#18); lone surrogates (``%ED%A0%80``) likewise.
    """
    if b"%" not in raw:
        return
    try:
        unquote_to_bytes(raw).decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    for part in raw.split(b"&"):
        name, _, value = part.partition(b"=")
        try:
            field = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8") or "query"
        except UnicodeDecodeError:
            raise RequestError("query", "parameter names must be UTF-8 text") from None
        try:
            unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(field, "must be UTF-8 text (percent-encoded bytes that are "
                                      "not UTF-8, or a surrogate)") from None


def check_path_encoding(scope: Mapping[str, Any], field: str, value: str) -> str:
    """Return the path parameter ``value``, or raise a 422 naming ``field`` when the raw path
    was not UTF-8 text (uvicorn decodes it with replacement characters)."""
    if "\ufffd" in value:
        try:
            unquote_to_bytes(scope.get("raw_path") or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(field, "must be UTF-8 text (percent-encoded bytes that are "
                                      "not UTF-8, or a surrogate)") from None
    return value


def query_value(params: Any, name: str) -> str | None:
    """The one value of the scalar query parameter ``name`` (``None`` when absent); a 422 when
    it is given more than once (``?n=5&n=7`` must not silently mean 7)."""
    values = params.getlist(name)
    if len(values) > 1:
        raise RequestError(name, "must be given once")
    return values[0] if values else None


def reject_unknown(names: Any, allowed: set[str] | frozenset[str], where: str = "query") -> None:
    """Raise a 422 naming the first of ``names`` not in ``allowed``; ``where`` (``query`` or
    ``body``) stands in for an empty name (``?=x``, ``{"": 1}``) or one with a lone
    surrogate, so the error names a field and can be written."""
    unknown = set(names) - allowed
    if unknown:
        what = "parameter" if where == "query" else "field"
        raise RequestError(field_name(sorted(unknown)[0], where), f"unknown {what}")


def field_name(name: str, fallback: str) -> str:
    """``name`` as the field an error names, or ``fallback`` for an empty one or one holding
    a lone surrogate (a JSON "\ud800" escape): that cannot be written back, and echoing it
    made the error answer itself fail with a 500."""
    return name if name and not _SURROGATE.search(name) else fallback


def check_n(value: Any, limits: Limits, field: str = "n", text: bool = False) -> int:
    """``n`` from a JSON integer, or with ``text`` from a query string's ASCII digits; a
    missing value (``None``) is the default. ``5.0``, ``"5"`` in JSON and ``true`` are
    refused: the schema says integer."""
    message = f"must be an integer in 1..{limits.n_max}"
    if value is None:
        return limits.n_default
    if text:
        # NOTE: ASCII digits only: str.isdigit() also passes "²" and "+-5", which int() refuses
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            raise RequestError(field, message)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, message)
    if not 1 <= value <= limits.n_max:
        raise RequestError(field, message)
    return value


def _id_list(value: Any, field: str, limit: int, limits: Limits) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(field, "must be a list of strings")
    if len(value) > limit:
        raise RequestError(field, f"must have at most {limit} entries")
    return tuple(check_id(v, f"{field}[{i}]", limits) for i, v in enumerate(value))


_REQUEST_IDS = itertools.count()
_PROCESS_PREFIX = [secrets.token_hex(8)]
os.register_at_fork(after_in_child=lambda: _PROCESS_PREFIX.__setitem__(0, secrets.token_hex(8)))


def new_request_id() -> str:
    """32 hex digits, unique per request: a random 64-bit prefix per process and a counter
    (a tenth of ``uuid4().hex``'s cost, which was 2.5% of a cached answer's CPU, #8)."""
    return f"{_PROCESS_PREFIX[0]}{next(_REQUEST_IDS):016x}"


def parse_query(params: Any, limits: Limits) -> RecommendationRequest:
    """Validate ``GET /recommendations?user_id=&n=&category=&exclude=&request_id=``
    (``params``: Starlette's ``QueryParams``, a multi-dict; the raw query string was checked
    by :func:`check_query_encoding`)."""
    reject_unknown(params, {"user_id", "n", "category", "exclude", "request_id"})
    user_id = query_value(params, "user_id")
    if user_id is None:
        raise RequestError("user_id", "is required")
    request_id = query_value(params, "request_id")
    exclude = params.getlist("exclude")
    categories = params.getlist("category")
    return RecommendationRequest(
        user_id=check_id(user_id, "user_id", limits),
        n=check_n(query_value(params, "n"), limits, text=True),
        exclude=_id_list(exclude, "exclude", limits.max_exclude, limits) if exclude else (),
        categories=(_id_list(categories, "category", limits.max_categories, limits)
                    if categories else ()),
        request_id=(new_request_id() if request_id is None
                    else check_id(request_id, "request_id", limits)),
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RequestError(field_name(key, "body"), "must be given once")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise RequestError("body", f"must be JSON ({name} is not a JSON value)", status=400)


def load_json(raw: bytes, expected: str = "a JSON object",
              pairs_hook: Callable[[list[tuple[str, Any]]], Any] = _unique_keys,
              constants: bool = False) -> Any:
    """Parse a request body as strict JSON: UTF-8 text (a leading byte order mark is
    skipped; other bytes are kept as lone surrogates, which :func:`check_text` refuses), no
    ``NaN``/``Infinity`` literals, and no key given twice in an object (a 422 naming it:
    ``{"user_id": "1", "user_id": "2"}`` must not silently mean user 2, as a repeated query
    parameter must not). Other failures are a 400: ``body`` "must be ``expected``".

    A batch that refuses bad items one by one passes its own ``pairs_hook`` (one that marks
    a repeated key instead of raising) and ``constants`` (NaN reaches the field's check)."""
    # NOTE: bytes that are not UTF-8 become lone surrogates (surrogateescape), which every
    # field's check refuses: the 422 then names the field that holds them
    text = raw.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    try:
        return json.loads(text, object_pairs_hook=pairs_hook,
                          parse_constant=None if constants else _no_constant)
    except RequestError:
        raise
    # NOTE: ValueError, not only JSONDecodeError: an integer literal of over 4300 digits
    # (sys.int_info.default_max_str_digits) raises a plain ValueError, which was a 500.
    except (ValueError, RecursionError):
        raise RequestError("body", f"must be {expected}", status=400) from None


_BODY_FIELDS = {"user_id", "n", "exclude", "categories", "context", "session_items",
                "request_id"}


def parse_body(raw: bytes, limits: Limits) -> RecommendationRequest:
    """Validate a ``POST /recommendations`` JSON body (size already bounded by middleware).

    A field that is given is checked against its type: ``null`` is not a value of any of
    them (leave the field out instead).
    """
    body = load_json(raw)
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object", status=400)
    reject_unknown(body, _BODY_FIELDS, where="body")
    session = (_id_list(body["session_items"], "session_items", limits.max_session_items,
                        limits) if "session_items" in body else ())
    if "user_id" not in body and not session:
        raise RequestError("user_id", "is required (or give session_items)")
    # NOTE: the same rules as an event's context: it is logged with every impression of the
    # answer, and a value the log's encoder refuses (a lone surrogate, an integer past
    # 64 bits, nesting) lost the impressions of every slate logged in the same batch
    context = check_context(body["context"]) if "context" in body else {}
    if "n" in body and body["n"] is None:
        raise RequestError("n", f"must be an integer in 1..{limits.n_max}")
    return RecommendationRequest(
        user_id=check_id(body["user_id"], "user_id", limits) if "user_id" in body else None,
        n=check_n(body.get("n"), limits),
        exclude=(_id_list(body["exclude"], "exclude", limits.max_exclude, limits)
                 if "exclude" in body else ()),
        categories=(_id_list(body["categories"], "categories", limits.max_categories, limits)
                    if "categories" in body else ()),
        session_items=session,
        context=context,
        request_id=(check_id(body["request_id"], "request_id", limits)
                    if "request_id" in body else new_request_id()),
    )
