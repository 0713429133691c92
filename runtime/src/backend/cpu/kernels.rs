//! The CPU backend's layer kernels. Each is a descriptor with every shape,
//! stride and address fixed at compile time (for one batch size) and a `run`
//! that does this thread's share. The network function calls them in order.

use super::conv::{self, Scratch};
use super::gemm::{sgemm, MatRef};
use super::Act;
use netc_compiler::ir::{BinaryOp, PoolKind};
use std::cell::RefCell;

/// A strided view: `dims` with element `strides` from `ptr` (rank ≤ 6 after lowering).
#[derive(Debug, Clone)]
pub struct View {
    /// First element.
    pub ptr: *mut f32,
    /// Extents (the batch first, when there is one).
    pub dims: Vec<usize>,
    /// Element strides (0 where broadcast).
    pub strides: Vec<usize>,
}

/// Merges adjacent dimensions that every view walks as one (`stride[i] =
/// stride[i+1] · dims[i+1]` in all of them) and drops dimensions of extent
/// 1, so that element-wise kernels run long rows with few index updates: a
/// squeeze-excitation scale over `[C, 7, 7]` becomes `C` rows of 49. The
/// views must share their dims.
pub fn coalesce(views: &mut [&mut View]) {
    let Some(first) = views.first() else { return };
    let dims = first.dims.clone();
    let mut keep: Vec<usize> = Vec::new();
    for i in 0..dims.len() {
        if dims[i] == 1 && dims.len() > 1 {
            continue;
        }
        if let Some(&prev) = keep.last() {
            let merges = views
                .iter()
                .all(|v| v.strides[prev] == v.strides[i] * v.dims[i]);
            if merges {
                for v in views.iter_mut() {
                    v.dims[i] *= v.dims[prev];
                    v.dims[prev] = 1;
                }
                keep.pop();
            }
        }
        keep.push(i);
    }
    if keep.is_empty() {
        keep.push(dims.len() - 1);
    }
    for v in views.iter_mut() {
        v.dims = keep.iter().map(|&i| v.dims[i]).collect();
        v.strides = keep.iter().map(|&i| v.strides[i]).collect();
    }
}

/// A batch of `[channels, h, w]` (or any per-sample block) images.
#[derive(Debug, Clone, Copy)]
pub struct Images {
    /// Sample 0.
    pub ptr: *mut f32,
    /// Distance between samples.
    pub sample_stride: usize,
}

impl Images {
    /// Sample `n`.
    #[inline]
    pub(super) fn at(&self, n: usize) -> *mut f32 {
        // SAFETY: the lowering checked every sample against its buffer.
        unsafe { self.ptr.add(n * self.sample_stride) }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

thread_local! {
    /// Float buffers the kernels reuse from call to call (see [`take_buffers`]).
    static BUFFERS: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// This thread's reusable float buffers, `N` of them with the given lengths
/// (contents unspecified), so kernels do not allocate per call; give them
/// back with [`put_buffers`]. Taken out of the thread-local rather than used
/// inside `with`'s closure, which is compiled without the entry's AVX2/FMA
/// features.
#[inline(always)]
pub(super) fn take_buffers<const N: usize>(lens: [usize; N]) -> [Vec<f32>; N] {
    let mut pool = BUFFERS.take();
    let bufs = lens.map(|len| {
        let mut b = pool.pop().unwrap_or_default();
        b.resize(len, 0.0);
        b
    });
    BUFFERS.set(pool);
    bufs
}

/// Returns buffers from [`take_buffers`] for the next call.
#[inline(always)]
pub(super) fn put_buffers<const N: usize>(bufs: [Vec<f32>; N]) {
    let mut pool = BUFFERS.take();
    pool.extend(bufs);
    BUFFERS.set(pool);
}

/// A convolution or linear layer: one GEMM per group.
#[derive(Debug)]
pub struct Gemm {
    /// One problem per group.
    pub problems: Vec<conv::Problem>,
    /// Hands out whole groups, when there are many.
    pub queue: conv::WorkQueue,
}

impl Gemm {
    #[inline(always)]
    fn run(&self, threads: usize) {
        // Taken out of the thread-local rather than used inside `with`'s
        // closure: a closure is compiled without this function's AVX2/FMA
        // target features, and the packing and epilogue inline into it.
        let mut scratch = SCRATCH.take();
        let s = &mut scratch;
        if self.problems.len() >= threads * 2 {
            // Many groups (ResNeXt): whole groups per thread.
            for (g0, g1) in self.queue.chunks(self.problems.len(), threads, 1) {
                for p in &self.problems[g0..g1] {
                    // SAFETY: lowering checked the extents; groups write
                    // disjoint channels; this thread alone runs the group.
                    unsafe { p.run(1, s) };
                }
            }
        } else {
            for p in &self.problems {
                // SAFETY: as above; threads split each problem disjointly.
                unsafe { p.run(threads, s) };
            }
        }
        SCRATCH.set(scratch);
    }
}

/// A 3×3 convolution run as Winograd F(2×2, 3×3) (`conv/winograd.rs`).
#[derive(Debug)]
pub struct Winograd(pub conv::Winograd);

impl Winograd {
    #[inline(always)]
    fn run(&self, threads: usize) {
        // As in `Gemm::run`: the scratch out of the thread-local, so the
        // body compiles with this entry's target features.
        let mut scratch = SCRATCH.take();
        // SAFETY: lowering checked the extents and chose this kernel only
        // where the CPU has AVX2 and FMA; threads split the units disjointly.
        unsafe { self.0.run(threads, &mut scratch) };
        SCRATCH.set(scratch);
    }
}

/// `a·b + c`: one fused multiply-add when `fma` (the AVX2+FMA entries, where
/// it is one `vfmadd`), else a multiply and an add. `f32::mul_add` without
/// hardware FMA is a libm call per element, which made the baseline entries
/// tens of times slower. `fma` is loop-invariant, so each loop is compiled
/// once per case.
#[inline(always)]
pub(super) fn madd(fma: bool, a: f32, b: f32, c: f32) -> f32 {
    if fma {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Writes an input row into the two column phases of its zero-padded,
/// stride-2 copy in one pass: padded column `x + pad_left` (input column
/// `x`) goes to phase `(x + pad_left) % 2` at `(x + pad_left) / 2`; every
/// other element of both phases is zero. Pairs of input columns go one to
/// each phase, eight pairs per two shuffles on AVX2 (the compiler leaves
/// the pair loop scalar: a load and a store per element, 60% of a stride-2
/// depthwise layer's time).
#[inline(always)]
pub(super) fn split_stride2(src: &[f32], pad_left: usize, even: &mut [f32], odd: &mut [f32]) {
    even.fill(0.0);
    odd.fill(0.0);
    split_stride2_over_zeros(src, pad_left, even, odd);
}

/// [`split_stride2`] into phases whose padding is already zero: writes only
/// the elements that hold input columns.
#[inline(always)]
pub(super) fn split_stride2_over_zeros(
    src: &[f32],
    pad_left: usize,
    even: &mut [f32],
    odd: &mut [f32],
) {
    let len = even.len().min(odd.len());
    let used = src.len().min((2 * len).saturating_sub(pad_left));
    let src = &src[..used];
    let (da, db, oa, ob) = if pad_left.is_multiple_of(2) {
        (even, odd, pad_left / 2, pad_left / 2)
    } else {
        (odd, even, (pad_left - 1) / 2, pad_left.div_ceil(2))
    };
    // The second phase's pairs may end one short of the first's.
    let pairs = (used / 2)
        .min(da.len().saturating_sub(oa))
        .min(db.len().saturating_sub(ob));
    if pairs > 0 {
        let (da, db) = (&mut da[oa..oa + pairs], &mut db[ob..ob + pairs]);
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked; `src` holds 2·pairs floats, `da` and
            // `db` pairs each.
            done =
                unsafe { deinterleave_avx2(src.as_ptr(), pairs, da.as_mut_ptr(), db.as_mut_ptr()) };
        }
        for ((a, b), pr) in da[done..]
            .iter_mut()
            .zip(&mut db[done..])
            .zip(src[2 * done..].chunks_exact(2))
        {
            *a = pr[0];
            *b = pr[1];
        }
    }
    for (x, &v) in src.iter().enumerate().skip(2 * pairs) {
        let p = x + pad_left;
        if p % 2 == pad_left % 2 {
            da[oa + x / 2] = v;
        } else {
            db[ob + (x - 1) / 2] = v;
        }
    }
}

/// Eight pairs of `src` from pair `i` on, split into their first and
/// second elements.
///
/// # Safety
/// AVX2; `src` holds pairs `i..i + 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn pairs8(
    src: *const f32,
    i: usize,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_ps(src.add(2 * i)),
            _mm256_loadu_ps(src.add(2 * i + 8)),
        )
    };
    // Per 128-bit lane: [lo0 lo2 hi0 hi2] and [lo1 lo3 hi1 hi3]; the
    // 64-bit permute puts lo's halves before hi's.
    let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
    let even = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(even));
    let odd = _mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(odd));
    (_mm256_castpd_ps(even), _mm256_castpd_ps(odd))
}

/// The first `8·⌊pairs/8⌋` pairs of `src` split into `a` (first of each
/// pair) and `b` (second); returns how many pairs that is.
///
/// # Safety
/// AVX2; `src` holds `2·pairs` floats, `a` and `b` `pairs` each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn deinterleave_avx2(
    src: *const f32,
    pairs: usize,
    a: *mut f32,
    b: *mut f32,
) -> usize {
    use std::arch::x86_64::*;
    let whole = pairs / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: pairs i..i + 8 are inside the caller's extents.
        unsafe {
            let (even, odd) = pairs8(src, i);
            _mm256_storeu_ps(a.add(i), even);
            _mm256_storeu_ps(b.add(i), odd);
        }
    }
    whole
}

/// `dst[i] = src[2·i]` for the first `8·⌊n/8⌋` of `n` elements; returns
/// how many that is.
///
/// # Safety
/// AVX2; `src` holds `2·n` floats, `dst` `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn take_even_avx2(src: *const f32, n: usize, dst: *mut f32) -> usize {
    let whole = n / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: elements 2i..2i + 16 ≤ 2·whole ≤ 2n are inside `src`.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(dst.add(i), pairs8(src, i).0) };
    }
    whole
}

pub use super::depthwise::Depthwise;
pub use super::grouped::Grouped;

