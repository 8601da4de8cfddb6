// The session and the API client. The admin token is held in this module's
// memory only: no cookie (so no request carries it without the page's
// consent, hence no CSRF), no Web Storage (so nothing outlives the tab).

let token = null;
let expiryTimer = null;
let onSignOut = () => {};

// ApiError is a non-2xx answer other than 401.
export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

// SessionEnded is thrown when a call finds the session gone (401).
export class SessionEnded extends Error {}

// setSignOutHandler registers what runs when the session ends.
export function setSignOutHandler(fn) { onSignOut = fn; }

export function signedIn() { return token !== null; }

// signIn trades the admin secret for an admin token.
export async function signIn(secret) {
  const resp = await fetch('/v1/admin/auth', {
    method: 'POST', credentials: 'omit', cache: 'no-store',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ secret }),
  });
  const data = await body(resp);
  if (!resp.ok) throw new ApiError(resp.status, detail(resp, data));
  token = data.access_token;
  const ttl = Number(data.expires_in) || 0;
  clearTimeout(expiryTimer);
  if (ttl > 0) {
    expiryTimer = setTimeout(() => signOut('Your admin token expired. Sign in again.'), ttl * 1000);
  }
  return ttl;
}

// signOut forgets the token and tells the page why.
export function signOut(reason) {
  token = null;
  clearTimeout(expiryTimer);
  expiryTimer = null;
  onSignOut(reason || '');
}

// call sends an authorized request; a 401 ends the session.
export async function call(method, path, payload) {
  if (token === null) throw new SessionEnded('not signed in');
  const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
  if (payload !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers, credentials: 'omit', cache: 'no-store',
    body: payload === undefined ? undefined : JSON.stringify(payload),
  });
  const data = await body(resp);
  if (resp.status === 401) {
    signOut(`The broker refused the admin token (401: ${detail(resp, data)}). Sign in again.`);
    throw new SessionEnded('401');
  }
  if (!resp.ok) throw new ApiError(resp.status, detail(resp, data));
  return data;
}

// get is call('GET') with query parameters; empty values are left out.
export function get(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return call('GET', s ? `${path}?${s}` : path);
}

async function body(resp) {
  const text = await resp.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return null; }
}

function detail(resp, data) {
  return (data && (data.detail || data.title)) || resp.statusText || 'request failed';
}
