//! Progress of `rnet lab up`: a spinner with `✓` lines when stderr is a terminal (a pty from
//! `script`), and plain step lines without a single escape sequence otherwise.
mod common;

use std::process::Command;
use std::time::Duration;

use common::lab::{ok, rnet_lab, unique_name};
use common::output_with_timeout;

/// Removes the named lab on drop (also when the test fails halfway).
struct LabDown(String);

impl Drop for LabDown {
    fn drop(&mut self) {
        let _ = rnet_lab(&self.0, &["down"]);
    }
}

#[test]
#[cfg_attr(not(feature = "root-tests"), ignore = "needs root")]
fn lab_up_draws_a_spinner_only_on_a_terminal() {
    common::require_root();
    // Not a terminal (pipes): the plain lines, nothing drawn.
    let plain = LabDown(unique_name());
    let out = rnet_lab(&plain.0, &["up", "--hosts", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = ok("rnet lab up", out);
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "escape sequences without a terminal:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains('✓'), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("etcd: accepting connections on")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("lab {} is up", plain.0)),
        "{stdout}"
    );
    drop(plain);

    // A terminal: `script` runs rnet on a pty (stdout and stderr both go there).
    let tty = LabDown(unique_name());
    let cmd = format!(
        "{} lab --name {} up --hosts 1",
        env!("CARGO_BIN_EXE_rnet"),
        tty.0
    );
    let out = output_with_timeout(
        Command::new("script").args(["-qec", &cmd, "/dev/null"]),
        Duration::from_secs(120),
    );
    let text = ok("script -c 'rnet lab up'", out);
    for step in [
        "✓ underlay: every host link passes packets",
        "✓ etcd: accepting connections on",
        "✓ h1: rnetd answers on",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
    // The spinner was drawn and cleared (indicatif's erase-line), and the table follows.
    assert!(text.contains("\x1b[2K"), "{text}");
    assert!(text.contains(&format!("lab {} is up", tty.0)), "{text}");
}
