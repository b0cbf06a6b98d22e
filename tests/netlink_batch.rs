//! The dataplane's blocking netlink batches against a real kernel, each test in a network
//! namespace of its own thread (unshared by that thread, gone with it): a refusal in the
//! middle of a batch is matched to its request, the rest still applies, and thousands of
//! refusals spread over many datagrams are all counted.
mod common;

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use rnet::dataplane::request::{self, Ack};
use rtnetlink::{AddressMessageBuilder, LinkUnspec};

/// Run `f` on a thread inside a fresh network namespace.
fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    common::require_root();
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        f()
    })
    .join()
    .expect("netns thread")
}

fn address(index: u32, ip: Ipv4Addr) -> netlink_packet_route::address::AddressMessage {
    AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(ip, 32)
        .build()
}

const LO: u32 = 1;
const NO_SUCH_LINK: u32 = 4242;

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn a_refusal_mid_batch_is_matched_to_its_request_and_the_rest_still_applies() {
    in_fresh_netns(|| {
        let sock = request::open_socket(Some(request::RECV_TIMEOUT)).unwrap();
        let good = Ipv4Addr::new(10, 9, 0, 2);
        let reqs = vec![
            (
                RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(LO).up().build()),
                0,
            ),
            (
                RouteNetlinkMessage::NewAddress(address(NO_SUCH_LINK, Ipv4Addr::new(10, 9, 0, 1))),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            (
                RouteNetlinkMessage::NewAddress(address(LO, good)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
        ];
        let out = request::send_batch(&sock, &reqs, Ack::Last);
        assert!(out.unsent.is_empty() && out.unanswered.is_none(), "{out:?}");
        assert_eq!(out.refused, [(1, libc::ENODEV)]);

        // The address after the refusal exists: deleting it is acknowledged without error.
        let del = vec![(RouteNetlinkMessage::DelAddress(address(LO, good)), 0)];
        let out = request::send_batch(&sock, &del, Ack::Each);
        assert!(out.refused.is_empty(), "{out:?}");
        // And now it is gone.
        let out = request::send_batch(&sock, &del, Ack::Each);
        assert_eq!(out.refused, [(0, libc::EADDRNOTAVAIL)]);
    });
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn transact_names_the_refused_operation() {
    let err = in_fresh_netns(|| {
        let sock = request::open_socket(Some(request::RECV_TIMEOUT)).unwrap();
        request::transact(
            &sock,
            vec![
                (
                    RouteNetlinkMessage::SetLink(LinkUnspec::new_with_name("lo").up().build()),
                    0,
                    "bringing up lo".into(),
                ),
                (
                    RouteNetlinkMessage::NewAddress(address(
                        NO_SUCH_LINK,
                        Ipv4Addr::new(10, 9, 0, 1),
                    )),
                    NLM_F_CREATE | NLM_F_EXCL,
                    "adding 10.9.0.1/32 to link 4242".into(),
                ),
            ],
        )
        .unwrap_err()
    });
    let text = err.to_string();
    assert!(
        text.starts_with("adding 10.9.0.1/32 to link 4242: "),
        "the error names the refused request: {text}"
    );
    assert!(text.contains("No such device"), "{text}");
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn thousands_of_refusals_over_many_datagrams_are_all_counted() {
    const N: u32 = 5000;
    let out = in_fresh_netns(|| {
        let sock = request::open_socket(Some(request::RECV_TIMEOUT)).unwrap();
        // Deleting addresses that were never there: every request is refused.
        let reqs: Vec<_> = (0..N)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 20, 0, 0)) + i);
                (RouteNetlinkMessage::DelAddress(address(LO, ip)), 0)
            })
            .collect();
        request::send_batch(&sock, &reqs, Ack::Last)
    });
    assert!(out.unsent.is_empty() && out.unanswered.is_none(), "{out:?}");
    assert_eq!(out.refused.len(), N as usize, "no refusal lost");
    assert!(out
        .refused
        .iter()
        .enumerate()
        .all(|(i, &(at, errno))| at == i && errno == libc::EADDRNOTAVAIL));
}
