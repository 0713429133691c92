//! Convolution and linear layers as one GEMM with pre-packed weights:
//! `out[m, j] = Σ_k W[m, k] · B[k, j]`, where `m` is the output channel
//! (feature), `j` the output position across the whole batch, and `B` is never
//! materialised: K×NC slices of it are gathered straight from the input into the
//! micro-kernel's panel layout (implicit im2col). Partial sums for a block of
//! columns stay in a per-thread buffer in L2; when the last K block is done the
//! epilogue (bias, activation, residual add, in the op's order) runs over it
//! while it is hot and stores to the output — except a smooth final
//! activation, which runs over a block's finished rows
//! (`Problem::deferred_act`).
//!
//! `gather.rs` packs B; `epilogue.rs` finishes tiles; this module holds the
//! problem description, the blocking and the split across threads.

mod epilogue;
mod few_channels;
mod gather;
mod pixels;
mod token;
pub mod winograd;

pub(crate) use epilogue::{apply_steps_to_row, split_deferred_act};
pub use gather::pads_one_sample;
pub use pixels::pixel_major;
pub use winograd::{winograd, Winograd};

use super::gemm::{Indirect, Kernel, K_BLOCK, MR, NR};
use super::Act;
use netc_compiler::ir::Activation;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a tensor's elements are addressed by (row, column) of a GEMM:
/// column `j` is position `j % per_sample` of sample `j / per_sample`, and
/// element (r, j) is at `base + sample·sample_stride + r·row_stride + position·col_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Offset of sample 0, row 0, position 0 (floats).
    pub base: usize,
    /// Distance between samples.
    pub sample_stride: usize,
    /// Distance between rows (channels or features).
    pub row_stride: usize,
    /// Distance between positions (pixels or tokens).
    pub col_stride: usize,
}

impl Layout {
    #[inline]
    fn at(&self, per_sample: usize, r: usize, j: usize) -> usize {
        let (n, p) = (j / per_sample, j % per_sample);
        self.base + n * self.sample_stride + r * self.row_stride + p * self.col_stride
    }
}

/// The geometry of a windowed convolution's input for the implicit im2col.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Input rows (height) and columns (width).
    pub in_hw: [usize; 2],
    /// Output width (the height follows from `per_sample / out_w`).
    pub out_w: usize,
    /// Kernel (h, w).
    pub kernel: [usize; 2],
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Top and left padding.
    pub pad: [usize; 2],
    /// Dilation (h, w).
    pub dilation: [usize; 2],
}

/// Where B comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// `B[k, j]` is element (k, j) of a layout (1×1 stride-1 convolutions, linear layers).
    Strided(Layout),
    /// `B[(c, ky, kx), j]` reads the input through a convolution window;
    /// `row_stride` of the layout is the channel stride (H·W) and `col_stride` unused.
    Window(Layout, Window),
}

/// One step of an epilogue.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Add `bias[m]`.
    Bias(*const f32),
    /// Apply an activation.
    Act(Act),
    /// Add the element at the same (m, j) of another tensor.
    Add(Layout),
}

/// One GEMM-shaped layer (or one group of a grouped convolution).
#[derive(Debug, Clone)]
pub struct Problem {
    /// Rows of the output (channels / features).
    pub m: usize,
    /// Reduction depth.
    pub k: usize,
    /// Columns across the batch.
    pub n: usize,
    /// Columns per sample.
    pub per_sample: usize,
    /// Weights packed by [`super::gemm::pack_weights`] (null when `a_cols`
    /// is set: token-major products and pixel-major convolutions have only
    /// that packing).
    pub a: *const f32,
    /// Or, for token-major products (K-contiguous token rows in, features
    /// contiguous per token out) on CPUs with AVX2 and FMA, the weights packed
    /// by [`super::gemm::pack_weights_cols`]: the product then runs with
    /// tokens as the micro-kernel's rows (`token.rs`). For windowed
    /// convolutions that [`pixel_major`] picks, the same: output pixels are
    /// then the rows (`pixels.rs`; the problem is [`Problem::paddable`],
    /// the lowering splits a batch that is not). Null otherwise.
    pub a_cols: *const f32,
    /// The input.
    pub b: Gather,
    /// The output.
    pub out: Layout,
    /// Epilogue steps in order.
    pub epilogue: Vec<Step>,
    /// The arena every layout's offsets are relative to.
    pub arena: *mut f32,
    /// Hands the work out to the threads that run it.
    pub queue: WorkQueue,
}

/// Hands a layer's work units (panels, column panels, channels, rows) to its
/// threads as they ask, and tells each thread when all of them are done.
/// Each thread claims from its own even share first, half of what is left
/// there at a time, then from the back of the others' (see
/// [`WorkQueue::claim`]): a thread slowed by its core (this machine is
/// shared) then takes less, where an even split held the other one at the
/// layer's end (two-thread profiles of ResNet-50 showed one thread 10–24%
/// slower than the other on identical shares).
///
/// A layer ends when its units are done, not when every thread has arrived:
/// the network function has no barrier between layers. A thread that the
/// system has descheduled therefore holds the others up only while it holds
/// a claimed chunk; one descheduled before it claims anything finds each
/// layer finished when it comes back and skips it.
///
/// The counters are on cache lines of their own: a thread waiting for
/// the last chunks spins on `done`, which would otherwise make every claim
/// at the end of a layer a coherence miss for the thread still working.
#[derive(Default)]
pub struct WorkQueue {
    /// Per thread (up to [`HOMES`] threads), the units taken from the front
    /// and from the back of its home range (low and high 32 bits).
    homes: [Line; HOMES],
    /// With more threads than [`HOMES`] (or more than `u32::MAX` units): the
    /// next unclaimed unit.
    next: Line,
    done: Line,
}

/// The most threads that claim from home ranges (see [`WorkQueue::claim`]).
const HOMES: usize = 4;

#[cfg(test)]
thread_local! {
    /// Set by [`claim_from_back`].
    static CLAIM_FROM_BACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests only: while `on`, this thread's claims take one unit at a time
/// from the back of every queue, so a layer's units run in exactly reverse
/// order (a store past a unit's outputs then lands on finished ones).
#[cfg(test)]
pub(crate) fn claim_from_back(on: bool) {
    CLAIM_FROM_BACK.with(|b| b.set(on));
}

/// Half of what is left of the home range `[lo, hi)` whose taken counts
/// `line` holds (at least `min` units, at most all that is left), from
/// its front or, for a thread whose own range is empty, its back.
#[inline(always)]
fn take_half(
    line: &Line,
    (lo, hi): (usize, usize),
    min: usize,
    back: bool,
) -> Option<(usize, usize)> {
    let mut w = line.load(Ordering::Relaxed);
    loop {
        let (front, taken_back) = ((w & 0xffff_ffff) as usize, (w >> 32) as usize);
        let left = (hi - lo).saturating_sub(front + taken_back);
        if left == 0 {
            return None;
        }
        let size = left.div_ceil(2).max(min).min(left);
        let (next, chunk) = if back {
            let end = hi - taken_back;
            (w + ((size as u64) << 32), (end - size, end))
        } else {
            (w + size as u64, (lo + front, lo + front + size))
        };
        match line.compare_exchange_weak(w, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(chunk),
            Err(now) => w = now,
        }
    }
}

/// An atomic counter alone on its (128-byte, for the adjacent-line
/// prefetcher) stretch of cache.
#[derive(Default)]
#[repr(align(128))]
struct Line(AtomicU64);

impl std::ops::Deref for Line {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

impl Clone for WorkQueue {
    fn clone(&self) -> Self {
        WorkQueue::default()
    }
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkQueue")
    }
}

impl WorkQueue {
    /// The next chunk `[lo, hi)` of `units` for the calling thread, at least
    /// `min` long (unless fewer are left); `None` once all are claimed. Use
    /// [`WorkQueue::chunks`], which also reports them done.
    ///
    /// Each thread has a home range, its even share of the units, and
    /// claims from its front, half of what is left there at a time; a
    /// thread whose range is empty takes half of what is left at the back
    /// of another's. Consecutive layers whose units map to the same data
    /// (pixel blocks, column panels) thus run mostly on the thread that
    /// wrote it, and claims mostly touch a cache line of the thread's own.
    #[inline(always)]
    fn claim(&self, units: usize, threads: usize, min: usize) -> Option<(usize, usize)> {
        #[cfg(test)]
        if CLAIM_FROM_BACK.with(|b| b.get()) {
            let taken = self.next.fetch_add(1, Ordering::Relaxed) as usize;
            return (taken < units).then(|| (units - 1 - taken, units - taken));
        }
        if threads > HOMES || units > u32::MAX as usize {
            return self.claim_shared(units, threads, min);
        }
        let me = super::pool::thread_index() % threads;
        // In u64: `units · t` may not fit a 32-bit usize.
        let at = |t: usize| (units as u64 * t as u64 / threads as u64) as usize;
        let home = |t: usize| (at(t), at(t + 1));
        (0..threads)
            .map(|i| (me + i) % threads)
            .find_map(|t| take_half(&self.homes[t], home(t), min, t != me))
    }

    /// [`WorkQueue::claim`] for more threads than home ranges: one cursor,
    /// a `1/(2·threads)` share of what is left at a time.
    fn claim_shared(&self, units: usize, threads: usize, min: usize) -> Option<(usize, usize)> {
        let mut cur = self.next.load(Ordering::Relaxed) as usize;
        loop {
            if cur >= units {
                return None;
            }
            let left = units - cur;
            let size = (left / (2 * threads)).max(min).min(left);
            match self.next.compare_exchange_weak(
                cur as u64,
                (cur + size) as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((cur, cur + size)),
                Err(now) => cur = now as usize,
            }
        }
    }

    /// This thread's chunks of the `units` (see [`Chunks`]). Every thread
    /// that runs the layer iterates them to the end; the iterator returns
    /// `None` only once every unit, whoever claimed it, is done, so what
    /// follows may read all of the layer's output.
    #[inline(always)]
    pub(crate) fn chunks(&self, units: usize, threads: usize, min: usize) -> Chunks<'_> {
        Chunks {
            queue: self,
            units,
            threads,
            min: min.max(1),
            ran: 0,
        }
    }

    /// Empties the queue. Only while no thread runs the layer: the program
    /// does it for every layer before each run.
    pub fn reset(&self) {
        self.homes
            .iter()
            .for_each(|h| h.store(0, Ordering::Relaxed));
        self.next.store(0, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
    }
}

/// The iterator of [`WorkQueue::chunks`]. The units a thread ran are
/// reported done together, once its claims come back empty: one atomic
/// add per thread and layer, where one per chunk cost EfficientNet-B0 its
/// small layers' worth of cache-line transfers (≈ 6% end to end).
pub(crate) struct Chunks<'a> {
    queue: &'a WorkQueue,
    units: usize,
    threads: usize,
    min: usize,
    /// Units this thread has claimed (and, once it asks again, run).
    ran: usize,
}

impl Iterator for Chunks<'_> {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        let q = self.queue;
        if let Some((lo, hi)) = q.claim(self.units, self.threads, self.min) {
            self.ran += hi - lo;
            return Some((lo, hi));
        }
        if self.ran > 0 {
            // Release: this thread's writes are visible to whoever sees the
            // count (the adds form one release sequence).
            q.done.fetch_add(self.ran as u64, Ordering::Release);
            self.ran = 0;
        }
        // Chunks other threads still run.
        super::pool::wait_until(|| q.done.load(Ordering::Acquire) >= self.units as u64);
        None
    }
}

// SAFETY: the pointers are to the program's arena and weights, which outlive
// every run; threads write disjoint parts (see `Problem::run`).
unsafe impl Send for Problem {}
unsafe impl Sync for Problem {}

/// One column panel's part of a [`FusedPlan`]: where its output and
/// residual start at row 0, worked out once per panel
/// ([`Problem::fused_columns`]) rather than per tile — the divisions cost
/// small-K products measurably when every tile redid them.
struct FusedColumns<'a> {
    plan: &'a FusedPlan,
    out: *mut f32,
    /// Null without a fused residual.
    residual: *const f32,
}

