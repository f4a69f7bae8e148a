//! Unit tests and properties of the money rules.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn funded(available: i64) -> Balance {
    Balance {
        available,
        held: 0,
        credited: available,
        captured: 0,
    }
}

/// `credited - captured == available + held`, nothing negative.
fn conserved(b: &Balance) -> bool {
    b.available >= 0
        && b.held >= 0
        && b.captured >= 0
        && i128::from(b.credited) - i128::from(b.captured)
            == i128::from(b.available) + i128::from(b.held)
}

fn plan(unit: bool, deny: bool, route_price: bool) -> PlanUse {
    PlanUse {
        plan: "p".into(),
        deny,
        route_price,
        unit: unit.then(|| "token".to_owned()),
        overage_minor: 7,
        now_ms: 1_000,
        covered: false,
    }
}

fn period(calls: Option<u64>, used: u64, end_ms: i64) -> PlanPeriod {
    PlanPeriod {
        start_ms: 0,
        end_ms,
        calls,
        used,
    }
}

#[test]
fn capture_within_the_hold_returns_the_rest() {
    let c = hold_charge(300, 700, 120, None).unwrap();
    assert_eq!(
        c,
        HoldCharge {
            charged: 120,
            uncharged: 0,
            returned: 180,
            from_balance: 0
        }
    );
    let b = place_hold(&funded(1_000), 300).unwrap();
    let b = capture_hold(&b, 300, &c).unwrap();
    assert_eq!((b.available, b.held, b.captured), (880, 0, 120));
}

#[test]
fn capture_beyond_the_hold_takes_the_balance_as_far_as_it_goes() {
    // The store suite's numbers: 100 held, 780 beside it, 5,000 used.
    let c = hold_charge(100, 780, 5_000, None).unwrap();
    assert_eq!((c.charged, c.uncharged, c.returned), (880, 4_120, 0));
    assert_eq!(c.from_balance, 780);
    let c = hold_charge(100, 780, 150, None).unwrap();
    assert_eq!((c.charged, c.uncharged, c.from_balance), (150, 0, 50));
}

#[test]
fn the_mandate_room_clamps_first() {
    let c = hold_charge(100, 1_000, 500, Some(200)).unwrap();
    assert_eq!((c.charged, c.uncharged), (200, 300));
    // A negative room (budget lowered below use) charges nothing.
    let c = hold_charge(100, 1_000, 500, Some(-5)).unwrap();
    assert_eq!((c.charged, c.uncharged, c.returned), (0, 500, 100));
    // Both clamps: room 300, then hold + balance 250.
    let c = hold_charge(50, 200, 400, Some(300)).unwrap();
    assert_eq!((c.charged, c.uncharged), (250, 150));
}

#[test]
fn holds_and_releases_move_available_to_held_and_back() {
    assert!(covers(10, 10) && !covers(9, 10) && !covers(-1, 0));
    assert!(sweep_needed(9, 10) && !sweep_needed(10, 10));
    let b = place_hold(&funded(10), 10).unwrap();
    assert_eq!((b.available, b.held), (0, 10));
    let b = release_hold(&b, 10).unwrap();
    assert_eq!(b, funded(10));
    assert_eq!(place_hold(&funded(0), u64::MAX), Err(RuleError::Overflow));
}

#[test]
fn credits_debits_and_admission_charges() {
    let b = funded(100);
    assert_eq!(credit(&b, -101).unwrap(), CreditDecision::Insufficient);
    let CreditDecision::Applied(d) = credit(&b, -100).unwrap() else {
        panic!("debit refused")
    };
    assert_eq!((d.available, d.credited), (0, 0));
    let CreditDecision::Applied(c) = credit(&b, 50).unwrap() else {
        panic!("credit refused")
    };
    assert_eq!((c.available, c.credited), (150, 150));
    // A debit does not touch money held by requests in flight.
    let held = place_hold(&b, 60).unwrap();
    assert_eq!(credit(&held, -50).unwrap(), CreditDecision::Insufficient);
    let charged = charge_at_admission(&b, 30).unwrap();
    assert_eq!((charged.available, charged.captured), (70, 30));
    assert_eq!(void_charge(&charged, 30).unwrap(), b);
    assert_eq!(credit(&funded(i64::MAX), 1), Err(RuleError::Overflow));
}

