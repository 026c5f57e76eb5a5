//! CEL expressions in rules (`match.condition`, `grant.computed_claims`),
//! compiled when the configuration loads: syntax, size, unknown variables,
//! what a condition can be seen to return without types, and which request
//! attributes each one can read (the Check path keys its cache on them).
//! Evaluation lives in `rules::cel`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use cel::common::value::CelVal;
use serde::{Deserialize, Deserializer};

use super::cel_types::Ty;

/// Longest expression source accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest nesting the parser accepts (the crate's default is 96).
const MAX_DEPTH: u16 = 32;
/// Deepest bracket (and `?:`) nesting in the source: the generated parser
/// recurses deeply for each level, so this is checked before it runs.
const MAX_NESTING: usize = 12;
/// Deepest expression tree accepted: evaluation recurses once per level,
/// on whatever thread serves the request.
const MAX_TREE_DEPTH: usize = 48;
/// The parser's stack: its recursion per nesting level is large (over
/// 100 KiB in a debug build), more than a request thread's 2 MiB allows.
const PARSER_STACK: usize = 256 << 20;

/// The variables an expression may name.
pub const VARIABLES: [&str; 6] = ["subject", "actor", "client", "audience", "scopes", "request"];

/// The functions an expression may call besides the operators and macros:
/// the crate's standard ones and the string extensions `rules::cel` adds.
const FUNCTIONS: &[&str] = &[
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "split",
    "lowerAscii",
    "upperAscii",
];

/// Which keys of a request map (`request.headers`, `request.context`) an
/// expression can read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Keys {
    #[default]
    None,
    Some(BTreeSet<String>),
    /// The whole map (iterated, passed on, or indexed by a computed key).
    All,
}

impl Keys {
    fn add(&mut self, key: &str) {
        match self {
            Keys::None => *self = Keys::Some(BTreeSet::from([key.to_owned()])),
            Keys::Some(keys) => {
                keys.insert(key.to_owned());
            }
            Keys::All => {}
        }
    }

    pub fn union(&mut self, other: &Keys) {
        match other {
            Keys::None => {}
            Keys::All => *self = Keys::All,
            Keys::Some(keys) => keys.iter().for_each(|k| self.add(k)),
        }
    }
}

/// The request attributes (`request.*`) an expression can read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestReads {
    /// `request` is named at all: at least whether there is one (the Check
    /// path) or not (the token endpoint) is read.
    pub named: bool,
    pub method: bool,
    pub host: bool,
    pub path: bool,
    pub query: bool,
    pub source_principal: bool,
    pub destination_principal: bool,
    pub headers: Keys,
    pub context: Keys,
}

impl RequestReads {
    pub fn is_empty(&self) -> bool {
        *self == RequestReads::default()
    }

    pub fn union(&mut self, other: &RequestReads) {
        self.named |= other.named;
        self.method |= other.method;
        self.host |= other.host;
        self.path |= other.path;
        self.query |= other.query;
        self.source_principal |= other.source_principal;
        self.destination_principal |= other.destination_principal;
        self.headers.union(&other.headers);
        self.context.union(&other.context);
    }

    fn all() -> RequestReads {
        RequestReads {
            named: true,
            method: true,
            host: true,
            path: true,
            query: true,
            source_principal: true,
            destination_principal: true,
            headers: Keys::All,
            context: Keys::All,
        }
    }

    /// A field of `request` read as a whole; `false` for no such field.
    fn field(&mut self, name: &str) -> bool {
        match name {
            "method" => self.method = true,
            "host" => self.host = true,
            "path" => self.path = true,
            "query" => self.query = true,
            "source_principal" => self.source_principal = true,
            "destination_principal" => self.destination_principal = true,
            "headers" => self.headers = Keys::All,
            "context" => self.context = Keys::All,
            _ => return false,
        }
        true
    }
}

impl fmt::Display for RequestReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out: Vec<String> = [
            ("method", self.method),
            ("host", self.host),
            ("path", self.path),
            ("query", self.query),
            ("source_principal", self.source_principal),
            ("destination_principal", self.destination_principal),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| format!("request.{n}"))
        .collect();
        for (map, keys) in [("headers", &self.headers), ("context", &self.context)] {
            match keys {
                Keys::None => {}
                Keys::All => out.push(format!("request.{map}")),
                Keys::Some(keys) => out.extend(keys.iter().map(|k| format!("request.{map}[{k:?}]"))),
            }
        }
        if out.is_empty() && self.named {
            out.push("whether there is a request".into());
        }
        f.write_str(&out.join(", "))
    }
}

