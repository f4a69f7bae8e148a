//! [`PgLedger`]: the ledger database -- connecting (and migrating) on first use, the
//! idempotent batch inserts the drainer makes, and the reads the admin API makes
//! ([`LedgerStore`]).

use crate::store::FromColumns;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::{schema, LedgerError};
use crate::store::{
    event_order, Columns, CreditRecord, DailyUsage, EventPage, LedgerEntry, LedgerStore,
    PayerSpend, StoreError, StreamBatch, UsageEvent,
};

/// How to reach the ledger database.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Host, port, user, database (parsed from a `postgres://` URL) and the password (from
    /// the environment, never the file).
    pub config: tokio_postgres::Config,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on every statement.
    pub statement_timeout: Duration,
    /// Currency scales by code: a credit's stream entry carries no scale, so it is recorded
    /// with the configured one.
    pub scales: BTreeMap<String, u32>,
}

impl LedgerOptions {
    /// Defaults: 5 s to connect, 10 s per statement, no currency scales.
    pub fn new(config: tokio_postgres::Config) -> Self {
        LedgerOptions {
            config,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            scales: BTreeMap::new(),
        }
    }
}

/// The ledger of record. Connects lazily (and again after the connection breaks), migrating
/// the schema on every connect; cheap to share (`Arc`).
pub struct PgLedger {
    options: LedgerOptions,
    /// The connection in use (`None` until connected, or after it broke).
    client: Mutex<Option<Arc<Client>>>,
    /// The last failed connect, so callers do not storm a database that is down.
    last_failure: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLedger")
            .field("hosts", &self.options.config.get_hosts())
            .field("dbname", &self.options.config.get_dbname())
            .finish_non_exhaustive()
    }
}

const INSERT_EVENTS: &str = "
INSERT INTO ledger_events (id, kind, voids, time_ms, payer, route, method, units, unit_prices,
                           currency, scale, amount_minor, uncharged_minor, credential,
                           reservation, upstream_status)
SELECT id, CASE WHEN voids IS NULL THEN 'charge' ELSE 'void' END, voids, time_ms, payer, route,
       method, units::JSONB, unit_prices::JSONB, currency, scale, amount::NUMERIC,
       uncharged::NUMERIC, credential, reservation, status
FROM unnest($1::TEXT[], $2::TEXT[], $3::INT8[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
            $8::TEXT[], $9::TEXT[], $10::INT4[], $11::TEXT[], $12::TEXT[], $13::TEXT[],
            $14::TEXT[], $15::INT4[])
     AS t(id, voids, time_ms, payer, route, method, units, unit_prices, currency, scale, amount,
          uncharged, credential, reservation, status)
ON CONFLICT (id) DO NOTHING";

const INSERT_CREDITS: &str = "
INSERT INTO ledger_credits (id, time_ms, payer, currency, scale, amount_minor, reason, source)
SELECT id, time_ms, payer, currency, scale, amount::NUMERIC, reason, source
FROM unnest($1::TEXT[], $2::INT8[], $3::TEXT[], $4::TEXT[], $5::INT4[], $6::TEXT[], $7::TEXT[],
            $8::TEXT[])
     AS t(id, time_ms, payer, currency, scale, amount, reason, source)
ON CONFLICT (id) DO NOTHING";

const INSERT_REJECTS: &str = "
INSERT INTO ledger_rejects (id, stream, fields, error)
SELECT id, $2, fields::JSONB, error FROM unnest($1::TEXT[], $3::TEXT[], $4::TEXT[])
     AS t(id, fields, error)
ON CONFLICT (stream, id) DO NOTHING";

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn to_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// What the ledger database holds, all time ([`PgLedger::figures`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFigures {
    /// The schema version it is at.
    pub schema_version: i32,
    /// Usage events that charge.
    pub charges: u64,
    /// Usage events that void a charge.
    pub voids: u64,
    /// Balance credits and debits.
    pub credits: u64,
    /// Stream entries kept aside unread (there should be none).
    pub rejects: u64,
    /// Charges net of voids, atomic units per currency.
    pub revenue_minor: BTreeMap<String, u64>,
    /// The newest event: its id and time (unix ms).
    pub newest_event: Option<(String, i64)>,
}

/// A NUMERIC read as text: a non-negative sum in minor units.
pub(super) fn minor(text: &str) -> Result<u64, LedgerError> {
    let v: i128 = text
        .parse()
        .map_err(|_| LedgerError::Data(format!("not an integer amount: {text:?}")))?;
    Ok(u64::try_from(v.max(0)).unwrap_or(u64::MAX))
}

