"""Sortable, prefixed identifiers: TypeIDs (``ten_01h455vb4pex5vsknk084sn02q``) built on UUIDv7.

The suffix is the UUIDv7 in Crockford base32, so string order is creation order; keyset
pagination relies on that.
"""

from __future__ import annotations

from typing import NewType

import uuid_utils
from typeid.codecs import base32

TenantId = NewType("TenantId", str)
"""A tenant ID that the auth layer vouched for; repositories scope every query by one."""

PREFIXES = frozenset(
    {
        "ten",
        "inst",
        "rcr",
        "ckp",
        "dep",
        "rel",
        "chk",
        "dom",
        "rte",
        "cert",
        "aud",
        "key",
        "evt",
        "op",
        "idem",
        "req",
        "sec",
        "hcr",
        "tpl",
        "env",
        "run",
        "job",
        "whk",
        "whd",
        "drn",
        "node",
        "enr",
        "exec",
    }
)


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    # what ``str(TypeID(prefix=prefix))`` builds, without the object and without validating again a
    # prefix checked above: about a third off each call, and every request takes a request ID
    return f"{prefix}_{base32.encode(uuid_utils.uuid7().bytes)}"
