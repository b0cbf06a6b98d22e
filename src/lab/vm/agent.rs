//! `rnet lab agent`: the guest side of the VM lab, started by the guest's init (under tini,
//! which reaps orphans). It sets up the guest's underlay from the kernel command line, then
//! serves every `rnet.agent.N` virtio-serial port in its own thread: read a request line, run
//! the command, write the response line.
//!
//! A virtio-serial port reads end-of-file whenever no client is connected on the machine's side
//! (the guest kernel reports the host end as closed), so an empty read means "wait and retry",
//! not "done".

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::guest_net;
use super::proto::{self, Request, Response, EXIT_TIMEOUT, PORTS, PORT_PREFIX};
use crate::lab::LabError;

/// PATH of every command: the shared rnet binaries first.
pub const GUEST_PATH: &str =
    "/opt/rnet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long to wait for the agent ports to appear after boot.
const PORT_DEADLINE: Duration = Duration::from_secs(30);
/// Pause after an end-of-file (no client connected).
const IDLE: Duration = Duration::from_millis(20);
/// Longest request line accepted (stdin travels inside it).
const MAX_LINE: usize = 64 << 20;

/// Run the agent; returns only on a setup failure.
pub fn run() -> Result<(), LabError> {
    let cmdline = fs::read_to_string("/proc/cmdline")
        .map_err(LabError::io("reading", Path::new("/proc/cmdline")))?;
    let boot = guest_net::Boot::parse(&cmdline)?;
    if let Err(e) = guest_net::configure(&boot) {
        // Keep serving: a guest without its underlay is still worth inspecting through exec.
        eprintln!("rnet lab agent: setting up the underlay: {e}");
    }
    let ports = wait_ports()?;
    // On the console: how long the guest took to get here (boot-time measurements).
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    eprintln!(
        "rnet lab agent: {} serving {} port(s), guest uptime {} s",
        boot.host,
        ports.len(),
        uptime.split_whitespace().next().unwrap_or("?")
    );
    let threads: Vec<_> = ports
        .into_iter()
        .map(|p| thread::spawn(move || serve(&p)))
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Err(LabError::Runtime("every agent port failed".into()))
}

/// `/dev/vportNpM` of every `rnet.agent.*` port, once all [`PORTS`] are there.
fn wait_ports() -> Result<Vec<PathBuf>, LabError> {
    let end = Instant::now() + PORT_DEADLINE;
    loop {
        let found = agent_ports(Path::new("/sys/class/virtio-ports"));
        if found.len() >= PORTS || (Instant::now() >= end && !found.is_empty()) {
            return Ok(found);
        }
        if Instant::now() >= end {
            return Err(LabError::Runtime(format!(
                "no {PORT_PREFIX}* virtio-serial port after {} s",
                PORT_DEADLINE.as_secs()
            )));
        }
        thread::sleep(IDLE);
    }
}

/// The device nodes of the ports under `sysfs` whose name starts with [`PORT_PREFIX`].
fn agent_ports(sysfs: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(sysfs) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("name"))
                .is_ok_and(|n| n.trim().starts_with(PORT_PREFIX))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    out.sort();
    out
}

/// Serve one port forever.
fn serve(port: &Path) {
    let mut dev = match OpenOptions::new().read(true).write(true).open(port) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rnet lab agent: opening {}: {e}", port.display());
            return;
        }
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match dev.read(&mut chunk) {
            Ok(0) | Err(_) => thread::sleep(IDLE),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Some(resp) = answer(&line) {
                // A client that left takes its answer with it; nothing to do about that.
                let _ = dev.write_all(&proto::line(&resp));
            }
        }
        if buf.len() > MAX_LINE {
            buf.clear();
        }
    }
}

/// The response to one request line (None for a line that is not a request).
fn answer(line: &[u8]) -> Option<Response> {
    let req: Request = serde_json::from_slice(line).ok()?;
    Some(match &req.detach {
        Some(log) => detach(&req, Path::new(log)),
        None => run_request(&req),
    })
}

fn failure(id: u64, status: i32, msg: String) -> Response {
    Response {
        id,
        status,
        stdout: Vec::new(),
        stderr: (msg + "\n").into_bytes(),
        pid: None,
    }
}

/// The command of `req`, in its own process group, with the guest's PATH.
fn command(req: &Request) -> Option<Command> {
    let (program, args) = req.argv.split_first()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("PATH", GUEST_PATH)
        .env("HOME", "/root")
        .current_dir("/")
        .process_group(0);
    Some(cmd)
}

