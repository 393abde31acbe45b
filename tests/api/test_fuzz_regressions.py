"""What the Schemathesis run (tests/api/test_fuzz.py) found, each pinned by a test of its own."""

from __future__ import annotations

from tests.conftest import Api


async def test_a_405_names_the_allowed_methods(api: Api) -> None:
    response = await api.client.request("TRACE", "/v1/keys", headers=api.admin_headers)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["Allow"].split(",")} >= {"GET", "POST"}


async def test_probes_are_documented_as_needing_no_token(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    assert document["security"] == [{"bearer": []}]
    for path in ("/healthz", "/readyz"):
        assert document["paths"][path]["get"]["security"] == [{}]  # an empty requirement: no token needed
        assert (await api.client.get(path)).status_code == 200


async def test_request_bodies_are_documented_as_closed_to_unknown_fields(api: Api) -> None:
    schemas = (await api.client.get("/schema/openapi.json")).json()["components"]["schemas"]
    create = next(s for name, s in schemas.items() if name.endswith("InstanceCreate"))
    assert create["additionalProperties"] is False
    response = await api.client.post(
        "/v1/admin/tenants", json={"name": "A", "slug": "a", "plan": "free", "extra": 1}, headers=api.admin_headers
    )
    assert response.status_code == 400
    assert "extra" in response.json()["message"]


async def test_last_event_id_is_documented_as_an_event_number_and_refused_otherwise(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    for path in ("/v1/events", "/v1/instances/{instance_id}/events"):
        parameters = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        assert parameters["Last-Event-ID"]["schema"]["pattern"] == "^[0-9]{1,19}$"
    tenant = await api.create_tenant("acme")
    token = {"Authorization": f"Bearer {api.tokens.tenant(tenant['id'])}"}
    for last in ("", "abc", "-1"):
        response = await api.client.get("/v1/events", headers={**token, "Last-Event-ID": last})
        assert response.status_code == 400, last
        assert response.json()["code"] == "invalid_input"
    assert (await api.client.get("/v1/events", headers={**token, "Last-Event-ID": "0"})).status_code == 200


async def test_options_lists_every_method_of_the_path(api: Api) -> None:
    for path, methods in (
        ("/v1/instances", {"GET", "POST", "OPTIONS"}),
        ("/v1/instances/inst_x", {"GET", "PATCH", "DELETE", "OPTIONS"}),
    ):
        response = await api.client.options(path, headers=api.admin_headers)
        assert response.status_code == 204
        assert {m.strip() for m in response.headers["Allow"].split(",")} == methods


async def test_the_document_is_built_with_ctrlplane_s_fixes(api: Api) -> None:
    """The document is built lazily (ctrlplane/openapi.py): its first build still carries the
    event-stream media type (a schema per event), header schemas without null, the ETag's pattern,
    and a nullable string's constraints on its string branch."""
    document = (await api.client.get("/schema/openapi.json")).json()
    events = document["paths"]["/v1/events"]["get"]
    assert set(events["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    event = events["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["type"] == "object" and event["required"] == ["data"]
    idle = document["components"]["schemas"]["IdlePolicy"]["properties"]["idle_timeout"]
    assert "pattern" not in idle
    assert [branch.get("pattern") is not None for branch in idle["oneOf"]] == [True, False]
    for parameter in events["parameters"]:
        if parameter["in"] == "header":
            assert "oneOf" not in parameter["schema"], parameter
    etag = document["paths"]["/v1/instances/{instance_id}"]["get"]["responses"]["200"]["headers"]["ETag"]
    assert etag["schema"] == {"type": "string", "pattern": '^"[0-9]+"$'}
