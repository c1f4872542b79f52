//! A private redis-server for tests that restart or pause Redis: its own port and data dir,
//! never the shared instance.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct PrivateRedis {
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra arguments (`--replicaof` for a replica).
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Start with an append-only file, so a clean restart keeps the streams and groups.
    pub async fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("mailfleet-redis-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("redis data dir");
        let mut r = PrivateRedis {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
            child: None,
            extra: Vec::new(),
        };
        r.spawn().await;
        r
    }

    /// A replica of `master`, linked (its first sync done) before this returns.
    pub async fn replica_of(master: &PrivateRedis) -> Self {
        let mut r = Self::start().await;
        r.extra = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ];
        r.restart_empty().await;
        for _ in 0..400 {
            if let Ok(redis::Value::BulkString(info)) = r.cmd(&["INFO", "replication"]).await
                && String::from_utf8_lossy(&info).contains("master_link_status:up")
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("replica on port {} did not link to its master", r.port);
    }

    /// SIGSTOP or SIGCONT the server process (a replica that stops taking the stream).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            super::signal(child.id(), sig);
        }
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--enable-debug-command", "yes", "--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services.sh installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).expect("client");
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("private redis-server did not start on port {}", self.port);
    }

    /// SHUTDOWN (the AOF is flushed), then start again on the same port and data dir.
    pub async fn restart(&mut self, down_for: Duration) {
        self.stop().await;
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    /// SHUTDOWN, delete the data (as a Redis without persistence, or on a new disk, restarts),
    /// then start again on the same port.
    pub async fn restart_empty(&mut self) {
        self.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("redis data dir");
        self.spawn().await;
    }

    pub async fn stop(&mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut c) = client.get_multiplexed_async_connection().await
        {
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut c).await;
        }
        if let Some(mut child) = self.child.take() {
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run one command on a fresh connection.
    pub async fn cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        cmd.query_async(&mut c).await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