impl PgLedger {
    /// A ledger that connects on first use.
    pub fn new(options: LedgerOptions) -> Self {
        PgLedger {
            options,
            client: Mutex::new(None),
            last_failure: Mutex::new(None),
        }
    }

    /// The connection, connecting (and migrating) first if there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>, LedgerError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        {
            let last = self.last_failure.lock().await;
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
                return Err(LedgerError::Unreachable("not connected (retrying)".into()));
            }
        }
        match self.connect().await {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                *slot = None;
                *self.last_failure.lock().await = Some(Instant::now());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Arc<Client>, LedgerError> {
        let connect = self.options.config.connect(NoTls);
        let (mut client, connection) = tokio::time::timeout(self.options.connect_timeout, connect)
            .await
            .map_err(|_| LedgerError::Unreachable("connect timed out".into()))?
            .map_err(|e| LedgerError::Unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "ledger database connection ended");
            }
        });
        // The drainer trims Redis once a commit is acknowledged: the commit must be durable
        // by then, whatever the server's default (synchronous_commit = off would lose the
        // last acknowledged batches in a database crash, after Redis dropped them).
        self.bounded(async { Ok(client.batch_execute("SET synchronous_commit TO on").await?) })
            .await?;
        let migrated = self.bounded(schema::migrate(&mut client)).await?;
        if !migrated.applied.is_empty() {
            tracing::info!(from = migrated.from, applied = ?migrated.applied, "ledger database migrated");
        }
        Ok(Arc::new(client))
    }

    /// Connect now (and migrate): the start-up check. A database at a newer schema version
    /// is [`LedgerError::SchemaTooNew`].
    pub async fn connect_now(&self) -> Result<(), LedgerError> {
        self.client().await.map(|_| ())
    }

    pub(super) async fn bounded<T, F>(&self, f: F) -> Result<T, LedgerError>
    where
        F: std::future::Future<Output = Result<T, LedgerError>>,
    {
        tokio::time::timeout(self.options.statement_timeout, f)
            .await
            .map_err(|_| LedgerError::Unreachable("statement timed out".into()))?
    }

    /// Insert a batch read from a Redis stream, each entry at most once (`ON CONFLICT (id) DO
    /// NOTHING`: entries another drainer inserted already are skipped). Each kind of entry is
    /// one statement, so one atomic step. Returns how many entries are new.
    pub async fn insert_batch(&self, batch: &StreamBatch) -> Result<u64, LedgerError> {
        let mut events = Vec::new();
        let mut credits = Vec::new();
        let mut refunds = Vec::new();
        let mut rejects = Vec::new();
        for e in &batch.entries {
            match e {
                LedgerEntry::Event(ev) => events.push(ev),
                LedgerEntry::Credit(c) => credits.push(c),
                LedgerEntry::Refund(r) => refunds.push(r),
                LedgerEntry::Unreadable { id, fields, error } => {
                    let map: BTreeMap<&str, &str> = fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let json = serde_json::to_string(&map).unwrap_or_else(|_| "{}".into());
                    rejects.push((id.clone(), json, error.clone()));
                }
            }
        }
        let client = self.client().await?;
        if !rejects.is_empty() {
            tracing::error!(
                stream = batch.stream.name(),
                count = rejects.len(),
                "unreadable ledger entries: kept in ledger_rejects"
            );
            let (ids, fields, errors): (Vec<_>, Vec<_>, Vec<_>) = rejects.into_iter().fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |(mut a, mut b, mut c), (i, f, e)| {
                    a.push(i);
                    b.push(f);
                    c.push(e);
                    (a, b, c)
                },
            );
            let stream = batch.stream.name();
            self.bounded(async {
                Ok(client
                    .execute(INSERT_REJECTS, &[&ids, &stream, &fields, &errors])
                    .await?)
            })
            .await?;
        }
        let mut inserted = 0;
        if !events.is_empty() {
            inserted += self.insert_events(&client, &events).await?;
        }
        if !credits.is_empty() {
            inserted += self.insert_credits(&client, &credits).await?;
        }
        if !refunds.is_empty() {
            inserted += self.insert_refunds(&client, &refunds).await?;
        }
        Ok(inserted)
    }

    async fn insert_events(
        &self,
        client: &Client,
        events: &[&UsageEvent],
    ) -> Result<u64, LedgerError> {
        let json =
            |m: &BTreeMap<String, _>| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let voids: Vec<Option<&str>> = events.iter().map(|e| e.voids.as_deref()).collect();
        let times: Vec<i64> = events.iter().map(|e| e.time_ms).collect();
        let payers: Vec<&str> = events.iter().map(|e| e.payer.as_str()).collect();
        let routes: Vec<&str> = events.iter().map(|e| e.route.as_str()).collect();
        let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
        let units: Vec<String> = events.iter().map(|e| json(&e.units)).collect();
        let prices: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(&e.unit_prices).unwrap_or_else(|_| "{}".into()))
            .collect();
        let currencies: Vec<&str> = events.iter().map(|e| e.currency.as_str()).collect();
        let scales: Vec<i32> = events.iter().map(|e| to_i32(e.scale)).collect();
        let amounts: Vec<String> = events.iter().map(|e| e.amount_minor.to_string()).collect();
        let uncharged: Vec<String> = events
            .iter()
            .map(|e| e.uncharged_minor.to_string())
            .collect();
        let credentials: Vec<&str> = events.iter().map(|e| e.credential.as_str()).collect();
        let reservations: Vec<&str> = events.iter().map(|e| e.reservation.as_str()).collect();
        let statuses: Vec<i32> = events
            .iter()
            .map(|e| i32::from(e.upstream_status))
            .collect();
        self.bounded(async {
            Ok(client
                .execute(
                    INSERT_EVENTS,
                    &[
                        &ids,
                        &voids,
                        &times,
                        &payers,
                        &routes,
                        &methods,
                        &units,
                        &prices,
                        &currencies,
                        &scales,
                        &amounts,
                        &uncharged,
                        &credentials,
                        &reservations,
                        &statuses,
                    ],
                )
                .await?)
        })
        .await
    }

    async fn insert_credits(
        &self,
        client: &Client,
        credits: &[&CreditRecord],
    ) -> Result<u64, LedgerError> {
        let ids: Vec<&str> = credits.iter().map(|c| c.id.as_str()).collect();
        let times: Vec<i64> = credits.iter().map(|c| c.time_ms).collect();
        let payers: Vec<&str> = credits.iter().map(|c| c.payer.as_str()).collect();
        let currencies: Vec<&str> = credits.iter().map(|c| c.currency.as_str()).collect();
        let scales: Vec<Option<i32>> = credits
            .iter()
            .map(|c| self.options.scales.get(&c.currency).map(|s| to_i32(*s)))
            .collect();
        let amounts: Vec<String> = credits.iter().map(|c| c.amount_minor.to_string()).collect();
        let reasons: Vec<&str> = credits.iter().map(|c| c.reason.as_str()).collect();
        let sources: Vec<&str> = credits.iter().map(|c| c.source.as_str()).collect();
        self.bounded(async {
            Ok(client
                .execute(
                    INSERT_CREDITS,
                    &[
                        &ids,
                        &times,
                        &payers,
                        &currencies,
                        &scales,
                        &amounts,
                        &reasons,
                        &sources,
                    ],
                )
                .await?)
        })
        .await
    }

    /// What the ledger holds, all time: for the provider dashboard. Counts and sums scan the
    /// tables (an operator's read, not a request path: the caller caches it).
    pub async fn figures(&self) -> Result<LedgerFigures, LedgerError> {
        let row = self
            .query(
                "SELECT (SELECT coalesce(max(version), 0) FROM schema_migrations),
                        (SELECT count(*) FROM ledger_events WHERE kind = 'charge'),
                        (SELECT count(*) FROM ledger_events WHERE kind = 'void'),
                        (SELECT count(*) FROM ledger_credits),
                        (SELECT count(*) FROM ledger_rejects)",
                &[],
            )
            .await?;
        let row = row
            .first()
            .ok_or_else(|| LedgerError::Data("no figures row".into()))?;
        let count = |i: usize| -> Result<u64, LedgerError> {
            Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
        };
        let mut figures = LedgerFigures {
            schema_version: row.try_get(0)?,
            charges: count(1)?,
            voids: count(2)?,
            credits: count(3)?,
            rejects: count(4)?,
            ..LedgerFigures::default()
        };
        for r in self
            .query(
                "SELECT currency, sum(signed_amount_minor)::TEXT FROM ledger_events_signed
                 GROUP BY currency ORDER BY currency",
                &[],
            )
            .await?
        {
            let amount: String = r.try_get(1)?;
            figures.revenue_minor.insert(r.try_get(0)?, minor(&amount)?);
        }
        if let Some(r) = self
            .query(
                "SELECT id, time_ms FROM ledger_events
                 ORDER BY id_ms DESC, id_seq DESC, id_bucket DESC LIMIT 1",
                &[],
            )
            .await?
            .first()
        {
            figures.newest_event = Some((r.try_get(0)?, r.try_get(1)?));
        }
        Ok(figures)
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, LedgerError> {
        let client = self.client().await?;
        self.bounded(async { Ok(client.query(sql, params).await?) })
            .await
    }
}

