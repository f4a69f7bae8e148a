-- Tollgate ledger of record, schema version 1: every usage event (a charge or its void) and
-- every balance credit or debit, each keyed by its ledger id and written exactly once
-- (the drainer inserts with ON CONFLICT (id) DO NOTHING).
-- Money is integer atomic units (NUMERIC(39,0): a u64 of any currency scale fits) with its
-- currency code and scale; decimal amounts are derived as amount_minor / 10^scale.

CREATE TABLE ledger_events (
    -- <ms>-<seq>-<bucket>: the Redis stream id and the payer's bucket (the admin API's id).
    id              TEXT PRIMARY KEY,
    id_ms           BIGINT GENERATED ALWAYS AS (split_part(id, '-', 1)::BIGINT) STORED,
    id_seq          BIGINT GENERATED ALWAYS AS (split_part(id, '-', 2)::BIGINT) STORED,
    id_bucket       INTEGER GENERATED ALWAYS AS (split_part(id, '-', 3)::INTEGER) STORED,
    -- 'charge', or 'void': undoes the charge named by `voids` (its amount counts negatively).
    kind            TEXT NOT NULL CHECK (kind IN ('charge', 'void')),
    voids           TEXT,
    -- When the request was settled, unix ms (gateway clock), and its UTC day.
    time_ms         BIGINT NOT NULL,
    day             DATE GENERATED ALWAYS AS (DATE '1970-01-01' + (time_ms / 86400000)::INTEGER) STORED,
    payer           TEXT NOT NULL,
    route           TEXT NOT NULL,
    method          TEXT NOT NULL,
    -- Units served by unit ({"request": 1, "prompt_token": 812}) and price per unit (decimal strings).
    units           JSONB NOT NULL,
    unit_prices     JSONB NOT NULL,
    currency        TEXT NOT NULL,
    scale           INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 38),
    amount_minor    NUMERIC(39, 0) NOT NULL CHECK (amount_minor >= 0),
    -- Usage that could not be charged (balance exhausted).
    uncharged_minor NUMERIC(39, 0) NOT NULL CHECK (uncharged_minor >= 0),
    -- receipt:<iss>:<jti> | token:<payer> | plan:<plan>:<payer> | x402:<network>:<payer>:<nonce>
    credential      TEXT NOT NULL,
    -- What paid: 'token' and 'plan' draw on the prepaid balance; 'receipt', 'x402' do not.
    paid_by         TEXT GENERATED ALWAYS AS (split_part(credential, ':', 1)) STORED,
    reservation     TEXT NOT NULL,
    -- The upstream's HTTP status (0: none, or charged at admission before it answered).
    upstream_status INTEGER NOT NULL,
    inserted_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_events_order ON ledger_events (id_ms, id_seq, id_bucket);
CREATE INDEX ledger_events_day ON ledger_events (day, route);
CREATE INDEX ledger_events_payer_day ON ledger_events (payer, day);
CREATE INDEX ledger_events_reservation ON ledger_events (reservation);

CREATE TABLE ledger_credits (
    -- <ms>-<seq>-<bucket> of the credits stream (its own id space: not an event id).
    id           TEXT PRIMARY KEY,
    -- When it was applied, unix ms (Redis clock), and its UTC day.
    time_ms      BIGINT NOT NULL,
    day          DATE GENERATED ALWAYS AS (DATE '1970-01-01' + (time_ms / 86400000)::INTEGER) STORED,
    payer        TEXT NOT NULL,
    currency     TEXT NOT NULL,
    -- The currency's scale as configured when drained (NULL: not a configured currency).
    scale        INTEGER CHECK (scale BETWEEN 0 AND 38),
    -- Signed: a debit is negative.
    amount_minor NUMERIC(39, 0) NOT NULL,
    reason       TEXT NOT NULL,
    -- receipt:<iss>:<jti> (top-up) | admin | reconcile:<reservation> (refund)
    source       TEXT NOT NULL,
    inserted_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_credits_payer_day ON ledger_credits (payer, day);

-- Stream entries that did not parse, kept whole so the drain never stalls on one and nothing
-- is lost; an operator looks at them (there should be none).
CREATE TABLE ledger_rejects (
    id          TEXT NOT NULL,
    stream      TEXT NOT NULL,
    fields      JSONB NOT NULL,
    error       TEXT NOT NULL,
    inserted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, id)
);