/// A pointwise convolution's packed weights ([`super::gemm::pack_weights`],
/// `m×k`) with column `k` multiplied by `scale[k]`, written to `dst` for the
/// convolution to read: `W·(s ⊙ x)` computed as `(W·diag s)·x`. A
/// squeeze-excitation block's channel scaling feeds its projection this way
/// where the weights are smaller than the scaled tensor (EfficientNet-B0's
/// first blocks: 16×32 weights against a 32×112×112 map), one pass over
/// the map fewer.
#[derive(Debug)]
pub struct ScaleColumns {
    /// The packed weights.
    pub src: *const f32,
    /// Where the scaled copy goes (arena, [`super::gemm::packed_len`] floats).
    pub dst: *mut f32,
    /// `k` scales (per input channel).
    pub scale: *const f32,
    /// Rows (output channels).
    pub m: usize,
    /// Columns (input channels).
    pub k: usize,
    /// Hands out the row panels.
    pub queue: conv::WorkQueue,
}

impl ScaleColumns {
    #[inline(always)]
    fn run(&self, threads: usize) {
        use super::gemm::{K_BLOCK, MR};
        let panels = self.m.div_ceil(MR);
        let mpad = panels * MR;
        // Units are the packed row panels of each K block: contiguous
        // `kc×MR` runs, step kk scaled by scale[k0 + kk].
        let units = self.k.div_ceil(K_BLOCK) * panels;
        for (u0, u1) in self.queue.chunks(units, threads, 4) {
            for u in u0..u1 {
                let (k0, p) = (u / panels * K_BLOCK, u % panels);
                let kc = K_BLOCK.min(self.k - k0);
                let at = k0 * mpad + p * kc * MR;
                // SAFETY: the lowering sized src and dst as packed m×k
                // weights and scale as k floats; threads own panels.
                let (src, dst, scale) = unsafe {
                    (
                        std::slice::from_raw_parts(self.src.add(at), kc * MR),
                        std::slice::from_raw_parts_mut(self.dst.add(at), kc * MR),
                        std::slice::from_raw_parts(self.scale.add(k0), kc),
                    )
                };
                for ((d, w), s) in dst
                    .chunks_exact_mut(MR)
                    .zip(src.chunks_exact(MR))
                    .zip(scale)
                {
                    for (d, w) in d.iter_mut().zip(w) {
                        *d = w * s;
                    }
                }
            }
        }
    }
}

/// `y = x·scale[c] + shift[c]` over `[outer, channels, inner]` per sample
/// (inference batch norm, layer scale).
#[derive(Debug)]
pub struct ChannelAffine {
    /// Input.
    pub x: Images,
    /// Output (may be the input).
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// `[outer, channels, inner]`.
    pub dims: [usize; 3],
    /// Per-channel scale.
    pub scale: Vec<f32>,
    /// Per-channel shift (absent: 0).
    pub shift: Option<Vec<f32>>,
    /// An activation applied after the affine map, on each row while it
    /// is in L1 (a batch norm followed by its only user, an activation,
    /// as DenseNet's pre-activation layers have it).
    pub act: Option<super::Act>,
    /// Hands out the rows.
    pub queue: conv::WorkQueue,
}

impl ChannelAffine {
    #[inline(always)]
    // `clamp` would return NaN for NaN, where `Act::apply` maps it to 0.
    #[allow(clippy::manual_clamp)]
    fn run(&self, threads: usize) {
        let [outer, c, inner] = self.dims;
        for u in claimed_units(&self.queue, self.batch * outer * c, threads) {
            let n = u / (outer * c);
            let ch = u % c;
            let o = (u / c) % outer;
            let off = (o * c + ch) * inner;
            let (s, t) = (self.scale[ch], self.shift.as_ref().map_or(0.0, |v| v[ch]));
            // SAFETY: extents checked at lowering; in-place is element-wise.
            unsafe {
                let src = self.x.at(n).add(off);
                let dst = self.out.at(n).add(off);
                // `max`/`min` as in `Act::apply` (NaN maps to 0).
                match self.act {
                    None => (0..inner).for_each(|i| *dst.add(i) = *src.add(i) * s + t),
                    Some(super::Act::Relu) => {
                        (0..inner).for_each(|i| *dst.add(i) = (*src.add(i) * s + t).max(0.0))
                    }
                    Some(super::Act::Relu6) => (0..inner)
                        .for_each(|i| *dst.add(i) = (*src.add(i) * s + t).max(0.0).min(6.0)),
                    Some(a) => {
                        (0..inner).for_each(|i| *dst.add(i) = *src.add(i) * s + t);
                        a.apply(std::slice::from_raw_parts_mut(dst, inner));
                    }
                }
            }
        }
    }
}

/// An activation over `len` contiguous floats per sample.
#[derive(Debug)]
pub struct Activation {
    /// Input.
    pub x: Images,
    /// Output (may be the input).
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// Floats per sample.
    pub len: usize,
    /// The function.
    pub act: Act,
    /// Hands out the chunks.
    pub queue: conv::WorkQueue,
}

impl Activation {
    #[inline(always)]
    fn run(&self, threads: usize) {
        // Chunks of whole vectors so threads never share a cache line's worth of work.
        let chunks = self.len.div_ceil(1024);
        for u in claimed_units(&self.queue, self.batch * chunks, threads) {
            let (n, c) = (u / chunks, u % chunks);
            let start = c * 1024;
            let len = 1024.min(self.len - start);
            // SAFETY: extents checked at lowering.
            unsafe {
                let src = self.x.at(n).add(start);
                let dst = self.out.at(n).add(start);
                if src != dst {
                    std::ptr::copy_nonoverlapping(src, dst, len);
                }
                self.act.apply(std::slice::from_raw_parts_mut(dst, len));
            }
        }
    }
}

/// The rows (all dims but the last) of `dims` that this thread claims from
/// a queue, cut into segments of at most [`ROW_SEGMENT`] elements, as an
/// odometer: `while let Some((idx, start, len)) = rows.next()` (the row's
/// index, the segment's first element and its length); `None` once every
/// segment is done (see [`conv::WorkQueue::chunks`]). Segments, because
/// coalescing makes a contiguous tensor one row (ConvNeXt's residual adds,
/// 301 056 elements), which one thread ran alone. A loop rather than a
/// function taking a closure: the closure was compiled as a function of its
/// own, for the baseline CPU, outside the kernels' AVX2 entry (`perf`: a
/// scalar SSE loop in `Binary::run::{{closure}}`, 3.5% of EfficientNet-B0).
struct Rows<'a> {
    /// The rows' dims (all but the last).
    outer: &'a [usize],
    /// Segments per row.
    segs: usize,
    chunks: conv::Chunks<'a>,
    /// The row's index.
    idx: Vec<usize>,
    /// The segment's index in its row.
    seg: usize,
    /// Elements per row.
    len: usize,
    /// Segments left in the current chunk.
    left: usize,
    started: bool,
}

/// The most elements of a row [`Rows`] hands out as one unit.
const ROW_SEGMENT: usize = 4096;

impl<'a> Rows<'a> {
    #[inline(always)]
    fn new(dims: &'a [usize], queue: &'a conv::WorkQueue, threads: usize) -> Rows<'a> {
        let (outer, len) = dims.split_at(dims.len() - 1);
        let (len, segs) = (len[0], len[0].div_ceil(ROW_SEGMENT).max(1));
        let units = outer.iter().product::<usize>() * segs;
        Rows {
            outer,
            segs,
            chunks: queue.chunks(units, threads, share(units, threads)),
            idx: vec![0usize; outer.len()],
            seg: 0,
            len,
            left: 0,
            started: false,
        }
    }

    /// The next segment: its row's index (all dims but the last), its first
    /// element and its length.
    #[inline(always)]
    fn next(&mut self) -> Option<(&[usize], usize, usize)> {
        if self.left == 0 {
            let (lo, hi) = self.chunks.next()?;
            // Divisions for a chunk's first segment only; then count like an
            // odometer, the segment the fastest digit.
            self.seg = lo % self.segs;
            let mut rem = lo / self.segs;
            for (i, d) in self.idx.iter_mut().zip(self.outer).rev() {
                *i = rem % d;
                rem /= d;
            }
            self.left = hi - lo;
            self.started = false;
        }
        if self.started {
            self.seg += 1;
            if self.seg == self.segs {
                self.seg = 0;
                for (i, d) in self.idx.iter_mut().zip(self.outer).rev() {
                    *i += 1;
                    if *i < *d {
                        break;
                    }
                    *i = 0;
                }
            }
        }
        self.started = true;
        self.left -= 1;
        let start = self.seg * ROW_SEGMENT;
        Some((&self.idx, start, ROW_SEGMENT.min(self.len - start)))
    }
}

