//! Rendering with minijinja: inline bodies or named templates, HTML auto-escaped, bounded.
//!
//! Templates come from producers and operators, so a template is hostile until rendered: every
//! template is first checked against the bounded subset ([`subset`]: no construct that can
//! build a value of unbounded size), every render runs with a fuel budget (bounds loops and
//! total work) and writes through a writer that stops at the output cap, so a render's memory
//! stays near the cap whatever the template; undefined variables are errors rather than empty
//! strings. A rendered subject is checked for CR/LF/NUL again: vars can smuggle them in.
//!
//! Inline `html`/`text`/`subject` are rendered only when the job has `vars`; otherwise they are
//! sent verbatim, so literal braces in a hand-written body never break a send.

mod subset;

pub use subset::{FILTERS, Unsupported};

use crate::domain::{Content, Email, has_header_breaking_char};
use crate::store::templates::Template;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub fuel: u64,
    pub recursion: usize,
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 200_000,
            recursion: 64,
            max_output_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("template {0:?} does not exist")]
    UnknownTemplate(String),
    #[error("template {part} failed: {message}")]
    Template { part: &'static str, message: String },
    #[error("rendered {0} is larger than the output cap")]
    TooLarge(&'static str),
    #[error("rendered subject contains CR, LF or NUL")]
    HeaderInjection,
    #[error("rendered subject is empty")]
    EmptySubject,
    #[error("template {part}: {why}")]
    Unsupported {
        part: &'static str,
        why: Unsupported,
    },
}

impl RenderError {
    /// A short reason for logs: never the template's text, a variable's value or an address.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::UnknownTemplate(_) => "unknown_template",
            RenderError::Template { .. } => "template_error",
            RenderError::TooLarge(_) => "too_large",
            RenderError::HeaderInjection => "header_injection",
            RenderError::EmptySubject => "empty_subject",
            RenderError::Unsupported { .. } => "unsupported_template",
        }
    }
}

/// What goes to the provider.
#[derive(Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered").finish_non_exhaustive()
    }
}

pub struct Renderer {
    limits: Limits,
    inline: Environment<'static>,
    compiled: Mutex<HashMap<(String, i32), Arc<Environment<'static>>>>,
}

fn environment(limits: Limits) -> Environment<'static> {
    let mut env = Environment::new();
    let cap = limits.max_output_bytes;
    // `join` and `replace` are the subset's two filters whose result can be much larger than
    // their input; these versions refuse a result over the cap before building it.
    env.add_filter("join", move |v: Value, sep: Option<String>| {
        bounded_join(&v, sep.as_deref(), cap)
    });
    env.add_filter(
        "replace",
        move |s: String, from: String, to: String, count: Option<usize>| {
            bounded_replace(&s, &from, &to, count, cap)
        },
    );
    env.set_fuel(Some(limits.fuel));
    env.set_recursion_limit(limits.recursion);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

fn too_big() -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        "the result would be larger than the output cap",
    )
}

fn bounded_join(v: &Value, sep: Option<&str>, cap: usize) -> Result<Value, minijinja::Error> {
    let sep = sep.unwrap_or("");
    // The size first, one piece at a time: a join over the cap is refused before any of it
    // is built, and one within it is allocated once, at its size (no doubling copies).
    let mut size = 0usize;
    for (i, item) in v.try_iter()?.enumerate() {
        size += item.to_string().len() + if i > 0 { sep.len() } else { 0 };
        if size > cap {
            return Err(too_big());
        }
    }
    let mut out = String::with_capacity(size);
    for (i, item) in v.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(&item.to_string());
    }
    Ok(Value::from(out))
}

fn bounded_replace(
    s: &str,
    from: &str,
    to: &str,
    count: Option<usize>,
    cap: usize,
) -> Result<String, minijinja::Error> {
    let n = s.matches(from).count().min(count.unwrap_or(usize::MAX));
    let size = (s.len() as u128) + (n as u128) * (to.len() as u128);
    if size > cap as u128 {
        return Err(too_big());
    }
    Ok(match count {
        Some(c) => s.replacen(from, to, c),
        None => s.replace(from, to),
    })
}

