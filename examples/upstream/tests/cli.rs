//! The `example-upstream` binary: `--help` documents the flags and starts nothing; a port that is taken
//! is named in the error, with the flag that moves it (checks shared by every example).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../cli_checks.rs"]
mod cli_checks;

const BIN: &str = env!("CARGO_BIN_EXE_example-upstream");

#[test]
fn help_documents_the_flags_and_starts_nothing() {
    cli_checks::help_documents_the_flags_and_starts_nothing(
        BIN,
        "example-upstream",
        "--listen",
        9000,
    );
}

#[test]
fn a_taken_port_is_named() {
    cli_checks::a_taken_port_is_named(BIN, "--listen");
}
