//! Per-volume I/O statistics, counted at the volume's entry (every export's
//! requests pass there) without a lock: one relaxed atomic add per counter
//! and a latency histogram per operation.
//!
//! The histogram is log-linear: eight buckets per power of two of
//! nanoseconds, so a bucket is at most 12.5% wide and a quantile read from
//! it is within that of the true value; 512 buckets cover every `u64`.
//! That is 4 KiB of counters per operation, 20 KiB per volume, and no
//! allocation or lock when a request completes.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The operations a volume counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
        }
    }
}

/// Sub-buckets per power of two (a power of two itself).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets per histogram: every `u64` of nanoseconds falls in one.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB as usize;

/// The bucket of `ns`: values below `SUB` have one each; above, the power
/// of two picks a row of `SUB` buckets and the next bits the column.
fn bucket(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    let col = (ns >> (exp - SUB_BITS)) & (SUB - 1);
    ((exp - SUB_BITS + 1) as u64 * SUB + col) as usize
}

/// The largest value bucket `i` holds (its upper bound, inclusive).
pub fn bucket_upper_ns(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let row = i / SUB - 1;
    let col = i % SUB;
    let exp = row + SUB_BITS as u64;
    let low = (1u64 << exp) + (col << (exp - SUB_BITS as u64));
    low.saturating_add((1u64 << (exp - SUB_BITS as u64)) - 1)
}

struct OpStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    hist: Box<[AtomicU64]>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A volume's counters.
#[derive(Default)]
pub struct IoStats {
    ops: [OpStats; 5],
    in_flight: AtomicU64,
}

/// One request being counted; [`IoStats::end`] completes it.
pub struct Started(Instant);

impl IoStats {
    #[inline]
    pub fn start(&self) -> Started {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Started(Instant::now())
    }

    /// Count a completed request of `op` moving `bytes` (counted only when
    /// it succeeded).
    #[inline]
    pub fn end(&self, t: Started, op: Op, bytes: u64, ok: bool) {
        let ns = t.0.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let s = &self.ops[op as usize];
        s.ops.fetch_add(1, Ordering::Relaxed);
        if ok {
            s.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.sum_ns.fetch_add(ns, Ordering::Relaxed);
        s.max_ns.fetch_max(ns, Ordering::Relaxed);
        s.hist[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            ops: Op::ALL
                .iter()
                .map(|&op| {
                    let s = &self.ops[op as usize];
                    let hist: Vec<u64> = s.hist.iter().map(|b| b.load(Ordering::Relaxed)).collect();
                    OpSnapshot {
                        op: op.as_str(),
                        ops: s.ops.load(Ordering::Relaxed),
                        bytes: s.bytes.load(Ordering::Relaxed),
                        errors: s.errors.load(Ordering::Relaxed),
                        latency_sum_ns: s.sum_ns.load(Ordering::Relaxed),
                        latency_us: Latency::from_hist(&hist, s.max_ns.load(Ordering::Relaxed)),
                        hist,
                    }
                })
                .collect(),
        }
    }
}

/// Quantiles of a latency histogram, in microseconds (a bucket's upper
/// bound: at most 12.5% above the true value).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn from_hist(hist: &[u64], max_ns: u64) -> Latency {
        let total: u64 = hist.iter().sum();
        let q = |f: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = ((total as f64 * f).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, n) in hist.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return bucket_upper_ns(i).min(max_ns) as f64 / 1000.0;
                }
            }
            max_ns as f64 / 1000.0
        };
        Latency {
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: max_ns as f64 / 1000.0,
        }
    }
}

/// One operation's counters at an instant.
#[derive(Clone, Debug, Serialize)]
pub struct OpSnapshot {
    pub op: &'static str,
    pub ops: u64,
    /// Bytes moved by the requests that succeeded.
    pub bytes: u64,
    pub errors: u64,
    pub latency_sum_ns: u64,
    pub latency_us: Latency,
    /// The raw histogram (see [`bucket_upper_ns`]); for the metrics
    /// exposition, not the JSON.
    #[serde(skip)]
    pub hist: Vec<u64>,
}

/// A volume's counters at an instant.
#[derive(Clone, Debug, Serialize)]
pub struct IoSnapshot {
    pub in_flight: u64,
    pub ops: Vec<OpSnapshot>,
}

impl IoSnapshot {
    pub fn op(&self, op: Op) -> &OpSnapshot {
        &self.ops[op as usize]
    }

    /// The JSON of `volume info` and `stats`: an object per operation.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("in_flight".into(), self.in_flight.into());
        for o in &self.ops {
            m.insert(
                o.op.into(),
                serde_json::json!({
                    "ops": o.ops,
                    "bytes": o.bytes,
                    "errors": o.errors,
                    "latency_sum_ns": o.latency_sum_ns,
                    "latency_us": o.latency_us,
                }),
            );
        }
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it() {
        let mut prev = 0;
        for i in 0..BUCKETS {
            let up = bucket_upper_ns(i);
            assert!(i == 0 || up > prev, "bucket {i} upper {up} after {prev}");
            prev = up;
        }
        assert_eq!(bucket_upper_ns(BUCKETS - 1), u64::MAX);
        for v in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            17,
            1000,
            4095,
            4096,
            123_456_789,
            u64::MAX,
        ] {
            let b = bucket(v);
            assert!(b < BUCKETS);
            assert!(v <= bucket_upper_ns(b), "{v} above bucket {b}");
            assert!(b == 0 || v > bucket_upper_ns(b - 1), "{v} below bucket {b}");
            // At most 12.5% wide.
            let low = if b == 0 {
                0
            } else {
                bucket_upper_ns(b - 1) + 1
            };
            assert!((bucket_upper_ns(b) - low) as f64 <= (low as f64 / 8.0).max(1.0));
        }
    }

    #[test]
    fn quantiles_come_from_the_counted_requests() {
        let s = IoStats::default();
        for i in 1..=1000u64 {
            // Pretend latencies of i microseconds.
            let h = &s.ops[Op::Read as usize];
            h.ops.fetch_add(1, Ordering::Relaxed);
            h.hist[bucket(i * 1000)].fetch_add(1, Ordering::Relaxed);
            h.max_ns.fetch_max(i * 1000, Ordering::Relaxed);
        }
        let l = &s.snapshot().ops[0].latency_us;
        assert!((500.0..=563.0).contains(&l.p50), "{l:?}");
        assert!((990.0..=1000.0).contains(&l.p99), "{l:?}");
        assert_eq!(l.max, 1000.0);
        let t = s.start();
        s.end(t, Op::Write, 4096, true);
        let t = s.start();
        s.end(t, Op::Write, 4096, false);
        let snap = s.snapshot();
        let w = snap.op(Op::Write);
        assert_eq!((w.ops, w.bytes, w.errors), (2, 4096, 1));
        assert_eq!(snap.in_flight, 0);
    }
}
