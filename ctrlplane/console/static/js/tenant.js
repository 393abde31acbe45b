// Tenant pages: instances, one instance (events, logs, metrics, health, releases, deploy, secrets,
// domains, routes) and API keys. Controls that change something are disabled when the signed-in
// credential's role does not allow them; the API refuses them anyway.
import { ApiError, get, post, query, request, stream } from "./api.js";
import { chart, pointsOf } from "./chart.js";
import {
  action, attempt, badge, bytes, checkbox, confirmAction, field, form, h, replace, showError, table, when,
} from "./ui.js";

const enc = encodeURIComponent;
const TERMINAL = new Set(["succeeded", "failed", "rolled_back", "cancelled"]);
// The metrics tab asks for new points this often while it is open (and the browser tab is visible):
// three GETs, against the credential's rate limit like any call. Usage is sampled every
// CTRLPLANE_METRICS_SAMPLE_SECONDS (15 s by default), request metrics every router flush (2 s).
export const METRICS_POLL_MS = 5000;

export function instanceUrl(instance) {
  if (instance.url) return instance.url;
  const endpoint = (instance.endpoints || [])[0];
  return endpoint ? endpoint.url : null;
}

function link(url) {
  return url ? h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, url) : "—";
}

export async function instancesTable(ctx, tenantId) {
  const page = await get(`/v1/instances${query({ limit: 100, tenant_id: tenantId })}`);
  const healths = await Promise.all(page.items.map((i) =>
    get(`/v1/instances/${enc(i.id)}/health`).then((x) => x.status, () => "unknown")));
  return table(["Name", "State", "Health", "Replicas", "URL", "Image"], page.items.map((i, n) => [
    tenantId ? i.name : h("a", { href: `#/instances/${enc(i.id)}` }, i.name),
    h("span", { "data-state": i.state }, badge(i.state)),
    badge(healths[n]),
    String(i.replicas),
    link(instanceUrl(i)),
    h("code", {}, i.image),
  ]), "Instances");
}

export async function instancesPage(ctx) {
  const list = h("div", {}, await instancesTable(ctx));
  const create = form([
    field("Name", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9-]*", autocomplete: "off" }),
    field("Image", { name: "image", required: true, autocomplete: "off" }),
    field("Container port", { name: "port", type: "number", min: 1, max: 65535 }),
    field("Replicas", { name: "replicas", type: "number", min: 1, value: 1 }),
  ], "Create instance", ctx.canDeploy, async (v) => {
    const body = { name: v.name, image: v.image, replicas: Number(v.replicas || 1) };
    if (v.port) body.ports = [{ container_port: Number(v.port) }];
    const created = await attempt(() => post("/v1/instances", body));
    if (created) location.hash = `#/instances/${enc(created.id)}`;
  });
  replace(ctx.main, h("h1", {}, "Instances"), list, h("section", { class: "panel", "aria-labelledby": "new-instance" },
    h("h2", { id: "new-instance" }, "New instance"), create));
}

const TABS = [
  ["overview", "Overview"], ["events", "Events"], ["logs", "Logs"], ["metrics", "Metrics"], ["health", "Health"],
  ["releases", "Releases"], ["deploy", "Deploy"], ["secrets", "Secrets"], ["domains", "Domains"], ["routes", "Routes"],
];

