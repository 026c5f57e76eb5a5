//! The load-driving core shared by `stsgate-loadgen` and the fault tests
//! (`tests/faults_under_load.rs`): N concurrent Check calls spread over C
//! HTTP/2 channels, each built from a token [`Mix`] (valid tokens and a share
//! of hostile ones), each answer handed to the caller as an [`Outcome`] and,
//! when a [`MintedCheck`] is given, verified: a hostile token allowed, or a
//! minted token with the wrong signature, issuer, subject or audience, is
//! marked wrong. Whether a *refusal* is wrong depends on what the caller did
//! to the IdP meanwhile, so that judgement is the caller's (it has the times).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::pb::envoy::service::auth::v3::check_response::HttpResponse;
use crate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use crate::pb::google::rpc::Status as RpcStatus;
use crate::testkit::CheckRequestBuilder;

/// What the token of a [`Shot`] deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A valid token of `sub`: an allowed answer must carry a token for `sub`.
    Allow { sub: String },
    /// A hostile token: never allowed.
    Refuse,
    /// Not judged (the load generator's tokens from a file).
    Any,
}

/// One subject token of the mix and what it deserves.
#[derive(Debug, Clone)]
pub struct Shot {
    /// Free-form, for reports (e.g. `valid:rsa-2` or `hostile:alg-none`).
    pub label: String,
    pub token: String,
    pub expect: Expect,
}

impl Shot {
    pub fn new(label: impl Into<String>, token: impl Into<String>, expect: Expect) -> Arc<Shot> {
        Arc::new(Shot { label: label.into(), token: token.into(), expect })
    }
}

/// The audiences requests ask for, cycled through.
#[derive(Debug, Clone)]
pub enum Audiences {
    List(Vec<String>),
    /// `{prefix}000000` .. `{prefix}{count-1}`, without holding them all.
    Numbered {
        prefix: String,
        count: u64,
    },
}

impl Audiences {
    fn get(&self, n: u64) -> String {
        match self {
            Audiences::List(list) => list[(n % list.len() as u64) as usize].clone(),
            Audiences::Numbered { prefix, count } => format!("{prefix}{:06}", n % (*count).max(1)),
        }
    }
}

/// Which tokens go out: valid ones round-robin, and `hostile_per_mille` of
/// the requests (spread evenly, deterministically) carry a hostile one.
#[derive(Debug, Clone)]
pub struct Mix {
    valid: Vec<Arc<Shot>>,
    hostile: Vec<Arc<Shot>>,
    hostile_per_mille: u64,
    audiences: Audiences,
    /// One token and one audience: the request is built once.
    fixed: Option<CheckRequest>,
}

impl Mix {
    /// Only `valid` tokens (at least one), over `audiences` (at least one).
    pub fn new(valid: Vec<Arc<Shot>>, audiences: Audiences) -> Mix {
        assert!(!valid.is_empty(), "a mix needs at least one valid token");
        assert!(
            match &audiences {
                Audiences::List(l) => !l.is_empty(),
                Audiences::Numbered { count, .. } => *count > 0,
            },
            "a mix needs at least one audience"
        );
        let fixed = match (&valid[..], &audiences) {
            ([one], Audiences::List(auds)) if auds.len() == 1 => Some(check_request(&one.token, &auds[0])),
            _ => None,
        };
        Mix { valid, hostile: Vec::new(), hostile_per_mille: 0, audiences, fixed }
    }

    /// Adds hostile tokens, sent in `per_mille` of the requests.
    pub fn with_hostile(mut self, hostile: Vec<Arc<Shot>>, per_mille: u64) -> Mix {
        assert!(per_mille <= 1000 && (per_mille == 0 || !hostile.is_empty()));
        self.hostile = hostile;
        self.hostile_per_mille = per_mille;
        self.fixed = None;
        self
    }

