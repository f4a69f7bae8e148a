//! The store conformance suite: one set of test bodies (one module per capability), run on
//! every backend -- the sqlite store (in memory and in a file), a real `redis-server`, and a
//! 3-master Redis
//! Cluster -- by [`conformance!`]. A body takes a fresh `Arc<dyn Store>` and asserts exact
//! outcomes and amounts; where the backends once disagreed the Lua scripts (production) set
//! the expected value. Backend-specific tests (key layout, expiry under a manual clock, a
//! server going down) stay in `tests/store.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod balances;
mod extension;
mod leases;
mod ledger;
mod mandates;
mod plans;
mod queue;
mod receipts;
mod refunds;
mod requests;
mod risk;
mod support;
mod voids;
mod webhooks;

/// Instantiate every body for every backend: `sqlite::<body>`, `sqlite_file::<body>`, `redis::<body>` (a server of
/// its own per test) and one `cluster::every_body` that runs them all on one cluster, each
/// under a key prefix of its own (so they share nothing but the servers).
macro_rules! conformance {
    ($($module:ident :: $body:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $body() {
                    crate::$module::$body(crate::support::sqlite()).await;
                }
            )*
        }

        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $body() {
                    let dir = tempfile::tempdir().unwrap();
                    crate::$module::$body(crate::support::sqlite_file(&dir)).await;
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $body() {
                    let server = tollgate_e2e::RedisServer::start();
                    crate::$module::$body(crate::support::redis(&server, "t").await).await;
                }
            )*
        }

        mod cluster {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn every_body() {
                let cluster = tollgate_e2e::RedisCluster::start();
                let mut n = 0;
                $(
                    n += 1;
                    let prefix = format!("c{n}");
                    crate::$module::$body(crate::support::cluster(&cluster, &prefix).await).await;
                )*
                assert!(n > 0);
            }
        }
    };
}

conformance! {
    receipts::single_use_lifecycle,
    receipts::single_use_across_payers,
    receipts::blocked_payer,
    receipts::concurrent_authorize,
    receipts::revoked_receipts,
    receipts::renew_keeps_holds_alive,
    balances::balance_lifecycle,
    leases::lease_batches,
    balances::credits_apply_once_per_key,
    balances::top_up_receipts_are_single_use,
    balances::blocked_payer_balance,
    balances::concurrent_holds_never_overdraw,
    extension::hold_extension,
    extension::concurrent_extensions_never_overdraw,
    voids::void_receipt_charge,
    voids::void_balance_charge,
    voids::admission_charges_refused,
    plans::call_plan_covers_then_overage,
    plans::plan_denies_or_charges_the_route,
    plans::unit_plan_counts_at_capture,
    plans::subscribe_extends_and_is_single_use,
    mandates::mandate_window_budget,
    mandates::mandate_on_balance_holds,
    mandates::overage_under_a_mandate_reserves_what_is_held,
    mandates::revoked_mandate,
    queue::deferred_queue,
    requests::request_idempotency,
    requests::one_time_ids,
    ledger::payer_events_newest_first,
    refunds::refund_balance_charge,
    refunds::refund_x402_is_owed,
    refunds::refunds_and_voids_exclude_each_other,
    refunds::concurrent_refunds_never_exceed_the_charge,
    webhooks::outbox_lifecycle,
    risk::risk_rules,
}

/// The request idempotency body on Redis, then its keys: one hash per (payer, key), in the
/// payer's bucket, every one with its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_request_idempotency_keys() {
    let server = tollgate_e2e::RedisServer::start();
    requests::request_idempotency(support::redis(&server, "t").await).await;
    let mut c = server.conn();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*:ridem:*").query(&mut c).unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in keys {
        assert!(k.contains(":{b") && k.contains("}:ridem:"), "{k}");
        let ttl: i64 = ::redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
        assert!(ttl > 0 && ttl <= 60_000, "{k}: {ttl}");
    }
}
