//! What the x402 `exact` and `upto` suites share: the offer's chain terms, the facilitator
//! config, paying with a `PAYMENT-SIGNATURE`, reading a refusal, the catalog, waiting, and
//! running the official Python SDK.

use super::*;

pub(crate) const NETWORK: &str = "eip155:84532";
pub(crate) const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
pub(crate) const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// The `[x402]` section: the stand-in facilitator, short timeouts and a fast settler.
pub(crate) fn facilitator_toml(f: &TestFacilitator) -> String {
    format!(
        "[x402]\nfacilitator_url = \"{}\"\nfacilitator_timeout_ms = 700\nsettle_interval_ms = 20\nsettle_retry_base_ms = 20\nsettle_max_attempts = 3",
        f.url()
    )
}

pub(crate) fn signature_header(payload: &Value) -> String {
    STANDARD.encode(payload.to_string())
}

pub(crate) fn now() -> u64 {
    u64::try_from(now_secs()).unwrap()
}

/// The decoded `PAYMENT-REQUIRED` of the 402 at `path`.
pub(crate) async fn payment_required(gw: &TestGateway, path: &str) -> Value {
    let res = gw.http.get(gw.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 402);
    b64_json(res.headers()["payment-required"].to_str().unwrap())
}

/// The offer of `scheme` in a `PAYMENT-REQUIRED`.
pub(crate) fn offer_of(required: &Value, scheme: &str) -> Value {
    required["accepts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["scheme"] == scheme)
        .unwrap_or_else(|| panic!("an {scheme} offer"))
        .clone()
}

/// `method path_and_query` paid with `payload`.
pub(crate) async fn send_paid(
    gw: &TestGateway,
    method: reqwest::Method,
    path_and_query: &str,
    payload: &Value,
) -> reqwest::Response {
    gw.http
        .request(method, gw.url(path_and_query))
        .header("payment-signature", signature_header(payload))
        .send()
        .await
        .unwrap()
}

/// A paid request that the client gives up on after 150 ms (the test makes the
/// facilitator slower).
pub(crate) async fn leave_before_the_answer(gw: &TestGateway, path: &str, payload: &Value) {
    let gone = gw
        .http
        .get(gw.url(path))
        .header("payment-signature", signature_header(payload))
        .timeout(Duration::from_millis(150))
        .send()
        .await;
    assert!(gone.is_err(), "the client left before the answer");
}

/// Status, problem code and errorReason of a refusal (PAYMENT-RESPONSE, if any, agreeing).
pub(crate) async fn x402_refusal(res: reqwest::Response) -> (u16, String, String) {
    let status = res.status().as_u16();
    let pr = res
        .headers()
        .get("payment-response")
        .map(|v| b64_json(v.to_str().unwrap()));
    let body: Value = res.json().await.unwrap();
    if let Some(pr) = pr {
        assert_eq!(pr["success"], false);
        assert_eq!(pr["errorReason"], body["errorReason"]);
    }
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        body["errorReason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The price catalog (`/.well-known/tollgate`).
pub(crate) async fn catalog(gw: &TestGateway) -> Value {
    gw.get_json("/.well-known/tollgate").await
}

/// Nothing is in Redis (issuing a 402 writes nothing).
pub(crate) fn assert_redis_empty(redis: &RedisServer) {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// Poll until `f` holds (5 s at most).
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The usage events in the store, once there are `n` or more (5 s at most).
pub(crate) async fn usage_events_eventually(
    gw: &TestGateway,
    n: usize,
) -> Vec<tollgate_middleware::store::UsageEvent> {
    for _ in 0..250 {
        let events = gw.paywall.store().usage_events().await.unwrap();
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never {n} usage events");
}

/// The Python of the official x402 SDK's venv, if installed (else the test is skipped,
/// unless `TOLLGATE_REQUIRE_X402_SDK` is set).
pub(crate) fn sdk_python() -> Option<std::path::PathBuf> {
    tollgate_e2e::tools::installed(
        "TOLLGATE_X402_PYTHON",
        ".cache/tollgate-x402-venv/bin/python",
        "TOLLGATE_REQUIRE_X402_SDK",
        "tests/x402_sdk/setup.sh",
    )
}

/// What the official SDK reported after paying.
pub(crate) struct SdkPaid {
    /// The payer's address, lower case.
    pub(crate) payer: String,
    /// The decoded `PAYMENT-RESPONSE`.
    pub(crate) payment_response: Value,
    /// The response body, as JSON.
    pub(crate) body: Value,
}

/// The official SDK pays `url` (`upto`: with that scheme, else `exact`) on a gateway in
/// settlement `mode`: served (200), and its `PAYMENT-RESPONSE` a success for that payer,
/// network and mode.
pub(crate) async fn sdk_pays(
    python: &std::path::Path,
    url: &str,
    scheme: Option<&str>,
    mode: &str,
) -> SdkPaid {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/x402_sdk/pay.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(url)
        .args(scheme)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["status"], 200, "{mode}: {v}");
    let payer = v["payer"].as_str().unwrap().to_lowercase();
    let pr = v["payment_response"].clone();
    assert_eq!(pr["success"], true);
    assert_eq!(pr["payer"], payer.as_str());
    assert_eq!(pr["network"], NETWORK);
    assert_eq!(pr["settlement"], mode);
    SdkPaid {
        payer,
        payment_response: pr,
        body: serde_json::from_str(v["body"].as_str().unwrap()).unwrap(),
    }
}
