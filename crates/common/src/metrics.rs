//! Registering a service's Prometheus metrics in one line each.
//!
//! A metric is a `static NAME: LazyLock<Kind> = LazyLock::new(|| counter_vec(...))`
//! in the service's `metrics.rs`; these functions create it and register it
//! with the default registry that the admin server's `/metrics` gathers.
//! Names and label sets are constants of the code, so a failure here is a
//! bug found by the first test that touches the metric (a name registered
//! twice, a malformed name), never a runtime condition: it panics, once.

#![allow(clippy::unwrap_used)]

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    prometheus::register(Box::new(metric.clone())).unwrap();
    metric
}

pub fn int_counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::with_opts(Opts::new(name, help)).unwrap())
}

pub fn int_counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).unwrap())
}

pub fn int_gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::with_opts(Opts::new(name, help)).unwrap())
}

pub fn int_gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
}

pub fn gauge(name: &str, help: &str) -> Gauge {
    register(Gauge::with_opts(Opts::new(name, help)).unwrap())
}

pub fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).unwrap())
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).unwrap())
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_metrics_are_gathered() {
        let c = super::int_counter_vec("fleetwatch_test_things_total", "Things", &["kind"]);
        c.with_label_values(&["a"]).inc();
        let h = super::histogram("fleetwatch_test_seconds", "Time", vec![0.1, 1.0]);
        h.observe(0.5);
        let names: Vec<String> = prometheus::gather()
            .iter()
            .map(|f| f.get_name().to_string())
            .collect();
        assert!(
            names.contains(&"fleetwatch_test_things_total".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"fleetwatch_test_seconds".to_string()),
            "{names:?}"
        );
    }
}
