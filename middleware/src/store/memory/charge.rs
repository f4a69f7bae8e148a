//! Capture at admission in the embedded store: the same state machine as
//! `lua/authorize_capture.lua`, `hold_capture.lua`, `void.lua` and `void_hold.lua`.

use super::{minor, ms, rule, rules, MemoryStore, ReceiptState, Settled};
use crate::store::{
    utc_day, AuthorizeOutcome, ChargeOutcome, Hold, HoldOutcome, Reservation, StoreError,
    UsageEvent, VoidOutcome,
};

/// How long a balance charge's settled marker is kept beyond the hold time (as the Redis
/// store's): a void comes at the latest when the request's time is up.
const MARKER_MARGIN_MS: i64 = 60_000;

impl MemoryStore {
    pub(super) fn charge_receipt(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.owned_by_other(&r.payer, &r.issuer, &r.receipt_id, r.spent_until_ms, now) {
            return Ok(ChargeOutcome::Refused(AuthorizeOutcome::Replayed));
        }
        if s.blocked.contains(&r.payer) {
            return Ok(ChargeOutcome::Refused(AuthorizeOutcome::PayerBlocked));
        }
        let key = Self::receipt_key(r);
        let refused = match Self::live(&s, &key, now) {
            Some(
                ReceiptState::Spent { .. }
                | ReceiptState::Credited { .. }
                | ReceiptState::Subscribed { .. },
            ) => Some(AuthorizeOutcome::Replayed),
            Some(ReceiptState::Held { .. }) => Some(AuthorizeOutcome::InUse),
            Some(ReceiptState::Revoked { .. }) => Some(AuthorizeOutcome::Revoked),
            None => None,
        };
        if let Some(o) = refused {
            return Ok(ChargeOutcome::Refused(o));
        }
        let event_id = Self::record(&mut s, now, event.clone());
        s.receipts.insert(
            key,
            ReceiptState::Spent {
                reservation: r.id.clone(),
                event_id: event_id.clone(),
                until_ms: r.spent_until_ms.max(now.saturating_add(1000)),
            },
        );
        Ok(ChargeOutcome::Charged {
            event_id,
            balance_minor: 0,
        })
    }

