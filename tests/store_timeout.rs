//! rnetd's `--store-timeout` reaches its etcd store: against an etcd that takes connections
//! and never answers (too starved to reply), rnetd's start-up check gives up after the
//! deadline it was given, and says so.
mod common;

use std::time::Duration;

use common::{made_in, wait_until, Host};

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn the_store_timeout_flag_sets_the_deadline_of_etcd_calls() {
    let mut host = Host::new("st");
    let etcd = format!("{}:2379", host.underlay());
    // Never accepted from: the kernel completes each handshake, nothing ever answers.
    let addr = etcd.clone();
    let _silent = made_in(&host.netns_path(), move || {
        std::net::TcpListener::bind(addr).expect("bind")
    });
    // Not started as usual: a daemon waiting for its store never answers `rnet status`.
    host.spawn_daemon(
        &[],
        &["--store", &format!("etcd://{etcd}"), "--store-timeout", "1"],
    );
    wait_until(
        "rnetd to report etcd's silence",
        Duration::from_secs(30),
        || host.daemon_log().contains("etcd is not reachable yet"),
    );
    let text = host.daemon_log();
    assert!(
        text.contains("no answer within 1s") && !text.contains("no answer within 3s"),
        "rnetd did not use --store-timeout 1:\n{text}"
    );
}
