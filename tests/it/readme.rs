//! The README's shell examples, run as written, in README order, each in a fresh `bash -c`
//! against a fresh database, the mock provider and a `mailfleet api`, with nothing in the
//! environment but what a reader sets up: the Redis and Postgres URLs, a key prefix, the mock's
//! URL as `MAILFLEET_SENDGRID_URL`, and `$KEY`.
//!
//! What is changed before a line runs, and only this: a `# comment` is dropped; an optional
//! `[...]` group (outside quotes) is dropped; a `<placeholder>` (or `<placeholder>...`) becomes a value the earlier lines
//! produced (an email id, a key prefix, a dead letter's id); `localhost:8080` becomes the test's
//! API address. A line that runs until stopped (`worker`, `status --watch`) is started in the
//! background and must still be running (and, for the worker, drain and exit 0) at the end.
//! Every other line must exit 0. The lines not run are in [`NOT_RUN`], each with why; an entry
//! that matches no line fails the test, so the list cannot go stale.

use crate::support::private::free_port;
use crate::support::*;
use mailfleet::Lane;
use mailfleet::mock::MockConfig;
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

/// README lines this test does not run (matched at the start of the line), with why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "./scripts/demo.sh",
        "the main job: builds a release binary and runs a cluster",
    ),
    ("./scripts/test.sh", "the test suite this test is part of"),
    ("docker compose", "needs a Docker engine"),
    (
        "cargo ",
        "builds and benches: .ci/run builds, the bench lines below measure",
    ),
    (
        "target/release/mailfleet bench",
        "benchmarks on a release build, minutes each; their scenarios run in scripts/chaos.sh",
    ),
    (
        "scripts/chaos.sh",
        ".ci/run runs the short form of every scenario",
    ),
    ("CHAOS_", ".ci/run runs the short form of every scenario"),
    (
        "MAILFLEET_REDIS_URL=redis://10.0.0.1",
        "example addresses of a Redis Cluster's nodes",
    ),
];

/// Subcommands that run until stopped.
fn long_running(line: &str) -> bool {
    line.contains("mailfleet worker") || line.contains("status --watch")
}

/// The README's shell lines, continuation lines joined.
fn shell_lines(markdown: &str) -> Vec<String> {
    let (mut out, mut in_shell, mut joined) = (Vec::new(), false, String::new());
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
        let full = full.trim();
        if !full.is_empty() && !full.starts_with('#') {
            out.push(full.to_owned());
        }
    }
    out
}

/// The line with its comment and `[...]` groups dropped and each `<placeholder>` replaced by
/// `fill(placeholder)`; quotes are kept as they are.
fn as_run(line: &str, fill: &mut dyn FnMut(&str) -> String) -> String {
    let (mut out, mut quote, mut chars) = (String::new(), None, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '#') if out.is_empty() || out.ends_with(' ') => break,
            (None, '[') => {
                let mut depth = 1;
                for c in chars.by_ref() {
                    depth += match c {
                        '[' => 1,
                        ']' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        break;
                    }
                }
            }
            (None, '<') => {
                let name: String = chars.by_ref().take_while(|&c| c != '>').collect();
                out.push_str(&fill(&name));
                // `<id>...`: one or more; one is given.
                while chars.peek() == Some(&'.') {
                    chars.next();
                }
            }
            (None, c) => out.push(c),
        }
    }
    out.trim().to_owned()
}

#[test]
fn a_line_loses_its_comment_and_optional_groups_and_its_placeholders_are_filled() {
    let mut fill = |p: &str| format!("({p})");
    assert_eq!(
        as_run(
            r#"mailfleet email show <id | key>... [--tenant T] [--json]   # attempts [x]"#,
            &mut fill
        ),
        "mailfleet email show (id | key)"
    );
    assert_eq!(
        as_run(
            r#"curl -d '{"to":["a@example.com"]}' http://h/v1/emails/<id>  # 202 {"id": "..."}"#,
            &mut fill
        ),
        r#"curl -d '{"to":["a@example.com"]}' http://h/v1/emails/(id)"#
    );
    assert_eq!(
        shell_lines("```sh\na \\\n  b # c\n# only a comment\n```\n```text\nnot run\n```\n"),
        vec!["a   b # c"]
    );
}

