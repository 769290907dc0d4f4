//! Appended events handed from the requests that appended them to the live views.
//!
//! Without it the follower reads every record back from the store and decodes its JSON
//! again, though the request that wrote it holds the same event, validated and typed: ~2 us
//! of the server's ~29 us of CPU per durable append, of which the hand-over saves ~0.8 us
//! (proto-docs/benchmarks.md, "Seventeenth session"). A request whose append the store
//! recorded hands its events over, stamped with
//! the positions, versions and `recorded_at` the store gave them, and the follower folds them
//! in position order. A live bulk import hands over the recorded lines of each chunk from the
//! task that wrote it (`import::hand_over_written`). What nobody hands over (another server on
//! the same PostgreSQL database, a request cancelled after its write, a repeat) the follower
//! reads from the store as before: the hand-off only saves work, the store stays the source
//! of truth.

use std::collections::BTreeMap;

use incidentlog_projections::DecodedEvent;

/// Most appends waiting to be folded; past it a hand-off is dropped and its events are read
/// from the store instead (memory stays bounded if the views fall behind).
const MAX_WAITING: usize = 1 << 16;

/// What the requests handed over and the follower has not folded yet. Lives under one mutex.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// The next position the views need.
    next: u64,
    /// Handed-over appends by their first position.
    waiting: BTreeMap<u64, Vec<DecodedEvent>>,
}

impl Handoff {
    pub(super) fn starting_after(position: u64) -> Handoff {
        Handoff {
            next: position + 1,
            ..Handoff::default()
        }
    }

    /// Takes an append's events (positions ascending, without gaps). True when they are what
    /// the follower waits for, so it should be woken.
    pub(super) fn hand_over(&mut self, mut events: Vec<DecodedEvent>) -> bool {
        // Events the views already have (read from the store meanwhile) are dropped.
        events.retain(|e| e.global_position() >= self.next);
        let Some(first) = events.first().map(DecodedEvent::global_position) else {
            return false;
        };
        if self.waiting.len() >= MAX_WAITING {
            return false;
        }
        self.waiting.insert(first, events);
        first == self.next
    }

    /// Moves the handed-over events that continue the views into `ready`, in position order;
    /// afterwards the views need the position after the last one. The caller keeps `ready`
    /// from one call to the next: a fresh vector grown for every batch faulted in fresh pages
    /// (the heap's freed pages are given back), ~4% of the server's CPU under appends.
    pub(super) fn take_ready(&mut self, ready: &mut Vec<DecodedEvent>) {
        while let Some(entry) = self.waiting.first_entry() {
            let first = *entry.key();
            if first > self.next {
                break;
            }
            let mut events = entry.remove();
            if first < self.next {
                events.retain(|e| e.global_position() >= self.next);
                if events.first().map(DecodedEvent::global_position) != Some(self.next) {
                    continue;
                }
            }
            if let Some(last) = events.last() {
                self.next = last.global_position() + 1;
            }
            ready.append(&mut events);
        }
    }

    /// The views reached `position` some other way (read from the store).
    pub(super) fn advanced_to(&mut self, position: u64) {
        self.next = self.next.max(position + 1);
    }

    #[cfg(test)]
    fn waiting_appends(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use incidentlog_projections::{parse_events, TypedEvent};
    use serde_json::json;
    use uuid::Uuid;

    fn typed() -> TypedEvent {
        let body = json!([{"event_id": Uuid::new_v4().to_string(), "type": "IncidentRetracted",
                           "data": {"reason": "duplicate"}}]);
        let mut events = parse_events(&body, "/events").expect("a valid event");
        events.remove(0)
    }

    /// An append of `n` events at `first..`.
    fn append(first: u64, n: u64) -> Vec<DecodedEvent> {
        (first..first + n)
            .map(|p| DecodedEvent::appended(typed(), p, Uuid::nil(), p, Utc::now()))
            .collect()
    }

    fn ready(h: &mut Handoff) -> Vec<DecodedEvent> {
        let mut ready = Vec::new();
        h.take_ready(&mut ready);
        ready
    }

    fn positions(events: &[DecodedEvent]) -> Vec<u64> {
        events.iter().map(DecodedEvent::global_position).collect()
    }

    #[test]
    fn appends_handed_over_out_of_order_come_out_in_order() {
        let mut h = Handoff::starting_after(10);
        assert!(!h.hand_over(append(14, 2)), "not what the views wait for");
        assert!(!h.hand_over(append(13, 1)));
        assert!(ready(&mut h).is_empty(), "11 and 12 are missing");
        assert!(h.hand_over(append(11, 2)), "the views wait for 11");
        assert_eq!(positions(&ready(&mut h)), vec![11, 12, 13, 14, 15]);
        assert!(h.hand_over(append(16, 1)));
        assert_eq!(positions(&ready(&mut h)), vec![16]);
        assert_eq!(h.waiting_appends(), 0);
    }

    #[test]
    fn what_the_views_read_meanwhile_is_dropped() {
        let mut h = Handoff::starting_after(0);
        assert!(!h.hand_over(append(4, 4)));
        assert!(!h.hand_over(append(8, 1)));
        // The follower read 1..=5 from the store: 6 and 7 of the first append still count.
        h.advanced_to(5);
        assert_eq!(positions(&ready(&mut h)), vec![6, 7, 8]);
        // A late hand-over of something already read is ignored.
        assert!(!h.hand_over(append(2, 2)));
        assert!(ready(&mut h).is_empty());
        assert_eq!(h.waiting_appends(), 0);
        // Going back is not possible.
        h.advanced_to(3);
        assert!(h.hand_over(append(9, 1)));
        assert_eq!(positions(&ready(&mut h)), vec![9]);
    }

    #[test]
    fn waiting_appends_are_bounded() {
        let mut h = Handoff::starting_after(0);
        for i in 0..MAX_WAITING as u64 + 10 {
            h.hand_over(append(2 + i, 1));
        }
        assert_eq!(h.waiting_appends(), MAX_WAITING);
    }
}
