//! Run with: cargo run -p example-upstream -- [ADDR]   (default 127.0.0.1:9000)

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "demo upstream listening on http://{}",
        listener.local_addr()?
    );
    example_upstream::serve(listener).await
}
