//! A webhook receiver for tests: answers every POST (any path) with the statuses it is given, then 200, and
//! keeps each request's `Idempotency-Key`, status and JSON body.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct WebhookReceiver {
    pub got: Arc<Mutex<Vec<(String, u16, serde_json::Value)>>>,
    /// Statuses to answer with, in order; 200 once empty.
    pub answers: Arc<Mutex<VecDeque<u16>>>,
}

impl WebhookReceiver {
    /// Listening on a loopback port; returns it and its base URL (`http://127.0.0.1:port`).
    pub async fn start() -> (WebhookReceiver, String) {
        let r = WebhookReceiver::default();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, base)
    }

    /// The keys answered 2xx, in order.
    pub fn delivered(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == 200)
            .map(|(k, _, _)| k.clone())
            .collect()
    }

    /// The bodies answered 2xx, in order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == 200)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// What was delivered after two more rounds of the sidecar's loops (when nothing more should come).
    pub async fn settled(&self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.delivered()
    }

    pub fn body_of(&self, key: &str) -> serde_json::Value {
        let got = self.got.lock().unwrap();
        got.iter()
            .find(|(k, s, _)| k == key && *s == 200)
            .unwrap()
            .2
            .clone()
    }

    /// Waits until `n` requests were answered 2xx, then a little longer to catch any extra one.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..400 {
            if self.delivered().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.delivered()
    }
}

async fn receive(
    State(r): State<WebhookReceiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or_default();
    r.got.lock().unwrap().push((key, status, json));
    StatusCode::from_u16(status).unwrap()
}
