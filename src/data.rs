//! Deterministic test data: seeded vectors and scalar columns, exact brute-force ground truth for
//! recall, and filter templates.
//!
//! Every value is a pure function of `(seed, stream, index)`: row `i` is drawn from a small PRNG
//! (xoshiro256++) whose state is derived from the seed, a stream constant and `i` alone, so any
//! worker process can regenerate any row, in any batch, in any order, bit for bit. The PRNG and
//! the normal sampler (Box–Muller with our own polynomial `ln`/`sin`/`cos`) are implemented here
//! rather than taken from `rand` or the platform `libm`, whose algorithms and last-bit accuracy
//! may change between versions and platforms.
//!
//! Nothing here does I/O or reads a clock.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

// Domain constants keep the streams apart: data rows, queries, cluster centres and scalar cells
// with the same (seed, index) get unrelated PRNG states.
const DOMAIN_ROWS: u64 = 0x5354_414D_5045_4401; // "STAMPED" + 1
const DOMAIN_QUERIES: u64 = 0x5354_414D_5045_4402;
const DOMAIN_CENTRES: u64 = 0x5354_414D_5045_4403;
const DOMAIN_SCALAR_ROWS: u64 = 0x5354_414D_5045_4404;
const DOMAIN_SCALAR_QUERIES: u64 = 0x5354_414D_5045_4405;

/// Above this many floats (64 MiB) cluster centres are regenerated per row instead of being kept.
const MAX_PRECOMPUTED_CENTRE_FLOATS: usize = 1 << 24;

// ---------------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------------

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijection on `u64` with good avalanche.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ (Blackman & Vigna), seeded per `(seed, domain, stream, index)`.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The generator for one index of one stream.
    fn new(seed: u64, domain: u64, stream: u64, index: u64) -> Self {
        // Chaining xor-then-bijection keeps the map from `index` to the 64-bit key injective for
        // a fixed (seed, domain, stream), so distinct rows never share a state.
        let mut h = mix64(seed ^ domain);
        h = mix64(h ^ stream);
        h = mix64(h ^ index);
        // SplitMix64 expansion, as the xoshiro authors recommend; it cannot yield the all-zero
        // state because four consecutive outputs of a bijection are distinct.
        let mut s = [0u64; 4];
        for w in &mut s {
            h = h.wrapping_add(GOLDEN_GAMMA);
            *w = mix64(h);
        }
        Self { s }
    }

    /// Next 64 random bits.
    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.s;
        let result = s0.wrapping_add(s3).rotate_left(23).wrapping_add(s0);
        let t = s1 << 17;
        let s2 = s2 ^ s0;
        let s3 = s3 ^ s1;
        let s1 = s1 ^ s2;
        let s0 = s0 ^ s3;
        let s2 = s2 ^ t;
        let s3 = s3.rotate_left(45);
        self.s = [s0, s1, s2, s3];
        result
    }

    /// A value in `0..n` (`n > 0`) by multiply-shift; relative bias at most n / 2^64, which is
    /// negligible for any realistic range.
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// FNV-1a of a column name: a stable per-column stream number.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

// ---------------------------------------------------------------------------------------------
// Samplers
// ---------------------------------------------------------------------------------------------

/// Pairs converted per inner block: big enough for the compiler to vectorise the maths, small
/// enough to stay on the stack.
const PAIR_BLOCK: usize = 32;

const TWO_POW_M24: f32 = 1.0 / 16_777_216.0;
const TWO_POW_M22: f32 = 1.0 / 4_194_304.0;

/// The two 24-bit halves of a random word that feed one pair of samples.
#[inline(always)]
fn split24(x: u64) -> (u32, u32) {
    ((x >> 40) as u32, ((x >> 16) & 0xFF_FFFF) as u32)
}

/// `ln((a + 1) / 2^24)` for a 24-bit `a`, i.e. the log of a uniform in (0, 1].
///
/// Own implementation (exponent split + atanh series, within a few f32 ulps) so results do not
/// depend on the platform libm, and so the loop vectorises.
#[inline(always)]
fn ln_unit(a: u32) -> f32 {
    // a + 1 <= 2^24 is exact in f32.
    let v = (a + 1) as f32;
    let bits = v.to_bits();
    let mut e = ((bits >> 23) as i32) - 127;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000);
    // Centre the mantissa on 1 so the series argument stays below 0.172.
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    (e - 24) as f32 * std::f32::consts::LN_2 + 2.0 * s * series
}

/// Box–Muller radius `sqrt(-2 ln u)` for the uniform `u = (a + 1) / 2^24` in (0, 1].
///
/// The 24-bit uniform caps the radius at sqrt(2·24·ln 2) ≈ 5.77, a 1-in-10^8 tail.
#[inline(always)]
fn radius(a: u32) -> f32 {
    (-2.0 * ln_unit(a)).max(0.0).sqrt()
}

/// `(r cos θ, r sin θ)` for the angle `θ = 2π b / 2^24` of a 24-bit `b`.
///
/// The angle's top two bits pick the quadrant exactly, so the polynomials only cover a quarter
/// turn (|error| < 3e-7) and need no libm.
#[inline(always)]
fn polar(b: u32, r: f32) -> (f32, f32) {
    use std::f32::consts::{FRAC_1_SQRT_2, FRAC_PI_2};
    let quadrant = b >> 22;
    let f = (b & 0x3F_FFFF) as f32 * TWO_POW_M22;
    // Angle within the quadrant is π/4 + t with |t| <= π/4, where Taylor series converge fast.
    let t = (f - 0.5) * FRAC_PI_2;
    let t2 = t * t;
    let sin_t = t * (1.0 + t2 * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0))));
    let cos_t = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24.0 + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40_320.0))));
    let sin_phi = (cos_t + sin_t) * FRAC_1_SQRT_2;
    let cos_phi = (cos_t - sin_t) * FRAC_1_SQRT_2;
    // Rotating by quadrant·π/2 swaps and negates: (c, s), (-s, c), (-c, -s), (s, -c).
    let (u, v) = if quadrant & 1 == 0 {
        (cos_phi, sin_phi)
    } else {
        (sin_phi, cos_phi)
    };
    let neg_u = ((quadrant ^ (quadrant >> 1)) & 1) << 31;
    let neg_v = (quadrant >> 1) << 31;
    (
        f32::from_bits((r * u).to_bits() ^ neg_u),
        f32::from_bits((r * v).to_bits() ^ neg_v),
    )
}

/// Box–Muller on a block of random words: word `i` gives the pair `(xs[i], ys[i])`.
///
/// Written as separate passes over `u32` arrays so each pass vectorises at full width.
#[inline(always)]
fn gaussian_block_generic(
    bits: &[u64; PAIR_BLOCK],
    xs: &mut [f32; PAIR_BLOCK],
    ys: &mut [f32; PAIR_BLOCK],
) {
    let mut ra = [0u32; PAIR_BLOCK];
    let mut rb = [0u32; PAIR_BLOCK];
    for ((&w, a), b) in bits.iter().zip(&mut ra).zip(&mut rb) {
        (*a, *b) = split24(w);
    }
    let mut r = [0f32; PAIR_BLOCK];
    for (r, &a) in r.iter_mut().zip(&ra) {
        *r = radius(a);
    }
    for (((x, y), &b), &r) in xs.iter_mut().zip(ys.iter_mut()).zip(&rb).zip(&r) {
        (*x, *y) = polar(b, r);
    }
}

/// [`gaussian_block_generic`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gaussian_block_avx512(
    bits: &[u64; PAIR_BLOCK],
    xs: &mut [f32; PAIR_BLOCK],
    ys: &mut [f32; PAIR_BLOCK],
) {
    gaussian_block_generic(bits, xs, ys);
}

/// [`gaussian_block_generic`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gaussian_block_avx2(
    bits: &[u64; PAIR_BLOCK],
    xs: &mut [f32; PAIR_BLOCK],
    ys: &mut [f32; PAIR_BLOCK],
) {
    gaussian_block_generic(bits, xs, ys);
}

/// [`gaussian_block_generic`] with the widest vector unit this CPU has (same bits on all).
fn gaussian_block(
    bits: &[u64; PAIR_BLOCK],
    xs: &mut [f32; PAIR_BLOCK],
    ys: &mut [f32; PAIR_BLOCK],
) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx512 when the CPU supports AVX-512F.
        Isa::Avx512 => unsafe { gaussian_block_avx512(bits, xs, ys) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx2 when the CPU supports AVX2 and FMA.
        Isa::Avx2 => unsafe { gaussian_block_avx2(bits, xs, ys) },
        Isa::Generic => gaussian_block_generic(bits, xs, ys),
    }
}

