//! Time stamps for telemetry records, and how far the wall clock can be
//! trusted.
//!
//! Every record gets the wall-clock time, the monotonic time since boot
//! (`CLOCK_BOOTTIME`, which keeps counting through suspend) and a
//! [`ClockQuality`]. The wall clock counts as good only when it is
//! plausible (not before [`MIN_PLAUSIBLE_MS`], 2024-01-01) and the kernel
//! does not report it unsynchronised (`adjtimex`, or
//! `/run/systemd/timesync/synchronized` when systemd-timesyncd is used).
//! Records made while it is not good are `Unsynced`; once it is good, the
//! buffer rewrites those of the same boot from their monotonic time
//! (`time = wall_now - (mono_now - mono_then)`) and marks them `Corrected`.
//!
//! [`ClockWatch`] also notices steps: the offset between wall and
//! monotonic time changing by more than [`STEP_TOLERANCE_MS`] between two
//! readings (someone or something set the clock). Steps are counted and
//! logged; they never change a record that was made with a good clock.
//!
//! The system clock sits behind [`Clock`] so the logic is tested with a
//! fake one. Nothing here ever sets the clock.

use drover_proto::telemetry::ClockQuality;

/// 2024-01-01T00:00:00Z: a wall clock before this is wrong (an RTC-less
/// device that has not been told the time yet starts in 1970).
pub const MIN_PLAUSIBLE_MS: i64 = 1_704_067_200_000;
/// A change of the wall-minus-monotonic offset beyond this between two
/// readings is a clock step (NTP slews at most 0.5 ms per second).
pub const STEP_TOLERANCE_MS: i64 = 2_000;

/// The clocks the telemetry task reads.
pub trait Clock: Send + Sync {
    /// Wall-clock Unix milliseconds.
    fn wall_ms(&self) -> i64;
    /// Milliseconds since boot (CLOCK_BOOTTIME).
    fn mono_ms(&self) -> u64;
    /// Whether the kernel or the time daemon says the wall clock is
    /// synchronised; `None` when nothing says.
    fn synced(&self) -> Option<bool>;
}

/// The real clocks of this device.
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            // Before 1970: as wrong as it gets, still a number.
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        boottime_ms()
    }

    fn synced(&self) -> Option<bool> {
        if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
            return Some(true);
        }
        // adjtimex with modes 0 only reads. TIME_ERROR (5) means the clock
        // is not synchronised (STA_UNSYNC set, no NTP daemon disciplines it).
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        match state {
            -1 => None,
            libc::TIME_ERROR => Some(false),
            _ => Some(tx.status & libc::STA_UNSYNC == 0),
        }
    }
}

/// CLOCK_BOOTTIME in milliseconds.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // CLOCK_BOOTTIME exists on every Linux this agent supports (2.6.39+).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!("cannot read /proc/sys/kernel/random/boot_id (is /proc mounted?): {e}")
        })
}

/// One reading of the clocks, for a round of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub time_ms: i64,
    pub mono_ms: u64,
    pub clock: ClockQuality,
}

impl Stamp {
    /// Whether the wall clock was good for this reading.
    pub fn good(&self) -> bool {
        self.clock == ClockQuality::Synced
    }

    /// Wall minus monotonic: what corrects a record of this boot.
    pub fn offset_ms(&self) -> i64 {
        self.time_ms - self.mono_ms as i64
    }
}

/// Reads the clocks and remembers enough to notice steps.
#[derive(Debug, Default)]
pub struct ClockWatch {
    last_offset: Option<i64>,
    /// Clock steps seen since the agent started.
    pub steps: u64,
}

impl ClockWatch {
    pub fn stamp(&mut self, clock: &dyn Clock) -> Stamp {
        let time_ms = clock.wall_ms();
        let mono_ms = clock.mono_ms();
        let offset = time_ms - mono_ms as i64;
        if let Some(last) = self.last_offset
            && (offset - last).abs() > STEP_TOLERANCE_MS
        {
            self.steps += 1;
            tracing::warn!(
                step_ms = offset - last,
                "the wall clock was stepped; records made with an unsynchronised clock will be corrected once it is good"
            );
        }
        self.last_offset = Some(offset);
        let good = time_ms >= MIN_PLAUSIBLE_MS && clock.synced() != Some(false);
        Stamp {
            time_ms,
            mono_ms,
            clock: if good {
                ClockQuality::Synced
            } else {
                ClockQuality::Unsynced
            },
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! A clock for tests.
    use std::sync::Mutex;

    pub struct FakeClock(pub Mutex<(i64, u64, Option<bool>)>);

    impl FakeClock {
        pub fn new(wall: i64, mono: u64, synced: Option<bool>) -> FakeClock {
            FakeClock(Mutex::new((wall, mono, synced)))
        }
        pub fn set(&self, wall: i64, mono: u64, synced: Option<bool>) {
            *self.0.lock().unwrap() = (wall, mono, synced);
        }
    }

    impl super::Clock for FakeClock {
        fn wall_ms(&self) -> i64 {
            self.0.lock().unwrap().0
        }
        fn mono_ms(&self) -> u64 {
            self.0.lock().unwrap().1
        }
        fn synced(&self) -> Option<bool> {
            self.0.lock().unwrap().2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeClock;
    use super::*;

    #[test]
    fn a_clock_in_1970_or_reported_unsynchronised_is_not_good_and_steps_are_counted() {
        let c = FakeClock::new(5_000, 5_000, None);
        let mut w = ClockWatch::default();
        assert_eq!(w.stamp(&c).clock, ClockQuality::Unsynced, "1970");
        c.set(MIN_PLAUSIBLE_MS + 10_000, 15_000, Some(false));
        let s = w.stamp(&c);
        assert_eq!(s.clock, ClockQuality::Unsynced, "kernel says unsynced");
        assert_eq!(w.steps, 1, "1970 to 2024 is a step");
        c.set(MIN_PLAUSIBLE_MS + 20_000, 25_000, Some(true));
        let s = w.stamp(&c);
        assert!(s.good());
        assert_eq!(s.offset_ms(), MIN_PLAUSIBLE_MS - 5_000);
        assert_eq!(w.steps, 1, "no step when both clocks moved alike");
        c.set(MIN_PLAUSIBLE_MS + 30_000, 35_000, None);
        assert!(w.stamp(&c).good(), "nothing says unsynced: trusted");
    }

    #[test]
    fn the_system_clocks_read_sensibly() {
        let a = boottime_ms();
        assert!(a > 0);
        assert!(SystemClock.wall_ms() > MIN_PLAUSIBLE_MS);
        assert!(!boot_id().unwrap().is_empty());
    }
}
