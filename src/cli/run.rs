//! `rnet run`: the launch path. Fork; the child makes new network, UTS, IPC and mount
//! namespaces and waits; the parent attaches the child's namespace to the network, lets
//! the child exec the workload, forwards signals to it, and when it exits (normally or
//! killed) detaches the endpoint and exits with the workload's status.
//!
//! The fork happens before any thread exists (no tokio runtime yet), so the child may do
//! more than async-signal-safe work between fork and exec.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use clap::Args;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execvp, fork, pipe2, read, sethostname, write, ForkResult, Pid};

use super::{Cli, Format};
use crate::api::types::{AttachRequest, DetachRequest, DetachResponse};
use crate::api::Client;
use crate::model::Endpoint;

/// Exit status when rnet itself fails before the workload runs (as `docker run` uses).
const EXIT_RNET_FAILED: i32 = 125;
/// Exit status when the command cannot be executed.
const EXIT_CANNOT_EXEC: i32 = 127;

#[derive(Args, Debug)]
pub struct RunArgs {
    pub network: String,
    /// Hostname inside the workload's UTS namespace.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Address to take (default: the lowest free one).
    #[arg(long)]
    pub ip: Option<String>,
    /// The workload's DNS name on the network (lowercase RFC 1123); also the endpoint id
    /// unless --id is given.
    #[arg(long)]
    pub name: Option<String>,
    /// Another DNS name for the workload (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Endpoint id (default: the name, else generated).
    #[arg(long)]
    pub id: Option<String>,
    /// Interface name inside the workload.
    #[arg(long, default_value = "eth0")]
    pub ifname: String,
    /// Publish a port of this host: `[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "HOST_PORT:PORT", value_parser = super::parse_port)]
    pub publish: Vec<crate::model::PortMapping>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Run the launch path; returns the exit status for the process. Call before any runtime exists.
pub fn exec(cli: &Cli, args: &RunArgs) -> i32 {
    let argv: Vec<CString> = match args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect()
    {
        Ok(v) => v,
        Err(_) => return fail("command arguments may not contain NUL bytes"),
    };
    let (ready_r, ready_w) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(&format!("creating a pipe: {e}")),
    };
    let (go_r, go_w) = match pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(&format!("creating a pipe: {e}")),
    };
    // SAFETY: no other thread exists yet (the runtime is built after the fork).
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(ready_r);
            drop(go_w);
            child(args.hostname.as_deref(), &argv, ready_w, go_r)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ready_w);
            drop(go_r);
            parent(cli, args, child, ready_r, go_w)
        }
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("rnet: error: {msg}");
    EXIT_RNET_FAILED
}

/// The child: new namespaces, tell the parent, wait for the go-ahead, exec.
fn child(hostname: Option<&str>, argv: &[CString], ready: OwnedFd, go: OwnedFd) -> ! {
    let setup = || -> Result<(), String> {
        let flags = CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNS;
        unshare(flags).map_err(|e| format!("creating namespaces: {e}"))?;
        // Keep the workload's mounts from propagating back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making mounts private: {e}"))?;
        // sysfs shows the network namespace of whoever mounted it: a fresh mount lets the
        // workload see its own interfaces under /sys/class/net. Best effort (e.g. no /sys).
        let _ = mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        );
        if let Some(h) = hostname {
            sethostname(h).map_err(|e| format!("setting hostname {h:?}: {e}"))?;
        }
        Ok(())
    };
    if let Err(msg) = setup() {
        eprintln!("rnet: error: {msg}");
        std::process::exit(EXIT_RNET_FAILED);
    }
    let _ = write(&ready, b"r");
    drop(ready);
    let mut buf = [0u8; 1];
    match read(&go, &mut buf) {
        Ok(1) if buf[0] == b'g' => {}
        // The parent could not attach (it said so) or died: do not run the workload unconnected.
        _ => std::process::exit(EXIT_RNET_FAILED),
    }
    let mut resolv = Vec::new();
    let mut chunk = [0u8; 512];
    while let Ok(n @ 1..) = read(&go, &mut chunk) {
        resolv.extend_from_slice(&chunk[..n]);
    }
    drop(go);
    if !resolv.is_empty() {
        if let Err(e) = install_resolv_conf(&resolv) {
            eprintln!("rnet: warning: the workload keeps the host's resolv.conf: {e}");
        }
    }
    let err = execvp(&argv[0], argv).unwrap_err();
    eprintln!("rnet: error: cannot run {:?}: {err}", argv[0]);
    std::process::exit(EXIT_CANNOT_EXEC);
}

