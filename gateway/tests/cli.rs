//! The `tollgate` binary: `check` and `run` refuse bad config with exit 64 before binding any
//! port; `keygen` prints a usable key; `run` serves and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
}

const GOOD: &str = r#"
listen = "127.0.0.1:0"
merchant = "m"
[currencies.USD]
scale = 6
[[issuers]]
id = "w"
keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid = "k" }]
[[routes]]
id = "paid"
path = "/v1"
upstream = "http://127.0.0.1:9"
price = { amount = "0.01", currency = "USD" }
"#;

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("tollgate.toml");
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[test]
fn check_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("check")
        .arg("--config")
        .arg(write(&dir, GOOD))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 routes, 1 issuers"));
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD.replace("\"0.01\"", "\"0.0000001\"");
    for cmd in ["check", "run"] {
        let out = bin()
            .arg(cmd)
            .arg("--config")
            .arg(write(&dir, &bad))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("routes[0].price.amount"), "{cmd}: {err}");
    }
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn a_bad_ledger_url_exits_64_at_check_naming_ledger_url() {
    let dir = tempfile::tempdir().unwrap();
    let store = "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:9\"\n";
    for (url, says) in [
        ("mysql://tg@db/x", "ledger.url: must be a postgres:// URL"),
        (
            "postgres://tg:secret@db/x",
            "ledger.url: must not contain a password",
        ),
    ] {
        let text = format!("{GOOD}{store}[ledger]\nurl = \"{url}\"\n");
        let out = bin()
            .arg("check")
            .arg("--config")
            .arg(write(&dir, &text))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{url}: {err}");
    }
}

#[test]
fn short_secret_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(write(&dir, GOOD))
        .env("TOLLGATE_SECRET", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_SECRET"));
}

