//! Builds ext_authz `CheckRequest`s the way Envoy sends them, for the
//! integration tests, the criterion benches and `stsgate-loadgen`; `load` is
//! the load-driving core `stsgate-loadgen` and the fault tests share. Not part of
//! the server: compiled only with the `testkit` feature (which `loadgen`
//! enables, and which tests and benches get through the dev-dependency on this
//! crate itself, see Cargo.toml).
//!
//! ```
//! use stsgate::testkit::CheckRequestBuilder;
//! let req = CheckRequestBuilder::new()
//!     .host("api.test")
//!     .bearer("eyJ...")
//!     .context("audience", "orders")
//!     .peer("spiffe://cluster.local/ns/shop/sa/web")
//!     .build();
//! let attrs = req.attributes.unwrap();
//! assert_eq!(attrs.context_extensions["audience"], "orders");
//! assert_eq!(attrs.request.unwrap().http.unwrap().headers["authorization"], "Bearer eyJ...");
//! ```

use std::collections::HashMap;

pub mod bench;
pub mod load;

use crate::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use crate::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// A `CheckRequest` for one HTTP request: `GET /` over HTTP/1.1 (scheme
/// `http`, no host) unless told otherwise, with the headers, context
/// extensions and peer (`attributes.source`) given.
#[derive(Debug, Clone)]
pub struct CheckRequestBuilder {
    id: String,
    method: String,
    host: String,
    path: String,
    scheme: String,
    protocol: String,
    headers: HashMap<String, String>,
    context: HashMap<String, String>,
    source: Option<Peer>,
    pseudo_headers: bool,
}

impl Default for CheckRequestBuilder {
    fn default() -> Self {
        CheckRequestBuilder::new()
    }
}

impl CheckRequestBuilder {
    pub fn new() -> Self {
        CheckRequestBuilder {
            id: String::new(),
            method: "GET".into(),
            host: String::new(),
            path: "/".into(),
            scheme: "http".into(),
            protocol: "HTTP/1.1".into(),
            headers: HashMap::new(),
            context: HashMap::new(),
            source: None,
            pseudo_headers: false,
        }
    }

    /// `attributes.request.http.id` (Envoy's `x-request-id`).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }

    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = protocol.into();
        self
    }

    /// One request header, name as given (Envoy sends them lower-cased); a
    /// later value for the same name replaces the earlier one.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn headers<K: Into<String>, V: Into<String>>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self {
        self.headers.extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// One context extension of the route (e.g. `audience`, `scope`, `actor`).
    pub fn context(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    pub fn contexts<K: Into<String>, V: Into<String>>(mut self, ctx: impl IntoIterator<Item = (K, V)>) -> Self {
        self.context.extend(ctx.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The downstream peer's `source.principal` (the mTLS client's SPIFFE ID).
    pub fn peer(self, principal: impl Into<String>) -> Self {
        self.source(Peer { principal: principal.into(), ..Default::default() })
    }

    /// The whole `attributes.source`.
    pub fn source(mut self, peer: Peer) -> Self {
        self.source = Some(peer);
        self
    }

    /// Also sends `:authority`, `:method`, `:path` and `:scheme` among the
    /// headers, as Envoy does.
    pub fn pseudo_headers(mut self) -> Self {
        self.pseudo_headers = true;
        self
    }

    pub fn build(self) -> CheckRequest {
        let mut headers = self.headers;
        if self.pseudo_headers {
            for (name, value) in [
                (":authority", &self.host),
                (":method", &self.method),
                (":path", &self.path),
                (":scheme", &self.scheme),
            ] {
                headers.entry(name.to_owned()).or_insert_with(|| value.clone());
            }
        }
        CheckRequest {
            attributes: Some(AttributeContext {
                source: self.source,
                request: Some(AttrRequest {
                    http: Some(HttpRequest {
                        id: self.id,
                        method: self.method,
                        headers,
                        path: self.path,
                        host: self.host,
                        scheme: self.scheme,
                        protocol: self.protocol,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: self.context,
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_envoy_sends() {
        let req = CheckRequestBuilder::new()
            .host("bench.example")
            .header("user-agent", "wrk")
            .bearer("t0k")
            .context("audience", "orders")
            .peer("spiffe://a/b")
            .pseudo_headers()
            .build();
        let attrs = req.attributes.unwrap();
        assert_eq!(attrs.source.unwrap().principal, "spiffe://a/b");
        assert_eq!(attrs.context_extensions, HashMap::from([("audience".to_owned(), "orders".to_owned())]));
        let http = attrs.request.unwrap().http.unwrap();
        assert_eq!((http.method.as_str(), http.path.as_str(), http.host.as_str()), ("GET", "/", "bench.example"));
        assert_eq!((http.scheme.as_str(), http.protocol.as_str()), ("http", "HTTP/1.1"));
        let mut names: Vec<_> = http.headers.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, [":authority", ":method", ":path", ":scheme", "authorization", "user-agent"]);
        assert_eq!(http.headers[":authority"], "bench.example");
        assert_eq!(http.headers["authorization"], "Bearer t0k");
    }

    #[test]
    fn no_pseudo_headers_and_no_peer_unless_asked() {
        let req = CheckRequestBuilder::new().build();
        let attrs = req.attributes.unwrap();
        assert!(attrs.source.is_none());
        assert!(attrs.request.unwrap().http.unwrap().headers.is_empty());
    }
}
