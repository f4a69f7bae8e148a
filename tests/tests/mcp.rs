//! MCP: the agent MCP server (`/tollgate/v1/mcp`) and paid tools of a proxied MCP server
//! (`[routes.mcp]`), against a real upstream written with the official MCP Python SDK (FastMCP,
//! Streamable HTTP, event-stream answers: `tests/mcp/upstream.py`) and driven by the SDK's own
//! client (`tests/mcp/client.py`) and by hand-written JSON-RPC for what a well-behaved client
//! never sends. Both installed by `tests/mcp/setup.sh` (required under `tests/run.sh`).
//!
//! Classes: the SDK pays a tool with a receipt (the Payment scheme's credential and x402's
//! payload in `_meta`) and with an access token, and reads its bill over MCP; one receipt, 20
//! parallel calls -> one charge (sqlite in memory and Redis); bad input of every kind -> a
//! JSON-RPC error, never a 5xx and never a free call; failed tool calls, a dead upstream and a
//! dead store charge nothing; `[routes.mcp]` validation names the field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::{json, Value};
use tollgate_e2e::python::PythonServer;
use tollgate_e2e::*;
use tollgate_middleware::jsonrpc;

const ADMIN: &str = "mcp-admin-token-0123";

fn mcp_python() -> Option<PathBuf> {
    tollgate_e2e::tools::installed(
        "TOLLGATE_MCP_PYTHON",
        ".cache/tollgate-mcp-venv/bin/python",
        "TOLLGATE_REQUIRE_MCP_SDK",
        "tests/mcp/setup.sh",
    )
}

fn mcp_upstream(python: &PathBuf) -> PythonServer {
    PythonServer::start_with(
        python,
        [concat!(env!("CARGO_MANIFEST_DIR"), "/mcp/upstream.py")],
    )
}

/// The MCP route: `search` and `fail` at 0.01 USD, `summarize` metered per token it reports,
/// every other tool free.
fn tools_route(up: &PythonServer) -> RouteSpec {
    RouteSpec {
        toml: format!(
            "[[routes]]\nid = \"tools\"\npath = \"/mcp\"\nupstream = \"http://{}\"\nprice = \"free\"\n\
             [routes.mcp.tools.search]\nprice = {{ amount = \"0.01\", currency = \"USD\" }}\n\
             [routes.mcp.tools.fail]\nprice = {{ amount = \"0.01\", currency = \"USD\" }}\n\
             [routes.mcp.tools.summarize]\nprice = {{ currency = \"USD\", reserve = \"0.05\", meters = [{{ unit = \"token\", usage = \"json:/result/structuredContent/tokens\", price = \"0.001\" }}] }}\n",
            up.addr()
        ),
    }
}

/// A FastMCP upstream, a wallet, and a gateway selling the MCP route and an HTTP route
/// (`/v1/echo`); `None` (the test skipped) when the MCP SDK is not installed.
struct Fixture {
    python: PathBuf,
    /// The MCP upstream (`None` once a test killed it).
    up: Option<PythonServer>,
    wallet: TestIssuer,
    gw: TestGateway,
    _http: TestUpstream,
}

async fn fixture(redis: Option<&RedisServer>) -> Option<Fixture> {
    fixture_with(redis, "").await
}

/// The fixture with `top` (plans) at the top of the config.
async fn fixture_with(redis: Option<&RedisServer>, top: &str) -> Option<Fixture> {
    let python = mcp_python()?;
    let up = mcp_upstream(&python);
    let wallet = TestIssuer::ed25519("wallet");
    let http = upstream().await;
    let mut g = gateway()
        .issuer(&wallet)
        .admin(ADMIN)
        .route(paid("echo", "/v1/echo", &http, "0.01"))
        .route(tools_route(&up))
        .top(top);
    if let Some(r) = redis {
        g = g.redis(r);
    }
    Some(Fixture {
        python,
        up: Some(up),
        wallet,
        gw: g.start().await,
        _http: http,
    })
}