/// Output that stops at `cap` bytes: the write past it fails, which ends the render.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.cap {
            return Err(std::io::Error::other("output cap"));
        }
        // Grow by doubling, but never past the cap: the buffer's size is bounded by it.
        let need = self.buf.len() + b.len();
        if need > self.buf.capacity() {
            let to = need.max(self.buf.capacity() * 2).min(self.cap);
            self.buf.reserve_exact(to - self.buf.len());
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render `t` into at most `cap` bytes.
fn capped(
    t: &minijinja::Template<'_, '_>,
    ctx: &Value,
    cap: usize,
    part: &'static str,
) -> Result<String, RenderError> {
    let mut out = Capped {
        buf: Vec::new(),
        cap,
    };
    match t.render_captured_to(ctx, &mut out) {
        Ok(_) => String::from_utf8(out.buf).map_err(|_| RenderError::Template {
            part,
            message: "output is not UTF-8".into(),
        }),
        Err(e) if e.kind() == minijinja::ErrorKind::WriteFailure => {
            Err(RenderError::TooLarge(part))
        }
        Err(e) if e.to_string().contains("larger than the output cap") => {
            Err(RenderError::TooLarge(part))
        }
        Err(e) => Err(err(part)(e)),
    }
}

/// Refuse `src` unless it stays inside the bounded subset.
fn in_subset(part: &'static str, src: &str) -> Result<(), RenderError> {
    subset::check(src).map_err(|why| RenderError::Unsupported { part, why })
}

fn err(part: &'static str) -> impl Fn(minijinja::Error) -> RenderError {
    move |e| RenderError::Template {
        part,
        message: e.to_string(),
    }
}

/// Refuse, at enqueue, an inline template (a job's `subject`/`html`/`text` with `vars`) that a
/// worker would refuse: the producer's answer says why at once, instead of a `failed` row
/// later. Inline parts without `vars` are sent verbatim and not checked.
pub fn check_inline(email: &Email) -> Result<(), crate::domain::ValidationErrors> {
    let Content::Inline {
        html,
        text,
        vars: Some(_),
    } = &email.content
    else {
        return Ok(());
    };
    let errors: Vec<crate::domain::FieldError> = [
        ("subject", email.subject.as_deref()),
        ("html", html.as_deref()),
        ("text", text.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, src)| {
        let why = subset::check(src?).err()?;
        Some(crate::domain::FieldError {
            field: field.into(),
            message: why.to_string(),
        })
    })
    .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::domain::ValidationErrors(errors))
    }
}

/// What `template put` checks before storing: every part is inside the subset, compiles,
/// and renders within the limits with every variable undefined (so a template that cannot
/// render at all is refused then, not when the first email needs it).
pub fn check_template(
    subject: &str,
    html: Option<&str>,
    text: Option<&str>,
    limits: Limits,
) -> Result<(), RenderError> {
    let mut env = environment(limits);
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    for (part, src) in [
        ("subject", Some(subject)),
        ("body.html", html),
        ("body.txt", text),
    ] {
        let Some(src) = src else { continue };
        in_subset(part, src)?;
        let t = env.template_from_named_str(part, src).map_err(err(part))?;
        capped(&t, &Value::UNDEFINED, limits.max_output_bytes, part)?;
    }
    Ok(())
}

impl Renderer {
    pub fn new(limits: Limits) -> Self {
        Renderer {
            limits,
            inline: environment(limits),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// Render `email`; `template` is the latest version of its named template, if it has one.
    pub fn render(
        &self,
        email: &Email,
        template: Option<&Template>,
    ) -> Result<Rendered, RenderError> {
        let out = match &email.content {
            Content::Inline { html, text, vars } => match vars {
                None => Rendered {
                    subject: email.subject.clone().unwrap_or_default(),
                    html: html.clone(),
                    text: text.clone(),
                },
                Some(vars) => {
                    let ctx = Value::from_serialize(vars);
                    let cap = self.limits.max_output_bytes;
                    let one = |name: &'static str, src: &str| {
                        in_subset(name, src)?;
                        let t = self
                            .inline
                            .template_from_named_str(name, src)
                            .map_err(err(name))?;
                        capped(&t, &ctx, cap, name)
                    };
                    Rendered {
                        subject: one("subject", email.subject.as_deref().unwrap_or_default())?,
                        html: html.as_deref().map(|h| one("inline.html", h)).transpose()?,
                        text: text.as_deref().map(|t| one("inline.txt", t)).transpose()?,
                    }
                }
            },
            Content::Template { name, vars } => {
                let t = template
                    .filter(|t| &t.name == name)
                    .ok_or_else(|| RenderError::UnknownTemplate(name.clone()))?;
                let env = self.compiled(t)?;
                let ctx = Value::from_serialize(vars);
                let cap = self.limits.max_output_bytes;
                let part = |key: &'static str| {
                    let t = env.get_template(key).map_err(err(key))?;
                    capped(&t, &ctx, cap, key)
                };
                let subject = match &email.subject {
                    Some(s) => s.clone(),
                    None => part("subject")?,
                };
                Rendered {
                    subject,
                    html: t.html.as_ref().map(|_| part("body.html")).transpose()?,
                    text: t.text.as_ref().map(|_| part("body.txt")).transpose()?,
                }
            }
        };
        self.check(out)
    }

