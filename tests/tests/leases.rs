//! Balance leases (`[store.lease]`) on a real Redis: replicas draw token-paid requests from a
//! slice of the payer's balance in process and record the charges in batches.
//!
//! - two replicas leasing one payer's balance never overspend it: every served request is in
//!   the ledger exactly once, and credited = balance + charges, to the unit;
//! - a block takes effect within the staleness bound: no request sent later than the bound
//!   after the block is served;
//! - (the store step itself, on every backend: `conformance/leases.rs`);
//! - the real binary `kill -9`ed mid-batch never charges the payer for an unserved request,
//!   and the lease returns to the balance after its ttl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate_e2e::process;
use tollgate_e2e::*;
use tollgate_middleware::store::prelude::*;
use tollgate_middleware::store::{RedisStore, RedisStoreOptions, UsageEvent};

const PRICE_MINOR: i64 = 10_000; // 0.01 USD at scale 6

fn leased(r: &RedisServer, up: &TestUpstream, w: &TestIssuer, lease: &str) -> GatewayBuilder {
    gateway()
        .issuer(w)
        .redis(r)
        // Before the first table header of the config: a table of its own.
        .top(&format!("[store.lease]\n{lease}"))
        .route(paid("echo", "/v1/echo", up, "0.01"))
}

/// The reservation id a batched `PAYMENT-RESPONSE` names.
fn reservation(res: &reqwest::Response) -> String {
    let v = b64_json(res.headers()["payment-response"].to_str().unwrap());
    assert_eq!(v["settlement"], "batched", "{v}");
    assert!(v.get("event_id").is_none(), "{v}");
    v["transaction"].as_str().unwrap().to_owned()
}

