//! The Redis store's Lua scripts, as data: each is its shared preludes, then the script
//! proper, concatenated at compile time from `../lua/` (one `EVALSHA` each; the scripts are
//! loaded on first use).
//!
//! Preludes: `owner.lua` (single use per issuer and receipt id, whatever the payer),
//! `mandate.lua` (mandate windows), `holds.lua` (expired holds given back), `totals.lua` (the
//! store's options and usage recording: `record_usage`, `payer_totals`, ...).

use redis::Script;

/// Declares [`Scripts`] with one field per script and its loader.
macro_rules! scripts {
    ($($name:ident: [$($part:literal),+],)+) => {
        /// Every script of the store.
        #[derive(Debug)]
        pub(super) struct Scripts {
            $(pub(super) $name: Script,)+
        }

        impl Scripts {
            pub(super) fn load() -> Self {
                Scripts {
                    $($name: Script::new(concat!($(include_str!(concat!("../lua/", $part, ".lua"))),+)),)+
                }
            }
        }
    };
}

scripts! {
    authorize: ["owner", "mandate", "authorize"],
    capture: ["mandate", "totals", "capture"],
    release: ["mandate", "release"],
    hold: ["mandate", "holds", "hold"],
    capture_hold: ["mandate", "totals", "capture_hold"],
    release_hold: ["mandate", "release_hold"],
    credit: ["owner", "credit"],
    rate: ["rate"],
    subscribe: ["owner", "totals", "subscribe"],
    plan_capture: ["totals", "plan_capture"],
    plan_release: ["plan_release"],
    capture_deferred: ["totals", "capture_deferred"],
    claim_settlements: ["claim_settlements"],
    finish_settlement: ["finish_settlement"],
    resolve_settlement: ["resolve_settlement"],
    authorize_capture: ["owner", "totals", "authorize_capture"],
    void: ["totals", "void"],
    hold_capture: ["totals", "holds", "hold_capture"],
    void_hold: ["totals", "void_hold"],
    idempotency: ["idempotency"],
    claim_owner: ["claim_owner"],
    renew: ["renew"],
    extend_hold: ["extend_hold"],
    drain_lease: ["drain_lease"],
    lease: ["totals", "lease"],
    backlog: ["backlog"],
    refund: ["totals", "refund"],
    refund_claim: ["refund_claim"],
    webhook_advance: ["webhook_advance"],
    webhook_claim: ["webhook_claim"],
    webhook_finish: ["webhook_finish"],
    webhook_replay: ["webhook_replay"],
    risk: ["risk"],
    risk_new: ["risk_new"],
}
