//! The memory store's prepaid balances: holds, their capture or release, credits, the account ([`crate::store::BalanceStore`]).

use super::*;

#[async_trait]
impl BalanceStore for MemoryStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let mut s = self.lock()?;
        let (id, mandate) = match held {
            Renewal::Receipt(r) => {
                let key = Self::receipt_key(r);
                match s.receipts.get_mut(&key) {
                    Some(ReceiptState::Held {
                        reservation,
                        until_ms,
                    }) if *reservation == r.id => *until_ms = until,
                    _ => return Ok(false),
                }
                (&r.id, r.mandate.as_ref())
            }
            Renewal::Balance(h) => {
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
        Self::sweep(&mut s, &h.payer, now);
        let mut amount = i64::try_from(h.amount_minor)
            .map_err(|_| StoreError::Protocol("amount too large".into()))?;
        let mut overage = false;
        if let Some(p) = &h.plan {
            if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                if period.end_ms > p.now_ms {
                    // Unit plans count at capture; call plans count here.
                    let step = u64::from(p.unit.is_none());
                    match period.calls {
                        None => {
                            period.used += step;
                            return Ok(HoldOutcome::Plan { calls_left: None });
                        }
                        Some(calls) if period.used < calls => {
                            period.used += step;
                            return Ok(HoldOutcome::Plan {
                                calls_left: Some(calls - period.used),
                            });
                        }
                        Some(_) if p.deny => {
                            return Ok(HoldOutcome::PlanExhausted {
                                period_end_ms: period.end_ms,
                            })
                        }
                        Some(_) if p.route_price => {}
                        Some(_) => {
                            amount = i64::try_from(p.overage_minor).unwrap_or(i64::MAX);
                            overage = true;
                        }
                    }
                }
            }
        }
        let available = s
            .accounts
            .get(&(h.payer.clone(), h.currency.clone()))
            .map_or(0, |a| a.available);
        if available < amount {
            return Ok(HoldOutcome::Insufficient {
                balance_minor: minor(available),
            });
        }
        let ttl = i64::try_from(h.ttl.as_millis()).unwrap_or(i64::MAX);
        if let Some(m) = &h.mandate {
            match s.mandate_check(m, now) {
                Ok(()) => s.mandate_reserve(&h.payer, m, &h.id, now.saturating_add(ttl)),
                Err(MandateRefusal::Revoked) => return Ok(HoldOutcome::MandateRevoked),
                Err(MandateRefusal::Exceeded(room_minor)) => {
                    return Ok(HoldOutcome::MandateExceeded { room_minor })
                }
            }
        }
        let acct = s
            .accounts
            .entry((h.payer.clone(), h.currency.clone()))
            .or_default();
        acct.available -= amount;
        acct.held += amount;
        let left = minor(acct.available);
        let hold_amount = amount;
        s.holds.insert(
            h.id.clone(),
            HoldEntry {
                payer: h.payer.clone(),
                currency: h.currency.clone(),
                amount: hold_amount,
                until_ms: now.saturating_add(ttl),
            },
        );
        if overage {
            return Ok(HoldOutcome::Overage {
                balance_minor: left,
            });
        }
        Ok(HoldOutcome::Held {
            balance_minor: left,
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
        if h.plan.as_ref().is_some_and(|p| p.covered) && !s.settled.contains_key(&h.id) {
            if s.plan_released.contains(&h.id) {
                return Ok(HoldSettleOutcome::NotHeld);
            }
            let event_id = Self::record(&mut s, now, event.clone(), 0, 0);
            Self::remember_settled(&mut s, now, &h.id, (event_id.clone(), 0, 0));
            if let Some(p) = &h.plan {
                let add = p
                    .unit
                    .as_ref()
                    .and_then(|u| event.units.get(u).copied())
                    .unwrap_or(0);
                if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                    period.used += add;
                }
            }
            let balance = s
                .accounts
                .get(&(h.payer.clone(), h.currency.clone()))
                .map_or(0, |a| minor(a.available));
            return Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: 0,
                uncharged_minor: 0,
                balance_minor: balance,
            });
        }
        if let Some((event_id, charged, uncharged)) = s.settled.get(&h.id).cloned() {
            let balance = s
                .accounts
                .get(&(h.payer.clone(), h.currency.clone()))
                .map(|a| minor(a.available))
                .unwrap_or(0);
            return Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: charged,
                uncharged_minor: uncharged,
                balance_minor: balance,
            });
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let mut actual = i64::try_from(actual_minor).unwrap_or(i64::MAX);
        let mut beyond_mandate = 0;
        if let Some(m) = &h.mandate {
            // Never beyond the mandate's window budget: the rest is recorded as uncharged.
            let room = s.mandate_room(m, now, Some(&h.id)).max(0);
            if actual > room {
                beyond_mandate = actual - room;
                actual = room;
            }
        }
        let acct = s
            .accounts
            .entry((entry.payer.clone(), entry.currency.clone()))
            .or_default();
        let (charge, uncharged) = if actual > entry.amount + acct.available {
            (
                entry.amount + acct.available,
                actual - entry.amount - acct.available + beyond_mandate,
            )
        } else {
            (actual, beyond_mandate)
        };
        acct.held -= entry.amount;
        acct.available += entry.amount - charge;
        acct.captured += charge;
        let balance = minor(acct.available);
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, minor(charge));
        }
        let event_id = Self::record(&mut s, now, event.clone(), minor(charge), minor(uncharged));
        Self::remember_settled(
            &mut s,
            now,
            &h.id,
            (event_id.clone(), minor(charge), minor(uncharged)),
        );
        Ok(HoldSettleOutcome::Captured {
            event_id,
            charged_minor: minor(charge),
            uncharged_minor: minor(uncharged),
            balance_minor: balance,
        })
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        let mut s = self.lock()?;
        if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
            if s.settled.contains_key(&h.id) || !s.plan_released.insert(h.id.clone()) {
                return Ok(HoldSettleOutcome::NotHeld);
            }
            if let Some(period) = s.subs.get_mut(&(h.payer.clone(), p.plan.clone())) {
                if p.unit.is_none() {
                    period.used = period.used.saturating_sub(1);
                }
            }
            return Ok(HoldSettleOutcome::Released);
        }
        let Some(entry) = s.holds.remove(&h.id) else {
            return Ok(HoldSettleOutcome::NotHeld);
        };
        let acct = s.accounts.entry((entry.payer, entry.currency)).or_default();
        acct.held -= entry.amount;
        acct.available += entry.amount;
        if let Some(m) = &h.mandate {
            s.mandate_settle(m, &h.id, 0);
        }
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
                    id: String::new(),
                    payer: c.payer.clone(),
                    issuer: issuer.clone(),
                    receipt_id: receipt_id.clone(),
                    hold: std::time::Duration::ZERO,
                    spent_until_ms: 0,
                    mandate: None,
                };
                Self::receipt_key(&r)
            }
            Idempotency::Key(k) => format!("idem:{}:{k}", c.payer),
        };
        let available = s
            .accounts
            .get(&(c.payer.clone(), c.currency.clone()))
            .map(|a| a.available)
            .unwrap_or(0);
        match Self::live(&s, &key, now) {
            Some(ReceiptState::Credited { credit_id, .. }) => {
                return Ok(CreditOutcome::Duplicate {
                    credit_id: credit_id.clone(),
                    balance_minor: minor(available),
                });
            }
            Some(_) => return Ok(CreditOutcome::ReceiptUsed),
            None => {}
        }
        if c.amount_minor < 0 && available + c.amount_minor < 0 {
            return Ok(CreditOutcome::Insufficient {
                balance_minor: minor(available),
            });
        }
        let credit_id = Self::next_id(&mut s, now);
        let acct = s
            .accounts
            .entry((c.payer.clone(), c.currency.clone()))
            .or_default();
        acct.available += c.amount_minor;
        acct.credited += c.amount_minor;
        let balance = minor(acct.available);
        s.receipts.insert(
            key,
            ReceiptState::Credited {
                credit_id: credit_id.clone(),
                until_ms: c.keep_until_ms,
            },
        );
        Ok(CreditOutcome::Applied {
            credit_id,
            balance_minor: balance,
        })
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        let now = self.clock.now_ms();
        let mut s = self.lock()?;
        Self::sweep(&mut s, payer, now);
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
            blocked: s.blocked.contains(payer),
        })
    }
}
