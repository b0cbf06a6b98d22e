//! `rnet peers --watch`: `rnet peers` again every interval, top-style.
//!
//! On a terminal each refresh redraws the table in place (alternate screen, plain ANSI), rows
//! that appeared or changed marked for a few seconds, and hosts that left listed below it.
//! Elsewhere each refresh is printed after the previous one; with `--json` each refresh is one
//! JSON document on a line of its own. SIGINT and SIGTERM end the watch with status 0, the
//! terminal restored.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use super::output::Table;
use super::Failure;
use crate::api::types::PeerInfo;
use crate::api::Client;

/// Shortest refresh: faster only loads the daemon for changes no one can read.
const MIN_INTERVAL: f64 = 0.1;
/// Longest refresh: a day (beyond, a typo is likelier than a wish).
const MAX_INTERVAL: f64 = 86_400.0;
/// How long a row stays marked after it changed.
const MARK_FOR: Duration = Duration::from_secs(5);

/// `--interval SECONDS`: a finite number of seconds from 0.1 to 86400, fractions allowed.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() {
        return Err(format!("'{s}' is not a finite number of seconds"));
    }
    if secs <= 0.0 {
        return Err(format!(
            "{s} s: the interval must be more than 0 (at least {MIN_INTERVAL} s)"
        ));
    }
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&secs) {
        return Err(format!(
            "{s} s: the interval must be from {MIN_INTERVAL} to {MAX_INTERVAL} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What changed from one refresh to the next, by host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The part of a peer whose change is news: not the counters and ages that move every second.
fn essence(p: &PeerInfo) -> impl PartialEq + '_ {
    let tunnel = p
        .tunnel
        .as_ref()
        .map(|t| (t.up, t.problem.as_deref(), t.key_age.is_some()));
    (p.state, p.underlay, p.vtep_mac, p.endpoints, tunnel)
}

/// The changes from `prev` to `cur` (`prev` None: the first refresh, nothing to compare).
pub fn diff(prev: Option<&[PeerInfo]>, cur: &[PeerInfo]) -> Changes {
    let Some(prev) = prev else {
        return Changes::default();
    };
    let before: BTreeMap<&str, &PeerInfo> = prev.iter().map(|p| (p.host.as_str(), p)).collect();
    let now: BTreeMap<&str, &PeerInfo> = cur.iter().map(|p| (p.host.as_str(), p)).collect();
    let mut c = Changes::default();
    for (host, p) in &now {
        match before.get(host) {
            None => c.added.push(host.to_string()),
            Some(old) if essence(old) != essence(p) => c.changed.push(host.to_string()),
            Some(_) => {}
        }
    }
    c.removed = before
        .keys()
        .filter(|h| !now.contains_key(*h))
        .map(|h| h.to_string())
        .collect();
    c
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Added,
    Changed,
    Removed,
}

/// Marks shown for [`MARK_FOR`] after a change, so that a 1 s refresh does not hide it at once.
#[derive(Default)]
struct Marks(BTreeMap<String, (Mark, Instant)>);

impl Marks {
    fn note(&mut self, c: &Changes, now: Instant) {
        for (hosts, mark) in [
            (&c.added, Mark::Added),
            (&c.changed, Mark::Changed),
            (&c.removed, Mark::Removed),
        ] {
            for h in hosts {
                self.0.insert(h.clone(), (mark, now));
            }
        }
        self.0
            .retain(|_, (_, at)| now.duration_since(*at) < MARK_FOR);
    }

    fn of(&self, host: &str) -> Option<Mark> {
        self.0.get(host).map(|(m, _)| *m)
    }

    fn removed(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(_, (m, _))| *m == Mark::Removed)
            .map(|(h, _)| h.as_str())
    }
}

/// One refresh as text: a header line, the table with a mark column, hosts that left, problems.
fn frame(header: &str, peers: &[PeerInfo], marks: &Marks) -> String {
    let (headers, rows, problems) = super::peers_rows(peers);
    let mut all = vec![""];
    all.extend(headers);
    let mut t = Table::new(&all);
    for (p, row) in peers.iter().zip(rows) {
        let mark = match marks.of(&p.host) {
            Some(Mark::Added) => "+",
            Some(Mark::Changed) => "~",
            _ => " ",
        };
        let mut cells = vec![mark.to_string()];
        cells.extend(row);
        t.row(cells);
    }
    let mut out = format!("{header}\n\n{}\n", t.render());
    for h in marks.removed() {
        out.push_str(&format!("- {h}: no longer known\n"));
    }
    for p in problems {
        out.push_str(&p);
        out.push('\n');
    }
    out
}

/// Seconds since the epoch, for JSON documents.
fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `HH:MM:SS UTC` of now.
fn clock() -> String {
    let s = unix_time() as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

/// The alternate screen with the cursor hidden, left again on drop (also on an early return).
struct Screen;

impl Screen {
    fn enter(out: &mut impl Write) -> std::io::Result<Screen> {
        out.write_all(b"\x1b[?1049h\x1b[?25l")?;
        out.flush()?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
}

/// How refreshes are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// One JSON document per line.
    Json,
    /// Redrawn in place on a terminal.
    Screen,
    /// One frame after another (a pipe, a file).
    Log,
}

/// Watch the daemon's peers every `interval` until SIGINT or SIGTERM. The first refresh must
/// succeed (a wrong socket is an error); later failures are shown and retried, as the daemon
/// may be restarting.
pub async fn watch(client: &Client, json: bool, interval: Duration) -> Result<(), Failure> {
    let fail = |message: String| Failure { message, code: 1 };
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| fail(format!("SIGINT: {e}")))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| fail(format!("SIGTERM: {e}")))?;
    let mut out = std::io::stdout();
    let style = match (json, out.is_terminal()) {
        (true, _) => Style::Json,
        (false, true) => Style::Screen,
        (false, false) => Style::Log,
    };
    let mut screen = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev: Option<Vec<PeerInfo>> = None;
    let mut marks = Marks::default();
    let mut refresh = 0u64;
    let every = format!("{}s", interval.as_secs_f64());
    loop {
        // A signal also interrupts a request in flight: a hung daemon does not hold the watch.
        let fetched = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            r = async {
                ticker.tick().await;
                client.get::<Vec<PeerInfo>>("/v1/peers").await
            } => r,
        };
        refresh += 1;
        let text = match (fetched, style) {
            (Err(e), _) if prev.is_none() => return Err(e.into()),
            (Err(e), Style::Json) => {
                let doc = serde_json::json!({"time": unix_time(), "error": e.to_string()});
                format!("{doc}\n")
            }
            (Err(e), _) => format!(
                "rnet peers --watch: every {every}, {}: rnetd does not answer: {e}\n",
                clock()
            ),
            (Ok(mut peers), style) => {
                peers.sort_by(|a, b| a.host.cmp(&b.host));
                let changes = diff(prev.as_deref(), &peers);
                marks.note(&changes, Instant::now());
                let text = if style == Style::Json {
                    let doc = serde_json::json!({
                        "time": unix_time(),
                        "peers": &peers,
                        "changes": changes,
                    });
                    format!("{doc}\n")
                } else {
                    let header = format!(
                        "rnet peers --watch: every {every}, refresh {refresh}, {}   (+ new, ~ changed; Ctrl-C quits)",
                        clock()
                    );
                    frame(&header, &peers, &marks)
                };
                prev = Some(peers);
                text
            }
        };
        let written = match style {
            Style::Screen => {
                if screen.is_none() {
                    screen = Some(Screen::enter(&mut out));
                }
                // Home, then each line cleared to its end and the rest of the screen after the
                // frame: no blank flash between frames.
                let body = text.replace('\n', "\x1b[K\n");
                write!(out, "\x1b[H{body}\x1b[J")
            }
            Style::Log => writeln!(out, "{text}"),
            Style::Json => write!(out, "{text}"),
        };
        // A reader that went away (`| head`) ends the watch, as it would `watch`.
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    drop(screen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::PeerState;

    fn peer(host: &str, state: PeerState, endpoints: usize) -> PeerInfo {
        PeerInfo {
            host: host.into(),
            underlay: "198.18.0.11".parse().unwrap(),
            vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
            state,
            renewed_ago: Some(1),
            endpoints,
            tunnel: None,
            ipsec: None,
        }
    }

    #[test]
    fn intervals_are_finite_positive_seconds() {
        assert_eq!(parse_interval("1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("0.2").unwrap(), Duration::from_millis(200));
        for bad in [
            "0", "-1", "NaN", "nan", "inf", "-0", "0.01", "1e9", "", "1s", "x",
        ] {
            let e = parse_interval(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(parse_interval("NaN").unwrap_err().contains("finite"));
        assert!(parse_interval("0").unwrap_err().contains("more than 0"));
        assert!(parse_interval("-2").unwrap_err().contains("more than 0"));
    }

    #[test]
    fn diff_names_new_changed_and_removed_hosts_but_not_ticking_ages() {
        let before = vec![
            peer("h1", PeerState::Local, 1),
            peer("h2", PeerState::Live, 0),
            peer("h3", PeerState::Live, 0),
        ];
        assert!(diff(None, &before).is_empty(), "nothing to compare first");
        let mut after = before.clone();
        after[0].renewed_ago = Some(7); // ages move every second: not a change
        after[1].state = PeerState::DaemonDown;
        after.remove(2);
        after.push(peer("h4", PeerState::Live, 2));
        let c = diff(Some(&before), &after);
        assert_eq!(c.added, ["h4"]);
        assert_eq!(c.changed, ["h2"]);
        assert_eq!(c.removed, ["h3"]);
        assert!(diff(Some(&after), &after).is_empty());
    }

    #[test]
    fn marks_last_a_few_seconds_and_frames_show_them() {
        let t0 = Instant::now();
        let mut marks = Marks::default();
        let c = Changes {
            added: vec!["h4".into()],
            changed: vec!["h2".into()],
            removed: vec!["h3".into()],
        };
        marks.note(&c, t0);
        let peers = vec![
            peer("h2", PeerState::DaemonDown, 0),
            peer("h4", PeerState::Live, 2),
        ];
        let text = frame("head", &peers, &marks);
        let line = |host: &str| text.lines().find(|l| l.contains(host)).unwrap().to_string();
        assert!(line("h2").starts_with("~ "), "{text}");
        assert!(line("h4").starts_with("+ "), "{text}");
        assert!(text.contains("- h3: no longer known"), "{text}");
        marks.note(&Changes::default(), t0 + MARK_FOR);
        let text = frame("head", &peers, &marks);
        assert!(line_starts(&text, "h2", "  "), "{text}");
        assert!(!text.contains("h3"), "{text}");
    }

    fn line_starts(text: &str, host: &str, prefix: &str) -> bool {
        text.lines()
            .find(|l| l.contains(host))
            .is_some_and(|l| l.starts_with(prefix))
    }
}
