//! Each adapter against the mock provider: the request's shape, auth and metadata as the
//! vendor documents them, and the classification of the vendor's error answers. Then failover
//! and the breaker through a real worker.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::config::{
    BreakerConfig, ProviderConfig, ProviderKind, Routes, Secret, SendConfig, SmtpTls,
};
use mailfleet::domain::{Email, JobId, Payload};
use mailfleet::mock::MockConfig;
use mailfleet::provider::{ErrorClass, Message, Provider, Providers, http_client};
use mailfleet::render::{Limits, Rendered, Renderer};
use mailfleet::store::emails;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

fn email() -> Email {
    let p: Payload = serde_json::from_value(json!({
        "to": ["Ada <ada@example.com>", "bob@example.org"],
        "cc": ["carol@example.net"],
        "from": "Shop <shop@example.com>",
        "reply_to": "help@example.com",
        "subject": "Your order",
        "text": "plain body",
        "html": "<p>html body</p>",
        "headers": {"X-Order": "42"},
        "tags": ["orders"]
    }))
    .expect("payload");
    Email::try_from(p).expect("valid email")
}

fn rendered(e: &Email) -> Rendered {
    Renderer::new(Limits::default())
        .render(e, None)
        .expect("renders")
}

fn config(kind: ProviderKind, url: &str) -> ProviderConfig {
    let mut c = ProviderConfig::new(format!("{kind:?}").to_lowercase(), kind, url);
    c.api_key = Secret::new("the-secret");
    c.timeout_ms = 3_000;
    match kind {
        ProviderKind::Ses => {
            c.key_id = Some("AKIDMAILFLEET".into());
            c.region = Some("eu-west-1".into());
            c.configuration_set = Some("tracking".into());
        }
        ProviderKind::Mailgun => c.domain = Some("mg.example.com".into()),
        ProviderKind::Smtp => {
            let (host, port) = url.rsplit_once(':').expect("host:port");
            c.host = Some(host.into());
            c.port = Some(port.parse().expect("port"));
            c.tls = SmtpTls::None;
            c.key_id = Some("smtp-user".into());
        }
        _ => {}
    }
    c
}

fn adapter(c: ProviderConfig) -> Arc<dyn Provider> {
    let client = http_client(4).expect("client");
    let p = Providers::from_config(&SendConfig::of(vec![c]), &client, &client)
        .expect("provider builds");
    p.slot(0).provider.clone()
}

async fn send(
    p: &dyn Provider,
    id: JobId,
) -> Result<mailfleet::provider::Accepted, mailfleet::provider::SendError> {
    let e = email();
    let r = rendered(&e);
    p.send(Message {
        job_id: id,
        email: &e,
        rendered: &r,
    })
    .await
}

fn capture() -> MockConfig {
    MockConfig {
        capture: 8,
        ses_secret: Some("the-secret".into()),
        ..MockConfig::default()
    }
}

fn header(c: &mailfleet::mock::Captured, name: &str) -> String {
    c.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn sendgrid_sends_the_documented_request() {
    let mock = TestMock::start(capture()).await;
    let p = adapter(config(ProviderKind::Sendgrid, &mock.url));
    let id = JobId::new();
    let acc = send(p.as_ref(), id).await.expect("accepted");
    assert_eq!(acc.http_status, 202);
    assert!(acc.message_id.is_some(), "X-Message-Id is recorded");
    let c = &mock.state.captured()[0];
    assert_eq!(c.path, "/v3/mail/send");
    assert_eq!(header(c, "authorization"), "Bearer the-secret");
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["custom_args"]["mailfleet_id"], id.to_string());
    assert_eq!(
        v["personalizations"][0]["to"][0]["email"],
        "ada@example.com"
    );
    assert_eq!(v["personalizations"][0]["to"][0]["name"], "Ada");
    assert_eq!(
        v["content"][0]["type"], "text/plain",
        "text/plain must come first"
    );
    assert_eq!(v["headers"]["X-Order"], "42");
    assert_eq!(mock.state.counts()[&id.to_string()], 1);
}

