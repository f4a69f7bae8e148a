//! `[store]`: where payment state lives.

use serde::Deserialize;

use super::{invalid, within, ConfigError};

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (embedded, persistent: the default), `memory` (sqlite in memory: nothing
    /// survives a restart) or `redis`.
    #[serde(default)]
    pub kind: StoreKind,
    /// The sqlite file (`kind = "sqlite"`): relative paths are taken from the config file's
    /// directory. `":memory:"`: nothing is kept.
    #[serde(default = "default_path")]
    pub path: String,
    /// How the sqlite store syncs a commit: `full` (default: an answered operation survives
    /// a power loss) or `normal` (it survives a process crash; a power loss can lose the last
    /// commits).
    #[serde(default)]
    pub synchronous: SyncMode,
    /// Redis URL (`redis://`, `rediss://`, `unix://`); required for `redis`. With
    /// `cluster = true`: comma-separated seed nodes of a Redis Cluster.
    pub url: Option<String>,
    /// The URL names a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Bound on each Redis call (milliseconds).
    #[serde(default = "default_store_timeout")]
    pub timeout_ms: u64,
    /// How long a capture whose outcome is unknown (Redis not answering) is retried before the
    /// response is withheld (milliseconds).
    #[serde(default = "default_settle_retry")]
    pub settle_retry_ms: u64,
    /// `[store.lease]`: serve token-paid requests from balance leases (Redis only).
    pub lease: Option<LeaseSettings>,
}

/// `[store.lease]`: each replica holds a slice of a busy payer's balance and records the
/// charges drawn from it in batches (no Redis call per request).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// Room a lease keeps for new requests, counted in requests at the latest one's price.
    #[serde(default = "super::n32::<64>")]
    pub requests: u32,
    /// How often charges are recorded and busy leases renewed (milliseconds).
    #[serde(default = "super::n64::<100>")]
    pub sync_ms: u64,
    /// The bound within which a block or a top-up takes effect (milliseconds): no request is
    /// admitted on an older view of the payer.
    #[serde(default = "super::n64::<250>")]
    pub staleness_ms: u64,
    /// How long a dead replica's lease stays held before it returns to the payer (seconds).
    #[serde(default = "super::n64::<10>")]
    pub ttl_secs: u64,
    /// An unused lease is returned after this (milliseconds).
    #[serde(default = "super::n64::<2000>")]
    pub idle_ms: u64,
    /// Most charges recorded per sync.
    #[serde(default = "super::nsize::<512>")]
    pub batch_max: usize,
}

impl LeaseSettings {
    /// The engine's settings.
    pub fn to_config(&self) -> tollgate_middleware::LeaseConfig {
        tollgate_middleware::LeaseConfig {
            requests: self.requests,
            sync_every: std::time::Duration::from_millis(self.sync_ms),
            staleness: std::time::Duration::from_millis(self.staleness_ms),
            ttl: std::time::Duration::from_secs(self.ttl_secs),
            idle: std::time::Duration::from_millis(self.idle_ms),
            batch_max: self.batch_max,
        }
    }
}

/// `[store.lease]` in range, on a Redis store.
fn validate_lease(store: &StoreConfig) -> Result<(), ConfigError> {
    let Some(l) = &store.lease else {
        return Ok(());
    };
    if store.kind != StoreKind::Redis {
        return Err(invalid(
            "store.lease",
            "balance leases save Redis round trips: they need store.kind = \"redis\" (an embedded store answers in process already)",
        ));
    }
    within("store.lease.requests", l.requests, 1, 100_000)?;
    within("store.lease.sync_ms", l.sync_ms, 10, 10_000)?;
    // Fields bounded below by the sync interval.
    let after_sync = |field: &str, v: u64, max: u64| {
        if v < l.sync_ms || v > max {
            return Err(invalid(
                field,
                format!(
                    "must be at least store.lease.sync_ms ({}) and at most {max}",
                    l.sync_ms
                ),
            ));
        }
        Ok(())
    };
    after_sync("store.lease.staleness_ms", l.staleness_ms, 60_000)?;
    if l.ttl_secs.saturating_mul(1000) < l.staleness_ms.saturating_mul(4) || l.ttl_secs > 3600 {
        return Err(invalid(
            "store.lease.ttl_secs",
            format!(
                "must cover at least 4 x store.lease.staleness_ms ({} ms) and be at most 3600",
                l.staleness_ms
            ),
        ));
    }
    after_sync("store.lease.idle_ms", l.idle_ms, 3_600_000)?;
    within("store.lease.batch_max", l.batch_max, 1, 10_000)?;
    Ok(())
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            path: default_path(),
            synchronous: SyncMode::Full,
            url: None,
            cluster: false,
            prefix: default_prefix(),
            timeout_ms: default_store_timeout(),
            settle_retry_ms: default_settle_retry(),
            lease: None,
        }
    }
}

