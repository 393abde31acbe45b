"""The web console in a real browser against a real server on the real Docker engine: what a
tenant and an operator see and can do, that a read-only key can change nothing, and that the main
pages pass axe-core with no serious or critical violation, at 1280 px and at phone width."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.console.conftest import Console, accessibility_problems, console, screenshot, until  # noqa: F401
from tests.providers.docker_engine import HTTP_PORT, IMAGE, V2_IMAGE

pytestmark = pytest.mark.docker

LONG = 90_000  # ms: a container pulled, started and passing its deploy steps on a loaded machine


def instance_named(console: Console, credential: str, name: str) -> dict[str, Any]:
    items = console.call("GET", "/v1/instances", credential, params={"name": name}).json()["items"]
    return dict(items[0]) if items else {}


# Slow by design: a real browser drives a served ctrlplane through create, deploy, rollback and logs.
def test_tenant_creates_deploys_rolls_back_and_reads_logs(console: Console) -> None:
    tenant = console.create_tenant("acme")
    key = console.create_key(tenant["id"], ["admin"], "console")
    page = console.open(key)

    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    assert accessibility_problems(page) == []
    page.get_by_label("Name").fill("web")
    page.get_by_label("Image").fill(IMAGE)
    page.get_by_label("Container port").fill(str(HTTP_PORT))
    page.get_by_role("button", name="Create instance").click()

    state = page.locator("#instance-state")
    expect(state).to_have_attribute("data-state", "running", timeout=LONG)
    instance = instance_named(console, key, "web")
    expect(page.get_by_role("link", name=instance["endpoints"][0]["url"]).first).to_be_visible()
    assert accessibility_problems(page) == []
    screenshot(page, "instance-overview", readme=True)

    httpx.get(instance["endpoints"][0]["url"] + "/", timeout=10)  # busybox httpd -v logs the request
    page.get_by_role("link", name="Logs").click()
    expect(page.locator("#logs")).to_contain_text("response:200", timeout=30_000)
    screenshot(page, "instance-logs")

    page.get_by_role("link", name="Deploy", exact=True).click()
    page.get_by_label("Image").fill(V2_IMAGE)
    page.get_by_label("Strategy").select_option("rolling")
    page.get_by_role("button", name="Deploy", exact=True).click()
    expect(page.locator("#deployment ol.steps li").first).to_be_visible()
    expect(page.locator("#deployment-state")).to_have_attribute("data-state", "succeeded", timeout=LONG)
    steps = page.locator("#deployment ol.steps li").all_inner_texts()
    assert len(steps) >= 2 and all("succeeded" in s or "done" in s or "skipped" in s for s in steps), steps
    screenshot(page, "instance-deploy")

    page.get_by_role("link", name="Releases").click()
    expect(page.locator("#diff")).to_contain_text(V2_IMAGE)
    assert accessibility_problems(page) == []
    screenshot(page, "instance-releases")
    page.get_by_role("button", name="Roll back to v1").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Roll back web to release v1")
    dialog.get_by_role("button", name="Roll back").click()
    expect(page.locator("#deployment-state")).to_have_attribute("data-state", "succeeded", timeout=LONG)
    assert console.call("GET", f"/v1/instances/{instance['id']}", key).json()["image"] == IMAGE

    page.get_by_role("link", name="Secrets").click()
    page.get_by_label("Name").fill("DATABASE_PASSWORD")
    page.get_by_label("Value").fill("hunter2-never-shown")
    page.get_by_role("button", name="Set secret").click()
    expect(page.locator("main table")).to_contain_text("DATABASE_PASSWORD")
    assert "hunter2-never-shown" not in page.content()
    page.get_by_role("button", name="Delete secret DATABASE_PASSWORD").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("main table")).not_to_contain_text("DATABASE_PASSWORD")

    page.get_by_role("link", name="Health").click()
    # the secrets form had a "Name" field too: fill the health check's once its form is shown
    expect(page.get_by_role("heading", name="New health check")).to_be_visible()
    page.get_by_label("Name").fill("home")
    page.get_by_label("Target").fill(f"http://localhost:{HTTP_PORT}/")
    page.get_by_role("button", name="Add check").click()
    page.get_by_role("button", name="Run check home now").click()
    expect(page.locator("main table")).to_contain_text("pass")
    screenshot(page, "instance-health")

    page.get_by_role("link", name="Events").click()
    expect(page.locator("#events")).to_contain_text("deployment")
    page.get_by_role("link", name="Metrics").click()
    expect(page.get_by_text("CPU (%)")).to_be_visible()
    screenshot(page, "instance-metrics")
    page.context.close()


def test_refused_change_shows_the_api_message(console: Console) -> None:
    tenant = console.create_tenant("refused")
    key = console.create_key(tenant["id"], ["deploy"], "deployer")
    page = console.open(key)
    page.get_by_label("Name").fill("Not A Valid Name!")
    page.get_by_label("Image").fill(IMAGE)
    # the browser's own pattern check would stop the form: the API's answer is what is tested here
    page.locator("input[name=name]").evaluate("input => input.removeAttribute('pattern')")
    page.get_by_role("button", name="Create instance").click()
    alert = page.locator("#notice")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("invalid_input")
    assert instance_named(console, key, "Not A Valid Name!") == {}
    page.context.close()


def test_read_only_key_has_no_enabled_mutating_control_and_the_api_refuses(console: Console) -> None:
    tenant = console.create_tenant("readers")
    admin_key = console.create_key(tenant["id"], ["admin"], "owner")
    created = console.call("POST", "/v1/instances", admin_key, json={"name": "api", "image": IMAGE})
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    read_key = console.create_key(tenant["id"], ["read"], "viewer")

    page = console.open(read_key, width=390, height=844)
    expect(page.get_by_role("link", name="API keys")).to_have_count(0)
    pages = ["#/instances"] + [
        f"#/instances/{instance_id}/{tab}"
        for tab in ("overview", "health", "releases", "deploy", "secrets", "domains", "routes")
    ]
    for fragment in pages:
        page.goto(f"{console.url}/console/{fragment}")
        page.locator(f'main[data-ready="{fragment}"]').wait_for()
        controls = page.locator("[data-mutating]")
        assert controls.count() > 0, fragment
        enabled = [c.inner_text() for c in controls.all() if c.is_enabled()]
        assert enabled == [], f"{fragment}: {enabled}"
    screenshot(page, "read-only-phone")
    page.goto(f"{console.url}/console/#/instances/{instance_id}/overview")
    page.locator("#instance-state").wait_for()
    assert accessibility_problems(page) == []

    for method, path, body in [
        ("POST", "/v1/instances", {"name": "sneaky", "image": IMAGE}),
        ("POST", f"/v1/instances/{instance_id}/stop", None),
        ("POST", f"/v1/instances/{instance_id}/deploy", {"image": V2_IMAGE}),
        ("POST", f"/v1/instances/{instance_id}/secrets", {"key": "TOKEN", "value": "x"}),
        ("DELETE", f"/v1/instances/{instance_id}", None),
        ("POST", "/v1/keys", {"name": "escalate", "roles": ["admin"]}),
    ]:
        response = console.call(method, path, read_key, json=body)
        assert response.status_code == 403, (method, path, response.text)
    page.context.close()


def test_admin_suspends_a_tenant_and_sees_its_instances_stop(console: Console) -> None:
    tenant = console.create_tenant("suspendme")
    owner = console.create_key(tenant["id"], ["admin"], "owner")
    created = console.call(
        "POST", "/v1/instances", owner, json={"name": "site", "image": IMAGE, "ports": [{"container_port": HTTP_PORT}]}
    )
    instance_id = created.json()["id"]
    until(lambda: console.call("GET", f"/v1/instances/{instance_id}", owner).json()["state"] == "running", "running")

    page = console.open(console.admin())
    expect(page.get_by_role("heading", name="Tenants")).to_be_visible()
    assert accessibility_problems(page) == []
    page.get_by_role("link", name="Suspendme").click()
    expect(page.locator("main table [data-state]")).to_have_attribute("data-state", "running")
    expect(page.get_by_role("meter", name="Instances")).to_have_attribute("aria-valuenow", "1")
    assert accessibility_problems(page) == []
    screenshot(page, "admin-tenant")

    page.get_by_label("Suspension reason").fill("unpaid invoice")
    page.get_by_role("button", name="Suspend").click()
    page.get_by_role("dialog").get_by_role("button", name="Suspend").click()
    expect(page.locator("#tenant-status")).to_have_attribute("data-status", "suspended")
    expect(page.get_by_text("unpaid invoice")).to_be_visible()
    until(
        lambda: console.call("GET", f"/v1/instances/{instance_id}", console.admin()).json()["state"] == "stopped",
        "the suspended tenant's instance stopped",
    )
    page.reload()
    expect(page.locator("main table [data-state]")).to_have_attribute("data-state", "stopped")
    screenshot(page, "admin-tenant-suspended")

    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("#audit-verification")).to_contain_text("Every chain is intact")
    page.get_by_label("Action").fill("suspend")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("main table")).to_contain_text("suspend")
    assert accessibility_problems(page) == []
    screenshot(page, "admin-audit")
    for link, heading in [("Stats", "Stats"), ("Providers", "Providers")]:
        page.get_by_role("link", name=link).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        assert accessibility_problems(page) == []
        screenshot(page, f"admin-{link.lower()}")
    expect(page.locator("main table")).to_contain_text(re.compile("docker"))
    page.context.close()
