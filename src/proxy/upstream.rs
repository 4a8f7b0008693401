//! Backends as the request path sees them, and the one call that sends a request to one.
//!
//! Connection pools ([`crate::pool`]) are keyed by what shapes a connection (address,
//! protocol, connect timeout) and are kept across reloads, so a 10 → 20% edit reuses warm
//! connections instead of opening new ones.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::config::BackendSpec;
use crate::error::ProxyError;
use crate::proxy::pool::Pool;
pub use crate::proxy::pool::UpstreamBody;

/// A backend as the request path sees it.
pub struct Upstream {
    pub name: Arc<str>,
    authority: Authority,
    base_path: String,
    http2: bool,
    request_timeout: Duration,
    /// Longest wait between two reads of a response body.
    pub read_timeout: Duration,
    pool: Pool,
}

impl Upstream {
    /// The backend URI for a request target: the backend's base path, then the target's
    /// path with `strip` leading bytes removed (a route's matched prefix), then its query.
    /// Origin form for HTTP/1 (what goes on the wire); HTTP/2 also needs scheme and authority.
    pub fn uri_for(&self, target: &Uri, strip: usize) -> Result<Uri, http::Error> {
        let mut parts = http::uri::Parts::default();
        if self.http2 {
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
        }
        parts.path_and_query = match target.path_and_query() {
            // The common case reuses the target as it came.
            Some(original) if self.base_path.is_empty() && strip == 0 => Some(original.clone()),
            _ => {
                let rest = target.path().get(strip..).unwrap_or("");
                let query = target.query();
                let mut joined = String::with_capacity(
                    self.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 2),
                );
                joined.push_str(&self.base_path);
                if !rest.starts_with('/') {
                    joined.push('/');
                }
                joined.push_str(rest);
                if let Some(query) = query {
                    joined.push('?');
                    joined.push_str(query);
                }
                Some(PathAndQuery::try_from(joined)?)
            }
        };
        Ok(Uri::from_parts(parts)?)
    }

    pub fn version(&self) -> Version {
        if self.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        }
    }

    /// Sends `req` and waits for the response head, at most `request_timeout`.
    ///
    /// A combinator, not an `async fn`: an `async fn` keeps its own copy of `req` beside the
    /// future it awaits, and every request's future is moved whole a few times on its way.
    pub fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + '_ {
        tokio::time::timeout(self.request_timeout, self.pool.send(req))
            .map(|sent| sent.unwrap_or(Err(ProxyError::Timeout)))
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    authority: String,
    http2: bool,
    connect_timeout: Duration,
}

/// Connection pools that outlive snapshots. Used only while building one, off the request path.
#[derive(Default)]
pub struct UpstreamCache {
    pools: HashMap<PoolKey, Pool>,
}

impl UpstreamCache {
    /// Upstreams for `backends`, reusing pools from earlier snapshots and dropping pools no
    /// backend uses any more.
    pub fn build(&mut self, backends: &[BackendSpec]) -> Vec<Arc<Upstream>> {
        let mut kept = HashMap::with_capacity(backends.len());
        let upstreams = backends
            .iter()
            .map(|spec| {
                let key = PoolKey {
                    authority: spec.authority.as_str().to_owned(),
                    http2: spec.http2,
                    connect_timeout: spec.connect_timeout,
                };
                let pool = self.pools.get(&key).cloned().unwrap_or_else(|| {
                    Pool::new(&spec.authority, spec.http2, spec.connect_timeout)
                });
                kept.insert(key, pool.clone());
                Arc::new(Upstream {
                    name: spec.name.as_str().into(),
                    authority: spec.authority.clone(),
                    base_path: spec.base_path.clone(),
                    http2: spec.http2,
                    request_timeout: spec.request_timeout,
                    read_timeout: spec.read_timeout,
                    pool,
                })
            })
            .collect();
        self.pools = kept;
        upstreams
    }
}