/// Put `content` over /etc/resolv.conf in the workload's own mount namespace (private since
/// `setup`, so the host's file is never touched): written into a tmpfs mounted over /tmp
/// for the moment, bind-mounted from there, and the tmpfs detached again (the bind mount
/// keeps it), so no file of it is ever visible outside the workload.
fn install_resolv_conf(content: &[u8]) -> Result<(), String> {
    use nix::mount::{umount2, MntFlags};
    let staging = "/tmp";
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(|e| format!("mounting a tmpfs on {staging}: {e}"))?;
    let file = format!("{staging}/resolv.conf");
    let bound = std::fs::write(&file, content)
        .map_err(|e| format!("writing {file}: {e}"))
        .and_then(|()| {
            mount(
                Some(file.as_str()),
                "/etc/resolv.conf",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind-mounting over /etc/resolv.conf: {e}"))
        });
    let _ = umount2(staging, MntFlags::MNT_DETACH);
    bound
}

/// The workload's resolv.conf: the network's DNS at its gateway, names searched in the
/// network's zone. Empty (the host's stays) when the network cannot be read.
async fn resolv_conf(client: &Client, network: &str) -> String {
    match client
        .get::<crate::api::types::NetworkDetail>(&format!(
            "/v1/networks/{}",
            super::path_segment(network)
        ))
        .await
    {
        Ok(detail) => resolv_conf_text(&detail.network),
        Err(e) => {
            eprintln!(
                "rnet: warning: reading network {network} for the workload's resolv.conf: {e}"
            );
            String::new()
        }
    }
}

/// Pure: the resolv.conf text for a workload on `net`.
pub fn resolv_conf_text(net: &crate::model::Network) -> String {
    format!(
        "# written by rnet run: network {name}'s DNS (its names, others forwarded)\nnameserver {gw}\nsearch {name}\n",
        name = net.name,
        gw = net.gateway
    )
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        let n = write(fd, bytes)?;
        bytes = &bytes[n..];
    }
    Ok(())
}

fn parent(cli: &Cli, args: &RunArgs, child: Pid, ready: OwnedFd, go: OwnedFd) -> i32 {
    let mut buf = [0u8; 1];
    if !matches!(read(&ready, &mut buf), Ok(1)) {
        // The child failed to set up and said why; report its status.
        return wait_status(child);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = kill(child, Signal::SIGKILL);
            wait_status(child);
            return fail(&format!("starting runtime: {e}"));
        }
    };
    runtime.block_on(supervise(cli, args, child, go))
}

async fn supervise(cli: &Cli, args: &RunArgs, child: Pid, go: OwnedFd) -> i32 {
    let client = Client::new(&cli.socket);
    let req = AttachRequest {
        network: args.network.clone(),
        netns: None,
        pid: Some(child.as_raw() as u32),
        ifname: Some(args.ifname.clone()),
        ip: args.ip.clone(),
        id: args.id.clone().or_else(|| args.name.clone()),
        origin: Some(crate::model::Origin::Run),
        name: args.name.clone(),
        aliases: args.aliases.clone(),
        ports: args.publish.clone(),
        ..Default::default()
    };
    let ep: Endpoint = match client.post("/v1/attach", &req).await {
        Ok(ep) => ep,
        Err(e) => {
            drop(go); // the child sees EOF and exits without running the workload
            wait_status(child);
            return fail(&e.to_string());
        }
    };
    if cli.output == Format::Json {
        eprintln!("{}", serde_json::to_string(&ep).unwrap_or_default());
    }
    // The go-ahead, then the workload's resolv.conf (the child reads it up to EOF).
    let resolv = resolv_conf(&client, &args.network).await;
    let _ = write(&go, b"g");
    let _ = write_all(&go, resolv.as_bytes());
    drop(go);
    let status = wait_forwarding_signals(child).await;
    let detach = DetachRequest {
        network: args.network.clone(),
        id: Some(ep.id.to_string()),
        netns: None,
        pid: None,
    };
    if let Err(e) = client
        .post::<_, DetachResponse>("/v1/detach", &detach)
        .await
    {
        eprintln!("rnet: warning: detaching endpoint {} failed: {e}", ep.id);
    }
    status
}

/// Wait for the child, passing on the signals a supervisor is sent.
async fn wait_forwarding_signals(child: Pid) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let mut waiter = tokio::task::spawn_blocking(move || wait_status(child));
    let kinds = [
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::hangup(), Signal::SIGHUP),
        (SignalKind::quit(), Signal::SIGQUIT),
    ];
    let mut streams: Vec<(tokio::signal::unix::Signal, Signal)> = kinds
        .into_iter()
        .filter_map(|(k, s)| signal(k).ok().map(|st| (st, s)))
        .collect();
    loop {
        let next_signal = futures::future::select_all(streams.iter_mut().map(|(st, sig)| {
            let sig = *sig;
            Box::pin(async move {
                st.recv().await;
                sig
            })
        }));
        tokio::select! {
            status = &mut waiter => return status.unwrap_or(EXIT_RNET_FAILED),
            (sig, _, _) = next_signal => { let _ = kill(child, sig); }
        }
    }
}

/// Block until the child ends; its exit status, or 128 + the signal that killed it.
fn wait_status(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return EXIT_RNET_FAILED,
        }
    }
}