fn offset(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// A strided copy (permute, slice, select, concatenation, batch broadcast).
#[derive(Debug)]
pub struct Copy {
    /// Source (dims are the copy's).
    pub src: View,
    /// Destination.
    pub dst: View,
    /// Hands out the row segments (see [`Rows`]) or transpose blocks.
    pub queue: conv::WorkQueue,
}

impl Copy {
    #[inline(always)]
    fn run(&self, threads: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.is_transpose() && super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma {
            // SAFETY: AVX2 checked; extents checked at lowering.
            unsafe { self.transpose_avx2(threads) };
            return;
        }
        self.run_rows(threads);
    }

    /// [`Copy::run`] by segments of the destination's rows (see [`Rows`]).
    #[inline(always)]
    fn run_rows(&self, threads: usize) {
        let d = &self.dst.dims;
        let last = d.len() - 1;
        let (ss, ds) = (self.src.strides[last], self.dst.strides[last]);
        let mut rows = Rows::new(d, &self.queue, threads);
        while let Some((idx, start, n)) = rows.next() {
            // SAFETY: extents checked at lowering.
            unsafe {
                let s = self
                    .src
                    .ptr
                    .add(offset(idx, &self.src.strides) + start * ss);
                let t = self
                    .dst
                    .ptr
                    .add(offset(idx, &self.dst.strides) + start * ds);
                if ss == 1 && ds == 1 {
                    std::ptr::copy(s, t, n);
                } else {
                    for i in 0..n {
                        *t.add(i * ds) = *s.add(i * ss);
                    }
                }
            }
        }
    }
}

impl Copy {
    /// Whether the last two dimensions are a transpose: the destination's
    /// last dimension and the source's second-to-last are the unit-stride
    /// ones (a permute between channel-major and token-major, as ConvNeXt
    /// does twice per block). Element by element, every load of such a copy
    /// is on another cache line.
    fn is_transpose(&self) -> bool {
        let n = self.dst.dims.len();
        // One past the last element a view addresses (views never overlap
        // for a permute; checked, as the blocks would not survive it).
        let end = |v: &View| {
            let last: usize = v
                .dims
                .iter()
                .zip(&v.strides)
                .map(|(d, s)| d.saturating_sub(1) * s)
                .sum();
            v.ptr.wrapping_add(last + 1)
        };
        n >= 2
            && self.dst.strides[n - 1] == 1
            && self.src.strides[n - 2] == 1
            && self.src.strides[n - 1] >= 8
            && self.dst.strides[n - 2] >= 8
            && (end(&self.src) <= self.dst.ptr || end(&self.dst) <= self.src.ptr)
    }

    /// [`Copy::run`] for [`Copy::is_transpose`]: 8×8 blocks, eight source
    /// rows loaded as vectors, transposed in registers, stored as eight
    /// destination rows; edges element by element. Threads split the
    /// blocks of eight source rows.
    ///
    /// # Safety
    /// AVX2; the views' extents as checked at lowering.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose_avx2(&self, threads: usize) {
        use std::arch::x86_64::*;
        let d = &self.dst.dims;
        let n = d.len();
        let (rows, cols) = (d[n - 2], d[n - 1]);
        let (s_col, d_row) = (self.src.strides[n - 1], self.dst.strides[n - 2]);
        let outer: usize = d[..n - 2].iter().product();
        let blocks = rows.div_ceil(8);
        let mut idx = vec![0usize; n - 2];
        for u in claimed_units(&self.queue, outer * blocks, threads) {
            let (o, r0) = (u / blocks, u % blocks * 8);
            let mut rem = o;
            for (i, dim) in idx.iter_mut().zip(&d[..n - 2]).rev() {
                *i = rem % dim;
                rem /= dim;
            }
            // SAFETY (the whole block): every element read and written is
            // inside the views, whose extents the lowering checked.
            unsafe {
                let src = self.src.ptr.add(offset(&idx, &self.src.strides) + r0);
                let dst = self
                    .dst
                    .ptr
                    .add(offset(&idx, &self.dst.strides) + r0 * d_row);
                let rn = (rows - r0).min(8);
                let full = if rn == 8 { cols / 8 * 8 } else { 0 };
                for c0 in (0..full).step_by(8) {
                    let mut v = [_mm256_setzero_ps(); 8];
                    for (t, v) in v.iter_mut().enumerate() {
                        *v = _mm256_loadu_ps(src.add((c0 + t) * s_col));
                    }
                    let w = super::vmath::transpose8(v);
                    for (r, w) in w.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(r * d_row + c0), *w);
                    }
                }
                for r in 0..rn {
                    for c in full..cols {
                        *dst.add(r * d_row + c) = *src.add(c * s_col + r);
                    }
                }
            }
        }
    }
}

/// An element-wise binary op with broadcasting (strides 0 where broadcast).
#[derive(Debug)]
pub struct Binary {
    /// The op.
    pub op: BinaryOp,
    /// Left operand (dims are the output's).
    pub a: View,
    /// Right operand.
    pub b: View,
    /// Output.
    pub out: View,
    /// Hands out the row segments (see [`Rows`]).
    pub queue: conv::WorkQueue,
}

impl Binary {
    #[inline(always)]
    fn run(&self, threads: usize) {
        let d = &self.out.dims;
        let last = d.len() - 1;
        let (sa, sb) = (self.a.strides[last], self.b.strides[last]);
        let so = self.out.strides[last];
        let mut rows = Rows::new(d, &self.queue, threads);
        while let Some((idx, start, n)) = rows.next() {
            // SAFETY: extents checked at lowering; in-place is element-wise.
            unsafe {
                let a = self.a.ptr.add(offset(idx, &self.a.strides) + start * sa);
                let b = self.b.ptr.add(offset(idx, &self.b.strides) + start * sb);
                let o = self
                    .out
                    .ptr
                    .add(offset(idx, &self.out.strides) + start * so);
                match self.op {
                    BinaryOp::Add => binary_row(o, a, b, n, [sa, sb, so], |x, y| x + y),
                    BinaryOp::Sub => binary_row(o, a, b, n, [sa, sb, so], |x, y| x - y),
                    BinaryOp::Mul => binary_row(o, a, b, n, [sa, sb, so], |x, y| x * y),
                    BinaryOp::Div => binary_row(o, a, b, n, [sa, sb, so], |x, y| x / y),
                }
            }
        }
    }
}

/// `o[i·so] = f(a[i·sa], b[i·sb])` for `i < n`, with the common strides
/// (all unit, or one operand broadcast, into a contiguous output) as
/// separate loops the compiler vectorizes. The output's stride is not always
/// 1: a `[N, 1, 1, 1]` result that is a slice of a concatenation coalesces to
/// `[N]` with the concatenation's sample stride.
///
/// # Safety
/// Each pointer must be valid for `n` elements at its stride; `o` may equal
/// `a` or `b` (element-wise).
#[inline(always)]
unsafe fn binary_row(
    o: *mut f32,
    a: *const f32,
    b: *const f32,
    n: usize,
    [sa, sb, so]: [usize; 3],
    f: impl Fn(f32, f32) -> f32,
) {
    // Eight lanes read whole before any is written, so the compiler needs
    // no alias checks to make them one vector operation (`o` may be `a`
    // or `b`; element by element it kept the loop scalar).
    const L: usize = 8;
    let full = n / L * L;
    unsafe {
        let lanes = |p: *const f32, i: usize, s: usize| -> [f32; L] {
            match s {
                0 => [*p; L],
                _ => std::ptr::read_unaligned(p.add(i) as *const [f32; L]),
            }
        };
        if so == 1 && matches!((sa, sb), (1, 1) | (1, 0) | (0, 1)) {
            for i in (0..full).step_by(L) {
                let (x, y) = (lanes(a, i, sa), lanes(b, i, sb));
                let mut r = [0f32; L];
                for k in 0..L {
                    r[k] = f(x[k], y[k]);
                }
                std::ptr::write_unaligned(o.add(i) as *mut [f32; L], r);
            }
            (full..n).for_each(|i| *o.add(i) = f(*a.add(i * sa), *b.add(i * sb)));
            return;
        }
        (0..n).for_each(|i| *o.add(i * so) = f(*a.add(i * sa), *b.add(i * sb)));
    }
}

/// Max or average pooling over `[C, H, W]` images.
#[derive(Debug)]
pub struct Pool {
    /// Max or mean.
    pub kind: PoolKind,
    /// Input.
    pub x: Images,
    /// Output.
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input (h, w).
    pub in_hw: [usize; 2],
    /// Output (h, w).
    pub out_hw: [usize; 2],
    /// Window.
    pub window: netc_compiler::ir::Window,
    /// Whether padding counts in the divisor (average).
    pub count_include_pad: bool,
    /// Hands out the channels.
    pub queue: conv::WorkQueue,
}

/// max(m, v) that propagates NaN from `v`, as PyTorch's max pool does.
#[inline(always)]
fn nan_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// `acc[i] = nan_max(acc[i], v[i])` over `acc`'s length (`v` at least as
/// long; NaN payloads may differ). On AVX2 with whole-vector stores: the
/// compiler turns the scalar loop into masked stores, which AMD microcodes
/// and which stall the next row's loads.
#[inline(always)]
fn nan_max_into(acc: &mut [f32], v: &[f32]) {
    let v = &v[..acc.len()];
    #[cfg(target_arch = "x86_64")]
    if super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma {
        // SAFETY: AVX2 checked; both slices hold acc.len() floats.
        unsafe { nan_max_into_avx2(acc, v) };
        return;
    }
    for (m, v) in acc.iter_mut().zip(v) {
        *m = nan_max(*m, *v);
    }
}

/// The most input rows [`nan_max_rows`] reduces in one pass.
const MAX_ROWS_FUSED: usize = 4;

/// `acc[i]` = the `nan_max` chain of `rows[0][i], rows[1][i], …` in that
/// order (each row at least as long as `acc`; one to
/// [`MAX_ROWS_FUSED`] rows): what a row of -inf followed by
/// [`nan_max_into`] with each row gives (`nan_max(-inf, v)` is `v`), in one
/// pass that stores each element once instead of once per row (ResNet-50's
/// stem pool: 184 → 141 µs on one thread, `pool_throughput`; in the network
/// 0.108 → 0.105 ms, DenseNet-121's 0.115 → 0.104).
#[inline(always)]
fn nan_max_rows(acc: &mut [f32], rows: &[&[f32]]) {
    assert!((1..=MAX_ROWS_FUSED).contains(&rows.len()));
    assert!(rows.iter().all(|r| r.len() >= acc.len()));
    #[cfg(target_arch = "x86_64")]
    if super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma && acc.len() >= 8 {
        // SAFETY: AVX2 checked; every row holds acc.len() ≥ 8 floats.
        unsafe { nan_max_rows_avx2(acc, rows) };
        return;
    }
    for (i, a) in acc.iter_mut().enumerate() {
        *a = rows[1..].iter().fold(rows[0][i], |m, r| nan_max(m, r[i]));
    }
}

/// [`nan_max_rows`] on AVX2.
///
/// # Safety
/// AVX2; at least one row; `acc` at least 8 long and every row at least as
/// long as `acc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nan_max_rows_avx2(acc: &mut [f32], rows: &[&[f32]]) {
    use std::arch::x86_64::*;
    let a = acc.as_mut_ptr();
    // Overlapping vectors store the same values: computed from the rows.
    by_vectors(acc.len(), |i| {
        // SAFETY: i + 8 <= acc.len() ≤ every row's length.
        unsafe {
            let mut m = _mm256_loadu_ps(rows[0].as_ptr().add(i));
            for r in &rows[1..] {
                m = nan_max8(m, _mm256_loadu_ps(r.as_ptr().add(i)));
            }
            _mm256_storeu_ps(a.add(i), m);
        }
    });
}

/// `step(i)` for i = 0, 8, … while i + 8 ≤ n, then once more at n − 8
/// (n ≥ 8) if that left a tail: a last whole vector that overlaps the one
/// before it, where a masked store would be microcoded (AMD). `step` must
/// store the same values when it runs twice over an element.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn by_vectors(n: usize, mut step: impl FnMut(usize)) {
    // The callers' SAFETY rests on it (n − 8 below).
    assert!(n >= 8);
    let mut i = 0;
    while i + 8 <= n {
        step(i);
        i += 8;
    }
    if i < n {
        step(n - 8);
    }
}

