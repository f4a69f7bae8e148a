//! The dashboard with `[ledger]` set (Redis + a private PostgreSQL): the ledger card's figures
//! equal the admin API's JSON and the database's own counts and sums to the unit, and the
//! recent payments are read from the ledger database.

use serde_json::Value;
use tollgate_e2e::postgres::PostgresServer;

use super::browser::*;
use super::drive::{log_in, payment_rows_equal_the_api, stop_polling};
use super::seed::*;

async fn one_i64(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// The ledger card's JSON once the drainer has moved everything (backlog 0, healthy, every
/// charge and credit in the database).
async fn drained(gw: &tollgate_e2e::TestGateway, charges: u64, credits: u64) -> Value {
    admin_until(gw, "/admin/v1/ledger", |l| {
        let (d, db) = (&l["drainer"], &l["database"]);
        d["healthy"] == true
            && d["backlog"] == 0
            && db["charges"].as_u64() == Some(charges)
            && db["credits"].as_u64() == Some(credits)
    })
    .await
}

#[tokio::test]
async fn the_ledger_database_card_in_headless_chromium() {
    let _serial = SERIAL.lock().await;
    let pg = PostgresServer::start();
    let url = pg.url();
    let s = seeded_with(|g| g.top(&format!("[ledger]\nurl = \"{url}\"\nbatch = 4\n"))).await;
    let gw = &s.gw;
    // 7 charges (3 + 1 tiny by alice, 1 metered by bob, 2 by carol) and 2 top-ups.
    let l = drained(gw, 7, 2).await;
    let db = pg.client().await;
    let d = &l["database"];
    assert_eq!(l["configured"], true);
    assert_eq!(d["reachable"], true);
    for (k, sql) in [
        (
            "charges",
            "SELECT count(*) FROM ledger_events WHERE kind = 'charge'",
        ),
        (
            "voids",
            "SELECT count(*) FROM ledger_events WHERE kind = 'void'",
        ),
        ("credits", "SELECT count(*) FROM ledger_credits"),
        ("rejects", "SELECT count(*) FROM ledger_rejects"),
    ] {
        assert_eq!(d[k].as_i64().unwrap(), one_i64(&db, sql).await, "{k}");
    }
    assert_eq!(d["rejects"], 0);
    let revenue = one_i64(
        &db,
        "SELECT sum(signed_amount_minor)::INT8 FROM ledger_events_signed WHERE currency = 'USD'",
    )
    .await;
    assert_eq!(revenue, 57_068);
    assert_eq!(d["revenue_minor"]["USD"].as_i64().unwrap(), revenue);
    assert_eq!(d["revenue"]["USD"], "0.057068");
    let newest: String = db
        .query_one(
            "SELECT id FROM ledger_events ORDER BY id_ms DESC, id_seq DESC, id_bucket DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(d["newest_event"]["id"], newest.as_str());
    assert_eq!(
        d["schema_version"],
        tollgate_middleware::ledger::schema::CURRENT
    );
    assert_eq!(l["drainer"]["max_backlog"].as_u64().unwrap(), 1_000_000);
    // The export reads the database, newest first page by page as oldest first.
    let all = ledger(gw).await;
    assert_eq!(all.len(), 7);
    let pages = super::events::paged(
        gw,
        "/admin/v1/events?order=desc",
        "before",
        "tollgate-next-before",
    )
    .await;
    assert_eq!(pages, all.iter().rev().cloned().collect::<Vec<Value>>());
    let alice = super::events::paged(
        gw,
        "/admin/v1/events?payer=alice",
        "after",
        "tollgate-next-after",
    )
    .await;
    assert_eq!(alice.len(), 4);

    let downloads = tempfile::tempdir().unwrap();
    let driver = start_chromedriver().await;
    let c = browser(&driver, downloads.path()).await;
    let result = async {
        log_in(&c, gw).await?;
        wait_js(
            &c,
            "document.querySelector('[data-figure=\"ledger.charges\"]')",
        )
        .await;
        stop_polling(&c).await?;
        let shown = figures(&c).await;
        let l = admin_get(gw, "/admin/v1/ledger").await;
        let (d, db_figures) = (&l["drainer"], &l["database"]);
        let f = |k: &str| figure(&shown, k);
        assert_eq!(f("ledger.healthy"), "healthy");
        assert_eq!(
            f("ledger.backlog"),
            format!("{} of {}", d["backlog"], d["max_backlog"])
        );
        assert_eq!(f("ledger.lag"), format!("{} ms", d["oldest_age_ms"]));
        assert_eq!(f("ledger.drained"), d["drained"].to_string());
        for k in ["charges", "voids", "credits", "rejects"] {
            assert_eq!(f(&format!("ledger.{k}")), db_figures[k].to_string(), "{k}");
        }
        assert_eq!(f("ledger.charges"), "7");
        assert_eq!(f("ledger.revenue.USD"), fmt_usd("0.057068"));
        assert_eq!(f("ledger.revenue.USD"), fmt_usd_minor(revenue as u64));
        assert!(f("ledger.newest").ends_with(&format!("({newest})")));
        assert_eq!(f("ledger.schema"), db_figures["schema_version"].to_string());
        // Recent payments come from the ledger database too.
        let rows = payment_rows_equal_the_api(&c, gw).await?;
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0]["id"], newest.as_str());
        shoot(&c, "ledger", "dashboard-ledger.png").await?;
        shoot(&c, "payments", "dashboard-ledger-payments.png").await?;
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = c.close().await;
    result.unwrap();
}
