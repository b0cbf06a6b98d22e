//! The deadline of every call to etcd: [`DEFAULT_CALL_TIMEOUT`] unless rnetd's
//! `--store-timeout` sets another. The default fails fast on a healthy cluster; an etcd on a
//! starved or emulated machine (a TCG guest runs about 10x slower) needs a longer one, or
//! every slow answer becomes an `Unavailable` error.

use std::time::Duration;

/// Deadline of every call to etcd (connecting included) unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest deadline accepted, in seconds: a call held longer than this by a hung etcd
/// would hold the API request waiting on it (and the daemon's lease renewals) past any
/// reasonable client's patience.
pub const MAX_CALL_TIMEOUT_SECS: u64 = 300;

/// The deadline of `--store-timeout SECS`: whole seconds, 1 to [`MAX_CALL_TIMEOUT_SECS`].
///
/// # Errors
///
/// A message naming the value and the accepted range (clap puts the flag before it).
pub fn parse_call_timeout(s: &str) -> Result<Duration, String> {
    let secs: u64 = s.trim().parse().map_err(|_| {
        format!("{s:?} is not a whole number of seconds (1 to {MAX_CALL_TIMEOUT_SECS})")
    })?;
    match secs {
        0 => Err(
            "0 s would fail every call to etcd before it is sent: give at least 1 second".into(),
        ),
        s if s > MAX_CALL_TIMEOUT_SECS => Err(format!(
            "{s} s is longer than the {MAX_CALL_TIMEOUT_SECS} s allowed: a hung etcd would hold \
             every request that long"
        )),
        s => Ok(Duration::from_secs(s)),
    }
}

/// Why a call deadline is too long for presence leases of `lease_ttl`, if it is: a daemon
/// renews its lease a third of the TTL after the last renewal, so a renewal that may wait
/// more than the remaining two thirds lets the lease lapse while it waits, and peers drop
/// the host.
pub fn lease_lapse_risk(call_timeout: Duration, lease_ttl: Duration) -> Option<String> {
    (call_timeout * 3 > lease_ttl * 2).then(|| {
        format!(
            "--store-timeout {}s is more than two thirds of --lease-ttl {}s: a renewal that \
             waits that long lets this host's lease lapse, and peers drop it; give \
             --lease-ttl at least {}s",
            call_timeout.as_secs(),
            lease_ttl.as_secs(),
            (call_timeout.as_secs() * 3).div_ceil(2)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_range_are_taken() {
        assert_eq!(parse_call_timeout("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_call_timeout("15"), Ok(Duration::from_secs(15)));
        assert_eq!(
            parse_call_timeout(&MAX_CALL_TIMEOUT_SECS.to_string()),
            Ok(Duration::from_secs(MAX_CALL_TIMEOUT_SECS))
        );
        assert_eq!(
            parse_call_timeout(&DEFAULT_CALL_TIMEOUT.as_secs().to_string()),
            Ok(DEFAULT_CALL_TIMEOUT)
        );
    }

    #[test]
    fn a_deadline_past_two_thirds_of_the_lease_is_named() {
        let secs = Duration::from_secs;
        assert_eq!(lease_lapse_risk(DEFAULT_CALL_TIMEOUT, secs(10)), None);
        assert_eq!(
            lease_lapse_risk(secs(6), secs(9)),
            None,
            "exactly two thirds"
        );
        let why = lease_lapse_risk(secs(15), secs(10)).expect("a risk");
        assert!(
            why.contains("--store-timeout 15s") && why.contains("--lease-ttl 10s"),
            "{why}"
        );
        assert!(why.contains("at least 23s"), "{why}");
    }

    #[test]
    fn zero_absurd_and_malformed_values_are_refused_by_name() {
        let zero = parse_call_timeout("0").unwrap_err();
        assert!(zero.contains("at least 1 second"), "{zero}");
        let huge = parse_call_timeout("301").unwrap_err();
        assert!(
            huge.contains("301 s") && huge.contains("300 s allowed"),
            "{huge}"
        );
        let overflow = parse_call_timeout("99999999999999999999").unwrap_err();
        assert!(overflow.contains("not a whole number"), "{overflow}");
        for bad in ["", "-1", "1.5", "3s", "ten"] {
            let e = parse_call_timeout(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("1 to 300"),
                "{bad:?}: {e}"
            );
        }
    }
}
