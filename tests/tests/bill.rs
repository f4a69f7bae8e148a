//! `GET /tollgate/v1/usage`: an agent's own bill -- exactly its events, newest first, paged with
//! `Tollgate-Next-Before`, as NDJSON or CSV -- on the embedded store and on Redis (the ledger
//! database's answer is checked in `ledger.rs`); bad input is a problem+json, never another
//! payer's events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use tollgate_e2e::*;

const ADMIN: &str = "bill-admin-token-0123";

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn bill_of_each_payer(redis: Option<&RedisServer>) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let mut g = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .route(paid("echo", "/v1/echo", &up, "0.01"));
    if let Some(r) = redis {
        g = g.redis(r);
    }
    let gw = g.start().await;
    // Payers named to share buckets and not: 12 payers, 1 to 3 calls each, interleaved.
    let payers: Vec<String> = (0..12).map(|i| format!("agent-{i}")).collect();
    let mut tokens = Vec::new();
    for p in &payers {
        tokens.push(gw.topup(&wallet, p, "1").await);
    }
    for round in 0..3 {
        for (i, t) in tokens.iter().enumerate() {
            if round <= i % 3 {
                assert_eq!(gw.token_get("/v1/echo", t).await.status(), 200);
            }
        }
    }
    // The admin export is the reference: every event, filtered by payer here.
    let all = gw
        .http
        .get(gw.admin_url("/admin/v1/events?limit=1000&order=desc"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let all = lines(&all);
    for (i, (p, t)) in payers.iter().zip(&tokens).enumerate() {
        // The admin export's events, each line with its `type`.
        let want: Vec<Value> = all
            .iter()
            .filter(|e| e["payer"] == p.as_str())
            .map(|e| {
                let mut e = e.clone();
                e["type"] = "charge".into();
                e
            })
            .collect();
        assert_eq!(want.len(), i % 3 + 1, "{p}");
        let res = gw.token_get("/tollgate/v1/usage", t).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/x-ndjson");
        assert_eq!(res.headers()["cache-control"], "no-store");
        assert!(
            res.headers().get("tollgate-next-before").is_none(),
            "one page"
        );
        let got = lines(&res.text().await.unwrap());
        assert_eq!(got, want, "{p}: the same events, newest first");
        // Pages of one until the cursor runs out.
        let mut paged = Vec::new();
        let mut path = "/tollgate/v1/usage?limit=1".to_owned();
        loop {
            let res = gw.token_get(&path, t).await;
            assert_eq!(res.status(), 200);
            let next = res
                .headers()
                .get("tollgate-next-before")
                .map(|v| v.to_str().unwrap().to_owned());
            let page = lines(&res.text().await.unwrap());
            paged.extend(page);
            match next {
                Some(id) => path = format!("/tollgate/v1/usage?limit=1&before={id}"),
                None => break,
            }
            assert!(paged.len() <= want.len(), "{p}: the cursor must end");
        }
        // The last full page names a cursor whose next page is empty.
        assert_eq!(paged, want, "{p}: paged");
    }
    // CSV: the admin export's columns, the payer's rows.
    let res = gw
        .token_get("/tollgate/v1/usage?format=csv", &tokens[2])
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = res.text().await.unwrap();
    let rows: Vec<&str> = csv.split("\r\n").filter(|r| !r.is_empty()).collect();
    assert!(rows[0].starts_with("id,time,time_ms,route,payer,"), "{csv}");
    assert_eq!(rows.len(), 1 + 3, "{csv}");
    assert!(rows[1..].iter().all(|r| r.contains(",agent-2,")), "{csv}");
}

#[tokio::test]
async fn each_payer_sees_its_own_bill_on_the_embedded_store() {
    bill_of_each_payer(None).await;
}

#[tokio::test]
async fn each_payer_sees_its_own_bill_on_redis() {
    let redis = RedisServer::start();
    bill_of_each_payer(Some(&redis)).await;
}

#[tokio::test]
async fn a_bill_needs_a_valid_token_and_valid_parameters() {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01"))
        .start()
        .await;
    let token = gw.topup(&wallet, "kim", "1").await;
    let (status, code) = code_of(
        gw.http
            .get(gw.url("/tollgate/v1/usage"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "token_invalid"));
    let (status, code) =
        code_of(gw.token_get("/tollgate/v1/usage", "tg1.forged.token").await).await;
    assert_eq!((status, code.as_str()), (401, "token_invalid"));
    // A receipt is not a bearer of the bill.
    let receipt = wallet.receipt("m", "kim", "0.01");
    let res = gw
        .http
        .get(gw.url("/tollgate/v1/usage"))
        .header("authorization", format!("Payment {receipt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "before=abc",
        "before=",
        "format=xml",
        "payer=someone-else",
    ] {
        let (status, code) = code_of(
            gw.token_get(&format!("/tollgate/v1/usage?{bad}"), &token)
                .await,
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "invalid_request"), "{bad}");
    }
    let res = gw
        .with_token(reqwest::Method::POST, "/tollgate/v1/usage", &token)
        .send()
        .await
        .unwrap();
    let (status, code) = code_of(res).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
    // No events yet: an empty bill, not an error.
    let res = gw.token_get("/tollgate/v1/usage", &token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "");
}
