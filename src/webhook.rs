//! A webhook: one configured URL that receives JSON POSTs (hour reports now, budget alerts next). Success is
//! a 2xx answer within [`WEBHOOK_TIMEOUT`]; anything else is a failure the caller retries. Redirects are not
//! followed. Errors never carry the URL: a webhook URL often holds a secret in its path or query.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Longest a POST may take, connection included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Webhook {
    client: Client<crate::net::Connector, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
}

/// Why a POST did not land (never with the URL in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the receiver could not be reached ({0})")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
}

impl Webhook {
    pub fn new(url: Uri) -> anyhow::Result<Webhook> {
        Webhook::with_timeout(url, WEBHOOK_TIMEOUT)
    }

    /// A receiver with its own bound on a POST (the OTLP exporter's `OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub fn with_timeout(url: Uri, timeout: Duration) -> anyhow::Result<Webhook> {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(crate::net::https_connector(timeout, None)?);
        Ok(Webhook {
            client,
            url,
            timeout,
        })
    }

    /// POSTs `body` as JSON with the extra `headers`.
    pub async fn post_json(
        &self,
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(), WebhookError> {
        self.post(body, "application/json", headers).await
    }

    /// POSTs `body` of `content_type` with the extra `headers`.
    pub async fn post(
        &self,
        body: Bytes,
        content_type: &'static str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<(), WebhookError> {
        let mut req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, content_type)
            .header(
                header::USER_AGENT,
                concat!("deepseek-meter/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|_| WebhookError::Unreachable("request could not be built".into()))?;
        let send = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // hyper-util's error text names the cause (connect, TLS), not the URL.
                WebhookError::Unreachable(error_kind(&e))
            })?;
            let status = resp.status();
            // Read the answer to the end so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(WebhookError::Status(status.as_u16()))
            }
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| WebhookError::Timeout(self.timeout))?
    }
}

fn error_kind(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "connection failed".into()
    } else {
        "the connection broke".into()
    }
}
