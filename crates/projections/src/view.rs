//! The JSON shapes users read (SPEC section 5).
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::events::*;
use crate::state::{IncidentState, CORRECTABLE};
use crate::{OccurredAt, Region};

/// Recorded times as the log writes them: RFC 3339 UTC with exactly six fraction digits and
/// `Z` (chrono's own form drops trailing zeros, so `.439000Z` in the log was `.439Z` here).
fn micros<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::time::fmt_micros(t))
}

/// A source as views show it (the event's shape: absent fields left out).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct SourceView<S = String> {
    pub name: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SourceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_url: Option<S>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<OccurredAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
}

/// low / best / high of one count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figure {
    pub low: u64,
    pub best: u64,
    pub high: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasualtiesView {
    pub killed: Figure,
    pub injured: Figure,
    pub civilians_killed: u64,
    pub children_killed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenialView<S = String> {
    pub by: S,
    pub statement: Option<S>,
    pub source: Option<SourceView<S>>,
    #[serde(serialize_with = "micros")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssessmentView<S = String> {
    pub assessment: Assessment,
    pub by: S,
    pub evidence: Option<S>,
    #[serde(serialize_with = "micros")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimView<S = String> {
    pub claim_id: Uuid,
    pub claimant: S,
    pub statement: S,
    pub attributed_to: Option<S>,
    pub source: Option<SourceView<S>>,
    pub status: ClaimStatus,
    pub denials: Vec<DenialView<S>>,
    pub assessments: Vec<AssessmentView<S>>,
    #[serde(serialize_with = "micros")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrectionView<S = String> {
    pub reason: S,
    /// The fields this correction changed.
    pub fields: Vec<S>,
    #[serde(serialize_with = "micros")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetractionView<S = String> {
    pub reason: S,
    pub duplicate_of: Option<Uuid>,
    #[serde(serialize_with = "micros")]
    pub recorded_at: DateTime<Utc>,
}

/// `GET /v1/incidents/{id}`: the current state of one incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IncidentView<S = String> {
    pub incident_id: Uuid,
    pub kind: Kind,
    pub occurred_at: OccurredAt,
    pub time_precision: TimePrecision,
    /// ISO 3166-2 code.
    pub region: S,
    pub region_name: S,
    /// ISO 3166-1 alpha-2.
    pub country: S,
    pub locality: Option<S>,
    pub location: Option<Location>,
    pub perpetrator: Option<S>,
    pub target: Option<S>,
    pub summary: Option<S>,
    pub status: IncidentStatus,
    pub retraction: Option<RetractionView<S>>,
    pub casualties: CasualtiesView,
    pub claims: Vec<ClaimView<S>>,
    /// Every distinct source cited by any event, in order of first appearance.
    pub sources: Vec<SourceView<S>>,
    pub corrections: Vec<CorrectionView<S>>,
    pub version: u64,
    #[serde(serialize_with = "micros")]
    pub first_recorded_at: DateTime<Utc>,
    #[serde(serialize_with = "micros")]
    pub last_recorded_at: DateTime<Utc>,
}

fn s<'a, T: std::ops::Deref<Target = str>, S: From<&'a str>>(b: &'a Option<T>) -> Option<S> {
    b.as_deref().map(S::from)
}

impl IncidentView {
    /// None for a state without IncidentReported (version 0).
    pub(crate) fn from_state(st: &IncidentState) -> Option<IncidentView> {
        IncidentView::build(st)
    }
}

