//! A capture whose reply is lost (the store executed it, then became unreachable for longer
//! than the retry window): the response is withheld, and once the store answers again the
//! payer is refunded -- or, if the capture never landed, the hold is simply released. Driven
//! through the engine with a store double that loses replies on demand (the only double here:
//! it wraps the real memory store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue, Method, Uri};
use tollgate_middleware::store::*;
use tollgate_middleware::{Currency, Money, Paywall, Price, PricedRoute, SqliteStore};

/// 0: healthy; 1: captures execute but their replies are lost, everything else fails;
/// 2: down (nothing executes).
#[derive(Debug)]
struct Flaky {
    inner: SqliteStore,
    mode: AtomicU8,
}

fn down() -> StoreError {
    StoreError::Unavailable("injected".into())
}

#[async_trait]
impl ReceiptStore for Flaky {
    async fn authorize(&self, r: &Reservation) -> Result<AuthorizeOutcome, StoreError> {
        self.inner.authorize(r).await
    }

    async fn settle(&self, r: &Reservation, s: &Settlement) -> Result<SettleOutcome, StoreError> {
        match (self.mode.load(Ordering::SeqCst), s) {
            (0, _) => self.inner.settle(r, s).await,
            (1, Settlement::Capture(_)) => {
                self.inner.settle(r, s).await?;
                Err(down())
            }
            _ => Err(down()),
        }
    }

    async fn revoke_receipt(&self, i: &str, r: &str) -> Result<bool, StoreError> {
        self.inner.revoke_receipt(i, r).await
    }
}

#[async_trait]
impl AdmissionStore for Flaky {
    async fn charge_at_admission(
        &self,
        from: ChargeFrom<'_>,
        e: &UsageEvent,
    ) -> Result<ChargeOutcome, StoreError> {
        self.inner.charge_at_admission(from, e).await
    }
    async fn void_admission(
        &self,
        from: ChargeFrom<'_>,
        c: &UsageEvent,
        v: &UsageEvent,
    ) -> Result<VoidOutcome, StoreError> {
        self.inner.void_admission(from, c, v).await
    }
}

#[async_trait]
impl BalanceStore for Flaky {
    async fn renew(
        &self,
        held: tollgate_middleware::store::Renewal<'_>,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew(held, ttl).await
    }

    async fn hold(&self, h: &Hold) -> Result<HoldOutcome, StoreError> {
        self.inner.hold(h).await
    }

    async fn capture_hold(
        &self,
        h: &Hold,
        actual: u64,
        e: &UsageEvent,
    ) -> Result<HoldSettleOutcome, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => self.inner.capture_hold(h, actual, e).await,
            1 => {
                self.inner.capture_hold(h, actual, e).await?;
                Err(down())
            }
            _ => Err(down()),
        }
    }

    async fn release_hold(&self, h: &Hold) -> Result<HoldSettleOutcome, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => self.inner.release_hold(h).await,
            _ => Err(down()),
        }
    }

    async fn credit(&self, c: &Credit) -> Result<CreditOutcome, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            0 => self.inner.credit(c).await,
            _ => Err(down()),
        }
    }

    async fn account(&self, payer: &str) -> Result<Account, StoreError> {
        self.inner.account(payer).await
    }
}

#[async_trait]
impl LedgerStore for Flaky {
    async fn payer_totals(&self, from: &str, to: &str) -> Result<Vec<PayerSpend>, StoreError> {
        self.inner.payer_totals(from, to).await
    }

    async fn usage(
        &self,
        p: Option<&str>,
        f: &str,
        t: &str,
    ) -> Result<Vec<DailyUsage>, StoreError> {
        self.inner.usage(p, f, t).await
    }

    async fn events(&self, page: EventPage<'_>) -> Result<Vec<UsageEvent>, StoreError> {
        self.inner.events(page).await
    }
}

#[async_trait]
impl PayerControl for Flaky {
    async fn rate(&self, p: &str, r: &str, l: RateLimit) -> Result<Option<Duration>, StoreError> {
        self.inner.rate(p, r, l).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn set_blocked(&self, p: &str, b: bool) -> Result<(), StoreError> {
        self.inner.set_blocked(p, b).await
    }

    async fn claim_once(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.claim_once(id, ttl).await
    }
}

#[async_trait]
impl RiskStore for Flaky {
    async fn risk(
        &self,
        c: &tollgate_middleware::risk::RiskCheck<'_>,
    ) -> Result<tollgate_middleware::risk::RiskOutcome, StoreError> {
        self.inner.risk(c).await
    }