/// The fields of `actor`.
const ACTOR_FIELDS: [&str; 5] = ["kind", "id", "issuer", "client_id", "claims"];

/// One compiled expression.
#[derive(Debug)]
pub struct Compiled {
    pub ast: IdedExpr,
    /// The variables it names whole (`VARIABLES` order), so that only those
    /// are built; what it reads by a constant path is an identifier of its
    /// own (`cel_paths`).
    pub variables: Vec<&'static str>,
    pub reads: RequestReads,
    /// The actor token's claims it can read (`actor.claims.*`); the Check
    /// path keys its cache on their values, as on the request's.
    pub actor_claims: Keys,
    /// What it yields, as far as can be seen without running it.
    pub yields: Ty,
}

/// A CEL expression as written, with its compiled form or why it has none
/// (reported by `check` with the key path).
#[derive(Clone)]
pub struct CelExpr {
    source: String,
    compiled: Result<Arc<Compiled>, String>,
}

impl CelExpr {
    pub fn new(source: impl Into<String>) -> CelExpr {
        let source = source.into();
        let compiled = compile(&source).map(Arc::new);
        CelExpr { source, compiled }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The compiled form; `None` for an expression `check` refuses.
    pub fn compiled(&self) -> Option<&Compiled> {
        self.compiled.as_deref().ok()
    }

    /// Why the expression does not compile.
    pub fn error(&self) -> Option<&str> {
        self.compiled.as_ref().err().map(String::as_str)
    }

    /// The request attributes it can read (none when it does not compile).
    pub fn reads(&self) -> RequestReads {
        self.compiled().map(|c| c.reads.clone()).unwrap_or_default()
    }

    /// The actor token's claims it can read (none when it does not compile).
    pub fn actor_claims(&self) -> &Keys {
        self.compiled().map_or(&Keys::None, |c| &c.actor_claims)
    }

    /// Whether the result is, as far as can be seen without types, never a
    /// boolean (a condition must be one).
    pub fn surely_not_bool(&self) -> Option<&'static str> {
        let c = self.compiled()?;
        match c.yields {
            Ty::Bool | Ty::Dyn => not_bool(&c.ast),
            other => Some(other.name()),
        }
    }

    /// Whether the result is surely no JSON value (a computed claim must
    /// be one): bytes, or a map literal with keys that are not strings.
    pub fn surely_not_json(&self) -> Option<&'static str> {
        let c = self.compiled()?;
        if c.yields == Ty::Bytes {
            return Some("bytes");
        }
        match &c.ast.expr {
            Expr::Map(m)
                if m.entries.iter().any(|e| {
                    matches!(&e.expr, EntryExpr::MapEntry(me) if matches!(&me.key.expr, Expr::Literal(l) if !matches!(l, CelVal::String(_))))
                }) =>
            {
                Some("a map with keys that are not strings")
            }
            _ => None,
        }
    }
}

impl fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for CelExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(CelExpr::new(String::deserialize(d)?))
    }
}

fn compile(source: &str) -> Result<Compiled, String> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!("expression is {} bytes, more than the {MAX_EXPRESSION_BYTES} allowed", source.len()));
    }
    if source.trim().is_empty() {
        return Err("expression is empty".into());
    }
    if nesting(source) > MAX_NESTING {
        return Err(format!("brackets and conditionals nest deeper than {MAX_NESTING} levels"));
    }
    // On a thread of its own with a stack the parser cannot exhaust.
    let owned = source.to_owned();
    let parsed = std::thread::Builder::new()
        .name("cel-parse".into())
        .stack_size(PARSER_STACK)
        .spawn(move || {
            let parsed = cel::parser::Parser::new().max_recursion_depth(MAX_DEPTH).parse(&owned);
            parsed.map_err(|e| format!("syntax error: {}", e.to_string().replace('\n', " ")))
        })
        .map_err(|e| format!("cannot start the expression parser: {e}"))?
        .join()
        .map_err(|_| "the expression parser failed".to_owned())?;
    let ast = parsed?;
    if tree_depth(&ast) > MAX_TREE_DEPTH {
        return Err(format!("the expression nests deeper than {MAX_TREE_DEPTH} levels"));
    }
    let mut walk = Walk::default();
    walk.expr(&ast);
    if let Some(e) = walk.errors.into_iter().next() {
        return Err(e);
    }
    let yields = super::cel_types::infer(&ast)?;
    let mut ast = ast;
    super::cel_paths::rewrite(&mut ast);
    let variables = super::cel_paths::free_variables(&ast, &VARIABLES);
    Ok(Compiled { ast, variables, reads: walk.reads, actor_claims: walk.actor_claims, yields })
}