export async function instancePage(ctx, id, tab = "overview") {
  const base = `/v1/instances/${enc(id)}`;
  let instance = await get(base);
  const header = h("div", {});
  const body = h("div", {});
  const events = [];
  let eventList = null;
  let onEvent = null; // the open tab's reaction to a new event, if it has one
  let details = null;

  const renderHeader = () => replace(header,
    h("p", {}, h("a", { href: "#/instances" }, "← Instances")),
    h("h1", {}, instance.name, " ", h("span", { id: "instance-state", "data-state": instance.state }, badge(instance.state))),
    h("p", { class: "muted" }, instance.status_message || ""),
    h("div", { class: "row" },
      action("Start", ctx.canDeploy, () => change("start")),
      action("Stop", ctx.canDeploy, () => change("stop", "Stop this instance? It stops serving.")),
      action("Restart", ctx.canDeploy, () => change("restart", "Restart every replica of this instance?")),
      action("Delete", ctx.canDeploy, async () => {
        if (!(await confirmAction(`Delete instance ${instance.name}? Its containers and data are removed.`, "Delete"))) return;
        if (await attempt(() => request("DELETE", base), "Instance deletion accepted.")) location.hash = "#/instances";
      }, { danger: true })),
    h("ul", { class: "tabs", role: "list" }, TABS.map(([key, text]) => h("li", {},
      h("a", { href: `#/instances/${enc(id)}/${key}`, "aria-current": key === tab ? "page" : null }, text)))));

  async function change(verb, question) {
    if (question && !(await confirmAction(question, verb[0].toUpperCase() + verb.slice(1)))) return;
    await attempt(() => post(`${base}/${verb}`), `${verb} accepted.`);
    await refresh();
  }

  let pending = null;
  async function refresh() {
    try {
      instance = await get(base);
      renderHeader();
      renderDetails();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) showError(error);
    }
  }
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 300); };

  const eventRow = (e) => h("li", {}, h("code", {}, when(e.created_at)), " ", h("strong", {}, e.type), " ",
    h("span", { class: "muted" }, JSON.stringify(e.data).slice(0, 200)));
  ctx.onLeave(stream(`${base}/events${query({ since: 0 })}`, (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    events.push(event);
    if (eventList) eventList.prepend(eventRow(event));
    if (onEvent) onEvent(event);
    soon();
  }, showError));

  renderHeader();
  replace(ctx.main, header, body);
  const tabs = { overview, eventsTab, logs, metrics, health, releases, deploy, secrets, domains, routes };
  await (tab === "events" ? eventsTab : tabs[tab] || overview)();

  function eventsTab() {
    eventList = h("ol", { reversed: true, "aria-live": "polite", id: "events" }, events.slice().reverse().map(eventRow));
    replace(body, h("h2", {}, "Live events"), eventList);
  }

  function renderDetails() {
    if (!details) return;
    const endpoints = (instance.endpoints || []).map((e) => h("li", {}, link(e.url), ` replica ${e.replica}, port ${e.container_port}`));
    replace(details,
      h("dl", { class: "kv" },
        h("dt", {}, "Image"), h("dd", {}, h("code", {}, instance.image)),
        h("dt", {}, "URL"), h("dd", {}, link(instanceUrl(instance))),
        h("dt", {}, "Hostnames"), h("dd", {}, (instance.hostnames || []).join(", ") || "—"),
        h("dt", {}, "Replicas"), h("dd", {}, String(instance.replicas)),
        h("dt", {}, "Resources"), h("dd", {}, `${instance.resources.cpu_millis} mCPU, ${instance.resources.memory_mb} MB per replica`),
        h("dt", {}, "Provider"), h("dd", {}, instance.provider_name),
        h("dt", {}, "Created"), h("dd", {}, when(instance.created_at))),
      h("h2", {}, "Endpoints"), endpoints.length ? h("ul", {}, endpoints) : h("p", { class: "muted" }, "None yet."));
  }

  async function overview() {
    details = h("div", {});
    renderDetails();
    replace(body, details,
      h("section", { class: "panel", "aria-labelledby": "scale" }, h("h2", { id: "scale" }, "Scale"),
        form([
          field("Replicas", { name: "replicas", type: "number", min: 0, value: instance.replicas }),
          field("CPU (millicores)", { name: "cpu", type: "number", min: 1, value: instance.resources.cpu_millis }),
          field("Memory (MB)", { name: "memory", type: "number", min: 1, value: instance.resources.memory_mb }),
        ], "Scale", ctx.canDeploy, async (v) => {
          await attempt(() => post(`${base}/scale`, { replicas: Number(v.replicas),
            resources: { cpu_millis: Number(v.cpu), memory_mb: Number(v.memory) } }), "Scale accepted.");
          await refresh();
        })));
  }

  async function logs() {
    const box = h("div", { class: "log", id: "logs", tabindex: "0", role: "log", "aria-label": "Log lines" });
    const follow = h("input", { type: "checkbox", id: "follow", checked: true });
    replace(body, h("h2", {}, "Logs"), h("label", { class: "check", for: "follow" }, follow, "Scroll to new lines"), box);
    ctx.onLeave(stream(`${base}/logs${query({ follow: "true", limit: 200 })}`, (message) => {
      let line;
      try { line = JSON.parse(message.data); } catch { return; }
      box.append(h("div", { class: `lv-${line.level}` }, `${line.timestamp} [${line.replica}] ${line.level} ${line.message}`));
      if (follow.checked) box.scrollTop = box.scrollHeight;
    }, showError));
  }

  async function metrics() {
    const cpu = chart("CPU (%)", (v) => `${Number(v).toFixed(1)}%`);
    const memory = chart("Memory", bytes);
    const rate = chart("Requests per minute", (v) => Number(v).toFixed(0));
    const latency = chart("Request latency p90 (s)", (v) => Number(v).toFixed(3));
    const noRequests = h("p", { class: "muted" }, "No request metrics: the router has reported none for this instance.");
    const updated = h("p", { class: "muted", id: "metrics-updated" });
    const holder = h("div", { class: "charts" }, cpu.element, memory.element);
    const named = (response, name, labels = {}) => response.series.filter((s) => s.name === name
      && Object.entries(labels).every(([key, value]) => (s.labels || {})[key] === value));
    const load = async () => {
      const [usage, requests, durations] = await Promise.all([
        get(`${base}/metrics`),
        get(`${base}/metrics${query({ name: "http_requests_total", step: "60s" })}`).catch(() => ({ series: [] })),
        get(`${base}/metrics${query({ name: "http_request_duration_seconds", step: "60s" })}`).catch(() => ({ series: [] })),
      ]);
      cpu.update(pointsOf(named(usage, "cpu_percent")));
      memory.update(pointsOf(named(usage, "memory_used_bytes")));
      const ratePoints = pointsOf(named(requests, "http_requests_total")); // every status class and method
      rate.update(ratePoints);
      latency.update(pointsOf(named(durations, "http_request_duration_seconds", { quantile: "0.9" })));
      if (ratePoints.length) { noRequests.remove(); holder.append(rate.element, latency.element); }
      else { rate.element.remove(); latency.element.remove(); holder.append(noRequests); }
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; new points appear every ${METRICS_POLL_MS / 1000} s while this tab is open.`;
    };
    replace(body, h("h2", {}, "Metrics (last hour)"), updated, holder);
    await load();
    let busy = false;
    const timer = setInterval(() => {
      if (busy || document.hidden) return;
      busy = true;
      load().catch(showError).finally(() => { busy = false; });
    }, METRICS_POLL_MS);
    ctx.onLeave(() => clearInterval(timer));
  }

  async function health() {
    const view = await get(`${base}/health`);
    replace(body, h("h2", {}, "Health: ", badge(view.status)),
      table(["Check", "Type", "Target", "Status", "Latest", "Uptime", ""], view.checks.map((c) => [
        c.name, c.type, h("code", {}, c.target), badge(c.status),
        c.latest ? `${c.latest.status} ${c.latest.message} (${when(c.latest.checked_at)})` : "—",
        c.uptime_percent === null ? "—" : `${c.uptime_percent.toFixed(1)}%`,
        h("div", { class: "row" },
          action("Run now", ctx.canDeploy, async () => { await attempt(() => post(`/v1/health/checks/${enc(c.check_id)}/run`)); await health(); },
            { label: `Run check ${c.name} now` }),
          action("Delete", ctx.canDeploy, async () => {
            if (!(await confirmAction(`Delete health check ${c.name}?`, "Delete"))) return;
            await attempt(() => request("DELETE", `/v1/health/checks/${enc(c.check_id)}`)); await health();
          }, { danger: true, label: `Delete check ${c.name}` })),
      ]), "Health checks"),
      h("section", { class: "panel", "aria-labelledby": "new-check" }, h("h3", { id: "new-check" }, "New health check"),
        form([
          field("Name", { name: "name", required: true }),
          field("Type", { name: "type", options: ["http", "tcp", "command"] }),
          field("Target", { name: "target", required: true, placeholder: "http://localhost:8080/healthz" }),
          field("Interval", { name: "interval", value: "30s" }),
        ], "Add check", ctx.canDeploy, async (v) => {
          if (await attempt(() => post(`${base}/health/checks`, v), "Health check added.")) await health();
        })));
  }

  async function releases() {
    const page = await get(`${base}/releases${query({ limit: 100 })}`);
    const items = page.items.slice().sort((a, b) => b.version - a.version);
    const diffBox = h("div", { id: "diff" });
    const options = items.map((r) => `v${r.version}`);
    const from = field("From", { name: "from", options, value: options[1] || options[0] });
    const to = field("To", { name: "to", options, value: options[0] });
    const showDiff = () => {
      const byVersion = (label) => items.find((r) => `v${r.version}` === label.querySelector("select").value);
      replace(diffBox, releaseDiff(byVersion(from), byVersion(to)));
    };
    from.querySelector("select").addEventListener("change", showDiff);
    to.querySelector("select").addEventListener("change", showDiff);
    replace(body, h("h2", {}, "Releases"),
      table(["Version", "Image", "Reason", "Replicas", "Secrets revision", "Created", ""], items.map((r) => [
        `v${r.version}${r.id === instance.current_release_id ? " (current)" : ""}`, h("code", {}, r.image), r.reason,
        String(r.replicas), String(r.secrets_revision), when(r.created_at),
        r.id === instance.current_release_id ? "" : action("Roll back", ctx.canDeploy, async () => {
          if (!(await confirmAction(`Roll back ${instance.name} to release v${r.version} (${r.image})?`, "Roll back"))) return;
          const started = await attempt(() => post(`${base}/rollback`, { release_id: r.id }), "Rollback started.");
          if (started) location.hash = `#/instances/${enc(id)}/deploy`;
        }, { label: `Roll back to v${r.version}` }),
      ]), "Releases"),
      h("h2", {}, "Compare releases"), h("div", { class: "row" }, from, to), diffBox);
    if (items.length) showDiff();
  }

  async function deploy() {
    const progress = h("div", { id: "deployment", "aria-live": "polite" });
    const history = h("div", {});
    const loadHistory = async () => {
      const page = await get(`${base}/deployments${query({ limit: 10 })}`);
      replace(history, table(["Deployment", "Strategy", "State", "Started", "Finished", "Error"], page.items.map((d) => [
        h("code", {}, d.id), d.strategy, badge(d.state), when(d.created_at), when(d.finished_at), d.error || "",
      ]), "Recent deployments"));
      return page.items;
    };
    replace(body, h("h2", {}, "Deploy"),
      form([
        field("Image", { name: "image", required: true, value: instance.image }),
        field("Strategy", { name: "strategy", options: ["rolling", "blue_green", "canary", "recreate"] }),
        field("Notes", { name: "notes" }),
      ], "Deploy", ctx.canDeploy, async (v) => {
        const started = await attempt(() => post(`${base}/deploy`, { image: v.image, strategy: v.strategy, notes: v.notes || "" }));
        if (started) watch(started);
      }), progress, h("h2", {}, "History"), history);
    const recent = await loadHistory();
    const active = recent.find((d) => !TERMINAL.has(d.state));
    if (active) watch(active); else if (recent[0]) render(recent[0]);

    function render(d) {
      replace(progress, h("h3", {}, "Deployment ", h("code", {}, d.id), " ", h("span", { id: "deployment-state", "data-state": d.state }, badge(d.state))),
        h("ol", { class: "steps" }, d.steps.map((s) => h("li", { "data-step": s.name },
          h("strong", {}, s.name), " ", badge(s.state), s.message ? ` ${s.message}` : ""))),
        d.error ? h("p", {}, `Error: ${d.error}`) : null,
        !TERMINAL.has(d.state) ? action("Cancel deployment", ctx.canDeploy, async () => {
          if (await confirmAction("Cancel this deployment?", "Cancel deployment")) await attempt(() => post(`/v1/deployments/${enc(d.id)}/cancel`));
        }, { danger: true }) : null);
    }
    function watch(d) {
      render(d);
      let stopped = false;
      ctx.onLeave(() => { stopped = true; });
      (async () => {
        while (!stopped && !TERMINAL.has(d.state)) {
          await new Promise((resolve) => setTimeout(resolve, 1000));
          try { d = await get(`/v1/deployments/${enc(d.id)}`); } catch (error) { showError(error); return; }
          if (!stopped) render(d);
        }
        if (!stopped) { await loadHistory(); await refresh(); }
      })();
    }
  }

  async function secrets() {
    const page = await get(`${base}/secrets${query({ limit: 100 })}`);
    replace(body, h("h2", {}, "Secrets"), h("p", { class: "muted" }, "Names only: the API never returns a secret's value."),
      table(["Name", "Type", "Version", "Updated", ""], page.items.map((s) => [
        h("code", {}, s.key), s.type, String(s.version), when(s.updated_at),
        action("Delete", ctx.canDeploy, async () => {
          if (!(await confirmAction(`Delete secret ${s.key}?`, "Delete"))) return;
          if (await attempt(() => request("DELETE", `${base}/secrets/${enc(s.key)}${query({ type: s.type })}`), "Secret deleted.")) await secrets();
        }, { danger: true, label: `Delete secret ${s.key}` }),
      ]), "Secrets"),
      h("section", { class: "panel", "aria-labelledby": "set-secret" }, h("h3", { id: "set-secret" }, "Set a secret"),
        form([
          field("Name", { name: "key", required: true, autocomplete: "off" }),
          field("Value", { name: "value", type: "password", required: true, autocomplete: "new-password" }),
          field("Type", { name: "type", options: ["env", "file"] }),
        ], "Set secret", ctx.canDeploy, async (v, element) => {
          if (await attempt(() => post(`${base}/secrets`, v), "Secret set.")) { element.reset(); await secrets(); }
        })));
  }

  async function domains() {
    const page = await get(`${base}/domains${query({ limit: 100 })}`);
    const certificate = (c) => {
      if (!c) return h("span", { "data-certificate": "none" }, "none");
      return h("span", { "data-certificate": c.status }, badge(c.status),
        c.not_after ? ` until ${when(c.not_after)}` : "", c.issuer ? ` from ${c.issuer}` : "",
        c.error ? h("span", { class: "muted" }, ` ${c.error}`) : "",
        c.next_attempt_at ? h("span", { class: "muted" }, ` (next attempt ${when(c.next_attempt_at)})`) : "");
    };
    replace(body, h("h2", {}, "Domains"),
      h("p", { class: "muted" }, "To prove a hostname is yours, create the DNS record shown at your DNS provider, then verify it. "
        + "A verified domain routes to this instance and can be given a certificate."),
      table(["Hostname", "Status", "Record", "Record name", "Record value", "Certificate", ""], page.items.map((d) => [
        d.hostname,
        h("span", { "data-status": d.status }, badge(d.status)),
        d.verification.type,
        h("code", { "data-record": "name" }, d.verification.name),
        h("code", { "data-record": "value" }, d.verification.value),
        certificate(d.certificate),
        h("div", { class: "row" },
          d.status === "verified" ? null : action("Verify", ctx.canDeploy, async () => {
            if (await attempt(() => post(`/v1/domains/${enc(d.id)}/verify`), `${d.hostname} verified.`)) await domains();
          }, { label: `Verify ${d.hostname}` }),
          d.status === "verified" ? action(`${certificateVerb(d.certificate)} certificate`, ctx.canDeploy, async () => {
            if (await attempt(() => post(`/v1/domains/${enc(d.id)}/cert`), "Certificate requested.")) await domains();
          }, { label: `${certificateVerb(d.certificate)} a certificate for ${d.hostname}` }) : null,
          action("Delete", ctx.canDeploy, async () => {
            if (!(await confirmAction(`Remove domain ${d.hostname}? The router stops serving it and its certificate is deleted.`, "Remove"))) return;
            await attempt(() => request("DELETE", `/v1/domains/${enc(d.id)}`), "Domain removed."); // 204: no body
            await domains();
          }, { danger: true, label: `Delete ${d.hostname}` })),
      ]), "Domains"),
      h("section", { class: "panel", "aria-labelledby": "add-domain" }, h("h3", { id: "add-domain" }, "Add a domain"),
        form([field("Hostname", { name: "hostname", required: true, placeholder: "app.example.com", autocomplete: "off" })], "Add domain", ctx.canDeploy,
          async (v) => { if (await attempt(() => post(`${base}/domains`, v), "Domain added: create the DNS record shown, then verify.")) await domains(); })));
    // a certificate is obtained in the background: show its outcome when its event arrives
    let reload = null;
    onEvent = (event) => {
      if (!/^(certificate|domain)\./.test(event.type) || reload) return;
      reload = setTimeout(() => { reload = null; domains().catch(showError); }, 300);
    };
    ctx.onLeave(() => { onEvent = null; clearTimeout(reload); });
  }

  async function routes() {
    const page = await get(`${base}/routes${query({ limit: 100 })}`);
    replace(body, h("h2", {}, "Routes"),
      table(["Path", "Port", "Protocol", "Weight", "Strip prefix", ""], page.items.map((r) => [
        h("code", {}, r.path), String(r.port), r.protocol, String(r.weight), r.strip_prefix ? "yes" : "no",
        action("Delete", ctx.canDeploy, async () => {
          if (!(await confirmAction(`Delete route ${r.path}?`, "Delete"))) return;
          await attempt(() => request("DELETE", `/v1/routes/${enc(r.id)}`), "Route deleted."); // 204: no body
          await routes();
        }, { danger: true, label: `Delete route ${r.path}` }),
      ]), "Routes"),
      h("section", { class: "panel", "aria-labelledby": "add-route" }, h("h3", { id: "add-route" }, "Add a route"),
        form([
          field("Path", { name: "path", required: true, value: "/" }),
          field("Port", { name: "port", type: "number", required: true, min: 1, max: 65535,
            value: (instance.ports || []).find((p) => p.protocol === "tcp")?.container_port }),
          field("Weight", { name: "weight", type: "number", required: true, min: 0, max: 100, value: 100 }),
          checkbox("Strip prefix", { name: "strip_prefix" }),
        ], "Add route", ctx.canDeploy, async (v) => {
          const route = { path: v.path, port: Number(v.port), weight: Number(v.weight), strip_prefix: v.strip_prefix };
          if (await attempt(() => post(`${base}/routes`, route), "Route added.")) await routes();
        })));
  }
}

