//! Run with: cargo run -p example-agent -- URL [WALLET_URL] [PAYER]
//! (defaults: wallet http://127.0.0.1:7402, payer agent-007). Calls URL with GET, pays a 402
//! through the wallet and prints what it paid.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: example-agent URL [WALLET_URL] [PAYER]"))?;
    let wallet = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7402".into());
    let payer = args.next().unwrap_or_else(|| "agent-007".into());
    let agent = example_agent::Agent::new(wallet, payer);
    let out = agent.call(reqwest::Method::GET, &url, None).await?;
    if let Some(req) = &out.required {
        println!("402: {}", req["accepts"][0]["extra"]);
    }
    println!("status {}: {}", out.status, out.body.trim());
    if let Some(p) = &out.payment {
        println!("paid: {p}");
    }
    Ok(())
}
