//! Rendering with minijinja: inline bodies or named templates, HTML auto-escaped, bounded.
//!
//! Templates come from producers and operators, so a template is hostile until rendered: every
//! render runs with a fuel budget (bounds loops and total work), a recursion limit (bounds macro
//! and include depth) and an output cap, and undefined variables are errors rather than empty
//! strings. A rendered subject is checked for CR/LF/NUL again: vars can smuggle them in.
//!
//! Inline `html`/`text`/`subject` are rendered only when the job has `vars`; otherwise they are
//! sent verbatim, so literal braces in a hand-written body never break a send.

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

fn err(part: &'static str) -> impl Fn(minijinja::Error) -> RenderError {
    move |e| RenderError::Template {
        part,
        message: e.to_string(),
    }
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
                    let one = |name: &'static str, src: &str| {
                        self.inline
                            .template_from_named_str(name, src)
                            .and_then(|t| t.render(&ctx))
                            .map_err(err(name))
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
                let part = |key: &'static str| {
                    env.get_template(key)
                        .and_then(|t| t.render(&ctx))
                        .map_err(err(key))
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
        env.add_template_owned("subject", t.subject.clone())
            .map_err(err("subject"))?;
        if let Some(h) = &t.html {
            env.add_template_owned("body.html", h.clone())
                .map_err(err("body.html"))?;
        }
        if let Some(x) = &t.text {
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
            Err(RenderError::Template { .. })
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
            Err(RenderError::Template { .. })
        ));
        let big = Renderer::new(Limits {
            max_output_bytes: 1000,
            ..Limits::default()
        });
        let huge = Template {
            version: 3,
            ..tpl("s", "{{ 'x' * 5000 }}")
        };
        assert_eq!(
            big.render(&e, Some(&huge)),
            Err(RenderError::TooLarge("html"))
        );
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
