//! The agent protocol between `rnet lab` on the machine and `rnet lab agent` in a guest, over
//! a virtio-serial port: one JSON object per line each way. The port is a byte stream that
//! outlives any one client, so a response for a client that gave up may still be in flight when
//! the next one connects: every request carries an id and clients skip answers to other ids.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The virtio-serial port names the agent serves: `rnet.agent.0` … (one client per port at a
/// time, so several execs can run in one guest at once).
pub const PORT_PREFIX: &str = "rnet.agent.";
/// How many agent ports each guest has.
pub const PORTS: usize = 4;
/// Exit status reported when a command ran past its timeout and was killed (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;

/// Run `argv` in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub argv: Vec<String>,
    /// Bytes for the command's stdin (base64 on the wire); empty: stdin is /dev/null.
    #[serde(default, with = "b64")]
    pub stdin: Vec<u8>,
    /// Kill the command (its whole process group) after this many seconds.
    pub timeout_secs: u64,
    /// Start the command in the background, its output appended to this guest file, and answer
    /// at once with its pid.
    #[serde(default)]
    pub detach: Option<String>,
}

/// What became of a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    /// The exit status (128+N when killed by signal N; 124 on timeout; 127 not found; 126
    /// cannot run).
    pub status: i32,
    #[serde(default, with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(default, with = "b64")]
    pub stderr: Vec<u8>,
    /// The pid of a detached command.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One wire line (with its newline) for `value`.
pub fn line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(value).expect("protocol types serialize");
    v.push(b'\n');
    v
}

mod b64 {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_output_round_trips_on_one_line() {
        let r = Response {
            id: 7,
            status: 3,
            stdout: vec![0, 255, b'\n', b'x'],
            stderr: b"err\n".to_vec(),
            pid: None,
        };
        let wire = line(&r);
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Response = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn stdin_and_detach_are_optional() {
        let r: Request =
            serde_json::from_str(r#"{"id":1,"argv":["true"],"timeout_secs":5}"#).unwrap();
        assert!(r.stdin.is_empty() && r.detach.is_none());
    }
}
