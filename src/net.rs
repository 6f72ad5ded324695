//! Outbound HTTP: the one TLS connector every client of the sidecar builds on (the upstream, the report and
//! alert webhooks), with webpki roots and ring, HTTP/1 and HTTP/2.

use anyhow::Context as _;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// Where a host name leads: the system's resolver, or one fixed address for every name
/// (`--upstream-address`: a private endpoint, or a test's loopback port, while the URL, the `Host` header and
/// the TLS name stay the configured host's).
#[derive(Clone)]
pub enum Resolver {
    System(GaiResolver),
    Fixed(SocketAddr),
}

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Resolving {
        match self {
            Resolver::System(gai) => {
                let found = gai.call(name);
                Box::pin(async move { Ok(found.await?.collect::<Vec<_>>().into_iter()) })
            }
            Resolver::Fixed(addr) => {
                let addr = *addr;
                Box::pin(async move { Ok(vec![addr].into_iter()) })
            }
        }
    }
}

/// `http://` and `https://` both allowed (the simulator and test peers speak plain HTTP on loopback).
/// `address`: connect there instead of resolving the URL's host.
pub fn https_connector(
    connect_timeout: Duration,
    address: Option<SocketAddr>,
) -> anyhow::Result<Connector> {
    let resolver = address.map_or_else(|| Resolver::System(GaiResolver::new()), Resolver::Fixed);
    let mut http = HttpConnector::new_with_resolver(resolver);
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
