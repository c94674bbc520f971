//! Exact latency measurement and merge: HdrHistogram snapshots in microseconds (3 significant
//! digits), per-operation windows (a stage, its ramp, one second), worker snapshots, and the exact
//! merge the controller applies to the snapshots of all workers.
//!
//! Percentiles always come from merged histograms, never from averaged percentiles.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Lowest discernible latency, µs.
const LOWEST_US: u64 = 1;
/// Highest trackable latency, µs (one hour); larger values are clamped to it.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by every latency histogram.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Longest failure example kept, in characters.
const EXAMPLE_CHARS: usize = 300;

/// Cookie of an uncompressed HdrHistogram V2 encoding (`0x1c849303 | 0x10`).
const V2_COOKIE: u32 = 0x1c84_9313;
/// Cookie of a DEFLATE-compressed HdrHistogram V2 encoding (`0x1c849304 | 0x10`).
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;
/// Bytes of a V2 header: cookie, payload length, normalizing offset, digits, low, high, ratio.
const V2_HEADER_LEN: usize = 40;
/// Upper bound on a decoded V2 encoding. A histogram of at most 3 significant digits has fewer
/// than 70 000 counters of at most 9 varint bytes each, so anything longer is not one of ours and
/// is refused before the decoder allocates what its header claims (up to 4 GiB).
const MAX_DECODED_LEN: usize = 1 << 20;

/// Errors of decoding measurements.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The bytes are not an HdrHistogram V2 (optionally DEFLATE-compressed) encoding we accept.
    #[error("cannot decode latency histogram: {0}")]
    Histogram(String),
    /// The text is not valid base64.
    #[error("cannot decode latency histogram: invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// Latency histogram in microseconds, 3 significant digits, 1 µs .. 1 hour (values above are
/// clamped to one hour and still counted).
///
/// Storage grows with the largest latency recorded and nothing is allocated before the first
/// one. A histogram that is finished (a past second of the timeline, a decoded snapshot) can be
/// [`compact`](Self::compact)ed to its non-empty buckets: a run keeps one window per second, and
/// HdrHistogram's dense counts of a second whose latencies reach 100 ms take ~64 KB, so a 1-hour
/// test would hold gigabytes (the controller one copy per worker). Every read gives the same
/// answer in either form, and recording or merging into a compacted histogram makes it dense
/// again.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    store: Store,
}

#[derive(Clone, Debug, Default)]
enum Store {
    #[default]
    Empty,
    /// HdrHistogram's counts, for recording and merging into.
    Dense(Histogram<u64>),
    /// The non-empty buckets only, for keeping.
    Sparse(SparseBuckets),
}

/// Non-empty buckets as (highest equivalent value, count), in value order, with their total.
#[derive(Clone, Debug)]
struct SparseBuckets {
    buckets: Box<[(u64, u64)]>,
    count: u64,
}

/// Bucket arithmetic (lowest/highest/median equivalent values). It depends only on the lowest
/// value and the digits, which every histogram here shares, not on a histogram's range.
static LAYOUT: LazyLock<Histogram<u64>> = LazyLock::new(growing_histogram);

impl SparseBuckets {
    fn of(h: &Histogram<u64>) -> Self {
        SparseBuckets {
            buckets: h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            count: h.len(),
        }
    }

    /// Adds every bucket into `target` (exact: a bucket's value records into that bucket).
    fn add_to(&self, target: &mut Histogram<u64>) {
        for &(value, count) in self.buckets.iter() {
            record_clamped(target, value, count);
        }
    }

    /// As [`Histogram::value_at_quantile`] computes it over the same buckets.
    fn value_at_quantile(&self, q: f64) -> u64 {
        let target = ((q * self.count as f64).ceil() as u64).max(1);
        let mut total = 0u64;
        let mut last = 0;
        for &(value, count) in self.buckets.iter() {
            total = total.saturating_add(count);
            last = value;
            if total >= target {
                break;
            }
        }
        if q == 0.0 {
            LAYOUT.lowest_equivalent(last)
        } else {
            LAYOUT.highest_equivalent(last)
        }
    }

    /// As [`Histogram::mean`] computes it (same terms, same order: bit-identical).
    fn mean(&self) -> f64 {
        self.buckets.iter().fold(0.0_f64, |total, &(value, count)| {
            total + LAYOUT.median_equivalent(value) as f64 * count as f64 / self.count as f64
        })
    }
}

/// A fresh, small histogram that grows to the values recorded into it.
fn growing_histogram() -> Histogram<u64> {
    // Sub-bucket layout depends only on the lowest value and the digits, so histograms that
    // grew to different sizes still have the same buckets and merge exactly.
    match Histogram::new_with_bounds(LOWEST_US, 2 * LOWEST_US, SIGNIFICANT_DIGITS) {
        Ok(mut h) => {
            h.auto(true);
            h
        }
        // The arguments are constants that satisfy every constructor rule (low ≥ 1,
        // high ≥ 2 × low, digits ≤ 5); every test creating a histogram pins that.
        Err(e) => unreachable!("constant histogram bounds rejected: {e:?}"),
    }
}

/// Records `count` latencies of `us` µs, clamped to one hour.
fn record_clamped(h: &mut Histogram<u64>, us: u64, count: u64) {
    // With auto-resize the only error is a counts array longer than usize, impossible for a
    // range of one hour; clamping to the current range is the panic-free answer anyway.
    if h.record_n(us.min(HIGHEST_US), count).is_err() {
        h.saturating_record_n(us, count);
    }
}

/// Adds `source` into `target`, clamping values above one hour, so that a histogram decoded
/// from another configuration can never make a merge fail, grow without bound or lose counts.
fn add_clamped(target: &mut Histogram<u64>, source: &Histogram<u64>) {
    if source.is_empty() {
        return;
    }
    // `add` checks the range before touching anything, so on error `target` is unchanged.
    if source.max() > target.highest_equivalent(HIGHEST_US) || target.add(source).is_err() {
        for v in source.iter_recorded() {
            record_clamped(target, v.value_iterated_to(), v.count_at_value());
        }
    }
}

impl LatencyHistogram {
    /// An empty histogram (allocates nothing until the first record).
    pub fn new() -> Self {
        LatencyHistogram {
            store: Store::Empty,
        }
    }

