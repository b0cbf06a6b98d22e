//! The API socket as an attacker on the same machine meets it: who may connect (the socket
//! file's mode and the caller's credentials), which namespaces a non-root caller may attach,
//! and whether slow clients can hold the daemon.
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{links_in, output_with_timeout, wait_until, ChildGuard, Host, Workload};

/// `users` on every Debian-like system; the group the tests give API access to.
const USERS_GID: u32 = 100;
/// Made-up ids no account has: a group member, a stranger, and another member.
const MEMBER: User = User {
    uid: 64000,
    gid: 64000,
    groups: &[USERS_GID],
};
const STRANGER: User = User {
    uid: 64001,
    gid: 64001,
    groups: &[],
};
const OTHER_MEMBER: User = User {
    uid: 64002,
    gid: 64002,
    groups: &[USERS_GID],
};

/// Root, as the tests themselves run.
const ROOT: User = User {
    uid: 0,
    gid: 0,
    groups: &[0],
};

#[derive(Clone, Copy)]
struct User {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

/// Make `cmd` run as `user` (groups first, then gid, then uid, all before exec).
fn as_user(cmd: &mut Command, user: User) -> &mut Command {
    let groups: Vec<libc::gid_t> = user.groups.to_vec();
    // SAFETY: the closure runs between fork and exec and only makes three raw syscalls on
    // memory allocated before the fork; it allocates nothing itself.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(user.gid, user.gid, user.gid) != 0
                || libc::setresuid(user.uid, user.uid, user.uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// `rnet --socket <sock> <args>` run as `user`.
fn rnet_as(h: &Host, user: User, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rnet"));
    cmd.arg("--socket").arg(h.socket()).args(args);
    output_with_timeout(as_user(&mut cmd, user), Duration::from_secs(60))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A host whose directory other users may traverse (not list), so only the socket's own
/// mode and rnetd's checks stand between them and the API.
fn host(tag: &str) -> Host {
    let h = Host::new(tag);
    std::fs::set_permissions(h.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    h
}

/// Watches `path` from before the daemon starts: every (mode, gid) the file ever showed.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(u32, u32)>>,
}

impl Watcher {
    fn start(path: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    let now = (m.mode() & 0o7777, m.gid());
                    if !seen.contains(&now) {
                        seen.push(now);
                    }
                }
            }
            seen
        });
        Watcher { stop, thread }
    }

