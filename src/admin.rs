//! The admin listener: metrics, health, and reads of the ledger (DESIGN §6).
//!
//! Loopback by default. When `--admin-token` is set, every route but `/healthz` requires
//! `Authorization: Bearer <token>`, compared in constant time.

use crate::app::AppState;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn router(state: AppState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/v1/calls/{call_id}", get(call))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(j) = &state.journal {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        state
            .metrics
            .ledger_pending
            .set(as_i64(j.stats.pending.load(Ordering::Relaxed)));
        state
            .metrics
            .journal_bytes
            .set(as_i64(j.stats.bytes.load(Ordering::Relaxed)));
        state
            .metrics
            .ledger_unrecorded
            .set(as_i64(j.stats.unrecorded.load(Ordering::Relaxed)));
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
    let accepting = state.accepting();
    let body = match (&state.journal, &state.ledger) {
        (Some(j), Some(l)) => json!({
            "accepting_calls": accepting,
            "database_reachable": l.reachable.load(Ordering::Relaxed),
            "journal_pending_records": j.stats.pending.load(Ordering::Relaxed),
            "journal_bytes": j.stats.bytes.load(Ordering::Relaxed),
            "journal_max_bytes": j.config().max_bytes,
            "journal_writes_failing": j.stats.failing.load(Ordering::Relaxed),
        }),
        _ => json!({"accepting_calls": accepting, "ledger": "in-memory"}),
    };
    let status = if accepting {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn call(State(state): State<AppState>, Path(call_id): Path<String>) -> Response {
    let Ok(id) = call_id.parse::<uuid::Uuid>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "call_id is not a UUID"})),
        )
            .into_response();
    };
    let Some(ledger) = &state.ledger else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no ledger configured"})),
        )
            .into_response();
    };
    match ledger.call(id).await {
        Ok(Some(row)) => Json(row).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such call in the ledger (a call finished moments ago may still be in the journal)"})),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "ledger read failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "ledger database unavailable"}))).into_response()
        }
    }
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "admin token required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
