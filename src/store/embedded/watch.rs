//! Watches: registration under the state lock, delivery of live events, and the
//! task that replays history from disk and then forwards the live events.

use std::sync::Weak;

use redb::ReadableDatabase;
use tokio::sync::mpsc;

use super::tables::{decode_events, EVENTS, META, META_COMPACTED};
use super::{Context, Inner};
use crate::store::{Event, Revision, StoreError, StoreResult, WatchMessage};

/// Revisions read per blocking call while a watch replays history.
const REPLAY_CHUNK: i64 = 256;
/// Capacity of the channel handed to the watcher (the internal one is unbounded).
pub(super) const WATCH_BUFFER: usize = 256;

/// A live subscription: gets the matching events of every revision >= `min_revision`.
pub(super) struct Watcher {
    prefix: String,
    min_revision: Revision,
    tx: mpsc::UnboundedSender<WatchMessage>,
}

/// What a new watch needs to start, decided under the state lock.
pub(super) enum Registration {
    Compacted(Revision),
    Live {
        replay: Replay,
        live: mpsc::UnboundedReceiver<WatchMessage>,
    },
}

/// The history a watch must read from disk: revisions `next..=last` under `prefix`.
pub(super) struct Replay {
    prefix: String,
    next: Revision,
    last: Revision,
}

/// One chunk of replayed history.
enum History {
    Messages(Vec<WatchMessage>),
    Compacted(Revision),
}

impl Watcher {
    /// Send the matching events; false when the watch is gone.
    pub(super) fn deliver(&self, revision: Revision, events: &[Event]) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if revision < self.min_revision {
            return true;
        }
        let events = matching(events, &self.prefix);
        if events.is_empty() {
            return true;
        }
        self.tx
            .send(WatchMessage::Events { revision, events })
            .is_ok()
    }
}

fn matching(events: &[Event], prefix: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        .cloned()
        .collect()
}

impl Inner {
    /// Register a watch under the state lock (see the module docs).
    pub(super) fn register(&self, prefix: String, from: Revision) -> Registration {
        let mut state = self.lock();
        let next = if from <= 0 { state.published + 1 } else { from };
        if next <= state.compacted {
            return Registration::Compacted(state.compacted + 1);
        }
        let last = state.published;
        let (tx, live) = mpsc::unbounded_channel();
        state.watchers.push(Watcher {
            prefix: prefix.clone(),
            min_revision: next.max(last + 1),
            tx,
        });
        Registration::Live {
            replay: Replay { prefix, next, last },
            live,
        }
    }

    /// Read the matching history of revisions `from..=to` in one snapshot.
    fn history(&self, prefix: &str, from: Revision, to: Revision) -> StoreResult<History> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let meta = txn.open_table(META).ctx("opening meta")?;
        let compacted = meta.get(META_COMPACTED).ctx("reading meta")?;
        let compacted = compacted.map_or(0, |g| g.value());
        if from <= compacted {
            return Ok(History::Compacted(compacted + 1));
        }
        let log = txn.open_table(EVENTS).ctx("opening events")?;
        let mut out = Vec::new();
        for entry in log.range(from..=to).ctx("reading events")? {
            let (revision, bytes) = entry.ctx("reading events")?;
            let events = matching(&decode_events(bytes.value())?, prefix);
            if !events.is_empty() {
                let revision = revision.value();
                out.push(WatchMessage::Events { revision, events });
            }
        }
        Ok(History::Messages(out))
    }
}

/// Feed one watch: replay history from disk, then forward live events.
pub(super) async fn forward(
    store: Weak<Inner>,
    replay: Replay,
    mut live: mpsc::UnboundedReceiver<WatchMessage>,
    out: mpsc::Sender<WatchMessage>,
) {
    if !replay_history(&store, replay, &out).await {
        return;
    }
    loop {
        let msg = tokio::select! {
            msg = live.recv() => msg,
            () = out.closed() => return,
        };
        let Some(msg) = msg else {
            // The store was dropped: tell the watcher rather than just closing.
            let _ = out.try_send(WatchMessage::Lost("store closed".into()));
            return;
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

/// Send the replayed history in chunks; false when the watch must end.
async fn replay_history(
    store: &Weak<Inner>,
    mut replay: Replay,
    out: &mpsc::Sender<WatchMessage>,
) -> bool {
    while replay.next <= replay.last {
        let to = replay.last.min(replay.next + REPLAY_CHUNK - 1);
        let msgs = match read_history(store, &replay.prefix, replay.next, to).await {
            Ok(History::Messages(msgs)) => msgs,
            Ok(History::Compacted(compact_revision)) => {
                let _ = out.send(WatchMessage::Compacted { compact_revision }).await;
                return false;
            }
            Err(e) => {
                let _ = out.send(WatchMessage::Lost(e.to_string())).await;
                return false;
            }
        };
        for msg in msgs {
            if out.send(msg).await.is_err() {
                return false;
            }
        }
        replay.next = to + 1;
    }
    true
}

async fn read_history(
    store: &Weak<Inner>,
    prefix: &str,
    from: Revision,
    to: Revision,
) -> StoreResult<History> {
    let weak = store.clone();
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || match weak.upgrade() {
        Some(inner) => inner
            .history(&prefix, from, to)
            .map_err(|e| inner.annotate(e)),
        None => Err(StoreError::Backend("store closed".into())),
    })
    .await
    .ctx("embedded store task")?
}