/// Deepest nesting of brackets and `?` outside string literals.
fn nesting(source: &str) -> usize {
    let (mut depth, mut max, mut quote, mut escaped) = (0usize, 0usize, None::<char>, false);
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' | '{' | '?' => {
                    depth += 1;
                    max = max.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    max
}

/// The depth of the expression tree.
fn tree_depth(e: &IdedExpr) -> usize {
    let children: Vec<&IdedExpr> = match &e.expr {
        Expr::Call(c) => c.target.iter().map(|t| &**t).chain(&c.args).collect(),
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result],
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m
            .entries
            .iter()
            .flat_map(|en| match &en.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Select(s) => vec![&*s.operand],
        Expr::Struct(s) => s
            .entries
            .iter()
            .filter_map(|en| match &en.expr {
                EntryExpr::StructField(f) => Some(&f.value),
                EntryExpr::MapEntry(_) => None,
            })
            .collect(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    };
    1 + children.into_iter().map(tree_depth).max().unwrap_or(0)
}

#[derive(Default)]
struct Walk {
    /// Comprehension variables in scope.
    bound: Vec<String>,
    reads: RequestReads,
    actor_claims: Keys,
    errors: Vec<String>,
}

impl Walk {
    fn free(&self, e: &IdedExpr, name: &str) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == name && !self.bound.iter().any(|b| b == n))
    }

    /// `request.headers` or `request.context`: which map.
    fn request_map(&self, e: &IdedExpr) -> Option<&'static str> {
        match &e.expr {
            Expr::Select(s) if !s.test && self.free(&s.operand, "request") => match s.field.as_str() {
                "headers" => Some("headers"),
                "context" => Some("context"),
                _ => None,
            },
            _ => None,
        }
    }

    /// `actor.claims`.
    fn actor_claims_map(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "claims" && self.free(&s.operand, "actor"))
    }

    /// A key read with a constant name (`x.k`, `x['k']`, `has(x.k)`) of
    /// `request`, its `headers` or `context`, `actor` or `actor.claims`:
    /// what the cache key must hold. `false` when `map` is none of these.
    fn constant_key(&mut self, map: &IdedExpr, key: &str) -> bool {
        if let Some(m) = self.request_map(map) {
            self.key(m, key);
        } else if self.free(map, "request") {
            self.reads.named = true;
            if !self.reads.field(key) {
                self.errors.push(format!("request has no field {key:?}"));
            }
        } else if self.actor_claims_map(map) {
            self.actor_claims.add(key);
        } else if self.free(map, "actor") {
            if !ACTOR_FIELDS.contains(&key) {
                self.errors.push(format!("actor has no field {key:?} (its fields are {})", ACTOR_FIELDS.join(", ")));
            }
            if key == "claims" {
                self.actor_claims = Keys::All;
            }
        } else {
            return false;
        }
        true
    }

    fn key(&mut self, map: &str, key: &str) {
        if map == "headers" {
            if key.chars().any(|c| c.is_ascii_uppercase()) {
                self.errors.push(format!("request.headers[{key:?}]: header names are lower-case"));
            }
            self.reads.headers.add(key);
        } else {
            self.reads.context.add(key);
        }
        self.reads.named = true;
    }

    fn expr(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    return;
                }
                match VARIABLES.iter().find(|v| **v == name) {
                    Some(v) => {
                        // Named as a whole: everything under it can be read.
                        match *v {
                            "request" => self.reads = RequestReads::all(),
                            "actor" => self.actor_claims = Keys::All,
                            _ => {}
                        }
                    }
                    None => self
                        .errors
                        .push(format!("unknown variable {name:?} (the variables are {})", VARIABLES.join(", "))),
                }
            }
            Expr::Select(s) => {
                if !self.constant_key(&s.operand, &s.field) {
                    self.expr(&s.operand);
                }
            }
            Expr::Call(c) => {
                // `request == null` (`!=`) tells the doors apart and reads
                // nothing else; `actor == null` whether there is an actor.
                let is_null = |e: &IdedExpr| matches!(e.expr, Expr::Literal(CelVal::Null));
                if matches!(c.func_name.as_str(), operators::EQUALS | operators::NOT_EQUALS) && c.args.len() == 2 {
                    for name in ["request", "actor"] {
                        if (self.free(&c.args[0], name) && is_null(&c.args[1]))
                            || (is_null(&c.args[0]) && self.free(&c.args[1], name))
                        {
                            self.reads.named |= name == "request";
                            return;
                        }
                    }
                }
                if c.func_name == operators::INDEX && c.args.len() == 2 && c.target.is_none() {
                    if let Expr::Literal(CelVal::String(key)) = &c.args[1].expr {
                        if self.constant_key(&c.args[0], key) {
                            return;
                        }
                    }
                }
                let operator = c.func_name.starts_with(['_', '@', '!', '-']);
                if !operator && !FUNCTIONS.contains(&c.func_name.as_str()) {
                    self.errors.push(format!("unknown function {:?}", c.func_name));
                }
                if let Some(t) = &c.target {
                    self.expr(t);
                }
                c.args.iter().for_each(|a| self.expr(a));
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                self.expr(&c.accu_init);
                let names: Vec<&String> =
                    [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)].into_iter().flatten().collect();
                for n in &names {
                    if VARIABLES.contains(&n.as_str()) {
                        self.errors.push(format!("{n:?} is a variable and may not be rebound"));
                    }
                }
                let depth = self.bound.len();
                self.bound.extend(names.into_iter().cloned());
                self.expr(&c.loop_cond);
                self.expr(&c.loop_step);
                self.expr(&c.result);
                self.bound.truncate(depth);
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.expr(x)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.expr(&me.key);
                            self.expr(&me.value);
                        }
                        EntryExpr::StructField(f) => self.expr(&f.value),
                    }
                }
            }
            Expr::Struct(s) => self.errors.push(format!("message construction ({}) is not supported", s.type_name)),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// What a condition's root surely returns when that is not a boolean.
