//! [`Markup`]: the admin page's HTML, in which escaping is a property of the type, not a call
//! to remember. Markup grows only two ways: [`Markup::raw`] takes a `&'static str` (markup
//! written in this module's source, never a value), and [`html!`](crate::html) writes a format
//! string whose every argument is escaped on the way in, unless the argument is itself a
//! `Markup` (built the same way). A job id, an error text or an address can reach the page only
//! as escaped text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use std::fmt::{self, Display, Write};

/// HTML that is safe to send as it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Markup(String);

impl Markup {
    pub fn new() -> Self {
        Markup::default()
    }
    /// Markup from this module's source.
    pub fn raw(&mut self, s: &'static str) -> &mut Self {
        self.0.push_str(s);
        self
    }
    /// Text from anywhere, escaped.
    pub fn text(&mut self, t: impl Display) -> &mut Self {
        let _ = write!(Escaper(&mut self.0), "{t}");
        self
    }
    /// Markup built elsewhere (by the same rules).
    pub fn push(&mut self, m: &Markup) -> &mut Self {
        self.0.push_str(&m.0);
        self
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    #[doc(hidden)]
    pub fn write_args(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.0.write_fmt(args);
    }
}

/// What [`html!`](crate::html) may interpolate: any `Display` value (escaped), or `Markup`
/// (as it is).
pub trait Piece {
    fn put(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl Piece for Markup {
    fn put(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: Display + ?Sized> Piece for T {
    fn put(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaper(f), "{self}")
    }
}

/// One interpolated argument of [`html!`](crate::html).
#[doc(hidden)]
pub struct Arg<'a, T: Piece + ?Sized>(pub &'a T);

impl<T: Piece + ?Sized> Display for Arg<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.put(f)
    }
}

/// Escapes `& < > " '` for element content and quoted attributes as it writes.
struct Escaper<W: Write>(W);

impl<W: Write> Write for Escaper<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '&' => self.0.write_str("&amp;")?,
                '<' => self.0.write_str("&lt;")?,
                '>' => self.0.write_str("&gt;")?,
                '"' => self.0.write_str("&quot;")?,
                '\'' => self.0.write_str("&#39;")?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `html!(out, "<td>{}</td>", value)`: append the format string (markup) to the `Markup`
/// `out`, every argument escaped (a `Markup` argument inserted as it is).
#[macro_export]
macro_rules! html {
    ($out:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {
        $out.write_args(format_args!($fmt $(, $crate::api::admin::markup::Arg(&$arg))*))
    };
}

/// A `Markup` of one `html!` call.
#[macro_export]
macro_rules! markup {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        let mut m = $crate::api::admin::markup::Markup::new();
        $crate::html!(m, $fmt $(, $arg)*);
        m
    }};
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}\
th{background:#f4f4f4}.num{text-align:right}.flash{background:#eef7ee;border:1px solid #9c9;padding:.4em}\
.bad{color:#a00}.ok{color:#070}form.inline{display:inline}input,select{font:inherit}";

/// A whole page, with the headers every admin page carries.
pub fn page(status: StatusCode, title: &str, body: &Markup) -> Response {
    let mut doc = Markup::new();
    doc.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>")
        .text(title)
        .raw(" · mailfleet</title><style>")
        .raw(STYLE)
        .raw("</style></head><body><h1>")
        .text(title)
        .raw("</h1>")
        .push(body)
        .raw("</body></html>");
    let mut r = (status, Html(doc.0)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A POST button: hidden fields, the CSRF token, one button.
pub fn button(
    action: &'static str,
    csrf: &str,
    fields: &[(&str, &str)],
    label: &'static str,
    class: &'static str,
) -> Markup {
    let mut o = crate::markup!(
        "<form class=\"inline {}\" method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        class,
        action,
        csrf
    );
    for (k, v) in fields {
        crate::html!(o, "<input type=\"hidden\" name=\"{}\" value=\"{}\">", k, v);
    }
    crate::html!(o, "<button type=\"submit\">{}</button></form>", label);
    o
}

/// What an action did, shown once after its redirect (`/admin?done=<code>`): fixed texts only,
/// so a crafted link cannot put words on the page.
pub fn flash(code: &str) -> Option<&'static str> {
    Some(match code {
        "replayed" => "Dead letter replayed: its job is back on its stream.",
        "final" => "Not replayed: the job is already final in Postgres.",
        "refused" => "Not replayed: replayed too often already, or nothing to replay.",
        "missing" => "That dead letter is gone (replayed or purged meanwhile).",
        "suppression-added" => "Suppression added.",
        "unsuppressed" => "Suppression removed.",
        "no-such-suppression" => "No such suppression.",
        "bad-address" => "Not added: that is not a valid address.",
        "bad-tenant" => "Not added: a tenant name is 1 to 64 letters, digits, '.', '_' or '-'.",
        "paused" => "Paused: every worker honours it within a second.",
        "resumed" => "Resumed.",
        "not-paused" => "That was not paused.",
        "bad-pause" => "Not paused: choose a scope and a valid name (a lane is tx or bulk).",
        _ => return None,
    })
}

/// Back to the page, with an action's flash code.
pub fn done(code: &'static str) -> Response {
    Redirect::to(&format!("/admin?done={code}")).into_response()
}

/// A page saying what failed (the error's text escaped like any other).
pub fn failed(doing: &str, e: impl Display) -> Response {
    tracing::warn!(error.message = %e, "admin: {doing} failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Failed",
        &crate::markup!(
            "<p class=\"bad\">{} failed: {}</p><p><a href=\"/admin\">Back</a></p>",
            doing,
            e
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interpolated_value_is_escaped_and_markup_is_not() {
        let m = crate::markup!("<p>{}</p>", "<script>\"x\"&'y'</script>");
        assert_eq!(
            m.as_str(),
            "<p>&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;</p>"
        );
        let inner = crate::markup!("<b>{}</b>", "<i>");
        let outer = crate::markup!("<td>{}</td>", inner);
        assert_eq!(outer.as_str(), "<td><b>&lt;i&gt;</b></td>");
        let mut t = Markup::new();
        t.raw("<h2>").text("a<b").raw("</h2>");
        assert_eq!(t.as_str(), "<h2>a&lt;b</h2>");
    }

    #[test]
    fn buttons_escape_their_fields_and_flashes_are_fixed_texts() {
        let b = button("/admin/x", "c\"srf", &[("id", "1\"><b>")], "Go", "k");
        assert!(!b.as_str().contains("\"><b>"), "{b:?}");
        assert!(b.as_str().contains("value=\"1&quot;&gt;&lt;b&gt;\""));
        assert_eq!(flash("<b>hi</b>"), None);
        assert!(flash("replayed").is_some());
    }
}
