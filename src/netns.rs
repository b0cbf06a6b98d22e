//! Network namespaces: create (bind-mounted under rnet's run directory, not /run/netns),
//! open, remove, and run a closure inside one.
//!
//! Namespaces belong to threads, not processes. Entering one with setns on a tokio worker
//! would leave that worker in the wrong namespace for whatever task it runs next, so every
//! namespace switch happens on a thread of its own: a pooled one (`threads`) that enters its
//! home namespace again before its next job, or, to create a namespace, a fresh one.

use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Errors of namespace handling, each naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("process {pid} does not exist")]
    NoSuchPid { pid: u32 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
    #[error("opening {path} took longer than {secs} s (a hung filesystem?)")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("too many namespace paths are being opened at once ({max} places, all held for {} s, some hung); try {path} again later", OPEN_TIMEOUT.as_secs())]
    Busy { path: PathBuf, max: usize },
}

/// Namespace paths opened at once for root and the daemon itself, at most. A path on a hung
/// filesystem keeps its thread after the deadline: without a bound, such paths could use up
/// the runtime's blocking threads (which the embedded store and every namespace switch need
/// too).
pub const MAX_UNTRUSTED_OPENS: usize = 16;
/// Paths opened at once for any one non-root caller: one user's hung paths use up its own
/// places, never root's or another user's.
pub const MAX_OPENS_PER_USER: usize = 4;

static UNTRUSTED_OPENS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_UNTRUSTED_OPENS);
static USER_OPENS: std::sync::Mutex<std::collections::BTreeMap<u32, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
/// Woken whenever a user's place is given back, so that user's waiting opens try again.
static USER_PLACE_FREED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// On whose behalf a path is opened, which decides whose places it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// Root, or the daemon itself (paths it recorded, or dockerd's).
    Trusted,
    /// A non-root caller of the API.
    User(u32),
}

impl Opener {
    pub fn for_uid(uid: u32) -> Opener {
        if uid == 0 {
            Opener::Trusted
        } else {
            Opener::User(uid)
        }
    }

    fn max_places(self) -> usize {
        match self {
            Opener::Trusted => MAX_UNTRUSTED_OPENS,
            Opener::User(_) => MAX_OPENS_PER_USER,
        }
    }
}

/// One place taken in a pool, given back when dropped (with the thread that holds it).
enum Place {
    Trusted(#[allow(dead_code)] tokio::sync::SemaphorePermit<'static>),
    User(u32),
}

impl Place {
    /// Wait until `who` has a place free, or until `deadline`. A burst of opens (fifty
    /// parallel CNI ADDs on a busy two-core host) queues here for the microseconds a healthy
    /// open takes; only places held by hung opens for the whole wait make it fail.
    async fn take(who: Opener, deadline: tokio::time::Instant) -> Option<Place> {
        match who {
            Opener::Trusted => tokio::time::timeout_at(deadline, UNTRUSTED_OPENS.acquire())
                .await
                .ok()?
                .ok()
                .map(Place::Trusted),
            Opener::User(uid) => loop {
                // Registered before looking, so a place freed in between still wakes us.
                let freed = USER_PLACE_FREED.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(place) = Place::try_take_user(uid) {
                    return Some(place);
                }
                tokio::time::timeout_at(deadline, freed).await.ok()?;
            },
        }
    }