#[tokio::test]
async fn ses_signs_with_sigv4_and_tags_the_job() {
    let mock = TestMock::start(capture()).await;
    let p = adapter(config(ProviderKind::Ses, &mock.url));
    let id = JobId::new();
    // The mock recomputes the signature with the secret; a wrong one is a 403.
    let acc = send(p.as_ref(), id).await.expect("accepted");
    assert_eq!(acc.http_status, 200);
    assert!(acc.message_id.is_some(), "MessageId is recorded");
    let c = &mock.state.captured()[0];
    assert_eq!(c.path, "/v2/email/outbound-emails");
    let auth = header(c, "authorization");
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDMAILFLEET/")
            && auth.contains("/eu-west-1/ses/aws4_request")
            && auth.contains("SignedHeaders=content-type;host;x-amz-date"),
        "{auth}"
    );
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["FromEmailAddress"], "\"Shop\" <shop@example.com>");
    assert_eq!(v["Destination"]["ToAddresses"][1], "bob@example.org");
    assert_eq!(v["Destination"]["CcAddresses"][0], "carol@example.net");
    assert_eq!(v["Content"]["Simple"]["Subject"]["Data"], "Your order");
    assert_eq!(
        v["Content"]["Simple"]["Body"]["Html"]["Data"],
        "<p>html body</p>"
    );
    assert_eq!(v["Content"]["Simple"]["Headers"][0]["Name"], "X-Order");
    assert_eq!(
        v["EmailTags"][0],
        json!({"Name": "mailfleet_id", "Value": id.to_string()})
    );
    assert_eq!(v["ConfigurationSetName"], "tracking");

    // Signed with another secret: SES refuses it, and that is an account problem.
    let mut wrong = config(ProviderKind::Ses, &mock.url);
    wrong.api_key = Secret::new("not-the-secret");
    let e = send(adapter(wrong).as_ref(), JobId::new())
        .await
        .expect_err("refused");
    assert_eq!((e.class, e.http_status), (ErrorClass::QuotaAuth, Some(403)));
    assert!(e.message.contains("SignatureDoesNotMatch"), "{}", e.message);
}

#[tokio::test]
async fn mailgun_posts_form_fields_with_basic_auth() {
    let mock = TestMock::start(capture()).await;
    let p = adapter(config(ProviderKind::Mailgun, &mock.url));
    let id = JobId::new();
    let acc = send(p.as_ref(), id).await.expect("accepted");
    assert!(
        acc.message_id
            .as_deref()
            .is_some_and(|m| m.ends_with("@mg.example.com>"))
    );
    let c = &mock.state.captured()[0];
    assert_eq!(c.path, "/v3/mg.example.com/messages");
    // base64("api:the-secret")
    assert_eq!(header(c, "authorization"), "Basic YXBpOnRoZS1zZWNyZXQ=");
    let fields: Vec<(String, String)> = form_urlencoded::parse(&c.body).into_owned().collect();
    let all = |k: &str| -> Vec<&str> {
        fields
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(all("to"), ["\"Ada\" <ada@example.com>", "bob@example.org"]);
    assert_eq!(all("v:mailfleet_id"), [id.to_string().as_str()]);
    assert_eq!(all("h:X-Order"), ["42"]);
    assert_eq!(all("h:Reply-To"), ["help@example.com"]);
    assert_eq!(all("o:tag"), ["orders"]);
    assert_eq!(all("text"), ["plain body"]);

    let mut anon = config(ProviderKind::Mailgun, &mock.url);
    anon.api_key = Secret::default();
    let e = send(adapter(anon).as_ref(), JobId::new())
        .await
        .expect_err("refused");
    assert_eq!((e.class, e.http_status), (ErrorClass::QuotaAuth, Some(401)));
}

#[tokio::test]
async fn postmark_sends_the_server_token_and_metadata() {
    let mock = TestMock::start(capture()).await;
    let p = adapter(config(ProviderKind::Postmark, &mock.url));
    let id = JobId::new();
    let acc = send(p.as_ref(), id).await.expect("accepted");
    assert!(acc.message_id.is_some(), "MessageID is recorded");
    let c = &mock.state.captured()[0];
    assert_eq!(c.path, "/email");
    assert_eq!(header(c, "x-postmark-server-token"), "the-secret");
    let v: Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["To"], "\"Ada\" <ada@example.com>, bob@example.org");
    assert_eq!(v["Metadata"]["mailfleet_id"], id.to_string());
    assert_eq!(v["MessageStream"], "outbound");
    assert_eq!(v["Tag"], "orders");
    assert_eq!(v["TextBody"], "plain body");

    let mut anon = config(ProviderKind::Postmark, &mock.url);
    anon.api_key = Secret::default();
    let e = send(adapter(anon).as_ref(), JobId::new())
        .await
        .expect_err("refused");
    assert_eq!(
        e.class,
        ErrorClass::QuotaAuth,
        "ErrorCode 10: {}",
        e.message
    );
}

