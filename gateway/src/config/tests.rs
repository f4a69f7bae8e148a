//! Unit tests of parsing and validation.

use super::*;
use tollgate_middleware::x402::SettlementMode;

const GOOD: &str = r#"
merchant = "m"
[currencies.USD]
scale = 6
[[issuers]]
id = "w"
keys = [{ kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", kid = "k" }]
[[routes]]
id = "paid"
path = "/v1/paid"
upstream = "http://127.0.0.1:9"
price = { amount = "0.01", currency = "USD" }
[[routes]]
id = "free"
path = "/"
upstream = "http://127.0.0.1:9"
price = "free"
"#;

fn err(toml: &str) -> String {
    match Config::from_str(toml).and_then(|c| c.validate(Path::new("."))) {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn accepts_a_good_file() {
    let c = Config::from_str(GOOD).unwrap();
    let v = c.validate(Path::new(".")).unwrap();
    assert_eq!(v.routes.len(), 2);
    assert_eq!(c.listen.port(), 8402);
}

#[test]
fn names_the_bad_field() {
    assert!(err(&GOOD.replace("\"0.01\"", "\"0.0000001\"")).starts_with("routes[0].price.amount"));
    assert!(err(&GOOD.replace("\"0.01\"", "\"-1\"")).starts_with("routes[0].price.amount"));
    assert!(err(&GOOD.replace("\"0.01\"", "\"0\"")).starts_with("routes[0].price.amount"));
    assert!(
        err(&GOOD.replace("currency = \"USD\"", "currency = \"EUR\""))
            .starts_with("routes[0].price.currency")
    );
    assert!(
        err(&GOOD.replace("http://127.0.0.1:9\"\nprice = {", "ftp://x\"\nprice = {"))
            .starts_with("routes[0].upstream")
    );
    assert!(err(&GOOD.replace("id = \"free\"", "id = \"paid\"")).starts_with("routes[1].id"));
    assert!(err(&GOOD.replace("scale = 6", "scale = 40")).starts_with("currencies.USD"));
    assert!(err(&GOOD.replace("x = \"11q", "x = \"!!")).starts_with("issuers[0].keys[0]"));
    assert!(err(&format!("{GOOD}\n[store]\nkind = \"redis\"\n")).starts_with("store.url"));
    assert!(
        err(&GOOD.replace("merchant = \"m\"", "merchant = \"m\"\nnetwork = \"Bad\""))
            .starts_with("network")
    );
    // Unknown fields are typos, not silently ignored.
    assert!(err(&GOOD.replace("scale = 6", "scale = 6\nscael = 2")).contains("unknown field"));
}

/// GOOD with an x402 offer on the paid route (`extra` goes into the offer table).
fn with_x402(top: &str, route: &str, extra: &str) -> String {
    let offer = format!(
        "x402_settlement = \"before\"\n{route}\n[[routes.x402]]\nnetwork = \"eip155:84532\"\nasset = \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\"\nname = \"USDC\"\nversion = \"2\"\npay_to = \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\"\namount = \"10000\"\n{extra}\n"
    );
    GOOD.replace("merchant = \"m\"", &format!("merchant = \"m\"\n{top}"))
        .replace(
            "price = { amount = \"0.01\", currency = \"USD\" }\n",
            &format!("price = {{ amount = \"0.01\", currency = \"USD\" }}\n{offer}"),
        )
}

const FACILITATOR: &str = "[x402]\nfacilitator_url = \"http://127.0.0.1:9\"";

#[test]
fn x402_offers() {
    let toml = with_x402(FACILITATOR, "", "");
    let v = Config::from_str(&toml)
        .unwrap()
        .validate(Path::new("."))
        .unwrap();
    let x = v.routes[0].x402.as_ref().unwrap();
    assert_eq!(x.offers.len(), 1);
    assert_eq!(x.offers[0].amount, 10000);
    assert_eq!(x.offers[0].chain_id, 84532);
    assert_eq!(x.offers[0].currency.code(), "USDC");
    assert_eq!(x.mode, SettlementMode::Before);
    assert!(v.x402_facilitator.is_some());
    assert!(v.routes[1].x402.is_none());
    // Each mistake names its field.
    assert!(err(&with_x402("", "", "")).starts_with("x402.facilitator_url"));
    assert!(
        err(&with_x402(FACILITATOR, "", "decimals = 40")).starts_with("routes[0].x402[0].currency")
    );
    assert!(
        err(&with_x402(FACILITATOR, "", "").replace("\"10000\"", "\"1.5\""))
            .starts_with("routes[0].x402[0].amount")
    );
    assert!(
        err(&with_x402(FACILITATOR, "", "").replace("eip155:84532", "eip155:"))
            .starts_with("routes[0].x402[0].network")
    );
    assert!(
        err(&with_x402(FACILITATOR, "", "").replace("0x209693Bc", "0x209693bC"))
            .starts_with("routes[0].x402[0].pay_to")
    );
    assert!(err(&with_x402(FACILITATOR, "", "").replace(
        "x402_settlement = \"before\"",
        "x402_settlement = \"later\""
    ))
    .starts_with("routes[0].x402_settlement"));
    assert!(err(&with_x402(FACILITATOR, "", "colour = 1")).contains("unknown field"));
    assert!(
        err(&with_x402("[x402]\nfacilitator_url = \"ftp://x\"", "", ""))
            .starts_with("x402.facilitator_url")
    );
    assert!(err(&with_x402(
        "[x402]\nfacilitator_url = \"http://x\"\nfacilitator_headers = { Authorization = \"TOLLGATE_TEST_UNSET_VAR_0\" }",
        "",
        ""
    ))
    .starts_with("x402.facilitator_headers.Authorization"));
    // A metered route's offers are upto: an exact amount is refused.
    let metered = with_x402(FACILITATOR, "", "").replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { currency = \"USD\", reserve = \"0.01\", meters = [{ unit = \"b\", usage = \"response_bytes\", price = \"0.000001\" }] }",
    );
    assert!(err(&metered).starts_with("routes[0].x402[0].amount"));
    // x402_settlement alone is a mistake.
    assert!(err(&GOOD.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }\n",
        "price = { amount = \"0.01\", currency = \"USD\" }\nx402_settlement = \"after\"\n"
    ))
    .starts_with("routes[0].x402_settlement"));
}

/// GOOD with a metered paid route carrying an x402 offer (`upto`), `extra` in the offer.
fn with_upto(mode: &str, extra: &str) -> String {
    with_x402(FACILITATOR, "", &format!("facilitator_address = \"0x1111111111111111111111111111111111111111\"\n{extra}"))
        .replace("amount = \"10000\"\n", "")
        .replace("x402_settlement = \"before\"", &format!("x402_settlement = \"{mode}\""))
        .replace(
            "price = { amount = \"0.01\", currency = \"USD\" }",
            "price = { currency = \"USD\", reserve = \"0.05\", meters = [{ unit = \"t\", usage = \"json:/t\", price = \"0.0001\" }] }",
        )
}

#[test]
fn x402_upto_offers() {
    let v = Config::from_str(&with_upto("before", ""))
        .unwrap()
        .validate(Path::new("."))
        .unwrap();
    let x = v.routes[0].x402.as_ref().unwrap();
    assert!(x.offers.is_empty());
    assert_eq!(x.upto.len(), 1);
    // The maximum defaults to the reserve (0.05 USD = 50000 atomic units).
    assert_eq!(x.upto[0].max, 50_000);
    assert_eq!(x.upto[0].chain_id, 84532);
    assert_eq!(
        format!("{:#x}", x.upto[0].facilitator),
        "0x1111111111111111111111111111111111111111"
    );
    let v = Config::from_str(&with_upto("deferred", "max = \"20000\""))
        .unwrap()
        .validate(Path::new("."))
        .unwrap();
    let x = v.routes[0].x402.as_ref().unwrap();
    assert_eq!((x.upto[0].max, x.mode), (20_000, SettlementMode::Deferred));
    // Each mistake names its field.
    assert!(err(&with_upto("after", "")).starts_with("routes[0].x402_settlement"));
    assert!(err(&with_upto("before", "max = \"0\"")).starts_with("routes[0].x402[0].max"));
    assert!(err(&with_upto("before", "max = \"1.5\"")).starts_with("routes[0].x402[0].max"));
    assert!(err(&with_upto("before", "decimals = 18")).starts_with("routes[0].x402[0].decimals"));
    assert!(
        err(&with_upto("before", "").replace("facilitator_address", "# "))
            .starts_with("routes[0].x402[0].facilitator_address")
    );
    assert!(err(
        &with_upto("before", "").replace("0x1111111111111111111111111111111111111111", "0x12")
    )
    .starts_with("routes[0].x402[0].facilitator_address"));
    // max and facilitator_address belong to metered routes.
    assert!(err(&with_x402(FACILITATOR, "", "max = \"5\"")).starts_with("routes[0].x402[0].max"));
    assert!(err(&with_x402(
        FACILITATOR,
        "",
        "facilitator_address = \"0x1111111111111111111111111111111111111111\""
    ))
    .starts_with("routes[0].x402[0].facilitator_address"));
}

#[test]
fn capture_at_admission_needs_a_fixed_price() {
    let fixed = "price = { amount = \"0.01\", currency = \"USD\" }\n";
    let with = |line: &str| GOOD.replace(fixed, &format!("{fixed}{line}\n"));
    assert_eq!(err(&with("capture = \"admission\"")), "ok");
    assert_eq!(err(&with("capture = \"response\"")), "ok");
    assert!(err(&with("capture = \"later\"")).starts_with("routes[0].capture"));
    let metered = with("capture = \"admission\"").replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { currency = \"USD\", reserve = \"0.01\", meters = [{ unit = \"b\", usage = \"response_bytes\", price = \"0.000001\" }] }",
    );
    assert!(err(&metered).starts_with("routes[0].capture"));
}

#[test]
fn unknown_fields_are_named_by_their_path_and_line() {
    let price = "price = { amount = \"0.01\", currency = \"USD\" }";
    let with = |inner: &str| GOOD.replace(price, &price.replace(" }", &format!(", {inner} }}")));
    assert_eq!(
        err(&with("capture = \"admission\"")),
        "routes[0].price.capture: unknown field `capture`, expected one of `amount`, `currency`, \
         `reserve`, `meters`, `on_missing`, `cutoff`, `on_exhausted`, `pause_timeout_secs` (line \
         12, column 46)"
    );
    assert_eq!(
        err(&with("cutoff = true")),
        "routes[0].price: `cutoff` belongs to a metered price; a fixed price is { amount, \
         currency } (line 12, column 9)"
    );
    assert!(
        err(&GOOD.replace("merchant = \"m\"", "merchant = \"m\"\nmerchnt = 1"))
            .starts_with("merchnt: unknown field `merchnt`")
    );
    assert!(err(&GOOD.replace("scale = 6", "scale = 6\nscael = 2"))
        .starts_with("currencies.USD.scael: unknown field"));
    let meter = "meters = [{ unit = \"b\", usage = \"response_bytes\", price = \"1\", per = 2 }]";
    assert!(err(&with("reserve = \"1\""))
        .starts_with("routes[0].price: `reserve` belongs to a metered price"));
    let metered = GOOD.replace(
        price,
        &format!("price = {{ currency = \"USD\", reserve = \"1\", {meter} }}"),
    );
    assert!(err(&metered).starts_with("routes[0].price.meters[0].per: unknown field `per`"));
    assert!(err(&GOOD.replace(price, "price = { currency = \"USD\" }"))
        .starts_with("routes[0].price: missing field `reserve`"));
    // Wrong types name their field too; broken syntax keeps toml's own report.
    assert!(err(&GOOD.replace("scale = 6", "scale = \"6\"")).starts_with("currencies.USD.scale:"));
    assert!(err(&GOOD.replace("scale = 6", "scale = ")).starts_with("invalid TOML: "));
}

#[test]
fn the_sqlite_store_is_the_default_and_its_path_is_checked() {
    let c = Config::from_str(GOOD).unwrap();
    assert_eq!(c.store.kind, StoreKind::Sqlite);
    assert_eq!(c.store.path, "tollgate.db");
    assert_eq!(c.store.synchronous, SyncMode::Full);
    let store = |lines: &str| err(&format!("{GOOD}\n[store]\n{lines}\n"));
    let missing = store("path = \"/no/such/dir/tollgate.db\"");
    assert!(missing.starts_with("store.path"), "{missing}");
    assert!(missing.contains("/no/such/dir does not exist"), "{missing}");
    let dir = store("path = \"/tmp\"");
    assert!(dir.starts_with("store.path"), "{dir}");
    assert!(dir.contains("is a directory"), "{dir}");
    assert!(store("path = \"\"").starts_with("store.path"));
    assert_eq!(store("path = \":memory:\""), "ok");
    assert_eq!(store("synchronous = \"normal\""), "ok");
    assert!(store("synchronous = \"off\"").contains("synchronous"));
}

#[test]
fn a_relative_sqlite_path_is_the_config_files_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, format!("{GOOD}\n[store]\npath = \"money.db\"\n")).unwrap();
    let cfg = Config::load(&path).unwrap().config;
    assert_eq!(
        Path::new(&cfg.store.path),
        dir.path().join("money.db").as_path()
    );
    assert!(cfg.store.describe().starts_with("sqlite "));
    std::fs::write(&path, format!("{GOOD}\n[store]\npath = \":memory:\"\n")).unwrap();
    assert_eq!(Config::load(&path).unwrap().config.store.path, ":memory:");
}

