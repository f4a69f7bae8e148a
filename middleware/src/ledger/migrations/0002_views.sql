-- Tollgate ledger of record, schema version 2: the views a provider queries directly.
-- Every amount is exact: *_minor columns are integer atomic units, `amount` columns the same
-- divided by 10^scale (NUMERIC, never floating point). A void counts -1 request and minus its
-- amount and units, on its own day (it follows its charge within the request's time, so the two
-- days differ only across midnight UTC; the Redis aggregates moved it back on the charge's day).

-- Events with their sign (+1 charge, -1 void).
CREATE VIEW ledger_events_signed AS
SELECT e.*,
       CASE WHEN e.kind = 'void' THEN -1 ELSE 1 END AS sign,
       CASE WHEN e.kind = 'void' THEN -e.amount_minor ELSE e.amount_minor END AS signed_amount_minor,
       CASE WHEN e.kind = 'void' THEN -e.uncharged_minor ELSE e.uncharged_minor END AS signed_uncharged_minor
FROM ledger_events e;

-- Revenue per UTC day, route and currency.
CREATE VIEW revenue_daily_route AS
SELECT day, route, currency, scale,
       sum(sign)::BIGINT AS requests,
       sum(signed_amount_minor) AS amount_minor,
       sum(signed_amount_minor) / (10::NUMERIC ^ scale) AS amount,
       sum(signed_uncharged_minor) AS uncharged_minor
FROM ledger_events_signed
GROUP BY day, route, currency, scale;

-- Revenue per UTC day, payer and currency.
CREATE VIEW revenue_daily_payer AS
SELECT day, payer, currency, scale,
       sum(sign)::BIGINT AS requests,
       sum(signed_amount_minor) AS amount_minor,
       sum(signed_amount_minor) / (10::NUMERIC ^ scale) AS amount,
       sum(signed_uncharged_minor) AS uncharged_minor
FROM ledger_events_signed
GROUP BY day, payer, currency, scale;

-- Usage units per UTC day, route, payer and unit (request, prompt_token, byte, ...).
CREATE VIEW usage_units_daily AS
SELECT e.day, e.route, e.payer, u.key AS unit,
       sum(e.sign * u.value::NUMERIC) AS units
FROM ledger_events_signed e, jsonb_each_text(e.units) u
GROUP BY e.day, e.route, e.payer, u.key;

-- Credits and debits per UTC day, payer and currency.
CREATE VIEW credits_daily AS
SELECT day, payer, currency, scale,
       count(*)::BIGINT AS entries,
       sum(amount_minor) FILTER (WHERE amount_minor > 0) AS credited_minor,
       -sum(amount_minor) FILTER (WHERE amount_minor < 0) AS debited_minor,
       sum(amount_minor) AS net_minor
FROM ledger_credits
GROUP BY day, payer, currency, scale;

-- The balance equation per payer and currency, over the whole ledger:
--   credited_minor - captured_minor = balance_minor
-- where credited is every credit and debit (top-ups, admin credits, refunds), captured every
-- charge that drew on the prepaid balance (paid_by 'token' or 'plan'; receipts and x402 pay
-- per request and never touch it) net of its voids. balance_minor is what the store's account
-- must hold as available + held (a hold in flight has left `available` but is not captured
-- yet), and credited/captured equal the account's own `credited` and `captured` counters.
-- It cannot show: holds in flight (they are not ledger entries), entries still waiting in the
-- Redis streams (tollgate_ledger_backlog_events > 0), usage that could not be charged
-- (uncharged_minor, never a debt), or a balance changed outside Tollgate.
CREATE VIEW payer_balance_equation AS
WITH credited AS (
    SELECT payer, currency, sum(amount_minor) AS credited_minor
    FROM ledger_credits GROUP BY payer, currency
), captured AS (
    SELECT payer, currency, sum(signed_amount_minor) AS captured_minor
    FROM ledger_events_signed WHERE paid_by IN ('token', 'plan') GROUP BY payer, currency
)
SELECT coalesce(c.payer, k.payer) AS payer,
       coalesce(c.currency, k.currency) AS currency,
       coalesce(c.credited_minor, 0) AS credited_minor,
       coalesce(k.captured_minor, 0) AS captured_minor,
       coalesce(c.credited_minor, 0) - coalesce(k.captured_minor, 0) AS balance_minor
FROM credited c FULL OUTER JOIN captured k ON c.payer = k.payer AND c.currency = k.currency;