    pub(super) fn charge_balance(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&h.payer) {
            return Ok(ChargeOutcome::Declined(HoldOutcome::PayerBlocked));
        }
        let amount = h.amount_minor;
        if rules::sweep_needed(s.balance(&h.payer, &h.currency).available, amount) {
            Self::sweep(&mut s, &h.payer, now)?;
            let available = s.balance(&h.payer, &h.currency).available;
            if !rules::covers(available, amount) {
                return Ok(ChargeOutcome::Declined(HoldOutcome::Insufficient {
                    balance_minor: minor(available),
                }));
            }
        }
        let b =
            rules::charge_at_admission(&s.balance(&h.payer, &h.currency), amount).map_err(rule)?;
        s.set_balance(&h.payer, &h.currency, b);
        // The event as given (`hold_capture.lua`); the marker records what the balance paid.
        let event_id = Self::record(&mut s, now, event.clone());
        let settled = Settled::Charged {
            event_id: event_id.clone(),
            charged: amount,
            uncharged: 0,
            currency: h.currency.clone(),
        };
        let until = now
            .saturating_add(ms(h.ttl))
            .saturating_add(MARKER_MARGIN_MS);
        s.remember_settled(now, &h.id, settled, until);
        Ok(ChargeOutcome::Charged {
            event_id,
            balance_minor: minor(b.available),
        })
    }

    /// Undo a charge: the receipt (`Some`) is usable again, or the amount returns to the
    /// balance; the void event is appended and the charge's day aggregates move back.
    pub(super) fn void_charge(
        &self,
        receipt: Option<&Reservation>,
        hold: Option<&Hold>,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        match (receipt, hold) {
            (Some(r), _) => {
                let key = Self::receipt_key(r);
                let ours = matches!(
                    Self::live(&s, &key, now),
                    Some(ReceiptState::Spent { reservation, event_id, .. })
                        if *reservation == r.id && *event_id == charge.id
                );
                if !ours {
                    return Ok(VoidOutcome::NotCharged);
                }
                s.receipts.remove(&key);
            }
            (None, Some(h)) => {
                // The marker must be this charge's, in full (`void_hold.lua`).
                let ours = matches!(
                    s.settled(&h.id, now),
                    Some(Settled::Charged { event_id, charged, uncharged: 0, currency })
                        if *event_id == charge.id
                            && *charged == charge.amount_minor
                            && *currency == h.currency
                );
                if !ours {
                    return Ok(VoidOutcome::NotCharged);
                }
                let b = rules::void_charge(&s.balance(&h.payer, &h.currency), charge.amount_minor)
                    .map_err(rule)?;
                s.set_balance(&h.payer, &h.currency, b);
                s.restate_settled(&h.id, Settled::Voided);
            }
            (None, None) => return Err(StoreError::Protocol("void of nothing".into())),
        }
        let sign = |n: u64| -i64::try_from(n).unwrap_or(i64::MAX);
        let agg = s
            .aggregates
            .entry((utc_day(charge.time_ms), charge.payer.clone()))
            .or_default();
        *agg.entry(charge.amount_field()).or_default() += sign(charge.amount_minor);
        for (f, n) in charge.aggregate_fields() {
            *agg.entry(f).or_default() += sign(n);
        }
        let id = Self::next_id(&mut s, now);
        let mut void = void.clone();
        void.id = id.clone();
        s.events.push(void);
        Ok(VoidOutcome::Voided { event_id: id })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::prelude::*;
    use crate::store::{Credit, Idempotency};

    fn charge_event(payer: &str, time_ms: i64) -> UsageEvent {
        UsageEvent {
            id: String::new(),
            time_ms,
            payer: payer.into(),
            route: "r".into(),
            method: "GET".into(),
            units: BTreeMap::from([("request".to_owned(), 1)]),
            unit_prices: BTreeMap::new(),
            currency: "USD".into(),
            scale: 6,
            amount_minor: 10,
            uncharged_minor: 0,
            credential: format!("token:{payer}"),
            reservation: String::new(),
            upstream_status: 0,
            voids: None,
        }
    }

    fn hold(id: &str) -> Hold {
        Hold {
            id: id.into(),
            payer: "p".into(),
            currency: "USD".into(),
            amount_minor: 10,
            ttl: Duration::from_secs(60),
            mandate: None,
            plan: None,
        }
    }

    /// Charges at admission, a void, and the settled outcomes forgotten after a day (the
    /// memory store stays bounded like Redis's expiring markers).
    #[tokio::test]
    async fn charges_void_once_and_outcomes_are_forgotten_after_a_day() {
        let clock = ManualClock::at_ms(1_800_000_000_000);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        store
            .credit(&Credit {
                payer: "p".into(),
                currency: "USD".into(),
                amount_minor: 25,
                idempotency: Idempotency::Key("top".into()),
                keep_until_ms: i64::MAX,
                reason: "test".into(),
                source: "test".into(),
            })
            .await
            .unwrap();
        let mut first = charge_event("p", clock.now_ms());
        let ChargeOutcome::Charged {
            event_id,
            balance_minor,
        } = store.hold_capture(&hold("a"), &first).await.unwrap()
        else {
            panic!("not charged")
        };
        assert_eq!(balance_minor, 15);
        first.id = event_id;
        let void = crate::store::void_event(&first, clock.now_ms(), 502);
        assert!(matches!(
            store.void_hold(&hold("a"), &first, &void).await.unwrap(),
            VoidOutcome::Voided { .. }
        ));
        assert_eq!(
            store.void_hold(&hold("a"), &first, &void).await.unwrap(),
            VoidOutcome::NotCharged,
            "a second void does nothing"
        );
        assert_eq!(
            store.account("p").await.unwrap().balances["USD"].available,
            25
        );
        // Two more charges (the balance covers two), then a third is refused.
        for id in ["b", "c"] {
            let e = charge_event("p", clock.now_ms());
            assert!(matches!(
                store.hold_capture(&hold(id), &e).await.unwrap(),
                ChargeOutcome::Charged { .. }
            ));
        }
        let e = charge_event("p", clock.now_ms());
        assert_eq!(
            store.hold_capture(&hold("d"), &e).await.unwrap(),
            ChargeOutcome::Declined(HoldOutcome::Insufficient { balance_minor: 5 })
        );
        assert_eq!(store.lock().unwrap().settled.len(), 3);
        clock.advance_ms(86_400_001);
        store
            .credit(&Credit {
                payer: "p".into(),
                currency: "USD".into(),
                amount_minor: 10,
                idempotency: Idempotency::Key("top2".into()),
                keep_until_ms: i64::MAX,
                reason: "test".into(),
                source: "test".into(),
            })
            .await
            .unwrap();
        let e = charge_event("p", clock.now_ms());
        assert!(matches!(
            store.hold_capture(&hold("e"), &e).await.unwrap(),
            ChargeOutcome::Charged { .. }
        ));
        assert_eq!(
            store.lock().unwrap().settled.len(),
            1,
            "a day-old outcome is forgotten"
        );
    }
}
