"""The router's access log, parsed and aggregated; quantiles from latency buckets; the Caddy
configuration of the sink and of a sleeping instance's wake route; request series and rollups."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ctrlplane.network import requests
from ctrlplane.network.access import (
    DURATION_BUCKETS,
    Destination,
    HostTable,
    RequestBook,
    parse_line,
    quantile,
    route_of,
    status_class,
)
from ctrlplane.network.caddy import (
    ACCESS_LOGGER,
    RouterOptions,
    RouterState,
    Site,
    UpstreamTarget,
    caddy_config,
    wake_token,
)
from ctrlplane.network.models import HttpRequestSample


def line(**overrides: object) -> bytes:
    entry: dict[str, object] = {
        "level": "info",
        "ts": 1796403233.5,
        "logger": "http.log.access.ctrlplane_access",
        "msg": "handled request",
        "request": {
            "method": "POST",
            "host": "Web.Acme.localhost:8080",
            "uri": "/api/items?page=2",
            "headers": {"Content-Length": ["42"]},
        },
        "duration": 0.0123,
        "size": 512,
        "status": 201,
    }
    entry.update(overrides)
    return json.dumps(entry).encode() + b"\n"


def test_an_access_log_line_becomes_a_record() -> None:
    record = parse_line(line())
    assert record is not None
    assert record.host == "web.acme.localhost" and record.method == "POST" and record.path == "/api/items"
    assert record.status == 201 and record.duration_seconds == 0.0123
    assert record.request_bytes == 42 and record.response_bytes == 512 and record.at == 1796403233.5


# Real access-log lines (a chunked POST of 19 bytes, then a POST of 12 with Content-Length) through
# a reverse proxy, as Debian's Caddy 2.6.2 and as the Caddy tools/caddy/build.sh builds (2.11.9) wrote them.
CADDY_2_6_CHUNKED = (
    b'{"level":"info","ts":1796533338.2793877,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"52818","proto":"HTTP/1.1","method":"POST",'
    b'"host":"web.example.localhost","uri":"/upload","headers":{"User-Agent":["curl/7.88.1"],"Accept":["*/*"],'
    b'"Content-Type":["application/x-www-form-urlencoded"]}},"user_id":"","duration":0.124796385,"size":2,'
    b'"status":200,"resp_headers":{"Server":["Caddy","BaseHTTP/0.6 Python/3.11.7"],'
    b'"Date":["Sun, 06 Dec 2026 05:02:18 GMT"],"Content-Length":["2"]}}\n'
)
CADDY_2_6_LENGTH = (
    b'{"level":"info","ts":1796533338.3862047,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"52824","proto":"HTTP/1.1","method":"POST",'
    b'"host":"web.example.localhost","uri":"/form","headers":{"Accept":["*/*"],"Content-Length":["12"],'
    b'"Content-Type":["application/x-www-form-urlencoded"],"User-Agent":["curl/7.88.1"]}},"user_id":"",'
    b'"duration":0.004009455,"size":2,"status":200,"resp_headers":{"Date":["Sun, 06 Dec 2026 05:02:18 GMT"],'
    b'"Content-Length":["2"],"Server":["Caddy","BaseHTTP/0.6 Python/3.11.7"]}}\n'
)
CADDY_2_11_CHUNKED = (
    b'{"level":"info","ts":1796533338.4164,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"51322","client_ip":"127.0.0.1","proto":"HTTP/1.1",'
    b'"method":"POST","host":"web.example.localhost","uri":"/upload","headers":{'
    b'"Content-Type":["application/x-www-form-urlencoded"],"User-Agent":["curl/7.88.1"],"Accept":["*/*"]},'
    b'"transfer_encoding":["chunked"]},"bytes_read":19,"user_id":"","duration":0.006715291,"size":2,'
    b'"status":200,"resp_headers":{"Via":["1.1 Caddy"],"Server":["BaseHTTP/0.6 Python/3.11.7"],'
    b'"Date":["Sun, 06 Dec 2026 05:02:18 GMT"],"Content-Length":["2"]}}\n'
)
CADDY_2_11_LENGTH = (
    b'{"level":"info","ts":1796533338.4824204,"logger":"http.log.access.log0","msg":"handled request",'
    b'"request":{"remote_ip":"127.0.0.1","remote_port":"51326","client_ip":"127.0.0.1","proto":"HTTP/1.1",'
    b'"method":"POST","host":"web.example.localhost","uri":"/form","headers":{"User-Agent":["curl/7.88.1"],'
    b'"Accept":["*/*"],"Content-Length":["12"],"Content-Type":["application/x-www-form-urlencoded"]}},'
    b'"bytes_read":12,"user_id":"","duration":0.041128569,"size":2,"status":200,"resp_headers":{'
    b'"Via":["1.1 Caddy"],"Content-Length":["2"],"Server":["BaseHTTP/0.6 Python/3.11.7"],'
    b'"Date":["Sun, 06 Dec 2026 05:02:18 GMT"]}}\n'
)


def request_bytes(raw: bytes) -> int:
    record = parse_line(raw)
    assert record is not None and record.host == "web.example.localhost" and record.method == "POST"
    return record.request_bytes


def test_request_bytes_are_the_body_bytes_caddy_read_and_the_declared_length_before_caddy_2_7() -> None:
    # Caddy 2.7 and later: bytes_read, a chunked body's too
    assert request_bytes(CADDY_2_11_CHUNKED) == 19
    assert request_bytes(CADDY_2_11_LENGTH) == 12
    # Caddy 2.6 logs no bytes_read: Content-Length stands in, and a chunked body counts 0
    assert request_bytes(CADDY_2_6_LENGTH) == 12
    assert request_bytes(CADDY_2_6_CHUNKED) == 0
    # bytes_read wins over a header that says otherwise (what was read is what counts)
    assert parse_line(line(bytes_read=7)).request_bytes == 7  # type: ignore[union-attr]


def test_lines_that_are_not_access_entries_are_ignored() -> None:
    assert parse_line(b"not json\n") is None
    assert parse_line(line(logger="http.handlers.reverse_proxy")) is None
    assert parse_line(json.dumps({"logger": "http.log.access.x", "msg": "x"}).encode()) is None


def test_status_classes_and_routes_are_bounded() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 999)] == ["1xx", "2xx", "3xx", "4xx", "5xx", "5xx"]
    routes = ("/", "/api", "/api/v2/")
    assert route_of("/api/items", routes) == "/api"
    assert route_of("/api", routes) == "/api"
    assert route_of("/apiary", routes) == "/"
    assert route_of("/api/v2/x", routes) == "/api/v2/"
    assert route_of("/anything", ()) == "/"


def test_the_book_attributes_requests_by_hostname_and_drains_once() -> None:
    hosts = HostTable()
    hosts.replace({"web.acme.localhost": Destination("ins_1", "ten_1", ("/api",))})
    book = RequestBook(hosts)
    seen: list[str] = []
    book.listeners.append(lambda destination, key, record: seen.append(key[4]))
    for status, ts in ((201, 10.0), (201, 12.0), (500, 11.0)):
        record = parse_line(line(status=status, ts=ts))
        assert record is not None
        book.add(record)
    stranger = parse_line(line(request={"method": "GET", "host": "nobody.localhost", "uri": "/"}))
    assert stranger is not None and book.add(stranger) is None
    assert book.unattributed == 1 and seen == ["2xx", "2xx", "5xx"]
    batch = book.drain()
    ok = batch.tallies[("ins_1", "ten_1", "/api", "POST", "2xx")]
    assert ok.requests == 2 and ok.request_bytes == 84 and ok.response_bytes == 1024
    assert sum(ok.buckets) == 2 and ok.buckets[2] == 2  # 12.3 ms falls in the (10 ms, 25 ms] bucket
    assert batch.last_request == {"ins_1": ("ten_1", 12.0)}
    assert not book.drain()
    book.restore(batch)
    assert book.drain().tallies[("ins_1", "ten_1", "/api", "POST", "2xx")].requests == 2


def test_quantiles_interpolate_inside_their_bucket() -> None:
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[0] = 50  # (0, 5 ms]
    buckets[4] = 50  # (50 ms, 100 ms]
    assert quantile(buckets, 0.5) == 0.005
    p90 = quantile(buckets, 0.9)
    assert p90 is not None and abs(p90 - 0.09) < 1e-9
    assert quantile([0] * len(buckets), 0.5) is None
    slow = [0] * len(buckets)
    slow[-1] = 3
    assert quantile(slow, 0.99) == DURATION_BUCKETS[-1]


def _options(**overrides: object) -> RouterOptions:
    return RouterOptions(
        admin_address="127.0.0.1:2019",
        http_listen="127.0.0.1:80",
        https_listen="127.0.0.1:443",
        access_log_address="127.0.0.1:7001",
        wake_address="127.0.0.1:7002",
        wake_secret="s3cret",
        **overrides,  # type: ignore[arg-type]
    )


def _site(*, wake: bool, upstreams: tuple[UpstreamTarget, ...] = ()) -> Site:
    return Site(
        instance_id="ins_1",
        hostnames=("web.acme.localhost",),
        https_hostnames=(),
        ports=(8080,),
        routes=(),
        upstreams=upstreams,
        tenant_id="ten_1",
        wake=wake,
    )


def test_the_access_log_goes_to_the_sink_and_not_to_caddys_own_log() -> None:
    config = caddy_config(RouterState(sites=(_site(wake=False),)), _options())
    server = config["apps"]["http"]["servers"]["ctrlplane_http"]
    assert server["logs"] == {"default_logger_name": ACCESS_LOGGER}
    logs = config["logging"]["logs"]
    assert logs[ACCESS_LOGGER]["writer"] == {"output": "net", "address": "tcp/127.0.0.1:7001", "dial_timeout": "2s"}
    assert logs[ACCESS_LOGGER]["include"] == [f"http.log.access.{ACCESS_LOGGER}"]
    assert logs["default"]["exclude"] == [f"http.log.access.{ACCESS_LOGGER}"]
    without = caddy_config(RouterState(), RouterOptions("127.0.0.1:2019", "127.0.0.1:80", "127.0.0.1:443"))
    assert "logging" not in without


def test_a_sleeping_site_without_replicas_goes_to_the_wake_listener_with_a_signed_id() -> None:
    config = caddy_config(RouterState(sites=(_site(wake=True),)), _options())
    site_routes = config["apps"]["http"]["servers"]["ctrlplane_http"]["routes"][0]["handle"][0]["routes"]
    [wake] = site_routes
    headers, proxy = wake["handle"]
    assert headers["request"]["set"]["X-Ctrlplane-Wake-Instance"] == ["ins_1"]
    assert headers["request"]["set"]["X-Ctrlplane-Wake-Token"] == [wake_token("s3cret", "ins_1")]
    assert headers["request"]["set"]["X-Ctrlplane-Wake-Uri"] == ["{http.request.uri}"]
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:7002"}]
    serving = caddy_config(
        RouterState(sites=(_site(wake=True, upstreams=(UpstreamTarget(8080, "127.0.0.1:9000"),)),)), _options()
    )
    [direct] = serving["apps"]["http"]["servers"]["ctrlplane_http"]["routes"][0]["handle"][0]["routes"]
    assert direct["handle"][-1]["upstreams"] == [{"dial": "127.0.0.1:9000"}]


def _sample(at: datetime, status: str, count: int, step: int = 0) -> HttpRequestSample:
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[1] = count
    return HttpRequestSample(
        instance_id="ins_1",
        step_seconds=step,
        taken_at=at,
        route="/",
        method="GET",
        status_class=status,
        tenant_id="ten_1",
        requests=count,
        duration_seconds_sum=0.008 * count,
        duration_buckets=buckets,
        request_bytes=0,
        response_bytes=100 * count,
    )


def test_request_series_sum_per_step_and_label() -> None:
    start = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    rows = [
        _sample(start + timedelta(seconds=5), "2xx", 3),
        _sample(start + timedelta(seconds=50), "2xx", 4),
        _sample(start + timedelta(seconds=70), "5xx", 1),
    ]
    counts = requests.series(rows, "http_requests_total", 60)
    assert counts == [
        ({"status_class": "2xx", "method": "GET"}, [(start, 7.0)]),
        ({"status_class": "5xx", "method": "GET"}, [(start + timedelta(seconds=60), 1.0)]),
    ]
    latency = dict(
        (labels["quantile"], points) for labels, points in requests.series(rows, "http_request_duration_seconds", 60)
    )
    assert set(latency) == {"0.5", "0.9", "0.99"}
    assert all(0.005 <= value <= 0.01 for _, value in latency["0.99"])
    assert requests.series(rows, "http_response_bytes", None)[0][1][0] == (start + timedelta(seconds=5), 300.0)


async def test_the_sink_reads_lines_split_across_writes_and_several_per_write() -> None:
    import asyncio

    from ctrlplane.network.access import AccessSink

    hosts = HostTable()
    hosts.replace({"web.acme.localhost": Destination("ins_1", "ten_1", ())})
    book = RequestBook(hosts)
    sink = AccessSink("127.0.0.1:0", book, None, 3600)  # type: ignore[arg-type]
    await sink.start()
    try:
        assert sink.address is not None
        host, port = sink.address.rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        data = line() + line(status=404) + b"garbage\n" + line(status=500)
        writer.write(data[:37])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(data[37:])
        await writer.drain()
        for _ in range(100):
            if sink.lines == 4:
                break
            await asyncio.sleep(0.01)
        writer.close()
        classes = sorted(key[4] for key in book.drain().tallies)
        assert sink.lines == 4 and classes == ["2xx", "4xx", "5xx"]
    finally:
        await sink.close()
