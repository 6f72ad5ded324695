//! The one configured upstream: the HTTP client to it, and the URI a forwarded call goes to.
//!
//! The URI is built from the configured scheme and authority plus the request's path and query, never from
//! the request's own authority or `Host`, so a client cannot point the proxy anywhere else.

use bytes::Bytes;
use http::{HeaderValue, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Idle upstream connections kept for reuse (all to the one configured upstream).
pub const UPSTREAM_IDLE_CONNECTIONS: usize = 256;

pub type UpstreamClient = Client<crate::net::Connector, Full<Bytes>>;

pub struct Upstream {
    pub client: UpstreamClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host_header: Option<HeaderValue>,
}

impl Upstream {
    /// `base`: scheme and authority (a validated setting, or the simulator's address).
    pub fn new(base: &Uri, connect_timeout: Duration) -> anyhow::Result<Upstream> {
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            anyhow::bail!("upstream {base} has no scheme or host");
        };
        Ok(Upstream {
            client: client(connect_timeout)?,
            host_header: HeaderValue::from_str(authority.as_str()).ok(),
            scheme,
            authority,
        })
    }

    /// The upstream URI for a request: the configured scheme and authority, the request's path and query.
    pub fn uri_for(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The `Host` header every forwarded request carries.
    pub fn host_header(&self) -> Option<HeaderValue> {
        self.host_header.clone()
    }
}

fn client(connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
    let https = crate::net::https_connector(connect_timeout)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // After a burst of thousands of concurrent streams, keep enough warm connections for the next one,
        // not every socket of the burst, with its buffers, for the idle timeout (W4 of bench/proxy: 274 open
        // fds 5 s after 2,000 streams).
        .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS)
        .build(https))
}