/// A row by column name, for the record decoders every backend shares (text, or an integer
/// in decimal).
impl Columns for tokio_postgres::Row {
    fn opt(&self, k: &str) -> Result<Option<String>, StoreError> {
        if !self.columns().iter().any(|c| c.name() == k) {
            return Ok(None);
        }
        if let Ok(v) = self.try_get::<_, Option<String>>(k) {
            return Ok(v);
        }
        if let Ok(v) = self.try_get::<_, Option<i64>>(k) {
            return Ok(v.map(|n| n.to_string()));
        }
        match self.try_get::<_, Option<i32>>(k) {
            Ok(v) => Ok(v.map(|n| n.to_string())),
            Err(e) => Err(LedgerError::Data(format!("column {k}: {e}")).into()),
        }
    }

    fn what(&self) -> String {
        "ledger row".to_owned()
    }
}

/// The row of (day, route), created empty.
fn usage_row(
    rows: &mut BTreeMap<(String, String), DailyUsage>,
    day: String,
    route: String,
) -> &mut DailyUsage {
    rows.entry((day.clone(), route.clone()))
        .or_insert_with(|| DailyUsage {
            day,
            route,
            ..Default::default()
        })
}

/// The rows of UTC days `$1..=$2` (`yyyymmdd`), of payer `$3` (all when null).
const DAYS_OF_PAYER: &str = "WHERE day BETWEEN to_date($1, 'YYYYMMDD') AND to_date($2, 'YYYYMMDD')
      AND ($3::TEXT IS NULL OR payer = $3)";

