//! Listing a prefix in pages: one `Range` answer is a single gRPC message, and the
//! client refuses messages over 4 MiB, so a big prefix is read a page at a time,
//! every page at the first page's revision (one consistent snapshot).

use etcd_client::GetOptions;

use super::convert::{key_value, revision_of};
use super::{EtcdStore, ALREADY_COMPACTED, NO_LEASE};
use crate::store::{KeyValue, Revision, StoreError, StoreResult};

/// Keys per page: about 300 KiB of endpoint records, far below the message limit.
pub(super) const PAGE_KEYS: i64 = 1000;
/// How often a list restarts because its snapshot revision was compacted mid-way.
const SNAPSHOT_RETRIES: u32 = 3;
/// tonic's words for an answer over the client's message limit.
const TOO_LARGE: &str = "message length too large";

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and the rest dropped; "\0"
/// (every key) when there is no such byte.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key after `key`.
pub(super) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl EtcdStore {
    /// Every key under `prefix`, read in pages at one revision.
    pub(super) async fn list_paged(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let mut attempt = 0;
        loop {
            match self.snapshot(prefix).await {
                // The snapshot's revision was compacted between two pages: start over
                // at the current revision (a first page can never hit this).
                Err(StoreError::Backend(msg))
                    if msg.contains(ALREADY_COMPACTED) && attempt < SNAPSHOT_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(prefix, "list snapshot compacted mid-way; listing again");
                }
                done => return done,
            }
        }
    }

    async fn snapshot(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut limit = PAGE_KEYS;
        let mut revision: Option<Revision> = None;
        let mut out = Vec::new();
        loop {
            let what = format!("listing {prefix:?} (page from {:?})", lossy(&from));
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if let Some(rev) = revision {
                options = options.with_revision(rev);
            }
            let key = from.clone();
            let result = self
                .call(&what, NO_LEASE, move |mut c| async move {
                    c.get(key, Some(options)).await
                })
                .await;
            let resp = match result {
                // A page of huge values: ask for fewer keys.
                Err(StoreError::Backend(msg)) if msg.contains(TOO_LARGE) && limit > 1 => {
                    limit = (limit / 2).max(1);
                    continue;
                }
                other => other?,
            };
            let rev = match revision {
                Some(rev) => rev,
                None => *revision.insert(revision_of(resp.header())?),
            };
            let kvs = resp.kvs();
            out.extend(kvs.iter().map(key_value));
            match kvs.last() {
                Some(last) if resp.more() => from = key_after(last.key()),
                _ => return Ok((out, rev)),
            }
        }
    }
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
