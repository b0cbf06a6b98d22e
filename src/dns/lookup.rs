//! Pure: what one DNS query gets. No sockets, no clock: the caller hands in the query's bytes
//! and a way to find addresses by name; the result says answer (with these bytes), forward
//! upstream, or drop (malformed).
//!
//! Names of network N are answered as `NAME` and as `NAME.N`: `N.` is the network's own zone
//! (authoritative: a name not there is NXDOMAIN), and a bare name that no endpoint carries is
//! forwarded, since it may be a name of the outside world (`localhost`, a host's short name).

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// TTL of the A records this server answers: short, so a removed or moved name is not held
/// long by a caching client (rnetd itself keeps no cache: every answer reads the store cache).
pub const TTL_SECS: u32 = 5;
/// The largest query this server reads; real queries are far smaller (one name of at most
/// 255 bytes, an EDNS record), so anything longer is garbage.
pub const MAX_QUERY: usize = 1024;
/// UDP payload this server offers in its EDNS record (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// Why a query was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Not a DNS message (too short, bad labels, counts that lie, trailing garbage...).
    Unparsable,
    /// Longer than [`MAX_QUERY`].
    TooLong,
    /// A response, or not a standard query.
    NotAQuery,
    /// Not exactly one question.
    QuestionCount,
}

/// What to do with one query.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a name of this network: ask the host's resolvers (the query's bytes as they came).
    Forward,
    Drop(Malformed),
}

/// Parse a query and check it is one a resolver should answer: a standard query with exactly
/// one question. Anything else is dropped, never answered (no reflection of garbage).
pub fn parse(bytes: &[u8]) -> Result<Message, Malformed> {
    if bytes.len() > MAX_QUERY {
        return Err(Malformed::TooLong);
    }
    let mut decoder = BinDecoder::new(bytes);
    let msg = Message::read(&mut decoder).map_err(|_| Malformed::Unparsable)?;
    // Bytes after the message: not what a client sends.
    if !decoder.is_empty() {
        return Err(Malformed::Unparsable);
    }
    if msg.message_type() != MessageType::Query || msg.op_code() != OpCode::Query {
        return Err(Malformed::NotAQuery);
    }
    if msg.queries().len() != 1 {
        return Err(Malformed::QuestionCount);
    }
    Ok(msg)
}

/// Decide what query `bytes` gets on network `zone` (its name), over UDP (`udp`, where the
/// client's payload size limits the answer) or TCP. `addresses(name)` gives the addresses of the endpoints
/// that carry DNS name `name` (lowercase, no trailing dot).
pub fn decide(
    bytes: &[u8],
    zone: &str,
    udp: bool,
    addresses: impl Fn(&str) -> Vec<Ipv4Addr>,
) -> Decision {
    let query = match parse(bytes) {
        Ok(q) => q,
        Err(m) => return Decision::Drop(m),
    };
    let question = &query.queries()[0];
    let qname = question.name().to_lowercase().to_ascii();
    let qname = qname.strip_suffix('.').unwrap_or(&qname);
    let zone = zone.to_ascii_lowercase();
    let in_zone = qname == zone || qname.ends_with(&format!(".{zone}"));
    let mut found = addresses(qname);
    if let Some(short) = qname.strip_suffix(&format!(".{zone}")) {
        found.extend(addresses(short));
    }
    found.sort();
    found.dedup();
    if question.query_class() != DNSClass::IN || (found.is_empty() && !in_zone) {
        return Decision::Forward;
    }
    let code = if found.is_empty() && qname != zone {
        ResponseCode::NXDomain
    } else {
        ResponseCode::NoError
    };
    let answers: Vec<Ipv4Addr> = if question.query_type() == RecordType::A {
        found
    } else {
        // The name exists; it has no records of other types (an empty NOERROR, not NXDOMAIN,
        // so a client asking AAAA and A at once takes the A answer).
        Vec::new()
    };
    Decision::Answer(response(&query, code, &answers, udp))
}

/// SERVFAIL for a query that passed [`parse`] (an upstream did not answer it).
pub fn servfail(query: &[u8]) -> Vec<u8> {
    match parse(query) {
        Ok(q) => {
            let mut msg = Message::error_msg(q.id(), OpCode::Query, ResponseCode::ServFail);
            msg.set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true)
                .add_queries(q.queries().iter().cloned());
            msg.to_vec().expect("an error response encodes")
        }
        Err(_) => Vec::new(),
    }
}

