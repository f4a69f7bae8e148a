// Tollgate provider dashboard. Plain script, no dependencies; served by the admin listener.
//
// Security rules of this file:
// - the admin token lives in sessionStorage (this tab only) and is only ever sent as an
//   `Authorization: Bearer` header on fetch() to this origin; never in a URL;
// - data from the API is written with textContent (never innerHTML), so a payer id or route
//   name cannot inject markup; charts are SVG images (an <img> runs no script).
'use strict';

(function () {
  const TOKEN_KEY = 'tollgate-admin-token';
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let chartUrls = {};
  let currentPayer = null;

  // ---- helpers ----------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  function utcDay(d) {
    const p = (n) => String(n).padStart(2, '0');
    return d.getUTCFullYear() + p(d.getUTCMonth() + 1) + p(d.getUTCDate());
  }

  function range() {
    const days = Number($('range').value) || 7;
    const to = new Date();
    const from = new Date(to.getTime() - (days - 1) * 86400000);
    return { from: utcDay(from), to: utcDay(to) };
  }

  function queries() {
    const r = range();
    const q = 'from=' + r.from + '&to=' + r.to;
    const minutes = $('minutes').value;
    return {
      summary: '/admin/v1/summary?' + q,
      payers: '/admin/v1/payers?' + q + '&limit=20',
      traffic: '/admin/v1/traffic?minutes=' + encodeURIComponent(minutes),
      revenueChart: (c) => '/admin/v1/charts/revenue.svg?' + q + '&currency=' + encodeURIComponent(c),
      requestsChart: '/admin/v1/charts/requests.svg?' + q,
      trafficChart: '/admin/v1/charts/traffic.svg?minutes=' + encodeURIComponent(minutes),
    };
  }

  class ApiError extends Error {
    constructor(status, body) {
      const code = body && body.code ? body.code : 'http_' + status;
      const detail = body && (body.detail || body.title) ? ': ' + (body.detail || body.title) : '';
      super(status + ' ' + code + detail);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Authorization: 'Bearer ' + token() }, extraHeaders || {});
    const init = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      logout('The admin token was refused (401). Log in again.');
      throw new ApiError(401, { code: 'unauthorized' });
    }
    const type = res.headers.get('content-type') || '';
    const data = type.includes('json') ? await res.json().catch(() => null) : await res.text();
    if (!res.ok) {
      throw new ApiError(res.status, typeof data === 'object' ? data : null);
    }
    return data;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  // A figure: its text, a stable name for tests, and a link to the query that produced it.
  function fig(tag, text, name, query) {
    const e = el(tag);
    const a = el('a', text, 'fig');
    a.href = '#api';
    a.dataset.api = query;
    a.title = 'GET ' + query;
    if (name) a.dataset.figure = name;
    e.appendChild(a);
    return e;
  }

  function amounts(map) {
    const keys = Object.keys(map || {});
    if (keys.length === 0) return '0';
    return keys.map((c) => map[c] + ' ' + c).join(', ');
  }

  function fillBody(table, rows) {
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

  function showError(id, err) {
    $(id).textContent = err ? String(err.message || err) : '';
  }

  function idempotencyKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return 'ui-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // One revenue chart per configured currency (amounts in different currencies never add up).
  function revenueCharts(currencies, q) {
    const box = $('revenue-charts');
    const want = currencies.map((c) => 'chart-revenue-' + c);
    const have = Array.from(box.querySelectorAll('img'), (i) => i.id);
    if (want.join() !== have.join()) {
      box.replaceChildren(...currencies.map((c) => {
        const img = el('img');
        img.id = 'chart-revenue-' + c;
        img.alt = 'revenue per day by route, ' + c;
        return img;
      }));
    }
    return Promise.all(currencies.map((c) => chart('chart-revenue-' + c, q.revenueChart(c))));
  }

  async function chart(imgId, path) {
    const res = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token() },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (!res.ok) throw new ApiError(res.status, null);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    if (chartUrls[imgId]) URL.revokeObjectURL(chartUrls[imgId]);
    chartUrls[imgId] = url;
    $(imgId).src = url;
  }

  // ---- views --------------------------------------------------------------------------------

  function renderSummary(s, q) {
    const cards = [];
    const card = (label, text, name) => {
      const d = el('div', null, 'card');
      d.appendChild(el('div', label, 'label'));
      d.appendChild(fig('div', text, name, q));
      cards.push(d);
    };
    card('paid requests', s.totals.requests, 'summary.requests');
    const cs = Object.keys(s.totals.amount);
    if (cs.length === 0) card('revenue', '0', 'summary.revenue');
    for (const c of cs) card('revenue ' + c, s.totals.amount[c] + ' ' + c, 'summary.revenue.' + c);
    $('revenue-totals').replaceChildren(...cards);

    fillBody('routes-table', s.routes.map((r) => {
      const tr = el('tr');
      tr.dataset.route = r.route;
      tr.appendChild(el('td', r.route));
      tr.appendChild(fig('td', r.requests, 'route.' + r.route + '.requests', q));
      tr.appendChild(fig('td', amounts(r.amount), 'route.' + r.route + '.revenue', q));
      return tr;
    }));

    const unitRows = [];
    for (const r of s.routes) {
      for (const [unit, n] of Object.entries(r.units || {})) {
        const tr = el('tr');
        tr.appendChild(el('td', r.route));
        tr.appendChild(el('td', unit));
        tr.appendChild(fig('td', n, 'units.' + r.route + '.' + unit, q));
        unitRows.push(tr);
      }
    }
    fillBody('units-table', unitRows);
  }

  function renderTraffic(t, q) {
    const cards = [];
    const card = (label, text, name) => {
      const d = el('div', null, 'card');
      d.appendChild(el('div', label, 'label'));
      d.appendChild(fig('div', text, name, q));
      cards.push(d);
    };
    card('paid', t.totals.paid, 'traffic.paid');
    card('402 answers', t.totals.status_402, 'traffic.402');
    card('all refusals', t.totals.refused_total, 'traffic.refused');
    for (const [c, v] of Object.entries(t.totals.revenue || {})) {
      card('revenue ' + c, v + ' ' + c, 'traffic.revenue.' + c);
    }
    $('traffic-totals').replaceChildren(...cards);
    fillBody('refusals-table', Object.entries(t.totals.refused).map(([code, n]) => {
      const tr = el('tr');
      tr.dataset.code = code;
      tr.appendChild(el('td', code));
      tr.appendChild(fig('td', n, 'refused.' + code, q));
      return tr;
    }));
  }

  function mandateSummary(d) {
    const parts = [];
    const m = Array.isArray(d.mandates) ? d.mandates : null;
    const p = Array.isArray(d.plans) ? d.plans : null;
    if (m) {
      const active = m.filter((x) => !x.revoked).length;
      parts.push(m.length + ' mandate(s), ' + active + ' active');
    }
    if (p) parts.push(p.map((x) => x.plan + ' ' + x.used + '/' + x.included).join(', ') || 'no plan');
    return parts.length ? parts.join('; ') : '-';
  }

  function renderPayers(p, q) {
    const rows = p.payers.map((r) => {
      const tr = el('tr');
      tr.dataset.payer = r.payer;
      const name = 'payer.' + r.payer;
      tr.appendChild(el('td', r.payer));
      tr.appendChild(fig('td', r.requests, name + '.requests', q));
      tr.appendChild(fig('td', amounts(r.spent), name + '.spent', q));
      const bal = r.balances || {};
      tr.appendChild(fig('td', amounts(Object.fromEntries(Object.entries(bal).map(([c, b]) => [c, b.available]))), name + '.available', q));
      tr.appendChild(fig('td', amounts(Object.fromEntries(Object.entries(bal).map(([c, b]) => [c, b.held]))), name + '.held', q));
      tr.appendChild(fig('td', r.holds, name + '.holds', q));
      tr.appendChild(fig('td', r.blocked ? 'blocked' : 'active', name + '.status', q));
      const mp = el('td', '…', 'muted');
      mp.dataset.figure = name + '.mandates';
      tr.appendChild(mp);
      const td = el('td');
      const b = el('button', 'Open');
      b.type = 'button';
      b.addEventListener('click', () => openPayer(r.payer));
      td.appendChild(b);
      tr.appendChild(td);
      // Mandates and plans come with the payer's own record (read at most every 30 s per
      // payer: each read also sums the payer's last 30 days).
      payerRecord(r.payer).then((d) => {
        mp.textContent = mandateSummary(d);
        mp.className = '';
      }).catch(() => { mp.textContent = '?'; });
      return tr;
    });
    fillBody('payers-table', rows);
  }

  const records = new Map();
  function payerRecord(id) {
    const hit = records.get(id);
    if (hit && Date.now() - hit.at < 30000) return hit.promise;
    const promise = api('GET', payerPath(id));
    records.set(id, { at: Date.now(), promise });
    promise.catch(() => records.delete(id));
    return promise;
  }

  function payerPath(id) {
    return '/admin/v1/payers/' + encodeURIComponent(id);
  }

  async function openPayer(id) {
    currentPayer = id;
    $('payer-id').value = id;
    await loadPayer();
    $('payer').scrollIntoView();
  }

  async function loadPayer() {
    if (!currentPayer) return;
    const q = payerPath(currentPayer);
    let d;
    try {
      d = await api('GET', q);
    } catch (e) {
      $('payer-detail').hidden = true;
      showError('action-result', e);
      return;
    }
    $('payer-detail').hidden = false;
    $('payer-name').textContent = d.payer;
    $('payer-status').textContent = d.blocked ? 'blocked' : 'active';
    $('payer-status').className = 'badge ' + (d.blocked ? 'bad' : 'good');
    $('payer-src').dataset.api = q;
    $('payer-holds').textContent = d.holds;
    fillBody('balances-table', Object.entries(d.balances || {}).map(([c, b]) => {
      const tr = el('tr');
      tr.dataset.currency = c;
      tr.appendChild(el('td', c));
      for (const k of ['available', 'held', 'credited', 'captured']) {
        tr.appendChild(fig('td', b[k], 'detail.' + c + '.' + k, q));
      }
      return tr;
    }));
    const mandates = Array.isArray(d.mandates) ? d.mandates : [];
    fillBody('mandates-table', mandates.map((m) => {
      const tr = el('tr');
      for (const k of ['id', 'owner', 'budget', 'spent', 'held', 'window']) tr.appendChild(el('td', m[k]));
      tr.appendChild(el('td', m.revoked ? 'revoked' : 'active'));
      const td = el('td');
      if (!m.revoked) {
        const b = el('button', 'Revoke');
        b.type = 'button';
        b.addEventListener('click', () => revokeMandate(m.id));
        td.appendChild(b);
      }
      tr.appendChild(td);
      return tr;
    }));
    const usage = Array.isArray(d.usage_30d) ? d.usage_30d : [];
    fillBody('usage-table', usage.map((u) => {
      const tr = el('tr');
      tr.appendChild(el('td', u.day));
      tr.appendChild(el('td', u.route));
      tr.appendChild(fig('td', u.requests, 'detail.usage.' + u.day + '.' + u.route + '.requests', q));
      tr.appendChild(fig('td', amounts(u.amount), 'detail.usage.' + u.day + '.' + u.route + '.amount', q));
      tr.appendChild(el('td', Object.entries(u.units || {}).map(([k, v]) => v + ' ' + k).join(', ')));
      return tr;
    }));
    const plans = Array.isArray(d.plans) ? d.plans : [];
    fillBody('plans-table', plans.map((p) => {
      const tr = el('tr');
      for (const k of ['plan', 'period_end', 'used', 'included']) tr.appendChild(el('td', p[k]));
      return tr;
    }));
  }

  async function refresh() {
    const q = queries();
    // Section links point at the queries of the range in force.
    for (const a of document.querySelectorAll('a.src[data-key]')) {
      if (q[a.dataset.key]) a.dataset.api = q[a.dataset.key];
    }
    const results = await Promise.allSettled([
      api('GET', q.summary).then((s) => {
        renderSummary(s, q.summary);
        return revenueCharts(Array.isArray(s.currencies) ? s.currencies : [], q);
      }),
      api('GET', q.traffic).then((t) => renderTraffic(t, q.traffic)),
      api('GET', q.payers).then((p) => renderPayers(p, q.payers)),
      chart('chart-requests', q.requestsChart),
      chart('chart-traffic', q.trafficChart),
    ]);
    const failed = results.find((r) => r.status === 'rejected');
    showError('error', failed ? failed.reason : null);
    $('updated').textContent = 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC';
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = null;
    if ($('live').checked && token()) timer = setInterval(() => { refresh().catch(() => {}); }, 5000);
  }

  // ---- actions ------------------------------------------------------------------------------

  function result(id, ok, text) {
    const p = $(id);
    p.textContent = text;
    p.className = ok ? 'ok' : 'error';
  }

  async function credit(sign) {
    if (!currentPayer) return;
    records.delete(currentPayer);
    const amount = $('credit-amount').value.trim().replace(/^[+-]/, '');
    const reason = $('credit-reason').value.trim();
    if (!amount || !reason) {
      result('action-result', false, 'amount and reason are required');
      return;
    }
    const currency = $('credit-currency').value;
    try {
      const r = await api('POST', payerPath(currentPayer) + '/credits',
        { amount: sign + amount, currency, reason }, { 'Idempotency-Key': idempotencyKey() });
      result('action-result', true, (sign === '-' ? 'debited ' : 'credited ') + amount + ' ' + currency +
        (sign === '-' ? ' from ' : ' to ') + currentPayer + ': balance ' + r.balance + ' ' + currency + ' (' + r.credit_id + ')');
    } catch (e) {
      result('action-result', false, String(e.message));
    }
    await loadPayer();
    refresh().catch(() => {});
  }

  async function setBlocked(blocked) {
    if (!currentPayer) return;
    records.delete(currentPayer);
    try {
      await api(blocked ? 'POST' : 'DELETE', payerPath(currentPayer) + '/block');
      result('action-result', true, currentPayer + (blocked ? ' is blocked' : ' is unblocked'));
    } catch (e) {
      result('action-result', false, String(e.message));
    }
    await loadPayer();
    refresh().catch(() => {});
  }

  async function revokeMandate(id) {
    records.clear();
    const reason = $('mandate-reason').value.trim();
    if (!reason) {
      $('mandate-id').value = id;
      result('action-result', false, 'enter a reason to revoke mandate ' + id);
      $('mandate-reason').focus();
      return;
    }
    try {
      await api('POST', '/admin/v1/mandates/' + encodeURIComponent(id) + '/revoke', { reason });
      result('action-result', true, 'mandate ' + id + ' revoked');
    } catch (e) {
      const hint = e.status === 404 ? ' (this gateway has no mandate endpoint yet, or no such mandate)' : '';
      result('action-result', false, 'revoking mandate ' + id + ' failed: ' + e.message + hint);
    }
    await loadPayer();
  }

  async function revokeReceipt() {
    const issuer = $('receipt-issuer').value.trim();
    const id = $('receipt-id').value.trim();
    try {
      await api('POST', '/admin/v1/receipts/revoke', { issuer, id });
      result('receipt-result', true, 'receipt ' + id + ' of ' + issuer + ' revoked');
    } catch (e) {
      const hint = e.status === 404 ? ' (this gateway has no receipt revocation endpoint yet)' : '';
      result('receipt-result', false, 'revoking the receipt failed: ' + e.message + hint);
    }
  }

  async function showApi(path) {
    $('api-url').textContent = 'GET ' + path;
    $('api-curl').textContent = 'curl -H "Authorization: Bearer $TOLLGATE_ADMIN_TOKEN" "' +
      location.origin + path + '"';
    $('api-body').textContent = 'loading…';
    try {
      const body = await api('GET', path);
      $('api-body').textContent = typeof body === 'string' ? body : JSON.stringify(body, null, 2);
    } catch (e) {
      $('api-body').textContent = String(e.message);
    }
    $('api').scrollIntoView();
  }

  // ---- login --------------------------------------------------------------------------------

  async function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('toolbar').hidden = false;
    await refresh().catch((e) => showError('error', e));
    schedule();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer) clearInterval(timer);
    timer = null;
    $('app').hidden = true;
    $('toolbar').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
  }

  async function loadCurrencies() {
    let currencies = [];
    try {
      const s = await api('GET', queries().summary);
      currencies = Array.isArray(s.currencies) ? s.currencies : [];
    } catch (e) {
      // Shown by the summary's error.
    }
    $('credit-currency').replaceChildren(...currencies.map((c) => {
      const o = el('option', c);
      o.value = c;
      return o;
    }));
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      $('token').value = '';
      // Check the token before keeping it.
      const res = await fetch('/admin/v1/openapi.json', {
        headers: { Authorization: 'Bearer ' + t }, cache: 'no-store', credentials: 'omit',
      }).catch(() => null);
      if (!res || !res.ok) {
        $('login-error').textContent = res ? 'The token was refused (' + res.status + ').' : 'The gateway did not answer.';
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, t);
      $('login-error').textContent = '';
      await loadCurrencies();
      await start();
    });
    $('logout').addEventListener('click', () => logout(''));
    $('refresh').addEventListener('click', () => refresh().catch(() => {}));
    $('range').addEventListener('change', () => refresh().catch(() => {}));
    $('minutes').addEventListener('change', () => refresh().catch(() => {}));
    $('live').addEventListener('change', schedule);
    $('lookup-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      openPayer($('payer-id').value.trim());
    });
    $('credit-form').addEventListener('submit', (ev) => { ev.preventDefault(); credit(''); });
    $('debit-submit').addEventListener('click', () => credit('-'));
    $('block').addEventListener('click', () => setBlocked(true));
    $('unblock').addEventListener('click', () => setBlocked(false));
    $('mandate-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      revokeMandate($('mandate-id').value.trim());
    });
    $('receipt-form').addEventListener('submit', (ev) => { ev.preventDefault(); revokeReceipt(); });
    document.addEventListener('click', (ev) => {
      const a = ev.target.closest('a[data-api]');
      if (!a) return;
      ev.preventDefault();
      showApi(a.dataset.api);
    });
    if (token()) {
      loadCurrencies().then(start);
    }
  });
})();
