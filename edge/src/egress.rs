//! Where the edge may connect: every upstream connection (proxied requests and health checks)
//! goes through [`Egress`], which refuses the node's private side
//! ([`palisade_raft::model::upstream`]) on the address actually used: an IP literal before
//! connecting, each address a name resolves to before connecting, and the connection made
//! (a listener of this node bound to every address is only known by then).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use palisade_raft::ids::Cidr;
use palisade_raft::model::upstream::{Forbidden, UpstreamPolicy};
use tokio::net::TcpStream;

use crate::view::LiveView;

/// The refusal, as the error of a connect attempt (found again by [`refusal_in`]).
#[derive(Debug, thiserror::Error)]
#[error("upstream {addr} refused: it is {why}")]
pub struct Refused {
    pub addr: String,
    pub why: Forbidden,
}

/// The policy in force: the cluster setting from the live view, this node's own allowance
/// and its listeners.
pub struct Egress {
    view: Arc<LiveView>,
    local_allowed: Vec<Cidr>,
    own_listeners: Vec<SocketAddr>,
}

impl Egress {
    pub fn new(
        view: Arc<LiveView>,
        local_allowed: Vec<Cidr>,
        own_listeners: Vec<SocketAddr>,
    ) -> Egress {
        Egress {
            view,
            local_allowed,
            own_listeners,
        }
    }

    pub fn policy(&self) -> UpstreamPolicy {
        let cluster = self.view.get().upstream_allowed.clone();
        UpstreamPolicy {
            allowed: cluster.iter().chain(&self.local_allowed).copied().collect(),
            own_listeners: self.own_listeners.clone(),
        }
    }

    /// Why `addr` may not be an upstream, if it may not.
    pub fn refusal(&self, addr: SocketAddr) -> Option<Forbidden> {
        self.policy().refusal(addr)
    }

    /// Resolve `host:port` and keep the addresses the policy allows; `Refused` when it
    /// resolved only to refused ones.
    pub async fn resolve(&self, target: &str) -> std::io::Result<Vec<SocketAddr>> {
        let policy = self.policy();
        let all: Vec<SocketAddr> = tokio::net::lookup_host(target).await?.collect();
        let mut first_refusal = None;
        let kept: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| match policy.refusal(*a) {
                None => true,
                Some(why) => {
                    first_refusal.get_or_insert(why);
                    false
                }
            })
            .collect();
        match (kept.is_empty(), first_refusal) {
            (true, Some(why)) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                Refused {
                    addr: target.to_string(),
                    why,
                },
            )),
            _ => Ok(kept),
        }
    }

    /// Check a connection made (see [`UpstreamPolicy::refusal_of_connection`]).
    pub fn check_connected(&self, stream: &TcpStream) -> Result<(), Refused> {
        let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr()) else {
            return Ok(());
        };
        match self.policy().refusal_of_connection(local, peer) {
            None => Ok(()),
            Some(why) => Err(Refused {
                addr: peer.to_string(),
                why,
            }),
        }
    }
}

/// The refusal somewhere in an error's chain of sources.
pub fn refusal_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<Refused>()) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Name resolution for the proxy's connector, through [`Egress::resolve`].
#[derive(Clone)]
pub struct Resolver(Arc<Egress>);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<std::io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let egress = self.0.clone();
        Box::pin(async move {
            // The connector puts the URI's port on each address.
            let addrs = egress.resolve(&format!("{}:0", name.as_str())).await?;
            Ok(addrs.into_iter())
        })
    }
}

/// The proxy's connector: hyper's, with the policy before and after it connects.
#[derive(Clone)]
pub struct Connector {
    inner: HttpConnector<Resolver>,
    egress: Arc<Egress>,
}

impl Connector {
    pub fn new(egress: Arc<Egress>, connect_timeout: std::time::Duration) -> Connector {
        let mut inner = HttpConnector::new_with_resolver(Resolver(egress.clone()));
        inner.set_connect_timeout(Some(connect_timeout));
        inner.set_nodelay(true);
        Connector { inner, egress }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let egress = self.egress.clone();
        // An IP literal never reaches the resolver: it is checked here, before anything is sent.
        let literal = uri.host().and_then(|h| {
            let ip: IpAddr = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?;
            Some(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
        });
        if let Some((addr, why)) = literal.and_then(|a| Some((a, egress.refusal(a)?))) {
            let refused = Refused {
                addr: addr.to_string(),
                why,
            };
            return Box::pin(async move { Err(refused.into()) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            egress.check_connected(io.inner())?;
            Ok(io)
        })
    }
}
