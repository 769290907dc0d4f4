//! A small deterministic PRNG (SplitMix64): the same seed gives the same log on every machine,
//! so a benchmark's input is reproducible without shipping gigabytes of fixtures.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the tiny modulo bias does not matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Writes a random (version 4 shaped) UUID in canonical text form into `out` (36 bytes),
    /// without allocating: the load generator renews ids in a body template per request.
    pub fn uuid_into(&mut self, out: &mut [u8; 36]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let hi = (self.next_u64() & !0xF000) | 0x4000;
        let lo = (self.next_u64() & !(0xC000 << 48)) | (0x8000 << 48);
        let nibbles = (0..16)
            .map(|i| (hi >> (60 - 4 * i)) & 0xF)
            .chain((0..16).map(|i| (lo >> (60 - 4 * i)) & 0xF));
        let mut at = 0;
        for (i, n) in nibbles.enumerate() {
            if matches!(i, 8 | 12 | 16 | 20) {
                out[at] = b'-';
                at += 1;
            }
            out[at] = HEX[n as usize];
            at += 1;
        }
    }

    /// A random (version 4 shaped) UUID in canonical text form.
    pub fn uuid(&mut self) -> String {
        let hi = self.next_u64();
        let lo = self.next_u64();
        let hi = (hi & !0xF000) | 0x4000; // version 4
        let lo = (lo & !(0xC000 << 48)) | (0x8000 << 48); // RFC 4122 variant
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xFFFF,
            hi & 0xFFFF,
            lo >> 48,
            lo & 0xFFFF_FFFF_FFFF
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_into_matches_uuid() {
        let mut a = Rng::new(9);
        let mut b = Rng::new(9);
        for _ in 0..100 {
            let mut out = [0u8; 36];
            a.uuid_into(&mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), b.uuid());
        }
    }

    #[test]
    fn uuid_is_v4_shaped_and_deterministic() {
        let a = Rng::new(7).uuid();
        let b = Rng::new(7).uuid();
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(Rng::new(8).uuid(), a);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(1);
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
        assert_eq!(r.below(0), 0);
    }
}