/// The day range as SQL dates, checked like the Redis store checks it.
fn day_range(from: &str, to: &str) -> Result<(), StoreError> {
    crate::store::days_between(from, to).map(|_| ())
}

#[async_trait]
impl LedgerStore for PgLedger {
    async fn usage(
        &self,
        payer: Option<&str>,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        day_range(from, to)?;
        let amounts = self
            .query(
                &format!(
                    "SELECT to_char(day, 'YYYYMMDD'), route, currency, sum(sign)::INT8,
                            sum(signed_amount_minor)::TEXT
                     FROM ledger_events_signed {DAYS_OF_PAYER} GROUP BY day, route, currency"
                ),
                &[&from, &to, &payer],
            )
            .await?;
        let units = self
            .query(
                &format!(
                    "SELECT to_char(day, 'YYYYMMDD'), route, unit, sum(units)::TEXT
                     FROM usage_units_daily {DAYS_OF_PAYER} GROUP BY day, route, unit"
                ),
                &[&from, &to, &payer],
            )
            .await?;
        let mut rows: BTreeMap<(String, String), DailyUsage> = BTreeMap::new();
        let text = |r: &tokio_postgres::Row, i: usize| -> Result<String, LedgerError> {
            Ok(r.try_get::<_, String>(i)?)
        };
        for r in &amounts {
            let requests: i64 = r.try_get(3).map_err(LedgerError::from)?;
            let d = usage_row(&mut rows, text(r, 0)?, text(r, 1)?);
            d.requests += u64::try_from(requests).unwrap_or(0);
            *d.amount_minor.entry(text(r, 2)?).or_default() += minor(&text(r, 4)?)?;
        }
        for r in &units {
            let d = usage_row(&mut rows, text(r, 0)?, text(r, 1)?);
            *d.units.entry(text(r, 2)?).or_default() += minor(&text(r, 3)?)?;
        }
        self.net_of_refunds(&mut rows, payer, from, to).await?;
        Ok(rows.into_values().collect())
    }

    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        day_range(from, to)?;
        let rows = self
            .query(
                "SELECT payer, currency, sum(sign)::INT8, sum(signed_amount_minor)::TEXT
                 FROM ledger_events_signed
                 WHERE day BETWEEN to_date($1, 'YYYYMMDD') AND to_date($2, 'YYYYMMDD')
                 GROUP BY payer, currency",
                &[&from, &to],
            )
            .await?;
        let mut out: BTreeMap<String, PayerSpend> = BTreeMap::new();
        for r in &rows {
            let payer: String = r.try_get(0).map_err(LedgerError::from)?;
            let currency: String = r.try_get(1).map_err(LedgerError::from)?;
            let requests: i64 = r.try_get(2).map_err(LedgerError::from)?;
            let amount = minor(&r.try_get::<_, String>(3).map_err(LedgerError::from)?)?;
            let p = out.entry(payer.clone()).or_insert_with(|| PayerSpend {
                payer,
                requests: 0,
                amount_minor: BTreeMap::new(),
            });
            p.requests += u64::try_from(requests).unwrap_or(0);
            *p.amount_minor.entry(currency).or_default() += amount;
        }
        self.payers_net_of_refunds(&mut out, from, to).await?;
        Ok(out.into_values().filter(|p| p.requests > 0).collect())
    }

    async fn events(&self, page: EventPage<'_>) -> Result<Vec<UsageEvent>, StoreError> {
        match page {
            EventPage::After { after, limit } => {
                let cursor = after.map_or((-1, -1, -1), |a| {
                    let (ms, seq, b) = event_order(a);
                    (to_i64(ms), to_i64(seq), to_i64(b))
                });
                self.events_where(
                    "(id_ms, id_seq, id_bucket) > ($1, $2, $3::INT8) ORDER BY id_ms, id_seq, id_bucket",
                    cursor,
                    limit,
                )
                .await
            }
            EventPage::Bucket {
                bucket,
                after,
                limit,
            } => {
                let (ms, seq) = after.map_or((-1, -1), |a| {
                    let (ms, seq, _) = event_order(a);
                    (to_i64(ms), to_i64(seq))
                });
                self.events_where(
                    "id_bucket = $3::INT8 AND (id_ms, id_seq) > ($1, $2) ORDER BY id_ms, id_seq",
                    (ms, seq, to_i64(bucket)),
                    limit,
                )
                .await
            }
            EventPage::Before { before, limit } => {
                let cursor = before.map_or((i64::MAX, i64::MAX, i64::MAX), |a| {
                    let (ms, seq, b) = event_order(a);
                    (to_i64(ms), to_i64(seq), to_i64(b))
                });
                self.events_where(
                    "(id_ms, id_seq, id_bucket) < ($1, $2, $3::INT8) \
                         ORDER BY id_ms DESC, id_seq DESC, id_bucket DESC",
                    cursor,
                    limit,
                )
                .await
            }
            EventPage::Payer {
                payer,
                before,
                limit,
            } => {
                let (ms, seq, bucket) = before.map_or((i64::MAX, i64::MAX, i64::MAX), |a| {
                    let (ms, seq, b) = event_order(a);
                    (to_i64(ms), to_i64(seq), to_i64(b))
                });
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                let rows = self
                    .query(
                        &format!(
                            "SELECT {PG_EVENT_COLUMNS} FROM ledger_events
                             WHERE payer = $5 AND (id_ms, id_seq, id_bucket) < ($1, $2, $3::INT8)
                             ORDER BY id_ms DESC, id_seq DESC, id_bucket DESC LIMIT $4"
                        ),
                        &[&ms, &seq, &bucket, &limit, &payer],
                    )
                    .await
                    .map_err(StoreError::from)?;
                rows.iter().map(UsageEvent::from_columns).collect()
            }
        }
    }
}

/// The columns [`UsageEvent::from_columns`] reads (by name: a cast keeps the name).
pub(super) const PG_EVENT_COLUMNS: &str =
    "id, time_ms, payer, route, method, units::TEXT, unit_prices::TEXT,
    currency, scale, amount_minor::TEXT, uncharged_minor::TEXT, credential, reservation,
    upstream_status, voids";

impl PgLedger {
    /// Events `WHERE <clause>` on the `(ms, seq, bucket)` cursor, then `LIMIT`.
    async fn events_where(
        &self,
        clause: &str,
        (ms, seq, bucket): (i64, i64, i64),
        limit: usize,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &format!("SELECT {PG_EVENT_COLUMNS} FROM ledger_events WHERE {clause} LIMIT $4"),
                &[&ms, &seq, &bucket, &limit],
            )
            .await?;
        rows.iter().map(UsageEvent::from_columns).collect()
    }
}
