//! `[[webhooks]]`: signed event deliveries (see docs/webhooks.md). The signing secret never
//! lives in the file: `secret_env` names the environment variable that holds it
//! (`whsec_<base64>`, the Standard Webhooks format).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use tollgate_middleware::money::{Amount, Currency};
use tollgate_middleware::webhooks::{sign, Endpoint, EventKind};

use super::{invalid, within, ConfigError, CurrencyConfig};

/// `[[webhooks]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint's id: its delivery positions are kept under it, so renaming it starts it
    /// afresh.
    pub id: String,
    /// Where deliveries are POSTed (`https://`, or `http://` for a receiver on the same host
    /// or network).
    pub url: String,
    /// The event types it is sent.
    pub events: Vec<String>,
    /// The environment variable holding its secret (`whsec_<base64>`).
    pub secret_env: String,
    /// One attempt's time bound (milliseconds).
    #[serde(default = "super::n64::<5_000>")]
    pub timeout_ms: u64,
    /// Attempts before a message is kept as failed (replayable through the admin API).
    #[serde(default = "super::n32::<8>")]
    pub max_attempts: u32,
    /// The first retry's delay (milliseconds); each next one doubles.
    #[serde(default = "super::n64::<5_000>")]
    pub backoff_ms: u64,
    /// The longest delay between two attempts (milliseconds).
    #[serde(default = "super::n64::<3_600_000>")]
    pub backoff_max_ms: u64,
}

/// `balance.low` thresholds per currency code: the currency and atomic units.
pub(super) type Thresholds = BTreeMap<String, (Currency, u64)>;

/// Every `[[webhooks]]` endpoint, checked, with its secret read; and the `balance_low`
/// thresholds of `[currencies]`.
pub(super) fn validate_webhooks(
    hooks: &[WebhookConfig],
    currencies: &BTreeMap<String, CurrencyConfig>,
    parsed: &BTreeMap<String, Currency>,
) -> Result<(Vec<Endpoint>, Thresholds), ConfigError> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for (i, h) in hooks.iter().enumerate() {
        let f = |name: &str| format!("webhooks[{i}].{name}");
        let id_ok = !h.id.is_empty()
            && h.id.len() <= 64
            && h.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(invalid(
                f("id"),
                "1 to 64 letters, digits, '-', '_' or '.' (e.g. \"billing\")",
            ));
        }
        if !ids.insert(h.id.clone()) {
            return Err(invalid(f("id"), format!("{:?} is used twice", h.id)));
        }
        check_url(&h.url).map_err(|m| invalid(f("url"), m))?;
        if h.events.is_empty() {
            return Err(invalid(f("events"), "name at least one event type"));
        }
        let mut events = BTreeSet::new();
        for (j, name) in h.events.iter().enumerate() {
            let field = format!("webhooks[{i}].events[{j}]");
            match EventKind::parse(name) {
                Some(k) => {
                    events.insert(k);
                }
                None => {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
                    return Err(invalid(
                        field,
                        format!("unknown event type {name:?}; known: {}", known.join(", ")),
                    ));
                }
            }
        }
        let secret = std::env::var(&h.secret_env).map_err(|_| {
            invalid(
                f("secret_env"),
                format!(
                    "the environment variable {} is not set: set it to the endpoint's secret, \
                     whsec_ and the base64 of 32 random bytes (e.g. whsec_$(openssl rand -base64 32))",
                    h.secret_env
                ),
            )
        })?;
        let key = sign::parse_secret(&secret)
            .map_err(|e| invalid(f("secret_env"), format!("{}: {e}", h.secret_env)))?;
        within(f("timeout_ms"), h.timeout_ms, 100, 60_000)?;
        within(f("max_attempts"), h.max_attempts, 1, 100)?;
        within(f("backoff_ms"), h.backoff_ms, 10, 86_400_000)?;
        within(
            f("backoff_max_ms"),
            h.backoff_max_ms,
            h.backoff_ms,
            7 * 86_400_000,
        )?;
        out.push(Endpoint {
            id: h.id.clone(),
            url: h.url.clone(),
            events,
            key,
            timeout: Duration::from_millis(h.timeout_ms),
            max_attempts: h.max_attempts,
            backoff: Duration::from_millis(h.backoff_ms),
            backoff_max: Duration::from_millis(h.backoff_max_ms),
        });
    }
    let mut thresholds = BTreeMap::new();
    for (code, c) in currencies {
        let (Some(t), Some(cur)) = (&c.balance_low, parsed.get(code)) else {
            continue;
        };
        let field = format!("currencies.{code}.balance_low");
        let a: Amount = t.parse().map_err(|e| invalid(&field, format!("{e}")))?;
        let minor = cur
            .to_minor(a)
            .map_err(|e| invalid(&field, e.to_string()))?;
        if minor == 0 {
            return Err(invalid(field, "must be greater than zero"));
        }
        thresholds.insert(code.clone(), (cur.clone(), minor));
    }
    Ok((out, thresholds))
}

