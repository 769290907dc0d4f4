//! How large a batch may grow before the rest waits for the next sync: the group commit's
//! split of its appenders into two cohorts when the CPU, not the disk, sets the pace.
//!
//! The writer normally lets every append that is ready join the batch that goes out next, so
//! that appenders answered together submit together and share one sync. With many appenders
//! and a cheap sync, that makes one cohort: every appender waits on the same sync, and for the
//! whole of it the CPUs have nothing to do (~17% of two cores idle at 64 HTTP connections). Two
//! cohorts of half the appenders each keep the CPUs busy with one while the other syncs, at
//! the cost of twice the syncs. That pays only when answering half of the appenders and taking
//! their next appends takes at least as long as writing and syncing a batch: when the I/O
//! thread waits for its next batch (G) at least twice as long as it writes and syncs one (S).
//! So the writer keeps moving averages of both and splits while G >= 2S. Loads whose
//! appenders come back within microseconds (the store bench's 64 bare appenders) or that keep
//! the disk busy (few appenders, bulk imports) keep one batch for all.

use std::time::{Duration, Instant};

/// Split while the I/O thread waits for work at least this many times as long as it writes
/// and syncs (see above).
const SPLIT_AT_WAIT_PER_DISK: f64 = 2.0;
/// Weight of the newest observation in the moving averages (roughly the last eight batches).
const WEIGHT: f64 = 1.0 / 8.0;
/// Per batch, the remembered peak of appends in hand shrinks by this factor: it follows a
/// fall in the number of appenders within a few hundred batches.
const IN_HAND_DECAY: f64 = 0.99;

/// The I/O thread's running totals since it started.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IoTimes {
    /// On batches (writing, syncing, publishing; the answers go out after the writer is
    /// told the thread is free).
    pub busy: Duration,
    /// Of that, writing and syncing the log file.
    pub disk: Duration,
}

/// The writer's view of the two cohorts (see the module documentation).
#[derive(Debug)]
pub(crate) struct Cohorts {
    /// When the I/O thread was last seen idle, and its totals then.
    last_idle: Option<(Instant, IoTimes)>,
    /// Moving averages, per batch, of the I/O thread's wait for work and of its disk time,
    /// in seconds.
    wait: f64,
    disk: f64,
    /// Events of the batch last handed to the I/O thread.
    handed_over: usize,
    /// Recent peak of the events in hand when the I/O thread became idle (those it just
    /// answered plus those waiting for the next batch), decaying.
    in_hand: f64,
    /// Events a batch takes before later appends wait for the next one.
    cap: usize,
}

impl Default for Cohorts {
    fn default() -> Self {
        Cohorts {
            last_idle: None,
            wait: 0.0,
            disk: 0.0,
            handed_over: 0,
            in_hand: 0.0,
            cap: usize::MAX,
        }
    }
}

impl Cohorts {
    /// A batch of `events` went to the I/O thread.
    pub(crate) fn handed_over(&mut self, events: usize) {
        self.handed_over = events;
    }

    /// The I/O thread became idle at `now`, with these totals (having answered the batch last
    /// handed over); `waiting` events are ready for the next.
    pub(crate) fn io_idle(&mut self, now: Instant, io: IoTimes, waiting: usize) {
        if let Some((then, before)) = self.last_idle {
            let wall = now.saturating_duration_since(then);
            let busy = io.busy.saturating_sub(before.busy);
            let wait = wall.saturating_sub(busy).as_secs_f64();
            let disk = io.disk.saturating_sub(before.disk).as_secs_f64();
            self.wait += (wait - self.wait) * WEIGHT;
            self.disk += (disk - self.disk) * WEIGHT;
        }
        self.last_idle = Some((now, io));
        let in_hand = self.handed_over + waiting;
        self.in_hand = (self.in_hand * IN_HAND_DECAY).max(in_hand as f64);
        self.cap = if self.disk > 0.0 && self.wait >= SPLIT_AT_WAIT_PER_DISK * self.disk {
            ((self.in_hand / 2.0).ceil() as usize).max(1)
        } else {
            usize::MAX
        };
    }

    /// Events a batch takes before later appends wait for the next one (a batch always takes
    /// at least one whole message, however large).
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rounds` batches, each `period` us apart, the I/O thread spending `disk` us of
    /// each on the disk and `other` us on the rest of the batch.
    fn run(c: &mut Cohorts, rounds: u32, period: u64, disk: u64, other: u64, in_hand: usize) {
        let (mut now, mut io) = c.last_idle.unwrap_or((Instant::now(), IoTimes::default()));
        for _ in 0..rounds {
            now += Duration::from_micros(period);
            io.disk += Duration::from_micros(disk);
            io.busy += Duration::from_micros(disk + other);
            c.handed_over(in_hand);
            c.io_idle(now, io, 0);
        }
    }

    /// The cap of fresh cohorts after `run`.
    fn cap_after(rounds: u32, period: u64, disk: u64, other: u64, in_hand: usize) -> usize {
        let mut c = Cohorts::default();
        run(&mut c, rounds, period, disk, other, in_hand);
        c.cap()
    }

    #[test]
    fn appenders_slower_to_come_back_than_two_syncs_are_split_in_two() {
        // 64 appends in hand, syncs of 300 us every 1,250 us (50 us of bookkeeping): the I/O
        // thread waits 900 us for each batch.
        assert_eq!(cap_after(40, 1250, 300, 50, 64), 32);
    }

    #[test]
    fn appenders_back_within_two_syncs_keep_one_batch() {
        // The store bench's bare appenders: 200 us syncs, 300 us of waiting for the next batch.
        assert_eq!(cap_after(40, 550, 200, 50, 64), usize::MAX);
        // Nothing measured yet, or no disk time at all (nothing written): no split either.
        assert_eq!(Cohorts::default().cap(), usize::MAX);
        assert_eq!(cap_after(40, 1000, 0, 0, 64), usize::MAX);
    }

    #[test]
    fn the_split_follows_the_appenders_and_the_disk() {
        let mut c = Cohorts::default();
        run(&mut c, 40, 1250, 300, 50, 64);
        assert_eq!(c.cap(), 32);
        // Fewer appenders: the remembered peak decays to the new number.
        run(&mut c, 400, 1250, 300, 50, 10);
        assert_eq!(c.cap(), 5);
        // Slower syncs (a busier disk): one batch again...
        run(&mut c, 40, 1250, 500, 50, 10);
        assert_eq!(c.cap(), usize::MAX);
        // ... until they are fast again.
        run(&mut c, 40, 1250, 300, 50, 10);
        assert_eq!(c.cap(), 5);
    }

    #[test]
    fn a_single_appender_is_never_held_back() {
        assert_eq!(
            cap_after(40, 2000, 300, 50, 1),
            1,
            "a batch always takes one message, so 1 holds nobody back"
        );
    }
}
