"""The web console in a real browser against a real server on the real Docker engine: what a
tenant and an operator see and can do, that a read-only key can change nothing, and that the main
pages pass axe-core with no serious or critical violation, at 1280 px and at phone width."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Route, expect

from tests.console.conftest import Console, accessibility_problems, console, screenshot, until  # noqa: F401
from tests.providers.docker_engine import HTTP_PORT, IMAGE, V2_IMAGE

pytestmark = pytest.mark.docker

LONG = 90_000  # ms: a container pulled, started and passing its deploy steps on a loaded machine


def instance_named(console: Console, credential: str, name: str) -> dict[str, Any]:
    items = console.call("GET", "/v1/instances", credential, params={"name": name}).json()["items"]
    return dict(items[0]) if items else {}


# Slow by design: a real browser drives a served ctrlplane through create, deploy, rollback and logs.
def deployment_succeeds(page: Any, console: Console, key: str, instance_id: str) -> None:
    """The page shows the deployment succeeded; if it does not, the failure says what the API says of
    the newest deployment (its steps and error), not only what the page showed."""
    try:
        expect(page.locator("#deployment-state")).to_have_attribute("data-state", "succeeded", timeout=LONG)
    except AssertionError as failed:
        deployments = console.call("GET", f"/v1/instances/{instance_id}/deployments", key).json()
        raise AssertionError(f"{failed}\nthe API's deployments: {deployments}") from None


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
    deployment_succeeds(page, console, key, instance["id"])
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
    deployment_succeeds(page, console, key, instance["id"])
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


def test_a_create_whose_answer_was_lost_is_sent_again_and_runs_once(console: Console) -> None:
    """The server closed the connection as the answer went out ("Failed to fetch"): the console
    sends the POST again with the same Idempotency-Key, and the server, which ran the first, replays
    its answer instead of creating a second instance."""
    tenant = console.create_tenant("resent")
    key = console.create_key(tenant["id"], ["deploy"], "deployer")
    page = console.open(key)
    sent: list[str] = []

    def lose_the_first_answer(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        sent.append(route.request.headers.get("idempotency-key", ""))
        if len(sent) == 1:
            route.fetch()  # the server runs it ...
            route.abort("connectionreset")  # ... and its answer never reaches the browser
        else:
            route.continue_()

    page.route("**/v1/instances", lose_the_first_answer)
    page.get_by_label("Name").fill("resent")
    page.get_by_label("Image").fill(IMAGE)
    page.get_by_role("button", name="Create instance").click()
    expect(page.locator("#instance-state")).to_be_visible(timeout=LONG)
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0].startswith("console-"), sent
    listed = console.call("GET", "/v1/instances?name=resent", key)
    assert listed.json()["total"] == 1, listed.text
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


def test_tenant_manages_routes_and_domains_in_the_browser(console: Console) -> None:
    tenant = console.create_tenant("netco")
    key = console.create_key(tenant["id"], ["deploy"], "deployer")
    created = console.call(
        "POST", "/v1/instances", key, json={"name": "shop", "image": IMAGE, "ports": [{"container_port": HTTP_PORT}]}
    )
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    page = console.open(key)
    notice = page.locator("#notice")

    page.goto(f"{console.url}/console/#/instances/{instance_id}/routes")
    page.locator(f'main[data-ready="#/instances/{instance_id}/routes"]').wait_for()
    expect(page.get_by_label("Port")).to_have_value(str(HTTP_PORT))  # the instance's port, filled in
    page.get_by_label("Path").fill("/api")
    page.get_by_label("Weight").fill("40")
    page.get_by_label("Strip prefix").check()
    page.get_by_role("button", name="Add route").click()
    routes = page.get_by_role("region", name="Routes")
    expect(routes.locator("tbody tr")).to_have_count(1)
    expect(routes.locator("tbody td")).to_have_text(["/api", str(HTTP_PORT), "http", "40", "yes", "Delete"])
    [route] = console.call("GET", f"/v1/instances/{instance_id}/routes", key).json()["items"]
    assert (route["path"], route["port"], route["weight"], route["strip_prefix"]) == ("/api", HTTP_PORT, 40, True)

    # refused: a second route of /api that does not strip the prefix; the page shows the API's own message
    page.get_by_label("Path").fill("/api")
    page.get_by_label("Strip prefix").uncheck()
    page.get_by_role("button", name="Add route").click()
    refused = console.call("POST", f"/v1/instances/{instance_id}/routes", key, json={"path": "/api", "port": HTTP_PORT})
    assert refused.status_code == 400, refused.text
    expect(notice).to_contain_text(f"{refused.json()['message']} (invalid_input, request req_")
    page.get_by_label("Path").fill("/other")
    page.get_by_label("Port").fill("9")
    page.get_by_role("button", name="Add route").click()
    refused = console.call("POST", f"/v1/instances/{instance_id}/routes", key, json={"path": "/other", "port": 9})
    assert refused.status_code == 400 and str(HTTP_PORT) in refused.json()["message"], refused.text
    expect(notice).to_contain_text(refused.json()["message"])
    expect(routes.locator("tbody tr")).to_have_count(1)
    assert accessibility_problems(page) == []
    screenshot(page, "instance-routes")

    # deleting asks first: cancelling keeps the route
    page.get_by_role("button", name="Delete route /api").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete route /api?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert len(console.call("GET", f"/v1/instances/{instance_id}/routes", key).json()["items"]) == 1
    page.get_by_role("button", name="Delete route /api").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(routes).to_contain_text("None yet.")
    assert console.call("GET", f"/v1/instances/{instance_id}/routes", key).json()["items"] == []

    page.get_by_role("link", name="Domains").click()
    page.get_by_label("Hostname").fill("Shop.Example.COM")
    page.get_by_role("button", name="Add domain").click()
    domains = page.get_by_role("region", name="Domains")
    row = domains.locator("tbody tr")
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "pending")
    [domain] = console.call("GET", f"/v1/instances/{instance_id}/domains", key).json()["items"]
    assert domain["hostname"] == "shop.example.com"
    # the TXT instructions exactly as the API gives them
    expect(row).to_contain_text(domain["verification"]["type"])
    expect(row.locator('[data-record="name"]')).to_have_text(domain["verification"]["name"])
    expect(row.locator('[data-record="value"]')).to_have_text(domain["verification"]["value"])
    expect(row.locator("[data-certificate]")).to_have_attribute("data-certificate", "none")
    assert accessibility_problems(page) == []
    screenshot(page, "instance-domains-pending")

    # refused: a second claim of the same hostname in this tenant
    page.get_by_label("Hostname").fill("shop.example.com")
    page.get_by_role("button", name="Add domain").click()
    refused = console.call("POST", f"/v1/instances/{instance_id}/domains", key, json={"hostname": "shop.example.com"})
    assert refused.status_code == 409, refused.text
    expect(notice).to_contain_text(refused.json()["message"])
    # verifying before the record exists: the API's answer says what DNS holds
    page.get_by_role("button", name="Verify shop.example.com").click()
    refused = console.call("POST", f"/v1/domains/{domain['id']}/verify", key)
    assert refused.status_code == 409 and domain["verification"]["name"] in refused.json()["message"], refused.text
    expect(notice).to_contain_text(refused.json()["message"])
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "pending")

    # the record the page says to create, created as the page says it: now it verifies
    console.dns.set_txt(
        row.locator('[data-record="name"]').inner_text(), row.locator('[data-record="value"]').inner_text()
    )
    page.get_by_role("button", name="Verify shop.example.com").click()
    expect(row.locator("[data-status]")).to_have_attribute("data-status", "verified")
    expect(page.get_by_role("button", name="Verify shop.example.com")).to_have_count(0)

    # the certificate's state as it changes: requested, then failed (no CA answers this server)
    page.get_by_role("button", name="Request a certificate for shop.example.com").click()
    expect(row.locator("[data-certificate]")).to_have_attribute("data-certificate", "failed", timeout=30_000)
    certificate = console.call("GET", f"/v1/domains/{domain['id']}", key).json()["certificate"]
    assert certificate["status"] == "failed" and certificate["error"], certificate
    expect(row.locator("[data-certificate]")).to_contain_text(certificate["error"])
    expect(page.get_by_role("button", name="Retry a certificate for shop.example.com")).to_be_enabled()
    screenshot(page, "instance-domains-certificate")

    page.get_by_role("button", name="Delete shop.example.com").click()
    expect(dialog).to_contain_text("Remove domain shop.example.com?")
    dialog.get_by_role("button", name="Remove").click()
    expect(domains).to_contain_text("None yet.")
    assert console.call("GET", f"/v1/instances/{instance_id}/domains", key).json()["items"] == []
    page.context.close()


# Slow by design: a real container sampled every 2 s, and a page that must redraw a newer sample on
# its own 5 s refresh, in a real browser.
def test_metrics_charts_take_new_samples_without_a_reload(console: Console) -> None:
    tenant = console.create_tenant("graphs")
    key = console.create_key(tenant["id"], ["read", "deploy"], "watcher")
    created = console.call("POST", "/v1/instances", key, json={"name": "busy", "image": IMAGE})
    assert created.status_code == 201, created.text
    instance_id = created.json()["id"]
    until(lambda: console.call("GET", f"/v1/instances/{instance_id}", key).json()["state"] == "running", "running")

    # the instances list the console loads on signing in is held in flight while the user moves on to
    # the metrics tab, then answers: the page it would have drawn must not replace the one on screen
    held: list[Any] = []
    page = console.open(
        key, before_sign_in=lambda p: p.route(re.compile(r"/v1/instances\?"), lambda route: held.append(route))
    )
    page.goto(f"{console.url}/console/#/instances/{instance_id}/metrics")
    page.locator(f'main[data-ready="#/instances/{instance_id}/metrics"]').wait_for()
    [stale] = held
    stale.continue_()
    cpu = page.locator("figure.chart", has_text="CPU (%)")
    expect(cpu).to_have_attribute("data-points", re.compile(r"^[1-9][0-9]*$"), timeout=30_000)  # a first sample
    first = cpu.get_attribute("data-latest")
    assert first, cpu.inner_html()
    page.evaluate("window.stillTheSamePage = true")

    # the server samples every 2 s and the page asks every 5 s: a newer point arrives on its own
    expect(cpu).not_to_have_attribute("data-latest", first, timeout=30_000)
    latest = cpu.get_attribute("data-latest")
    assert page.evaluate("window.stillTheSamePage") is True  # no reload, no navigation
    expect(page.get_by_role("heading", name="Metrics (last hour)")).to_be_visible()
    expect(page.get_by_role("heading", name="Instances", exact=True)).to_have_count(0)
    [series] = [
        s
        for s in console.call(
            "GET", f"/v1/instances/{instance_id}/metrics", key, params={"name": "cpu_percent"}
        ).json()["series"]
        if s["name"] == "cpu_percent"
    ]
    stamps = [p["timestamp"] for p in series["points"]]
    assert first in stamps and latest in stamps and stamps.index(latest) > stamps.index(first), (first, latest, stamps)
    expect(page.locator("figure.chart", has_text="Memory")).not_to_have_attribute("data-points", "0")
    page.context.close()