/// Every usage event in the ledger (admin export), newest first.
async fn events(gw: &TestGateway) -> Vec<Value> {
    let text = gw
        .admin_text("/admin/v1/events?limit=1000&order=desc", ADMIN)
        .await;
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A hand-written Streamable HTTP client: one session, raw JSON-RPC.
struct Mcp {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
    auth: Option<String>,
}

impl Mcp {
    async fn open(gw: &TestGateway, path: &str, auth: Option<&str>) -> Self {
        let mut c = Mcp {
            http: reqwest::Client::new(),
            url: gw.url(path),
            session: None,
            auth: auth.map(str::to_owned),
        };
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
        let res = c.send(init.to_string()).await;
        c.session = res
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, msg) = read(res).await;
        assert_eq!(status, 200, "{msg}");
        assert!(msg["result"]["protocolVersion"].is_string(), "{msg}");
        let (status, _) = c
            .post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
        assert_eq!(status, 202);
        c
    }

    async fn send(&self, body: String) -> reqwest::Response {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        req.send().await.unwrap()
    }

    /// The HTTP status and the JSON-RPC response (`null` for a 202).
    async fn post(&self, body: String) -> (u16, Value) {
        read(self.send(body).await).await
    }

    async fn call(&self, id: u64, name: &str, args: Value, meta: Option<Value>) -> Value {
        let mut params = json!({"name": name, "arguments": args});
        if let Some(m) = meta {
            params["_meta"] = m;
        }
        let (status, msg) = self
            .post(
                json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
                    .to_string(),
            )
            .await;
        assert_eq!(status, 200, "{msg}");
        assert_eq!(msg["id"], id, "{msg}");
        msg
    }

    /// How often each upstream tool ran (its free `stats` tool).
    async fn stats(&self) -> Value {
        self.call(999, "stats", json!({}), None).await["result"]["structuredContent"].clone()
    }
}

async fn read(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let sse = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    if status == 202 || text.is_empty() {
        return (status, Value::Null);
    }
    let data = if sse {
        let events = jsonrpc::sse_events(&text);
        events.last().expect("an event").1.clone()
    } else {
        text
    };
    (
        status,
        serde_json::from_str(&data).unwrap_or(Value::String(data)),
    )
}