    /// The dense form of whatever is recorded (a fresh histogram when empty), leaving `self`
    /// empty; the caller puts it back.
    fn take_dense(&mut self) -> Histogram<u64> {
        match std::mem::take(&mut self.store) {
            Store::Dense(h) => h,
            Store::Empty => growing_histogram(),
            Store::Sparse(s) => {
                let mut h = growing_histogram();
                s.add_to(&mut h);
                h
            }
        }
    }

    /// Adds everything recorded here into `target`.
    fn add_to(&self, target: &mut Histogram<u64>) {
        match &self.store {
            Store::Empty => {}
            Store::Dense(h) => add_clamped(target, h),
            Store::Sparse(s) => s.add_to(target),
        }
    }

    /// Records one latency in µs. 0 is recorded as 0 (a sub-microsecond completion has its own
    /// bucket below the 1 µs resolution); values above one hour are clamped to one hour.
    pub fn record_us(&mut self, us: u64) {
        if let Store::Dense(h) = &mut self.store {
            record_clamped(h, us, 1);
            return;
        }
        let mut h = self.take_dense();
        record_clamped(&mut h, us, 1);
        self.store = Store::Dense(h);
    }

    /// Records one latency, truncated to whole microseconds.
    pub fn record_duration(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Adds every count of `other` (exact: bucket counts add up).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        if other.count() == 0 {
            return;
        }
        match &mut self.store {
            Store::Dense(mine) => other.add_to(mine),
            Store::Empty => {
                let mut mine = growing_histogram();
                other.add_to(&mut mine);
                self.store = Store::Dense(mine);
            }
            Store::Sparse(_) => {
                let mut mine = self.take_dense();
                other.add_to(&mut mine);
                self.store = Store::Dense(mine);
            }
        }
    }

    /// Keeps only the non-empty buckets (see the type's documentation): for a histogram that
    /// is finished. Reads answer the same; a later record or merge makes it dense again.
    pub fn compact(&mut self) {
        if let Store::Dense(h) = &self.store {
            self.store = if h.is_empty() {
                Store::Empty
            } else {
                Store::Sparse(SparseBuckets::of(h))
            };
        }
    }

    /// Whether the histogram is in its compact form (or empty).
    pub fn is_compact(&self) -> bool {
        !matches!(self.store, Store::Dense(_))
    }

    /// (bucket value, count) of every non-empty bucket, in value order.
    fn buckets(&self) -> Box<dyn Iterator<Item = (u64, u64)> + '_> {
        match &self.store {
            Store::Empty => Box::new(std::iter::empty()),
            Store::Dense(h) => Box::new(
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value())),
            ),
            Store::Sparse(s) => Box::new(s.buckets.iter().copied()),
        }
    }

    /// Number of recorded latencies.
    pub fn count(&self) -> u64 {
        match &self.store {
            Store::Empty => 0,
            Store::Dense(h) => h.len(),
            Store::Sparse(s) => s.count,
        }
    }

    /// The latency at quantile `q` (0.0 ..= 1.0, clamped; NaN reads as 0), µs; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        match &self.store {
            _ if self.count() == 0 => 0,
            Store::Dense(h) => h.value_at_quantile(q),
            Store::Sparse(s) => s.value_at_quantile(q),
            Store::Empty => 0,
        }
    }

    /// Largest recorded latency (highest value of its bucket), µs; 0 when empty.
    pub fn max_us(&self) -> u64 {
        match &self.store {
            _ if self.count() == 0 => 0,
            Store::Dense(h) => h.max(),
            Store::Sparse(s) => s
                .buckets
                .last()
                .map_or(0, |&(v, _)| LAYOUT.highest_equivalent(v)),
            Store::Empty => 0,
        }
    }

    /// Smallest recorded latency (lowest value of its bucket), µs; 0 when empty.
    pub fn min_us(&self) -> u64 {
        match &self.store {
            _ if self.count() == 0 => 0,
            Store::Dense(h) => h.min(),
            Store::Sparse(s) => s
                .buckets
                .first()
                .map_or(0, |&(v, _)| LAYOUT.lowest_equivalent(v)),
            Store::Empty => 0,
        }
    }

    /// Mean latency, µs; 0 when empty.
    pub fn mean_us(&self) -> f64 {
        match &self.store {
            _ if self.count() == 0 => 0.0,
            Store::Dense(h) => h.mean(),
            Store::Sparse(s) => s.mean(),
            Store::Empty => 0.0,
        }
    }

    /// HdrHistogram V2 + DEFLATE encoding, readable by every HdrHistogram implementation.
    pub fn to_bytes(&self) -> Vec<u8> {
        let dense;
        let h = match &self.store {
            Store::Dense(h) => h,
            Store::Empty | Store::Sparse(_) => {
                dense = {
                    let mut h = growing_histogram();
                    self.add_to(&mut h);
                    h
                };
                &dense
            }
        };
        let mut buf = Vec::new();
        if V2DeflateSerializer::new().serialize(h, &mut buf).is_ok() {
            return buf;
        }
        // Serialising into a Vec only fails on a count above i64::MAX; the uncompressed form
        // reports the same, and an empty encoding (an empty histogram) is the last resort so
        // that producing a snapshot never fails.
        buf.clear();
        if V2Serializer::new().serialize(h, &mut buf).is_ok() {
            return buf;
        }
        Vec::new()
    }

    /// Decodes [`to_bytes`](Self::to_bytes) output (compressed or plain V2) into the compact
    /// form (decoded histograms are kept, not recorded into). Empty input is an empty
    /// histogram, as a protobuf `bytes` field left unset. Values above one hour are clamped to
    /// it.
    pub fn from_bytes(b: &[u8]) -> Result<Self, MetricsError> {
        if b.is_empty() {
            return Ok(Self::new());
        }
        let plain = v2_plain(b)?;
        check_v2_header(&plain)?;
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut plain.as_slice())
            .map_err(|e| MetricsError::Histogram(e.to_string()))?;
        let mut h = growing_histogram();
        add_clamped(&mut h, &decoded);
        let mut out = LatencyHistogram {
            store: Store::Dense(h),
        };
        out.compact();
        Ok(out)
    }

    /// Forgets every recorded latency (a dense histogram keeps its storage for reuse).
    pub fn reset(&mut self) {
        match &mut self.store {
            Store::Dense(h) => h.reset(),
            _ => self.store = Store::Empty,
        }
    }
}

