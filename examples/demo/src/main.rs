//! Run with: cargo run -p example-demo [-- --serve]   (`-- --help` lists the flags)
//!
//! The whole paid setup in one process, on the embedded (memory) store -- no Redis needed:
//! a demo upstream, a demo wallet (receipt issuer with a JWKS), the Tollgate gateway in front
//! of the upstream, and an agent that meets a 402, gets a receipt from its wallet, pays and
//! prints what it paid. With `--serve` everything keeps running on fixed ports (those of
//! `examples/config/tollgate.toml`, plus the admin API and dashboard) for curl and the other
//! examples.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use example_agent::Agent;
use tollgate::config::Config;
use tollgate::Gateway;

/// The Tollgate demo: an upstream API, a wallet, the gateway (memory store) and an agent
/// paying for calls, end to end in one process. Without --serve every part takes a free port,
/// the walk-through runs once and the demo exits (0 when the paid call succeeded).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Keep everything running after the walk-through (until Ctrl-C), on fixed ports: gateway
    /// 127.0.0.1:8402, upstream 127.0.0.1:9000, wallet 127.0.0.1:7402, admin API and dashboard
    /// 127.0.0.1:8403 (/admin/ui; token from TOLLGATE_ADMIN_TOKEN, else generated and printed).
    #[arg(long)]
    serve: bool,
    /// Gateway address [with --serve: 127.0.0.1:8402; else a free port].
    #[arg(long, value_name = "ADDR")]
    gateway: Option<String>,
    /// Upstream address [with --serve: 127.0.0.1:9000; else a free port].
    #[arg(long, value_name = "ADDR")]
    upstream: Option<String>,
    /// Wallet address [with --serve: 127.0.0.1:7402; else a free port].
    #[arg(long, value_name = "ADDR")]
    wallet: Option<String>,
    /// Admin API and dashboard address [with --serve: 127.0.0.1:8403; else not served].
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
}

impl Args {
    /// The address for a part: given, else its fixed port with --serve, else a free port.
    fn addr(&self, given: &Option<String>, fixed: &str) -> String {
        match given {
            Some(a) => a.clone(),
            None if self.serve => fixed.to_owned(),
            None => "127.0.0.1:0".to_owned(),
        }
    }
}

