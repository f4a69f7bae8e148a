//! Refunds on the admin API (`docs/refunds.md`): `POST /admin/v1/events/{id}/refund` gives
//! back (part of) a charge -- to the payer's balance, or recorded as owed to an x402 payer's
//! address -- once per `Idempotency-Key`; `GET /admin/v1/refunds` lists refunds, newest first
//! (`owed=true`: those owed on chain). The money rule and its atomicity are the store's
//! ([`tollgate_middleware::store::RefundStore`]); this module checks the request, finds the
//! charge (in the store, or in the ledger of record once drained from Redis) and renders the
//! outcome.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_middleware::money::{Amount, Currency};
use tollgate_middleware::store::{
    RefundOutcome, RefundQuery, RefundRecord, RefundRequest, RefundTarget,
};
use tollgate_middleware::{Clock, ErrorCode, SystemClock};

use crate::admin::{bad_request, store_error, Admin};
use crate::proxy::problem;

/// The longest `Idempotency-Key` and `reason` accepted.
const MAX_KEY: usize = 200;
const MAX_REASON: usize = 500;

/// A refund as the admin API answers it (amounts as decimal strings, minor units beside).
pub(crate) fn refund_json(r: &RefundRecord) -> Value {
    let money = |minor: u64| {
        Currency::try_new(r.currency.clone(), r.scale)
            .map(|c| c.from_minor(minor).to_string())
            .unwrap_or_else(|_| minor.to_string())
    };
    json!({
        "id": r.id,
        "time_ms": r.time_ms,
        "event_id": r.event_id,
        "charge_time_ms": r.charge_time_ms,
        "payer": r.payer,
        "route": r.route,
        "credential": r.credential,
        "amount": money(r.amount_minor),
        "amount_minor": r.amount_minor,
        "currency": r.currency,
        "scale": r.scale,
        "reason": r.reason,
        "refunded_to": if r.owed_to.is_some() { "owed" } else { "balance" },
        "owed_to": r.owed_to,
        "credit_id": r.credit_id,
        "remaining": money(r.remaining_minor),
        "remaining_minor": r.remaining_minor,
    })
}

/// Why a request is refused before anything is looked at: its code and detail.
type Bad = (ErrorCode, String);

fn invalid_request(detail: impl Into<String>) -> Bad {
    (ErrorCode::InvalidRequest, detail.into())
}

/// The request body, checked: the amount asked (`None`: all that remains) and the reason.
fn parse_body(body: &[u8], currency: &Currency) -> Result<(Option<u64>, String), Bad> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        invalid_request(
            "send JSON {\"amount\": \"0.25\", \"reason\": \"...\"} (amount optional: all)",
        )
    })?;
    let Some(obj) = v.as_object() else {
        return Err(invalid_request("the body must be a JSON object"));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "amount" | "reason"))
    {
        return Err(invalid_request(format!(
            "unknown field {k:?}: use amount, reason"
        )));
    }
    let reason = match obj.get("reason").and_then(Value::as_str).map(str::trim) {
        Some(r) if !r.is_empty() && r.len() <= MAX_REASON => r.to_owned(),
        _ => {
            return Err(invalid_request(
                "reason must be a string of 1 to 500 characters",
            ))
        }
    };
    let amount = match obj.get("amount") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_amount(s, currency)?),
        Some(_) => {
            return Err((
                ErrorCode::RefundAmountInvalid,
                "amount must be a decimal string, e.g. \"0.25\"".into(),
            ))
        }
    };
    Ok((amount, reason))
}

