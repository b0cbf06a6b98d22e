use super::*;

#[test]
fn a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A plain open(2) of a FIFO for reading waits for a writer; this must answer at once.
    assert!(matches!(
        NetNs::open(&fifo),
        Err(NetnsError::NotNetns { .. })
    ));
}

#[test]
fn files_that_are_not_namespaces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    for p in [file.as_path(), dir.path(), Path::new("/dev/null")] {
        assert!(
            matches!(NetNs::open(p), Err(NetnsError::NotNetns { .. })),
            "{}",
            p.display()
        );
    }
    assert!(matches!(
        NetNs::open(&dir.path().join("absent")),
        Err(NetnsError::NotFound { .. })
    ));
    // Another kind of namespace is a namespace file, but not a network namespace.
    assert!(matches!(
        NetNs::open(Path::new("/proc/self/ns/uts")),
        Err(NetnsError::NotNetns { .. })
    ));
}

/// Stand-ins for opens hung on a dead filesystem: each holds its place until `release`
/// gets a message.
fn hung_opens(
    uid: u32,
    n: usize,
) -> (
    std::sync::mpsc::Sender<()>,
    Vec<tokio::task::JoinHandle<Result<NetNs, NetnsError>>>,
) {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let hung = (0..n)
        .map(|_| {
            let wait = wait.clone();
            tokio::spawn(open_bounded(
                PathBuf::from("/hung"),
                Opener::User(uid),
                far,
                move || {
                    let _ = wait.lock().unwrap().recv();
                    Err(NetnsError::Thread("released".into()))
                },
            ))
        })
        .collect();
    (release, hung)
}

fn places_of(uid: u32) -> usize {
    USER_OPENS.lock().unwrap().get(&uid).copied().unwrap_or(0)
}

fn own_netns() -> PathBuf {
    PathBuf::from("/proc/self/ns/net")
}

async fn open_own(who: Opener, wait: std::time::Duration) -> Result<NetNs, NetnsError> {
    let deadline = tokio::time::Instant::now() + wait;
    open_bounded(own_netns(), who, deadline, || NetNs::open(&own_netns())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_hung_opens_take_only_its_own_places() {
    const UID: u32 = 4_000_123;
    let (release, hung) = hung_opens(UID, MAX_OPENS_PER_USER);
    while places_of(UID) < MAX_OPENS_PER_USER {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let refused = open_own(Opener::User(UID), std::time::Duration::from_millis(300)).await;
    assert!(
        matches!(refused, Err(NetnsError::Busy { .. })),
        "{refused:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Root's and other users' places are untouched.
    assert!(NetNs::open_untrusted(&own_netns(), Opener::Trusted)
        .await
        .is_ok());
    assert!(NetNs::open_untrusted(&own_netns(), Opener::User(UID + 1))
        .await
        .is_ok());
    for _ in 0..MAX_OPENS_PER_USER {
        release.send(()).unwrap();
    }
    for h in hung {
        let _ = h.await;
    }
    while places_of(UID) > 0 {
        tokio::task::yield_now().await;
    }
    assert!(NetNs::open_untrusted(&own_netns(), Opener::User(UID))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_pool_waits_for_places_instead_of_failing() {
    const UID: u32 = 4_000_456;
    let (release, hung) = hung_opens(UID, MAX_OPENS_PER_USER);
    while places_of(UID) < MAX_OPENS_PER_USER {
        tokio::task::yield_now().await;
    }
    // Three times the pool, all queued behind the held places.
    let burst: Vec<_> = (0..3 * MAX_OPENS_PER_USER)
        .map(|_| tokio::spawn(open_own(Opener::User(UID), OPEN_TIMEOUT)))
        .collect();
    tokio::task::yield_now().await;
    assert!(burst.iter().all(|h| !h.is_finished()));
    // One place given back lets the whole queue through, one open at a time.
    release.send(()).unwrap();
    for h in burst {
        let opened = h.await.unwrap();
        assert!(opened.is_ok(), "{opened:?}");
    }
    for _ in 1..MAX_OPENS_PER_USER {
        release.send(()).unwrap();
    }
    for h in hung {
        let _ = h.await;
    }
}

#[test]
fn own_namespace_opens() {
    let ns = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
    assert!(ns.inode() != 0);
}