    fn check(&self, r: Rendered) -> Result<Rendered, RenderError> {
        let cap = self.limits.max_output_bytes;
        if r.subject.len() > crate::domain::MAX_SUBJECT_LEN {
            return Err(RenderError::TooLarge("subject"));
        }
        if has_header_breaking_char(&r.subject) {
            return Err(RenderError::HeaderInjection);
        }
        if r.subject.trim().is_empty() {
            return Err(RenderError::EmptySubject);
        }
        if r.html.as_ref().is_some_and(|h| h.len() > cap) {
            return Err(RenderError::TooLarge("html"));
        }
        if r.text.as_ref().is_some_and(|t| t.len() > cap) {
            return Err(RenderError::TooLarge("text"));
        }
        Ok(r)
    }

    /// One compiled environment per template version, built once and shared.
    fn compiled(&self, t: &Template) -> Result<Arc<Environment<'static>>, RenderError> {
        let key = (t.name.clone(), t.version);
        let mut cache = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(env) = cache.get(&key) {
            return Ok(env.clone());
        }
        let mut env = environment(self.limits);
        in_subset("subject", &t.subject)?;
        env.add_template_owned("subject", t.subject.clone())
            .map_err(err("subject"))?;
        if let Some(h) = &t.html {
            in_subset("body.html", h)?;
            env.add_template_owned("body.html", h.clone())
                .map_err(err("body.html"))?;
        }
        if let Some(x) = &t.text {
            in_subset("body.txt", x)?;
            env.add_template_owned("body.txt", x.clone())
                .map_err(err("body.txt"))?;
        }
        let env = Arc::new(env);
        // Old versions are dropped when a newer one of the same name arrives.
        cache.retain(|(n, v), _| n != &t.name || *v > t.version);
        cache.insert(key, env.clone());
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Payload;