/// `nan_max` lane by lane: maxps(m, x) is x when either is NaN, which keeps
/// a NaN x; a NaN m is or-ed back in (still a NaN, its payload perhaps
/// changed). No blend: a blend with the value loaded from the store's
/// address becomes a masked store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn nan_max8(
    m: std::arch::x86_64::__m256,
    x: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let m_nan = _mm256_and_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(m, m), m);
    _mm256_or_ps(_mm256_max_ps(m, x), m_nan)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nan_max_into_avx2(acc: &mut [f32], v: &[f32]) {
    use std::arch::x86_64::*;
    let n = acc.len().min(v.len());
    if n < 8 {
        for (m, v) in acc.iter_mut().zip(v) {
            *m = nan_max(*m, *v);
        }
        return;
    }
    let (a, b) = (acc.as_mut_ptr(), v.as_ptr());
    // Overlapping vectors store the same values: nan_max(nan_max(m, v), v)
    // is nan_max(m, v).
    by_vectors(n, |i| {
        // SAFETY: i + 8 <= n.
        unsafe {
            let (m, x) = (_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)));
            _mm256_storeu_ps(a.add(i), nan_max8(m, x));
        }
    });
}

/// One output row of a 3-wide, stride-2 max pool (ResNet's and DenseNet's
/// stem pools) from its padded, row-reduced input: output x is the max of
/// columns 2x, 2x + 1 and 2x + 2, in that order, as `nan_max` chains them;
/// eight at a time from two deinterleaved pairs of loads. The generic path
/// took the max at every column, then every other one element by element
/// (3× ONNX Runtime's time on ResNet-50's pool).
///
/// # Safety
/// AVX2; `row` holds 2·`out.len()` rounded up to 16, plus two, floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max3_stride2_avx2(row: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let ow = out.len();
    assert!(row.len() >= 2 * ow.next_multiple_of(8) + 2);
    // Even and odd elements of the sixteen at `p`, in order.
    let split = |p: *const f32| {
        // SAFETY: the assert above covers every `p` below.
        let (a, b) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
        let even = _mm256_shuffle_ps::<0x88>(a, b);
        let odd = _mm256_shuffle_ps::<0xDD>(a, b);
        (
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(even))),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(odd))),
        )
    };
    let p = row.as_ptr();
    for x in (0..ow).step_by(8) {
        // SAFETY: 2x + 18 ≤ 2·ow rounded up to 16, plus two.
        let (e0, o0) = split(unsafe { p.add(2 * x) });
        let (e1, _) = split(unsafe { p.add(2 * x + 2) });
        let m = nan_max8(nan_max8(e0, o0), e1);
        if x + 8 <= ow {
            // SAFETY: outputs x..x + 8 are inside `out`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(x), m) };
        } else {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
            out[x..].copy_from_slice(&lanes[..ow - x]);
        }
    }
}

