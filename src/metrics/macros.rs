//! `metrics!`: declares a metrics struct, its fields' names, help, labels and types, in one place.

use prometheus::{
    CounterVec, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

/// Latency buckets, seconds: from a cached answer to a ten-minute chain of thought.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A metric type the macro can build from a name, help text and label names.
pub trait FromOpts: Sized + Clone + prometheus::core::Collector + 'static {
    fn from_opts(name: &str, help: &str, labels: &[&str]) -> Result<Self, prometheus::Error>;
}

impl FromOpts for IntCounter {
    fn from_opts(name: &str, help: &str, _: &[&str]) -> Result<Self, prometheus::Error> {
        IntCounter::new(name, help)
    }
}

impl FromOpts for IntGauge {
    fn from_opts(name: &str, help: &str, _: &[&str]) -> Result<Self, prometheus::Error> {
        IntGauge::new(name, help)
    }
}

impl FromOpts for IntCounterVec {
    fn from_opts(name: &str, help: &str, labels: &[&str]) -> Result<Self, prometheus::Error> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl FromOpts for CounterVec {
    fn from_opts(name: &str, help: &str, labels: &[&str]) -> Result<Self, prometheus::Error> {
        CounterVec::new(Opts::new(name, help), labels)
    }
}

impl FromOpts for GaugeVec {
    fn from_opts(name: &str, help: &str, labels: &[&str]) -> Result<Self, prometheus::Error> {
        GaugeVec::new(Opts::new(name, help), labels)
    }
}

impl FromOpts for HistogramVec {
    fn from_opts(name: &str, help: &str, labels: &[&str]) -> Result<Self, prometheus::Error> {
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
    }
}

/// ```ignore
/// metrics! {
///     pub struct InstanceMetrics {
///         /// Help text.
///         requests: IntCounterVec = "deepseek_meter_requests_total" ["protocol", "model", "status"],
///     }
/// }
/// ```
macro_rules! metrics {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                #[doc = $help:literal]
                $field:ident : $ty:ty = $metric:literal [$($label:literal),*],
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name {
            registry: prometheus::Registry,
            $($field: $ty,)*
        }

        impl $name {
            /// Every metric name this struct declares (dashboards and alert rules are checked against them).
            pub const NAMES: &'static [&'static str] = &[$($metric),*];

            pub fn new() -> Result<Self, prometheus::Error> {
                let registry = prometheus::Registry::new();
                $(
                    let $field = <$ty as $crate::metrics::macros::FromOpts>::from_opts(
                        $metric,
                        $help.trim(),
                        &[$($label),*],
                    )?;
                    registry.register(Box::new($field.clone()))?;
                )*
                Ok($name { registry, $($field,)* })
            }

            pub fn registry(&self) -> &prometheus::Registry {
                &self.registry
            }
        }
    };
}
