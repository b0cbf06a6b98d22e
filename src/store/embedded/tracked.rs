//! A test file layer under redb: counts fsyncs and keeps the image a power cut would
//! leave on disk (every write up to the last completed fsync, none after it).
//!
//! A SIGKILL cannot show a write acknowledged before its fsync (the page cache keeps
//! it); this image can.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redb::backends::FileBackend;
use redb::StorageBackend;

/// What the test reads back: the fsync count and, optionally, the durable image.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    syncs: AtomicU64,
    image: Option<Mutex<Image>>,
}

/// The file as of the last fsync, plus the changes made since.
#[derive(Debug, Default)]
struct Image {
    durable: Vec<u8>,
    unsynced: Vec<Change>,
}

#[derive(Debug)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

impl Tracker {
    /// Counts fsyncs only.
    pub(super) fn counting() -> Arc<Tracker> {
        Arc::new(Tracker::default())
    }

    /// Counts fsyncs and keeps the durable image of a file that starts empty.
    pub(super) fn imaging() -> Arc<Tracker> {
        Arc::new(Tracker {
            syncs: AtomicU64::new(0),
            image: Some(Mutex::new(Image::default())),
        })
    }

    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// The bytes a crash right now would leave on disk.
    pub(super) fn durable_image(&self) -> Vec<u8> {
        let image = self.image.as_ref().expect("an imaging tracker");
        image
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .durable
            .clone()
    }

    fn record(&self, change: impl FnOnce() -> Change) {
        if let Some(image) = &self.image {
            let change = change();
            image
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsynced
                .push(change);
        }
    }

    /// Called once the real fsync returned: everything written so far is durable.
    fn synced(&self) {
        if let Some(image) = &self.image {
            let mut image = image.lock().unwrap_or_else(PoisonError::into_inner);
            let changes = std::mem::take(&mut image.unsynced);
            for change in changes {
                image.apply(change);
            }
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
    }
}

impl Image {
    fn apply(&mut self, change: Change) {
        match change {
            Change::SetLen(len) => self.durable.resize(to_usize(len), 0),
            Change::Write(offset, data) => {
                let start = to_usize(offset);
                let end = start + data.len();
                if self.durable.len() < end {
                    self.durable.resize(end, 0);
                }
                self.durable[start..end].copy_from_slice(&data);
            }
        }
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("test files fit in memory")
}

/// redb's own file backend, reporting to a [`Tracker`].
#[derive(Debug)]
pub(super) struct TrackedFile {
    inner: FileBackend,
    tracker: Arc<Tracker>,
}

impl TrackedFile {
    pub(super) fn new(file: File, tracker: Arc<Tracker>) -> TrackedFile {
        let inner = FileBackend::new(file).expect("file backend");
        TrackedFile { inner, tracker }
    }
}

impl StorageBackend for TrackedFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.tracker.record(|| Change::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()?;
        self.tracker.synced();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write(offset, data)?;
        self.tracker.record(|| Change::Write(offset, data.to_vec()));
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}
