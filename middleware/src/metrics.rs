//! Prometheus metrics, process-wide (one registry per process, as scrapers expect).
//!
//! Amounts are counted in **atomic units** (integers, exact; the `_atomic_` in their names) with
//! the currency as a label; `tollgate_currency_info{currency, scale}` gives the scale to divide by
//! (10^scale). Series of configured routes and currencies exist from the start at 0
//! ([`Metrics::init_route`], [`Metrics::init_currency`]), so `rate()` and alerts work before the
//! first payment. [`render`] gives the text exposition format.

use std::sync::OnceLock;

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every Tollgate metric.
#[derive(Debug)]
pub struct Metrics {
    /// The registry holding them.
    pub registry: Registry,
    /// Requests by route and status (route `-` when none matched).
    pub requests: IntCounterVec,
    /// 402 answers carrying payment requirements, by route and code.
    pub payment_required: IntCounterVec,
    /// Credentials accepted or refused, by kind (`receipt`, `token`, `none`) and outcome
    /// (`accepted` or the refusal code).
    pub credentials: IntCounterVec,
    /// Revenue captured, atomic units, by route and currency (`tollgate_revenue_atomic_total`).
    pub revenue_minor: IntCounterVec,
    /// Usage that could not be charged (balance exhausted), atomic units.
    pub uncharged_minor: IntCounterVec,
    /// Units of metered usage, by route and unit.
    pub usage_units: IntCounterVec,
    /// Streams paused for a top-up, by route and what happened (`paused`, `resumed`,
    /// `timed_out`, `blocked`, `client_gone`).
    pub stream_pauses: IntCounterVec,
    /// Prepaid credit added by top-ups, atomic units, by currency.
    pub topups_minor: IntCounterVec,
    /// Refunds of captures whose response was withheld (store unreachable), atomic units.
    pub refunds_minor: IntCounterVec,
    /// Receipt and balance holds in flight in this process.
    pub holds_in_flight: IntGauge,
    /// Store (Redis) call latency, by operation.
    pub store_seconds: HistogramVec,
    /// Time to the upstream's response head, by route.
    pub upstream_seconds: HistogramVec,
    /// x402 `deferred` settlement attempts, by outcome (`settled`, `retry`, `failed`).
    pub x402_settlements: IntCounterVec,
    /// Ledger entries (usage events and credits) waiting in the Redis streams for the drainer.
    pub ledger_backlog_events: IntGauge,
    /// Age of the oldest entry waiting in the Redis streams (0 when none waits).
    pub ledger_backlog_age_seconds: Gauge,
    /// 1 while the backlog is past `ledger.max_backlog`, else 0 (alert on it).
    pub ledger_backlog_over_bound: IntGauge,
    /// Ledger entries moved from Redis to PostgreSQL, by stream (`events`, `credits`, `refunds`);
    /// entries another drainer had inserted already are counted once, by whoever inserted
    /// them.
    pub ledger_drained: IntCounterVec,
    /// Failed drain steps, by stage (`redis`, `postgres`).
    pub ledger_drain_errors: IntCounterVec,
    /// Balance lease syncs, by outcome (`ok`, `blocked`, `duplicate`, `error`).
    pub lease_syncs: IntCounterVec,
    /// Charges recorded by balance lease syncs.
    pub lease_charges: IntCounter,
    /// This replica's balance leases found lapsed at a sync (a pause longer than the ttl).
    pub lease_lapsed: IntCounter,
    /// Risk rule hits, by rule and action.
    pub risk_decisions: IntCounterVec,
    /// Webhook messages written to the outbox, by type.
    pub webhook_messages: IntCounterVec,
    /// Webhook delivery attempts, by endpoint and outcome (`delivered`, `retried`, `failed`).
    pub webhook_deliveries: IntCounterVec,
    /// Messages after each endpoint's position in the outbox.
    pub webhook_pending: IntGaugeVec,
    /// Age of the oldest message waiting for each endpoint (0 when none waits).
    pub webhook_outbox_age_seconds: GaugeVec,
    /// 1, labelled with the version.
    pub build_info: IntGaugeVec,
    /// 1 per configured currency, labelled with its scale.
    pub currency_info: IntGaugeVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

/// A metric without labels.
fn scalar<M>(
    new: impl FnOnce(&'static str, &'static str) -> prometheus::Result<M>,
    name: &'static str,
    help: &'static str,
) -> M {
    new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            requests: counter(
                "tollgate_requests_total",
                "Requests by route and status.",
                &["route", "status"],
            ),
            payment_required: counter(
                "tollgate_payment_required_total",
                "402 answers with payment requirements.",
                &["route", "code"],
            ),
            credentials: counter(
                "tollgate_credentials_total",
                "Credentials accepted or refused.",
                &["kind", "outcome"],
            ),
            revenue_minor: counter(
                "tollgate_revenue_atomic_total",
                "Revenue captured, in atomic units of the currency (see tollgate_currency_info).",
                &["route", "currency"],
            ),
            uncharged_minor: counter(
                "tollgate_uncharged_atomic_total",
                "Usage not charged (balance exhausted), in atomic units.",
                &["route", "currency"],
            ),
            usage_units: counter(
                "tollgate_usage_units_total",
                "Metered usage units.",
                &["route", "unit"],
            ),
            stream_pauses: counter(
                "tollgate_stream_pauses_total",
                "Metered streams paused for a top-up, by outcome.",
                &["route", "outcome"],
            ),
            topups_minor: counter(
                "tollgate_topups_atomic_total",
                "Prepaid credit added by top-ups, in atomic units.",
                &["currency"],
            ),
            refunds_minor: counter(
                "tollgate_refunds_atomic_total",
                "Refunds of captures whose response was withheld, in atomic units.",
                &["currency"],
            ),
            holds_in_flight: scalar(IntGauge::new, "tollgate_holds_in_flight", "Receipt and balance holds in flight in this process."),
            ledger_backlog_events: scalar(IntGauge::new, "tollgate_ledger_backlog_events", "Ledger entries waiting in Redis for the drainer."),
            ledger_backlog_age_seconds: scalar(Gauge::new, "tollgate_ledger_backlog_age_seconds", "Age of the oldest ledger entry waiting in Redis."),
            ledger_backlog_over_bound: scalar(IntGauge::new, "tollgate_ledger_backlog_over_bound", "1 while the ledger backlog is past ledger.max_backlog."),
            ledger_drained: counter(
                "tollgate_ledger_drained_events_total",
                "Ledger entries moved from Redis to PostgreSQL.",
                &["stream"],
            ),
            ledger_drain_errors: counter(
                "tollgate_ledger_drain_errors_total",
                "Failed ledger drain steps.",
                &["stage"],
            ),
            lease_syncs: counter(
                "tollgate_lease_syncs_total",
                "Balance lease syncs (a batch of charges recorded, the lease resized), by outcome.",
                &["outcome"],
            ),
            lease_charges: scalar(IntCounter::new, "tollgate_lease_charges_total", "Charges recorded in batches by balance lease syncs."),
            lease_lapsed: scalar(IntCounter::new, "tollgate_lease_lapsed_total", "Balance leases this replica found lapsed at a sync (charges then taken from the balance)."),
            store_seconds: histogram(
                "tollgate_store_duration_seconds",
                "Store call latency.",
                &["op"],
            ),
            upstream_seconds: histogram(
                "tollgate_upstream_duration_seconds",
                "Time to the upstream's response head.",
                &["route"],
            ),
            x402_settlements: counter(
                "tollgate_x402_settlements_total",
                "x402 deferred settlement attempts by outcome.",
                &["outcome"],
            ),
            risk_decisions: counter(
                "tollgate_risk_decisions_total",
                "Risk rule hits, by rule and action (flag, refuse, block).",
                &["rule", "action"],
            ),
            webhook_messages: counter(
                "tollgate_webhook_messages_total",
                "Webhook messages written to the outbox, by type.",
                &["type"],
            ),
            webhook_deliveries: counter(
                "tollgate_webhook_deliveries_total",
                "Webhook delivery attempts, by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            webhook_pending: gauge(
                "tollgate_webhook_pending_messages",
                "Outbox messages after each endpoint's position.",
                &["endpoint"],
            ),
            webhook_outbox_age_seconds: GaugeVec::new(
                Opts::new(
                    "tollgate_webhook_outbox_age_seconds",
                    "Age of the oldest outbox message waiting for each endpoint.",
                ),
                &["endpoint"],
            )
            .unwrap_or_else(|e| panic!("metric tollgate_webhook_outbox_age_seconds: {e}")),
            build_info: gauge(
                "tollgate_build_info",
                "Always 1; the labels say which build runs.",
                &["version"],
            ),
            currency_info: gauge(
                "tollgate_currency_info",
                "Always 1 per configured currency; scale: the atomic units per unit are 10^scale.",
                &["currency", "scale"],
            ),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let r = &m.registry;
        // Registering distinct, valid metrics in a fresh registry cannot fail.
        let _ = r.register(Box::new(m.requests.clone()));
        let _ = r.register(Box::new(m.payment_required.clone()));
        let _ = r.register(Box::new(m.credentials.clone()));
        let _ = r.register(Box::new(m.revenue_minor.clone()));
        let _ = r.register(Box::new(m.uncharged_minor.clone()));
        let _ = r.register(Box::new(m.usage_units.clone()));
        let _ = r.register(Box::new(m.stream_pauses.clone()));
        let _ = r.register(Box::new(m.topups_minor.clone()));
        let _ = r.register(Box::new(m.refunds_minor.clone()));
        let _ = r.register(Box::new(m.holds_in_flight.clone()));
        let _ = r.register(Box::new(m.store_seconds.clone()));
        let _ = r.register(Box::new(m.upstream_seconds.clone()));
        let _ = r.register(Box::new(m.x402_settlements.clone()));
        let _ = r.register(Box::new(m.ledger_backlog_events.clone()));
        let _ = r.register(Box::new(m.ledger_backlog_age_seconds.clone()));
        let _ = r.register(Box::new(m.ledger_backlog_over_bound.clone()));
        let _ = r.register(Box::new(m.ledger_drained.clone()));
        let _ = r.register(Box::new(m.ledger_drain_errors.clone()));
        let _ = r.register(Box::new(m.lease_syncs.clone()));
        let _ = r.register(Box::new(m.lease_charges.clone()));
        let _ = r.register(Box::new(m.lease_lapsed.clone()));
        let _ = r.register(Box::new(m.risk_decisions.clone()));
        let _ = r.register(Box::new(m.webhook_messages.clone()));
        let _ = r.register(Box::new(m.webhook_deliveries.clone()));
        let _ = r.register(Box::new(m.webhook_pending.clone()));
        let _ = r.register(Box::new(m.webhook_outbox_age_seconds.clone()));
        let _ = r.register(Box::new(m.build_info.clone()));
        let _ = r.register(Box::new(m.currency_info.clone()));
        m
    }

