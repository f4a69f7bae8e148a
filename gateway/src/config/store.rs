//! `[store]`: where payment state lives.

use serde::Deserialize;

use super::{invalid, ConfigError};

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
    #[serde(default)]
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
    if store.timeout_ms == 0 || store.timeout_ms > 60_000 {
        return Err(invalid("store.timeout_ms", "must be 1 to 60000"));
    }
    if store.settle_retry_ms > 60_000 {
        return Err(invalid("store.settle_retry_ms", "must be at most 60000"));
    }
    Ok(())
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
