//! Watches: the etcd watch options, and the task that turns the etcd stream into
//! watch messages, one per revision.

use etcd_client::{EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::mpsc;

use super::convert::key_value;
use crate::store::{Event, EventKind, Revision, WatchMessage};

/// Capacity of the channel handed to the watcher.
pub(super) const WATCH_BUFFER: usize = 256;

pub(super) fn watch_options(from_revision: Revision) -> WatchOptions {
    let options = WatchOptions::new().with_prefix();
    if from_revision > 0 {
        options.with_start_revision(from_revision)
    } else {
        options
    }
}

fn event(e: &etcd_client::Event) -> Option<Event> {
    let mut kv = key_value(e.kv()?);
    let kind = match e.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => {
            // etcd sends the tombstone: key and delete revision only.
            kv.value.clear();
            kv.create_revision = 0;
            kv.lease = 0;
            EventKind::Delete
        }
    };
    Some(Event { kind, kv })
}

/// Split events (in revision order) into one message per revision.
pub(super) fn by_revision(events: impl IntoIterator<Item = Event>) -> Vec<WatchMessage> {
    let mut out: Vec<WatchMessage> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(WatchMessage::Events { revision, events }) if *revision == e.kv.mod_revision => {
                events.push(e);
            }
            _ => out.push(WatchMessage::Events {
                revision: e.kv.mod_revision,
                events: vec![e],
            }),
        }
    }
    out
}

/// What to deliver for one item of the etcd stream, and whether the watch is over.
fn step(
    label: &str,
    received: Result<Option<WatchResponse>, etcd_client::Error>,
) -> (Vec<WatchMessage>, bool) {
    let lost = |why: String| {
        (
            vec![WatchMessage::Lost(format!("etcd {label}: {why}"))],
            true,
        )
    };
    match received {
        Err(e) => lost(format!("watch stream failed: {e}")),
        Ok(None) => lost("etcd closed the watch stream".into()),
        Ok(Some(resp)) if resp.compact_revision() != 0 => {
            let compact_revision = resp.compact_revision();
            (vec![WatchMessage::Compacted { compact_revision }], true)
        }
        Ok(Some(resp)) if resp.canceled() => {
            lost(format!("etcd canceled the watch: {}", resp.cancel_reason()))
        }
        Ok(Some(resp)) => (by_revision(resp.events().iter().filter_map(event)), false),
    }
}

/// Forward the etcd stream (starting with its already received `first` response)
/// until it ends or the receiver is dropped; dropping `stream` cancels the watch.
pub(super) async fn forward(
    label: String,
    mut stream: WatchStream,
    first: WatchResponse,
    out: mpsc::Sender<WatchMessage>,
) {
    let mut received = Ok(Some(first));
    loop {
        let (messages, done) = step(&label, received);
        for msg in messages {
            if out.send(msg).await.is_err() {
                return;
            }
        }
        if done {
            return;
        }
        received = tokio::select! {
            r = stream.message() => r,
            () = out.closed() => return,
        };
    }
}
