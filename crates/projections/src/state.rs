//! The fold of one incident's stream: decision state and the data of its view.
use chrono::{DateTime, Utc};
use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

use crate::events::*;
use crate::view::SourceView;
use crate::{Envelope, OccurredAt, ProjectionError, Region};

/// A name-like text (source, actor, place): these repeat across incidents, so a projection
/// keeps one copy of each.
pub(crate) type Name = Arc<str>;

/// Shares equal names between incidents. `off()` makes fresh copies (folds of one stream).
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    on: bool,
    set: HashSet<Name, foldhash::fast::RandomState>,
}

impl Interner {
    pub(crate) fn on() -> Self {
        Interner {
            on: true,
            set: HashSet::default(),
        }
    }

    pub(crate) fn off() -> Self {
        Interner::default()
    }

    pub(crate) fn name(&mut self, s: Cow<'_, str>) -> Name {
        if !self.on {
            return Name::from(&*s);
        }
        if let Some(n) = self.set.get(&*s) {
            return n.clone();
        }
        let n = Name::from(&*s);
        self.set.insert(n.clone());
        n
    }

    fn opt(&mut self, s: Option<Cow<'_, str>>) -> Option<Name> {
        s.map(|s| self.name(s))
    }

    /// The set itself (the names are counted by the incidents that share them).
    pub(crate) fn heap_bytes(&self) -> usize {
        chunk(self.set.capacity() * (std::mem::size_of::<Name>() + 1))
    }
}

/// An owned copy of decoded text (no copy when serde already had to allocate it).
fn boxed(c: Cow<'_, str>) -> Box<str> {
    match c {
        Cow::Borrowed(s) => s.into(),
        Cow::Owned(s) => s.into_boxed_str(),
    }
}

/// Pushes growing 1, 2, 4, 8, ... slots: most incidents have one or two claims and
/// corrections and a handful of sources, and the default first allocation (4 slots) would
/// triple their size.
pub(crate) fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().max(1));
    }
    v.push(item);
}

/// A source as kept in memory: the URL inline (most sources give one), the rarely given parts
/// boxed to keep incidents small.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceRec {
    pub(crate) name: Name,
    pub(crate) url: Option<Box<str>>,
    pub(crate) extra: Option<Box<SourceExtra>>,
    pub(crate) kind: Option<SourceKind>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceExtra {
    pub(crate) archive_url: Option<Box<str>>,
    pub(crate) published_at: Option<OccurredAt>,
    pub(crate) sha256: Option<Sha256>,
}

impl SourceRec {
    fn from_source(s: Source<'_>, names: &mut Interner) -> SourceRec {
        let extra = if s.archive_url.is_some() || s.published_at.is_some() || s.sha256.is_some() {
            Some(Box::new(SourceExtra {
                archive_url: s.archive_url.map(boxed),
                published_at: s.published_at,
                sha256: s.sha256,
            }))
        } else {
            None
        };
        SourceRec {
            name: names.name(s.name),
            url: s.url.map(boxed),
            extra,
            kind: s.kind,
        }
    }

    fn same_as(&self, s: &Source<'_>) -> bool {
        if *self.name != *s.name || self.kind != s.kind || self.url.as_deref() != s.url.as_deref() {
            return false;
        }
        match &self.extra {
            None => s.archive_url.is_none() && s.published_at.is_none() && s.sha256.is_none(),
            Some(x) => {
                x.archive_url.as_deref() == s.archive_url.as_deref()
                    && x.published_at == s.published_at
                    && x.sha256 == s.sha256
            }
        }
    }

    pub(crate) fn to_view<'a, S: From<&'a str>>(&'a self) -> SourceView<S> {
        let x = self.extra.as_deref();
        SourceView {
            name: S::from(&self.name),
            kind: self.kind,
            url: self.url.as_deref().map(S::from),
            archive_url: x.and_then(|x| x.archive_url.as_deref().map(S::from)),
            published_at: x.and_then(|x| x.published_at),
            sha256: x.and_then(|x| x.sha256),
        }
    }
}