/// Fills `out` with standard normals; pair `p` lands at `p` and `ceil(len/2) + p`.
///
/// Splitting the row into a "cos" half and a "sin" half (instead of interleaving) keeps every
/// store contiguous; any fixed layout is equally valid as the components are i.i.d.
fn fill_gaussian(rng: &mut Rng, out: &mut [f32]) {
    fill_pairs(rng, out, gaussian_block);
}

/// Fills `out` with uniforms in [low, high), with the same pair layout as [`fill_gaussian`].
fn fill_uniform(rng: &mut Rng, out: &mut [f32], low: f32, high: f32) {
    let width = high - low;
    // Rounding can carry low + width·u up to `high`; clamp to the largest float below it.
    let top = high.next_down();
    fill_pairs(rng, out, |bits, xs, ys| {
        for ((&w, x), y) in bits.iter().zip(xs.iter_mut()).zip(ys.iter_mut()) {
            let (a, b) = split24(w);
            *x = (low + width * (a as f32 * TWO_POW_M24)).min(top);
            *y = (low + width * (b as f32 * TWO_POW_M24)).min(top);
        }
    });
}

/// Draws one PRNG word per pair of outputs, in blocks, and lets `convert` turn a whole block
/// into the two halves' values (whole blocks so the conversion loop has a constant trip count).
#[inline(always)]
fn fill_pairs(
    rng: &mut Rng,
    out: &mut [f32],
    convert: impl Fn(&[u64; PAIR_BLOCK], &mut [f32; PAIR_BLOCK], &mut [f32; PAIR_BLOCK]),
) {
    let half = out.len().div_ceil(2);
    let (first, second) = out.split_at_mut(half);
    let mut second_chunks = second.chunks_mut(PAIR_BLOCK);
    let mut bits = [0u64; PAIR_BLOCK];
    let mut xs = [0f32; PAIR_BLOCK];
    let mut ys = [0f32; PAIR_BLOCK];
    for chunk in first.chunks_mut(PAIR_BLOCK) {
        let n = chunk.len();
        for w in &mut bits[..n] {
            *w = rng.next_u64();
        }
        convert(&bits, &mut xs, &mut ys);
        chunk.copy_from_slice(&xs[..n]);
        if let Some(rest) = second_chunks.next() {
            let m = rest.len();
            rest.copy_from_slice(&ys[..m]);
        }
    }
}

/// Scales `v` to unit L2 norm; zero, infinite or NaN norms leave it unchanged.
fn normalize_in_place(v: &mut [f32]) {
    let norm = l2_norm(v);
    if norm > 0.0 && norm.is_finite() {
        for x in v {
            *x /= norm;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vectors
// ---------------------------------------------------------------------------------------------

/// How vector components are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorDistribution {
    /// Standard normal components (Box–Muller from our own PRNG; tails cut at ±5.77).
    Normal,
    /// Uniform components in [low, high); if `high <= low` every component is `low`.
    Uniform {
        /// Inclusive lower bound.
        low: f32,
        /// Exclusive upper bound.
        high: f32,
    },
    /// `centers` standard-normal cluster centres drawn from the data seed; each row is a centre
    /// chosen by the row's PRNG plus normal noise of standard deviation `spread`. `centers == 0`
    /// behaves as 1.
    Clustered {
        /// Number of cluster centres.
        centers: u32,
        /// Standard deviation of the per-component noise around the centre.
        spread: f32,
    },
}

/// Deterministic generator of data rows and query vectors.
#[derive(Clone, PartialEq)]
pub struct VectorGenerator {
    dim: usize,
    distribution: VectorDistribution,
    normalize: bool,
    seed: u64,
    /// Cluster centres, row-major; empty when not clustered or too many to keep (then each row
    /// regenerates its own centre, which gives the same values).
    centres: Vec<f32>,
}

impl std::fmt::Debug for VectorGenerator {
    // Hand-written so logging a generator does not dump megabytes of centres.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorGenerator")
            .field("dim", &self.dim)
            .field("distribution", &self.distribution)
            .field("normalize", &self.normalize)
            .field("seed", &self.seed)
            .field(
                "precomputed_centres",
                &(self.centres.len() / self.dim.max(1)),
            )
            .finish()
    }
}

impl VectorGenerator {
    /// A generator of `dim`-dimensional vectors; `normalize` scales each one to unit L2 norm.
    pub fn new(dim: usize, distribution: VectorDistribution, normalize: bool, seed: u64) -> Self {
        let mut generator = Self {
            dim,
            distribution,
            normalize,
            seed,
            centres: Vec::new(),
        };
        if let VectorDistribution::Clustered { centers, .. } = generator.distribution {
            let count = centers.max(1) as usize;
            if count.saturating_mul(dim) <= MAX_PRECOMPUTED_CENTRE_FLOATS && dim > 0 {
                let mut centres = vec![0.0; count * dim];
                for (c, centre) in centres.chunks_exact_mut(dim).enumerate() {
                    generator.fill_centre(c as u64, centre);
                }
                generator.centres = centres;
            }
        }
        generator
    }

    /// Number of components per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The distribution components are drawn from.
    pub fn distribution(&self) -> &VectorDistribution {
        &self.distribution
    }

    /// Whether vectors are scaled to unit L2 norm.
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// The data seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Writes data row `row` into `out` (len == dim; a shorter slice gets a prefix of the row, a
    /// longer one is zero-padded).
    pub fn fill_row(&self, row: u64, out: &mut [f32]) {
        self.fill_from(DOMAIN_ROWS, row, out);
    }

    /// Writes rows `start..` into `out`, one row per `dim` floats (a trailing partial row is
    /// left untouched).
    pub fn fill_rows(&self, start: u64, out: &mut [f32]) {
        if self.dim == 0 {
            return;
        }
        for (i, row) in out.chunks_exact_mut(self.dim).enumerate() {
            self.fill_row(start.wrapping_add(i as u64), row);
        }
    }

    /// Rows start..start+count, row-major, len == count*dim.
    pub fn rows(&self, start: u64, count: usize) -> Vec<f32> {
        let mut out = vec![0.0; count.saturating_mul(self.dim)];
        self.fill_rows(start, &mut out);
        out
    }

    /// Writes query vector `index` (its own seed stream) into `out` (same length rules as
    /// [`Self::fill_row`]).
    pub fn fill_query(&self, index: u64, out: &mut [f32]) {
        self.fill_from(DOMAIN_QUERIES, index, out);
    }

    /// Queries 0..count, row-major.
    pub fn queries(&self, count: usize) -> Vec<f32> {
        let mut out = vec![0.0; count.saturating_mul(self.dim)];
        if self.dim > 0 {
            for (i, q) in out.chunks_exact_mut(self.dim).enumerate() {
                self.fill_query(i as u64, q);
            }
        }
        out
    }

    /// Writes cluster centre `c` (standard normal, never normalised) into `out`.
    fn fill_centre(&self, c: u64, out: &mut [f32]) {
        let mut rng = Rng::new(self.seed, DOMAIN_CENTRES, 0, c);
        fill_gaussian(&mut rng, out);
    }

    /// Handles odd `out` lengths by generating a full vector aside.
    fn fill_from(&self, domain: u64, index: u64, out: &mut [f32]) {
        if out.len() == self.dim {
            self.generate(domain, index, out);
        } else {
            let mut full = vec![0.0; self.dim];
            self.generate(domain, index, &mut full);
            let n = out.len().min(self.dim);
            out[..n].copy_from_slice(&full[..n]);
            out[n..].fill(0.0);
        }
    }

    /// Generates vector `index` of stream `domain` into `out` (len == dim).
    fn generate(&self, domain: u64, index: u64, out: &mut [f32]) {
        let mut rng = Rng::new(self.seed, domain, 0, index);
        match self.distribution {
            VectorDistribution::Normal => fill_gaussian(&mut rng, out),
            VectorDistribution::Uniform { low, high } => {
                if high > low {
                    fill_uniform(&mut rng, out, low, high);
                } else {
                    out.fill(low);
                }
            }
            VectorDistribution::Clustered { centers, spread } => {
                let c = rng.below(u64::from(centers.max(1)));
                fill_gaussian(&mut rng, out);
                let from = (c as usize).saturating_mul(self.dim);
                match self.centres.get(from..from.saturating_add(self.dim)) {
                    Some(centre) => add_scaled(out, centre, spread),
                    None => {
                        let mut centre = vec![0.0; self.dim];
                        self.fill_centre(c, &mut centre);
                        add_scaled(out, &centre, spread);
                    }
                }
            }
        }
        if self.normalize {
            normalize_in_place(out);
        }
    }
}

/// `noise[i] = centre[i] + spread * noise[i]`.
fn add_scaled(noise: &mut [f32], centre: &[f32], spread: f32) {
    for (x, &c) in noise.iter_mut().zip(centre) {
        *x = c + spread * *x;
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

/// What values a scalar column takes.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarValues {
    /// One of these strings, uniformly (an empty list yields "" / index 0).
    Categorical(Vec<String>),
    /// An integer uniformly in [min, max] (inclusive; swapped if min > max).
    IntRange {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
}

/// Deterministic generator of one scalar column.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarGenerator {
    name: String,
    values: ScalarValues,
    seed: u64,
    stream: u64,
}

impl ScalarGenerator {
    /// A generator for column `name`; the name picks the column's own random stream.
    pub fn new(name: &str, values: ScalarValues, seed: u64) -> Self {
        Self {
            name: name.to_string(),
            values,
            seed,
            stream: name_stream(name),
        }
    }

    /// The column name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The values the column takes.
    pub fn values(&self) -> &ScalarValues {
        &self.values
    }

    /// Index into the categorical list for row `row` (0 for IntRange or an empty list).
    pub fn category_index(&self, row: u64) -> usize {
        self.category_in(DOMAIN_SCALAR_ROWS, row)
    }

    /// The string of row `row` (Categorical; "" for IntRange or an empty list).
    pub fn string_value(&self, row: u64) -> &str {
        match &self.values {
            ScalarValues::Categorical(list) => list
                .get(self.category_index(row))
                .map_or("", String::as_str),
            ScalarValues::IntRange { .. } => "",
        }
    }

    /// The integer of row `row` (IntRange; the category index for Categorical).
    pub fn int_value(&self, row: u64) -> i64 {
        match &self.values {
            ScalarValues::Categorical(_) => self.category_index(row) as i64,
            ScalarValues::IntRange { min, max } => self.int_in(DOMAIN_SCALAR_ROWS, row, *min, *max),
        }
    }

    /// Value used to fill filter templates for query number `index` (own stream): a random
    /// category, or a random integer in decimal.
    pub fn query_value(&self, index: u64) -> String {
        match &self.values {
            ScalarValues::Categorical(list) => list
                .get(self.category_in(DOMAIN_SCALAR_QUERIES, index))
                .cloned()
                .unwrap_or_default(),
            ScalarValues::IntRange { min, max } => self
                .int_in(DOMAIN_SCALAR_QUERIES, index, *min, *max)
                .to_string(),
        }
    }

    /// String column for rows start..start+count (see [`Self::string_value`]).
    pub fn strings(&self, start: u64, count: usize) -> Vec<String> {
        (0..count as u64)
            .map(|i| self.string_value(start.wrapping_add(i)).to_string())
            .collect()
    }

    /// Integer column for rows start..start+count (see [`Self::int_value`]).
    pub fn ints(&self, start: u64, count: usize) -> Vec<i64> {
        (0..count as u64)
            .map(|i| self.int_value(start.wrapping_add(i)))
            .collect()
    }

    /// Uniform category index of `index` in stream `domain`.
    fn category_in(&self, domain: u64, index: u64) -> usize {
        match &self.values {
            ScalarValues::Categorical(list) if !list.is_empty() => {
                Rng::new(self.seed, domain, self.stream, index).below(list.len() as u64) as usize
            }
            _ => 0,
        }
    }

    /// Uniform integer in [min, max] of `index` in stream `domain`.
    fn int_in(&self, domain: u64, index: u64, min: i64, max: i64) -> i64 {
        let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
        let mut rng = Rng::new(self.seed, domain, self.stream, index);
        // Span as unsigned distance; it wraps to 0 only for the full i64 range.
        let span = hi.wrapping_sub(lo) as u64;
        match span.checked_add(1) {
            Some(n) => lo.wrapping_add(rng.below(n) as i64),
            None => rng.next_u64() as i64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Distances
// ---------------------------------------------------------------------------------------------

/// Vector similarity metric, as Milvus names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Squared Euclidean distance (smaller is closer).
    L2,
    /// Inner product (larger is closer).
    Ip,
    /// Cosine similarity (larger is closer).
    Cosine,
}

impl Metric {
    /// The Milvus name: "L2", "IP" or "COSINE".
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::L2 => "L2",
            Metric::Ip => "IP",
            Metric::Cosine => "COSINE",
        }
    }

    /// Parses a Milvus metric name, case-insensitively.
    pub fn from_name(name: &str) -> Option<Metric> {
        [Metric::L2, Metric::Ip, Metric::Cosine]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether larger values mean closer (IP, COSINE), as opposed to L2.
    pub fn larger_is_closer(self) -> bool {
        !matches!(self, Metric::L2)
    }
}

/// Accumulator lanes of the distance kernels. Fixed (not per-CPU) because it sets the summation
/// order, and with it the exact bits of every distance.
const LANES: usize = 16;

/// Adds one term to a running sum: squared difference for L2, product otherwise.
///
/// A fused multiply-add is exactly specified (one rounding), so hardware FMA, a software
/// fallback and every vector width give the same bits, and it halves the work of a dot product.
#[inline(always)]
fn step<const L2: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if L2 {
        let d = a - b;
        d.mul_add(d, acc)
    } else {
        a.mul_add(b, acc)
    }
}

/// Sums the lanes in a fixed pairwise order.
#[inline(always)]
fn reduce(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        let (lo, hi) = v.split_at_mut(width);
        for (x, y) in lo.iter_mut().zip(hi.iter()) {
            *x += *y;
        }
    }
    v[0]
}

/// Adds one chunk of terms into the lane accumulators.
#[inline(always)]
fn accumulate<const L2: bool>(acc: &mut [f32; LANES], x: &[f32; LANES], y: &[f32; LANES]) {
    for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
        *s = step::<L2>(*s, p, q);
    }
}