/// A refund amount: a positive decimal string within the currency's scale, in minor units.
fn parse_amount(s: &str, currency: &Currency) -> Result<u64, Bad> {
    let invalid = |detail: String| (ErrorCode::RefundAmountInvalid, detail);
    let amount: Amount = s
        .parse()
        .map_err(|e| invalid(format!("amount {s:?}: {e} (a positive decimal string)")))?;
    match currency.to_minor(amount) {
        Ok(0) => Err(invalid("amount must be more than zero".into())),
        Ok(m) => Ok(m),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// The charge `id`: from the store, else (Redis with `[ledger]`, drained and trimmed) from
/// the ledger of record; a void recorded in either counts.
async fn find(admin: &Admin, id: &str) -> Result<Option<RefundTarget>, Response> {
    let store = admin.paywall().store().clone();
    if let Some(t) = store.refund_target(id).await.map_err(store_error)? {
        return Ok(Some(t));
    }
    let Some(db) = admin.gateway().ledger_db() else {
        return Ok(None);
    };
    let Some(mut t) = db.refund_target(id).await.map_err(store_error)? else {
        return Ok(None);
    };
    // The void may still wait in Redis, not drained yet.
    t.voided = t.voided || store.void_recorded(&t.event).await.map_err(store_error)?;
    Ok(Some(t))
}

fn fingerprint(id: &str, amount: Option<u64>, reason: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        id,
        &amount.map_or_else(|| "all".to_owned(), |a| a.to_string()),
        reason,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /admin/v1/events/{id}/refund`.
pub(crate) async fn refund(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
    else {
        return problem(
            ErrorCode::IdempotencyKeyRequired,
            "an Idempotency-Key header (1-200 characters) is required: a refund moves money",
        );
    };
    let target = match find(&admin, &id).await {
        Ok(Some(t)) => t,
        Ok(None) => return problem(ErrorCode::EventNotFound, &format!("no ledger entry {id:?}")),
        Err(res) => return res,
    };
    if target.event.voids.is_some() {
        return problem(
            ErrorCode::EventNotRefundable,
            "this entry is a void (it gave a charge back); refund a charge",
        );
    }
    let currency = match admin.currency(&target.event.currency) {
        Some(c) if c.scale() == target.event.scale => c,
        _ => match Currency::try_new(target.event.currency.clone(), target.event.scale) {
            Ok(c) => c,
            Err(e) => return problem(ErrorCode::Internal, &e.to_string()),
        },
    };
    let (amount, reason) = match parse_body(&body, &currency) {
        Ok(b) => b,
        Err((code, detail)) => return problem(code, &detail),
    };
    let request = RefundRequest {
        fingerprint: fingerprint(&id, amount, &reason),
        charge: target.event,
        voided: target.voided,
        amount_minor: amount,
        reason,
        key: key.to_owned(),
        time_ms: SystemClock.now_ms(),
    };
    let outcome = admin.paywall().store().refund(&request).await;
    if let Ok(RefundOutcome::Refunded(r) | RefundOutcome::Duplicate(r)) = &outcome {
        created(&admin, r).await;
    }
    render(outcome, &currency)
}

/// `refund.created`, id `msg_refund_<refund id>`. Written just after the refund; a replay with
/// the same Idempotency-Key writes it again with the same id, so a message lost to a crash in
/// between comes back with the client's retry (receivers deduplicate by `webhook-id`).
async fn created(admin: &Admin, r: &RefundRecord) {
    let Some(w) = admin.gateway().webhooks() else {
        return;
    };
    let key = format!("refund_{}", r.id);
    let kind = tollgate_middleware::webhooks::EventKind::RefundCreated;
    if let Err(e) = w
        .notify(kind, &key, &r.payer, r.time_ms, refund_json(r))
        .await
    {
        tracing::error!(refund = %r.id, error = %e, "refund.created webhook not written");
    }
}

fn render(
    outcome: Result<RefundOutcome, tollgate_middleware::store::StoreError>,
    currency: &Currency,
) -> Response {
    match outcome {
        Ok(RefundOutcome::Refunded(r)) => {
            tracing::info!(refund = %r.id, event = %r.event_id, payer = %r.payer, amount_minor = r.amount_minor, owed = r.owed_to.is_some(), reason = %r.reason, "refund");
            (StatusCode::CREATED, Json(refund_json(&r))).into_response()
        }
        Ok(RefundOutcome::Duplicate(r)) => {
            let mut res = (StatusCode::CREATED, Json(refund_json(&r))).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            res
        }
        Ok(RefundOutcome::KeyReused) => problem(
            ErrorCode::IdempotencyKeyMismatch,
            "this Idempotency-Key was used for another refund (another charge, amount or reason)",
        ),
        Ok(RefundOutcome::Voided) => problem(
            ErrorCode::ChargeVoided,
            "the charge was voided (its request was not served): nothing to refund",
        ),
        Ok(RefundOutcome::WindowClosed) => problem(
            ErrorCode::RefundWindowClosed,
            "the charge is older than 365 days: refund it by other means",
        ),
        Ok(RefundOutcome::Exceeds { refundable_minor }) => {
            exceeds(currency.from_minor(refundable_minor), refundable_minor)
        }
        Ok(RefundOutcome::Zero) => exceeds(Amount::ZERO, 0),
        Err(e) => store_error(e),
    }
}

/// 409 `refund_exceeds_charge`, with what may still be refunded (`refundable`, and in minor
/// units) as members of the problem body.
fn exceeds(refundable: Amount, minor: u64) -> Response {
    let res = tollgate_middleware::Paywall::problem(
        ErrorCode::RefundExceedsCharge,
        &format!("more than remains refundable of this charge ({refundable})"),
    );
    let (mut parts, bytes) = res.into_parts();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut m)) => {
            m.insert("refundable".into(), json!(refundable.to_string()));
            m.insert("refundable_minor".into(), json!(minor));
            serde_json::to_vec(&m).unwrap_or_else(|_| bytes.to_vec())
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// `GET /admin/v1/refunds?owed=true&payer=..&before=..&limit=..`: newest first; from the ledger
/// database when `[ledger]` is set, else from the store.
pub(crate) async fn list(
    State(admin): State<Admin>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let query = match parse_query(&q) {
        Ok(q) => q,
        Err(detail) => return bad_request(&detail),
    };
    let found = match admin.gateway().ledger_db() {
        Some(db) => db.refunds(&query).await,
        None => admin.paywall().store().refunds(&query).await,
    };
    match found {
        Ok(rows) => {
            let next = (rows.len() == query.limit)
                .then(|| rows.last().map(|r| r.id.clone()))
                .flatten();
            Json(json!({
                "refunds": rows.iter().map(refund_json).collect::<Vec<_>>(),
                "next_before": next,
            }))
            .into_response()
        }
        Err(e) => store_error(e),
    }
}

fn parse_query(q: &BTreeMap<String, String>) -> Result<RefundQuery, String> {
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "owed" | "payer" | "before" | "limit"))
    {
        return Err(format!(
            "unknown parameter {k:?}: use owed, payer, before, limit"
        ));
    }
    let owed = match q.get("owed").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => return Err(format!("owed must be true or false, not {v:?}")),
    };
    let (limit, before) = crate::bill::page_params(q, "a refund id")?;
    Ok(RefundQuery {
        payer: q.get("payer").cloned(),
        owed,
        before,
        limit,
    })
}

/// A refund as a bill CSV record, in the events' columns
/// ([`crate::dashboard::events::CSV_COLUMNS`]): `kind` `refund`, `voids` the charge it refunds,
/// `method`, `units`, `upstream_status`, `reservation` and `captured` empty.
pub(crate) fn refund_csv_record(r: &RefundRecord) -> String {
    use crate::dashboard::events::{csv_field, iso_time};
    let text = |v: &str| csv_field(v, true);
    let amount = Currency::try_new(r.currency.clone(), r.scale)
        .map(|c| c.from_minor(r.amount_minor).to_string())
        .unwrap_or_else(|_| r.amount_minor.to_string());
    [
        text(&r.id),
        iso_time(r.time_ms),
        r.time_ms.to_string(),
        text(&r.route),
        text(&r.payer),
        String::new(),
        "refund".to_owned(),
        text(r.credential.split(':').next().unwrap_or_default()),
        text(&r.credential),
        amount,
        text(&r.currency),
        r.amount_minor.to_string(),
        r.scale.to_string(),
        "0".to_owned(),
        csv_field("{}", false),
        String::new(),
        text(&r.event_id),
        String::new(),
        String::new(),
    ]
    .join(",")
}
