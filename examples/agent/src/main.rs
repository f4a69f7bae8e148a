//! Run with: cargo run -p example-agent -- URL [WALLET_URL] [PAYER]
//! (defaults: wallet http://127.0.0.1:7402, payer agent-007). Calls URL with GET, pays a 402
//! through the wallet and prints what it paid.

use clap::Parser;

/// A demo agent: GETs URL; on a 402 it picks the receipt offer, asks its wallet for a receipt
/// bound to the offer's challenge (waiting for the owner's approval when the wallet runs with
/// --confirm), retries once, and prints the answer and what it paid (PAYMENT-RESPONSE).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The URL to call, e.g. http://127.0.0.1:8402/v1/storage/report.txt.
    url: String,
    /// The wallet that signs its receipts (example-wallet).
    #[arg(default_value = "http://127.0.0.1:7402")]
    wallet_url: String,
    /// The payer id the receipts name (`sub`).
    #[arg(default_value = "agent-007")]
    payer: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let agent = example_agent::Agent::new(args.wallet_url, args.payer);
    let out = agent.call(reqwest::Method::GET, &args.url, None).await?;
    if let Some(req) = &out.required {
        println!("402: {}", req["accepts"][0]["extra"]);
    }
    println!("status {}: {}", out.status, out.body.trim());
    if let Some(p) = &out.payment {
        println!("paid: {p}");
    }
    Ok(())
}
