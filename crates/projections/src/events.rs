//! Typed domain events (schema version 1, SPEC section 4).
//!
//! Once a value of these types exists it is valid: [`crate::parse_events`] is the only way in
//! from the wire, and stored events (already canonical) decode straight into them with serde.
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use uuid::Uuid;

use crate::{OccurredAt, ProjectionError, Region};

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $s)] $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(&self) -> &'static str { match self { $($name::$var => $s),+ } }
            /// The accepted spellings, for error messages.
            pub fn expected() -> String {
                let v: Vec<String> = Self::ALL.iter().map(|k| format!("\"{}\"", k.as_str())).collect();
                v.join(", ")
            }
        }
        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok($name::$var),)+ _ => Err(format!("{s:?} is not one of {}", Self::expected())) }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

wire_enum!(
    /// What happened.
    Kind {
        MissileStrike = "missile_strike",
        DroneStrike = "drone_strike",
        AirStrike = "air_strike",
        Shelling = "shelling",
        ArmedClash = "armed_clash",
        Explosion = "explosion",
        AttackOnCivilians = "attack_on_civilians",
        Interception = "interception",
        Other = "other",
    }
);

impl Kind {
    /// The first four kinds are strikes; an interception is not (ACLED's "Disrupted weapons use").
    pub fn is_strike(&self) -> bool {
        (*self as u8) < 4
    }
}

wire_enum!(
    /// Who a source is.
    SourceKind {
        Official = "official",
        Media = "media",
        Ngo = "ngo",
        SocialMedia = "social_media",
        Witness = "witness",
        Other = "other",
    }
);

wire_enum!(
    /// How precise a location is.
    LocationPrecision {
        Exact = "exact",
        Near = "near",
        Admin2 = "admin2",
        Admin1 = "admin1",
    }
);

wire_enum!(
    /// How precise `occurred_at` is.
    TimePrecision {
        Exact = "exact",
        Hour = "hour",
        Day = "day",
        Week = "week",
        Month = "month",
    }
);

impl TimePrecision {
    /// `exact` for a timestamp, `day` for a date.
    pub fn default_for(t: &OccurredAt) -> TimePrecision {
        if t.is_date() {
            TimePrecision::Day
        } else {
            TimePrecision::Exact
        }
    }
    /// A date cannot be more precise than a day.
    pub fn fits(&self, t: &OccurredAt) -> bool {
        !(t.is_date() && matches!(self, TimePrecision::Exact | TimePrecision::Hour))
    }
}

wire_enum!(
    /// The verdict of a claim assessment.
    Assessment {
        Confirmed = "confirmed",
        Refuted = "refuted",
    }
);

wire_enum!(
    /// Where a claim stands (SPEC 4, "Claim status").
    ClaimStatus {
        Unverified = "unverified",
        Disputed = "disputed",
        Confirmed = "confirmed",
        Refuted = "refuted",
    }
);

wire_enum!(
    /// Whether an incident still counts.
    IncidentStatus {
        Active = "active",
        Retracted = "retracted",
    }
);

/// SHA-256 digest of captured evidence; lowercase hex on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn parse(s: &str) -> Result<Sha256, String> {
        let b = s.as_bytes();
        if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
            return Err("must be a SHA-256 digest: 64 hexadecimal characters".into());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            *o = hex(b[2 * i]) << 4 | hex(b[2 * i + 1]);
        }
        Ok(Sha256(out))
    }
}

impl std::fmt::Display for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Sha256::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `Option<Cow<str>>` that borrows from the input when it can (serde's own impl for
/// `Option<Cow<str>>` always copies).
fn opt_cow<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// Who said it (Berkeley Protocol: keep the URL, an archive copy and the evidence hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SourceKind>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub url: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub archive_url: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<OccurredAt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
}

/// A WGS84 point.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    /// Defaults to `exact`.
    #[serde(default = "exact")]
    pub precision: LocationPrecision,
}

