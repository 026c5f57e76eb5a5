//! Evaluating the rules' CEL expressions (`match.condition`,
//! `grant.computed_claims`; compiled by `config::rules::cel`).
//!
//! Variables: `subject` (the subject token's claims), `actor` (`{kind, id,
//! issuer, client_id, claims}` or null; `claims` are the actor token's), `client` (the authenticated token endpoint
//! client or null), `audience`, `scopes` (the requested scopes, else the
//! subject token's), and `request` on the Check path (`{method, host, path,
//! query, headers, context, source_principal, destination_principal}`; null
//! at the token endpoint, so reading a field of it there is an error and the
//! rule does not match).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, OnceLock};

use cel::context::VariableResolver;
use cel::extractors::This;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, ExecutionError, ResolveResult, Value as CelValue};
use serde_json::{Map, Value};

use super::{ActorKind, RuleInput};
use crate::config::{CelExpr, CelPath, Compiled, Keys, RequestReads, VARIABLES};
use crate::trust::validator::Validated;

/// The standard functions and macros, and three of CEL's string
/// extensions (`split`, `lowerAscii`, `upperAscii`: a tenant from an email
/// domain), registered once (`config::rules::cel::FUNCTIONS` lists them).
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| {
    let mut ctx = Context::default();
    ctx.add_function("split", split);
    ctx.add_function("lowerAscii", lower_ascii);
    ctx.add_function("upperAscii", upper_ascii);
    ctx
});

fn split(This(s): This<Arc<String>>, sep: Arc<String>) -> ResolveResult {
    Ok(CelValue::List(Arc::new(s.split(sep.as_str()).map(CelValue::from).collect())))
}

fn lower_ascii(This(s): This<Arc<String>>) -> ResolveResult {
    Ok(s.to_ascii_lowercase().into())
}

fn upper_ascii(This(s): This<Arc<String>>) -> ResolveResult {
    Ok(s.to_ascii_uppercase().into())
}

/// The HTTP request a Check is about, as expressions see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: String,
    /// Names lower-cased (Envoy sends them so).
    pub headers: BTreeMap<String, String>,
    /// The route's ext_authz context extensions.
    pub context: BTreeMap<String, String>,
    pub source_principal: String,
    pub destination_principal: String,
}

impl RequestAttrs {
    /// The values of the attributes `reads` names, for the minted-token
    /// cache key: two requests that differ in one of them never share an answer.
    pub(crate) fn key_bytes(&self, reads: &RequestReads) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_le_bytes());
            out.extend_from_slice(b);
        };
        for (on, v) in [
            (reads.method, &self.method),
            (reads.host, &self.host),
            (reads.path, &self.path),
            (reads.query, &self.query),
            (reads.source_principal, &self.source_principal),
            (reads.destination_principal, &self.destination_principal),
        ] {
            put(if on { v.as_bytes() } else { b"" });
        }
        for (keys, map) in [(&reads.headers, &self.headers), (&reads.context, &self.context)] {
            match keys {
                Keys::None => put(b"-"),
                Keys::All => {
                    put(b"*");
                    put(&(map.len() as u64).to_le_bytes());
                    for (k, v) in map {
                        put(k.as_bytes());
                        put(v.as_bytes());
                    }
                }
                Keys::Some(names) => {
                    put(b"=");
                    for k in names {
                        // Absent and empty differ: `has()` tells them apart.
                        match map.get(k) {
                            Some(v) => {
                                put(b"1");
                                put(v.as_bytes());
                            }
                            None => put(b"0"),
                        }
                    }
                }
            }
        }
        out
    }

    /// The fields `reads` names, as a CEL map: only what the expression can
    /// read is converted.
    fn to_cel(&self, reads: &RequestReads) -> CelValue {
        let mut map: HashMap<Key, CelValue> = HashMap::new();
        for (k, on, v) in [
            ("method", reads.method, &self.method),
            ("host", reads.host, &self.host),
            ("path", reads.path, &self.path),
            ("query", reads.query, &self.query),
            ("source_principal", reads.source_principal, &self.source_principal),
            ("destination_principal", reads.destination_principal, &self.destination_principal),
        ] {
            if on {
                map.insert(k.into(), v.as_str().into());
            }
        }
        for (k, keys, m) in [("headers", &reads.headers, &self.headers), ("context", &reads.context, &self.context)] {
            let strings: HashMap<Key, CelValue> = match keys {
                Keys::None => continue,
                Keys::All => m.iter().map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str()))).collect(),
                Keys::Some(names) => names
                    .iter()
                    .filter_map(|n| m.get(n).map(|v| (Key::from(n.as_str()), CelValue::from(v.as_str()))))
                    .collect(),
            };
            map.insert(k.into(), CelValue::Map(CelMap { map: Arc::new(strings) }));
        }
        CelValue::Map(CelMap { map: Arc::new(map) })
    }
}

