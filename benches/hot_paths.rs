//! The hot pure functions of a worker, one email at a time: decoding and validating a stream
//! entry, parsing addresses, and rendering (inline with variables, HTML-escaped). Run with
//! `cargo bench --bench hot_paths`; the figures are in docs/performance.md.

use divan::{Bencher, black_box};
use mailfleet::domain::{Address, Email, Lane, Payload};
use mailfleet::render::{Limits, Renderer};
use mailfleet::stream::RawEntry;
use mailfleet::stream::wire::decode;

fn main() {
    divan::main();
}

fn payload_json(body_bytes: usize) -> String {
    let body: String = "Lorem ipsum dolor sit amet. "
        .chars()
        .cycle()
        .take(body_bytes)
        .collect();
    serde_json::json!({
        "to": ["ada@example.com"],
        "from": "Shop <shop@example.com>",
        "subject": "Your order 1234",
        "text": body,
    })
    .to_string()
}

fn entry(body_bytes: usize) -> RawEntry {
    RawEntry {
        lane: Lane::Tx,
        partition: 0,
        stream_tenant: None,
        entry_id: "1700000000000-0".into(),
        fields: vec![
            (b"v".to_vec(), b"1".to_vec()),
            (
                b"id".to_vec(),
                b"01890a5d-ac96-774b-bcce-b302099a8057".to_vec(),
            ),
            (b"enqueued_at".to_vec(), b"1700000000000".to_vec()),
            (b"payload".to_vec(), payload_json(body_bytes).into_bytes()),
        ],
    }
}

/// Decode and validate one entry (wire fields, UUID, JSON, addresses, header safety).
#[divan::bench(args = [512, 8192])]
fn decode_entry(b: Bencher, body_bytes: usize) {
    let e = entry(body_bytes);
    b.bench(|| decode(black_box(&e), 1 << 20).expect("valid"));
}

#[divan::bench(args = ["ada@example.com", "Ada Lovelace <ada.lovelace+orders@mail.example.co.uk>"])]
fn parse_address(s: &str) -> bool {
    Address::parse(black_box(s)).is_ok() || mailfleet::domain::Mailbox::parse(black_box(s)).is_ok()
}

/// Render an inline email with per-recipient variables and an HTML part (escaped).
#[divan::bench]
fn render_inline_with_vars(b: Bencher) {
    let renderer = Renderer::new(Limits::default());
    let payload: Payload = serde_json::from_value(serde_json::json!({
        "to": ["ada@example.com"],
        "from": "shop@example.com",
        "subject": "Hello {{ name }}, your order {{ order }}",
        "text": "Hi {{ name }},\nyour order {{ order }} of {{ items | length }} items ships today.",
        "html": "<p>Hi {{ name }},</p><ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>",
        "vars": {"name": "Ada <script>", "order": 1234, "items": ["tea", "cups", "saucers"]},
    }))
    .expect("payload");
    let email = Email::try_from(payload).expect("valid");
    b.bench(|| renderer.render(black_box(&email), None).expect("renders"));
}

/// Render an inline email without variables (sent verbatim: the common API case).
#[divan::bench]
fn render_inline_verbatim(b: Bencher) {
    let renderer = Renderer::new(Limits::default());
    let payload: Payload = serde_json::from_str(&payload_json(512)).expect("payload");
    let email = Email::try_from(payload).expect("valid");
    b.bench(|| renderer.render(black_box(&email), None).expect("renders"));
}
