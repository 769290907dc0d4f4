//! kill -9 drill: a child process (this test binary, re-executed) appends in a loop and prints
//! every acknowledged event id; the parent SIGKILLs it at random moments, reopens the log and
//! checks that every acknowledged event is there and the log verifies.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use incidentlog_store::{EventStore, FileStore};
use uuid::Uuid;

use crate::common::files::*;

const DIR_VAR: &str = "INCIDENTLOG_DRILL_DIR";
const ROUNDS: usize = 20;

/// The child role; does nothing unless started by `kill_dash_nine_drill`.
#[test]
#[ignore = "child role of kill_dash_nine_drill"]
fn drill_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(
            FileStore::open(&opts(dir.as_ref(), 64 << 10))
                .await
                .unwrap(),
        );
        // libtest may have printed "test ... " without a newline: start a fresh line.
        println!("\nREADY");
        std::io::stdout().flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let stream = Uuid::new_v4();
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let evs: Vec<_> = (0..1 + (t + i) % 3).map(new_event).collect();
                        let ids: Vec<String> = evs.iter().map(|e| e.event_id.to_string()).collect();
                        store.append(append_req(stream, evs)).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {} END", ids.join(" ")).unwrap();
                        out.flush().unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// xorshift64*, seeded from the clock (the seed is printed on failure).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn kill_dash_nine_drill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut acked: HashSet<Uuid> = HashSet::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "drill::drill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child has the store open, then let it append for a random while.
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("child never became ready (round {round})"));
            if line.trim_end() == "READY" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 150));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let mut this_round = 0;
        for line in rx.try_iter() {
            // A line cut by the kill has no END: its append was acknowledged, but we cannot
            // trust a partial id list, so only complete lines count.
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let Some(ids) = rest.strip_suffix(" END") else {
                continue;
            };
            for id in ids.split(' ') {
                acked.insert(id.parse().unwrap());
                this_round += 1;
            }
        }
        rt.block_on(async {
            let store = FileStore::open(&opts(dir.path(), 64 << 10))
                .await
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}): reopen failed: {e}"));
            let present: HashSet<Uuid> = log_ids(&store).await.into_iter().collect();
            let missing = acked.difference(&present).count();
            assert_eq!(
                missing, 0,
                "round {round} (seed {seed}): {missing} acknowledged events lost"
            );
            let report = store
                .verify()
                .await
                .unwrap_or_else(|e| panic!("round {round} (seed {seed}): {e}"));
            assert_eq!(report.events, present.len() as u64);
        });
        let _ = this_round;
    }
    assert!(
        acked.len() > ROUNDS,
        "the children appended ({} acknowledged)",
        acked.len()
    );
}
