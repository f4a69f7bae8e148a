//! The ledger of record at run time (`[ledger]`): the PostgreSQL ledger the admin API and
//! the dashboard read, and this replica's drainer, which moves the Redis store's streams
//! into it (`tollgate_middleware::ledger`). Set up once per process: changing `[ledger]`
//! needs a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_middleware::ledger::{
    DrainStatus, Drainer, DrainerOptions, LedgerError, LedgerFigures, LedgerOptions, PgLedger,
};
use tollgate_middleware::{RedisStore, RedisStoreOptions};

use crate::config::Config;
use crate::{AbortOnDrop, BuildError};

/// The ledger database and this replica's drainer (stopped when dropped).
pub(crate) struct LedgerRuntime {
    /// Where the admin API's usage, summary and payer listings come from.
    pub(crate) db: Arc<PgLedger>,
    /// What the drainer last saw.
    pub(crate) status: Arc<DrainStatus>,
    /// `ledger.max_backlog` (the dashboard shows the backlog against it).
    pub(crate) max_backlog: u64,
    /// The database's all-time figures, read at most every [`FIGURES_TTL`] (they scan the
    /// tables); the lock also makes concurrent readers wait for one query.
    figures: tokio::sync::Mutex<Option<(Instant, i64, LedgerFigures)>>,
    _drainer: AbortOnDrop,
}

/// How long the ledger database's figures are reused.
pub(crate) const FIGURES_TTL: Duration = Duration::from_secs(10);

impl LedgerRuntime {
    /// The ledger database's figures and when they were read (unix ms), at most
    /// [`FIGURES_TTL`] old.
    pub(crate) async fn figures(&self, now_ms: i64) -> Result<(LedgerFigures, i64), LedgerError> {
        let mut slot = self.figures.lock().await;
        if let Some((at, read_ms, f)) = slot.as_ref() {
            if at.elapsed() < FIGURES_TTL {
                return Ok((f.clone(), *read_ms));
            }
        }
        let f = self.db.figures().await?;
        *slot = Some((Instant::now(), now_ms, f.clone()));
        Ok((f, now_ms))
    }
}

/// Connect the ledger (migrating it) and start the drainer, when `[ledger]` is set. A
/// database that cannot be reached is not fatal (the drainer retries; entries wait in
/// Redis); one at a schema version newer than this build is.
pub(crate) async fn start(config: &Config) -> Result<Option<LedgerRuntime>, BuildError> {
    let Some(l) = &config.ledger else {
        return Ok(None);
    };
    let pg = l
        .postgres_config()
        .map_err(|e| BuildError::Ledger(e.to_string()))?;
    let timeout = Duration::from_millis(l.timeout_ms);
    let mut options = LedgerOptions::new(pg);
    options.connect_timeout = timeout;
    options.statement_timeout = timeout;
    options.scales = config
        .currencies
        .iter()
        .map(|(code, c)| (code.clone(), c.scale))
        .collect();
    let db = Arc::new(PgLedger::new(options));
    match db.connect_now().await {
        Ok(()) => tracing::info!("ledger database connected"),
        Err(e @ LedgerError::SchemaTooNew { .. }) => {
            return Err(BuildError::Ledger(format!("ledger.url: {e}")))
        }
        Err(e) => {
            tracing::warn!(error = %e, "ledger database not reachable at start-up; usage waits in Redis until it is")
        }
    }
    // Its own Redis connection: draining never queues behind paid traffic.
    let store = RedisStore::connect(RedisStoreOptions {
        url: config.store.url.clone().unwrap_or_default(),
        cluster: config.store.cluster,
        prefix: config.store.prefix.clone(),
        timeout: Duration::from_millis(config.store.timeout_ms),
    })
    .await
    .map_err(|e| BuildError::Store(e.to_string()))?;
    let drainer = Drainer::new(Arc::new(store), db.clone()).options(DrainerOptions {
        batch: l.batch,
        max_backlog: l.max_backlog,
        ..DrainerOptions::default()
    });
    let status = drainer.status();
    let task = tokio::spawn(drainer.run());
    Ok(Some(LedgerRuntime {
        db,
        status,
        max_backlog: l.max_backlog,
        figures: tokio::sync::Mutex::new(None),
        _drainer: AbortOnDrop(vec![task.abort_handle()]),
    }))
}