impl Pool {
    /// One channel plane of a max pool, separably: for each output row the
    /// valid input rows of its window are reduced into one padded row (whole
    /// rows at a time, vectorized), then each output takes the max of its
    /// window's columns in that row, with padding as -inf instead of tests.
    #[inline(always)]
    fn max_plane(&self, src: &[f32], dst: &mut [f32], row: &mut Vec<f32>, across: &mut Vec<f32>) {
        let [h, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let win = &self.window;
        let (pl, sx, dx, kw) = (win.pad[1], win.stride[1], win.dilation[1], win.kernel[1]);
        let span = (ow - 1) * sx + 1;
        #[cfg(target_arch = "x86_64")]
        let three_by_two = kw == 3
            && sx == 2
            && dx == 1
            && super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma;
        #[cfg(not(target_arch = "x86_64"))]
        let three_by_two = false;
        // The 3-wide stride-2 rows read whole vectors: 2·ow rounded up to
        // 16, plus two.
        let reach = if three_by_two {
            2 * ow.next_multiple_of(8) + 2
        } else {
            0
        };
        let len = (pl + w).max(span + (kw - 1) * dx).max(reach);
        row.clear();
        row.resize(len, f32::NEG_INFINITY);
        across.clear();
        across.resize(span, f32::NEG_INFINITY);
        for oy in 0..oh {
            let vals = &mut row[pl..pl + w];
            // The window's rows inside the input, in order: the first few
            // reduced in one pass, the rest (kernels taller than
            // MAX_ROWS_FUSED) added one by one.
            let mut first: [&[f32]; MAX_ROWS_FUSED] = [&[]; MAX_ROWS_FUSED];
            let mut fused = 0;
            for ky in 0..win.kernel[0] {
                let iy = (oy * win.stride[0] + ky * win.dilation[0]).wrapping_sub(win.pad[0]);
                if iy >= h {
                    continue;
                }
                let line = &src[iy * w..iy * w + w];
                if fused < MAX_ROWS_FUSED {
                    first[fused] = line;
                    fused += 1;
                    if fused == MAX_ROWS_FUSED {
                        nan_max_rows(vals, &first);
                    }
                } else {
                    nan_max_into(vals, line);
                }
            }
            match fused {
                0 => vals.fill(f32::NEG_INFINITY),
                MAX_ROWS_FUSED => {}
                _ => nan_max_rows(vals, &first[..fused]),
            }
            let out = &mut dst[oy * ow..oy * ow + ow];
            #[cfg(target_arch = "x86_64")]
            if three_by_two {
                // SAFETY: AVX2 checked; `row` holds `reach` floats.
                unsafe { max3_stride2_avx2(row, out) };
                continue;
            }
            // The window's max at every column (contiguous, so vectorized),
            // then every stride-th of them: the same chain of `nan_max` per
            // output as one loop per output, without its strided reads.
            across.fill(f32::NEG_INFINITY);
            for kx in 0..kw {
                nan_max_into(across, &row[kx * dx..kx * dx + span]);
            }
            if sx == 1 {
                out.copy_from_slice(&across[..ow]);
            } else {
                for (d, m) in out.iter_mut().zip(across.iter().step_by(sx)) {
                    *d = *m;
                }
            }
        }
    }

    /// Whether every window lies inside the input (no padding, no window
    /// past the edge, no dilation): then every average divides by kh·kw.
    fn windows_inside(&self) -> bool {
        let win = &self.window;
        let ([h, w], [oh, ow]) = (self.in_hw, self.out_hw);
        win.pad == [0; 4]
            && win.dilation == [1, 1]
            && (oh - 1) * win.stride[0] + win.kernel[0] <= h
            && (ow - 1) * win.stride[1] + win.kernel[1] <= w
    }

    /// One channel plane of an average pool whose windows all lie inside
    /// ([`Pool::windows_inside`]), separably like [`Pool::max_plane`]: the
    /// window's rows summed into one row, then the window's sum at every
    /// column, then every stride-th divided by kh·kw (DenseNet's transition
    /// pools took 5.7× ONNX Runtime's time one output at a time).
    #[inline(always)]
    fn avg_plane_inside(
        &self,
        src: &[f32],
        dst: &mut [f32],
        row: &mut Vec<f32>,
        across: &mut Vec<f32>,
    ) {
        let [_, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let ([kh, kw], [sy, sx]) = (self.window.kernel, self.window.stride);
        let span = (ow - 1) * sx + 1;
        let div = (kh * kw) as f32;
        row.clear();
        row.resize(w, 0.0);
        across.clear();
        across.resize(span, 0.0);
        for oy in 0..oh {
            let y0 = oy * sy;
            row.copy_from_slice(&src[y0 * w..y0 * w + w]);
            for ky in 1..kh {
                let line = &src[(y0 + ky) * w..(y0 + ky) * w + w];
                row.iter_mut().zip(line).for_each(|(r, v)| *r += *v);
            }
            across.copy_from_slice(&row[..span]);
            for kx in 1..kw {
                let taps = &row[kx..kx + span];
                across.iter_mut().zip(taps).for_each(|(a, v)| *a += *v);
            }
            let out = &mut dst[oy * ow..oy * ow + ow];
            for (d, a) in out.iter_mut().zip(across.iter().step_by(sx)) {
                *d = *a / div;
            }
        }
    }

    #[inline(always)]
    fn run(&self, threads: usize) {
        let [h, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let win = &self.window;
        for (n, c) in channel_planes(&self.queue, self.batch, self.channels, threads) {
            // SAFETY: extents checked at lowering.
            let src = unsafe { std::slice::from_raw_parts(self.x.at(n).add(c * h * w), h * w) };
            let dst = unsafe { self.out.at(n).add(c * oh * ow) };
            if let PoolKind::Max = self.kind {
                // SAFETY: the output plane is inside the output images.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst, oh * ow) };
                let [mut row, mut across] = take_buffers([0, 0]);
                self.max_plane(src, dst, &mut row, &mut across);
                put_buffers([row, across]);
                continue;
            }
            if self.windows_inside() {
                // SAFETY: the output plane is inside the output images.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst, oh * ow) };
                let [mut row, mut across] = take_buffers([0, 0]);
                self.avg_plane_inside(src, dst, &mut row, &mut across);
                put_buffers([row, across]);
                continue;
            }
            for oy in 0..oh {
                for ox in 0..ow {
                    let v = match self.kind {
                        PoolKind::Max => unreachable!("handled by max_plane"),
                        PoolKind::Avg => {
                            let ys = (oy * win.stride[0]) as isize - win.pad[0] as isize;
                            let xs = (ox * win.stride[1]) as isize - win.pad[1] as isize;
                            let ye = (ys + win.kernel[0] as isize).min((h + win.pad[2]) as isize);
                            let xe = (xs + win.kernel[1] as isize).min((w + win.pad[3]) as isize);
                            let pool_size = (ye - ys) * (xe - xs);
                            let (ys, xs) = (ys.max(0) as usize, xs.max(0) as usize);
                            let (ye, xe) =
                                (ye.min(h as isize) as usize, xe.min(w as isize) as usize);
                            let mut s = 0f32;
                            for iy in ys..ye {
                                for ix in xs..xe {
                                    s += src[iy * w + ix];
                                }
                            }
                            let div = if self.count_include_pad {
                                pool_size as f32
                            } else {
                                ((ye - ys) * (xe - xs)) as f32
                            };
                            s / div
                        }
                    };
                    // SAFETY: inside the output image.
                    unsafe { *dst.add(oy * ow + ox) = v };
                }
            }
        }
    }
}

/// Adaptive average pooling (PyTorch's bins: floor(i·H/O) to ceil((i+1)·H/O)).
#[derive(Debug)]
pub struct AdaptivePool {
    /// Input.
    pub x: Images,
    /// Output.
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input (h, w).
    pub in_hw: [usize; 2],
    /// Output (h, w).
    pub out_hw: [usize; 2],
    /// Hands out the channels.
    pub queue: conv::WorkQueue,
}

impl AdaptivePool {
    #[inline(always)]
    fn run(&self, threads: usize) {
        let [h, w] = self.in_hw;
        let [oh, ow] = self.out_hw;
        for (n, c) in channel_planes(&self.queue, self.batch, self.channels, threads) {
            // SAFETY: extents checked at lowering.
            let src = unsafe { std::slice::from_raw_parts(self.x.at(n).add(c * h * w), h * w) };
            let dst = unsafe { self.out.at(n).add(c * oh * ow) };
            for oy in 0..oh {
                let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
                for ox in 0..ow {
                    let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                    let s = if x0 == 0 && x1 == w {
                        // Whole rows: one contiguous run.
                        sum_lanes(&src[y0 * w..y1 * w])
                    } else {
                        src[y0 * w..y1 * w]
                            .chunks_exact(w)
                            .map(|row| sum_lanes(&row[x0..x1]))
                            .sum::<f32>()
                    };
                    // SAFETY: inside the output image.
                    unsafe { *dst.add(oy * ow + ox) = s / ((y1 - y0) * (x1 - x0)) as f32 };
                }
            }
        }
    }
}

/// The mean of a whole plane as [`AdaptivePool`] computes it for a 1×1
/// output (also a depthwise convolution's fused global pool).
#[inline(always)]
pub(super) fn global_mean(plane: &[f32]) -> f32 {
    sum_lanes(plane) / plane.len() as f32
}

/// The sum of `x` in sixteen interleaved partial sums (vector registers in
/// the AVX2 entry) added up at the end: a sequential sum waits on every add.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, v)| *a += v);
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest element of `x` (NaN ignored, as `f32::max` does), in sixteen
/// interleaved running maxima like [`sum_lanes`]; `-inf` for an empty slice.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, v)| *a = a.max(*v));
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
}

/// Constant padding of `[C, H, W]` images.
#[derive(Debug)]
pub struct Pad {
    /// Input.
    pub x: Images,
    /// Output.
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input (h, w).
    pub in_hw: [usize; 2],
    /// (top, left, bottom, right).
    pub pad: [usize; 4],
    /// Fill.
    pub value: f32,
    /// Hands out the channels.
    pub queue: conv::WorkQueue,
}

impl Pad {
    #[inline(always)]
    fn run(&self, threads: usize) {
        let [h, w] = self.in_hw;
        let (oh, ow) = (h + self.pad[0] + self.pad[2], w + self.pad[1] + self.pad[3]);
        for (n, c) in channel_planes(&self.queue, self.batch, self.channels, threads) {
            // SAFETY: extents checked at lowering.
            unsafe {
                let src = self.x.at(n).add(c * h * w);
                let dst = std::slice::from_raw_parts_mut(self.out.at(n).add(c * oh * ow), oh * ow);
                dst.fill(self.value);
                for y in 0..h {
                    let d = &mut dst[(y + self.pad[0]) * ow + self.pad[1]..][..w];
                    d.copy_from_slice(std::slice::from_raw_parts(src.add(y * w), w));
                }
            }
        }
    }
}

/// Softmax or layer norm over one axis of `[outer, axis, inner]` per sample.
#[derive(Debug)]
pub struct Reduce {
    /// Which.
    pub kind: ReduceKind,
    /// Input.
    pub x: Images,
    /// Output.
    pub out: Images,
    /// Batch.
    pub batch: usize,
    /// `[outer, axis, inner]`.
    pub dims: [usize; 3],
    /// The generated `exp` kernel (softmax).
    pub exp: Act,
    /// Hands out the rows, or for a channels-first layer norm groups of
    /// [`PIXELS`] pixels.
    pub queue: conv::WorkQueue,
}

/// A reduction along an axis.
#[derive(Debug)]
pub enum ReduceKind {
    /// Softmax.
    Softmax,
    /// Layer norm with affine parameters.
    LayerNorm {
        /// Epsilon.
        eps: f32,
        /// Scale (length of the axis).
        gamma: *const f32,
        /// Shift.
        beta: *const f32,
    },
}

impl Reduce {
    #[inline(always)]
    fn run(&self, threads: usize) {
        if let ReduceKind::LayerNorm { eps, gamma, beta } = self.kind {
            return if self.dims[2] == 1 {
                self.layer_norm_rows(threads, eps, gamma, beta)
            } else {
                self.layer_norm_across(threads, eps, gamma, beta)
            };
        }
        // Softmax along `len` elements `inner` apart.
        let [outer, len, inner] = self.dims;
        let [mut v] = take_buffers([len]);
        for u in claimed_units(&self.queue, self.batch * outer * inner, threads) {
            let n = u / (outer * inner);
            let (o, i) = ((u / inner) % outer, u % inner);
            let off = o * len * inner + i;
            // SAFETY: extents checked at lowering.
            unsafe {
                let src = self.x.at(n).add(off);
                for (k, x) in v.iter_mut().enumerate() {
                    *x = *src.add(k * inner);
                }
            }
            let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            v.iter_mut().for_each(|x| *x -= m);
            self.exp.apply(&mut v);
            let s: f32 = v.iter().sum();
            let r = 1.0 / s;
            v.iter_mut().for_each(|x| *x *= r);
            // SAFETY: as above.
            unsafe {
                let dst = self.out.at(n).add(off);
                for (k, x) in v.iter().enumerate() {
                    *dst.add(k * inner) = *x;
                }
            }
        }
        put_buffers([v]);
    }
}

/// Pixels a channels-first layer norm normalizes at once
/// ([`Reduce::layer_norm_across`]).
const PIXELS: usize = 8;

impl Reduce {
    /// Layer norm over contiguous rows (`inner` = 1, token-major): read in
    /// place, normalized into a buffer and copied out (the output may be the
    /// input). In f64 (a large mean would otherwise cost the centred values
    /// their precision), the sums four lanes at a time so that they
    /// vectorize instead of forming one serial chain.
    #[inline(always)]
    fn layer_norm_rows(&self, threads: usize, eps: f32, gamma: *const f32, beta: *const f32) {
        let [outer, len, _] = self.dims;
        let [mut v] = take_buffers([len]);
        // SAFETY: gamma and beta hold `len` floats.
        let (g, b) = unsafe {
            (
                std::slice::from_raw_parts(gamma, len),
                std::slice::from_raw_parts(beta, len),
            )
        };
        for u in claimed_units(&self.queue, self.batch * outer, threads) {
            let (n, o) = (u / outer, u % outer);
            // SAFETY: extents checked at lowering; the row is read
            // whole before the output (which may be it) is written.
            let x = unsafe { std::slice::from_raw_parts(self.x.at(n).add(o * len), len) };
            let mean = sum_f64(x, |x| x) / len as f64;
            let var = sum_f64(x, |x| (x - mean) * (x - mean)) / len as f64;
            let r = 1.0 / (var + eps as f64).sqrt();
            for (((y, &x), &g), &b) in v.iter_mut().zip(x).zip(g).zip(b) {
                *y = ((x as f64 - mean) * r) as f32 * g + b;
            }
            // SAFETY: as above.
            unsafe {
                std::ptr::copy(v.as_ptr(), self.out.at(n).add(o * len), len);
            }
        }
        put_buffers([v]);
    }

    /// Layer norm across channels (`len` rows `inner` apart, channels
    /// first): [`PIXELS`] neighbouring pixels at once, so that every load
    /// is a run of consecutive floats (gathering one pixel's channels read
    /// a cache line per channel), in f64 like the other paths (each
    /// pixel's sums in one chain, where the row path keeps four).
    #[inline(always)]
    fn layer_norm_across(&self, threads: usize, eps: f32, gamma: *const f32, beta: *const f32) {
        let [outer, len, inner] = self.dims;
        let groups = inner.div_ceil(PIXELS);
        for u in claimed_units(&self.queue, self.batch * outer * groups, threads) {
            let n = u / (outer * groups);
            let (o, q) = ((u / groups) % outer, u % groups);
            // The last group may be partial: `m` pixels (its lanes past
            // them are zeros, never stored; the output may be the input,
            // so groups must not overlap).
            let i0 = q * PIXELS;
            let m = PIXELS.min(inner - i0);
            let off = o * len * inner + i0;
            // SAFETY: extents checked at lowering: channel k's m floats
            // from `off + k·inner` are inside the sample.
            let (src, dst) = unsafe { (self.x.at(n).add(off), self.out.at(n).add(off)) };
            let row = |k: usize| -> [f32; PIXELS] {
                // SAFETY: as above.
                unsafe {
                    let p = src.add(k * inner);
                    if m == PIXELS {
                        std::ptr::read_unaligned(p as *const [f32; PIXELS])
                    } else {
                        let mut x = [0f32; PIXELS];
                        std::ptr::copy_nonoverlapping(p, x.as_mut_ptr(), m);
                        x
                    }
                }
            };
            let mut mean = [0f64; PIXELS];
            for k in 0..len {
                let x = row(k);
                for j in 0..PIXELS {
                    mean[j] += x[j] as f64;
                }
            }
            mean.iter_mut().for_each(|m| *m /= len as f64);
            let mut var = [0f64; PIXELS];
            for k in 0..len {
                let x = row(k);
                for j in 0..PIXELS {
                    let d = x[j] as f64 - mean[j];
                    var[j] += d * d;
                }
            }
            let mut r = [0f64; PIXELS];
            for j in 0..PIXELS {
                r[j] = 1.0 / (var[j] / len as f64 + eps as f64).sqrt();
            }
            for k in 0..len {
                let x = row(k);
                // SAFETY: gamma and beta hold `len` floats.
                let (g, b) = unsafe { (*gamma.add(k), *beta.add(k)) };
                let mut y = [0f32; PIXELS];
                for j in 0..PIXELS {
                    y[j] = ((x[j] as f64 - mean[j]) * r[j]) as f32 * g + b;
                }
                // SAFETY: as above; channel k's pixels are read (all
                // sums above, and `x` here) before they are written.
                unsafe {
                    let p = dst.add(k * inner);
                    if m == PIXELS {
                        std::ptr::write_unaligned(p as *mut [f32; PIXELS], y);
                    } else {
                        std::ptr::copy_nonoverlapping(y.as_ptr(), p, m);
                    }
                }
            }
        }
    }
}

/// Σ f(x) over `v` in f64, with four independent partial sums.
#[inline(always)]
fn sum_f64(v: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = v.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&x| f(x as f64)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x as f64);
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// A batched matrix product `[.., m, k] × [.., k, n]` (broadcast batch dims).
#[derive(Debug)]
pub struct MatMul {
    /// Left operand, as `[batch.., m, k]`.
    pub a: View,
    /// Right operand, as `[batch.., k, n]`.
    pub b: View,
    /// Output, `[batch.., m, n]` contiguous.
    pub out: View,
    /// Hands out the products.
    pub queue: conv::WorkQueue,
}

impl MatMul {
    #[inline(always)]
    fn run(&self, threads: usize) {
        let r = self.out.dims.len();
        let (m, n) = (self.out.dims[r - 2], self.out.dims[r - 1]);
        let k = self.a.dims[r - 1];
        let batch_dims = &self.out.dims[..r - 2];
        let count: usize = batch_dims.iter().product();
        let [mut abuf, mut bbuf] = take_buffers([m * k, k * n]);
        let mut idx = vec![0; r - 2];
        for u in claimed_units(&self.queue, count, threads) {
            let mut rem = u;
            for (i, d) in idx.iter_mut().zip(batch_dims).rev() {
                *i = rem % d;
                rem /= d;
            }
            // SAFETY: extents checked at lowering.
            unsafe {
                gather(&self.a, &idx, m, k, &mut abuf);
                gather(&self.b, &idx, k, n, &mut bbuf);
                let o = self.out.ptr.add(offset(&idx, &self.out.strides));
                let c = std::slice::from_raw_parts_mut(o, m * n);
                sgemm(mat(&abuf, m, k), mat(&bbuf, k, n), c, n, false);
            }
        }
        put_buffers([abuf, bbuf]);
    }
}

/// Copies the trailing 2-D block of `v` at batch index `idx` into `buf`.
unsafe fn gather(v: &View, idx: &[usize], rows: usize, cols: usize, buf: &mut [f32]) {
    let r = v.dims.len();
    let base = unsafe { v.ptr.add(offset(idx, &v.strides)) };
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: the caller guarantees the view's extent.
            buf[i * cols + j] = unsafe { *base.add(i * v.strides[r - 2] + j * v.strides[r - 1]) };
        }
    }
}