fn error_code(msg: &Value) -> (i64, String) {
    (
        msg["error"]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("not an error: {msg}")),
        msg["error"]["data"]["problem"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

fn credential(receipt: &str) -> Value {
    json!({"org.paymentauth/credential": receipt})
}

#[tokio::test]
async fn the_official_sdk_pays_tools_with_receipts_and_tokens_and_reads_its_bill() {
    let Some(f) = fixture(None).await else {
        return;
    };
    let (gw, wallet) = (&f.gw, &f.wallet);
    let receipts: Vec<String> = (0..3)
        .map(|_| wallet.receipt("m", "agent-a", "0.01"))
        .collect();
    let mut topup = wallet.claims("m", "agent-b", "1");
    topup["kind"] = "topup".into();
    let cfg = json!({
        "gateway": gw.url(""), "tools": "/mcp", "agent": "/tollgate/v1/mcp",
        "receipts": receipts, "topup": wallet.sign(&topup),
    });
    let out = tokio::process::Command::new(&f.python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/mcp/client.py"))
        .arg(cfg.to_string())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client.py failed: {stderr}");
    let o: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    // tools/list: each tool's price in its _meta.
    assert_eq!(o["tools"]["search"]["amount"], "0.01");
    assert_eq!(o["tools"]["summarize"]["kind"], "metered");
    assert_eq!(o["tools"]["echo"], "free");
    // Unpaid: the Payment scheme's -32042 with its challenge, and x402's offers beside it.
    let unpaid = &o["unpaid"]["error"];
    assert_eq!(unpaid["code"], -32042, "{unpaid}");
    assert_eq!(unpaid["data"]["challenges"][0]["method"], "tollgate");
    assert_eq!(unpaid["data"]["x402Version"], 2);
    assert_eq!(unpaid["data"]["accepts"][0]["amount"], "10000");
    assert_eq!(
        unpaid["data"]["accepts"][0]["extra"]["route"],
        "tools/search"
    );
    assert_eq!(unpaid["data"]["problem"]["code"], "payment_required");
    // Paid with the Payment scheme's credential: served, settled, the upstream never saw it.
    let paid = &o["paid_scheme"]["result"];
    assert_eq!(paid["structuredContent"]["payer"], "agent-a", "{paid}");
    assert_eq!(paid["structuredContent"]["charge"], "0.01 USD");
    assert_eq!(paid["structuredContent"]["paymentSeen"], false);
    let settled = &paid["_meta"]["x402/payment-response"];
    assert_eq!(
        (settled["success"].clone(), settled["amount"].clone()),
        (json!(true), json!("0.01"))
    );
    let receipt = &paid["_meta"]["org.paymentauth/receipt"];
    assert_eq!(receipt["status"], "success");
    assert_eq!(receipt["reference"], settled["eventId"]);
    assert_eq!(
        receipt["challengeId"],
        unpaid["data"]["challenges"][0]["id"]
    );
    // The same receipt again: refused, not served.
    assert_eq!(o["replayed"]["error"]["code"], -32043);
    assert_eq!(
        o["replayed"]["error"]["data"]["problem"]["code"],
        "receipt_replayed"
    );
    // x402's payload in _meta pays too.
    let x402 = &o["paid_x402"]["result"];
    assert_eq!(
        x402["_meta"]["x402/payment-response"]["amount"], "0.01",
        "{x402}"
    );
    // A failing tool: its isError result is delivered and nothing is charged.
    assert_eq!(o["failed"]["result"]["isError"], true, "{}", o["failed"]);
    assert!(o["failed"]["result"].get("_meta").is_none());
    assert_eq!(o["free"]["result"]["content"][0]["text"], "hi");

    // The agent MCP server: its tools, a top-up with a receipt, a quote, no token -> refused.
    assert_eq!(
        o["agent_tools"],
        json!([
            "balance",
            "catalog",
            "plans",
            "quote",
            "subscribe",
            "token",
            "topup",
            "usage"
        ])
    );
    let top = &o["topup"]["result"]["structuredContent"];
    assert_eq!(
        (top["credited"].clone(), top["payer"].clone()),
        (json!("1"), json!("agent-b"))
    );
    let quote = &o["quote"]["result"]["structuredContent"];
    assert_eq!(quote["route"], "tools/search");
    assert_eq!(quote["price"]["amount"], "0.01");
    assert_eq!(quote["offers"]["accepts"][0]["amount"], "10000");
    assert_eq!(o["no_token_balance"]["error"]["code"], jsonrpc::REFUSED);
    assert_eq!(
        o["no_token_balance"]["error"]["data"]["problem"]["code"],
        "token_invalid"
    );
    assert_eq!(
        o["catalog"]["routes"][1]["mcp"]["tools"]["search"]["amount"],
        "0.01"
    );

    // Paid with the access token: a fixed tool and a metered one (5 tokens x 0.001).
    assert_eq!(
        o["paid_token"]["result"]["structuredContent"]["payer"],
        "agent-b"
    );
    let metered = &o["metered"]["result"];
    assert_eq!(
        metered["_meta"]["x402/payment-response"]["amount"], "0.005",
        "{metered}"
    );
    // The upstream ran each paid call once, and never an unpaid or replayed one.
    let stats = &o["stats"]["result"]["structuredContent"];
    assert_eq!(stats["search"], 3, "{stats}");
    assert_eq!(
        (stats["fail"].clone(), stats["summarize"].clone()),
        (json!(1), json!(1))
    );
    // Its balance and its bill over MCP agree with the ledger.
    let usd = &o["balance"]["result"]["structuredContent"]["balances"]["USD"];
    assert_eq!(usd["available"], "0.985", "{usd}");
    // Bill lines name their type (charges here; refunds would be their own lines).
    let bill: Vec<Value> = o["usage"]["result"]["structuredContent"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "charge", "{e}");
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("type");
            e
        })
        .collect();
    let ledger = events(gw).await;
    let of =
        |p: &str| -> Vec<Value> { ledger.iter().filter(|e| e["payer"] == p).cloned().collect() };
    assert_eq!(
        bill,
        of("agent-b"),
        "the bill is the ledger's events of this payer"
    );
    let routes: Vec<&str> = bill.iter().map(|e| e["route"].as_str().unwrap()).collect();
    assert_eq!(routes, ["tools/summarize", "tools/search"]);
    let a: Vec<Value> = of("agent-a").iter().map(|e| e["amount"].clone()).collect();
    assert_eq!(
        a,
        [json!("0.01"), json!("0.01")],
        "agent-a paid twice: the failed and replayed calls are not charged"
    );
    assert_eq!(ledger.len(), 4);
}

async fn one_receipt_twenty_parallel_calls(redis: Option<&RedisServer>) {
    let Some(f) = fixture(redis).await else {
        return;
    };
    let (gw, wallet) = (&f.gw, &f.wallet);
    let client = Mcp::open(gw, "/mcp", None).await;
    let receipt = wallet.receipt("m", "agent-c", "0.01");
    let calls = (0..20).map(|i| {
        client.call(
            i,
            "search",
            json!({"query": format!("q{i}")}),
            Some(credential(&receipt)),
        )
    });
    let answers = futures_util::future::join_all(calls).await;
    let served: Vec<&Value> = answers
        .iter()
        .filter(|a| a.get("result").is_some())
        .collect();
    assert_eq!(served.len(), 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.get("error").is_some()) {
        let (code, problem) = error_code(a);
        assert!(
            matches!(
                (code, problem.as_str()),
                (jsonrpc::UNAVAILABLE, "receipt_in_use")
                    | (jsonrpc::PAYMENT_VERIFICATION_FAILED, "receipt_replayed")
            ),
            "{a}"
        );
    }
    assert_eq!(client.stats().await["search"], 1, "the upstream ran once");
    let ledger = events(gw).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0]["amount"].clone(), ledger[0]["route"].clone()),
        (json!("0.01"), json!("tools/search"))
    );
}

