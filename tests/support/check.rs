//! `CheckRequest`s (through `stsgate::testkit::CheckRequestBuilder`) and
//! readers of the `CheckResponse`s stsgate answers with.

use std::collections::HashMap;

use serde_json::Value;

use stsgate::pb::envoy::config::core::v3::HeaderValueOption;
use stsgate::pb::envoy::service::auth::v3::check_response::HttpResponse;
use stsgate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use stsgate::testkit::CheckRequestBuilder;

use super::{RPC_OK, RPC_UNAUTHENTICATED};

/// One `CheckRequest` for `host` + `path` (`GET`, `https`) with these headers
/// and context extensions; for more (a peer, another method), use
/// `CheckRequestBuilder` directly, starting from `request_to(host, path)`.
pub fn check_request(headers: &[(&str, &str)], ctx: &[(&str, &str)], host: &str, path: &str) -> CheckRequest {
    request_to(host, path).headers(headers.iter().copied()).contexts(ctx.iter().copied()).build()
}

/// The builder every test request starts from: `GET https://{host}{path}`.
pub fn request_to(host: &str, path: &str) -> CheckRequestBuilder {
    CheckRequestBuilder::new().id("test-request").host(host).path(path).scheme("https")
}

// ---------------------------------------------------------------------------
// Reading CheckResponses
// ---------------------------------------------------------------------------

pub fn rpc_code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().map(|s| s.code).expect("CheckResponse has a status")
}

/// String fields of the response's dynamic metadata.
pub fn metadata(resp: &CheckResponse) -> HashMap<String, String> {
    use prost_types::value::Kind;
    resp.dynamic_metadata
        .as_ref()
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What an allowed response asks Envoy to do.
#[derive(Debug)]
pub struct Allowed {
    pub headers: Vec<HeaderValueOption>,
    pub headers_to_remove: Vec<String>,
    pub metadata: HashMap<String, String>,
}

impl Allowed {
    /// The value of the one header mutation named `name`.
    pub fn header(&self, name: &str) -> &HeaderValueOption {
        let found: Vec<_> = self.headers.iter().filter(|h| h.header.as_ref().is_some_and(|h| h.key == name)).collect();
        assert_eq!(found.len(), 1, "exactly one {name} mutation in {:?}", self.headers);
        found[0]
    }

    pub fn header_value(&self, name: &str) -> String {
        self.header(name).header.as_ref().unwrap().value.clone()
    }

    /// The minted token from `authorization: Bearer <token>`.
    pub fn bearer(&self) -> String {
        let v = self.header_value("authorization");
        v.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer value: {v}")).to_owned()
    }
}

#[track_caller]
pub fn allowed(resp: &CheckResponse) -> Allowed {
    match (&resp.status, &resp.http_response) {
        (Some(s), Some(HttpResponse::OkResponse(ok))) if s.code == RPC_OK => Allowed {
            headers: ok.headers.clone(),
            headers_to_remove: ok.headers_to_remove.clone(),
            metadata: metadata(resp),
        },
        _ => panic!("expected an OK CheckResponse, got {resp:#?}"),
    }
}

/// What a denied response sends back to the caller.
#[derive(Debug)]
pub struct Denial {
    pub rpc_code: i32,
    pub http_status: i32,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub metadata: HashMap<String, String>,
}

impl Denial {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().expect("body.error")
    }

    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().expect("body.error_description")
    }

    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers.get("www-authenticate").map(String::as_str)
    }
}

#[track_caller]
pub fn denial(resp: &CheckResponse) -> Denial {
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("expected a denied CheckResponse, got {resp:#?}");
    };
    let rpc_code = rpc_code(resp);
    assert_ne!(rpc_code, RPC_OK, "a denial must not carry status OK: {resp:#?}");
    let headers: HashMap<String, String> =
        d.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect();
    let body: Value =
        serde_json::from_str(&d.body).unwrap_or_else(|e| panic!("denied body is not JSON ({e}): {}", d.body));
    Denial {
        rpc_code,
        http_status: d.status.as_ref().map(|s| s.code).unwrap_or(0),
        headers,
        body,
        metadata: metadata(resp),
    }
}

/// A 401 `invalid_token` denial whose description contains `needle`.
#[track_caller]
pub fn assert_invalid_token(resp: &CheckResponse, needle: &str) -> Denial {
    let d = denial(resp);
    assert_eq!(d.rpc_code, RPC_UNAUTHENTICATED, "{d:#?}");
    assert_eq!(d.http_status, 401, "{d:#?}");
    assert_eq!(d.error(), "invalid_token", "{d:#?}");
    assert!(d.description().contains(needle), "description {:?} lacks {needle:?}", d.description());
    let challenge = d.www_authenticate().expect("401 carries WWW-Authenticate");
    assert!(challenge.starts_with("Bearer realm=\"stsgate\""), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(d.headers.get("cache-control").map(String::as_str), Some("no-store"));
    assert_eq!(d.metadata.get("decision").map(String::as_str), Some("denied"));
    d
}
