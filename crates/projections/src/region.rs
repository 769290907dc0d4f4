//! ISO 3166-2 subdivisions, validated against the `rust_iso3166` table (no hand-written list).
use rust_iso3166::iso3166_2::{self, Subdivision};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

/// A valid ISO 3166-2 subdivision code, such as `UA-63`.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    sub: &'static Subdivision,
}

impl PartialEq for Region {
    fn eq(&self, other: &Self) -> bool {
        // Entries of the static table are unique per code: pointer equality is the fast path.
        std::ptr::eq(self.sub, other.sub) || self.sub.code == other.sub.code
    }
}

impl Eq for Region {}

impl std::hash::Hash for Region {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.sub.code.hash(state)
    }
}

impl Region {
    /// Accepts a code in any letter case (`ua-63` is `UA-63`).
    pub fn parse(code: &str) -> Result<Region, String> {
        let mut buf = [0u8; 12];
        let b = code.as_bytes();
        let found = if b.len() <= buf.len() && b.is_ascii() {
            for (d, s) in buf.iter_mut().zip(b) {
                *d = s.to_ascii_uppercase();
            }
            // The table is a `const`; promote it to a `'static` borrow so lookups hand out
            // `&'static Subdivision` (8 bytes per region in the views).
            let table: &'static _ = &iso3166_2::SUBDIVISION_MAP;
            std::str::from_utf8(&buf[..b.len()])
                .ok()
                .and_then(|c| table.get(c))
        } else {
            None
        };
        match found {
            Some(sub) => Ok(Region { sub }),
            None => Err(format!(
                "{code:?} is not an ISO 3166-2 subdivision code (such as \"UA-63\" or \"RU-MOS\")"
            )),
        }
    }

    /// The code, such as `UA-63`.
    pub fn code(&self) -> &'static str {
        self.sub.code
    }

    /// The subdivision's name, such as `Kharkivska oblast`.
    pub fn name(&self) -> &'static str {
        self.sub.name
    }

    /// The ISO 3166-1 alpha-2 country code, such as `UA`.
    pub fn country(&self) -> &'static str {
        self.sub.country_code
    }
}

impl PartialOrd for Region {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Region {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.code().cmp(other.code())
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::parse(s)
    }
}

impl Serialize for Region {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Region::parse(&s).map_err(serde::de::Error::custom)
    }
}
