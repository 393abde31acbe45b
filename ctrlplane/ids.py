"""Sortable, prefixed identifiers: TypeIDs (``ten_01h455vb4pex5vsknk084sn02q``) built on UUIDv7.

The suffix is the UUIDv7 in Crockford base32, so string order is creation order; keyset
pagination relies on that.
"""

from __future__ import annotations

from typing import NewType

from typeid import TypeID

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
    return str(TypeID(prefix=prefix))
