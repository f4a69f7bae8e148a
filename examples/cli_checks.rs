//! The checks every example binary passes (included by each example's `tests/cli.rs`):
//! `--help` documents the flags and the fixed port and starts nothing; a port that is taken is
//! named in the error, with the flag that moves it.

use std::process::Command;

/// `--help` of `bin` (named `name`) prints its usage with `flag <ADDR>` and the fixed `port`.
pub(crate) fn help_documents_the_flags_and_starts_nothing(
    bin: &str,
    name: &str,
    flag: &str,
    port: u16,
) {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains(&format!("Usage: {name}")), "{help}");
    assert!(help.contains(&format!("{flag} <ADDR>")), "{help}");
    assert!(
        help.contains(&port.to_string()),
        "the fixed port is documented: {help}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bin flag <a taken address>` exits 1 naming the address and the flag.
pub(crate) fn a_taken_port_is_named(bin: &str, flag: &str) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(bin).args([flag, &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains(&format!("{flag} ADDR")), "{err}");
    assert!(!err.contains("Os {"), "{err}");
}
