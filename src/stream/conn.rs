//! One Redis server or a Redis Cluster, behind one pool and one connection type.
//!
//! Cluster mode is chosen by the URL: a comma-separated list of seed nodes is a cluster
//! (`MAILFLEET_REDIS_CLUSTER=1` makes a single URL one, see [`crate::config::Global`]). The
//! cluster connection of redis-rs routes every command by its key's slot and follows MOVED and
//! ASK, but sends a pipeline whole to one node, so a pipeline whose commands live in several
//! slots (a batch of enqueues over partitions, the depth of every lane) is split here: one
//! sub-pipeline per slot, sent concurrently, the replies put back in the caller's order.
//! Every Lua script's keys share one `{hash tag}`, so a script call never spans slots.

use redis::aio::ConnectionLike;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type ClusterConnection = redis::cluster_async::ClusterConnection;

pub type PoolError = deadpool_redis::PoolError;

/// The seed nodes of `url` when it names a cluster: several URLs separated by commas (a
/// trailing comma makes a single URL a cluster seed).
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    if !url.contains(',') {
        return None;
    }
    Some(
        url.split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// A pool of connections to one server (deadpool-redis) or to a cluster.
#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(Arc<ClusterPool>),
}

/// A cluster connection of redis-rs is multiplexed over one connection per node, reconnects by
/// itself and follows the cluster's topology, so a checkout is a clone: a few of them, opened
/// on first use and handed out in turn, spread the load over more sockets without a
/// recycle round trip per checkout. The client retries a failed command a few times within
/// about a second (redis-rs's default is 16 times over minutes), so a master's failover shows
/// up as errors the worker's own retries handle, not as a stalled call.
pub struct ClusterPool {
    client: redis::cluster::ClusterClient,
    conns: Vec<tokio::sync::OnceCell<ClusterConnection>>,
    next: AtomicUsize,
}

/// Cluster connections per pool.
const CLUSTER_CONNECTIONS: usize = 4;

impl Pool {
    pub async fn get(&self) -> Result<Connection, PoolError> {
        Ok(Connection(match self {
            Pool::Single(p) => Inner::Single(p.get().await?),
            Pool::Cluster(p) => {
                let i = p.next.fetch_add(1, Ordering::Relaxed) % p.conns.len();
                let conn = p.conns[i]
                    .get_or_try_init(|| p.client.get_async_connection())
                    .await
                    .map_err(PoolError::Backend)?;
                Inner::Cluster(conn.clone())
            }
        }))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Pool::Cluster(_))
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_cluster() {
            "cluster"
        } else {
            "single"
        };
        f.debug_struct("Pool").field("kind", &kind).finish()
    }
}

/// A pooled connection; `&mut *conn` is a [`ConnectionLike`].
pub struct Connection(Inner);

impl std::ops::Deref for Connection {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.0
    }
}

pub enum Inner {
    Single(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Inner {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(c) => Box::pin(cluster_pipeline(c.clone(), cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

/// The key a command is routed by: the first key of a script call, the first stream of an
/// XREAD(GROUP), the first argument of a keyed command; None for keyless commands.
pub fn route_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVALSHA" | b"EVAL" | b"EVALSHA_RO" | b"EVAL_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            (numkeys > 0)
                .then(|| args.get(3).map(|k| k.to_vec()))
                .flatten()
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1).map(|k| k.to_vec())
        }
        // Container commands: the key follows the subcommand.
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2).map(|k| k.to_vec()),
        b"PING" | b"INFO" | b"SCRIPT" | b"TIME" | b"CLUSTER" | b"CLIENT" | b"CONFIG"
        | b"DBSIZE" | b"FLUSHALL" | b"FLUSHDB" | b"COMMAND" | b"MULTI" | b"EXEC" => None,
        _ => args.get(1).map(|k| k.to_vec()),
    }
}

/// A pipeline on a cluster: sent whole when its commands share a slot; otherwise one
/// sub-pipeline per slot, concurrently, and keyless commands one by one (a `SCRIPT LOAD` goes
/// to every primary that way), with the replies in the pipeline's order.
async fn cluster_pipeline(
    mut conn: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let slots: Vec<Option<Slot>> = cmds
        .iter()
        .map(|c| route_key(c).map(Slot::for_key))
        .collect();
    let first = slots.iter().flatten().next().copied();
    let one_slot =
        slots.iter().all(|s| s.is_none() || *s == first) && (first.is_some() || cmds.len() <= 1);
    if one_slot || pipeline.is_transaction() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
    let mut keyless = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        match s {
            Some(s) => groups.entry(*s).or_default().push(i),
            None => keyless.push(i),
        }
    }
    let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
    let sends = groups.into_values().map(|idx| {
        let mut conn = conn.clone();
        let mut sub = redis::pipe();
        for &i in &idx {
            sub.add_command(cmds[i].clone());
        }
        async move {
            let n = idx.len();
            let r = conn.req_packed_commands(&sub, 0, n).await;
            r.map(|values| (idx, values))
        }
    });
    for (idx, values) in futures::future::try_join_all(sends).await? {
        for (i, v) in idx.into_iter().zip(values) {
            out[i] = Some(v);
        }
    }
    for i in keyless {
        out[i] = Some(conn.req_packed_command(cmds[i]).await?);
    }
    Ok(out
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|v| v.unwrap_or(Value::Nil))
        .collect())
}

