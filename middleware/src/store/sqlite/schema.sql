-- Tollgate's embedded store, schema version 1 (`PRAGMA user_version`).
-- Money is integer atomic units (minor units) with its currency (and, in the ledger, its
-- scale); times are unix milliseconds. Rows whose `until_ms` has passed are treated as absent
-- and deleted now and then.

-- Receipt single-use states by key (`r:<bucket>:<fingerprint>`, `idem:<payer>:<key>`).
-- `ref_id`: the event (spent, subscribed) or credit (credited) it was used for.
CREATE TABLE receipts (
    key         TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('held', 'spent', 'credited', 'subscribed', 'revoked')),
    reservation TEXT NOT NULL DEFAULT '',
    ref_id      TEXT NOT NULL DEFAULT '',
    until_ms    INTEGER NOT NULL
) WITHOUT ROWID;

-- The first payer to present each receipt, by (iss, jti) fingerprint.
CREATE TABLE owners (
    fp       TEXT PRIMARY KEY,
    payer    TEXT NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE blocked (payer TEXT PRIMARY KEY) WITHOUT ROWID;

-- Prepaid accounts: available + held = credited - captured (the balance equation).
CREATE TABLE accounts (
    payer     TEXT NOT NULL,
    currency  TEXT NOT NULL,
    available INTEGER NOT NULL,
    held      INTEGER NOT NULL,
    credited  INTEGER NOT NULL,
    captured  INTEGER NOT NULL,
    PRIMARY KEY (payer, currency)
) WITHOUT ROWID;

-- Balance holds in flight, by reservation id.
CREATE TABLE holds (
    id       TEXT PRIMARY KEY,
    payer    TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount   INTEGER NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX holds_by_payer ON holds (payer, until_ms);

-- The usage ledger: one row per charge, plan-covered call, purchase or void, in id order.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    time_ms         INTEGER NOT NULL,
    payer           TEXT NOT NULL,
    route           TEXT NOT NULL,
    method          TEXT NOT NULL,
    units           TEXT NOT NULL,
    unit_prices     TEXT NOT NULL,
    currency        TEXT NOT NULL,
    scale           INTEGER NOT NULL,
    amount_minor    INTEGER NOT NULL,
    uncharged_minor INTEGER NOT NULL,
    credential      TEXT NOT NULL,
    reservation     TEXT NOT NULL,
    upstream_status INTEGER NOT NULL,
    voids           TEXT
);
CREATE INDEX events_by_payer ON events (payer, time_ms);
-- One payer's events newest first (the agent's bill); also created on opening a database made
-- before it existed (see migrate in mod.rs).
CREATE INDEX IF NOT EXISTS events_by_payer_seq ON events (payer, seq);

-- Credits and debits (top-ups, admin adjustments), one row each.
CREATE TABLE credits (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    time_ms      INTEGER NOT NULL,
    payer        TEXT NOT NULL,
    currency     TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    source       TEXT NOT NULL
);
CREATE INDEX credits_by_payer ON credits (payer, time_ms);

-- Daily aggregates (UTC day, payer, field), moved in the same transaction as the ledger.
CREATE TABLE aggregates (
    day   TEXT NOT NULL,
    payer TEXT NOT NULL,
    field TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (day, payer, field)
) WITHOUT ROWID;

-- How a balance request was settled (a retried capture learns it; a void finds it).
CREATE TABLE settled (
    id        TEXT PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('charged', 'plan', 'released', 'voided')),
    event_id  TEXT NOT NULL DEFAULT '',
    charged   INTEGER NOT NULL DEFAULT 0,
    uncharged INTEGER NOT NULL DEFAULT 0,
    currency  TEXT NOT NULL DEFAULT '',
    until_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX settled_by_expiry ON settled (until_ms);

-- GCRA theoretical arrival times.
CREATE TABLE rates (
    payer  TEXT NOT NULL,
    route  TEXT NOT NULL,
    tat_ms INTEGER NOT NULL,
    PRIMARY KEY (payer, route)
) WITHOUT ROWID;

