-- One payer's events newest first (the agent's bill, `GET /tollgate/v1/usage`).
CREATE INDEX ledger_events_payer_order ON ledger_events (payer, id_ms, id_seq, id_bucket);