    async fn risk_decisions(
        &self,
        l: usize,
    ) -> Result<Vec<tollgate_middleware::risk::RiskDecision>, StoreError> {
        self.inner.risk_decisions(l).await
    }
}

#[async_trait]
impl MandateStore for Flaky {
    async fn revoke_mandate(&self, k: &str) -> Result<(), StoreError> {
        self.inner.revoke_mandate(k).await
    }

    async fn mandates(
        &self,
        p: &str,
        now: i64,
    ) -> Result<Vec<(serde_json::Value, tollgate_middleware::store::MandateUse)>, StoreError> {
        self.inner.mandates(p, now).await
    }
}

#[async_trait]
impl PlanStore for Flaky {
    async fn subscribe(
        &self,
        s: &tollgate_middleware::store::Subscription,
    ) -> Result<tollgate_middleware::store::SubscribeOutcome, StoreError> {
        self.inner.subscribe(s).await
    }

    async fn subscription(
        &self,
        p: &str,
        plan: &str,
    ) -> Result<Option<tollgate_middleware::store::PlanPeriod>, StoreError> {
        self.inner.subscription(p, plan).await
    }
}

#[async_trait]
impl SettlementQueue for Flaky {
    async fn capture_deferred(
        &self,
        r: &Reservation,
        e: &UsageEvent,
        body: &str,
    ) -> Result<SettleOutcome, StoreError> {
        self.inner.capture_deferred(r, e, body).await
    }
    async fn claim_settlements(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SettlementJob>, StoreError> {
        self.inner.claim_settlements(limit, lease).await
    }
    async fn finish_settlement(
        &self,
        job: &SettlementJob,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        self.inner.finish_settlement(job, outcome).await
    }
    async fn failed_settlements(&self) -> Result<Vec<SettlementJob>, StoreError> {
        self.inner.failed_settlements().await
    }
    async fn queued_settlements(&self) -> Result<u64, StoreError> {
        self.inner.queued_settlements().await
    }
    async fn resolve_settlement(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.resolve_settlement(id).await
    }
}

#[async_trait]
impl IdempotencyStore for Flaky {
    async fn idempotency_claim(
        &self,
        c: &KeyClaim,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<IdempotencyClaim, StoreError> {
        self.inner.idempotency_claim(c, fingerprint, ttl).await
    }
    async fn idempotency_finish(
        &self,
        c: &KeyClaim,
        done: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        self.inner.idempotency_finish(c, done).await
    }
}

#[async_trait]
impl RefundStore for Flaky {
    async fn refund_target(&self, id: &str) -> Result<Option<RefundTarget>, StoreError> {
        self.inner.refund_target(id).await
    }

    async fn void_recorded(&self, c: &tollgate_middleware::UsageEvent) -> Result<bool, StoreError> {
        self.inner.void_recorded(c).await
    }

    async fn refund(&self, r: &RefundRequest) -> Result<RefundOutcome, StoreError> {
        self.inner.refund(r).await
    }

