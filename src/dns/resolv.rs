//! Pure: the host's resolvers, from resolv.conf text.

use std::net::{IpAddr, SocketAddr};

/// At most this many upstreams are used (glibc's MAXNS).
pub const MAX_UPSTREAMS: usize = 3;

/// The `nameserver` addresses of a resolv.conf, port 53, in order, at most [`MAX_UPSTREAMS`].
/// Loopback addresses are left out: they belong to the host's namespace (a local stub such as
/// systemd-resolved's 127.0.0.53) and rnetd forwards from there, so they do work; but a
/// workload could then reach the host's loopback services through its resolver, so they are
/// kept only when nothing else is listed.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    let all: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            // A zone index (fe80::1%eth0) is not parsed: such servers are skipped.
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect();
    let remote: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| !a.ip().is_loopback())
        .collect();
    let mut chosen = if remote.is_empty() { all } else { remote };
    chosen.truncate(MAX_UPSTREAMS);
    chosen
}

/// An upstream given on the command line: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

/// The host's resolvers: resolv.conf's nameservers (none when it cannot be read).
pub fn host_nameservers(path: &std::path::Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => nameservers(&text),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no resolvers: names outside the networks will not resolve");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_are_read_in_order_and_junk_is_skipped() {
        let text = "# comment\nsearch example.com\nnameserver 198.18.0.1\n nameserver   2001:db8::1 \nnameserver bogus\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\nnameserver 198.18.0.2\nnameserver 198.18.0.3\n";
        let got: Vec<String> = nameservers(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["198.18.0.1:53", "[2001:db8::1]:53", "198.18.0.2:53"]);
    }

    #[test]
    fn upstream_flags_take_an_address_with_or_without_a_port() {
        assert_eq!(
            parse_upstream("198.18.0.1").unwrap(),
            "198.18.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("198.18.0.1:5353").unwrap(),
            "198.18.0.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[2001:db8::1]:53").unwrap(),
            "[2001:db8::1]:53".parse().unwrap()
        );
        assert!(parse_upstream("dns.example")
            .unwrap_err()
            .contains("dns.example"));
    }

    #[test]
    fn a_local_stub_is_used_when_it_is_all_there_is() {
        let got = nameservers("nameserver 127.0.0.53\noptions edns0\n");
        assert_eq!(got, ["127.0.0.53:53".parse().unwrap()]);
        assert!(nameservers("").is_empty());
    }
}
