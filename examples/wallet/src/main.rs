//! Run with: cargo run -p example-wallet -- [ADDR]   (default 127.0.0.1:7402)
//! Issues receipts as `http://ADDR`; its JWKS is at `http://ADDR/.well-known/jwks.json`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7402".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    let wallet = example_wallet::Wallet::generate(issuer.clone(), example_wallet::default_cap())
        .map_err(std::io::Error::other)?;
    println!("demo wallet: issuer {issuer}, JWKS {issuer}/.well-known/jwks.json");
    axum::serve(listener, wallet.app()).await
}
