//! Encoded paths against real upstreams that decode them (the Paths rule, docs/payment-rules.md#paths, issue 14
//! item 4): Python's `http.server` serving files behind a free route and a priced one, and a
//! Starlette app as lenient as the worst upstreams (decodes twice, drops `;` parameters, merges
//! `//`, resolves dot segments). Every encoding of a priced path is refused (400) or priced
//! (402); none reaches the priced resource unpaid, or for the price of a cheaper route. Sent
//! raw: HTTP clients normalize such paths before sending.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tollgate_e2e::*;

/// A Python upstream, killed when dropped.
struct PythonUpstream {
    _child: tokio::process::Child,
    up: TestUpstream,
}

/// Start `python args...` and read its port from the first line that names one.
async fn python_upstream(python: &Path, args: &[&str]) -> PythonUpstream {
    let mut child = tokio::process::Command::new(python)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // `12345` (the Starlette app) or `Serving HTTP on 127.0.0.1 port 12345 (...)`.
            let word = line
                .trim()
                .strip_prefix("Serving HTTP on 127.0.0.1 port ")
                .unwrap_or(line.trim());
            if let Some(port) = word.split(' ').next().and_then(|p| p.parse::<u16>().ok()) {
                return port;
            }
        }
        panic!("{python:?} {args:?} exited before naming its port");
    })
    .await
    .expect("the python upstream did not start in 30 s");
    // Keep draining stdout (http.server logs nothing there, but a full pipe would block it).
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    PythonUpstream {
        _child: child,
        up: TestUpstream {
            addr: ([127, 0, 0, 1], port).into(),
        },
    }
}

/// One request sent as written: `(status, body)`.
async fn send(gw: &TestGateway, request_line: &str, headers: &str) -> (u16, String) {
    let answer = raw_http(
        gw.addr,
        &format!("{request_line}\r\n{headers}Connection: close\r\n\r\n"),
    )
    .await;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{request_line}: no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// `GET target` in the three shapes a client can send it: HTTP/1.1 origin-form, HTTP/1.0
/// without Host, and absolute-form.
async fn get_every_way(
    gw: &TestGateway,
    target: &str,
    headers: &str,
) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    for (shape, line, host) in [
        ("HTTP/1.1", format!("GET {target} HTTP/1.1"), "Host: gw\r\n"),
        ("HTTP/1.0", format!("GET {target} HTTP/1.0"), ""),
        (
            "absolute-form",
            format!("GET http://gw{target} HTTP/1.1"),
            "Host: gw\r\n",
        ),
    ] {
        let (status, body) = send(gw, &line, &format!("{host}{headers}")).await;
        out.push((format!("{shape} {target}"), status, body));
    }
    out
}

