//! A mergeable quantile sketch for p50/p95 over rollups: a log-bucketed
//! histogram in the manner of DDSketch (Masson, Rim, Lee, VLDB 2019).
//!
//! Every non-zero value `v` falls into bucket `ceil(ln|v| / ln γ)` with
//! `γ = (1 + α) / (1 − α)` and `α = 1 %`; the bucket stands for
//! `2γ^k / (γ + 1)`, which is within 1 % of every value in it. A quantile
//! read from the sketch is therefore within 1 % (relative) of the value of
//! the same rank among the raw points, as long as no buckets were collapsed.
//! Merging adds counts, so the sketch of a group is exactly the sketch of
//! all its points, whatever order they arrived in — which is what lets late
//! points update rollups incrementally.
//!
//! Magnitudes below [`MIN_MAGNITUDE`] count as zero. A sketch keeps at most
//! [`MAX_BINS`] buckets per sign; beyond that the lowest buckets are folded
//! into one (only the lowest quantiles lose accuracy, which p50/p95 of
//! realistic data never reach: 1 % buckets from 1e-9 to 1e18 number about
//! 3,100, a minute or an hour of one metric far fewer).
//!
//! The stored form is compact binary (version byte, varints); decoding
//! never panics and rejects anything malformed.

use std::collections::BTreeMap;

/// Relative accuracy of quantiles.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Magnitudes below this count as zero.
pub const MIN_MAGNITUDE: f64 = 1e-9;
/// Buckets kept per sign before the lowest are folded together.
pub const MAX_BINS: usize = 2048;

const VERSION: u8 = 1;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn key_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

fn value_of(key: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(key) / (g + 1.0)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    zero: u64,
    positive: BTreeMap<i32, u64>,
    /// Keyed by the magnitude of the negative value.
    negative: BTreeMap<i32, u64>,
}

impl Sketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one finite value (non-finite values are ignored: the ingestion
    /// path refuses them before they get here).
    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let m = v.abs();
        if m < MIN_MAGNITUDE {
            self.zero += 1;
            return;
        }
        let bins = if v > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        *bins.entry(key_of(m)).or_default() += 1;
        collapse(bins);
    }

    pub fn merge(&mut self, other: &Sketch) {
        self.zero += other.zero;
        for (k, c) in &other.positive {
            *self.positive.entry(*k).or_default() += c;
        }
        for (k, c) in &other.negative {
            *self.negative.entry(*k).or_default() += c;
        }
        collapse(&mut self.positive);
        collapse(&mut self.negative);
    }

    pub fn count(&self) -> u64 {
        self.zero + self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>()
    }

    /// The value of rank `floor(q × (count − 1))` (0-based, ascending), to
    /// within [`RELATIVE_ACCURACY`]; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Ascending values: the most negative first (largest magnitude).
        for (k, c) in self.negative.iter().rev() {
            seen += c;
            if seen > rank {
                return Some(-value_of(*k));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Some(0.0);
        }
        for (k, c) in &self.positive {
            seen += c;
            if seen > rank {
                return Some(value_of(*k));
            }
        }
        // Unreachable with consistent counts; the largest bucket is the answer.
        self.positive.keys().next_back().map(|k| value_of(*k))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 * (self.positive.len() + self.negative.len()));
        out.push(VERSION);
        put_varint(&mut out, self.zero);
        for bins in [&self.positive, &self.negative] {
            put_varint(&mut out, bins.len() as u64);
            let mut prev = 0i64;
            for (k, c) in bins {
                let k = i64::from(*k);
                put_varint(&mut out, zigzag(k - prev));
                put_varint(&mut out, *c);
                prev = k;
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Sketch, String> {
        let mut s = Sketch::default();
        s.merge_encoded(bytes)?;
        Ok(s)
    }

    /// Merges an encoded sketch in without building it first (the hot loop
    /// of percentile queries). On error, `self` may hold part of it.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut r = Reader { bytes, pos: 0 };
        match r.byte()? {
            VERSION => {}
            v => return Err(format!("unknown sketch version {v}")),
        }
        let s = self;
        s.zero += r.varint()?;
        for negative in [false, true] {
            let n = r.varint()?;
            if n > MAX_BINS as u64 {
                return Err(format!("sketch with {n} buckets (at most {MAX_BINS})"));
            }
            let mut prev = 0i64;
            for _ in 0..n {
                let k = prev
                    .checked_add(unzigzag(r.varint()?))
                    .ok_or("sketch bucket key overflows")?;
                let key = i32::try_from(k).map_err(|_| "sketch bucket key out of range")?;
                let c = r.varint()?;
                let bins = if negative {
                    &mut s.negative
                } else {
                    &mut s.positive
                };
                *bins.entry(key).or_default() += c;
                prev = k;
            }
        }
        collapse(&mut s.positive);
        collapse(&mut s.negative);
        if r.pos != bytes.len() {
            return Err("trailing bytes after the sketch".into());
        }
        Ok(())
    }
}