/// Reduces the lanes, then adds the tail terms in order.
#[inline(always)]
fn finish<const L2: bool>(acc: &[f32; LANES], x: &[f32], y: &[f32]) -> f32 {
    let mut sum = reduce(acc);
    for (&p, &q) in x.iter().zip(y) {
        sum = step::<L2>(sum, p, q);
    }
    sum
}

/// Squared L2 distance (`L2 = true`) or dot product of `a` and `b` over their common length.
///
/// Lane `l` accumulates the terms at positions ≡ l (mod 16), the lanes are summed pairwise and
/// the tail is added in order; [`kernel4`] performs exactly the same operations per pair.
#[inline(always)]
fn kernel<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ac, at) = a[..n].as_chunks::<LANES>();
    let (bc, bt) = b[..n].as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ac.iter().zip(bc) {
        accumulate::<L2>(&mut acc, x, y);
    }
    finish::<L2>(&acc, at, bt)
}

/// [`kernel`] of one query against four rows at once, sharing the query loads; bit-identical
/// to four separate calls.
#[inline(always)]
fn kernel4<const L2: bool>(q: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    let [r0, r1, r2, r3] = rows;
    if rows.iter().any(|r| r.len() != q.len()) {
        // Never the case in a scan (all rows have `dim` components); kept for safety.
        return rows.map(|r| kernel::<L2>(q, r));
    }
    let (qc, qt) = q.as_chunks::<LANES>();
    let (c0, t0) = r0.as_chunks::<LANES>();
    let (c1, t1) = r1.as_chunks::<LANES>();
    let (c2, t2) = r2.as_chunks::<LANES>();
    let (c3, t3) = r3.as_chunks::<LANES>();
    // Separate locals and one lane loop over fixed-size arrays: the optimiser keeps the four
    // accumulators in registers and the zipped iterators need no bounds checks.
    let mut a0 = [0f32; LANES];
    let mut a1 = [0f32; LANES];
    let mut a2 = [0f32; LANES];
    let mut a3 = [0f32; LANES];
    for ((((x, y0), y1), y2), y3) in qc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..LANES {
            a0[l] = step::<L2>(a0[l], x[l], y0[l]);
            a1[l] = step::<L2>(a1[l], x[l], y1[l]);
            a2[l] = step::<L2>(a2[l], x[l], y2[l]);
            a3[l] = step::<L2>(a3[l], x[l], y3[l]);
        }
    }
    [
        finish::<L2>(&a0, qt, t0),
        finish::<L2>(&a1, qt, t1),
        finish::<L2>(&a2, qt, t2),
        finish::<L2>(&a3, qt, t3),
    ]
}

/// Which vector extensions the hot loops are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX-512F (implies FMA).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the build targets (on x86-64 without FMA, `mul_add` is a libm call: slow but
    /// still exact).
    Generic,
}

/// The best instruction set this CPU supports (std caches the detection).
#[inline]
fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