/// An epilogue the fused micro-kernel can run (see [`Problem::fused_plan`]).
struct FusedPlan {
    bias: *const f32,
    act: Option<netc_compiler::ir::Activation>,
    residual: Option<Layout>,
    residual_first: bool,
}

impl FusedPlan {
    /// The fused kernel's epilogue for a tile whose bias starts at element
    /// `first` (its rows, or with `per_column` its columns) and whose
    /// residual, if any, starts at the given element with rows that far
    /// apart.
    ///
    /// # Safety
    /// The bias must hold the tile's rows (or columns) from `first`.
    /// Whether the activation is at most a clamp (ReLU, ReLU6), which the
    /// AVX-512 fused tiles apply; smooth activations go to `vmath`.
    fn clamps_only(&self) -> bool {
        matches!(self.act, None | Some(Activation::Relu | Activation::Relu6))
    }

    unsafe fn tile(
        &self,
        first: usize,
        per_column: bool,
        residual: Option<(*const f32, usize)>,
    ) -> super::gemm::TileEpilogue {
        let (residual, residual_ld) = residual.unwrap_or((std::ptr::null(), 0));
        super::gemm::TileEpilogue {
            bias: if self.bias.is_null() {
                self.bias
            } else {
                // SAFETY: the caller's.
                unsafe { self.bias.add(first) }
            },
            bias_per_column: per_column && !self.bias.is_null(),
            residual,
            residual_ld,
            residual_first: self.residual_first,
            act: self.act,
        }
    }
}

/// The shortest rows (a block's or chunk's positions within one sample) over
/// which a channel-major product applies a deferred activation: shorter rows
/// leave `vmath16::apply` one chain per call and a call per row, slower
/// than the tile path (EfficientNet-B0's 7×7 expansions, 49 positions:
/// 0.121 → 0.139 ms with SiLU deferred; its one-pixel squeeze-excitation
/// 0.012 → 0.026).
const DEFERRED_ACT_MIN_RUN: usize = 64;

/// Per-thread scratch: packed B and the partial sums of one column block.
#[derive(Default)]
pub struct Scratch {
    bpack: Vec<f32>,
    acc: Vec<f32>,
    cols: Vec<usize>,
    /// The token panels of a token-major block.
    token_panels: Vec<token::TokenPanel>,
    /// One output column of a token-major epilogue.
    column: Vec<f32>,
    /// A stride-1 convolution's input with its padding written out
    /// (`[sample][channel][row][column]`), so windows need no bounds tests.
    padded: Vec<f32>,
    /// Whether `padded` holds this problem's input for the current run.
    padded_ready: bool,
    /// Which samples `padded` holds for the current run (dynamic chunks pad
    /// the samples they read as they come).
    padded_samples: Vec<bool>,
    /// Per sample and padded row, whether this thread has padded it in this
    /// run (pixel-major convolutions pad only the rows their blocks read).
    padded_rows: Vec<bool>,
    /// With `padded`: each K row's offset in it ([`Problem::padded_offsets`]).
    k_offsets: Vec<usize>,
}

/// The most row panels for which windowed convolutions read B in place
/// ([`Problem::run_in_place`]) rather than pack it, and 1×1 convolutions
/// ([`Problem::run_strided_in_place`]) in passes of a whole K block
/// (shallower passes: [`IN_PLACE_1X1_MAX_PANELS`]). Measured single-thread
/// (`conv_throughput`, interleaved): 0.76× time for ResNet's 7×7 stem and
/// 0.85× for DenseNet's 3×3 growth convolutions (6 and 11 panels), even at
/// 11 (ResNet's 64-channel 3×3), 1.05–1.25× at 43–86 panels, where one packed
/// panel serves enough tiles to pay for itself.
const IN_PLACE_MAX_PANELS: usize = 11;

/// Whether a B panel of a 1×1 convolution read in place (NR floats of each
/// of `depth` channels, `l.row_stride` apart) stays in a 32 KiB, 8-way L1
/// (64 sets) while every row panel reads it: at most half of L1's lines
/// (two per row when rows are not 64-byte aligned), spread over at least 16
/// sets. Measured on MobileNetV2 (two threads, profiles of interleaved
/// runs): its 144→24 projection at 56×56 (144 aligned lines, 16 sets) took
/// 0.59–0.67× the packed path's time; its 32→16 at 112×112 (planes a
/// multiple of 1 KiB apart: 4 sets) 1.17×, and its 384→64 at 14×14 read
/// 256 deep (512 unaligned lines) about 1.1×.
fn panel_stays_in_l1(l: &Layout, depth: usize) -> bool {
    let aligned = [l.base, l.row_stride, l.sample_stride]
        .iter()
        .all(|v| (v * 4).is_multiple_of(64));
    let lines = depth * if aligned { 1 } else { 2 };
    // Rows `step` lines apart fall into 64 / gcd(step, 64) sets.
    let sets = if !(l.row_stride * 4).is_multiple_of(64) {
        64
    } else {
        let (mut a, mut b) = ((l.row_stride * 4 / 64) % 64, 64);
        while a != 0 {
            (a, b) = (b % a, a);
        }
        64 / b
    };
    lines <= 256 && sets >= 16
}

/// The most columns [`column_block`] gives.
const COLUMN_BLOCK_MAX: usize = 512;

/// Columns per block such that the partial sums of `rows` rows stay near
/// 64 KiB, so that they, the packed B block and the weights' K block share a
/// 512 KiB L2 rather than spilling to L3, which this machine shares with
/// other tenants. Whole-model medians, 4 interleaved rounds at each of three
/// times (`netc bench --threads 2`): with 256 KiB, in two busy periods,
/// DenseNet-121 59.4 / 70 ms, ResNet-50 73.0 / 85, ResNeXt-50 99.1 against
/// 56.0 / 62, 65.3 / 75, 72.4 with 64 KiB; in a quiet one the same within
/// 2–5% either way (DenseNet 52.3 → 49.5, ResNet-50 60.6 → 60.9). 32 KiB
/// was slower on ResNet-50.
fn column_block(rows: usize) -> usize {
    ((16 * 1024 / rows.max(1)) / NR * NR).clamp(NR, COLUMN_BLOCK_MAX)
}

/// Columns per block for `rows` rows over a range of `cols` columns: the
/// whole range in one block when it is at most [`FEW_PANELS`] panels and
/// its partial sums stay under 512 KiB, else [`column_block`]. Each block
/// streams all of the thread's weights once more; for the 7×7 stages
/// (49 columns) `column_block` gave, e.g., 48 + 1 columns, i.e. a second
/// pass over up to 4.7 MB of weights (ResNet-50 layer4) for one column.
/// With weights coming from memory (`FLUSH=1 THREADS=2 SHAPE=l4 …
/// conv_throughput`) the 1×1 layers of layer4 took 0.78–0.79 ms instead of
/// 0.84–0.91.
fn column_block_for(rows: usize, cols: usize) -> usize {
    let whole = cols.div_ceil(NR) * NR;
    if whole <= FEW_PANELS * NR && rows * whole <= 128 * 1024 {
        whole
    } else {
        column_block(rows)
    }
}

/// See [`column_block_for`].
const FEW_PANELS: usize = 4;

/// The least depth at which a last column panel of one or two columns runs
/// on the narrow kernel (`Kernel::run_narrow_panels`: four row panels at a
/// time, a multiply-add per row panel and column rather than six), not the
/// half-width tile. Measured (`conv_throughput`, two threads): the 1×1
/// layers of 7×7 maps, K 160–2048, take 0.88–0.90× the time (ResNet-50's
/// layer4 2048→512 0.58 → 0.51 ms, EfficientNet-B0's 1152→192 0.135 →
/// 0.121). EfficientNet-B0's squeeze-and-excitation expansions (one pixel,
/// K 8–48, weights from memory) took 1.5× the time in-model and with
/// `FLUSH=1`; with K = 1152 (their reductions) 0.7×. K 64 and 96 (the
/// two-column panels that [`Problem::column_units`] leaves in each half of
/// a 14×14 map: MobileNetV2's 64→384 and 96→576 expansions) took 0.95×
/// and 0.96× (0.059 against 0.062 and 0.127 against 0.132 ms, minima and
/// medians alike, twelve interleaved rounds on a quiet host).
const NARROW_MIN_K: usize = 64;

/// The most row panels for which a 1×1 convolution reads B in place in
/// passes shallower than a K block ([`in_place_depth`]). In isolation
/// (`conv_throughput`) 22 panels gained too (ResNet-50's layer2 512→128 at
/// 28×28: 0.94–0.95× the packed path's time 64 deep), but in the network
/// DenseNet-121's 128-channel bottlenecks at 14×14 (22 panels, weights
/// coming from memory) took 1.07–1.16× the time (profile minima, 8
/// interleaved rounds): each column panel streams all of the layer's
/// weights, where a packed column block of seven panels streams them once.
const IN_PLACE_1X1_MAX_PANELS: usize = 16;

/// The fewest positions a sample for the shallower passes of
/// [`in_place_depth`]. A 7×7 map's 49 positions end in a panel of one
/// column, which costs a whole tile in place where the packed path runs it
/// on the narrow kernel (EfficientNet-B0's 7×7 projections, 32 and 54 row
/// panels: 1.15–1.25× the time), and squeeze-and-excitation layers (one
/// position) took 3–4× the time in place.
const IN_PLACE_MIN_POSITIONS: usize = 4 * NR;

/// The most bytes between the first and last channel row of one pass over
/// an in-place B panel ([`in_place_depth`]): 64 pages of 4 KiB, within
/// Zen 4's 72-entry L1 data TLB.
const IN_PLACE_PASS_SPAN: usize = 256 * 1024;

/// How deep each pass over an in-place B panel of a 1×1 convolution with
/// `panels` row panels and `positions` a sample goes, or None when the
/// convolution packs B: a whole K block when the panel stays in L1
/// ([`panel_stays_in_l1`]) and the row panels are at most
/// [`IN_PLACE_MAX_PANELS`]; else, on maps of at least
/// [`IN_PLACE_MIN_POSITIONS`] and up to [`IN_PLACE_1X1_MAX_PANELS`] row
/// panels, the deepest of 256, 128 or 64 rows (up to a K block) that stay
/// in L1 and span at most [`IN_PLACE_PASS_SPAN`]. Each pass adds its sums to the
/// previous passes' in memory, so their sums round differently from the
/// packed path's.
///
/// Measured (`conv_throughput`, two threads, interleaved; time in place
/// over time packed): MobileNetV2's 384→64 at 14×14 (11 panels, 512
/// unaligned lines 256 deep) 0.83–0.87 read 128 deep, its 576→96 (16
/// panels) 0.89 at 128 deep; in the network (profile minima, 8 rounds)
/// 0.88 and 0.94. ResNet-50's 512→128 at 28×28 0.94–0.95 at 64 deep, but
/// 1.04–1.09 at 128 and 256 deep (a 256-deep pass spans 200 pages).
fn in_place_depth(l: &Layout, k: usize, panels: usize, positions: usize) -> Option<usize> {
    // The test as measured, with 256-deep K blocks: 128-deep ones would
    // take 7×7 maps in place, where their one-column panels cost.
    if panels <= IN_PLACE_MAX_PANELS && panel_stays_in_l1(l, k.min(256)) {
        return Some(K_BLOCK);
    }
    if positions < IN_PLACE_MIN_POSITIONS || panels > IN_PLACE_1X1_MAX_PANELS {
        return None;
    }
    // The depths measured (below), as deep as a K block goes.
    [256, 128, 64]
        .into_iter()
        .filter(|&d| d <= K_BLOCK)
        .find(|&d| {
            let rows = k.min(d);
            panel_stays_in_l1(l, rows) && rows * l.row_stride * 4 <= IN_PLACE_PASS_SPAN
        })
}