impl StoreConfig {
    /// What the store is, for `tollgate check` and the start-up log (no secrets).
    pub fn describe(&self) -> String {
        match self.kind {
            StoreKind::Sqlite if self.path == ":memory:" => {
                "sqlite in memory (nothing survives a restart)".into()
            }
            StoreKind::Sqlite => format!("sqlite {}", self.path),
            StoreKind::Memory => "memory (nothing survives a restart)".into(),
            StoreKind::Redis => {
                let url = self.url.as_deref().unwrap_or_default();
                // Only the part after the credentials, if any.
                let shown = url.rsplit_once('@').map_or(url, |(_, host)| host);
                let cluster = if self.cluster {
                    "redis cluster"
                } else {
                    "redis"
                };
                format!("{cluster} {shown}")
            }
        }
    }
}

fn default_path() -> String {
    "tollgate.db".into()
}
fn default_prefix() -> String {
    "tollgate".into()
}
fn default_store_timeout() -> u64 {
    500
}
fn default_settle_retry() -> u64 {
    5000
}

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded and persistent: one SQLite file (default).
    #[default]
    Sqlite,
    /// Embedded, in memory (tests, demos): balances and spent receipts are lost on restart.
    Memory,
    /// Redis (production; shared by replicas).
    Redis,
}

/// `[store] synchronous`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Sync every commit.
    #[default]
    Full,
    /// Sync at checkpoints.
    Normal,
}

/// `[store]`: a sqlite store names a file in a directory that exists; a Redis store names a
/// usable URL; prefix and timeouts in range.
pub(super) fn validate_store(store: &StoreConfig) -> Result<(), ConfigError> {
    match store.kind {
        StoreKind::Memory => {}
        StoreKind::Sqlite => {
            if store.path.trim().is_empty() {
                return Err(invalid("store.path", "must name a file (or \":memory:\")"));
            }
            if store.path != ":memory:" {
                let path = std::path::Path::new(&store.path);
                if path.is_dir() {
                    return Err(invalid(
                        "store.path",
                        format!(
                            "{} is a directory: name a file in it, e.g. {}/tollgate.db",
                            store.path,
                            store.path.trim_end_matches('/')
                        ),
                    ));
                }
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                    return Err(invalid(
                        "store.path",
                        format!("directory {} does not exist", dir.display()),
                    ));
                }
            }
        }
        StoreKind::Redis => {
            let Some(url) = &store.url else {
                return Err(invalid("store.url", "required when store.kind = \"redis\""));
            };
            let urls: Vec<&str> = url.split(',').map(str::trim).collect();
            if urls.iter().any(|u| redis_url_ok(u).is_err()) {
                return Err(invalid("store.url", "must be a redis://, rediss:// or unix:// URL (comma-separated seed nodes with cluster = true)"));
            }
            if urls.len() > 1 && !store.cluster {
                return Err(invalid(
                    "store.url",
                    "several URLs name a cluster: set store.cluster = true",
                ));
            }
        }
    }
    if store.prefix.is_empty() || store.prefix.contains(['{', '}', ' ']) {
        return Err(invalid(
            "store.prefix",
            "must be non-empty, without braces or spaces",
        ));
    }
    within("store.timeout_ms", store.timeout_ms, 1, 60_000)?;
    if store.settle_retry_ms > 60_000 {
        return Err(invalid("store.settle_retry_ms", "must be at most 60000"));
    }
    validate_lease(store)
}

fn redis_url_ok(url: &str) -> Result<(), ()> {
    let ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|p| url.starts_with(p));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}
