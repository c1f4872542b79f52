//! An operator's job-level commands against a live worker: `email list`, `email cancel` (and
//! `DELETE /v1/emails/{id}` is in tests/it/api.rs), `email retry`, `email show <key>`.

use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use std::time::Duration;

async fn run(pg: &PgPool, redis: &TestRedis, args: &[&str]) -> (bool, String, String) {
    let out = mailfleet(pg, redis).args(args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[sqlx::test]
async fn a_waiting_email_is_cancelled_and_never_sent_and_a_failed_one_is_retried_once_fixed(
    pg: PgPool,
) {
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;
    let worker = TestWorker::start(&pg, &redis, &mock.url, settings()).await;
    let producer = redis.producer().with_ledger(pg.clone());

    // Due in two seconds, cancelled now: its entry comes out of the delayed set, and the
    // worker acks it without a send.
    let mut soon = job(Lane::Bulk, "soon@example.com");
    soon.payload.send_at = Some(chrono::Utc::now() + chrono::Duration::seconds(2));
    // Its template does not exist yet: it fails for good.
    let mut broken = job(Lane::Bulk, "broken@example.com");
    broken.idempotency_key = Some("welcome-42".into());
    broken.payload.subject = None;
    broken.payload.text = None;
    broken.payload.template = Some("welcome".into());
    let now = job(Lane::Tx, "now@example.com");
    let ids: Vec<String> = producer
        .send_many(vec![soon, broken, now])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    let (soon, broken, now) = (&ids[0], &ids[1], &ids[2]);
    let (ok, out, err) = run(&pg, &redis, &["email", "cancel", soon]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("cancelled"), "{out}");
    eventually(
        "the broken one fails and the tx one is sent",
        WAIT,
        || async {
            (status_of(&pg, broken.parse().unwrap()).await.as_deref() == Some("failed")
                && status_of(&pg, now.parse().unwrap()).await.as_deref() == Some("sent"))
            .then_some(())
        },
    )
    .await;
    // A sent email is final: not cancelled, and the command fails saying why.
    let (ok, out, _) = run(&pg, &redis, &["email", "cancel", now]).await;
    assert!(!ok);
    assert!(out.contains("it is sent (final)"), "{out}");

    // `email list --status failed` shows it, without any address.
    let (ok, out, err) = run(
        &pg,
        &redis,
        &["email", "list", "--status", "failed", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["id"], broken.as_str());
    assert!(!out.contains("@example.com"), "{out}");
    let (ok, _, err) = run(&pg, &redis, &["email", "list", "--status", "nosuch"]).await;
    assert!(!ok && err.contains("the statuses are"), "{err}");
    // `email show` by idempotency key.
    let (ok, out, err) = run(&pg, &redis, &["email", "show", "welcome-42", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["email"]["id"], broken.as_str());

    // The cause fixed, `email retry` sends it.
    mailfleet::store::templates::put(&pg, "welcome", "Hello", None, Some("Welcome"))
        .await
        .unwrap();
    let (ok, out, err) = run(
        &pg,
        &redis,
        &["email", "retry", "--all-failed", "--dry-run"],
    )
    .await;
    assert!(ok && out.contains("would retry 1 of 1"), "{out}{err}");
    let (ok, out, err) = run(&pg, &redis, &["email", "retry", broken]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("retried 1 of 1"), "{out}");
    eventually("the retried email is sent", WAIT, || async {
        (status_of(&pg, broken.parse().unwrap()).await.as_deref() == Some("sent")).then_some(())
    })
    .await;
    // A sent one is not retried.
    let (ok, _, err) = run(&pg, &redis, &["email", "retry", broken]).await;
    assert!(!ok && err.contains("not retried"), "{err}");

    // Past the cancelled one's send_at, and then some: it was never sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually("the cancelled entry is read and acked", WAIT, || async {
        (redis.pending(Lane::Bulk).await == 0).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(
        status_of(&pg, soon.parse().unwrap()).await.as_deref(),
        Some("cancelled")
    );
    let stats = mock.state.stats();
    assert_eq!(
        stats.unique, 2,
        "the tx email and the retried one: {stats:?}"
    );
    assert_eq!(stats.duplicates, 0);
    // `status` counts them: today and over every row kept.
    let (ok, out, err) = run(&pg, &redis, &["status", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["totals"]["sent"],
        serde_json::json!({"today": 2, "all": 2}),
        "{v}"
    );
    assert_eq!(v["totals"]["cancelled"]["all"], 1, "{v}");
    let (ok, out, _) = run(&pg, &redis, &["status"]).await;
    assert!(
        ok && out.contains("today (UTC): ") && out.contains("sent 2"),
        "{out}"
    );
}

#[sqlx::test]
async fn run_now_fans_a_schedule_out_once_outside_its_ticks_and_listings_speak_json(pg: PgPool) {
    use crate::scheduler::{audience_of, candidate, definition, digest_template};
    let redis = TestRedis::new();
    redis.ensure_groups().await;
    digest_template(&pg).await;
    audience_of(&pg, "team", 3).await;
    // Yearly: no regular tick comes during the test.
    let s = mailfleet::scheduler::admin::add(&pg, &definition("yearly", "0 0 1 1 *", "team"))
        .await
        .unwrap();
    let (ok, out, err) = run(&pg, &redis, &["schedule", "run-now", "yearly"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("for 3 member(s)"), "{out}");
    let (token, handle) = candidate(&pg, &redis, "runner/1", 2000);
    let done = eventually("the leader fans the run out", WAIT, || async {
        mailfleet::store::schedules::runs(&pg, s.id, 10)
            .await
            .ok()?
            .into_iter()
            .find(|r| r.status == "done")
    })
    .await;
    token.cancel();
    handle.await.unwrap();
    assert_eq!((done.total, done.enqueued), (3, 3));
    assert_eq!(redis.xlen(&redis.keys.lane(0, Lane::Bulk)).await, 3);
    let after = mailfleet::store::schedules::get(&pg, "yearly")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after.next_tick, s.next_tick,
        "its regular ticks are unchanged"
    );
    let (ok, _, err) = run(&pg, &redis, &["schedule", "run-now", "nosuch"]).await;
    assert!(!ok && err.contains("no schedule named"), "{err}");

    // Listings as JSON lines.
    for (args, field, want) in [
        (["schedule", "list", "--json"], "name", "yearly"),
        (["audience", "list", "--json"], "name", "team"),
        (["template", "list", "--json"], "name", "digest"),
    ] {
        let (ok, out, err) = run(&pg, &redis, &args).await;
        assert!(ok, "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert_eq!(v[field], want, "{args:?}: {out}");
    }
}

#[sqlx::test]
async fn help_puts_the_global_flags_under_their_own_heading_and_no_env_looks_empty(pg: PgPool) {
    let redis = TestRedis::new();
    for args in [
        &["--help"][..],
        &["worker", "--help"],
        &["email", "list", "--help"],
    ] {
        let (ok, out, err) = run(&pg, &redis, args).await;
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains("Global options:"), "{args:?}: {out}");
        // `[env: NAME=]` reads as "set to empty"; names only, never a value.
        assert!(!out.contains("=]"), "{args:?}: {out}");
        assert!(out.contains("[env: MAILFLEET_DATABASE_URL]"), "{args:?}");
    }
}

#[sqlx::test]
async fn the_readmes_sample_files_import_as_written(pg: PgPool) {
    let redis = TestRedis::new();
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        &["send", "--file", "docs/examples/jobs.jsonl"][..],
        &["suppress", "import", "docs/examples/suppressions.csv"],
        &["audience", "create", "customers"],
        &[
            "audience",
            "import",
            "customers",
            "docs/examples/customers.csv",
        ],
    ] {
        let out = mailfleet(&pg, &redis)
            .current_dir(root)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Three jobs (one for later), three suppressions, three members (one unsubscribed).
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(queued, 3);
    let suppressed: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&pg)
        .await
        .unwrap();
    assert_eq!(suppressed, 3);
    let (members, subscribed): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE subscribed) FROM audience_members")
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!((members, subscribed), (3, 2));
}

/// The `mailfleet` commands of a Markdown file's shell blocks, as argument lists: continuation
/// lines joined, `&&` split, comments and leading `VAR=value` dropped, optional `[...]` parts
/// left out, and a `<placeholder>` kept as one argument.
fn commands_in(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_shell = false;
    let mut joined = String::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_shell = !in_shell && (line == "```sh" || line == "```bash");
            continue;
        }
        if !in_shell {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            continue;
        }
        joined.push_str(line);
        let full = std::mem::take(&mut joined);
        for part in full.split("&&") {
            let words = shell_words(part);
            let words: Vec<String> = words
                .into_iter()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'))
                .collect();
            let Some(first) = words.first() else { continue };
            if first == "mailfleet" || first.ends_with("/mailfleet") {
                out.push((full.trim().to_owned(), words));
            }
        }
    }
    out
}

/// Split like a shell (quotes, a `#` comment), then drop `[...]` groups and join `<...>`.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quote, mut has) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, '#') if cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                has = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        words.push(cur);
    }
    let (mut out, mut depth, mut angle) = (Vec::new(), 0i32, None::<String>);
    for w in words {
        if let Some(a) = angle.as_mut() {
            a.push('_');
            a.push_str(&w);
            if w.contains('>') {
                out.push(angle.take().unwrap_or_default());
            }
            continue;
        }
        let opens = w.matches('[').count() as i32;
        let closes = w.matches(']').count() as i32;
        if depth > 0 || (opens > 0 && w.starts_with('[')) {
            depth += opens - closes;
            continue;
        }
        if w.starts_with('<') && !w.contains('>') {
            angle = Some(w);
            continue;
        }
        out.push(w);
    }
    out
}

#[test]
fn every_mailfleet_command_the_readme_and_docs_show_parses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            files.push(e.path());
        }
    }
    let mut checked = 0;
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, words) in commands_in(&text) {
            checked += 1;
            let mut args = words.clone();
            args[0] = "mailfleet".into();
            if let Err(e) = mailfleet::cli::Cli::full_command().try_get_matches_from(&args)
                && e.kind() != clap::error::ErrorKind::DisplayHelp
            {
                bad.push(format!(
                    "{}: {line}\n  {}",
                    f.display(),
                    e.to_string().lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} commands found");
    assert!(
        bad.is_empty(),
        "commands that do not parse:\n{}",
        bad.join("\n")
    );
}
