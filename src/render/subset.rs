//! The template subset mailfleet renders: the constructs whose memory is bounded by the
//! output cap and the size of the job's own input.
//!
//! minijinja bounds a render's instructions (fuel) and its recursion, but not the size of a
//! value built inside one expression: `'x' * 100000000` or `s|replace('x', s)` allocate before
//! any output is written, and `~`, `+` or a `set` in a loop can grow a value far past any cap.
//! So a template is parsed and walked before it is compiled, and refused (with the construct
//! and what to write instead) unless it holds only:
//!
//! - text, `{{ expressions }}`, `{% if %}`, `{% for %}` (not `recursive`), `{% autoescape %}`,
//!   `{% break %}`/`{% continue %}`, comments and raw blocks;
//! - variables, attributes, items and slices of them, literals, lists and maps of literals;
//! - comparisons, `in`, `is` tests, `and`/`or`/`not`, `a if b else c`, and the numeric
//!   operators `-`, `/`, `//`, `%`;
//! - the filters in [`FILTERS`] (each grows its input by at most a small constant factor;
//!   `join` and `replace` are mailfleet's own, which refuse a result over the output cap
//!   before building it).
//!
//! Refused: `~`, `+`, `*`, `**` (they build values without bound: write `{{ a }}{{ b }}`, or
//! compute the value in the app and pass it in `vars`), function and method calls (`range`,
//! `namespace`, `loop.cycle`, ...), `set`, `with`, macros, `call`, `filter` blocks, `include`,
//! `import`, `extends`, `block` and `do`. Output itself goes through a writer that stops at
//! the cap, so loops emitting text stop there too.

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};

/// Filters a template may use.
pub const FILTERS: &[&str] = &[
    "abs",
    "attr",
    "bool",
    "capitalize",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "groupby",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "max",
    "min",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "map",
];

/// A construct outside the subset: what it is, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub construct: String,
    pub hint: &'static str,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not allowed in templates: {}",
            self.construct, self.hint
        )
    }
}

const BUILDS: &str = "it can build a value of any size; write {{ a }}{{ b }}, or compute the \
                      value in the app and pass it in vars";
const STATEMENT: &str = "templates may use if, for and autoescape blocks only; compute the \
                         value in the app and pass it in vars";
const CALL: &str = "templates may not call functions or methods; pass the values in vars";

fn refuse(construct: impl Into<String>, hint: &'static str) -> Result<(), Unsupported> {
    Err(Unsupported {
        construct: construct.into(),
        hint,
    })
}

/// Parse `source` and check that it stays inside the subset. A syntax error is not this
/// check's business: it is left for the compiler to report (`Ok`).
pub fn check(source: &str) -> Result<(), Unsupported> {
    match minijinja::machinery::parse(source, "<template>", Default::default(), Default::default())
    {
        Ok(t) => stmt(&t),
        Err(_) => Ok(()),
    }
}

