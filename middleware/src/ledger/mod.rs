//! The ledger of record in PostgreSQL, and the drainer that fills it from the Redis store's
//! streams (feature `postgres`).
//!
//! On Redis deployments every usage event, void and credit is appended to a per-bucket Redis
//! stream in the same atomic script as the balance change. [`Drainer`] (one per gateway
//! replica) moves those entries into PostgreSQL in batches -- one `INSERT .. ON CONFLICT (id)
//! DO NOTHING` statement per batch, so each entry is in the ledger exactly once however often
//! it is inserted -- and only then trims them from Redis. PostgreSQL down or slow never stops
//! paid traffic: entries wait in the streams and the drainer catches up with backoff.
//!
//! [`PgLedger`] is the database side: its schema is versioned ([`schema`], migrations run on
//! connect; a database at a newer version is refused), and it answers
//! [`crate::store::LedgerStore`] (daily usage, payer totals, the event export) from the
//! tables, so the Redis capture scripts no longer keep aggregates
//! ([`crate::RedisStore::with_ledger_of_record`]).
//!
//! ```ignore
//! let store = Arc::new(RedisStore::connect(opts).await?.with_ledger_of_record());
//! let ledger = Arc::new(PgLedger::new(LedgerOptions::new("postgres://tollgate@db/tollgate".parse()?)));
//! tokio::spawn(Drainer::new(drain_store, ledger.clone()).run());
//! ```

mod drainer;
mod postgres;
mod refunds;
pub mod schema;

pub use drainer::{DrainStatus, Drainer, DrainerOptions};
pub use postgres::{LedgerFigures, LedgerOptions, PgLedger};

/// Why the ledger database could not do something.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Not reachable (connect failed or timed out, the connection broke).
    #[error("ledger database unreachable: {0}")]
    Unreachable(String),
    /// A statement failed.
    #[error("ledger database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The database was migrated by a newer Tollgate: this one does not know its schema.
    #[error(
        "ledger database schema is at version {found}, newer than this Tollgate knows ({supported}): \
         upgrade Tollgate, or point ledger.url at another database"
    )]
    SchemaTooNew {
        /// The database's version.
        found: i32,
        /// The newest this build knows.
        supported: i32,
    },
    /// A row the ledger read back does not make sense (a bad id, amount or JSON).
    #[error("ledger database: {0}")]
    Data(String),
}

impl From<LedgerError> for crate::store::StoreError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Unreachable(_) | LedgerError::Database(_) => {
                crate::store::StoreError::Unavailable(e.to_string())
            }
            LedgerError::SchemaTooNew { .. } | LedgerError::Data(_) => {
                crate::store::StoreError::Protocol(e.to_string())
            }
        }
    }
}
