//! The provider dashboard: a web page at `/admin/ui` on the admin listener, and the read
//! endpoints it draws from (`/admin/v1/summary`, `/admin/v1/traffic`, `/admin/v1/payers`, the
//! SVG charts under `/admin/v1/charts/`, the event export `/admin/v1/events` and
//! `/admin/v1/events.csv`, `/admin/v1/x402/queue`, `/admin/v1/ledger`).
//!
//! # Login
//! A browser cannot send a bearer header on a plain navigation, so the page itself (HTML, script
//! and style, embedded in the binary) is served **without** the token and contains no data: it
//! is the same static text for everyone. Its login form keeps the admin token in the tab's
//! `sessionStorage` (gone when the tab closes; never a cookie, so no request is authenticated
//! behind the user's back and there is nothing to forge cross-site) and sends it as
//! `Authorization: Bearer` on every `fetch()` to the admin API, which checks it as for any
//! client. The token is never put in a URL. A strict Content-Security-Policy (scripts and
//! styles only from these files, no inline script, no framing) keeps injected markup from
//! running; the script writes data with `textContent` only.
//!
//! # Charts
//! Drawn on the server as SVG ([`svg`]) and shown as images: no chart library to vendor and
//! keep up to date, nothing executable in the picture, and the same figures as the JSON.

pub(crate) mod charts;
pub mod events;
pub(crate) mod reports;
pub(crate) mod status;
pub mod svg;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page and its assets: path, content type, text (embedded in the binary).
const ASSETS: [(&str, &str, &str); 6] = [
    (
        "/admin/ui",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "/admin/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "/admin/ui/lib.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/lib.js"),
    ),
    (
        "/admin/ui/payments.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/payments.js"),
    ),
    (
        "/admin/ui/status.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/status.js"),
    ),
    (
        "/admin/ui/app.css",
        "text/css; charset=utf-8",
        include_str!("ui/app.css"),
    ),
];

/// The paths served without the admin token: the static page and its assets (no data).
pub(crate) fn is_public(path: &str) -> bool {
    path == "/admin/ui/" || ASSETS.iter().any(|(p, _, _)| *p == path)
}

/// The Content-Security-Policy of the page: everything from this origin's files only, images
/// also from `blob:` (the charts, fetched with the token), no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    (headers, body).into_response()
}

/// The page's routes (mounted on the admin router, outside the token check by [`is_public`]).
pub(crate) fn ui_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for (path, content_type, body) in ASSETS {
        let serve = move || async move { asset(content_type, body) };
        router = router.route(path, get(serve));
        if path == "/admin/ui" {
            router = router.route("/admin/ui/", get(serve));
        }
    }
    router
}