    /// The shot and audience of request number `n`.
    pub fn pick(&self, n: u64) -> (Arc<Shot>, String) {
        // A multiplicative hash spreads the hostile share over the sequence.
        let bucket = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 1000;
        let shot = if bucket < self.hostile_per_mille {
            &self.hostile[((n / 3) % self.hostile.len() as u64) as usize]
        } else {
            &self.valid[(n % self.valid.len() as u64) as usize]
        };
        (shot.clone(), self.audiences.get(n / self.valid.len() as u64))
    }

    fn request(&self, shot: &Shot, audience: &str) -> CheckRequest {
        match &self.fixed {
            Some(r) => r.clone(),
            None => check_request(&shot.token, audience),
        }
    }
}

/// The CheckRequest of one load request: what Envoy sends for `GET /` with
/// `authorization: Bearer <token>` and the route's `audience`.
pub fn check_request(token: &str, audience: &str) -> CheckRequest {
    CheckRequestBuilder::new()
        .host("bench.example")
        .pseudo_headers()
        .header("user-agent", "stsgate-loadgen")
        .header("x-request-id", "00000000-0000-4000-8000-000000000000")
        .bearer(token)
        .context("audience", audience)
        .build()
}

/// What came back for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// OK; with [`Decode::Full`], the minted token from the output header.
    Allowed { minted: Option<String> },
    /// A denied CheckResponse (`http_status` 0 with [`Decode::StatusOnly`]).
    Denied { rpc_code: i32, http_status: i32, message: String },
    /// No CheckResponse: a gRPC error, a broken connection or the timeout.
    Failed { code: Code, message: String },
}

/// One request, as the driver saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub n: u64,
    pub shot: Arc<Shot>,
    pub audience: String,
    pub started: Instant,
    pub finished: Instant,
    pub answer: Answer,
    /// Set by the [`MintedCheck`]: why this answer is wrong whatever the IdP did.
    pub wrong: Option<String>,
}

/// How much of each answer is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Only `CheckResponse.status`: the load generator shares the cores with
    /// the server it measures (prost skips the rest without allocating).
    StatusOnly,
    /// The whole answer, so the minted token can be verified.
    Full,
}

/// Verifies allowed answers: the minted token (read from the `authorization`
/// header mutation, stsgate's default `output_header`, `Bearer ` stripped)
/// must verify against stsgate's published `jwks`, name `issuer`, carry the
/// requested audience, and the subject the shot expects.
pub struct MintedCheck {
    pub issuer: String,
    pub jwks: jsonwebtoken::jwk::JwkSet,
}

impl MintedCheck {
    /// `None` when the answer is right as far as the shot alone can tell.
    pub fn judge(&self, shot: &Shot, audience: &str, answer: &Answer) -> Option<String> {
        let Answer::Allowed { minted } = answer else { return None };
        if shot.expect == Expect::Refuse {
            return Some(format!("hostile token {} was allowed", shot.label));
        }
        let Some(minted) = minted else {
            return Some(format!("{} allowed without a minted authorization header", shot.label));
        };
        let claims = match self.verify(minted, audience) {
            Ok(claims) => claims,
            Err(why) => return Some(format!("{} allowed with a bad minted token: {why}", shot.label)),
        };
        match &shot.expect {
            Expect::Allow { sub } if claims["sub"].as_str() != Some(sub.as_str()) => {
                Some(format!("{} (sub {sub}) got a token for sub {}", shot.label, claims["sub"]))
            }
            _ => None,
        }
    }

    fn verify(&self, token: &str, audience: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("header: {e}"))?;
        let kid = header.kid.as_deref().ok_or("no kid")?;
        let jwk = self.jwks.find(kid).ok_or_else(|| format!("kid {kid} is not in stsgate's JWKS"))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK: {e}"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key, &validation).map(|d| d.claims).map_err(|e| e.to_string())
    }
}

