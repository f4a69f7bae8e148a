//! Unknown fields are errors in every table of the config, at every depth.
//!
//! A generated family, not hand-picked cases: every shipped config (the examples, the Kubernetes
//! base and overlays, and `examples/config/reference.toml`, which sets every table Tollgate
//! reads) is walked, and for each table and inline table in turn a misspelt key is inserted
//! into a fresh copy. `tollgate check` must exit 64 naming the key by its dotted path. Each
//! file itself must pass `check` first, so a refusal is the key's doing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The misspelt key put into each table.
const BOGUS: &str = "tollgate_bogus_key";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every config file the project ships.
fn shipped_configs() -> Vec<PathBuf> {
    let root = repo();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("examples/config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.push(root.join("k8s/base/tollgate.toml"));
    for overlay in std::fs::read_dir(root.join("k8s/overlays")).unwrap() {
        let p = overlay.unwrap().path().join("tollgate.toml");
        if p.exists() {
            files.push(p);
        }
    }
    files.sort();
    files
}

/// Tables whose keys are values of their own, not Tollgate's fields: inline JWKs follow RFC 7517,
/// which says members an implementation does not use are ignored.
fn is_foreign(path: &str) -> bool {
    let shape = shape(path);
    shape == "issuers[].keys[]"
}

/// Tables whose keys are names the operator picks (currency codes, header names, MCP tool names): a new key is
/// a new entry, refused here because `true` is not an entry's type.
fn is_name_keyed(path: &str) -> bool {
    path == "currencies"
        || path == "x402.facilitator_headers"
        || shape(path) == "routes[].mcp.tools"
}

/// `routes[2].price.meters[0]` -> `routes[].price.meters[]`.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks tables in document order; the `target`-th one (counting from 0) gets the bogus key, and
/// its dotted path is returned.
struct Insert {
    target: usize,
    seen: usize,
}

impl Insert {
    fn table(&mut self, t: &mut dyn TableLike, path: &str) -> Option<String> {
        if self.seen == self.target {
            t.insert(BOGUS, toml_edit::value(true));
            return Some(path.to_owned());
        }
        self.seen += 1;
        for (key, item) in t.iter_mut() {
            let p = join(path, key.get());
            if let Some(found) = self.item(item, &p) {
                return Some(found);
            }
        }
        None
    }

    fn item(&mut self, item: &mut Item, path: &str) -> Option<String> {
        match item {
            Item::Table(t) => self.table(t, path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter_mut().enumerate() {
                    if let Some(found) = self.table(t, &format!("{path}[{i}]")) {
                        return Some(found);
                    }
                }
                None
            }
            Item::Value(v) => self.value(v, path),
            Item::None => None,
        }
    }

    fn value(&mut self, v: &mut Value, path: &str) -> Option<String> {
        match v {
            Value::InlineTable(t) => self.table(t, path),
            Value::Array(a) => {
                for (i, v) in a.iter_mut().enumerate() {
                    if let Some(found) = self.value(v, &format!("{path}[{i}]")) {
                        return Some(found);
                    }
                }
                None
            }
            _ => None,
        }
    }
}

/// `tollgate check` on `text`: (exit code, stderr).
fn check(dir: &tempfile::TempDir, text: &str) -> (Option<i32>, String) {
    let p = dir.path().join("tollgate.toml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .arg("--config")
        .arg(&p)
        .env(
            "TOLLGATE_WEBHOOK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bogus_key_in_any_table_of_any_shipped_config_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut shapes = BTreeSet::new();
    let mut refused = 0;
    for file in shipped_configs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let (code, err) = check(&dir, &text);
        assert_eq!(
            code,
            Some(0),
            "{} must pass as shipped: {err}",
            file.display()
        );
        for target in 0.. {
            let mut doc: DocumentMut = text.parse().unwrap();
            let mut walk = Insert { target, seen: 0 };
            let Some(path) = walk.table(doc.as_table_mut(), "") else {
                break;
            };
            if is_foreign(&path) {
                continue;
            }
            let field = join(&path, BOGUS);
            let (code, err) = check(&dir, &doc.to_string());
            let at = format!("{} at {field}", file.display());
            assert_eq!(code, Some(64), "{at}: accepted\n{doc}");
            assert!(
                err.contains(&format!(": {field}: ")),
                "{at}: the error does not name the field: {err}"
            );
            let why = if is_name_keyed(&path) {
                "invalid type"
            } else {
                "unknown field"
            };
            assert!(err.contains(why), "{at}: {err}");
            shapes.insert(shape(&path));
            refused += 1;
        }
    }
    // Every kind of table the config has was among them (reference.toml holds each one).
    let expected = [
        "",
        "discovery",
        "receipts",
        "currencies",
        "currencies.USD",
        "issuers[]",
        "store",
        "agent",
        "admin",
        "upstream_tls",
        "x402",
        "routes[]",
        "routes[].price",
        "routes[].price.meters[]",
        "routes[].rate_limit",
        "routes[].x402[]",
        "routes[].mcp",
        "routes[].mcp.tools",
        "routes[].mcp.tools.search",
        "routes[].mcp.tools.search.price",
        "plans[]",
        "plans[].price",
        "plans[].units",
        "webhooks[]",
        "risk[]",
    ];
    let missing: Vec<_> = expected.iter().filter(|s| !shapes.contains(**s)).collect();
    assert!(missing.is_empty(), "never walked: {missing:?}");
    assert!(refused >= 70, "only {refused} tables walked");
}

/// The three typos of issue 14, inside `price = { ... }`: each named with its path and line.
#[test]
fn typos_inside_a_price_inline_table_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("examples/config/tollgate.toml")).unwrap();
    let fixed = "price = { amount = \"0.01\", currency = \"USD\" }";
    let metered = "price = { currency = \"USD\", reserve = \"0.01\", meters";
    assert!(text.contains(fixed) && text.contains(metered));
    let cases = [
        // `cutoff` misspelt on a metered price.
        (
            text.replace(metered, &metered.replace("meters", "cutof = true, meters")),
            "routes[2].price.cutof: unknown field `cutof`",
        ),
        // `on_missing` misspelt.
        (
            text.replace(
                metered,
                &metered.replace("meters", "on_mising = \"zero\", meters"),
            ),
            "routes[2].price.on_mising: unknown field `on_mising`",
        ),
        // `capture` belongs to the route, not inside its price.
        (
            text.replace(
                fixed,
                "price = { amount = \"0.01\", currency = \"USD\", capture = \"admission\" }",
            ),
            "routes[0].price.capture: unknown field `capture`",
        ),
        // A metered field on a fixed price is not silently dropped either.
        (
            text.replace(
                fixed,
                "price = { amount = \"0.01\", currency = \"USD\", cutoff = true }",
            ),
            "routes[0].price: `cutoff` belongs to a metered price",
        ),
    ];
    for (bad, expected) in cases {
        let (code, err) = check(&dir, &bad);
        assert_eq!(code, Some(64), "{expected}: {err}");
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(err.contains("(line "), "{expected}: no line: {err}");
    }
}
