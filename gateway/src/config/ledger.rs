//! `[ledger]`: the PostgreSQL ledger of record, fed from the Redis store by a drainer in each
//! gateway (see docs/ledger.md). The URL names host, port, user and database; the password
//! never lives in the file: it comes from `TOLLGATE_LEDGER_PASSWORD` (when set).

use std::str::FromStr;

use serde::Deserialize;

use super::{invalid, within, ConfigError, StoreConfig, StoreKind};

/// The environment variable holding the ledger database's password.
pub const LEDGER_PASSWORD_ENV: &str = "TOLLGATE_LEDGER_PASSWORD";

/// `[ledger]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// `postgres://user@host:port/database` (no password in it).
    pub url: String,
    /// Entries waiting in Redis past which the drainer alarms (error log each minute,
    /// `tollgate_ledger_backlog_over_bound` = 1); paid traffic is still served.
    #[serde(default = "super::n64::<1_000_000>")]
    pub max_backlog: u64,
    /// Entries per insert.
    #[serde(default = "super::nsize::<1000>")]
    pub batch: usize,
    /// Bound on connecting and on each statement (milliseconds).
    #[serde(default = "super::n64::<10_000>")]
    pub timeout_ms: u64,
}

impl LedgerConfig {
    /// The connection settings: the URL parsed, the password from [`LEDGER_PASSWORD_ENV`].
    pub fn postgres_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        let field = "ledger.url";
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(invalid(
                field,
                "must be a postgres:// URL, e.g. postgres://tollgate@db.internal:5432/tollgate",
            ));
        }
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| invalid(field, format!("not a valid PostgreSQL URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(invalid(
                field,
                format!("must not contain a password: set {LEDGER_PASSWORD_ENV} instead"),
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(invalid(field, "names no host"));
        }
        if config.get_user().is_none() {
            return Err(invalid(field, "names no user (postgres://USER@host/db)"));
        }
        if let Ok(p) = std::env::var(LEDGER_PASSWORD_ENV) {
            config.password(p);
        }
        Ok(config)
    }
}

/// `[ledger]`: a usable URL, sane bounds, and a Redis store to drain.
pub(super) fn validate_ledger(
    ledger: Option<&LedgerConfig>,
    store: &StoreConfig,
) -> Result<(), ConfigError> {
    let Some(l) = ledger else {
        return Ok(());
    };
    l.postgres_config()?;
    if store.kind != StoreKind::Redis {
        return Err(invalid(
            "ledger",
            "a PostgreSQL ledger is drained from the Redis store's streams: set store.kind = \"redis\" (other stores keep the ledger themselves)",
        ));
    }
    if l.max_backlog == 0 {
        return Err(invalid("ledger.max_backlog", "must be at least 1"));
    }
    within("ledger.batch", l.batch, 1, 10_000)?;
    within("ledger.timeout_ms", l.timeout_ms, 1, 60_000)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(url: &str) -> LedgerConfig {
        LedgerConfig {
            url: url.into(),
            max_backlog: 10,
            batch: 100,
            timeout_ms: 1000,
        }
    }

    fn redis() -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Redis,
            url: Some("redis://127.0.0.1".into()),
            ..StoreConfig::default()
        }
    }

    fn error(l: &LedgerConfig, s: &StoreConfig) -> String {
        match validate_ledger(Some(l), s) {
            Err(e) => e.to_string(),
            Ok(()) => String::new(),
        }
    }

    #[test]
    fn urls_are_checked_and_named() {
        assert_eq!(
            error(&ledger("postgres://tg@db:5432/tollgate"), &redis()),
            ""
        );
        assert!(error(&ledger("mysql://tg@db/x"), &redis())
            .starts_with("ledger.url: must be a postgres:// URL"));
        assert!(error(&ledger("postgres://tg@db:notaport/x"), &redis())
            .starts_with("ledger.url: not a valid PostgreSQL URL"));
        assert!(error(&ledger("postgres://tg:hunter2@db/x"), &redis())
            .contains("TOLLGATE_LEDGER_PASSWORD"));
        assert!(
            error(&ledger("postgres://db/x"), &redis()).starts_with("ledger.url: names no user")
        );
    }

    #[test]
    fn needs_a_redis_store_and_sane_bounds() {
        let memory = StoreConfig::default();
        assert!(error(&ledger("postgres://tg@db/x"), &memory)
            .starts_with("ledger: a PostgreSQL ledger is drained"));
        let mut l = ledger("postgres://tg@db/x");
        l.batch = 0;
        assert_eq!(error(&l, &redis()), "ledger.batch: must be 1 to 10000");
        l.batch = 10;
        l.max_backlog = 0;
        assert_eq!(
            error(&l, &redis()),
            "ledger.max_backlog: must be at least 1"
        );
    }
}
