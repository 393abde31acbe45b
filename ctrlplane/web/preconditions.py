"""Optimistic concurrency: ``ETag`` and ``If-Match`` (RFC 9110 section 13.1.1).

A versioned resource's ETag is its ``version`` as a strong entity tag (``"7"``). The version counts
changes a client asked for (configuration and lifecycle), not observations the workers record
(``state``, ``endpoints``): two CI jobs racing to change an instance conflict; a job racing the
reconciler does not. ``If-Match`` holds ``*`` or a comma-separated list of entity tags; weak tags
(``W/"7"``) never match, as strong comparison requires. A malformed ``If-Match`` names no version
and so is 412 as well: refusing is the safe reading of a precondition the server cannot parse
(ignoring it would apply the change unconditionally).
"""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

from litestar import Response
from litestar.datastructures import ResponseHeader
from litestar.params import HeaderParameter

from ctrlplane.errors import PreconditionFailed
from ctrlplane.web.json_response import JSONResponse

_TAG = r'(W/)?"[\x21\x23-\x7e]*"'
IF_MATCH_PATTERN = rf"^\s*(\*|{_TAG}(\s*,\s*{_TAG})*)\s*$"

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=False,
        max_length=1024,
        description='Act only if the resource\'s current ETag is one of these ("*" for any); 412 otherwise',
    ),
]

ETAG = ResponseHeader(
    name="ETag",
    documentation_only=True,
    description='The version of the resource as a strong entity tag, e.g. "3": send it as If-Match',
)
"""For ``response_headers=[ETAG]`` on every route answering with a versioned resource."""

_ONE_TAG = re.compile(rf"\*|{_TAG}")
T = TypeVar("T")


def etag_of(version: int) -> str:
    return f'"{version}"'


def tagged(body: T, version: int, status_code: int = 200) -> Response[T]:
    """``body`` with its ``ETag``."""
    return JSONResponse(body, status_code=status_code, headers={"ETag": etag_of(version)})


def _tags(header: str) -> list[str] | None:
    """The entity tags, or None for a value that is not ``*`` or a list of quoted tags."""
    if not re.fullmatch(IF_MATCH_PATTERN, header):
        return None
    return [match.group(0) for match in _ONE_TAG.finditer(header)]


def require_version(if_match: str | None, *, resource: str, resource_id: str, version: int) -> None:
    """Raise ``PreconditionFailed`` unless ``if_match`` is absent, ``*`` or names ``version``."""
    if if_match is None:
        return
    tags = _tags(if_match)
    current = etag_of(version)
    if tags is not None and ("*" in tags or current in tags):
        return
    if tags is None:
        raise PreconditionFailed(
            f'If-Match is neither "*" nor quoted entity tags such as "3", so it names no version of {resource} '
            f"{resource_id}; send its ETag",
            details={"etag": current, "if_match": if_match[:200]},
        )
    raise PreconditionFailed(
        f"{resource} {resource_id} is at version {version}, not the one If-Match names; read it again",
        details={"etag": current, "if_match": if_match[:200]},
    )


def require_existing(if_match: str | None, *, resource: str, resource_id: str) -> None:
    """Raise ``PreconditionFailed`` if ``if_match`` is given for a resource that does not exist yet:
    no entity tag (not even ``*``) matches a missing representation (RFC 9110 section 13.1.1)."""
    if if_match is not None:
        raise PreconditionFailed(
            f"{resource} {resource_id} does not exist, so If-Match names no version of it; "
            "send no If-Match to create it",
            details={"etag": None, "if_match": if_match[:200]},
        )