fn stmts(list: &[Stmt<'_>]) -> Result<(), Unsupported> {
    list.iter().try_for_each(stmt)
}

fn stmt(s: &Stmt<'_>) -> Result<(), Unsupported> {
    match s {
        Stmt::Template(t) => stmts(&t.children),
        Stmt::EmitExpr(e) => expr(&e.expr),
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => Ok(()),
        Stmt::ForLoop(f) => {
            if f.recursive {
                return refuse("a recursive for loop", STATEMENT);
            }
            expr(&f.target)?;
            expr(&f.iter)?;
            if let Some(e) = &f.filter_expr {
                expr(e)?;
            }
            stmts(&f.body)?;
            stmts(&f.else_body)
        }
        Stmt::IfCond(c) => {
            expr(&c.expr)?;
            stmts(&c.true_body)?;
            stmts(&c.false_body)
        }
        Stmt::AutoEscape(a) => {
            expr(&a.enabled)?;
            stmts(&a.body)
        }
        Stmt::WithBlock(_) => refuse("{% with %}", STATEMENT),
        Stmt::Set(_) | Stmt::SetBlock(_) => refuse("{% set %}", STATEMENT),
        Stmt::FilterBlock(_) => refuse("{% filter %}", STATEMENT),
        Stmt::Block(_) => refuse("{% block %}", STATEMENT),
        Stmt::Import(_) | Stmt::FromImport(_) => refuse("{% import %}", STATEMENT),
        Stmt::Extends(_) => refuse("{% extends %}", STATEMENT),
        Stmt::Include(_) => refuse("{% include %}", STATEMENT),
        Stmt::Macro(_) => refuse("{% macro %}", STATEMENT),
        Stmt::CallBlock(_) => refuse("{% call %}", STATEMENT),
        Stmt::Do(_) => refuse("{% do %}", STATEMENT),
    }
}

fn args(list: &[CallArg<'_>]) -> Result<(), Unsupported> {
    list.iter().try_for_each(|a| match a {
        CallArg::Pos(e) | CallArg::Kwarg(_, e) | CallArg::PosSplat(e) | CallArg::KwargSplat(e) => {
            expr(e)
        }
    })
}

fn expr(e: &Expr<'_>) -> Result<(), Unsupported> {
    match e {
        Expr::Var(_) | Expr::Const(_) => Ok(()),
        Expr::Slice(s) => {
            expr(&s.expr)?;
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                expr(part)?;
            }
            Ok(())
        }
        Expr::UnaryOp(u) => expr(&u.expr),
        Expr::BinOp(b) => {
            let op = match b.op {
                BinOpKind::Concat => Some("the ~ operator"),
                BinOpKind::Add => Some("the + operator"),
                BinOpKind::Mul => Some("the * operator"),
                BinOpKind::Pow => Some("the ** operator"),
                _ => None,
            };
            if let Some(op) = op {
                return refuse(op, BUILDS);
            }
            expr(&b.left)?;
            expr(&b.right)
        }
        Expr::Compare(c) => {
            expr(&c.expr)?;
            c.ops.iter().try_for_each(|o| expr(&o.expr))
        }
        Expr::IfExpr(i) => {
            expr(&i.test_expr)?;
            expr(&i.true_expr)?;
            i.false_expr.as_ref().map_or(Ok(()), expr)
        }
        Expr::Filter(f) => {
            if !FILTERS.contains(&f.name) {
                return refuse(
                    format!("the {} filter", f.name),
                    "it is not one of the filters templates may use (docs/templates.md)",
                );
            }
            // `map` may pick an attribute, not apply another filter by name.
            if f.name == "map" && f.args.iter().any(|a| !matches!(a, CallArg::Kwarg(..))) {
                return refuse("map with a filter name", "use map(attribute=\"...\") only");
            }
            if let Some(e) = &f.expr {
                expr(e)?;
            }
            args(&f.args)
        }
        Expr::Test(t) => {
            expr(&t.expr)?;
            args(&t.args)
        }
        Expr::GetAttr(g) => expr(&g.expr),
        Expr::GetItem(g) => {
            expr(&g.expr)?;
            expr(&g.subscript_expr)
        }
        Expr::Call(_) => refuse("a function or method call", CALL),
        Expr::List(l) => l.items.iter().try_for_each(expr),
        Expr::Map(m) => {
            m.keys.iter().try_for_each(expr)?;
            m.values.iter().try_for_each(expr)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn the_bounded_subset_passes() {
        for ok in [
            "Hello {{ name }}",
            "{% if user.vip %}Dear {{ user.name|title }}{% else %}Hi{% endif %}",
            "{% for item in order.items if item.qty > 0 %}{{ loop.index }}. {{ item.name|e }} \
             x{{ item.qty }}{% else %}nothing{% endfor %}",
            "{{ tags|join(', ') }} {{ note|replace('\\n', ' ')|default('-') }}",
            "{{ total - discount }} {{ (n / 2)|round }} {{ n % 2 }} {{ xs[1:3]|length }}",
            "{{ people|map(attribute='name')|join(', ') }} {{ a if b else c }}",
            "{% autoescape false %}{{ x }}{% endautoescape %}{% raw %}{{ ~ }}{% endraw %}",
            "{{ 'x' in y }} {{ y is defined }} {{ not z }} {{ [1, 2] }} {{ {'a': 1} }}",
            "{% for i in xs %}{% if i %}{% break %}{% endif %}{% endfor %}",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn constructs_that_build_values_without_bound_are_refused() {
        for (bad, what) in [
            (
                "{{ ('x'*100000)|replace('x','x'*100000) }}",
                "the * operator",
            ),
            ("{{ \"x\" * 100000000 }}", "the * operator"),
            ("{{ a ~ b }}", "the ~ operator"),
            ("{{ a + b }}", "the + operator"),
            ("{{ 2 ** 64 }}", "the ** operator"),
            (
                "{% for i in range(100000) %}x{% endfor %}",
                "a function or method call",
            ),
            ("{% set ns = namespace(x='a') %}", "{% set %}"),
            ("{% set x %}abc{% endset %}", "{% set %}"),
            ("{% macro f(n) %}{{ f(n) }}{% endmacro %}", "{% macro %}"),
            ("{% with a = b %}{% endwith %}", "{% with %}"),
            ("{% filter upper %}x{% endfilter %}", "{% filter %}"),
            ("{% include 'x' %}", "{% include %}"),
            ("{{ s|indent(100000) }}", "the indent filter"),
            ("{{ '%99999999d'|format(1) }}", "the format filter"),
            ("{{ xs|map('indent', 1000) }}", "map with a filter name"),
            ("{{ loop.cycle('a', 'b') }}", "a function or method call"),
            (
                "{% for x in xs recursive %}{{ loop(x) }}{% endfor %}",
                "a recursive for loop",
            ),
        ] {
            let e = check(bad).expect_err(bad);
            assert_eq!(e.construct, what, "{bad}");
        }
        // A syntax error is left to the compiler.
        assert_eq!(check("{{ unclosed"), Ok(()));
    }
}