#[tokio::test]
async fn one_receipt_twenty_parallel_calls_one_charge_sqlite() {
    one_receipt_twenty_parallel_calls(None).await;
}

#[tokio::test]
async fn one_receipt_twenty_parallel_calls_one_charge_redis() {
    let redis = RedisServer::start();
    one_receipt_twenty_parallel_calls(Some(&redis)).await;
}

#[tokio::test]
async fn bad_input_is_a_jsonrpc_error_never_a_free_call_nor_a_5xx() {
    let Some(f) = fixture(None).await else {
        return;
    };
    let (gw, wallet) = (&f.gw, &f.wallet);
    let c = Mcp::open(gw, "/mcp", None).await;
    let paid_call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "x"}, "_meta": credential(&wallet.receipt("m", "agent-d", "0.01"))}});
    // Messages that are not one JSON-RPC request.
    for (body, code) in [
        ("{".to_owned(), jsonrpc::PARSE_ERROR),
        (String::new(), jsonrpc::PARSE_ERROR),
        (json!([paid_call.clone(), paid_call.clone()]).to_string(), jsonrpc::INVALID_REQUEST),
        (json!({"id": 1, "method": "tools/call", "params": {"name": "search"}}).to_string(), jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc": "2.0", "id": null, "method": "tools/call", "params": {"name": "search"}}).to_string(), jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["search"]}).to_string(), jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "search", "arguments": {"query": "x"}}}).to_string(), jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"}).to_string(), jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}).to_string(), jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "no such/tool"}}).to_string(), jsonrpc::INVALID_PARAMS),
    ] {
        let (status, msg) = c.post(body.clone()).await;
        assert_eq!(status, 200, "{body}: {msg}");
        assert_eq!(msg["error"]["code"], code, "{body}: {msg}");
    }
    // Credentials that do not pay for this call.
    let unpaid = c.call(2, "fail", json!({"reason": "x"}), None).await;
    let fail_challenge = unpaid["error"]["data"]["challenges"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let http_402 = gw.http.get(gw.url("/v1/echo")).send().await.unwrap();
    let echo_challenge = b64_json(http_402.headers()["payment-required"].to_str().unwrap())
        ["accepts"][0]["extra"]["challenge"]
        .as_str()
        .unwrap()
        .to_owned();
    let bound = |challenge: &str| {
        let mut claims = wallet.claims("m", "agent-d", "0.01");
        claims["challenge"] = challenge.into();
        wallet.sign(&claims)
    };
    let mut topup = wallet.claims("m", "agent-d", "1");
    topup["kind"] = "topup".into();
    let cheap = wallet.receipt("m", "agent-d", "0.001");
    let foreign = TestIssuer::ed25519("stranger").receipt("m", "agent-d", "0.01");
    for (meta, code, problem) in [
        (
            credential(&bound(&fail_challenge)),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "challenge_mismatch",
        ),
        (
            json!({"org.paymentauth/credential": {"challenge": {"id": fail_challenge}, "payload": {"receipt": wallet.receipt("m", "agent-d", "0.01")}}}),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "challenge_mismatch",
        ),
        (
            credential(&bound(&echo_challenge)),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "challenge_mismatch",
        ),
        (
            credential(&wallet.sign(&topup)),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "receipt_kind_unsupported",
        ),
        (
            credential(&cheap),
            jsonrpc::PAYMENT_REQUIRED,
            "amount_insufficient",
        ),
        (
            credential(&foreign),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "receipt_untrusted_issuer",
        ),
        (
            credential("not-a-receipt"),
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "receipt_malformed",
        ),
        (
            json!({"org.paymentauth/credential": 5}),
            jsonrpc::INVALID_PARAMS,
            "credential_malformed",
        ),
        (
            json!({"x402/payment": "x"}),
            jsonrpc::INVALID_PARAMS,
            "credential_malformed",
        ),
        (
            json!({"x402/payment": {"x402Version": 2}}),
            jsonrpc::INVALID_PARAMS,
            "credential_malformed",
        ),
        (
            json!({"x402/payment": {}, "org.paymentauth/credential": "a.b.c"}),
            jsonrpc::INVALID_PARAMS,
            "credential_ambiguous",
        ),
        (
            json!("meta"),
            jsonrpc::INVALID_PARAMS,
            "credential_malformed",
        ),
    ] {
        let msg = c
            .call(3, "search", json!({"query": "x"}), Some(meta.clone()))
            .await;
        assert_eq!(
            error_code(&msg),
            (code, problem.to_owned()),
            "{meta}: {msg}"
        );
    }
    // A forged access token on the request.
    let forged = Mcp {
        auth: Some("Bearer tg1.forged.token".into()),
        ..Mcp::open(gw, "/mcp", None).await
    };
    let msg = forged.call(4, "search", json!({"query": "x"}), None).await;
    assert_eq!(
        error_code(&msg),
        (jsonrpc::REFUSED, "token_invalid".to_owned())
    );
    // Nothing ran, nothing was charged.
    let stats = c.stats().await;
    assert!(stats.get("search").is_none(), "{stats}");
    assert!(events(gw).await.is_empty());

    // The agent MCP server, likewise.
    let agent = Mcp::open(gw, "/tollgate/v1/mcp", None).await;
    for (body, code) in [
        ("[]".to_owned(), jsonrpc::INVALID_REQUEST),
        ("{\"jsonrpc\":\"2.0\"".to_owned(), jsonrpc::PARSE_ERROR),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "prompts/list"}).to_string(), jsonrpc::METHOD_NOT_FOUND),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "steal"}}).to_string(), jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "usage", "arguments": {"limit": 0}}}).to_string(), jsonrpc::REFUSED),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "quote", "arguments": {"path": "/nowhere"}}}).to_string(), jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "topup", "arguments": {"receipt": 5}}}).to_string(), jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///etc/passwd"}}).to_string(), -32002),
    ] {
        let (status, msg) = agent.post(body.clone()).await;
        assert_eq!(status, 200, "{body}: {msg}");
        assert_eq!(msg["error"]["code"], code, "{body}: {msg}");
    }
    let topup_receipt = wallet.sign(&topup);
    let msg = agent
        .call(5, "topup", json!({"receipt": topup_receipt}), None)
        .await;
    let token = msg["result"]["structuredContent"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = agent
        .call(6, "topup", json!({"receipt": topup_receipt}), None)
        .await;
    assert_eq!(
        again["result"]["structuredContent"]["duplicate"], true,
        "credited once"
    );
    let payment_as_topup = agent
        .call(
            7,
            "topup",
            json!({"receipt": wallet.receipt("m", "agent-d", "1")}),
            None,
        )
        .await;
    assert_eq!(
        error_code(&payment_as_topup),
        (
            jsonrpc::PAYMENT_VERIFICATION_FAILED,
            "receipt_kind_unsupported".to_owned()
        )
    );
    let with_token = Mcp {
        auth: Some(format!("Bearer {token}")),
        ..Mcp::open(gw, "/tollgate/v1/mcp", None).await
    };
    let bad_limit = with_token.call(8, "usage", json!({"limit": 0}), None).await;
    assert_eq!(
        error_code(&bad_limit),
        (jsonrpc::INVALID_PARAMS, "invalid_request".to_owned())
    );
    let res = gw
        .http
        .get(gw.url("/tollgate/v1/mcp"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn failed_calls_a_dead_store_and_a_dead_upstream_charge_nothing() {
    let mut redis = RedisServer::start_persistent();
    let Some(mut f) = fixture(Some(&redis)).await else {
        return;
    };
    let (gw, wallet) = (&f.gw, &f.wallet);
    let token = gw.topup(wallet, "agent-e", "1").await;
    let c = Mcp::open(gw, "/mcp", Some(&format!("Bearer {token}"))).await;
    let failed = c.call(1, "fail", json!({"reason": "boom"}), None).await;
    assert_eq!(failed["result"]["isError"], true);
    assert_eq!(
        gw.balance(&token).await["balances"]["USD"]["available"],
        "1"
    );
    let ok = c.call(2, "search", json!({"query": "x"}), None).await;
    assert_eq!(
        ok["result"]["_meta"]["x402/payment-response"]["balance"], "0.99",
        "{ok}"
    );
    // The store down: fail closed, the call is not forwarded.
    redis.kill();
    let down = c.call(3, "search", json!({"query": "x"}), None).await;
    assert_eq!(
        error_code(&down),
        (jsonrpc::UNAVAILABLE, "store_unavailable".to_owned()),
        "{down}"
    );
    assert_eq!(down["error"]["data"]["retryAfter"], 2);
    redis.restart();
    assert_eq!(
        c.stats().await["search"],
        1,
        "the call during the outage never ran"
    );
    // The upstream gone: nothing charged.
    drop(f.up.take());
    let mut gone = Value::Null;
    for id in 4..40 {
        gone = c.call(id, "search", json!({"query": "x"}), None).await;
        // Until the store is back the refusal is the store's; then the upstream's.
        if error_code(&gone).1 != "store_unavailable" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        error_code(&gone),
        (jsonrpc::UNAVAILABLE, "upstream_unavailable".to_owned()),
        "{gone}"
    );
    assert_eq!(
        gw.balance(&token).await["balances"]["USD"]["available"],
        "0.99"
    );
    let ledger = events(gw).await;
    let charged: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["route"] == "tools/search")
        .collect();
    assert_eq!(charged.len(), 1, "{ledger:?}");
}

#[tokio::test]
async fn a_plan_bought_over_mcp_covers_the_tools_of_its_route() {
    let pass = "[[plans]]\nid = \"tools-pass\"\nprice = { amount = \"0.50\", currency = \"USD\" }\nperiod = \"1h\"\ngroups = [\"tools\"]\n";
    let Some(f) = fixture_with(None, pass).await else {
        return;
    };
    let (gw, wallet) = (&f.gw, &f.wallet);
    let agent = Mcp::open(gw, "/tollgate/v1/mcp", None).await;
    let plans = agent.call(1, "plans", json!({}), None).await;
    assert_eq!(
        plans["result"]["structuredContent"]["plans"][0]["id"], "tools-pass",
        "{plans}"
    );
    let mut c = wallet.claims("m", "agent-p", "0.50");
    c["kind"] = "subscribe".into();
    c["plan"] = "tools-pass".into();
    let sub = agent
        .call(2, "subscribe", json!({"receipt": wallet.sign(&c)}), None)
        .await;
    let sub = &sub["result"]["structuredContent"];
    assert_eq!(sub["plan"]["id"], "tools-pass", "{sub}");
    let token = sub["access_token"].as_str().unwrap();
    let tools = Mcp::open(gw, "/mcp", Some(&format!("Bearer {token}"))).await;
    for id in 0..3 {
        let r = tools.call(id, "search", json!({"query": "x"}), None).await;
        assert_eq!(
            r["result"]["_meta"]["x402/payment-response"]["amount"], "0",
            "{r}"
        );
    }
    assert_eq!(tools.stats().await["search"], 3);
    let ledger = events(gw).await;
    let calls: Vec<&Value> = ledger
        .iter()
        .filter(|e| e["route"] == "tools/search")
        .collect();
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|e| e["credential"] == "plan:tools-pass:agent-p" && e["amount"] == "0"),
        "{calls:?}"
    );
    assert!(
        ledger
            .iter()
            .any(|e| e["route"] == "plan:tools-pass" && e["amount"] == "0.5"),
        "{ledger:?}"
    );
}

