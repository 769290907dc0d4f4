//! Fold throughput (JSON decoding included), as-of summary latency and memory, on a synthetic
//! log of ~1M events. `cargo bench -p incidentlog-projections --bench fold [-- --quick]`.
//! Prints one `BENCH name=value unit` line per figure.
use std::time::Instant;

/// The allocator the `incidentlog` binary ships with (crates/cli/src/main.rs), so the fold is
/// measured as it runs in `serve`, `import` and `replay`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::borrow::Cow;

use chrono::{DateTime, Duration, TimeZone, Utc};
use incidentlog_projections::*;
use serde_json::value::RawValue;
use uuid::Uuid;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const REGIONS: [&str; 30] = [
    "UA-05", "UA-07", "UA-09", "UA-12", "UA-14", "UA-18", "UA-21", "UA-23", "UA-26", "UA-30",
    "UA-32", "UA-35", "UA-43", "UA-46", "UA-48", "UA-51", "UA-53", "UA-56", "UA-59", "UA-61",
    "UA-63", "UA-65", "UA-68", "UA-71", "UA-74", "UA-77", "RU-BEL", "RU-KRS", "RU-BRY", "RU-MOS",
];
const SOURCES: [&str; 12] = [
    "Regional military administration",
    "Ministry of Defence",
    "Reuters",
    "Associated Press",
    "Ukrainska Pravda",
    "Meduza",
    "OHCHR monitoring mission",
    "ACLED",
    "Local Telegram channel",
    "Eyewitness",
    "BBC News",
    "Kyiv Independent",
];
const WORDS: [&str; 16] = [
    "missile",
    "struck",
    "residential",
    "building",
    "overnight",
    "regional",
    "centre",
    "several",
    "people",
    "were",
    "killed",
    "injured",
    "damaged",
    "infrastructure",
    "officials",
    "said",
];

struct Rec {
    incident: Uuid,
    version: u64,
    event_type: &'static str,
    data: Box<RawValue>,
    recorded_at: DateTime<Utc>,
}

fn text(rng: &mut Rng, words: usize) -> Cow<'static, str> {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(rng.pick(&WORDS));
    }
    s.into()
}

fn source(rng: &mut Rng) -> Source<'static> {
    let i = rng.below(SOURCES.len() as u64) as usize;
    let with_url = rng.chance(30);
    Source {
        name: SOURCES[i].into(),
        // each source has its own kind
        kind: Some(SourceKind::ALL[i % SourceKind::ALL.len()]),
        url: with_url.then(|| format!("https://news.example.org/{}", rng.below(1_000_000)).into()),
        archive_url: None,
        published_at: None,
        sha256: None,
    }
}

fn day(rng: &mut Rng) -> OccurredAt {
    let base = Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap();
    let t = base + Duration::seconds(rng.below(3 * 365 * 86_400) as i64);
    if rng.chance(60) {
        OccurredAt::from_datetime(t).unwrap()
    } else {
        OccurredAt::from_date(t.date_naive()).unwrap()
    }
}

