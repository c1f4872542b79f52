//! One-click unsubscribe: bulk email carries a signed List-Unsubscribe link (RFC 8058); a valid
//! POST suppresses the address and takes it out of the schedule's audience; GET only shows the
//! button; tampered and expired links change nothing.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::config::Secret;
use mailfleet::mock::MockConfig;
use mailfleet::unsubscribe::Links;
use serde_json::Value;
use sqlx::PgPool;

fn links() -> Links {
    Links {
        base_url: "https://mail.example.com".into(),
        secret: Secret::new("unsub-secret-of-at-least-32-bytes!"),
        ttl_secs: 3600,
    }
}

#[sqlx::test]
async fn bulk_email_carries_a_one_click_link_and_transactional_email_does_not(pg: PgPool) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig {
        capture: 8,
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.unsubscribe = Some(links());
    let w = TestWorker::start(&pg, &redis, &mock.url, s).await;
    let bulk = redis.enqueue(job(Lane::Bulk, "reader@example.com")).await;
    let tx = redis.enqueue(job(Lane::Tx, "buyer@example.com")).await;
    eventually("both sent", WAIT, || async {
        let c = mock.state.counts();
        (c.contains_key(&bulk.to_string()) && c.contains_key(&tx.to_string())).then_some(())
    })
    .await;
    let body_of = |id: uuid::Uuid| -> Value {
        let c = mock
            .state
            .captured()
            .into_iter()
            .find(|c| String::from_utf8_lossy(&c.body).contains(&id.to_string()))
            .expect("captured");
        serde_json::from_slice(&c.body).unwrap()
    };
    // Bulk goes in SendGrid's batch request: its headers are its personalization's.
    let b = body_of(bulk);
    let h = &b["personalizations"][0]["headers"];
    let link = h["List-Unsubscribe"].as_str().expect("a link");
    assert!(link.starts_with("<https://mail.example.com/v1/unsubscribe/") && link.ends_with('>'));
    assert_eq!(h["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    let token = link.trim_matches(['<', '>']).rsplit('/').next().unwrap();
    let c = mailfleet::unsubscribe::verify(&links().secret, token, chrono::Utc::now().timestamp())
        .expect("the link verifies");
    assert_eq!(c.address, "reader@example.com");
    let t = body_of(tx);
    assert!(t["headers"]["List-Unsubscribe"].is_null());
    assert!(t["personalizations"][0]["headers"]["List-Unsubscribe"].is_null());
    w.stop().await;
}

#[sqlx::test]
async fn the_link_unsubscribes_on_post_only_and_refuses_tampered_or_expired_tokens(pg: PgPool) {
    // A schedule whose audience holds the reader.
    let audience: i64 =
        sqlx::query_scalar("INSERT INTO audiences (name) VALUES ('news') RETURNING id")
            .fetch_one(&pg)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO audience_members (audience_id, email) VALUES ($1, 'Reader@example.com')",
    )
    .bind(audience)
    .execute(&pg)
    .await
    .unwrap();
    let schedule: i64 = sqlx::query_scalar(
        "INSERT INTO schedules (name, cron, template, audience_id, from_addr, next_tick)
         VALUES ('weekly', '0 8 * * 1', 't', $1, 'news@example.com', now()) RETURNING id",
    )
    .bind(audience)
    .fetch_one(&pg)
    .await
    .unwrap();
    let app = mailfleet::api::unsubscribe::router(pg.clone(), links().secret);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = mailfleet::provider::http_client(2).unwrap();
    let now = chrono::Utc::now().timestamp();
    let link = links().url("reader@example.com", None, Some(schedule), now);
    let token = link.rsplit('/').next().unwrap().to_owned();
    let state = || async {
        let sup: Option<String> = sqlx::query_scalar(
            "SELECT reason FROM suppressions WHERE address = 'reader@example.com' AND tenant = ''",
        )
        .fetch_optional(&pg)
        .await
        .unwrap();
        let subscribed: bool =
            sqlx::query_scalar("SELECT subscribed FROM audience_members WHERE audience_id = $1")
                .bind(audience)
                .fetch_one(&pg)
                .await
                .unwrap();
        (sup, subscribed)
    };

    // GET shows the button and changes nothing (link scanners fetch URLs).
    let r = http
        .get(format!("{url}/v1/unsubscribe/{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("method=\"post\""));
    assert_eq!(state().await, (None, true));

    // Tampered: another address under this signature.
    let (_, sig) = token.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let forged = format!(
        "{}.{sig}",
        b64.encode(format!("v1|{}||{}|eve@example.com", now + 999, ""))
    );
    let r = http
        .post(format!("{url}/v1/unsubscribe/{forged}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Expired.
    let old = links().url("reader@example.com", None, Some(schedule), now - 7200);
    let old_token = old.rsplit('/').next().unwrap();
    let r = http
        .post(format!("{url}/v1/unsubscribe/{old_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(state().await, (None, true), "nothing changed");

    // One-click POST (RFC 8058 body).
    let r = http
        .post(format!("{url}/v1/unsubscribe/{token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(state().await, (Some("unsubscribe".into()), false));
}