#[test]
fn mandate_windows() {
    assert_eq!(mandate_room(100, 30, 20), 50);
    assert_eq!(mandate_room(10, 30, 0), -20);
    assert_eq!(mandate_room(0, u64::MAX, u64::MAX), i64::MIN);
    assert_eq!(mandate_admits(50, 50), Ok(()));
    assert_eq!(mandate_admits(50, 51), Err(50));
    assert_eq!(mandate_admits(-20, 0), Err(0));
}

#[test]
fn plan_coverage_and_overage() {
    let calls = plan(false, false, false);
    // No period, or an ended one: the route's price.
    let route = PlanHold::Charge {
        amount: 10,
        overage: false,
    };
    assert_eq!(plan_hold(None, &calls, 10), route);
    assert_eq!(
        plan_hold(Some(&period(Some(5), 0, 1_000)), &calls, 10),
        route
    );
    // A call plan counts the call now.
    assert_eq!(
        plan_hold(Some(&period(Some(5), 4, 2_000)), &calls, 10),
        PlanHold::Covered {
            used: 5,
            calls_left: Some(0)
        }
    );
    assert_eq!(
        plan_hold(Some(&period(None, 9, 2_000)), &calls, 10),
        PlanHold::Covered {
            used: 10,
            calls_left: None
        }
    );
    // Used up: overage, the route's own price, or a denial.
    let used_up = period(Some(5), 5, 2_000);
    assert_eq!(
        plan_hold(Some(&used_up), &calls, 10),
        PlanHold::Charge {
            amount: 7,
            overage: true
        }
    );
    assert_eq!(
        plan_hold(Some(&used_up), &plan(false, false, true), 10),
        route
    );
    assert_eq!(
        plan_hold(Some(&used_up), &plan(false, true, true), 10),
        PlanHold::Exhausted {
            period_end_ms: 2_000
        }
    );
    // A unit plan counts at capture: covered while used < included.
    let units = plan(true, true, false);
    assert_eq!(
        plan_hold(Some(&period(Some(100), 99, 2_000)), &units, 10),
        PlanHold::Covered {
            used: 99,
            calls_left: Some(1)
        }
    );
    let counts = BTreeMap::from([("token".to_owned(), 40), ("request".to_owned(), 1)]);
    assert_eq!(plan_capture_used(99, &units, &counts), 139);
    assert_eq!(plan_capture_used(3, &calls, &counts), 3);
    assert_eq!(plan_release_used(3, &calls), 2);
    assert_eq!(plan_release_used(0, &calls), 0);
    assert_eq!(plan_release_used(3, &units), 3);
}

#[test]
fn subscriptions_extend_a_running_period() {
    let fresh = subscribe_period(None, 1_000, 500, Some(10));
    assert_eq!(fresh, period(Some(10), 0, 1_500).with_start(1_000));
    let running = PlanPeriod { used: 4, ..fresh };
    let more = subscribe_period(Some(&running), 1_200, 500, Some(5));
    assert_eq!(more, period(Some(15), 4, 2_000).with_start(1_000));
    assert_eq!(
        subscribe_period(Some(&running), 1_200, 500, None).calls,
        None
    );
    // Ended: a new period.
    let again = subscribe_period(Some(&running), 1_500, 500, Some(5));
    assert_eq!(again, period(Some(5), 0, 2_000).with_start(1_500));
}

trait WithStart {
    fn with_start(self, start_ms: i64) -> Self;
}

impl WithStart for PlanPeriod {
    fn with_start(self, start_ms: i64) -> Self {
        PlanPeriod { start_ms, ..self }
    }
}

#[test]
fn gcra_allows_the_burst_then_spaces_requests() {
    let limit = RateLimit {
        per_second: 2,
        burst: 2,
    };
    let t = gcra(0, 10_000, limit).unwrap();
    let t = gcra(t, 10_000, limit).unwrap();
    assert_eq!(gcra(t, 10_000, limit), Err(500));
    assert!(gcra(t, 10_500, limit).is_ok());
}

/// One step of a random account history.
#[derive(Debug, Clone)]
enum Step {
    Credit(i64),
    Hold(u64),
    Capture(usize, u64, Option<i64>),
    Release(usize),
    Charge(u64),
    Void(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (-2_000i64..5_000).prop_map(Step::Credit),
        (0u64..3_000).prop_map(Step::Hold),
        (0usize..8, 0u64..6_000, proptest::option::of(-100i64..4_000))
            .prop_map(|(i, a, r)| Step::Capture(i, a, r)),
        (0usize..8).prop_map(Step::Release),
        (0u64..3_000).prop_map(Step::Charge),
        (0usize..8).prop_map(Step::Void),
    ]
}