fn mat(data: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        rows,
        cols,
        stride: cols,
    }
}

/// Multi-head self-attention: packed q/k/v projection (a GEMM), per-head
/// scaled dot-product attention, output projection (a GEMM).
#[derive(Debug)]
pub struct Attention {
    /// x → qkv `[N·S, 3E]` in arena scratch.
    pub qkv: conv::Problem,
    /// ctx `[N·S, E]` → output.
    pub proj: conv::Problem,
    /// Arena pointers of qkv and ctx.
    pub qkv_ptr: *mut f32,
    /// Context buffer.
    pub ctx_ptr: *mut f32,
    /// Batch, sequence, embedding, heads.
    pub nseh: [usize; 4],
    /// The generated `exp` kernel.
    pub exp: Act,
    /// Hands out the (sample, head) pairs. The projections have their
    /// own: each phase ends when its work is done, as a layer does.
    pub heads: conv::WorkQueue,
}

impl Attention {
    #[inline(always)]
    fn run(&self, threads: usize) {
        let [n, s, e, heads] = self.nseh;
        let d = e / heads;
        let mut sc = SCRATCH.take();
        // SAFETY: as for `Gemm` (outside `with`'s closure for the same
        // reason); extents checked at lowering. Returns once all of qkv is
        // written, by whichever threads.
        unsafe { self.qkv.run(threads, &mut sc) };
        SCRATCH.set(sc);
        let scale = 1.0 / (d as f32).sqrt();
        let [mut q, mut kt, mut p] = take_buffers([s * d, d * s, s * s]);
        // Heads are large units: one at a time.
        for (lo, hi) in self.heads.chunks(n * heads, threads, 1) {
            for u in lo..hi {
                let (b, h) = (u / heads, u % heads);
                // SAFETY: qkv holds N·S rows of 3E.
                let qkv = unsafe {
                    std::slice::from_raw_parts(self.qkv_ptr.add(b * s * 3 * e), s * 3 * e)
                };
                for t in 0..s {
                    for c in 0..d {
                        q[t * d + c] = qkv[t * 3 * e + h * d + c] * scale;
                        kt[c * s + t] = qkv[t * 3 * e + e + h * d + c];
                    }
                }
                sgemm(mat(&q, s, d), mat(&kt, d, s), &mut p, s, false);
                for row in p.chunks_exact_mut(s) {
                    let m = max_lanes(row);
                    row.iter_mut().for_each(|x| *x -= m);
                    self.exp.apply(row);
                    let r = 1.0 / sum_lanes(row);
                    row.iter_mut().for_each(|x| *x *= r);
                }
                let v = MatRef {
                    data: &qkv[2 * e + h * d..],
                    rows: s,
                    cols: d,
                    stride: 3 * e,
                };
                // SAFETY: ctx holds N·S rows of E; this head's columns are its own.
                let ctx = unsafe {
                    std::slice::from_raw_parts_mut(
                        self.ctx_ptr.add(b * s * e + h * d),
                        (s - 1) * e + d,
                    )
                };
                sgemm(mat(&p, s, s), v, ctx, e, false);
            }
        }
        put_buffers([q, kt, p]);
        let mut sc = SCRATCH.take();
        // SAFETY: as for `Gemm` (outside `with`'s closure for the same reason).
        unsafe { self.proj.run(threads, &mut sc) };
        SCRATCH.set(sc);
    }
}

/// A chunk size for the element-wise kernels' small units (rows,
/// channels): a quarter of the layer for two threads, so that a layer is
/// four claims (each a cache-line transfer between cores; these layers
/// are often a few microseconds).
fn share(units: usize, threads: usize) -> usize {
    units.div_ceil(2 * threads)
}

/// The `(sample, channel)` planes this thread claims from `queue` (in
/// chunks of [`share`]); ends once every plane is done.
#[inline(always)]
fn channel_planes(
    queue: &conv::WorkQueue,
    batch: usize,
    channels: usize,
    threads: usize,
) -> impl Iterator<Item = (usize, usize)> + '_ {
    claimed_units(queue, batch * channels, threads).map(move |u| (u / channels, u % channels))
}

/// The units of `units` this thread claims from `queue` (in chunks of
/// [`share`]), one by one; ends once every unit is done.
#[inline(always)]
fn claimed_units(
    queue: &conv::WorkQueue,
    units: usize,
    threads: usize,
) -> impl Iterator<Item = usize> + '_ {
    queue
        .chunks(units, threads, share(units, threads))
        .flat_map(|(lo, hi)| lo..hi)
}

/// Every kernel.
#[derive(Debug)]
pub enum Kernel {
    /// Convolution / linear.
    Gemm(Gemm),
    /// 3×3 convolution as Winograd F(2×2, 3×3).
    Winograd(Winograd),
    /// Depthwise convolution.
    Depthwise(Depthwise),
    /// Grouped convolution with few channels per group, computed directly.
    Grouped(Grouped),
    /// Per-channel affine.
    ChannelAffine(ChannelAffine),
    /// Packed weights scaled per column (a squeeze-excitation's scaling
    /// moved onto its projection's weights).
    ScaleColumns(ScaleColumns),
    /// Activation.
    Activation(Activation),
    /// Strided copy.
    Copy(Copy),
    /// Binary op.
    Binary(Binary),
    /// Pooling.
    Pool(Pool),
    /// Adaptive average pooling.
    AdaptivePool(AdaptivePool),
    /// Padding.
    Pad(Pad),
    /// Softmax / layer norm.
    Reduce(Reduce),
    /// Batched matrix product.
    MatMul(MatMul),
    /// Self-attention.
    Attention(Box<Attention>),
}

