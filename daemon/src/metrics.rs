//! The Prometheus registry of the daemon.
//!
//! Names follow Prometheus conventions: `cleanroomd_` prefix, `_total` for counters,
//! base units (seconds). The `method` label only takes the names of known methods (others
//! count as `unknown`) so a hostile client cannot grow the label set.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
    runs: IntCounterVec,
    run_duration: Histogram,
    shielded_foreign: Counter,
    tuning_operations: IntCounterVec,
    tuning_conflicts: IntCounter,
    /// CPUs exclusive runs hold now (set at each scrape).
    pub exclusive_cpus: IntGauge,
    /// CPUs the shield covers now; 0 while it is down (set at each scrape).
    pub shielded_cpus: IntGauge,
    /// CPUs of a profile's partition (set at each scrape).
    pub partition_cpus: IntGauge,
    /// Pin rules in force (set at each scrape).
    pub pin_rules: IntGauge,
    /// HTTP connections to the scrape endpoint closed at once (over its connection cap).
    pub http_rejected: IntCounter,
}

/// Wall-time buckets of a run, seconds: a millisecond to an hour.
const RUN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

/// The end reasons a run can have: the label values of `cleanroomd_runs_total`.
const END_REASONS: &[&str] = &[
    "exited",
    "signaled",
    "timeout",
    "oom",
    "cancelled",
    "failed_to_start",
];

/// Tuning operations and their outcomes: the label values of
/// `cleanroomd_tuning_operations_total`.
const OPERATIONS: &[&str] = &["apply", "revert", "verify"];
const OUTCOMES: &[&str] = &["ok", "incomplete", "error"];

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
        let runs = IntCounterVec::new(
            Opts::new(
                "cleanroomd_runs_total",
                "Executions of commands (each repeat, warm-up and rerun), by end reason.",
            ),
            &["end_reason"],
        )
        .expect("valid metric");
        let run_duration = Histogram::with_opts(
            HistogramOpts::new(
                "cleanroomd_run_duration_seconds",
                "Wall time of each execution that started, seconds.",
            )
            .buckets(RUN_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let shielded_foreign = Counter::new(
            "cleanroomd_shielded_foreign_cpu_seconds_total",
            "CPU time something other than the run took on the CPUs the shield kept for an \
             exclusive run, while it ran.",
        )
        .expect("valid metric");
        let tuning_operations = IntCounterVec::new(
            Opts::new(
                "cleanroomd_tuning_operations_total",
                "Profile applies, reverts and verifies (dry runs aside), by outcome: ok, \
                 incomplete (a knob failed, conflicted or drifted) or error.",
            ),
            &["operation", "outcome"],
        )
        .expect("valid metric");
        let tuning_conflicts = IntCounter::new(
            "cleanroomd_tuning_conflicts_total",
            "Knobs a revert left alone because someone else had changed them.",
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let exclusive_cpus = gauge("cleanroomd_exclusive_cpus", "CPUs exclusive runs hold now.");
        let shielded_cpus = gauge(
            "cleanroomd_shielded_cpus",
            "CPUs the shield keeps free now (0: the shield is down).",
        );
        let partition_cpus = gauge(
            "cleanroomd_partition_cpus",
            "CPUs of the active profile's partition (0: none).",
        );
        let pin_rules = gauge("cleanroomd_pin_rules", "Pin rules in force.");
        let http_rejected = IntCounter::new(
            "cleanroomd_metrics_http_rejected_total",
            "Connections to the scrape endpoint closed at once: metrics.max_connections were \
             being served.",
        )
        .expect("valid metric");
        let process = prometheus::process_collector::ProcessCollector::for_self();
        for c in [
            Box::new(runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(run_duration.clone()),
            Box::new(shielded_foreign.clone()),
            Box::new(tuning_operations.clone()),
            Box::new(tuning_conflicts.clone()),
            Box::new(exclusive_cpus.clone()),
            Box::new(shielded_cpus.clone()),
            Box::new(partition_cpus.clone()),
            Box::new(pin_rules.clone()),
            Box::new(http_rejected.clone()),
            Box::new(process),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for reason in END_REASONS {
            runs.with_label_values(&[reason]);
        }
        for op in OPERATIONS {
            for outcome in OUTCOMES {
                tuning_operations.with_label_values(&[op, outcome]);
            }
        }
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
            runs,
            run_duration,
            shielded_foreign,
            tuning_operations,
            tuning_conflicts,
            exclusive_cpus,
            shielded_cpus,
            partition_cpus,
            pin_rules,
            http_rejected,
        }
    }

    /// Counts one execution that ended: its end reason, its wall time (if it started) and,
    /// for one on shielded CPUs, the foreign CPU time seen there.
    pub fn observe_run(&self, end: &crate::run::RunEnd<'_>) {
        let r = end.record;
        let reason = END_REASONS
            .iter()
            .find(|x| **x == r.end_reason.as_str())
            .copied()
            .unwrap_or("failed_to_start");
        self.runs.with_label_values(&[reason]).inc();
        if r.end_reason != cleanroom_proto::EndReason::FailedToStart {
            self.run_duration.observe(r.wall_ms / 1e3);
        }
        if end.shielded {
            if let Some(ms) = r.noise.foreign_cpu_ms.filter(|ms| *ms > 0.0) {
                self.shielded_foreign.inc_by(ms / 1e3);
            }
        }
    }

    /// Counts a tuning operation (`apply`, `revert`, `verify`): its outcome, and the
    /// conflicts a revert left. A dry run counts nothing: it changed nothing.
    pub fn observe_operation(
        &self,
        operation: &'static str,
        result: Result<&cleanroom_proto::TuneResult, ()>,
    ) {
        let outcome = match result {
            Ok(r) if r.dry_run => return,
            Ok(r) if r.ok => "ok",
            Ok(_) => "incomplete",
            Err(()) => "error",
        };
        self.tuning_operations
            .with_label_values(&[operation, outcome])
            .inc();
        if let Ok(r) = result {
            let conflicts = r
                .items
                .iter()
                .filter(|i| i.status == cleanroom_proto::KnobStatus::Conflict)
                .count();
            self.tuning_conflicts.inc_by(conflicts as u64);
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

    /// The text exposition of every metric (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8192);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            return format!("# cannot encode metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Every metric in the OpenMetrics 1.0 text format: the same samples, a counter's
    /// family named without its `_total` suffix (its samples keep it), and `# EOF`.
    pub fn render_openmetrics(&self) -> String {
        let counters: std::collections::BTreeSet<String> = self
            .registry
            .gather()
            .iter()
            .filter(|f| f.get_field_type() == prometheus::proto::MetricType::COUNTER)
            .map(|f| f.name().to_owned())
            .collect();
        openmetrics(&self.render(), &counters)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The text format `text` in OpenMetrics: the `# HELP` and `# TYPE` lines of the
/// `counters` named without `_total`, and `# EOF` at the end.
fn openmetrics(text: &str, counters: &std::collections::BTreeSet<String>) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = match name.strip_suffix("_total") {
                    Some(family) if counters.contains(name) => family,
                    _ => name,
                };
                out.push_str(kind);
                out.push_str(name);
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
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