/// Reads a big-endian u32 at `at`, if the bytes are there.
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// The uncompressed V2 encoding inside `b`, inflated with a size bound.
fn v2_plain(b: &[u8]) -> Result<Vec<u8>, MetricsError> {
    let bad = |why: &str| MetricsError::Histogram(why.to_string());
    match be_u32(b, 0) {
        Some(V2_COOKIE) => Ok(b.to_vec()),
        Some(V2_DEFLATE_COOKIE) => {
            let len = be_u32(b, 4).ok_or_else(|| bad("truncated header"))? as usize;
            let compressed = b
                .get(8..)
                .and_then(|rest| rest.get(..len))
                .ok_or_else(|| bad("truncated compressed payload"))?;
            let mut plain = Vec::new();
            flate2::read::ZlibDecoder::new(compressed)
                .take(MAX_DECODED_LEN as u64 + 1)
                .read_to_end(&mut plain)
                .map_err(|e| MetricsError::Histogram(format!("corrupt DEFLATE payload: {e}")))?;
            if plain.len() > MAX_DECODED_LEN {
                return Err(bad("decoded payload larger than any latency histogram"));
            }
            Ok(plain)
        }
        Some(c) => Err(MetricsError::Histogram(format!(
            "unknown encoding cookie {c:#010x} (expected HdrHistogram V2)"
        ))),
        None => Err(bad("shorter than a cookie")),
    }
}

/// Refuses V2 headers whose claims would make the decoder allocate far more than the input
/// holds: the payload must be present and the precision at most ours.
fn check_v2_header(plain: &[u8]) -> Result<(), MetricsError> {
    let bad = |why: &str| Err(MetricsError::Histogram(why.to_string()));
    if plain.len() < V2_HEADER_LEN {
        return bad("truncated header");
    }
    let payload = be_u32(plain, 4).map_or(usize::MAX, |n| n as usize);
    if payload > plain.len() - V2_HEADER_LEN {
        return bad("payload length beyond the end of the data");
    }
    let digits = be_u32(plain, 12).unwrap_or(u32::MAX);
    if digits > u32::from(SIGNIFICANT_DIGITS) {
        return Err(MetricsError::Histogram(format!(
            "{digits} significant digits (at most {SIGNIFICANT_DIGITS} accepted)"
        )));
    }
    Ok(())
}

impl PartialEq for LatencyHistogram {
    /// Equal when every bucket holds the same count.
    fn eq(&self, other: &Self) -> bool {
        self.count() == other.count() && self.buckets().eq(other.buckets())
    }
}

impl Serialize for LatencyHistogram {
    /// A base64 string of [`LatencyHistogram::to_bytes`], so result.json carries histograms.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for LatencyHistogram {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = BASE64
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(MetricsError::from(e)))?;
        LatencyHistogram::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Count and first example of one failure kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FailureCount {
    /// Failures of this kind.
    pub count: u64,
    /// The first message seen, at most 300 characters.
    pub example: String,
}

/// One operation's measurements over a window (a stage, a stage's ramp, or one second).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OpWindow {
    /// Completed requests, successes + failures.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Query vectors in successful requests (a batch search of nq=5 is 1 request, 5 queries).
    pub queries: u64,
    /// Latency of successful requests, µs.
    pub latency: LatencyHistogram,
    /// Latency of failed requests, µs.
    pub failure_latency: LatencyHistogram,
    /// Failures by kind label, with the first example message.
    pub failures_by_kind: BTreeMap<String, FailureCount>,
    /// Sum of recall@k over searches that had ground truth.
    pub recall_sum: f64,
    /// Searches whose recall was measured.
    pub recall_samples: u64,
    /// Open model: requests sent later than intended (their latency counts from the intended time).
    pub late: u64,
    /// Open model: requests that could not be sent at all (in-flight bound reached).
    pub dropped: u64,
}

/// `message` cut to [`EXAMPLE_CHARS`] characters (not bytes, so UTF-8 stays whole), the cut
/// marked with an ellipsis.
fn truncate_example(message: &str) -> String {
    if message.chars().nth(EXAMPLE_CHARS).is_none() {
        return message.to_string();
    }
    let mut s: String = message.chars().take(EXAMPLE_CHARS - 1).collect();
    s.push('…');
    s
}

impl OpWindow {
    /// Records a successful request of `queries` query vectors.
    pub fn record_success(&mut self, latency_us: u64, queries: u64) {
        self.requests = self.requests.saturating_add(1);
        self.queries = self.queries.saturating_add(queries);
        self.latency.record_us(latency_us);
    }

    /// Records a failed request; the first message of each kind is kept (≤ 300 characters).
    pub fn record_failure(&mut self, latency_us: u64, kind: &str, message: &str) {
        self.requests = self.requests.saturating_add(1);
        self.failures = self.failures.saturating_add(1);
        self.failure_latency.record_us(latency_us);
        match self.failures_by_kind.get_mut(kind) {
            Some(f) => f.count = f.count.saturating_add(1),
            None => {
                self.failures_by_kind.insert(
                    kind.to_string(),
                    FailureCount {
                        count: 1,
                        example: truncate_example(message),
                    },
                );
            }
        }
    }

    /// Records the recall@k of one search; a non-finite value is ignored so that one bad
    /// computation cannot turn the mean into NaN.
    pub fn record_recall(&mut self, recall: f64) {
        if recall.is_finite() {
            self.recall_sum += recall;
            self.recall_samples = self.recall_samples.saturating_add(1);
        }
    }

    /// Adds `other` (exact); a failure kind already present keeps its example.
    pub fn merge(&mut self, other: &OpWindow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        self.queries = self.queries.saturating_add(other.queries);
        self.latency.merge(&other.latency);
        self.failure_latency.merge(&other.failure_latency);
        for (kind, f) in &other.failures_by_kind {
            match self.failures_by_kind.get_mut(kind) {
                Some(mine) => mine.count = mine.count.saturating_add(f.count),
                None => {
                    self.failures_by_kind.insert(kind.clone(), f.clone());
                }
            }
        }
        self.recall_sum += other.recall_sum;
        self.recall_samples = self.recall_samples.saturating_add(other.recall_samples);
        self.late = self.late.saturating_add(other.late);
        self.dropped = self.dropped.saturating_add(other.dropped);
    }

    /// Mean recall@k, when any was measured.
    pub fn recall(&self) -> Option<f64> {
        (self.recall_samples > 0).then(|| self.recall_sum / self.recall_samples as f64)
    }
}

