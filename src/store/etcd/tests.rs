//! Tests of the etcd backend that need no etcd (see `tests/store_conformance.rs`).

use super::txn::etcd_compares;
use super::watch::by_revision;
use super::*;
use crate::store::{Event, EventKind, WatchMessage};

fn endpoints(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parse_url_accepts_endpoint_lists() {
    let parsed = EtcdStore::parse_url("etcd://10.0.0.1:2379").expect("one");
    assert_eq!(parsed, endpoints(&["10.0.0.1:2379"]));
    let parsed = EtcdStore::parse_url("etcd://a.example:2379,[fd00::1]:2379,b:1").expect("3");
    assert_eq!(
        parsed,
        endpoints(&["a.example:2379", "[fd00::1]:2379", "b:1"])
    );
}

#[test]
fn parse_url_names_the_problem() {
    let cases = [
        ("http://h:2379", "does not start with etcd://"),
        ("etcd://", "names no endpoint"),
        ("etcd://h", "has no port"),
        ("etcd://:2379", "has no host"),
        ("etcd://h:0", "invalid port"),
        ("etcd://h:99999", "invalid port"),
        ("etcd://h:x", "invalid port"),
        ("etcd://h:2379,", "is empty"),
        ("etcd://h:2379/", "not contain '/'"),
        ("etcd://u@h:2379", "not contain '@'"),
        ("etcd://fd00::1:2379", "must be in brackets"),
        ("etcd://[zz::1]:2379", "invalid IPv6"),
    ];
    for (url, why) in cases {
        let err = EtcdStore::parse_url(url).expect_err(url).to_string();
        assert!(err.contains(why), "{url}: {err}");
        assert!(err.contains(url), "{url}: {err}");
    }
}

#[test]
fn mod_revision_compare_fails_for_missing_keys() {
    let one = etcd_compares(&Compare::ModRevision("k".into(), 5));
    assert_eq!(one.len(), 1);
    let guarded = etcd_compares(&Compare::ModRevision("k".into(), 0));
    assert_eq!(guarded.len(), 2, "a create_revision > 0 guard is added");
}

fn ev(kind: EventKind, key: &str, rev: Revision) -> Event {
    let kv = KeyValue {
        key: key.into(),
        value: Vec::new(),
        create_revision: 0,
        mod_revision: rev,
        lease: 0,
    };
    Event { kind, kv }
}

#[test]
fn events_are_split_by_revision() {
    let events = vec![
        ev(EventKind::Put, "a", 4),
        ev(EventKind::Put, "b", 4),
        ev(EventKind::Delete, "a", 5),
        ev(EventKind::Put, "c", 7),
    ];
    let msgs = by_revision(events);
    let summary: Vec<_> = msgs
        .iter()
        .map(|m| match m {
            WatchMessage::Events { revision, events } => (*revision, events.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(summary, vec![(4, 2), (5, 1), (7, 1)]);
}

#[test]
fn txn_leases_are_distinct_and_ordered() {
    let put = |key: &str, lease| TxnOp::Put {
        key: key.into(),
        value: Vec::new(),
        lease,
    };
    let ops = vec![
        put("a", Some(7)),
        put("b", None),
        put("c", Some(0)),
        TxnOp::Delete { key: "d".into() },
        put("e", Some(3)),
        put("f", Some(7)),
    ];
    assert_eq!(leases_of(&ops), vec![7, 3]);
}

#[tokio::test]
async fn connect_checks_endpoints_without_io() {
    let err = EtcdStore::connect(&[]).await.expect_err("empty");
    assert!(err.to_string().contains("no endpoint"), "{err}");
    let err = EtcdStore::connect(&endpoints(&["h"]))
        .await
        .expect_err("no port");
    assert!(err.to_string().contains("has no port"), "{err}");
    // Nothing listens on port 9 of a TEST-NET address; connect still succeeds.
    let store = EtcdStore::connect(&endpoints(&["192.0.2.1:9"]))
        .await
        .expect("lazy connect");
    assert_eq!(store.endpoints(), ["192.0.2.1:9"]);
}

#[test]
fn prefix_ends_bound_exactly_the_prefix() {
    use super::paging::{key_after, prefix_end};
    assert_eq!(prefix_end(b"/rnet/v1/"), b"/rnet/v10".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0], "no end: every key");
    assert_eq!(prefix_end(b""), vec![0]);
    assert_eq!(key_after(b"/a/b"), b"/a/b\0".to_vec());
    assert!(key_after(b"/a/b").as_slice() < b"/a/b0".as_slice());
}
