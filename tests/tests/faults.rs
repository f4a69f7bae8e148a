//! Faults injected into real processes: Redis killed and restarted under load, Redis paused,
//! upstreams that hang or answer garbage, the gateway process stopped under load. After each:
//! nothing served unpaid, nothing charged twice, the ledger balances to the unit. Each test
//! records its figures for the "Guarantees" table of docs/guarantees.md (`tests/guarantees.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tollgate_e2e::*;
use tollgate_middleware::Store;

/// For every payer: credited - captured = available + held, never negative; the ledger's sum
/// per payer equals captured. Returns the number of events.
async fn assert_ledger(store: &Arc<dyn Store>, payers: &[String]) -> usize {
    let events = store.usage_events().await.unwrap();
    for p in payers {
        let acct = store.account(p).await.unwrap();
        let Some(b) = acct.balances.get("USD").copied() else {
            continue;
        };
        assert!(b.available >= 0 && b.held >= 0, "{p}: {b:?}");
        assert_eq!(b.credited - b.captured, b.available + b.held, "{p}: {b:?}");
        let sum: i64 = events
            .iter()
            .filter(|e| &e.payer == p && e.credential.starts_with("token:"))
            .map(|e| e.amount_minor as i64)
            .sum();
        assert_eq!(sum, b.captured, "{p}: events = captures");
    }
    events.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_under_load() {
    let mut redis = RedisServer::start_persistent();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis_timeout(&redis, 300)
        .route(paid("echo", "/v1/echo", &up, "0.01").with("timeout_ms = 2000"))
        .route(free("free", "/free", &up))
        .start()
        .await;
    let payers: Vec<String> = (0..8).map(|i| format!("load-{i}")).collect();
    let mut tokens = Vec::new();
    for p in &payers {
        tokens.push(gw.topup(&wallet, p, "100").await);
    }
    let deadline = Instant::now() + Duration::from_millis(3500);
    let mut workers = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let http = gw.http.clone();
        let url = gw.url("/v1/echo");
        let free_url = gw.url("/free/hello");
        let token = token.clone();
        let wallet = wallet.clone();
        let payer = payers[i].clone();
        workers.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, u64> = BTreeMap::new();
            let mut paid_ok = 0u64;
            let mut receipts_ok = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                // Alternate: token drawdown, a fresh receipt, a free request.
                let res = match n % 3 {
                    0 => http.get(&url).bearer_auth(&token).send().await,
                    1 => {
                        let r = wallet.receipt("m", &payer, "0.01");
                        http.get(&url)
                            .header("authorization", format!("Payment {r}"))
                            .send()
                            .await
                    }
                    _ => http.get(&free_url).send().await,
                };
                let Ok(res) = res else {
                    *seen.entry("client_error".into()).or_default() += 1;
                    continue;
                };
                let status = res.status().as_u16();
                let paid = res.headers().contains_key("payment-response");
                let key = if status == 200 {
                    format!("{}_200", ["token", "receipt", "free"][(n % 3) as usize])
                } else {
                    let body: serde_json::Value = res.json().await.unwrap_or_default();
                    format!("{status}_{}", body["code"].as_str().unwrap_or(""))
                };
                if status == 200 && n % 3 != 2 {
                    assert!(paid, "a paid 200 without PAYMENT-RESPONSE");
                    paid_ok += 1;
                    if n % 3 == 1 {
                        receipts_ok.push(());
                    }
                }
                *seen.entry(key).or_default() += 1;
            }
            (seen, paid_ok)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut paid_ok = 0;
    for w in workers {
        let (seen, ok) = w.await.unwrap();
        paid_ok += ok;
        for (k, v) in seen {
            *totals.entry(k).or_default() += v;
        }
    }
    // Only served-and-paid, free, or fail-closed answers.
    for k in totals.keys() {
        assert!(
            [
                "token_200",
                "receipt_200",
                "free_200",
                "503_store_unavailable"
            ]
            .contains(&k.as_str()),
            "unexpected outcome {k}: {totals:?}"
        );
    }
    assert!(
        totals.get("503_store_unavailable").copied().unwrap_or(0) > 0,
        "the outage was felt: {totals:?}"
    );
    // Recovered by itself: paid requests succeed again after the restart.
    let res = gw
        .http
        .get(gw.url("/v1/echo"))
        .bearer_auth(&tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let store = gw.paywall.store().clone();
    let events = assert_ledger(&store, &payers).await;
    assert_eq!(
        events as u64,
        paid_ok + 1,
        "every paid 200 has exactly one event: {totals:?}"
    );
    let requests: u64 = totals.values().sum();
    report(
        "redis_killed_under_load",
        json!({"fault": "Redis killed for 1 s and restarted under load (AOF)", "requests": requests, "served_paid": paid_ok,
               "free_served": totals.get("free_200"), "refused_503": totals.get("503_store_unavailable"), "served_unpaid": 0, "lost_events": 0}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_fails_closed_with_bounded_latency() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .redis_timeout(&redis, 200)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .route(free("free", "/free", &up))
        .start()
        .await;
    let token = gw.topup(&wallet, "paused", "10").await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2500)
        .arg("ALL")
        .query(&mut redis.conn())
        .unwrap();
    let mut worst = Duration::ZERO;
    let mut refused = 0;
    for i in 0..5 {
        let started = Instant::now();
        let res = if i % 2 == 0 {
            gw.http
                .get(gw.url("/v1/echo"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
        } else {
            gw.pay_get("/v1/echo", &wallet.receipt("m", "paused", "0.01"))
                .await
        };
        worst = worst.max(started.elapsed());
        assert_eq!(
            res.headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("2"),
            "a 503 says when to retry"
        );
        assert_eq!(code_of(res).await, (503, "store_unavailable".into()));
        refused += 1;
        assert_eq!(
            gw.http
                .get(gw.url("/free/hello"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "free routes keep working"
        );
    }
    // Bounded by the store timeout (2 x 200 ms per call), far below the 2.5 s pause.
    assert!(worst < Duration::from_millis(1500), "worst {worst:?}");
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        gw.http
            .get(gw.url("/v1/echo"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let store = gw.paywall.store().clone();
    assert_ledger(&store, &["paused".to_owned()]).await;
    report(
        "redis_paused",
        json!({"fault": "Redis paused (CLIENT PAUSE 2.5 s)", "requests": refused + 1, "refused_503": refused, "worst_ms": worst.as_millis() as u64, "served_unpaid": 0, "lost_events": 0}),
    );
}

/// A TCP server that answers every connection with `reply` (or nothing, if `None`).
async fn fake_upstream(reply: Option<&'static [u8]>) -> TestUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r).await;
                        let _ = s.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    TestUpstream { addr }
}

#[tokio::test]
async fn hanging_and_garbage_upstreams_never_charge() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let hanging = fake_upstream(None).await;
    let garbage = fake_upstream(Some(b"this is not HTTP\r\n\r\n")).await;
    let truncated = fake_upstream(Some(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-a-part",
    ))
    .await;
    let gw = gateway()
        .issuer(&wallet)
        .redis(&redis)
        .route(paid("hang", "/hang", &hanging, "0.01").with("timeout_ms = 300"))
        .route(paid("garbage", "/garbage", &garbage, "0.01"))
        .route(paid("truncated", "/truncated", &truncated, "0.01"))
        .start()
        .await;
    let receipt = wallet.receipt("m", "victim", "0.01");
    let started = Instant::now();
    assert_eq!(
        code_of(gw.pay_get("/hang", &receipt).await).await,
        (504, "upstream_timeout".into())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        code_of(gw.pay_get("/garbage", &receipt).await).await,
        (502, "upstream_unavailable".into())
    );
    assert!(
        gw.paywall.store().usage_events().await.unwrap().is_empty(),
        "nothing charged"
    );
    // A 200 head then a short body: a fixed price is captured with the head (documented);
    // the client sees the truncation.
    let res = gw.pay_get("/truncated", &receipt).await;
    assert_eq!(res.status(), 200);
    assert!(res.bytes().await.is_err());
    assert_eq!(gw.paywall.store().usage_events().await.unwrap().len(), 1);
    report(
        "bad_upstreams",
        json!({"fault": "upstream hanging / answering garbage / truncating", "requests": 3, "refused_504": 1, "refused_502": 1, "charged_when_no_2xx": 0, "served_unpaid": 0, "lost_events": 0}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_sigterm_under_load_finishes_and_settles_in_flight_requests() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let port = tollgate_e2e::process::free_port();
    let dir = tempfile::tempdir().unwrap();
    let jwk = serde_json::to_value(wallet.signer.public_jwk()).unwrap();
    let jwk_toml: Vec<String> = jwk
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nmerchant = \"m\"\nshutdown_grace_secs = 20\n[currencies.USD]\nscale = 6\n[[issuers]]\nid = \"wallet\"\nkeys = [{{ {} }}]\n[store]\nkind = \"redis\"\nurl = \"{}\"\n[[routes]]\nid = \"echo\"\npath = \"/v1/echo\"\nupstream = \"{}\"\nprice = {{ amount = \"0.01\", currency = \"USD\" }}\n",
        jwk_toml.join(", "),
        redis.url(),
        up.url()
    );
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = tollgate_e2e::process::start(&path, std::process::Stdio::null());
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    tollgate_e2e::process::wait_healthy(&http, &base).await;
    let mut in_flight = Vec::new();
    for i in 0..20 {
        let r = wallet.receipt("m", &format!("term-{i}"), "0.01");
        let req = http
            .request(Method::GET, format!("{base}/v1/echo?delay_ms=1000"))
            .header("authorization", format!("Payment {r}"));
        in_flight.push(tokio::spawn(req.send()));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once shutdown starts.
    let late = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(
        late.is_err(),
        "a new connection was accepted during shutdown"
    );
    let mut served = 0;
    for t in in_flight {
        let res = t.await.unwrap().unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().contains_key("payment-response"));
        served += 1;
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let store: Arc<dyn Store> = Arc::new(
        tollgate_middleware::RedisStore::connect(tollgate_middleware::RedisStoreOptions {
            url: redis.url(),
            cluster: false,
            prefix: "tollgate".into(),
            timeout: Duration::from_secs(2),
        })
        .await
        .unwrap(),
    );
    let events = store.usage_events().await.unwrap();
    assert_eq!(
        events.len(),
        served,
        "every served request was settled before exit"
    );
    report(
        "gateway_sigterm",
        json!({"fault": "gateway SIGTERM with 20 paid requests in flight", "requests": 20, "served_paid": served, "new_connections_refused": true, "served_unpaid": 0, "lost_events": 0}),
    );
}
