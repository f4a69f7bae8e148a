// Tollgate dashboard: per-route conversion and upstream health (this process), the x402
// settlement queue as configured, and the ledger database when `[ledger]` is set.

import { $, el, fig, card, fillBody, money, amounts, utcTime } from './lib.js';

function latency(ms) {
  return ms === null || ms === undefined ? '' : '≤ ' + ms + ' ms';
}

function pct(p) {
  return p === null || p === undefined ? '' : p + ' %';
}

// One row per route: paid, 402 challenges, conversion, other refusals, upstream figures.
export function renderRoutes(t, q) {
  fillBody('conversion-table', (t.routes || []).map((r) => {
    const tr = el('tr');
    tr.dataset.route = r.route;
    const n = 'routes.' + r.route + '.';
    const u = r.upstream || {};
    tr.appendChild(el('td', r.route));
    tr.appendChild(fig('td', r.paid, n + 'paid', q));
    tr.appendChild(fig('td', r.challenges, n + 'challenges', q));
    tr.appendChild(fig('td', pct(r.conversion_pct), n + 'conversion', q));
    tr.appendChild(fig('td', r.refused_other, n + 'refused_other', q));
    tr.appendChild(fig('td', u.answered, n + 'answered', q));
    tr.appendChild(fig('td', u.status_5xx, n + 'status_5xx', q));
    tr.appendChild(fig('td', u.unreachable, n + 'unreachable', q));
    tr.appendChild(fig('td', u.timeouts, n + 'timeouts', q));
    tr.appendChild(fig('td', latency(u.p50_ms), n + 'p50', q));
    tr.appendChild(fig('td', latency(u.p95_ms), n + 'p95', q));
    if (u.errors) tr.className = 'warn';
    return tr;
  }));
}

function sentence(id, text, name) {
  const p = el('p', text);
  if (name) p.dataset.figure = name;
  p.id = id;
  return p;
}

// The settlement queue as configured: off, immediate (settled in the request) or deferred.
export function renderSettlement(s, q) {
  const routes = (s.routes || []).map((r) => r.route + ' (' + r.mode + ')').join(', ');
  let text;
  if (s.mode === 'off') {
    text = 'Off: no route takes x402 payments.';
  } else if (s.mode === 'immediate') {
    text = 'Immediate: x402 payments settle within the request, nothing queues. Routes: ' + routes + '.';
  } else {
    text = 'Deferred: 2xx answers queue their x402 settlement for the background settler. Routes: ' + routes + '.';
  }
  const out = [sentence('settlement-status', text, 'settlement.mode')];
  const cards = el('div', null, 'cards');
  const queued = s.queued === null || s.queued === undefined ? 'unknown' : s.queued;
  if (s.mode === 'deferred' || s.queued || s.failed) {
    cards.appendChild(card('queued', queued, 'settlement.queued', q));
    cards.appendChild(card('failed for good (payers blocked)', s.failed, 'settlement.failed', q, s.failed ? 'bad' : ''));
    out.push(cards);
  }
  $('settlement-body').replaceChildren(...out);
}

function age(ms) {
  if (ms < 1000) return ms + ' ms';
  if (ms < 120000) return (ms / 1000).toFixed(1) + ' s';
  return Math.round(ms / 60000) + ' min';
}

// The ledger database: the drainer's lag and the database's all-time figures.
export function renderLedger(l, q) {
  if (!l.configured) {
    $('ledger-body').replaceChildren(sentence('ledger-status',
      'No ledger database ([ledger] is not set): usage, summaries and payers are read from the store.',
      'ledger.configured'));
    return;
  }
  const d = l.drainer || {};
  const drain = el('div', null, 'cards');
  drain.appendChild(card('drainer', d.healthy ? 'healthy' : 'not reaching Redis or PostgreSQL', 'ledger.healthy', q, d.healthy ? '' : 'bad'));
  drain.appendChild(card('waiting in Redis', d.backlog + ' of ' + d.max_backlog, 'ledger.backlog', q, d.over_bound ? 'bad' : ''));
  drain.appendChild(card('lag (oldest waiting)', age(d.oldest_age_ms), 'ledger.lag', q));
  drain.appendChild(card('drained by this replica', d.drained, 'ledger.drained', q));
  const out = [sentence('ledger-status', 'Ledger database configured: the figures below are read from PostgreSQL.', 'ledger.configured'), drain];
  const db = l.database || {};
  if (!db.reachable) {
    out.push(sentence('ledger-db-error', 'Database: ' + (db.error || 'unreachable'), 'ledger.error'));
  } else {
    const figs = el('div', null, 'cards');
    figs.appendChild(card('charges', db.charges, 'ledger.charges', q));
    figs.appendChild(card('voids', db.voids, 'ledger.voids', q));
    figs.appendChild(card('credits', db.credits, 'ledger.credits', q));
    figs.appendChild(card('rejected entries', db.rejects, 'ledger.rejects', q, db.rejects ? 'bad' : ''));
    for (const c of Object.keys(db.revenue || {})) {
      figs.appendChild(card('revenue, all time ' + c, money(db.revenue[c], c), 'ledger.revenue.' + c, q));
    }
    if (Object.keys(db.revenue || {}).length === 0) {
      figs.appendChild(card('revenue, all time', amounts({}), 'ledger.revenue', q));
    }
    const newest = db.newest_event ? utcTime(db.newest_event.time_ms) + ' (' + db.newest_event.id + ')' : 'none yet';
    figs.appendChild(card('newest event', newest, 'ledger.newest', q));
    figs.appendChild(card('schema version', db.schema_version, 'ledger.schema', q));
    out.push(figs);
    out.push(el('p', 'Database figures as of ' + utcTime(db.read_ms) + ' (read at most every 10 s).', 'muted'));
  }
  $('ledger-body').replaceChildren(...out);
}

// The latest risk rule hits ([[risk]]): flags (served), refusals and blocks.
export function renderRisk(r, q) {
  fillBody('risk-table', (r.decisions || []).map((d, i) => {
    const tr = el('tr');
    const n = 'risk.' + i + '.';
    tr.appendChild(el('td', (d.time || '').replace('T', ' ').replace('Z', '')));
    tr.appendChild(fig('td', d.payer, n + 'payer', q));
    tr.appendChild(el('td', d.route));
    tr.appendChild(fig('td', d.rule, n + 'rule', q));
    tr.appendChild(fig('td', d.action, n + 'action', q));
    tr.appendChild(el('td', String(d.value)));
    tr.appendChild(el('td', String(d.limit)));
    if (d.action !== 'flag') tr.className = 'warn';
    return tr;
  }));
}
