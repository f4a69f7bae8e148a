//! The sqlite store across a crash: the real `tollgate` binary on `kind = "sqlite"`, `kill -9`ed
//! in the middle of paid traffic (token drawdown and receipts) and started again on the same
//! file. Afterwards: every answered charge is in the ledger exactly once, every payer's
//! balance equation holds to the unit, top-ups are neither lost nor applied twice, and no
//! receipt spent before the crash can be spent after it. A second process on the same file is
//! refused with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tollgate_e2e::process;
use tollgate_e2e::*;
use tollgate_middleware::store::{SqliteOptions, SqliteStore};
use tollgate_middleware::Store;

const PAYERS: usize = 4;

fn config(port: u16, wallet: &TestIssuer, up: &TestUpstream) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nmerchant = \"m\"\n[currencies.USD]\nscale = 6\n\
         [[issuers]]\nid = \"wallet\"\nkeys = [{}]\n\
         [store]\nkind = \"sqlite\"\npath = \"money.db\"\n\
         [[routes]]\nid = \"echo\"\npath = \"/v1/echo\"\nupstream = \"{}\"\n\
         price = {{ amount = \"0.01\", currency = \"USD\" }}\n\
         [[routes]]\nid = \"now\"\npath = \"/v1/echo/now\"\nupstream = \"{}\"\n\
         price = {{ amount = \"0.01\", currency = \"USD\" }}\ncapture = \"admission\"\n",
        wallet.jwk_toml(),
        up.url(),
        up.url()
    )
}

fn start(config: &Path) -> Child {
    process::start(config, Stdio::piped())
}

async fn topup(http: &reqwest::Client, base: &str, receipt: &str) -> reqwest::Response {
    http.post(format!("{base}/tollgate/v1/topup"))
        .header("authorization", format!("Payment {receipt}"))
        .send()
        .await
        .unwrap()
}

