// DOM helpers: h() builds elements (text is always set as text, never parsed as HTML).
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "style") element.style.cssText = value; // CSSOM: allowed by the CSP, unlike a style attribute
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const notice = () => document.getElementById("notice");

export function showError(error) {
  const box = notice();
  box.className = "notice";
  box.textContent = error && error.describe ? error.describe() : String(error && error.message ? error.message : error);
  box.hidden = false;
}

export function showInfo(text) {
  const box = notice();
  box.className = "notice info";
  box.textContent = text;
  box.hidden = false;
}

export function clearNotice() {
  const box = notice();
  box.hidden = true;
  box.textContent = "";
}

// Every destructive action asks first, in a modal <dialog> (focus is trapped and Escape cancels).
export function confirmAction(text, action = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// Runs a change; a refusal shows the API's own message. Returns the result, or undefined.
export async function attempt(fn, success) {
  clearNotice();
  try {
    const result = await fn();
    if (success) showInfo(success);
    return result;
  } catch (error) {
    showError(error);
    return undefined;
  }
}

export function badge(state) {
  return h("span", { class: `badge s-${state}` }, state);
}

export function table(columns, rows, label) {
  return h(
    "div",
    { class: "scroll", tabindex: "0", role: "region", "aria-label": label },
    h(
      "table",
      {},
      h("caption", { class: "muted" }, label),
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col" }, column)))),
      h("tbody", {}, rows.length ? rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "None yet."))),
    ),
  );
}

let fieldCount = 0;
export function field(labelText, attrs = {}) {
  const id = `f${++fieldCount}`;
  const control = attrs.options
    ? h("select", { id, name: attrs.name }, attrs.options.map((o) => h("option", { value: o, selected: o === attrs.value }, o)))
    : h("input", { id, type: "text", ...attrs });
  return h("label", { for: id }, labelText, control);
}

export function checkbox(labelText, attrs = {}) {
  const id = `f${++fieldCount}`;
  return h("label", { for: id, class: "check" }, h("input", { id, type: "checkbox", ...attrs }), labelText);
}

// A form whose submit button is a mutating control: disabled when the credential may not do it.
export function form(fields, submitText, allowed, onSubmit, opts = {}) {
  const element = h(
    "form",
    { class: "inline", "aria-label": opts.label || submitText },
    fields,
    h("button", { type: "submit", "data-mutating": true, disabled: !allowed, class: opts.danger ? "danger" : null,
      title: allowed ? null : "Your credential's role does not allow this" }, submitText),
  );
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(element).entries());
    for (const box of element.querySelectorAll("input[type=checkbox]")) values[box.name] = box.checked;
    await onSubmit(values, element);
  });
  return element;
}

export function action(text, allowed, onClick, opts = {}) {
  return h("button", { type: "button", "data-mutating": true, disabled: !allowed, class: opts.danger ? "danger" : "secondary",
    "aria-label": opts.label || null, title: allowed ? null : "Your credential's role does not allow this", onclick: onClick }, text);
}

export function when(value) {
  if (!value) return "—";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

export function bytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = value, i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function meter(labelText, used, limit, unit = "") {
  const percent = limit > 0 ? Math.min(100, Math.round((used / limit) * 100)) : 0;
  return h("div", { class: "meter" },
    h("span", {}, labelText),
    h("div", { class: `bar${percent >= 90 ? " high" : ""}`, role: "meter", "aria-label": labelText,
      "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used, "aria-valuetext": `${used} of ${limit}${unit}` },
      h("span", { style: `width:${percent}%` })),
    h("span", { class: "muted" }, `${used} / ${limit}${unit} (${percent}%)`));
}