/// A metered SSE route's price with `extra` fields (e.g. `cutoff = true`).
fn streamed(meters: &str, extra: &str) -> String {
    GOOD.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        &format!(
            "price = {{ currency = \"USD\", reserve = \"0.01\", meters = [{meters}]{extra} }}"
        ),
    )
}

const BYTES: &str = "{ unit = \"b\", usage = \"response_bytes\", price = \"0.000001\" }";

#[test]
fn a_paused_stream_is_configured_on_a_streamed_metered_price() {
    let price = |c: &Config| match &c.validate(Path::new(".")).unwrap().routes[0].price {
        tollgate_middleware::Price::Metered(m) => m.on_exhausted,
        other => panic!("{other:?}"),
    };
    let c = Config::from_str(&streamed(BYTES, ", cutoff = true")).unwrap();
    assert_eq!(price(&c), tollgate_middleware::OnExhausted::Cut);
    let c = Config::from_str(&streamed(BYTES, ", cutoff = true, on_exhausted = \"cut\"")).unwrap();
    assert_eq!(price(&c), tollgate_middleware::OnExhausted::Cut);
    let pause = |secs: u64| tollgate_middleware::OnExhausted::Pause {
        timeout: std::time::Duration::from_secs(secs),
    };
    let c = Config::from_str(&streamed(
        BYTES,
        ", cutoff = true, on_exhausted = \"pause\"",
    ))
    .unwrap();
    assert_eq!(price(&c), pause(30));
    let sse = "{ unit = \"t\", usage = \"sse:/usage/total_tokens\", price = \"0.000001\" }";
    let extra = ", cutoff = true, on_exhausted = \"pause\", pause_timeout_secs = 600";
    let c = Config::from_str(&streamed(sse, extra)).unwrap();
    assert_eq!(price(&c), pause(600));
}

