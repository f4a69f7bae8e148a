//! The money rules, written once: the pure arithmetic and decisions behind every store step
//! that moves money (holds, captures, releases, credits and debits, charges at admission and
//! their voids, mandate windows, plan periods, the rate limit).
//!
//! No I/O, no locks, no clock: every input is a value the caller read, every output a value it
//! writes back, in integer minor units with checked arithmetic. The Redis backend runs the same
//! rules in Lua (`store/lua/*.lua`, one script per step, atomic on the server); the memory store
//! and every future non-Lua backend call this module instead of re-deriving them, and the
//! differential test (`tests/tests/differential.rs`) keeps the two equal.
//!
//! The invariant every function keeps, per payer and currency:
//! `credited - captured == available + held`, with `available` and `held` never negative.

use super::{Balance, PlanPeriod, PlanUse, RateLimit};

/// A rule was asked for arithmetic its integers cannot hold (a corrupt or hostile input; the
/// store refuses the step rather than wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// An amount or balance out of range.
    #[error("amount out of range")]
    Overflow,
}

fn signed(v: u64) -> Result<i64, RuleError> {
    i64::try_from(v).map_err(|_| RuleError::Overflow)
}

fn add(a: i64, b: i64) -> Result<i64, RuleError> {
    a.checked_add(b).ok_or(RuleError::Overflow)
}

fn sub(a: i64, b: i64) -> Result<i64, RuleError> {
    a.checked_sub(b).ok_or(RuleError::Overflow)
}

/// A balance field as minor units (a negative value, which the rules never produce, reads 0).
pub fn minor(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Whether the available balance covers `amount` (`hold.lua`: `bal < amount` is short).
pub fn covers(available: i64, amount: u64) -> bool {
    i128::from(available) >= i128::from(amount)
}

/// Expired holds are given back only when the balance looks short, so a busy payer's request
/// does not scan every hold in flight (`hold.lua`, `hold_capture.lua`).
pub fn sweep_needed(available: i64, amount: u64) -> bool {
    !covers(available, amount)
}

/// Hold `amount` from the balance (the caller checked [`covers`]): available moves to held.
pub fn place_hold(b: &Balance, amount: u64) -> Result<Balance, RuleError> {
    let a = signed(amount)?;
    Ok(Balance {
        available: sub(b.available, a)?,
        held: add(b.held, a)?,
        ..*b
    })
}

/// Extend a live hold by what the available balance has, up to `want` (a stream paused for a
/// top-up, `extend_hold.lua`): returns the balance after and the amount moved (0 when nothing
/// is available; never more than is).
pub fn extend_hold(b: &Balance, want: u64) -> Result<(Balance, u64), RuleError> {
    let moved = want.min(minor(b.available));
    Ok((place_hold(b, moved)?, moved))
}

/// Give a hold of `held` back (released, or expired and swept): held moves to available.
pub fn release_hold(b: &Balance, held: u64) -> Result<Balance, RuleError> {
    let h = signed(held)?;
    Ok(Balance {
        available: add(b.available, h)?,
        held: sub(b.held, h)?,
        ..*b
    })
}

/// What capturing a hold charged, and where the money came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldCharge {
    /// Charged (minor units): never more than the hold plus the available balance, nor than
    /// the mandate's room.
    pub charged: u64,
    /// Usage not charged: beyond the mandate's room, or beyond hold + balance.
    pub uncharged: u64,
    /// The part of the hold that returns to the available balance.
    pub returned: u64,
    /// Usage beyond the hold, taken from the available balance.
    pub from_balance: u64,
}

