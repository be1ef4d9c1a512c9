//! [`Hist`]: a compact, mergeable latency histogram, stored as an SQLite BLOB.
//!
//! The writer folds each batch's latencies (µs) into one histogram per hour
//! and group; reports merge thousands of stored blobs
//! ([`Hist::merge_encoded`]) and read p50/p95/p99 ([`Hist::quantile`]). The
//! bucket layout and the encoding are documented on [`Hist`], where the
//! crate's users see them.

use std::fmt;

/// Values below this have a bucket each.
const EXACT: u64 = 128;
/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 6;
/// Buckets in all: 128 exact ones, then 64 for each power of two 2^7..=2^63.
const BUCKETS: usize = 128 + 57 * 64;
/// The encoding's version byte.
const VERSION: u8 = 1;

/// A mergeable histogram of `u64` values (latencies in µs), with a stable
/// byte encoding for a BLOB column.
///
/// **Buckets.** Log-linear, 3776 of them, covering all of `u64`:
///
/// - values `0..128` each have their own bucket (index = value): exact;
/// - above, every power of two `[2^k, 2^(k+1))` for `k` in `7..=63` is cut
///   into 64 equal sub-buckets of width `2^(k-6)`. With
///   `s = bit_length(v) - 7`, value `v` is in bucket `64 × s + (v >> s)`:
///   indices `128..=3775`.
///
/// A bucket is at most 1/64 as wide as its lowest value, and a
/// [quantile](Hist::quantile) reads as the bucket's midpoint (rounded up), so
/// it is within 1/128 (~0.8%) of every value the bucket holds.
///
/// **Encoding** ([`encode`](Hist::encode), [`decode`](Hist::decode)): the
/// version byte `1`, then for each non-empty bucket in ascending order its
/// index as a delta from the previous bucket's index (from 0 for the first)
/// and its count, both unsigned LEB128 varints. The empty histogram is the
/// single byte `1`. Decoding is strict, so a blob that decodes re-encodes to
/// the same bytes: every delta after the first is at least 1, every count at
/// least 1, and a varint has at most 10 bytes, no redundant trailing zero
/// byte and no bits above `u64::MAX`.
///
/// **In memory** the counts are dense up to the highest non-empty bucket (at
/// most 3776 × 8 bytes; ~14 KiB for values up to an hour), which makes
/// [`merge`](Hist::merge) and [`merge_encoded`](Hist::merge_encoded) a plain
/// add per bucket. Counts saturate at `u64::MAX` instead of wrapping.
///
/// ```
/// use modelfleet_store::Hist;
///
/// let mut hour = Hist::new();
/// for latency_us in [850, 900, 1_200, 40_000] {
///     hour.record(latency_us);
/// }
/// let blob = hour.encode();
///
/// let mut report = Hist::new();
/// report.merge_encoded(&blob)?;
/// report.merge_encoded(&blob)?;
/// assert_eq!(report.count(), 8);
/// assert_eq!(report.quantile(0.5), Some(900)); // the midpoint of 896..=903
/// assert_eq!(report.quantile(1.0), Some(40_192)); // the midpoint of 39_936..=40_447
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Hist {
    /// Values per bucket.
    // Invariant: empty, or the last element is non-zero (counts only grow),
    // so the derived equality compares contents. `len() <= BUCKETS`.
    counts: Vec<u64>,
    /// Values recorded.
    // Invariant: the saturating sum of `counts`.
    total: u64,
}

impl Hist {
    /// An empty histogram (allocates nothing).
    #[must_use]
    pub fn new() -> Hist {
        Hist::default()
    }