/// The plan of one incident: its events in stream order.
fn plan(rng: &mut Rng) -> Vec<IncidentEvent<'static>> {
    let mut ev = Vec::new();
    let occurred_at = day(rng);
    ev.push(IncidentEvent::IncidentReported(IncidentReported {
        kind: rng.pick(Kind::ALL),
        occurred_at,
        time_precision: Some(TimePrecision::default_for(&occurred_at)),
        region: Region::parse(rng.pick(&REGIONS)).unwrap(),
        locality: Some(format!("Settlement {}", rng.below(5000)).into()),
        location: Some(Location {
            lat: 44.0 + rng.below(8_000_000) as f64 / 1e6,
            lon: 22.0 + rng.below(18_000_000) as f64 / 1e6,
            precision: LocationPrecision::Near,
        }),
        perpetrator: Some("Russian armed forces".into()),
        target: Some("residential".into()),
        summary: Some(text(rng, 12)),
        source: source(rng),
    }));
    let mut claims = Vec::new();
    let n = 3 + rng.below(11);
    for _ in 0..n {
        let r = rng.below(100);
        let e = if r < 45 {
            let killed = rng.below(40) as u32;
            let ranged = rng.chance(30);
            IncidentEvent::CasualtiesReported(CasualtiesReported {
                source: source(rng),
                killed: Some(killed),
                injured: rng.chance(70).then(|| rng.below(80) as u32),
                killed_low: ranged.then(|| killed.saturating_sub(2)),
                killed_high: ranged.then_some(killed + 3),
                civilians_killed: rng.chance(50).then_some(killed / 2),
                children_killed: rng.chance(20).then_some(killed / 8),
            })
        } else if r < 60 {
            IncidentEvent::SourceAdded(SourceAdded {
                source: source(rng),
            })
        } else if r < 72 {
            let claim_id = Uuid::from_u64_pair(rng.next(), rng.next());
            claims.push(claim_id);
            IncidentEvent::ClaimMade(ClaimMade {
                claim_id,
                claimant: "Ministry of Defence".into(),
                statement: text(rng, 10),
                attributed_to: Some("Ukrainian armed forces".into()),
                source: rng.chance(50).then(|| source(rng)),
            })
        } else if r < 84 && !claims.is_empty() {
            IncidentEvent::ClaimDenied(ClaimDenied {
                claim_id: rng.pick(&claims),
                by: "General Staff".into(),
                statement: Some(text(rng, 8)),
                source: None,
            })
        } else if r < 92 && !claims.is_empty() {
            IncidentEvent::ClaimAssessed(ClaimAssessed {
                claim_id: rng.pick(&claims),
                assessment: rng.pick(Assessment::ALL),
                by: "ACLED".into(),
                evidence: Some(text(rng, 6)),
            })
        } else if r < 98 {
            let t = day(rng);
            IncidentEvent::IncidentCorrected(IncidentCorrected {
                reason: "Location and date confirmed by a second source".into(),
                kind: None,
                occurred_at: Some(t),
                time_precision: Some(TimePrecision::default_for(&t)),
                region: rng
                    .chance(50)
                    .then(|| Region::parse(rng.pick(&REGIONS)).unwrap()),
                locality: None,
                location: None,
                perpetrator: None,
                target: None,
                summary: None,
            })
        } else {
            continue;
        };
        ev.push(e);
    }
    if rng.chance(3) {
        ev.push(IncidentEvent::IncidentRetracted(IncidentRetracted {
            reason: "Duplicate report".into(),
            duplicate_of: None,
        }));
    }
    ev
}

/// A log of about `target` events: ~1000 incidents open at a time, interleaved.
fn generate(target: usize) -> Vec<Rec> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(target + 64);
    let mut open: Vec<(Uuid, u64, std::vec::IntoIter<IncidentEvent<'static>>)> = Vec::new();
    let t0 = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    while out.len() < target {
        while open.len() < 1000 {
            let id = Uuid::from_u64_pair(rng.next(), rng.next());
            open.push((id, 0, plan(&mut rng).into_iter()));
        }
        let i = rng.below(open.len() as u64) as usize;
        let (id, version, it) = &mut open[i];
        match it.next() {
            Some(ev) => {
                *version += 1;
                let te = TypedEvent {
                    event_id: Uuid::nil(),
                    event: ev,
                };
                out.push(Rec {
                    incident: *id,
                    version: *version,
                    event_type: te.event_type(),
                    data: te.canonical_data(),
                    recorded_at: t0 + Duration::milliseconds(out.len() as i64 * 50),
                });
            }
            None => {
                open.swap_remove(i);
            }
        }
    }
    out
}

