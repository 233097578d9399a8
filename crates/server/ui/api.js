// The API client: the signed-in key lives in sessionStorage only (never in a URL, never
// logged); every call sends it as a Bearer token. Errors become ApiProblem with the
// problem+json members the server sent.

const KEY = 'tombstone.key';

export function storedKey() {
  return sessionStorage.getItem(KEY);
}

export function signIn(secret) {
  sessionStorage.setItem(KEY, secret);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiProblem extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.type = this.body.type || String(status);
  }
}

/** Calls the API. `params` become the query string; `body` is sent as JSON. */
export async function api(method, path, { params, body, headers } = {}) {
  let url = path;
  if (params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') qs.append(k, v);
    }
    const s = qs.toString();
    if (s) url += (url.includes('?') ? '&' : '?') + s;
  }
  const init = { method, headers: { Authorization: `Bearer ${storedKey() || ''}`, ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const res = await fetch(url, init);
  const text = res.status === 204 ? '' : await res.text();
  let json = null;
  if (text) {
    try { json = JSON.parse(text); } catch { json = null; }
  }
  if (!res.ok) throw new ApiProblem(res.status, json);
  return { status: res.status, headers: res.headers, json };
}

export const get = (path, params) => api('GET', path, { params }).then((r) => r.json);

/** The path of a record, or of one of its actions (`:restore`, …). */
export function recordPath(collection, id, action = '') {
  return `/v1/${encodeURIComponent(collection)}/${encodeURIComponent(id)}${action}`;
}
