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
fn parse_url_keeps_the_scheme_of_http_and_https_urls() {
    let parsed = EtcdStore::parse_url("https://a:1,[fd00::1]:2").expect("https");
    assert_eq!(parsed, endpoints(&["https://a:1", "https://[fd00::1]:2"]));
    let parsed = EtcdStore::parse_url("http://a:1").expect("http");
    assert_eq!(parsed, endpoints(&["http://a:1"]));
}

#[test]
fn parse_url_names_the_problem() {
    let cases = [
        (
            "ftp://h:2379",
            "does not start with etcd://, http:// or https://",
        ),
        ("https://", "names no endpoint"),
        ("https://http://h:1", "not contain '/'"),
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

/// A listener that takes connections (the kernel completes the handshake) and never answers:
/// an etcd too starved to reply.
fn silent_etcd() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (listener, addr)
}

#[tokio::test]
async fn calls_give_up_at_the_deadline_they_were_given() {
    let (_listener, addr) = silent_etcd();
    let deadline = std::time::Duration::from_secs(1);
    let store = EtcdStore::connect_with_timeout(&[addr], &EtcdSecurity::default(), deadline)
        .await
        .expect("lazy connect");
    let started = std::time::Instant::now();
    let err = store.get("/k").await.expect_err("silent etcd");
    let took = started.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(
        took >= deadline && took < DEFAULT_CALL_TIMEOUT,
        "gave up after {took:?}"
    );
}

#[tokio::test]
async fn a_zero_deadline_is_refused() {
    let err = EtcdStore::connect_with_timeout(
        &endpoints(&["192.0.2.1:9"]),
        &EtcdSecurity::default(),
        std::time::Duration::ZERO,
    )
    .await
    .expect_err("zero");
    assert!(err.to_string().contains("deadline of 0 s"), "{err}");
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

fn pem_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    (cert, key)
}

async fn refused(endpoints: &[&str], security: EtcdSecurity) -> String {
    let list: Vec<String> = endpoints.iter().map(|s| s.to_string()).collect();
    EtcdStore::connect_with(&list, &security)
        .await
        .expect_err("refused")
        .to_string()
}

#[tokio::test]
async fn mismatched_tls_options_are_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(dir.path());
    let https = ["https://192.0.2.1:9"];
    let only_cert = EtcdSecurity {
        cert: Some(cert.clone()),
        ..Default::default()
    };
    assert!(refused(&https, only_cert)
        .await
        .contains("--etcd-cert needs --etcd-key"));
    let only_key = EtcdSecurity {
        key: Some(key.clone()),
        ..Default::default()
    };
    assert!(refused(&https, only_key)
        .await
        .contains("--etcd-key needs --etcd-cert"));
    let ca = EtcdSecurity {
        ca_cert: Some(cert.clone()),
        ..Default::default()
    };
    let err = refused(&["192.0.2.1:9"], ca.clone()).await;
    assert!(err.contains("use https://HOST:PORT"), "{err}");
    let err = refused(&["https://192.0.2.1:9", "http://192.0.2.2:9"], ca).await;
    assert!(err.contains("all use https:// or none"), "{err}");
    let swapped = EtcdSecurity {
        ca_cert: Some(key.clone()),
        ..Default::default()
    };
    let err = refused(&https, swapped).await;
    assert!(
        err.contains("--etcd-cacert") && err.contains("not a PEM certificate"),
        "{err}"
    );
    let not_a_key = EtcdSecurity {
        cert: Some(cert.clone()),
        key: Some(cert.clone()),
        ..Default::default()
    };
    assert!(refused(&https, not_a_key)
        .await
        .contains("not a PEM private key"));
    let missing = EtcdSecurity {
        ca_cert: Some(dir.path().join("nope.pem")),
        ..Default::default()
    };
    let err = refused(&https, missing).await;
    assert!(
        err.contains("nope.pem") && err.contains("No such file"),
        "{err}"
    );
    // Well-formed options connect lazily (no I/O: nothing listens there).
    let good = EtcdSecurity {
        ca_cert: Some(cert.clone()),
        cert: Some(cert),
        key: Some(key),
        user: None,
    };
    let list = endpoints(&https);
    EtcdStore::connect_with(&list, &good).await.expect("lazy");
}

#[test]
fn etcd_users_parse_and_never_show_their_password() {
    let u = EtcdUser::parse("h1:s3cret", None).unwrap();
    assert_eq!((u.name.as_str(), u.password.as_str()), ("h1", "s3cret"));
    let u = EtcdUser::parse("h1", Some("fromenv".into())).unwrap();
    assert_eq!(u.password, "fromenv");
    assert!(!format!("{u:?}").contains("fromenv"));
    let s = EtcdSecurity {
        user: Some(u),
        ..Default::default()
    };
    assert!(!format!("{s:?}").contains("fromenv"));
    let err = EtcdUser::parse("h1", None).unwrap_err().to_string();
    assert!(err.contains("RNET_ETCD_PASSWORD"), "{err}");
    let err = EtcdUser::parse(":pw", None).unwrap_err().to_string();
    assert!(
        err.contains("names no user") && !err.contains("pw\""),
        "{err}"
    );
}

#[test]
fn tls_records_are_told_from_other_answers() {
    use super::sniff::is_tls_record;
    assert!(is_tls_record(&[0x15, 0x03, 0x03, 0, 2]));
    assert!(is_tls_record(&[0x16, 0x03, 0x01]));
    // An HTTP/2 SETTINGS frame (a plain gRPC server) and HTTP/1.
    assert!(!is_tls_record(&[0x00, 0x00, 0x12, 0x04]));
    assert!(!is_tls_record(b"HTTP/1.1 400"));
    assert!(!is_tls_record(&[]));
}