/// Rows of B read in place that a zmm row tile group prefetches for the
/// next group ([`Problem::zmm_row_tiles`]): `rows` runs of `floats` floats,
/// `row` floats apart from `at`.
#[derive(Clone, Copy)]
struct NextRows {
    at: *const f32,
    row: usize,
    rows: usize,
    floats: usize,
}

impl NextRows {
    /// Prefetches (into L2) the lines of rows `first..first + count`.
    #[inline(always)]
    fn prefetch(&self, first: usize, count: usize) {
        #[cfg(target_arch = "x86_64")]
        for r in first..(first + count).min(self.rows) {
            let row = self.at.wrapping_add(r * self.row);
            // Each 16-float run's first line, and the run's last line
            // where the rows are not line-aligned.
            for f in (0..self.floats).step_by(16).chain([self.floats - 1]) {
                // SAFETY: a prefetch reads nothing and cannot fault, whatever
                // the address (`wrapping_add` forms it without claiming it
                // in bounds).
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                        row.wrapping_add(f) as *const i8,
                    )
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (first, count);
    }
}

/// Whether the drivers run the AVX-512 tiles ([`Problem::run_block`]'s whole
/// column panels, token-major products, Winograd's products): on CPUs with
/// AVX-512F, unless a test asked for the ymm kernel ([`force_ymm_row_tiles`]).
#[cfg(target_arch = "x86_64")]
fn zmm_row_tiles() -> bool {
    !ymm_forced() && super::gemm::avx512::available()
}

/// Whether a test asked this thread for the 6×16 ymm kernel
/// ([`force_ymm_row_tiles`]); always false outside tests.
#[cfg(target_arch = "x86_64")]
fn ymm_forced() -> bool {
    #[cfg(test)]
    if FORCE_YMM.with(|f| f.get()) {
        return true;
    }
    false
}

#[cfg(test)]
thread_local! {
    static FORCE_YMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: whether this thread's [`Problem::run_block`] keeps to the 6×16
/// ymm kernel.
#[cfg(test)]
pub(super) fn force_ymm_row_tiles(on: bool) {
    FORCE_YMM.with(|f| f.set(on));
}

impl Problem {
    #[inline(always)]
    fn at_ptr(&self, offset: usize) -> *mut f32 {
        // SAFETY: offsets come from the lowering, checked against the arena's extent.
        unsafe { self.arena.add(offset) }
    }

    /// Runs this thread's part of the problem: chunks of column panels (or of
    /// in-place panels, pixel or token blocks) claimed from [`Problem::queue`]
    /// as the thread is free, or, when columns are too few for every thread,
    /// claimed halves of the row panels. Every thread running the problem
    /// must call this; it returns once all of the problem is done.
    ///
    /// # Safety
    /// Every layout must address memory valid for the extents of this problem;
    /// the output must not overlap the input, and other threads running the same
    /// problem write disjoint parts of it.
    #[inline(always)]
    pub unsafe fn run(&self, threads: usize, scratch: &mut Scratch) {
        let panels = self.m.div_ceil(MR);
        let ps = self.per_sample;
        let samples = self.n / ps;
        let avx2 = Kernel::detect() == Kernel::Avx2Fma;
        scratch.padded_samples.clear();
        scratch.padded_samples.resize(samples, false);
        if !self.a_cols.is_null() {
            // SAFETY: as for this function; the lowering sets `a_cols` only
            // on CPUs with AVX2 and FMA, for token-major products and for
            // paddable pixel-major convolutions.
            unsafe {
                if matches!(self.b, Gather::Window(..)) {
                    self.run_pixels(threads, scratch);
                } else {
                    self.run_tokens(threads, scratch);
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(plan) = self.few_channels() {
            // SAFETY: as for this function; AVX-512 is `few_channels`'
            // condition.
            unsafe { self.run_few_channels(threads, &plan) };
            return;
        }
        if matches!(self.b, Gather::Window(..))
            && panels <= IN_PLACE_MAX_PANELS
            && avx2
            && self.paddable()
        {
            let per = self.in_place_panels_per_sample();
            for (q0, q1) in self.queue.chunks(samples * per, threads, 1) {
                // SAFETY: as for this function.
                unsafe { self.pad_samples(q0 / per..(q1 - 1) / per + 1, scratch) };
                // SAFETY: as for this function; the samples read are padded.
                unsafe { self.run_in_place((q0, q1), scratch) };
            }
            return;
        }
        if let Gather::Strided(l) = self.b {
            // On AVX-512 CPUs, maps of IN_PLACE_MIN_POSITIONS or more read
            // B in place through `run_block`'s zmm tiles instead (four
            // panels a tile, a whole K block deep): ResNet-50's 256→64 at
            // 56×56 took 0.75× the time on one thread and 0.66–0.73× on
            // two, MobileNetV2's 576→96 at 14×14 0.97× (`conv_throughput`).
            #[cfg(target_arch = "x86_64")]
            let zmm_in_place = zmm_row_tiles() && ps >= IN_PLACE_MIN_POSITIONS;
            #[cfg(not(target_arch = "x86_64"))]
            let zmm_in_place = false;
            let depth = in_place_depth(&l, self.k, panels, ps).filter(|_| !zmm_in_place);
            if let (true, Some(depth)) = (l.col_stride == 1 && avx2, depth) {
                let units = samples * ps.div_ceil(NR);
                for share in self.queue.chunks(units, threads, 1) {
                    // SAFETY: as for this function.
                    unsafe { self.run_strided_in_place(share, depth, scratch) };
                }
                return;
            }
        }
        scratch.padded_ready = self.paddable();
        if (self.n >= threads * 4 * NR && !self.expands_on_zmm_tiles()) || panels < threads {
            // Column panels, claimed as threads are free: each chunk packs
            // only its columns, so no work is done twice.
            let (units, col) = Self::column_units(self.n, threads);
            for (q0, q1) in self.queue.chunks(units, threads, 1) {
                let (c0, c1) = (col(q0), col(q1));
                if scratch.padded_ready {
                    // SAFETY: as for this function.
                    unsafe { self.pad_samples(c0 / ps..(c1 - 1) / ps + 1, scratch) };
                }
                // SAFETY: as for this function.
                unsafe { self.run_block(0, panels, c0, c1, scratch) };
            }
            return;
        }
        // Row panels in `threads` even shares: every share packs all of B,
        // so few, large ones (claimed, so that one thread runs both when the
        // other is held up).
        for (s0, s1) in self.queue.chunks(threads, threads, 1) {
            let (p0, _) = split(panels, s0, threads);
            let (_, p1) = split(panels, s1 - 1, threads);
            if scratch.padded_ready {
                // SAFETY: as for this function.
                unsafe { self.pad_samples(0..samples, scratch) };
            }
            // SAFETY: as for this function.
            unsafe { self.run_block(p0, p1, 0, self.n, scratch) };
        }
    }

    /// Whether this is a 1×1 convolution with more output channels than
    /// input channels (an expansion) on the AVX-512 tiles, on a map narrow
    /// enough or with a smooth activation after it (below), which
    /// [`Problem::run`] splits by row panels however many columns: its weights
    /// outweigh its input, and a thread that claims column chunks streams
    /// all the weights once per chunk, where a share of the row panels
    /// streams its half once (and reads the input in place, or pads it).
    /// `conv_throughput` (two threads, FLUSH and PRODUCER, two interleaved
    /// rounds, Xeon host), time split by row panels over by columns:
    /// ResNet-50's 256→1024 at 14×14 0.91, 128→512 at 28×28 0.91, its
    /// strided shortcuts 0.91–0.95, ResNeXt-50's 256→512 and 512→1024
    /// 0.94–0.95, MobileNetV2's 16→96 at 112×112 0.73–0.93 and 96→576 at
    /// 14×14 0.83–0.88, 64→256 at 56×56 0.86; the others (1024→256,
    /// 256→64, 576→96, DenseNet's 256→128: 0.99–1.41) stay by columns.
    /// In the network (`netc bench --profile`) EfficientNet-B0's expansions
    /// at 28×28 to 7×7 (SiLU) took half the time: 0.14–0.22 → 0.074–0.14 ms.
    fn expands_on_zmm_tiles(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        let zmm = zmm_row_tiles();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        let one_by_one = match self.b {
            Gather::Strided(_) => true,
            Gather::Window(_, w) => w.kernel == [1, 1],
        };
        // Wide maps keep their columns on the threads that wrote them
        // (ResNet-50's 64→256 at 56×56 in the network: 0.40–0.46 ms by
        // columns, 0.52–0.72 by rows), unless a smooth activation follows:
        // split by columns its rows are too short to run it on long
        // stretches (EfficientNet-B0's 24→144 at 56×56 with SiLU, in the
        // network: 0.24–0.28 → 0.16 ms by rows).
        let smooth = self
            .epilogue
            .iter()
            .any(|s| matches!(s, Step::Act(Act::Generated(..))));
        zmm && one_by_one && self.m > self.k && (8 * self.m >= self.per_sample || smooth)
    }

    /// The column panels [`Problem::run`] hands out, and where each one's
    /// columns start: the columns in `threads` even parts (of an even number
    /// of columns), each cut into panels from its start. With panels cut
    /// from column 0, a 14×14 map's 196 positions are 12 panels and a
    /// 4-column one, so one thread's home share ended a whole panel after the
    /// other's; as two parts of 98 (6 panels and 2 columns each, on the
    /// narrow kernel from [`NARROW_MIN_K`] deep) the shares are even.
    /// Measured (`conv_throughput`, two threads, six interleaved rounds,
    /// minima): ResNeXt-50's 1024→512 and
    /// 512→1024 at 14×14 1.204 → 1.140 and 1.181 → 1.112 ms, ResNet-50's
    /// 1024→256 0.625 → 0.599, DenseNet-121's 512→128 0.174 → 0.167; the
    /// 28×28 and 56×56 layers unchanged.
    fn column_units(n: usize, threads: usize) -> (usize, impl Fn(usize) -> usize) {
        let part = n.div_ceil(threads.max(1)).next_multiple_of(2).max(2);
        let per_part = part.div_ceil(NR);
        let units = n.div_ceil(part) * per_part;
        let col = move |q: usize| {
            let start = q / per_part * part;
            (start + q % per_part * NR).min(start + part).min(n)
        };
        (units, col)
    }

    /// Pads the samples in `wanted` that this thread has not padded in this
    /// run (see [`Problem::pad_input`]).
    ///
    /// # Safety
    /// As [`Problem::run`]; [`Problem::paddable`].
    #[inline(always)]
    unsafe fn pad_samples(&self, wanted: std::ops::Range<usize>, s: &mut Scratch) {
        let mut at = wanted.start;
        while let Some(run) = take_unpadded(&mut s.padded_samples, at..wanted.end) {
            at = run.end;
            // SAFETY: the caller's.
            let ok = unsafe { self.pad_input(&mut s.padded, run, 0..usize::MAX) };
            debug_assert!(ok);
        }
    }

    /// [`Problem::run_in_place`]'s row-aligned panels per sample.
    fn in_place_panels_per_sample(&self) -> usize {
        let Gather::Window(_, w) = self.b else {
            return 1;
        };
        self.per_sample / w.out_w * w.out_w.div_ceil(NR)
    }

    /// Row panels `p0..p1`, columns `c0..c1`.
    #[inline(always)]
    unsafe fn run_block(&self, p0: usize, p1: usize, c0: usize, c1: usize, s: &mut Scratch) {
        if p0 >= p1 || c0 >= c1 {
            return;
        }
        let kernel = Kernel::detect();
        let rows = (p1 - p0) * MR;
        let mpad = self.m.div_ceil(MR) * MR;
        let blocks = self.k.div_ceil(K_BLOCK);
        // Token-major outputs (linear layers: features contiguous per token)
        // keep every K block in `acc` and run the epilogue per output column
        // once a column panel has all its rows, so stores are contiguous.
        let by_column = self.out.row_stride == 1 && self.out.col_stride != 1;
        // Whole column panels, four at a time, on the AVX-512 tile (rows
        // channels, columns positions) where the CPU has it; 1×1
        // convolutions then read those panels in place (below). The tile
        // alone ran as fast as the ymm kernel (both at peak in situ);
        // what it buys is B without packing: `conv_throughput`, two
        // threads, interleaved: ResNet-50's 1×1s 0.93–0.98× the time
        // (512→128 at 28×28 0.89×), DenseNet-121's bottlenecks 0.90×,
        // MobileNetV2's 16→96 at 112×112 0.84×, the 7×7 projections
        // 0.90–0.94×; in-model medians (3 rounds, fast placement)
        // ResNet-50 43.4 → 42.6 ms, DenseNet-121 33.2 → 31.4,
        // MobileNetV2 4.30 → 4.13.
        #[cfg(target_arch = "x86_64")]
        let zmm = !by_column && kernel == Kernel::Avx2Fma && zmm_row_tiles();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        // Blocks of at least the zmm tile's four panels where it runs:
        // `column_block` gave ResNet-50's 512-channel shortcut one panel
        // per block (2.2 → 2.0 ms on one thread, 1.11–1.19 → 1.09 on two)
        // and its 512→2048 at 7×7 (1.013 → 0.967, one thread).
        let nc_max = column_block_for(rows, c1 - c0).max(if zmm { 4 * NR } else { 0 });
        if blocks > 1 || by_column || zmm {
            grow(&mut s.acc, rows * nc_max);
        }
        grow(&mut s.bpack, K_BLOCK.min(self.k) * nc_max);
        let mut tile = [0f32; MR * NR];
        let mut narrow_tile = [0f32; 4 * MR * NR];
        if let (Gather::Window(_, w), true) = (self.b, s.padded_ready) {
            self.padded_offsets(&w, &mut s.k_offsets);
        }
        for j0 in (c0..c1).step_by(nc_max) {
            let nc = nc_max.min(c1 - j0);
            let ncp = nc.div_ceil(NR) * NR;
            // A smooth final activation over the block's finished rows of
            // positions, where they are long enough; the fused tiles then
            // run without it.
            let (plan, deferred) = if by_column {
                (self.fused_plan(), None)
            } else {
                self.chunk_plan(j0..j0 + nc)
            };
            let act_in_tiles = deferred.is_none();
            for (kb, k0) in (0..self.k).step_by(K_BLOCK).enumerate() {
                let kc = K_BLOCK.min(self.k - k0);
                let last = kb + 1 == blocks;
                let padded: &[f32] = if s.padded_ready { &s.padded } else { &[] };
                let from = (padded, s.k_offsets.as_slice());
                let (ps, zq) = (self.per_sample, if zmm { nc / NR } else { 0 });
                // 1×1 convolutions read the zmm tiles' B in place when the
                // block's columns are one sample's: P·NR consecutive
                // positions of each channel row, no copy.
                let one_sample = zq > 0 && j0 / ps == (j0 + zq * NR - 1) / ps;
                let in_place = match self.b {
                    Gather::Strided(l) if one_sample && l.col_stride == 1 => {
                        Some((self.arena as *const f32, l))
                    }
                    // Strided 1×1 windows (ResNet's shortcuts): the padded
                    // copy keeps only the pixels read, channel planes of a
                    // sample's positions, which the tiles read as above.
                    Gather::Window(_, w) if one_sample && w.kernel == [1, 1] && s.padded_ready => {
                        let l = Layout {
                            base: 0,
                            sample_stride: self.k * ps,
                            row_stride: ps,
                            col_stride: 1,
                        };
                        Some((s.padded.as_ptr(), l))
                    }
                    _ => None,
                };
                // The panels packed: all, or those after the in-place ones.
                let zp = if in_place.is_some() { zq } else { 0 };
                if zp * NR < nc {
                    // SAFETY: as for this function; the columns are the block's.
                    unsafe {
                        self.pack_b(
                            k0,
                            kc,
                            j0 + zp * NR,
                            nc - zp * NR,
                            &mut s.bpack,
                            &mut s.cols,
                            from,
                        )
                    };
                }
                #[cfg(target_arch = "x86_64")]
                for g in (0..zq).step_by(4) {
                    let b = match in_place {
                        Some((from, l)) => (
                            from.wrapping_add(l.at(ps, k0, j0 + g * NR)),
                            l.row_stride,
                            NR,
                        ),
                        None => (s.bpack[g * kc * NR..].as_ptr(), NR, kc * NR),
                    };
                    // B read in place comes from wherever the previous
                    // layer left it, a row per input channel: the next
                    // group's rows (or the next K block's first group's)
                    // are prefetched while this group runs.
                    let ahead = in_place.and_then(|(from, l)| {
                        let (k1, g1) = if g + 4 < zq {
                            (k0, g + 4)
                        } else {
                            (k0 + kc, 0)
                        };
                        let rows = K_BLOCK.min(self.k.saturating_sub(k1));
                        (rows > 0).then(|| NextRows {
                            at: from.wrapping_add(l.at(ps, k1, j0 + g1 * NR)),
                            row: l.row_stride,
                            rows,
                            floats: 4.min(zq - g1) * NR,
                        })
                    });
                    // SAFETY: as below; panels g..g + pn are whole, packed
                    // consecutively in bpack or read in place.
                    unsafe {
                        self.zmm_row_tiles(
                            g,
                            4.min(zq - g),
                            b,
                            (p0, p1),
                            (kb, k0, kc, last),
                            (j0, ncp),
                            s,
                            &plan,
                            act_in_tiles,
                            ahead,
                        )
                    };
                }
                for q in zq..ncp / NR {
                    let bp = s.bpack[(q - zp) * kc * NR..].as_ptr();
                    let (j, nr) = (j0 + q * NR, NR.min(nc - q * NR));
                    // A last panel of one or two columns (a 7×7 map's 49
                    // pixels end in one): four row panels at a time, their
                    // rows as the vector lanes (see NARROW_MIN_K).
                    let narrow = nr <= 2 && kernel == Kernel::Avx2Fma && self.k >= NARROW_MIN_K;
                    // The row panels for the narrow kernel and those left
                    // for the tile kernels.
                    let (narrowed, tiled) = if narrow {
                        (p0..p1, p1..p1)
                    } else {
                        (p0..p0, p0..p1)
                    };
                    for pg in narrowed.step_by(4) {
                        let np = 4.min(p1 - pg);
                        // SAFETY: as below; row panels pg..pg + np of this
                        // K block are consecutive, kc·MR floats each;
                        // `narrow_tile` and `acc` hold their np·MR rows.
                        unsafe {
                            let ap = self.a.add(k0 * mpad + pg * kc * MR);
                            let direct = last && kb == 0 && !by_column;
                            let (c, ld) = if direct {
                                (narrow_tile.as_mut_ptr(), NR)
                            } else {
                                (s.acc.as_mut_ptr().add((pg - p0) * MR * ncp + q * NR), ncp)
                            };
                            let ran = kernel.run_narrow_panels(
                                kc,
                                ap,
                                kc * MR,
                                np,
                                bp,
                                c,
                                ld,
                                kb > 0,
                                nr,
                            );
                            debug_assert!(ran);
                            if last && !by_column {
                                for i in 0..np {
                                    let r0 = (pg + i) * MR;
                                    let mr = MR.min(self.m - r0);
                                    let c = c.add(i * MR * ld);
                                    self.epilogue_tile(r0, mr, j, nr, c, ld, act_in_tiles);
                                }
                            }
                        }
                    }
                    let fused = if last && !by_column {
                        self.fused_columns(&plan, j, nr)
                    } else {
                        None
                    };
                    for p in tiled {
                        // SAFETY: the packed weights hold mpad·k floats and block
                        // k0 starts at k0·mpad; acc holds rows×nc_max.
                        unsafe {
                            let ap = self.a.add(k0 * mpad + p * kc * MR);
                            let r0 = p * MR;
                            let mr = MR.min(self.m - r0);
                            if last && !by_column && mr == MR {
                                let prior = if kb == 0 {
                                    (std::ptr::null(), 0)
                                } else {
                                    let c = s.acc.as_ptr().add((p - p0) * MR * ncp + q * NR);
                                    (c, ncp)
                                };
                                if self.try_fused(&fused, kernel, kc, ap, bp, prior, r0) {
                                    continue;
                                }
                            }
                            if last && kb == 0 && !by_column {
                                // One K block: straight from registers to the epilogue.
                                kernel.run_into_cols(
                                    kc,
                                    ap,
                                    bp,
                                    tile.as_mut_ptr(),
                                    NR,
                                    false,
                                    nr,
                                    mr,
                                );
                                let t = tile.as_ptr();
                                self.epilogue_tile(r0, mr, j, nr, t, NR, act_in_tiles);
                            } else {
                                let c = s.acc.as_mut_ptr().add((p - p0) * MR * ncp + q * NR);
                                kernel.run_into_cols(kc, ap, bp, c, ncp, kb > 0, nr, mr);
                                if last && !by_column {
                                    self.epilogue_tile(r0, mr, j, nr, c, ncp, act_in_tiles);
                                }
                            }
                        }
                    }
                    if last && by_column {
                        let r1 = (p1 * MR).min(self.m);
                        // SAFETY: acc holds rows×ncp; column panel q starts at q·NR.
                        let acc = unsafe { s.acc.as_ptr().add(q * NR) };
                        unsafe {
                            self.epilogue_columns(p0 * MR, r1, j, nr, acc, ncp, &mut s.column)
                        };
                    }
                }
            }
            if let Some(a) = deferred {
                // SAFETY: the block's rows and columns are the output's.
                unsafe { self.apply_to_rows(a, p0 * MR..(p1 * MR).min(self.m), j0..j0 + nc) };
            }
        }
    }

    /// Column panels `g..g + pn` (whole; B's rows where `b` says: packed
    /// consecutively in `s.bpack`, or read in place) of the column block at
    /// `j0` (`ncp` columns in `s.acc`) against row panels `p0..p1` for one K
    /// block, on the AVX-512 tile ([`avx512::tile_rows`]: six rows × up to
    /// 64 positions in zmm registers, a quarter of the 6×16 ymm kernel's
    /// loads per multiply-add). The last K block runs the epilogue on the
    /// registers where it can ([`avx512::tile_rows_fused`]: ReLU(6) or no
    /// activation, columns of one sample, a whole row panel), else on the
    /// finished sums in `acc`. The sums are the ymm kernel's (same order,
    /// same bits).
    ///
    /// # Safety
    /// As [`Problem::run_block`]; AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn zmm_row_tiles(
        &self,
        g: usize,
        pn: usize,
        b: (*const f32, usize, usize),
        (p0, p1): (usize, usize),
        (kb, k0, kc, last): (usize, usize, usize, bool),
        (j0, ncp): (usize, usize),
        s: &mut Scratch,
        plan: &Option<FusedPlan>,
        act_in_tiles: bool,
        ahead: Option<NextRows>,
    ) {
        use super::gemm::avx512;
        let ps = self.per_sample;
        let mpad = self.m.div_ceil(MR) * MR;
        let j = j0 + g * NR;
        // The rows to prefetch shared out over the row panels.
        let per_panel = ahead.map_or(0, |a| a.rows.div_ceil(p1 - p0));
        // The registers' epilogue: ReLU(6) or none, columns of one sample.
        let fusable = plan
            .as_ref()
            .filter(|p| p.clamps_only() && j / ps == (j + pn * NR - 1) / ps);
        for p in p0..p1 {
            if let Some(a) = ahead {
                a.prefetch((p - p0) * per_panel, per_panel);
            }
            let r0 = p * MR;
            let mr = MR.min(self.m - r0);
            // SAFETY: the packed weights hold mpad·k floats, block k0 at
            // k0·mpad, row panel p at p·kc·MR in it; acc holds the block's
            // rows × ncp; the fused store and the bias (`plan.tile`) take
            // rows r0..r0 + MR only when mr == MR, i.e. r0 + MR ≤ m, and
            // columns j..j + pn·NR of one sample (the output's, as is the
            // residual's run there).
            unsafe {
                let ap = self.a.add(k0 * mpad + p * kc * MR);
                let c = s.acc.as_mut_ptr().add((p - p0) * MR * ncp + g * NR);
                if let (true, Some(plan), true) = (last, fusable, mr == MR) {
                    let residual = plan
                        .residual
                        .map(|l| (self.at_ptr(l.at(ps, r0, j)) as *const f32, l.row_stride));
                    let e = plan.tile(r0, false, residual);
                    let prior = if kb > 0 {
                        c as *const f32
                    } else {
                        std::ptr::null()
                    };
                    let out = self.at_ptr(self.out.at(ps, r0, j));
                    let ol = self.out.row_stride;
                    match pn {
                        1 => avx512::tile_rows_fused::<1>(kc, ap, b, prior, ncp, &e, out, ol),
                        2 => avx512::tile_rows_fused::<2>(kc, ap, b, prior, ncp, &e, out, ol),
                        3 => avx512::tile_rows_fused::<3>(kc, ap, b, prior, ncp, &e, out, ol),
                        _ => avx512::tile_rows_fused::<4>(kc, ap, b, prior, ncp, &e, out, ol),
                    }
                    continue;
                }
                avx512::tiles_rows(pn, kc, ap, b, c, ncp, kb > 0);
                if last {
                    for q in 0..pn {
                        self.epilogue_tile(
                            r0,
                            mr,
                            j + q * NR,
                            NR,
                            c.add(q * NR),
                            ncp,
                            act_in_tiles,
                        );
                    }
                }
            }
        }
    }

    /// Applies `a` to output rows `rows`, columns `cols` (positions, which
    /// are contiguous within a sample: `out.col_stride == 1`), one run per
    /// row and sample.
    ///
    /// # Safety
    /// As [`Problem::run`]; the rows and columns are inside the output.
    #[inline(always)]
    unsafe fn apply_to_rows(
        &self,
        a: Act,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        let ps = self.per_sample;
        let mut j = cols.start;
        while j < cols.end {
            let end = cols.end.min((j / ps + 1) * ps);
            for r in rows.clone() {
                // SAFETY: the caller's; columns j..end are one sample's.
                a.apply(unsafe {
                    std::slice::from_raw_parts_mut(self.at_ptr(self.out.at(ps, r, j)), end - j)
                });
            }
            j = end;
        }
    }
}

impl Problem {
    /// A windowed convolution with few row panels (small M: DenseNet's
    /// growth convolutions, ResNeXt's groups), where each packed B panel
    /// would serve too few tiles to pay for its packing: the micro-kernel
    /// reads B straight from the padded input, one run of NR pixels of one
    /// output row per tap (`Indirect`). Panels follow output rows, so a row
    /// whose width is not a multiple of NR ends in a narrower panel. Threads
    /// split the panels.
    ///
    /// # Safety
    /// As [`Problem::run`]; `s.padded` holds this problem's padded input.
    #[inline(always)]
    unsafe fn run_in_place(&self, (q0, q1): (usize, usize), s: &mut Scratch) {
        let Gather::Window(_, window) = self.b else {
            return;
        };
        if q0 >= q1 {
            return;
        }
        let kernel = Kernel::detect();
        let (rows, phase_len, channels) = self.padded_geometry(&window);
        let w = self.padded_window(&window);
        let (sy, sx) = (w.stride[0], w.stride[1]);
        let row_len = sx * phase_len;
        let plane = rows * row_len;
        let mut offsets = std::mem::take(&mut s.cols);
        self.padded_offsets(&window, &mut offsets);
        let reach = offsets.iter().max().copied().unwrap_or(0) + NR;
        let ow = w.out_w;
        let oh = self.per_sample / ow;
        let per_row = ow.div_ceil(NR);
        grow(&mut s.acc, self.m.div_ceil(MR) * MR * NR);
        // Panels follow output rows, so the chunk's panels are the positions
        // from its first panel's to its last's end.
        let at = |q: usize| {
            let (n, rest) = (q / (oh * per_row), q % (oh * per_row));
            let (oy, ox0) = (rest / per_row, rest % per_row * NR);
            (n * self.per_sample + oy * ow + ox0, NR.min(ow - ox0))
        };
        let (first, (last, last_nr)) = (at(q0).0, at(q1 - 1));
        let (plan, deferred) = self.chunk_plan(first..last + last_nr);
        for q in q0..q1 {
            let (j, nr) = at(q);
            let (n, rest) = (q / (oh * per_row), q % (oh * per_row));
            let (oy, ox0) = (rest / per_row, rest % per_row * NR);
            let corner = n * channels * plane + oy * sy * row_len + ox0;
            // Every row the kernel reads (NR floats, past `nr` into the next
            // padded row or the buffer's slack) is inside `padded`.
            assert!(corner + reach <= s.padded.len());
            // SAFETY: checked just above; offsets holds k entries.
            unsafe {
                let base = s.padded.as_ptr().add(corner);
                let act = deferred.is_none();
                let b = (base, offsets.as_slice(), K_BLOCK);
                self.in_place_panel(kernel, b, j, nr, &mut s.acc, &plan, act);
            }
        }
        if let Some(a) = deferred {
            // SAFETY: the chunk's positions, all channels, are the output's.
            unsafe { self.apply_to_rows(a, 0..self.m, first..last + last_nr) };
        }
        s.cols = offsets;
    }

    /// The fused plan for a block or chunk of panels covering output
    /// positions `cols`, and the smooth final activation to apply over them
    /// afterwards (then absent from the plan), when each sample's run of
    /// them is at least [`DEFERRED_ACT_MIN_RUN`] long (see
    /// [`Problem::deferred_act`]).
    #[inline(always)]
    fn chunk_plan(&self, cols: std::ops::Range<usize>) -> (Option<FusedPlan>, Option<Act>) {
        let plan = self.fused_plan();
        let ps = self.per_sample;
        // The first and last samples' runs; whole samples between them.
        let shortest = if cols.is_empty() {
            0
        } else {
            let first_end = cols.end.min((cols.start / ps + 1) * ps);
            let last_start = cols.start.max((cols.end - 1) / ps * ps);
            (first_end - cols.start).min(cols.end - last_start)
        };
        match self.deferred_act() {
            Some(a) if self.out.col_stride == 1 && shortest >= DEFERRED_ACT_MIN_RUN => {
                (plan.map(|p| FusedPlan { act: None, ..p }), Some(a))
            }
            _ => (plan, None),
        }
    }

    /// A 1×1 stride-1 convolution with few row panels, for the reason
    /// [`Problem::run_in_place`] gives: the micro-kernel reads B straight
    /// from the input, a run of NR pixels of each channel. Panels follow
    /// samples; a sample's last, narrower panel is copied out first (a read
    /// of NR floats there could leave the tensor). Threads split the panels.
    ///
    /// # Safety
    /// As [`Problem::run`]; `self.b` is `Strided` with unit column stride.
    #[inline(always)]
    unsafe fn run_strided_in_place(&self, (q0, q1): (usize, usize), depth: usize, s: &mut Scratch) {
        let Gather::Strided(l) = self.b else {
            return;
        };
        if q0 >= q1 {
            return;
        }
        let kernel = Kernel::detect();
        let ps = self.per_sample;
        let per_sample = ps.div_ceil(NR);
        // Channel rows of the input, then of the copied-out tail panel.
        let mut offsets = std::mem::take(&mut s.cols);
        offsets.clear();
        offsets.extend((0..self.k).map(|kk| kk * l.row_stride));
        offsets.extend((0..self.k).map(|kk| kk * NR));
        let (rows, packed) = offsets.split_at(self.k);
        grow(&mut s.acc, self.m.div_ceil(MR) * MR * NR);
        grow(&mut s.bpack, self.k * NR);
        // The chunk's panels are the positions from its first panel's to its
        // last's end (panels follow samples).
        let at = |q: usize| {
            let (n, c0) = (q / per_sample, q % per_sample * NR);
            (n * ps + c0, NR.min(ps - c0))
        };
        let (first, (last, last_nr)) = (at(q0).0, at(q1 - 1));
        let (plan, deferred) = self.chunk_plan(first..last + last_nr);
        let act = deferred.is_none();
        for q in q0..q1 {
            let (n, c0) = (q / per_sample, q % per_sample * NR);
            let (j, nr) = at(q);
            let x0 = self.at_ptr(l.base + n * l.sample_stride + c0) as *const f32;
            // SAFETY: channel kk's run of nr pixels from c0 is inside the
            // input (the lowering checked its extent); with nr == NR the
            // kernel reads only those.
            unsafe {
                if nr == NR {
                    let b = (x0, rows, depth);
                    self.in_place_panel(kernel, b, j, nr, &mut s.acc, &plan, act);
                    continue;
                }
                for (kk, &o) in rows.iter().enumerate() {
                    let dst = &mut s.bpack[kk * NR..(kk + 1) * NR];
                    std::ptr::copy_nonoverlapping(x0.add(o), dst.as_mut_ptr(), nr);
                    dst[nr..].fill(0.0);
                }
                let base = s.bpack.as_ptr();
                let b = (base, packed, depth);
                self.in_place_panel(kernel, b, j, nr, &mut s.acc, &plan, act);
            }
        }
        if let Some(a) = deferred {
            // SAFETY: the chunk's positions, all channels, are the output's.
            unsafe { self.apply_to_rows(a, 0..self.m, first..last + last_nr) };
        }
        s.cols = offsets;
    }

    /// One column panel of B read in place (row `kk` at `base + offsets[kk]`)
    /// through every K block and row panel, finished by the epilogue. Each
    /// K block is read in passes of at most `depth` rows (a divisor of
    /// [`K_BLOCK`]), each over every row panel, so that the panel's rows
    /// stay in L1 while the row panels read them.
    ///
    /// # Safety
    /// Every row the kernel reads (NR floats from each `base + offsets[kk]`)
    /// must be readable; `offsets` holds `k` entries; `acc` at least
    /// `m` rounded up to MR rows of NR floats.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn in_place_panel(
        &self,
        kernel: Kernel,
        (base, offsets, depth): (*const f32, &[usize], usize),
        j: usize,
        nr: usize,
        acc: &mut [f32],
        plan: &Option<FusedPlan>,
        act_in_tiles: bool,
    ) {
        debug_assert!(depth > 0 && K_BLOCK.is_multiple_of(depth));
        let panels = self.m.div_ceil(MR);
        let mpad = panels * MR;
        let mut tile = [0f32; MR * NR];
        let fused = self.fused_columns(plan, j, nr);
        // Passes: (first K row, rows, rows of the packed K block holding
        // them). The weights are packed per K block, row panel after row
        // panel; a pass reads a run of steps of each.
        let passes = (0..self.k).step_by(K_BLOCK).flat_map(|k0| {
            let kc = K_BLOCK.min(self.k - k0);
            (k0..k0 + kc)
                .step_by(depth)
                .map(move |d0| (d0, depth.min(k0 + kc - d0), k0, kc))
        });
        for (d0, dc, k0, kc) in passes {
            let (first, last) = (d0 == 0, d0 + dc == self.k);
            // SAFETY: offsets holds k entries.
            let b = Indirect {
                base,
                offsets: unsafe { offsets.as_ptr().add(d0) },
            };
            for p in 0..panels {
                let r0 = p * MR;
                let mr = MR.min(self.m - r0);
                // SAFETY: the packed weights hold mpad·k floats; block k0
                // starts at k0·mpad, row panel p at p·kc·MR in it and step
                // d0 − k0 at (d0 − k0)·MR in that; acc holds mpad × NR; the
                // panel's rows are the caller's.
                unsafe {
                    let ap = self.a.add(k0 * mpad + p * kc * MR + (d0 - k0) * MR);
                    let acc = acc.as_mut_ptr().add(p * MR * NR);
                    if last && mr == MR {
                        let prior = if first {
                            (std::ptr::null(), 0)
                        } else {
                            (acc as *const f32, NR)
                        };
                        if self.try_fused(&fused, kernel, dc, ap, b, prior, r0) {
                            continue;
                        }
                    }
                    if last && first {
                        let t = tile.as_mut_ptr();
                        kernel.run_into_cols_indirect(dc, ap, b, t, NR, false, nr, mr);
                        self.epilogue_tile(r0, mr, j, nr, tile.as_ptr(), NR, act_in_tiles);
                    } else {
                        kernel.run_into_cols_indirect(dc, ap, b, acc, NR, !first, nr, mr);
                        if last {
                            self.epilogue_tile(r0, mr, j, nr, acc, NR, act_in_tiles);
                        }
                    }
                }
            }
        }
    }
}

/// The first run of entries of `done[within]` not yet done (samples or
/// rows this thread has not padded in this run), marked done; None when
/// all are. One `pad_input` call per run rather than per entry.
fn take_unpadded(
    done: &mut [bool],
    within: std::ops::Range<usize>,
) -> Option<std::ops::Range<usize>> {
    let end = within.end.min(done.len());
    let start = (within.start..end).find(|&i| !done[i])?;
    let stop = (start..end).find(|&i| done[i]).unwrap_or(end);
    done[start..stop].fill(true);
    Some(start..stop)
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// Share `tid` of `threads` (`[lo, hi)`) of `n` items split as evenly as
/// possible.
pub fn split(n: usize, tid: usize, threads: usize) -> (usize, usize) {
    (n * tid / threads, n * (tid + 1) / threads)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use netc_compiler::ir::Activation;

    /// Runs a feature-major problem (`cout` outputs, depth `k`, `per` columns
    /// per sample, `samples` samples of `input` floats, read through `b`;
    /// bias and ReLU epilogue; fixed patterns for weights, bias and input)
    /// with `go`, returning the output's bits.
    pub(in crate::backend::cpu::conv) fn run_feature_major(
        cout: usize,
        k: usize,
        per: usize,
        samples: usize,
        input: usize,
        b: Gather,
        go: impl FnOnce(&Problem, &mut Scratch),
    ) -> Vec<u32> {
        let wts: Vec<f32> = (0..cout * k)
            .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.01)
            .collect();
        let packed = super::super::gemm::pack_weights(&wts, cout, k);
        let bias: Vec<f32> = (0..cout).map(|i| i as f32 * 0.1 - 0.3).collect();
        // A guard area after the output: a store past it shows there.
        const GUARD: usize = 256;
        let mut arena: Vec<f32> = (0..samples * (input + cout * per) + GUARD)
            .map(|i| ((i * 13 % 31) as f32 - 15.0) * 0.1)
            .collect();
        let guard = arena[arena.len() - GUARD..].to_vec();
        let p = Problem {
            m: cout,
            k,
            n: samples * per,
            per_sample: per,
            a: packed.as_ptr(),
            a_cols: std::ptr::null(),
            b,
            out: Layout {
                base: samples * input,
                sample_stride: cout * per,
                row_stride: per,
                col_stride: 1,
            },
            epilogue: vec![Step::Bias(bias.as_ptr()), Step::Act(Act::Relu)],
            arena: arena.as_mut_ptr(),
            queue: WorkQueue::default(),
        };
        go(&p, &mut Scratch::default());
        let end = arena.len() - GUARD;
        assert_eq!(arena[end..], guard[..], "a store past the output");
        arena[samples * input..end]
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// Whole column panels on the AVX-512 tile (`Problem::zmm_row_tiles`:
    /// packed, or read in place for 1×1 convolutions whose block is one
    /// sample's) give the 6×16 ymm kernel's bits: the fused epilogue
    /// (bias, ReLU(6), residual before or after the clamp, none) and the
    /// unfused one (two residual adds), several K blocks, partial panels,
    /// blocks crossing samples (packed) or within one (read in place for
    /// 1×1s, strided ones from their padded copy) and sub-ranges of rows
    /// and columns.
    #[test]
    fn zmm_row_tiles_match_the_ymm_kernel() {
        if Kernel::detect() != Kernel::Avx2Fma || !super::super::gemm::avx512::available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let (_jit, silu) = test_silu();
        // (cin, cout, h, w, window: kernel and stride, or None for 1×1)
        let cases = [
            (40usize, 29usize, 9usize, 11usize, None::<(usize, usize)>),
            (300, 64, 7, 7, None),
            (17, 96, 16, 16, None),
            (520, 12, 5, 13, None),
            (24, 40, 11, 9, Some((3, 2))),
            (3, 20, 15, 14, Some((7, 2))),
            (48, 40, 14, 12, Some((1, 2))),
            (300, 24, 12, 12, Some((1, 2))),
        ];
        for (cin, cout, h, w, window) in cases {
            let (b, k, per, input) = match window {
                Some((kern, stride)) => windowed_input(cin, h, w, kern, stride, kern / 2, 1),
                None => {
                    let l = Layout {
                        base: 0,
                        sample_stride: cin * h * w,
                        row_stride: h * w,
                        col_stride: 1,
                    };
                    (Gather::Strided(l), cin, h * w, cin * h * w)
                }
            };
            let samples = 2;
            let panels = cout.div_ceil(MR);
            let n = samples * per;
            for epilogue in 0..7 {
                let ranges = [
                    (0..panels, 0..n),
                    (1..panels, 0..n),
                    (0..panels, NR..n),
                    (0..panels, 0..per),
                    (0..panels, per..n),
                ];
                for (rows, cols) in ranges {
                    let run = |ymm: bool| {
                        run_feature_major(cout, k, per, samples, input, b, |p, s| {
                            let mut p = p.clone();
                            set_test_epilogue(&mut p, epilogue, silu);
                            force_ymm_row_tiles(ymm);
                            // SAFETY: the arena holds both samples' input and output.
                            unsafe {
                                if p.paddable() {
                                    s.padded_ready =
                                        p.pad_input(&mut s.padded, 0..samples, 0..usize::MAX);
                                }
                                p.run_block(rows.start, rows.end, cols.start, cols.end, s);
                            }
                            force_ymm_row_tiles(false);
                        })
                    };
                    let name = format!(
                        "{cin}>{cout} {h}x{w} {window:?}, epilogue {epilogue}, rows {rows:?}, columns {cols:?}"
                    );
                    assert_eq!(run(false), run(true), "{name}");
                }
            }
        }
    }

    /// Replaces `p`'s epilogue (from [`run_feature_major`], which starts
    /// with a bias) by variant `v`: 0 bias, ReLU; 1 bias, residual, ReLU;
    /// 2 bias, ReLU6, residual; 3 residual only; 4 bias, residual, ReLU,
    /// residual (which no fused kernel takes); 5 bias, `smooth` (an
    /// activation drivers may defer to whole rows); 6 bias, residual,
    /// `smooth`. The residual is read from the input region (rows 7 apart,
    /// samples 3 apart, overlapping: it is only read).
    pub(in crate::backend::cpu::conv) fn set_test_epilogue(p: &mut Problem, v: usize, smooth: Act) {
        let Step::Bias(bias) = p.epilogue[0] else {
            unreachable!("run_feature_major's epilogue starts with a bias")
        };
        let res = Step::Add(Layout {
            base: 0,
            sample_stride: 3,
            row_stride: 7,
            col_stride: 1,
        });
        let (bias, relu) = (Step::Bias(bias), Step::Act(Act::Relu));
        p.epilogue = match v {
            0 => vec![bias, relu],
            1 => vec![bias, res, relu],
            2 => vec![bias, Step::Act(Act::Relu6), res],
            3 => vec![res],
            4 => vec![bias, res, relu, res],
            5 => vec![bias, Step::Act(smooth)],
            _ => vec![bias, res, Step::Act(smooth)],
        };
    }

    /// The generated SiLU (kept alive by the returned JIT) for
    /// [`set_test_epilogue`]'s smooth variants.
    pub(in crate::backend::cpu::conv) fn test_silu() -> (super::super::jit::Jit, Act) {
        let (jit, kernels) = super::super::jit::compile_activations().unwrap();
        let f = kernels
            .iter()
            .find(|(a, _)| *a == Some(Activation::Silu))
            .expect("a generated SiLU")
            .1;
        (jit, Act::Generated(Some(Activation::Silu), f))
    }

    /// A windowed B over a `cin`×`h`×`w` input at offset 0 (square kernel,
    /// stride, padding and dilation): the gather, its depth K, output pixels
    /// per sample and input floats per sample.
    pub(in crate::backend::cpu::conv) fn windowed_input(
        cin: usize,
        h: usize,
        w: usize,
        kern: usize,
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> (Gather, usize, usize, usize) {
        let span = (kern - 1) * dil + 1;
        let (oh, ow) = (
            (h + 2 * pad - span) / stride + 1,
            (w + 2 * pad - span) / stride + 1,
        );
        let input = cin * h * w;
        let b = Gather::Window(
            Layout {
                base: 0,
                sample_stride: input,
                row_stride: h * w,
                col_stride: 1,
            },
            Window {
                in_hw: [h, w],
                out_w: ow,
                kernel: [kern, kern],
                stride: [stride, stride],
                pad: [pad, pad],
                dilation: [dil, dil],
            },
        );
        (b, cin * kern * kern, oh * ow, input)
    }

    /// Reading B in place gives the packed path's results bit for bit (same
    /// K blocks, same order of sums), over strides, dilation, several K
    /// blocks, partial panels, row ends and two samples.
    #[test]
    fn reading_b_in_place_matches_packing_it() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        // (cin, cout, h, w, kernel, stride, pad, dilation)
        let cases = [
            (5, 13, 11, 23, 3, 1, 1, 1),
            (3, 64, 30, 30, 7, 2, 3, 1),
            (40, 8, 9, 37, 3, 2, 1, 2),
            (300, 7, 6, 9, 1, 2, 0, 1),
            (2, 5, 5, 4, 3, 1, 2, 1),
        ];
        for (cin, cout, h, w, kern, stride, pad, dil) in cases {
            let (b, k, per, input) = windowed_input(cin, h, w, kern, stride, pad, dil);
            let samples = 2;
            let run = |in_place: bool| {
                run_feature_major(cout, k, per, samples, input, b, |p, s| {
                    // SAFETY: the arena holds both samples' input and output.
                    unsafe {
                        s.padded_ready = p.pad_input(&mut s.padded, 0..samples, 0..usize::MAX);
                        assert!(s.padded_ready);
                        if in_place {
                            p.run_in_place((0, samples * p.in_place_panels_per_sample()), s);
                        } else {
                            p.run_block(0, cout.div_ceil(MR), 0, p.n, s);
                        }
                    }
                })
            };
            assert_eq!(
                run(true),
                run(false),
                "{cin} {cout} {h}x{w} k{kern} s{stride} p{pad} d{dil}"
            );
        }
    }

    /// The column units cover every column once, in order, none wider than
    /// a panel, and split into even home shares.
    #[test]
    fn column_units_cover_the_columns_in_even_parts() {
        for n in [1, 2, 15, 16, 17, 49, 196, 784, 3136, 3137] {
            for threads in 1..=4 {
                let (units, col) = Problem::column_units(n, threads);
                assert_eq!(col(0), 0);
                assert_eq!(col(units), n, "{n} columns, {threads} threads");
                for q in 0..units {
                    assert!(col(q) <= col(q + 1) && col(q + 1) - col(q) <= NR);
                }
                if threads == 2 && n == 196 {
                    // Two parts of 98: six panels and two columns each.
                    assert_eq!(units, 14);
                    assert_eq!((col(6), col(7), col(13)), (96, 98, 194));
                }
            }
        }
    }

    /// A work queue hands out every unit exactly once (two threads, and
    /// four threads sharing two home ranges, and more threads than home
    /// ranges); a thread's chunks end only once every unit is done, whoever
    /// holds it (one thread in each pair is slow inside its chunks); one
    /// thread runs a whole layer alone while the other has not arrived, and
    /// the latecomer finds it done; `reset` empties a queue left
    /// half-claimed.
    #[test]
    fn work_queue_ends_a_layer_when_its_units_are_done() {
        use std::sync::atomic::AtomicU32;
        let q = WorkQueue::default();
        for (threads, indices) in [(2, vec![0, 1]), (2, vec![0, 1, 0, 1]), (6, vec![0, 5, 2])] {
            for units in [0usize, 1, 7, 13, 196] {
                q.reset();
                let seen: Vec<AtomicU32> = (0..units).map(|_| AtomicU32::new(0)).collect();
                std::thread::scope(|sc| {
                    for (i, &index) in indices.iter().enumerate() {
                        let (q, seen) = (&q, &seen);
                        sc.spawn(move || {
                            crate::backend::cpu::pool::set_thread_index(index);
                            for (lo, hi) in q.chunks(units, threads, 1) {
                                assert!(lo < hi && hi <= units, "{units}: chunk {lo}..{hi}");
                                if i % 2 == 1 {
                                    std::thread::sleep(std::time::Duration::from_millis(2));
                                }
                                seen[lo..hi].iter().for_each(|s| {
                                    s.fetch_add(1, Ordering::Relaxed);
                                });
                            }
                            let counts: Vec<u32> =
                                seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
                            assert!(counts.iter().all(|&c| c == 1), "{units}: {counts:?}");
                        });
                    }
                });
            }
        }
        // The partner never comes: one thread does all 50 units, then the
        // latecomer is told the layer is done.
        q.reset();
        assert_eq!(
            q.chunks(50, 2, 1).map(|(lo, hi)| hi - lo).sum::<usize>(),
            50
        );
        assert_eq!(q.chunks(50, 2, 1).next(), None);
        q.reset();
        assert_eq!(q.claim(10, 2, 1), Some((0, 3)));
        q.reset();
        assert_eq!(q.chunks(10, 2, 1).next(), Some((0, 3)));
        // Beyond 32-bit counts: the shared cursor, a quarter at a time.
        #[cfg(target_pointer_width = "64")]
        {
            q.reset();
            assert_eq!(q.claim(1 << 33, 2, 1), Some((0, 1 << 31)));
        }
    }

    /// The tests' reverse order ([`claim_from_back`]): one unit at a time,
    /// last first, whatever the threads and the least chunk asked for.
    #[test]
    fn claims_from_the_back_come_one_at_a_time_in_reverse_order() {
        let q = WorkQueue::default();
        claim_from_back(true);
        let got: Vec<(usize, usize)> = q.chunks(5, 2, 3).collect();
        claim_from_back(false);
        assert_eq!(got, [(4, 5), (3, 4), (2, 3), (1, 2), (0, 1)]);
    }

    /// Each thread claims from the front of its home range first, halving
    /// what is left there; then takes halves from the back of the other's.
    #[test]
    fn work_queue_claims_home_first_then_steals_from_the_back() {
        let q = WorkQueue::default();
        let on = |index: usize| {
            crate::backend::cpu::pool::set_thread_index(index);
            q.claim(20, 2, 1)
        };
        assert_eq!(on(1), Some((10, 15)));
        assert_eq!(on(0), Some((0, 5)));
        assert_eq!(on(1), Some((15, 18)));
        assert_eq!(on(1), Some((18, 19)));
        assert_eq!(on(1), Some((19, 20)));
        // Thread 1's range is empty: it takes from the back of thread 0's.
        assert_eq!(on(1), Some((7, 10)));
        assert_eq!(on(0), Some((5, 6)));
        assert_eq!(on(0), Some((6, 7)));
        assert_eq!(on(0), None);
        assert_eq!(on(1), None);
        crate::backend::cpu::pool::set_thread_index(0);
    }

    /// 1×1 convolutions reading B in place give the packed path's results
    /// bit for bit when each pass is a whole K block, and within rounding
    /// when passes are shallower (their partial sums go through memory),
    /// over samples whose last panel is narrower, several K blocks, passes
    /// that end inside a K block and partial row panels.
    #[test]
    fn reading_1x1_b_in_place_matches_packing_it() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        // (cin, cout, pixels per sample)
        for (cin, cout, per) in [
            (5, 13, 63),
            (300, 7, 16),
            (40, 64, 111),
            (3, 2, 1),
            (600, 20, 37),
        ] {
            let samples = 2;
            let input = cin * per;
            let b = Gather::Strided(Layout {
                base: 0,
                sample_stride: input,
                row_stride: per,
                col_stride: 1,
            });
            // Passes `depth` deep; 0 packs B.
            let run = |depth: usize| {
                run_feature_major(cout, cin, per, samples, input, b, |p, s| {
                    // SAFETY: the arena holds both samples' input and output.
                    unsafe {
                        if depth > 0 {
                            p.run_strided_in_place((0, samples * per.div_ceil(NR)), depth, s);
                        } else {
                            p.run_block(0, cout.div_ceil(MR), 0, p.n, s);
                        }
                    }
                })
            };
            let packed = run(0);
            assert_eq!(run(K_BLOCK), packed, "{cin} {cout} {per}");
            for depth in [K_BLOCK / 2, K_BLOCK / 4] {
                for (i, (x, y)) in run(depth).iter().zip(&packed).enumerate() {
                    let (x, y) = (f32::from_bits(*x), f32::from_bits(*y));
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                        "{cin} {cout} {per}, {depth} deep: output {i} is {x}, packed {y}"
                    );
                }
            }
        }
    }

    /// Which 1×1 convolutions read B in place, and how deep each pass goes:
    /// the shapes `in_place_depth`'s measurements name.
    #[test]
    fn in_place_depth_follows_the_measured_shapes() {
        // A sample's planes `hw` floats apart, starting 64-byte aligned.
        let planes = |hw: usize, k: usize| Layout {
            base: 0,
            sample_stride: k * hw,
            row_stride: hw,
            col_stride: 1,
        };
        let depth =
            |k: usize, m: usize, hw: usize| in_place_depth(&planes(hw, k), k, m.div_ceil(MR), hw);
        // MobileNetV2: 144→24 at 56×56 (whole blocks), 384→64 and 576→96
        // at 14×14 (128 deep: 512 unaligned lines 256 deep).
        assert_eq!(depth(144, 24, 56 * 56), Some(K_BLOCK));
        assert_eq!(depth(384, 64, 14 * 14), Some(128.min(K_BLOCK)));
        assert_eq!(depth(576, 96, 14 * 14), Some(128.min(K_BLOCK)));
        // Planes a multiple of 1 KiB apart fall into 4 sets: packed.
        assert_eq!(depth(32, 16, 112 * 112), None);
        // Too many row panels (ResNet-50's 512→128, DenseNet's 128-channel
        // bottlenecks), 7×7 maps and single pixels: packed.
        assert_eq!(depth(512, 128, 28 * 28), None);
        assert_eq!(depth(960, 64, 7 * 7), None);
        assert_eq!(depth(1152, 48, 1), None);
        // 28×28 planes with 16 panels: a quarter block spans 196 KiB.
        assert_eq!(depth(512, 96, 28 * 28), Some(64));
    }

    /// Token-major products (weights as B) give the feature-major path's
    /// results bit for bit, over partial tiles both ways, several K blocks,
    /// tokens of two samples (one token of one sample: a batch-1
    /// classifier's path, several weight panels at a time), every fused
    /// epilogue and unfused ones.
    #[test]
    fn token_major_products_match_feature_major_ones() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        let (_jit, kernels) = super::super::jit::compile_activations().unwrap();
        let gelu_fn = kernels
            .iter()
            .find(|(a, _)| *a == Some(Activation::Gelu))
            .unwrap()
            .1;
        let gelu = Act::Generated(Some(Activation::Gelu), gelu_fn);
        // (tokens per sample, in features, out features, samples)
        for (tokens, kin, kout, samples) in [
            (13, 40, 37, 2),
            (98, 300, 64, 2),
            (5, 7, 300, 2),
            (200, 520, 16, 2),
            (1, 600, 75, 1),
            (1, 33, 150, 1),
            (30, 130, 200, 1),
            // Feature blocks of five panels (the zmm tiles: four, then one) over
            // three K blocks.
            (200, 600, 150, 1),
        ] {
            let (input, output) = (tokens * kin, tokens * kout);
            let w: Vec<f32> = (0..kout * kin)
                .map(|i| ((i * 7 % 29) as f32 - 14.0) * 0.01)
                .collect();
            let bias: Vec<f32> = (0..kout).map(|i| i as f32 * 0.05 - 0.4).collect();
            let packed = super::super::gemm::pack_weights(&w, kout, kin);
            let cols = super::super::gemm::pack_weights_cols(&w, kout, kin);
            // The residual lives after the output, shaped like it.
            let res_base = samples * (input + output);
            for steps in 0..4 {
                let run = |token_major: bool, ymm: bool| {
                    let mut arena: Vec<f32> = (0..samples * (input + 2 * output))
                        .map(|i| ((i * 11 % 37) as f32 - 18.0) * 0.05)
                        .collect();
                    let out = Layout {
                        base: samples * input,
                        sample_stride: output,
                        row_stride: 1,
                        col_stride: kout,
                    };
                    let residual = Layout {
                        base: res_base,
                        ..out
                    };
                    let epilogue = match steps {
                        0 => vec![],
                        1 => vec![Step::Bias(bias.as_ptr()), Step::Act(gelu)],
                        2 => vec![
                            Step::Bias(bias.as_ptr()),
                            Step::Add(residual),
                            Step::Act(Act::Relu),
                        ],
                        // Two activations: no fused form.
                        _ => vec![Step::Act(gelu), Step::Act(Act::Relu6), Step::Add(residual)],
                    };
                    let p = Problem {
                        m: kout,
                        k: kin,
                        n: samples * tokens,
                        per_sample: tokens,
                        a: packed.as_ptr(),
                        a_cols: if token_major {
                            cols.as_ptr()
                        } else {
                            std::ptr::null()
                        },
                        b: Gather::Strided(Layout {
                            base: 0,
                            sample_stride: input,
                            row_stride: 1,
                            col_stride: kin,
                        }),
                        out,
                        epilogue,
                        arena: arena.as_mut_ptr(),
                        queue: WorkQueue::default(),
                    };
                    let mut s = Scratch::default();
                    force_ymm_row_tiles(ymm);
                    // SAFETY: the arena holds input, output and residual.
                    unsafe { p.run(1, &mut s) };
                    force_ymm_row_tiles(false);
                    arena[samples * input..res_base]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>()
                };
                // Where the CPU has AVX-512 both products run on the zmm
                // tiles by default; the ymm kernel's tokens are the third.
                let (t, f, ty) = (run(true, false), run(false, false), run(true, true));
                assert!(t == f, "{tokens} {kin}>{kout} steps {steps}");
                assert!(
                    t == ty,
                    "{tokens} {kin}>{kout} steps {steps}: zmm against ymm"
                );
            }
        }
    }
}

/// `cargo test --release -p netc-runtime conv_throughput -- --ignored --nocapture`:
/// single-thread GFLOP/s of the convolution driver on ResNet-50's layer shapes.
/// `THREADS=N` runs N threads; `SHAPE=s` only the shapes whose name contains
/// `s`; `FLUSH=1` evicts the caches (a 96 MiB sweep) before each timed run,
/// so weights come from memory as they do in a whole network; `ACT=gelu`
/// (any smooth activation's name) puts it in the epilogue instead of ReLU;
/// `RUNS=n` times n runs (default 40; more for `perf record`).
#[cfg(test)]
mod bench {
    use super::*;

