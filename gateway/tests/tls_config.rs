//! `tollgate check` and `tollgate run` refuse the same unusable TLS settings with the same
//! message (the field, the path, why) and exit 64, `run` before binding any socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// (exit code, stderr) of `tollgate <command> --config <file>`.
fn tollgate(command: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([command, "--config"])
        .arg(config)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_and_run_refuse_the_same_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not PEM at all\n").unwrap();
    let route = |upstream: &str| {
        format!(
            "[[routes]]\nid = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nprice = \"free\"\n"
        )
    };
    let cases = [
        (
            format!(
                "[upstream_tls]\nca_file = \"missing-ca.pem\"\n{}",
                route("https://api.example.com")
            ),
            "upstream_tls.ca_file: cannot read ",
            "missing-ca.pem",
        ),
        (
            route("https://api.example.com") + "upstream_ca_file = \"junk.pem\"\n",
            "routes[0].upstream_ca_file: ",
            "junk.pem: no certificate",
        ),
        (
            format!(
                "[tls]\ncert_file = \"junk.pem\"\nkey_file = \"junk.pem\"\n{}",
                route("http://127.0.0.1:9")
            ),
            "tls.cert_file: ",
            "junk.pem: no certificate",
        ),
        (
            route("https://bad-.example"),
            "routes[0].upstream: ",
            "not a name a TLS certificate can carry",
        ),
    ];
    let config = dir.path().join("tollgate.toml");
    for (body, field, why) in cases {
        std::fs::write(
            &config,
            format!("merchant = \"m\"\nlisten = \"127.0.0.1:0\"\n{body}"),
        )
        .unwrap();
        let (code, checked) = tollgate("check", &config);
        assert_eq!(code, Some(64), "{checked}");
        assert!(
            checked.contains(&format!(": {field}")) && checked.contains(why),
            "{checked}"
        );
        let (code, ran) = tollgate("run", &config);
        assert_eq!(code, Some(64), "{ran}");
        assert_eq!(ran, checked);
    }
}