    fn email(p: serde_json::Value) -> Email {
        let p: Payload = serde_json::from_value(p).unwrap();
        Email::try_from(p).unwrap()
    }
    fn tpl(subject: &str, html: &str) -> Template {
        Template {
            name: "t".into(),
            version: 1,
            subject: subject.into(),
            html: Some(html.into()),
            text: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn html_is_auto_escaped_and_text_is_not() {
        let r = Renderer::new(Limits::default());
        let e = email(
            serde_json::json!({"to":["a@example.com"],"from":"b@example.com","subject":"Hi {{ n }}",
            "html":"<p>{{ n }}</p>","text":"{{ n }}","vars":{"n":"<b>&"}}),
        );
        let out = r.render(&e, None).unwrap();
        assert_eq!(out.html.as_deref(), Some("<p>&lt;b&gt;&amp;</p>"));
        assert_eq!(out.text.as_deref(), Some("<b>&"));
    }

    #[test]
    fn inline_without_vars_is_sent_verbatim() {
        let r = Renderer::new(Limits::default());
        let e = email(
            serde_json::json!({"to":["a@example.com"],"from":"b@example.com","subject":"{{ x",
            "text":"{% raw"}),
        );
        assert_eq!(r.render(&e, None).unwrap().text.as_deref(), Some("{% raw"));
    }

    #[test]
    fn hostile_templates_stop_at_the_limits() {
        let r = Renderer::new(Limits::default());
        let e = email(
            serde_json::json!({"to":["a@example.com"],"from":"b@example.com","template":"t"}),
        );
        let loops = tpl(
            "s",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        );
        assert!(matches!(
            r.render(&e, Some(&loops)),
            Err(RenderError::Unsupported { .. })
        ));
        let recursion = Template {
            version: 2,
            ..tpl(
                "s",
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            )
        };
        assert!(matches!(
            r.render(&e, Some(&recursion)),
            Err(RenderError::Unsupported { .. })
        ));
        let big = Renderer::new(Limits {
            max_output_bytes: 1000,
            ..Limits::default()
        });
        let huge = Template {
            version: 3,
            ..tpl("s", "{{ 'x' * 5000 }}")
        };
        assert!(matches!(
            big.render(&e, Some(&huge)),
            Err(RenderError::Unsupported {
                part: "body.html",
                ..
            })
        ));
    }

    #[test]
    fn output_stops_at_the_cap_while_rendering_and_join_and_replace_refuse_first() {
        let r = Renderer::new(Limits {
            max_output_bytes: 10_000,
            ..Limits::default()
        });
        let e = |vars: serde_json::Value| {
            email(
                serde_json::json!({"to":["a@example.com"],"from":"b@example.com",
                "template":"t","vars": vars}),
            )
        };
        let xs: Vec<u32> = (0..1000).collect();
        let many = e(serde_json::json!({"xs": xs, "big": "y".repeat(5000)}));
        // A million lines of 5,000 bytes: stopped at 10,000 bytes, not built and then checked.
        let loops = tpl(
            "s",
            "{% for a in xs %}{% for b in xs %}{{ big }}{% endfor %}{% endfor %}",
        );
        assert_eq!(
            r.render(&many, Some(&loops)),
            Err(RenderError::TooLarge("body.html"))
        );
        let join = Template {
            version: 2,
            ..tpl("s", "{{ xs|join(big) }}")
        };
        assert_eq!(
            r.render(&many, Some(&join)),
            Err(RenderError::TooLarge("body.html"))
        );
        let replace = Template {
            version: 3,
            ..tpl("s", "{{ big|replace('y', big) }}")
        };
        assert_eq!(
            r.render(&many, Some(&replace)),
            Err(RenderError::TooLarge("body.html"))
        );
        // Within the cap they work as minijinja's own.
        let small = e(serde_json::json!({"xs": ["a", "b"], "s": "a-b"}));
        let ok = Template {
            version: 4,
            ..tpl("s", "{{ xs|join(', ') }} {{ s|replace('-', '+') }}")
        };
        assert_eq!(
            r.render(&small, Some(&ok)).unwrap().html.as_deref(),
            Some("a, b a+b")
        );
    }

    #[test]
    fn template_put_refuses_what_a_worker_would() {
        let l = Limits::default();
        assert_eq!(
            check_template("Hi {{ name }}", Some("<p>{{ body }}</p>"), None, l),
            Ok(())
        );
        assert!(matches!(
            check_template(
                "s",
                Some("{{ ('x'*100000)|replace('x','x'*100000) }}"),
                None,
                l
            ),
            Err(RenderError::Unsupported {
                part: "body.html",
                ..
            })
        ));
        assert!(matches!(
            check_template("{{ unclosed", None, Some("t"), l),
            Err(RenderError::Template {
                part: "subject",
                ..
            })
        ));
    }

    #[test]
    fn vars_cannot_inject_headers_through_the_subject() {
        let r = Renderer::new(Limits::default());
        let e = email(
            serde_json::json!({"to":["a@example.com"],"from":"b@example.com","template":"t",
            "vars":{"n":"x\r\nBcc: victim@example.com"}}),
        );
        assert_eq!(
            r.render(&e, Some(&tpl("Hi {{ n }}", "b"))),
            Err(RenderError::HeaderInjection)
        );
    }

    #[test]
    fn undefined_variables_are_errors_and_unknown_templates_too() {
        let r = Renderer::new(Limits::default());
        let e = email(
            serde_json::json!({"to":["a@example.com"],"from":"b@example.com","template":"t"}),
        );
        assert!(matches!(
            r.render(&e, Some(&tpl("Hi {{ missing }}", "b"))),
            Err(RenderError::Template { .. })
        ));
        assert_eq!(
            r.render(&e, None),
            Err(RenderError::UnknownTemplate("t".into()))
        );
    }
}
