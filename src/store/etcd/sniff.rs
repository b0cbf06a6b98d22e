//! Whether something speaks TLS on a port: for the clear message when a plain-HTTP
//! client meets a TLS etcd (etcd then just closes the connection, which looks like
//! any other failure).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the probe may take in all.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// A minimal TLS 1.2 ClientHello (two ECDHE-AES-GCM suites, no extensions). A TLS
/// server answers it with a handshake or an alert record; nothing else does.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression only
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Whether a reply starts with a TLS record: handshake (22) or alert (21), version 3.x.
pub(super) fn is_tls_record(reply: &[u8]) -> bool {
    matches!(reply, [0x15 | 0x16, 0x03, ..])
}

/// Whether the server at "host:port" answers a ClientHello in TLS.
pub(super) async fn speaks_tls(host_port: &str) -> bool {
    let probe = async {
        let mut conn = TcpStream::connect(host_port).await.ok()?;
        conn.write_all(&client_hello()).await.ok()?;
        let mut reply = [0u8; 2];
        conn.read_exact(&mut reply).await.ok()?;
        Some(is_tls_record(&reply))
    };
    matches!(
        tokio::time::timeout(SNIFF_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}
