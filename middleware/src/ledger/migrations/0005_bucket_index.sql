-- One payer bucket's events in order (the webhook dispatcher's cursor per bucket,
-- `LedgerStore::bucket_events_after`).
CREATE INDEX ledger_events_bucket_order ON ledger_events (id_bucket, id_ms, id_seq);