fn env(r: &Rec, position: u64) -> Envelope<'_> {
    Envelope {
        global_position: position,
        incident_id: r.incident,
        stream_version: r.version,
        event_id: Uuid::nil(),
        event_type: r.event_type,
        data: &r.data,
        recorded_at: r.recorded_at,
        recorded_by: "bench",
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 100_000 } else { 1_000_000 };
    let t = Instant::now();
    let log = generate(n);
    let bytes: usize = log.iter().map(|r| r.data.get().len()).sum();
    eprintln!(
        "generated {} events ({} bytes of data on average) in {:.1?}",
        log.len(),
        bytes / log.len().max(1),
        t.elapsed()
    );

    let t = Instant::now();
    for r in &log {
        std::hint::black_box(
            IncidentEvent::decode(0, r.event_type, r.data.get()).expect("decodes"),
        );
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "BENCH decode_ns_per_event={:.0} ns",
        dt * 1e9 / log.len() as f64
    );

    // Fold, JSON decoding included; best of a few runs (one core).
    let profile = std::env::args().any(|a| a == "--profile-fold");
    let runs = if profile {
        10
    } else if quick {
        1
    } else {
        3
    };
    let mut best = f64::MAX;
    let mut proj = Projection::new();
    for _ in 0..runs {
        let mut p = Projection::new();
        let t = Instant::now();
        // As every rebuild does (`rebuild_views`: start-up, replay, export): the log's length
        // is known before the fold.
        p.reserve(log.len());
        for (i, r) in log.iter().enumerate() {
            p.apply(&env(r, i as u64 + 1)).expect("synthetic log folds");
        }
        best = best.min(t.elapsed().as_secs_f64());
        proj = p;
    }
    let n = log.len() as f64;
    if profile {
        println!("fold {:.0} ns/event", best * 1e9 / n);
        return;
    }
    println!("BENCH fold_events_per_sec={:.0} events/s", n / best);
    println!("BENCH fold_ns_per_event={:.0} ns", best * 1e9 / n);

    let mem = proj.memory();
    // Memory estimates include a glibc-style allocator's per-allocation overhead.
    println!("BENCH incidents={} count", mem.incidents);
    println!(
        "BENCH live_bytes_per_incident={:.0} bytes",
        mem.live_bytes as f64 / mem.incidents as f64
    );
    println!(
        "BENCH history_bytes_per_event={:.1} bytes",
        mem.history_bytes as f64 / mem.events as f64
    );

    // As-of regional summaries at random positions, random regions, half with a window.
    let mut rng = Rng(42);
    let samples = if quick { 200 } else { 2000 };
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let region = Region::parse(rng.pick(&REGIONS)).unwrap();
        let p = 1 + rng.below(log.len() as u64);
        let w = if i % 2 == 0 {
            Window::all()
        } else {
            Window::parse(Some("2023-06-01T12:00:00Z"), Some("2024-12-31")).unwrap()
        };
        let t = Instant::now();
        let s = proj.region_summary(&region, &w, Some(p));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(s);
    }
    lat.sort_by(f64::total_cmp);
    println!("BENCH asof_region_p50_ms={:.3} ms", percentile(&lat, 0.5));
    println!("BENCH asof_region_p99_ms={:.3} ms", percentile(&lat, 0.99));

    let mut lat = Vec::new();
    for _ in 0..(samples / 20).max(10) {
        let p = 1 + rng.below(log.len() as u64);
        let t = Instant::now();
        std::hint::black_box(proj.region_summaries(&Window::all(), Some(p)));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "BENCH asof_all_regions_p50_ms={:.3} ms",
        percentile(&lat, 0.5)
    );
    println!(
        "BENCH asof_all_regions_p99_ms={:.3} ms",
        percentile(&lat, 0.99)
    );

    let t = Instant::now();
    let d = proj.digest_on(2); // as the server and `replay` do on two cores
    println!("BENCH digest_ms={:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    eprintln!("digest {d}");
}
