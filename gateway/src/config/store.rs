//! `[store]`: where payment state lives.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (embedded, single process) or `redis`.
    #[serde(default)]
    pub kind: StoreKind,
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
            kind: StoreKind::Memory,
            url: None,
            cluster: false,
            prefix: default_prefix(),
            timeout_ms: default_store_timeout(),
            settle_retry_ms: default_settle_retry(),
        }
    }
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
    /// In-process (default).
    #[default]
    Memory,
    /// Redis (production; shared by replicas).
    Redis,
}

/// `[store]`: a Redis store names a usable URL; prefix and timeouts in range.
pub(super) fn validate_store(store: &StoreConfig) -> Result<(), ConfigError> {
    match store.kind {
        StoreKind::Memory => {}
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
