//! `tollgate`: run, check and key generation. Thin: everything lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tollgate::admin_access::AdminAccess;
use tollgate::config::Config;
use tollgate::keygen::{self, KeyFiles};
use tollgate::{Gateway, SECRET_ENV};

/// Tollgate: an HTTP 402 payment gateway for APIs sold to AI agents.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit (0: valid, 64: invalid).
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a new Ed25519 issuer key pair: prints the public key (SPKI PEM and JWK), the
    /// private key (PKCS#8 PEM and JWK) and an `[[issuers]]` block to paste into the config.
    Keygen {
        /// The key id (`kid`) receipts name in their header.
        #[arg(long, default_value = "key-1")]
        kid: String,
        /// The issuer id for the `[[issuers]]` block: the exact `iss` the signer writes.
        #[arg(long, default_value = "https://wallet.example")]
        issuer: String,
        /// Write the keys to files in this folder instead of printing them: `<kid>.key.pem` and
        /// `<kid>.jwk.json` (private, mode 0600), `<kid>.pub.pem` and `<kid>.jwks.json`; the block
        /// then names the public PEM as `pem_file`. Existing files are never overwritten.
        #[arg(long, value_name = "DIR", conflicts_with = "json")]
        out_dir: Option<PathBuf>,
        /// Print one JSON object (`private_jwk`, `public_jwk`, `private_pem`, `public_pem`,
        /// `issuer_toml`) for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// EX_USAGE / EX_CONFIG-style exit for a bad configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // TOLLGATE_LOG_FORMAT=json: one JSON object per line (for log shippers).
    if std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().with_current_span(true).init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen {
            kid,
            issuer,
            out_dir,
            json,
        } => keygen(&kid, &issuer, out_dir.as_deref(), json),
        Command::Check { config } => check(&config),
        Command::Run { config } => run(config),
    }
}

fn keygen(kid: &str, issuer: &str, out_dir: Option<&std::path::Path>, json: bool) -> ExitCode {
    let key = match tollgate_middleware::issuer::generate_ed25519(kid) {
        Ok((key, _)) => key,
        Err(e) => {
            eprintln!("keygen failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", keygen::render_json(issuer, &key));
        return ExitCode::SUCCESS;
    }
    let files = out_dir.map(|dir| KeyFiles::in_dir(dir, kid));
    if let Some(files) = &files {
        if let Err(e) = files.write(&key) {
            eprintln!("keygen: {e}");
            return ExitCode::FAILURE;
        }
    }
    print!("{}", keygen::render(issuer, &key, files.as_ref()));
    ExitCode::SUCCESS
}

/// `tollgate check`: the same validation as `run`, the admin decision included.
fn check(config: &std::path::Path) -> ExitCode {
    let checked = Config::load(config)
        .and_then(|v| AdminAccess::from_env(v.config.admin.listen).map(|a| (v, a)));
    match checked {
        Ok((v, admin)) => {
            if let Some(w) = admin.warning() {
                eprintln!("{}: warning: {w}", config.display());
            }
            println!(
                "{}: ok ({} routes, {} issuers, store {}, {})",
                config.display(),
                v.routes.len(),
                v.issuers.len(),
                v.config.store.describe(),
                admin.summary()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    // Validate everything before any socket is bound.
    let validated = match Config::load(&path) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The same decision as `check` (and first, so both say the same).
    // The plain settings this function reads, before the gateway takes the config.
    let cfg = validated.config.clone();
    let admin = match AdminAccess::from_env(cfg.admin.listen) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(w) = admin.warning() {
        tracing::warn!("{w}");
    }
    let secret = match std::env::var(SECRET_ENV) {
        Ok(s) if s.len() >= 32 => s.into_bytes(),
        Ok(_) => {
            eprintln!("{SECRET_ENV} must be at least 32 bytes");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(_) => {
            tracing::warn!("{SECRET_ENV} is not set: using a random per-process secret; replicas will not accept each other's challenges");
            let bytes: [u8; 32] = rand::random();
            bytes.to_vec()
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::build(validated, &secret).await {
            Ok(g) => g.with_config_path(&path),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        tracing::info!(store = %cfg.store.describe(), "store ready");
        if cfg.store.kind == tollgate::config::StoreKind::Memory {
            tracing::warn!("store.kind = \"memory\": prepaid balances, holds and spent receipts are lost when this process stops; use kind = \"sqlite\" (the default) to keep them");
        }
        // SIGHUP: reload the config file; an invalid file is refused and the old one serves on.
        #[cfg(unix)]
        {
            let gw = gateway.clone();
            tokio::spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    return;
                };
                while hup.recv().await.is_some() {
                    match gw.reload().await {
                        Ok(routes) => tracing::info!(routes, "SIGHUP: configuration reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; the previous configuration keeps serving"),
                    }
                }
            });
        }
        let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        if let AdminAccess::On(addr, token) = admin {
            let admin_listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("cannot listen on {addr} (admin): {e}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(listen = %addr, "admin API serving");
            tokio::spawn(
                gateway
                    .clone()
                    .serve_admin(admin_listener, token, stopped(rx.clone())),
            );
        }
        tracing::info!(listen = %cfg.listen, tls = cfg.tls.is_some(), merchant = %cfg.merchant, "tollgate serving");
        let grace = Duration::from_secs(cfg.shutdown_grace_secs);
        let server = tokio::spawn(gateway.clone().serve(listener, stopped(rx.clone())));
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = tx.send(true);
        let served = tokio::time::timeout(grace, server).await;
        // Balance leases: record their pending charges and give the rest back to the payers.
        gateway.paywall().close().await;
        match served {
            Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
            Ok(Ok(Err(e))) => {
                eprintln!("server error: {e}");
                ExitCode::FAILURE
            }
            Ok(Err(e)) => {
                eprintln!("server task failed: {e}");
                ExitCode::FAILURE
            }
            Err(_) => {
                tracing::warn!("grace period over; exiting with requests in flight");
                ExitCode::SUCCESS
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