/// A directory with a free file and a priced one, for `http.server`.
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in [
        ("files/public/index.txt", "public file"),
        ("files/paid/report.txt", "PAID REPORT"),
    ] {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

#[tokio::test]
async fn encoded_paths_never_reach_the_paid_file_of_python_http_server() {
    let dir = site();
    let server = python_upstream(
        Path::new("python3"),
        &[
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            dir.path().to_str().unwrap(),
        ],
    )
    .await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .route(free("public", "/files/public", &server.up))
        .route(paid("paid", "/files/paid", &server.up, "0.01"))
        .route(free("site", "/", &server.up))
        .start()
        .await;
    let refused = [
        "/files/public/..%2fpaid/report.txt",
        "/files/public/..%2Fpaid/report.txt",
        "/files/paid%2freport.txt",
        "/files/public/../paid/report.txt",
        "/files/public/%2e%2e/paid/report.txt",
        "/files/public/..%5cpaid/report.txt",
        "/files/public/..\\paid/report.txt",
        "/files/%2570aid/report.txt",
        "/files/public/%252e%252e/paid/report.txt",
        "//files/paid/report.txt",
        "/files//paid/report.txt",
        "/files/paid;x/report.txt",
        "/files/paid/report.txt%00.html",
        "/files/public/%C0%AE%C0%AE/paid/report.txt",
    ];
    // Other spellings of the priced file: priced.
    let priced = [
        "/files/%70aid/report.txt",
        "/files/p%61id/report.txt",
        "/files/paid/%72eport.txt",
    ];
    for target in refused {
        for (what, status, body) in get_every_way(&gw, target, "").await {
            assert_eq!(status, 400, "{what}: {body}");
            assert!(body.contains("\"code\":\"path_invalid\""), "{what}: {body}");
        }
    }
    for target in priced {
        for (what, status, body) in get_every_way(&gw, target, "").await {
            assert_eq!(status, 402, "{what}: {body}");
            assert!(!body.contains("PAID REPORT"), "{what}: {body}");
            // The offer names the canonical resource.
            assert!(body.contains("/files/paid/report.txt\""), "{what}: {body}");
        }
    }
    // Paid, the same spellings are served the priced file.
    for target in priced {
        let receipt = wallet.receipt("m", "a", "0.01");
        let auth = format!("Authorization: Payment {receipt}\r\n");
        let (status, body) = send(
            &gw,
            &format!("GET {target} HTTP/1.1"),
            &format!("Host: gw\r\n{auth}"),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "PAID REPORT"), "{target}");
    }
    // The free file stays free, however it is spelled.
    for target in [
        "/files/public/index.txt",
        "/files/%70ublic/index.txt",
        "/%66iles/public/index.txt",
    ] {
        for (what, status, body) in get_every_way(&gw, target, "").await {
            assert_eq!((status, body.as_str()), (200, "public file"), "{what}");
        }
    }
    // An absolute-form target naming another host than Host is refused.
    let (status, body) = send(
        &gw,
        "GET http://elsewhere/files/public/index.txt HTTP/1.1",
        "Host: gw\r\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("path_invalid"), "{body}");
}

/// The venv python with Starlette and uvicorn (`tests/upstreams/setup.sh`, run by
/// `tests/run.sh` or here), or `None` when it cannot be installed.
fn starlette_python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("TOLLGATE_STARLETTE_PYTHON") {
                return Some(PathBuf::from(p));
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/upstreams/setup.sh");
            let out = std::process::Command::new("bash")
                .arg(script)
                .output()
                .ok()?;
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                return None;
            }
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            p.exists().then_some(p)
        })
        .clone()
}

/// The Starlette app behind a gateway: `/free` and `/` free, `/v1/cheap` at 0.001 and
/// `/v1/compute` at 0.01. `None` (with a loud warning) when Starlette cannot be installed.
async fn starlette_gateway() -> Option<(PythonUpstream, TestIssuer, TestGateway)> {
    let Some(python) = starlette_python() else {
        assert!(
            std::env::var_os("TOLLGATE_REQUIRE_STARLETTE").is_none(),
            "Starlette is required but could not be installed (bash tests/upstreams/setup.sh)"
        );
        eprintln!("\n\n!!!!! SKIPPED: Starlette + uvicorn could not be installed (bash tests/upstreams/setup.sh); the decoding-upstream path tests did not run !!!!!\n\n");
        return None;
    };
    let app = python_upstream(
        &python,
        &[concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/upstreams/starlette_app.py"
        )],
    )
    .await;
    let wallet = TestIssuer::ed25519("wallet");
    let gw = gateway()
        .issuer(&wallet)
        .route(free("free", "/free", &app.up))
        .route(paid("cheap", "/v1/cheap", &app.up, "0.001"))
        .route(paid("compute", "/v1/compute", &app.up, "0.01"))
        .route(free("site", "/", &app.up))
        .start()
        .await;
    Some((app, wallet, gw))
}

