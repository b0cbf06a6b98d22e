//! Threads that run work inside other network namespaces and come home in between.
//!
//! Entering a namespace needs a thread of its own (a tokio worker must never switch), but a
//! fresh thread per switch costs an attach its creation and, on a busy host, a wait for its
//! first time slice (about a millisecond under load, more than the netlink work it does). So
//! a job runs on an idle thread of this pool: it enters the job's namespace, runs it, and
//! enters its home namespace (the process's own) again before it waits for the next job.
//! A thread that cannot get home exits instead of waiting: no job ever starts anywhere but
//! home. A panicking job loses its answer, never the thread's way home.

use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, PoisonError};

use nix::sched::{setns, CloneFlags};

use super::NetnsError;

/// What a thread does with a namespace: enter it, do the work, report.
type Job = Box<dyn FnOnce() + Send>;

/// Idle threads kept for the next jobs; more run at once when needed, and exit when done.
const MAX_IDLE: usize = 8;

/// The idle threads, each reached through the sender of its job queue.
static IDLE: Mutex<Vec<Sender<Job>>> = Mutex::new(Vec::new());

/// Run `job` on a pooled thread that has tried to enter the namespace `ns` (a descriptor of
/// it, `path` for errors); `job` is told whether that worked and reports on its own.
pub(super) fn submit(
    ns: OwnedFd,
    path: PathBuf,
    job: impl FnOnce(Result<(), NetnsError>) + Send + 'static,
) -> Result<(), NetnsError> {
    let job: Job = Box::new(move || {
        let entered =
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                op: "entering",
                path,
                source,
            });
        job(entered);
    });
    let idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let job = match idle {
        Some(tx) => match tx.send(job) {
            Ok(()) => return Ok(()),
            // Its thread is gone (it could not get home): start another.
            Err(e) => e.0,
        },
        None => job,
    };
    spawn(job)
}

/// The namespace idle threads wait in: the process's own (its main thread's), not that of
/// the thread that happens to start one. A job that runs inside a workload's namespace and
/// needs another namespace starts a thread from there; parked in that namespace, the
/// thread would keep it alive after it is deleted (and its veths with it).
const HOME: &str = "/proc/self/ns/net";

fn home() -> Result<OwnedFd, NetnsError> {
    std::fs::File::open(HOME)
        .map(OwnedFd::from)
        .map_err(|e| NetnsError::Io {
            op: "opening",
            path: HOME.into(),
            source: e,
        })
}

/// A new pooled thread, starting with `first`.
fn spawn(first: Job) -> Result<(), NetnsError> {
    let home = home()?;
    std::thread::Builder::new()
        .name("rnet-netns".into())
        .spawn(move || serve(home, first))
        .map(drop)
        .map_err(|e| NetnsError::Thread(e.to_string()))
}

/// A pooled thread's life: run a job, go home, wait idle for the next one.
fn serve(home: OwnedFd, first: Job) {
    let (tx, rx) = channel::<Job>();
    let mut job = first;
    loop {
        // The job reports its own result; a panic only loses that report.
        let _ = catch_unwind(AssertUnwindSafe(job));
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, "a namespace thread could not return home; it exits");
            return;
        }
        {
            let mut idle = IDLE.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() >= MAX_IDLE {
                return;
            }
            idle.push(tx.clone());
        }
        match rx.recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn own_netns_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    }

    fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
        let (tx, rx) = sync_channel(1);
        submit(ns, "/proc/thread-self/ns/net".into(), move |entered| {
            let _ = tx.send(entered.map(|()| f()));
        })
        .unwrap();
        rx.recv().unwrap().unwrap()
    }

    fn inode(path: &str) -> u64 {
        std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap()
    }

    #[test]
    fn a_thread_started_inside_another_namespace_goes_home_to_the_process_namespace() {
        let process = inode(HOME);
        let (elsewhere, home) = std::thread::spawn(|| {
            // A namespace of this thread's own (root, as the suite runs), as a job inside a
            // workload's namespace is when it needs a pooled thread of its own.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare (needs root)");
            let home = home().unwrap();
            let home = nix::sys::stat::fstat(&home).unwrap().st_ino;
            (own_netns_inode(), home)
        })
        .join()
        .unwrap();
        assert_ne!(elsewhere, process);
        assert_eq!(home, process, "not the namespace it was started from");
    }

    #[test]
    fn a_job_runs_in_the_namespace_and_threads_are_reused() {
        let here = own_netns_inode();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (inode, id) = run(|| (own_netns_inode(), std::thread::current().id()));
            assert_eq!(inode, here);
            seen.push(id);
            // The thread goes idle after answering: wait until one is back in the pool.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while IDLE.lock().unwrap().is_empty() {
                assert!(std::time::Instant::now() < deadline, "no thread went idle");
                std::thread::yield_now();
            }
        }
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert!(
            distinct.len() < seen.len(),
            "no thread was reused: {seen:?}"
        );
    }

    #[test]
    fn a_panicking_job_loses_its_answer_not_the_pool() {
        let ns = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
        let (tx, rx) = sync_channel::<Result<(), NetnsError>>(1);
        submit(ns, "/proc/thread-self/ns/net".into(), move |entered| {
            let _ = tx.send(entered.map(|()| panic!("boom")));
        })
        .unwrap();
        assert!(rx.recv().is_err(), "a panicking job has no answer");
        assert_eq!(run(|| 7), 7);
    }
}