/// [`kernel`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn kernel_avx512<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    kernel::<L2>(a, b)
}

/// [`kernel`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn kernel_avx2<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    kernel::<L2>(a, b)
}

/// [`kernel`] with the fastest instruction set available (same bits on all).
fn kernel_dispatch<const L2: bool>(a: &[f32], b: &[f32]) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx512 when the CPU supports AVX-512F.
        Isa::Avx512 => unsafe { kernel_avx512::<L2>(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx2 when the CPU supports AVX2 and FMA.
        Isa::Avx2 => unsafe { kernel_avx2::<L2>(a, b) },
        Isa::Generic => kernel::<L2>(a, b),
    }
}

/// Euclidean norm, via the same dot-product kernel.
fn l2_norm(v: &[f32]) -> f32 {
    kernel_dispatch::<false>(v, v).sqrt()
}

/// Cosine similarity from a dot product and the two norms (0 if either norm is 0).
#[inline(always)]
fn cosine_from(dot: f32, norm_a: f32, norm_b: f32) -> f32 {
    let denominator = norm_a * norm_b;
    if denominator > 0.0 {
        dot / denominator
    } else {
        0.0
    }
}

/// Milvus ranks L2 ascending (squared distance), IP and COSINE descending. Vectors of different
/// lengths are compared over their common prefix.
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    match metric {
        Metric::L2 => kernel_dispatch::<true>(a, b),
        Metric::Ip => kernel_dispatch::<false>(a, b),
        Metric::Cosine => {
            let n = a.len().min(b.len());
            cosine_from(
                kernel_dispatch::<false>(a, b),
                l2_norm(&a[..n]),
                l2_norm(&b[..n]),
            )
        }
    }
}

/// Sort key under which smaller is always closer: NaN ranks last, and -0 equals +0.
fn rank_key(metric: Metric, d: f32) -> f32 {
    let key = if metric.larger_is_closer() { -d } else { d };
    if key.is_nan() {
        f32::INFINITY
    } else {
        key + 0.0
    }
}

/// Whether `(d1, id1)` ranks strictly before `(d2, id2)` under `metric` (ties: smaller id).
pub fn ranks_before(metric: Metric, d1: f32, id1: i64, d2: f32, id2: i64) -> bool {
    Candidate::new(metric, d1, id1) < Candidate::new(metric, d2, id2)
}

// ---------------------------------------------------------------------------------------------
// Ground truth
// ---------------------------------------------------------------------------------------------

/// Exact nearest neighbours of a set of queries, as saved next to a test run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroundTruth {
    /// "L2" | "IP" | "COSINE".
    pub metric: String,
    /// Neighbours asked for per query (a query has fewer if `rows < top_k`).
    pub top_k: usize,
    /// Rows 0..rows were searched.
    pub rows: u64,
    /// Data seed of the rows.
    pub seed: u64,
    /// For each query, the ids (row numbers, which are the primary keys) of its top_k nearest
    /// rows, best first.
    pub ids: Vec<Vec<i64>>,
    /// Their distances/scores, same order.
    pub distances: Vec<Vec<f32>>,
}

/// A scored row; ordered best first by (rank key, id).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: f32,
    id: i64,
    distance: f32,
}

impl Candidate {
    fn new(metric: Metric, distance: f32, id: i64) -> Self {
        Self {
            key: rank_key(metric, distance),
            id,
            distance,
        }
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.total_cmp(&other.key).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// The best `k` candidates seen so far (a max-heap whose top is the current worst).
struct TopK {
    k: usize,
    heap: BinaryHeap<Candidate>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            // Only a hint: a huge k grows the heap on demand instead of reserving up front.
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
        }
    }

    #[inline(always)]
    fn offer(&mut self, c: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(c);
        } else if let Some(mut worst) = self.heap.peek_mut()
            && c < *worst
        {
            // Only a write through PeekMut triggers the sift-down, so rejections stay cheap.
            *worst = c;
        }
    }
}

/// Rows scored together against one query by [`kernel4`], sharing each query load.
const ROW_BLOCK: usize = 4;

/// Target floats per generated chunk (512 KiB: stays in L2 with the queries).
const CHUNK_FLOATS: usize = 1 << 17;

/// Fewest rows per chunk worth handing to a thread (unless a chunk that size exceeds L2).
const MIN_CHUNK_ROWS: usize = 64;

/// Everything a ground-truth worker reads.
struct Scan<'a> {
    data: &'a VectorGenerator,
    rows: u64,
    queries: &'a [f32],
    query_norms: &'a [f32],
    dim: usize,
    k: usize,
    metric: Metric,
    chunk_rows: usize,
    chunks: u64,
    next_chunk: AtomicU64,
    progress: Progress<'a>,
}

/// Rate-limited, monotonic progress reporting shared by the workers.
struct Progress<'a> {
    done: AtomicU64,
    step: u64,
    total: u64,
    last: Mutex<u64>,
    callback: &'a (dyn Fn(u64) + Sync),
}

impl Progress<'_> {
    fn advance(&self, n: u64) {
        let before = self.done.fetch_add(n, AtomicOrdering::Relaxed);
        let now = before + n;
        if now / self.step != before / self.step || now == self.total {
            // The lock orders the calls, and a late smaller count is dropped, so the callback
            // sees increasing values. A poisoned lock (callback panicked) just stops reporting.
            if let Ok(mut last) = self.last.lock()
                && now > *last
            {
                *last = now;
                (self.callback)(now);
            }
        }
    }
}

impl Scan<'_> {
    /// Claims chunks until none are left; returns this worker's per-query best candidates.
    fn work(&self) -> Vec<TopK> {
        let nq = self.queries.len().checked_div(self.dim).unwrap_or(0);
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(self.k)).collect();
        let mut buf = vec![0f32; self.chunk_rows * self.dim];
        let mut norms = vec![0f32; self.chunk_rows];
        loop {
            let chunk = self.next_chunk.fetch_add(1, AtomicOrdering::Relaxed);
            if chunk >= self.chunks {
                break;
            }
            let start = chunk.saturating_mul(self.chunk_rows as u64);
            let count = (self.rows - start).min(self.chunk_rows as u64) as usize;
            let block = &mut buf[..count * self.dim];
            self.data.fill_rows(start, block);
            let norms = &mut norms[..count];
            if self.metric == Metric::Cosine {
                for (n, row) in norms.iter_mut().zip(block.chunks_exact(self.dim)) {
                    *n = l2_norm(row);
                }
            }
            score_chunk(self, block, norms, start, &mut tops);
            self.progress.advance(count as u64);
        }
        tops
    }
}