// POST /v1/domains/{id}/cert orders a first certificate, a new one after a failure, or a renewal.
function certificateVerb(certificate) {
  if (!certificate) return "Request";
  return certificate.status === "failed" ? "Retry" : "Renew";
}

function releaseDiff(a, b) {
  if (!a || !b) return h("p", { class: "muted" }, "Pick two releases.");
  const rows = [];
  const compare = (name, x, y) => {
    const left = typeof x === "string" ? x : JSON.stringify(x);
    const right = typeof y === "string" ? y : JSON.stringify(y);
    if (left !== right) rows.push([name, left ?? "—", right ?? "—"]);
  };
  compare("image", a.image, b.image);
  compare("replicas", a.replicas, b.replicas);
  compare("resources", a.resources, b.resources);
  compare("ports", a.ports, b.ports);
  compare("labels", a.labels, b.labels);
  compare("release command", a.release_command, b.release_command);
  for (const key of [...new Set([...Object.keys(a.env), ...Object.keys(b.env)])].sort()) {
    compare(`env ${key}`, a.env[key], b.env[key]);
  }
  if (a.secrets_revision !== b.secrets_revision) {
    rows.push(["secrets", `revision ${a.secrets_revision}`, `revision ${b.secrets_revision} (values are never shown)`]);
  }
  return table(["Field", `v${a.version}`, `v${b.version}`], rows, `Changes from v${a.version} to v${b.version}`);
}

