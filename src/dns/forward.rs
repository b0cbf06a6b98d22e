//! Forwarding names that are not the network's to the host's resolvers, from the daemon's
//! own namespace (where its resolv.conf applies). Bounded: a cap on forwards in flight
//! across all networks, a deadline per upstream try, and a fresh socket with a fresh query
//! id per forward, so an answer is only taken from the upstream asked, for the query asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// Forwards in flight at once, over all networks; a query beyond it is answered SERVFAIL.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long one upstream gets to answer before the next is tried.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read from an upstream.
const MAX_ANSWER: usize = 65535;

/// The host's resolvers and the forwarding budget.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    permits: Arc<Semaphore>,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// A permit to forward one query, or None when the cap is reached.
    pub fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Ask the upstreams in turn; the first answer comes back with the client's query id.
    /// None when none answered in time.
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let client_id = [*query.first()?, *query.get(1)?];
        for up in &self.upstreams {
            let id = fresh_id();
            let mut ours = query.to_vec();
            ours[..2].copy_from_slice(&id);
            let asked = if tcp {
                tokio::time::timeout(TRY_TIMEOUT, ask_tcp(*up, &ours)).await
            } else {
                tokio::time::timeout(TRY_TIMEOUT, ask_udp(*up, &ours)).await
            };
            match asked {
                Ok(Ok(mut answer)) => {
                    answer[..2].copy_from_slice(&client_id);
                    return Some(answer);
                }
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "DNS upstream failed"),
                Err(_) => tracing::debug!(upstream = %up, "DNS upstream timed out"),
            }
        }
        None
    }
}

fn fresh_id() -> [u8; 2] {
    use rand_core::{OsRng, RngCore};
    let mut id = [0; 2];
    OsRng.fill_bytes(&mut id);
    id
}

/// Whether `answer` answers `query`: a response with its id and its question section.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    let (Ok(q), Ok(a)) = (
        hickory_proto::op::Message::from_vec(query),
        hickory_proto::op::Message::from_vec(answer),
    ) else {
        return false;
    };
    a.id() == q.id()
        && a.message_type() == hickory_proto::op::MessageType::Response
        && a.queries() == q.queries()
}

async fn ask_udp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected: the kernel drops datagrams from anyone but the upstream.
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0; MAX_ANSWER];
    loop {
        let n = sock.recv(&mut buf).await?;
        if answers(query, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(up: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    conn.write_all(&framed).await?;
    let len = usize::from(conn.read_u16().await?);
    let mut buf = vec![0; len];
    conn.read_exact(&mut buf).await?;
    if !answers(query, &buf) {
        return Err(std::io::Error::other(
            "the upstream's answer does not match the query",
        ));
    }
    Ok(buf)
}
