//! Capture at admission in the sqlite store: the state machine of
//! `lua/authorize_capture.lua`, `hold_capture.lua`, `void.lua` and `void_hold.lua`.

use super::receipts::refusal;
use super::tx::{rule, ReceiptState, Settled, Tx};
use super::SqliteStore;
use crate::store::rules::{self, minor};
use crate::store::{
    ChargeOutcome, Hold, HoldOutcome, Reservation, StoreError, UsageEvent, VoidOutcome,
};

use crate::store::charge::MARKER_MARGIN_MS;

impl SqliteStore {
    pub(super) async fn charge_receipt(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let now = self.now();
        let (r, event) = (r.clone(), event.clone());
        self.run(move |t| {
            if let Some(refused) = refusal(t, &r, now)? {
                return Ok(ChargeOutcome::Refused(refused));
            }
            let event_id = t.record(now, &event)?;
            let spent = ReceiptState::Spent {
                reservation: r.id.clone(),
                event_id: event_id.clone(),
            };
            let until = r.spent_until_ms.max(now.saturating_add(1000));
            t.put_receipt(&Tx::receipt_key(&r), &spent, until)?;
            Ok(ChargeOutcome::Charged {
                event_id,
                balance_minor: 0,
            })
        })
        .await
    }

    pub(super) async fn charge_balance(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let now = self.now();
        let (h, event) = (h.clone(), event.clone());
        self.run(move |t| {
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
            let b = rules::charge_at_admission(&t.balance(&h.payer, &h.currency)?, amount)
                .map_err(rule)?;
            t.set_balance(&h.payer, &h.currency, b)?;
            // The event as given (`hold_capture.lua`); the marker records what the balance paid.
            let event_id = t.record(now, &event)?;
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
        })
        .await
    }

    /// Undo a charge: the receipt (`Some`) is usable again, or the amount returns to the
    /// balance; the void event is appended and the charge's day aggregates move back.
    pub(super) async fn void_charge(
        &self,
        receipt: Option<Reservation>,
        hold: Option<Hold>,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        let now = self.now();
        let (charge, void) = (charge.clone(), void.clone());
        self.run(move |t| {
            match (&receipt, &hold) {
                (Some(r), _) => {
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
                (None, Some(h)) => {
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
                (None, None) => return Err(StoreError::Protocol("void of nothing".into())),
            }
            t.unaggregate(&charge)?;
            let id = t.next_id(now)?;
            t.append(&id, &void)?;
            Ok(VoidOutcome::Voided { event_id: id })
        })
        .await
    }
}
