//! Catch-up-then-live subscriptions, written once for every backend.
//!
//! A subscription only ever asks for "positions after the last one I yielded", so the switch
//! from catch-up to live cannot open a gap or yield a duplicate: there is no switch. It reads
//! pages with [`EventStore::read_all`] until the log is exhausted, then sleeps on the durable
//! head ([`EventStore::watch_head`]) until it moves past what it has seen.
//! [`subscribe_map`] hands each event, borrowed, to a mapping where the store decodes it (see
//! [`EventStore::read_all_map`]).

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};

use crate::{EventRef, EventStore, RecordedEvent, StoreError};

/// Page size of catch-up reads.
const PAGE: usize = 1024;

/// Every event with `global_position > after`, then every event appended later, in order,
/// each exactly once. The stream ends after yielding an error, or when the store shuts down.
pub fn subscribe<S: EventStore>(
    store: Arc<S>,
    after: u64,
) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
    subscribe_map(store, after, |e| e.to_recorded()).map(|item| item.map(|(_, e)| e))
}

/// [`subscribe`], each event handed to `map` as the store reads it; items are the event's
/// global position and what `map` made of it.
pub fn subscribe_map<S, T, F>(
    store: Arc<S>,
    after: u64,
    map: F,
) -> impl Stream<Item = Result<(u64, T), StoreError>> + Send + 'static
where
    S: EventStore,
    T: Send + 'static,
    F: Fn(EventRef<'_>) -> T + Clone + Send + Sync + 'static,
{
    // Take the head receiver before the first read so that an append racing with the first
    // read is seen as a change.
    let head = store.watch_head();
    let state = State {
        store,
        after,
        head,
        buffer: VecDeque::new(),
        failed: false,
        map,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}

struct State<S, T, F> {
    store: Arc<S>,
    after: u64,
    head: tokio::sync::watch::Receiver<u64>,
    buffer: VecDeque<(u64, T)>,
    failed: bool,
    map: F,
}

impl<S, T, F> State<S, T, F>
where
    S: EventStore,
    T: Send + 'static,
    F: Fn(EventRef<'_>) -> T + Clone + Send + Sync + 'static,
{
    async fn next(&mut self) -> Option<Result<(u64, T), StoreError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(item) = self.buffer.pop_front() {
                self.after = item.0;
                return Some(Ok(item));
            }
            // Mark the current head as seen *before* reading, so an append that lands after
            // the read wakes the wait below.
            let known_head = *self.head.borrow_and_update();
            if known_head > self.after {
                let map = self.map.clone();
                let read = self
                    .store
                    .read_all_map(self.after, PAGE, move |e| (e.global_position, map(e)));
                match read.await {
                    Ok(events) if !events.is_empty() => {
                        self.buffer.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            if self.head.changed().await.is_err() {
                return None;
            }
        }
    }
}