#[test]
fn keygen_prints_an_ed25519_jwk_pair() {
    let out = bin()
        .args(["keygen", "--kid", "abc", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["public_jwk"]["kty"], "OKP");
    assert_eq!(v["public_jwk"]["crv"], "Ed25519");
    assert_eq!(v["public_jwk"]["kid"], "abc");
    assert!(
        v["public_jwk"].get("d").is_none(),
        "the public JWK must not carry the private key"
    );
    assert_eq!(v["private_jwk"]["x"], v["public_jwk"]["x"]);
    assert!(v["private_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(v["public_pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(v["issuer_toml"]
        .as_str()
        .unwrap()
        .starts_with("[[issuers]]\n"));
}

#[test]
fn run_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = GOOD.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let mut child = bin()
        .arg("run")
        .arg("--config")
        .arg(write(&dir, &cfg))
        .env("TOLLGATE_SECRET", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 402"), "{answer}");
    // SIGTERM: graceful exit with status 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/config/tollgate.toml"
    );
    let out = bin().args(["check", "--config", path]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Send one raw HTTP/1.1 request (Connection: close) and return the whole answer.
fn raw(port: u16, request: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn logs_never_contain_receipts_tokens_or_secrets() {
    use tollgate_middleware::issuer::ReceiptSigner;
    // A tiny upstream, so payments are captured (the full path is logged).
    let up_port = free_port();
    let upstream = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", up_port))
                .await
                .unwrap();
            let app = axum::Router::new().fallback(|| async { "ok" });
            axum::serve(l, app).await.unwrap();
        });
    });
    drop(upstream);
    let signer = ReceiptSigner::generate_ed25519("wallet", "k1").unwrap();
    let jwk = serde_json::to_value(signer.public_jwk()).unwrap();
    let jwk_toml: Vec<String> = jwk
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let (port, admin_port, dead_port) = (free_port(), free_port(), free_port());
    let webhook_secret = "whsec_d2ViaG9vay1zZWNyZXQtbmV2ZXItbG9nZ2Vk";
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nmerchant = \"m\"\n[[webhooks]]\nid = \"ops\"\nurl = \"http://127.0.0.1:{dead_port}/hook\"\nevents = [\"payer.blocked\"]\nsecret_env = \"TOLLGATE_TEST_HOOK_SECRET\"\n[currencies.USD]\nscale = 6\n[[issuers]]\nid = \"wallet\"\nkeys = [{{ {} }}]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[[routes]]\nid = \"paid\"\npath = \"/\"\nupstream = \"http://127.0.0.1:{up_port}\"\nprice = {{ amount = \"0.01\", currency = \"USD\" }}\n",
        jwk_toml.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let secret = "gateway-secret-that-must-never-be-logged-0001";
    let admin_token = "admin-token-that-must-never-be-logged";
    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(write(&dir, &cfg))
        .env("TOLLGATE_SECRET", secret)
        .env("TOLLGATE_ADMIN_TOKEN", admin_token)
        .env("TOLLGATE_TEST_HOOK_SECRET", webhook_secret)
        .env("RUST_LOG", "trace")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_port(port);
    wait_port(up_port);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |kind: &str, jti: &str| serde_json::json!({"iss": "wallet", "sub": "agent", "aud": "m", "jti": jti, "iat": now, "exp": now + 60, "amount": "1", "currency": "USD", "kind": kind});
    let receipt = signer.sign_json(&claims("payment", "r1")).unwrap();
    let topup = signer.sign_json(&claims("topup", "t1")).unwrap();
    let paid = raw(port, &format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Payment {receipt}\r\nConnection: close\r\n\r\n"));
    assert!(paid.starts_with("HTTP/1.1 200"), "{paid}");
    let replay = raw(port, &format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Payment {receipt}\r\nConnection: close\r\n\r\n"));
    assert!(replay.starts_with("HTTP/1.1 402"), "{replay}");
    let topped = raw(port, &format!("POST /tollgate/v1/topup HTTP/1.1\r\nHost: a\r\nAuthorization: Payment {topup}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    let body = topped.split("\r\n\r\n").nth(1).unwrap_or_default();
    let token = serde_json::from_str::<serde_json::Value>(body.trim())
        .map(|v| v["access_token"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(token.starts_with("tg1."), "{topped}");
    let with_token = raw(port, &format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"));
    assert!(with_token.starts_with("HTTP/1.1 200"), "{with_token}");
    let forged = raw(port, &format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}x\r\nConnection: close\r\n\r\n"));
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    let admin = raw(admin_port, &format!("GET /admin/v1/payers/agent HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {admin_token}\r\nConnection: close\r\n\r\n"));
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.lines().count() > 5, "the gateway logged: {logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    // A webhook endpoint that is down at start is named, with its URL.
    let hook_url = format!("http://127.0.0.1:{dead_port}/hook");
    assert!(
        logs.lines()
            .any(|l| l.contains("webhook endpoint unreachable at start") && l.contains(&hook_url)),
        "no start-up warning for {hook_url}: {logs}"
    );
    // The signature part of each JWT, the token's MAC, and the secrets.
    let sig = |jwt: &str| jwt.rsplit('.').next().unwrap().to_owned();
    for (what, secret_text) in [
        ("receipt", sig(&receipt)),
        ("top-up receipt", sig(&topup)),
        ("access token", sig(&token)),
        ("gateway secret", secret.to_owned()),
        ("admin token", admin_token.to_owned()),
        (
            "webhook secret",
            webhook_secret.trim_start_matches("whsec_").to_owned(),
        ),
    ] {
        assert!(
            !logs.contains(&secret_text),
            "the {what} appears in the logs"
        );
    }
}

#[test]
fn sighup_reloads_the_config_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = GOOD.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, &cfg);
    let mut child = bin()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("TOLLGATE_SECRET", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    let offer = || {
        let answer = raw(
            port,
            "GET /v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| {
                v["accepts"][0]["amount"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let hup = |child: &std::process::Child| {
        assert!(Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };
    assert_eq!(offer(), "10000");
    std::fs::write(&path, cfg.replace("\"0.01\"", "\"0.03\"")).unwrap();
    hup(&child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while offer() != "30000" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A bad file: refused, the gateway keeps serving the last good configuration.
    std::fs::write(&path, "this is not toml").unwrap();
    hup(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(offer(), "30000");
    let _ = child.kill();
    let _ = child.wait();
}

/// The shipped example config on free ports (it names 8402 and 8403).
fn example_config_on(port: u16, admin_port: u16) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/config/tollgate.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("listen = \"127.0.0.1:8402\""));
    assert!(text.contains("listen = \"127.0.0.1:8403\""));
    text.replace("127.0.0.1:8402", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8403", &format!("127.0.0.1:{admin_port}"))
}

fn sigterm_and_wait(child: std::process::Child) -> std::process::Output {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    child.wait_with_output().unwrap()
}

/// Issue 19: README's own command, `tollgate run --config examples/config/tollgate.toml`, with
/// no `TOLLGATE_ADMIN_TOKEN`: `check` and `run` agree -- the gateway serves, without the admin
/// listener, and both say so with the same warning.
#[test]
fn the_example_config_runs_without_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let path = write(&dir, &example_config_on(port, admin_port));
    let warning = format!(
        "[admin] listen = \"127.0.0.1:{admin_port}\" is set but TOLLGATE_ADMIN_TOKEN is not: the \
         admin API (dashboard, /metrics, payer management) is OFF"
    );
    let checked = bin()
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&warning), "{stderr}");
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        stdout.contains(&format!(
            "admin API off: no TOLLGATE_ADMIN_TOKEN for 127.0.0.1:{admin_port}"
        )),
        "{stdout}"
    );

    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_port(port);
    let health = raw(
        port,
        "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let offer = raw(
        port,
        "GET /v1/storage/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(offer.starts_with("HTTP/1.1 402"), "{offer}");
    // The 402 says the price and where the catalog is.
    assert!(offer.contains("(per request)"), "{offer}");
    assert!(offer.contains("GET /.well-known/tollgate"), "{offer}");
    // Nothing listens on the example upstream's port here (unless a demo runs): 502, and the
    // log names the upstream and the cause.
    let unreachable = raw(
        port,
        "GET /free HTTP/1.1\r\nHost: a\r\nX-Request-Id: req-cli-1\r\nConnection: close\r\n\r\n",
    );
    let upstream_down = unreachable.starts_with("HTTP/1.1 502");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err(),
        "no admin listener without a token"
    );
    let out = sigterm_and_wait(child);
    assert!(out.status.success(), "{:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains(&warning), "{logs}");
    assert!(
        logs.contains("store ready") && logs.contains("sqlite"),
        "{logs}"
    );
    if upstream_down {
        let line = logs
            .lines()
            .find(|l| l.contains("upstream request failed"))
            .unwrap_or_else(|| panic!("no upstream failure logged: {logs}"));
        assert!(line.contains("upstream=http://127.0.0.1:9000"), "{line}");
        assert!(line.contains("request_id=req-cli-1"), "{line}");
        assert!(
            line.contains("Connection refused"),
            "the cause, not just the stage: {line}"
        );
    }
}

/// With the token, the same file serves the admin API; a token set too short is refused by
/// `check` and `run` alike, with the same message, before any port is bound.
#[test]
fn the_admin_token_adds_the_admin_api_and_a_short_one_is_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let path = write(&dir, &example_config_on(port, admin_port));
    let mut said = Vec::new();
    for cmd in ["check", "run"] {
        let out = bin()
            .arg(cmd)
            .arg("--config")
            .arg(&path)
            .env("TOLLGATE_ADMIN_TOKEN", "short")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("TOLLGATE_ADMIN_TOKEN: must be at least 16 characters (it has 5)"),
            "{cmd}: {err}"
        );
        said.push(err);
    }
    assert_eq!(said[0], said[1], "check and run say the same");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let token = "an-admin-token-of-enough-length";
    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("TOLLGATE_ADMIN_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(admin_port);
    let admin = raw(admin_port, &format!("GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"));
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    let out = sigterm_and_wait(child);
    assert!(out.status.success());
}

/// The text after `marker` up to the next blank line.
fn section(text: &str, marker: &str) -> String {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text}"))
        + marker.len();
    text[start..]
        .trim_start_matches('\n')
        .split("\n\n")
        .next()
        .unwrap()
        .to_owned()
        + "\n"
}

/// Issue 19: `keygen` prints the public key in both forms an `[[issuers]]` entry reads, and a
/// block to paste. Round trip: the printed block, the printed public PEM (as `pem_file`) and the
/// `--out-dir` files each make a gateway accept a receipt signed with the matching private key,
/// and only that one.
#[test]
fn keygen_output_round_trips_through_a_gateway() {
    use tollgate_middleware::issuer::ReceiptSigner;
    let dir = tempfile::tempdir().unwrap();
    // 1. Printed: PEMs, JWKs and an inline-keys block.
    let out = bin()
        .args(["keygen", "--kid", "ka", "--issuer", "https://a.test"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let public_pem = section(
        &printed,
        "# Public key, SPKI PEM (save as a file for [[issuers]] pem_file):\n",
    );
    assert!(
        public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
        "{public_pem}"
    );
    assert!(public_pem.trim_end().ends_with("-----END PUBLIC KEY-----"));
    let private_pem = section(
        &printed,
        "(for the signer only; never in the gateway's config):\n",
    );
    assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let block_a = section(&printed, "# Paste into tollgate.toml:\n");
    assert!(
        block_a.starts_with("[[issuers]]\nid = \"https://a.test\""),
        "{block_a}"
    );
    assert!(block_a.contains("keys = [{ "), "{block_a}");
    assert!(
        !block_a.contains("\"d\"") && !block_a.contains(" d = "),
        "no private part: {block_a}"
    );
    let pem_path = dir.path().join("a.pub.pem");
    std::fs::write(&pem_path, &public_pem).unwrap();
    // 2. Written to files: the block names the public PEM.
    let keys_dir = dir.path().join("keys");
    let out = bin()
        .args([
            "keygen",
            "--kid",
            "kb",
            "--issuer",
            "https://b.test",
            "--out-dir",
        ])
        .arg(&keys_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = String::from_utf8(out.stdout).unwrap();
    assert!(
        !written.contains("BEGIN PRIVATE KEY"),
        "files, not the terminal: {written}"
    );
    let block_b = section(&written, "# Paste into tollgate.toml:\n");
    assert!(
        block_b.contains(&format!(
            "pem_file = \"{}\"",
            keys_dir.join("kb.pub.pem").display()
        )),
        "{block_b}"
    );
    assert!(block_b.contains("kid = \"kb\""), "{block_b}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(keys_dir.join("kb.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwritten.
    let again = bin()
        .args(["keygen", "--kid", "kb", "--out-dir"])
        .arg(&keys_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists; not overwritten"));

    // A gateway trusting all three, in front of a tiny upstream.
    let up_port = free_port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", up_port))
                .await
                .unwrap();
            let app = axum::Router::new().fallback(|| async { "ok" });
            axum::serve(l, app).await.unwrap();
        });
    });
    let port = free_port();
    let cfg = format!(
        "listen = \"127.0.0.1:{port}\"\nmerchant = \"m\"\n[currencies.USD]\nscale = 6\n\n{block_a}\n[[issuers]]\nid = \"https://a-pem.test\"\npem_file = \"a.pub.pem\"\nkid = \"ka\"\n\n{block_b}\n[[routes]]\nid = \"paid\"\npath = \"/\"\nupstream = \"http://127.0.0.1:{up_port}\"\nprice = {{ amount = \"0.01\", currency = \"USD\" }}\n"
    );
    let cfg_path = write(&dir, &cfg);
    let checked = bin()
        .arg("check")
        .arg("--config")
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}\n{cfg}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("3 issuers"));
    let child = bin()
        .arg("run")
        .arg("--config")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    wait_port(up_port);
    let key_b = std::fs::read_to_string(keys_dir.join("kb.key.pem")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let pay = |iss: &str, kid: &str, pem: &str, jti: &str| {
        let signer = ReceiptSigner::from_ed25519_pem(iss, Some(kid), pem).unwrap();
        let receipt = signer
            .sign_json(&serde_json::json!({"iss": iss, "sub": "agent", "aud": "m", "jti": jti, "iat": now, "exp": now + 60, "amount": "0.01", "currency": "USD", "kind": "payment"}))
            .unwrap();
        raw(port, &format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Payment {receipt}\r\nConnection: close\r\n\r\n"))
    };
    let a = pay("https://a.test", "ka", &private_pem, "r1");
    assert!(a.starts_with("HTTP/1.1 200"), "inline keys: {a}");
    let a_pem = pay("https://a-pem.test", "ka", &private_pem, "r2");
    assert!(
        a_pem.starts_with("HTTP/1.1 200"),
        "printed public PEM: {a_pem}"
    );
    let b = pay("https://b.test", "kb", &key_b, "r3");
    assert!(b.starts_with("HTTP/1.1 200"), "written files: {b}");
    let forged = pay("https://a.test", "ka", &key_b, "r4");
    assert!(forged.starts_with("HTTP/1.1 402"), "another key: {forged}");
    assert!(forged.contains("receipt_invalid_signature"), "{forged}");
    let out = sigterm_and_wait(child);
    assert!(out.status.success());
}
