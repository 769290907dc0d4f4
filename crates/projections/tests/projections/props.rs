//! Properties: as-of == prefix fold == an independent model built from incident views;
//! interleaving independent incidents does not matter.
use crate::common::*;
use incidentlog_projections::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

const REGIONS: [&str; 3] = ["UA-63", "UA-65", "RU-MOS"];
const SOURCES: [&str; 3] = ["A", "B", "C"];

#[derive(Clone, Debug)]
enum Op {
    Cas {
        src: u8,
        killed: Option<u32>,
        low: u32,
        high: u32,
        ranged: bool,
        injured: Option<u32>,
        civ: Option<u32>,
        ch: Option<u32>,
    },
    Claim(u8),
    Deny(u8),
    Assess(u8, bool),
    Source(u8),
    Correct {
        region: Option<u8>,
        when: Option<(u8, Option<u16>)>,
        kind: Option<u8>,
    },
    Retract,
}

#[derive(Clone, Debug)]
struct Plan {
    region: u8,
    when: (u8, Option<u16>),
    kind: u8,
    ops: Vec<Op>,
}

fn when(w: (u8, Option<u16>)) -> String {
    match w.1 {
        None => format!("2026-01-0{}", w.0 + 1),
        Some(m) => format!("2026-01-0{}T{:02}:{:02}:00Z", w.0 + 1, m / 60, m % 60),
    }
}

fn claim_id(c: u8) -> String {
    format!("c1a1e000-0000-4000-8000-0000000000{c:02}")
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let when = (0u8..4, proptest::option::of(0u16..1440));
    prop_oneof![
        4 => (0u8..3, proptest::option::of(0u32..50), 0u32..5, 0u32..5, any::<bool>(), proptest::option::of(0u32..50), proptest::option::of(0u32..60), proptest::option::of(0u32..10))
            .prop_map(|(src, killed, low, high, ranged, injured, civ, ch)| Op::Cas { src, killed, low, high, ranged, injured, civ, ch }),
        2 => (0u8..3).prop_map(Op::Claim),
        2 => (0u8..3).prop_map(Op::Deny),
        2 => (0u8..3, any::<bool>()).prop_map(|(c, b)| Op::Assess(c, b)),
        1 => (0u8..4).prop_map(Op::Source),
        2 => (proptest::option::of(0u8..3), proptest::option::of(when), proptest::option::of(0u8..9))
            .prop_map(|(region, when, kind)| Op::Correct { region, when, kind }),
        1 => Just(Op::Retract),
    ]
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (
        0u8..3,
        (0u8..4, proptest::option::of(0u16..1440)),
        0u8..9,
        prop::collection::vec(op_strategy(), 0..8),
    )
        .prop_map(|(region, when, kind, ops)| Plan {
            region,
            when,
            kind,
            ops,
        })
}

fn to_event(op: &Op) -> (&'static str, Value) {
    match op {
        Op::Cas {
            src,
            killed,
            low,
            high,
            ranged,
            injured,
            civ,
            ch,
        } => {
            let mut d = json!({"source": {"name": SOURCES[*src as usize]}});
            if let Some(k) = killed {
                d["killed"] = json!(k);
                if *ranged {
                    d["killed_low"] = json!(k.saturating_sub(*low));
                    d["killed_high"] = json!(k + high);
                }
            }
            let cap = |v: u32| killed.map_or(v, |k| v.min(k));
            if let Some(i) = injured {
                d["injured"] = json!(i);
            }
            if let Some(c) = civ {
                d["civilians_killed"] = json!(cap(*c));
            }
            if let Some(c) = ch {
                d["children_killed"] = json!(cap(*c));
            }
            if killed.is_none() && injured.is_none() && civ.is_none() && ch.is_none() {
                d["injured"] = json!(1);
            }
            ("CasualtiesReported", d)
        }
        Op::Claim(c) => (
            "ClaimMade",
            json!({"claim_id": claim_id(*c), "claimant": "MoD", "statement": "s"}),
        ),
        Op::Deny(c) => ("ClaimDenied", json!({"claim_id": claim_id(*c), "by": "GS"})),
        Op::Assess(c, ok) => (
            "ClaimAssessed",
            json!({"claim_id": claim_id(*c), "assessment": if *ok { "confirmed" } else { "refuted" }, "by": "ACLED"}),
        ),
        Op::Source(s) => ("SourceAdded", json!({"source": {"name": format!("S{s}")}})),
        Op::Correct {
            region,
            when: w,
            kind,
        } => {
            let mut d = json!({"reason": "r"});
            if let Some(r) = region {
                d["region"] = json!(REGIONS[*r as usize]);
            }
            if let Some(w) = w {
                d["occurred_at"] = json!(when(*w));
            }
            if let Some(k) = kind {
                d["kind"] = json!(Kind::ALL[*k as usize].as_str());
            }
            if region.is_none() && w.is_none() && kind.is_none() {
                d["summary"] = json!("corrected");
            }
            ("IncidentCorrected", d)
        }
        Op::Retract => ("IncidentRetracted", json!({"reason": "r"})),
    }
}