    /// (name, cin, cout, hw, kernel, stride, pad)
    const SHAPES: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("conv1 7x7/2", 3, 64, 224, 7, 2, 3),
        ("l1 3x3 64", 64, 64, 56, 3, 1, 1),
        ("l1 1x1 64>256", 64, 256, 56, 1, 1, 0),
        ("l1 1x1 256>64", 256, 64, 56, 1, 1, 0),
        ("l2 3x3/2 128", 128, 128, 56, 3, 2, 1),
        ("l2 3x3 128", 128, 128, 28, 3, 1, 1),
        ("l2 1x1 512>128", 512, 128, 28, 1, 1, 0),
        ("l2 1x1/2 256>512", 256, 512, 56, 1, 2, 0),
        ("l3 3x3 256", 256, 256, 14, 3, 1, 1),
        ("l3 1x1 1024>256", 1024, 256, 14, 1, 1, 0),
        ("l4 3x3 512", 512, 512, 7, 3, 1, 1),
        ("l4 1x1 512>2048", 512, 2048, 7, 1, 1, 0),
        ("l4 1x1 2048>512", 2048, 512, 7, 1, 1, 0),
        // The bottlenecks' other 1×1s and the later stages' shortcuts.
        ("l1 1x1 64>64", 64, 64, 56, 1, 1, 0),
        ("l2 1x1 128>512", 128, 512, 28, 1, 1, 0),
        ("l3 1x1 256>1024", 256, 1024, 14, 1, 1, 0),
        ("l3 1x1/2 512>1024", 512, 1024, 28, 1, 2, 0),
        ("l4 1x1/2 1024>2048", 1024, 2048, 14, 1, 2, 0),
        // ResNeXt-50's wider 1×1s (layer2–4 bottlenecks: 256–1024 channels).
        ("rx 1x1 512>256 28", 512, 256, 28, 1, 1, 0),
        ("rx 1x1 256>512 28", 256, 512, 28, 1, 1, 0),
        ("rx 1x1 1024>512 14", 1024, 512, 14, 1, 1, 0),
        ("rx 1x1 512>1024 14", 512, 1024, 14, 1, 1, 0),
        ("rx 1x1 2048>1024 7", 2048, 1024, 7, 1, 1, 0),
        ("rx 1x1 1024>2048 7", 1024, 2048, 7, 1, 1, 0),
        // MobileNetV2's first projection (16 output channels, 112×112).
        ("mb 1x1 32>16 112", 32, 16, 112, 1, 1, 0),
        // DenseNet-121's 128-channel bottlenecks (22 row panels).
        ("dn 1x1 256>128 56", 256, 128, 56, 1, 1, 0),
        ("dn 1x1 256>128 28", 256, 128, 28, 1, 1, 0),
        ("dn 1x1 512>128 14", 512, 128, 14, 1, 1, 0),
        // Its stem and first expansion (the 112×112 stage).
        ("mb 3x3/2 3>32 224", 3, 32, 224, 3, 2, 1),
        ("mb 1x1 16>96 112", 16, 96, 112, 1, 1, 0),
        // Projections to 24 channels at 56×56 (MobileNetV2, EfficientNet-B0).
        ("mb 1x1 144>24 56", 144, 24, 56, 1, 1, 0),
        ("mb 1x1 96>24 56", 96, 24, 56, 1, 1, 0),
        // Its expansions on 14×14 and 7×7 maps (384 to 960 output channels).
        ("mb 1x1 64>384 14", 64, 384, 14, 1, 1, 0),
        ("mb 1x1 96>576 14", 96, 576, 14, 1, 1, 0),
        ("mb 1x1 160>960 7", 160, 960, 7, 1, 1, 0),
        // Its projections on 14×14 and 7×7 maps (64 to 160 output channels).
        ("mb 1x1 384>64 14", 384, 64, 14, 1, 1, 0),
        ("mb 1x1 576>96 14", 576, 96, 14, 1, 1, 0),
        ("mb 1x1 960>160 7", 960, 160, 7, 1, 1, 0),
        // EfficientNet-B0's 7×7 stage: expansion and projections.
        ("ef 1x1 192>1152 7", 192, 1152, 7, 1, 1, 0),
        ("ef 1x1 1152>192 7", 1152, 192, 7, 1, 1, 0),
        ("ef 1x1 1152>320 7", 1152, 320, 7, 1, 1, 0),
        // Its squeeze-and-excitation expansions (one pixel).
        ("ef se 48>1152 1", 48, 1152, 1, 1, 1, 0),
        // DenseNet-121's growth convolutions (32 output channels).
        ("dn 3x3 128>32 56", 128, 32, 56, 3, 1, 1),
        ("dn 3x3 128>32 14", 128, 32, 14, 3, 1, 1),
        ("dn 3x3 128>32 7", 128, 32, 7, 3, 1, 1),
        // Token-major linear layers (kernel 0; "hw" is the token count):
        // ConvNeXt-T stage 1, ViT-B/16's MLP.
        ("lin 96>384 x3136", 96, 384, 3136, 0, 1, 0),
        ("lin 384>96 x3136", 384, 96, 3136, 0, 1, 0),
        ("lin 768>3072 x197", 768, 3072, 197, 0, 1, 0),
        ("lin 3072>768 x197", 3072, 768, 197, 0, 1, 0),
        ("fc 1280>1000 x1", 1280, 1000, 1, 0, 1, 0),
        ("fc 2048>1000 x1", 2048, 1000, 1, 0, 1, 0),
    ];

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(p: &Problem, s: &mut Scratch, threads: usize) {
        unsafe { p.run(threads, s) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_winograd_avx2(w: &Winograd, s: &mut Scratch, threads: usize) {
        unsafe { w.run(threads, s) }
    }

    /// Runs `p` as the CPU backend would: Winograd where `wino` holds it.
    unsafe fn run_as_lowered(
        p: &Problem,
        wino: Option<&Winograd>,
        s: &mut Scratch,
        threads: usize,
    ) {
        unsafe {
            match wino {
                Some(w) => run_winograd_avx2(w, s, threads),
                None => run_avx2(p, s, threads),
            }
        }
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn conv_throughput() {
        let mut total_ms = 0.0;
        // ACT=name: that smooth activation in the epilogue instead of ReLU.
        let (_jit, kernels) = super::super::jit::compile_activations().unwrap();
        let act = match std::env::var("ACT") {
            Ok(name) => kernels
                .iter()
                .find(|(a, _)| a.is_some_and(|a| a.name() == name))
                .map(|(a, f)| Act::Generated(*a, *f))
                .unwrap_or_else(|| panic!("ACT={name}: not a smooth activation")),
            Err(_) => Act::Relu,
        };
        let only = std::env::var("SHAPE").unwrap_or_default();
        for &(name, cin, cout, hw, kern, stride, pad) in SHAPES {
            if !name.contains(only.as_str()) {
                continue;
            }
            let linear = kern == 0;
            let (o, k, input) = if linear {
                (1, cin, cin * hw)
            } else {
                (
                    (hw + 2 * pad - kern) / stride + 1,
                    cin * kern * kern,
                    cin * hw * hw,
                )
            };
            let n = if linear { hw } else { o * o };
            let w: Vec<f32> = (0..cout * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let packed = super::super::gemm::pack_weights(&w, cout, k);
            // Linear layers as the CPU backend runs them: token-major, with
            // the weights as B, where the CPU has AVX2.
            let token_major = linear && Kernel::detect() == Kernel::Avx2Fma;
            let cols = super::super::gemm::pack_weights_cols(&w, cout, k);
            let mut arena = vec![0.5f32; input + cout * n];
            let image = Layout {
                base: 0,
                sample_stride: input,
                row_stride: hw * hw,
                col_stride: 1,
            };
            let b = if linear {
                Gather::Strided(Layout {
                    base: 0,
                    sample_stride: input,
                    row_stride: 1,
                    col_stride: cin,
                })
            } else if kern == 1 && stride == 1 {
                Gather::Strided(image)
            } else {
                Gather::Window(
                    image,
                    Window {
                        in_hw: [hw, hw],
                        out_w: o,
                        kernel: [kern, kern],
                        stride: [stride, stride],
                        pad: [pad, pad],
                        dilation: [1, 1],
                    },
                )
            };
            let (row_stride, col_stride) = if linear { (1, cout) } else { (n, 1) };
            let mut p = Problem {
                m: cout,
                k,
                n,
                per_sample: n,
                a: packed.as_ptr(),
                a_cols: if token_major {
                    cols.as_ptr()
                } else {
                    std::ptr::null()
                },
                b,
                out: Layout {
                    base: input,
                    sample_stride: cout * n,
                    row_stride,
                    col_stride,
                },
                epilogue: vec![Step::Act(act)],
                arena: arena.as_mut_ptr(),
                queue: WorkQueue::default(),
            };
            // Windowed convolutions that `pixel_major` picks run
            // pixel-major, as the CPU backend runs them.
            if !linear && pixel_major(cout, k, [kern; 2], [stride; 2]) && p.paddable() {
                p.a_cols = cols.as_ptr();
            }
            // 3×3 stride-1 convolutions that `winograd` picks run as
            // Winograd, as the CPU backend runs them.
            let ir_window = netc_compiler::ir::Window {
                kernel: [kern; 2],
                stride: [stride; 2],
                pad: [pad; 4],
                dilation: [1, 1],
            };
            let mut u = Vec::new();
            let wino = (!linear && winograd(1, cin, cout, &ir_window, [o, o])).then(|| {
                u = vec![0f32; winograd::packed_len(cout, cin)];
                winograd::pack_weights_into(&w, cout, cin, &mut u);
                let mut conv = p.clone();
                conv.a = u.as_ptr();
                Winograd { conv }
            });
            let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
            let mut scratch: Vec<Scratch> = (0..threads).map(|_| Scratch::default()).collect();
            let flush = std::env::var_os("FLUSH").is_some();
            let mut junk = vec![0u8; if flush { 96 << 20 } else { 0 }];
            let runs: usize = std::env::var("RUNS").map_or(40, |t| t.parse().unwrap());
            // Persistent threads meeting at a spinning barrier before and
            // after each run (spawning threads per run added tens of
            // microseconds to small layers; the second barrier keeps every
            // thread out of the queue while the timing thread empties it).
            // The timing thread flushes the caches between runs, outside the
            // timed span, and arrives last at the first barrier: the span
            // starts before it, so that a worker running ahead while the
            // timing thread is descheduled cannot make a run look empty.
            // With PRODUCER set, the first worker rewrites the input before
            // each run, so the run reads it from another core's cache, as a
            // layer reads what the previous layer's threads wrote.
            let barrier = crate::backend::cpu::pool::Barrier::new(threads);
            let producer = std::env::var_os("PRODUCER").is_some();
            let arena_addr = p.arena as usize;
            let mut best = f64::MAX;
            let (first, rest) = scratch.split_first_mut().unwrap();
            std::thread::scope(|sc| {
                for (i, s) in rest.iter_mut().enumerate() {
                    let (p, barrier, wino) = (&p, &barrier, wino.as_ref());
                    let arena_ptr = arena_addr;
                    sc.spawn(move || {
                        crate::backend::cpu::pool::set_thread_index(i + 1);
                        for _ in 0..runs {
                            if producer && i == 0 {
                                // SAFETY: the input is the arena's first `input`
                                // floats; no other thread touches it until the
                                // barrier below.
                                let x = unsafe {
                                    std::slice::from_raw_parts_mut(arena_ptr as *mut f32, input)
                                };
                                x.iter_mut().for_each(|v| *v += 1e-7);
                            }
                            barrier.wait();
                            barrier.wait();
                            // SAFETY: the arena holds input and output;
                            // threads write disjoint parts; AVX2 checked by
                            // the kernel choice.
                            unsafe { run_as_lowered(p, wino, s, threads) };
                            barrier.wait();
                        }
                    });
                }
                for it in 0..runs {
                    if flush {
                        junk.iter_mut()
                            .step_by(64)
                            .for_each(|b| *b = b.wrapping_add(it as u8));
                    }
                    barrier.wait();
                    let t = std::time::Instant::now();
                    barrier.wait();
                    // SAFETY: as above.
                    unsafe { run_as_lowered(&p, wino.as_ref(), first, threads) };
                    barrier.wait();
                    best = best.min(t.elapsed().as_secs_f64());
                    p.queue.reset();
                    if let Some(w) = &wino {
                        w.conv.queue.reset();
                    }
                }
            });
            let flops = 2.0 * (cout * k * n) as f64;
            total_ms += best * 1e3;
            println!(
                "{name:18} M {cout:5} K {k:5} N {n:5}: {:7.3} ms {:6.1} GFLOP/s",
                best * 1e3,
                flops / best / 1e9
            );
        }
        println!("total {total_ms:.2} ms");
    }
}
