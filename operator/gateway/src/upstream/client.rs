//! The HTTP client of upstream MCP sessions: hyper's pooled client, with the egress policy's
//! guarded resolver and rustls, and nothing else.
//!
//! Why not reqwest (which the rest of the platform uses for its few outbound calls): a gateway
//! call is one proxied POST, and reqwest turned every one into two URL parses (its redirect
//! layer and its response re-parse the `Uri` back into a `Url`, with IDNA processing), a
//! redirect layer and a retry layer that a session which follows no redirects and retries
//! only on its own terms does not need: 7–8 % of the gateway's instructions per call
//! (docs/benchmarks.md, "Session 12"). This is what reqwest builds on, configured the same
//! way:
//!
//! * every name is resolved by [`GuardedResolver::resolve_allowed`] (the policy's name and
//!   address checks, on every new connection); an IP literal needs no lookup and was checked
//!   with the URL (as in reqwest, which uses the same connector);
//! * TLS: rustls with the process's crypto provider and the platform verifier, ALPN
//!   `http/1.1`, as reqwest's `rustls-no-provider` configures it;
//! * no redirects (a 3xx is an answer like any other: one could carry the credential headers
//!   to another origin), no proxy, `TCP_NODELAY`, idle pool timeout; the connect timeout
//!   bounds the TCP connect, and every request (its TLS handshake included) is bounded by the
//!   call's own deadline in [`super::Upstreams`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use awooop_policy::egress::{EgressPolicy, GuardedResolver};

use super::UpstreamError;

pub type Body = Full<Bytes>;
pub type Response = http::Response<hyper::body::Incoming>;

/// One project's pooled HTTP(S) client toward its upstreams.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector<Resolver>>, Body>,
}

impl UpstreamClient {
    pub fn new(
        project: &str,
        egress: Arc<EgressPolicy>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let mut http = HttpConnector::new_with_resolver(Resolver(Arc::new(GuardedResolver::new(
            project, egress,
        ))));
        // The TLS layer above takes `https` URLs; this one must not refuse them.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .build(https);
        Ok(Self { inner })
    }

    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<Response, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }
}

/// reqwest's rustls configuration (feature `rustls-no-provider`, no extra roots): the
/// process-default provider (*ring*, installed by `awooop_core::tls`), TLS 1.2 and 1.3, the
/// platform verifier, no client certificate. ALPN (`http/1.1`) is set by the connector
/// builder's `enable_http1`, which refuses a configuration that already names protocols.
fn tls_config() -> Result<rustls::ClientConfig, UpstreamError> {
    awooop_core::tls::install_crypto_provider();
    let unavailable = |what: &str| UpstreamError::Unavailable(format!("cannot set up TLS: {what}"));
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| unavailable("no crypto provider"))?;
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|_| unavailable("the platform certificate verifier"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| unavailable("protocol versions"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(cfg)
}

/// [`GuardedResolver`] as hyper's resolver service.
#[derive(Clone)]
pub struct Resolver(Arc<GuardedResolver>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let r = self.0.clone();
        Box::pin(async move { Ok(r.resolve_allowed(name.as_str()).await?.into_iter()) })
    }
}

/// Whether `e` (or any error it wraps) is an I/O timeout: the connect timeout.
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connect timeout arrives as an I/O `TimedOut` under the client's own error types;
    /// other I/O errors are not timeouts.
    #[test]
    fn timeouts_are_found_under_wrapping_errors() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connect error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let timed_out = Wrap(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        let refused = Wrap(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "r",
        ));
        assert!(is_timeout(&timed_out));
        assert!(!is_timeout(&refused));
    }

    /// The resolver service refuses what the policy refuses, with the policy's error (which
    /// `refused_by_policy` maps to `E-EGRESS-001`), before any lookup.
    #[tokio::test]
    async fn the_resolver_service_applies_the_egress_policy() {
        use tower_service::Service;
        let mut r = Resolver(Arc::new(GuardedResolver::new(
            "acme",
            Arc::new(EgressPolicy::default()),
        )));
        let name: Name = "localhost".parse().expect("name");
        let e = r.call(name).await.expect_err("loopback name refused");
        assert!(
            awooop_policy::egress::refused_by_policy(e.as_ref()).is_some(),
            "{e}"
        );
        let mut open = Resolver(Arc::new(GuardedResolver::new(
            "acme",
            Arc::new(EgressPolicy::default().allow_loopback()),
        )));
        let addrs: Vec<SocketAddr> = open
            .call("localhost".parse().expect("name"))
            .await
            .expect("allowed")
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    /// The client builds (the TLS connector builder panics on a configuration it does not
    /// accept, and it is built when a session opens, under the pool's lock).
    #[tokio::test]
    async fn the_client_builds() {
        UpstreamClient::new(
            "acme",
            Arc::new(EgressPolicy::default()),
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .expect("client");
        assert!(tls_config().expect("tls").alpn_protocols.is_empty());
    }
}