/// Capture `actual` against a hold of `held`, with `available` the balance beside it and
/// `mandate_room` the room left in the mandate's window (not counting this hold), if any
/// (`capture_hold.lua`): the charge is clamped to the room first (a negative room is 0), then
/// usage beyond the hold is taken from the balance as far as it goes; the rest is uncharged,
/// never a negative balance.
pub fn hold_charge(
    held: u64,
    available: u64,
    actual: u64,
    mandate_room: Option<i64>,
) -> Result<HoldCharge, RuleError> {
    let mut charge = actual;
    let mut uncharged = 0u64;
    if let Some(room) = mandate_room {
        let room = minor(room);
        if charge > room {
            uncharged = charge - room;
            charge = room;
        }
    }
    let most = held.checked_add(available).ok_or(RuleError::Overflow)?;
    if charge > most {
        uncharged = uncharged
            .checked_add(charge - most)
            .ok_or(RuleError::Overflow)?;
        charge = most;
    }
    Ok(HoldCharge {
        charged: charge,
        uncharged,
        returned: held.saturating_sub(charge),
        from_balance: charge.saturating_sub(held),
    })
}

/// Apply a [`hold_charge`] to the account: the hold leaves `held`, what it did not cover comes
/// back to (or, beyond it, out of) `available`, the charge is `captured`.
pub fn capture_hold(b: &Balance, held: u64, c: &HoldCharge) -> Result<Balance, RuleError> {
    let (h, charged) = (signed(held)?, signed(c.charged)?);
    Ok(Balance {
        available: sub(add(b.available, h)?, charged)?,
        held: sub(b.held, h)?,
        captured: add(b.captured, charged)?,
        ..*b
    })
}

/// Charge a fixed price at admission (`hold_capture.lua`; the caller checked [`covers`]).
pub fn charge_at_admission(b: &Balance, amount: u64) -> Result<Balance, RuleError> {
    let a = signed(amount)?;
    Ok(Balance {
        available: sub(b.available, a)?,
        captured: add(b.captured, a)?,
        ..*b
    })
}

/// Undo a balance charge of `amount` (`void_hold.lua`): it returns to the balance.
pub fn void_charge(b: &Balance, amount: u64) -> Result<Balance, RuleError> {
    let a = signed(amount)?;
    Ok(Balance {
        available: add(b.available, a)?,
        captured: sub(b.captured, a)?,
        ..*b
    })
}

/// What a credit (or debit) decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditDecision {
    /// Applied: the account afterwards.
    Applied(Balance),
    /// A debit larger than the available balance: nothing changes.
    Insufficient,
}

/// Credit (`amount > 0`) or debit (`amount < 0`) the balance (`credit.lua`): a debit may not
/// take the available balance below zero (money held by requests in flight is not touched).
pub fn credit(b: &Balance, amount: i64) -> Result<CreditDecision, RuleError> {
    let available = add(b.available, amount)?;
    if amount < 0 && available < 0 {
        return Ok(CreditDecision::Insufficient);
    }
    Ok(CreditDecision::Applied(Balance {
        available,
        credited: add(b.credited, amount)?,
        ..*b
    }))
}

/// Room left in a mandate window: its budget less what was captured in it and what live
/// reservations hold (`mandate.lua`'s `mandate_room`). Negative when a budget was lowered below
/// its use.
pub fn mandate_room(budget: u64, spent: u64, held: u64) -> i64 {
    let room = i128::from(budget) - i128::from(spent) - i128::from(held);
    i64::try_from(room).unwrap_or(if room < 0 { i64::MIN } else { i64::MAX })
}

/// Whether a mandate window takes `amount` (`mandate_check`): `Err(room)` with the room left
/// (never negative) when it does not.
pub fn mandate_admits(room: i64, amount: u64) -> Result<(), u64> {
    if i128::from(amount) > i128::from(room) {
        return Err(minor(room));
    }
    Ok(())
}

/// What a plan decides for a call at hold time (`hold.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanHold {
    /// Covered by the period: nothing is held from the balance.
    Covered {
        /// The period's `used` afterwards (call plans count the call now; unit plans at
        /// capture).
        used: u64,
        /// Calls (or units) left after this call (`None`: a pass).
        calls_left: Option<u64>,
    },
    /// The period's calls are used up and the plan denies more.
    Exhausted {
        /// When the period ends (unix ms).
        period_end_ms: i64,
    },
    /// Hold this amount from the balance: `overage` when it is the plan's overage price.
    Charge {
        /// Minor units to hold.
        amount: u64,
        /// Held at the overage price (answered as [`super::HoldOutcome::Overage`]).
        overage: bool,
    },
}