#[test]
fn a_paused_stream_s_config_errors_name_the_field() {
    let pause = ", cutoff = true, on_exhausted = \"pause\"";
    let cases = [
        (
            streamed(BYTES, ", cutoff = true, on_exhausted = \"wait\""),
            "routes[0].price.on_exhausted: \"wait\": use \"cut\" or \"pause\"",
        ),
        (
            streamed(BYTES, ", on_exhausted = \"pause\""),
            "routes[0].price.on_exhausted: \"pause\" acts where a stream would be cut off: set \
             cutoff = true",
        ),
        (
            streamed(BYTES, ", cutoff = false, on_exhausted = \"pause\""),
            "routes[0].price.on_exhausted: \"pause\" acts where a stream would be cut off: set \
             cutoff = true",
        ),
        (
            streamed(
                "{ unit = \"ms\", usage = \"duration_ms\", price = \"0.000001\" }",
                pause,
            ),
            "routes[0].price.on_exhausted: \"pause\" cannot be used with a duration_ms meter \
             (the pause would be charged)",
        ),
        (
            streamed(
                &format!("{BYTES}, {{ unit = \"ms\", usage = \"duration_ms\", price = \"1\" }}"),
                pause,
            ),
            "routes[0].price.on_exhausted: \"pause\" cannot be used with a duration_ms meter \
             (the pause would be charged)",
        ),
        (
            streamed(
                "{ unit = \"t\", usage = \"json:/usage/total_tokens\", price = \"0.000001\" }",
                pause,
            ),
            "routes[0].price.on_exhausted: \"pause\" needs a meter read as the body streams \
             (response_bytes or sse:...)",
        ),
        (
            streamed(BYTES, &format!("{pause}, pause_timeout_secs = 0")),
            "routes[0].price.pause_timeout_secs: 0: use 1 to 600 seconds",
        ),
        (
            streamed(BYTES, &format!("{pause}, pause_timeout_secs = 601")),
            "routes[0].price.pause_timeout_secs: 601: use 1 to 600 seconds",
        ),
        (
            streamed(BYTES, ", cutoff = true, pause_timeout_secs = 5"),
            "routes[0].price.pause_timeout_secs: only a paused stream waits: set on_exhausted = \
             \"pause\"",
        ),
    ];
    for (toml, expected) in cases {
        assert_eq!(err(&toml), expected, "{toml}");
    }
    // Wrong types and places: the field named by the parser.
    let bad_type = err(&streamed(
        BYTES,
        &format!("{pause}, pause_timeout_secs = \"30\""),
    ));
    assert!(
        bad_type.starts_with("routes[0].price.pause_timeout_secs: invalid type"),
        "{bad_type}"
    );
    let negative = err(&streamed(
        BYTES,
        &format!("{pause}, pause_timeout_secs = -1"),
    ));
    assert!(
        negative.starts_with("routes[0].price.pause_timeout_secs: invalid value"),
        "{negative}"
    );
    let fixed = GOOD.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { amount = \"0.01\", currency = \"USD\", on_exhausted = \"pause\" }",
    );
    assert!(
        err(&fixed).starts_with(
            "routes[0].price: `on_exhausted` belongs to a metered price; a fixed price is"
        ),
        "{}",
        err(&fixed)
    );
    let fixed = GOOD.replace(
        "price = { amount = \"0.01\", currency = \"USD\" }",
        "price = { amount = \"0.01\", currency = \"USD\", pause_timeout_secs = 5 }",
    );
    assert!(err(&fixed).starts_with("routes[0].price: `pause_timeout_secs` belongs to a metered"));
}
