// Tollgate dashboard: recent payments -- the ledger's newest events, filtered on the server by
// route, payer and time (GET /admin/v1/events?order=desc), and their CSV export.

import { $, api, authorized, el, fig, fillBody, moneyMinor, showError, utcTime, ApiError } from './lib.js';

// Time windows of the filter, in ms ('' = any time).
const WINDOWS = { '900000': 'last 15 min', '3600000': 'last hour', '86400000': 'last 24 hours',
  '604800000': 'last 7 days', '2592000000': 'last 30 days', '': 'any time' };

let applied = { route: '', payer: '', window: '86400000' };

// The filter's query string; `since` is fixed when the filter is applied or the page polls.
function filterQuery(now) {
  const p = new URLSearchParams();
  p.set('order', 'desc');
  if (applied.route) p.set('route', applied.route);
  if (applied.payer) p.set('payer', applied.payer);
  if (applied.window) p.set('since', String(now - Number(applied.window)));
  return p;
}

export function paymentsQuery(now) {
  const p = filterQuery(now);
  p.set('limit', '50');
  return '/admin/v1/events?' + p.toString();
}

export function csvQuery(now) {
  const p = filterQuery(now);
  p.set('limit', '10000');
  return '/admin/v1/events.csv?' + p.toString();
}

// What the status column says.
function status(e) {
  return e.voids ? 'void' : 'charged';
}

function row(e, q) {
  const tr = el('tr');
  tr.dataset.id = e.id;
  const name = 'payment.' + e.id;
  tr.appendChild(fig('td', utcTime(e.time_ms), name + '.time', q));
  tr.appendChild(fig('td', e.route, name + '.route', q));
  tr.appendChild(fig('td', e.payer, name + '.payer', q));
  tr.appendChild(fig('td', moneyMinor(e.amount_minor, e.currency, e.scale), name + '.amount', q));
  tr.appendChild(fig('td', String(e.credential).split(':')[0], name + '.credential', q));
  tr.appendChild(fig('td', status(e), name + '.status', q));
  tr.appendChild(fig('td', e.upstream_status ? String(e.upstream_status) : '', name + '.upstream', q));
  return tr;
}

// Reload the table (newest first).
export async function refreshPayments(now) {
  const q = paymentsQuery(now);
  $('payments-table').dataset.api = q;
  $('payments-csv').dataset.api = csvQuery(now);
  const text = await api('GET', q);
  const events = String(text).split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  fillBody('payments-table', events.map((e) => row(e, q)));
  $('payments-count').textContent = events.length + (events.length === 50 ? '+ ' : ' ') +
    'payments, ' + WINDOWS[applied.window] + (applied.route ? ', route ' + applied.route : '') +
    (applied.payer ? ', payer ' + applied.payer : '');
}

// The route filter offers every route the gateway knows.
export function offerRoutes(routes) {
  const select = $('filter-route');
  const want = [''].concat(routes);
  const have = Array.from(select.options, (o) => o.value);
  if (want.join('\n') === have.join('\n')) return;
  const current = select.value;
  select.replaceChildren(...want.map((r) => {
    const o = el('option', r || 'all routes');
    o.value = r;
    return o;
  }));
  select.value = want.includes(current) ? current : '';
}

// Fetch the CSV with the token and save it as a download (the token never goes into a URL).
async function exportCsv() {
  const q = csvQuery(Date.now());
  $('payments-csv').dataset.api = q;
  try {
    const res = await authorized(q, {});
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = el('a');
    a.href = url;
    a.download = 'tollgate-events-' + new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-') + '.csv';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    const rows = (await blob.text()).split('\r\n').filter((l) => l).length - 1;
    $('payments-export').textContent = 'exported ' + rows + ' rows (' + a.download + ')';
    $('payments-export').dataset.file = a.download;
  } catch (e) {
    showError('payments-export', e);
  }
}

export function initPayments(onApply) {
  $('filter-window').replaceChildren(...Object.entries(WINDOWS).map(([v, label]) => {
    const o = el('option', label);
    o.value = v;
    return o;
  }));
  $('filter-window').value = applied.window;
  $('payments-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    applied = {
      route: $('filter-route').value,
      payer: $('filter-payer').value.trim(),
      window: $('filter-window').value,
    };
    onApply();
  });
  $('payments-csv').addEventListener('click', () => { exportCsv(); });
}
