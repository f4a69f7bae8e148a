//! The random operations: one payer's sequence, generated from the seed alone (results never
//! steer it, so every backend runs exactly the same steps).

use rand::rngs::StdRng;
use rand::Rng;

/// One step of a payer's sequence. Slots name holds, reservations and receipts by number
/// (unique per payer); a step may name a slot never used (an unknown hold or reservation).
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Credit {
        key: u32,
        amount: i64,
    },
    TopUp {
        jti: u32,
        amount: i64,
    },
    Hold {
        slot: u32,
        amount: u64,
        mandate: bool,
        plan: Option<(u8, bool, bool, bool)>,
    },
    Capture {
        slot: u32,
        actual: u64,
    },
    Release {
        slot: u32,
    },
    Renew {
        slot: u32,
    },
    /// A stream paused for a top-up grows its hold from the balance.
    Extend {
        slot: u32,
        want: u64,
    },
    HoldCapture {
        slot: u32,
        amount: u64,
    },
    VoidHold {
        slot: u32,
        wrong: bool,
    },
    Authorize {
        slot: u32,
        jti: u32,
        mandate: Option<u64>,
    },
    Settle {
        slot: u32,
        capture: Option<u64>,
    },
    AuthorizeCapture {
        slot: u32,
        jti: u32,
        amount: u64,
    },
    VoidReceipt {
        slot: u32,
        wrong: bool,
    },
    RenewReceipt {
        slot: u32,
    },
    Deferred {
        slot: u32,
        amount: u64,
    },
    Revoke {
        jti: u32,
    },
    Subscribe {
        plan: u8,
        jti: u32,
        calls: Option<u64>,
    },
    Claim {
        key: u32,
        fp: u32,
        token: u32,
    },
    Finish {
        key: u32,
        token: u32,
        done: bool,
    },
    Block(bool),
    RevokeMandate,
    /// A balance lease's sync: a batch of charges (or a retry of the last batch), then a grow
    /// or fit to `target`.
    Lease {
        retry: bool,
        charges: Vec<u64>,
        target: u64,
        fit: bool,
    },
    Account,
    /// A refund of the charge a slot recorded (a hold's slot + 100,000 or a reservation's),
    /// under key `key` (`None`: all that remains).
    Refund {
        slot: u32,
        key: u32,
        amount: Option<u64>,
    },
}