/// All operations of a window, by operation name, plus samples of the requests in flight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Window {
    /// Per operation name.
    pub ops: BTreeMap<String, OpWindow>,
    /// Sum of the sampled numbers of requests in flight.
    pub in_flight_sum: u64,
    /// Number of in-flight samples (per shard; see [`Window::merge`]).
    pub in_flight_samples: u64,
    /// Most requests seen in flight by one sample (summed over shards; see [`Window::merge`]).
    pub in_flight_max: u64,
    /// Users (closed model) or target rate (open model) at the end of the window, summed over
    /// shards.
    pub users: u64,
}

impl Window {
    /// The window of operation `name`, created empty on first use.
    pub fn op_mut(&mut self, name: &str) -> &mut OpWindow {
        // Looked up by &str first: this runs on every request, and `entry` would allocate the
        // key each time.
        if self.ops.contains_key(name) {
            match self.ops.get_mut(name) {
                Some(op) => op,
                // contains_key just said yes. Returning a leaked scratch window keeps this path
                // panic-free; the borrow checker (no Polonius yet) rejects falling through to
                // `entry` after a conditional return of a `get_mut` borrow.
                None => Box::leak(Box::default()),
            }
        } else {
            self.ops.entry(name.to_string()).or_default()
        }
    }

    /// Merges `other`, a window of another shard over the same interval.
    ///
    /// Operations merge per name and users add up. In-flight figures become fleet totals, to be
    /// read next to the fleet's users: sums add, the sample count is the larger one (shards
    /// sample on the same period over the same synchronised interval, so
    /// sum / samples is the mean of the fleet's requests in flight), and maxima add (an upper
    /// bound: the shards' peaks need not coincide; taking the larger one would report a fleet
    /// maximum below the fleet mean). Not meant for joining consecutive windows of one shard.
    pub fn merge(&mut self, other: &Window) {
        for (name, op) in &other.ops {
            self.op_mut(name).merge(op);
        }
        self.in_flight_sum = self.in_flight_sum.saturating_add(other.in_flight_sum);
        self.in_flight_samples = self.in_flight_samples.max(other.in_flight_samples);
        self.in_flight_max = self.in_flight_max.saturating_add(other.in_flight_max);
        self.users = self.users.saturating_add(other.users);
    }

    /// Compacts every histogram of the window (see [`LatencyHistogram::compact`]): for a
    /// window that is finished, such as a past second.
    pub fn compact(&mut self) {
        for op in self.ops.values_mut() {
            op.latency.compact();
            op.failure_latency.compact();
        }
    }

    /// All operations merged into one.
    pub fn total(&self) -> OpWindow {
        let mut all = OpWindow::default();
        for op in self.ops.values() {
            all.merge(op);
        }
        all
    }

    /// Records one sample of the number of requests in flight.
    pub fn sample_in_flight(&mut self, n: u64) {
        self.in_flight_sum = self.in_flight_sum.saturating_add(n);
        self.in_flight_samples = self.in_flight_samples.saturating_add(1);
        self.in_flight_max = self.in_flight_max.max(n);
    }

    /// Mean number of requests in flight; 0 without samples.
    pub fn in_flight_mean(&self) -> f64 {
        if self.in_flight_samples == 0 {
            0.0
        } else {
            self.in_flight_sum as f64 / self.in_flight_samples as f64
        }
    }
}

/// One stage as measured: its ramp and its steady state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StageMeasurement {
    /// Stage index, from 0.
    pub stage: usize,
    /// While users were being started (closed model).
    pub ramp: Window,
    /// After the ramp, until the stage ended.
    pub steady: Window,
    /// Wall time of the ramp, s.
    pub ramp_seconds: f64,
    /// Wall time of the steady state, s.
    pub steady_seconds: f64,
    /// The stage ran to its end.
    pub complete: bool,
}

/// One second of the timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecondSample {
    /// Seconds since the test start.
    pub second: u64,
    /// Stage running in that second.
    pub stage: usize,
    /// What completed in that second.
    pub window: Window,
}

/// Load generator CPU use over one second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CpuSample {
    /// Seconds since the test start.
    pub second: u64,
    /// Stage running in that second.
    pub stage: usize,
    /// Cores busy.
    pub cores_used: f64,
    /// Cores the generator may use.
    pub cores_available: f64,
}

/// A worker's cumulative measurements, or the merge of several workers'.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Snapshot {
    /// This worker's shard index (0 in a merge).
    pub shard: u32,
    /// Number of shards (in a merge: how many snapshots went into it).
    pub shards: u32,
    /// Per stage.
    pub stages: Vec<StageMeasurement>,
    /// Per second since the test start.
    pub seconds: Vec<SecondSample>,
    /// Load generator CPU, per second.
    pub client_cpu: Vec<CpuSample>,
}

/// Merges worker snapshots exactly: stages by `stage` (windows merged, seconds the max over
/// shards, complete only if every snapshot has the stage complete), seconds by `second`
/// (windows merged), CPU samples by second (cores summed over shards).
pub fn merge_snapshots(snaps: &[Snapshot]) -> Snapshot {
    let mut stages: BTreeMap<usize, StageMeasurement> = BTreeMap::new();
    let mut by_second: BTreeMap<u64, Vec<&SecondSample>> = BTreeMap::new();
    let mut cpu: BTreeMap<u64, CpuSample> = BTreeMap::new();
    // Snapshots in which each stage is present and complete: a stage a worker never reached
    // or lost is incomplete, rather than silently measured with fewer workers.
    let mut complete_in: BTreeMap<usize, usize> = BTreeMap::new();

    for snap in snaps {
        let mut own: BTreeMap<usize, bool> = BTreeMap::new();
        for m in &snap.stages {
            let merged = stages.entry(m.stage).or_insert_with(|| StageMeasurement {
                stage: m.stage,
                ..StageMeasurement::default()
            });
            merged.ramp.merge(&m.ramp);
            merged.steady.merge(&m.steady);
            merged.ramp_seconds = merged.ramp_seconds.max(m.ramp_seconds);
            merged.steady_seconds = merged.steady_seconds.max(m.steady_seconds);
            *own.entry(m.stage).or_insert(true) &= m.complete;
        }
        for (stage, complete) in own {
            if complete {
                *complete_in.entry(stage).or_insert(0) += 1;
            }
        }

        for s in &snap.seconds {
            by_second.entry(s.second).or_default().push(s);
        }

        for c in shard_cpu_by_second(&snap.client_cpu) {
            let merged = cpu.entry(c.second).or_insert_with(|| CpuSample {
                second: c.second,
                stage: c.stage,
                cores_used: 0.0,
                cores_available: 0.0,
            });
            merged.stage = merged.stage.max(c.stage);
            merged.cores_used += c.cores_used;
            merged.cores_available += c.cores_available;
        }
    }

    for (index, m) in &mut stages {
        m.complete = complete_in.get(index).copied().unwrap_or(0) == snaps.len();
    }
    // One second at a time, compacted as soon as it is merged: a long test's timeline never
    // holds dense histograms for all its seconds at once.
    let seconds: Vec<SecondSample> = by_second
        .into_iter()
        .map(|(second, parts)| {
            let mut merged = SecondSample {
                second,
                stage: 0,
                window: Window::default(),
            };
            for s in parts {
                // Shards agree on the stage of a second except at a boundary; the later one
                // wins.
                merged.stage = merged.stage.max(s.stage);
                merged.window.merge(&s.window);
            }
            merged.window.compact();
            merged
        })
        .collect();
    Snapshot {
        shard: 0,
        shards: u32::try_from(snaps.len()).unwrap_or(u32::MAX),
        stages: stages.into_values().collect(),
        seconds,
        client_cpu: cpu.into_values().collect(),
    }
}