/// What the Starlette app served, and the path it received.
fn served(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        v["resource"].as_str().unwrap_or("").to_owned(),
        v["raw_path"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn encoded_paths_never_reach_the_priced_route_of_a_decoding_upstream() {
    let Some((_app, wallet, gw)) = starlette_gateway().await else {
        return;
    };
    let refused = [
        "/v1%2fcompute",
        "/v1%2Fcompute",
        "//v1/compute",
        "/v1//compute",
        "/v1/compute;x",
        "/v1/compute%3bx",
        "/free/..;/v1/compute",
        "/free/../v1/compute",
        "/free/%2e%2e/v1/compute",
        "/free/..%5cv1/compute",
        "/free/%C0%AE%C0%AE/v1/compute",
        "/v1/%2563ompute",
        "/v1/compute%3Fx",
        "/v1/compute%23x",
        "/v1/compute%00x",
    ];
    for target in refused {
        for (what, status, body) in get_every_way(&gw, target, "").await {
            assert_eq!(status, 400, "{what}: {body}");
            assert!(body.contains("\"code\":\"path_invalid\""), "{what}: {body}");
        }
    }
    for target in ["/v1/%63ompute", "/v1/c%6Fmpute/x", "/%76%31/compute"] {
        for (what, status, body) in get_every_way(&gw, target, "").await {
            assert_eq!(status, 402, "{what}: {body}");
        }
        // Paid at the compute price: served, and the upstream got the canonical path.
        let receipt = wallet.receipt("m", "a", "0.01");
        let (status, body) = send(
            &gw,
            &format!("GET {target} HTTP/1.1"),
            &format!("Host: gw\r\nAuthorization: Payment {receipt}\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{target}: {body}");
        let (resource, raw_path) = served(&body);
        assert_eq!(resource, "PRICED COMPUTE", "{target}: {body}");
        assert!(raw_path.starts_with("/v1/compute"), "{target}: {body}");
    }
    // Paying the cheap price never reaches the expensive route.
    for target in [
        "/v1/cheap/..%2fcompute",
        "/v1/cheap/../compute",
        "/v1/cheap/%2e%2e/compute",
        "/v1/cheap/..;/compute",
        "/v1/cheap;/../compute",
        "/v1/cheap/..%255ccompute",
    ] {
        let receipt = wallet.receipt("m", "a", "0.001");
        let (status, body) = send(
            &gw,
            &format!("GET {target} HTTP/1.1"),
            &format!("Host: gw\r\nAuthorization: Payment {receipt}\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(!body.contains("PRICED COMPUTE"), "{target}: {body}");
    }
    let receipt = wallet.receipt("m", "a", "0.001");
    let (status, body) = send(
        &gw,
        "GET /v1/%63heap/x HTTP/1.1",
        &format!("Host: gw\r\nAuthorization: Payment {receipt}\r\n"),
    )
    .await;
    assert_eq!(
        (status, served(&body)),
        (200, ("cheap".into(), "/v1/cheap/x".into())),
        "{body}"
    );
}

/// A random spelling of `path`: escapes in either case, some doubled, and structural noise
/// (`;x`, `//`, `/./`, `/x/../`, `%2F`, `\`, detours through a free route) a decoding upstream
/// undoes.
fn random_spelling(rng: &mut impl Rng, path: &str) -> String {
    let mut out = String::new();
    if rng.gen_bool(0.2) {
        out.push_str(
            ["/free/..", "/free/..;", "/free/%2e%2E", "/v1/cheap/.."][rng.gen_range(0..4)],
        );
    }
    for (i, c) in path.chars().enumerate() {
        if c == '/' && i > 0 {
            let noise = ["//", "/./", "/x/../", "%2F", "%2f", "\\", ";x/", "%252F"];
            out.push_str(if rng.gen_bool(0.7) {
                "/"
            } else {
                noise[rng.gen_range(0..noise.len())]
            });
            continue;
        }
        match rng.gen_range(0..10) {
            0 => out.push_str(&format!("%{:02X}", c as u32)),
            1 => out.push_str(&format!("%{:02x}", c as u32)),
            2 if c != '/' => out.push_str(&format!("%25{:02X}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn random_spellings_of_the_priced_path_are_refused_or_priced_never_served_unpaid() {
    let Some((_app, _wallet, gw)) = starlette_gateway().await else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(144);
    let (mut refused, mut priced) = (0, 0);
    for _ in 0..300 {
        let target = random_spelling(&mut rng, "/v1/compute/job");
        let (status, body) = send(&gw, &format!("GET {target} HTTP/1.1"), "Host: gw\r\n").await;
        match status {
            400 => refused += 1,
            402 => priced += 1,
            _ => {
                let (resource, _) = served(&body);
                assert_ne!(resource, "PRICED COMPUTE", "{target} served unpaid: {body}");
            }
        }
    }
    // Both outcomes occur: the generator makes plain re-encodings as well as attacks.
    assert!(
        refused > 50 && priced > 10,
        "refused {refused}, priced {priced}"
    );
}
