//! The sockets: one UDP socket and one TCP listener per network, on the gateway address,
//! port 53, inside the network's sandbox namespace (made on a thread that entered it, then
//! handed to tokio). Only workloads of the network reach them, so only they are answered
//! and forwarded for: the server is never an open resolver.
//!
//! One task per network owns both sockets and every task it starts (forwards, TCP
//! connections); stopping it drops them all, so no socket outlives its sandbox.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::forward::Forwarder;
use super::lookup::{self, Decision, MAX_QUERY};
use super::{stats, Directory, DnsError};
use crate::model::{Network, NetworkId};
use crate::netns::NetNs;

/// The DNS port.
pub const PORT: u16 = 53;
/// TCP connections one network's server holds at once; more wait in the kernel's backlog.
const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP client has this long to send each query (and a connection this long in all).
const TCP_IDLE: Duration = Duration::from_secs(5);
const TCP_LIFETIME: Duration = Duration::from_secs(30);
/// Datagrams are read into this much; a longer one is cut and then refused as too long.
const RECV_BUF: usize = 4096;

/// What one network's server needs to answer.
#[derive(Clone)]
struct Context {
    zone: String,
    network: String,
    directory: Arc<dyn Directory>,
    forwarder: Arc<Forwarder>,
}

impl Context {
    fn decide(&self, query: &[u8], udp: bool) -> Decision {
        lookup::decide(query, &self.zone, udp, |name| {
            self.directory.addresses(&self.network, name)
        })
    }
}

struct Running {
    /// The sandbox namespace the sockets live in (a rebuilt sandbox is a new one).
    inode: u64,
    task: JoinHandle<()>,
}

/// The DNS servers of this host's sandboxes, by network id.
pub struct Servers {
    directory: Arc<dyn Directory>,
    forwarder: Arc<Forwarder>,
    running: Mutex<HashMap<NetworkId, Running>>,
    /// One start at a time: two callers starting one network's server would otherwise stop
    /// each other's or fight over the port.
    starting: tokio::sync::Mutex<()>,
}

