//! The memory store's receipts held single use, spent, voided, revoked ([`crate::store::ReceiptStore`]).

use super::*;

#[async_trait]
impl ReceiptStore for MemoryStore {
    async fn authorize_capture(
        &self,
        r: &Reservation,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_receipt(r, event)
    }

    async fn void_receipt(
        &self,
        r: &Reservation,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(Some(r), None, charge, void)
    }

    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.owned_by_other(&r.payer, &r.issuer, &r.receipt_id, r.spent_until_ms, now) {
            return Ok(AuthorizeOutcome::Replayed);
        }
        if s.blocked.contains(&r.payer) {
            return Ok(AuthorizeOutcome::PayerBlocked);
        }
        let key = Self::receipt_key(r);
        match Self::live(&s, &key, now) {
            Some(
                ReceiptState::Spent { .. }
                | ReceiptState::Credited { .. }
                | ReceiptState::Subscribed { .. },
            ) => return Ok(AuthorizeOutcome::Replayed),
            Some(ReceiptState::Held { .. }) => return Ok(AuthorizeOutcome::InUse),
            Some(ReceiptState::Revoked { .. }) => return Ok(AuthorizeOutcome::Revoked),
            None => {}
        }
        let hold_ms = i64::try_from(r.hold.as_millis()).unwrap_or(i64::MAX);
        if let Some(m) = &r.mandate {
            let until = now.saturating_add(hold_ms);
            match s.mandate_check(m, m.amount_minor, now) {
                Ok(()) => s.mandate_reserve(&r.payer, m, m.amount_minor, &r.id, until),
                Err(MandateRefusal::Revoked) => return Ok(AuthorizeOutcome::MandateRevoked),
                Err(MandateRefusal::Exceeded(room_minor)) => {
                    return Ok(AuthorizeOutcome::MandateExceeded { room_minor })
                }
            }
        }
        s.receipts.insert(
            key,
            ReceiptState::Held {
                reservation: r.id.clone(),
                until_ms: now.saturating_add(hold_ms),
            },
        );
        Ok(AuthorizeOutcome::Reserved)
    }

    async fn settle(
        &self,
        r: &Reservation,
        settlement: &Settlement,
    ) -> Result<SettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        match settlement {
            Settlement::Release => {
                // The mandate reservation goes first, held or not (`release.lua`).
                if let Some(m) = &r.mandate {
                    s.mandate_settle(m, &r.id, 0);
                }
                let key = Self::receipt_key(r);
                match Self::live(&s, &key, now) {
                    Some(ReceiptState::Held { reservation, .. }) if *reservation == r.id => {
                        s.receipts.remove(&key);
                        Ok(SettleOutcome::Released)
                    }
                    _ => Ok(SettleOutcome::NotHeld),
                }
            }
            Settlement::Capture(event) => {
                let mandate = r.mandate.as_ref();
                Ok(Self::capture_receipt(&mut s, now, r, event, mandate))
            }
        }
    }

    async fn revoke_receipt(&self, issuer: &str, receipt_id: &str) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let r = Reservation {
            issuer: issuer.to_owned(),
            receipt_id: receipt_id.to_owned(),
            ..Reservation::empty()
        };
        // Like the Redis store: the revoked state goes to every bucket where the receipt has
        // no state (its payer's bucket is unknown here); a receipt held or spent stays so.
        let fp = r.fingerprint();
        let mut unused = true;
        for b in 0..crate::store::BUCKETS {
            let key = format!("r:{b}:{fp}");
            if Self::live(&s, &key, now).is_some() {
                unused = false;
                continue;
            }
            s.receipts.insert(
                key,
                ReceiptState::Revoked {
                    until_ms: now.saturating_add(crate::store::REVOKED_RECEIPT_KEEP_MS),
                },
            );
        }
        Ok(unused)
    }
}

impl MemoryStore {
    /// Spend a held receipt and append its event once (`capture.lua`); `mandate`: the window
    /// the event's amount is spent in (`capture_deferred.lua` spends none).
    pub(super) fn capture_receipt(
        s: &mut State,
        now: i64,
        r: &Reservation,
        event: &UsageEvent,
        mandate: Option<&MandateCharge>,
    ) -> SettleOutcome {
        let key = Self::receipt_key(r);
        match Self::live(s, &key, now) {
            Some(ReceiptState::Spent {
                reservation,
                event_id,
                ..
            }) if *reservation == r.id => {
                return SettleOutcome::AlreadyCaptured {
                    event_id: event_id.clone(),
                };
            }
            Some(ReceiptState::Held { reservation, .. }) if *reservation == r.id => {}
            // The hold expired and nobody took the receipt since: capture anyway.
            None => {}
            Some(_) => return SettleOutcome::Conflict,
        }
        let event_id = Self::record(s, now, event.clone());
        if let Some(m) = mandate {
            s.mandate_settle(m, &r.id, event.amount_minor);
        }
        s.receipts.insert(
            key,
            ReceiptState::Spent {
                reservation: r.id.clone(),
                event_id: event_id.clone(),
                // Remembered at least a second, as the script's `PX`.
                until_ms: r.spent_until_ms.max(now.saturating_add(1000)),
            },
        );
        // Forget expired entries now and then, so memory stays bounded.
        if s.seq.is_multiple_of(1024) {
            s.receipts.retain(|_, st| st.until() > now);
        }
        SettleOutcome::Captured { event_id }
    }
}
