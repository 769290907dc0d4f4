//! I/O fault injection through the writer's narrow file interface.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use incidentlog_store::file::{LogFile, LogIo};
use incidentlog_store::{EventStore, FileStore, StoreError};
use uuid::Uuid;

use crate::common::files::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum WriteFault {
    /// Nothing written, EIO.
    Error,
    /// Part of the buffer written, then ENOSPC.
    Enospc,
    /// Part of the buffer written, then a zero-length write.
    Short,
}

#[derive(Default)]
struct Faults {
    write: Option<WriteFault>,
    /// Fail the write with this 0-based index (counting every write), with `write`'s kind.
    write_at: Option<u64>,
    sync: bool,
    /// Every sync takes this long first (a hung disk).
    sync_delay: Option<std::time::Duration>,
    create: bool,
    writes: u64,
}

#[derive(Clone, Default)]
struct FaultyIo(Arc<Mutex<Faults>>);

struct FaultyFile {
    file: File,
    faults: Arc<Mutex<Faults>>,
}

impl LogFile for FaultyFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let fault = {
            let mut f = self.faults.lock().unwrap();
            let n = f.writes;
            f.writes += 1;
            match f.write_at {
                Some(at) if at == n => Some(f.write.unwrap_or(WriteFault::Error)),
                Some(_) => None,
                None => f.write,
            }
        };
        match fault {
            None => self.file.write_all(buf),
            Some(WriteFault::Error) => Err(io::Error::other("injected EIO")),
            Some(WriteFault::Enospc) => {
                self.file.write_all(&buf[..buf.len() / 2])?;
                Err(io::Error::from_raw_os_error(28))
            }
            Some(WriteFault::Short) => {
                self.file.write_all(&buf[..buf.len() * 2 / 3])?;
                Err(io::Error::new(io::ErrorKind::WriteZero, "short write"))
            }
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let delay = self.faults.lock().unwrap().sync_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if self.faults.lock().unwrap().sync {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

impl LogIo for FaultyIo {
    fn open_append(&self, path: &Path, create: bool, len: u64) -> io::Result<Box<dyn LogFile>> {
        if create && self.0.lock().unwrap().create {
            return Err(io::Error::from_raw_os_error(28));
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(create)
            .open(path)?;
        // No reserve here: appends go right after what recovery kept.
        file.set_len(len)?;
        Ok(Box::new(FaultyFile {
            file,
            faults: self.0.clone(),
        }))
    }
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    match r {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// One acknowledged append, then one that hits `set_fault`: it fails, nothing of it is
/// visible, the store refuses appends until reopened, and after reopening every acknowledged
/// event is there and the failed append is not.
async fn single_fault(set_fault: impl FnOnce(&mut Faults)) {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::default();
    let store = FileStore::open_with_io(&opts(dir.path(), 1 << 20), Arc::new(io.clone()))
        .await
        .unwrap();
    let s = Uuid::new_v4();
    let a: Vec<_> = (0..2).map(new_event).collect();
    store.append(append_req(s, a.clone())).await.unwrap();
    let head = store.head();
    let mut watch = store.watch_head();
    watch.borrow_and_update();

    set_fault(&mut io.0.lock().unwrap());
    let b: Vec<_> = (0..3).map(new_event).collect();
    unavailable(store.append(append_req(s, b.clone())).await);
    assert!(store.unavailable_reason().is_some());

    // Nothing of B is visible, the head did not move.
    assert_eq!(store.head(), head);
    assert!(!watch.has_changed().unwrap());
    let ids = log_ids(&store).await;
    assert_eq!(ids, a.iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert!(store.event_by_id(b[0].event_id).await.unwrap().is_none());
    assert_eq!(store.read_stream(s).await.unwrap().len(), 2);
    assert_eq!(store.stream_version(s).await.unwrap(), 2);
    assert_eq!(store.verify().await.unwrap().events, 2);

    // Poisoned: appends fail even once the disk is fine again.
    *io.0.lock().unwrap() = Faults::default();
    unavailable(store.append(append_req(s, vec![new_event(9)])).await);
    for r in store
        .append_many(vec![append_req(s, vec![new_event(10)])])
        .await
    {
        unavailable(r);
    }
    drop(store);

    let store = FileStore::open(&opts(dir.path(), 1 << 20)).await.unwrap();
    let ids: Vec<Uuid> = log_ids(&store).await;
    let b_ids: Vec<Uuid> = b.iter().map(|e| e.event_id).collect();
    assert_eq!(
        &ids[..2],
        &a.iter().map(|e| e.event_id).collect::<Vec<_>>()[..]
    );
    let rest = &ids[2..];
    assert!(
        rest.is_empty(),
        "an append answered with an error came back after reopening: {rest:?} (its ids: {b_ids:?})"
    );
    store.verify().await.unwrap();
    store
        .append(append_req(s, vec![new_event(11)]))
        .await
        .unwrap();
    store.verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write() {
    single_fault(|f| f.write = Some(WriteFault::Error)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_mid_write() {
    single_fault(|f| f.write = Some(WriteFault::Enospc)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_write() {
    single_fault(|f| f.write = Some(WriteFault::Short)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync() {
    // The bytes reached the file, only the sync failed: the writer cuts them off again, so an
    // append answered with an error does not come back after a restart.
    single_fault(|f| f.sync = true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_segment_creation() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::default();
    let store = FileStore::open_with_io(&opts(dir.path(), 512), Arc::new(io.clone()))
        .await
        .unwrap();
    // The first segment exists; every later one cannot be created.
    io.0.lock().unwrap().create = true;
    let mut acked = Vec::new();
    let mut refused = false;
    for i in 0..100 {
        let e = new_event(i);
        match store
            .append(append_req(Uuid::new_v4(), vec![e.clone()]))
            .await
        {
            Ok(_) => acked.push(e.event_id),
            Err(StoreError::Unavailable(_)) => {
                refused = true;
                break;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(refused, "the append that needed a new segment failed");
    assert!(acked.len() > 1);
    assert_eq!(segments(dir.path()).len(), 1);
    unavailable(
        store
            .append(append_req(Uuid::new_v4(), vec![new_event(2)]))
            .await,
    );
    assert_eq!(log_ids(&store).await, acked);
    drop(store);
    let store = FileStore::open(&opts(dir.path(), 512)).await.unwrap();
    assert_eq!(log_ids(&store).await, acked);
    store
        .append(append_req(Uuid::new_v4(), vec![new_event(3)]))
        .await
        .unwrap();
    store.verify().await.unwrap();
}

/// Many concurrent appenders; the n-th write fails. Every acknowledged event survives, every
/// append is all-or-nothing, and every append after the failure is refused.
async fn concurrent_fault(kind: WriteFault, at: u64) {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::default();
    {
        let mut f = io.0.lock().unwrap();
        f.write = Some(kind);
        f.write_at = Some(at);
    }
    let store = Arc::new(
        FileStore::open_with_io(&opts(dir.path(), 2048), Arc::new(io.clone()))
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..12)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut failed = Vec::new();
                let mut refused_after_failure = true;
                for i in 0..20u64 {
                    let evs: Vec<_> = (0..1 + (t + i) % 3).map(new_event).collect();
                    let ids: Vec<Uuid> = evs.iter().map(|e| e.event_id).collect();
                    match store.append(append_req(Uuid::new_v4(), evs)).await {
                        Ok(_) => {
                            if !failed.is_empty() {
                                refused_after_failure = false;
                            }
                            acked.push(ids)
                        }
                        Err(StoreError::Unavailable(_)) => failed.push(ids),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (acked, failed, refused_after_failure)
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        let (a, f, refused) = t.await.unwrap();
        assert!(refused, "no append succeeds after one failed");
        acked.extend(a);
        failed.extend(f);
    }
    assert!(!failed.is_empty(), "the fault was hit");
    let visible: HashSet<Uuid> = log_ids(&*store).await.into_iter().collect();
    let acked_ids: HashSet<Uuid> = acked.iter().flatten().copied().collect();
    assert_eq!(
        visible, acked_ids,
        "readers see exactly the acknowledged events"
    );
    drop(store);

    let store = FileStore::open(&opts(dir.path(), 2048)).await.unwrap();
    let after: HashSet<Uuid> = log_ids(&store).await.into_iter().collect();
    assert!(
        acked_ids.is_subset(&after),
        "an acknowledged event was lost"
    );
    assert_eq!(
        after, acked_ids,
        "after reopening: exactly the acknowledged events (an append answered with an error must not come back)"
    );
    store.verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_a_failed_write() {
    concurrent_fault(WriteFault::Error, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_enospc() {
    concurrent_fault(WriteFault::Enospc, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_a_short_write() {
    concurrent_fault(WriteFault::Short, 3).await;
}

/// A write or sync that does not return (a hung disk): the store says it is unavailable once
/// it has taken `stalled_after`, and available again once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sync_makes_the_store_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::default();
    let mut o = opts(dir.path(), 1 << 20);
    o.stalled_after = std::time::Duration::from_millis(300);
    let store = Arc::new(
        FileStore::open_with_io(&o, Arc::new(io.clone()))
            .await
            .unwrap(),
    );
    let s = Uuid::new_v4();
    store
        .append(append_req(s, vec![new_event(0)]))
        .await
        .unwrap();
    assert_eq!(store.unavailable_reason(), None);

    io.0.lock().unwrap().sync_delay = Some(std::time::Duration::from_millis(1500));
    let hung = tokio::spawn({
        let store = store.clone();
        async move { store.append(append_req(s, vec![new_event(1)])).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        store.unavailable_reason(),
        None,
        "not yet: a sync may take a moment"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let reason = store
        .unavailable_reason()
        .expect("unavailable while the sync hangs");
    assert!(reason.contains("has not returned"), "{reason}");
    io.0.lock().unwrap().sync_delay = None;
    hung.await.unwrap().unwrap();
    assert_eq!(
        store.unavailable_reason(),
        None,
        "available again once it returned"
    );
}

/// An event is stamped when the writer takes it and readable after its sync: a question about
/// a time just past waits for the events stamped before it (`settle_recorded_at`), so that
/// `position_at` gives the same answer now as later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_just_past_is_settled_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let io = FaultyIo::default();
    let store = Arc::new(
        FileStore::open_with_io(&opts(dir.path(), 1 << 20), Arc::new(io.clone()))
            .await
            .unwrap(),
    );
    let s = Uuid::new_v4();
    let before_all = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    store
        .append(append_req(s, vec![new_event(0)]))
        .await
        .unwrap();
    let writes_before = io.0.lock().unwrap().writes;
    io.0.lock().unwrap().sync_delay = Some(std::time::Duration::from_millis(400));
    let slow = tokio::spawn({
        let store = store.clone();
        async move { store.append(append_req(s, vec![new_event(1)])).await }
    });
    // Stamped once written (the writer stamps, then writes, then syncs), not yet durable.
    while io.0.lock().unwrap().writes == writes_before {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let t = chrono::Utc::now();
    assert_eq!(store.head().position, 1, "the sync is still running");
    // A time before the durable head was stamped: nothing on its way can be at or before it.
    tokio::time::timeout(
        std::time::Duration::from_millis(100),
        store.settle_recorded_at(before_all),
    )
    .await
    .expect("no wait for a time the durable head is already past")
    .unwrap();
    assert_eq!(store.head().position, 1);
    store.settle_recorded_at(t).await.unwrap();
    assert_eq!(
        store.head().position,
        2,
        "settled: the event stamped before t is durable"
    );
    assert_eq!(store.position_at(t).await.unwrap(), 2);
    slow.await.unwrap().unwrap();
    // A time not yet past is not waited for.
    io.0.lock().unwrap().sync_delay = None;
    let future = chrono::Utc::now() + chrono::Duration::seconds(5);
    store.settle_recorded_at(future).await.unwrap();
}
