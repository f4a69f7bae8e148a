//! `[discovery]`: what `GET /openapi.json` and `GET /llms.txt` say about the service (both
//! generated from the routes and prices in force), and the top-level `realm` of `Payment`
//! challenges.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Serve `/openapi.json` and `/llms.txt` (default `true`). Off: those paths go to the
    /// routes like any other path.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The service's name: OpenAPI `info.title` and the heading of `llms.txt` (default: the
    /// merchant id).
    pub title: Option<String>,
    /// A paragraph on what the service sells (OpenAPI `info.description`, the summary line of
    /// `llms.txt`).
    pub description: Option<String>,
    /// OpenAPI `info.version`: the version of the service's API (default `"1"`).
    pub version: Option<String>,
    /// `x-service-info.categories`, e.g. `["ai", "compute"]`.
    #[serde(default)]
    pub categories: Vec<String>,
    /// The service's homepage or documentation (`x-service-info.docs.homepage`).
    pub homepage: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: true,
            title: None,
            description: None,
            version: None,
            categories: Vec::new(),
            homepage: None,
        }
    }
}

/// Printable text without control characters (it goes into JSON, Markdown and headers).
fn plain(field: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    if v.trim().is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be 1 to {max} characters, without control characters"),
        ));
    }
    Ok(())
}

impl DiscoveryConfig {
    /// Check every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = &self.title {
            plain("discovery.title", t, 120)?;
        }
        if let Some(d) = &self.description {
            // A paragraph: newlines are fine, other control characters are not.
            let flat = d.replace(['\n', '\r'], " ");
            plain("discovery.description", &flat, 2000)?;
        }
        if let Some(v) = &self.version {
            plain("discovery.version", v, 64)?;
        }
        for (i, c) in self.categories.iter().enumerate() {
            let field = format!("discovery.categories[{i}]");
            if c.is_empty()
                || c.len() > 64
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(
                    field,
                    format!("{c:?}: must be 1 to 64 of a-z 0-9 - (e.g. \"ai\", \"compute\")"),
                ));
            }
        }
        if let Some(h) = &self.homepage {
            if !(h.starts_with("https://") || h.starts_with("http://"))
                || h.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "discovery.homepage",
                    format!("{h:?}: must be an http:// or https:// URL"),
                ));
            }
        }
        Ok(())
    }
}

/// The top-level `realm`: a host name or domain (what a wallet compares with the host it
/// called), 1 to 255 characters of letters, digits, `.`, `-`, `:`, `[` and `]`.
pub(super) fn validate_realm(realm: &str) -> Result<(), ConfigError> {
    let ok = !realm.is_empty()
        && realm.len() <= 255
        && realm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "realm",
            format!(
                "{realm:?}: must be the public host name or domain, e.g. \"api.example.com\" \
                 (letters, digits, . - : [ ]; default: the host of public_url or of each request)"
            ),
        ))
    }
}