export async function keysPage(ctx) {
  const page = await get(`/v1/keys${query({ limit: 100 })}`);
  const shown = h("div", { "aria-live": "polite" });
  replace(ctx.main, h("h1", {}, "API keys"),
    table(["Name", "Prefix", "Roles", "Created", "Last used", "Expires", "Revoked", ""], page.items.map((k) => [
      k.name, h("code", {}, k.prefix), k.roles.join(", "), when(k.created_at), when(k.last_used_at), when(k.expires_at), when(k.revoked_at),
      k.revoked_at ? "" : action("Revoke", ctx.canAdmin, async () => {
        if (!(await confirmAction(`Revoke key ${k.name}? Anything using it stops working at once.`, "Revoke"))) return;
        if (await attempt(() => request("DELETE", `/v1/keys/${enc(k.id)}`), "Key revoked.")) await keysPage(ctx);
      }, { danger: true, label: `Revoke key ${k.name}` }),
    ]), "API keys"),
    h("section", { class: "panel", "aria-labelledby": "new-key" }, h("h2", { id: "new-key" }, "New key"),
      form([
        field("Name", { name: "name", required: true }),
        field("Role", { name: "role", options: ["read", "deploy", "admin"] }),
      ], "Create key", ctx.canAdmin, async (v) => {
        const created = await attempt(() => post("/v1/keys", { name: v.name, roles: [v.role] }));
        if (created) {
          await keysPage(ctx);
          ctx.main.append(h("section", { class: "panel" }, h("h2", {}, "Copy the new key now"),
            h("p", {}, "It is shown once and never again:"), h("code", { id: "new-key-value" }, created.key)));
        }
      })), shown);
}
