//! Prometheus metrics (DESIGN §7), split as crates.io splits them:
//!
//! - [`instance`]: what this process measures — calls, tokens, money, latency, errors, its journal. Updated
//!   only through the methods there, by the code that sees the event.
//! - [`service`]: what the service derives from the database, shared by every sidecar on it (the open
//!   billing hour's cost so far). Computed by the owner of the data and only published here.
//!
//! Each struct is declared once by [`metrics!`]: field, type, labels and help in one place, registered into
//! the struct's own registry (never the global default one). Names and labels are a contract; labels stay
//! bounded: `model` is a price-book model or `other`, never a key, user or request id.

#[macro_use]
mod macros;
mod instance;
mod service;

pub use instance::InstanceMetrics;
pub use service::ServiceMetrics;

use prometheus::{Encoder, TextEncoder};

/// Both halves, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub instance: InstanceMetrics,
    pub service: ServiceMetrics,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        Ok(Metrics {
            instance: InstanceMetrics::new()?,
            service: ServiceMetrics::new()?,
        })
    }

    /// Every metric name the sidecar can expose on `/metrics` (a vector without samples yet is not printed).
    pub fn names() -> impl Iterator<Item = &'static str> {
        InstanceMetrics::NAMES
            .iter()
            .chain(ServiceMetrics::NAMES)
            .copied()
    }

    /// The text exposition of both registries.
    pub fn render(&self) -> String {
        let mut families = self.instance.registry().gather();
        families.extend(self.service.registry().gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
