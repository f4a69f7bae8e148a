// Tollgate provider dashboard: the page's main module (views of the summary, traffic and
// payers, the payer actions, login and the refresh loop). Plain ES modules, no dependencies;
// served by the admin listener. The security rules are in lib.js.

import {
  $, api, chart, el, fig, card, fillBody, showError, token, keepToken, dropToken,
  whenUnauthorized, setCurrencies, money, amounts,
} from './lib.js';
import { initPayments, offerRoutes, refreshPayments } from './payments.js';
import { renderLedger, renderRisk, renderRoutes, renderSettlement } from './status.js';

(function () {
  let timer = null;
  let currentPayer = null;

  // ---- helpers ----------------------------------------------------------------------------

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
      settlement: '/admin/v1/x402/queue',
      ledger: '/admin/v1/ledger',
      risk: '/admin/v1/risk/decisions?limit=20',
      revenueChart: (c) => '/admin/v1/charts/revenue.svg?' + q + '&currency=' + encodeURIComponent(c),
      requestsChart: '/admin/v1/charts/requests.svg?' + q,
      trafficChart: '/admin/v1/charts/traffic.svg?minutes=' + encodeURIComponent(minutes),
    };
  }

  function idempotencyKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return 'ui-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // One revenue chart per configured currency (amounts in different currencies never add up).
  function revenueCharts(codes, q) {
    const box = $('revenue-charts');
    const want = codes.map((c) => 'chart-revenue-' + c);
    const have = Array.from(box.querySelectorAll('img'), (i) => i.id);
    if (want.join() !== have.join()) {
      box.replaceChildren(...codes.map((c) => {
        const img = el('img');
        img.id = 'chart-revenue-' + c;
        img.alt = 'revenue per day by route, ' + c;
        return img;
      }));
    }
    return Promise.all(codes.map((c) => chart('chart-revenue-' + c, q.revenueChart(c))));
  }

  // ---- views --------------------------------------------------------------------------------

  function renderSummary(s, q) {
    setCurrencies(s.currencies, s.scales);
    const cards = [card('paid requests', s.totals.requests, 'summary.requests', q)];
    const cs = Object.keys(s.totals.amount);
    if (cs.length === 0) cards.push(card('revenue', amounts({}), 'summary.revenue', q));
    for (const c of cs) cards.push(card('revenue ' + c, money(s.totals.amount[c], c), 'summary.revenue.' + c, q));
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
    const pct = t.totals.conversion_pct;
    const cards = [
      card('paid', t.totals.paid, 'traffic.paid', q),
      card('402 challenges', t.totals.challenges, 'traffic.challenges', q),
      card('other refusals', t.totals.refused_other, 'traffic.refused_other', q),
      card('paid per 402 challenge', pct === null ? '' : pct + ' %', 'traffic.conversion', q),
    ];
    for (const [c, v] of Object.entries(t.totals.revenue || {})) {
      cards.push(card('revenue ' + c, money(v, c), 'traffic.revenue.' + c, q));
    }
    $('traffic-totals').replaceChildren(...cards);
    fillBody('refusals-table', Object.entries(t.totals.refused).map(([code, n]) => {
      const tr = el('tr');
      tr.dataset.code = code;
      tr.appendChild(el('td', code));
      tr.appendChild(fig('td', n, 'refused.' + code, q));
      return tr;
    }));
    renderRoutes(t, q);
    offerRoutes((t.routes || []).map((r) => r.route));
  }

  // Mandates and plans, only where the payer has some (an empty cell otherwise).
  function mandateSummary(d) {
    const parts = [];
    const m = Array.isArray(d.mandates) ? d.mandates : [];
    if (m.length) {
      const active = m.filter((x) => !x.revoked).length;
      parts.push(m.length + (m.length === 1 ? ' mandate' : ' mandates') + ', ' + active + ' active');
    }
    const p = Array.isArray(d.plans) ? d.plans : [];
    if (p.length) parts.push(p.map((x) => x.plan + ' ' + x.used + '/' + x.included).join(', '));
    return parts.join('; ');
  }

  function renderPayers(p, q) {
    const rows = p.payers.map((r) => {
      const tr = el('tr');
      tr.dataset.payer = r.payer;
      const name = 'payer.' + r.payer;
      const bal = r.balances || {};
      const each = (k) => Object.fromEntries(Object.entries(bal).map(([c, b]) => [c, b[k]]));
      tr.appendChild(el('td', r.payer));
      tr.appendChild(fig('td', r.requests, name + '.requests', q));
      tr.appendChild(fig('td', amounts(r.spent), name + '.spent', q));
      tr.appendChild(fig('td', amounts(each('available')), name + '.available', q));
      tr.appendChild(fig('td', amounts(each('held')), name + '.held', q));
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
        tr.appendChild(fig('td', money(b[k], c), 'detail.' + c + '.' + k, q));
      }
      return tr;
    }));
    const mandates = Array.isArray(d.mandates) ? d.mandates : [];
    fillBody('mandates-table', mandates.map((m) => {
      const tr = el('tr');
      for (const k of ['id', 'owner']) tr.appendChild(el('td', m[k]));
      for (const k of ['budget', 'spent', 'held']) tr.appendChild(el('td', m[k] === undefined ? '' : money(m[k], m.currency)));
      tr.appendChild(el('td', m.window));
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
    const now = Date.now();
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
      api('GET', q.settlement).then((s) => renderSettlement(s, q.settlement)),
      api('GET', q.ledger).then((l) => renderLedger(l, q.ledger)),
      api('GET', q.risk).then((r) => renderRisk(r, q.risk)),
      refreshPayments(now),
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
      result('action-result', true, (sign === '-' ? 'debited ' : 'credited ') + money(amount, currency) +
        (sign === '-' ? ' from ' : ' to ') + currentPayer + ': balance ' + money(r.balance, currency) + ' (' + r.credit_id + ')');
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
    dropToken();
    if (timer) clearInterval(timer);
    timer = null;
    $('app').hidden = true;
    $('toolbar').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
  }

  async function loadCurrencies() {
    let codes = [];
    try {
      const s = await api('GET', queries().summary);
      codes = Array.isArray(s.currencies) ? s.currencies : [];
      setCurrencies(codes, s.scales);
    } catch (e) {
      // Shown by the summary's error.
    }
    $('credit-currency').replaceChildren(...codes.map((c) => {
      const o = el('option', c);
      o.value = c;
      return o;
    }));
  }

  whenUnauthorized(logout);

  document.addEventListener('DOMContentLoaded', () => {
    initPayments(() => refresh().catch(() => {}));
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
      keepToken(t);
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