/// Each kernel's entry point, twice: compiled for AVX2+FMA (the kernels'
/// bodies are `inline(always)`, so they are generated with those features) and
/// for the baseline; the choice is made once, when the program is lowered.
macro_rules! entry {
    ($t:ty) => {{
        unsafe extern "C" fn run(desc: *const u8, _tid: usize, threads: usize) {
            // SAFETY: the network function passes the descriptor it was built with.
            unsafe { (*(desc as *const $t)).run(threads) }
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe extern "C" fn run_avx2(desc: *const u8, _tid: usize, threads: usize) {
            // SAFETY: as above; selected only when the CPU has AVX2 and FMA.
            unsafe { (*(desc as *const $t)).run(threads) }
        }
        #[cfg(target_arch = "x86_64")]
        if super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma {
            run_avx2 as super::jit::LayerFn
        } else {
            run as super::jit::LayerFn
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            run as super::jit::LayerFn
        }
    }};
}

impl Kernel {
    /// Empties every work queue of this kernel (its own, and those of its
    /// GEMM problems and attention's phases). Required before every run,
    /// while no thread runs: a queue keeps what the last run claimed and
    /// finished, and the next run would otherwise skip all its work.
    pub fn reset_work_queues(&self) {
        match self {
            Kernel::Gemm(g) => {
                g.queue.reset();
                g.problems.iter().for_each(|p| p.queue.reset());
            }
            Kernel::Winograd(w) => w.0.conv.queue.reset(),
            Kernel::Depthwise(d) => d.queue.reset(),
            Kernel::Grouped(g) => g.queue.reset(),
            Kernel::ChannelAffine(k) => k.queue.reset(),
            Kernel::ScaleColumns(k) => k.queue.reset(),
            Kernel::Activation(k) => k.queue.reset(),
            Kernel::Copy(k) => k.queue.reset(),
            Kernel::Binary(k) => k.queue.reset(),
            Kernel::Pool(k) => k.queue.reset(),
            Kernel::AdaptivePool(k) => k.queue.reset(),
            Kernel::Pad(k) => k.queue.reset(),
            Kernel::Reduce(k) => k.queue.reset(),
            Kernel::MatMul(k) => k.queue.reset(),
            Kernel::Attention(a) => {
                a.qkv.queue.reset();
                a.heads.reset();
                a.proj.queue.reset();
            }
        }
    }

    /// The kernel's entry point and descriptor, for the network function: a
    /// direct call per layer, no dispatch at run time.
    pub fn entry(&self) -> (super::jit::LayerFn, *const u8) {
        match self {
            Kernel::Gemm(k) => (entry!(Gemm), k as *const _ as *const u8),
            Kernel::Winograd(k) => (entry!(Winograd), k as *const _ as *const u8),
            Kernel::Depthwise(k) => (entry!(Depthwise), k as *const _ as *const u8),
            Kernel::Grouped(k) => (entry!(Grouped), k as *const _ as *const u8),
            Kernel::ChannelAffine(k) => (entry!(ChannelAffine), k as *const _ as *const u8),
            Kernel::ScaleColumns(k) => (entry!(ScaleColumns), k as *const _ as *const u8),
            Kernel::Activation(k) => (entry!(Activation), k as *const _ as *const u8),
            Kernel::Copy(k) => (entry!(Copy), k as *const _ as *const u8),
            Kernel::Binary(k) => (entry!(Binary), k as *const _ as *const u8),
            Kernel::Pool(k) => (entry!(Pool), k as *const _ as *const u8),
            Kernel::AdaptivePool(k) => (entry!(AdaptivePool), k as *const _ as *const u8),
            Kernel::Pad(k) => (entry!(Pad), k as *const _ as *const u8),
            Kernel::Reduce(k) => (entry!(Reduce), k as *const _ as *const u8),
            Kernel::MatMul(k) => (entry!(MatMul), k as *const _ as *const u8),
            Kernel::Attention(k) => (entry!(Attention), &**k as *const _ as *const u8),
        }
    }

    /// Short name for profiles.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Gemm(_) => "gemm",
            Kernel::Winograd(_) => "winograd",
            Kernel::Depthwise(_) => "depthwise",
            Kernel::Grouped(_) => "grouped",
            Kernel::ChannelAffine(_) => "channel_affine",
            Kernel::ScaleColumns(_) => "scale_columns",
            Kernel::Activation(_) => "activation",
            Kernel::Copy(_) => "copy",
            Kernel::Binary(_) => "binary",
            Kernel::Pool(_) => "pool",
            Kernel::AdaptivePool(_) => "adaptive_pool",
            Kernel::Pad(_) => "pad",
            Kernel::Reduce(_) => "reduce",
            Kernel::MatMul(_) => "matmul",
            Kernel::Attention(_) => "attention",
        }
    }

    /// Runs the whole layer on the calling thread (tests, measurements),
    /// emptying its queues first so that it may be called again.
    pub fn run_alone(&self) {
        self.reset_work_queues();
        let (f, d) = self.entry();
        // SAFETY: as in the network function, with one thread.
        unsafe { f(d, 0, 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `k` on `threads` threads at once, as the network function does.
    fn run_on_threads(k: &Kernel, threads: usize) {
        struct Shared<'a>(&'a Kernel);
        // SAFETY: threads write the units they claim.
        unsafe impl Sync for Shared<'_> {}
        k.reset_work_queues();
        let k = Shared(k);
        std::thread::scope(|sc| {
            for index in 0..threads {
                let k = &k;
                sc.spawn(move || {
                    super::super::pool::set_thread_index(index);
                    let (f, d) = k.0.entry();
                    // SAFETY: the kernel's buffers outlive the scope.
                    unsafe { f(d, 0, threads) }
                });
            }
        });
    }

    fn view(dims: &[usize], strides: &[usize]) -> View {
        view_at(std::ptr::null(), dims, strides)
    }

    /// A view of the elements at `ptr` (inputs' pointers are cast to
    /// `*mut`: the kernels write only their outputs).
    fn view_at(ptr: *const f32, dims: &[usize], strides: &[usize]) -> View {
        View {
            ptr: ptr as *mut f32,
            dims: dims.to_vec(),
            strides: strides.to_vec(),
        }
    }

    /// Transposing copies (both directions of a channel-major ↔
    /// token-major permute, with a batch dimension, edges of every size
    /// below a block, one and two threads) give the element-wise copy's
    /// result.
    #[test]
    fn blocked_transposes_match_the_element_wise_copy() {
        for &(batch, rows, cols) in &[(1, 8, 8), (1, 96, 49), (2, 13, 21), (3, 7, 40), (1, 17, 9)] {
            let src: Vec<f32> = (0..batch * rows * cols)
                .map(|i| i as f32 * 0.5 - 3.0)
                .collect();
            // dst[b, c, r] = src[b, r, c]: the source's rows are contiguous.
            let copy = |out: &mut Vec<f32>| Copy {
                src: view_at(src.as_ptr(), &[batch, cols, rows], &[rows * cols, 1, cols]),
                dst: view_at(
                    out.as_mut_ptr(),
                    &[batch, cols, rows],
                    &[rows * cols, rows, 1],
                ),
                queue: conv::WorkQueue::default(),
            };
            let mut want = vec![f32::NAN; src.len()];
            copy(&mut want).run_rows(1);
            assert!(want.iter().all(|v| !v.is_nan()));
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; src.len()];
                let k = copy(&mut got);
                assert_eq!(k.is_transpose(), rows >= 8 && cols >= 8, "{rows}x{cols}");
                run_on_threads(&Kernel::Copy(k), threads);
                assert_eq!(got, want, "{batch}x{rows}x{cols}, {threads} threads");
            }
        }
    }

    /// Rows longer than a segment (a contiguous tensor coalesced into one
    /// row, a broadcast operand, a partial last segment) are cut into
    /// segments that threads share, and every element comes out as the
    /// element-wise definition says: binary ops and copies, one and two
    /// threads.
    #[test]
    fn long_rows_run_in_segments_on_every_thread() {
        for &(rows, len) in &[(1, 3 * ROW_SEGMENT + 17), (3, ROW_SEGMENT + 1), (2, 100)] {
            let total = rows * len;
            let a: Vec<f32> = (0..total).map(|i| i as f32 * 0.25).collect();
            let scale: Vec<f32> = (0..rows).map(|r| r as f32 + 1.5).collect();
            for threads in [1, 2] {
                // out[r, i] = a[r, i] · scale[r] (scale broadcast along rows).
                let mut out = vec![f32::NAN; total];
                let k = Kernel::Binary(Binary {
                    op: BinaryOp::Mul,
                    a: view_at(a.as_ptr(), &[rows, len], &[len, 1]),
                    b: view_at(scale.as_ptr(), &[rows, len], &[1, 0]),
                    out: view_at(out.as_mut_ptr(), &[rows, len], &[len, 1]),
                    queue: conv::WorkQueue::default(),
                });
                run_on_threads(&k, threads);
                for (i, v) in out.iter().enumerate() {
                    assert_eq!(
                        *v,
                        a[i] * scale[i / len],
                        "{rows}x{len} at {i}, {threads} threads"
                    );
                }
                // A contiguous copy: one row after coalescing.
                let mut copied = vec![f32::NAN; total];
                let k = Kernel::Copy(Copy {
                    src: view_at(a.as_ptr(), &[total], &[1]),
                    dst: view_at(copied.as_mut_ptr(), &[total], &[1]),
                    queue: conv::WorkQueue::default(),
                });
                run_on_threads(&k, threads);
                assert_eq!(copied, a, "{rows}x{len}, {threads} threads");
            }
        }
    }

    /// Layer norm over contiguous rows and across channels (pixel groups,
    /// a partial last group), in place and not, one and two threads, with
    /// a large mean: within 2e-6 of a direct f64 computation.
    #[test]
    fn layer_norm_paths_match_a_direct_f64_computation() {
        for &(outer, len, inner) in &[
            (3, 96, 1),
            (2, 7, 1),
            (2, 24, 13),
            (1, 96, 49),
            (2, 5, 3),
            (1, 40, 16),
        ] {
            let batch = 2;
            let per = outer * len * inner;
            let x: Vec<f32> = (0..batch * per)
                .map(|i| 1000.0 + ((i * 7919) % 211) as f32 * 0.01 - 1.0)
                .collect();
            let gamma: Vec<f32> = (0..len).map(|k| 0.5 + k as f32 * 0.01).collect();
            let beta: Vec<f32> = (0..len).map(|k| k as f32 * 0.1 - 1.0).collect();
            let mut want = vec![0f64; batch * per];
            for n in 0..batch {
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |k: usize| n * per + o * len * inner + k * inner + i;
                        let mean = (0..len).map(|k| x[at(k)] as f64).sum::<f64>() / len as f64;
                        let var = (0..len)
                            .map(|k| (x[at(k)] as f64 - mean).powi(2))
                            .sum::<f64>()
                            / len as f64;
                        for k in 0..len {
                            let y = (x[at(k)] as f64 - mean) / (var + 1e-6).sqrt();
                            want[at(k)] = y * gamma[k] as f64 + beta[k] as f64;
                        }
                    }
                }
            }
            for in_place in [false, true] {
                for threads in [1, 2] {
                    let mut buf = x.clone();
                    let mut out = vec![f32::NAN; batch * per];
                    let src = buf.as_mut_ptr();
                    let dst = if in_place { src } else { out.as_mut_ptr() };
                    let k = Kernel::Reduce(Reduce {
                        kind: ReduceKind::LayerNorm {
                            eps: 1e-6,
                            gamma: gamma.as_ptr(),
                            beta: beta.as_ptr(),
                        },
                        x: Images {
                            ptr: src,
                            sample_stride: per,
                        },
                        out: Images {
                            ptr: dst,
                            sample_stride: per,
                        },
                        batch,
                        dims: [outer, len, inner],
                        exp: Act::Relu,
                        queue: conv::WorkQueue::default(),
                    });
                    run_on_threads(&k, threads);
                    let got = if in_place { &buf } else { &out };
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (*g as f64 - w).abs() <= 2e-6 * (1.0 + w.abs()),
                            "{outer}x{len}x{inner} at {i}: {g} against {w} (in place {in_place}, {threads} threads)"
                        );
                    }
                }
            }
        }
    }

    /// A binary op whose output is not contiguous along its last dimension
    /// (a `[N, 1, 1, 1]` slice of a concatenation coalesces to that) writes
    /// each result at its stride and nothing between.
    #[test]
    fn binary_ops_write_strided_outputs_at_their_stride() {
        let n = 21;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b = [0.5f32];
        let mut out = vec![f32::NAN; 3 * n];
        let k = Kernel::Binary(Binary {
            op: BinaryOp::Add,
            a: view_at(a.as_ptr(), &[n], &[1]),
            b: view_at(b.as_ptr(), &[n], &[0]),
            out: view_at(out.as_mut_ptr(), &[n], &[3]),
            queue: conv::WorkQueue::default(),
        });
        run_on_threads(&k, 2);
        for (i, v) in out.iter().enumerate() {
            if i % 3 == 0 {
                assert_eq!(*v, a[i / 3] + 0.5, "at {i}");
            } else {
                assert!(v.is_nan(), "at {i}: {v}");
            }
        }
    }

    #[test]
    fn coalesce_merges_what_every_view_walks_as_one() {
        // x[N=1, C, 7, 7] · s[N=1, C, 1, 1] broadcast: rows of 49 per channel.
        let mut out = view(&[1, 8, 7, 7], &[392, 49, 7, 1]);
        let mut a = view(&[1, 8, 7, 7], &[392, 49, 7, 1]);
        let mut s = view(&[1, 8, 7, 7], &[8, 1, 0, 0]);
        coalesce(&mut [&mut out, &mut a, &mut s]);
        assert_eq!(
            (out.dims.as_slice(), out.strides.as_slice()),
            (&[8, 49][..], &[49, 1][..])
        );
        assert_eq!(a.strides, [49, 1]);
        assert_eq!(s.strides, [1, 0]);
        // A permute keeps its dims; a contiguous copy becomes one row.
        let mut src = view(&[2, 3, 4], &[1, 2, 6]);
        let mut dst = view(&[2, 3, 4], &[12, 4, 1]);
        coalesce(&mut [&mut src, &mut dst]);
        assert_eq!(dst.dims, [2, 3, 4]);
        let mut src = view(&[2, 3, 4], &[12, 4, 1]);
        let mut dst = view(&[2, 3, 4], &[12, 4, 1]);
        coalesce(&mut [&mut src, &mut dst]);
        assert_eq!((dst.dims, dst.strides), (vec![24], vec![1]));
        // All extents 1: one dimension stays.
        let mut one = view(&[1, 1], &[5, 1]);
        coalesce(&mut [&mut one]);
        assert_eq!(one.dims, [1]);
    }

    /// `cargo test --release -p netc-runtime pool_throughput -- --ignored --nocapture`:
    /// ResNet's and DenseNet's stem max pool (64 channels, 112×112 → 56×56,
    /// 3×3, stride 2, padding 1), one thread.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn pool_throughput() {
        let (c, hw, o) = (64, 112, 56);
        let mut arena: Vec<f32> = (0..c * hw * hw + c * o * o)
            .map(|i| ((i * 7919) % 101) as f32 * 0.01)
            .collect();
        let window = netc_compiler::ir::Window {
            kernel: [3, 3],
            stride: [2, 2],
            pad: [1; 4],
            dilation: [1, 1],
        };
        let k = max_pool(&mut arena, c, [[hw, hw], [o, o]], window);
        let mut best = f64::MAX;
        for _ in 0..200 {
            let t = std::time::Instant::now();
            k.run_alone();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("max pool 64x112x112 3x3/2: {:.1} us", best * 1e6);
    }

    /// `n` values of `f`, with a NaN every `every` elements.
    fn nan_pattern(n: usize, every: usize, f: fn(f32) -> f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if i % every == every / 2 {
                    f32::NAN
                } else {
                    f((i % 19) as f32)
                }
            })
            .collect()
    }

    /// The vector max pool step agrees with the scalar one at every length
    /// (whole vectors, the overlapping last one, short rows), NaN from
    /// either side included.
    #[test]
    fn vector_nan_max_matches_the_scalar_one() {
        let values = nan_pattern;
        for n in 0..40usize {
            let (acc, v) = (values(n, 11, f32::cos), values(n, 7, f32::sin));
            let mut got = acc.clone();
            nan_max_into(&mut got, &v);
            for (i, g) in got.iter().enumerate() {
                let want = nan_max(acc[i], v[i]);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{n}: element {i} is {g}, want {want}"
                );
            }
        }
    }

    /// A max pool of one sample of `c` channels whose `[h, w]` input
    /// starts `arena` and whose `[oh, ow]` output follows it.
    fn max_pool(
        arena: &mut [f32],
        c: usize,
        [[h, w], [oh, ow]]: [[usize; 2]; 2],
        window: netc_compiler::ir::Window,
    ) -> Kernel {
        assert!(arena.len() >= c * (h * w + oh * ow));
        let base = arena.as_mut_ptr();
        Kernel::Pool(Pool {
            kind: PoolKind::Max,
            x: Images {
                ptr: base,
                sample_stride: c * h * w,
            },
            // SAFETY: the arena holds input and output (asserted).
            out: Images {
                ptr: unsafe { base.add(c * h * w) },
                sample_stride: c * oh * ow,
            },
            batch: 1,
            channels: c,
            in_hw: [h, w],
            out_hw: [oh, ow],
            window,
            count_include_pad: false,
            queue: conv::WorkQueue::default(),
        })
    }

    /// The one-pass reduction of up to four rows gives the bits of a row of
    /// -inf reduced row by row, at every length (whole vectors, the
    /// overlapping last one, short rows), NaN from any row included.
    #[test]
    fn fused_row_max_matches_row_by_row() {
        let values = nan_pattern;
        for n in 0..40usize {
            let rows = [
                values(n + 3, 11, f32::cos),
                values(n + 3, 7, f32::sin),
                values(n + 3, 13, f32::tan),
                values(n + 3, 5, |x| -x),
            ];
            for count in 1..=MAX_ROWS_FUSED {
                let refs: Vec<&[f32]> = rows[..count].iter().map(|r| &r[..]).collect();
                let mut want = vec![f32::NEG_INFINITY; n];
                for r in &refs {
                    nan_max_into(&mut want, r);
                }
                let mut got = vec![0.0; n];
                nan_max_rows(&mut got, &refs);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{n} long, {count} rows: element {i} is {g}, want {w}"
                    );
                }
            }
        }
    }

    /// Max pools with windows of one to seven rows (taller than the rows
    /// reduced in one pass), strides, padding and dilation give a direct
    /// window max (NaN where the window holds one, -inf where no row of it
    /// is inside the input).
    #[test]
    fn max_pool_matches_a_direct_window_max_for_tall_windows() {
        let (c, h, w) = (2, 13, 19);
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| {
                if i % 37 == 5 {
                    f32::NAN
                } else {
                    ((i * 7919) % 101) as f32 * 0.01 - 0.5
                }
            })
            .collect();
        for kh in 1..=7 {
            // The last: two rows 14 apart around a 13-row input, both in
            // the padding (one output row, all -inf).
            for (kw, sy, dy, pad) in [(3, 1, 1, 0), (2, 2, 1, 1), (3, 1, 2, kh / 2), (3, 1, 14, 1)]
            {
                if dy == 14 && kh != 2 {
                    continue;
                }
                let (py, px) = (pad.min(kh / 2), pad.min(kw / 2));
                let oh = (h + 2 * py - (kh - 1) * dy - 1) / sy + 1;
                let ow = (w + 2 * px - (kw - 1) - 1) / 2 + 1;
                let mut arena = x.clone();
                arena.resize(c * h * w + c * oh * ow, 0.0);
                let window = netc_compiler::ir::Window {
                    kernel: [kh, kw],
                    stride: [sy, 2],
                    pad: [py, px, py, px],
                    dilation: [dy, 1],
                };
                max_pool(&mut arena, c, [[h, w], [oh, ow]], window).run_alone();
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut want = f32::NEG_INFINITY;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * sy + ky * dy).wrapping_sub(py);
                                    let ix = (ox * 2 + kx).wrapping_sub(px);
                                    if iy < h && ix < w {
                                        want = nan_max(want, x[(ch * h + iy) * w + ix]);
                                    }
                                }
                            }
                            let got = arena[c * h * w + (ch * oh + oy) * ow + ox];
                            assert!(
                                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                                "{kh}x{kw} stride {sy} dilation {dy} pad {py},{px}: \
                                 ({ch}, {oy}, {ox}) is {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The 3×3 stride-2 max pool's vector rows give a direct window max's
    /// bits (NaN where the window holds one): odd and even widths, short
    /// and whole-vector rows, padding 0 and 1, floor and ceil output sizes.
    #[test]
    fn stride2_max_pool_matches_a_direct_window_max() {
        for (h, w) in [
            (5, 7),
            (9, 8),
            (6, 15),
            (7, 16),
            (8, 17),
            (11, 33),
            (12, 112),
        ] {
            for pad in [0, 1] {
                for ceil in [false, true] {
                    let out = |n: usize| {
                        let span = n + 2 * pad - 3;
                        let o = if ceil { span.div_ceil(2) } else { span / 2 } + 1;
                        // PyTorch drops a last window starting in the padding.
                        if ceil && (o - 1) * 2 >= n + pad {
                            o - 1
                        } else {
                            o
                        }
                    };
                    let (oh, ow) = (out(h), out(w));
                    let x: Vec<f32> = (0..h * w)
                        .map(|i| {
                            if i % 29 == 5 {
                                f32::NAN
                            } else {
                                ((i * 37) % 23) as f32 - 11.0
                            }
                        })
                        .collect();
                    let mut arena = x.clone();
                    arena.resize(h * w + oh * ow, 0.0);
                    let base = arena.as_mut_ptr();
                    let k = Kernel::Pool(Pool {
                        kind: PoolKind::Max,
                        x: Images {
                            ptr: base,
                            sample_stride: h * w,
                        },
                        // SAFETY: the arena holds input and output.
                        out: Images {
                            ptr: unsafe { base.add(h * w) },
                            sample_stride: oh * ow,
                        },
                        batch: 1,
                        channels: 1,
                        in_hw: [h, w],
                        out_hw: [oh, ow],
                        window: netc_compiler::ir::Window {
                            kernel: [3, 3],
                            stride: [2, 2],
                            pad: [pad; 4],
                            dilation: [1, 1],
                        },
                        count_include_pad: false,
                        queue: conv::WorkQueue::default(),
                    });
                    k.run_alone();
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut want = f32::NEG_INFINITY;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (
                                        (oy * 2 + ky).wrapping_sub(pad),
                                        (ox * 2 + kx).wrapping_sub(pad),
                                    );
                                    if iy < h && ix < w {
                                        want = nan_max(want, x[iy * w + ix]);
                                    }
                                }
                            }
                            let got = arena[h * w + oy * ow + ox];
                            assert!(
                                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                                "{h}×{w} pad {pad} ceil {ceil}: ({oy}, {ox}) is {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The one-pass stride-2 split puts every input column where a
    /// per-element mapping does and zeros elsewhere, for any left padding,
    /// row length and phase length (including phases too short for the row).
    #[test]
    fn stride2_split_matches_the_per_column_mapping() {
        for pad in 0..4usize {
            for n in 0..21usize {
                for len in 0..14usize {
                    let src: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
                    let (mut even, mut odd) = (vec![-1f32; len], vec![-1f32; len]);
                    split_stride2(&src, pad, &mut even, &mut odd);
                    let mut want = [vec![0f32; len], vec![0f32; len]];
                    for (x, &v) in src.iter().enumerate() {
                        let p = x + pad;
                        if p / 2 < len {
                            want[p % 2][p / 2] = v;
                        }
                    }
                    assert_eq!([even, odd], want, "pad {pad}, {n} columns, phases of {len}");
                }
            }
        }
    }

    #[test]
    fn lane_maxima_find_the_largest_element() {
        for n in [0usize, 1, 15, 16, 17, 49, 197] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32).sin()).collect();
            let want = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_lanes(&x), want, "{n}");
        }
        assert_eq!(max_lanes(&[f32::NAN, 1.0, f32::NAN]), 1.0);
    }

    #[test]
    fn lane_sums_add_every_element() {
        for n in [0usize, 1, 15, 16, 17, 49, 100] {
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(sum_lanes(&x), (n * n.saturating_sub(1) / 2) as f32, "{n}");
        }
    }
}