fn spawn_status(e: &std::io::Error) -> i32 {
    match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Start `req` in the background with output appended to `log`; a thread reaps it.
fn detach(req: &Request, log: &Path) -> Response {
    let Some(mut cmd) = command(req) else {
        return failure(req.id, 125, "no command given".into());
    };
    if let Some(parent) = log.parent() {
        let _ = fs::create_dir_all(parent);
    }
    let out = OpenOptions::new().create(true).append(true).open(log);
    let (out, err) = match out.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(pair) => pair,
        Err(e) => return failure(req.id, 125, format!("opening {}: {e}", log.display())),
    };
    match cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn() {
        Ok(mut child) => {
            let pid = child.id();
            thread::spawn(move || child.wait());
            Response {
                id: req.id,
                status: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
                pid: Some(pid),
            }
        }
        Err(e) => failure(req.id, spawn_status(&e), format!("{}: {e}", req.argv[0])),
    }
}

/// Run `req` to completion (or its timeout) and collect its output.
fn run_request(req: &Request) -> Response {
    let Some(mut cmd) = command(req) else {
        return failure(req.id, 125, "no command given".into());
    };
    let stdin = if req.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    let spawned = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failure(req.id, spawn_status(&e), format!("{}: {e}", req.argv[0])),
    };
    if let Some(mut pipe) = child.stdin.take() {
        let data = req.stdin.clone();
        thread::spawn(move || pipe.write_all(&data));
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = wait_deadline(&mut child, Duration::from_secs(req.timeout_secs));
    let mut stderr = err.join().unwrap_or_default();
    let status = match status {
        Some(s) => exit_code(s),
        None => {
            stderr.extend_from_slice(
                format!("rnet lab agent: killed after {} s\n", req.timeout_secs).as_bytes(),
            );
            EXIT_TIMEOUT
        }
    };
    Response {
        id: req.id,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr,
        pid: None,
    }
}

/// Wait for `child` until `limit`; on timeout kill its process group and return None.
fn wait_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return None;
        }
        thread::sleep(IDLE);
    }
}

fn exit_code(s: ExitStatus) -> i32 {
    s.code()
        .unwrap_or_else(|| 128 + s.signal().unwrap_or_default())
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str], timeout_secs: u64) -> Request {
        Request {
            id: 9,
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: Vec::new(),
            timeout_secs,
            detach: None,
        }
    }

    #[test]
    fn exit_status_and_output_come_back() {
        let r = run_request(&req(&["sh", "-c", "echo out; echo err >&2; exit 3"], 10));
        assert_eq!((r.id, r.status), (9, 3));
        assert_eq!(r.stdout, b"out\n");
        assert_eq!(r.stderr, b"err\n");
    }

    #[test]
    fn stdin_reaches_the_command() {
        let mut r = req(&["cat"], 10);
        r.stdin = b"hello\0world".to_vec();
        assert_eq!(run_request(&r).stdout, b"hello\0world");
    }

    #[test]
    fn a_missing_program_is_127_and_a_hung_one_is_killed() {
        assert_eq!(run_request(&req(&["/nonexistent/x"], 5)).status, 127);
        let t = Instant::now();
        let r = run_request(&req(&["sleep", "30"], 1));
        assert_eq!(r.status, EXIT_TIMEOUT);
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn garbage_lines_get_no_answer() {
        assert!(answer(b"not json\n").is_none());
        assert!(answer(b"{\"id\":1}\n").is_none());
    }

    #[test]
    fn ports_are_found_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        for (dev, name) in [("vport1p1", "rnet.agent.0"), ("vport1p2", "other")] {
            fs::create_dir(tmp.path().join(dev)).unwrap();
            fs::write(tmp.path().join(dev).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(agent_ports(tmp.path()), [PathBuf::from("/dev/vport1p1")]);
    }

    #[test]
    fn detached_commands_answer_at_once_with_a_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let mut r = req(&["sh", "-c", "echo started"], 5);
        r.detach = Some(log.display().to_string());
        let resp = answer(&proto::line(&r)).unwrap();
        assert_eq!(resp.status, 0);
        assert!(resp.pid.is_some());
        let end = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&log).unwrap_or_default() != "started\n" {
            assert!(Instant::now() < end, "detached output never arrived");
            thread::sleep(IDLE);
        }
    }
}