#[sqlx::test]
async fn the_readmes_shell_examples_run_as_written(pg: PgPool) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let redis = TestRedis::new();
    let mock = TestMock::start(MockConfig::default()).await;

    // `mailfleet` on PATH, as the README asks of its reader.
    let home = std::env::temp_dir().join(format!("mf-readme-{}", uuid::Uuid::now_v7()));
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("mailfleet")).unwrap();
    let api = format!("127.0.0.1:{}", free_port());
    let key = format!("readme-{}", uuid::Uuid::now_v7().simple());
    let mut env: Vec<(&str, String)> = vec![
        (
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()),
        ),
        ("HOME", home.display().to_string()),
        ("MAILFLEET_DATABASE_URL", db_url(&pg)),
        ("MAILFLEET_REDIS_URL", redis.url.clone()),
        ("MAILFLEET_PREFIX", redis.keys.prefix().to_owned()),
        ("MAILFLEET_SENDGRID_URL", mock.url.clone()),
        (
            "MAILFLEET_WORKER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("KEY", key.clone()),
    ];
    let spawn = |line: &str, env: &[(&str, String)]| {
        let mut c = tokio::process::Command::new("bash");
        c.arg("-c")
            .arg(line)
            .current_dir(root)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    };

    // The API the curl lines talk to (`mailfleet api`, its bootstrap key as $KEY).
    let mut api_env = env.clone();
    api_env.push(("MAILFLEET_API_KEYS", key.clone()));
    api_env.push(("MAILFLEET_API_LISTEN", api.clone()));
    api_env.push(("MAILFLEET_API_METRICS_LISTEN", String::new()));
    let mut api_proc = spawn("exec mailfleet api", &api_env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    mailfleet::install_crypto_provider();
    let http = reqwest::Client::new();
    eventually("the API answers", WAIT, || async {
        http.get(format!("http://{api}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    // What the lines need that the README's earlier lines do not make: an email that failed
    // for good (its template does not exist) for `email retry`, and a malformed entry for the
    // dead-letter lines.
    let mut broken = job(Lane::Bulk, "broken@example.com");
    (broken.payload.subject, broken.payload.text) = (None, None);
    broken.payload.template = Some("not-stored".into());
    let failed = redis
        .producer()
        .with_ledger(pg.clone())
        .send(broken)
        .await
        .unwrap()
        .id
        .as_uuid();
    let _: String = redis::cmd("XADD")
        .arg(redis.keys.lane(0, Lane::Tx))
        .arg("*")
        .arg("v")
        .arg("1")
        .query_async(&mut *redis.conn().await)
        .await
        .unwrap();
    env.push(("RUST_LOG", "warn".into()));

    let mut values: HashMap<&str, String> = HashMap::new();
    values.insert("failed", failed.to_string());
    let (mut ran, mut skipped_by) = (0, vec![0; NOT_RUN.len()]);
    let mut background = Vec::new();
    for line in shell_lines(&readme) {
        if let Some(i) = NOT_RUN.iter().position(|(p, _)| line.starts_with(p)) {
            skipped_by[i] += 1;
            continue;
        }
        // Each placeholder's value, waiting for what it names to be there.
        if line.contains("email show") || line.contains("email retry") {
            let sent = values["sent"].parse().unwrap();
            eventually("the README's first email is sent", WAIT, || async {
                (status_of(&pg, sent).await.as_deref() == Some("sent")).then_some(())
            })
            .await;
            eventually("the email without its template fails", WAIT, || async {
                (status_of(&pg, failed).await.as_deref() == Some("failed")).then_some(())
            })
            .await;
        }
        if line.contains("dlq show") {
            let id = eventually("the malformed entry is dead-lettered", WAIT, || async {
                let v: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(redis.keys.dead(0))
                    .arg("-")
                    .arg("+")
                    .query_async(&mut *redis.conn().await)
                    .await
                    .ok()?;
                v.ids.first().map(|e| e.id.clone())
            })
            .await;
            values.insert("dead", id);
        }
        let mut fill = |name: &str| {
            let which = match name {
                "id or prefix" => "key",
                "dead-entry-id | job-id" => "dead",
                _ if line.contains("email cancel") => "waiting",
                _ if line.contains("email retry") => "failed",
                _ if line.starts_with("curl") => "api",
                _ => "sent",
            };
            values
                .get(which)
                .unwrap_or_else(|| panic!("no value for <{name}> yet in: {line}"))
                .clone()
        };
        let cmd = as_run(&line, &mut fill).replace("localhost:8080", &api);
        ran += 1;
        if long_running(&cmd) {
            let out = home.join(format!("bg-{}.log", background.len()));
            let file = std::fs::File::create(&out).unwrap();
            let child = spawn(&cmd, &env)
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            background.push((line.clone(), child, out));
            continue;
        }
        let run = spawn(&cmd, &env).output();
        let o = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("still running after 60 s: {cmd}"))
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(
            o.status.success(),
            "README line failed ({}):\n  {line}\nran as:\n  {cmd}\n{stdout}{stderr}",
            o.status
        );
        if line.starts_with("curl") {
            assert!(
                !stdout.contains("\"error\""),
                "the API refused:\n  {cmd}\n{stdout}"
            );
        }
        // The values later lines need.
        let first = stdout.lines().next().unwrap_or("").trim().to_owned();
        if line.starts_with("mailfleet send --to") && line.contains("--template") {
            values.insert("sent", first);
        } else if line.starts_with("mailfleet send") && line.contains("--at 2030") {
            values.insert("waiting", first);
        } else if line.starts_with("mailfleet key create") {
            values.insert("key", first.chars().take(12).collect());
        } else if line.starts_with("curl") && line.contains("Idempotency-Key") {
            let v: serde_json::Value =
                serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
            values.insert("api", v["id"].as_str().unwrap().to_owned());
        }
    }

    for (i, n) in skipped_by.iter().enumerate() {
        assert!(
            *n > 0,
            "NOT_RUN entry {:?} matches no README line",
            NOT_RUN[i].0
        );
    }
    assert!(ran >= 30, "only {ran} README lines ran");
    assert!(
        background
            .iter()
            .any(|(l, ..)| l.contains("mailfleet worker")),
        "the README starts no worker"
    );
    // The waiting email the README cancelled was never sent; the one it sent was sent once.
    assert_eq!(
        status_of(&pg, values["waiting"].parse().unwrap())
            .await
            .as_deref(),
        Some("cancelled")
    );
    for (line, mut child, log) in background {
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            child.try_wait().unwrap().is_none(),
            "stopped early: {line}\n{}",
            log_text()
        );
        signal(child.id().unwrap(), 15);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit 30 s after SIGTERM: {line}"))
            .unwrap();
        if line.contains("mailfleet worker") {
            assert!(status.success(), "{line}: {status}\n{}", log_text());
        }
    }
    signal(api_proc.id().unwrap(), 15);
    let _ = api_proc.wait().await;
    let _ = std::fs::remove_dir_all(&home);
}