    fn try_take_user(uid: u32) -> Option<Place> {
        let mut users = USER_OPENS.lock().unwrap_or_else(|e| e.into_inner());
        let n = users.entry(uid).or_default();
        (*n < MAX_OPENS_PER_USER).then(|| {
            *n += 1;
            Place::User(uid)
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Place::User(uid) = self {
            {
                let mut users = USER_OPENS.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = users.get_mut(uid) {
                    *n -= 1;
                    if *n == 0 {
                        users.remove(uid);
                    }
                }
            }
            USER_PLACE_FREED.notify_waiters();
        }
    }
}

/// Run `open` on a blocking thread once `who` has a place free, giving up at `deadline`
/// (waiting for the place counts). The place is held until the thread really ends, hung or
/// not.
async fn open_bounded(
    path: PathBuf,
    who: Opener,
    deadline: tokio::time::Instant,
    open: impl FnOnce() -> Result<NetNs, NetnsError> + Send + 'static,
) -> Result<NetNs, NetnsError> {
    let Some(place) = Place::take(who, deadline).await else {
        return Err(NetnsError::Busy {
            path,
            max: who.max_places(),
        });
    };
    let task = tokio::task::spawn_blocking(move || {
        let _held = place;
        open()
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(NetnsError::Thread(e.to_string())),
        Err(_) => Err(NetnsError::Timeout {
            path,
            secs: OPEN_TIMEOUT.as_secs(),
        }),
    }
}

/// How long opening a namespace path named by a caller or a record may take, waiting for a
/// free place included.
pub const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + OPEN_TIMEOUT
}

/// An open handle on a network namespace; the namespace lives at least as long as it.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
}

impl NetNs {
    /// Open the namespace at `path` (a bind mount or `/proc/PID/ns/net`), checking that it is one.
    ///
    /// Whatever the path turns out to be, opening it never blocks and has no side effect: it
    /// is first opened with `O_PATH` (a FIFO would otherwise wait for a writer forever, a
    /// device could act on being opened), checked to be a file of the namespace filesystem,
    /// and only then opened for real through `/proc/self/fd`.
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::NotFound => NetnsError::NotFound { path },
                _ => NetnsError::Io {
                    op,
                    path,
                    source: e,
                },
            }
        };
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map_err(io("opening"))?;
        let fs = nix::sys::statfs::fstatfs(&handle).map_err(|e| NetnsError::Sys {
            op: "inspecting",
            path: path.to_path_buf(),
            source: e,
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            });
        }
        let file =
            File::open(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(io("opening"))?;
        let fd = OwnedFd::from(file);
        check_is_netns(&fd, path)?;
        Ok(NetNs {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// [`NetNs::open`] for a path that came from outside (an API caller, a store record):
    /// off the async runtime's workers, and given up after [`OPEN_TIMEOUT`], so no path can
    /// hold a worker (a path on a hung network filesystem blocks even `O_PATH` lookups).
    pub async fn open_untrusted(path: &Path, who: Opener) -> Result<NetNs, NetnsError> {
        let owned = path.to_path_buf();
        open_bounded(path.to_path_buf(), who, open_deadline(), move || {
            NetNs::open(&owned)
        })
        .await
    }

    /// [`NetNs::of_pid`] off the async runtime's workers, with a deadline.
    pub async fn of_pid_untrusted(pid: u32, who: Opener) -> Result<NetNs, NetnsError> {
        open_bounded(pid_netns_path(pid), who, open_deadline(), move || {
            NetNs::of_pid(pid)
        })
        .await
    }

    /// The network namespace of process `pid`.
    pub fn of_pid(pid: u32) -> Result<NetNs, NetnsError> {
        if pid == 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(NetnsError::NoSuchPid { pid });
        }
        Self::open(&pid_netns_path(pid)).map_err(|e| match e {
            NetnsError::NotFound { .. } => NetnsError::NoSuchPid { pid },
            other => other,
        })
    }

    /// Create a new namespace and bind-mount it at `path` (whose parent must exist).
    pub fn create(path: &Path) -> Result<NetNs, NetnsError> {
        let target = path.to_path_buf();
        on_thread(move || create_on_this_thread(&target))??;
        Self::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode: the same namespace has the same inode whatever path reaches it.
    pub fn inode(&self) -> u64 {
        nix::sys::stat::fstat(&self.fd)
            .map(|st| st.st_ino)
            .unwrap_or(0)
    }

    /// The uid that owns this namespace: the owner of the user namespace it belongs to, as
    /// seen from ours. Namespaces made by root in the initial user namespace are owned by 0.
    pub fn owner_uid(&self) -> Result<u32, NetnsError> {
        // From <linux/nsfs.h>: NS_GET_USERNS = _IO(0xb7, 0x1), NS_GET_OWNER_UID = _IO(0xb7, 0x4).
        const NS_GET_USERNS: libc::c_ulong = 0xb701;
        const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;
        // Read errno first: building the error allocates.
        let sys = |op: &'static str| {
            let source = nix::Error::last();
            NetnsError::Sys {
                op,
                path: self.path.clone(),
                source,
            }
        };
        // SAFETY: NS_GET_USERNS takes no argument and only reads the descriptor we own; on
        // success it returns a new descriptor that nothing else owns.
        let raw = unsafe { libc::ioctl(self.fd.as_raw_fd(), NS_GET_USERNS as _) };
        if raw < 0 {
            return Err(sys("finding the user namespace of"));
        }
        // SAFETY: `raw` is a fresh, open descriptor (checked above) owned by nobody else.
        let userns = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut uid: libc::uid_t = 0;
        // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which points to a
        // live local of that type; the descriptor is open for the whole call.
        let rc = unsafe {
            libc::ioctl(
                userns.as_raw_fd(),
                NS_GET_OWNER_UID as _,
                &mut uid as *mut libc::uid_t,
            )
        };
        if rc < 0 {
            return Err(sys("finding the owner of the user namespace of"));
        }
        Ok(uid)
    }

    /// Move the calling thread into this namespace, for good. Only for a thread that exists
    /// for that purpose (never a tokio worker): everything it does afterwards happens there.
    pub fn enter(&self) -> Result<(), NetnsError> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Sys {
            op: "entering",
            path: self.path.clone(),
            source: e,
        })
    }

    /// Run `f` on an OS thread that has entered this namespace, and wait for it.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(move |entered| {
            let _ = tx.send(entered.map(|()| f()));
        })?;
        rx.recv()
            .map_err(|_| NetnsError::Thread("panicked".into()))?
    }

    /// As [`NetNs::run`], awaiting the result without blocking the async runtime, for an `f`
    /// that returns a result and what is left to do: the result is handed over first, then
    /// `after` does the rest, still in the namespace.
    pub async fn run_async_then<T: Send + 'static, L: 'static>(
        &self,
        f: impl FnOnce() -> (T, L) + Send + 'static,
        after: impl FnOnce(L) + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(move |entered| match entered {
            Ok(()) => {
                let (value, left) = f();
                let _ = tx.send(Ok(value));
                after(left);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
        rx.await
            .map_err(|_| NetnsError::Thread("panicked".into()))?
    }

    fn submit(
        &self,
        job: impl FnOnce(Result<(), NetnsError>) + Send + 'static,
    ) -> Result<(), NetnsError> {
        let fd = self.fd.try_clone().map_err(|e| NetnsError::Io {
            op: "duplicating handle of",
            path: self.path.clone(),
            source: e,
        })?;
        threads::submit(fd, self.path.clone(), job)
    }
}

impl std::os::fd::AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `/proc/PID/ns/net`.
pub fn pid_netns_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// Unmount and remove a namespace bind mount. Absent is fine (idempotent).
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(NetnsError::Sys {
                op: "unmounting",
                path: path.to_path_buf(),
                source: e,
            })
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::Io {
            op: "removing",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Whether `path` is a mounted namespace (not just a leftover file).
pub fn is_mounted(path: &Path) -> bool {
    NetNs::open(path).is_ok()
}

fn create_on_this_thread(path: &Path) -> Result<(), NetnsError> {
    let sys = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| NetnsError::Sys { op, path, source }
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| NetnsError::Io {
            op: "creating mount point",
            path: path.to_path_buf(),
            source: e,
        })?;
    let result = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(sys("creating namespace for"))
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mounting namespace at"))
        });
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// `NSFS_MAGIC` from linux/magic.h: the filesystem of `/proc/PID/ns/*` and their bind mounts.
const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);

fn check_is_netns(fd: &OwnedFd, path: &Path) -> Result<(), NetnsError> {
    // The namespace type is not visible through fstat; ask the kernel which kind it is.
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and only reads the descriptor we own.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind == libc::CLONE_NEWNET {
        Ok(())
    } else {
        Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        })
    }
}

fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
    std::thread::Builder::new()
        .name("rnet-netns".into())
        .spawn(f)
        .map_err(|e| NetnsError::Thread(e.to_string()))?
        .join()
        .map_err(|_| NetnsError::Thread("panicked".into()))
}

#[cfg(test)]
mod tests;
mod threads;
