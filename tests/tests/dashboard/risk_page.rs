//! The risk decisions table in headless Chromium: the seeded traffic under a flag rule (one
//! request per payer and hour), its hits shown as the admin API lists them.

use crate::browser::*;
use crate::drive::{log_in, stop_polling};
use crate::seed::*;

#[tokio::test]
async fn risk_decisions_in_headless_chromium() {
    let _serial = SERIAL.lock().await;
    let rule = "[[risk]]\nid = \"one-per-hour\"\nrule = \"requests\"\nwindow = \"hour\"\nlimit = 1\naction = \"flag\"\n";
    let s = seeded_with(|g| g.top(rule)).await;
    let gw = &s.gw;
    let api = admin_get(gw, "/admin/v1/risk/decisions?limit=20").await;
    let listed = api["decisions"].as_array().unwrap().clone();
    assert!(!listed.is_empty(), "the seeded payers repeat: {api}");
    assert!(listed
        .iter()
        .all(|d| d["rule"] == "one-per-hour" && d["action"] == "flag"));
    let downloads = tempfile::tempdir().unwrap();
    let driver = start_chromedriver().await;
    let c = browser(&driver, downloads.path()).await;
    let result = async {
        log_in(&c, gw).await?;
        wait_js(
            &c,
            "document.querySelector('[data-figure=\"risk.0.rule\"]')",
        )
        .await;
        stop_polling(&c).await?;
        let shown = figures(&c).await;
        for (i, d) in listed.iter().enumerate() {
            let f = |k: &str| figure(&shown, &format!("risk.{i}.{k}"));
            assert_eq!(f("payer"), d["payer"].as_str().unwrap(), "row {i}");
            assert_eq!(f("rule"), "one-per-hour");
            assert_eq!(f("action"), "flag");
        }
        shoot(&c, "risk", "dashboard-risk.png").await?;
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = c.close().await;
    result.unwrap();
}
