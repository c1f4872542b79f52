//! The admin page, driven in headless Chromium through ChromeDriver (W3C WebDriver over plain
//! HTTP): sign in with the token, see the cluster and a dead letter, take a screenshot, press
//! Replay, and the job is back on its stream and then sent. Forged actions (no session, no CSRF
//! token) change nothing.

use crate::support::*;
use base64::Engine;
use mailfleet::Lane;
use mailfleet::api::admin::{AdminState, router};
use mailfleet::config::Secret;
use mailfleet::mock::MockConfig;
use serde_json::{Value, json};
use sqlx::PgPool;

const TOKEN: &str = "admin-token-for-tests-0123";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one headless Chromium session; both end on drop (also when an
/// assertion fails, or Chromium would outlive the test).
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver ready", WAIT, || async {
            let r = http.get(format!("{base}/status")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r).map(|_| ())
        })
        .await;
        let profile = TempDir(
            std::env::temp_dir().join(format!("mailfleet-chromium-{}", uuid::Uuid::now_v7())),
        );
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1800", format!("--user-data-dir={}", profile.0.display())]
            }
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver JSON");
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn count(&self, css: &str) -> usize {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Wait (bounded) until the page's source contains `text`: a click does not wait for the
    /// navigation it starts.
    async fn wait_for(&self, text: &str) -> String {
        eventually(&format!("the page to show {text:?}"), WAIT, || async {
            let s = self.source().await;
            s.contains(text).then_some(s)
        })
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("base64 PNG")
    }

    async fn cookie(&self, name: &str) -> String {
        let v = self
            .call(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await;
        v["value"].as_str().unwrap_or("").to_owned()
    }

    async fn quit(self) {
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Synchronously (no runtime in Drop): DELETE the session over a plain socket, so
        // ChromeDriver closes Chromium, then stop ChromeDriver.
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            // Until the whole answer is in (ChromeDriver may keep the socket open).
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        break;
                    }
                }
            }
        }
        let _ = self.driver.start_kill();
    }
}

