"""Optimistic concurrency: ``ETag`` and ``If-Match`` (RFC 9110 section 13.1.1).

A versioned resource's ETag is its ``version`` as a strong entity tag (``"7"``). The version counts
changes a client asked for (configuration and lifecycle), not observations the workers record
(``state``, ``endpoints``): two CI jobs racing to change an instance conflict; a job racing the
reconciler does not. ``If-Match`` holds ``*`` or a comma-separated list of entity tags; weak tags
(``W/"7"``) never match, as strong comparison requires.
"""

from __future__ import annotations

import re
from typing import Annotated

from litestar.params import HeaderParameter

from ctrlplane.errors import InvalidInput, PreconditionFailed

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=False,
        max_length=1024,
        description='Act only if the resource\'s current ETag is one of these ("*" for any); 412 otherwise',
    ),
]

_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')


def etag_of(version: int) -> str:
    return f'"{version}"'


def _tags(header: str) -> list[str]:
    tags = [tag.strip() for tag in header.split(",") if tag.strip()]
    if not tags or not all(tag == "*" or _ENTITY_TAG.fullmatch(tag) for tag in tags):
        raise InvalidInput('If-Match holds "*" or quoted entity tags such as "3"', details={"if_match": header[:200]})
    return tags


def require_version(if_match: str | None, *, resource: str, resource_id: str, version: int) -> None:
    """Raise ``PreconditionFailed`` unless ``if_match`` is absent, ``*`` or names ``version``."""
    if if_match is None:
        return
    tags = _tags(if_match)
    current = etag_of(version)
    if "*" in tags or current in tags:
        return
    raise PreconditionFailed(
        f"{resource} {resource_id} is at version {version}, not the one If-Match names; read it again",
        details={"etag": current, "if_match": if_match[:200]},
    )
