//! The memory store's prepaid balances: holds, their capture or release, credits, the account
//! ([`crate::store::BalanceStore`]). The arithmetic is [`crate::store::rules`]'; the order of
//! checks is the scripts' (`hold.lua`, `capture_hold.lua`, `plan_capture.lua`, ...).

use super::*;
use crate::store::rules::{CreditDecision, PlanHold};
use crate::store::PlanUse;

#[async_trait]
impl BalanceStore for MemoryStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(ms(ttl));
        let mut s = self.lock()?;
        let (id, mandate) = match held {
            Renewal::Receipt(r) => {
                let key = Self::receipt_key(r);
                // A receipt hold that expired is gone (Redis: the key expired), not renewed.
                match s.receipts.get_mut(&key) {
                    Some(ReceiptState::Held {
                        reservation,
                        until_ms,
                    }) if *reservation == r.id && *until_ms > now => *until_ms = until,
                    _ => return Ok(false),
                }
                (&r.id, r.mandate.as_ref())
            }
            Renewal::Balance(h) => {
                // A balance hold lives until swept, expired or not (the holds hash).
                match s.holds.get_mut(&h.id) {
                    Some(entry) => entry.until_ms = until,
                    None => return Ok(false),
                }
                (&h.id, h.mandate.as_ref())
            }
        };
        if let Some(m) = mandate {
            if let Some(w) = s.windows.get_mut(&(m.key.clone(), m.window_start_ms)) {
                if let Some(r) = w.holds.get_mut(id) {
                    r.1 = until;
                }
            }
        }
        Ok(true)
    }

    async fn hold_capture(
        &self,
        h: &Hold,
        event: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.charge_balance(h, event)
    }

    async fn void_hold(
        &self,
        h: &Hold,
        charge: &UsageEvent,
        void: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.void_charge(None, Some(h), charge, void)
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if s.blocked.contains(&h.payer) {
            return Ok(HoldOutcome::PayerBlocked);
        }
        let (amount, overage) = match &h.plan {
            None => (h.amount_minor, false),
            Some(p) => match Self::plan_at_hold(&mut s, &h.payer, p, h.amount_minor) {
                Ok(charge) => charge,
                Err(outcome) => return Ok(outcome),
            },
        };
        let mut available = s.balance(&h.payer, &h.currency).available;
        if rules::sweep_needed(available, amount) {
            // Short: first give back holds whose holder died without settling (expired).
            Self::sweep(&mut s, &h.payer, now)?;
            available = s.balance(&h.payer, &h.currency).available;
            if !rules::covers(available, amount) {
                return Ok(HoldOutcome::Insufficient {
                    balance_minor: minor(available),
                });
            }
        }
        let until = now.saturating_add(ms(h.ttl));
        if let Some(m) = &h.mandate {
            // The mandate reserves what is held (the overage price under a used-up plan).
            match s.mandate_check(m, amount, now) {
                Ok(()) => s.mandate_reserve(&h.payer, m, amount, &h.id, until),
                Err(MandateRefusal::Revoked) => return Ok(HoldOutcome::MandateRevoked),
                Err(MandateRefusal::Exceeded(room_minor)) => {
                    return Ok(HoldOutcome::MandateExceeded { room_minor })
                }
            }
        }
        let b = rules::place_hold(&s.balance(&h.payer, &h.currency), amount).map_err(rule)?;
        s.set_balance(&h.payer, &h.currency, b);
        s.holds.insert(
            h.id.clone(),
            HoldEntry {
                payer: h.payer.clone(),
                currency: h.currency.clone(),
                amount,
                until_ms: until,
            },
        );
        let balance_minor = minor(b.available);
        Ok(if overage {
            HoldOutcome::Overage { balance_minor }
        } else {
            HoldOutcome::Held { balance_minor }
        })
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            return Ok(Self::capture_covered(&mut s, now, h, p, event));
        }
        if let Some(Settled::Charged {
            event_id,
            charged,
            uncharged,
            currency,
        }) = s.settled(&h.id, now).cloned()
        {
            // A retried capture learns the first outcome (the balance as it is now).
            return Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: charged,
                uncharged_minor: uncharged,
                balance_minor: minor(s.balance(&h.payer, &currency).available),
            });
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let room = match &h.mandate {
            Some(m) => {
                let budget = s
                    .windows
                    .get(&(m.key.clone(), m.window_start_ms))
                    .map_or(0, |w| w.budget);
                Some(s.mandate_room(m, budget, now, Some(&h.id)))
            }
            None => None,
        };
        let before = s.balance(&entry.payer, &entry.currency);
        let c = rules::hold_charge(entry.amount, minor(before.available), actual_minor, room)
            .map_err(rule)?;
        let after = rules::capture_hold(&before, entry.amount, &c).map_err(rule)?;
        s.set_balance(&entry.payer, &entry.currency, after);
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, c.charged);
        }
        let recorded = UsageEvent {
            amount_minor: c.charged,
            uncharged_minor: c.uncharged,
            ..event.clone()
        };
        let event_id = Self::record(&mut s, now, recorded);
        let settled = Settled::Charged {
            event_id: event_id.clone(),
            charged: c.charged,
            uncharged: c.uncharged,
            currency: entry.currency,
        };
        s.remember_settled(now, &h.id, settled, now.saturating_add(SETTLED_KEEP_MS));
        Ok(HoldSettleOutcome::Captured {
            event_id,
            charged_minor: c.charged,
            uncharged_minor: c.uncharged,
            balance_minor: minor(after.available),
        })
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            if s.settled(&h.id, now).is_some() {
                return Ok(HoldSettleOutcome::NotHeld);
            }
            if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                period.used = rules::plan_release_used(period.used, p);
            }
            let until = now.saturating_add(SETTLED_KEEP_MS);
            s.remember_settled(now, &h.id, Settled::Released, until);
            return Ok(HoldSettleOutcome::Released);
        }
        // The mandate reservation goes first, held or not (`release_hold.lua`).
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, 0);
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let b = rules::release_hold(&s.balance(&entry.payer, &entry.currency), entry.amount)
            .map_err(rule)?;
        s.set_balance(&entry.payer, &entry.currency, b);
        Ok(HoldSettleOutcome::Released)
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let key = match &c.idempotency {
            Idempotency::Receipt { issuer, receipt_id } => {
                if s.owned_by_other(&c.payer, issuer, receipt_id, c.keep_until_ms, now) {
                    return Ok(CreditOutcome::ReceiptUsed);
                }
                let r = Reservation {
                    payer: c.payer.clone(),
                    issuer: issuer.clone(),
                    receipt_id: receipt_id.clone(),
                    ..Reservation::empty()
                };
                Self::receipt_key(&r)
            }
            Idempotency::Key(k) => format!("idem:{}:{k}", c.payer),
        };
        let before = s.balance(&c.payer, &c.currency);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Credited { credit_id, .. }) => {
                return Ok(CreditOutcome::Duplicate {
                    credit_id: credit_id.clone(),
                    balance_minor: minor(before.available),
                });
            }
            // Held, spent, subscribed or revoked: not a credit of this key.
            Some(_) => return Ok(CreditOutcome::ReceiptUsed),
            None => {}
        }
        let after = match rules::credit(&before, c.amount_minor).map_err(rule)? {
            CreditDecision::Applied(b) => b,
            CreditDecision::Insufficient => {
                return Ok(CreditOutcome::Insufficient {
                    balance_minor: minor(before.available),
                })
            }
        };
        let credit_id = Self::next_id(&mut s, now);
        s.set_balance(&c.payer, &c.currency, after);
        s.receipts.insert(
            key,
            ReceiptState::Credited {
                credit_id: credit_id.clone(),
                // At least a second, as the script's `PX`.
                until_ms: c.keep_until_ms.max(now.saturating_add(1000)),
            },
        );
        Ok(CreditOutcome::Applied {
            credit_id,
            balance_minor: minor(after.available),
        })
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        let blocked = s.blocked.contains(payer);
        if !blocked {
            // Blocked payers are read as they are (the script answers before sweeping).
            Self::sweep(&mut s, payer, now)?;
        }
        let balances = s
            .accounts
            .iter()
            .filter(|((p, _), _)| p == payer)
            .map(|((_, c), b)| (c.clone(), *b))
            .collect();
        let holds = s.holds.values().filter(|h| h.payer == payer).count() as u64;
        Ok(Account {
            balances,
            holds,
            blocked,
        })
    }
}