/// `WAIT replicas timeout` after writes made over `conn`: how many replicas confirmed them,
/// the least over every master written to. On one server that is the connection's own WAIT
/// (a checkout is exclusive, so it covers exactly the writes made through it); on a cluster,
/// one WAIT per slot of `keys`, each on the master serving it (the multiplexed connection to a
/// node carries other clients' writes too, so it may wait for those as well: never less safe).
pub async fn confirm_replicated(
    conn: &mut Connection,
    keys: &[String],
    replicas: u32,
    timeout: Duration,
) -> RedisResult<i64> {
    use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
    match &mut conn.0 {
        Inner::Single(c) => wait.query_async(c).await,
        Inner::Cluster(c) => {
            let slots: std::collections::HashSet<Slot> = keys.iter().map(Slot::for_key).collect();
            let waits = slots.into_iter().map(|slot| {
                let mut c = c.clone();
                let cmd = wait.clone();
                async move {
                    let route = SingleNodeRoutingInfo::SpecificNode(Route::with_slot(
                        slot,
                        SlotAddr::Master,
                    ));
                    let v = c.route_command(cmd, RoutingInfo::SingleNode(route)).await?;
                    Ok::<i64, redis::RedisError>(redis::from_redis_value::<i64>(v)?)
                }
            });
            let confirmed = futures::future::try_join_all(waits).await?;
            Ok(confirmed.into_iter().min().unwrap_or(i64::from(replicas)))
        }
    }
}

/// A pool for `url` (one server, or a cluster when [`cluster_nodes`] finds a list): commands
/// time out after `timeout`, a connect attempt after the same.
pub fn pool(url: &str, timeout: Duration, size: usize) -> Result<Pool, redis::RedisError> {
    let err =
        |e: String| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "pool", e));
    if let Some(nodes) = cluster_nodes(url) {
        let client = cluster_client(nodes, timeout, timeout)?;
        return Ok(Pool::Cluster(Arc::new(ClusterPool {
            client,
            conns: (0..size.clamp(1, CLUSTER_CONNECTIONS))
                .map(|_| tokio::sync::OnceCell::new())
                .collect(),
            next: AtomicUsize::new(0),
        })));
    }
    let cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout));
    let manager = deadpool_redis::Manager::new_with_config(url, cfg)?;
    deadpool_redis::Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map(Pool::Single)
        .map_err(|e| err(e.to_string()))
}

/// A cluster client that gives up on a command within about a second of retries.
fn cluster_client(
    nodes: Vec<String>,
    connect: Duration,
    response: Duration,
) -> RedisResult<redis::cluster::ClusterClient> {
    redis::cluster::ClusterClientBuilder::new(nodes)
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .connection_timeout(connect)
        .response_timeout(response)
        .build()
}

/// A dedicated connection for blocking reads: no response timeout on one server, since a
/// BLOCK may outlast any sensible command timeout; on a cluster, one longer than `block`.
pub enum Blocking {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Blocking {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Blocking::Single(c) => c.req_packed_command(cmd),
            Blocking::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Blocking::Single(c) => c.req_packed_commands(cmd, offset, count),
            Blocking::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Blocking::Single(c) => c.get_db(),
            Blocking::Cluster(c) => c.get_db(),
        }
    }
}

pub async fn blocking_connection(
    url: &str,
    connect_timeout: Duration,
    block: Duration,
) -> RedisResult<Blocking> {
    if let Some(nodes) = cluster_nodes(url) {
        let client = cluster_client(nodes, connect_timeout, block + Duration::from_secs(5))?;
        return Ok(Blocking::Cluster(client.get_async_connection().await?));
    }
    let client = redis::Client::open(url)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_response_timeout(None)
        .set_connection_timeout(Some(connect_timeout));
    Ok(Blocking::Single(
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_a_cluster_and_one_url_is_not() {
        assert_eq!(cluster_nodes("redis://a:6379"), None);
        assert_eq!(
            cluster_nodes("redis://a:7000, redis://b:7001"),
            Some(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(
            cluster_nodes("redis://a:7000,"),
            Some(vec!["redis://a:7000".into()])
        );
    }

    #[test]
    fn commands_route_by_their_first_key() {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("abc").arg(2).arg("mf:{3}:tx").arg("mf:{3}:dedup");
        assert_eq!(route_key(&eval).as_deref(), Some(&b"mf:{3}:tx"[..]));
        let mut keyless_eval = redis::cmd("EVALSHA");
        keyless_eval.arg("abc").arg(0).arg("x");
        assert_eq!(route_key(&keyless_eval), None);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(5);
        read.arg("STREAMS")
            .arg("mf:{1}:tx")
            .arg("mf:{1}:bulk")
            .arg(">")
            .arg(">");
        assert_eq!(route_key(&read).as_deref(), Some(&b"mf:{1}:tx"[..]));
        let mut xlen = redis::cmd("XLEN");
        xlen.arg("mf:{2}:bulk");
        assert_eq!(route_key(&xlen).as_deref(), Some(&b"mf:{2}:bulk"[..]));
        let mut group = redis::cmd("XGROUP");
        group
            .arg("CREATE")
            .arg("mf:{4}:tx")
            .arg("g")
            .arg("$")
            .arg("MKSTREAM");
        assert_eq!(route_key(&group).as_deref(), Some(&b"mf:{4}:tx"[..]));
        assert_eq!(route_key(&redis::cmd("PING")), None);
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg("return 1");
        assert_eq!(route_key(&load), None);
    }
}
