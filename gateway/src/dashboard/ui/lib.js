// Tollgate dashboard: what every view shares -- the token, the API client, DOM helpers and
// the one money format.
//
// Security rules (every file of the page):
// - the admin token lives in sessionStorage (this tab only) and is only ever sent as an
//   `Authorization: Bearer` header on fetch() to this origin; never in a URL;
// - data from the API is written with textContent (never innerHTML), so a payer id or route
//   name cannot inject markup; charts are SVG images (an <img> runs no script).

const TOKEN_KEY = 'tollgate-admin-token';

export const $ = (id) => document.getElementById(id);

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function keepToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
}

export function dropToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Called when the API refuses the token (set by the page).
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

export class ApiError extends Error {
  constructor(status, body) {
    const code = body && body.code ? body.code : 'http_' + status;
    const detail = body && (body.detail || body.title) ? ': ' + (body.detail || body.title) : '';
    super(status + ' ' + code + detail);
    this.status = status;
    this.code = code;
  }
}

// A fetch() to the admin API with the token; 401 logs out.
export async function authorized(path, init) {
  const headers = Object.assign({ Authorization: 'Bearer ' + token() }, (init && init.headers) || {});
  const res = await fetch(path, Object.assign({ cache: 'no-store', credentials: 'omit' }, init || {}, { headers }));
  if (res.status === 401) {
    onUnauthorized('The admin token was refused (401). Log in again.');
    throw new ApiError(401, { code: 'unauthorized' });
  }
  return res;
}

// JSON (or text) from the admin API; a non-2xx answer is an ApiError with its problem code.
export async function api(method, path, body, extraHeaders) {
  const init = { method, headers: Object.assign({}, extraHeaders || {}) };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await authorized(path, init);
  const type = res.headers.get('content-type') || '';
  // JSON and problem+json parsed; anything else (NDJSON, CSV) is text.
  const json = type.startsWith('application/json') || type.includes('+json');
  const data = json ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    throw new ApiError(res.status, typeof data === 'object' ? data : null);
  }
  return data;
}

// A chart: fetched with the token, shown from a blob: URL.
const chartUrls = {};
export async function chart(imgId, path) {
  const res = await authorized(path, {});
  if (!res.ok) throw new ApiError(res.status, null);
  const url = URL.createObjectURL(await res.blob());
  if (chartUrls[imgId]) URL.revokeObjectURL(chartUrls[imgId]);
  chartUrls[imgId] = url;
  $(imgId).src = url;
  // The query it shows (for the figure links and the tests).
  $(imgId).dataset.query = path;
}

export function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// A figure: its text, a stable name for tests, and a link to the query that produced it.
export function fig(tag, text, name, query) {
  const e = el(tag);
  const a = el('a', text, 'fig');
  a.href = '#api';
  a.dataset.api = query;
  a.title = 'GET ' + query;
  if (name) a.dataset.figure = name;
  e.appendChild(a);
  return e;
}

// A card: a label and a figure.
export function card(label, text, name, query, cls) {
  const d = el('div', null, 'card' + (cls ? ' ' + cls : ''));
  d.appendChild(el('div', label, 'label'));
  d.appendChild(fig('div', text, name, query));
  return d;
}

export function fillBody(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
  if (rows.length === 0) {
    const tr = el('tr');
    const td = el('td', 'none', 'muted');
    td.colSpan = $(table).tHead.rows[0].cells.length;
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

export function showError(id, err) {
  $(id).textContent = err ? String(err.message || err) : '';
}

// ---- money: one format everywhere ---------------------------------------------------------
// "<amount> <CODE>" with exactly the currency's decimals (its scale), built from the API's
// integer atomic units or exact decimal strings with string operations only: no floating
// point ever touches an amount.

const currency = { codes: [], scales: {} };

export function setCurrencies(codes, scales) {
  currency.codes = Array.isArray(codes) ? codes : [];
  currency.scales = scales || {};
}

export function currencies() {
  return currency.codes;
}

function scaleOf(code) {
  const s = currency.scales[code];
  return Number.isInteger(s) ? s : null;
}

// Atomic units (an integer, as a number or a string) at `scale` as a decimal string.
export function fromMinor(minor, scale) {
  let s = String(minor);
  const neg = s.startsWith('-');
  if (neg) s = s.slice(1);
  if (!/^\d+$/.test(s) || !Number.isInteger(scale)) return String(minor);
  s = s.replace(/^0+(?=\d)/, '');
  if (scale === 0) return (neg ? '-' : '') + s;
  s = s.padStart(scale + 1, '0');
  return (neg ? '-' : '') + s.slice(0, -scale) + '.' + s.slice(-scale);
}

// An exact decimal string written with `scale` decimals (never rounded: one with more
// decimals than the scale is shown as it is).
export function withScale(decimal, scale) {
  const text = String(decimal);
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (!m || !Number.isInteger(scale) || (m[3] || '').length > scale) return text;
  return m[1] + m[2] + (scale > 0 ? '.' + (m[3] || '').padEnd(scale, '0') : '');
}

// A decimal amount of a configured currency.
export function money(decimal, code) {
  const scale = scaleOf(code);
  return (scale === null ? String(decimal) : withScale(decimal, scale)) + ' ' + code;
}

// Atomic units of a currency at a known scale (usage events carry their own).
export function moneyMinor(minor, code, scale) {
  return fromMinor(minor, Number.isInteger(scale) ? scale : scaleOf(code)) + ' ' + code;
}

// Amounts per currency ({"USD": "0.05"}); none is zero in each configured currency.
export function amounts(map) {
  const keys = Object.keys(map || {});
  if (keys.length === 0) return currency.codes.map((c) => money('0', c)).join(', ');
  return keys.map((c) => money(map[c], c)).join(', ');
}

// A unix-ms time as `2026-11-22 10:04:05 UTC`.
export function utcTime(ms) {
  return new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
}
