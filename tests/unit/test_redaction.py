"""Secret values and their base64 forms are removed from container output."""

from __future__ import annotations

import base64
import json

from ctrlplane.redaction import REDACTED, redact


def test_exact_and_every_base64_form_are_redacted() -> None:
    secret = "p@ss/word+?"
    raw = secret.encode()
    forms = [
        secret,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
    ]
    for form in forms:
        assert redact(f"before {form} after", [secret]) == f"before {REDACTED} after"


def test_longer_secrets_are_redacted_before_the_shorter_ones_they_contain() -> None:
    assert redact("token=abcdefgh", ["abcd", "abcdefgh"]) == f"token={REDACTED}"


def test_very_short_values_are_left_alone() -> None:
    assert redact("exit 1: on", ["on", "1"]) == "exit 1: on"


def test_the_json_escapes_of_a_value_are_redacted_as_a_structured_log_line_holds_them() -> None:
    value = 'p"ss\\wörd-1234'
    line = json.dumps({"msg": f"dsn {value}"})  # {"msg": "dsn p\"ss\\w\u00f6rd-1234"}
    assert value not in line
    assert redact(line, [value]) == '{"msg": "dsn [redacted]"}'
    unicode_line = json.dumps({"msg": value}, ensure_ascii=False)
    assert redact(unicode_line, [value]) == '{"msg": "[redacted]"}'