/// Decide a call under a plan: `period` is the payer's period of the plan (if any),
/// `route_amount` the route's own price. A period counts while `end > now` (the gateway's
/// clock); past its included calls the plan denies, holds the route's price, or holds the
/// overage price, in that order of precedence.
pub fn plan_hold(period: Option<&PlanPeriod>, plan: &PlanUse, route_amount: u64) -> PlanHold {
    let charge_route = PlanHold::Charge {
        amount: route_amount,
        overage: false,
    };
    let Some(p) = period.filter(|p| p.end_ms > plan.now_ms) else {
        return charge_route;
    };
    let units = plan.unit.is_some();
    let step = u64::from(!units);
    match p.calls {
        None => PlanHold::Covered {
            used: p.used.saturating_add(step),
            calls_left: None,
        },
        Some(calls) if p.used < calls => {
            let used = p.used.saturating_add(step);
            PlanHold::Covered {
                used,
                calls_left: Some(calls - used),
            }
        }
        Some(_) if plan.deny => PlanHold::Exhausted {
            period_end_ms: p.end_ms,
        },
        Some(_) if plan.route_price => charge_route,
        Some(_) => PlanHold::Charge {
            amount: plan.overage_minor,
            overage: true,
        },
    }
}

/// A covered call captured (`plan_capture.lua`): a unit plan adds the event's count of its
/// unit to the period (a call plan counted the call at hold time).
pub fn plan_capture_used(
    used: u64,
    plan: &PlanUse,
    units: &std::collections::BTreeMap<String, u64>,
) -> u64 {
    let add = plan
        .unit
        .as_ref()
        .and_then(|u| units.get(u).copied())
        .unwrap_or(0);
    used.saturating_add(add)
}

/// A covered call given back (`plan_release.lua`): a call plan's used calls go down by one
/// (never below zero); a unit plan counted nothing yet.
pub fn plan_release_used(used: u64, plan: &PlanUse) -> u64 {
    if plan.unit.is_some() {
        used
    } else {
        used.saturating_sub(1)
    }
}

/// The period after buying one more (`subscribe.lua`): a period still running at `now_ms` is
/// extended by `period_ms` and its included calls added to (a pass on either side stays a
/// pass), keeping its start and use; otherwise a new period starts now.
pub fn subscribe_period(
    current: Option<&PlanPeriod>,
    now_ms: i64,
    period_ms: i64,
    calls: Option<u64>,
) -> PlanPeriod {
    match current.filter(|p| p.end_ms > now_ms) {
        Some(p) => PlanPeriod {
            end_ms: p.end_ms.saturating_add(period_ms),
            calls: p.calls.zip(calls).map(|(a, b)| a.saturating_add(b)),
            ..*p
        },
        None => PlanPeriod {
            start_ms: now_ms,
            end_ms: now_ms.saturating_add(period_ms),
            calls,
            used: 0,
        },
    }
}

/// One request against a GCRA rate limit (`rate.lua`): `tat` is the stored theoretical arrival
/// time (0 when none). `Ok(new tat)` allowed, `Err(retry after ms)` refused.
pub fn gcra(tat: i64, now_ms: i64, limit: RateLimit) -> Result<i64, u64> {
    let interval = i64::try_from(limit.interval_ms()).unwrap_or(i64::MAX);
    let tolerance = i64::try_from(limit.tolerance_ms()).unwrap_or(i64::MAX);
    let tat = tat.max(now_ms);
    let new_tat = tat.saturating_add(interval);
    let allow_at = new_tat.saturating_sub(interval).saturating_sub(tolerance);
    if allow_at > now_ms {
        return Err(minor(allow_at - now_ms));
    }
    Ok(new_tat)
}

