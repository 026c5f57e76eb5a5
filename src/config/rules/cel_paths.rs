//! Constant paths in a compiled CEL expression (`subject.email`,
//! `request.headers['x-tenant']`, `has(actor.claims.env)`) become one
//! identifier each, which evaluation resolves straight from the token or the
//! request: no map of claims or headers is built for an expression that reads
//! two of them. What reads a whole map (`size(subject)`, iterating
//! `request.headers`) keeps the map.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use cel::common::value::CelVal;

/// Starts every identifier this pass makes: no identifier written in an
/// expression can contain it.
pub const MARK: char = '\u{1}';

/// What one made identifier reads: `kind` is one of the `CelPath` letters,
/// `key` the claim, field, header or context key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CelPath<'a> {
    /// `subject.key`; `has` for `has(subject.key)`.
    Subject { key: &'a str, has: bool },
    /// `actor.claims.key`.
    ActorClaim { key: &'a str, has: bool },
    /// `request.key` for a plain field (`method`, `path`, ...).
    Request { key: &'a str },
    /// `request.headers.key`.
    Header { key: &'a str, has: bool },
    /// `request.context.key`.
    Context { key: &'a str, has: bool },
}

impl<'a> CelPath<'a> {
    /// The path a made identifier stands for; `None` for any other name.
    pub fn parse(name: &'a str) -> Option<CelPath<'a>> {
        let rest = name.strip_prefix(MARK)?;
        let (kind, key) = rest.split_at_checked(1)?;
        Some(match kind {
            "s" => CelPath::Subject { key, has: false },
            "S" => CelPath::Subject { key, has: true },
            "a" => CelPath::ActorClaim { key, has: false },
            "A" => CelPath::ActorClaim { key, has: true },
            "r" => CelPath::Request { key },
            "h" => CelPath::Header { key, has: false },
            "H" => CelPath::Header { key, has: true },
            "c" => CelPath::Context { key, has: false },
            "C" => CelPath::Context { key, has: true },
            _ => return None,
        })
    }

    fn name(kind: char, key: &str) -> String {
        format!("{MARK}{kind}{key}")
    }
}

/// Rewrites the constant paths of `e` into made identifiers.
pub fn rewrite(e: &mut IdedExpr) {
    Rewrite { bound: Vec::new() }.expr(e)
}

struct Rewrite {
    /// Comprehension variables in scope: they shadow the variables.
    bound: Vec<String>,
}

impl Rewrite {
    fn free(&self, e: &IdedExpr, name: &str) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == name && !self.bound.iter().any(|b| b == n))
    }

    /// `request.headers` → 'h', `request.context` → 'c', `actor.claims` → 'a'.
    fn map_kind(&self, e: &IdedExpr) -> Option<char> {
        match &e.expr {
            Expr::Select(s) if !s.test => match s.field.as_str() {
                "headers" if self.free(&s.operand, "request") => Some('h'),
                "context" if self.free(&s.operand, "request") => Some('c'),
                "claims" if self.free(&s.operand, "actor") => Some('a'),
                _ => None,
            },
            _ => None,
        }
    }

    /// The made identifier for `map.key` (or `has(map.key)`), if `map` is
    /// one this pass resolves directly.
    fn path(&self, map: &IdedExpr, key: &str, has: bool) -> Option<String> {
        let kind = if self.free(map, "subject") {
            's'
        } else if let Some(k) = self.map_kind(map) {
            k
        } else if self.free(map, "request") && !has && !matches!(key, "headers" | "context") {
            'r'
        } else {
            return None;
        };
        Some(CelPath::name(if has { kind.to_ascii_uppercase() } else { kind }, key))
    }

    fn expr(&mut self, e: &mut IdedExpr) {
        let made = match &e.expr {
            Expr::Select(s) => self.path(&s.operand, &s.field, s.test),
            Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() && c.args.len() == 2 => {
                match &c.args[1].expr {
                    Expr::Literal(CelVal::String(key)) => self.path(&c.args[0], key, false),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(name) = made {
            e.expr = Expr::Ident(name);
            return;
        }
        match &mut e.expr {
            Expr::Select(s) => self.expr(&mut s.operand),
            Expr::Call(c) => {
                if let Some(t) = &mut c.target {
                    self.expr(t);
                }
                c.args.iter_mut().for_each(|a| self.expr(a));
            }
            Expr::Comprehension(c) => {
                self.expr(&mut c.iter_range);
                self.expr(&mut c.accu_init);
                let depth = self.bound.len();
                self.bound.extend(
                    [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)].into_iter().flatten().cloned(),
                );
                self.expr(&mut c.loop_cond);
                self.expr(&mut c.loop_step);
                self.expr(&mut c.result);
                self.bound.truncate(depth);
            }
            Expr::List(l) => l.elements.iter_mut().for_each(|x| self.expr(x)),
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.expr(&mut me.key);
                            self.expr(&mut me.value);
                        }
                        EntryExpr::StructField(f) => self.expr(&mut f.value),
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
        }
    }
}

/// The variables `e` still names whole after `rewrite`, among `names`.
pub fn free_variables(e: &IdedExpr, names: &[&'static str]) -> Vec<&'static str> {
    let mut found = Vec::new();
    collect(e, names, &mut Vec::new(), &mut found);
    names.iter().copied().filter(|n| found.contains(n)).collect()
}

fn collect(e: &IdedExpr, names: &[&'static str], bound: &mut Vec<String>, found: &mut Vec<&'static str>) {
    match &e.expr {
        Expr::Ident(n) => {
            if let Some(v) = names.iter().find(|v| **v == n) {
                if !bound.iter().any(|b| b == n) {
                    found.push(v);
                }
            }
        }
        Expr::Select(s) => collect(&s.operand, names, bound, found),
        Expr::Call(c) => {
            c.target.iter().for_each(|t| collect(t, names, bound, found));
            c.args.iter().for_each(|a| collect(a, names, bound, found));
        }
        Expr::Comprehension(c) => {
            collect(&c.iter_range, names, bound, found);
            collect(&c.accu_init, names, bound, found);
            let depth = bound.len();
            bound.extend([Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)].into_iter().flatten().cloned());
            for x in [&c.loop_cond, &c.loop_step, &c.result] {
                collect(x, names, bound, found);
            }
            bound.truncate(depth);
        }
        Expr::List(l) => l.elements.iter().for_each(|x| collect(x, names, bound, found)),
        Expr::Map(m) => {
            for entry in &m.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(me) => {
                        collect(&me.key, names, bound, found);
                        collect(&me.value, names, bound, found);
                    }
                    EntryExpr::StructField(f) => collect(&f.value, names, bound, found),
                }
            }
        }
        Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(src: &str) -> (String, Vec<&'static str>) {
        let mut ast = cel::parser::Parser::new().parse(src).unwrap();
        rewrite(&mut ast);
        let mut made = Vec::new();
        fn idents(e: &IdedExpr, out: &mut Vec<String>) {
            match &e.expr {
                Expr::Ident(n) if n.starts_with(MARK) => out.push(n[1..].to_owned()),
                Expr::Select(s) => idents(&s.operand, out),
                Expr::Call(c) => {
                    c.target.iter().for_each(|t| idents(t, out));
                    c.args.iter().for_each(|a| idents(a, out));
                }
                Expr::Comprehension(c) => {
                    for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                        idents(x, out);
                    }
                }
                Expr::List(l) => l.elements.iter().for_each(|x| idents(x, out)),
                _ => {}
            }
        }
        idents(&ast, &mut made);
        (made.join(" "), free_variables(&ast, &["subject", "actor", "request", "scopes"]))
    }

    #[test]
    fn constant_paths_become_identifiers_and_whole_maps_stay() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("subject.email.endsWith('@a') && has(subject.tenant)", "semail Stenant", &[]),
            ("subject['x-y'] == request.headers['x-t'] && request.method == 'GET'", "sx-y hx-t rmethod", &[]),
            ("has(request.headers.x_a) && request.context.tenant == 'a'", "Hx_a ctenant", &[]),
            ("actor.claims.env == 'p' && has(actor.claims.team) && actor.kind == 'token'", "aenv Ateam", &["actor"]),
            ("size(subject) > 1 && subject.a == 'b'", "sa", &["subject"]),
            ("request == null || request.headers.exists(k, k == 'x')", "", &["request"]),
            // A comprehension variable named like a variable is not rewritten.
            ("scopes.exists(subject, subject.a == 'b')", "", &["scopes"]),
            ("subject.groups.exists(g, g == subject.tenant)", "sgroups stenant", &[]),
            ("has(request.method)", "", &["request"]),
        ];
        for (src, made, free) in cases {
            assert_eq!(rewritten(src), (made.to_string(), free.to_vec()), "{src}");
        }
        assert_eq!(CelPath::parse("\u{1}Hx-a"), Some(CelPath::Header { key: "x-a", has: true }));
        assert_eq!(CelPath::parse("subject"), None);
        assert_eq!(CelPath::parse("\u{1}"), None);
    }
}
