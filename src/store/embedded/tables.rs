//! The redb tables and the byte encodings of what they hold (see the layout in the
//! module docs of `embedded`).

use redb::{Database, MultimapTableDefinition, ReadableTable, TableDefinition};

use super::Context;
use crate::store::{Event, EventKind, KeyValue, Revision, StoreError, StoreResult};

pub(super) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(super) const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: MultimapTableDefinition<i64, &str> =
    MultimapTableDefinition::new("lease_keys");
pub(super) const EVENTS: TableDefinition<i64, &[u8]> = TableDefinition::new("events");

pub(super) const META_REVISION: &str = "revision";
pub(super) const META_COMPACTED: &str = "compacted";
pub(super) const META_NEXT_LEASE: &str = "next_lease";

/// Size of the revision/lease header in front of a stored value.
const KV_HEADER: usize = 24;

/// Create every table (so read transactions never miss one) and load the counters.
pub(super) fn init_tables(db: &Database) -> Result<(Revision, Revision), redb::Error> {
    let txn = db.begin_write()?;
    let counters = {
        let meta = txn.open_table(META)?;
        txn.open_table(KV)?;
        txn.open_table(LEASES)?;
        txn.open_multimap_table(LEASE_KEYS)?;
        txn.open_table(EVENTS)?;
        let get = |name| meta.get(name).map(|v| v.map_or(0, |g| g.value()));
        (get(META_REVISION)?, get(META_COMPACTED)?)
    };
    txn.commit()?;
    Ok(counters)
}

pub(super) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(KV_HEADER + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

pub(super) fn decode_kv(key: &str, bytes: &[u8]) -> StoreResult<KeyValue> {
    let mut d = Decoder(bytes);
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: d.i64()?,
        mod_revision: d.i64()?,
        lease: d.i64()?,
        value: d.0.to_vec(),
    })
}

pub(super) fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    put_len(&mut out, events.len());
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.mod_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.lease.to_le_bytes());
        put_len(&mut out, e.kv.key.len());
        out.extend_from_slice(e.kv.key.as_bytes());
        put_len(&mut out, e.kv.value.len());
        out.extend_from_slice(&e.kv.value);
    }
    out
}

/// Lengths are stored as `u32`; keys and values are far smaller than 4 GiB.
fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
}

pub(super) fn decode_events(bytes: &[u8]) -> StoreResult<Vec<Event>> {
    let mut d = Decoder(bytes);
    let count = d.len()?;
    let mut events = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        events.push(d.event()?);
    }
    Ok(events)
}

/// Reads the little-endian encodings above, failing cleanly on truncated data.
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(StoreError::Backend("corrupt record: truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> StoreResult<[u8; N]> {
        self.take(N)?.try_into().ctx("corrupt record")
    }

    fn i64(&mut self) -> StoreResult<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn len(&mut self) -> StoreResult<usize> {
        let len = u32::from_le_bytes(self.array()?);
        usize::try_from(len).ctx("corrupt record")
    }

    fn event(&mut self) -> StoreResult<Event> {
        let kind = match self.array::<1>()? {
            [0] => EventKind::Put,
            [1] => EventKind::Delete,
            [k] => return Err(StoreError::Backend(format!("corrupt event kind {k}"))),
        };
        let (create_revision, mod_revision, lease) = (self.i64()?, self.i64()?, self.i64()?);
        let key_len = self.len()?;
        let key = String::from_utf8(self.take(key_len)?.to_vec()).ctx("corrupt event key")?;
        let value_len = self.len()?;
        let value = self.take(value_len)?.to_vec();
        let kv = KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            lease,
        };
        Ok(Event { kind, kv })
    }
}