#[tokio::test]
async fn smtp_delivers_through_the_pool_and_classifies_replies() {
    let mock = TestMock::start(capture()).await;
    let p = adapter(config(ProviderKind::Smtp, &mock.smtp));
    let ids: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
    for &id in &ids {
        let acc = send(p.as_ref(), id).await.expect("accepted");
        assert_eq!(acc.http_status, 250);
        assert!(acc.message_id.is_some(), "the queued-as id is recorded");
    }
    let counts = mock.state.counts();
    assert!(
        ids.iter().all(|id| counts.get(&id.to_string()) == Some(&1)),
        "X-Mailfleet-Id carried each job"
    );
    assert_eq!(mock.state.stats().by_dialect["smtp"], 3);
    let head = String::from_utf8_lossy(&mock.state.captured()[0].body).to_string();
    assert!(
        head.contains(&format!("Message-ID: <{}@example.com>", ids[0])),
        "the message id names the sender's domain: {head}"
    );

    // A recipient the server refuses with 550: permanent.
    let p2: Payload = serde_json::from_value(json!({
        "to": ["reject-me@example.com"], "from": "shop@example.com", "subject": "s", "text": "t"
    }))
    .unwrap();
    let e2 = Email::try_from(p2).unwrap();
    let r2 = rendered(&e2);
    let err = p
        .send(Message {
            job_id: JobId::new(),
            email: &e2,
            rendered: &r2,
        })
        .await
        .expect_err("refused");
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(
        !err.message.contains("reject-me@"),
        "no address in the error: {}",
        err.message
    );

    // Bad credentials: 535, an account problem.
    let mut wrong = config(ProviderKind::Smtp, &mock.smtp);
    wrong.api_key = Secret::new("wrong");
    let err = send(adapter(wrong).as_ref(), JobId::new())
        .await
        .expect_err("refused");
    assert_eq!(err.class, ErrorClass::QuotaAuth, "{}", err.message);

    // Credentials set for a server that offers no AUTH: the configuration is wrong, not the
    // email (it was once marked failed for good). Quota/auth: the breaker opens, jobs wait.
    let no_auth = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let no_auth_addr = no_auth.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        while let Ok((sock, _)) = no_auth.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 plain.example ESMTP\r\n").await;
                while let Ok(Some(l)) = lines.next_line().await {
                    let reply: &[u8] = if l.starts_with("EHLO") {
                        b"250-plain.example\r\n250 8BITMIME\r\n"
                    } else if l.starts_with("QUIT") {
                        b"221 bye\r\n"
                    } else {
                        b"502 not here\r\n"
                    };
                    if w.write_all(reply).await.is_err() || l.starts_with("QUIT") {
                        break;
                    }
                }
            });
        }
    });
    let err = send(
        adapter(config(ProviderKind::Smtp, &no_auth_addr)).as_ref(),
        JobId::new(),
    )
    .await
    .expect_err("no mechanism");
    assert_eq!(err.class, ErrorClass::QuotaAuth, "{}", err.message);

    // Nobody listening: nothing was sent, transient.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = send(
        adapter(config(ProviderKind::Smtp, &closed)).as_ref(),
        JobId::new(),
    )
    .await
    .expect_err("no server");
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);
}

