//! Running a payer's sequence on one backend: handles by slot, outcomes as comparable text
//! (ids normalised to the order this payer first saw them), the final state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_middleware::store::{
    void_event, ChargeFrom, ChargeOutcome, Credit, CreditOutcome, Hold, HoldOutcome,
    HoldSettleOutcome, Idempotency, KeyClaim, LeaseResize, LeaseSync, MandateCharge, PlanUse,
    RefundOutcome, RefundQuery, RefundRecord, RefundRequest, Renewal, Reservation, SettleOutcome,
    Settlement, SubscribeOutcome, Subscription, VoidOutcome,
};
use tollgate_middleware::{Store, UsageEvent};

use crate::ops::Op;
use crate::DAY;

/// Fixed gateway time: plan periods and mandate windows are judged by it on both backends.
pub(crate) struct World {
    pub(crate) t0: i64,
    window: (i64, i64),
}

impl World {
    pub(crate) fn new() -> Self {
        let t0 = tollgate_e2e::now_secs() * 1000;
        World {
            t0,
            window: tollgate_middleware::mandate::Window::Day.bounds(t0),
        }
    }

    fn mandate(&self, payer: &str, amount: u64) -> MandateCharge {
        let key = format!("{payer}-m");
        MandateCharge {
            key: key.clone(),
            budget_minor: 8_000,
            amount_minor: amount,
            window_start_ms: self.window.0,
            window_end_ms: self.window.1,
            summary: serde_json::json!({"id": key, "window": "day"}).to_string(),
        }
    }
}

pub(crate) fn event(
    payer: &str,
    route: &str,
    reservation: &str,
    amount: u64,
    units: u64,
) -> UsageEvent {
    UsageEvent {
        id: String::new(),
        time_ms: 1,
        payer: payer.into(),
        route: route.into(),
        method: "POST".into(),
        units: [("request".to_owned(), 1), ("token".to_owned(), units)].into(),
        unit_prices: Default::default(),
        amount_minor: amount,
        uncharged_minor: 0,
        currency: "USD".into(),
        scale: 6,
        credential: format!("token:{payer}"),
        reservation: reservation.into(),
        upstream_status: 200,
        voids: None,
    }
}

/// One payer's run on one backend: its handles, and ids normalised to first-seen order.
pub(crate) struct Run<'a> {
    store: Arc<dyn Store>,
    world: &'a World,
    payer: String,
    /// Ledger and credit ids, by first appearance in this payer's results.
    pub(crate) ids: HashMap<String, usize>,
    holds: HashMap<u32, Hold>,
    reservations: HashMap<u32, Reservation>,
    /// The charge each slot's last capture recorded (for voids).
    charges: HashMap<u32, UsageEvent>,
    /// The balance lease's last batch number.
    lease_seq: u64,
}

impl<'a> Run<'a> {
    pub(crate) fn new(store: Arc<dyn Store>, world: &'a World, payer: String) -> Self {
        Run {
            store,
            world,
            payer,
            ids: HashMap::new(),
            holds: HashMap::new(),
            reservations: HashMap::new(),
            charges: HashMap::new(),
            lease_seq: 0,
        }
    }

    fn id(&mut self, id: &str) -> String {
        let n = self.ids.len();
        format!("#{}", *self.ids.entry(id.to_owned()).or_insert(n))
    }

    /// Credit ids live in a ledger of their own (on Redis a stream of their own, whose ids can
    /// equal usage event ids): normalised apart.
    fn credit_id(&mut self, id: &str) -> String {
        self.id(&format!("credit {id}"))
    }

    fn reservation(&self, slot: u32, jti: u32, mandate: Option<u64>) -> Reservation {
        Reservation {
            id: format!("{}-r{slot}", self.payer),
            payer: self.payer.clone(),
            issuer: "iss".into(),
            receipt_id: format!("{}-j{jti}", self.payer),
            hold: Duration::from_secs(600),
            spent_until_ms: self.world.t0 + 3_600_000,
            mandate: mandate.map(|a| self.world.mandate(&self.payer, a)),
        }
    }