/// One charge of a balance lease's batch (`lease.lua`): taken from the lease first, then from the
/// balance as far as it goes; the rest is uncharged (never a negative balance).
pub fn lease_charge(
    b: &Balance,
    lease: u64,
    charge: u64,
) -> Result<(Balance, u64, u64), RuleError> {
    let from_lease = charge.min(lease);
    let from_balance = (charge - from_lease).min(minor(b.available));
    let charged = from_lease + from_balance;
    let after = Balance {
        available: sub(b.available, signed(from_balance)?)?,
        held: sub(b.held, signed(from_lease)?)?,
        captured: add(b.captured, signed(charged)?)?,
        ..*b
    };
    // (balance after, lease left, the uncharged rest)
    Ok((after, lease - from_lease, charge - charged))
}

/// Resize a balance lease to `want` (`lease.lua`): a grow (`fit` false) takes what the balance
/// allows and never shrinks; a fit sets it to `want`, the rest back to the balance; a blocked
/// payer's lease does not grow. Returns the balance after and the lease.
pub fn lease_resize(
    b: &Balance,
    lease: u64,
    want: u64,
    fit: bool,
    blocked: bool,
) -> Result<(Balance, u64), RuleError> {
    let new = if want > lease && !blocked {
        lease + (want - lease).min(minor(b.available))
    } else if want < lease && fit {
        want
    } else {
        lease
    };
    let delta = sub(signed(new)?, signed(lease)?)?;
    Ok((
        Balance {
            available: sub(b.available, delta)?,
            held: add(b.held, delta)?,
            ..*b
        },
        new,
    ))
}

/// Why a refund moves no money ([`refund`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRefusal {
    /// The amount asked for is more than what remains refundable (`refundable` minor units;
    /// 0 when the charge is refunded in full).
    Exceeds {
        /// What may still be refunded (minor units).
        refundable: u64,
    },
    /// Nothing to refund: the charge was for 0, or an amount of 0 was asked for.
    Zero,
}

/// What may still be refunded of a charge of `charged` of which `refunded` was refunded
/// already (never negative, whatever the inputs).
pub fn refundable(charged: u64, refunded: u64) -> u64 {
    charged.saturating_sub(refunded)
}

/// How much a refund of `requested` (`None`: all that remains) moves, for a charge of
/// `charged` with `refunded` refunded already: the sum of a charge's refunds never exceeds the
/// charge, to the unit (`lua/refund.lua` mirrors it in the same script as the write).
pub fn refund(charged: u64, refunded: u64, requested: Option<u64>) -> Result<u64, RefundRefusal> {
    let left = refundable(charged, refunded);
    let amount = requested.unwrap_or(left);
    if amount == 0 {
        return Err(if requested.is_none() && charged > 0 {
            RefundRefusal::Exceeds { refundable: 0 }
        } else {
            RefundRefusal::Zero
        });
    }
    if amount > left {
        return Err(RefundRefusal::Exceeds { refundable: left });
    }
    Ok(amount)
}

/// Whether a charge made at `charge_ms` may still be refunded at `now_ms` (within
/// [`super::refund::REFUND_WINDOW_MS`]; a charge from the future, by a skewed clock, may).
pub fn refund_open(charge_ms: i64, now_ms: i64) -> bool {
    now_ms.saturating_sub(charge_ms) <= super::refund::REFUND_WINDOW_MS
}

/// A refund paid back to the payer's balance: available and credited grow by it (a refund is a
/// credit; what was captured stays captured, so `credited - captured == available + held`).
pub fn refund_to_balance(b: &Balance, amount: u64) -> Result<Balance, RuleError> {
    let a = signed(amount)?;
    Ok(Balance {
        available: add(b.available, a)?,
        credited: add(b.credited, a)?,
        ..*b
    })
}

#[cfg(test)]
mod tests;