fn not_bool(e: &IdedExpr) -> Option<&'static str> {
    match &e.expr {
        Expr::Literal(CelVal::Boolean(_)) => None,
        Expr::Literal(CelVal::String(_)) => Some("a string"),
        Expr::Literal(CelVal::Null) => Some("null"),
        Expr::Literal(_) => Some("a literal that is no boolean"),
        Expr::List(_) => Some("a list"),
        Expr::Map(_) => Some("a map"),
        Expr::Call(c) => match c.func_name.as_str() {
            operators::ADD
            | operators::SUBSTRACT
            | operators::MULTIPLY
            | operators::DIVIDE
            | operators::MODULO
            | operators::NEGATE => Some("the result of arithmetic"),
            "size" | "int" | "uint" | "double" | "string" | "bytes" | "max" | "min" => {
                Some("a value that is no boolean")
            }
            operators::CONDITIONAL if c.args.len() == 3 => not_bool(&c.args[1]).and(not_bool(&c.args[2])),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bad sizes and shapes get an error, never a stack overflow: compiled
    /// on a 2 MiB thread (a request thread's stack) and evaluated there.
    #[test]
    fn size_and_nesting_are_bounded() {
        let cases = [
            ("true && ".repeat(500) + "true", None),
            (format!("[{}1] != []", "1, ".repeat(900)), None),
            ("!".repeat(3000) + "true", None),
            (format!("{}true{}", "(".repeat(12), ")".repeat(12)), None),
            (format!("{}true{}", "(".repeat(13), ")".repeat(13)), Some("nest deeper than 12")),
            (format!("{}1{} == 1", "[".repeat(40), "]".repeat(40)), Some("nest deeper than 12")),
            ("true ? ".repeat(13) + "true" + &" : false".repeat(13), Some("nest deeper than 12")),
            ("1 + ".repeat(900) + "1 == 1", Some("nests deeper than 48")),
            (format!("'{}' == ''", "(".repeat(100)), None),
            ("a".repeat(MAX_EXPRESSION_BYTES + 1), Some("more than the 4096 allowed")),
        ];
        for (src, want) in cases {
            let shown: String = src.chars().take(40).collect();
            let ok = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    let e = CelExpr::new(src);
                    match (e.compiled(), want) {
                        (Some(c), None) => {
                            cel::Value::resolve(&c.ast, &cel::Context::default()).expect("evaluates");
                        }
                        (None, Some(want)) => assert!(e.error().unwrap().contains(want), "{:?}", e.error()),
                        (c, want) => panic!("{:?} {want:?}", c.map(|_| ()).ok_or(e.error())),
                    }
                })
                .unwrap()
                .join();
            assert!(ok.is_ok(), "{shown}");
        }
    }
}