impl Servers {
    pub fn new(directory: Arc<dyn Directory>, upstreams: Vec<SocketAddr>) -> Servers {
        Servers {
            directory,
            forwarder: Arc::new(Forwarder::new(upstreams)),
            running: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        self.forwarder.upstreams()
    }

    /// Make network `net`'s server run in its sandbox at `sandbox` (the bridge holding the
    /// gateway address must be up there). Nothing happens when it already runs in that very
    /// namespace.
    pub async fn ensure(&self, net: &Network, sandbox: &Path) -> Result<(), DnsError> {
        let _one = self.starting.lock().await;
        let path = sandbox.to_path_buf();
        let ns = tokio::task::spawn_blocking(move || NetNs::open(&path))
            .await
            .map_err(|e| DnsError::Socket(format!("opening thread failed: {e}")))?
            .map_err(|e| DnsError::Socket(e.to_string()))?;
        let inode = ns.inode();
        if self.runs_in(&net.id, inode) {
            return Ok(());
        }
        // Another namespace (a rebuilt sandbox), or the server ended: start afresh.
        self.stop(&net.id).await;
        let gateway = net.gateway;
        let (udp, tcp) = tokio::task::spawn_blocking(move || bind_in(&ns, gateway))
            .await
            .map_err(|e| DnsError::Socket(format!("binding thread failed: {e}")))?
            .map_err(|e| {
                DnsError::Socket(format!(
                    "network {}: cannot listen on {gateway}:{PORT} in its sandbox: {e}",
                    net.name
                ))
            })?;
        let (udp, tcp) = (UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?);
        let ctx = Context {
            zone: net.name.as_str().to_ascii_lowercase(),
            network: net.name.as_str().to_string(),
            directory: self.directory.clone(),
            forwarder: self.forwarder.clone(),
        };
        let task = tokio::spawn(serve(udp, tcp, ctx));
        tracing::info!(network = %net.name, address = %gateway, "DNS server listening in the sandbox");
        let old = self
            .running
            .lock()
            .expect("poisoned")
            .insert(net.id.clone(), Running { inode, task });
        if let Some(old) = old {
            old.task.abort();
        }
        Ok(())
    }

    fn runs_in(&self, id: &NetworkId, inode: u64) -> bool {
        let running = self.running.lock().expect("poisoned");
        running
            .get(id)
            .is_some_and(|r| r.inode == inode && !r.task.is_finished())
    }

    /// Stop network `id`'s server and wait until its sockets are closed.
    pub async fn stop(&self, id: &NetworkId) {
        let old = self.running.lock().expect("poisoned").remove(id);
        if let Some(old) = old {
            old.task.abort();
            let _ = old.task.await;
        }
    }

    /// The networks whose server runs.
    pub fn running(&self) -> Vec<NetworkId> {
        self.running
            .lock()
            .expect("poisoned")
            .iter()
            .filter(|(_, r)| !r.task.is_finished())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Bind both sockets on a thread that entered the sandbox `ns`.
fn bind_in(
    ns: &NetNs,
    gateway: Ipv4Addr,
) -> Result<(std::net::UdpSocket, std::net::TcpListener), String> {
    let addr = SocketAddr::from((gateway, PORT));
    ns.run(move || -> std::io::Result<_> {
        let udp = std::net::UdpSocket::bind(addr)?;
        udp.set_nonblocking(true)?;
        // std sets SO_REUSEADDR: a server restarted at once binds despite TIME_WAIT.
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Serve one network until aborted.
async fn serve(udp: UdpSocket, tcp: TcpListener, ctx: Context) {
    let mut tasks = JoinSet::new();
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Forwards hand their answers back here: only this task ever holds the UDP socket.
    let (answered, mut answers) = mpsc::channel::<(Vec<u8>, SocketAddr)>(64);
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        tokio::select! {
            got = udp.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                match ctx.decide(&buf[..n], true) {
                    Decision::Answer(bytes) => {
                        stats().answered.inc();
                        let _ = udp.send_to(&bytes, peer).await;
                    }
                    Decision::Forward => {
                        let (query, ctx, answered) = (buf[..n].to_vec(), ctx.clone(), answered.clone());
                        tasks.spawn(async move {
                            let answer = forward(&ctx, &query, false).await;
                            let _ = answered.send((answer, peer)).await;
                        });
                    }
                    Decision::Drop(why) => malformed(why, "udp"),
                }
            }
            Some((bytes, peer)) = answers.recv() => {
                let _ = udp.send_to(&bytes, peer).await;
            }
            accepted = tcp.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    continue; // dropped: the client retries or gives up
                };
                let ctx = ctx.clone();
                tasks.spawn(async move {
                    let _ = tokio::time::timeout(TCP_LIFETIME, serve_tcp(conn, &ctx)).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Forward a query, or SERVFAIL when the cap is reached or no upstream answered.
async fn forward(ctx: &Context, query: &[u8], tcp: bool) -> Vec<u8> {
    let answer = match ctx.forwarder.permit() {
        Some(_permit) => ctx.forwarder.forward(query, tcp).await,
        None => None,
    };
    match answer {
        Some(a) => {
            stats().forwarded.inc();
            a
        }
        None => {
            stats().forward_failed.inc();
            lookup::servfail(query)
        }
    }
}

fn malformed(why: lookup::Malformed, transport: &str) {
    stats().malformed.inc();
    tracing::debug!(?why, transport, "dropped a malformed DNS query");
}

/// DNS over TCP: 2-byte length, then the message; several queries per connection.
async fn serve_tcp(mut conn: TcpStream, ctx: &Context) {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, conn.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        if len == 0 || len > MAX_QUERY {
            return malformed(lookup::Malformed::TooLong, "tcp");
        }
        let mut query = vec![0; len];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let answer = match ctx.decide(&query, false) {
            Decision::Answer(bytes) => {
                stats().answered.inc();
                bytes
            }
            Decision::Forward => forward(ctx, &query, true).await,
            Decision::Drop(why) => return malformed(why, "tcp"),
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if conn.write_all(&framed).await.is_err() {
            return;
        }
    }
}
