//! Capture at admission in the sqlite store: the state machine of
//! `lua/authorize_capture.lua`, `hold_capture.lua`, `void.lua` and `void_hold.lua`.

use async_trait::async_trait;

use super::receipts::refusal;
use super::tx::{rule, ReceiptState, Settled, Tx};
use super::SqliteStore;
use crate::store::rules::{self, minor};
use crate::store::{
    AdmissionStore, ChargeFrom, ChargeOutcome, Hold, HoldOutcome, Reservation, StoreError,
    UsageEvent, VoidOutcome,
};

use crate::store::charge::MARKER_MARGIN_MS;

/// Spend a receipt at admission (`authorize_capture.lua`).
fn charge_receipt(
    t: &Tx<'_>,
    r: &Reservation,
    event: &UsageEvent,
    now: i64,
) -> Result<ChargeOutcome, StoreError> {
    if let Some(refused) = refusal(t, r, now)? {
        return Ok(ChargeOutcome::Refused(refused));
    }
    let event_id = t.record(now, event)?;
    let spent = ReceiptState::Spent {
        reservation: r.id.clone(),
        event_id: event_id.clone(),
    };
    let until = r.spent_until_ms.max(now.saturating_add(1000));
    t.put_receipt(&Tx::receipt_key(r), &spent, until)?;
    Ok(ChargeOutcome::Charged {
        event_id,
        balance_minor: 0,
    })
}

/// Take a fixed price from the balance at admission (`hold_capture.lua`).
fn charge_balance(
    t: &Tx<'_>,
    h: &Hold,
    event: &UsageEvent,
    now: i64,
) -> Result<ChargeOutcome, StoreError> {
    if t.blocked(&h.payer)? {
        return Ok(ChargeOutcome::Declined(HoldOutcome::PayerBlocked));
    }
    let amount = h.amount_minor;
    if rules::sweep_needed(t.balance(&h.payer, &h.currency)?.available, amount) {
        t.sweep(&h.payer, now)?;
        let available = t.balance(&h.payer, &h.currency)?.available;
        if !rules::covers(available, amount) {
            return Ok(ChargeOutcome::Declined(HoldOutcome::Insufficient {
                balance_minor: minor(available),
            }));
        }
    }
    let b = rules::charge_at_admission(&t.balance(&h.payer, &h.currency)?, amount).map_err(rule)?;
    t.set_balance(&h.payer, &h.currency, b)?;
    // The event as given (`hold_capture.lua`); the marker records what the balance paid.
    let event_id = t.record(now, event)?;
    let settled = Settled::Charged {
        event_id: event_id.clone(),
        charged: amount,
        uncharged: 0,
        currency: h.currency.clone(),
    };
    let ttl = i64::try_from(h.ttl.as_millis()).unwrap_or(i64::MAX);
    let until = now.saturating_add(ttl).saturating_add(MARKER_MARGIN_MS);
    t.remember_settled(&h.id, &settled, until)?;
    Ok(ChargeOutcome::Charged {
        event_id,
        balance_minor: minor(b.available),
    })
}

#[async_trait]
impl AdmissionStore for SqliteStore {
    async fn charge_at_admission(
        &self,
        from: ChargeFrom<'_>,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let now = self.now();
        let (from, event) = (Owned::from(from), event.clone());
        self.run(move |t| match &from {
            Owned::Receipt(r) => charge_receipt(t, r, &event, now),
            Owned::Balance(h) => charge_balance(t, h, &event, now),
        })
        .await
    }

    /// Undo a charge: the receipt is usable again, or the amount returns to the balance; the
    /// void event is appended and the charge's day aggregates move back.
    async fn void_admission(
        &self,
        from: ChargeFrom<'_>,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        let now = self.now();
        let (charge, void) = (charge.clone(), void.clone());
        let from = Owned::from(from);
        self.run(move |t| {
            // A charge refunded (even in part) is no longer voided (`void.lua`).
            if t.refunded(&charge.id)? > 0 {
                return Ok(VoidOutcome::NotCharged);
            }
            match &from {
                Owned::Receipt(r) => {
                    let key = Tx::receipt_key(r);
                    let ours = matches!(
                        t.receipt(&key, now)?,
                        Some(ReceiptState::Spent { reservation, event_id })
                            if reservation == r.id && event_id == charge.id
                    );
                    if !ours {
                        return Ok(VoidOutcome::NotCharged);
                    }
                    t.delete_receipt(&key)?;
                }
                Owned::Balance(h) => {
                    // The marker must be this charge's, in full (`void_hold.lua`).
                    let ours = matches!(
                        t.settled(&h.id, now)?,
                        Some(Settled::Charged { event_id, charged, uncharged: 0, currency })
                            if event_id == charge.id
                                && charged == charge.amount_minor
                                && currency == h.currency
                    );
                    if !ours {
                        return Ok(VoidOutcome::NotCharged);
                    }
                    let b =
                        rules::void_charge(&t.balance(&h.payer, &h.currency)?, charge.amount_minor)
                            .map_err(rule)?;
                    t.set_balance(&h.payer, &h.currency, b)?;
                    t.mark_voided(&h.id)?;
                }
            }
            t.unaggregate(&charge)?;
            let id = t.next_id(now)?;
            t.append(&id, &void)?;
            Ok(VoidOutcome::Voided { event_id: id })
        })
        .await
    }
}

/// [`ChargeFrom`] owned, to move into the writer thread.
enum Owned {
    Receipt(Reservation),
    Balance(Hold),
}

impl From<ChargeFrom<'_>> for Owned {
    fn from(f: ChargeFrom<'_>) -> Self {
        match f {
            ChargeFrom::Receipt(r) => Owned::Receipt(r.clone()),
            ChargeFrom::Balance(h) => Owned::Balance(h.clone()),
        }
    }
}