#[tokio::test]
async fn vendor_faults_are_classified_for_every_dialect() {
    // 503 for everyone.
    let down = TestMock::start(MockConfig {
        failure_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    // Over a 1-request window: the second request is a 429 with the vendor's headers.
    let limited = TestMock::start(MockConfig {
        rate_limit: Some(mailfleet::mock::RateLimit {
            limit: 1,
            window: Duration::from_secs(30),
        }),
        ..MockConfig::default()
    })
    .await;
    // Accepted, then the connection resets: ambiguous.
    let dropping = TestMock::start(MockConfig {
        drop_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    for kind in [
        ProviderKind::Sendgrid,
        ProviderKind::Ses,
        ProviderKind::Mailgun,
        ProviderKind::Postmark,
    ] {
        let e = send(adapter(config(kind, &down.url)).as_ref(), JobId::new())
            .await
            .expect_err("503");
        assert_eq!(
            (e.class, e.http_status),
            (ErrorClass::Transient, Some(503)),
            "{kind:?}"
        );

        let p = adapter(config(kind, &limited.url));
        send(p.as_ref(), JobId::new())
            .await
            .expect("the first fits");
        let e = send(p.as_ref(), JobId::new()).await.expect_err("429");
        assert_eq!(
            (e.class, e.http_status),
            (ErrorClass::Transient, Some(429)),
            "{kind:?}"
        );
        if kind != ProviderKind::Ses {
            assert!(
                e.retry_after.is_some_and(|d| d >= Duration::from_secs(1)),
                "{kind:?} says when to come back"
            );
        }

        let e = send(adapter(config(kind, &dropping.url)).as_ref(), JobId::new())
            .await
            .expect_err("reset");
        assert_eq!(e.class, ErrorClass::Ambiguous, "{kind:?}: {}", e.message);
    }
    let s = limited.state.stats();
    assert_eq!(
        (s.rate_limited, s.max_window_count),
        (4, 2),
        "one over, per dialect"
    );
    assert_eq!(dropping.state.stats().dropped, 4);
}

/// Two providers named `<prefix>-primary` and `<prefix>-secondary` (metrics are per process:
/// each test its own names).
fn two_providers(prefix: &str, primary: &str, secondary: &str) -> SendConfig {
    let mut a = config(ProviderKind::Sendgrid, primary);
    a.name = format!("{prefix}-primary");
    let mut b = config(ProviderKind::Postmark, secondary);
    b.name = format!("{prefix}-secondary");
    SendConfig {
        providers: vec![a, b],
        routes: Routes::default(),
        breaker: BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            window_ms: 10_000,
            open_ms: 300,
        },
    }
}

async fn statuses(pg: &PgPool) -> Vec<(String, Option<String>, i64)> {
    sqlx::query_as("SELECT status, provider, count(*) FROM emails GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(pg)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn a_failing_primary_fails_over_and_traffic_returns_when_it_recovers(pg: PgPool) {
    let redis = TestRedis::new();
    // Long enough that the first 30 are sent within it even on a loaded machine; the test
    // waits for its end rather than sleeping a guess.
    let outage = Duration::from_secs(8);
    let outage_ends = tokio::time::Instant::now() + outage;
    let primary = TestMock::start(MockConfig {
        outage_after: Duration::ZERO,
        outage_for: outage,
        ..MockConfig::default()
    })
    .await;
    let secondary = TestMock::start(MockConfig::default()).await;
    let w = TestWorker::start_config(
        &pg,
        &redis,
        &redis.url,
        two_providers("fo", &primary.url, &secondary.url),
        settings(),
    )
    .await;
    for i in 0..30 {
        redis
            .enqueue(job(Lane::Tx, &format!("u{i}@example.com")))
            .await;
    }
    eventually("the first 30 are sent", Duration::from_secs(20), || async {
        let s = statuses(&pg).await;
        (s.iter().filter(|r| r.0 == "sent").map(|r| r.2).sum::<i64>() == 30).then_some(())
    })
    .await;
    assert!(
        tokio::time::Instant::now() < outage_ends,
        "the first 30 took longer than the outage; the assertions below would not hold"
    );
    let s = statuses(&pg).await;
    assert!(
        s.contains(&("sent".into(), Some("fo-secondary".into()), 30)),
        "during the outage every email went to the secondary: {s:?}"
    );
    let m = mailfleet::metrics::render();
    assert!(
        metric(
            &m,
            "mailfleet_provider_failovers_total{from=\"fo-primary\",to=\"fo-secondary\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "failovers counted"
    );
    assert_eq!(
        primary.state.stats().received,
        0,
        "the primary took nothing"
    );

    // After the outage the breaker's probe succeeds and traffic returns to the primary. Sends
    // that arrive together while the breaker is half-open go to the secondary (one probe at a
    // time), so send one at a time until the probe has closed it; how many that takes depends
    // on how the reader batched them, which a loaded machine changes.
    tokio::time::sleep_until(outage_ends + Duration::from_millis(100)).await;
    let breaker = || {
        metric(
            &mailfleet::metrics::render(),
            "mailfleet_provider_breaker_state{provider=\"fo-primary\"}",
        )
    };
    let mut probes = 0;
    while breaker() != Some(0.0) {
        assert!(probes < 20, "the breaker never closed after the outage");
        probes += 1;
        let id = redis
            .enqueue(job(Lane::Tx, &format!("p{probes}@example.com")))
            .await;
        eventually("the probe job sent", Duration::from_secs(20), || async {
            (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
        })
        .await;
    }
    let before = primary.state.stats().received;
    for i in 0..30 {
        redis
            .enqueue(job(Lane::Tx, &format!("v{i}@example.com")))
            .await;
    }
    eventually(
        "the primary takes the traffic again",
        Duration::from_secs(20),
        || async { (primary.state.stats().received >= before + 30).then_some(()) },
    )
    .await;
    eventually("all sent", Duration::from_secs(20), || async {
        let s = statuses(&pg).await;
        (s.iter().filter(|r| r.0 == "sent").map(|r| r.2).sum::<i64>() == 60 + probes).then_some(())
    })
    .await;
    assert_eq!(breaker(), Some(0.0), "closed again");
    w.stop().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn with_every_breaker_open_jobs_wait_without_using_attempts(pg: PgPool) {
    let redis = TestRedis::new();
    // Both answer 401: quota/auth opens each breaker at once.
    let mut cfg = two_providers("dfr", "http://127.0.0.1:9", "http://127.0.0.1:9");
    let refusing = TestMock::start(MockConfig::default()).await;
    for p in &mut cfg.providers {
        p.base_url = refusing.url.clone();
        p.api_key = Secret::default();
    }
    cfg.breaker.open_ms = 60_000;
    let mut s = settings();
    s.max_attempts = 2;
    s.retry_base_ms = 10;
    let w = TestWorker::start_config(&pg, &redis, &redis.url, cfg, s).await;
    let first = redis.enqueue(job(Lane::Tx, "a@example.com")).await;
    // The first job meets both refusals (one attempt); the breakers are now open.
    eventually("both breakers open", Duration::from_secs(10), || async {
        let m = mailfleet::metrics::render();
        let open = |p: &str| {
            metric(
                &m,
                &format!("mailfleet_provider_breaker_state{{provider=\"{p}\"}}"),
            ) == Some(2.0)
        };
        (open("dfr-primary") && open("dfr-secondary")).then_some(())
    })
    .await;
    let ids: Vec<uuid::Uuid> = {
        let mut v = vec![first];
        for i in 0..5 {
            v.push(
                redis
                    .enqueue(job(Lane::Tx, &format!("b{i}@example.com")))
                    .await,
            );
        }
        v
    };
    // A job between two deferrals is briefly `sending` (promoted and claimed again): wait
    // until every one rests in `retrying` with its deferral logged. A job dead or failed
    // never gets there, so this times out on the bug it guards against.
    eventually(
        "deferred attempts are logged and every job waits",
        Duration::from_secs(10),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(DISTINCT email_id) FROM email_attempts WHERE outcome = 'deferred'",
            )
            .fetch_one(&pg)
            .await
            .unwrap();
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM emails WHERE id = ANY($1) AND status = 'retrying'",
            )
            .bind(&ids)
            .fetch_one(&pg)
            .await
            .unwrap();
            (n >= 5 && waiting == ids.len() as i64).then_some(())
        },
    )
    .await;
    let rows: Vec<(uuid::Uuid, String, i32)> =
        sqlx::query_as("SELECT id, status, attempts FROM emails WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pg)
            .await
            .unwrap();
    for (id, status, attempts) in rows {
        assert_eq!(
            status, "retrying",
            "nothing dead or failed while every breaker is open"
        );
        let expected = if id == first { 1 } else { 0 };
        assert!(
            attempts <= expected,
            "a deferral gives its attempt back ({attempts})"
        );
    }
    assert_eq!(refusing.state.stats().received, 0);
    w.stop().await;
}

/// Every attempt row of the jobs: (provider, outcome, http status), in order.
async fn attempt_log(pg: &PgPool) -> Vec<(Option<String>, String, Option<i32>)> {
    sqlx::query_as(
        "SELECT provider, outcome, http_status FROM email_attempts ORDER BY email_id, started_at, id",
    )
    .fetch_all(pg)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "./migrations")]
async fn a_gateway_error_after_the_provider_took_the_email_is_ambiguous_and_never_fails_over(
    pg: PgPool,
) {
    let redis = TestRedis::new();
    // The primary takes (and logs) every email, then answers 500, 502 or 504.
    let primary = TestMock::start(MockConfig {
        accepted_error_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let secondary = TestMock::start(MockConfig::default()).await;
    let mut cfg = two_providers("gw", &primary.url, &secondary.url);
    // The breaker must not open and route around the primary: this is about the walk.
    cfg.breaker.consecutive_failures = 1_000;
    cfg.breaker.min_requests = 1_000;
    let mut s = settings();
    s.max_attempts = 2;
    s.retry_base_ms = 10;
    s.retry_max_ms = 20;
    let w = TestWorker::start_config(&pg, &redis, &redis.url, cfg, s).await;
    for i in 0..6 {
        redis
            .enqueue(job(Lane::Tx, &format!("g{i}@example.com")))
            .await;
    }
    eventually(
        "every job ends unknown after its two attempts",
        Duration::from_secs(20),
        || async { (count_status(&pg, "unknown").await == 6).then_some(()) },
    )
    .await;
    assert_eq!(
        secondary.state.stats().received,
        0,
        "an answer that may follow acceptance never fails over"
    );
    let log = attempt_log(&pg).await;
    assert_eq!(
        log.len(),
        12,
        "two attempts each, each with its row: {log:?}"
    );
    for (provider, outcome, http) in &log {
        assert_eq!(provider.as_deref(), Some("gw-primary"));
        assert_eq!(
            outcome, "unknown",
            "logged ambiguous, so a duplicate is counted"
        );
        assert!(matches!(http, Some(500 | 502 | 504)), "{http:?}");
    }
    let stats = primary.state.stats();
    assert_eq!(stats.received, 12, "the mock logged every request it took");
    let ambiguous = emails::ambiguous_attempts(&pg, &all_ids(&pg).await)
        .await
        .unwrap();
    assert!(
        stats.duplicates as i64 <= ambiguous,
        "duplicates {} within the counted ambiguous attempts {ambiguous}",
        stats.duplicates
    );
    w.stop().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_failed_over_attempt_keeps_a_row_for_every_provider_it_tried(pg: PgPool) {
    let redis = TestRedis::new();
    // 503: proven not taken, so the route moves on to the secondary.
    let primary = TestMock::start(MockConfig {
        failure_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let secondary = TestMock::start(MockConfig::default()).await;
    let mut cfg = two_providers("fov", &primary.url, &secondary.url);
    cfg.breaker.consecutive_failures = 1_000;
    cfg.breaker.min_requests = 1_000;
    let w = TestWorker::start_config(&pg, &redis, &redis.url, cfg, settings()).await;
    for i in 0..5 {
        redis
            .enqueue(job(Lane::Tx, &format!("f{i}@example.com")))
            .await;
    }
    eventually("all sent", Duration::from_secs(20), || async {
        (count_status(&pg, "sent").await == 5).then_some(())
    })
    .await;
    let log = attempt_log(&pg).await;
    let expected: Vec<(Option<String>, String, Option<i32>)> = (0..5)
        .flat_map(|_| {
            [
                (Some("fov-primary".into()), "failed_over".into(), Some(503)),
                (Some("fov-secondary".into()), "sent".into(), Some(200)),
            ]
        })
        .collect();
    assert_eq!(log, expected);
    assert_eq!(secondary.state.stats().received, 5);
    w.stop().await;
}

async fn all_ids(pg: &PgPool) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT id FROM emails")
        .fetch_all(pg)
        .await
        .unwrap()
}

/// A SendGrid-shaped server that answers its first `refuse` requests 429 with a Retry-After
/// of about 3,000 years, and 202 after that; returns its URL and its request count.
async fn throttler(refuse: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/v3/mail/send",
        axum::routing::post(move || {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) < refuse {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "99999999999")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    (StatusCode::ACCEPTED, [("x-message-id", "t-1")], "").into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[sqlx::test(migrations = "./migrations")]
async fn a_retry_after_of_centuries_is_cut_to_the_configured_cap(pg: PgPool) {
    let redis = TestRedis::new();
    let (url, hits) = throttler(1).await;
    let mut s = settings();
    s.max_retry_after = Duration::from_secs(1);
    s.retry_base_ms = 10;
    let w = TestWorker::start(&pg, &redis, &url, s).await;
    let id = redis.enqueue(job(Lane::Tx, "ada@example.com")).await;
    // Without the cap the retry would be due in the year 5195.
    eventually(
        "sent on its second attempt",
        Duration::from_secs(20),
        || async { (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(()) },
    )
    .await;
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    w.stop().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn a_rate_limited_provider_blocked_by_a_429_is_skipped_not_waited_for(pg: PgPool) {
    let redis = TestRedis::new();
    let (url, hits) = throttler(usize::MAX).await;
    let secondary = TestMock::start(MockConfig::default()).await;
    let mut cfg = two_providers("blk", &url, &secondary.url);
    cfg.providers[0].limit = Some(mailfleet::config::Limit {
        limit: 100,
        window_ms: 1000,
        tenant_limit: None,
        margin_ms: 30,
        cold_margin_ms: 100,
        spread_ms: 0,
    });
    let mut s = settings();
    s.max_retry_after = Duration::from_secs(60);
    s.permit_wait_max = Duration::from_millis(500);
    let w = TestWorker::start_config(&pg, &redis, &redis.url, cfg, s).await;
    // The first job's 429 sets the cluster-wide back-off (cut to 60 s) and fails over.
    let first = redis.enqueue(job(Lane::Tx, "ada@example.com")).await;
    eventually(
        "the first sent by the secondary",
        Duration::from_secs(20),
        || async { (status_of(&pg, first).await.as_deref() == Some("sent")).then_some(()) },
    )
    .await;
    let block = format!("{}:rl:{{blk-primary}}:block", redis.keys.prefix());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&block)
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    assert!(
        (1..=60_000).contains(&pttl),
        "the back-off is the capped Retry-After, not centuries: {pttl} ms"
    );
    // While the primary is blocked, new jobs do not wait 60 s for its permit holding a send
    // slot: they go to the secondary at once, and the primary sees no request.
    let ids: Vec<_> = futures::future::join_all(
        (0..5).map(|i| redis.enqueue(job(Lane::Tx, &format!("b{i}@example.com")))),
    )
    .await;
    for id in ids {
        eventually("sent by the secondary", Duration::from_secs(20), || async {
            (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
        })
        .await;
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    w.stop().await;
}
