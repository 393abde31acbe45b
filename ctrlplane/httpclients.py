"""HTTP clients that are cheap to build, for the calls ctrlplane makes to what runs beside it: the
replicas' published ports (health probes, deploy gates, the router's and the wake listener's
probes) and Caddy's admin API; and the TLS settings of the CLI's client.

httpx builds a TLS context for every client it makes (loading a CA bundle): 20 to 90 ms of CPU each
on the 2-core machine, paid by every health probe, router push and deploy gate that built a client
of its own, whether or not it ever spoke TLS. These clients share one context, built once with
httpx's own defaults, so what they verify is unchanged.
"""

from __future__ import annotations

import functools
import http.cookiejar
import ssl
from typing import Any

import httpx


@functools.cache
def _tls() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def verify_for(base_url: str) -> ssl.SSLContext | bool:
    """What a client of ``base_url`` verifies with. A plain ``http://`` server needs no CA bundle: it
    gets a context that trusts nothing (a TLS connection it is somehow sent to fails, closed), which
    costs a fraction of a millisecond instead of the bundle's load (for the CLI, once per command)."""
    if base_url.lower().startswith("http://"):
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return True


def _no_cookies() -> http.cookiejar.CookieJar:
    """A jar that accepts no cookie: a client that serves many requests (the wake listener's proxies
    requests of every instance and user) must never carry one app's ``Set-Cookie`` into the next
    request, to that app or another (cookies ignore ports: every replica is 127.0.0.1)."""
    return http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def client(*, local: bool = True, **options: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` with the shared TLS context that keeps no cookies. ``local``: the
    target is on this machine (a replica's port), so no proxy from the environment applies."""
    return httpx.AsyncClient(verify=_tls(), trust_env=not local, cookies=_no_cookies(), **options)