    fn seen(self) -> Vec<(u32, u32)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn socket_is_root_only_from_its_first_moment_and_strangers_are_refused() {
    let mut h = host("sock");
    let watcher = Watcher::start(h.socket());
    // umask 0: a socket bound in place would appear as 0777 until chmod'ed.
    h.start_daemon_wrapped(&["sh", "-c", "umask 0; exec \"$@\"", "sh"], &[]);
    let seen = watcher.seen();
    assert_eq!(seen, vec![(0o600, 0)], "modes and groups the socket showed");
    assert!(h.rnet(&["status"]).status.success(), "root is served");

    // The file's mode keeps a stranger out at connect time.
    let out = rnet_as(&h, STRANGER, &["status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    // Loosened by hand: rnetd's own check still refuses, with the API's error shape.
    std::fs::set_permissions(h.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = rnet_as(&h, STRANGER, &["status"]);
    assert!(!out.status.success(), "a non-root caller must be refused");
    assert!(
        stderr(&out).contains("uid 64001 is not root"),
        "{}",
        stderr(&out)
    );
    let raw = curl_as(&h, STRANGER, "GET", "/v1/status", None);
    assert!(raw.starts_with("403 "), "{raw}");
    assert!(raw.contains(r#""kind":"forbidden""#), "{raw}");
    // A group member is no one special without --api-group.
    let out = rnet_as(&h, MEMBER, &["status"]);
    assert!(!out.status.success());
    assert!(
        h.daemon_log().contains("refused a connection") && h.daemon_log().contains("uid=64001"),
        "refusals are logged:\n{}",
        h.daemon_log()
    );
}

/// `curl` as `user`: "STATUS BODY".
fn curl_as(h: &Host, user: User, method: &str, path: &str, body: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "-o", "-"])
        .arg("--unix-socket")
        .arg(h.socket())
        .args(["-X", method, "-H", "content-type: application/json"]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    cmd.arg(format!("http://rnetd{path}"));
    let out = output_with_timeout(as_user(&mut cmd, user), Duration::from_secs(30));
    // curl prints the body, then the status on a line of its own: put the status first.
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    match text.rsplit_once('\n') {
        Some((body, code)) => format!("{code} {body}"),
        None => format!("{text} {}", stderr(&out)),
    }
}

/// A process of `user` in a network namespace it made (with its own user namespace).
fn own_namespace(user: User) -> ChildGuard {
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--net", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = ChildGuard(as_user(&mut cmd, user).spawn().expect("spawn unshare"));
    let pid = child.0.id();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    wait_until(
        "unshare to make its namespace and exec sleep",
        Duration::from_secs(10),
        || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            comm.trim() == "sleep" && ns.is_some_and(|n| n != ours)
        },
    );
    child
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn group_members_use_the_api_but_attach_only_namespaces_they_own() {
    let mut h = host("group");
    let watcher = Watcher::start(h.socket());
    h.start_daemon_with(&["--api-group", "users"]);
    assert_eq!(watcher.seen(), vec![(0o660, USERS_GID)]);

    let out = rnet_as(&h, MEMBER, &["status"]);
    assert!(out.status.success(), "a member is served: {}", stderr(&out));
    let out = rnet_as(&h, STRANGER, &["status"]);
    assert!(!out.status.success(), "a non-member is not");
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    h.rnet_ok(&["create", "g1", "--subnet", "10.40.0.0/24"]);
    // Root's namespaces, by path, by pid, and through the CNI route: refused, nothing made.
    let w = Workload::new("rootns");
    let wpath = w.path().to_str().unwrap().to_string();
    let out = rnet_as(&h, MEMBER, &["attach", "g1", "--netns", &wpath]);
    assert!(!out.status.success());
    let want = format!("uid 64000 may not attach network namespace {wpath} owned by uid 0");
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    let me = std::process::id().to_string();
    let out = rnet_as(&h, MEMBER, &["attach", "g1", "--pid", &me]);
    assert!(
        stderr(&out).contains(&format!(
            "network namespace /proc/{me}/ns/net owned by uid 0"
        )),
        "the host's own namespace: {}",
        stderr(&out)
    );
    let body = format!(r#"{{"network":"g1","netns":"{wpath}","ifname":"eth0","id":"cni1"}}"#);
    let raw = curl_as(&h, MEMBER, "POST", "/v1/cni/add", Some(&body));
    assert!(raw.starts_with("403 "), "{raw}");
    assert!(raw.contains("may not attach"), "{raw}");
    // Someone else's namespace, even a fellow member's.
    let theirs = own_namespace(OTHER_MEMBER);
    let their_pid = theirs.0.id().to_string();
    let out = rnet_as(&h, MEMBER, &["attach", "g1", "--pid", &their_pid]);
    assert!(
        stderr(&out).contains("owned by uid 64002"),
        "{}",
        stderr(&out)
    );
    assert_eq!(h.rnet_json(&["endpoints"]), serde_json::json!([]));
    assert_eq!(w.links(), vec!["lo".to_string()]);

    // The member's own namespace: attached, and the interface is inside it.
    let mine = own_namespace(MEMBER);
    let pid = mine.0.id().to_string();
    let out = rnet_as(&h, MEMBER, &["attach", "g1", "--pid", &pid, "--id", "mine"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    assert!(
        links_in(&ns).contains(&"eth0".to_string()),
        "{:?}",
        links_in(&ns)
    );
    // Root may attach anyone's.
    h.rnet_ok(&["attach", "g1", "--pid", &their_pid, "--id", "theirs"]);
    let out = rnet_as(&h, MEMBER, &["detach", "g1", "--id", "mine"]);
    assert!(out.status.success(), "{}", stderr(&out));
    h.rnet_ok(&["detach", "g1", "--id", "theirs"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn unknown_api_group_is_refused_at_start() {
    let h = host("nogroup");
    let out = output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_rnetd"))
            .arg("--socket")
            .arg(h.socket())
            .args([
                "--api-group",
                "no-such-group-rnet",
                "--docker-plugin-dir",
                "none",
            ])
            .arg("--state-dir")
            .arg(h.state_dir()),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(r#"--api-group "no-such-group-rnet": no such group"#),
        "{}",
        stderr(&out)
    );
    assert!(!h.socket().exists());
}

/// Open connections counted by the daemon's open descriptors.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connections the daemon holds on its API socket: the connected unix sockets with the
/// listener's address. Unlike a count of the daemon's descriptors, this does not move with
/// whatever else the daemon opens and closes meanwhile (netlink sockets, namespace files,
/// the store). An accepted socket belongs to its client's network namespace, which is this
/// test's; the listener was bound in a private directory next to the socket and renamed
/// into place (src/daemon/socket.rs), so that is its address.
fn api_connections(socket: &Path) -> usize {
    const CONNECTED: &str = "03";
    let staged = socket.parent().unwrap().join(".rnetd-bind-");
    let staged = staged.display().to_string();
    std::fs::read_to_string("/proc/self/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() == 8 && cols[5] == CONNECTED && cols[7].starts_with(&staged)
        })
        .count()
}

/// Read until the server closes (or answers and closes); what it sent, and when. None if it
/// kept the connection open for `patience`.
fn wait_closed(mut s: UnixStream, patience: Duration) -> Option<(Instant, String)> {
    s.set_read_timeout(Some(patience)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some((Instant::now(), String::from_utf8_lossy(&got).into())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some((Instant::now(), String::from_utf8_lossy(&got).into()))
            }
            Err(_) => return None,
        }
    }
}

/// Writes `bytes` one at a time, `every` apart, until done or the server hangs up.
fn trickle(mut s: UnixStream, bytes: Vec<u8>, every: Duration) {
    for b in bytes {
        if s.write_all(&[b]).is_err() {
            return;
        }
        thread::sleep(every); // the slowness is what is tested
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn slow_clients_cannot_hold_the_daemon() {
    let mut h = host("slow");
    h.start_daemon();
    let sock = h.socket();
    let start = Instant::now();
    // 100 connections that say nothing, 100 that send headers a byte a second.
    let silent: Vec<UnixStream> = (0..100).map(|_| connect(&sock)).collect();
    let (mut writers, mut readers) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let s = connect(&sock);
        let w = s.try_clone().unwrap();
        let head = b"GET /v1/status HTTP/1.1\r\nhost: rnetd\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec();
        writers.push(thread::spawn(move || {
            trickle(w, head, Duration::from_secs(1))
        }));
        readers.push(thread::spawn(move || {
            wait_closed(s, Duration::from_secs(40)).map(|(_, text)| text)
        }));
    }
    // At most 128 are taken on at once; the rest wait in the backlog.
    wait_until(
        "the daemon to take on 128 connections",
        Duration::from_secs(10),
        || api_connections(&sock) >= 128,
    );
    let held = api_connections(&sock);
    assert!(
        held <= 128,
        "connection limit: {held} connections taken on of 200"
    );

    // A real client still gets its answer within a few seconds.
    let t = Instant::now();
    h.rnet_ok(&["status"]);
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "rnet status took {:?} among 200 slow clients",
        t.elapsed()
    );

    // Every silent connection is closed by the server: the first 128 within the header
    // timeout (5 s), the rest one timeout after they were taken on.
    for s in silent {
        let closed = wait_closed(s, Duration::from_secs(30));
        let (at, _) = closed.expect("a silent connection was never closed by rnetd");
        assert!(
            at - start < Duration::from_secs(20),
            "closed after {:?}",
            at - start
        );
    }
    // Byte-a-second headers (about 90 bytes) are cut off long before they are complete.
    let mut cut = 0;
    for t in readers {
        if let Some(answer) = t.join().unwrap() {
            assert!(
                !answer.contains("200 OK"),
                "a trickled request was served: {answer}"
            );
            cut += 1;
        }
    }
    assert_eq!(cut, 100, "every byte-a-second client is cut off");
    // Their writes fail once rnetd hung up.
    for w in writers {
        w.join().unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(45));
    h.rnet_ok(&["status"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_trickled_body_is_refused_after_the_body_deadline() {
    let mut h = host("body");
    h.start_daemon();
    let s = connect(&h.socket());
    let mut w = s.try_clone().unwrap();
    let body = br#"{"name":"slow","subnet":"10.41.0.0/24"}"#;
    write!(
        w,
        "POST /v1/networks HTTP/1.1\r\nhost: rnetd\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let sender = thread::spawn(move || trickle(w, body.to_vec(), Duration::from_secs(1)));
    let t = Instant::now();
    let (_, answer) = wait_closed(s, Duration::from_secs(30)).expect("rnetd never answered");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "answered after {:?}",
        t.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    sender.join().unwrap();
    assert_eq!(
        h.rnet_json(&["ls"]),
        serde_json::json!([]),
        "nothing created"
    );
}

fn connect(sock: &Path) -> UnixStream {
    UnixStream::connect(sock).expect("connect to the API socket")
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn docker_plugin_socket_is_roots_alone_and_closes_idle_connections() {
    let mut h = host("dockersock");
    let plugins = h.dir().join("plugins");
    let plugin = plugins.join("rnet.sock");
    let watcher = Watcher::start(plugin.clone());
    h.start_daemon_with(&[
        "--api-group",
        "users",
        "--docker-plugin-dir",
        plugins.to_str().unwrap(),
    ]);
    wait_until("the plugin socket", Duration::from_secs(10), || {
        plugin.exists()
    });
    assert_eq!(
        watcher.seen(),
        vec![(0o600, 0)],
        "root's alone, whatever --api-group says"
    );
    assert!(rnet_as(&h, MEMBER, &["status"]).status.success());
    let activate = |user: User| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .arg("--unix-socket")
        .arg(&plugin)
        .arg("http://rnetd/Plugin.Activate");
        let out = output_with_timeout(as_user(&mut cmd, user), Duration::from_secs(30));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
    };
    assert!(activate(ROOT).ends_with("\n200"), "{}", activate(ROOT));
    let refused = activate(MEMBER);
    // The file's mode: connect(2) fails (EACCES), curl never gets to send.
    assert!(
        refused.contains("\n000") && refused.contains("Couldn't connect"),
        "{refused}"
    );
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = activate(MEMBER);
    assert!(refused.ends_with("\n403"), "{refused}");
    assert!(refused.contains("uid 64000 is not root"), "{refused}");

    let t = Instant::now();
    let closed = wait_closed(connect(&plugin), Duration::from_secs(20));
    assert!(
        closed.is_some(),
        "an idle plugin connection was never closed"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "closed after {:?}",
        t.elapsed()
    );
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn clients_that_never_read_and_one_users_many_connections_cannot_hold_the_daemon() {
    let mut h = host("unread");
    h.start_daemon_with(&["--api-group", "users"]);
    let pid = h.daemon_pid().unwrap();
    let sock = h.socket();
    let base = open_fds(pid);
    // Requests pipelined without ever reading an answer: once the socket buffers fill,
    // rnetd's writes block; the connection's lifetime (30 s) still ends it.
    let unread: Vec<UnixStream> = (0..4).map(|_| connect(&h.socket())).collect();
    let writers: Vec<_> = unread
        .iter()
        .map(|s| {
            let mut w = s.try_clone().unwrap();
            thread::spawn(move || {
                let req = b"GET /v1/status HTTP/1.1\r\nhost: rnetd\r\n\r\n";
                for _ in 0..20_000 {
                    if w.write_all(req).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    // A group member opens 40 connections and keeps them busy (requests pipelined, answers
    // never read, so no timeout closes them early): it gets its share (32), no more.
    let mut py = Command::new("/usr/bin/python3");
    py.args([
        "-c",
        r#"
import socket, sys, time
s = [socket.socket(socket.AF_UNIX) for _ in range(40)]
for c in s:
    c.connect(sys.argv[1])
    c.setblocking(False)
req = b"GET /v1/status HTTP/1.1\r\nhost: rnetd\r\n\r\n" * 4000
for c in s:
    try:
        c.send(req)
    except OSError:
        pass
print("ok", flush=True)
time.sleep(60)
"#,
    ])
    .arg(h.socket())
    .stdout(std::process::Stdio::piped());
    let member = ChildGuard(as_user(&mut py, MEMBER).spawn().unwrap());
    wait_until(
        "the member's connections are made",
        Duration::from_secs(10),
        || api_connections(&sock) >= 4 + 32,
    );
    wait_until(
        "connections beyond the member's share are closed",
        Duration::from_secs(10),
        || api_connections(&sock) <= 4 + 32,
    );
    assert!(
        h.daemon_log().contains("holds its share of connections"),
        "the refusal is logged"
    );
    // Root still gets an answer at once.
    let t = Instant::now();
    h.rnet_ok(&["status"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(member);
    // Within the lifetime plus a margin, the unread connections are gone too.
    wait_until(
        "connections that never read are closed",
        Duration::from_secs(45),
        || api_connections(&sock) == 0 && open_fds(pid) <= base + 1,
    );
    for w in writers {
        w.join().unwrap();
    }
    drop(unread);
    h.rnet_ok(&["status"]);
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn group_members_cannot_change_trust_or_release_what_is_not_theirs() {
    let mut h = host("rootonly");
    h.start_daemon_with(&["--api-group", "users"]);
    h.rnet_ok(&["create", "ro", "--subnet", "10.67.0.0/24"]);
    let w = Workload::new("rootws");
    let path = w.path().display().to_string();
    let ep = h.rnet_json(&["attach", "ro", "--netns", &path]);
    let id = ep["id"].as_str().unwrap();
    for (args, what) in [
        (vec!["rm", "ro", "--force"], "remove networks"),
        (vec!["peers", "--trust", "h9"], "approve a peer's identity"),
        (vec!["rotate-key"], "rotate this host's WireGuard key"),
        (vec!["gc", "--host", "h9", "--force"], "gc"),
        (vec!["doctor", "--repair"], "repair the kernel"),
        (vec!["detach", "ro", "--id", id], "owned by uid 0"),
    ] {
        let out = rnet_as(&h, MEMBER, &args);
        assert!(
            !out.status.success() && stderr(&out).contains(what),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Nothing changed: root's endpoint and the network are still there.
    let eps = h.rnet_json(&["endpoints", "ro"]);
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");
    h.rnet_ok(&["detach", "ro", "--id", id]);
    h.rnet_ok(&["rm", "ro"]);
}