/// Scores one chunk of rows against every query, with the fastest kernel this CPU runs.
///
/// Wider vector units only change how many lanes run per instruction, never the per-lane IEEE
/// operations or their order, so every path gives identical bits.
fn score_chunk(scan: &Scan<'_>, block: &[f32], norms: &[f32], start: u64, tops: &mut [TopK]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx512 when the CPU supports AVX-512F.
        Isa::Avx512 => unsafe { score_chunk_avx512(scan, block, norms, start, tops) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` only returns Avx2 when the CPU supports AVX2 and FMA.
        Isa::Avx2 => unsafe { score_chunk_avx2(scan, block, norms, start, tops) },
        Isa::Generic => score_chunk_generic(scan, block, norms, start, tops),
    }
}

/// [`score_chunk_generic`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn score_chunk_avx512(
    scan: &Scan<'_>,
    block: &[f32],
    norms: &[f32],
    start: u64,
    tops: &mut [TopK],
) {
    score_chunk_generic(scan, block, norms, start, tops);
}

/// [`score_chunk_generic`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn score_chunk_avx2(scan: &Scan<'_>, block: &[f32], norms: &[f32], start: u64, tops: &mut [TopK]) {
    score_chunk_generic(scan, block, norms, start, tops);
}

/// Dispatches on the metric so the kernels are monomorphised per metric.
#[inline(always)]
fn score_chunk_generic(
    scan: &Scan<'_>,
    block: &[f32],
    norms: &[f32],
    start: u64,
    tops: &mut [TopK],
) {
    match scan.metric {
        Metric::L2 => score_rows::<true>(scan, block, norms, start, tops),
        Metric::Ip | Metric::Cosine => score_rows::<false>(scan, block, norms, start, tops),
    }
}

/// The hot loop: blocks of [`ROW_BLOCK`] rows against each query, then the leftover rows.
#[inline(always)]
fn score_rows<const L2: bool>(
    scan: &Scan<'_>,
    block: &[f32],
    norms: &[f32],
    start: u64,
    tops: &mut [TopK],
) {
    let dim = scan.dim;
    let cosine = scan.metric == Metric::Cosine;
    let metric = scan.metric;
    let score = |q: usize, raw: f32, r: usize| -> f32 {
        if cosine {
            cosine_from(
                raw,
                scan.query_norms.get(q).copied().unwrap_or(0.0),
                norms.get(r).copied().unwrap_or(0.0),
            )
        } else {
            raw
        }
    };
    let blocked = block.len() / (dim * ROW_BLOCK) * ROW_BLOCK;
    for (b, group) in block.chunks_exact(dim * ROW_BLOCK).enumerate() {
        let first = b * ROW_BLOCK;
        let (r0, rest) = group.split_at(dim);
        let (r1, rest) = rest.split_at(dim);
        let (r2, r3) = rest.split_at(dim);
        for (q, (query, top)) in scan
            .queries
            .chunks_exact(dim)
            .zip(tops.iter_mut())
            .enumerate()
        {
            let raw = kernel4::<L2>(query, [r0, r1, r2, r3]);
            for (j, &d) in raw.iter().enumerate() {
                let row = first + j;
                let id = start.wrapping_add(row as u64) as i64;
                top.offer(Candidate::new(metric, score(q, d, row), id));
            }
        }
    }
    for (j, row_vec) in block[blocked * dim..].chunks_exact(dim).enumerate() {
        let row = blocked + j;
        let id = start.wrapping_add(row as u64) as i64;
        for (q, (query, top)) in scan
            .queries
            .chunks_exact(dim)
            .zip(tops.iter_mut())
            .enumerate()
        {
            let d = kernel::<L2>(query, row_vec);
            top.offer(Candidate::new(metric, score(q, d, row), id));
        }
    }
}

/// Exact top-k by brute force over rows 0..rows of `data` for each of `queries` (row-major, len
/// nq*dim; a trailing partial query is ignored, and dim 0 means no queries).
///
/// Rows are generated in chunks (never all at once), chunks are shared out to `threads` OS
/// threads (0 → all available cores), and each query keeps a bounded heap; ties go to the
/// smaller id, so the answer is identical to a naive sort by `(distance, id)` using
/// [`distance`]. A query gets `min(top_k, rows)` neighbours. `progress` is called now and then,
/// from the worker threads, with increasing counts of rows done.
pub fn ground_truth(
    data: &VectorGenerator,
    rows: u64,
    queries: &[f32],
    top_k: usize,
    metric: Metric,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> GroundTruth {
    let dim = data.dim();
    let nq = queries.len().checked_div(dim).unwrap_or(0);
    let k = usize::try_from(rows).map_or(top_k, |r| top_k.min(r));
    let mut truth = GroundTruth {
        metric: metric.as_str().to_string(),
        top_k,
        rows,
        seed: data.seed(),
        ids: vec![Vec::new(); nq],
        distances: vec![Vec::new(); nq],
    };
    if nq == 0 || k == 0 {
        return truth;
    }
    let queries = &queries[..nq * dim];
    let query_norms: Vec<f32> = match metric {
        Metric::Cosine => queries.chunks_exact(dim).map(l2_norm).collect(),
        Metric::L2 | Metric::Ip => Vec::new(),
    };
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Chunks small enough to stay in L2, and numerous enough (~8 per thread) that threads
    // finishing early find more work; but not so small that per-chunk overhead shows.
    let by_cache = (CHUNK_FLOATS / dim).max(1);
    let by_balance = usize::try_from(rows.div_ceil((threads as u64).saturating_mul(8)))
        .unwrap_or(usize::MAX)
        .max(MIN_CHUNK_ROWS);
    let chunk_rows = by_cache.min(by_balance).next_multiple_of(ROW_BLOCK);
    let chunks = rows.div_ceil(chunk_rows as u64);
    let threads = usize::try_from(chunks)
        .map_or(threads, |c| threads.min(c))
        .max(1);
    let scan = Scan {
        data,
        rows,
        queries,
        query_norms: &query_norms,
        dim,
        k,
        metric,
        chunk_rows,
        chunks,
        next_chunk: AtomicU64::new(0),
        progress: Progress {
            done: AtomicU64::new(0),
            step: (rows / 100).max(1),
            total: rows,
            last: Mutex::new(0),
            callback: progress,
        },
    };
    let partials: Vec<Vec<TopK>> = std::thread::scope(|s| {
        // Chunks are claimed dynamically, so if the OS refuses a thread the others simply do
        // its share.
        let helpers: Vec<_> = (1..threads)
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("ground-truth".into())
                    .spawn_scoped(s, || scan.work())
                    .ok()
            })
            .collect();
        let mut all = vec![scan.work()];
        for h in helpers {
            match h.join() {
                Ok(tops) => all.push(tops),
                // Only the caller's progress callback can panic in a worker; pass it on.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    let mut merged: Vec<Vec<Candidate>> = vec![Vec::new(); nq];
    for tops in partials {
        for (m, top) in merged.iter_mut().zip(tops) {
            m.extend(top.heap.into_vec());
        }
    }
    for ((m, ids), distances) in merged
        .iter_mut()
        .zip(&mut truth.ids)
        .zip(&mut truth.distances)
    {
        m.sort_unstable();
        m.truncate(k);
        *ids = m.iter().map(|c| c.id).collect();
        *distances = m.iter().map(|c| c.distance).collect();
    }
    truth
}

/// recall@k of `found` ids against the true ids: |found[..k] ∩ truth[..k]| / k with
/// k = truth.len().min(k); 1.0 when k is 0 (nothing to find). Duplicate found ids count once.
pub fn recall_at_k(found: &[i64], truth: &[i64], k: usize) -> f64 {
    let k = truth.len().min(k);
    if k == 0 {
        return 1.0;
    }
    let found = &found[..found.len().min(k)];
    let truth = &truth[..k];
    let hits = if k <= 64 {
        truth.iter().filter(|t| found.contains(t)).count()
    } else {
        let mut sorted = found.to_vec();
        sorted.sort_unstable();
        truth
            .iter()
            .filter(|t| sorted.binary_search(t).is_ok())
            .count()
    };
    hits as f64 / k as f64
}

// ---------------------------------------------------------------------------------------------
// Filter templates
// ---------------------------------------------------------------------------------------------

/// A piece of a filter template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'t> {
    /// Text copied as is.
    Text(&'t str),
    /// A `{name}` placeholder, without the braces.
    Field(&'t str),
}

/// Splits a template into literal text and `{name}` placeholders.
///
/// A placeholder is `{` + an identifier (`[A-Za-z_][A-Za-z0-9_]*`, like Milvus field names) +
/// `}`; any other brace is literal text, so other uses of braces pass through untouched.
fn segments(template: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let ident_len = after
            .char_indices()
            .find(|&(i, c)| !(c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
            .map_or(after.len(), |(i, _)| i);
        if ident_len > 0 && after[ident_len..].starts_with('}') {
            out.push(Segment::Text(&rest[..open]));
            out.push(Segment::Field(&after[..ident_len]));
            rest = &after[ident_len + 1..];
        } else {
            out.push(Segment::Text(&rest[..=open]));
            rest = after;
        }
    }
    out.push(Segment::Text(rest));
    out
}

/// Fills `{name}` placeholders of a filter template, e.g. `category == "{category}"`, from the
/// scalar generators' query values for query `index` (inserted verbatim). Returns Err(name) for
/// a placeholder that names no scalar.
pub fn fill_filter(
    template: &str,
    scalars: &[ScalarGenerator],
    index: u64,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    for segment in segments(template) {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Field(name) => match scalars.iter().find(|s| s.name() == name) {
                Some(s) => out.push_str(&s.query_value(index)),
                None => return Err(name.to_string()),
            },
        }
    }
    Ok(out)
}

/// Names of the placeholders in a template, in order of first appearance, without duplicates.
pub fn filter_placeholders(template: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for segment in segments(template) {
        if let Segment::Field(name) = segment
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE_XOSHIRO: [u64; 4] = [
        0x0000_0000_0280_0001,
        0x0000_0000_0380_0067,
        0x000C_C000_0380_0067,
        0x000C_C201_9944_00B2,
    ];
    fn all_distributions() -> Vec<VectorDistribution> {
        vec![
            VectorDistribution::Normal,
            VectorDistribution::Uniform {
                low: -2.0,
                high: 3.0,
            },
            VectorDistribution::Clustered {
                centers: 7,
                spread: 0.1,
            },
        ]
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The reference: every row generated up front, every distance computed, a full sort.
    fn naive_ground_truth(
        data: &VectorGenerator,
        rows: u64,
        queries: &[f32],
        k: usize,
        metric: Metric,
    ) -> (Vec<Vec<i64>>, Vec<Vec<f32>>) {
        let dim = data.dim();
        let all = data.rows(0, rows as usize);
        let mut ids = Vec::new();
        let mut dists = Vec::new();
        for q in queries.chunks_exact(dim) {
            let mut scored: Vec<(f32, i64)> = all
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, r)| (distance(metric, q, r), i as i64))
                .collect();
            scored.sort_by(|a, b| {
                let ka = if metric == Metric::L2 { a.0 } else { -a.0 };
                let kb = if metric == Metric::L2 { b.0 } else { -b.0 };
                ka.partial_cmp(&kb).unwrap().then(a.1.cmp(&b.1))
            });
            scored.truncate(k);
            ids.push(scored.iter().map(|s| s.1).collect());
            dists.push(scored.iter().map(|s| s.0).collect());
        }
        (ids, dists)
    }

    #[test]
    fn the_prng_is_xoshiro256_plus_plus() {
        // Reference outputs of xoshiro256++ from state {1, 2, 3, 4} (computed with the authors'
        // C code); pins the algorithm so stored data sets stay reproducible.
        let mut rng = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(got, REFERENCE_XOSHIRO);
    }

    #[test]
    fn generated_values_never_change_between_versions() {
        // Stored ground truth and partially loaded collections rely on these exact bits.
        let normal = VectorGenerator::new(4, VectorDistribution::Normal, false, 42);
        assert_eq!(
            bits(&normal.rows(0, 1)),
            [0x4000_cd31, 0xbf76_f4e6, 0x3fa5_56b2, 0x3ea7_30fa]
        );
        let clustered = VectorGenerator::new(
            3,
            VectorDistribution::Clustered {
                centers: 5,
                spread: 0.5,
            },
            true,
            42,
        );
        assert_eq!(
            bits(&clustered.rows(7, 1)),
            [0x3ecb_6a4c, 0xbcf6_29eb, 0xbf6a_cd88]
        );
        let uniform = VectorGenerator::new(
            3,
            VectorDistribution::Uniform {
                low: -1.0,
                high: 1.0,
            },
            false,
            42,
        );
        assert_eq!(
            bits(&uniform.queries(1)),
            [0x3f7b_2e00, 0xbdb8_eab0, 0xbf0b_3b5a]
        );
        let g = VectorGenerator::new(20, VectorDistribution::Normal, false, 42);
        let v = g.rows(0, 2);
        assert_eq!(
            distance(Metric::L2, &v[..20], &v[20..]).to_bits(),
            0x420a_0f1f
        );
        assert_eq!(
            distance(Metric::Ip, &v[..20], &v[20..]).to_bits(),
            0x4039_bae8
        );
        let category = ScalarGenerator::new(
            "category",
            ScalarValues::Categorical(vec!["a".into(), "b".into(), "c".into()]),
            42,
        );
        assert_eq!(category.strings(0, 8).concat(), "acbaccba");
        let n = ScalarGenerator::new(
            "n",
            ScalarValues::IntRange {
                min: -1000,
                max: 1000,
            },
            42,
        );
        assert_eq!(n.ints(0, 4), [-338, -170, 289, -679]);
        assert_eq!(n.query_value(0), "142");
    }

    #[test]
    fn box_muller_approximations_match_libm_closely() {
        for a in (0u32..1 << 24).step_by(997).chain([0, (1 << 24) - 1]) {
            let exact = ((f64::from(a) + 1.0) / 16_777_216.0).ln();
            let got = f64::from(ln_unit(a));
            assert!((got - exact).abs() < 4e-6, "ln at {a}: {got} vs {exact}");
        }
        assert_eq!(ln_unit((1 << 24) - 1), 0.0);
        for b in (0u32..1 << 24)
            .step_by(1009)
            .chain([0, (1 << 22) - 1, 1 << 22])
        {
            let angle = std::f64::consts::TAU * f64::from(b) / 16_777_216.0;
            let (x, y) = polar(b, 1.0);
            assert!((f64::from(x) - angle.cos()).abs() < 1e-6, "cos at {b}");
            assert!((f64::from(y) - angle.sin()).abs() < 1e-6, "sin at {b}");
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let g = VectorGenerator::new(99, VectorDistribution::Normal, false, 1);
        let v = g.rows(0, 8);
        let rows: Vec<&[f32]> = v.chunks_exact(99).collect();
        let q = g.queries(1);
        for &r in &rows {
            // `kernel` compiled for the build target vs the widest the CPU offers.
            assert_eq!(
                kernel::<true>(&q, r).to_bits(),
                kernel_dispatch::<true>(&q, r).to_bits()
            );
            assert_eq!(
                kernel::<false>(&q, r).to_bits(),
                kernel_dispatch::<false>(&q, r).to_bits()
            );
        }
        let four = [rows[0], rows[1], rows[2], rows[3]];
        assert_eq!(
            kernel4::<true>(&q, four).map(f32::to_bits),
            four.map(|r| kernel::<true>(&q, r).to_bits())
        );
        assert_eq!(
            kernel4::<false>(&q, four).map(f32::to_bits),
            four.map(|r| kernel::<false>(&q, r).to_bits())
        );
        let mut rng = Rng::new(3, 0, 0, 0);
        let words: [u64; PAIR_BLOCK] = std::array::from_fn(|_| rng.next_u64());
        let mut expected = ([0f32; PAIR_BLOCK], [0f32; PAIR_BLOCK]);
        gaussian_block_generic(&words, &mut expected.0, &mut expected.1);
        let mut got = ([0f32; PAIR_BLOCK], [0f32; PAIR_BLOCK]);
        gaussian_block(&words, &mut got.0, &mut got.1);
        assert_eq!(bits(&got.0), bits(&expected.0));
        assert_eq!(bits(&got.1), bits(&expected.1));
        #[cfg(target_arch = "x86_64")]
        {
            // Each wide variant the CPU can run, not only the one dispatch picks.
            let r = rows[5];
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: AVX2 and FMA are present, checked just above.
                let d = unsafe { kernel_avx2::<true>(&q, r) };
                assert_eq!(d.to_bits(), kernel::<true>(&q, r).to_bits());
                let mut wide = ([0f32; PAIR_BLOCK], [0f32; PAIR_BLOCK]);
                // SAFETY: as above.
                unsafe { gaussian_block_avx2(&words, &mut wide.0, &mut wide.1) };
                assert_eq!(bits(&wide.0), bits(&expected.0));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present, checked just above.
                let d = unsafe { kernel_avx512::<false>(&q, r) };
                assert_eq!(d.to_bits(), kernel::<false>(&q, r).to_bits());
                let mut wide = ([0f32; PAIR_BLOCK], [0f32; PAIR_BLOCK]);
                // SAFETY: as above.
                unsafe { gaussian_block_avx512(&words, &mut wide.0, &mut wide.1) };
                assert_eq!(bits(&wide.1), bits(&expected.1));
            }
        }
    }

    #[test]
    fn rows_are_identical_whatever_the_batch_size() {
        for dist in all_distributions() {
            for normalize in [false, true] {
                let a = VectorGenerator::new(33, dist.clone(), normalize, 7);
                let b = VectorGenerator::new(33, dist.clone(), normalize, 7);
                let whole = a.rows(0, 1000);
                assert_eq!(whole.len(), 1000 * 33);
                let mut pieces = b.rows(0, 7);
                pieces.extend(b.rows(7, 993));
                assert_eq!(bits(&whole), bits(&pieces), "{dist:?}");
                let mut one = vec![0.0; 33];
                for i in [0u64, 1, 6, 7, 500, 999] {
                    b.fill_row(i, &mut one);
                    let at = i as usize * 33;
                    assert_eq!(bits(&one), bits(&whole[at..at + 33]), "{dist:?} row {i}");
                }
                // Out of order, in a fresh generator: still the same bits.
                let c = VectorGenerator::new(33, dist.clone(), normalize, 7);
                assert_eq!(bits(&c.rows(500, 3)), bits(&whole[500 * 33..503 * 33]));
            }
        }
    }

    #[test]
    fn different_seeds_give_different_rows_and_queries_differ_from_rows() {
        for dist in all_distributions() {
            let a = VectorGenerator::new(16, dist.clone(), false, 1);
            let b = VectorGenerator::new(16, dist.clone(), false, 2);
            assert_ne!(bits(&a.rows(0, 10)), bits(&b.rows(0, 10)), "{dist:?}");
            let rows = a.rows(0, 10);
            let queries = a.queries(10);
            assert_eq!(queries.len(), 160);
            for (q, r) in queries.chunks_exact(16).zip(rows.chunks_exact(16)) {
                assert_ne!(bits(q), bits(r), "{dist:?}");
            }
            let mut q3 = vec![0.0; 16];
            a.fill_query(3, &mut q3);
            assert_eq!(bits(&q3), bits(&queries[48..64]));
            // Consecutive rows are not copies of each other either.
            assert_ne!(bits(&rows[..16]), bits(&rows[16..32]));
        }
    }

    #[test]
    fn normalized_vectors_have_unit_norm() {
        for dist in all_distributions() {
            let g = VectorGenerator::new(100, dist.clone(), true, 3);
            for v in g
                .rows(0, 200)
                .chunks_exact(100)
                .chain(g.queries(50).chunks_exact(100))
            {
                let norm: f64 = v
                    .iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum::<f64>()
                    .sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "{dist:?}: {norm}");
            }
        }
    }

    #[test]
    fn a_zero_vector_stays_zero_when_normalized() {
        let g = VectorGenerator::new(
            8,
            VectorDistribution::Uniform {
                low: 0.0,
                high: 0.0,
            },
            true,
            1,
        );
        assert_eq!(g.rows(0, 3), vec![0.0; 24]);
    }

    #[test]
    fn normal_components_have_mean_zero_and_unit_std() {
        let g = VectorGenerator::new(64, VectorDistribution::Normal, false, 11);
        let v = g.rows(0, 20_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.005, "std {}", var.sqrt());
        // Shape, not just moments: P(|x| < 1) ≈ 0.6827 and P(|x| < 2) ≈ 0.9545.
        let within = |t: f32| v.iter().filter(|x| x.abs() < t).count() as f64 / n;
        assert!((within(1.0) - 0.6827).abs() < 0.003);
        assert!((within(2.0) - 0.9545).abs() < 0.002);
        // Every component position is centred, including the "sin" half of each row.
        for c in [0usize, 31, 32, 63] {
            let m: f64 = v.chunks_exact(64).map(|r| f64::from(r[c])).sum::<f64>() / 20_000.0;
            assert!(m.abs() < 0.03, "component {c}: {m}");
        }
    }

    #[test]
    fn odd_dimensions_fill_every_component() {
        let g = VectorGenerator::new(5, VectorDistribution::Normal, false, 5);
        let v = g.rows(0, 1000);
        for c in 0..5 {
            let zeros = v.chunks_exact(5).filter(|r| r[c] == 0.0).count();
            assert!(zeros < 2, "component {c} is zero {zeros} times");
        }
    }

    #[test]
    fn uniform_components_stay_within_bounds() {
        let g = VectorGenerator::new(
            10,
            VectorDistribution::Uniform {
                low: -0.5,
                high: 0.25,
            },
            false,
            9,
        );
        let v = g.rows(0, 10_000);
        assert!(v.iter().all(|&x| (-0.5..0.25).contains(&x)));
        let min = v.iter().copied().fold(f32::INFINITY, f32::min);
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(min < -0.499 && max > 0.249, "{min} {max}");
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        assert!((mean + 0.125).abs() < 0.002, "{mean}");
    }

    #[test]
    fn an_empty_uniform_range_gives_its_low_bound() {
        let g = VectorGenerator::new(
            3,
            VectorDistribution::Uniform {
                low: 2.0,
                high: 1.0,
            },
            false,
            1,
        );
        assert_eq!(g.rows(0, 2), vec![2.0; 6]);
    }

    #[test]
    fn clustered_rows_lie_near_a_centre() {
        let dim = 32;
        let g = VectorGenerator::new(
            dim,
            VectorDistribution::Clustered {
                centers: 5,
                spread: 0.05,
            },
            false,
            21,
        );
        assert_eq!(g.centres.len(), 5 * dim);
        let mut used = [0usize; 5];
        for row in g.rows(0, 500).chunks_exact(dim) {
            let (best, d) = g
                .centres
                .chunks_exact(dim)
                .map(|c| distance(Metric::L2, row, c))
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            // Expected squared distance is dim·spread² = 0.08; centres are ~64 apart.
            assert!(d < 0.3, "{d}");
            used[best] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    #[test]
    fn centres_regenerated_per_row_match_precomputed_ones() {
        let dist = VectorDistribution::Clustered {
            centers: 3,
            spread: 0.5,
        };
        let kept = VectorGenerator::new(12, dist.clone(), true, 4);
        let mut regenerated = kept.clone();
        regenerated.centres.clear();
        assert_eq!(bits(&kept.rows(0, 50)), bits(&regenerated.rows(0, 50)));
        assert_eq!(bits(&kept.queries(5)), bits(&regenerated.queries(5)));
    }

    #[test]
    fn zero_centres_behave_as_one() {
        let g = VectorGenerator::new(
            4,
            VectorDistribution::Clustered {
                centers: 0,
                spread: 0.0,
            },
            false,
            4,
        );
        let v = g.rows(0, 3);
        assert_eq!(bits(&v[0..4]), bits(&v[4..8]));
        assert_eq!(bits(&v[0..4]), bits(&g.centres));
    }

    #[test]
    fn odd_output_lengths_and_dimension_zero_do_not_panic() {
        let g = VectorGenerator::new(6, VectorDistribution::Normal, true, 1);
        let full = g.rows(3, 1);
        let mut short = vec![9.0; 4];
        g.fill_row(3, &mut short);
        assert_eq!(bits(&short), bits(&full[..4]));
        let mut long = vec![9.0; 8];
        g.fill_row(3, &mut long);
        assert_eq!(bits(&long[..6]), bits(&full));
        assert_eq!(&long[6..], &[0.0, 0.0]);

        let empty = VectorGenerator::new(0, VectorDistribution::Normal, true, 1);
        assert!(empty.rows(0, 10).is_empty());
        assert!(empty.queries(10).is_empty());
        empty.fill_row(0, &mut []);
        let gt = ground_truth(&empty, 10, &[], 5, Metric::L2, 1, &|_| {});
        assert!(gt.ids.is_empty());
    }

    #[test]
    fn categorical_scalars_are_deterministic_and_cover_every_category() {
        let values = ScalarValues::Categorical(vec!["red".into(), "green".into(), "blue".into()]);
        let a = ScalarGenerator::new("colour", values.clone(), 5);
        let b = ScalarGenerator::new("colour", values.clone(), 5);
        let col = a.strings(0, 3000);
        let mut pieces = b.strings(0, 10);
        pieces.extend(b.strings(10, 2990));
        assert_eq!(col, pieces);
        for name in ["red", "green", "blue"] {
            let n = col.iter().filter(|s| *s == name).count();
            assert!((900..1100).contains(&n), "{name}: {n}");
        }
        for row in [0u64, 17, 2999] {
            let i = a.category_index(row);
            assert_eq!(a.string_value(row), col[row as usize]);
            assert_eq!(a.int_value(row), i as i64);
        }
        // Another column with the same values draws from its own stream.
        let other = ScalarGenerator::new("shade", values, 5);
        assert_ne!(other.strings(0, 100), a.strings(0, 100));
        // Query values use yet another stream but the same categories.
        let q: Vec<String> = (0..100).map(|i| a.query_value(i)).collect();
        assert_ne!(q, a.strings(0, 100));
        assert!(
            q.iter()
                .all(|v| ["red", "green", "blue"].contains(&v.as_str()))
        );
    }

    #[test]
    fn int_scalars_cover_both_ends_of_the_range() {
        let g = ScalarGenerator::new("age", ScalarValues::IntRange { min: -3, max: 4 }, 8);
        let col = g.ints(0, 5000);
        assert_eq!(col, g.ints(0, 5000));
        assert!(col.iter().all(|v| (-3..=4).contains(v)));
        for v in -3..=4 {
            assert!(col.contains(&v), "{v} never drawn");
        }
        assert_eq!(g.int_value(42), col[42]);
        assert_eq!(g.string_value(42), "");
        assert_eq!(g.category_index(42), 0);
        let q: i64 = g.query_value(3).parse().unwrap();
        assert!((-3..=4).contains(&q));
    }

    #[test]
    fn degenerate_scalar_definitions_do_not_panic() {
        let empty = ScalarGenerator::new("e", ScalarValues::Categorical(vec![]), 1);
        assert_eq!(empty.string_value(5), "");
        assert_eq!(empty.category_index(5), 0);
        assert_eq!(empty.query_value(5), "");
        let one = ScalarGenerator::new("o", ScalarValues::IntRange { min: 7, max: 7 }, 1);
        assert_eq!(one.ints(0, 5), vec![7; 5]);
        let swapped = ScalarGenerator::new("s", ScalarValues::IntRange { min: 9, max: 2 }, 1);
        assert!(swapped.ints(0, 100).iter().all(|v| (2..=9).contains(v)));
        let full = ScalarGenerator::new(
            "f",
            ScalarValues::IntRange {
                min: i64::MIN,
                max: i64::MAX,
            },
            1,
        );
        let v = full.ints(0, 100);
        assert!(v.iter().any(|&x| x < 0) && v.iter().any(|&x| x > 0));
    }

    #[test]
    fn distances_follow_milvus_definitions() {
        let a = [1.0, 2.0, 3.0];
        let b = [4.0, 6.0, 3.0];
        assert_eq!(distance(Metric::L2, &a, &b), 25.0);
        assert_eq!(distance(Metric::Ip, &a, &b), 25.0);
        assert_eq!(
            distance(Metric::Cosine, &[3.0, 0.0], &[4.0, 4.0]),
            12.0 / (3.0 * 32f32.sqrt())
        );
        assert_eq!(distance(Metric::Cosine, &[0.0, 0.0], &[1.0, 1.0]), 0.0);
        // Long vectors exercise the lane accumulators and the tail.
        let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let y: Vec<f32> = (0..37).map(|i| (i % 3) as f32).collect();
        assert_eq!(
            distance(Metric::Ip, &x, &y),
            (0..37).map(|i| i * (i % 3)).sum::<i32>() as f32
        );
        assert_eq!(
            distance(Metric::L2, &x, &y),
            (0..37).map(|i| (i - i % 3) * (i - i % 3)).sum::<i32>() as f32
        );
        assert_eq!(Metric::from_name("cosine"), Some(Metric::Cosine));
        assert_eq!(Metric::from_name("HAMMING"), None);
        assert!(ranks_before(Metric::L2, 1.0, 5, 2.0, 1));
        assert!(ranks_before(Metric::Ip, 2.0, 5, 1.0, 1));
        assert!(ranks_before(Metric::Ip, 2.0, 1, 2.0, 5));
    }

    #[test]
    fn ground_truth_equals_a_naive_search() {
        // (3000, 16): whole lane chunks only; (2999, 19): lane tails and leftover rows.
        for (rows, dim) in [(3000u64, 16usize), (2999, 19)] {
            for (dist, normalize) in [
                (VectorDistribution::Normal, true),
                (VectorDistribution::Normal, false),
                (
                    VectorDistribution::Clustered {
                        centers: 4,
                        spread: 0.3,
                    },
                    false,
                ),
            ] {
                let data = VectorGenerator::new(dim, dist.clone(), normalize, 99);
                let queries = data.queries(20);
                for metric in [Metric::L2, Metric::Ip, Metric::Cosine] {
                    let (ids, dists) = naive_ground_truth(&data, rows, &queries, 10, metric);
                    for threads in [1, 3] {
                        let gt = ground_truth(&data, rows, &queries, 10, metric, threads, &|_| {});
                        let what = format!("{rows}x{dim} {dist:?} {metric:?} threads={threads}");
                        assert_eq!(gt.ids, ids, "{what}");
                        assert_eq!(
                            gt.distances.iter().map(|d| bits(d)).collect::<Vec<_>>(),
                            dists.iter().map(|d| bits(d)).collect::<Vec<_>>(),
                            "{what}"
                        );
                        assert_eq!(gt.metric, metric.as_str());
                        assert_eq!((gt.top_k, gt.rows, gt.seed), (10, rows, 99));
                    }
                }
            }
        }
    }

    #[test]
    fn ground_truth_breaks_ties_by_smaller_id() {
        // Every row is identical, so all distances tie and the smallest ids must win.
        let data = VectorGenerator::new(
            5,
            VectorDistribution::Clustered {
                centers: 1,
                spread: 0.0,
            },
            false,
            3,
        );
        let queries = data.queries(2);
        for threads in [1, 2] {
            let gt = ground_truth(&data, 1000, &queries, 4, Metric::L2, threads, &|_| {});
            assert_eq!(gt.ids, vec![vec![0, 1, 2, 3]; 2]);
        }
    }

    #[test]
    fn ground_truth_handles_more_neighbours_than_rows_and_odd_sizes() {
        let data = VectorGenerator::new(7, VectorDistribution::Normal, false, 1);
        let mut queries = data.queries(3);
        queries.push(1.0); // A trailing partial query is ignored.
        let gt = ground_truth(&data, 6, &queries, 50, Metric::Ip, 4, &|_| {});
        let (ids, _) = naive_ground_truth(&data, 6, &queries[..21], 50, Metric::Ip);
        assert_eq!(gt.ids, ids);
        assert!(gt.ids.iter().all(|q| q.len() == 6));
        let none = ground_truth(&data, 0, &queries, 10, Metric::L2, 2, &|_| {});
        assert_eq!(none.ids, vec![Vec::<i64>::new(); 3]);
        let zero_k = ground_truth(&data, 10, &queries, 0, Metric::L2, 0, &|_| {});
        assert_eq!(zero_k.ids, vec![Vec::<i64>::new(); 3]);
    }

    #[test]
    fn ground_truth_reports_increasing_progress_up_to_all_rows() {
        let data = VectorGenerator::new(64, VectorDistribution::Normal, false, 1);
        let queries = data.queries(2);
        let seen = Mutex::new(Vec::new());
        ground_truth(&data, 50_000, &queries, 3, Metric::L2, 2, &|n| {
            seen.lock().unwrap().push(n)
        });
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() >= 10, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&50_000));
    }

    #[test]
    fn ground_truth_round_trips_through_json() {
        let data = VectorGenerator::new(4, VectorDistribution::Normal, false, 1);
        let gt = ground_truth(&data, 100, &data.queries(2), 3, Metric::Cosine, 1, &|_| {});
        let json = serde_json::to_string(&gt).unwrap();
        assert_eq!(serde_json::from_str::<GroundTruth>(&json).unwrap(), gt);
    }

    #[test]
    fn recall_counts_true_neighbours_among_the_first_k_found() {
        assert_eq!(recall_at_k(&[1, 2, 3, 4], &[1, 2, 3, 4], 4), 1.0);
        assert_eq!(recall_at_k(&[4, 3, 9, 8], &[1, 2, 3, 4], 4), 0.5);
        assert_eq!(recall_at_k(&[1, 1, 1, 1], &[1, 2, 3, 4], 4), 0.25);
        // Only the first k of each side count.
        assert_eq!(recall_at_k(&[9, 1, 2], &[1, 2, 3], 2), 0.5);
        // Fewer true neighbours than k: k shrinks to the truth.
        assert_eq!(recall_at_k(&[7, 8, 5], &[7, 8], 10), 1.0);
        assert_eq!(recall_at_k(&[], &[1, 2], 2), 0.0);
        assert_eq!(recall_at_k(&[1], &[], 10), 1.0);
        assert_eq!(recall_at_k(&[1], &[1], 0), 1.0);
        // The sorted path for large k.
        let truth: Vec<i64> = (0..100).collect();
        let found: Vec<i64> = (50..150).rev().collect();
        assert_eq!(recall_at_k(&found, &truth, 100), 0.5);
    }

    #[test]
    fn filters_are_filled_from_query_values() {
        let scalars = vec![
            ScalarGenerator::new(
                "category",
                ScalarValues::Categorical(vec!["x".into(), "y".into()]),
                1,
            ),
            ScalarGenerator::new("price", ScalarValues::IntRange { min: 10, max: 20 }, 1),
        ];
        let template = r#"category == "{category}" and price < {price}"#;
        assert_eq!(filter_placeholders(template), vec!["category", "price"]);
        let filled = fill_filter(template, &scalars, 6).unwrap();
        assert_eq!(
            filled,
            format!(
                r#"category == "{}" and price < {}"#,
                scalars[0].query_value(6),
                scalars[1].query_value(6)
            )
        );
        assert_eq!(fill_filter(template, &scalars, 6).unwrap(), filled);
        assert_eq!(
            fill_filter("price > {price} or price < {price}", &scalars[1..], 2).unwrap(),
            format!("price > {0} or price < {0}", scalars[1].query_value(2))
        );
        assert_eq!(
            fill_filter("color == '{colour}'", &scalars, 0),
            Err("colour".to_string())
        );
        assert_eq!(fill_filter("id > 5", &scalars, 0).unwrap(), "id > 5");
    }

    #[test]
    fn only_identifiers_in_braces_are_placeholders() {
        assert_eq!(filter_placeholders("a {b} {b} {c_1}"), vec!["b", "c_1"]);
        let literal = "x in {1, 2} and {} and {9a} and {open";
        assert!(filter_placeholders(literal).is_empty());
        assert_eq!(fill_filter(literal, &[], 0).unwrap(), literal);
        assert_eq!(filter_placeholders("{é}{_x}"), vec!["_x"]);
    }
}
