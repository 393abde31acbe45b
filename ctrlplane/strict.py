"""Request bodies validated strictly, with messages a client can act on.

Litestar converts a body with ``strict=False``: ``{"replicas": "2"}`` became 2, ``"false"`` a
boolean, ``"1e10"`` a time. ``check_body`` decodes every JSON body against its route's type with
``strict=True`` before the handler runs, and reports:

- the real field path (``resources.cpu_millis``, ``ports[0].container_port``; ``body`` for the
  whole document), never Litestar's ``data``;
- every missing required field at once, not only the first;
- a pattern in words (``PATTERN_WORDS``), never the regular expression.

The OTLP receiver is exempt: OTLP/JSON encodes 64-bit integers as strings by specification.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi
from litestar.params import (
    CookieParameter,
    DependencyKwarg,
    HeaderParameter,
    ParameterKwarg,
    PathParameter,
    QueryParameter,
)

from ctrlplane.errors import InvalidInput

PATTERN_WORDS: dict[str, str] = {
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$": (
        "a DNS label: 1 to 63 lowercase letters, digits or hyphens, starting and ending with a letter or digit"
    ),
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$": (
        "1 to 63 letters, digits, dots, underscores or hyphens, starting and ending with a letter or digit"
    ),
    r"^[A-Za-z_][A-Za-z0-9_]*$": (
        "an environment variable name: letters, digits and underscores, not starting with a digit"
    ),
    r"^(?!ctrlplane\.)[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$": (
        "a label key: letters, digits, dots, underscores, slashes or hyphens, starting and ending with a letter "
        "or digit, not starting with ctrlplane."
    ),
    r"^[0-9a-fA-F]{4,64}$": "4 to 64 hexadecimal digits",
    r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?$": (
        "a registry host as image references name it: letters, digits, dots and hyphens, optionally :port"
    ),
    r"^[0-9]{1,19}$": "1 to 19 decimal digits",
}
_IMAGE_WORDS = "an image reference: [registry[:port]/]name[:tag][@sha256:digest], name in lowercase"
_REGEX_MESSAGE = re.compile(r"Expected `str` matching regex '(?P<pattern>.*)'", re.DOTALL)
_LOCATION = re.compile(r" - at (?P<key>`key` in )?`(?P<path>\$[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def in_words(message: str) -> str:
    """``message`` with a regular expression replaced by what it means."""
    match = _REGEX_MESSAGE.search(message)
    if match is None:
        return message
    pattern = match.group("pattern")
    words = PATTERN_WORDS.get(pattern) or (_IMAGE_WORDS if "sha256" in pattern else "a value of the required form")
    return message[: match.start()] + f"Expected {words}" + message[match.end() :]


def _path(raw: str) -> str:
    path = raw.removeprefix("$").removeprefix(".")
    return path or "body"


def _joined(path: str, name: str) -> str:
    return name if path == "body" else f"{path}.{name}"


@cache
def _info(body_type: Any) -> mi.Type:
    return mi.type_info(body_type)


def _missing(document: Any, info: mi.Type, path: str, found: list[str]) -> None:
    """Every required field absent from ``document``, recursively, as field paths."""
    if isinstance(info, mi.Metadata):
        _missing(document, info.type, path, found)
    elif isinstance(info, mi.UnionType):
        for option in info.types:
            if isinstance(option, mi.StructType | mi.Metadata) and isinstance(document, dict):
                _missing(document, option, path, found)
                return
    elif isinstance(info, mi.StructType) and isinstance(document, dict):
        for field in info.fields:
            if field.encode_name not in document:
                if field.required:
                    found.append(_joined(path, field.encode_name))
            else:
                _missing(document[field.encode_name], field.type, _joined(path, field.encode_name), found)
    elif isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType) and isinstance(document, list):
        for index, item in enumerate(document):
            _missing(item, info.item_type, f"{path}[{index}]", found)
    elif isinstance(info, mi.DictType) and isinstance(document, dict):
        for key, value in document.items():
            _missing(value, info.value_type, _joined(path, str(key)), found)


def check_body(body: bytes, body_type: Any) -> None:
    """400 naming every offending field when ``body`` is not a strictly valid ``body_type``.
    Malformed JSON is left to the framework's own 400."""
    if not body.strip():
        return
    try:
        msgspec.json.decode(body, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        fields = _fields(body, body_type, str(exc))
    except msgspec.DecodeError:
        return
    else:
        return
    message = "invalid request: " + "; ".join(f"{f['key']}: {f['message']}" for f in fields)
    raise InvalidInput(message, details={"fields": fields})


def _fields(body: bytes, body_type: Any, error: str) -> list[dict[str, str]]:
    location = _LOCATION.search(error)
    text = error[: location.start()] if location else error
    path = _path(location.group("path")) if location else "body"
    fields: list[dict[str, str]] = []
    if _MISSING.match(text) is None:
        prefix = "a key in it: " if location and location.group("key") else ""
        fields.append({"key": path, "message": prefix + in_words(text), "source": "body"})
    missing: list[str] = []
    with contextlib.suppress(msgspec.DecodeError):
        _missing(msgspec.json.decode(body), _info(body_type), "body", missing)
    fields.extend({"key": name, "message": "required field is missing", "source": "body"} for name in missing)
    return fields or [{"key": path, "message": in_words(text), "source": "body"}]


def body_type_of(handler: Any) -> Any | None:
    """The type a route handler's ``data`` parameter declares, or None for a route without a body."""
    parameter = handler.parsed_fn_signature.parameters.get("data")
    return None if parameter is None else parameter.annotation


_RESERVED = frozenset({"request", "state", "scope", "headers", "cookies", "query", "socket", "data", "body"})


@cache
def _query_names(handler: Any) -> frozenset[str]:
    names: set[str] = set()
    dependencies = set(handler.resolve_dependencies())
    for name, parameter in handler.parsed_fn_signature.parameters.items():
        if name in _RESERVED or name in dependencies:
            continue
        definition = parameter.kwarg_definition
        if isinstance(definition, HeaderParameter | CookieParameter | PathParameter | DependencyKwarg):
            continue
        if isinstance(definition, ParameterKwarg) and (definition.header or definition.cookie):
            continue
        alias = getattr(definition, "name", None) if isinstance(definition, QueryParameter) else None
        names.add(alias or getattr(definition, "query", None) or name)
    return frozenset(names)


def check_query(handler: Any, query: Iterable[str], path_params: Iterable[str]) -> None:
    """400 naming the query parameters a read route does not declare: a misspelt filter (or an
    admin's ``tenant_id`` on a route that has none) silently ignored would answer another question."""
    unknown = sorted(set(query) - _query_names(handler) - set(path_params))
    if unknown:
        shown = [name[:64] for name in unknown[:10]]
        allowed = sorted(_query_names(handler) - set(path_params))
        raise InvalidInput(
            f"unknown query parameter(s): {', '.join(shown)}; this route takes "
            + (", ".join(allowed) if allowed else "none"),
            details={
                "fields": [{"key": name, "message": "unknown query parameter", "source": "query"} for name in shown]
            },
        )