    fn plain_hold(&self, slot: u32, amount: u64) -> Hold {
        Hold {
            id: format!("{}-h{slot}", self.payer),
            payer: self.payer.clone(),
            currency: "USD".into(),
            amount_minor: amount,
            ttl: Duration::from_secs(600),
            mandate: None,
            plan: None,
        }
    }

    fn credit(&self, idempotency: Idempotency, amount: i64) -> Credit {
        Credit {
            payer: self.payer.clone(),
            currency: "USD".into(),
            amount_minor: amount,
            idempotency,
            keep_until_ms: self.world.t0 + 3_600_000,
            reason: "diff".into(),
            source: "admin".into(),
        }
    }

    pub(crate) async fn step(&mut self, op: &Op) -> String {
        let s = self.store.clone();
        let p = self.payer.clone();
        match op {
            Op::Credit { key, amount } => {
                let c = self.credit(Idempotency::Key(format!("k{key}")), *amount);
                let out = s.credit(&c).await.unwrap();
                self.credit_outcome(out)
            }
            Op::TopUp { jti, amount } => {
                let c = self.credit(
                    Idempotency::Receipt {
                        issuer: "iss".into(),
                        receipt_id: format!("{p}-j{jti}"),
                    },
                    *amount,
                );
                let out = s.credit(&c).await.unwrap();
                self.credit_outcome(out)
            }
            Op::Hold {
                slot,
                amount,
                mandate,
                plan,
            } => {
                let mut h = self.plain_hold(*slot, *amount);
                h.mandate = mandate.then(|| self.world.mandate(&p, *amount));
                h.plan = plan.map(|(i, deny, route_price, unit)| PlanUse {
                    plan: format!("plan{i}"),
                    deny,
                    route_price,
                    unit: unit.then(|| "token".to_owned()),
                    overage_minor: 25,
                    now_ms: self.world.t0,
                    covered: false,
                });
                let out = s.hold(&h).await.unwrap();
                if let (HoldOutcome::Plan { .. }, Some(p)) = (&out, h.plan.as_mut()) {
                    p.covered = true;
                }
                self.holds.insert(*slot, h);
                format!("{out:?}")
            }
            Op::Capture { slot, actual } => {
                let h = self
                    .holds
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.plain_hold(*slot, 0));
                let e = event(&p, "metered", &h.id, 0, actual % 97);
                let out = s.capture_hold(&h, *actual, &e).await.unwrap();
                self.hold_settled(out)
            }
            Op::Release { slot } => {
                let h = self
                    .holds
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.plain_hold(*slot, 0));
                format!("{:?}", s.release_hold(&h).await.unwrap())
            }
            Op::Renew { slot } => {
                let h = self
                    .holds
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.plain_hold(*slot, 0));
                format!(
                    "{:?}",
                    s.renew(Renewal::Balance(&h), Duration::from_secs(600))
                        .await
                        .unwrap()
                )
            }
            Op::Extend { slot, want } => {
                let h = self
                    .holds
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.plain_hold(*slot, 0));
                format!("{:?}", s.extend_hold(&h, *want).await.unwrap())
            }
            Op::HoldCapture { slot, amount } => {
                let h = self.plain_hold(*slot, *amount);
                let e = event(&p, "fixed", &h.id, *amount, 0);
                let out = s
                    .charge_at_admission(ChargeFrom::Balance(&h), &e)
                    .await
                    .unwrap();
                self.holds.insert(*slot, h);
                self.charged(*slot, e, out)
            }
            Op::VoidHold { slot, wrong } => {
                let h = self
                    .holds
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.plain_hold(*slot, 0));
                let charge = self.charge_of(*slot, *wrong, &h.id);
                let void = void_event(&charge, 1, 0);
                let out = s
                    .void_admission(ChargeFrom::Balance(&h), &charge, &void)
                    .await
                    .unwrap();
                self.voided(out)
            }
            Op::Authorize { slot, jti, mandate } => {
                let r = self.reservation(*slot, *jti, *mandate);
                let out = s.authorize(&r).await.unwrap();
                self.reservations.insert(*slot, r);
                format!("{out:?}")
            }
            Op::Settle { slot, capture } => {
                let r = self
                    .reservations
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.reservation(*slot, 0, None));
                let settlement = match capture {
                    Some(a) => Settlement::Capture(Box::new(event(&p, "receipt", &r.id, *a, 0))),
                    None => Settlement::Release,
                };
                let out = s.settle(&r, &settlement).await.unwrap();
                if let (SettleOutcome::Captured { event_id }, Settlement::Capture(e)) =
                    (&out, &settlement)
                {
                    self.charges.insert(
                        *slot,
                        UsageEvent {
                            id: event_id.clone(),
                            ..(**e).clone()
                        },
                    );
                }
                self.settled(out)
            }
            Op::AuthorizeCapture { slot, jti, amount } => {
                let r = self.reservation(*slot, *jti, None);
                let e = event(&p, "fixed-receipt", &r.id, *amount, 0);
                let out = s
                    .charge_at_admission(ChargeFrom::Receipt(&r), &e)
                    .await
                    .unwrap();
                self.reservations.insert(*slot, r);
                self.charged(*slot, e, out)
            }
            Op::VoidReceipt { slot, wrong } => {
                let r = self
                    .reservations
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.reservation(*slot, 0, None));
                let charge = self.charge_of(*slot, *wrong, &r.id);
                let void = void_event(&charge, 1, 502);
                let out = s
                    .void_admission(ChargeFrom::Receipt(&r), &charge, &void)
                    .await
                    .unwrap();
                self.voided(out)
            }
            Op::RenewReceipt { slot } => {
                let r = self
                    .reservations
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.reservation(*slot, 0, None));
                format!(
                    "{:?}",
                    s.renew(Renewal::Receipt(&r), Duration::from_secs(600))
                        .await
                        .unwrap()
                )
            }
            Op::Deferred { slot, amount } => {
                let r = self
                    .reservations
                    .get(slot)
                    .cloned()
                    .unwrap_or_else(|| self.reservation(*slot, 0, None));
                // x402 payments carry no mandate.
                let r = Reservation { mandate: None, ..r };
                let e = event(&p, "x402", &r.id, *amount, 0);
                let out = s
                    .capture_deferred(&r, &e, &format!("{{\"slot\":{slot}}}"))
                    .await
                    .unwrap();
                self.settled(out)
            }
            Op::Revoke { jti } => {
                format!(
                    "{:?}",
                    s.revoke_receipt("iss", &format!("{p}-j{jti}"))
                        .await
                        .unwrap()
                )
            }
            Op::Subscribe { plan, jti, calls } => {
                let sub = Subscription {
                    payer: p.clone(),
                    plan: format!("plan{plan}"),
                    period_ms: 3_600_000,
                    calls: *calls,
                    now_ms: self.world.t0,
                    issuer: "iss".into(),
                    receipt_id: format!("{p}-j{jti}"),
                    keep_until_ms: self.world.t0 + 3_600_000,
                    event: event(&p, "subscribe", "", 300, 0),
                };
                match s.subscribe(&sub).await.unwrap() {
                    SubscribeOutcome::Subscribed {
                        event_id,
                        period_end_ms,
                    } => {
                        format!("Subscribed({}, {period_end_ms})", self.id(&event_id))
                    }
                    SubscribeOutcome::Duplicate {
                        event_id,
                        period_end_ms,
                    } => {
                        format!("Duplicate({}, {period_end_ms})", self.id(&event_id))
                    }
                    other => format!("{other:?}"),
                }
            }
            Op::Claim { key, fp, token } => {
                let out = s
                    .idempotency_claim(
                        &KeyClaim::new(&p, format!("k{key}"), format!("t{token}")),
                        &format!("fp{fp}"),
                        Duration::from_secs(600),
                    )
                    .await
                    .unwrap();
                format!("{out:?}")
            }
            Op::Finish { key, token, done } => {
                let done = done.then(|| (format!("e{token}"), i64::from(*token)));
                s.idempotency_finish(
                    &KeyClaim::new(&p, format!("k{key}"), format!("t{token}")),
                    done.as_ref().map(|(e, t)| (e.as_str(), *t)),
                )
                .await
                .unwrap();
                "finished".into()
            }
            Op::Block(b) => {
                s.set_blocked(&p, *b).await.unwrap();
                format!("blocked {b}")
            }
            Op::RevokeMandate => {
                s.revoke_mandate(&format!("{p}-m")).await.unwrap();
                "mandate revoked".into()
            }
            Op::Lease {
                retry,
                charges,
                target,
                fit,
            } => {
                if !charges.is_empty() && (!retry || self.lease_seq == 0) {
                    self.lease_seq += 1;
                }
                let seq = if charges.is_empty() {
                    0
                } else {
                    self.lease_seq
                };
                let events: Vec<UsageEvent> = charges
                    .iter()
                    .enumerate()
                    .map(|(i, a)| event(&p, "lease", &format!("l{seq}-{i}"), *a, 0))
                    .collect();
                let lease_id = format!("lease:{p}:USD");
                let out = s
                    .lease_sync(&LeaseSync {
                        lease_id: &lease_id,
                        payer: &p,
                        currency: "USD",
                        seq,
                        reserved_minor: 0,
                        target_minor: *target,
                        resize: if *fit {
                            LeaseResize::Fit
                        } else {
                            LeaseResize::Grow
                        },
                        ttl: Duration::from_secs(600),
                        charges: &events,
                    })
                    .await
                    .unwrap();
                format!(
                    "lease {:?} held {} balance {} had {} charged {} uncharged {} events {} short {:?}",
                    out.status,
                    out.lease_minor,
                    out.balance_minor,
                    out.had_lease,
                    out.charged_minor,
                    out.uncharged_minor(),
                    out.recorded,
                    out.short
                )
            }
            Op::Account => {
                let a = s.account(&p).await.unwrap();
                format!("{:?} {} {}", a.balances, a.holds, a.blocked)
            }
            Op::Refund { slot, key, amount } => {
                let Some(charge) = self.charges.get(slot).cloned() else {
                    return "no charge".into();
                };
                let r = RefundRequest {
                    fingerprint: format!("{}|{amount:?}", charge.id),
                    voided: false,
                    amount_minor: *amount,
                    reason: "diff".into(),
                    key: format!("{p}-k{key}"),
                    time_ms: charge.time_ms + 1_000,
                    charge,
                };
                let out = s.refund(&r).await.unwrap();
                self.refunded(out)
            }
        }
    }

    /// Refund ids live in a ledger of their own (on Redis a stream of their own): normalised
    /// apart, as credit ids.
    fn refund_record(&mut self, r: &RefundRecord) -> String {
        let id = self.id(&format!("refund {}", r.id));
        let credit = r.credit_id.as_deref().map(|c| self.credit_id(c));
        let event = self.id(&r.event_id);
        format!(
            "{id} of {event} {} left {} credit {credit:?} owed {:?}",
            r.amount_minor, r.remaining_minor, r.owed_to
        )
    }

    fn refunded(&mut self, out: RefundOutcome) -> String {
        match out {
            RefundOutcome::Refunded(r) => format!("Refunded({})", self.refund_record(&r)),
            RefundOutcome::Duplicate(r) => format!("Duplicate({})", self.refund_record(&r)),
            other => format!("{other:?}"),
        }
    }

    /// The charge to void: the slot's last recorded charge (or a wrong or unknown one).
    fn charge_of(&self, slot: u32, wrong: bool, reservation: &str) -> UsageEvent {
        let known = self.charges.get(&slot).cloned();
        match known {
            Some(c) if !wrong => c,
            Some(c) => UsageEvent {
                amount_minor: c.amount_minor + 1,
                ..c
            },
            None => UsageEvent {
                id: "1-1-0".into(),
                ..event(&self.payer, "fixed", reservation, 0, 0)
            },
        }
    }

    fn credit_outcome(&mut self, out: CreditOutcome) -> String {
        match out {
            CreditOutcome::Applied {
                credit_id,
                balance_minor,
            } => {
                format!("Applied({}, {balance_minor})", self.credit_id(&credit_id))
            }
            CreditOutcome::Duplicate {
                credit_id,
                balance_minor,
            } => {
                format!("Duplicate({}, {balance_minor})", self.credit_id(&credit_id))
            }
            other => format!("{other:?}"),
        }
    }

    fn hold_settled(&mut self, out: HoldSettleOutcome) -> String {
        match out {
            HoldSettleOutcome::Captured {
                event_id,
                charged_minor,
                uncharged_minor,
                balance_minor,
            } => {
                format!(
                    "Captured({}, {charged_minor}, {uncharged_minor}, {balance_minor})",
                    self.id(&event_id)
                )
            }
            other => format!("{other:?}"),
        }
    }

    fn charged(&mut self, slot: u32, e: UsageEvent, out: ChargeOutcome) -> String {
        match out {
            ChargeOutcome::Charged {
                event_id,
                balance_minor,
            } => {
                self.charges.insert(
                    slot,
                    UsageEvent {
                        id: event_id.clone(),
                        ..e
                    },
                );
                format!("Charged({}, {balance_minor})", self.id(&event_id))
            }
            other => format!("{other:?}"),
        }
    }

    fn voided(&mut self, out: VoidOutcome) -> String {
        match out {
            VoidOutcome::Voided { event_id } => format!("Voided({})", self.id(&event_id)),
            other => format!("{other:?}"),
        }
    }

    fn settled(&mut self, out: SettleOutcome) -> String {
        match out {
            SettleOutcome::Captured { event_id } => format!("Captured({})", self.id(&event_id)),
            SettleOutcome::AlreadyCaptured { event_id } => {
                format!("AlreadyCaptured({})", self.id(&event_id))
            }
            other => format!("{other:?}"),
        }
    }

    /// What the payer's state looks like at the end, ids normalised.
    pub(crate) async fn final_state(&mut self) -> Vec<String> {
        let s = self.store.clone();
        let p = self.payer.clone();
        let a = s.account(&p).await.unwrap();
        let mut out = vec![format!(
            "account {:?} holds {} blocked {}",
            a.balances, a.holds, a.blocked
        )];
        for plan in ["plan0", "plan1"] {
            out.push(format!(
                "{plan} {:?}",
                s.subscription(&p, plan).await.unwrap()
            ));
        }
        let mut mandates: Vec<String> = s
            .mandates(&p, self.world.t0)
            .await
            .unwrap()
            .into_iter()
            .map(|(summary, used)| format!("{summary} {used:?}"))
            .collect();
        mandates.sort();
        out.extend(mandates);
        out.push(format!(
            "usage {:?}",
            s.usage(Some(&p), DAY, DAY).await.unwrap()
        ));
        let q = RefundQuery {
            payer: Some(p.clone()),
            limit: 1000,
            ..RefundQuery::default()
        };
        for r in s.refunds(&q).await.unwrap() {
            let line = self.refund_record(&r);
            out.push(format!("refund {line} reason {}", r.reason));
        }
        for e in s
            .usage_events()
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.payer == p)
        {
            let id = self.id(&e.id);
            let voids = e.voids.as_deref().map(|v| self.id(v));
            out.push(format!(
                "event {id} voids {voids:?} {:?}",
                UsageEvent {
                    id: String::new(),
                    voids: None,
                    ..e
                }
            ));
        }
        out
    }
}