/// The incident's own fields (as reported, then corrected).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Core {
    pub(crate) kind: Kind,
    pub(crate) time_precision: TimePrecision,
    pub(crate) occurred_at: OccurredAt,
    pub(crate) region: Region,
    pub(crate) location: Option<Location>,
    pub(crate) locality: Option<Name>,
    pub(crate) perpetrator: Option<Name>,
    pub(crate) target: Option<Name>,
    pub(crate) summary: Option<Box<str>>,
}

/// The latest figures one source (by name) gave.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SourceFigures {
    /// Index into `sources` of a source with this name.
    pub(crate) source: u32,
    /// (low, high) of its latest report that gave `killed`.
    pub(crate) killed: Option<(u32, u32)>,
    /// Its latest `injured`.
    pub(crate) injured: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Casualties {
    pub(crate) killed_best: Option<u32>,
    pub(crate) injured_best: Option<u32>,
    pub(crate) civilians: Option<u32>,
    pub(crate) children: Option<u32>,
    pub(crate) by_source: Vec<SourceFigures>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Denial {
    pub(crate) by: Name,
    pub(crate) statement: Option<Box<str>>,
    pub(crate) source: Option<u32>,
    pub(crate) recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct AssessmentRec {
    pub(crate) assessment: Assessment,
    pub(crate) by: Name,
    pub(crate) evidence: Option<Box<str>>,
    pub(crate) recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Claim {
    pub(crate) id: Uuid,
    pub(crate) claimant: Name,
    pub(crate) statement: Box<str>,
    pub(crate) attributed_to: Option<Name>,
    pub(crate) source: Option<u32>,
    pub(crate) recorded_at: DateTime<Utc>,
    pub(crate) denials: Vec<Denial>,
    pub(crate) assessments: Vec<AssessmentRec>,
}

impl Claim {
    pub(crate) fn status(&self) -> ClaimStatus {
        match self.assessments.last() {
            Some(a) => match a.assessment {
                Assessment::Confirmed => ClaimStatus::Confirmed,
                Assessment::Refuted => ClaimStatus::Refuted,
            },
            None if !self.denials.is_empty() => ClaimStatus::Disputed,
            None => ClaimStatus::Unverified,
        }
    }
}

/// Field names a correction can change, in bit order of `Correction::fields`.
pub(crate) const CORRECTABLE: [&str; 9] = [
    "kind",
    "occurred_at",
    "time_precision",
    "region",
    "locality",
    "location",
    "perpetrator",
    "target",
    "summary",
];

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Correction {
    pub(crate) reason: Box<str>,
    /// Bit i set: `CORRECTABLE[i]` changed.
    pub(crate) fields: u16,
    pub(crate) recorded_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Retraction {
    pub(crate) reason: Box<str>,
    pub(crate) duplicate_of: Option<Uuid>,
    pub(crate) recorded_at: DateTime<Utc>,
}

/// What an incident adds to its region's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Contrib {
    pub(crate) killed: [u32; 3],
    pub(crate) injured: [u32; 3],
    pub(crate) civilians: u32,
    pub(crate) children: u32,
    /// unverified, disputed, confirmed, refuted
    pub(crate) claims: [u32; 4],
}

/// Decision state of one incident (a fold of its stream); also the data of its view.
#[derive(Clone, Debug, PartialEq)]
pub struct IncidentState {
    pub(crate) id: Option<Uuid>,
    pub(crate) version: u64,
    pub(crate) first_position: u64,
    pub(crate) last_position: u64,
    pub(crate) first_recorded_at: DateTime<Utc>,
    pub(crate) last_recorded_at: DateTime<Utc>,
    pub(crate) core: Option<Box<Core>>,
    pub(crate) retraction: Option<Box<Retraction>>,
    pub(crate) casualties: Casualties,
    pub(crate) claims: Vec<Claim>,
    pub(crate) sources: Vec<SourceRec>,
    pub(crate) corrections: Vec<Correction>,
    /// Keeps only what decisions read (see [`IncidentState::into_decision_only`]).
    pub(crate) decision_only: bool,
}

impl Default for IncidentState {
    fn default() -> Self {
        Self::new()
    }
}

/// Where an event sits in the log: what folding needs of its envelope besides the data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stamp {
    pub(crate) position: u64,
    pub(crate) incident_id: Uuid,
    pub(crate) stream_version: u64,
    pub(crate) recorded_at: DateTime<Utc>,
}

impl Stamp {
    pub(crate) fn of(e: &Envelope) -> Stamp {
        Stamp {
            position: e.global_position,
            incident_id: e.incident_id,
            stream_version: e.stream_version,
            recorded_at: e.recorded_at,
        }
    }
}

/// Where and when an event was recorded (from the envelope, or a stand-in in `decide`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub(crate) position: u64,
    pub(crate) recorded_at: DateTime<Utc>,
}

/// A broken state rule: message and the data field it is about (None: the event as a whole).
pub(crate) type RuleError = (Option<&'static str>, String);

/// Whether applying `ev` leaves everything a decision reads as it was: whether the incident
/// exists (`core`, `version` above 0), its core fields, its retraction, which claim ids it
/// has, its id. Casualty figures, sources and a claim's denials and assessments are never read
/// by a check (`IncidentState::check`, `decide::check_event`), so `decide` checks a batch of
/// these on the state before it, and a decision-only state does not keep them. A new check
/// that reads more must revisit this list (the tests in `decide.rs` compare every short batch
/// and history with the copying path and the full state).
pub(crate) fn leaves_decisions_alone(ev: &IncidentEvent<'_>) -> bool {
    match ev {
        IncidentEvent::CasualtiesReported(_)
        | IncidentEvent::SourceAdded(_)
        | IncidentEvent::ClaimDenied(_)
        | IncidentEvent::ClaimAssessed(_) => true,
        IncidentEvent::IncidentReported(_)
        | IncidentEvent::ClaimMade(_)
        | IncidentEvent::IncidentCorrected(_)
        | IncidentEvent::IncidentRetracted(_) => false,
    }
}

impl IncidentState {
    /// Version 0: the incident does not exist.
    pub fn new() -> Self {
        IncidentState {
            id: None,
            version: 0,
            first_position: 0,
            last_position: 0,
            first_recorded_at: DateTime::<Utc>::UNIX_EPOCH,
            last_recorded_at: DateTime::<Utc>::UNIX_EPOCH,
            core: None,
            retraction: None,
            casualties: Casualties::default(),
            claims: Vec::new(),
            sources: Vec::new(),
            corrections: Vec::new(),
            decision_only: false,
        }
    }

    /// This state reduced to what a decision reads: whether the incident exists, its core, its
    /// retraction, its claims (without their denials and assessments), its id and version.
    /// Sources, casualty figures and the list of corrections are dropped, and the events
    /// applied to it from now on keep none of them: it decides every batch exactly like the
    /// full state (a test compares them on every short history and batch), for a fraction of
    /// the memory and work. A bulk import keeps one per incident it touches. It makes no view.
    pub fn into_decision_only(mut self) -> IncidentState {
        self.decision_only = true;
        self.casualties = Casualties::default();
        self.sources = Vec::new();
        self.corrections = Vec::new();
        for c in &mut self.claims {
            // Indexes into the dropped sources.
            c.source = None;
            c.denials = Vec::new();
            c.assessments = Vec::new();
        }
        self
    }

    /// [`IncidentState::into_decision_only`] of a copy, without copying what it drops: what a
    /// live service hands a decision (an append, an import's first line on an incident) from
    /// the views it keeps full.
    pub fn decision_only_copy(&self) -> IncidentState {
        IncidentState {
            id: self.id,
            version: self.version,
            first_position: self.first_position,
            last_position: self.last_position,
            first_recorded_at: self.first_recorded_at,
            last_recorded_at: self.last_recorded_at,
            core: self.core.clone(),
            retraction: self.retraction.clone(),
            casualties: Casualties::default(),
            claims: self
                .claims
                .iter()
                .map(|c| Claim {
                    id: c.id,
                    claimant: c.claimant.clone(),
                    statement: c.statement.clone(),
                    attributed_to: c.attributed_to.clone(),
                    source: None,
                    recorded_at: c.recorded_at,
                    denials: Vec::new(),
                    assessments: Vec::new(),
                })
                .collect(),
            sources: Vec::new(),
            corrections: Vec::new(),
            decision_only: true,
        }
    }

    /// Version 0 of a known incident id (lets `decide` reject `duplicate_of` = itself even in
    /// the batch that creates the incident).
    pub fn with_id(id: Uuid) -> Self {
        let mut s = Self::new();
        s.id = Some(id);
        s
    }

    /// Number of events folded.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The incident id, once known.
    pub fn incident_id(&self) -> Option<Uuid> {
        self.id
    }

    /// Has `IncidentRetracted` been applied?
    pub fn is_retracted(&self) -> bool {
        self.retraction.is_some()
    }

    /// Folds one recorded event of this incident's stream.
    pub fn apply(&mut self, e: &Envelope) -> Result<(), ProjectionError> {
        let ev = decode_envelope(e)?;
        self.apply_decoded(&Stamp::of(e), ev, &mut Interner::off())
    }

    pub(crate) fn apply_decoded(
        &mut self,
        e: &Stamp,
        ev: IncidentEvent<'_>,
        names: &mut Interner,
    ) -> Result<(), ProjectionError> {
        if let Some(id) = self.id {
            if id != e.incident_id {
                return Err(ProjectionError::Rule {
                    position: e.position,
                    incident: e.incident_id,
                    message: format!(
                        "event of incident {} folded into incident {id}",
                        e.incident_id
                    ),
                });
            }
        }
        if e.stream_version != self.version + 1 {
            return Err(ProjectionError::StreamVersion {
                position: e.position,
                incident: e.incident_id,
                current: self.version,
                got: e.stream_version,
            });
        }
        if let Err((_, message)) = self.check(&ev) {
            return Err(ProjectionError::Rule {
                position: e.position,
                incident: e.incident_id,
                message,
            });
        }
        self.id = Some(e.incident_id);
        self.apply_event(
            ev,
            Meta {
                position: e.position,
                recorded_at: e.recorded_at,
            },
            names,
        );
        Ok(())
    }

    /// The rules every stored event obeys (also checked by `decide`).
    pub(crate) fn check(&self, ev: &IncidentEvent<'_>) -> Result<(), RuleError> {
        let reported = matches!(ev, IncidentEvent::IncidentReported(_));
        if reported && (self.version > 0 || self.core.is_some()) {
            return Err((
                None,
                "IncidentReported must be the first event of an incident and occurs only once; \
                 this incident already exists (use IncidentCorrected to change it)"
                    .into(),
            ));
        }
        if !reported && self.core.is_none() {
            return Err((
                None,
                format!(
                    "the first event of an incident must be IncidentReported, not {}",
                    ev.event_type()
                ),
            ));
        }
        let (claim_id, must_exist) = match ev {
            IncidentEvent::ClaimMade(c) => (c.claim_id, false),
            IncidentEvent::ClaimDenied(ClaimDenied { claim_id, .. })
            | IncidentEvent::ClaimAssessed(ClaimAssessed { claim_id, .. }) => (*claim_id, true),
            _ => return Ok(()),
        };
        match (self.claim(claim_id).is_some(), must_exist) {
            (true, false) => Err((
                Some("claim_id"),
                format!("claim {claim_id} already exists in this incident; claim ids must be new"),
            )),
            (false, true) => Err((
                Some("claim_id"),
                format!(
                    "claim {claim_id} does not exist in this incident (record it with ClaimMade first)"
                ),
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn claim(&self, id: Uuid) -> Option<usize> {
        self.claims.iter().position(|c| c.id == id)
    }

    fn add_source(&mut self, s: Source<'_>, names: &mut Interner) -> u32 {
        if let Some(i) = self.sources.iter().position(|r| r.same_as(&s)) {
            return i as u32;
        }
        // Incidents collect several sources (report, casualty updates, corroboration): start
        // at 4 to save the first reallocations.
        if self.sources.capacity() == 0 {
            self.sources.reserve_exact(4);
        }
        push_small(&mut self.sources, SourceRec::from_source(s, names));
        (self.sources.len() - 1) as u32
    }

    /// Applies an event that passed `check`.
    pub(crate) fn apply_event(&mut self, ev: IncidentEvent<'_>, m: Meta, names: &mut Interner) {
        if self.version == 0 {
            self.first_position = m.position;
            self.first_recorded_at = m.recorded_at;
        }
        self.version += 1;
        self.last_position = m.position;
        self.last_recorded_at = m.recorded_at;
        match ev {
            IncidentEvent::IncidentReported(r) => {
                let time_precision = r
                    .time_precision
                    .unwrap_or_else(|| TimePrecision::default_for(&r.occurred_at));
                self.core = Some(Box::new(Core {
                    kind: r.kind,
                    time_precision,
                    occurred_at: r.occurred_at,
                    region: r.region,
                    location: r.location,
                    locality: names.opt(r.locality),
                    perpetrator: names.opt(r.perpetrator),
                    target: names.opt(r.target),
                    summary: r.summary.map(boxed),
                }));
                if !self.decision_only {
                    self.add_source(r.source, names);
                }
            }
            // What no decision reads, a decision-only state does not keep.
            ev if self.decision_only && leaves_decisions_alone(&ev) => {}
            IncidentEvent::CasualtiesReported(c) => self.apply_casualties(c, names),
            IncidentEvent::ClaimMade(c) => {
                let source = match c.source {
                    Some(s) if !self.decision_only => Some(self.add_source(s, names)),
                    _ => None,
                };
                push_small(
                    &mut self.claims,
                    Claim {
                        id: c.claim_id,
                        claimant: names.name(c.claimant),
                        statement: boxed(c.statement),
                        attributed_to: names.opt(c.attributed_to),
                        source,
                        recorded_at: m.recorded_at,
                        denials: Vec::new(),
                        assessments: Vec::new(),
                    },
                );
            }
            IncidentEvent::ClaimDenied(d) => {
                let source = d.source.map(|s| self.add_source(s, names));
                if let Some(i) = self.claim(d.claim_id) {
                    push_small(
                        &mut self.claims[i].denials,
                        Denial {
                            by: names.name(d.by),
                            statement: d.statement.map(boxed),
                            source,
                            recorded_at: m.recorded_at,
                        },
                    );
                }
            }
            IncidentEvent::ClaimAssessed(a) => {
                if let Some(i) = self.claim(a.claim_id) {
                    push_small(
                        &mut self.claims[i].assessments,
                        AssessmentRec {
                            assessment: a.assessment,
                            by: names.name(a.by),
                            evidence: a.evidence.map(boxed),
                            recorded_at: m.recorded_at,
                        },
                    );
                }
            }
            IncidentEvent::SourceAdded(s) => {
                self.add_source(s.source, names);
            }
            IncidentEvent::IncidentCorrected(c) => {
                let fields = self.apply_correction(&c);
                if self.decision_only {
                    return;
                }
                push_small(
                    &mut self.corrections,
                    Correction {
                        reason: boxed(c.reason),
                        fields,
                        recorded_at: m.recorded_at,
                    },
                );
            }
            IncidentEvent::IncidentRetracted(r) => {
                self.retraction = Some(Box::new(Retraction {
                    reason: boxed(r.reason),
                    duplicate_of: r.duplicate_of,
                    recorded_at: m.recorded_at,
                }));
            }
        }
    }

    fn apply_casualties(&mut self, c: CasualtiesReported<'_>, names: &mut Interner) {
        let idx = self
            .casualties
            .by_source
            .iter()
            .position(|f| *self.sources[f.source as usize].name == *c.source.name);
        let killed = c
            .killed
            .map(|k| (c.killed_low.unwrap_or(k), c.killed_high.unwrap_or(k)));
        let cas = &mut self.casualties;
        if c.killed.is_some() {
            cas.killed_best = c.killed;
        }
        if c.injured.is_some() {
            cas.injured_best = c.injured;
        }
        if c.civilians_killed.is_some() {
            cas.civilians = c.civilians_killed;
        }
        if c.children_killed.is_some() {
            cas.children = c.children_killed;
        }
        let injured = c.injured;
        let idx = match idx {
            Some(i) => {
                self.add_source(c.source, names);
                i
            }
            None => {
                let source = self.add_source(c.source, names);
                push_small(
                    &mut self.casualties.by_source,
                    SourceFigures {
                        source,
                        killed: None,
                        injured: None,
                    },
                );
                self.casualties.by_source.len() - 1
            }
        };
        let f = &mut self.casualties.by_source[idx];
        if killed.is_some() {
            f.killed = killed;
        }
        if injured.is_some() {
            f.injured = injured;
        }
    }

    /// Applies the given fields; returns the bit set of the fields that changed.
    fn apply_correction(&mut self, c: &IncidentCorrected<'_>) -> u16 {
        let Some(core) = self.core.as_deref_mut() else {
            return 0;
        };
        let mut changed = 0u16;
        fn set<T: PartialEq + Clone>(dst: &mut T, v: Option<&T>, bit: u16, changed: &mut u16) {
            if let Some(v) = v {
                if dst != v {
                    *dst = v.clone();
                    *changed |= 1 << bit;
                }
            }
        }
        fn set_text<T>(dst: &mut Option<T>, v: Option<&Cow<'_, str>>, bit: u16, changed: &mut u16)
        where
            T: std::ops::Deref<Target = str> + for<'a> From<&'a str>,
        {
            if let Some(v) = v {
                if dst.as_deref() != Some(&**v) {
                    *dst = Some(T::from(&**v));
                    *changed |= 1 << bit;
                }
            }
        }
        set(&mut core.kind, c.kind.as_ref(), 0, &mut changed);
        set(
            &mut core.occurred_at,
            c.occurred_at.as_ref(),
            1,
            &mut changed,
        );
        set(
            &mut core.time_precision,
            c.time_precision.as_ref(),
            2,
            &mut changed,
        );
        set(&mut core.region, c.region.as_ref(), 3, &mut changed);
        set_text(&mut core.locality, c.locality.as_ref(), 4, &mut changed);
        if let Some(l) = c.location {
            if core.location != Some(l) {
                core.location = Some(l);
                changed |= 1 << 5;
            }
        }
        set_text(
            &mut core.perpetrator,
            c.perpetrator.as_ref(),
            6,
            &mut changed,
        );
        set_text(&mut core.target, c.target.as_ref(), 7, &mut changed);
        set_text(&mut core.summary, c.summary.as_ref(), 8, &mut changed);
        changed
    }

    /// Would this correction change anything?
    pub(crate) fn correction_changes(&self, c: &IncidentCorrected<'_>) -> bool {
        let mut probe = self.clone();
        probe.apply_correction(c) != 0
    }

    /// Casualty figures by the SPEC rule: best = latest report, low/high = min/max over each
    /// source's latest report.
    pub(crate) fn figures(&self) -> ([u32; 3], [u32; 3]) {
        let cas = &self.casualties;
        let mut k: Option<(u32, u32)> = None;
        let mut i: Option<(u32, u32)> = None;
        for f in &cas.by_source {
            if let Some((lo, hi)) = f.killed {
                k = Some(k.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
            }
            if let Some(n) = f.injured {
                i = Some(i.map_or((n, n), |(a, b)| (a.min(n), b.max(n))));
            }
        }
        let (klo, khi) = k.unwrap_or((0, 0));
        let (ilo, ihi) = i.unwrap_or((0, 0));
        (
            [klo, cas.killed_best.unwrap_or(0), khi],
            [ilo, cas.injured_best.unwrap_or(0), ihi],
        )
    }

    pub(crate) fn contrib(&self) -> Contrib {
        let (killed, injured) = self.figures();
        let mut claims = [0u32; 4];
        for c in &self.claims {
            claims[c.status() as usize] += 1;
        }
        Contrib {
            killed,
            injured,
            civilians: self.casualties.civilians.unwrap_or(0),
            children: self.casualties.children.unwrap_or(0),
            claims,
        }
    }
}

pub(crate) fn decode_envelope<'a>(e: &Envelope<'a>) -> Result<IncidentEvent<'a>, ProjectionError> {
    IncidentEvent::decode(e.global_position, e.event_type, e.data.get())
}

/// Bytes a heap allocation of `n` bytes really takes with a glibc-style allocator (8 bytes
/// of header, 16-byte granularity, 32-byte minimum); 0 for no allocation.
pub(crate) fn chunk(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

pub(crate) fn vec_bytes<T>(v: &Vec<T>) -> usize {
    chunk(v.capacity() * std::mem::size_of::<T>())
}

fn text_bytes(s: &Option<Box<str>>) -> usize {
    s.as_deref().map_or(0, |t| chunk(t.len()))
}

/// A shared name counts its share of the allocation (16 bytes of counts + the text).
fn name_bytes(n: &Name) -> usize {
    chunk(n.len() + 16) / Arc::strong_count(n).max(1)
}

fn opt_name_bytes(n: &Option<Name>) -> usize {
    n.as_ref().map_or(0, name_bytes)
}

impl SourceRec {
    fn heap_bytes(&self) -> usize {
        name_bytes(&self.name)
            + text_bytes(&self.url)
            + self.extra.as_deref().map_or(0, |x| {
                chunk(std::mem::size_of::<SourceExtra>()) + text_bytes(&x.archive_url)
            })
    }
}

impl IncidentState {
    /// Heap bytes owned by this state, allocator overhead included (estimated from lengths
    /// and capacities).
    pub(crate) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let core = self.core.as_deref().map_or(0, |c| {
            chunk(size_of::<Core>())
                + opt_name_bytes(&c.locality)
                + opt_name_bytes(&c.perpetrator)
                + opt_name_bytes(&c.target)
                + text_bytes(&c.summary)
        });
        let retraction = self.retraction.as_deref().map_or(0, |r| {
            chunk(size_of::<Retraction>()) + chunk(r.reason.len())
        });
        let sources = vec_bytes(&self.sources)
            + self
                .sources
                .iter()
                .map(SourceRec::heap_bytes)
                .sum::<usize>();
        let figures = vec_bytes(&self.casualties.by_source);
        let claims = vec_bytes(&self.claims)
            + self
                .claims
                .iter()
                .map(|c| {
                    name_bytes(&c.claimant)
                        + chunk(c.statement.len())
                        + opt_name_bytes(&c.attributed_to)
                        + vec_bytes(&c.denials)
                        + c.denials
                            .iter()
                            .map(|d| name_bytes(&d.by) + text_bytes(&d.statement))
                            .sum::<usize>()
                        + vec_bytes(&c.assessments)
                        + c.assessments
                            .iter()
                            .map(|a| name_bytes(&a.by) + text_bytes(&a.evidence))
                            .sum::<usize>()
                })
                .sum::<usize>();
        let corrections = vec_bytes(&self.corrections)
            + self
                .corrections
                .iter()
                .map(|c| chunk(c.reason.len()))
                .sum::<usize>();
        core + retraction + sources + figures + claims + corrections
    }
}
