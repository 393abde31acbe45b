// The console's only way to the server: the public /v1 API with the user's own credential.
// The credential lives in sessionStorage (this tab only) and travels in the Authorization header,
// never in a URL, so it is in no history, referrer or access log.
const KEY = "ctrlplane.credential";

export const credential = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const message = body && body.message ? body.message : `HTTP ${status}`;
    super(message);
    this.status = status;
    this.code = body && body.code;
    this.requestId = body && body.request_id;
  }
  describe() {
    return `${this.message}${this.code ? ` (${this.code}` : ""}${this.requestId ? `, request ${this.requestId})` : this.code ? ")" : ""}`;
  }
}

function headers(extra = {}) {
  const token = credential.get();
  return { ...(token ? { Authorization: `Bearer ${token}` } : {}), ...extra };
}

// Every POST carries an Idempotency-Key, so the server runs it at most once; a request that got no
// answer at all (fetch throws a TypeError: the server closed a kept-alive connection as the request
// went out, "Failed to fetch") is sent once more when that is safe: a POST with its key (the server
// replays the first answer if the first one ran), or a GET, HEAD, PUT or DELETE.
const SAFE_TO_RESEND = new Set(["GET", "HEAD", "PUT", "DELETE"]);

function idempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // unlike crypto.randomUUID, available on plain http:// too
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export async function request(method, path, body, extraHeaders = {}) {
  const keyed = method === "POST" ? { "Idempotency-Key": idempotencyKey(), ...extraHeaders } : extraHeaders;
  const init = { method, headers: headers(keyed), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (!(error instanceof TypeError) || !(SAFE_TO_RESEND.has(method) || "Idempotency-Key" in init.headers)) throw error;
    response = await fetch(path, init);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text.slice(0, 200) }; }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Server-Sent Events over fetch(): EventSource cannot send an Authorization header.
// Calls onEvent({event, id, data}) for each message until the returned controller is aborted.
export function stream(path, onEvent, onError) {
  const controller = new AbortController();
  (async () => {
    const response = await fetch(path, {
      headers: headers({ Accept: "text/event-stream" }),
      signal: controller.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch { /* not JSON */ }
      throw new ApiError(response.status, body);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const message = { event: "message", id: null, data: "" };
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const content = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "data") data.push(content);
          else if (field === "event") message.event = content;
          else if (field === "id") message.id = content;
        }
        if (data.length) {
          message.data = data.join("\n");
          onEvent(message);
        }
      }
    }
  })().catch((error) => {
    if (error.name !== "AbortError" && onError) onError(error);
  });
  return controller;
}
