//! The state every request shares, on both listeners: cheap handles, cloned per request.

use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::meter::Meter;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    /// The step that ends every metered call.
    pub meter: Meter,
    pub metrics: Metrics,
    /// `None` when records are kept elsewhere (in memory: tests, embedding).
    pub journal: Option<Journal>,
    pub ledger: Option<Ledger>,
    /// This sidecar's report deliveries, as of the deliverer's last round (`None` without a ledger).
    pub deliveries: Option<crate::billing::delivery::StatusCell>,
    /// The billing time zone (reports).
    pub timezone: chrono_tz::Tz,
    /// Required on the admin listener (all but `/healthz`) when set.
    pub admin_token: Option<String>,
    /// `[[api_key]]` (the proxy's attribution, the reconciliation's key IDs) and `[reconcile]` of the config file.
    pub api_keys: crate::keys::ApiKeys,
    pub reconcile: crate::reconcile::ReconcileConfig,
    /// The budgets (`None`: none configured): the request path's admission, `/v1/budgets`, the metrics.
    pub budgets: Option<std::sync::Arc<crate::budget::gate::Budgets>>,
}
