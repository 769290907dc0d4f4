//! How large a batch may grow before the rest waits for the next sync: the group commit's
//! split of its appenders into two cohorts when the CPU, not the disk, sets the pace.
//!
//! The writer normally lets every append that is ready join the batch that goes out next, so
//! that appenders answered together submit together and share one sync. With many appenders
//! and a cheap sync, that makes one cohort: every appender waits on the same sync, and for the
//! whole of it the CPUs have nothing to do (~20% idle at 64 HTTP connections on two cores). Two
//! cohorts of half the appenders each keep the CPUs busy with one while the other syncs, at
//! the cost of twice the syncs. That pays only when answering half of the appenders and taking
//! their next appends takes at least as long as a sync. With one batch for all, the I/O thread
//! then waits for the next batch (G) at least twice as long as it takes to write and sync one
//! (S): G >= 2S, a busy share S / (S + G) of at most a third. So the split is made while the
//! I/O thread was busy less than a third of the time lately. Loads whose appenders come back
//! quickly (the store bench's 64 bare appenders: a busy share of ~0.6 in one batch, ~0.5 in
//! two) or that are disk-bound (few appenders, bulk imports) keep one batch for all.

use std::time::{Duration, Instant};

/// Share of the time the I/O thread may be busy for the split to be made (see above).
const SPLIT_BELOW_BUSY_SHARE: f64 = 1.0 / 3.0;
/// Weight of the newest observation in the busy share (an exponential moving average over
/// roughly the last eight batches).
const BUSY_SHARE_WEIGHT: f64 = 1.0 / 8.0;
/// Per batch, the remembered peak of appends in hand shrinks by this factor: it follows a
/// fall in the number of appenders within a few hundred batches.
const IN_HAND_DECAY: f64 = 0.99;

/// The writer's view of the two cohorts (see the module documentation).
#[derive(Debug)]
pub(crate) struct Cohorts {
    /// When the I/O thread was last seen idle, and its busy time (total) then.
    last_idle: Option<(Instant, Duration)>,
    /// Moving average of the share of the time the I/O thread was busy.
    busy_share: f64,
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
            busy_share: 1.0,
            in_hand: 0.0,
            cap: usize::MAX,
        }
    }
}

impl Cohorts {
    /// The I/O thread became idle at `now`, having been busy `busy_total` since it started;
    /// the batch it finished held `answered` events and `waiting` are ready for the next.
    pub(crate) fn io_idle(
        &mut self,
        now: Instant,
        busy_total: Duration,
        answered: usize,
        waiting: usize,
    ) {
        if let Some((then, busy_then)) = self.last_idle {
            let wall = now.saturating_duration_since(then).as_secs_f64();
            if wall > 0.0 {
                let busy = busy_total.saturating_sub(busy_then).as_secs_f64();
                let share = (busy / wall).min(1.0);
                self.busy_share += (share - self.busy_share) * BUSY_SHARE_WEIGHT;
            }
        }
        self.last_idle = Some((now, busy_total));
        self.in_hand = (self.in_hand * IN_HAND_DECAY).max((answered + waiting) as f64);
        self.cap = if self.busy_share < SPLIT_BELOW_BUSY_SHARE {
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

    /// Feeds `rounds` batches, each `period` apart with the I/O thread busy `busy` of it.
    fn run(c: &mut Cohorts, start: Instant, rounds: u32, period: u64, busy: u64, in_hand: usize) {
        let mut busy_total = c.last_idle.map_or(Duration::ZERO, |(_, b)| b);
        let mut now = c.last_idle.map_or(start, |(t, _)| t);
        for _ in 0..rounds {
            now += Duration::from_micros(period);
            busy_total += Duration::from_micros(busy);
            c.io_idle(now, busy_total, in_hand, 0);
        }
    }

    #[test]
    fn a_mostly_idle_disk_splits_the_appenders_in_two() {
        let mut c = Cohorts::default();
        // 64 appends in hand, syncs of 300 us every 1,250 us: the I/O thread is busy 24%.
        run(&mut c, Instant::now(), 40, 1250, 300, 64);
        assert!((c.busy_share - 0.24).abs() < 0.02, "{}", c.busy_share);
        assert_eq!(c.cap(), 32);
    }

    #[test]
    fn a_busy_disk_keeps_one_batch_for_all() {
        let mut c = Cohorts::default();
        // The store bench's bare appenders: the I/O thread is busy ~60% of the time.
        run(&mut c, Instant::now(), 40, 500, 300, 64);
        assert_eq!(c.cap(), usize::MAX);
        // Before anything is measured, no split either.
        assert_eq!(Cohorts::default().cap(), usize::MAX);
    }

    #[test]
    fn the_split_ends_when_the_disk_gets_busy_and_follows_fewer_appenders() {
        let start = Instant::now();
        let mut c = Cohorts::default();
        run(&mut c, start, 40, 1250, 300, 64);
        assert_eq!(c.cap(), 32);
        // Fewer appenders: the remembered peak decays to the new number.
        run(&mut c, start, 400, 1250, 300, 10);
        assert_eq!(c.cap(), 5);
        // Appenders that come back sooner than two syncs take: one batch again.
        run(&mut c, start, 40, 700, 300, 10);
        assert_eq!(c.cap(), usize::MAX);
        run(&mut c, start, 40, 1000, 300, 10);
        assert_eq!(c.cap(), 5);
    }

    #[test]
    fn a_single_appender_is_never_held_back() {
        let mut c = Cohorts::default();
        run(&mut c, Instant::now(), 40, 2000, 300, 1);
        assert_eq!(
            c.cap(),
            1,
            "a batch always takes one message, so 1 holds nobody back"
        );
    }
}
