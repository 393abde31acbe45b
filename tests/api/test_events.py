"""The event log through the API: JSON pages, and Server-Sent Events that replay and resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import Api, bearer
from tests.waiting import eventually

INSTANCE = {"name": "web", "image": "ctrlplane-test/busybox:1", "ports": [{"container_port": 8080}]}


async def _create_instances(api: Api, token: dict[str, str], count: int) -> list[dict[str, Any]]:
    created = []
    for i in range(count):
        response = await api.client.post("/v1/instances", json={**INSTANCE, "name": f"web{i}"}, headers=token)
        assert response.status_code == 201, response.text
        created.append(response.json())
    return created


async def _read_sse(client: httpx.AsyncClient, url: str, headers: dict[str, str], count: int) -> list[dict[str, str]]:
    """The first ``count`` events of a stream, as dicts of their fields."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with client.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                if "id" in current:
                    events.append(current)
                    if len(events) == count:
                        break
                current = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    return events


async def test_json_page_lists_tenant_events_oldest_first(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="pro")
    token = bearer(api.tokens.tenant(tenant["id"]))
    await _create_instances(api, token, 3)
    page = (await api.client.get("/v1/events", params={"limit": 2}, headers=token)).json()
    assert [e["id"] for e in page["items"]] == [1, 2]
    assert page["items"][0]["type"] == "instance.created"
    rest = (await api.client.get("/v1/events", params={"since": page["next_cursor"]}, headers=token)).json()
    assert rest["items"][0]["id"] == 3


async def test_other_tenants_events_are_invisible(api: Api) -> None:
    a = await api.create_tenant("a", plan="pro")
    b = await api.create_tenant("b", plan="pro")
    [instance] = await _create_instances(api, bearer(api.tokens.tenant(a["id"])), 1)
    b_token = bearer(api.tokens.tenant(b["id"]))
    assert (await api.client.get("/v1/events", headers=b_token)).json()["total"] == 0
    response = await api.client.get(f"/v1/instances/{instance['id']}/events", headers=b_token)
    assert response.status_code == 404


async def test_bad_last_event_id_is_400(api: Api) -> None:
    tenant = await api.create_tenant("acme")
    response = await api.client.get(
        "/v1/events", headers={**bearer(api.tokens.tenant(tenant["id"])), "Last-Event-ID": "yesterday"}
    )
    assert response.status_code == 400


@pytest.mark.dialects("event ids are assigned at insert and seen at commit (sequence vs rowid)")
async def test_sse_replays_then_streams_live_and_resumes_without_gaps_or_duplicates(live: Api) -> None:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    await _create_instances(live, token, 2)

    first = await _read_sse(live.client, "/v1/events", token, count=2)
    assert [e["id"] for e in first] == ["1", "2"]
    assert first[0]["event"] == "instance.created"

    async def create_later() -> None:
        await asyncio.sleep(0.3)
        await live.client.post("/v1/instances", json={**INSTANCE, "name": "late"}, headers=token)

    background = asyncio.create_task(create_later())
    resumed: list[dict[str, str]] = []
    async with asyncio.timeout(15):
        while not any('"name":"late"' in e["data"] for e in resumed):
            after = resumed[-1]["id"] if resumed else "2"
            resumed += await _read_sse(live.client, "/v1/events", {**token, "Last-Event-ID": after}, count=1)
    await background
    ids = [int(e["id"]) for e in resumed]
    assert ids == list(range(3, 3 + len(ids))), f"gap or duplicate after resume: {ids}"

    again = await asyncio.wait_for(
        _read_sse(live.client, "/v1/events", {**token, "Last-Event-ID": "1"}, count=1 + len(resumed)), timeout=10
    )
    assert [e["id"] for e in again] == ["2", *(e["id"] for e in resumed)]
    assert [e["data"] for e in again[1:]] == [e["data"] for e in resumed]


async def test_instance_stream_carries_only_that_instance(live: Api) -> None:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    first, second = await _create_instances(live, token, 2)
    events = await asyncio.wait_for(
        _read_sse(live.client, f"/v1/instances/{second['id']}/events", token, count=1), timeout=10
    )
    assert second["id"] in events[0]["data"]
    assert first["id"] not in events[0]["data"]


@pytest.mark.dialects("the feed relies on events committing in number order on both databases")
async def test_two_hundred_subscribers_of_a_tenant_all_receive_a_new_event_through_one_feed(
    live: Api, app: Any
) -> None:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    await _create_instances(live, token, 1)
    subscribers = 200
    replayed = 0
    all_replayed = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    async def follow(client: httpx.AsyncClient, wanted: asyncio.Future[str]) -> str:
        """The id of the first event of the instance ``wanted`` names, after the replay of event 1."""
        nonlocal replayed
        headers = {**token, "Accept": "text/event-stream"}
        async with client.stream("GET", "/v1/events", headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                if event["id"] == 1:
                    replayed += 1
                    if replayed == subscribers:
                        all_replayed.set()
                elif wanted.done() and event["instance_id"] == wanted.result():
                    return str(event["event_id"])
        raise AssertionError("the stream ended")

    async with httpx.AsyncClient(base_url=str(live.client.base_url), limits=limits, timeout=60) as client:
        wanted: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        followers = [asyncio.create_task(follow(client, wanted)) for _ in range(subscribers)]
        try:
            await asyncio.wait_for(all_replayed.wait(), 60)
            feeds = app.state.services.feeds.feeds
            assert list(feeds) == [tenant["id"]]
            assert feeds[tenant["id"]].subscribers == subscribers
            [second] = await _create_instances_named(live, token, "late")
            wanted.set_result(second["id"])
            received = await asyncio.wait_for(asyncio.gather(*followers), 60)
        finally:
            for follower in followers:
                follower.cancel()
    assert len(received) == subscribers
    assert len(set(received)) == 1
    await eventually(lambda: not app.state.services.feeds.feeds, "the feed stopping with its last stream")


async def _create_instances_named(api: Api, token: dict[str, str], name: str) -> list[dict[str, Any]]:
    response = await api.client.post("/v1/instances", json={**INSTANCE, "name": name}, headers=token)
    assert response.status_code == 201, response.text
    return [response.json()]
