//! Run with: cargo run -p example-wallet -- [--listen ADDR] [--confirm | --budget AMOUNT
//! --window SECS] [--max-per-payment AMOUNT]   (default 127.0.0.1:7402, auto-pay up to 1.00).
//! Issues receipts as `http://ADDR`; its JWKS is at `http://ADDR/.well-known/jwks.json`. With
//! `--confirm`, approve payments with
//! `curl -X POST http://ADDR/v1/approvals/<id> -d '{"approve":true}' -H 'content-type: application/json'`
//! (`GET /v1/approvals` lists what waits).

use std::process::ExitCode;

use clap::Parser;
use example_wallet::{Authorization, Wallet};
use tollgate_middleware::money::Amount;

/// A demo wallet and receipt issuer: signs Tollgate payment receipts (Ed25519, a key generated
/// at start-up) for agents, within its owner's limits, and serves its public key as a JWKS.
///
/// API: POST /v1/receipts {payer, merchant, amount, currency, challenge?, kind?} -> {receipt}
/// (or 202 {pending, poll} in --confirm mode); GET /.well-known/jwks.json; GET /v1/approvals;
/// POST /v1/approvals/{id} {"approve": true|false}; GET /v1/pending/{id}.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; the issuer id (`iss`) is http://<this address>.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7402")]
    listen: String,
    /// The same as --listen (kept for scripts that pass the address alone).
    #[arg(value_name = "ADDR", conflicts_with = "listen", hide = true)]
    addr: Option<String>,
    /// A human approves every payment (POST /v1/approvals/{id}).
    #[arg(long, conflicts_with = "budget")]
    confirm: bool,
    /// Sign at most this much (decimal) within any rolling --window.
    #[arg(long, value_name = "AMOUNT")]
    budget: Option<Amount>,
    /// The budget's rolling window, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 86_400,
        requires = "budget"
    )]
    window: i64,
    /// The most one payment may be (decimal); larger requests are refused.
    #[arg(long, value_name = "AMOUNT", default_value = "1")]
    max_per_payment: Amount,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let addr = args.addr.clone().unwrap_or_else(|| args.listen.clone());
    let authorization = if args.confirm {
        Authorization::Confirm
    } else if let Some(budget) = args.budget {
        Authorization::Budget {
            max_per_payment: args.max_per_payment,
            budget,
            window_secs: args.window,
        }
    } else {
        Authorization::AutoPay {
            max_per_payment: args.max_per_payment,
        }
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (is another one running? choose another address with --listen ADDR)"
            } else {
                ""
            };
            eprintln!("example-wallet: cannot listen on {addr}: {e}{hint}");
            return ExitCode::FAILURE;
        }
    };
    let issuer = match listener.local_addr() {
        Ok(a) => format!("http://{a}"),
        Err(e) => {
            eprintln!("example-wallet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let wallet = match Wallet::generate(issuer.clone(), args.max_per_payment) {
        Ok(w) => w.with_authorization(authorization.clone()),
        Err(e) => {
            eprintln!("example-wallet: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("demo wallet: issuer {issuer}, JWKS {issuer}/.well-known/jwks.json, authorization {authorization:?}");
    match axum::serve(listener, wallet.app()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-wallet: {e}");
            ExitCode::FAILURE
        }
    }
}
