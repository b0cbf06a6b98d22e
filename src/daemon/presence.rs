//! This host's two records: the durable host record (where the host is) and the presence
//! record under a lease, kept alive on the lease's own clock and written back when someone
//! else changed or deleted it.

use std::time::Duration;

use super::now_secs;
use crate::model::HostRecord;
use crate::store::{keys, Compare, LeaseId, Revision, Store, StoreError, TxnOp};

/// Keep the host's presence alive under a lease, renewing the record (with the time) every
/// third of the TTL, and publishing it again when it changes (a rotated key). When the lease
/// is lost (expired during a store outage, store restarted) grant a new one and publish
/// everything this host owns again: the presence record and the durable host record
/// (endpoints are durable and need nothing).
///
/// Both records belong to this host alone: a renewal compares each with the revision this
/// daemon wrote last, and when someone else changed one (a tampered key, an operator's
/// mistake, a second daemon with this host id) rnetd warns naming the key and writes its
/// own records back within one renewal period.
pub(super) async fn keep_presence<S: Store>(
    store: S,
    mut records: tokio::sync::watch::Receiver<HostRecord>,
    ttl: Duration,
) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut held: Option<Held> = None;
    let mut changed = false;
    let mut closed = false;
    // The lease is kept alive on its own clock: record changes (IPsec epochs and acks, a
    // rotated key) can come more often than TTL/3, and republishing a record does not renew
    // its lease, so a change must never put the keep-alive off.
    let mut keep_alive_at = tokio::time::Instant::now();
    loop {
        let mut record = records.borrow_and_update().clone();
        record.renewed = now_secs();
        let due = tokio::time::Instant::now() >= keep_alive_at;
        held = match held {
            None => publish(&store, &record, ttl_secs, None).await,
            // A new record (rotated key) replaces whatever is there, under the same lease,
            // so peers never see this host vanish.
            Some(h) if changed && !due => publish(&store, &record, ttl_secs, Some(h.lease)).await,
            Some(h) => match store.lease_keep_alive(h.lease).await {
                Ok(_) if changed => publish(&store, &record, ttl_secs, Some(h.lease)).await,
                Ok(_) => renew(&store, &record, h, ttl_secs).await,
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!("host lease lost; registering again");
                    publish(&store, &record, ttl_secs, None).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing host lease failed");
                    Some(h)
                }
            },
        };
        if due || held.is_none() {
            keep_alive_at = tokio::time::Instant::now() + ttl / 3;
        }
        changed = false;
        tokio::select! {
            _ = tokio::time::sleep_until(keep_alive_at) => {}
            // Err: the service (the only sender) is gone; keep renewing what there is.
            result = records.changed(), if !closed => match result {
                Ok(()) => changed = true,
                Err(_) => closed = true,
            }
        }
    }
}

/// What this daemon last wrote: its lease and the revisions of its two records.
#[derive(Clone, Copy, Debug)]
struct Held {
    lease: LeaseId,
    /// Mod revision of the presence record (`keys::host`).
    presence: Revision,
    /// Mod revision of the durable record (`keys::host_info`).
    info: Revision,
}

/// Renew the presence record if both records are still the ones this daemon wrote;
/// otherwise say which changed and write them back.
async fn renew<S: Store>(store: &S, record: &HostRecord, held: Held, ttl: i64) -> Option<Held> {
    let (key, info_key) = (keys::host(&record.id), keys::host_info(&record.id));
    let value = serde_json::to_vec(record).expect("host record serializes");
    let put = TxnOp::Put {
        key: key.clone(),
        value,
        lease: Some(held.lease),
    };
    let compares = vec![
        Compare::ModRevision(key.clone(), held.presence),
        Compare::ModRevision(info_key.clone(), held.info),
    ];
    let t = match store.txn(compares, vec![put]).await {
        Ok(t) => t,
        Err(StoreError::LeaseNotFound(_)) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "renewing host record failed");
            return Some(held);
        }
    };
    if t.succeeded {
        return Some(Held {
            presence: t.revision,
            ..held
        });
    }
    let mut current = t.current.into_iter();
    let (presence, info) = (current.next().flatten(), current.next().flatten());
    let Some(presence) = presence else {
        // The presence record is gone (its lease expired, or it was deleted): register again.
        return None;
    };
    for (k, kv, rev) in [
        (&key, Some(presence), held.presence),
        (&info_key, info, held.info),
    ] {
        match kv {
            Some(kv) if kv.mod_revision == rev => {}
            Some(kv) => {
                let what = how_it_differs(record, &kv.value);
                tracing::warn!(host = %record.id, key = %k, "this host's record was changed by someone else ({what}); writing this host's record back");
            }
            None => {
                tracing::warn!(host = %record.id, key = %k, "this host's record was deleted by someone else; writing it back");
            }
        }
    }
    publish(store, record, ttl, Some(held.lease)).await
}

/// How a record found in the store differs from this host's, for the log.
fn how_it_differs(record: &HostRecord, found: &[u8]) -> &'static str {
    match serde_json::from_slice::<HostRecord>(found) {
        Ok(t) if t.wireguard != record.wireguard => {
            "its WireGuard public key is not this host's: peers would refuse this host's tunnel"
        }
        Ok(t) if t.underlay != record.underlay || t.vtep_mac != record.vtep_mac => {
            "it points peers at another underlay address or VTEP"
        }
        Ok(_) => "it differs from what this daemon published",
        Err(_) => "it is not a host record any more",
    }
}