/// Appends the plans' events in the order `order` picks (events the rules reject are skipped).
fn build(plans: &[Plan], order: &[u8], fixed_time: bool) -> Log {
    let mut log = Log {
        fixed_time,
        ..Log::default()
    };
    let mut next = vec![0usize; plans.len()];
    let mut pending: Vec<usize> = (0..plans.len()).collect();
    let mut choices = order.iter().cycle();
    while !pending.is_empty() {
        let k = *choices.next().unwrap_or(&0) as usize % pending.len();
        let i = pending[k];
        let plan = &plans[i];
        let incident = id(i as u128 + 1);
        let ev = if next[i] == 0 {
            (
                "IncidentReported",
                json!({"kind": Kind::ALL[plan.kind as usize].as_str(), "occurred_at": when(plan.when),
                "region": REGIONS[plan.region as usize], "source": {"name": "R"}}),
            )
        } else {
            to_event(&plan.ops[next[i] - 1])
        };
        let _ = log.try_append(incident, &[ev]);
        next[i] += 1;
        if next[i] > plan.ops.len() {
            pending.swap_remove(k);
        }
    }
    log
}

fn window_strategy() -> impl Strategy<Value = Window> {
    let bound = proptest::option::of((0u8..4, proptest::option::of(0u16..1440)));
    (bound.clone(), bound).prop_map(|(a, b)| {
        let (a, b) = match (a, b) {
            (Some(x), Some(y)) if (x.0, x.1.unwrap_or(0)) > (y.0, y.1.unwrap_or(0)) => {
                (Some(y), Some(x))
            }
            other => other,
        };
        let (fa, fb) = (a.map(when), b.map(when));
        Window::parse(fa.as_deref(), fb.as_deref()).unwrap_or_else(|_| Window::all())
    })
}

