//! Run with: cargo run -p example-upstream -- [--listen ADDR]   (default 127.0.0.1:9000)

use std::process::ExitCode;

use clap::Parser;

/// The demo API that Tollgate sells (no payment logic of its own): POST /v1/compute,
/// GET /v1/storage/{key}, POST /v1/chat/completions (token usage in JSON or SSE),
/// GET /v1/stream, ANY /v1/echo/..., GET /free/hello. Put the gateway in front of it with
/// examples/config/tollgate.toml.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: String,
    /// The same as --listen (kept for scripts that pass the address alone).
    #[arg(value_name = "ADDR", conflicts_with = "listen", hide = true)]
    addr: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let addr = args.addr.unwrap_or(args.listen);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "example-upstream: cannot listen on {addr}: {e}{}",
                in_use_hint(&e)
            );
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(a) => println!("demo upstream listening on http://{a}"),
        Err(e) => eprintln!("example-upstream: {e}"),
    }
    match example_upstream::serve(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

fn in_use_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (is another one running? choose another address with --listen ADDR)"
    } else {
        ""
    }
}