/// Write both host records; under `lease` when given, else under a new one.
async fn publish<S: Store>(
    store: &S,
    record: &HostRecord,
    ttl: i64,
    lease: Option<LeaseId>,
) -> Option<Held> {
    let value = serde_json::to_vec(record).expect("host record serializes");
    let id = match lease {
        Some(id) => id,
        None => match store.lease_grant(ttl).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "granting host lease failed");
                return None;
            }
        },
    };
    let written = async {
        let info = store
            .put(&keys::host_info(&record.id), value.clone(), None)
            .await?;
        let presence = store.put(&keys::host(&record.id), value, Some(id)).await?;
        Ok::<_, StoreError>((info, presence))
    };
    match written.await {
        Ok((info, presence)) => {
            tracing::info!(host = %record.id, lease = id, "host registered");
            Some(Held {
                lease: id,
                presence,
                info,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "publishing host record failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::daemon::test_store::PausedStore;
    use crate::daemon::VTEP_MAC_KIND;
    use crate::model::Mac;

    fn record() -> HostRecord {
        HostRecord {
            id: "h1".into(),
            underlay: Ipv4Addr::new(198, 18, 0, 11),
            vtep_mac: Mac::from_name(VTEP_MAC_KIND, "h1"),
            started: 1,
            renewed: 1,
            wireguard: None,
            ipsec: None,
        }
    }

    async fn underlay_of(store: &PausedStore, key: &str) -> Option<Ipv4Addr> {
        let kv = store.get(key).await.expect("get")?;
        serde_json::from_slice::<HostRecord>(&kv.value)
            .ok()
            .map(|r| r.underlay)
    }

    /// Polls (on the paused clock) until both of h1's records name `want` as its underlay;
    /// the time it took.
    async fn until_both_are(store: &PausedStore, want: Ipv4Addr, what: &str) -> Duration {
        let started = tokio::time::Instant::now();
        loop {
            let presence = underlay_of(store, &keys::host("h1")).await;
            let info = underlay_of(store, &keys::host_info("h1")).await;
            if presence == Some(want) && info == Some(want) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: presence {presence:?}, info {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_writes_back_its_records_changed_by_someone_else() {
        let store = PausedStore::new();
        let mine = record();
        let (_tx, rx) = tokio::sync::watch::channel(mine.clone());
        let ttl = Duration::from_secs(3);
        let task = tokio::spawn(keep_presence(store.clone(), rx, ttl));
        until_both_are(&store, mine.underlay, "registered").await;

        // Forge the presence record (keeping its lease) and the durable one.
        let forged = HostRecord {
            underlay: Ipv4Addr::new(198, 18, 0, 66),
            ..mine.clone()
        };
        let value = serde_json::to_vec(&forged).unwrap();
        let lease = store.get(&keys::host("h1")).await.unwrap().unwrap().lease;
        store
            .put(&keys::host("h1"), value.clone(), Some(lease))
            .await
            .unwrap();
        store
            .put(&keys::host_info("h1"), value, None)
            .await
            .unwrap();
        let took = until_both_are(&store, mine.underlay, "presence and info written back").await;
        assert!(
            took <= ttl / 3,
            "written back after {took:?}, not within one renewal"
        );

        // A deleted durable record comes back too.
        store.delete(&keys::host_info("h1")).await.unwrap();
        let took = until_both_are(&store, mine.underlay, "deleted info written back").await;
        assert!(
            took <= ttl / 3,
            "written back after {took:?}, not within one renewal"
        );
        task.abort();
    }

    /// IPsec epochs and acks change the record more often than TTL/3; the lease must still be
    /// kept alive (republishing a record does not renew it), or peers see the host vanish.
    /// On the paused clock the store's leases expire on the same clock: three lease
    /// lifetimes pass in no real time.
    #[tokio::test(start_paused = true)]
    async fn frequent_record_changes_do_not_starve_the_lease() {
        let store = PausedStore::new();
        let mut mine = record();
        let (tx, rx) = tokio::sync::watch::channel(mine.clone());
        let task = tokio::spawn(keep_presence(store.clone(), rx, Duration::from_secs(1)));
        until_both_are(&store, mine.underlay, "registered").await;
        let lease = store.get(&keys::host("h1")).await.unwrap().unwrap().lease;
        // A change every 100 ms for three lease lifetimes.
        for started in 2..32 {
            mine.started = started;
            tx.send(mine.clone()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let kv = store.get(&keys::host("h1")).await.unwrap();
            assert_eq!(
                kv.map(|kv| kv.lease),
                Some(lease),
                "the presence record lost its lease after {started} changes"
            );
        }
        let renewals = store.calls("lease_keep_alive");
        assert!(renewals.len() >= 9, "{} keep-alives in 3 s", renewals.len());
        task.abort();
    }

    /// A lease lost while the store was down is replaced once it is back: the host registers
    /// again under a new lease within one renewal period.
    #[tokio::test(start_paused = true)]
    async fn a_lease_lost_in_an_outage_is_granted_again() {
        let store = PausedStore::new();
        let mine = record();
        let (_tx, rx) = tokio::sync::watch::channel(mine.clone());
        let ttl = Duration::from_secs(3);
        let task = tokio::spawn(keep_presence(store.clone(), rx, ttl));
        until_both_are(&store, mine.underlay, "registered").await;
        let lease = store.get(&keys::host("h1")).await.unwrap().unwrap().lease;
        store.set_down(true);
        tokio::time::sleep(ttl * 2).await; // the outage outlives the lease: what is tested
        store.set_down(false);
        let took = until_both_are(&store, mine.underlay, "registered again").await;
        assert!(took <= ttl / 3, "registered again after {took:?}");
        let kv = store.get(&keys::host("h1")).await.unwrap().unwrap();
        assert_ne!(kv.lease, lease, "a new lease");
        assert!(matches!(
            store.lease_keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        task.abort();
    }
}
