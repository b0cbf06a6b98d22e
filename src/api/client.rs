//! A client of the rnetd API over its unix socket (hyper, HTTP/1.1, one connection per call).

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::types::ErrorBody;

/// The daemon's default socket.
pub const DEFAULT_SOCKET: &str = "/run/rnet/rnetd.sock";

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("rnetd is not running (no answer on {}); start it with `rnetd` or point --socket / RNET_SOCKET at a running daemon", socket.display())]
    NotRunning { socket: PathBuf },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("talking to rnetd on {}: {detail}", socket.display())]
    Protocol { socket: PathBuf, detail: String },
}

impl ClientError {
    /// The daemon's error kind (invalid, not_found, ...), if it answered.
    pub fn kind(&self) -> Option<&str> {
        match self {
            ClientError::Api { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// A handle on one daemon.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// One request: connect, send, read the whole answer, decode a result or an error.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self
            .raw(
                method,
                path,
                body.map(|b| serde_json::to_vec(b).expect("serializable")),
            )
            .await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| self.protocol(format!("undecodable answer: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Api {
                status: status.as_u16(),
                kind: e.kind,
                message: e.error,
            }),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                kind: "internal".into(),
                message: format!(
                    "rnetd answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }),
        }
    }

    /// Send raw bytes; returns the status and body. Used by tests for malformed input too.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                self.protocol(
                    "permission denied: only root and members of rnetd's --api-group may use its socket".into(),
                )
            } else {
                ClientError::NotRunning {
                    socket: self.socket.clone(),
                }
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "rnetd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            detail,
        }
    }
}
