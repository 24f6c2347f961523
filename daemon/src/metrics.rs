//! The Prometheus registry of the daemon.
//!
//! Names follow Prometheus conventions: `cleanroomd_` prefix, `_total` for counters,
//! base units (seconds). The `method` label only takes the names of known methods (others
//! count as `unknown`) so a hostile client cannot grow the label set.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets in seconds: fine below a millisecond, where the control plane lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 0.5, 1.0, 5.0,
];

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Connections accepted since start.
    pub connections_total: IntCounter,
    /// Connections refused because the limit was reached.
    pub connections_rejected: IntCounter,
    /// Configuration reloads by outcome (`ok`, `refused`).
    pub reloads: IntCounterVec,
    /// Knobs in the tuning journal.
    pub journal_entries: IntGauge,
    /// Knobs of the active profile that drifted at the last verify.
    pub drift_items: IntGauge,
    /// 1 for the active profile.
    pub active_profile: IntGaugeVec,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cleanroomd_requests_total",
                "Requests answered, by method and result code (ok or the JSON-RPC error code).",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "cleanroomd_request_duration_seconds",
                "Time from reading a request line to having its response ready, by method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        let connections_open = IntGauge::new(
            "cleanroomd_connections_open",
            "Client connections open now.",
        )
        .expect("valid metric");
        let connections_total = IntCounter::new(
            "cleanroomd_connections_total",
            "Client connections accepted since start.",
        )
        .expect("valid metric");
        let connections_rejected = IntCounter::new(
            "cleanroomd_connections_rejected_total",
            "Client connections closed at once because limits.max_connections was reached.",
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new(
                "cleanroomd_config_reloads_total",
                "Configuration reloads, by outcome (ok or refused).",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let journal_entries = IntGauge::new(
            "cleanroomd_tuning_journal_entries",
            "Kernel values cleanroom changed and can put back.",
        )
        .expect("valid metric");
        let drift_items = IntGauge::new(
            "cleanroomd_tuning_drift_items",
            "Knobs of the active profile that no longer hold its value (at the last verify).",
        )
        .expect("valid metric");
        let active_profile = IntGaugeVec::new(
            Opts::new(
                "cleanroomd_tuning_active_profile",
                "1 for the tuning profile in force.",
            ),
            &["profile"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new(
                "cleanroomd_build_info",
                "Always 1; labels give the daemon version and protocol version.",
            ),
            &["version", "protocol"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                &cleanroom_proto::PROTOCOL_VERSION.to_string(),
            ])
            .set(1);
        let start = prometheus::Gauge::new(
            "cleanroomd_start_time_seconds",
            "Start time of the daemon since the Unix epoch, in seconds.",
        )
        .expect("valid metric");
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_total.clone()),
            Box::new(connections_rejected.clone()),
            Box::new(reloads.clone()),
            Box::new(journal_entries.clone()),
            Box::new(drift_items.clone()),
            Box::new(active_profile.clone()),
            Box::new(build),
            Box::new(start),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Pre-create the series of every known method so they show as zero from the start.
        for m in cleanroom_proto::method_names() {
            latency.with_label_values(&[m]);
        }
        Self {
            registry,
            requests,
            latency,
            connections_open,
            connections_total,
            connections_rejected,
            reloads,
            journal_entries,
            drift_items,
            active_profile,
        }
    }

    /// Counts one answered request and its latency.
    pub fn observe_request(&self, method: &str, code: Option<i32>, seconds: f64) {
        let method = label_for(method);
        let code_label;
        let code = match code {
            None => "ok",
            Some(c) => {
                code_label = c.to_string();
                &code_label
            }
        };
        self.requests.with_label_values(&[method, code]).inc();
        self.latency.with_label_values(&[method]).observe(seconds);
    }

    /// Updates the tuning gauges from an apply, revert or verify.
    pub fn observe_tuning(&self, r: &cleanroom_proto::TuneResult) {
        use cleanroom_proto::KnobStatus;
        self.journal_entries.set(r.journal_entries as i64);
        let drifted = r
            .items
            .iter()
            .filter(|i| i.status == KnobStatus::Drifted)
            .count();
        let is_verify = r
            .items
            .iter()
            .any(|i| matches!(i.status, KnobStatus::Ok | KnobStatus::Drifted));
        if is_verify || r.items.is_empty() {
            self.drift_items.set(drifted as i64);
        }
    }

    /// Sets the active-profile gauge.
    pub fn set_active_profile(&self, profile: Option<&str>) {
        self.active_profile.reset();
        if let Some(p) = profile {
            self.active_profile.with_label_values(&[p]).set(1);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return format!("# cannot encode metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The method's name as a label: one of the protocol's (a fixed set), else `unknown`.
fn label_for(method: &str) -> &'static str {
    cleanroom_proto::method(method).map_or("unknown", |m| m.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_and_bounds_labels() {
        let m = Metrics::new();
        m.observe_request("daemon.ping", None, 0.00002);
        m.observe_request("no.such.method", Some(-32601), 0.00001);
        let text = m.render();
        assert!(
            text.contains(r#"cleanroomd_requests_total{code="ok",method="daemon.ping"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cleanroomd_requests_total{code="-32601",method="unknown"} 1"#),
            "{text}"
        );
        assert!(!text.contains("no.such.method"));
        assert!(text.contains("cleanroomd_build_info{"));
        assert!(text.contains("cleanroomd_request_duration_seconds_bucket"));
    }
}
