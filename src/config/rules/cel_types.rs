//! What type a CEL expression yields, as far as it can be seen without
//! running it: enough to refuse at load a condition that can never be a
//! boolean, a computed claim that can never be JSON, and an operator whose
//! operands can never fit (`request.method + 1`). What cannot be known
//! (a claim's value) is `Dyn` and never an error here.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use cel::common::value::CelVal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Bool,
    Int,
    UInt,
    Double,
    String,
    Bytes,
    List,
    Map,
    Null,
    /// Any of the above, known only when the expression runs.
    Dyn,
}

impl Ty {
    pub fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::Int => "an integer",
            Ty::UInt => "an unsigned integer",
            Ty::Double => "a double",
            Ty::String => "a string",
            Ty::Bytes => "bytes",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Null => "null",
            Ty::Dyn => "any value",
        }
    }

    fn is(self, want: Ty) -> bool {
        self == want || self == Ty::Dyn
    }

    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::UInt | Ty::Double | Ty::Dyn)
    }
}

/// The type of `e` and the first operator found that can never apply to
/// its operands.
pub(super) fn infer(e: &IdedExpr) -> Result<Ty, String> {
    Infer { bound: Vec::new() }.ty(e)
}

struct Infer {
    /// Comprehension variables in scope, with their types.
    bound: Vec<(String, Ty)>,
}

