//! The admin listener: metrics, health, and reads of the ledger (DESIGN §6).
//!
//! Loopback by default. When `--admin-token` is set, every route but `/healthz` requires
//! `Authorization: Bearer <token>`, compared in constant time. Errors are [`ApiError`]s in the admin shape.

use crate::billing::report::{Format, ReportQuery};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A scrape never waits longer than this for the database-derived gauges; they keep their last values.
const SERVICE_METRICS_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/v1/calls/{call_id}", get(call))
        .route("/v1/bill/hourly", get(bill_hourly))
        .route("/v1/budgets", get(budgets))
        .route("/v1/reconcile", get(reconcile).post(reconcile_and_record))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(j) = &state.journal {
        state.metrics.instance.publish_backlog(&j.backlog());
    }
    if let Some(b) = state.meter.budgets() {
        let now = state.meter.now();
        for s in b.snapshot(now) {
            let m = &state.metrics.instance;
            m.publish_budget(
                &s.budget.name,
                s.budget.limit,
                s.spent,
                s.reserved,
                s.window_end,
            );
        }
    }
    // Only while the database answers: a scrape during an outage must not wait on it.
    if let Some(ledger) = state
        .ledger
        .as_ref()
        .filter(|l| l.reachable.load(Ordering::Relaxed))
    {
        let hour = crate::billing::roll::hour_cost_by_model(ledger.pool(), state.meter.open_hour());
        match tokio::time::timeout(SERVICE_METRICS_TIMEOUT, hour).await {
            Ok(Ok(rows)) => {
                let labelled: Vec<_> = rows
                    .iter()
                    .map(|(model, cost)| (state.meter.model_label(model), *cost))
                    .collect();
                state.metrics.service.publish_open_hour(&labelled);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "open-hour cost not read"),
            Err(_) => tracing::debug!("open-hour cost query timed out"),
        }
        let closed = crate::billing::last_closed_hour(ledger.pool());
        if let Ok(Ok(hour)) = tokio::time::timeout(SERVICE_METRICS_TIMEOUT, closed).await {
            state.metrics.service.publish_last_closed_hour(hour);
        }
        let drift = crate::reconcile::store::latest_drift(ledger.pool());
        if let Ok(Ok(rows)) = tokio::time::timeout(SERVICE_METRICS_TIMEOUT, drift).await {
            let labelled: Vec<_> = rows
                .iter()
                .map(|(model, d)| (state.meter.model_label(model), *d))
                .collect();
            state.metrics.service.publish_reconcile_drift(&labelled);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Ready means the proxy takes calls: 503 only when the journal cannot record them. A database outage
/// does not make the sidecar unready (calls are journaled and shipped later); the body says so.
async fn readyz(State(state): State<AppState>) -> Response {
    let accepting = state.meter.accepting();
    // `block` budgets admit nothing until their spent has been read once: not ready until then.
    let budgets_known = state.ledger.is_none()
        || state
            .budgets
            .as_ref()
            .is_none_or(|b| b.tracker().known(state.meter.now()));
    let body = match (&state.journal, &state.ledger) {
        (Some(j), Some(l)) => {
            let b = j.backlog();
            json!({
                "accepting_calls": accepting,
                "budgets_known": budgets_known,
                "database_reachable": l.reachable.load(Ordering::Relaxed),
                "journal_pending_records": b.pending_records,
                "journal_bytes": b.bytes,
                "journal_max_bytes": b.max_bytes,
                "journal_writes_failing": b.writes_failing,
                "report_deliveries": state.deliveries.as_ref()
                    .and_then(|d| d.lock().ok().map(|s| s.clone())),
            })
        }
        _ => json!({"accepting_calls": accepting, "ledger": "in-memory"}),
    };
    let status = if accepting && budgets_known {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn call(
    State(state): State<AppState>,
    Path(call_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = call_id
        .parse::<uuid::Uuid>()
        .map_err(|_| ApiError::BadCallId)?;
    let ledger = state.ledger.as_ref().ok_or(ApiError::NoLedger)?;
    match ledger.call(id).await {
        Ok(Some(row)) => Ok(Json(row)),
        Ok(None) => Err(ApiError::CallNotFound),
        Err(e) => {
            tracing::warn!(error = %e, "ledger read failed");
            Err(ApiError::LedgerUnavailable)
        }
    }
}

/// Each budget: scope, window (with the zone's offset), limit, spent, reserved, remaining, state, and the
/// thresholds crossed in the window. Money as decimal strings.
async fn budgets(State(state): State<AppState>) -> Json<serde_json::Value> {
    use crate::calendar::{local, money};
    let tz = state.timezone;
    let now = state.meter.now();
    let list: Vec<serde_json::Value> = state
        .meter
        .budgets()
        .map(|b| b.snapshot(now))
        .unwrap_or_default()
        .iter()
        .map(|s| {
            json!({
                "name": s.budget.name,
                "period": s.budget.period.as_str(),
                "action": s.budget.action.as_str(),
                "scope": s.budget.scope,
                "window_start": local(s.window_start, tz),
                "window_end": local(s.window_end, tz),
                "limit_yuan": money(s.budget.limit),
                "spent_yuan": money(s.spent),
                "reserved_yuan": money(s.reserved),
                "remaining_yuan": money(s.remaining()),
                "state": s.state(),
                "spent_known": s.ledger_known,
                "thresholds": s.budget.thresholds.iter().map(|t| money(*t)).collect::<Vec<_>>(),
                "thresholds_crossed": s.raised.iter().map(|t| money(*t)).collect::<Vec<_>>(),
            })
        })
        .collect();
    // Where `block` budgets are decided: Postgres once it has their definitions, else this sidecar.
    let coordination = match state.budgets.as_ref().and_then(|b| b.coordinator()) {
        Some(c) if c.ready() => "postgres",
        Some(_) => "postgres-pending",
        None => "local",
    };
    Json(json!({ "timezone": tz.name(), "coordination": coordination, "budgets": list }))
}

/// The parameters of `GET /v1/bill/hourly`, as `deepseek-meter report` takes them.
#[derive(Debug, serde::Deserialize)]
struct BillParams {
    from: Option<String>,
    to: Option<String>,
    by: Option<String>,
    granularity: Option<String>,
    format: Option<String>,
}

/// The hourly bill, as `deepseek-meter report` prints it (`format` json by default, or csv, table, html).
async fn bill_hourly(
    State(state): State<AppState>,
    Query(p): Query<BillParams>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::BadReportQuery(m);
    let format = format_param(
        p.format.as_deref(),
        &[Format::Json, Format::Csv, Format::Table, Format::Html],
    )?;
    let query = ReportQuery::parse(
        p.from.as_deref(),
        p.to.as_deref(),
        p.by.as_deref(),
        p.granularity.as_deref(),
        state.timezone,
        state.meter.now(),
    )
    .map_err(|e| bad(e.0))?;
    let ledger = state.ledger.as_ref().ok_or(ApiError::NoLedger)?;
    let text = crate::billing::read::render(ledger.pool(), &query, format)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "bill read failed");
            ApiError::LedgerUnavailable
        })?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

/// A `format` query parameter: one of `offered` (absent or empty: JSON).
fn format_param(given: Option<&str>, offered: &[Format]) -> Result<Format, ApiError> {
    let Some(f) = given.filter(|f| !f.is_empty()) else {
        return Ok(Format::Json);
    };
    <Format as clap::ValueEnum>::from_str(f, true)
        .ok()
        .filter(|f| offered.contains(f))
        .ok_or_else(|| {
            let names: Vec<String> = offered
                .iter()
                .filter_map(clap::ValueEnum::to_possible_value)
                .map(|v| v.get_name().to_owned())
                .collect();
            ApiError::BadReportQuery(format!("format: {f:?} is not one of {}", names.join(", ")))
        })
}

/// The parameters of `GET /v1/reconcile`, as `deepseek-meter reconcile` takes them (no upload: it compares
/// the bill lines already imported).
#[derive(Debug, serde::Deserialize)]
struct ReconcileParams {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// The ledger against the imported platform bill over `[from, to)` (`format` json by default, csv or table);
/// the run is recorded as the command's is.
/// `GET /v1/reconcile`: the comparison, read only (DESIGN §6: no `GET` writes).
async fn reconcile(
    State(state): State<AppState>,
    Query(p): Query<ReconcileParams>,
) -> Result<Response, ApiError> {
    reconciled(state, p, false).await
}

/// `POST /v1/reconcile`: the same, recorded as a run (the drift metric and the bill's reconciled hours show
/// the newest run).
async fn reconcile_and_record(
    State(state): State<AppState>,
    Query(p): Query<ReconcileParams>,
) -> Result<Response, ApiError> {
    reconciled(state, p, true).await
}

async fn reconciled(
    state: AppState,
    p: ReconcileParams,
    record: bool,
) -> Result<Response, ApiError> {
    use crate::calendar::parse_instant;
    let bad = |m: String| ApiError::BadReportQuery(m);
    let format = format_param(
        p.format.as_deref(),
        &[Format::Json, Format::Csv, Format::Table],
    )?;
    let tz = state.timezone;
    let instant = |name: &str, v: Option<&str>| match v {
        None | Some("") => Err(bad(format!("{name}: required (a time like 2026-11-25T13)"))),
        Some(t) => parse_instant(t, tz).map_err(|e| bad(format!("{name}: {e}"))),
    };
    let from = instant("from", p.from.as_deref())?;
    let to = instant("to", p.to.as_deref())?;
    if from >= to {
        return Err(bad("to: must be after from".into()));
    }
    let ledger = state.ledger.as_ref().ok_or(ApiError::NoLedger)?;
    let cx = crate::reconcile::Context {
        config: &state.reconcile,
        keys: &state.api_keys,
        prices: state.meter.prices(),
        timezone: tz,
    };
    let req = crate::reconcile::Request {
        bill: None,
        from: Some(from),
        to: Some(to),
        record,
    };
    let outcome = crate::reconcile::reconcile(ledger.pool(), &cx, req, state.meter.now(), &|_| {})
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reconciliation failed");
            ApiError::LedgerUnavailable
        })?;
    let text = crate::reconcile::render::render(&outcome.reconciliation, format, tz);
    Ok(([(header::CONTENT_TYPE, format.content_type())], text).into_response())
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::auth::matches(given.as_bytes(), token.as_bytes()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}
