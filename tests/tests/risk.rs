//! Risk rules end to end (docs/risk.md): two gateways on one Redis share a payer's limit
//! exactly; a flood from one payer leaves another's service alone; a refusal is 429
//! `risk_limited` with `Retry-After` and charges nothing; `flag` serves and reports
//! (`risk.flagged`), `block` blocks the payer (403, `payer.blocked`, by `risk`); every hit is in
//! the admin API and the metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::process::free_port;
use tollgate_e2e::python::PythonServer;
use tollgate_e2e::*;

const ADMIN: &str = "admin-token-0123456789";

fn hour() -> i64 {
    now_secs() / 3600
}

async fn status_and_code(res: reqwest::Response) -> (u16, String, Option<String>) {
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or("").to_owned(),
        retry,
    )
}

/// 30 requests per hour for a payer, across two replicas: exactly 30 served and charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_a_payers_limit_and_a_flood_spares_others() {
    let redis = RedisServer::start();
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let rule = "[[risk]]\nid = \"per-hour\"\nrule = \"requests\"\nwindow = \"hour\"\nlimit = 30\naction = \"refuse\"\n";
    let start = || {
        gateway()
            .redis(&redis)
            .issuer(&wallet)
            .admin(ADMIN)
            .top(rule)
            .route(paid("work", "/v1/echo", &up, "0.01"))
            .start()
    };
    let (a, b) = (start().await, start().await);
    loop {
        let began = hour();
        let flood = a.topup(&wallet, &format!("flood-{began}"), "5").await;
        let calm = a.topup(&wallet, &format!("calm-{began}"), "5").await;
        // 50 requests from the flooding payer, 10 at a time over both replicas.
        let mut outcomes = Vec::new();
        for round in 0..5 {
            let calls = (0..10).map(|i| {
                let gw = if (round + i) % 2 == 0 { &a } else { &b };
                gw.token_get("/v1/echo", &flood)
            });
            for res in futures_util::future::join_all(calls).await {
                outcomes.push(status_and_code(res).await);
            }
        }
        // The calm payer is served on both.
        for gw in [&a, &b] {
            for _ in 0..5 {
                assert_eq!(gw.token_get("/v1/echo", &calm).await.status(), 200);
            }
        }
        if hour() != began {
            continue; // the window turned during the run: run it again in the new hour
        }
        let served = outcomes.iter().filter(|o| o.0 == 200).count();
        let refused: Vec<_> = outcomes.iter().filter(|o| o.0 != 200).collect();
        assert_eq!(served, 30, "{outcomes:?}");
        assert_eq!(refused.len(), 20);
        for (status, code, retry) in refused {
            assert_eq!((*status, code.as_str()), (429, "risk_limited"));
            let secs: u64 = retry.as_deref().unwrap().parse().unwrap();
            assert!((1..=3600).contains(&secs), "{secs}");
        }
        // Exactly the served requests were charged.
        let events = a.paywall.store().usage_events().await.unwrap();
        let charged = events
            .iter()
            .filter(|e| e.payer == format!("flood-{began}"))
            .count();
        assert_eq!(charged, 30);
        let balance = a.balance(&flood).await;
        assert_eq!(balance["balances"]["USD"]["available"], "4.7", "{balance}");
        // The decisions are listed, one per refusal.
        let d = a
            .admin_json("/admin/v1/risk/decisions?limit=1000", ADMIN)
            .await;
        let mine = d["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["payer"] == format!("flood-{began}"))
            .count();
        assert_eq!(mine, 20);
        let metrics = a.admin_text("/metrics", ADMIN).await;
        assert!(
            metrics.contains("tollgate_risk_decisions_total{action=\"refuse\",rule=\"per-hour\"}"),
            "{metrics}"
        );
        return;
    }
}

fn python() -> Option<PathBuf> {
    tools::installed(
        "TOLLGATE_WEBHOOKS_PYTHON",
        ".cache/tollgate-webhooks-venv/bin/python",
        "TOLLGATE_REQUIRE_WEBHOOKS",
        "tests/webhooks/setup.sh",
    )
}

/// A flag serves and reports; a block refuses, blocks and reports; neither charges what it
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flag_and_block_are_reported() {
    let Some(py) = python() else { return };
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::env::set_var("TOLLGATE_TEST_RISK_WEBHOOK_SECRET", SECRET);
    let port = free_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhooks/receiver.py");
    let _receiver = PythonServer::start_with(&py, [script, SECRET, &port.to_string(), ""]);
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let rules = format!(
        "[[risk]]\nid = \"chatty\"\nrule = \"requests\"\nwindow = \"hour\"\nlimit = 1\naction = \"flag\"\n\
         [[risk]]\nid = \"big-spender\"\nrule = \"spend\"\nwindow = \"hour\"\namount = \"0.25\"\ncurrency = \"USD\"\naction = \"block\"\n\
         [[webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"risk.flagged\", \"payer.blocked\"]\n\
         secret_env = \"TOLLGATE_TEST_RISK_WEBHOOK_SECRET\"\nbackoff_ms = 100\n"
    );
    let gw = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .top(&rules)
        .route(paid("work", "/v1/echo", &up, "0.1"))
        .start()
        .await;
    let payer = format!("risky-{}", now_secs());
    let token = gw.topup(&wallet, &payer, "1").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(status_and_code(gw.token_get("/v1/echo", &token).await).await);
    }
    let codes: Vec<(u16, &str)> = got.iter().map(|(s, c, _)| (*s, c.as_str())).collect();
    // 1: served; 2: flagged and served; 3: spend 0.3 > 0.25 blocks; 4: the payer is blocked.
    assert_eq!(
        codes,
        [
            (200, ""),
            (200, ""),
            (403, "payer_blocked"),
            (403, "payer_blocked")
        ]
    );
    let events = gw.paywall.store().usage_events().await.unwrap();
    assert_eq!(events.iter().filter(|e| e.payer == payer).count(), 2);
    assert!(gw.paywall.store().account(&payer).await.unwrap().blocked);
    // The receiver gets one risk.flagged and one payer.blocked (by risk), signed.
    let start = Instant::now();
    let attempts = loop {
        let v: Value = reqwest::get(format!("http://127.0.0.1:{port}/received"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let a = v["attempts"].as_array().unwrap().clone();
        if a.len() >= 2 {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let types: Vec<&str> = attempts
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["risk.flagged", "payer.blocked"], "{attempts:#?}");
    assert!(attempts.iter().all(|a| a["valid"] == true));
    let flagged = &attempts[0]["payload"]["data"];
    assert_eq!(
        (&flagged["payer"], &flagged["rules"][0]["rule"]),
        (&json!(payer), &json!("chatty"))
    );
    let blocked = &attempts[1]["payload"]["data"];
    assert_eq!(
        (&blocked["by"], &blocked["payer"]),
        (&json!("risk"), &json!(payer))
    );
    assert!(blocked["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["rule"] == "big-spender" && r["value"] == 300_000 && r["limit"] == 250_000));
    // The admin API lists the three hits (the flag twice, the block once).
    let d = gw.admin_json("/admin/v1/risk/decisions", ADMIN).await;
    let mut seen: Vec<(String, String)> = d["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["payer"] == json!(payer))
        .map(|x| {
            (
                x["rule"].as_str().unwrap().to_owned(),
                x["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("big-spender".to_owned(), "block".to_owned()),
            ("chatty".to_owned(), "flag".to_owned()),
            ("chatty".to_owned(), "flag".to_owned()),
        ]
    );
}
