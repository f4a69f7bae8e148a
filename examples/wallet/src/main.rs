//! Run with: cargo run -p example-wallet -- [ADDR] [--confirm | --budget AMOUNT --window SECS]
//! (default 127.0.0.1:7402, auto-pay up to 1.00). Issues receipts as `http://ADDR`; its JWKS is
//! at `http://ADDR/.well-known/jwks.json`. With `--confirm`, approve payments with
//! `curl -X POST http://ADDR/v1/approvals/<id> -d '{"approve":true}' -H 'content-type: application/json'`
//! (`GET /v1/approvals` lists what waits).

use example_wallet::{default_cap, Authorization, Wallet};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:7402".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let authorization = if args.iter().any(|a| a == "--confirm") {
        Authorization::Confirm
    } else if let Some(budget) = flag("--budget") {
        let budget = budget
            .parse()
            .map_err(|e| std::io::Error::other(format!("--budget: {e}")))?;
        let window_secs = flag("--window")
            .and_then(|w| w.parse().ok())
            .unwrap_or(86_400);
        Authorization::Budget {
            max_per_payment: default_cap(),
            budget,
            window_secs,
        }
    } else {
        Authorization::AutoPay {
            max_per_payment: default_cap(),
        }
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let wallet = Wallet::generate(issuer.clone(), default_cap())
        .map_err(std::io::Error::other)?
        .with_authorization(authorization.clone());
    println!("demo wallet: issuer {issuer}, JWKS {issuer}/.well-known/jwks.json, authorization {authorization:?}");
    axum::serve(listener, wallet.app()).await
}