#[test]
fn routes_mcp_is_validated_naming_the_field() {
    let base = |mcp: &str| {
        format!(
            "merchant = \"m\"\n[currencies.USD]\nscale = 6\n[[issuers]]\nid = \"w\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n\
             [[routes]]\nid = \"tools\"\npath = \"/mcp\"\nupstream = \"http://127.0.0.1:9\"\nprice = \"free\"\n{mcp}"
        )
    };
    let check = |toml: String| {
        tollgate::config::Config::from_str(&toml)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.validate(std::path::Path::new("."))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
    };
    assert_eq!(
        check(base(
            "[routes.mcp.tools.search]\nprice = { amount = \"0.01\", currency = \"USD\" }\n"
        )),
        Ok(())
    );
    for (mcp, want) in [
        (
            "[routes.mcp.tools.search]\nprice = { amount = \"0.01\", currency = \"EUR\" }\n",
            "routes[0].mcp.tools.search.price.currency",
        ),
        (
            "[routes.mcp.tools.search]\nprice = { amount = \"-1\", currency = \"USD\" }\n",
            "routes[0].mcp.tools.search.price.amount",
        ),
        (
            "[routes.mcp.tools.\"bad name\"]\nprice = \"free\"\n",
            "routes[0].mcp.tools.bad name",
        ),
        (
            "[routes.mcp.tools.search]\nprice = \"free\"\ncolour = 1\n",
            "colour",
        ),
        (
            "[routes.mcp]\nmax_response_bytes = 1\n",
            "routes[0].mcp.max_response_bytes",
        ),
        ("methods = [\"GET\"]\n[routes.mcp]\n", "routes[0].methods"),
    ] {
        let err = check(base(mcp)).expect_err(mcp);
        assert!(err.contains(want), "{mcp}: {err}");
    }
}
