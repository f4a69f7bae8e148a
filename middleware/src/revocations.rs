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
    pub fn new(issuer: String, url: String, store: Arc<dyn Store>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(RevocationPoller {
            issuer,
            url,
            store,
            client,
            applied: HashSet::new(),
        })
    }

    /// Fetch the list once and revoke the ids not revoked yet; returns how many were new.
    pub async fn poll_once(&mut self) -> Result<usize, String> {
        let res = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let bytes = res.bytes().await.map_err(|e| format!("read: {e}"))?;
        if bytes.len() > 4 * 1024 * 1024 {
            return Err("list over 4 MiB".into());
        }
        let list: RevocationList =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a revocation list: {e}"))?;
        let mut new = 0;
        for id in list.revoked {
            if self.applied.contains(&id) {
                continue;
            }
            self.store
                .revoke_mandate(&mandate_key(&self.issuer, &id))
                .await
                .map_err(|e| e.to_string())?;
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