    async fn refunds(&self, q: &RefundQuery) -> Result<Vec<RefundRecord>, StoreError> {
        self.inner.refunds(q).await
    }
}

#[async_trait]
impl LeaseStore for Flaky {
    async fn lease_sync(&self, s: &LeaseSync<'_>) -> Result<LeaseSynced, StoreError> {
        self.inner.lease_sync(s).await
    }
}

#[async_trait]
impl tollgate_middleware::store::HoldExtension for Flaky {
    async fn extend_hold(
        &self,
        h: &Hold,
        want_minor: u64,
    ) -> Result<tollgate_middleware::store::HoldExtended, StoreError> {
        self.inner.extend_hold(h, want_minor).await
    }
}

/// The webhook outbox is not under test here: the inner store's.
#[async_trait]
impl WebhookOutbox for Flaky {
    async fn webhook_state(
        &self,
        b: u64,
        k: &[String],
    ) -> Result<(Option<String>, std::collections::BTreeMap<String, String>), StoreError> {
        self.inner.webhook_state(b, k).await
    }
    async fn webhook_advance(&self, a: &webhook::OutboxAdvance) -> Result<bool, StoreError> {
        self.inner.webhook_advance(a).await
    }
    async fn webhook_enqueue(
        &self,
        b: u64,
        m: &[webhook::WebhookMessage],
    ) -> Result<Vec<webhook::WebhookMessage>, StoreError> {
        self.inner.webhook_enqueue(b, m).await
    }
    async fn webhook_backlog(
        &self,
        e: &[String],
    ) -> Result<Vec<webhook::OutboxBacklog>, StoreError> {
        self.inner.webhook_backlog(e).await
    }
    async fn webhook_trim(&self, b: u64, e: &[String]) -> Result<u64, StoreError> {
        self.inner.webhook_trim(b, e).await
    }
    async fn webhook_due(
        &self,
        b: u64,
        now: i64,
        l: usize,
    ) -> Result<Vec<(i64, webhook::WebhookMessage)>, StoreError> {
        self.inner.webhook_due(b, now, l).await
    }
    async fn webhook_set(&self, b: u64, k: &str, v: Option<&str>) -> Result<(), StoreError> {
        self.inner.webhook_set(b, k, v).await
    }
}

#[async_trait]
impl WebhookDelivery for Flaky {
    async fn webhook_claim(
        &self,
        c: &webhook::DeliveryClaim<'_>,
    ) -> Result<Option<webhook::DeliveryHead>, StoreError> {
        self.inner.webhook_claim(c).await
    }
    async fn webhook_finish(&self, f: &webhook::DeliveryFinish<'_>) -> Result<bool, StoreError> {
        self.inner.webhook_finish(f).await
    }
    async fn webhook_failures(&self, l: usize) -> Result<Vec<webhook::FailedDelivery>, StoreError> {
        self.inner.webhook_failures(l).await
    }
    async fn webhook_replay(
        &self,
        e: &str,
        id: &str,
    ) -> Result<Option<webhook::WebhookMessage>, StoreError> {
        self.inner.webhook_replay(e, id).await
    }
}

async fn setup() -> (Arc<Flaky>, Paywall, Arc<PricedRoute>, HeaderMap) {
    let store = Arc::new(Flaky {
        inner: SqliteStore::memory(Arc::new(tollgate_middleware::clock::SystemClock)).unwrap(),
        mode: AtomicU8::new(0),
    });
    let usd = Currency::try_new("USD", 6).unwrap();
    let paywall = Paywall::builder("m", vec![9u8; 32])
        .store(store.clone())
        .currency(usd.clone(), None)
        .settle_retry(Duration::from_millis(150))
        .build()
        .unwrap();
    let topup = Credit {
        payer: "p".into(),
        currency: "USD".into(),
        amount_minor: 1_000_000,
        idempotency: Idempotency::Key("t".into()),
        keep_until_ms: i64::MAX,
        reason: "test".into(),
        source: "admin".into(),
    };
    store.inner.credit(&topup).await.unwrap();
    let price = Price::fixed(Money {
        amount: "0.01".parse().unwrap(),
        currency: usd,
    })
    .unwrap();
    let route = Arc::new(PricedRoute::new("r", price));
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", paywall.issue_token("p"))).unwrap(),
    );
    (store, paywall, route, headers)
}

async fn settled_balance(store: &Flaky, want_available: i64) -> Balance {
    for _ in 0..200 {
        let b = store.inner.account("p").await.unwrap().balances["USD"];
        if b.available == want_available && b.held == 0 {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "not reconciled: {:?}",
        store.inner.account("p").await.unwrap()
    );
}

#[tokio::test]
async fn a_capture_whose_reply_was_lost_is_refunded_once_the_store_answers() {
    let (store, paywall, route, headers) = setup().await;
    let admission = paywall
        .admit(&route, &Method::GET, &Uri::from_static("/r"), &headers)
        .await
        .unwrap()
        .unwrap();
    store.mode.store(1, Ordering::SeqCst);
    let refused = admission.settle(Some(200), None).await.unwrap_err();
    assert_eq!(refused.status(), 503, "the response is withheld");
    store.mode.store(0, Ordering::SeqCst);
    let b = settled_balance(&store, 1_000_000).await;
    // The capture landed (one event, captured 0.01) and was refunded as a credit.
    assert_eq!((b.credited, b.captured), (1_010_000, 10_000));
    assert_eq!(b.credited - b.captured, b.available + b.held);
    assert_eq!(store.inner.usage_events().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_capture_that_never_landed_is_released() {
    let (store, paywall, route, headers) = setup().await;
    let admission = paywall
        .admit(&route, &Method::GET, &Uri::from_static("/r"), &headers)
        .await
        .unwrap()
        .unwrap();
    store.mode.store(2, Ordering::SeqCst);
    assert_eq!(
        admission
            .settle(Some(200), None)
            .await
            .unwrap_err()
            .status(),
        503
    );
    store.mode.store(0, Ordering::SeqCst);
    let b = settled_balance(&store, 1_000_000).await;
    assert_eq!(
        (b.credited, b.captured),
        (1_000_000, 0),
        "nothing charged, nothing refunded"
    );
    assert!(store.inner.usage_events().await.unwrap().is_empty());
}