/// Folds the lowest buckets together once there are too many.
fn collapse(bins: &mut BTreeMap<i32, u64>) {
    while bins.len() > MAX_BINS {
        let Some((_, c)) = bins.pop_first() else {
            return;
        };
        if let Some((_, next)) = bins.iter_mut().next() {
            *next += c;
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or("sketch ends in the middle")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("sketch varint longer than 10 bytes".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(values: &[f64], q: f64) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v[(q * (v.len() - 1) as f64).floor() as usize]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= RELATIVE_ACCURACY * b.abs() + 1e-12
    }

    #[test]
    fn quantiles_are_within_one_percent_of_the_raw_rank() {
        let values: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 10_007) as f64 * 0.37 - 400.0)
            .collect();
        let mut s = Sketch::new();
        for v in &values {
            s.add(*v);
        }
        assert_eq!(s.count(), 10_000);
        for q in [0.0, 0.05, 0.5, 0.95, 1.0] {
            let got = s.quantile(q).unwrap();
            assert!(
                close(got, exact(&values, q)),
                "q={q}: {got} vs {}",
                exact(&values, q)
            );
        }
    }

    #[test]
    fn merging_equals_adding_everything_in_any_order() {
        let values: Vec<f64> = (1..500).map(|i| (i as f64).sqrt() * 3.0).collect();
        let mut all = Sketch::new();
        values.iter().for_each(|v| all.add(*v));
        let (mut a, mut b) = (Sketch::new(), Sketch::new());
        for (i, v) in values.iter().rev().enumerate() {
            if i % 3 == 0 { a.add(*v) } else { b.add(*v) }
        }
        b.merge(&a);
        assert_eq!(b, all);
    }

    #[test]
    fn encoding_round_trips_and_garbage_is_refused() {
        let mut s = Sketch::new();
        for v in [0.0, 1e-12, 3.5, -2.0, -2.0, 1e15, 42.0] {
            s.add(v);
        }
        let bytes = s.encode();
        assert_eq!(Sketch::decode(&bytes).unwrap(), s);
        assert!(Sketch::decode(&[]).is_err());
        assert!(Sketch::decode(&[9]).is_err());
        assert!(Sketch::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Sketch::decode(&longer).is_err());
        assert!(
            Sketch::decode(&[
                1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
    }

    #[test]
    fn too_many_buckets_fold_the_lowest() {
        let mut s = Sketch::new();
        for i in 0..(MAX_BINS + 100) {
            s.add(1.03f64.powi(i as i32));
        }
        assert!(s.positive.len() <= MAX_BINS);
        assert_eq!(s.count(), (MAX_BINS + 100) as u64);
        let top = 1.03f64.powi((MAX_BINS + 99) as i32);
        assert!(close(s.quantile(1.0).unwrap(), top));
    }
}