/// What the clients saw answered before the crash.
#[derive(Default)]
struct Seen {
    /// Answered paid requests (both routes).
    answered: usize,
    /// Charged event ids from `PAYMENT-RESPONSE` (a fixed price is captured before the head
    /// leaves, after the upstream answered, or at admission), by payer.
    events: BTreeMap<String, Vec<String>>,
    /// Receipts (the JWT) that paid an answered, charged request.
    receipts: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_traffic_keeps_every_unit() {
    let wallet = Arc::new(TestIssuer::ed25519("wallet"));
    let up = upstream().await;
    let port = process::free_port();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("tollgate.toml");
    std::fs::write(&config_path, config(port, &wallet, &up)).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    let mut child = start(&config_path);
    process::wait_healthy(&http, &base).await;

    // Each payer tops up 1.00 USD once (the receipts are kept to replay after the crash).
    let mut tokens = Vec::new();
    let mut topups = Vec::new();
    for i in 0..PAYERS {
        let mut c = wallet.claims("m", &format!("payer-{i}"), "1.00");
        c["kind"] = "topup".into();
        let receipt = wallet.sign(&c);
        let res = topup(&http, &base, &receipt).await;
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.unwrap();
        tokens.push(body["access_token"].as_str().unwrap().to_owned());
        topups.push(receipt);
    }

    // Paid traffic from 8 clients (token drawdown and one-off receipts) until the kill.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut clients = Vec::new();
    for c in 0..8usize {
        let (http, base, seen, wallet) = (http.clone(), base.clone(), seen.clone(), wallet.clone());
        let token = tokens[c % PAYERS].clone();
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let receipt =
                    (c % 2 == 1).then(|| wallet.receipt("m", &format!("r-{c}-{i}"), "0.01"));
                let auth = match &receipt {
                    Some(r) => format!("Payment {r}"),
                    None => format!("Bearer {token}"),
                };
                // Even requests: captured when the upstream answers; odd: at admission.
                let path = if i % 2 == 0 {
                    "/v1/echo"
                } else {
                    "/v1/echo/now"
                };
                let res = http
                    .get(format!("{base}{path}"))
                    .header("authorization", auth)
                    .send()
                    .await;
                let Ok(res) = res else { return };
                if res.status() != 200 {
                    continue;
                }
                let pr = res
                    .headers()
                    .get("payment-response")
                    .and_then(|v| v.to_str().ok())
                    .map(b64_json);
                if res.bytes().await.is_err() {
                    return;
                }
                let Ok(mut s) = seen.lock() else { return };
                s.answered += 1;
                let Some(pr) = pr else { continue };
                if let (Some(payer), Some(id)) = (pr["payer"].as_str(), pr["eventId"].as_str()) {
                    s.events
                        .entry(payer.to_owned())
                        .or_default()
                        .push(id.to_owned());
                    if let Some(r) = receipt {
                        s.receipts.push(r);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
    for c in clients {
        let _ = c.await;
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let answered = seen.answered;
    let at_admission: usize = seen.events.values().map(Vec::len).sum();
    assert!(
        at_admission >= 20,
        "too little traffic before the kill: {at_admission}"
    );
    assert!(
        answered >= 20,
        "too little traffic before the kill: {answered}"
    );
    assert!(
        !seen.receipts.is_empty(),
        "no receipt-paid answer before the kill"
    );

    // Restarted on the same file: a second process is refused while it runs.
    let mut child = start(&config_path);
    process::wait_healthy(&http, &base).await;
    let second = Command::new(tollgate_binary())
        .args(["run", "--config"])
        .arg(&config_path)
        .env("TOLLGATE_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(
        stderr.contains("store.path"),
        "the setting is named: {stderr}"
    );

    // No receipt spent before the crash pays again; no top-up applies twice.
    for r in seen.receipts.iter().take(10) {
        let res = http
            .get(format!("{base}/v1/echo"))
            .header("authorization", format!("Payment {r}"))
            .send()
            .await
            .unwrap();
        let (status, code) = code_of(res).await;
        assert!(status == 409 || status == 402, "{status} {code}");
        assert!(code.contains("receipt_replayed"), "{status} {code}");
    }
    for r in &topups {
        let res = topup(&http, &base, r).await;
        let status = res.status();
        let body: serde_json::Value = res.json().await.unwrap();
        // Applied once: a replay answers the same credit without applying it again.
        assert!(status == 200 || status == 409, "{status} {body}");
        if status == 200 {
            assert_eq!(body["duplicate"], true, "{body}");
        }
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());

    // The file itself, read by a fresh store.
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(SqliteOptions::new(
            dir.path().join("money.db").to_string_lossy(),
        ))
        .unwrap(),
    );
    let events = store.usage_events().await.unwrap();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event id recorded twice");
    for (payer, answered_ids) in &seen.events {
        for id in answered_ids {
            assert!(
                unique.contains(id.as_str()),
                "{payer}: answered charge {id} lost"
            );
        }
    }
    // Charged while the answer was on its way when the process died (the client saw none),
    // less served after-response requests whose capture the kill cut off.
    let unanswered = events.len() as i64 - answered as i64;
    for i in 0..PAYERS {
        let payer = format!("payer-{i}");
        let b = store.account(&payer).await.unwrap().balances["USD"];
        assert_eq!(
            b.credited, 1_000_000,
            "{payer}: top-up lost or applied twice: {b:?}"
        );
        assert_eq!(
            b.credited - b.captured,
            b.available + b.held,
            "{payer}: {b:?}"
        );
        let charged: i64 = events
            .iter()
            .filter(|e| e.payer == payer && e.credential.starts_with("token:"))
            .map(|e| i64::try_from(e.amount_minor).unwrap())
            .sum();
        assert_eq!(charged, b.captured, "{payer}: ledger = captured");
    }
    report(
        "sqlite_kill_9",
        json!({"fault": "gateway kill -9 under paid traffic on sqlite, restarted on the same file",
               "answered_paid": answered, "answered_with_event_id": at_admission,
               "ledger_events": events.len(), "ledger_minus_answered": unanswered, "lost_events": 0, "receipts_replayed": 0}),
    );
}

/// A file that is not a Tollgate database, or a directory that does not exist: the gateway
/// does not start, exits 64 and names the setting.
#[test]
fn an_unusable_store_path_stops_the_start_naming_the_setting() {
    let wallet = TestIssuer::ed25519("wallet");
    let dir = tempfile::tempdir().unwrap();
    let up = dead_upstream();
    let cfg = config(1, &wallet, &up);
    std::fs::write(dir.path().join("money.db"), vec![b'x'; 4096]).unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, &cfg).unwrap();
    let out = Command::new(tollgate_binary())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("store.path"), "{stderr}");
    assert!(stderr.contains("money.db"), "{stderr}");

    let missing = cfg.replace("path = \"money.db\"", "path = \"no/such/dir/money.db\"");
    std::fs::write(&path, missing).unwrap();
    let out = Command::new(tollgate_binary())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("store.path"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