/// The summary computed the slow way: from incident views folded from each stream's prefix.
fn model(log: &Log, region: &str, w: &Window, p: u64) -> Option<RegionSummary> {
    let r = Region::parse(region).unwrap();
    let mut ids: Vec<Uuid> = log.recs.iter().map(|r| r.incident).collect();
    ids.sort();
    ids.dedup();
    let mut ever = false;
    let mut s = RegionSummary {
        region: region.into(),
        name: r.name().into(),
        country: r.country().into(),
        incidents: 0,
        strikes: StrikeCounts::default(),
        casualties: CasualtiesView::default(),
        claims: ClaimCounts::default(),
        first_occurred_at: None,
        last_occurred_at: None,
        as_of_position: p,
    };
    for i in ids {
        // every state this incident passed through, to know whether the region ever saw it
        let mut views = Vec::new();
        let evs: Vec<&Rec> = log
            .recs
            .iter()
            .filter(|x| x.incident == i && x.position <= p)
            .collect();
        for n in 1..=evs.len() {
            views.push(
                fold_incident(evs[..n].iter().map(|x| x.env()))
                    .unwrap()
                    .unwrap(),
            );
        }
        if views
            .iter()
            .any(|v| v.region == region && v.status == IncidentStatus::Active)
        {
            ever = true;
        }
        let Some(v) = views.last() else { continue };
        if v.region != region || v.status != IncidentStatus::Active || !w.contains(v.occurred_at) {
            continue;
        }
        s.incidents += 1;
        if v.kind.is_strike() {
            s.strikes.total += 1;
            s.strikes.by_kind.0[v.kind as usize] += 1;
        }
        let (c, k) = (&mut s.casualties, &v.casualties);
        c.killed.low += k.killed.low;
        c.killed.best += k.killed.best;
        c.killed.high += k.killed.high;
        c.injured.low += k.injured.low;
        c.injured.best += k.injured.best;
        c.injured.high += k.injured.high;
        c.civilians_killed += k.civilians_killed;
        c.children_killed += k.children_killed;
        for cl in &v.claims {
            s.claims.total += 1;
            match cl.status {
                ClaimStatus::Unverified => s.claims.unverified += 1,
                ClaimStatus::Disputed => s.claims.disputed += 1,
                ClaimStatus::Confirmed => s.claims.confirmed += 1,
                ClaimStatus::Refuted => s.claims.refuted += 1,
            }
        }
        s.first_occurred_at = Some(
            s.first_occurred_at
                .map_or(v.occurred_at, |f| f.min(v.occurred_at)),
        );
        s.last_occurred_at = Some(
            s.last_occurred_at
                .map_or(v.occurred_at, |f| f.max(v.occurred_at)),
        );
    }
    ever.then_some(s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn as_of_equals_prefix_fold_and_model(
        plans in prop::collection::vec(plan_strategy(), 1..5),
        order in prop::collection::vec(any::<u8>(), 1..40),
        w in window_strategy(),
    ) {
        let log = build(&plans, &order, false);
        // checkpoints every 2 changes, so that as-of goes through checkpoints + remainder
        let full = log.projection_with(Projection::with_checkpoint_every(2));
        let n = log.recs.len() as u64;
        for p in 0..=n {
            let prefix = log.projection_upto(p);
            // snapshot + remainder == fold of the prefix
            prop_assert_eq!(full.region_summaries(&w, Some(p)), prefix.region_summaries(&w, None));
            prop_assert_eq!(full.region_summaries(&Window::all(), Some(p)), prefix.region_summaries(&Window::all(), None));
            for region in REGIONS {
                let r = Region::parse(region).unwrap();
                let got = full.region_summary(&r, &w, Some(p));
                prop_assert_eq!(&got, &prefix.region_summary(&r, &w, None));
                // region totals == sum of the incident views
                let want = model(&log, region, &w, p);
                match (&got, &want) {
                    (Some(g), Some(m)) => prop_assert_eq!(g, m),
                    (None, None) => {}
                    // the region saw only entries that were later invisible to the model
                    (g, m) => prop_assert!(false, "region {} at {}: got {:?}, model {:?}", region, p, g, m),
                }
            }
        }
        // a rebuilt projection has the live one's digest; so has a clone continued
        let half = n / 2;
        let mut c = log.projection_upto(half).clone();
        for r in log.recs.iter().skip(half as usize) {
            c.apply(&r.env()).unwrap();
        }
        prop_assert_eq!(c.digest(), full.digest());
        // the digest serializes views borrowing their text: the same bytes as the owned views
        prop_assert_eq!(full.digest(), digest_by_definition(&full, &REGIONS));
        prop_assert_eq!(log.projection().digest(), full.digest());
        // Views fed the appended events themselves (the server's hand-off) fold exactly like
        // views that decode the records: event for event, and in the digest.
        let mut handed = Projection::new();
        for r in &log.recs {
            let decoded = DecodedEvent::decode(&r.env()).unwrap();
            prop_assert_eq!(&r.appended(), &decoded);
            handed.apply_decoded(r.appended()).unwrap();
            // The borrowed view a decided batch is applied through is the same event.
            prop_assert_eq!(&r.typed.event.borrowed(), &r.typed.event);
        }
        prop_assert_eq!(handed.digest(), full.digest());
    }

    #[test]
    fn interleaving_does_not_matter(
        plans in prop::collection::vec(plan_strategy(), 1..5),
        a in prop::collection::vec(any::<u8>(), 1..40),
        b in prop::collection::vec(any::<u8>(), 1..40),
        w in window_strategy(),
    ) {
        let la = build(&plans, &a, true);
        let lb = build(&plans, &b, true);
        prop_assert_eq!(la.recs.len(), lb.recs.len());
        let (pa, pb) = (la.projection(), lb.projection());
        prop_assert_eq!(pa.region_summaries(&w, None), pb.region_summaries(&w, None));
        prop_assert_eq!(pa.region_summaries(&Window::all(), None), pb.region_summaries(&Window::all(), None));
        prop_assert_eq!(pa.digest(), pb.digest());
    }
}
