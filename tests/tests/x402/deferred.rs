//! x402 `deferred` mode: served at once, settled in the background exactly once; a payment the
//! facilitator refuses blocks the payer until the provider resolves it.

use super::*;

#[tokio::test]
async fn deferred_mode_settles_in_the_background_exactly_once() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, hits) = counting_upstream().await;
    // Two gateways, two settlers, one queue.
    let a = start(&redis, &f, &up, "deferred").await;
    let b = start(&redis, &f, &up, "deferred").await;
    let offer = exact_offer(&a).await;
    let payer = LocalSigner::random();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let res = pay(
            gw,
            reqwest::Method::GET,
            "",
            &payer.pay(&offer, now()).unwrap(),
        )
        .await;
        assert_eq!(res.status(), 200);
        let pr = payment_response(&res);
        assert_eq!(pr["success"], true);
        assert_eq!(pr["settlement"], "deferred");
        assert_eq!(pr["settlementId"], pr["eventId"]);
    }
    // Not served: nothing queued.
    let res = pay(
        &a,
        reqwest::Method::GET,
        "?status=404",
        &payer.pay(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), 404);
    assert_eq!(hits.load(Ordering::SeqCst), 7);
    assert!(
        !f.calls().contains(&"verify"),
        "deferred asks no facilitator before serving"
    );
    eventually("6 settlements", || f.settled() == 6).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.settled(), 6);
    assert_eq!(
        f.calls().len(),
        6,
        "each authorization settled exactly once: {:?}",
        f.calls()
    );
    assert_eq!(a.paywall.store().usage_events().await.unwrap().len(), 6);
    assert!(a
        .paywall
        .store()
        .failed_settlements()
        .await
        .unwrap()
        .is_empty());
    // The queue is empty.
    let mut c = redis.conn();
    let due: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:{b*}:x402:due")
        .query(&mut c)
        .unwrap();
    for k in due {
        let n: i64 = redis::cmd("ZCARD").arg(&k).query(&mut c).unwrap();
        assert_eq!(n, 0, "{k}");
    }
}

#[tokio::test]
async fn deferred_failures_block_the_payer_until_resolved() {
    let redis = RedisServer::start();
    let f = facilitator(&[NETWORK]).await;
    let (up, _) = counting_upstream().await;
    let token = "admin-token-admin-token";
    let gw = gateway()
        .top(&facilitator_toml(&f))
        .redis(&redis)
        .admin(token)
        .route(exact_route(&up, "deferred"))
        .start()
        .await;
    let offer = exact_offer(&gw).await;
    let admin_get = |path: &str| gw.http.get(gw.admin_url(path)).bearer_auth(token).send();
    // A refusal fails the settlement at once.
    f.set_settle(Mode::Refuse("insufficient_funds".into()));
    let broke = LocalSigner::random();
    assert_eq!(
        pay(
            &gw,
            reqwest::Method::GET,
            "",
            &broke.pay(&offer, now()).unwrap()
        )
        .await
        .status(),
        200
    );
    let mut failed = Value::Null;
    for _ in 0..250 {
        failed = admin_get("/admin/v1/x402/settlements/failed")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !failed["settlements"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let jobs = failed["settlements"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{failed}");
    assert_eq!(jobs[0]["payer"], format!("{:#x}", broke.address()));
    assert_eq!(jobs[0]["error"], "insufficient_funds");
    assert_eq!(jobs[0]["status"], "failed");
    // The payer is blocked for any new authorization; others are not.
    let res = pay(
        &gw,
        reqwest::Method::GET,
        "",
        &broke.pay(&offer, now()).unwrap(),
    )
    .await;
    assert_eq!(code_of(res).await, (403, "payer_blocked".into()));
    // Unusable answers are retried with backoff, then fail after settle_max_attempts (3).
    f.set_settle(Mode::ServerError);
    let flaky = LocalSigner::random();
    assert_eq!(
        pay(
            &gw,
            reqwest::Method::GET,
            "",
            &flaky.pay(&offer, now()).unwrap()
        )
        .await
        .status(),
        200
    );
    eventually("3 attempts", || {
        f.calls().iter().filter(|c| **c == "settle").count() >= 4
    })
    .await;
    let mut all = Vec::new();
    for _ in 0..250 {
        let v: Value = admin_get("/admin/v1/x402/settlements/failed")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all = v["settlements"].as_array().unwrap().clone();
        if all.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all.len(), 2);
    let flaky_job = all
        .iter()
        .find(|j| j["payer"] == format!("{:#x}", flaky.address()))
        .unwrap();
    assert_eq!(flaky_job["attempts"], 3);
    assert!(flaky_job["error"]
        .as_str()
        .unwrap()
        .starts_with("unexpected_settle_error"));
    // ... and a retried one that recovers is settled.
    f.set_settle(Mode::Normal);
    let lucky = LocalSigner::random();
    f.set_settle(Mode::Pending);
    assert_eq!(
        pay(
            &gw,
            reqwest::Method::GET,
            "",
            &lucky.pay(&offer, now()).unwrap()
        )
        .await
        .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    f.set_settle(Mode::Normal);
    eventually("the pending one settled", || f.settled() >= 1).await;
    let metrics = admin_get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("tollgate_x402_settlements_total{outcome=\"failed\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_x402_settlements_total{outcome=\"retry\"}"));
    // Resolving the failure unblocks the payer.
    let id = jobs[0]["id"].as_str().unwrap();
    let res = gw
        .http
        .post(gw.admin_url(&format!("/admin/v1/x402/settlements/{id}/resolve")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        pay(
            &gw,
            reqwest::Method::GET,
            "",
            &broke.pay(&offer, now()).unwrap()
        )
        .await
        .status(),
        200
    );
    let res = gw
        .http
        .post(gw.admin_url(&format!("/admin/v1/x402/settlements/{id}/resolve")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
