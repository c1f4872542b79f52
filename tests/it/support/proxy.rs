//! A fault-injecting TCP proxy to put between a worker and Redis or Postgres (this machine has
//! no netem or iptables). Modes apply to live and new connections alike:
//! - `Pass`: forward bytes as they come;
//! - `Delay(d)`: hold each chunk for `d` before forwarding it (a slow network);
//! - `Blackhole`: accept connections and swallow nothing, forward nothing: bytes wait until the
//!   mode changes (a stalled peer or a partition: the client sees timeouts, not errors);
//! - `Refuse`: close new connections at once (the server is down);
//! - `HoldReplies`: forward requests, hold the server's replies until the mode changes (the
//!   client's view of the server freezes after its request was executed).
//!
//! [`Proxy::reset`] closes every live connection (the server restarted).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Refuse,
    HoldReplies,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Cancelling this resets every connection of the current generation.
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (g, s) = (generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                if *rx.borrow() == Mode::Refuse {
                    drop(client);
                    continue;
                }
                let gen_token = g.lock().unwrap_or_else(|p| p.into_inner()).child_token();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, rx.clone(), false);
                    let down = pump(sr, cw, rx, true);
                    tokio::select! {
                        _ = gen_token.cancelled() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                    // Leaving the select drops both halves of both sockets: closed.
                });
            }
        });
        Proxy {
            addr,
            mode,
            generation,
            stop,
        }
    }

    /// A URL for this proxy in place of `url`'s host and port (redis:// or postgres://).
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (auth, after) = match rest.rsplit_once('@') {
            Some((a, r)) => (format!("{a}@"), r),
            None => (String::new(), rest),
        };
        let path = after.find('/').map(|i| &after[i..]).unwrap_or("");
        format!("{scheme}://{auth}{}{path}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }

    /// Drop every live connection, as a server restart does.
    pub fn reset(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        g.cancel();
        *g = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset();
    }
}

/// Copy one direction, obeying the mode before each chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    replies: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Mode::Pass | Mode::Refuse => break,
                Mode::HoldReplies if !replies => break,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Blackhole | Mode::HoldReplies => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolve `host:port` of a redis:// or postgres:// URL.
pub fn upstream_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let after = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = after.split('/').next().expect("host");
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else if url.starts_with("redis") {
        format!("{hostport}:6379")
    } else {
        format!("{hostport}:5432")
    };
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .expect("resolve upstream")
        .next()
        .expect("an address")
}
