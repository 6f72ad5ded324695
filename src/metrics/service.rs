//! What the service derives from the database: the same value on every sidecar that shares it. The owner
//! of the data computes it (the ledger's SQL); this module only publishes it, at scrape time.

use prometheus::{GaugeVec, IntGauge};
use rust_decimal::Decimal;

metrics! {
    /// Gauges derived from the shared database.
    pub struct ServiceMetrics {
        /// Cost in CNY of the open billing hour so far, by model, over every sidecar on the database.
        billing_hour_cost: GaugeVec = "deepseek_meter_billing_hour_cost_yuan" ["model"],
        /// Start of the newest closed billing hour, in Unix seconds (0 until one closes).
        last_closed_hour: IntGauge = "deepseek_meter_bill_last_closed_hour_timestamp_seconds" [],
        /// Ledger minus the platform's bill, CNY, by model, over the newest reconciled period.
        reconcile_drift: GaugeVec = "deepseek_meter_reconcile_drift_yuan" ["model"],
    }
}

impl ServiceMetrics {
    /// The newest closed billing hour.
    pub fn publish_last_closed_hour(&self, hour: Option<chrono::DateTime<chrono::Utc>>) {
        self.last_closed_hour.set(hour.map_or(0, |h| h.timestamp()));
    }

    /// The open hour's cost by model label (labels already bounded; repeated labels are added up). Models
    /// without calls in this hour drop out, so a new hour starts from nothing rather than from the last one.
    pub fn publish_open_hour(&self, by_model: &[(&str, Decimal)]) {
        publish_by_model(&self.billing_hour_cost, by_model);
    }

    /// The newest reconciliation's drift by model label (models it did not see drop out).
    pub fn publish_reconcile_drift(&self, by_model: &[(&str, Decimal)]) {
        publish_by_model(&self.reconcile_drift, by_model);
    }
}

/// Sets `gauge` to these amounts by model label (repeated labels added up), and only these.
fn publish_by_model(gauge: &GaugeVec, by_model: &[(&str, Decimal)]) {
    use rust_decimal::prelude::ToPrimitive;
    let mut sums: std::collections::BTreeMap<&str, Decimal> = Default::default();
    for (label, amount) in by_model {
        *sums.entry(label).or_default() += amount;
    }
    gauge.reset();
    for (label, amount) in sums {
        gauge
            .with_label_values(&[label])
            .set(amount.to_f64().unwrap_or(0.0));
    }
}
