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
    /// The workspace of a per-workspace host (see [`workspace_of_host`]).
    workspace: Option<String>,
}

impl Upstream {
    /// `base`: scheme and authority (a validated setting, or the simulator's address). `address`: connect
    /// there instead of resolving the host (`--upstream-address`).
    pub fn new(
        base: &Uri,
        connect_timeout: Duration,
        address: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Upstream> {
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            anyhow::bail!("upstream {base} has no scheme or host");
        };
        Ok(Upstream {
            client: client(connect_timeout, address)?,
            host_header: HeaderValue::from_str(authority.as_str()).ok(),
            workspace: workspace_of_host(authority.host()),
            scheme,
            authority,
        })
    }

    /// The workspace every call through this upstream runs in, when its host is a per-workspace host.
    pub fn workspace(&self) -> Option<&str> {
        self.workspace.as_deref()
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

/// The workspace ID of a per-workspace host, `{WorkspaceId}.{region}.maas.aliyuncs.com` (reference
/// `bailian-2026.md` §5); `None` for the shared host and any other. The Token Plan's host
/// (`token-plan.{region}.maas.aliyuncs.com`) names a plan, not a workspace.
pub fn workspace_of_host(host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let rest = host.strip_suffix(".maas.aliyuncs.com")?;
    let (workspace, region) = rest.split_once('.')?;
    let valid = !workspace.is_empty()
        && workspace != "token-plan"
        && !region.is_empty()
        && !region.contains('.');
    valid.then(|| workspace.to_owned())
}

fn client(
    connect_timeout: Duration,
    address: Option<std::net::SocketAddr>,
) -> anyhow::Result<UpstreamClient> {
    let https = crate::net::https_connector(connect_timeout, address)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // After a burst of thousands of concurrent streams, keep enough warm connections for the next one,
        // not every socket of the burst, with its buffers, for the idle timeout (W4 of bench/proxy: 274 open
        // fds 5 s after 2,000 streams).
        .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS)
        .build(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_workspace_host_names_its_workspace() {
        assert_eq!(
            workspace_of_host("llm-abc123.cn-beijing.maas.aliyuncs.com").as_deref(),
            Some("llm-abc123")
        );
        assert_eq!(
            workspace_of_host("LLM-ABC.ap-southeast-1.maas.aliyuncs.com").as_deref(),
            Some("llm-abc")
        );
        for other in [
            "dashscope.aliyuncs.com",
            "token-plan.cn-beijing.maas.aliyuncs.com",
            "maas.aliyuncs.com",
            "x.y.z.maas.aliyuncs.com",
            "llm-abc.cn-beijing.maas.aliyuncs.com.evil.example",
            "127.0.0.1",
        ] {
            assert_eq!(workspace_of_host(other), None, "{other}");
        }
    }
}
