"""Secret values removed from text that came out of a container before ctrlplane stores or shows it.

A command health check's output, or an error a runtime reports, is whatever the container printed:
``env`` would print every secret. ``redact`` replaces each secret value, its base64 forms
(standard and URL-safe, padded or not) and its JSON string escapes (a structured log line holds
``\"`` for ``"``, ``\u00e9`` for ``é``), with ``[redacted]``. Values shorter than
``MIN_SECRET_LENGTH`` are left alone: redacting ``1`` or ``on`` would garble every message and
protect nothing.

``Redactor`` computes the spellings once, for many texts with the same secrets (every line of an
instance's log, ``secrets.service.InstanceRedactor``); ``redact`` is one text's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4


def forms(value: str) -> set[str]:
    """The spellings of ``value`` that are replaced: itself and its base64 encodings."""
    if len(value) < MIN_SECRET_LENGTH:
        return set()
    raw = value.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    escaped = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return {value} | encoded | {e.rstrip("=") for e in encoded} | escaped


class Redactor:
    """Replaces every spelling of ``secrets`` in a text, the longest first (a value that contains
    another is replaced whole)."""

    __slots__ = ("spellings",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self.spellings = tuple(sorted({form for secret in secrets for form in forms(secret)}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for spelling in self.spellings:
            if spelling in text:
                text = text.replace(spelling, REDACTED)
        return text


def redact(text: str, secrets: Iterable[str]) -> str:
    return Redactor(secrets)(text)
