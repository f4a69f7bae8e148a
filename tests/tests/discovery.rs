//! Discovery: `/openapi.json` and `/llms.txt` describe exactly the priced routes of the config in
//! force and agree with the 402 challenges; the challenge realm is the public host; the
//! Payment scheme's reference CLI (`mppx validate`, npm) passes every check it runs offline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use serde_json::Value;
use tollgate_e2e::*;

const ROUTES: usize = 3;
const ADMIN: &str = "discovery-admin-token";

async fn priced_gateway(top: &str) -> (TestGateway, TestUpstream) {
    let wallet = TestIssuer::ed25519("wallet");
    let up = upstream().await;
    let gw = gateway()
        .top(top)
        .admin(ADMIN)
        .issuer(&wallet)
        .route(paid("echo", "/v1/echo", &up, "0.01").with("methods = [\"POST\"]"))
        .route(paid("small", "/v1/small", &up, "0.000068").with("methods = [\"GET\"]"))
        .route(
            metered(
                "chat",
                "/v1/chat",
                &up,
                "0.5",
                &[("prompt_token", "json:/usage/prompt_tokens", "0.000002")],
            )
            .with("methods = [\"POST\"]"),
        )
        .route(free("free", "/free", &up))
        .start()
        .await;
    (gw, up)
}