    /// Records one value. 0 is a valid value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `count` values equal to `value`; a `count` of 0 changes nothing.
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let bucket = bucket_of(value);
        if bucket >= self.counts.len() {
            self.counts.resize(bucket + 1, 0);
        }
        self.counts[bucket] = self.counts[bucket].saturating_add(count);
        self.total = self.total.saturating_add(count);
    }

    /// Adds every count of `other` (saturating).
    pub fn merge(&mut self, other: &Hist) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total = self.total.saturating_add(other.total);
    }

    /// Values recorded (saturating at `u64::MAX`).
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Whether no value was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q`, or `None` when empty.
    ///
    /// `q` is clamped to `0.0..=1.0`, and NaN reads as 0.0. The answer is the
    /// representative of the bucket holding the `ceil(q × count)`-th smallest
    /// value (at least the first): the value itself below 128, else the
    /// bucket's midpoint rounded up, within 1/128 of every value in the
    /// bucket. It never decreases as `q` grows, `quantile(0.0)` is the
    /// lowest non-empty bucket's and `quantile(1.0)` the highest's.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        if q >= 1.0 {
            // The highest bucket, even when `total` has saturated.
            return Some(representative(self.counts.len() - 1));
        }
        // 0 <= q × total <= total and `as` saturates: no truncation, no sign loss.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        let bucket = self
            .counts
            .iter()
            .position(|&count| {
                seen = seen.saturating_add(count);
                seen >= rank
            })
            // Unreachable: the counts add up to `total` >= `rank`.
            .unwrap_or(self.counts.len() - 1);
        Some(representative(bucket))
    }

    /// The stable byte encoding, for a BLOB column: the version byte 1, then
    /// for each non-empty bucket in ascending order its index as a delta from
    /// the previous one's (from 0 for the first) and its count, both LEB128
    /// varints. The empty histogram is the single byte 1.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 3 * self.counts.iter().filter(|&&count| count != 0).count());
        out.push(VERSION);
        let mut previous = 0;
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            write_varint(&mut out, (bucket - previous) as u64);
            write_varint(&mut out, count);
            previous = bucket;
        }
        out
    }

    /// Decodes [`encode`](Hist::encode)'s output. A malformed blob (no or an
    /// unknown version byte, a truncated, overlong or overflowing varint, a
    /// bucket index beyond the last bucket or not above the previous one, a
    /// bucket without a count, a zero count) is an error naming the problem
    /// and its byte offset, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Hist, HistError> {
        let mut hist = Hist::new();
        parse(bytes, |bucket, count| {
            hist.counts.resize(bucket, 0);
            hist.counts.push(count);
            hist.total = hist.total.saturating_add(count);
        })?;
        Ok(hist)
    }

    /// Merges an encoded histogram into `self` without decoding it into a
    /// [`Hist`] first: the fast path for reports. The errors are
    /// [`decode`](Hist::decode)'s; on an error `self` is unchanged.
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<(), HistError> {
        // One pass of wrapping adds. It is undone exactly (wrapping
        // subtraction over the same walk, which stops at the same place) when
        // the blob is malformed, or when a sum may pass u64::MAX: then the
        // counts are merged again, saturating.
        let old_len = self.counts.len();
        let (mut added, mut overflowed) = (0u64, false);
        let counts = &mut self.counts;
        let walked = parse(bytes, |bucket, count| {
            if bucket >= counts.len() {
                counts.resize(bucket + 1, 0);
            }
            counts[bucket] = counts[bucket].wrapping_add(count);
            let (sum, overflow) = added.overflowing_add(count);
            (added, overflowed) = (sum, overflowed | overflow);
        });
        // Every count is at most the total, so a total that fits means no count wrapped.
        let total = self.total.checked_add(added).filter(|_| !overflowed);
        if let (Ok(()), Some(total)) = (&walked, total) {
            self.total = total;
            return Ok(());
        }
        let counts = &mut self.counts;
        let _ = parse(bytes, |bucket, count| counts[bucket] = counts[bucket].wrapping_sub(count));
        self.counts.truncate(old_len);
        walked?;
        self.merge(&Hist::decode(bytes)?);
        Ok(())
    }
}

/// Lists the non-empty buckets as `lowest value: count`, not 3776 counts.
impl fmt::Debug for Hist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hist").field("count", &self.total).field("buckets", &NonEmpty(&self.counts)).finish()
    }
}

/// Dense counts, formatted as a map from each non-empty bucket's lowest value to its count.
struct NonEmpty<'a>(&'a [u64]);

impl fmt::Debug for NonEmpty<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buckets = self.0.iter().enumerate().filter(|&(_, &count)| count != 0);
        f.debug_map().entries(buckets.map(|(bucket, count)| (low(bucket), count))).finish()
    }
}

/// What is wrong with an encoded histogram, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed latency histogram at byte {offset}: {problem}")]
pub struct HistError {
    /// Where the problem starts in the blob.
    offset: usize,
    problem: Problem,
}

impl HistError {
    /// The byte offset in the blob where the problem starts.
    #[must_use]
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// The ways a blob can be malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Problem {
    #[error("empty blob, no version byte")]
    Empty,
    #[error("unknown version {0} (expected {VERSION})")]
    Version(u8),
    #[error("truncated varint")]
    Truncated,
    #[error("varint above u64::MAX or longer than 10 bytes")]
    Overflow,
    #[error("overlong varint (redundant trailing zero byte)")]
    Overlong,
    #[error("bucket index {previous} + {delta} is beyond the last bucket ({})", BUCKETS - 1)]
    BeyondLast { previous: usize, delta: u64 },
    #[error("bucket index delta 0 repeats bucket {0} (buckets must ascend)")]
    Repeated(usize),
    #[error("bucket without a count (trailing bytes)")]
    MissingCount,
    #[error("zero count")]
    ZeroCount,
}

/// The bucket holding `value`.
fn bucket_of(value: u64) -> usize {
    // 0 below 128, else the number of low bits a sub-bucket spans.
    let shift = (u64::BITS - value.leading_zeros()).saturating_sub(SUB_BITS + 1);
    // (value >> shift) < 128 and shift <= 57: the sum is below BUCKETS.
    #[allow(clippy::cast_possible_truncation)]
    let bucket = ((u64::from(shift) << SUB_BITS) + (value >> shift)) as usize;
    bucket
}

/// The lowest value in `bucket` (< `BUCKETS`).
fn low(bucket: usize) -> u64 {
    let (top, shift) = split(bucket);
    top << shift
}

/// The value a quantile in `bucket` reads as: the midpoint of its range,
/// rounded up (the value itself below 128). Never overflows: the last bucket's
/// is `127 × 2^57 + 2^56`.
fn representative(bucket: usize) -> u64 {
    let (top, shift) = split(bucket);
    (top << shift) + ((1 << shift) >> 1)
}

/// A bucket index as (top bits, shift): its values are `top << shift` up to
/// `((top + 1) << shift) - 1`.
fn split(bucket: usize) -> (u64, u32) {
    let bucket = bucket as u64;
    if bucket < EXACT {
        return (bucket, 0);
    }
    let shift = (bucket >> SUB_BITS) - 1;
    let top = (bucket & ((1 << SUB_BITS) - 1)) | (1 << SUB_BITS);
    // shift <= 57.
    #[allow(clippy::cast_possible_truncation)]
    let shift = shift as u32;
    (top, shift)
}

/// Appends `value` as an unsigned LEB128 varint.
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Keeps the low 7 bits on purpose.
        #[allow(clippy::cast_possible_truncation)]
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)] // < 0x80
    out.push(value as u8);
}

/// Reads the unsigned LEB128 varint at `*pos` and moves `*pos` past it.
#[inline]
fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, HistError> {
    let start = *pos;
    let mut value = 0;
    let mut shift = 0;
    loop {
        let Some(&byte) = bytes.get(*pos) else {
            return Err(HistError { offset: start, problem: Problem::Truncated });
        };
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(HistError { offset: start, problem: Problem::Overflow });
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if byte == 0 && shift > 0 {
                return Err(HistError { offset: start, problem: Problem::Overlong });
            }
            return Ok(value);
        }
        shift += 7;
    }
}

/// Walks an encoded histogram, calling `each(bucket, count)` for every bucket
/// in ascending order. Stops at the first problem, after calling `each` for
/// the buckets before it.
#[inline]
fn parse(bytes: &[u8], mut each: impl FnMut(usize, u64)) -> Result<(), HistError> {
    match bytes.first() {
        None => return Err(HistError { offset: 0, problem: Problem::Empty }),
        Some(&VERSION) => {}
        Some(&other) => return Err(HistError { offset: 0, problem: Problem::Version(other) }),
    }
    let mut pos = 1;
    // The previous bucket, and the lowest the next may be (0, then previous + 1).
    let (mut previous, mut end) = (0usize, 0usize);
    while pos < bytes.len() {
        // Fast path: a one-byte delta and a one-byte count, both valid.
        if let Some(&[delta, count]) = bytes.get(pos..pos + 2) {
            let bucket = previous + usize::from(delta);
            if delta < 0x80 && (1..0x80).contains(&count) && bucket >= end && bucket < BUCKETS {
                each(bucket, u64::from(count));
                (previous, end, pos) = (bucket, bucket + 1, pos + 2);
                continue;
            }
        }
        let at = pos;
        let delta = read_varint(bytes, &mut pos)?;
        let Some(bucket) = usize::try_from(delta).ok().and_then(|d| previous.checked_add(d)).filter(|&b| b < BUCKETS)
        else {
            return Err(HistError { offset: at, problem: Problem::BeyondLast { previous, delta } });
        };
        if bucket < end {
            return Err(HistError { offset: at, problem: Problem::Repeated(bucket) });
        }
        if pos == bytes.len() {
            return Err(HistError { offset: pos, problem: Problem::MissingCount });
        }
        let count_at = pos;
        let count = read_varint(bytes, &mut pos)?;
        if count == 0 {
            return Err(HistError { offset: count_at, problem: Problem::ZeroCount });
        }
        each(bucket, count);
        (previous, end) = (bucket, bucket + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records `values` (count 1 each).
    fn hist_of(values: &[u64]) -> Hist {
        let mut hist = Hist::new();
        for &value in values {
            hist.record(value);
        }
        hist
    }

    /// The inclusive range of values in `bucket`.
    fn range(bucket: usize) -> (u64, u64) {
        let (top, shift) = split(bucket);
        (top << shift, (top << shift) + ((1 << shift) - 1))
    }

    #[test]
    fn small_values_are_exact() {
        let hist = hist_of(&(1..=100).collect::<Vec<_>>());
        let check = |q: f64, expect: u64| assert_eq!(hist.quantile(q), Some(expect), "q = {q}");
        check(0.0, 1);
        check(0.01, 1);
        check(0.015, 2);
        check(0.5, 50);
        check(0.95, 95);
        check(0.99, 99);
        check(1.0, 100);
        check(-3.0, 1);
        check(7.0, 100);
        check(f64::NAN, 1);
        check(f64::INFINITY, 100);
        check(f64::NEG_INFINITY, 1);
        assert_eq!(hist.count(), 100);
        assert_eq!(hist_of(&[0]).quantile(0.5), Some(0));
        assert_eq!(hist_of(&[127, 127]).quantile(1.0), Some(127));
    }

    #[test]
    fn empty_has_no_quantile() {
        let hist = Hist::new();
        assert!(hist.is_empty());
        assert_eq!(hist.count(), 0);
        assert_eq!(hist.quantile(0.5), None);
        assert_eq!(hist.encode(), [1]);
        assert_eq!(Hist::decode(&[1]), Ok(Hist::new()));
        let mut zero = Hist::new();
        zero.record_n(5, 0);
        assert_eq!(zero, Hist::new());
    }

    #[test]
    fn buckets_tile_all_of_u64() {
        assert_eq!(range(0), (0, 0));
        assert_eq!(range(BUCKETS - 1).1, u64::MAX);
        for bucket in 0..BUCKETS {
            let (lo, hi) = range(bucket);
            assert_eq!((bucket_of(lo), bucket_of(hi)), (bucket, bucket), "bucket {bucket}: {lo}..={hi}");
            assert_eq!(low(bucket), lo);
            let mid = representative(bucket);
            assert!(lo <= mid && mid <= hi, "bucket {bucket}: {mid} outside {lo}..={hi}");
            // At most 1/64 of its lowest value wide.
            assert!(bucket < 128 || (hi - lo + 1) * 64 <= lo, "bucket {bucket}: {lo}..={hi}");
            if bucket + 1 < BUCKETS {
                assert_eq!(range(bucket + 1).0, hi + 1, "gap after bucket {bucket}");
            }
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(representative(BUCKETS - 1), (127 << 57) + (1 << 56));
    }

    #[test]
    fn quantiles_are_within_1_in_128_from_1_us_to_an_hour() {
        let check = |value: u64| {
            let read = hist_of(&[value]).quantile(0.5).unwrap_or_default();
            let error = read.abs_diff(value);
            assert!(error * 128 <= value, "{value} reads as {read}");
        };
        let mut value = 1u64;
        while value <= 3_600_000_000 {
            check(value);
            value += value / 97 + 1;
        }
        for log in 0..=63 {
            let power = 1u64 << log;
            check(power);
            check(power - 1);
            check(power.saturating_add(power - 1));
        }
        check(u64::MAX);
    }

    #[test]
    fn counts_saturate() {
        let mut hist = Hist::new();
        hist.record_n(1_000, u64::MAX);
        hist.record(1_000);
        hist.record(5);
        assert_eq!(hist.count(), u64::MAX);
        assert_eq!(hist.quantile(0.0), Some(5));
        assert_eq!(hist.quantile(1.0), Some(1_004));
        let blob = hist.encode();
        assert_eq!(Hist::decode(&blob).as_ref(), Ok(&hist));
        let mut merged = hist.clone();
        merged.merge_encoded(&blob).unwrap();
        merged.merge(&hist);
        let mut expect = Hist::new();
        expect.record_n(1_000, u64::MAX);
        expect.record_n(5, 3);
        assert_eq!(merged, expect);
    }

    #[test]
    fn encoding_is_pinned() {
        let mut hist = Hist::new();
        hist.record(0);
        hist.record_n(3, 2);
        hist.record_n(200, 300);
        // Bucket 0: 1; bucket 3 (delta 3): 2; bucket 64 × 1 + 100 = 164 (delta 161): 300.
        assert_eq!(hist.encode(), [1, 0, 1, 3, 2, 0xa1, 0x01, 0xac, 0x02]);
        let mut top = Hist::new();
        top.record(u64::MAX);
        assert_eq!(top.encode(), [1, 0xbf, 0x1d, 1]);
    }

    /// Asserts that `bytes` is refused with `message`, by decode and by
    /// `merge_encoded`, which then leaves its histogram unchanged.
    fn check_malformed(bytes: &[u8], message: &str) {
        let err = Hist::decode(bytes).expect_err("malformed");
        assert_eq!(err.to_string(), message, "{bytes:?}");
        let mut hist = hist_of(&[7, 70_000]);
        assert_eq!(hist.merge_encoded(bytes), Err(err));
        assert_eq!(hist, hist_of(&[7, 70_000]));
    }

    #[test]
    fn malformed_blobs_are_errors() {
        check_malformed(&[], "malformed latency histogram at byte 0: empty blob, no version byte");
        check_malformed(&[2, 0, 1], "malformed latency histogram at byte 0: unknown version 2 (expected 1)");
        check_malformed(&[0], "malformed latency histogram at byte 0: unknown version 0 (expected 1)");
        check_malformed(&[1, 0x85], "malformed latency histogram at byte 1: truncated varint");
        check_malformed(&[1, 3, 0x80, 0x80], "malformed latency histogram at byte 2: truncated varint");
        check_malformed(&[1, 3], "malformed latency histogram at byte 2: bucket without a count (trailing bytes)");
        check_malformed(
            &[1, 3, 1, 5],
            "malformed latency histogram at byte 4: bucket without a count (trailing bytes)",
        );
        let mut eleven = vec![1, 0];
        eleven.extend([0xff; 10]);
        eleven.push(1);
        check_malformed(
            &eleven,
            "malformed latency histogram at byte 2: varint above u64::MAX or longer than 10 bytes",
        );
        let mut above = vec![1, 0];
        above.extend([0xff; 9]);
        above.push(2);
        check_malformed(&above, "malformed latency histogram at byte 2: varint above u64::MAX or longer than 10 bytes");
        let mut max = vec![1, 0];
        max.extend([0xff; 9]);
        max.push(1);
        assert_eq!(Hist::decode(&max).map(|h| h.count()), Ok(u64::MAX));
        check_malformed(
            &[1, 0x83, 0x00, 1],
            "malformed latency histogram at byte 1: overlong varint (redundant trailing zero byte)",
        );
        check_malformed(
            &[1, 0xc0, 0x1d, 1],
            "malformed latency histogram at byte 1: bucket index 0 + 3776 is beyond the last bucket (3775)",
        );
        check_malformed(
            &[1, 0xbf, 0x1d, 1, 1, 1],
            "malformed latency histogram at byte 4: bucket index 3775 + 1 is beyond the last bucket (3775)",
        );
        check_malformed(
            &[1, 5, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1],
            "malformed latency histogram at byte 3: bucket index 5 + 18446744073709551615 is beyond the last bucket \
             (3775)",
        );
        check_malformed(
            &[1, 5, 1, 0, 1],
            "malformed latency histogram at byte 3: bucket index delta 0 repeats bucket 5 (buckets must ascend)",
        );
        check_malformed(&[1, 5, 0], "malformed latency histogram at byte 2: zero count");
        assert_eq!(Hist::decode(&[1, 5, 0]).map_err(|e| e.offset()), Err(2));
    }

    /// Values spread like latencies, with the edges.
    fn value() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..200, 100u64..100_000, 0u64..3_600_000_000, any::<u64>(), Just(u64::MAX)]
    }

    /// A histogram from (value, count) pairs, some counts near saturation.
    fn hist() -> impl Strategy<Value = Hist> {
        let count = prop_oneof![8 => 1u64..5, 1 => 1u64..1_000_000, 1 => any::<u64>()];
        prop::collection::vec((value(), count), 0..64).prop_map(|pairs| {
            let mut hist = Hist::new();
            for (value, count) in pairs {
                hist.record_n(value, count);
            }
            hist
        })
    }

    /// Bytes that often start with the right version.
    fn blob() -> impl Strategy<Value = Vec<u8>> {
        let bytes = prop::collection::vec(any::<u8>(), 0..48);
        prop_oneof![
            bytes.clone(),
            bytes.prop_map(|mut b| {
                b.insert(0, VERSION);
                b
            }),
            (hist(), any::<prop::sample::Index>(), any::<u8>(), any::<bool>()).prop_map(|(h, at, byte, cut)| {
                let mut b = h.encode();
                let i = at.index(b.len());
                if cut {
                    b.truncate(i);
                } else {
                    b[i] = byte;
                }
                b
            }),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(hist in hist()) {
            prop_assert_eq!(Hist::decode(&hist.encode()), Ok(hist));
        }

        #[test]
        fn merging_equals_recording_all_into_one(
            a in prop::collection::vec((value(), 1u64..1_000), 0..40),
            b in prop::collection::vec((value(), 1u64..1_000), 0..40),
        ) {
            let (mut left, mut right, mut all) = (Hist::new(), Hist::new(), Hist::new());
            for &(value, count) in &a {
                left.record_n(value, count);
                all.record_n(value, count);
            }
            for &(value, count) in &b {
                right.record_n(value, count);
                all.record_n(value, count);
            }
            let mut encoded = left.clone();
            encoded.merge_encoded(&right.encode()).unwrap();
            left.merge(&right);
            prop_assert_eq!(&left, &all);
            prop_assert_eq!(&encoded, &all);
        }

        #[test]
        fn merge_encoded_equals_decode_then_merge(base in hist(), other in hist()) {
            let mut expect = base.clone();
            expect.merge(&Hist::decode(&other.encode()).unwrap());
            let mut merged = base;
            merged.merge_encoded(&other.encode()).unwrap();
            prop_assert_eq!(merged, expect);
        }

        #[test]
        fn any_bytes_decode_or_err_without_panic(base in hist(), bytes in blob()) {
            let decoded = Hist::decode(&bytes);
            let mut merged = base.clone();
            let result = merged.merge_encoded(&bytes);
            match decoded {
                Ok(decoded) => {
                    // Strict decoding: what decodes re-encodes to the same bytes.
                    prop_assert_eq!(decoded.encode(), bytes);
                    prop_assert!(result.is_ok());
                    let mut expect = base;
                    expect.merge(&decoded);
                    prop_assert_eq!(merged, expect);
                }
                Err(err) => {
                    prop_assert!(err.offset() <= bytes.len());
                    prop_assert_eq!(result, Err(err));
                    prop_assert_eq!(merged, base);
                }
            }
        }

        #[test]
        fn quantile_is_monotone_and_within_the_recorded_buckets(hist in hist(), a in -0.5f64..1.5, b in -0.5f64..1.5) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            match (hist.quantile(lo), hist.quantile(hi)) {
                (Some(x), Some(y)) => {
                    prop_assert!(x <= y, "q{} = {} > q{} = {}", lo, x, hi, y);
                    let first = hist.counts.iter().position(|&c| c != 0).unwrap();
                    let last = hist.counts.len() - 1;
                    prop_assert!(representative(first) <= x && y <= representative(last));
                    prop_assert_eq!(hist.quantile(0.0), Some(representative(first)));
                    prop_assert_eq!(hist.quantile(1.0), Some(representative(last)));
                }
                (x, y) => prop_assert!(hist.is_empty() && x.is_none() && y.is_none()),
            }
        }
    }
}
