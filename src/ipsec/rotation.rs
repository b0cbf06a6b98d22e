//! Pure: this host's sending epoch and when to start the next one.
//!
//! An epoch is a u64 whose high bits are the unix second it began and whose low 16 bits are
//! random, and each is larger than the last: a restarted daemon (whose kernel may have lost
//! its SAs, or whose clock went back) never draws an epoch, and so never a key, it sent on
//! before.

/// The sending epoch's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub epoch: u64,
    /// Unix seconds when `epoch` began.
    pub began: u64,
    /// Seconds between rotations.
    pub every: u64,
}

/// Rotations closer than this are merged: a peer cannot make this host spin.
pub const MIN_GAP: u64 = 10;

/// A new epoch at `now` (unix seconds) after `prev`, with 16 random bits.
pub fn next_epoch(now: u64, prev: u64, random: u16) -> u64 {
    ((now << 16) | u64::from(random)).max(prev.saturating_add(1))
}

impl Rotation {
    pub fn start(now: u64, every: u64, random: u16) -> Rotation {
        Rotation {
            epoch: next_epoch(now, 0, random),
            began: now,
            every: every.max(MIN_GAP),
        }
    }

    /// Whether the schedule (or `forced`, e.g. a vanished SA) wants a new epoch at `now`.
    pub fn due(&self, now: u64, forced: bool) -> bool {
        let age = now.saturating_sub(self.began);
        age >= self.every || (forced && age >= MIN_GAP)
    }

    /// Start the next epoch.
    pub fn rotate(&mut self, now: u64, random: u16) {
        self.epoch = next_epoch(now, self.epoch, random);
        self.began = now;
    }

    /// Unix seconds until the next scheduled rotation.
    pub fn next_in(&self, now: u64) -> u64 {
        (self.began + self.every).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_grow_even_when_the_clock_goes_back() {
        let mut r = Rotation::start(1_000, 43_200, 5);
        assert_eq!(r.epoch, (1_000 << 16) | 5);
        let first = r.epoch;
        r.rotate(900, 0); // clock went back
        assert!(r.epoch > first);
        // A restart with the same second and the same random bits still moves on when the
        // previous epoch is known; with another random draw it differs anyway.
        assert_ne!(next_epoch(1_000, 0, 6), first);
    }

    #[test]
    fn schedule_and_forced_rotation_with_a_floor() {
        let r = Rotation::start(1_000, 60, 0);
        assert!(!r.due(1_059, false));
        assert!(r.due(1_060, false));
        assert!(!r.due(1_000 + MIN_GAP - 1, true), "forced, but too soon");
        assert!(r.due(1_000 + MIN_GAP, true));
        assert_eq!(r.next_in(1_050), 10);
        assert_eq!(Rotation::start(0, 1, 0).every, MIN_GAP);
    }
}
