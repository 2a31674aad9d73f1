// The console's link to its server: the JavaScript client (for publishing, live streams,
// jobs and the session) and `api()` for the plain JSON endpoints the client has no method
// for. Both go to the origin that served the page, with its session cookie.

import { Tidings, TidingsError } from "../client/tidings.js";

export { Tidings, TidingsError };

/** The server's path prefix (a proxy may serve tidings under one): what precedes /console. */
export const prefix = location.pathname.replace(/\/console\/?$/, "");

/** The client every page shares: same origin, the session's cookie, no token. */
export const client = new Tidings({ url: location.origin + prefix, credentials: "same-origin" });

// Requests wait this long for an answer (the doctor's report takes seconds).
const TIMEOUT_MS = 30_000;

async function request(
  method: string,
  path: string,
  body: unknown,
  signal: AbortSignal | undefined,
  accept: string,
): Promise<Response> {
  const ctl = new AbortController();
  const abort = () => ctl.abort();
  signal?.addEventListener("abort", abort, { once: true });
  if (signal?.aborted) ctl.abort();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, TIMEOUT_MS);
  const headers: Record<string, string> = { Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const response = await fetch(prefix + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      signal: ctl.signal,
    });
    if (!response.ok) throw await errorOf(response);
    return response;
  } catch (exc) {
    if (exc instanceof TidingsError) throw exc;
    if (timedOut) throw new TidingsError(0, "timeout", `no answer to ${method} ${path} within ${TIMEOUT_MS / 1000} s`);
    if (signal?.aborted) throw exc; // the page was left: nobody is waiting for this
    throw new TidingsError(0, "unreachable", `the server did not answer ${method} ${path}: ${exc}`);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  }
}

async function errorOf(response: Response): Promise<TidingsError> {
  const text = await response.text().catch(() => "");
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: a proxy's page
  }
  const detail = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (detail && typeof detail.code === "string" && typeof detail.message === "string") {
    return new TidingsError(response.status, detail.code, detail.message, body);
  }
  const message = text.trim().slice(0, 300) || response.statusText || "(empty answer)";
  return new TidingsError(response.status, `http_${response.status}`, message, body);
}

/** A JSON request to the server (`path` from its root, e.g. "/v1/queues"); a TidingsError
 * for an error status. */
export async function api<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const response = await request(method, path, body, signal, "application/json");
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new TidingsError(response.status, "malformed", `${method} ${path} answered with malformed JSON`, text);
  }
}

/** A GET whose answer is text (the Prometheus exposition of /metrics). */
export async function apiText(path: string, signal?: AbortSignal): Promise<string> {
  const response = await request("GET", path, undefined, signal, "text/plain");
  return response.text();
}

/** A query string from the defined, non-empty values. */
export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** The path segment for a name: `/v1/channels/${seg(name)}`. */
export const seg = encodeURIComponent;