impl<'a, S: From<&'a str>> IncidentView<S> {
    /// The view with its text owned (`S = String`) or borrowed from the state (`S = &str`,
    /// for serializing many views without copying their text): the same JSON either way.
    pub(crate) fn build(st: &'a IncidentState) -> Option<IncidentView<S>> {
        // A decision-only state lacks sources and figures: no view comes from one.
        if st.decision_only {
            return None;
        }
        let core = st.core.as_deref()?;
        let src = |i: Option<u32>| {
            i.and_then(|i| st.sources.get(i as usize))
                .map(|r| r.to_view())
        };
        let (killed, injured) = st.figures();
        let fig = |f: [u32; 3]| Figure {
            low: f[0].into(),
            best: f[1].into(),
            high: f[2].into(),
        };
        Some(IncidentView {
            incident_id: st.id.unwrap_or_default(),
            kind: core.kind,
            occurred_at: core.occurred_at,
            time_precision: core.time_precision,
            region: S::from(core.region.code()),
            region_name: S::from(core.region.name()),
            country: S::from(core.region.country()),
            locality: s(&core.locality),
            location: core.location,
            perpetrator: s(&core.perpetrator),
            target: s(&core.target),
            summary: s(&core.summary),
            status: if st.retraction.is_some() {
                IncidentStatus::Retracted
            } else {
                IncidentStatus::Active
            },
            retraction: st.retraction.as_deref().map(|r| RetractionView {
                reason: S::from(&r.reason),
                duplicate_of: r.duplicate_of,
                recorded_at: r.recorded_at,
            }),
            casualties: CasualtiesView {
                killed: fig(killed),
                injured: fig(injured),
                civilians_killed: st.casualties.civilians.unwrap_or(0).into(),
                children_killed: st.casualties.children.unwrap_or(0).into(),
            },
            claims: st
                .claims
                .iter()
                .map(|c| ClaimView {
                    claim_id: c.id,
                    claimant: S::from(&c.claimant),
                    statement: S::from(&c.statement),
                    attributed_to: s(&c.attributed_to),
                    source: src(c.source),
                    status: c.status(),
                    denials: c
                        .denials
                        .iter()
                        .map(|d| DenialView {
                            by: S::from(&d.by),
                            statement: s(&d.statement),
                            source: src(d.source),
                            recorded_at: d.recorded_at,
                        })
                        .collect(),
                    assessments: c
                        .assessments
                        .iter()
                        .map(|a| AssessmentView {
                            assessment: a.assessment,
                            by: S::from(&a.by),
                            evidence: s(&a.evidence),
                            recorded_at: a.recorded_at,
                        })
                        .collect(),
                    recorded_at: c.recorded_at,
                })
                .collect(),
            sources: st.sources.iter().map(|r| r.to_view()).collect(),
            corrections: st
                .corrections
                .iter()
                .map(|c| CorrectionView {
                    reason: S::from(&c.reason),
                    fields: CORRECTABLE
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| c.fields & (1 << i) != 0)
                        .map(|(_, f)| S::from(f))
                        .collect(),
                    recorded_at: c.recorded_at,
                })
                .collect(),
            version: st.version,
            first_recorded_at: st.first_recorded_at,
            last_recorded_at: st.last_recorded_at,
        })
    }
}

/// Strike counts by kind: only the four strike kinds, in SPEC order, zeros left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByKind(pub [u64; 4]);

impl ByKind {
    pub fn get(&self, k: Kind) -> u64 {
        if k.is_strike() {
            self.0[k as usize]
        } else {
            0
        }
    }
}

impl Serialize for ByKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let n = self.0.iter().filter(|v| **v > 0).count();
        let mut m = s.serialize_map(Some(n))?;
        for (i, v) in self.0.iter().enumerate() {
            if *v > 0 {
                m.serialize_entry(Kind::ALL[i].as_str(), v)?;
            }
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ByKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = std::collections::BTreeMap::<Kind, u64>::deserialize(d)?;
        let mut out = [0u64; 4];
        for (k, v) in m {
            if !k.is_strike() {
                return Err(serde::de::Error::custom(format!(
                    "{k} is not a strike kind"
                )));
            }
            out[k as usize] = v;
        }
        Ok(ByKind(out))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrikeCounts {
    pub total: u64,
    pub by_kind: ByKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimCounts {
    pub total: u64,
    pub unverified: u64,
    pub disputed: u64,
    pub confirmed: u64,
    pub refuted: u64,
}

/// `GET /v1/regions/{code}`: totals over the region's non-retracted incidents in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub region: String,
    pub name: String,
    pub country: String,
    pub incidents: u64,
    pub strikes: StrikeCounts,
    pub casualties: CasualtiesView,
    pub claims: ClaimCounts,
    pub first_occurred_at: Option<OccurredAt>,
    pub last_occurred_at: Option<OccurredAt>,
    pub as_of_position: u64,
}

impl RegionSummary {
    pub(crate) fn empty(region: &Region, as_of_position: u64) -> RegionSummary {
        RegionSummary {
            region: region.code().to_owned(),
            name: region.name().to_owned(),
            country: region.country().to_owned(),
            incidents: 0,
            strikes: StrikeCounts::default(),
            casualties: CasualtiesView::default(),
            claims: ClaimCounts::default(),
            first_occurred_at: None,
            last_occurred_at: None,
            as_of_position,
        }
    }
}