/// An absolute http(s) URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with https:// (or http://), e.g. https://hooks.example.com/tollgate")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || host.contains(char::is_whitespace) {
        return Err("names no host (or holds credentials): https://host[:port]/path".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SECRET_ENV: &str = "TOLLGATE_CONFIG_TEST_WEBHOOK_SECRET";

    fn check(hook: &str) -> Result<(), String> {
        std::env::set_var(SECRET_ENV, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        std::env::set_var("TOLLGATE_CONFIG_TEST_SHORT_SECRET", "whsec_c2hvcnQ=");
        let text = format!(
            "merchant = \"m\"\n[currencies.USD]\nscale = 6\nbalance_low = \"0.5\"\n\
             [[routes]]\nid = \"f\"\npath = \"/f\"\nupstream = \"http://127.0.0.1:9\"\n\
             price = \"free\"\n[[webhooks]]\n{hook}"
        );
        let cfg = Config::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate(std::path::Path::new("."))
            .map(|v| {
                assert_eq!(v.thresholds["USD"].1, 500_000);
            })
            .map_err(|e| e.to_string())
    }

    /// Every bad field is named, with what would be valid.
    #[test]
    fn bad_webhooks_are_named() {
        let ok = format!(
            "id = \"ops\"\nurl = \"https://hooks.example.com/t\"\nevents = [\"balance.low\"]\nsecret_env = \"{SECRET_ENV}\"\n"
        );
        check(&ok).unwrap();
        let with = |from: &str, to: &str| ok.replace(from, to);
        for (hook, field, says) in [
            (
                with("balance.low", "balance.lo"),
                "webhooks[0].events[0]",
                "unknown event type \"balance.lo\"; known: balance.low",
            ),
            (
                with("[\"balance.low\"]", "[]"),
                "webhooks[0].events",
                "at least one",
            ),
            (
                with("https://hooks.example.com/t", "ftp://x"),
                "webhooks[0].url",
                "must start with https://",
            ),
            (
                with("https://hooks.example.com/t", "https:///t"),
                "webhooks[0].url",
                "names no host",
            ),
            (
                with(SECRET_ENV, "TOLLGATE_CONFIG_TEST_UNSET"),
                "webhooks[0].secret_env",
                "is not set",
            ),
            (
                with(SECRET_ENV, "TOLLGATE_CONFIG_TEST_SHORT_SECRET"),
                "webhooks[0].secret_env",
                "at least 16 bytes",
            ),
            (
                with("id = \"ops\"", "id = \"a b\""),
                "webhooks[0].id",
                "letters, digits",
            ),
            (
                format!("{ok}max_attempts = 0\n"),
                "webhooks[0].max_attempts",
                "must be 1 to 100",
            ),
        ] {
            let err = check(&hook).unwrap_err();
            assert!(err.contains(field) && err.contains(says), "{hook}: {err}");
        }
        let twice = format!("{ok}[[webhooks]]\n{ok}");
        let err = check(&twice).unwrap_err();
        assert!(
            err.contains("webhooks[1].id") && err.contains("used twice"),
            "{err}"
        );
    }
}
