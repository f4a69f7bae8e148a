//! What `tollgate check` says about the mistakes a newcomer makes first (issue 19): each message
//! names the field, what was expected, and what would be valid -- read from the binary's own
//! output, as the user reads it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const GOOD: &str = r#"
merchant = "m"
[currencies.USD]
scale = 6
[currencies.EUR]
scale = 2
[[issuers]]
id = "w"
keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid = "k" }]
[[routes]]
id = "paid"
path = "/v1"
upstream = "http://127.0.0.1:9"
price = { amount = "0.01", currency = "USD" }
"#;

/// `tollgate check` on this text: (exit code, stdout + stderr).
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Messages are shown after the file name; compare from the message on.
    let prefix = format!("{}: ", path.display());
    (out.status.code(), said.replace(&prefix, ""))
}

fn refused(text: &str) -> String {
    let (code, said) = check(text);
    assert_eq!(code, Some(64), "{said}");
    said.trim_end().to_owned()
}

#[test]
fn the_good_file_passes() {
    let (code, said) = check(GOOD);
    assert_eq!(code, Some(0), "{said}");
}

#[test]
fn an_amount_written_as_a_toml_number() {
    let said = refused(&GOOD.replace("amount = \"0.01\"", "amount = 0.01"));
    assert_eq!(
        said,
        "routes[0].price.amount: expected a decimal string such as \"0.01\", found the TOML \
         number 0.01: write it in quotes, \"0.01\" (amounts are strings, so they stay exact) \
         (line 14, column 20)"
    );
    // The same rule everywhere an amount is written.
    let metered = GOOD.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { currency = \"USD\", reserve = 1, meters = [{ unit = \"t\", usage = \"request_bytes\", price = \"0.1\" }] }",
    );
    assert!(refused(&metered).starts_with(
        "routes[0].price.reserve: expected a decimal string such as \"0.01\", found the TOML number 1: write it in quotes, \"1\""
    ));
    let topup = GOOD.replace("scale = 6\n", "scale = 6\ntopup_suggested = 5\n");
    assert!(
        refused(&topup).starts_with("currencies.USD.topup_suggested: expected a decimal string")
    );
}

#[test]
fn a_currency_that_is_not_configured_lists_the_configured_ones() {
    let said = refused(&GOOD.replace("currency = \"USD\"", "currency = \"GBP\""));
    assert_eq!(
        said,
        "routes[0].price.currency: \"GBP\" is not in [currencies] (configured: EUR, USD)"
    );
    let said = refused(&GOOD.replace("currency = \"USD\"", "currency = \"usd\""));
    assert_eq!(
        said,
        "routes[0].price.currency: \"usd\" is not in [currencies] (configured: EUR, USD); did \
         you mean \"USD\"? codes are case-sensitive"
    );
}

#[test]
fn currency_codes_are_upper_case() {
    let said = refused(&GOOD.replace("[currencies.EUR]", "[currencies.Eur]"));
    assert_eq!(
        said,
        "currencies.Eur: currency codes are upper case: write [currencies.EUR] (and currency = \
         \"EUR\" in prices)"
    );
    let said = refused(&GOOD.replace("[currencies.EUR]", "[currencies.\"E U R\"]"));
    assert_eq!(
        said,
        "currencies.E U R: a currency code is 1 to 32 upper-case letters, digits, '.', '_' or \
         '-', starting with a letter (e.g. USD, EUR, USDC)"
    );
}

#[test]
fn a_free_only_config_needs_no_currencies() {
    let free = "merchant = \"m\"\n[[routes]]\nid = \"free\"\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\nprice = \"free\"\n";
    let (code, said) = check(free);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("ok (1 routes, 0 issuers"), "{said}");
    // A priced route in such a file says what to add.
    let priced = free.replace(
        "price = \"free\"",
        "price = { amount = \"0.01\", currency = \"USD\" }",
    );
    assert_eq!(
        refused(&priced),
        "routes[0].price.currency: \"USD\" is not in [currencies], and no currency is \
         configured: add [currencies.USD] with its scale (e.g. scale = 6)"
    );
}

#[test]
fn a_missing_required_field_is_named() {
    assert_eq!(
        refused(&GOOD.replace("merchant = \"m\"\n", "")),
        "merchant: required: this merchant's id, e.g. merchant = \"my-api\" (the `aud` of every \
         receipt)"
    );
    let no_routes = GOOD.split("[[routes]]").next().unwrap();
    assert_eq!(
        refused(no_routes),
        "routes: required: at least one [[routes]] table (id, path, upstream, price)"
    );
    assert_eq!(
        refused(&GOOD.replace("upstream = \"http://127.0.0.1:9\"\n", "")),
        "routes[0].upstream: required, and missing"
    );
}
