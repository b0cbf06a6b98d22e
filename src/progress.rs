//! Progress of long multi-step commands (`rnet lab up`, the benchmarks).
//!
//! On a terminal (stderr) a spinner shows the step under way with the time it has taken, and
//! each finished step stays above it as a `✓` line. Anywhere else (CI, tests, pipes) each step
//! is one plain line on the stream the caller chose, or nothing, so output stays parseable.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where step lines go when stderr is not a terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plain {
    Stdout,
    Stderr,
    Silent,
}

/// The progress of one command; finish it with [`Progress::finish`] (dropping it clears the
/// spinner without marking the last step done).
pub struct Progress {
    spinner: Option<ProgressBar>,
    plain: Plain,
    /// The step the spinner shows (not yet reported done).
    current: Option<String>,
}

impl Progress {
    /// A spinner on stderr when stderr is a terminal, else plain lines to `plain`.
    pub fn new(plain: Plain) -> Progress {
        Progress::with_spinner(plain, std::io::stderr().is_terminal())
    }

    fn with_spinner(plain: Plain, spinner: bool) -> Progress {
        let spinner = spinner.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} [{elapsed}]")
                    .expect("valid template"),
            );
            // Ticks from a thread of its own: steps block for seconds (waiting for daemons).
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress {
            spinner,
            plain,
            current: None,
        }
    }

    /// Whether a spinner is drawn (stderr is a terminal).
    pub fn is_interactive(&self) -> bool {
        self.spinner.is_some()
    }

    /// A new step: the previous one is done. Spinner: shows `msg`; plain: prints it.
    pub fn step(&mut self, msg: &str) {
        match &self.spinner {
            Some(bar) => {
                if let Some(done) = self.current.replace(msg.to_string()) {
                    bar.println(format!("✓ {done}"));
                }
                bar.reset_elapsed();
                bar.set_message(msg.to_string());
            }
            None => self.line(msg),
        }
    }

    /// Progress within the current step (`i` of `n` done): only the spinner shows it; plain
    /// output gets the step's line once, when `i` is 0.
    pub fn count(&mut self, msg: &str, i: usize, n: usize) {
        if self.spinner.is_none() {
            if i == 0 {
                self.line(msg);
            }
            return;
        }
        if self.current.as_deref() != Some(msg) {
            self.step(msg);
        }
        if let Some(bar) = &self.spinner {
            bar.set_message(format!("{msg} ({i}/{n})"));
        }
    }

    /// Every step is done.
    pub fn finish(mut self) {
        if let (Some(bar), Some(done)) = (&self.spinner, self.current.take()) {
            bar.println(format!("✓ {done}"));
        }
    }

    /// The current step failed: the spinner leaves it marked `✗` (plain output already has it).
    pub fn fail(mut self) {
        if let (Some(bar), Some(step)) = (&self.spinner, self.current.take()) {
            bar.println(format!("✗ {step}"));
        }
    }

    fn line(&self, msg: &str) {
        // A closed stream (`| head`) is no reason to stop the work being reported.
        let _ = match self.plain {
            Plain::Stdout => writeln!(std::io::stdout(), "{msg}"),
            Plain::Stderr => writeln!(std::io::stderr(), "{msg}"),
            Plain::Silent => Ok(()),
        };
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_steps_are_plain_and_nothing_is_drawn() {
        let mut p = Progress::with_spinner(Plain::Silent, false);
        assert!(!p.is_interactive());
        p.step("one");
        p.count("many", 0, 3);
        p.count("many", 1, 3);
        assert!(p.current.is_none(), "plain output keeps no spinner state");
        p.finish();
    }

    #[test]
    fn the_spinner_keeps_the_step_under_way_until_the_next() {
        let mut p = Progress::with_spinner(Plain::Silent, true);
        // Hidden target: the test's stderr is not drawn on, the state is what we check.
        p.spinner
            .as_ref()
            .unwrap()
            .set_draw_target(ProgressDrawTarget::hidden());
        p.step("switch");
        assert_eq!(p.current.as_deref(), Some("switch"));
        p.count("hosts", 1, 3);
        assert_eq!(p.current.as_deref(), Some("hosts"));
        assert_eq!(p.spinner.as_ref().unwrap().message(), "hosts (1/3)");
        p.step("etcd");
        assert_eq!(p.spinner.as_ref().unwrap().message(), "etcd");
        p.finish();
    }
}