/// The variables of one decision. Each is built for an expression only
/// when it names it whole; what is built whole (the subject's claims, the
/// scopes) is built once per decision. What an expression reads by a
/// constant path (`subject.email`) is read straight from the token or the
/// request (`CelPath`).
pub(crate) struct Vars<'a> {
    input: &'a RuleInput<'a>,
    client: Option<&'a str>,
    request: Option<&'a RequestAttrs>,
    subject: OnceLock<CelValue>,
    scopes: OnceLock<CelValue>,
}

/// An expression's variables, handed to the evaluator without a map of
/// their own.
struct Bound<'v, 'a> {
    vars: &'v Vars<'a>,
    whole: &'v [(&'static str, CelValue)],
}

impl VariableResolver for Bound<'_, '_> {
    fn resolve(&self, name: &str) -> Option<CelValue> {
        match CelPath::parse(name) {
            Some(path) => self.vars.path(path),
            None => self.whole.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()),
        }
    }
}

impl<'a> Vars<'a> {
    pub(crate) fn new(input: &'a RuleInput<'a>, client: Option<&'a str>, request: Option<&'a RequestAttrs>) -> Self {
        Vars { input, client, request, subject: OnceLock::new(), scopes: OnceLock::new() }
    }

    /// A variable named whole.
    fn variable(&self, name: &str, c: &Compiled) -> CelValue {
        let input = self.input;
        match name {
            "subject" => self.subject.get_or_init(|| claims_map(input.subject)).clone(),
            "actor" => {
                let Some(a) = input.actor else { return CelValue::Null };
                let kind = match a.kind {
                    ActorKind::Peer => "peer",
                    ActorKind::Token => "token",
                    ActorKind::PeerAndToken => "peer_and_token",
                };
                let mut m: HashMap<Key, CelValue> = HashMap::with_capacity(5);
                m.insert("kind".into(), kind.into());
                m.insert("id".into(), a.sub.as_str().into());
                m.insert("issuer".into(), a.iss.as_deref().into());
                m.insert("client_id".into(), a.client_id.as_deref().into());
                // Claims read by name are paths; only a whole read needs the map.
                if c.actor_claims == Keys::All {
                    // A peer proves no claims: an empty map, so that `has()` works.
                    let claims = a
                        .token
                        .as_ref()
                        .map_or_else(|| CelValue::Map(CelMap { map: Arc::new(HashMap::new()) }), |t| claims_map(&t.0));
                    m.insert("claims".into(), claims);
                }
                CelValue::Map(CelMap { map: Arc::new(m) })
            }
            "client" => self.client.into(),
            "audience" => input.audience.into(),
            "scopes" => self
                .scopes
                .get_or_init(|| {
                    let s = input.requested_scopes.unwrap_or(&input.subject.scopes);
                    CelValue::List(Arc::new(s.iter().map(|s| s.as_str().into()).collect()))
                })
                .clone(),
            "request" => self.request.map_or(CelValue::Null, |r| r.to_cel(&c.reads)),
            _ => CelValue::Null,
        }
    }