fn exact() -> LocationPrecision {
    LocationPrecision::Exact
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentReported<'a> {
    pub kind: Kind,
    pub occurred_at: OccurredAt,
    /// Filled with the default (`exact` for a timestamp, `day` for a date) by `parse_events`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_precision: Option<TimePrecision>,
    pub region: Region,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub locality: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub perpetrator: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub target: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub summary: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub source: Source<'a>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasualtiesReported<'a> {
    #[serde(borrow)]
    pub source: Source<'a>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injured: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_low: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed_high: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub civilians_killed: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children_killed: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMade<'a> {
    pub claim_id: Uuid,
    #[serde(borrow)]
    pub claimant: Cow<'a, str>,
    #[serde(borrow)]
    pub statement: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub attributed_to: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source<'a>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimDenied<'a> {
    pub claim_id: Uuid,
    #[serde(borrow)]
    pub by: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub statement: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source<'a>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimAssessed<'a> {
    pub claim_id: Uuid,
    pub assessment: Assessment,
    #[serde(borrow)]
    pub by: Cow<'a, str>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub evidence: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAdded<'a> {
    #[serde(borrow)]
    pub source: Source<'a>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentCorrected<'a> {
    #[serde(borrow)]
    pub reason: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<OccurredAt>,
    /// Filled with the default for a corrected `occurred_at` given without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_precision: Option<TimePrecision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub locality: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub perpetrator: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub target: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        deserialize_with = "opt_cow",
        skip_serializing_if = "Option::is_none"
    )]
    pub summary: Option<Cow<'a, str>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentRetracted<'a> {
    #[serde(borrow)]
    pub reason: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<Uuid>,
}

/// One domain event.
#[derive(Clone, Debug, PartialEq)]
pub enum IncidentEvent<'a> {
    IncidentReported(IncidentReported<'a>),
    CasualtiesReported(CasualtiesReported<'a>),
    ClaimMade(ClaimMade<'a>),
    ClaimDenied(ClaimDenied<'a>),
    ClaimAssessed(ClaimAssessed<'a>),
    SourceAdded(SourceAdded<'a>),
    IncidentCorrected(IncidentCorrected<'a>),
    IncidentRetracted(IncidentRetracted<'a>),
}

/// The eight event type names, in SPEC order.
pub const EVENT_TYPES: [&str; 8] = [
    "IncidentReported",
    "CasualtiesReported",
    "ClaimMade",
    "ClaimDenied",
    "ClaimAssessed",
    "SourceAdded",
    "IncidentCorrected",
    "IncidentRetracted",
];

impl<'a> IncidentEvent<'a> {
    pub fn event_type(&self) -> &'static str {
        match self {
            IncidentEvent::IncidentReported(_) => EVENT_TYPES[0],
            IncidentEvent::CasualtiesReported(_) => EVENT_TYPES[1],
            IncidentEvent::ClaimMade(_) => EVENT_TYPES[2],
            IncidentEvent::ClaimDenied(_) => EVENT_TYPES[3],
            IncidentEvent::ClaimAssessed(_) => EVENT_TYPES[4],
            IncidentEvent::SourceAdded(_) => EVENT_TYPES[5],
            IncidentEvent::IncidentCorrected(_) => EVENT_TYPES[6],
            IncidentEvent::IncidentRetracted(_) => EVENT_TYPES[7],
        }
    }

    /// Decodes the stored data of the event at `position` (the fast path of the fold: serde
    /// straight into the typed structs; unknown fields are an error; the position is for the
    /// error to name). Strings without escapes are borrowed from `data`.
    pub fn decode(
        position: u64,
        event_type: &str,
        data: &'a str,
    ) -> Result<IncidentEvent<'a>, ProjectionError> {
        use serde_json::from_str as de;
        let r = match event_type {
            "IncidentReported" => de(data).map(IncidentEvent::IncidentReported),
            "CasualtiesReported" => de(data).map(IncidentEvent::CasualtiesReported),
            "ClaimMade" => de(data).map(IncidentEvent::ClaimMade),
            "ClaimDenied" => de(data).map(IncidentEvent::ClaimDenied),
            "ClaimAssessed" => de(data).map(IncidentEvent::ClaimAssessed),
            "SourceAdded" => de(data).map(IncidentEvent::SourceAdded),
            "IncidentCorrected" => de(data).map(IncidentEvent::IncidentCorrected),
            "IncidentRetracted" => de(data).map(IncidentEvent::IncidentRetracted),
            _ => {
                return Err(ProjectionError::UnknownType {
                    position,
                    event_type: event_type.to_owned(),
                })
            }
        };
        r.map_err(|e| ProjectionError::Decode {
            position,
            event_type: event_type.to_owned(),
            message: e.to_string(),
        })
    }

    /// The data as JSON (`to_raw_value` wraps what it wrote without parsing it again).
    fn to_json(&self) -> Result<Box<RawValue>, serde_json::Error> {
        use serde_json::value::to_raw_value;
        match self {
            IncidentEvent::IncidentReported(d) => to_raw_value(d),
            IncidentEvent::CasualtiesReported(d) => to_raw_value(d),
            IncidentEvent::ClaimMade(d) => to_raw_value(d),
            IncidentEvent::ClaimDenied(d) => to_raw_value(d),
            IncidentEvent::ClaimAssessed(d) => to_raw_value(d),
            IncidentEvent::SourceAdded(d) => to_raw_value(d),
            IncidentEvent::IncidentCorrected(d) => to_raw_value(d),
            IncidentEvent::IncidentRetracted(d) => to_raw_value(d),
        }
    }
}

fn own(c: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(c.into_owned())
}

fn own_opt(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    c.map(own)
}

fn lend(c: &str) -> Cow<'_, str> {
    Cow::Borrowed(c)
}

fn lend_opt<'b>(c: &'b Option<Cow<'_, str>>) -> Option<Cow<'b, str>> {
    c.as_deref().map(lend)
}

impl Source<'_> {
    /// See [`IncidentEvent::borrowed`].
    pub fn borrowed(&self) -> Source<'_> {
        Source {
            name: lend(&self.name),
            kind: self.kind,
            url: lend_opt(&self.url),
            archive_url: lend_opt(&self.archive_url),
            published_at: self.published_at,
            sha256: self.sha256,
        }
    }

    pub fn into_owned(self) -> Source<'static> {
        Source {
            name: own(self.name),
            kind: self.kind,
            url: own_opt(self.url),
            archive_url: own_opt(self.archive_url),
            published_at: self.published_at,
            sha256: self.sha256,
        }
    }
}

impl IncidentEvent<'_> {
    /// The same event with every borrowed string copied: it can outlive the buffer it was
    /// decoded from (a rebuild decodes on the thread that reads and folds on another).
    pub fn into_owned(self) -> IncidentEvent<'static> {
        use IncidentEvent as E;
        match self {
            E::IncidentReported(d) => E::IncidentReported(IncidentReported {
                kind: d.kind,
                occurred_at: d.occurred_at,
                time_precision: d.time_precision,
                region: d.region,
                locality: own_opt(d.locality),
                location: d.location,
                perpetrator: own_opt(d.perpetrator),
                target: own_opt(d.target),
                summary: own_opt(d.summary),
                source: d.source.into_owned(),
            }),
            E::CasualtiesReported(d) => E::CasualtiesReported(CasualtiesReported {
                source: d.source.into_owned(),
                killed: d.killed,
                injured: d.injured,
                killed_low: d.killed_low,
                killed_high: d.killed_high,
                civilians_killed: d.civilians_killed,
                children_killed: d.children_killed,
            }),
            E::ClaimMade(d) => E::ClaimMade(ClaimMade {
                claim_id: d.claim_id,
                claimant: own(d.claimant),
                statement: own(d.statement),
                attributed_to: own_opt(d.attributed_to),
                source: d.source.map(Source::into_owned),
            }),
            E::ClaimDenied(d) => E::ClaimDenied(ClaimDenied {
                claim_id: d.claim_id,
                by: own(d.by),
                statement: own_opt(d.statement),
                source: d.source.map(Source::into_owned),
            }),
            E::ClaimAssessed(d) => E::ClaimAssessed(ClaimAssessed {
                claim_id: d.claim_id,
                assessment: d.assessment,
                by: own(d.by),
                evidence: own_opt(d.evidence),
            }),
            E::SourceAdded(d) => E::SourceAdded(SourceAdded {
                source: d.source.into_owned(),
            }),
            E::IncidentCorrected(d) => E::IncidentCorrected(IncidentCorrected {
                reason: own(d.reason),
                kind: d.kind,
                occurred_at: d.occurred_at,
                time_precision: d.time_precision,
                region: d.region,
                locality: own_opt(d.locality),
                location: d.location,
                perpetrator: own_opt(d.perpetrator),
                target: own_opt(d.target),
                summary: own_opt(d.summary),
            }),
            E::IncidentRetracted(d) => E::IncidentRetracted(IncidentRetracted {
                reason: own(d.reason),
                duplicate_of: d.duplicate_of,
            }),
        }
    }

    /// The same event borrowing its strings from this one: for folding an event that is
    /// kept (a decided batch) without copying the text the state does not keep.
    pub fn borrowed(&self) -> IncidentEvent<'_> {
        use IncidentEvent as E;
        match self {
            E::IncidentReported(d) => E::IncidentReported(IncidentReported {
                kind: d.kind,
                occurred_at: d.occurred_at,
                time_precision: d.time_precision,
                region: d.region,
                locality: lend_opt(&d.locality),
                location: d.location,
                perpetrator: lend_opt(&d.perpetrator),
                target: lend_opt(&d.target),
                summary: lend_opt(&d.summary),
                source: d.source.borrowed(),
            }),
            E::CasualtiesReported(d) => E::CasualtiesReported(CasualtiesReported {
                source: d.source.borrowed(),
                killed: d.killed,
                injured: d.injured,
                killed_low: d.killed_low,
                killed_high: d.killed_high,
                civilians_killed: d.civilians_killed,
                children_killed: d.children_killed,
            }),
            E::ClaimMade(d) => E::ClaimMade(ClaimMade {
                claim_id: d.claim_id,
                claimant: lend(&d.claimant),
                statement: lend(&d.statement),
                attributed_to: lend_opt(&d.attributed_to),
                source: d.source.as_ref().map(Source::borrowed),
            }),
            E::ClaimDenied(d) => E::ClaimDenied(ClaimDenied {
                claim_id: d.claim_id,
                by: lend(&d.by),
                statement: lend_opt(&d.statement),
                source: d.source.as_ref().map(Source::borrowed),
            }),
            E::ClaimAssessed(d) => E::ClaimAssessed(ClaimAssessed {
                claim_id: d.claim_id,
                assessment: d.assessment,
                by: lend(&d.by),
                evidence: lend_opt(&d.evidence),
            }),
            E::SourceAdded(d) => E::SourceAdded(SourceAdded {
                source: d.source.borrowed(),
            }),
            E::IncidentCorrected(d) => E::IncidentCorrected(IncidentCorrected {
                reason: lend(&d.reason),
                kind: d.kind,
                occurred_at: d.occurred_at,
                time_precision: d.time_precision,
                region: d.region,
                locality: lend_opt(&d.locality),
                location: d.location,
                perpetrator: lend_opt(&d.perpetrator),
                target: lend_opt(&d.target),
                summary: lend_opt(&d.summary),
            }),
            E::IncidentRetracted(d) => E::IncidentRetracted(IncidentRetracted {
                reason: lend(&d.reason),
                duplicate_of: d.duplicate_of,
            }),
        }
    }
}

/// A validated event of an append request.
#[derive(Clone, Debug, PartialEq)]
pub struct TypedEvent {
    pub event_id: Uuid,
    pub event: IncidentEvent<'static>,
}

impl TypedEvent {
    pub fn event_type(&self) -> &'static str {
        self.event.event_type()
    }

    /// The deterministic bytes stored for this event: fields in struct (SPEC) order, no
    /// whitespace, absent optional fields left out, defaults filled in by `parse_events`,
    /// timestamps in UTC. Idempotency compares these bytes.
    pub fn canonical_data(&self) -> Box<RawValue> {
        // Serializing these plain structs cannot fail (no maps with non-string keys, no
        // non-finite floats: validation rejects them); keep a valid fallback regardless.
        self.event.to_json().unwrap_or_else(|_| empty_object())
    }
}

fn empty_object() -> Box<RawValue> {
    serde_json::from_str("{}").unwrap_or_else(|_| unreachable!("\"{{}}\" is valid JSON"))
}
