//! The machine's side of the agent protocol: run one command in a guest. Each of a guest's
//! agent ports takes one client at a time; a client takes the first port whose lock file it
//! can lock without waiting (or waits for port 0), so concurrent `lab exec`s to one guest run
//! side by side.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::proto::{self, Request, Response};
use super::VmHost;
use crate::lab::LabError;

/// Extra time over the command's own timeout for the round trip.
const SLACK: Duration = Duration::from_secs(30);

/// What to run in a guest.
#[derive(Clone, Debug, Default)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Run in the background, output appended to this guest file.
    pub detach: Option<String>,
}

/// Run `spec` in guest `h` and wait for its answer.
pub fn exec(h: &VmHost, spec: &ExecSpec) -> Result<Response, LabError> {
    let (_lock, sock) = claim_port(h)?;
    let req = Request {
        id: request_id(),
        argv: spec.argv.clone(),
        stdin: spec.stdin.clone(),
        timeout_secs: spec.timeout.as_secs().max(1),
        detach: spec.detach.clone(),
    };
    round_trip(&sock, &req, spec.timeout + SLACK)
        .map_err(|e| LabError::Runtime(format!("guest {}: agent at {}: {e}", h.id, sock.display())))
}

/// Whether guest `h`'s agent answers a no-op within `limit`.
pub fn answers(h: &VmHost, limit: Duration) -> bool {
    let Ok((_lock, sock)) = claim_port(h) else {
        return false;
    };
    let req = Request {
        id: request_id(),
        argv: vec!["true".into()],
        stdin: Vec::new(),
        timeout_secs: limit.as_secs().max(1),
        detach: None,
    };
    round_trip(&sock, &req, limit).is_ok_and(|r| r.status == 0)
}

/// Lock a free agent port of `h`; returns the held lock and the port's socket.
fn claim_port(h: &VmHost) -> Result<(Flock<File>, PathBuf), LabError> {
    for sock in &h.agents {
        let lock = open_lock(sock)?;
        if let Ok(held) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            return Ok((held, sock.clone()));
        }
    }
    let sock = h
        .agents
        .first()
        .ok_or_else(|| LabError::Invalid(format!("guest {} has no agent port", h.id)))?;
    let held =
        Flock::lock(open_lock(sock)?, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
            op: "locking",
            path: sock.clone(),
            source: e.into(),
        })?;
    Ok((held, sock.clone()))
}

fn open_lock(sock: &Path) -> Result<File, LabError> {
    let path = sock.with_extension("lock");
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LabError::io("opening", &path))
}

/// Send `req` on `sock` and read lines until its answer, all within `limit`.
fn round_trip(sock: &Path, req: &Request, limit: Duration) -> Result<Response, String> {
    let end = Instant::now() + limit;
    let mut stream = UnixStream::connect(sock).map_err(|e| format!("connecting: {e}"))?;
    stream
        .write_all(&proto::line(req))
        .map_err(|e| format!("sending: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {} s", limit.as_secs()));
        }
        reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Err("the agent port closed (is the guest running?)".into()),
            Ok(_) if line.ends_with(b"\n") => {
                // Answers to earlier, abandoned requests may still be in the stream: skip them.
                if let Ok(r) = serde_json::from_slice::<Response>(&line) {
                    if r.id == req.id {
                        return Ok(r);
                    }
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
}

/// An id that does not repeat across clients: 64 bits from the OS RNG.
fn request_id() -> u64 {
    use rand_core::{OsRng, RngCore};
    OsRng.next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn stale_answers_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("agent0.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let req: Request = serde_json::from_str(&line).unwrap();
            let answer = |id| Response {
                id,
                status: 5,
                stdout: b"x".to_vec(),
                stderr: Vec::new(),
                pid: None,
            };
            let mut s = r.into_inner();
            s.write_all(b"garbage\n").unwrap();
            s.write_all(&proto::line(&answer(req.id + 1))).unwrap();
            s.write_all(&proto::line(&answer(req.id))).unwrap();
        });
        let req = Request {
            id: 42,
            argv: vec!["x".into()],
            stdin: Vec::new(),
            timeout_secs: 1,
            detach: None,
        };
        let r = round_trip(&sock, &req, Duration::from_secs(5)).unwrap();
        assert_eq!((r.id, r.status), (42, 5));
        server.join().unwrap();
    }

    #[test]
    fn a_silent_agent_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("agent0.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let req = Request {
            id: 1,
            argv: vec!["x".into()],
            stdin: Vec::new(),
            timeout_secs: 1,
            detach: None,
        };
        let t = Instant::now();
        let e = round_trip(&sock, &req, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