/// The response to `query` with `answers` as A records; truncated (TC set, no answers) when
/// it would not fit the client's UDP payload, so the client asks again over TCP.
fn response(query: &Message, code: ResponseCode, answers: &[Ipv4Addr], udp: bool) -> Vec<u8> {
    let question = query.queries()[0].clone();
    let mut msg = Message::error_msg(query.id(), OpCode::Query, code);
    msg.set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        msg.set_edns(edns);
    }
    for ip in answers {
        let record = Record::from_rdata(question.name().clone(), TTL_SECS, RData::A(A(*ip)));
        msg.add_answer(record);
    }
    let bytes = msg
        .to_vec()
        .expect("a response of one question and A records encodes");
    if udp && bytes.len() > usize::from(query.max_payload()) {
        return msg
            .truncate()
            .to_vec()
            .expect("a truncated response encodes");
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(0x1234)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    fn book(name: &str) -> Vec<Ipv4Addr> {
        match name {
            "web" => vec!["10.0.0.3".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            "db" => vec!["10.0.0.9".parse().unwrap()],
            _ => vec![],
        }
    }

    fn answer(bytes: &[u8], udp: bool) -> Message {
        match decide(bytes, "blue", udp, book) {
            Decision::Answer(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn ips(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .map(|r| r.data().as_a().unwrap().0.to_string())
            .collect()
    }

    #[test]
    fn a_name_answers_bare_and_in_the_network_zone_with_every_address() {
        for name in ["web", "web.", "web.blue.", "WEB.Blue"] {
            let m = answer(&query(name, RecordType::A), true);
            assert_eq!(m.id(), 0x1234);
            assert_eq!(m.response_code(), ResponseCode::NoError, "{name}");
            assert!(m.authoritative() && m.recursion_available());
            assert_eq!(ips(&m), ["10.0.0.2", "10.0.0.3"], "{name}");
            assert!(m.answers().iter().all(|r| r.ttl() == TTL_SECS));
        }
    }

    #[test]
    fn an_unknown_name_in_the_zone_is_nxdomain_and_outside_is_forwarded() {
        let m = answer(&query("gone.blue.", RecordType::A), true);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.answers().is_empty());
        assert_eq!(
            decide(&query("gone", RecordType::A), "blue", true, book),
            Decision::Forward
        );
        assert_eq!(
            decide(&query("example.com.", RecordType::A), "blue", true, book),
            Decision::Forward
        );
        // Another network's zone is not this one's.
        assert_eq!(
            decide(&query("web.red.", RecordType::A), "blue", false, book),
            Decision::Forward
        );
    }

    #[test]
    fn other_types_of_a_known_name_are_empty_noerror() {
        let m = answer(&query("db.blue", RecordType::AAAA), false);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        let m = answer(&query("nope.blue", RecordType::AAAA), false);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_is_dropped_with_its_reason() {
        let d = |b: &[u8]| decide(b, "blue", true, book);
        assert_eq!(d(b""), Decision::Drop(Malformed::Unparsable));
        assert_eq!(
            d(&[0x12, 0x34, 0x01]),
            Decision::Drop(Malformed::Unparsable)
        );
        assert_eq!(d(&[0xab; 2000]), Decision::Drop(Malformed::TooLong));
        let mut fifty = Message::new();
        for i in 0..50 {
            fifty.add_query(Query::query(
                Name::from_ascii(format!("n{i}.blue.")).unwrap(),
                RecordType::A,
            ));
        }
        assert_eq!(
            d(&fifty.to_vec().unwrap()),
            Decision::Drop(Malformed::QuestionCount)
        );
        let mut none = Message::new();
        none.set_id(1);
        assert_eq!(
            d(&none.to_vec().unwrap()),
            Decision::Drop(Malformed::QuestionCount)
        );
        // A response must never be answered (two resolvers would echo each other forever).
        let mut resp = Message::from_vec(&query("web", RecordType::A)).unwrap();
        resp.set_message_type(MessageType::Response);
        assert_eq!(
            d(&resp.to_vec().unwrap()),
            Decision::Drop(Malformed::NotAQuery)
        );
        // Trailing bytes after a valid query: not what a client sends.
        let mut tail = query("web", RecordType::A);
        tail.extend_from_slice(&[0; 7]);
        assert!(matches!(d(&tail), Decision::Drop(_)), "{:?}", d(&tail));
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
        let many = |_: &str| (1..=200u8).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        let q = query("web.blue.", RecordType::A);
        let Decision::Answer(udp) = decide(&q, "blue", true, many) else {
            panic!()
        };
        let udp = Message::from_vec(&udp).unwrap();
        assert!(udp.truncated() && udp.answers().is_empty());
        let Decision::Answer(tcp) = decide(&q, "blue", false, many) else {
            panic!()
        };
        assert_eq!(Message::from_vec(&tcp).unwrap().answers().len(), 200);
    }
}