    /// The value at a constant path; `None` when there is none (an error
    /// for the expression, `why_missing` says which).
    fn path(&self, path: CelPath<'_>) -> Option<CelValue> {
        let actor_token = || self.input.actor.and_then(|a| a.token.as_ref()).map(|t| &*t.0);
        match path {
            CelPath::Subject { key, has } => present(claim(self.input.subject, key), has),
            CelPath::ActorClaim { key, has } => {
                // No actor at all: an error, as reading a field of null is.
                self.input.actor?;
                present(actor_token().and_then(|v| claim(v, key)), has)
            }
            CelPath::Request { key } => {
                let r = self.request?;
                let v = match key {
                    "method" => &r.method,
                    "host" => &r.host,
                    "path" => &r.path,
                    "query" => &r.query,
                    "source_principal" => &r.source_principal,
                    "destination_principal" => &r.destination_principal,
                    _ => return None,
                };
                Some(v.as_str().into())
            }
            CelPath::Header { key, has } | CelPath::Context { key, has } => {
                // No request (the token endpoint): an error, `has()` too, so
                // that no condition on the request matches there by accident.
                let r = self.request?;
                let map = if matches!(path, CelPath::Header { .. }) { &r.headers } else { &r.context };
                present(map.get(key).map(|v| v.as_str().into()), has)
            }
        }
    }