/// When the load stops: after `count` requests, at `until`, or once `stop`
/// is set, whichever comes first (none of them: runs until `stop`).
pub struct Driver {
    pub concurrency: usize,
    pub decode: Decode,
    pub count: Option<u64>,
    pub until: Option<Instant>,
    pub stop: Arc<AtomicBool>,
    /// Each call's deadline; a call past it is `Failed { DeadlineExceeded }`.
    pub timeout: Duration,
    pub check: Option<Arc<MintedCheck>>,
}

impl Driver {
    pub fn new(concurrency: usize, decode: Decode) -> Driver {
        Driver {
            concurrency: concurrency.max(1),
            decode,
            count: None,
            until: None,
            stop: Arc::new(AtomicBool::new(false)),
            timeout: Duration::from_secs(30),
            check: None,
        }
    }

    /// Runs the load: `concurrency` tasks, task `i` on `channels[i % C]`,
    /// each with its own state from `init`, to which `record` adds every
    /// outcome. The mix is read per request, so the caller may swap it
    /// (e.g. add tokens of a rotated key) while the load runs. Returns the
    /// tasks' states.
    pub async fn run<S, I, F>(self, channels: &[Channel], mix: Arc<ArcSwap<Mix>>, init: I, record: F) -> Vec<S>
    where
        S: Send + 'static,
        I: Fn() -> S,
        F: Fn(&mut S, Outcome) + Send + Sync + 'static,
    {
        assert!(!channels.is_empty(), "the load needs at least one channel");
        let shared = Arc::new((self, record, AtomicU64::new(0)));
        let mut tasks = Vec::with_capacity(shared.0.concurrency);
        for i in 0..shared.0.concurrency {
            let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            let (shared, mix) = (shared.clone(), mix.clone());
            let mut state = init();
            tasks.push(tokio::spawn(async move {
                let (driver, record, counter) = &*shared;
                loop {
                    if driver.stop.load(Ordering::Relaxed) || driver.until.is_some_and(|u| Instant::now() >= u) {
                        break;
                    }
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if driver.count.is_some_and(|c| n >= c) {
                        break;
                    }
                    let (shot, audience, request) = {
                        let mix = mix.load();
                        let (shot, audience) = mix.pick(n);
                        let request = mix.request(&shot, &audience);
                        (shot, audience, request)
                    };
                    let started = Instant::now();
                    let answer =
                        match tokio::time::timeout(driver.timeout, call(&mut grpc, request, driver.decode)).await {
                            Ok(answer) => answer,
                            Err(_) => Answer::Failed { code: Code::DeadlineExceeded, message: "load timeout".into() },
                        };
                    let finished = Instant::now();
                    let wrong = driver.check.as_ref().and_then(|c| c.judge(&shot, &audience, &answer));
                    record(&mut state, Outcome { n, shot, audience, started, finished, answer, wrong });
                }
                state
            }));
        }
        let mut states = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok(s) => states.push(s),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        states
    }
}

