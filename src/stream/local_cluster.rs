//! A real Redis Cluster on this machine, for tests and `mailfleet bench --cluster`: 6
//! redis-server processes (3 masters with a replica each) on free ports in their own directory,
//! joined with `redis-cli --cluster create`, torn down (processes killed, directory removed) on
//! drop. A node can be SIGKILLed to make its replica take over. Needs `redis-server` and
//! `redis-cli` on PATH (scripts/services.sh installs them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("starting {what}: {source}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("redis-cli --cluster create failed: {0}")]
    Create(String),
    #[error("{0}")]
    NotReady(String),
}

/// A free port for a cluster node whose bus port (the port + 10,000, which Redis also binds)
/// is free too: Redis refuses a cluster node above 55535.
fn free_port() -> Result<u16, LocalClusterError> {
    let spawn = |source| LocalClusterError::Spawn {
        what: "a free port",
        source,
    };
    for _ in 0..1000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(spawn)?;
        let port = l.local_addr().map_err(spawn)?.port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(spawn(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port <= 55535 with its bus port free",
    )))
}

pub struct LocalCluster {
    /// Seed list for cluster mode: every node, comma-separated.
    pub url: String,
    pub ports: Vec<u16>,
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
}

/// Run one command against one node.
pub async fn node_cmd(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    cmd.query_async(&mut c).await
}

async fn node_text(port: u16, args: &[&str]) -> Option<String> {
    match node_cmd(port, args).await.ok()? {
        redis::Value::BulkString(b) => String::from_utf8(b).ok(),
        redis::Value::VerbatimString { text, .. } => Some(text),
        redis::Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

impl LocalCluster {
    pub async fn start() -> Result<Self, LocalClusterError> {
        let dir = std::env::temp_dir().join(format!(
            "mailfleet-cluster-{}",
            uuid::Uuid::now_v7().simple()
        ));
        let io = |what| move |source| LocalClusterError::Spawn { what, source };
        std::fs::create_dir_all(&dir).map_err(io("the cluster directory"))?;
        let ports = (0..6)
            .map(|_| free_port())
            .collect::<Result<Vec<u16>, _>>()?;
        let mut c = LocalCluster {
            url: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            ports: ports.clone(),
            dir: dir.clone(),
            nodes: Vec::new(),
        };
        for &port in &ports {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(io("a node directory"))?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&node_dir)
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    // A replica syncs at once (the default waits 5 s for more replicas), so
                    // it can take over from the first second.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--appendonly",
                    "no",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io("redis-server (scripts/services.sh installs it)"))?;
            c.nodes.push(Some(child));
        }
        for &port in &ports {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node_cmd(port, &["PING"]).await.is_err() {
                if Instant::now() >= deadline {
                    return Err(LocalClusterError::NotReady(format!(
                        "node {port} did not start"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(io("redis-cli"))?;
        if !out.status.success() {
            return Err(LocalClusterError::Create(
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ));
        }
        c.wait_ok(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Not a cluster: one master and its replica (`url` names the master), linked before this
    /// returns. For measuring enqueue durability `replicated` against the other levels.
    pub async fn replicated_pair() -> Result<Self, LocalClusterError> {
        let dir =
            std::env::temp_dir().join(format!("mailfleet-pair-{}", uuid::Uuid::now_v7().simple()));
        let io = |what| move |source| LocalClusterError::Spawn { what, source };
        std::fs::create_dir_all(&dir).map_err(io("the pair's directory"))?;
        let ports = [free_port()?, free_port()?];
        let mut c = LocalCluster {
            url: format!("redis://127.0.0.1:{}", ports[0]),
            ports: ports.to_vec(),
            dir: dir.clone(),
            nodes: Vec::new(),
        };
        for (i, &port) in ports.iter().enumerate() {
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).map_err(io("a node directory"))?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&node_dir)
                .args(["--repl-diskless-sync-delay", "0", "--appendonly", "no"])
                .args(["--save", "", "--daemonize", "no"]);
            if i == 1 {
                cmd.args(["--replicaof", "127.0.0.1", &ports[0].to_string()]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(io("redis-server (scripts/services.sh installs it)"))?;
            c.nodes.push(Some(child));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let linked = node_text(ports[1], &["INFO", "replication"])
                .await
                .is_some_and(|t| t.contains("master_link_status:up"));
            if linked {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                return Err(LocalClusterError::NotReady(format!(
                    "the replica on {} did not link to its master on {}",
                    ports[1], ports[0]
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process ids of the live nodes (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().flatten().map(Child::id).collect()
    }

    /// Calls per command summed over the masters (`INFO commandstats` of each; replicas only
    /// replay what their master ran).
    pub async fn command_calls(
        &self,
    ) -> redis::RedisResult<std::collections::BTreeMap<String, u64>> {
        let mut total = std::collections::BTreeMap::new();
        for port in self.masters().await {
            if let Some(info) = node_text(port, &["INFO", "commandstats"]).await {
                for (k, v) in super::parse_commandstats(&info) {
                    *total.entry(k).or_insert(0) += v;
                }
            }
        }
        Ok(total)
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Until every live node reports `cluster_state:ok` with all slots served by a reachable
    /// master, and every live replica is in sync with its master (so it can take over).
    pub async fn wait_ok(&self, within: Duration) -> Result<(), LocalClusterError> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for port in self.live_ports() {
                let info = node_text(port, &["CLUSTER", "INFO"])
                    .await
                    .unwrap_or_default();
                ok &= info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384");
                let repl = node_text(port, &["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                ok &= !repl.contains("role:slave") || repl.contains("master_link_status:up");
            }
            if ok && self.masters().await.len() == 3 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LocalClusterError::NotReady(
                    "the cluster did not become ok".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ports of the live masters that serve slots, as a live node sees them.
    pub async fn masters(&self) -> Vec<u16> {
        for port in self.live_ports() {
            if let Some(nodes) = node_text(port, &["CLUSTER", "NODES"]).await {
                let mut masters: Vec<u16> = nodes
                    .lines()
                    .filter(|l| {
                        let f: Vec<&str> = l.split(' ').collect();
                        f.len() > 8 && f[2].contains("master") && !f[2].contains("fail")
                    })
                    .filter_map(|l| {
                        let addr = l.split(' ').nth(1)?;
                        addr.split('@').next()?.rsplit(':').next()?.parse().ok()
                    })
                    .filter(|p| self.live_ports().contains(p))
                    .collect();
                masters.sort_unstable();
                return masters;
            }
        }
        Vec::new()
    }

    /// SIGKILL the node on `port` (no shutdown, no final write): its replica takes over after
    /// the node timeout.
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.ports.iter().position(|p| *p == port)
            && let Some(mut child) = self.nodes[i].take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