    /// The value of `expr`, or why there is none.
    pub(crate) fn eval(&self, expr: &CelExpr) -> Result<CelValue, String> {
        let Some(c) = expr.compiled() else {
            // check-config refuses these; never a match.
            return Err(expr.error().unwrap_or("does not compile").to_owned());
        };
        let mut whole: [(&'static str, CelValue); VARIABLES.len()] = std::array::from_fn(|_| ("", CelValue::Null));
        for (slot, v) in whole.iter_mut().zip(&c.variables) {
            *slot = (v, self.variable(v, c));
        }
        let bound = Bound { vars: self, whole: &whole[..c.variables.len()] };
        let mut ctx = ROOT.new_inner_scope();
        ctx.set_variable_resolver(&bound);
        CelValue::resolve(&c.ast, &ctx).map_err(|e| match &e {
            ExecutionError::UndeclaredReference(name) if CelPath::parse(name).is_some() => {
                CelPath::parse(name).map(|p| self.why_missing(p)).unwrap_or_default()
            }
            _ => e.to_string(),
        })
    }

    /// Why a constant path has no value.
    fn why_missing(&self, path: CelPath<'_>) -> String {
        match path {
            CelPath::Subject { key, .. } => format!("No such key: {key} (the subject token has no claim {key:?})"),
            CelPath::ActorClaim { .. } if self.input.actor.is_none() => "there is no actor".into(),
            CelPath::ActorClaim { key, .. } => format!("No such key: {key} (the actor token has no claim {key:?})"),
            _ if self.request.is_none() => "there is no request (only the Check path has one)".into(),
            CelPath::Header { key, .. } => format!("No such key: {key} (the request has no header {key:?})"),
            CelPath::Context { key, .. } => format!("No such key: {key} (the route has no context extension {key:?})"),
            CelPath::Request { key } => format!("request has no field {key:?}"),
        }
    }

    /// A condition: `Ok(true)` only for the boolean true.
    pub(crate) fn condition(&self, expr: &CelExpr) -> Result<bool, String> {
        match self.eval(expr)? {
            CelValue::Bool(b) => Ok(b),
            other => Err(format!("the condition is {}, not a boolean", type_name(&other))),
        }
    }

    /// A computed claim as JSON; `Ok(None)` for null.
    pub(crate) fn claim(&self, expr: &CelExpr) -> Result<Option<Value>, String> {
        let v = self.eval(expr)?;
        if matches!(v, CelValue::Null) {
            return Ok(None);
        }
        to_json(&v).map(Some)
    }
}

/// `true`, `false` or the error, for logs and `explain`.
pub(crate) fn show(v: &Result<CelValue, String>) -> String {
    match v {
        Ok(v) => match to_json(v) {
            Ok(j) => j.to_string(),
            Err(_) => format!("<{}>", type_name(v)),
        },
        Err(e) => format!("error: {e}"),
    }
}

fn type_name(v: &CelValue) -> &'static str {
    match v {
        CelValue::List(_) => "a list",
        CelValue::Map(_) => "a map",
        CelValue::Function(..) => "a function",
        CelValue::Int(_) | CelValue::UInt(_) => "an integer",
        CelValue::Float(_) => "a double",
        CelValue::String(_) => "a string",
        CelValue::Bytes(_) => "bytes",
        CelValue::Bool(_) => "a boolean",
        CelValue::Null => "null",
        _ => "an opaque value",
    }
}

/// Every claim the token carries, as issued, as a CEL map.
fn claims_map(v: &Validated) -> CelValue {
    let names = STANDARD.iter().copied().chain(v.claims.other_names());
    let map: HashMap<Key, CelValue> = names.filter_map(|n| claim(v, n).map(|c| (Key::from(n), c))).collect();
    CelValue::Map(CelMap { map: Arc::new(map) })
}

/// A value found (`has`: whether it was found).
fn present(v: Option<CelValue>, has: bool) -> Option<CelValue> {
    if has { Some(CelValue::Bool(v.is_some())) } else { v }
}

/// The values of the actor token's claims `keys` names (`None`: no actor
/// token), appended to `out` for the minted-token cache key.
pub(crate) fn actor_claims_key_bytes(token: Option<&Validated>, keys: &Keys, out: &mut Vec<u8>) {
    let Some(v) = token else {
        out.push(0);
        return;
    };
    out.push(1);
    let mut put = |name: &str| {
        let value = claim(v, name).and_then(|c| to_json(&c).ok()).map(|j| j.to_string());
        // Absent and null differ: `has()` tells them apart.
        let bytes = value.as_deref().map_or(&b"\xff"[..], str::as_bytes);
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match keys {
        Keys::None => {}
        Keys::Some(names) => names.iter().for_each(|n| put(n)),
        Keys::All => STANDARD.iter().copied().chain(v.claims.other_names()).for_each(put),
    }
}

/// The claims `Validated` keeps outside `claims.other`.
const STANDARD: [&str; 13] =
    ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "azp", "scope", "scp", "act", "may_act"];

/// One claim of a validated token, if it carries it.
fn claim(v: &Validated, name: &str) -> Option<CelValue> {
    let c = &v.claims;
    let string = |s: &Option<String>| s.as_deref().map(CelValue::from);
    let json = |j: &Option<Value>| j.as_ref().map(from_json);
    let number = |n: &Option<serde_json::Number>| n.as_ref().map(|n| from_json(&Value::Number(n.clone())));
    match name {
        "iss" => Some(v.issuer.as_str().into()),
        "sub" => Some(v.sub.as_str().into()),
        "aud" => Some(CelValue::List(Arc::new(c.aud().map(CelValue::from).collect()))),
        "exp" => Some(CelValue::Int(v.exp)),
        "nbf" => number(&c.nbf),
        "iat" => number(&c.iat),
        "jti" => string(&c.jti),
        "client_id" => string(&v.client_id),
        "azp" => string(&c.azp),
        "scope" => json(&c.scope),
        "scp" => json(&c.scp),
        "act" => json(&c.act),
        "may_act" => json(&c.may_act),
        other => c.other(other).map(|v| from_json(&v)),
    }
}

fn from_json(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        // CEL compares int with int: JSON integers are ints where they fit.
        Value::Number(n) => n.as_i64().map_or_else(|| CelValue::Float(n.as_f64().unwrap_or(f64::NAN)), CelValue::Int),
        Value::String(s) => s.as_str().into(),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(from_json).collect())),
        Value::Object(o) => {
            let map: HashMap<Key, CelValue> = o.iter().map(|(k, v)| (Key::from(k.as_str()), from_json(v))).collect();
            CelValue::Map(CelMap { map: Arc::new(map) })
        }
    }
}

fn to_json(v: &CelValue) -> Result<Value, String> {
    Ok(match v {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).ok_or("a non-finite number is no JSON value")?
        }
        CelValue::String(s) => Value::String(s.to_string()),
        CelValue::List(l) => Value::Array(l.iter().map(to_json).collect::<Result<_, _>>()?),
        CelValue::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m.map.iter() {
                let Key::String(k) = k else { return Err("a map with keys that are not strings".into()) };
                out.insert(k.to_string(), to_json(v)?);
            }
            Value::Object(out)
        }
        other => return Err(format!("{} is no JSON value", type_name(other))),
    })
}
