//! The sqlite store's prepaid balances: holds, their capture or release, credits, the account
//! ([`crate::store::BalanceStore`]). The arithmetic is [`crate::store::rules`]'; the order of
//! checks is the scripts' (`hold.lua`, `capture_hold.lua`, `plan_capture.lua`, ...).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::tx::{rule, HoldRow, MandateRefusal, ReceiptState, Settled, Tx};
use super::SqliteStore;
use crate::store::rules::{self, minor, CreditDecision, PlanHold};
use crate::store::{
    Account, BalanceStore, Credit, CreditOutcome, Hold, HoldOutcome, HoldSettleOutcome,
    Idempotency, PlanUse, Renewal, Reservation, StoreError, UsageEvent,
};

/// How long a capture's settled marker is kept: as long as a retried capture or the
/// reconciler can ask for it, as the Redis store's `done:` keys
/// ([`crate::store::DEFAULT_SETTLED_KEEP`]), so the file does not keep a row per request
/// beyond the ledger's own.
const SETTLED_KEEP_MS: i64 = crate::store::DEFAULT_SETTLED_KEEP.as_millis() as i64;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What [`BalanceStore::renew`] extends.
enum Renewed {
    Receipt(Reservation),
    Balance(Hold),
}

#[async_trait]
impl BalanceStore for SqliteStore {
    async fn renew(&self, held: Renewal<'_>, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.now();
        let until = now.saturating_add(ms(ttl));
        let held = match held {
            Renewal::Receipt(r) => Renewed::Receipt(r.clone()),
            Renewal::Balance(h) => Renewed::Balance(h.clone()),
        };
        self.run(move |t| {
            let (id, mandate) = match &held {
                Renewed::Receipt(r) => {
                    // A receipt hold that expired is gone (Redis: the key expired).
                    let key = Tx::receipt_key(r);
                    match t.receipt(&key, now)? {
                        Some(ReceiptState::Held { reservation }) if reservation == r.id => {
                            t.put_receipt(&key, &ReceiptState::Held { reservation }, until)?;
                        }
                        _ => return Ok(false),
                    }
                    (&r.id, r.mandate.as_ref())
                }
                Renewed::Balance(h) => {
                    // A balance hold lives until swept, expired or not (the holds hash).
                    let n = t.exec(
                        "UPDATE holds SET until_ms = ?2 WHERE id = ?1",
                        params![h.id, until],
                    )?;
                    if n == 0 {
                        return Ok(false);
                    }
                    (&h.id, h.mandate.as_ref())
                }
            };
            if let Some(m) = mandate {
                t.renew_mandate_hold(m, id, until)?;
            }
            Ok(true)
        })
        .await
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        let now = self.now();
        let h = h.clone();
        self.run(move |t| {
            if t.blocked(&h.payer)? {
                return Ok(HoldOutcome::PayerBlocked);
            }
            let (amount, overage) = match &h.plan {
                None => (h.amount_minor, false),
                Some(p) => match plan_at_hold(t, &h.payer, p, h.amount_minor)? {
                    Ok(charge) => charge,
                    Err(outcome) => return Ok(outcome),
                },
            };
            let mut available = t.balance(&h.payer, &h.currency)?.available;
            if rules::sweep_needed(available, amount) {
                // Short: first give back holds whose holder died without settling (expired).
                t.sweep(&h.payer, now)?;
                available = t.balance(&h.payer, &h.currency)?.available;
                if !rules::covers(available, amount) {
                    return Ok(HoldOutcome::Insufficient {
                        balance_minor: minor(available),
                    });
                }
            }
            let until = now.saturating_add(ms(h.ttl));
            if let Some(m) = &h.mandate {
                // The mandate reserves what is held (the overage price under a used-up plan).
                match t.mandate_check(m, amount, now)? {
                    Ok(()) => t.mandate_reserve(&h.payer, m, amount, &h.id, until)?,
                    Err(MandateRefusal::Revoked) => return Ok(HoldOutcome::MandateRevoked),
                    Err(MandateRefusal::Exceeded(room_minor)) => {
                        return Ok(HoldOutcome::MandateExceeded { room_minor })
                    }
                }
            }
            let b = rules::place_hold(&t.balance(&h.payer, &h.currency)?, amount).map_err(rule)?;
            t.set_balance(&h.payer, &h.currency, b)?;
            let row = HoldRow {
                payer: h.payer.clone(),
                currency: h.currency.clone(),
                amount,
            };
            t.put_hold(&h.id, &row, until)?;
            let balance_minor = minor(b.available);
            Ok(if overage {
                HoldOutcome::Overage { balance_minor }
            } else {
                HoldOutcome::Held { balance_minor }
            })
        })
        .await
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual_minor: u64,
        event: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        let now = self.now();
        let (h, event) = (h.clone(), event.clone());
        self.run(move |t| {
            if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
                return capture_covered(t, now, &h, p, &event);
            }
            if let Some(Settled::Charged {
                event_id,
                charged,
                uncharged,
                currency,
            }) = t.settled(&h.id, now)?
            {
                // A retried capture learns the first outcome (the balance as it is now).
                return Ok(HoldSettleOutcome::Captured {
                    event_id,
                    charged_minor: charged,
                    uncharged_minor: uncharged,
                    balance_minor: minor(t.balance(&h.payer, &currency)?.available),
                });
            }
            let Some(entry) = t.take_hold(&h.id)? else {
                return Ok(HoldSettleOutcome::NotHeld);
            };
            let room = match &h.mandate {
                Some(m) => Some(t.mandate_room(m, t.window_budget(m)?, now, Some(&h.id))?),
                None => None,
            };
            let before = t.balance(&entry.payer, &entry.currency)?;
            let c = rules::hold_charge(entry.amount, minor(before.available), actual_minor, room)
                .map_err(rule)?;
            let after = rules::capture_hold(&before, entry.amount, &c).map_err(rule)?;
            t.set_balance(&entry.payer, &entry.currency, after)?;
            if let Some(m) = &h.mandate {
                t.mandate_settle(m, &h.id, c.charged)?;
            }
            let recorded = UsageEvent {
                amount_minor: c.charged,
                uncharged_minor: c.uncharged,
                ..event
            };
            let event_id = t.record(now, &recorded)?;
            let settled = Settled::Charged {
                event_id: event_id.clone(),
                charged: c.charged,
                uncharged: c.uncharged,
                currency: entry.currency,
            };
            t.remember_settled(&h.id, &settled, now.saturating_add(SETTLED_KEEP_MS))?;
            Ok(HoldSettleOutcome::Captured {
                event_id,
                charged_minor: c.charged,
                uncharged_minor: c.uncharged,
                balance_minor: minor(after.available),
            })
        })
        .await
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        let now = self.now();
        let h = h.clone();
        self.run(move |t| {
            if let Some(p) = h.plan.as_ref().filter(|p| p.covered) {
                if t.settled(&h.id, now)?.is_some() {
                    return Ok(HoldSettleOutcome::NotHeld);
                }
                if let Some(period) = t.period(&h.payer, &p.plan)? {
                    t.set_period_used(&h.payer, &p.plan, rules::plan_release_used(period.used, p))?;
                }
                let until = now.saturating_add(SETTLED_KEEP_MS);
                t.remember_settled(&h.id, &Settled::Released, until)?;
                return Ok(HoldSettleOutcome::Released);
            }
            // The mandate reservation goes first, held or not (`release_hold.lua`).
            if let Some(m) = &h.mandate {
                t.mandate_settle(m, &h.id, 0)?;
            }
            let Some(entry) = t.take_hold(&h.id)? else {
                return Ok(HoldSettleOutcome::NotHeld);
            };
            let b = rules::release_hold(&t.balance(&entry.payer, &entry.currency)?, entry.amount)
                .map_err(rule)?;
            t.set_balance(&entry.payer, &entry.currency, b)?;
            Ok(HoldSettleOutcome::Released)
        })
        .await
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        let now = self.now();
        let c = c.clone();
        self.run(move |t| {
            let key = match &c.idempotency {
                Idempotency::Receipt { issuer, receipt_id } => {
                    if t.owned_by_other(&c.payer, issuer, receipt_id, c.keep_until_ms, now)? {
                        return Ok(CreditOutcome::ReceiptUsed);
                    }
                    Tx::receipt_key(&Reservation {
                        payer: c.payer.clone(),
                        issuer: issuer.clone(),
                        receipt_id: receipt_id.clone(),
                        ..Reservation::empty()
                    })
                }
                Idempotency::Key(k) => format!("idem:{}:{k}", c.payer),
            };
            let before = t.balance(&c.payer, &c.currency)?;
            match t.receipt(&key, now)? {
                Some(ReceiptState::Credited { credit_id }) => {
                    return Ok(CreditOutcome::Duplicate {
                        credit_id,
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
            t.set_balance(&c.payer, &c.currency, after)?;
            let credit_id = t.insert_credit(
                now,
                (&c.payer, &c.currency),
                c.amount_minor,
                (&c.reason, &c.source),
            )?;
            let credited = ReceiptState::Credited {
                credit_id: credit_id.clone(),
            };
            // At least a second, as the script's `PX`.
            t.put_receipt(
                &key,
                &credited,
                c.keep_until_ms.max(now.saturating_add(1000)),
            )?;
            Ok(CreditOutcome::Applied {
                credit_id,
                balance_minor: minor(after.available),
            })
        })
        .await
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        let now = self.now();
        let payer = payer.to_owned();
        self.run(move |t| {
            let blocked = t.blocked(&payer)?;
            if !blocked {
                // Blocked payers are read as they are (the script answers before sweeping).
                t.sweep(&payer, now)?;
            }
            let balances = t
                .rows(
                    "SELECT currency, available, held, credited, captured FROM accounts \
                     WHERE payer = ?1",
                    [&payer],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            crate::store::Balance {
                                available: r.get(1)?,
                                held: r.get(2)?,
                                credited: r.get(3)?,
                                captured: r.get(4)?,
                            },
                        ))
                    },
                )?
                .into_iter()
                .collect();
            let holds = t
                .row(
                    "SELECT count(*) FROM holds WHERE payer = ?1",
                    [&payer],
                    |r| r.get::<_, u64>(0),
                )?
                .unwrap_or(0);
            Ok(Account {
                balances,
                holds,
                blocked,
            })
        })
        .await
    }
}

