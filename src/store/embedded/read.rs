//! Reads: one key or a prefix, each from one redb snapshot, without the state lock;
//! each returns once the commits its snapshot saw are on disk.

use redb::{ReadableDatabase, ReadableTable};

use super::tables::{decode_kv, KV, META, META_REVISION};
use super::{Context, Inner};
use crate::store::{KeyValue, Revision, StoreResult};

pub(super) fn load_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> StoreResult<Option<KeyValue>> {
    let value = table.get(key).ctx("reading key")?;
    value.map(|g| decode_kv(key, g.value())).transpose()
}

impl Inner {
    pub(super) fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let seen = self.group.latest();
        let kv = txn.open_table(KV).ctx("opening kv")?;
        let found = load_kv(&kv, key)?;
        self.await_durable(seen)?;
        Ok(found)
    }

    pub(super) fn list(&self, prefix: &str) -> StoreResult<(Vec<KeyValue>, Revision)> {
        let txn = self.db.begin_read().ctx("beginning read")?;
        let seen = self.group.latest();
        let meta = txn.open_table(META).ctx("opening meta")?;
        let revision = meta.get(META_REVISION).ctx("reading meta")?;
        let revision = revision.map_or(0, |g| g.value());
        let kv = txn.open_table(KV).ctx("opening kv")?;
        let mut out = Vec::new();
        for entry in kv.range(prefix..).ctx("listing keys")? {
            let (key, value) = entry.ctx("listing keys")?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push(decode_kv(key.value(), value.value())?);
        }
        self.await_durable(seen)?;
        Ok((out, revision))
    }
}
