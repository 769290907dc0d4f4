//! Stable fallback of the cargo-fuzz targets (`fuzz/`): the same target functions over seed
//! inputs and bounded random mutations of them. Runs without nightly features. Bounded by
//! FUZZ_FALLBACK_SECS (default 5 s per target) and FUZZ_FALLBACK_ITERS (default 200,000).
//! Crashes found by cargo-fuzz go to `crates/bench/fuzz-regressions/<target>/` and are
//! replayed here first.

use std::path::Path;
use std::time::{Duration, Instant};

use incidentlog_bench::fuzzing::{event_decoding, record_decoder};
use incidentlog_bench::rng::Rng;
use incidentlog_bench::synth::Synth;
use incidentlog_projections::{decide, parse_events, Envelope, IncidentState, Projection};

fn budget() -> (Duration, u64) {
    let secs = std::env::var("FUZZ_FALLBACK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let iters = std::env::var("FUZZ_FALLBACK_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    (Duration::from_secs_f64(secs), iters)
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    input.clear();
    let seed: &Vec<u8> = rng.pick(seeds);
    input.extend_from_slice(seed);
    for _ in 0..=rng.below(4) {
        let len = input.len() as u64;
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] = *rng.pick(&[0u8, 0xFF, b'"', b'{', b'}', b'[', b'\\', b'9', b'-', 0x80]);
            }
            2 if len > 0 => input.truncate(rng.below(len) as usize),
            3 => {
                let i = rng.below(len + 1) as usize;
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next_u64() as u8).collect();
                input.splice(i..i, junk);
            }
            4 if len > 8 => {
                // Duplicate a chunk (repeated records / fields).
                let a = rng.below(len) as usize;
                let b = (a + 1 + rng.below(64) as usize).min(input.len());
                let chunk = input[a..b].to_vec();
                let at = rng.below(input.len() as u64 + 1) as usize;
                input.splice(at..at, chunk);
            }
            5 if len > 4 => {
                // Overwrite 4 bytes with an interesting little-endian number (lengths).
                let i = rng.below(len - 3) as usize;
                let v = *rng.pick(&[0u32, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 20, 300]);
                input[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            6 => {
                // Splice with another seed.
                let other = rng.pick(seeds);
                if !other.is_empty() {
                    let cut = rng.below(other.len() as u64) as usize;
                    input.extend_from_slice(&other[cut..]);
                }
            }
            _ => {
                let digits = *rng.pick(&[
                    &b"1e999"[..],
                    b"-0",
                    b"18446744073709551616",
                    b"0.5",
                    b"null",
                    b"true",
                ]);
                let i = rng.below(len + 1) as usize;
                input.splice(i..i, digits.iter().copied());
            }
        }
    }
}

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-regressions")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

fn run(target: &str, f: fn(&[u8]), mut seeds: Vec<Vec<u8>>) {
    let regs = regressions(target);
    for r in &regs {
        f(r);
    }
    seeds.extend(regs);
    for s in &seeds {
        f(s);
    }
    let (time, iters) = budget();
    let started = Instant::now();
    let mut rng =
        Rng::new(0xF022 ^ started.elapsed().as_nanos() as u64 ^ std::process::id() as u64);
    let mut input = Vec::new();
    let mut n = 0u64;
    while n < iters && started.elapsed() < time {
        mutate(&mut rng, &seeds, &mut input);
        f(&input);
        n += 1;
    }
    println!(
        "FUZZ {target}: {n} inputs in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A real segment file written by the file store, as the decoder's seed.
fn segment_seed() -> Vec<u8> {
    use incidentlog_store::{
        AppendRequest, Backend, Durability, EventStore, ExpectedVersion, NewEvent, OpenOptions,
        Store,
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&OpenOptions {
            data_dir: dir.path().to_path_buf(),
            backend: Backend::File,
            durability: Durability::Relaxed,
            segment_size: 1 << 20,
            read_only: false,
            log_cache: None,
            ..OpenOptions::new(dir.path())
        })
        .await
        .unwrap();
        let mut synth = Synth::new(3);
        for _ in 0..20 {
            let line = synth.next_line();
            let events = line
                .events
                .iter()
                .map(|e| NewEvent {
                    event_id: e.event_id.parse().unwrap(),
                    event_type: e.event_type.to_string(),
                    data: serde_json::value::to_raw_value(&e.data).unwrap(),
                })
                .collect();
            store
                .append(AppendRequest {
                    stream_id: line.incident_id.parse().unwrap(),
                    expected_version: ExpectedVersion::Exact(line.expected_version),
                    events,
                    recorded_by: "fuzz".into(),
                })
                .await
                .unwrap();
        }
        store.close().await.unwrap();
    });
    let mut segs: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let bytes = std::fs::read(&segs[0]).unwrap();
    assert!(
        incidentlog_store::file::fuzz_decode(&bytes) >= 20,
        "the decoder reads a real segment"
    );
    bytes
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn fuzz_record_decoder() {
    let seg = segment_seed();
    let mut seeds = vec![Vec::new(), seg.clone()];
    // The header alone, and the first records alone.
    seeds.push(seg[..seg.len().min(64)].to_vec());
    seeds.push(seg[..seg.len() / 2].to_vec());
    run("record_decoder", record_decoder, seeds);
}

#[test]
fn fuzz_event_decoding() {
    let mut synth = Synth::new(5);
    let mut seeds: Vec<Vec<u8>> = (0..200)
        .map(|_| synth.next_line().append_body().into_bytes())
        .collect();
    let seed_file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/seed-incidents.ndjson");
    if let Ok(text) = std::fs::read_to_string(seed_file) {
        seeds.extend(text.lines().map(|l| l.as_bytes().to_vec()));
    }
    run("event_decoding", event_decoding, seeds);
}

/// The benchmark's synthetic logs must be valid input: every line passes `parse_events` and
/// `decide` against the incident's folded state (as the server would check it).
#[test]
fn synthetic_lines_pass_validation() {
    use std::collections::HashMap;
    let mut synth = Synth::new(9);
    let now = chrono::Utc::now();
    let mut states: HashMap<String, IncidentState> = HashMap::new();
    let mut projection = Projection::new();
    let mut position = 0u64;
    for n in 0..20_000 {
        let line = synth.next_line();
        let body: serde_json::Value = serde_json::from_str(&line.append_body()).unwrap();
        let typed = parse_events(&body["events"], "/events")
            .unwrap_or_else(|e| panic!("line {n}: {e:?}\n{}", line.to_ndjson()));
        let state = states.entry(line.incident_id.clone()).or_default();
        assert_eq!(state.version(), line.expected_version);
        if let Err(e) = decide(state, &typed, now, "/events") {
            panic!("line {n} rejected: {e:?}\n{}", line.to_ndjson());
        }
        for e in &typed {
            position += 1;
            let data = e.canonical_data();
            let env = Envelope {
                global_position: position,
                incident_id: line.incident_id.parse().unwrap(),
                stream_version: state.version() + 1,
                event_id: e.event_id,
                event_type: e.event_type(),
                data: &data,
                recorded_at: now,
                recorded_by: "bench",
            };
            state.apply(&env).unwrap();
            projection.apply(&env).unwrap();
        }
    }
    assert!(
        projection.region_count() >= 25,
        "regions: {}",
        projection.region_count()
    );
}