/// One shard's CPU samples with at most one per second: a sampler whose ticks drift can land
/// twice in a second, and cores are a rate, so duplicates are averaged, not added.
fn shard_cpu_by_second(samples: &[CpuSample]) -> Vec<CpuSample> {
    let mut by_second: BTreeMap<u64, (CpuSample, u32)> = BTreeMap::new();
    for c in samples {
        match by_second.get_mut(&c.second) {
            Some((acc, n)) => {
                acc.stage = acc.stage.max(c.stage);
                acc.cores_used += c.cores_used;
                acc.cores_available += c.cores_available;
                *n = n.saturating_add(1);
            }
            None => {
                by_second.insert(c.second, (c.clone(), 1));
            }
        }
    }
    by_second
        .into_values()
        .map(|(mut c, n)| {
            if n > 1 {
                c.cores_used /= f64::from(n);
                c.cores_available /= f64::from(n);
            }
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    const QUANTILES: [f64; 12] = [
        0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0,
    ];

    /// The histogram's dense storage (built from its buckets when compact).
    fn dense_of(h: &LatencyHistogram) -> Histogram<u64> {
        match &h.store {
            Store::Dense(d) => d.clone(),
            _ => {
                let mut d = growing_histogram();
                h.add_to(&mut d);
                d
            }
        }
    }

    /// A latency drawn from a mix of fast, slow, zero and beyond-range values.
    fn random_latency(rng: &mut SmallRng) -> u64 {
        match rng.random_range(0..10) {
            0 => 0,
            1 => rng.random_range(HIGHEST_US..HIGHEST_US * 3),
            2 => rng.random_range(1..100),
            3..=6 => rng.random_range(500..50_000),
            _ => rng.random_range(50_000..20_000_000),
        }
    }

    fn histogram_of(samples: &[u64]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for &s in samples {
            h.record_us(s);
        }
        h
    }

    #[test]
    fn a_new_histogram_allocates_nothing_and_reads_zero() {
        let g = growing_histogram();
        assert_eq!(g.low(), 1);
        assert_eq!(g.sigfig(), 3);
        let h = LatencyHistogram::new();
        assert!(matches!(h.store, Store::Empty));
        assert_eq!(h.count(), 0);
        assert_eq!(h.quantile_us(0.5), 0);
        assert_eq!(h.max_us(), 0);
        assert_eq!(h.min_us(), 0);
        assert_eq!(h.mean_us(), 0.0);
    }

    #[test]
    fn zero_and_values_beyond_an_hour_are_recorded_and_counted() {
        let mut h = LatencyHistogram::new();
        h.record_us(0);
        h.record_us(u64::MAX);
        h.record_duration(Duration::from_secs(10 * 3600));
        h.record_duration(Duration::from_micros(1500));
        assert_eq!(h.count(), 4);
        assert_eq!(h.min_us(), 0);
        assert_eq!(h.quantile_us(0.25), 0);
        assert_eq!(h.quantile_us(0.5), 1500);
        assert_eq!(
            h.max_us(),
            growing_histogram().highest_equivalent(HIGHEST_US)
        );
        assert_eq!(h.max_us(), 3_600_809_983);
        // Clamped before growing: storage stops at one hour.
        assert!(dense_of(&h).high() < 2 * HIGHEST_US);
        assert_eq!(h.quantile_us(f64::NAN), 0);
        assert_eq!(h.quantile_us(7.0), h.max_us());
        assert_eq!(h.quantile_us(-1.0), 0);
    }

    #[test]
    fn merging_random_shards_equals_one_histogram_of_all_samples() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        for case in 0..300 {
            let n = rng.random_range(0..3000);
            let shards = rng.random_range(1..7);
            let samples: Vec<u64> = (0..n).map(|_| random_latency(&mut rng)).collect();
            let mut parts = vec![LatencyHistogram::new(); shards];
            for &s in &samples {
                let i = rng.random_range(0..shards);
                parts[i].record_us(s);
            }
            let mut merged = LatencyHistogram::new();
            // Merge in a random order: the result must not depend on it.
            while !parts.is_empty() {
                let i = rng.random_range(0..parts.len());
                merged.merge(&parts.swap_remove(i));
            }
            let all = histogram_of(&samples);
            assert_eq!(merged.count(), n as u64, "case {case}");
            assert_eq!(merged.count(), all.count(), "case {case}");
            for q in QUANTILES {
                assert_eq!(
                    merged.quantile_us(q),
                    all.quantile_us(q),
                    "case {case} q {q}"
                );
            }
            assert_eq!(merged.max_us(), all.max_us(), "case {case}");
            assert_eq!(merged.min_us(), all.min_us(), "case {case}");
            assert_eq!(merged.mean_us(), all.mean_us(), "case {case}");
            assert_eq!(merged, all, "case {case}");
        }
    }

    #[test]
    fn histograms_survive_bytes_and_json_round_trips() {
        let mut rng = SmallRng::seed_from_u64(7);
        for n in [0usize, 1, 10, 5000] {
            let samples: Vec<u64> = (0..n).map(|_| random_latency(&mut rng)).collect();
            let h = histogram_of(&samples);
            let bytes = h.to_bytes();
            assert_eq!(&bytes[..4], &V2_DEFLATE_COOKIE.to_be_bytes());
            let back = LatencyHistogram::from_bytes(&bytes).unwrap();
            assert_eq!(back, h);
            assert_eq!(back.max_us(), h.max_us());
            assert_eq!(back.quantile_us(0.99), h.quantile_us(0.99));

            let json = serde_json::to_string(&h).unwrap();
            assert!(json.starts_with('"'), "{json}");
            let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
            assert_eq!(back, h);
        }
    }

    #[test]
    fn plain_v2_and_empty_bytes_decode() {
        let h = histogram_of(&[3, 40, 500, 6000]);
        let mut plain = Vec::new();
        V2Serializer::new()
            .serialize(&dense_of(&h), &mut plain)
            .unwrap();
        assert_eq!(LatencyHistogram::from_bytes(&plain).unwrap(), h);
        assert_eq!(
            LatencyHistogram::from_bytes(&[]).unwrap(),
            LatencyHistogram::new()
        );
    }

    #[test]
    fn a_histogram_of_another_range_is_clamped_into_ours() {
        let mut wide = Histogram::<u64>::new_with_bounds(1, HIGHEST_US * 100, 2).unwrap();
        wide.record(HIGHEST_US * 50).unwrap();
        wide.record(1000).unwrap();
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&wide, &mut bytes)
            .unwrap();
        let h = LatencyHistogram::from_bytes(&bytes).unwrap();
        assert_eq!(h.count(), 2);
        assert_eq!(
            h.max_us(),
            growing_histogram().highest_equivalent(HIGHEST_US)
        );
        assert!(dense_of(&h).high() < 2 * HIGHEST_US);
        // 1000 was quantised by the source's 2 digits; our 3 digits keep that bucket's value.
        assert_eq!(h.min_us(), wide.highest_equivalent(1000));
        assert_eq!(h.min_us(), 1003);
    }

    #[test]
    fn garbage_and_truncated_bytes_are_errors_not_panics() {
        let good = histogram_of(&[1, 2, 3, 1000, 100_000]).to_bytes();
        for end in 0..good.len() {
            // Every strict prefix except the empty one is malformed.
            let r = LatencyHistogram::from_bytes(&good[..end]);
            assert_eq!(r.is_ok(), end == 0, "prefix of {end} bytes");
        }
        let mut rng = SmallRng::seed_from_u64(99);
        for _ in 0..2000 {
            let len = rng.random_range(1..80);
            let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if rng.random_bool(0.5) {
                b[..4.min(len)].copy_from_slice(&V2_COOKIE.to_be_bytes()[..4.min(len)]);
            }
            let _ = LatencyHistogram::from_bytes(&b);
        }
        // Mutated valid encodings reach deep into the decoder: errors or clamped values only.
        let plain_of = |h: &LatencyHistogram| {
            let mut b = Vec::new();
            V2Serializer::new().serialize(&dense_of(h), &mut b).unwrap();
            b
        };
        let samples: Vec<u64> = (0..500).map(|_| random_latency(&mut rng)).collect();
        let sources = [
            plain_of(&histogram_of(&samples)),
            histogram_of(&samples).to_bytes(),
        ];
        for _ in 0..5_000 {
            let mut b = sources[rng.random_range(0..2)].clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            if let Ok(h) = LatencyHistogram::from_bytes(&b) {
                assert!(h.max_us() <= growing_histogram().highest_equivalent(HIGHEST_US));
            }
        }
        // A plain header claiming a 4 GiB payload is refused before anything is allocated.
        let mut huge = Vec::new();
        huge.extend_from_slice(&V2_COOKIE.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 32]);
        let err = LatencyHistogram::from_bytes(&huge).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot decode latency histogram: payload length beyond the end of the data"
        );
        let err = serde_json::from_str::<LatencyHistogram>("\"not base64!\"").unwrap_err();
        assert!(err.to_string().contains("invalid base64"), "{err}");
    }

    #[test]
    fn storage_grows_only_with_the_largest_latency() {
        let mut h = LatencyHistogram::new();
        for us in [150, 2_000, 35_000, 99_999] {
            h.record_us(us);
        }
        // 8 × 1024 counters cover 100 ms, a third of what a fixed one-hour range needs.
        let Store::Dense(dense) = &h.store else {
            panic!("a histogram being recorded into is dense")
        };
        assert_eq!(dense.distinct_values(), 8 * 1024);
        let fixed = Histogram::<u64>::new_with_bounds(1, HIGHEST_US, 3).unwrap();
        assert_eq!(fixed.distinct_values(), 23 * 1024);
        let mut merged = LatencyHistogram::new();
        merged.merge(&histogram_of(&[5]));
        merged.merge(&h);
        assert_eq!(merged.count(), 5);
        assert_eq!(merged.max_us(), h.max_us());
    }

    /// Every read of `a` and `b` agrees (bit for bit for the mean).
    fn assert_reads_equal(a: &LatencyHistogram, b: &LatencyHistogram) {
        assert_eq!(a.count(), b.count());
        for q in QUANTILES {
            assert_eq!(a.quantile_us(q), b.quantile_us(q), "quantile {q}");
        }
        assert_eq!(a.min_us(), b.min_us());
        assert_eq!(a.max_us(), b.max_us());
        assert_eq!(a.mean_us().to_bits(), b.mean_us().to_bits());
        assert_eq!(a, b);
        assert_eq!(
            LatencyHistogram::from_bytes(&a.to_bytes()).unwrap(),
            LatencyHistogram::from_bytes(&b.to_bytes()).unwrap()
        );
    }

    #[test]
    fn a_compacted_histogram_answers_every_read_exactly_as_the_dense_one() {
        let mut rng = SmallRng::seed_from_u64(11);
        for n in [1usize, 2, 7, 100, 5_000] {
            let samples: Vec<u64> = (0..n).map(|_| random_latency(&mut rng)).collect();
            let dense = histogram_of(&samples);
            let mut compact = dense.clone();
            compact.compact();
            assert!(compact.is_compact() && !dense.is_compact());
            assert_reads_equal(&compact, &dense);
        }
        let mut only_zero = histogram_of(&[0, 0]);
        only_zero.compact();
        assert_eq!((only_zero.min_us(), only_zero.max_us()), (0, 0));
        let mut empty = LatencyHistogram::new();
        empty.compact();
        assert_reads_equal(&empty, &LatencyHistogram::new());
    }

    #[test]
    fn recording_and_merging_into_a_compacted_histogram_equals_the_dense_result() {
        let mut rng = SmallRng::seed_from_u64(12);
        let first: Vec<u64> = (0..300).map(|_| random_latency(&mut rng)).collect();
        let second: Vec<u64> = (0..300).map(|_| random_latency(&mut rng)).collect();
        let all: Vec<u64> = first.iter().chain(&second).copied().collect();

        let mut recorded = histogram_of(&first);
        recorded.compact();
        for &us in &second {
            recorded.record_us(us);
        }
        assert!(!recorded.is_compact());
        assert_reads_equal(&recorded, &histogram_of(&all));

        // Compact into dense, dense into compact, compact into compact and into empty.
        let mut a = histogram_of(&first);
        let mut b = histogram_of(&second);
        b.compact();
        a.merge(&b);
        assert_reads_equal(&a, &histogram_of(&all));
        let mut c = histogram_of(&first);
        c.compact();
        c.merge(&histogram_of(&second));
        assert_reads_equal(&c, &histogram_of(&all));
        let mut d = histogram_of(&first);
        d.compact();
        d.merge(&b);
        assert_reads_equal(&d, &histogram_of(&all));
        let mut e = LatencyHistogram::new();
        e.merge(&b);
        assert_reads_equal(&e, &histogram_of(&second));
        let mut f = histogram_of(&first);
        f.compact();
        f.reset();
        assert_eq!(f.count(), 0);
    }

    #[test]
    fn decoded_histograms_are_compact_and_far_smaller_than_dense_ones() {
        let h = histogram_of(&[150, 2_000, 35_000, 99_999]);
        let back = LatencyHistogram::from_bytes(&h.to_bytes()).unwrap();
        assert!(back.is_compact());
        assert_reads_equal(&back, &h);
        let Store::Sparse(s) = &back.store else {
            panic!("decoded into the compact form")
        };
        // 4 buckets of 16 bytes instead of 8 × 1024 counters of 8 bytes.
        assert_eq!(s.buckets.len(), 4);
    }

    #[test]
    fn reset_forgets_everything() {
        let mut h = histogram_of(&[5, 6, 7]);
        h.reset();
        assert_eq!(h, LatencyHistogram::new());
        assert_eq!(h.count(), 0);
        assert_eq!(h.max_us(), 0);
    }

    #[test]
    fn op_window_merge_adds_counts_and_keeps_the_first_failure_example() {
        let mut a = OpWindow::default();
        a.record_success(1000, 1);
        a.record_success(2000, 5);
        a.record_failure(300, "timeout", "deadline exceeded after 10s");
        a.record_failure(400, "timeout", "second message");
        a.record_recall(0.5);
        a.late = 2;
        let mut b = OpWindow::default();
        b.record_success(1500, 1);
        b.record_failure(500, "timeout", "a later example");
        b.record_failure(600, "grpc:UNAVAILABLE", "connection refused");
        b.record_recall(1.0);
        b.record_recall(f64::NAN);
        b.dropped = 3;

        a.merge(&b);
        assert_eq!(a.requests, 7);
        assert_eq!(a.failures, 4);
        assert_eq!(a.queries, 7);
        assert_eq!(a.latency.count(), 3);
        assert_eq!(a.latency.max_us(), 2000);
        assert_eq!(a.failure_latency.count(), 4);
        assert_eq!(
            a.failures_by_kind["timeout"],
            FailureCount {
                count: 3,
                example: "deadline exceeded after 10s".into()
            }
        );
        assert_eq!(
            a.failures_by_kind["grpc:UNAVAILABLE"],
            FailureCount {
                count: 1,
                example: "connection refused".into()
            }
        );
        assert_eq!(a.recall_samples, 2);
        assert_eq!(a.recall(), Some(0.75));
        assert_eq!(a.late, 2);
        assert_eq!(a.dropped, 3);
        assert_eq!(OpWindow::default().recall(), None);
    }

    #[test]
    fn failure_examples_are_cut_to_300_characters() {
        let mut w = OpWindow::default();
        let long = "é".repeat(1000);
        w.record_failure(1, "server", &long);
        let example = &w.failures_by_kind["server"].example;
        assert_eq!(example.chars().count(), 300);
        assert!(example.ends_with('…'));
        let exact = "x".repeat(300);
        w.record_failure(1, "exact", &exact);
        assert_eq!(w.failures_by_kind["exact"].example, exact);
    }

    #[test]
    fn window_merge_merges_ops_and_adds_fleet_in_flight_and_users() {
        let mut a = Window::default();
        a.op_mut("search").record_success(100, 1);
        a.sample_in_flight(10);
        a.sample_in_flight(20);
        a.users = 25;
        let mut b = Window::default();
        b.op_mut("search").record_success(200, 1);
        b.op_mut("query").record_failure(50, "timeout", "slow");
        b.sample_in_flight(30);
        b.sample_in_flight(10);
        b.users = 25;

        a.merge(&b);
        assert_eq!(a.ops.len(), 2);
        assert_eq!(a.ops["search"].requests, 2);
        assert_eq!(a.ops["query"].failures, 1);
        assert_eq!(a.in_flight_sum, 70);
        assert_eq!(a.in_flight_samples, 2);
        assert_eq!(a.in_flight_mean(), 35.0);
        assert_eq!(a.in_flight_max, 50);
        assert_eq!(a.users, 50);
        let t = a.total();
        assert_eq!(t.requests, 3);
        assert_eq!(t.failures, 1);
        assert_eq!(t.latency.count(), 2);
        assert_eq!(Window::default().in_flight_mean(), 0.0);
    }

    /// What one shard does in one tick of the synthetic test below.
    fn record_event(w: &mut Window, rng: &mut SmallRng, ops: &[&str]) {
        let op = ops[rng.random_range(0..ops.len())];
        let o = w.op_mut(op);
        match rng.random_range(0..10) {
            0 => o.record_failure(random_latency(rng), "timeout", "deadline exceeded"),
            1 => o.record_failure(random_latency(rng), "grpc:UNAVAILABLE", "refused"),
            2 => o.late += 1,
            3 => o.dropped += 1,
            _ => {
                o.record_success(random_latency(rng), rng.random_range(1..6));
                // Multiples of 1/8 add exactly in any order.
                o.record_recall(f64::from(rng.random_range(0..=8u32)) / 8.0);
            }
        }
    }

    #[test]
    fn merge_snapshots_of_three_shards_equals_recording_everything_in_one() {
        let mut rng = SmallRng::seed_from_u64(3);
        let ops = ["search_vector", "search_with_filter", "batch_search"];
        let n_stages = 3;
        let mut shards: Vec<Snapshot> = (0..3)
            .map(|i| Snapshot {
                shard: i,
                shards: 3,
                ..Snapshot::default()
            })
            .collect();
        let mut one = Snapshot {
            shard: 0,
            shards: 3,
            ..Snapshot::default()
        };
        let mut second = 0u64;
        for stage in 0..n_stages {
            let mut all = StageMeasurement {
                stage,
                ramp_seconds: 5.0,
                steady_seconds: 60.0,
                complete: true,
                ..StageMeasurement::default()
            };
            let mut per: Vec<StageMeasurement> = (0..3)
                .map(|i| StageMeasurement {
                    stage,
                    ramp_seconds: 4.0 + f64::from(i as u32) / 2.0,
                    steady_seconds: 59.0 + f64::from(i as u32) / 2.0,
                    complete: true,
                    ..StageMeasurement::default()
                })
                .collect();
            for tick in 1..=20u64 {
                let mut sec_all = SecondSample {
                    second,
                    stage,
                    window: Window::default(),
                };
                let mut sec_per: Vec<Window> = vec![Window::default(); 3];
                let mut fleet_in_flight = 0;
                for (i, p) in per.iter_mut().enumerate() {
                    for _ in 0..rng.random_range(0..40) {
                        let mut ev = Window::default();
                        record_event(&mut ev, &mut rng, &ops);
                        let target = if tick <= 3 {
                            &mut p.ramp
                        } else {
                            &mut p.steady
                        };
                        target.merge(&ev);
                        sec_per[i].merge(&ev);
                        let whole = if tick <= 3 {
                            &mut all.ramp
                        } else {
                            &mut all.steady
                        };
                        whole.merge(&ev);
                        sec_all.window.merge(&ev);
                    }
                    // Every shard peaks at the last tick, so the fleet's peak is the sum of
                    // the shards' peaks, as the merge reports it.
                    let n = (i as u64 + 1) * tick;
                    fleet_in_flight += n;
                    let target = if tick <= 3 {
                        &mut p.ramp
                    } else {
                        &mut p.steady
                    };
                    target.sample_in_flight(n);
                    sec_per[i].sample_in_flight(n);
                }
                let whole = if tick <= 3 {
                    &mut all.ramp
                } else {
                    &mut all.steady
                };
                whole.sample_in_flight(fleet_in_flight);
                sec_all.window.sample_in_flight(fleet_in_flight);
                for (i, w) in sec_per.into_iter().enumerate() {
                    let mut w = w;
                    w.users = 10 * (stage as u64 + 1) + i as u64;
                    shards[i].seconds.push(SecondSample {
                        second,
                        stage,
                        window: w,
                    });
                    shards[i].client_cpu.push(CpuSample {
                        second,
                        stage,
                        cores_used: 0.25 * (i as f64 + 1.0),
                        cores_available: 2.0,
                    });
                }
                sec_all.window.users = 30 * (stage as u64 + 1) + 3;
                one.seconds.push(sec_all);
                one.client_cpu.push(CpuSample {
                    second,
                    stage,
                    cores_used: 1.5,
                    cores_available: 6.0,
                });
                second += 1;
            }
            for (i, p) in per.into_iter().enumerate() {
                let mut p = p;
                p.steady.users = 10 * (stage as u64 + 1) + i as u64;
                shards[i].stages.push(p);
            }
            all.steady.users = 30 * (stage as u64 + 1) + 3;
            one.stages.push(all);
        }

        let merged = merge_snapshots(&shards);
        assert_eq!(merged.stages.len(), 3);
        assert_eq!(merged.seconds.len(), 60);
        assert_eq!(merged, one);
        // The merged timeline is kept compact (exact all the same, as the equality says).
        assert!(merged.seconds.iter().all(|s| {
            s.window
                .ops
                .values()
                .all(|o| o.latency.is_compact() && o.failure_latency.is_compact())
        }));
        // The order of the shards does not matter, nor whether their seconds were compacted.
        shards.reverse();
        for shard in &mut shards {
            for s in shard.seconds.iter_mut().step_by(2) {
                s.window.compact();
            }
        }
        assert_eq!(merge_snapshots(&shards), one);
    }

    #[test]
    fn a_stage_incomplete_or_missing_in_one_shard_is_incomplete() {
        let stage = |i: usize, complete: bool| StageMeasurement {
            stage: i,
            complete,
            steady_seconds: 10.0,
            ..StageMeasurement::default()
        };
        let a = Snapshot {
            stages: vec![stage(0, true), stage(1, true), stage(2, true)],
            ..Snapshot::default()
        };
        let b = Snapshot {
            shard: 1,
            stages: vec![stage(0, true), stage(1, false)],
            ..Snapshot::default()
        };
        let merged = merge_snapshots(&[a, b]);
        let complete: Vec<bool> = merged.stages.iter().map(|m| m.complete).collect();
        assert_eq!(complete, vec![true, false, false]);
        assert_eq!(merged.shards, 2);
        assert_eq!(merge_snapshots(&[]), Snapshot::default());
    }

    #[test]
    fn duplicate_cpu_seconds_of_one_shard_are_averaged_then_shards_summed() {
        let cpu = |second, used| CpuSample {
            second,
            stage: 0,
            cores_used: used,
            cores_available: 2.0,
        };
        let a = Snapshot {
            client_cpu: vec![cpu(1, 1.0), cpu(1, 2.0), cpu(2, 1.0)],
            ..Snapshot::default()
        };
        let b = Snapshot {
            client_cpu: vec![cpu(1, 0.5)],
            ..Snapshot::default()
        };
        let merged = merge_snapshots(&[a, b]);
        let at_1 = CpuSample {
            cores_available: 4.0,
            ..cpu(1, 2.0)
        };
        assert_eq!(merged.client_cpu, vec![at_1, cpu(2, 1.0)]);
    }

    #[test]
    fn snapshots_survive_a_json_round_trip() {
        let mut w = Window::default();
        w.op_mut("search").record_success(1234, 5);
        w.op_mut("search").record_failure(99, "timeout", "slow");
        w.sample_in_flight(4);
        let snap = Snapshot {
            shard: 1,
            shards: 2,
            stages: vec![StageMeasurement {
                stage: 0,
                steady: w.clone(),
                steady_seconds: 30.0,
                complete: true,
                ..StageMeasurement::default()
            }],
            seconds: vec![SecondSample {
                second: 3,
                stage: 0,
                window: w,
            }],
            client_cpu: vec![],
        };
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"failuresByKind\""), "{json}");
        assert!(json.contains("\"steadySeconds\""), "{json}");
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
    }
}
