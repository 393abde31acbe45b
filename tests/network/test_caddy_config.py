"""The router's configuration is a pure function of the database's state: what it makes of each
kind of state."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from ctrlplane.network.caddy import (
    DRAINING_HOST,
    Challenge,
    LoadedCertificate,
    RouterOptions,
    RouterState,
    RouteRule,
    Site,
    UpstreamTarget,
    caddy_config,
    weighted_sequence,
)

OPTIONS = RouterOptions(admin_address="127.0.0.1:2999", http_listen="127.0.0.1:8001", https_listen="127.0.0.1:8002")


def site(**overrides: Any) -> Site:
    values: dict[str, Any] = {
        "instance_id": "inst_1",
        "hostnames": ("web.acme.localhost",),
        "https_hostnames": (),
        "ports": (8080,),
        "routes": (),
        "upstreams": (UpstreamTarget(8080, "127.0.0.1:40001"), UpstreamTarget(8080, "127.0.0.1:40002")),
    }
    return Site(**{**values, **overrides})


def subroutes(config: dict[str, Any], server: str = "ctrlplane_http") -> list[dict[str, Any]]:
    routes = config["apps"]["http"]["servers"][server]["routes"]
    [host_route] = [r for r in routes if r.get("match", [{}])[0].get("host") and "subroute" in str(r)]
    return list(host_route["handle"][0]["routes"])


def dials(handler: dict[str, Any]) -> list[str]:
    return [u["dial"] for u in handler["upstreams"]]


def test_an_instance_without_routes_gets_its_default_hostname_to_its_first_port_on_every_replica() -> None:
    config = caddy_config(RouterState(sites=(site(),)), OPTIONS)
    server = config["apps"]["http"]["servers"]["ctrlplane_http"]
    assert server["listen"] == ["127.0.0.1:8001"]
    assert server["automatic_https"] == {"disable": True}
    assert server["routes"][0]["match"] == [{"host": ["web.acme.localhost"]}]
    [default] = subroutes(config)
    assert "match" not in default
    proxy = default["handle"][-1]
    assert proxy["handler"] == "reverse_proxy"
    assert sorted(dials(proxy)) == ["127.0.0.1:40001", "127.0.0.1:40002"]
    assert proxy["load_balancing"]["try_duration"] == "5s"
    assert proxy["health_checks"]["passive"] == {"fail_duration": "5s", "max_fails": 1}
    assert server["routes"][-1]["handle"][0]["status_code"] == 404
    assert config["admin"] == {"listen": "127.0.0.1:2999", "config": {"persist": False}}
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    assert "ctrlplane_https" not in config["apps"]["http"]["servers"]


def test_an_instance_with_nothing_serving_answers_503() -> None:
    config = caddy_config(RouterState(sites=(site(upstreams=()),)), OPTIONS)
    [default] = subroutes(config)
    assert default["handle"][0]["status_code"] == 503


def test_routes_longest_path_first_with_strip_prefix_and_same_path_weights() -> None:
    upstreams = (
        UpstreamTarget(8080, "127.0.0.1:1"),
        UpstreamTarget(8081, "127.0.0.1:2"),
        UpstreamTarget(8082, "127.0.0.1:3"),
    )
    routes = (
        RouteRule(path="/api", port=8081, weight=25, strip_prefix=True),
        RouteRule(path="/api", port=8082, weight=75, strip_prefix=True),
        RouteRule(path="/api/v2", port=8080, weight=100, strip_prefix=False),
    )
    config = caddy_config(
        RouterState(sites=(site(upstreams=upstreams, routes=routes, ports=(8080, 8081, 8082)),)), OPTIONS
    )
    v2, api, default = subroutes(config)
    assert v2["match"] == [{"path": ["/api/v2", "/api/v2/*"]}]
    assert [h["handler"] for h in v2["handle"]] == ["reverse_proxy"]
    assert api["match"] == [{"path": ["/api", "/api/*"]}]
    assert api["handle"][0] == {"handler": "rewrite", "strip_path_prefix": "/api"}
    assert Counter(dials(api["handle"][1])) == {"127.0.0.1:2": 1, "127.0.0.1:3": 3}
    assert dials(default["handle"][0]) == ["127.0.0.1:1"]


def test_a_route_with_weight_zero_gets_nothing() -> None:
    routes = (RouteRule(path="/", port=8080, weight=0, strip_prefix=False),)
    config = caddy_config(RouterState(sites=(site(routes=routes),)), OPTIONS)
    [default] = subroutes(config)
    assert default["handle"][0]["status_code"] == 503


def test_upstream_weights_give_the_canary_its_share() -> None:
    upstreams = (
        UpstreamTarget(8080, "127.0.0.1:1", weight=90),
        UpstreamTarget(8080, "127.0.0.1:2", weight=90),
        UpstreamTarget(8080, "127.0.0.1:3", weight=20),
    )
    config = caddy_config(RouterState(sites=(site(upstreams=upstreams),)), OPTIONS)
    [default] = subroutes(config)
    counts = Counter(dials(default["handle"][0]))
    assert counts["127.0.0.1:3"] / sum(counts.values()) == 0.1


def test_weighted_sequence_is_exact_small_and_interleaved() -> None:
    sequence = weighted_sequence([("a", Fraction(1, 3)), ("b", Fraction(2, 3)), ("c", Fraction(0))])
    assert Counter(sequence) == {"a": 1, "b": 2}
    assert sequence[0] != sequence[1] or sequence[1] != sequence[2]
    many = weighted_sequence([("a", Fraction(1, 97)), ("b", Fraction(96, 97))])
    assert len(many) <= 100 and set(many) == {"a", "b"}
    assert weighted_sequence([]) == []


def test_acme_challenges_are_answered_before_any_site_and_certificates_enable_https() -> None:
    state = RouterState(
        sites=(site(hostnames=("web.acme.localhost", "app.example.com"), https_hostnames=("app.example.com",)),),
        challenges=(Challenge(hostname="app.example.com", token="tok", validation="tok.thumb"),),
        certificates=(LoadedCertificate(hostname="app.example.com", chain_pem="CHAIN", key_pem="KEY"),),
    )
    config = caddy_config(state, OPTIONS)
    first = config["apps"]["http"]["servers"]["ctrlplane_http"]["routes"][0]
    assert first["match"] == [{"host": ["app.example.com"], "path": ["/.well-known/acme-challenge/tok"]}]
    assert first["handle"][0]["body"] == "tok.thumb"
    https = config["apps"]["http"]["servers"]["ctrlplane_https"]
    assert https["listen"] == ["127.0.0.1:8002"]
    assert https["automatic_https"] == {"disable": True}
    assert https["routes"][0]["match"] == [{"host": ["app.example.com"]}]
    assert config["apps"]["tls"]["certificates"]["load_pem"] == [
        {"certificate": "CHAIN", "key": "KEY", "tags": ["app.example.com"]}
    ]


def test_draining_upstreams_sit_behind_the_catch_all_where_no_request_reaches_them() -> None:
    """A withdrawn upstream stays named in the configuration while it drains (so Caddy keeps
    counting its requests in flight), in a route after the 404 catch-all: it gets no new request."""
    config = caddy_config(RouterState(sites=(site(),), draining=("127.0.0.1:40009", "127.0.0.1:40003")), OPTIONS)
    routes = config["apps"]["http"]["servers"]["ctrlplane_http"]["routes"]
    *_, catch_all, draining = routes
    assert "match" not in catch_all and catch_all["handle"][0]["status_code"] == 404
    assert draining["match"] == [{"host": [DRAINING_HOST]}]
    assert dials(draining["handle"][0]) == ["127.0.0.1:40003", "127.0.0.1:40009"]
    assert "127.0.0.1:40009" not in str(subroutes(config))
    without = caddy_config(RouterState(sites=(site(),)), OPTIONS)
    assert "match" not in without["apps"]["http"]["servers"]["ctrlplane_http"]["routes"][-1]
