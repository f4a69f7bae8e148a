//! Issuer revocation lists for mandates: an issuer publishes the ids of the mandates it revoked
//! as JSON `{"revoked": ["m-1", "m-2"]}` at a URL; the gateway polls it and revokes each new id
//! in the store (so every replica refuses it on the next request, like an admin revocation).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::mandate::mandate_key;
use crate::store::Store;

#[derive(Deserialize)]
struct RevocationList {
    revoked: Vec<String>,
}

/// Why a revocation list was not applied.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The list could not be fetched or read.
    #[error("fetch: {0}")]
    Fetch(String),
    /// The issuer answered with an error status.
    #[error("status {0}")]
    Status(u16),
    /// Over 4 MiB.
    #[error("list over 4 MiB")]
    TooLarge,
    /// Not a revocation list.
    #[error("not a revocation list: {0}")]
    NotAList(String),
    /// The store did not record a revocation.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Polls one issuer's revocation list.
#[derive(Debug)]
pub struct RevocationPoller {
    issuer: String,
    url: String,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    applied: HashSet<String>,
}

impl RevocationPoller {
    /// A poller for `issuer`'s list at `url`.
    pub fn new(
        issuer: String,
        url: String,
        store: Arc<dyn Store>,
    ) -> Result<Self, RevocationError> {
        let client = crate::fetch::client().map_err(RevocationError::Client)?;
        Ok(RevocationPoller {
            issuer,
            url,
            store,
            client,
            applied: HashSet::new(),
        })
    }

    /// Fetch the list once and revoke the ids not revoked yet; returns how many were new.
    pub async fn poll_once(&mut self) -> Result<usize, RevocationError> {
        let bytes = crate::fetch::get_bounded(&self.client, &self.url, 4 * 1024 * 1024)
            .await
            .map_err(|e| match e {
                crate::fetch::FetchError::Transport(e) => RevocationError::Fetch(e),
                crate::fetch::FetchError::Status(s) => RevocationError::Status(s.as_u16()),
                crate::fetch::FetchError::TooLarge => RevocationError::TooLarge,
            })?;
        let list: RevocationList =
            serde_json::from_slice(&bytes).map_err(|e| RevocationError::NotAList(e.to_string()))?;
        let mut new = 0;
        for id in list.revoked {
            if self.applied.contains(&id) {
                continue;
            }
            self.store
                .revoke_mandate(&mandate_key(&self.issuer, &id))
                .await?;
            tracing::info!(issuer = %self.issuer, mandate = %id, "mandate revoked by its issuer");
            self.applied.insert(id);
            new += 1;
        }
        Ok(new)
    }

    /// Poll forever, every `interval` (a failed poll is logged and retried next time).
    pub async fn run(mut self, interval: Duration) {
        loop {
            if let Err(e) = self.poll_once().await {
                tracing::warn!(issuer = %self.issuer, url = %self.url, error = %e, "revocation list not applied");
            }
            tokio::time::sleep(interval).await;
        }
    }
}