-- Mandate windows, their reservations in flight, revocations, and who used which mandate.
CREATE TABLE mandate_windows (
    key      TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    budget   INTEGER NOT NULL,
    spent    INTEGER NOT NULL,
    PRIMARY KEY (key, start_ms)
) WITHOUT ROWID;
CREATE TABLE mandate_holds (
    key         TEXT NOT NULL,
    start_ms    INTEGER NOT NULL,
    reservation TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    until_ms    INTEGER NOT NULL,
    PRIMARY KEY (key, start_ms, reservation)
) WITHOUT ROWID;
CREATE TABLE revoked_mandates (key TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE payer_mandates (
    payer   TEXT NOT NULL,
    key     TEXT NOT NULL,
    summary TEXT NOT NULL,
    PRIMARY KEY (payer, key)
) WITHOUT ROWID;

-- Plan periods (`calls` NULL: a pass).
CREATE TABLE plan_periods (
    payer    TEXT NOT NULL,
    plan     TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms   INTEGER NOT NULL,
    calls    INTEGER,
    used     INTEGER NOT NULL,
    PRIMARY KEY (payer, plan)
) WITHOUT ROWID;

-- The x402 deferred settlement queue (id: the usage event's id).
CREATE TABLE settlements (
    id       TEXT PRIMARY KEY,
    payer    TEXT NOT NULL,
    body     TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('queued', 'failed')),
    error    TEXT NOT NULL,
    due_ms   INTEGER NOT NULL
) WITHOUT ROWID;

-- Request Idempotency-Key claims.
CREATE TABLE idempotency (
    payer       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    token       TEXT NOT NULL,
    done_event  TEXT,
    done_ms     INTEGER,
    until_ms    INTEGER NOT NULL,
    PRIMARY KEY (payer, key)
) WITHOUT ROWID;

-- Ledger id sequence: ids are `<ms>-<seq>-0`, never back in time.
CREATE TABLE ids (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    seq     INTEGER NOT NULL,
    last_ms INTEGER NOT NULL
);
INSERT INTO ids (one, seq, last_ms) VALUES (1, 0, 0);

-- Views for the provider (documented in docs/operations.md). A void event repeats the charge
-- it undoes with `voids` set: it counts negatively.
CREATE VIEW revenue_daily AS
SELECT strftime('%Y-%m-%d', time_ms / 1000, 'unixepoch') AS day,
       route,
       payer,
       currency,
       scale,
       sum(CASE WHEN voids IS NULL THEN 1 ELSE -1 END) AS requests,
       sum(CASE WHEN voids IS NULL THEN amount_minor ELSE -amount_minor END) AS amount_minor,
       sum(CASE WHEN voids IS NULL THEN uncharged_minor ELSE 0 END) AS uncharged_minor
FROM events
GROUP BY day, route, payer, currency, scale;

CREATE VIEW credits_daily AS
SELECT strftime('%Y-%m-%d', time_ms / 1000, 'unixepoch') AS day,
       payer,
       currency,
       count(*) AS credits,
       sum(amount_minor) AS amount_minor
FROM credits
GROUP BY day, payer, currency;

-- The balance equation per payer and currency, from the accounts and from the ledger:
-- credited - captured = available + held, credited = the credits' sum, captured = the sum of
-- the payer's balance (token) charges less their voids. Every `*_gap` column is 0.
CREATE VIEW balance_check AS
SELECT a.payer,
       a.currency,
       a.available,
       a.held,
       a.credited,
       a.captured,
       a.credited - a.captured - a.available - a.held AS equation_gap,
       a.credited - coalesce((SELECT sum(c.amount_minor) FROM credits c
                              WHERE c.payer = a.payer AND c.currency = a.currency), 0)
           AS credits_gap,
       a.captured - coalesce((SELECT sum(CASE WHEN e.voids IS NULL THEN e.amount_minor
                                              ELSE -e.amount_minor END)
                              FROM events e
                              WHERE e.payer = a.payer AND e.currency = a.currency
                                AND e.credential LIKE 'token:%'), 0)
           AS ledger_gap
FROM accounts a;