async fn usd(store: &dyn Store, payer: &str) -> tollgate_middleware::store::Balance {
    store
        .account(payer)
        .await
        .unwrap()
        .balances
        .get("USD")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_overspend_one_balance() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let w = TestIssuer::ed25519("wallet");
    let lease = "sync_ms = 20\nstaleness_ms = 60\nrequests = 8\nidle_ms = 100\n";
    let a = leased(&redis, &up, &w, lease).start().await;
    let b = leased(&redis, &up, &w, lease).start().await;
    let token = a.topup(&w, "p", "1.00").await; // 100 requests' worth
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for c in 0..16usize {
        let (url, token, served) = (
            if c % 2 == 0 {
                a.url("/v1/echo")
            } else {
                b.url("/v1/echo")
            },
            token.clone(),
            served.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused_in_a_row = 0;
            while refused_in_a_row < 5 {
                let res = http.get(&url).bearer_auth(&token).send().await.unwrap();
                match res.status().as_u16() {
                    200 => {
                        refused_in_a_row = 0;
                        served.lock().unwrap().push(reservation(&res));
                    }
                    402 => {
                        let body: serde_json::Value = res.json().await.unwrap();
                        assert_eq!(body["code"], "balance_insufficient", "{body}");
                        refused_in_a_row += 1;
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    s => panic!("unexpected status {s}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    a.paywall.close().await;
    b.paywall.close().await;
    let served = served.lock().unwrap().clone();
    let store = a.paywall.store().clone();
    let events: Vec<UsageEvent> = store
        .usage_events()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.payer == "p")
        .collect();
    let recorded: BTreeSet<String> = events.iter().map(|e| e.reservation.clone()).collect();
    let answered: BTreeSet<String> = served.iter().cloned().collect();
    assert_eq!(answered.len(), served.len(), "a reservation answered twice");
    assert_eq!(
        recorded, answered,
        "every served request recorded, none other"
    );
    assert_eq!(events.len(), served.len(), "each recorded once");
    assert!(events
        .iter()
        .all(|e| e.amount_minor == 10_000 && e.uncharged_minor == 0));
    let bal = usd(store.as_ref(), "p").await;
    let charged: i64 = events.iter().map(|e| e.amount_minor as i64).sum();
    assert_eq!(bal.held, 0, "every lease returned: {bal:?}");
    assert_eq!(bal.available + charged, 1_000_000, "{bal:?}");
    assert_eq!(bal.captured, charged);
    // Both replicas served, and the balance was drawn down to less than one request.
    assert!(bal.available < PRICE_MINOR, "{bal:?}");
    assert!(served.len() >= 99, "served {}", served.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_takes_effect_within_the_staleness_bound() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let w = TestIssuer::ed25519("wallet");
    let staleness = Duration::from_millis(200);
    let gw = leased(
        &redis,
        &up,
        &w,
        "sync_ms = 50\nstaleness_ms = 200\nrequests = 16\n",
    )
    .start()
    .await;
    let token = gw.topup(&w, "p", "100").await;
    // Warm: the lease exists and is fresh.
    assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(Instant, u16)>::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, token, stop, log) =
            (gw.url("/v1/echo"), token.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let res = http.get(&url).bearer_auth(&token).send().await.unwrap();
                log.lock().unwrap().push((sent, res.status().as_u16()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let blocked_at = Instant::now();
    gw.paywall.store().set_blocked("p", true).await.unwrap();
    tokio::time::sleep(staleness + Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let before = log
        .iter()
        .filter(|(t, s)| *t < blocked_at && *s == 200)
        .count();
    let late: Vec<_> = log
        .iter()
        .filter(|(t, _)| *t >= blocked_at + staleness)
        .collect();
    assert!(before > 0, "traffic flowed before the block");
    assert!(!late.is_empty(), "requests were sent after the bound");
    assert!(
        late.iter().all(|(_, s)| *s == 403 || *s == 402),
        "served after the bound: {:?}",
        late.iter().filter(|(_, s)| *s == 200).count()
    );
    let res = gw.token_get("/v1/echo", &token).await;
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "payer_blocked", "{body}");
    // Unblocked: served again once the lease has seen it.
    gw.paywall.store().set_blocked("p", false).await.unwrap();
    tokio::time::sleep(staleness + Duration::from_millis(100)).await;
    assert_eq!(gw.token_get("/v1/echo", &token).await.status(), 200);
    gw.paywall.close().await;
    let bal = usd(gw.paywall.store().as_ref(), "p").await;
    let events = gw.paywall.store().usage_events().await.unwrap();
    let charged: i64 = events.iter().map(|e| e.amount_minor as i64).sum();
    assert_eq!(bal.available + charged, 100_000_000, "{bal:?}");
    assert_eq!(bal.held, 0);
    let served = log.iter().filter(|(_, s)| *s == 200).count() + 2;
    assert_eq!(events.len(), served, "every served request recorded once");
}

fn binary_config(port: u16, redis: &RedisServer, w: &TestIssuer, up: &TestUpstream) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nmerchant = \"m\"\n[currencies.USD]\nscale = 6\n\
         [[issuers]]\nid = \"wallet\"\nkeys = [{}]\n\
         [store]\nkind = \"redis\"\nurl = \"{}\"\n\
         [store.lease]\nsync_ms = 2000\nstaleness_ms = 4000\nttl_secs = 16\nrequests = 100000\nbatch_max = 10000\n\
         [[routes]]\nid = \"echo\"\npath = \"/v1/echo\"\nupstream = \"{}\"\n\
         price = {{ amount = \"0.01\", currency = \"USD\" }}\n",
        w.jwk_toml(),
        redis.url(),
        up.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_batch_never_charges_an_unserved_request() {
    let redis = RedisServer::start();
    let up = upstream().await;
    let w = TestIssuer::ed25519("wallet");
    let port = process::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(&config, binary_config(port, &redis, &w, &up)).unwrap();
    let mut child = process::start(&config, Stdio::null());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    process::wait_healthy(&http, &base).await;
    let mut c = w.claims("m", "p", "1000.00"); // not drawn down before the kill
    c["kind"] = "topup".into();
    let res = http
        .post(format!("{base}/tollgate/v1/topup"))
        .header("authorization", format!("Payment {}", w.sign(&c)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token = res.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let served = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, token, served) = (
            http.clone(),
            format!("{base}/v1/echo"),
            token.clone(),
            served.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok(res) = http.get(&url).bearer_auth(&token).send().await else {
                    return;
                };
                if res.status() == 200 {
                    served.lock().unwrap().insert(reservation(&res));
                }
            }
        }));
    }
    // Syncs run only on the background round (every 2 s from the first draw: the room, 100,000
    // requests, and a batch, 10,000 charges, never fill up in between; the view never goes
    // stale), so a kill 3 s in lands a second after one sync and a second before the next:
    // mid-batch, whatever the load.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let served = served.lock().unwrap().clone();
    let store = RedisStore::connect(RedisStoreOptions {
        url: redis.url(),
        cluster: false,
        prefix: "tollgate".into(),
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    // After the lease's ttl, the next account read gives it back.
    tokio::time::sleep(Duration::from_millis(16_300)).await;
    let usd = store.account("p").await.unwrap().balances["USD"];
    let events = store.usage_events().await.unwrap();
    let recorded: BTreeSet<String> = events.iter().map(|e| e.reservation.clone()).collect();
    assert_eq!(recorded.len(), events.len(), "recorded once each");
    assert!(
        recorded.is_subset(&served),
        "a charge for a request nobody was answered"
    );
    assert!(!recorded.is_empty(), "a batch was recorded before the kill");
    let charged: i64 = events.iter().map(|e| e.amount_minor as i64).sum();
    assert_eq!(usd.held, 0, "the dead replica's lease went back: {usd:?}");
    assert_eq!(usd.available + charged, 1_000_000_000, "{usd:?}");
    let lost = served.len() - recorded.len();
    eprintln!(
        "served {}, recorded {}, lost with the replica (the provider's loss): {lost}",
        served.len(),
        recorded.len()
    );
    assert!(lost > 0, "the kill landed mid-batch (a sync every 2 s)");
}