/// Only `CheckResponse.status` (see [`Decode::StatusOnly`]).
#[derive(Clone, PartialEq, prost::Message)]
struct CheckStatusOnly {
    #[prost(message, optional, tag = "1")]
    status: Option<RpcStatus>,
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

async fn unary<M>(grpc: &mut tonic::client::Grpc<Channel>, request: CheckRequest) -> Result<M, Status>
where
    M: prost::Message + Default + Send + 'static,
{
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(CHECK_PATH);
    let codec = tonic_prost::ProstCodec::<CheckRequest, M>::default();
    grpc.unary(Request::new(request), path, codec).await.map(tonic::Response::into_inner)
}

async fn call(grpc: &mut tonic::client::Grpc<Channel>, request: CheckRequest, decode: Decode) -> Answer {
    let failed = |s: Status| Answer::Failed { code: s.code(), message: s.message().to_owned() };
    match decode {
        Decode::StatusOnly => match unary::<CheckStatusOnly>(grpc, request).await {
            Err(s) => failed(s),
            Ok(r) => match r.status {
                Some(s) if s.code != 0 => Answer::Denied { rpc_code: s.code, http_status: 0, message: s.message },
                _ => Answer::Allowed { minted: None },
            },
        },
        Decode::Full => match unary::<CheckResponse>(grpc, request).await {
            Err(s) => failed(s),
            Ok(r) => classify(&r),
        },
    }
}

/// Reads a whole CheckResponse: the minted token of an OK, or the denial.
pub fn classify(resp: &CheckResponse) -> Answer {
    let (rpc_code, message) = resp.status.as_ref().map_or((0, String::new()), |s| (s.code, s.message.clone()));
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) if rpc_code == 0 => {
            let minted = ok
                .headers
                .iter()
                .filter_map(|h| h.header.as_ref())
                .find(|h| h.key.eq_ignore_ascii_case("authorization"))
                .map(|h| h.value.strip_prefix("Bearer ").unwrap_or(&h.value).to_owned());
            Answer::Allowed { minted }
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            Answer::Denied { rpc_code, http_status: d.status.as_ref().map_or(0, |s| s.code), message }
        }
        // An OK status with a denial or no http_response, or a non-OK one with an
        // OK response: Envoy would deny on the status, so this is a denial.
        _ if rpc_code == 0 => Answer::Allowed { minted: None },
        _ => Answer::Denied { rpc_code, http_status: 0, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shots(prefix: &str, n: usize, expect: Expect) -> Vec<Arc<Shot>> {
        (0..n).map(|i| Shot::new(format!("{prefix}{i}"), format!("t{prefix}{i}"), expect.clone())).collect()
    }

    #[test]
    fn the_hostile_share_is_what_was_asked_and_every_token_is_used() {
        let mix = Mix::new(shots("v", 3, Expect::Any), Audiences::List(vec!["a".into(), "b".into()]))
            .with_hostile(shots("h", 4, Expect::Refuse), 100);
        let mut hostile = 0;
        let mut seen = std::collections::HashSet::new();
        for n in 0..10_000 {
            let (shot, aud) = mix.pick(n);
            hostile += usize::from(shot.expect == Expect::Refuse);
            seen.insert((shot.label.clone(), aud));
        }
        assert!((900..=1100).contains(&hostile), "{hostile} hostile of 10000");
        // 3 valid × 2 audiences, and 4 hostile × 2 audiences at most.
        assert!(seen.len() >= 3 * 2 + 4, "{seen:?}");
    }

    #[test]
    fn a_single_token_and_audience_is_built_once() {
        let mix = Mix::new(shots("v", 1, Expect::Any), Audiences::List(vec!["orders".into()]));
        assert!(mix.fixed.is_some());
        let (shot, aud) = mix.pick(7);
        let req = mix.request(&shot, &aud);
        assert_eq!(req.attributes.unwrap().context_extensions["audience"], "orders");
        let numbered = Audiences::Numbered { prefix: "aud-".into(), count: 5 };
        assert_eq!(numbered.get(12), "aud-000002");
    }

    #[test]
    fn a_hostile_token_allowed_is_wrong_whatever_it_carries() {
        let check = MintedCheck { issuer: "https://sts.test".into(), jwks: jsonwebtoken::jwk::JwkSet { keys: vec![] } };
        let hostile = Shot::new("hostile:none", "x", Expect::Refuse);
        let valid = Shot::new("valid", "x", Expect::Allow { sub: "alice".into() });
        let ok = Answer::Allowed { minted: Some("a.b.c".into()) };
        let denied = Answer::Denied { rpc_code: 16, http_status: 401, message: String::new() };
        assert!(check.judge(&hostile, "orders", &ok).unwrap().contains("hostile"));
        assert_eq!(check.judge(&hostile, "orders", &denied), None);
        assert!(check.judge(&valid, "orders", &ok).unwrap().contains("bad minted token"));
        assert!(check.judge(&valid, "orders", &Answer::Allowed { minted: None }).unwrap().contains("without"));
        assert_eq!(check.judge(&valid, "orders", &denied), None);
    }
}