/// Bind, or say which address (and which part) could not be bound.
async fn bind(addr: &str, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({what}); is something already using it? pick another with --{what} ADDR")
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let serve = args.serve;

    let upstream = bind(&args.addr(&args.upstream, "127.0.0.1:9000"), "upstream").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(example_upstream::serve(upstream));

    let wallet_listener = bind(&args.addr(&args.wallet, "127.0.0.1:7402"), "wallet").await?;
    let wallet_url = format!("http://{}", wallet_listener.local_addr()?);
    let wallet =
        example_wallet::Wallet::generate(wallet_url.clone(), example_wallet::default_cap())
            .map_err(anyhow::Error::msg)?;
    tokio::spawn(async move { axum::serve(wallet_listener, wallet.app()).await });

    let gateway_listener = bind(&args.addr(&args.gateway, "127.0.0.1:8402"), "gateway").await?;
    let admin_listener = match (&args.admin, serve) {
        (Some(a), _) => Some(bind(a, "admin").await?),
        (None, true) => Some(bind("127.0.0.1:8403", "admin").await?),
        (None, false) => None,
    };
    let gw_url = format!("http://{}", gateway_listener.local_addr()?);
    let toml = format!(
        r#"
merchant = "demo-merchant"
[currencies.USD]
scale = 6
[[issuers]]
id = "{wallet_url}"
jwks_url = "{wallet_url}/.well-known/jwks.json"
[store]
kind = "memory"
[[routes]]
id = "compute"
path = "/v1/compute"
methods = ["POST"]
upstream = "http://{upstream_addr}"
price = {{ amount = "0.01", currency = "USD" }}
description = "Run a compute job"
[[routes]]
id = "storage"
path = "/v1/storage"
methods = ["GET", "HEAD"]
upstream = "http://{upstream_addr}"
price = {{ amount = "0.002", currency = "USD" }}
mime_type = "application/octet-stream"
[[routes]]
id = "chat"
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "http://{upstream_addr}"
description = "Chat completions (streamed or not), priced per token"
price = {{ currency = "USD", reserve = "0.01", meters = [
  {{ unit = "prompt_token", usage = "sse:/usage/prompt_tokens", price = "0.000001" }},
  {{ unit = "completion_token", usage = "sse:/usage/completion_tokens", price = "0.000002" }},
] }}
[[routes]]
id = "free"
path = "/free"
upstream = "http://{upstream_addr}"
price = "free"
"#
    );
    let cfg = Config::from_str(&toml)?;
    let validated = cfg.validate(std::path::Path::new("."))?;
    let secret: [u8; 32] = rand_bytes();
    let gateway = Gateway::build(validated, &secret).await?;
    let paywall = gateway.paywall().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin = match admin_listener {
        Some(listener) => {
            let at = format!("http://{}", listener.local_addr()?);
            let (token, generated) = match std::env::var(tollgate::admin::ADMIN_TOKEN_ENV) {
                Ok(t) if t.len() >= 16 => (t, false),
                _ => {
                    let bytes: [u8; 24] = rand::random();
                    (bytes.iter().map(|b| format!("{b:02x}")).collect(), true)
                }
            };
            tokio::spawn(gateway.clone().serve_admin(
                listener,
                token.clone(),
                std::future::pending(),
            ));
            Some((at, token, generated))
        }
        None => None,
    };
    let server = tokio::spawn(gateway.serve(gateway_listener, async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(50)).await;

    println!("upstream {upstream_addr}, wallet {wallet_url}, gateway {gw_url} (memory store)\n");
    let agent = Agent::new(wallet_url.clone(), "agent-007");

    let free = agent
        .call(reqwest::Method::GET, &format!("{gw_url}/free/hello"), None)
        .await?;
    println!("1. GET /free/hello -> {} {}", free.status, free.body.trim());

    let paid = agent
        .call(
            reqwest::Method::POST,
            &format!("{gw_url}/v1/compute"),
            Some(serde_json::json!({"job": "render"})),
        )
        .await?;
    if let Some(req) = &paid.required {
        let offer = &req["accepts"][0];
        println!(
            "2. POST /v1/compute -> 402: pay {} {} (= {} atomic units) to {} via {}",
            offer["extra"]["price"],
            offer["extra"]["currency"],
            offer["amount"],
            offer["payTo"],
            offer["scheme"]
        );
    }
    println!(
        "   agent got a receipt from its wallet and retried -> {} {}",
        paid.status,
        paid.body.trim()
    );
    if let Some(p) = &paid.payment {
        println!(
            "   PAYMENT-RESPONSE: charged {} {} to {}, ledger event {}",
            p["amount"], p["currency"], p["payer"], p["eventId"]
        );
    }

    if let Some(receipt) = &paid.receipt {
        let replay = reqwest::Client::new()
            .post(format!("{gw_url}/v1/compute"))
            .header("authorization", format!("Payment {receipt}"))
            .send()
            .await?;
        let status = replay.status().as_u16();
        let body: serde_json::Value = replay.json().await?;
        println!("3. the same receipt again -> {status} {}", body["code"]);
    }

    // A model vendor selling tokens: top up once, then pay per token from the balance.
    let topup = agent
        .topup(
            &format!("{gw_url}/tollgate/v1/topup"),
            "demo-merchant",
            "1.00",
            "USD",
        )
        .await?;
    let token = topup["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "4. top-up of {} USD -> balance {} USD, access token {}...",
        topup["credited"],
        topup["balance"],
        &token[..token.len().min(16)]
    );
    let chat = |stream: bool, words: usize, max_tokens: u64| {
        serde_json::json!({
            "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": vec!["hello"; words].join(" ")}],
        })
    };
    let (status, body, payment) = agent
        .call_with_token(
            reqwest::Method::POST,
            &format!("{gw_url}/v1/chat/completions"),
            &token,
            Some(chat(false, 12, 30)),
        )
        .await?;
    let usage: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let p = payment.unwrap_or_default();
    println!(
        "5. JSON chat -> {status}: {} prompt + {} completion tokens ({} USD held, settled at the end)",
        usage["usage"]["prompt_tokens"], usage["usage"]["completion_tokens"], p["held"]
    );
    let (status, body, payment) = agent
        .call_with_token(
            reqwest::Method::POST,
            &format!("{gw_url}/v1/chat/completions"),
            &token,
            Some(chat(true, 20, 50)),
        )
        .await?;
    let p = payment.unwrap_or_default();
    println!(
        "6. streamed chat -> {status}: {} SSE events; {} USD held while streaming, settled when the stream ended",
        body.matches("data: ").count(),
        p["held"]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let balance: serde_json::Value = agent
        .http
        .get(format!("{gw_url}/tollgate/v1/balance"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    println!(
        "   balance now {} USD (captured {} USD)",
        balance["balances"]["USD"]["available"], balance["balances"]["USD"]["captured"]
    );

    let events = paywall.store().usage_events().await?;
    println!("\nledger: {} usage event(s)", events.len());
    for e in &events {
        println!(
            "  {} payer={} route={} amount={} {} status={}",
            e.id,
            e.payer,
            e.route,
            e.amount(),
            e.currency,
            e.upstream_status
        );
    }

    if let Some((at, token, generated)) = &admin {
        let shown = if *generated {
            format!("{token} (generated; set TOLLGATE_ADMIN_TOKEN to choose one)")
        } else {
            "from TOLLGATE_ADMIN_TOKEN".to_owned()
        };
        println!("\nadmin API {at}, dashboard {at}/admin/ui, admin token {shown}");
    }
    if serve {
        println!("serving on {gw_url} until Ctrl-C; try: cargo run -p example-agent -- {gw_url}/v1/storage/report.txt {wallet_url}");
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop_tx.send(());
    server.await??;
    if paid.status != 200 {
        anyhow::bail!("the paid call did not succeed");
    }
    Ok(())
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}