/// The plan's word on a hold: `Ok((amount to hold, overage))`, or `Err` with the answer
/// (covered, or exhausted) when nothing is to be held. A covered call plan counts the call.
fn plan_at_hold(
    t: &Tx<'_>,
    payer: &str,
    p: &PlanUse,
    route_amount: u64,
) -> Result<Result<(u64, bool), HoldOutcome>, StoreError> {
    let period = t.period(payer, &p.plan)?;
    Ok(match rules::plan_hold(period.as_ref(), p, route_amount) {
        PlanHold::Covered { used, calls_left } => {
            t.set_period_used(payer, &p.plan, used)?;
            Err(HoldOutcome::Plan { calls_left })
        }
        PlanHold::Exhausted { period_end_ms } => Err(HoldOutcome::PlanExhausted { period_end_ms }),
        PlanHold::Charge { amount, overage } => Ok((amount, overage)),
    })
}

/// Record a plan-covered call once (`plan_capture.lua`): the event as given, the day's request
/// and unit counts (no amount), a unit plan's usage counted.
fn capture_covered(
    t: &Tx<'_>,
    now: i64,
    h: &Hold,
    p: &PlanUse,
    event: &UsageEvent,
) -> Result<HoldSettleOutcome, StoreError> {
    let balance_minor = minor(t.balance(&h.payer, &event.currency)?.available);
    let event_id = match t.settled(&h.id, now)? {
        Some(Settled::Released) => return Ok(HoldSettleOutcome::NotHeld),
        Some(Settled::Plan { event_id } | Settled::Charged { event_id, .. }) => event_id,
        Some(Settled::Voided) => "void".to_owned(),
        None => {
            if let Some(period) = t.period(&h.payer, &p.plan)? {
                let used = rules::plan_capture_used(period.used, p, &event.units);
                t.set_period_used(&h.payer, &p.plan, used)?;
            }
            let id = t.record_with(now, event, None)?;
            let settled = Settled::Plan {
                event_id: id.clone(),
            };
            t.remember_settled(&h.id, &settled, now.saturating_add(SETTLED_KEEP_MS))?;
            id
        }
    };
    Ok(HoldSettleOutcome::Captured {
        event_id,
        charged_minor: 0,
        uncharged_minor: 0,
        balance_minor,
    })
}