async fn spawn_admin(pg: &PgPool, redis: &TestRedis) -> String {
    let app = router(AdminState {
        pg: pg.clone(),
        redis: redis.pool.clone(),
        keys: redis.keys.clone(),
        token: Secret::new(TOKEN),
        secure_cookie: false,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn dead_ids(redis: &TestRedis) -> Vec<String> {
    let v: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redis.keys.dead(0))
        .arg("-")
        .arg("+")
        .query_async(&mut *redis.conn().await)
        .await
        .expect("xrange");
    v.ids.into_iter().map(|e| e.id).collect()
}

/// PNG dimensions from the IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[sqlx::test]
async fn the_admin_page_signs_in_shows_the_cluster_and_replays_a_dead_letter(pg: PgPool) {
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    // A job that dies at max attempts against a failing provider.
    let failing = TestMock::start(MockConfig {
        failure_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let mut s = settings();
    s.max_attempts = 2;
    s.retry_base_ms = 10;
    s.retry_max_ms = 20;
    let worker = TestWorker::start(&pg, &redis, &failing.url, s.clone()).await;
    let id = redis.enqueue(job(Lane::Tx, "replay-me@example.com")).await;
    eventually("the job dead-lettered", WAIT, || async {
        (redis.xlen(&redis.keys.dead(0)).await == 1
            && status_of(&pg, id).await.as_deref() == Some("dead"))
        .then_some(())
    })
    .await;
    worker.stop().await;
    sqlx::query(
        "INSERT INTO suppressions (address, tenant, reason, note) VALUES ('gone@example.com', '', 'bounce', '<b>x</b>')",
    )
    .execute(&pg)
    .await
    .unwrap();

    let url = spawn_admin(&pg, &redis).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Unauthenticated: the page sends to the login; an action is refused and changes nothing.
    let r = http.get(format!("{url}/admin")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .post(format!("{url}/admin/dlq/replay"))
        .form(&[("partition", "0"), ("id", "0-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let browser = Browser::start().await;
    browser.goto(&format!("{url}/admin")).await;
    assert!(
        browser.url().await.ends_with("/admin/login"),
        "{}",
        browser.url().await
    );
    // A wrong token first.
    browser
        .type_into("input[name=token]", "not-the-token")
        .await;
    browser.click("form button[type=submit]").await;
    browser.wait_for("Wrong token").await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("form button[type=submit]").await;
    let html = browser.wait_for("Dead letters").await;
    assert!(
        browser.url().await.ends_with("/admin"),
        "{}",
        browser.url().await
    );
    for section in [
        "Lanes",
        "Workers",
        "Scheduler",
        "Providers",
        "Pauses",
        "Schedules",
        "Dead letters",
        "Suppressions",
    ] {
        assert!(
            html.contains(&format!(">{section}</h2>")),
            "no {section} section"
        );
    }
    assert!(html.contains(&id.to_string()), "the dead job is listed");
    assert!(html.contains("max_attempts"), "with its reason");
    assert!(
        html.contains("gone@example.com") && html.contains("&lt;b&gt;x&lt;/b&gt;"),
        "suppressions, escaped"
    );
    assert!(
        !html.contains("replay-me@example.com"),
        "a dead letter's recipient is not shown"
    );

    let png = browser.screenshot().await;
    let (w, h) = png_size(&png);
    assert!(
        w >= 800 && h >= 600 && png.len() > 10_000,
        "{w}x{h}, {} bytes",
        png.len()
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&shot, &png).unwrap();

    // A forged action with the browser's session cookie but no CSRF token: 403, nothing moves.
    let session = browser.cookie("mailfleet_admin").await;
    assert!(!session.is_empty());
    let dead_id = dead_ids(&redis).await.remove(0);
    let r = http
        .post(format!("{url}/admin/dlq/replay"))
        .header("cookie", format!("mailfleet_admin={session}"))
        .form(&[("partition", "0"), ("id", dead_id.as_str()), ("csrf", "00")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 1);

    // The Replay button.
    assert_eq!(browser.count("form.replay button").await, 1);
    browser.click("form.replay button").await;
    browser.wait_for("Dead letter replayed").await;
    assert_eq!(redis.xlen(&redis.keys.dead(0)).await, 0);
    assert_eq!(
        browser.count("form.replay button").await,
        0,
        "the page no longer lists it"
    );

    // Pause and resume a lane from the page.
    browser
        .type_into("form.pause input[name=name]", "bulk")
        .await;
    browser.click("form.pause button").await;
    browser.wait_for("Paused: every worker").await;
    assert_eq!(browser.count("form.resume button").await, 1);
    browser.click("form.resume button").await;
    browser.wait_for("Resumed.").await;
    browser.quit().await;

    // The replayed job goes out once a provider works.
    let ok = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &ok.url, s).await;
    eventually("the replayed job sent", WAIT, || async {
        (status_of(&pg, id).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(ok.state.stats().received, 1);
}

async fn spawn_admin_with(pg: &PgPool, redis: &TestRedis, secure: bool) -> String {
    let app = router(AdminState {
        pg: pg.clone(),
        redis: redis.pool.clone(),
        keys: redis.keys.clone(),
        token: Secret::new(TOKEN),
        secure_cookie: secure,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn no_redirects() -> reqwest::Client {
    mailfleet::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.post(format!("{url}/admin/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap()
}

#[sqlx::test]
async fn the_session_cookie_is_secure_by_default_and_a_sign_out_ends_it_on_the_server(pg: PgPool) {
    let redis = TestRedis::new();
    let http = no_redirects();
    // By default: `__Host-`, `Secure`, `Path=/`.
    let url = spawn_admin_with(&pg, &redis, true).await;
    let r = sign_in(&http, &url).await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-mailfleet_admin="), "{set}");
    assert!(set.contains("; Secure") && set.contains("Path=/;"), "{set}");

    // The plain-HTTP opt-out; a signed-out cookie no longer works, even replayed.
    let url = spawn_admin_with(&pg, &redis, false).await;
    let r = sign_in(&http, &url).await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session = set
        .strip_prefix("mailfleet_admin=")
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let page = |cookie: String| {
        http.get(format!("{url}/admin"))
            .header("cookie", cookie)
            .send()
    };
    let r = page(format!("mailfleet_admin={session}")).await.unwrap();
    assert_eq!(r.status(), 200, "signed in");
    let csrf = mailfleet::api::admin::csrf_for(&Secret::new(TOKEN), &session);
    let r = http
        .post(format!("{url}/admin/logout"))
        .header("cookie", format!("mailfleet_admin={session}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let r = page(format!("mailfleet_admin={session}")).await.unwrap();
    assert!(
        r.status().is_redirection(),
        "the old cookie is refused: {}",
        r.status()
    );
}

#[sqlx::test]
async fn token_guesses_are_throttled_even_in_parallel(pg: PgPool) {
    let redis = TestRedis::new();
    let url = spawn_admin_with(&pg, &redis, false).await;
    let http = no_redirects();
    let answers = futures::future::join_all((0..40).map(|i| {
        http.post(format!("{url}/admin/login"))
            .form(&[("token", format!("guess-{i}"))])
            .send()
    }))
    .await;
    let codes: Vec<u16> = answers
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let wrong = codes.iter().filter(|c| **c == 401).count();
    let throttled = codes.iter().filter(|c| **c == 429).count();
    // Ten a minute; a run that straddles a minute may see two minutes' allowance.
    assert!(wrong <= 20, "{wrong} guesses were compared: {codes:?}");
    assert_eq!(wrong + throttled, 40, "{codes:?}");
    // A bearer guess counts against the same allowance.
    let r = http
        .get(format!("{url}/admin"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert!(
        [429, 303, 307].contains(&r.status().as_u16()),
        "{}",
        r.status()
    );
}
