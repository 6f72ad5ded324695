//! Outbound HTTP: the one TLS connector every client of the sidecar builds on (the upstream, the report and
//! alert webhooks), with webpki roots and ring, HTTP/1 and HTTP/2.

use anyhow::Context as _;
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// `http://` and `https://` both allowed (the simulator and test peers speak plain HTTP on loopback).
pub fn https_connector(connect_timeout: Duration) -> anyhow::Result<Connector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .context("TLS setup")?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http))
}