proptest! {
    #[test]
    fn a_capture_never_creates_or_loses_money(
        held in 0u64..1_000_000,
        available in 0u64..1_000_000,
        actual in 0u64..3_000_000,
        room in proptest::option::of(-1_000i64..2_000_000),
    ) {
        let c = hold_charge(held, available, actual, room).unwrap();
        // Charged + returned == held + taken from the balance.
        prop_assert_eq!(c.charged + c.returned, held + c.from_balance);
        // Never more than hold + balance, nor than the room; all the usage accounted for.
        prop_assert!(c.charged <= held + available);
        prop_assert!(c.from_balance <= available);
        if let Some(r) = room {
            prop_assert!(c.charged <= minor(r));
        }
        prop_assert_eq!(c.charged + c.uncharged, actual);
        // Charging less than possible only when the usage was less.
        if c.uncharged > 0 {
            prop_assert!(c.charged == held + available || room.is_some_and(|r| c.charged == minor(r)));
        }
        let b = Balance { available: available as i64, held: held as i64, credited: (available + held) as i64, captured: 0 };
        let after = capture_hold(&b, held, &c).unwrap();
        prop_assert!(conserved(&after));
        prop_assert_eq!(after.available, (available + held - c.charged) as i64);
    }

    #[test]
    fn a_hold_extension_moves_what_is_there_up_to_the_want(
        held in 0u64..1_000_000,
        available in 0i64..1_000_000,
        want in 0u64..3_000_000,
    ) {
        let b = Balance { available, held: held as i64, credited: available + held as i64, captured: 0 };
        let (after, moved) = extend_hold(&b, want).unwrap();
        prop_assert_eq!(moved, want.min(available as u64));
        prop_assert_eq!(after.available, available - moved as i64);
        prop_assert_eq!(after.held, held as i64 + moved as i64);
        prop_assert!(conserved(&after));
        // A second extension with what is left: never more than is there.
        let (again, more) = extend_hold(&after, want).unwrap();
        prop_assert!(moved + more <= available as u64);
        prop_assert!(conserved(&again));
    }

    #[test]
    fn every_history_conserves_the_account(steps in proptest::collection::vec(step(), 1..60)) {
        let mut b = Balance::default();
        let mut holds: Vec<u64> = Vec::new();
        let mut charges: Vec<u64> = Vec::new();
        for s in steps {
            match s {
                Step::Credit(a) => {
                    if let CreditDecision::Applied(n) = credit(&b, a).unwrap() {
                        b = n;
                    } else {
                        prop_assert!(a < 0 && b.available + a < 0);
                    }
                }
                Step::Hold(a) => {
                    if covers(b.available, a) {
                        b = place_hold(&b, a).unwrap();
                        holds.push(a);
                    }
                }
                Step::Capture(i, actual, room) => {
                    if i < holds.len() {
                        let held = holds.remove(i);
                        let c = hold_charge(held, minor(b.available), actual, room).unwrap();
                        b = capture_hold(&b, held, &c).unwrap();
                    }
                }
                Step::Release(i) => {
                    if i < holds.len() {
                        b = release_hold(&b, holds.remove(i)).unwrap();
                    }
                }
                Step::Charge(a) => {
                    if covers(b.available, a) {
                        b = charge_at_admission(&b, a).unwrap();
                        charges.push(a);
                    }
                }
                Step::Void(i) => {
                    if i < charges.len() {
                        b = void_charge(&b, charges.remove(i)).unwrap();
                    }
                }
            }
            prop_assert!(conserved(&b), "{b:?}");
            prop_assert_eq!(b.held, holds.iter().sum::<u64>() as i64);
        }
    }

    #[test]
    fn plan_coverage_never_exceeds_the_included_calls(
        calls in proptest::option::of(0u64..20),
        used in 0u64..25,
        unit in any::<bool>(),
        deny in any::<bool>(),
        route_price in any::<bool>(),
        end in 0i64..2_000,
    ) {
        let p = plan(unit, deny, route_price);
        let per = period(calls, used, end);
        match plan_hold(Some(&per), &p, 10) {
            PlanHold::Covered { used: after, calls_left } => {
                prop_assert!(end > p.now_ms);
                prop_assert_eq!(after, used + u64::from(!unit));
                if let Some(c) = calls {
                    prop_assert!(used < c);
                    prop_assert_eq!(calls_left, Some(c - after));
                } else {
                    prop_assert_eq!(calls_left, None);
                }
            }
            PlanHold::Exhausted { period_end_ms } => {
                prop_assert!(deny && period_end_ms == end && calls.is_some_and(|c| used >= c));
            }
            PlanHold::Charge { amount, overage } => {
                prop_assert_eq!(amount, if overage { 7 } else { 10 });
                prop_assert!(!overage || (!deny && !route_price));
            }
        }
    }

    #[test]
    fn a_mandate_admits_only_within_its_room(budget in 0u64..10_000, spent in 0u64..10_000, held in 0u64..10_000, amount in 0u64..10_000) {
        let room = mandate_room(budget, spent, held);
        match mandate_admits(room, amount) {
            Ok(()) => prop_assert!(spent + held + amount <= budget),
            Err(left) => {
                prop_assert!(spent + held + amount > budget);
                prop_assert_eq!(left, budget.saturating_sub(spent + held));
            }
        }
    }

    #[test]
    fn a_lease_batch_conserves_money_and_never_goes_negative(
        credited in 0i64..100_000,
        leased in 0u64..100_000,
        charges in proptest::collection::vec(0u64..20_000, 0..20),
        want in 0u64..100_000,
        fit: bool,
        blocked: bool,
    ) {
        // Take the lease from a funded balance (as far as it goes), charge a batch, resize.
        let (mut b, mut lease) = lease_resize(&funded(credited), 0, leased, false, false).unwrap();
        prop_assert!(conserved(&b) && lease == leased.min(minor(credited)));
        let (mut charged, mut uncharged) = (0u64, 0u64);
        for c in &charges {
            let before = minor(b.available) + lease;
            let (after, left, rest) = lease_charge(&b, lease, *c).unwrap();
            prop_assert!(conserved(&after));
            prop_assert_eq!(rest, c.saturating_sub(before));
            prop_assert!(left <= lease);
            charged += c - rest;
            uncharged += rest;
            (b, lease) = (after, left);
        }
        prop_assert_eq!(charged + uncharged, charges.iter().sum::<u64>());
        prop_assert_eq!(minor(b.captured), charged);
        let (after, new) = lease_resize(&b, lease, want, fit, blocked).unwrap();
        prop_assert!(conserved(&after));
        prop_assert_eq!(minor(after.held), new);
        if fit && want <= lease {
            prop_assert_eq!(new, want);
        }
        if !fit {
            prop_assert!(new >= lease, "a grow never shrinks");
        }
        if blocked {
            prop_assert!(new <= lease, "a blocked lease never grows");
        }
    }

    /// Any sequence of refunds (full or partial, in any order) of one charge: the sum applied
    /// never exceeds the charge, to the unit; each refusal says exactly what remained; the
    /// account stays conserved and grows by what was refunded.
    #[test]
    fn refunds_never_exceed_the_charge(
        charged in 0u64..10_000,
        asks in proptest::collection::vec(proptest::option::of(0u64..12_000), 1..40),
        start in 0i64..5_000,
    ) {
        let mut refunded = 0u64;
        let mut b = funded(start);
        for ask in asks {
            let left = refundable(charged, refunded);
            prop_assert_eq!(left, charged - refunded);
            match refund(charged, refunded, ask) {
                Ok(n) => {
                    prop_assert!(n > 0 && n <= left);
                    prop_assert_eq!(n, ask.unwrap_or(left));
                    refunded += n;
                    b = refund_to_balance(&b, n).unwrap();
                }
                Err(RefundRefusal::Exceeds { refundable }) => {
                    prop_assert_eq!(refundable, left);
                    prop_assert!(ask.map_or(left == 0, |a| a > left));
                }
                Err(RefundRefusal::Zero) => {
                    prop_assert!(ask == Some(0) || charged == 0);
                }
            }
            prop_assert!(refunded <= charged);
            prop_assert!(conserved(&b));
        }
        prop_assert_eq!(b.available, start + i64::try_from(refunded).unwrap());
    }
}

#[test]
fn a_refund_takes_what_remains_and_no_more() {
    assert_eq!(refund(100, 0, None), Ok(100));
    assert_eq!(refund(100, 40, None), Ok(60));
    assert_eq!(refund(100, 40, Some(60)), Ok(60));
    assert_eq!(
        refund(100, 40, Some(61)),
        Err(RefundRefusal::Exceeds { refundable: 60 })
    );
    assert_eq!(
        refund(100, 100, None),
        Err(RefundRefusal::Exceeds { refundable: 0 })
    );
    assert_eq!(refund(100, 0, Some(0)), Err(RefundRefusal::Zero));
    assert_eq!(refund(0, 0, None), Err(RefundRefusal::Zero));
    assert_eq!(refundable(5, 9), 0);
}