pub(crate) fn generate(rng: &mut StdRng, n: usize) -> Vec<Op> {
    let mut ops = vec![Op::Credit {
        key: 0,
        amount: 5_000,
    }];
    let (mut holds, mut res, mut jtis, mut tokens) = (0u32, 0u32, 0u32, 0u32);
    // An earlier slot (or, now and then, one never used).
    let pick = |rng: &mut StdRng, max: u32| {
        if max == 0 || rng.gen_bool(0.05) {
            max + 1_000
        } else {
            rng.gen_range(max.saturating_sub(6)..max)
        }
    };
    // A block lasts a few steps, then the payer is unblocked.
    let mut unblock_at: Option<usize> = None;
    while ops.len() < n {
        if unblock_at.is_some_and(|at| ops.len() >= at) {
            unblock_at = None;
            ops.push(Op::Block(false));
            continue;
        }
        let op = match rng.gen_range(0..107) {
            0..=7 => Op::Credit {
                key: rng.gen_range(0..40),
                amount: rng.gen_range(-1_500..3_000),
            },
            8..=9 => {
                jtis += 1;
                Op::TopUp {
                    jti: if rng.gen_bool(0.3) {
                        pick(rng, jtis)
                    } else {
                        jtis
                    },
                    amount: rng.gen_range(0..2_000),
                }
            }
            10..=24 => {
                holds += 1;
                let plan = rng.gen_bool(0.3).then(|| {
                    (
                        rng.gen_range(0..2),
                        rng.gen_bool(0.3),
                        rng.gen_bool(0.3),
                        rng.gen_bool(0.3),
                    )
                });
                Op::Hold {
                    slot: holds,
                    amount: rng.gen_range(0..800),
                    mandate: rng.gen_bool(0.25),
                    plan,
                }
            }
            25..=36 => Op::Capture {
                slot: pick(rng, holds),
                actual: rng.gen_range(0..1_500),
            },
            37..=41 => Op::Release {
                slot: pick(rng, holds),
            },
            42..=43 => Op::Renew {
                slot: pick(rng, holds),
            },
            44..=48 => {
                holds += 1;
                let slot = if rng.gen_bool(0.1) {
                    pick(rng, holds)
                } else {
                    holds
                };
                Op::HoldCapture {
                    slot: slot + 100_000,
                    amount: rng.gen_range(0..600),
                }
            }
            49..=51 => Op::VoidHold {
                slot: pick(rng, holds) + 100_000,
                wrong: rng.gen_bool(0.2),
            },
            52..=59 => {
                res += 1;
                jtis += 1;
                let jti = if rng.gen_bool(0.2) {
                    pick(rng, jtis)
                } else {
                    jtis
                };
                Op::Authorize {
                    slot: res,
                    jti,
                    mandate: rng.gen_bool(0.3).then(|| rng.gen_range(0..600)),
                }
            }
            60..=66 => Op::Settle {
                slot: pick(rng, res),
                capture: rng.gen_bool(0.7).then(|| rng.gen_range(0..600)),
            },
            67..=70 => {
                res += 1;
                jtis += 1;
                let jti = if rng.gen_bool(0.2) {
                    pick(rng, jtis)
                } else {
                    jtis
                };
                Op::AuthorizeCapture {
                    slot: res,
                    jti,
                    amount: rng.gen_range(0..600),
                }
            }
            71..=73 => Op::VoidReceipt {
                slot: pick(rng, res),
                wrong: rng.gen_bool(0.2),
            },
            74 => Op::RenewReceipt {
                slot: pick(rng, res),
            },
            75..=77 => Op::Deferred {
                slot: pick(rng, res),
                amount: rng.gen_range(0..600),
            },
            78 => Op::Revoke {
                jti: pick(rng, jtis + 2),
            },
            79..=81 => {
                jtis += 1;
                let jti = if rng.gen_bool(0.2) {
                    pick(rng, jtis)
                } else {
                    jtis
                };
                Op::Subscribe {
                    plan: rng.gen_range(0..2),
                    jti,
                    calls: rng.gen_bool(0.8).then(|| rng.gen_range(0..8)),
                }
            }
            82..=88 => {
                tokens += 1;
                Op::Claim {
                    key: rng.gen_range(0..12),
                    fp: rng.gen_range(0..2),
                    token: tokens,
                }
            }
            89..=94 => Op::Finish {
                key: rng.gen_range(0..12),
                token: pick(rng, tokens + 1),
                done: rng.gen_bool(0.6),
            },
            95 if unblock_at.is_none() => {
                unblock_at = Some(ops.len() + rng.gen_range(1..8));
                Op::Block(true)
            }
            96 if rng.gen_bool(0.05) => Op::RevokeMandate,
            97..=98 => Op::Lease {
                retry: rng.gen_bool(0.15),
                charges: (0..rng.gen_range(0..4))
                    .map(|_| rng.gen_range(0..900))
                    .collect(),
                target: rng.gen_range(0..1_500),
                fit: rng.gen_bool(0.3),
            },
            100..=103 => Op::Refund {
                slot: if rng.gen_bool(0.5) {
                    pick(rng, holds) + 100_000
                } else {
                    pick(rng, res)
                },
                key: rng.gen_range(0..16),
                amount: rng.gen_bool(0.7).then(|| rng.gen_range(0..400)),
            },
            104..=106 => Op::Extend {
                slot: pick(rng, holds),
                want: rng.gen_range(0..1_200),
            },
            _ => Op::Account,
        };
        ops.push(op);
    }
    ops.push(Op::Block(false));
    ops
}