impl Infer {
    fn ty(&mut self, e: &IdedExpr) -> Result<Ty, String> {
        Ok(match &e.expr {
            Expr::Literal(l) => match l {
                CelVal::Boolean(_) => Ty::Bool,
                CelVal::Int(_) => Ty::Int,
                CelVal::UInt(_) => Ty::UInt,
                CelVal::Double(_) => Ty::Double,
                CelVal::String(_) => Ty::String,
                CelVal::Bytes(_) => Ty::Bytes,
                CelVal::Null => Ty::Null,
                _ => Ty::Dyn,
            },
            Expr::Ident(name) => match self.bound.iter().rev().find(|(n, _)| n == name) {
                Some((_, t)) => *t,
                None => match name.as_str() {
                    "subject" => Ty::Map,
                    "audience" => Ty::String,
                    "scopes" => Ty::List,
                    // `actor`, `request` (null at one door) and `client` may be null.
                    _ => Ty::Dyn,
                },
            },
            Expr::Select(s) => {
                if s.test {
                    return Ok(Ty::Bool);
                }
                let operand = self.ty(&s.operand)?;
                if !operand.is(Ty::Map) {
                    return Err(format!("`.{}` reads a field of {}, which has none", s.field, operand.name()));
                }
                self.field(&s.operand, &s.field)
            }
            Expr::List(l) => {
                for x in &l.elements {
                    self.ty(x)?;
                }
                Ty::List
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.ty(&me.key)?;
                        self.ty(&me.value)?;
                    }
                }
                Ty::Map
            }
            Expr::Comprehension(c) => {
                self.ty(&c.iter_range)?;
                let accu = self.ty(&c.accu_init)?;
                let depth = self.bound.len();
                self.bound.push((c.iter_var.clone(), Ty::Dyn));
                if let Some(v) = &c.iter_var2 {
                    self.bound.push((v.clone(), Ty::Dyn));
                }
                self.bound.push((c.accu_var.clone(), accu));
                let out = self.ty(&c.loop_cond).and(self.ty(&c.loop_step)).and(self.ty(&c.result));
                self.bound.truncate(depth);
                out?
            }
            Expr::Call(c) => self.call(c)?,
            Expr::Struct(_) | Expr::Unspecified => Ty::Dyn,
        })
    }

    /// The type of a field of `map` (the variables' known fields).
    fn field(&self, map: &IdedExpr, field: &str) -> Ty {
        let free = |e: &IdedExpr, name: &str| matches!(&e.expr, Expr::Ident(n) if n == name && !self.bound.iter().any(|(b, _)| b == n));
        if free(map, "request") {
            match field {
                "headers" | "context" => Ty::Map,
                _ => Ty::String,
            }
        } else if free(map, "actor") {
            match field {
                "kind" | "id" => Ty::String,
                "claims" => Ty::Map,
                _ => Ty::Dyn,
            }
        } else if matches!(&map.expr, Expr::Select(s) if !s.test && (s.field == "headers" || s.field == "context") && free(&s.operand, "request"))
        {
            // `request.headers.x`, `request.context.x`.
            Ty::String
        } else {
            Ty::Dyn
        }
    }

    fn call(&mut self, c: &cel::common::ast::CallExpr) -> Result<Ty, String> {
        let mut args = Vec::with_capacity(c.args.len());
        let target = c.target.as_deref().map(|t| self.ty(t)).transpose()?;
        for a in &c.args {
            args.push(self.ty(a)?);
        }
        let name = c.func_name.as_str();
        let operator = match name {
            operators::ADD => "+",
            operators::SUBSTRACT => "-",
            operators::MULTIPLY => "*",
            operators::DIVIDE => "/",
            operators::MODULO => "%",
            operators::LOGICAL_AND => "&&",
            operators::LOGICAL_OR => "||",
            operators::LOGICAL_NOT => "!",
            operators::NEGATE => "-",
            operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS => "<",
            operators::IN => "in",
            _ => "",
        };
        let mismatch = |what: &str| -> Result<Ty, String> {
            let shown: Vec<&str> = args.iter().map(|t| t.name()).collect();
            Err(format!("`{operator}` cannot apply to {}: {what}", shown.join(" and ")))
        };
        Ok(match name {
            operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT => {
                if args.iter().any(|t| !t.is(Ty::Bool)) {
                    return mismatch("it takes booleans");
                }
                Ty::Bool
            }
            operators::NOT_STRICTLY_FALSE | operators::EQUALS | operators::NOT_EQUALS | operators::HAS => Ty::Bool,
            operators::LESS | operators::LESS_EQUALS | operators::GREATER | operators::GREATER_EQUALS => {
                if let [a, b] = args[..]
                    && a != Ty::Dyn
                    && b != Ty::Dyn
                    && !(a.numeric() && b.numeric())
                    && a != b
                {
                    return mismatch("it compares numbers with numbers and strings with strings");
                }
                Ty::Bool
            }
            operators::IN => {
                if let [_, within] = args[..]
                    && !matches!(within, Ty::List | Ty::Map | Ty::Dyn)
                {
                    return mismatch("the right side must be a list or a map");
                }
                Ty::Bool
            }
            operators::ADD => match args[..] {
                [a, Ty::Dyn] | [Ty::Dyn, a] => {
                    if matches!(a, Ty::Bool | Ty::Map | Ty::Null) {
                        return mismatch("it adds numbers, strings, bytes or lists");
                    }
                    Ty::Dyn
                }
                [a, b]
                    if a == b && matches!(a, Ty::Int | Ty::UInt | Ty::Double | Ty::String | Ty::Bytes | Ty::List) =>
                {
                    a
                }
                _ => return mismatch("it adds two values of the same type"),
            },
            operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO => match args[..] {
                [a, b] if a.numeric() && b.numeric() => {
                    if a == Ty::Dyn || b == Ty::Dyn {
                        Ty::Dyn
                    } else if a == b {
                        a
                    } else {
                        return mismatch("it takes two numbers of the same type");
                    }
                }
                _ => return mismatch("it takes numbers"),
            },
            operators::NEGATE => match args[..] {
                [a] if a.numeric() => a,
                _ => return mismatch("it takes a number"),
            },
            operators::CONDITIONAL => match args[..] {
                [cond, a, b] => {
                    if !cond.is(Ty::Bool) {
                        return Err(format!("`? :` needs a boolean before `?`, not {}", cond.name()));
                    }
                    if a == b { a } else { Ty::Dyn }
                }
                _ => Ty::Dyn,
            },
            operators::INDEX => match args[..] {
                [Ty::List | Ty::Map | Ty::Dyn, _] => {
                    if let [map, _] = &c.args[..]
                        && matches!(&map.expr, Expr::Select(s) if !s.test && (s.field == "headers" || s.field == "context") && matches!(&s.operand.expr, Expr::Ident(n) if n == "request"))
                    {
                        Ty::String
                    } else {
                        Ty::Dyn
                    }
                }
                [other, _] => return Err(format!("`[ ]` indexes a list or a map, not {}", other.name())),
                _ => Ty::Dyn,
            },
            "startsWith" | "endsWith" | "matches" | "split" | "lowerAscii" | "upperAscii" => {
                if let Some(t) = target
                    && !t.is(Ty::String)
                {
                    return Err(format!("`{name}` is called on {}; it takes a string", t.name()));
                }
                match name {
                    "split" => Ty::List,
                    "lowerAscii" | "upperAscii" => Ty::String,
                    _ => Ty::Bool,
                }
            }
            "contains" => Ty::Bool,
            "size" | "int" => Ty::Int,
            "uint" => Ty::UInt,
            "double" => Ty::Double,
            "string" => Ty::String,
            "bytes" => Ty::Bytes,
            _ => Ty::Dyn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(src: &str) -> Result<Ty, String> {
        infer(&cel::parser::Parser::new().parse(src).unwrap())
    }

    #[test]
    fn types_are_seen_where_they_are_known_and_dyn_elsewhere() {
        let ok: &[(&str, Ty)] = &[
            ("subject.email.endsWith('@a') && request.method in ['GET']", Ty::Bool),
            ("subject.level + 1", Ty::Dyn),
            ("subject.tenant", Ty::Dyn),
            ("request.headers['x-a'] + '!'", Ty::String),
            ("subject.groups.filter(g, g.startsWith('a'))", Ty::List),
            ("subject.groups.exists(g, g == 'a')", Ty::Bool),
            ("subject.groups.map(g, g + '!')", Ty::List),
            ("subject.email.split('@')[1]", Ty::Dyn),
            ("size(scopes) * 2", Ty::Int),
            ("has(actor.claims.env) ? actor.claims.env : 'none'", Ty::Dyn),
            ("audience == 'a' ? 'x' : 'y'", Ty::String),
            ("b'abc'", Ty::Bytes),
            ("{'a': 1}", Ty::Map),
            ("actor.kind + ':' + actor.id", Ty::String),
            ("subject.a < 3 && 'x' < 'y'", Ty::Bool),
        ];
        for (src, want) in ok {
            assert_eq!(ty(src), Ok(*want), "{src}");
        }
        let bad: &[(&str, &str)] = &[
            ("request.method + 1", "`+` cannot apply to a string and an integer"),
            ("audience && true", "`&&` cannot apply to a string and a boolean"),
            ("!scopes", "`!` cannot apply to a list"),
            ("1 + 'a'", "it adds two values of the same type"),
            ("'a' - 'b'", "it takes numbers"),
            ("request.path < 3", "compares numbers with numbers"),
            ("'a' in audience", "the right side must be a list or a map"),
            ("size(scopes).endsWith('x')", "`endsWith` is called on an integer"),
            ("audience['x']", "`[ ]` indexes a list or a map, not a string"),
            ("audience.x", "reads a field of a string"),
            ("(size(scopes) > 1 ? 1 : 2) ? 'a' : 'b'", "needs a boolean before `?`"),
        ];
        for (src, want) in bad {
            let got = ty(src);
            assert!(got.as_ref().is_err_and(|e| e.contains(want)), "{src}: {got:?}");
        }
    }
}