    /// Create a route's series at 0 (requests answered 200 and 402, its revenue and uncharged
    /// usage in its currency, its upstream latency), so they are scraped before its first
    /// request.
    pub fn init_route(&self, route: &str, currency: Option<&str>) {
        for status in ["200", "402"] {
            self.requests.with_label_values(&[route, status]).inc_by(0);
        }
        if let Some(c) = currency {
            self.revenue_minor.with_label_values(&[route, c]).inc_by(0);
            self.uncharged_minor
                .with_label_values(&[route, c])
                .inc_by(0);
            self.payment_required
                .with_label_values(&[route, "payment_required"])
                .inc_by(0);
        }
        let _ = self.upstream_seconds.with_label_values(&[route]);
    }

    /// Create a webhook endpoint's series at 0.
    pub fn init_webhook(&self, endpoint: &str) {
        for outcome in ["delivered", "retried", "failed"] {
            self.webhook_deliveries
                .with_label_values(&[endpoint, outcome])
                .inc_by(0);
        }
        self.webhook_pending.with_label_values(&[endpoint]).set(0);
        self.webhook_outbox_age_seconds
            .with_label_values(&[endpoint])
            .set(0.0);
    }

    /// Create a currency's series at 0 and state its scale.
    pub fn init_currency(&self, code: &str, scale: u32) {
        self.currency_info
            .with_label_values(&[code, &scale.to_string()])
            .set(1);
        self.topups_minor.with_label_values(&[code]).inc_by(0);
        self.refunds_minor.with_label_values(&[code]).inc_by(0);
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// The text exposition of every metric.
pub fn render() -> String {
    TextEncoder::new()
        .encode_to_string(&global().registry.gather())
        .unwrap_or_default()
}

/// Time a store call.
pub async fn timed<T>(op: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    global()
        .store_seconds
        .with_label_values(&[op])
        .observe(started.elapsed().as_secs_f64());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_text_format() {
        super::global()
            .requests
            .with_label_values(&["r", "200"])
            .inc();
        let text = super::render();
        assert!(text.contains("# TYPE tollgate_requests_total counter"));
        assert!(text.contains("tollgate_requests_total{route=\"r\",status=\"200\"}"));
        assert!(text.contains("tollgate_build_info{version=\""));
    }

    /// Configured series are there at 0 before any traffic, with the currency's scale.
    #[test]
    fn configured_series_start_at_zero() {
        let m = super::global();
        m.init_currency("XTS", 6);
        m.init_route("zero-route", Some("XTS"));
        let text = super::render();
        for line in [
            "tollgate_revenue_atomic_total{currency=\"XTS\",route=\"zero-route\"} 0",
            "tollgate_uncharged_atomic_total{currency=\"XTS\",route=\"zero-route\"} 0",
            "tollgate_requests_total{route=\"zero-route\",status=\"402\"} 0",
            "tollgate_topups_atomic_total{currency=\"XTS\"} 0",
            "tollgate_currency_info{currency=\"XTS\",scale=\"6\"} 1",
            "tollgate_upstream_duration_seconds_count{route=\"zero-route\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
