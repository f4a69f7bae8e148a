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
    let out = bin().args(["keygen", "--kid", "abc"]).output().unwrap();
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
