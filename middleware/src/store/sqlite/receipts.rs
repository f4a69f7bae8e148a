//! The sqlite store's receipts held single use, spent, voided, revoked
//! ([`crate::store::ReceiptStore`]): `authorize.lua`, `capture.lua`, `release.lua`.

use async_trait::async_trait;

use super::tx::{MandateRefusal, ReceiptState, Tx};
use super::SqliteStore;
use crate::store::{
    AuthorizeOutcome, MandateCharge, ReceiptStore, Reservation, SettleOutcome, Settlement,
    StoreError, UsageEvent, BUCKETS, REVOKED_RECEIPT_KEEP_MS,
};

/// What blocks a receipt from paying now, if anything: its owner, its payer, its state.
pub(super) fn refusal(
    t: &Tx<'_>,
    r: &Reservation,
    now: i64,
) -> Result<Option<AuthorizeOutcome>, StoreError> {
    if t.owned_by_other(&r.payer, &r.issuer, &r.receipt_id, r.spent_until_ms, now)? {
        return Ok(Some(AuthorizeOutcome::Replayed));
    }
    if t.blocked(&r.payer)? {
        return Ok(Some(AuthorizeOutcome::PayerBlocked));
    }
    Ok(match t.receipt(&Tx::receipt_key(r), now)? {
        Some(
            ReceiptState::Spent { .. }
            | ReceiptState::Credited { .. }
            | ReceiptState::Subscribed { .. },
        ) => Some(AuthorizeOutcome::Replayed),
        Some(ReceiptState::Held { .. }) => Some(AuthorizeOutcome::InUse),
        Some(ReceiptState::Revoked) => Some(AuthorizeOutcome::Revoked),
        None => None,
    })
}

/// Spend a held receipt and append its event once (`capture.lua`); `mandate`: the window the
/// event's amount is spent in (`capture_deferred.lua` spends none).
pub(super) fn capture_receipt(
    t: &Tx<'_>,
    now: i64,
    r: &Reservation,
    event: &UsageEvent,
    mandate: Option<&MandateCharge>,
) -> Result<SettleOutcome, StoreError> {
    let key = Tx::receipt_key(r);
    match t.receipt(&key, now)? {
        Some(ReceiptState::Spent {
            reservation,
            event_id,
        }) if reservation == r.id => return Ok(SettleOutcome::AlreadyCaptured { event_id }),
        Some(ReceiptState::Held { reservation }) if reservation == r.id => {}
        // The hold expired and nobody took the receipt since: capture anyway.
        None => {}
        Some(_) => return Ok(SettleOutcome::Conflict),
    }
    let event_id = t.record(now, event)?;
    if let Some(m) = mandate {
        t.mandate_settle(m, &r.id, event.amount_minor)?;
    }
    let spent = ReceiptState::Spent {
        reservation: r.id.clone(),
        event_id: event_id.clone(),
    };
    // Remembered at least a second, as the script's `PX`.
    t.put_receipt(&key, &spent, r.spent_until_ms.max(now.saturating_add(1000)))?;
    Ok(SettleOutcome::Captured { event_id })
}

#[async_trait]
impl ReceiptStore for SqliteStore {
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let now = self.now();
        let r = r.clone();
        self.run(move |t| {
            if let Some(refused) = refusal(t, &r, now)? {
                return Ok(refused);
            }
            let hold_ms = i64::try_from(r.hold.as_millis()).unwrap_or(i64::MAX);
            let until = now.saturating_add(hold_ms);
            if let Some(m) = &r.mandate {
                match t.mandate_check(m, m.amount_minor, now)? {
                    Ok(()) => t.mandate_reserve(&r.payer, m, m.amount_minor, &r.id, until)?,
                    Err(MandateRefusal::Revoked) => return Ok(AuthorizeOutcome::MandateRevoked),
                    Err(MandateRefusal::Exceeded(room_minor)) => {
                        return Ok(AuthorizeOutcome::MandateExceeded { room_minor })
                    }
                }
            }
            let held = ReceiptState::Held {
                reservation: r.id.clone(),
            };
            t.put_receipt(&Tx::receipt_key(&r), &held, until)?;
            Ok(AuthorizeOutcome::Reserved)
        })
        .await
    }

    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError> {
        let now = self.now();
        let (r, s) = (r.clone(), s.clone());
        self.run(move |t| match &s {
            Settlement::Release => {
                // The mandate reservation goes first, held or not (`release.lua`).
                if let Some(m) = &r.mandate {
                    t.mandate_settle(m, &r.id, 0)?;
                }
                let key = Tx::receipt_key(&r);
                match t.receipt(&key, now)? {
                    Some(ReceiptState::Held { reservation }) if reservation == r.id => {
                        t.delete_receipt(&key)?;
                        Ok(SettleOutcome::Released)
                    }
                    _ => Ok(SettleOutcome::NotHeld),
                }
            }
            Settlement::Capture(event) => capture_receipt(t, now, &r, event, r.mandate.as_ref()),
        })
        .await
    }

    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let fp = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        }
        .fingerprint();
        self.run(move |t| {
            // Like the Redis store: the revoked state goes to every bucket where the receipt
            // has no state (its payer's bucket is unknown here); one held or spent stays so.
            let mut unused = true;
            for b in 0..BUCKETS {
                let key = format!("r:{b}:{fp}");
                if t.receipt(&key, now)?.is_some() {
                    unused = false;
                    continue;
                }
                let until = now.saturating_add(REVOKED_RECEIPT_KEEP_MS);
                t.put_receipt(&key, &ReceiptState::Revoked, until)?;
            }
            Ok(unused)
        })
        .await
    }
}
