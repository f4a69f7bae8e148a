-- Tollgate ledger of record, schema version 4: refunds of charges, full or partial, each keyed
-- by its own ledger id (the `refunds` stream's, `<ms>-<seq>-<bucket>`) and written exactly once.
-- A refund to the balance is also a row of ledger_credits (source 'refund:<event id>', named by
-- credit_id), so the balance equation holds as it is; one owed to an x402 payer's address
-- (owed_to) moves no balance. Revenue net of refunds: refunds_daily, on the charge's day.

CREATE TABLE ledger_refunds (
    id              TEXT PRIMARY KEY,
    id_ms           BIGINT GENERATED ALWAYS AS (split_part(id, '-', 1)::BIGINT) STORED,
    id_seq          BIGINT GENERATED ALWAYS AS (split_part(id, '-', 2)::BIGINT) STORED,
    id_bucket       INTEGER GENERATED ALWAYS AS (split_part(id, '-', 3)::INTEGER) STORED,
    -- When it was made, unix ms (gateway clock), and its UTC day.
    time_ms         BIGINT NOT NULL,
    day             DATE GENERATED ALWAYS AS (DATE '1970-01-01' + (time_ms / 86400000)::INTEGER) STORED,
    -- The charge refunded (ledger_events.id), its time and day (its revenue moves back).
    event_id        TEXT NOT NULL,
    charge_time_ms  BIGINT NOT NULL,
    charge_day      DATE GENERATED ALWAYS AS (DATE '1970-01-01' + (charge_time_ms / 86400000)::INTEGER) STORED,
    payer           TEXT NOT NULL,
    route           TEXT NOT NULL,
    credential      TEXT NOT NULL,
    currency        TEXT NOT NULL,
    scale           INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 38),
    amount_minor    NUMERIC(39, 0) NOT NULL CHECK (amount_minor > 0),
    reason          TEXT NOT NULL,
    -- x402: the address the refund is owed to (no chain transfer, no balance credit).
    owed_to         TEXT,
    -- The balance credit it made (ledger_credits.id); NULL when owed.
    credit_id       TEXT,
    -- What remained refundable of the charge after it.
    remaining_minor NUMERIC(39, 0) NOT NULL CHECK (remaining_minor >= 0),
    inserted_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_refunds_order ON ledger_refunds (id_ms, id_seq, id_bucket);
CREATE INDEX ledger_refunds_event ON ledger_refunds (event_id);
CREATE INDEX ledger_refunds_payer_order ON ledger_refunds (payer, id_ms, id_seq, id_bucket);
CREATE INDEX ledger_refunds_owed ON ledger_refunds (id_ms, id_seq, id_bucket) WHERE owed_to IS NOT NULL;
-- A charge's void, found by the charge's id (a refund is refused for a voided charge).
CREATE INDEX ledger_events_voids ON ledger_events (voids) WHERE voids IS NOT NULL;

-- Refunds per day of the charge they refund, route, payer and currency: revenue_daily_route
-- and revenue_daily_payer less these is revenue net of refunds.
CREATE VIEW refunds_daily AS
SELECT charge_day AS day, route, payer, currency, scale,
       count(*)::BIGINT AS refunds,
       sum(amount_minor) AS refunded_minor,
       sum(amount_minor) / (10::NUMERIC ^ scale) AS refunded,
       sum(amount_minor) FILTER (WHERE owed_to IS NOT NULL) AS owed_minor
FROM ledger_refunds
GROUP BY charge_day, route, payer, currency, scale;