impl MemoryStore {
    /// The plan's word on a hold: `Ok((amount to hold, overage))`, or `Err` with the answer
    /// (covered, or exhausted) when nothing is to be held. A covered call plan counts the call.
    fn plan_at_hold(
        s: &mut State,
        payer: &str,
        p: &PlanUse,
        route_amount: u64,
    ) -> Result<(u64, bool), HoldOutcome> {
        let key = (payer.to_owned(), p.plan.clone());
        match rules::plan_hold(s.subs.get(&key), p, route_amount) {
            PlanHold::Covered { used, calls_left } => {
                if let Some(period) = s.subs.get_mut(&key) {
                    period.used = used;
                }
                Err(HoldOutcome::Plan { calls_left })
            }
            PlanHold::Exhausted { period_end_ms } => {
                Err(HoldOutcome::PlanExhausted { period_end_ms })
            }
            PlanHold::Charge { amount, overage } => Ok((amount, overage)),
        }
    }

    /// Record a plan-covered call once (`plan_capture.lua`): the event as given, the day's
    /// request and unit counts (no amount), a unit plan's usage counted.
    fn capture_covered(
        s: &mut State,
        now: i64,
        h: &Hold,
        p: &PlanUse,
        event: &UsageEvent,
    ) -> HoldSettleOutcome {
        let balance_minor = minor(s.balance(&h.payer, &event.currency).available);
        let event_id = match s.settled(&h.id, now) {
            Some(Settled::Released) => return HoldSettleOutcome::NotHeld,
            Some(Settled::Plan { event_id } | Settled::Charged { event_id, .. }) => {
                event_id.clone()
            }
            Some(Settled::Voided) => "void".to_owned(),
            None => {
                if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                    period.used = rules::plan_capture_used(period.used, p, &event.units);
                }
                let id = Self::record_with(s, now, event.clone(), None);
                let settled = Settled::Plan {
                    event_id: id.clone(),
                };
                s.remember_settled(now, &h.id, settled, now.saturating_add(SETTLED_KEEP_MS));
                id
            }
        };
        HoldSettleOutcome::Captured {
            event_id,
            charged_minor: 0,
            uncharged_minor: 0,
            balance_minor,
        }
    }
}
