//! The `example-wallet` binary: `--help` documents the flags and starts nothing; a port that is taken
//! is named in the error, with the flag that moves it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_example-wallet"))
}

#[test]
fn help_documents_the_flags_and_starts_nothing() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: example-wallet"), "{help}");
    assert!(help.contains("--listen <ADDR>"), "{help}");
    assert!(
        help.contains("7402"),
        "the fixed port is documented: {help}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin().args(["--listen", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--listen ADDR"), "{err}");
    assert!(!err.contains("Os {"), "{err}");
}
