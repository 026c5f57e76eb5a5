//! Evaluating the rules' CEL expressions (`match.condition`,
//! `grant.computed_claims`; compiled by `config::rules::cel`).
//!
//! Variables: `subject` (the subject token's claims), `actor` (`{kind, id,
//! issuer, client_id}` or null), `client` (the authenticated token endpoint
//! client or null), `audience`, `scopes` (the requested scopes, else the
//! subject token's), and `request` on the Check path (`{method, host, path,
//! query, headers, context, source_principal, destination_principal}`; null
//! at the token endpoint, so reading a field of it there is an error and the
//! rule does not match).

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use cel::extractors::This;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, ResolveResult, Value as CelValue};
use serde_json::{Map, Value};

use super::{ActorKind, RuleInput};
use crate::config::{CelExpr, Keys, RequestReads};

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

    fn to_cel(&self) -> CelValue {
        let strings = |m: &BTreeMap<String, String>| {
            let map: HashMap<Key, CelValue> =
                m.iter().map(|(k, v)| (Key::from(k.as_str()), CelValue::from(v.as_str()))).collect();
            CelValue::Map(CelMap { map: Arc::new(map) })
        };
        let mut map: HashMap<Key, CelValue> = HashMap::new();
        for (k, v) in [
            ("method", &self.method),
            ("host", &self.host),
            ("path", &self.path),
            ("query", &self.query),
            ("source_principal", &self.source_principal),
            ("destination_principal", &self.destination_principal),
        ] {
            map.insert(k.into(), v.as_str().into());
        }
        map.insert("headers".into(), strings(&self.headers));
        map.insert("context".into(), strings(&self.context));
        CelValue::Map(CelMap { map: Arc::new(map) })
    }
}

/// The variables of one decision, each built at most once and only when an
/// expression names it.
pub(crate) struct Vars<'a> {
    input: &'a RuleInput<'a>,
    client: Option<&'a str>,
    request: Option<&'a RequestAttrs>,
    subject: OnceCell<CelValue>,
    actor: OnceCell<CelValue>,
    scopes: OnceCell<CelValue>,
    request_value: OnceCell<CelValue>,
}

impl<'a> Vars<'a> {
    pub(crate) fn new(input: &'a RuleInput<'a>, client: Option<&'a str>, request: Option<&'a RequestAttrs>) -> Self {
        Vars {
            input,
            client,
            request,
            subject: OnceCell::new(),
            actor: OnceCell::new(),
            scopes: OnceCell::new(),
            request_value: OnceCell::new(),
        }
    }

    fn variable(&self, name: &str) -> CelValue {
        let input = self.input;
        match name {
            "subject" => self.subject.get_or_init(|| subject_value(input)).clone(),
            "actor" => self
                .actor
                .get_or_init(|| {
                    let Some(a) = input.actor else { return CelValue::Null };
                    let kind = match a.kind {
                        ActorKind::Peer => "peer",
                        ActorKind::Token => "token",
                        ActorKind::PeerAndToken => "peer_and_token",
                    };
                    let mut m: HashMap<Key, CelValue> = HashMap::new();
                    m.insert("kind".into(), kind.into());
                    m.insert("id".into(), a.sub.as_str().into());
                    m.insert("issuer".into(), a.iss.as_deref().into());
                    m.insert("client_id".into(), a.client_id.as_deref().into());
                    CelValue::Map(CelMap { map: Arc::new(m) })
                })
                .clone(),
            "client" => self.client.into(),
            "audience" => input.audience.into(),
            "scopes" => self
                .scopes
                .get_or_init(|| {
                    let s = input.requested_scopes.unwrap_or(&input.subject.scopes);
                    CelValue::List(Arc::new(s.iter().map(|s| s.as_str().into()).collect()))
                })
                .clone(),
            "request" => {
                self.request_value.get_or_init(|| self.request.map_or(CelValue::Null, RequestAttrs::to_cel)).clone()
            }
            _ => CelValue::Null,
        }
    }

    /// The value of `expr`, or why there is none.
    pub(crate) fn eval(&self, expr: &CelExpr) -> Result<CelValue, String> {
        let Some(c) = expr.compiled() else {
            // check-config refuses these; never a match.
            return Err(expr.error().unwrap_or("does not compile").to_owned());
        };
        let mut ctx = ROOT.new_inner_scope();
        for v in &c.variables {
            ctx.add_variable_from_value(*v, self.variable(v));
        }
        CelValue::resolve(&c.ast, &ctx).map_err(|e| e.to_string())
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

/// The subject token's claims: every claim it carries, as issued.
fn subject_value(input: &RuleInput<'_>) -> CelValue {
    let v = input.subject;
    let c = &v.claims;
    let mut m: HashMap<Key, CelValue> = c.other.iter().map(|(k, v)| (Key::from(k.as_str()), from_json(v))).collect();
    let mut put = |k: &str, val: CelValue| {
        m.insert(k.into(), val);
    };
    put("iss", v.issuer.as_str().into());
    put("sub", v.sub.as_str().into());
    put("aud", CelValue::List(Arc::new(c.aud.iter().map(|a| a.as_str().into()).collect())));
    put("exp", CelValue::Int(v.exp));
    for (k, n) in [("nbf", &c.nbf), ("iat", &c.iat)] {
        if let Some(n) = n {
            put(k, from_json(&Value::Number(n.clone())));
        }
    }
    for (k, s) in [("jti", &c.jti), ("client_id", &v.client_id), ("azp", &c.azp)] {
        if let Some(s) = s {
            put(k, s.as_str().into());
        }
    }
    for (k, j) in [("scope", &c.scope), ("scp", &c.scp), ("act", &c.act), ("may_act", &c.may_act)] {
        if let Some(j) = j {
            put(k, from_json(j));
        }
    }
    CelValue::Map(CelMap { map: Arc::new(m) })
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