fn realm_of(www: &str) -> String {
    let rest = www.split("realm=\"").nth(1).expect("a realm");
    rest.split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn openapi_lists_the_priced_routes_and_agrees_with_their_402s() {
    let (gw, _up) =
        priced_gateway("[discovery]\ntitle = \"Demo API\"\ncategories = [\"ai\", \"compute\"]\n")
            .await;
    let res = gw.http.get(gw.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["cache-control"], "public, max-age=300");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Demo API");
    assert_eq!(
        doc["x-service-info"]["categories"],
        serde_json::json!(["ai", "compute"])
    );
    assert_eq!(doc["x-service-info"]["docs"]["llms"], "/llms.txt");
    assert_eq!(doc["servers"][0]["url"], format!("http://{}", gw.addr));
    let paths = doc["paths"].as_object().unwrap();
    let paid: BTreeSet<&str> = paths
        .iter()
        .filter(|(_, item)| {
            item.as_object()
                .unwrap()
                .values()
                .any(|op| op.get("x-payment-info").is_some())
        })
        .map(|(p, _)| p.as_str())
        .collect();
    assert_eq!(
        paid,
        BTreeSet::from(["/v1/chat", "/v1/echo", "/v1/small"]),
        "free routes are not listed as paid"
    );
    assert!(!paths.contains_key("/free"));
    assert!(paths.contains_key("/tollgate/v1/topup"));
    // Each priced operation: its methods only, a 402 response, offers in atomic units that are
    // the ones its 402 challenge makes.
    let mut operations = 0;
    for path in &paid {
        for (method, op) in paths[*path].as_object().unwrap() {
            operations += 1;
            assert!(op["responses"].get("402").is_some(), "{path} {method}");
            let offer = &op["x-payment-info"]["offers"][0];
            assert_eq!(offer["method"], "tollgate");
            assert_eq!(offer["intent"], "charge");
            assert_eq!(offer["currency"], "USD");
            if method == "post" {
                assert!(op.get("requestBody").is_some(), "{path}");
            }
            let req = gw
                .http
                .request(method.to_uppercase().parse().unwrap(), gw.url(path));
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 402, "{path} {method}");
            let required = b64_json(res.headers()["payment-required"].to_str().unwrap());
            let accepted = &required["accepts"][0];
            match *path {
                "/v1/chat" => {
                    assert_eq!(offer["amount"], Value::Null, "metered: known once measured");
                    assert_eq!(offer["meters"][0]["unit"], "prompt_token");
                    assert_eq!(offer["meters"][0]["price"], "0.000002");
                    assert_eq!(offer["reserve"], "0.5");
                }
                _ => assert_eq!(
                    offer["amount"], accepted["amount"],
                    "{path}: the 402's price"
                ),
            }
        }
    }
    assert_eq!(operations, ROUTES, "one operation per configured method");
    assert_eq!(
        paths["/v1/echo"]["post"]["x-payment-info"]["offers"][0]["amount"],
        "10000"
    );
    assert_eq!(
        paths["/v1/small"]["get"]["x-payment-info"]["offers"][0]["amount"],
        "68"
    );
    // The document follows a reload.
    let toml = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, toml.replace("\"0.01\"", "\"0.02\"")).unwrap();
    let res = gw
        .http
        .post(gw.admin_url("/admin/v1/reload"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = gw.get_json("/openapi.json").await;
    assert_eq!(
        doc["paths"]["/v1/echo"]["post"]["x-payment-info"]["offers"][0]["amount"],
        "20000"
    );
}

#[tokio::test]
async fn llms_txt_says_what_is_sold_and_how_to_pay() {
    let (gw, _up) = priced_gateway("").await;
    let res = gw.http.get(gw.url("/llms.txt")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/plain; charset=utf-8");
    let text = res.text().await.unwrap();
    assert!(
        text.starts_with("# m\n"),
        "the merchant id by default: {text}"
    );
    for needle in [
        "`/v1/echo` (POST) -- 0.01 USD per call",
        "`/v1/small` (GET) -- 0.000068 USD per call",
        "`/v1/chat` (POST) -- metered: 0.000002 USD per prompt_token; up to 0.5 USD is held per call",
        "`/free` (any method) -- free",
        "POST /tollgate/v1/topup",
        "Authorization: Payment <jwt>",
        "Authorization: Bearer <token>",
        "/openapi.json",
        "USD (6 decimals)",
        "Trusted receipt issuers: wallet",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[tokio::test]
async fn the_realm_is_the_public_host_unless_configured() {
    let www =
        |res: &reqwest::Response| realm_of(res.headers()["www-authenticate"].to_str().unwrap());
    // Default: the host the request was sent to, without its port.
    let (gw, _up) = priced_gateway("").await;
    let res = gw.http.post(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(www(&res), "127.0.0.1");
    let res = gw
        .http
        .post(gw.url("/v1/echo"))
        .header("host", "api.example.com:8402")
        .send()
        .await
        .unwrap();
    assert_eq!(www(&res), "api.example.com");
    // public_url: its host, for every request; discovery's servers follow it.
    let (gw, _up) = priced_gateway("public_url = \"https://pay.example.com/base\"\n").await;
    let res = gw.http.post(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(www(&res), "pay.example.com");
    let doc: Value = gw.get_json("/openapi.json").await;
    assert_eq!(doc["servers"][0]["url"], "https://pay.example.com/base");
    // Configured.
    let (gw, _up) = priced_gateway("realm = \"example.com\"\n").await;
    let res = gw.http.post(gw.url("/v1/echo")).send().await.unwrap();
    assert_eq!(www(&res), "example.com");
}

#[tokio::test]
async fn discovery_off_hands_the_paths_to_the_routes() {
    let up = serve_router(axum::Router::new().fallback(|| async { "the upstream's own document" }))
        .await;
    let gw = gateway()
        .top("[discovery]\nenabled = false\n")
        .route(free("all", "/", &up))
        .start()
        .await;
    for path in ["/openapi.json", "/llms.txt"] {
        let res = gw.http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.text().await.unwrap(),
            "the upstream's own document",
            "{path}"
        );
    }
}

#[test]
fn bad_discovery_settings_name_the_field() {
    for (top, field) in [
        ("realm = \"a b\"\n", "realm"),
        ("realm = \"\"\n", "realm"),
        (
            "[discovery]\ncategories = [\"AI\"]\n",
            "discovery.categories[0]",
        ),
        ("[discovery]\ntitle = \"\"\n", "discovery.title"),
        (
            "[discovery]\nhomepage = \"ftp://x\"\n",
            "discovery.homepage",
        ),
        ("[discovery]\nversion = \"1\\u0007\"\n", "discovery.version"),
    ] {
        let toml = gateway()
            .top(top)
            .route(free("f", "/f", &dead_upstream()))
            .toml();
        let cfg = tollgate::config::Config::from_str(&toml).unwrap();
        let err = cfg
            .validate(std::path::Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{top:?}: {err}");
    }
}

#[tokio::test]
async fn mppx_validate_passes() {
    let Some(mppx) = tollgate_e2e::tools::installed(
        "TOLLGATE_MPPX",
        ".cache/tollgate-mppx/node_modules/.bin/mppx",
        "TOLLGATE_REQUIRE_MPPX",
        "tests/mppx/setup.sh",
    ) else {
        return;
    };
    let (gw, _up) = priced_gateway("").await;
    let out = tokio::process::Command::new(&mppx)
        .arg("validate")
        .arg(gw.url(""))
        .arg("-j")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    report("mppx_validate", result["summary"].clone());
    assert!(out.status.success(), "{stdout}");
    assert_eq!(result["discovery"]["found"], true, "{stdout}");
    assert_eq!(result["discovery"]["valid"], true, "{stdout}");
    assert_eq!(result["summary"]["failed"], 0, "{stdout}");
    assert_eq!(result["summary"]["warnings"], 0, "{stdout}");
    assert_eq!(result["summary"]["suggested"], 0, "{stdout}");
    let endpoints = result["endpoints"].as_array().unwrap();
    assert_eq!(
        endpoints.len(),
        ROUTES,
        "every priced operation tested: {stdout}"
    );
    let passed = result["summary"]["passed"].as_u64().unwrap();
    assert!(
        passed >= 4 + 10 * ROUTES as u64,
        "discovery checks + 10 per endpoint: {stdout}"
    );
}
