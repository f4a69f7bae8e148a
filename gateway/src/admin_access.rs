//! Whether the admin API is served: `[admin] listen` (in the file) and `TOLLGATE_ADMIN_TOKEN`
//! (in the environment) decide it together, here, once -- `tollgate check` and `tollgate run`
//! both call [`AdminAccess::from_env`], so they cannot disagree.
//!
//! The rule (issue 19): the token *adds* the admin API. `[admin] listen` without a token serves
//! the public listener as usual, without the admin listener, and says so loudly (a warning at
//! start, the same one from `check`): nothing is exposed unprotected, and a missing operations
//! secret does not take the paid API down. With `listen` set, a token that is set but too short is
//! a mistake, not a choice: exit 64, before any port is bound.

use std::net::SocketAddr;

use crate::admin::ADMIN_TOKEN_ENV;
use crate::config::ConfigError;

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin API's state at start-up.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminAccess {
    /// `[admin] listen` is not set: no admin API.
    Off,
    /// `[admin] listen` is set but `TOLLGATE_ADMIN_TOKEN` is not (or empty): no admin listener,
    /// and a warning.
    NoToken(SocketAddr),
    /// Served on this address, behind this bearer token.
    On(SocketAddr, String),
}

// Never print the token (it would reach the logs).
impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAccess::Off => f.write_str("Off"),
            AdminAccess::NoToken(a) => f.debug_tuple("NoToken").field(a).finish(),
            AdminAccess::On(a, _) => f.debug_tuple("On").field(a).field(&"<token>").finish(),
        }
    }
}

impl AdminAccess {
    /// Decide from the listener address and the token's value (`None`: unset).
    pub fn resolve(listen: Option<SocketAddr>, token: Option<String>) -> Result<Self, ConfigError> {
        let token = token.filter(|t| !t.is_empty());
        match (listen, token) {
            (None, _) => Ok(AdminAccess::Off),
            (Some(_), Some(t)) if t.chars().count() < MIN_ADMIN_TOKEN_LEN => {
                Err(ConfigError::Invalid {
                    field: ADMIN_TOKEN_ENV.into(),
                    message: format!(
                    "must be at least {MIN_ADMIN_TOKEN_LEN} characters (it has {}); make one with \
                     `openssl rand -hex 24`, or unset it to run without the admin API",
                    t.chars().count()
                ),
                })
            }
            (Some(addr), None) => Ok(AdminAccess::NoToken(addr)),
            (Some(addr), Some(t)) => Ok(AdminAccess::On(addr, t)),
        }
    }

    /// Decide from `[admin] listen` and the `TOLLGATE_ADMIN_TOKEN` environment variable.
    pub fn from_env(listen: Option<SocketAddr>) -> Result<Self, ConfigError> {
        Self::resolve(listen, std::env::var(ADMIN_TOKEN_ENV).ok())
    }

    /// The warning to print when the file asks for an admin listener that will not be served.
    pub fn warning(&self) -> Option<String> {
        match self {
            AdminAccess::NoToken(addr) => Some(format!(
                "[admin] listen = \"{addr}\" is set but {ADMIN_TOKEN_ENV} is not: the admin API \
                 (dashboard, /metrics, payer management) is OFF; set {ADMIN_TOKEN_ENV} \
                 ({MIN_ADMIN_TOKEN_LEN}+ characters) to serve it on {addr}"
            )),
            _ => None,
        }
    }

    /// One line for `tollgate check`.
    pub fn summary(&self) -> String {
        match self {
            AdminAccess::Off => "admin API off".into(),
            AdminAccess::NoToken(addr) => format!("admin API off: no {ADMIN_TOKEN_ENV} for {addr}"),
            AdminAccess::On(addr, _) => format!("admin API on {addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_token_adds_the_admin_api() {
        let addr: SocketAddr = "127.0.0.1:8403".parse().unwrap();
        let long = || Some("0123456789abcdef".to_owned());
        assert_eq!(AdminAccess::resolve(None, None).unwrap(), AdminAccess::Off);
        assert_eq!(
            AdminAccess::resolve(None, long()).unwrap(),
            AdminAccess::Off
        );
        let none = AdminAccess::resolve(Some(addr), None).unwrap();
        assert_eq!(none, AdminAccess::NoToken(addr));
        assert!(none
            .warning()
            .unwrap()
            .contains("TOLLGATE_ADMIN_TOKEN is not"));
        assert_eq!(
            AdminAccess::resolve(Some(addr), Some(String::new())).unwrap(),
            AdminAccess::NoToken(addr)
        );
        let on = AdminAccess::resolve(Some(addr), long()).unwrap();
        assert!(on.warning().is_none());
        assert!(!format!("{on:?}").contains("0123456789abcdef"));
        let short = AdminAccess::resolve(Some(addr), Some("short".into())).unwrap_err();
        assert!(short
            .to_string()
            .starts_with("TOLLGATE_ADMIN_TOKEN: must be at least 16 characters (it has 5)"));
        // Without a listener the token is not used, whatever it is.
        assert_eq!(
            AdminAccess::resolve(None, Some("short".into())).unwrap(),
            AdminAccess::Off
        );
    }
}
