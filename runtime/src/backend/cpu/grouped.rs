//! Grouped convolution with few channels per group (ResNeXt's 3×3s: 4 to 32
//! channels a group), computed directly rather than as one GEMM per group.
//!
//! As a GEMM, such a group is a product only 4 to 32 rows tall and 36 to 288
//! deep: the 6×16 micro-kernel idles most of its rows or spends its time
//! packing an im2col operand nine times the input's size. Here, per group,
//! the input channels are copied once into zero-padded planes split into
//! stride phases ([`Geometry`]), so that every kernel tap of every output is
//! a read at a fixed offset from the output's own position. The outputs are
//! then computed as flat runs over the padded width (the columns past the
//! map's edge are computed and dropped): four output channels by 16
//! positions in eight registers, each input vector shared by four
//! broadcast weights. A bias and ReLU or ReLU6 are applied in the registers;
//! other epilogues to each finished row before it is stored.
//!
//! Chosen by [`takes`] (the lowering and the weight preparation ask it);
//! AVX2 and FMA only, other CPUs keep the GEMM path.

use super::conv::{self, Step};
use super::depthwise::copy_floats;
use super::kernels::{split_stride2_over_zeros, Images};
use super::Act;
use netc_compiler::ir::Window;

/// Output channels one register block computes.
pub const BLOCK_CHANNELS: usize = 4;
/// Flat output positions one register block computes (two vectors: with
/// three, twelve accumulators, three inputs and a broadcast need all sixteen
/// registers, and the compiler spilled an accumulator every tap).
const BLOCK_POSITIONS: usize = 16;
/// Most input channels per group this kernel takes: ResNeXt-50's widest
/// groups (layer4), where it is about level with the pixel-major GEMM
/// (in-model 0.86 against 0.89 ms for the three layers). Wider groups were
/// not measured and keep the GEMM path, whose packed panels reuse more.
const MAX_GROUP_CHANNELS: usize = 32;

/// Whether a convolution runs here: grouped (not depthwise), with output
/// channels per group a multiple of [`BLOCK_CHANNELS`], few input channels
/// per group, a window larger than one pixel, and a CPU with AVX2 and FMA.
pub fn takes(groups: usize, cin_g: usize, cout_g: usize, window: &Window) -> bool {
    groups > 1
        && cin_g > 1
        && cin_g <= MAX_GROUP_CHANNELS
        && cout_g.is_multiple_of(BLOCK_CHANNELS)
        && window.kernel[0] * window.kernel[1] > 1
        && super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma
}

/// Floats of [`pack_weights_into`]'s layout (as many as the weights).
pub fn packed_len(cout: usize, k: usize) -> usize {
    cout * k
}

/// Weights `[cout][k]` (`k` = input channels per group × taps) rearranged
/// as [`BLOCK_CHANNELS`]-channel blocks, each `[k][BLOCK_CHANNELS]`: a
/// block's four broadcasts per tap are adjacent, and its taps in order.
pub fn pack_weights_into(w: &[f32], cout: usize, k: usize, out: &mut [f32]) {
    assert!(cout.is_multiple_of(BLOCK_CHANNELS) && w.len() == cout * k && out.len() == cout * k);
    for (co, row) in w.chunks_exact(k).enumerate() {
        let (b, r) = (co / BLOCK_CHANNELS, co % BLOCK_CHANNELS);
        for (q, &v) in row.iter().enumerate() {
            out[(b * k + q) * BLOCK_CHANNELS + r] = v;
        }
    }
}

/// A grouped convolution computed directly (see the module comment).
#[derive(Debug)]
pub struct Grouped {
    /// Input images `[C, H, W]`.
    pub x: Images,
    /// Output images `[Cout, OH, OW]`.
    pub out: Images,
    /// Input channels, height, width.
    pub in_chw: [usize; 3],
    /// Output channels, height, width.
    pub out_chw: [usize; 3],
    /// Groups.
    pub groups: usize,
    /// Kernel, stride, padding, dilation.
    pub window: Window,
    /// Weights as [`pack_weights_into`] lays them out.
    pub weights: *const f32,
    /// Epilogue; layouts are relative to `arena`.
    pub epilogue: Vec<Step>,
    /// Base of the epilogue's layouts.
    pub arena: *mut f32,
    /// Batch.
    pub batch: usize,
    /// Hands out (sample, group) units to the threads as they ask.
    pub queue: conv::WorkQueue,
    /// Derived from the shapes and the window once, by [`Grouped::new`]:
    /// every run reads it.
    geometry: Geometry,
}

/// Where a group's padded input lives in its scratch buffer, and where each
/// (input channel, tap) reads relative to an output's flat position.
#[derive(Debug)]
struct Geometry {
    /// Stride (rows, columns): the phases per axis.
    stride: [usize; 2],
    /// Rows and columns of one phase plane.
    rows: usize,
    cols: usize,
    /// Floats of one input channel (all its phases).
    channel: usize,
    /// Flat output positions computed, a multiple of [`BLOCK_POSITIONS`].
    positions: usize,
    /// Per input channel and tap, in the weights' order: the read offset.
    offsets: Vec<usize>,
    /// Floats of the padded input buffer (with the reads' slack).
    len: usize,
}

impl Geometry {
    /// The layout for one group of `in_chw` → `out_chw` under `window`.
    fn new(in_chw: [usize; 3], out_chw: [usize; 3], groups: usize, window: &Window) -> Self {
        let Window {
            kernel,
            stride,
            dilation,
            ..
        } = *window;
        let [_, oh, ow] = out_chw;
        let cin_g = in_chw[0] / groups;
        // Tap (ky, kx) of output (oy, ox) reads padded row oy·sy + ky·dy:
        // phase (ky·dy) % sy, row oy + (ky·dy) / sy of that phase.
        let reach = |a: usize| (kernel[a] - 1) * dilation[a] / stride[a];
        let (rows, cols) = (oh + reach(0), ow + reach(1));
        let plane = rows * cols;
        let channel = stride[0] * stride[1] * plane;
        let mut offsets = Vec::with_capacity(cin_g * kernel[0] * kernel[1]);
        for ci in 0..cin_g {
            for ky in 0..kernel[0] {
                for kx in 0..kernel[1] {
                    let (dy, dx) = (ky * dilation[0], kx * dilation[1]);
                    let phase = (dy % stride[0]) * stride[1] + dx % stride[1];
                    offsets.push(
                        ci * channel + phase * plane + (dy / stride[0]) * cols + dx / stride[1],
                    );
                }
            }
        }
        let positions = ((oh - 1) * cols + ow).next_multiple_of(BLOCK_POSITIONS);
        let len = offsets.iter().max().copied().unwrap_or(0) + positions;
        Geometry {
            stride,
            rows,
            cols,
            channel,
            positions,
            offsets,
            len: len.max(cin_g * channel),
        }
    }
}

impl Grouped {
    /// The kernel for input `x` (`in_chw` a sample) and output `out`
    /// (`out_chw`), `groups` groups, `window`, weights packed by
    /// [`pack_weights_into`] and `epilogue` (layouts relative to `arena`),
    /// for `batch` samples.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        x: Images,
        out: Images,
        in_chw: [usize; 3],
        out_chw: [usize; 3],
        groups: usize,
        window: Window,
        weights: *const f32,
        epilogue: Vec<Step>,
        arena: *mut f32,
        batch: usize,
    ) -> Self {
        Grouped {
            geometry: Geometry::new(in_chw, out_chw, groups, &window),
            x,
            out,
            in_chw,
            out_chw,
            groups,
            window,
            weights,
            epilogue,
            arena,
            batch,
            queue: Default::default(),
        }
    }

    /// The epilogue's bias and a ReLU or ReLU6 after it, applied in
    /// registers, when that is all of it; else `None` (each finished row
    /// then goes through [`conv::apply_steps_to_row`]).
    fn in_registers(&self) -> Option<(*const f32, Clamp)> {
        let clamp = |a: Act| match a {
            Act::Relu => Some(Clamp::Relu),
            Act::Relu6 => Some(Clamp::Relu6),
            Act::Generated(..) => None,
        };
        match *self.epilogue.as_slice() {
            [] => Some((std::ptr::null(), Clamp::None)),
            [Step::Bias(b)] => Some((b, Clamp::None)),
            [Step::Act(a)] => Some((std::ptr::null(), clamp(a)?)),
            [Step::Bias(b), Step::Act(a)] => Some((b, clamp(a)?)),
            _ => None,
        }
    }

    /// Runs this thread's share of the (sample, group) units.
    #[inline(always)]
    pub(super) fn run(&self, threads: usize) {
        let g = &self.geometry;
        let [cout, oh, ow] = self.out_chw;
        let cout_g = cout / self.groups;
        let k = g.offsets.len();
        let fused = self.in_registers();
        // Out of the thread-local rather than used inside `with`'s closure,
        // which would be compiled without this entry's AVX2/FMA features.
        let mut scratch = SCRATCH.take();
        let key = self.scratch_key();
        if scratch.key != Some(key) {
            // The padding is the same for every group and sample: zeroed
            // once here, it stays zero while this geometry's units only
            // rewrite the input's elements.
            scratch.input.clear();
            scratch.input.resize(g.len, 0.0);
            scratch.key = Some(key);
        }
        scratch.output.resize(BLOCK_CHANNELS * g.positions, 0.0);
        let Scratch { input, output, .. } = &mut scratch;
        let units = self.batch * self.groups;
        for (lo, hi) in self.queue.chunks(units, threads, 1) {
            for u in lo..hi {
                let (n, grp) = (u / self.groups, u % self.groups);
                self.fill(g, n, grp, input);
                for b in 0..cout_g / BLOCK_CHANNELS {
                    let co = grp * cout_g + b * BLOCK_CHANNELS;
                    // SAFETY: the packed weights hold `cout · k` floats.
                    let w = unsafe { self.weights.add(co * k) };
                    let (bias, clamp) = match fused {
                        // SAFETY: the bias holds a float per output channel.
                        Some((b, c)) if !b.is_null() => (unsafe { b.add(co) }, c),
                        Some((_, c)) => (std::ptr::null(), c),
                        None => (std::ptr::null(), Clamp::None),
                    };
                    for p in (0..g.positions).step_by(BLOCK_POSITIONS) {
                        // SAFETY: `takes` admitted only AVX2+FMA CPUs; the
                        // reads end at `len` (`geometry`), the writes at
                        // four rows of `positions`; the bias holds a float
                        // per output channel.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            avx2::block(
                                input.as_ptr().add(p),
                                &g.offsets,
                                w,
                                bias,
                                clamp,
                                output.as_mut_ptr().add(p),
                                g.positions,
                            )
                        };
                    }
                    for r in 0..BLOCK_CHANNELS {
                        let oc = co + r;
                        // SAFETY: extents checked at lowering.
                        let plane = unsafe {
                            std::slice::from_raw_parts_mut(
                                self.out.at(n).add(oc * oh * ow),
                                oh * ow,
                            )
                        };
                        for (oy, dst) in plane.chunks_exact_mut(ow).enumerate() {
                            let at = r * g.positions + oy * g.cols;
                            let row = &mut output[at..at + ow];
                            if fused.is_none() {
                                conv::apply_steps_to_row(
                                    &self.epilogue,
                                    self.arena,
                                    n,
                                    oc,
                                    oy * ow,
                                    row,
                                );
                            }
                            copy_floats(dst, row);
                        }
                    }
                }
            }
        }
        SCRATCH.set(scratch);
    }

    /// What the zeroed padding of [`Scratch::input`] depends on.
    fn scratch_key(&self) -> [usize; 13] {
        let Window {
            kernel,
            stride,
            pad,
            dilation,
        } = self.window;
        let [cin, h, w] = self.in_chw;
        let [_, oh, ow] = self.out_chw;
        [
            cin / self.groups,
            h,
            w,
            oh,
            ow,
            kernel[0],
            kernel[1],
            stride[0],
            stride[1],
            pad[0],
            pad[1],
            dilation[0],
            dilation[1],
        ]
    }

    /// Copies group `grp` of sample `n` into its padded, phase-split planes
    /// (only the input's elements: the padding is already zero).
    #[inline(always)]
    fn fill(&self, g: &Geometry, n: usize, grp: usize, buf: &mut [f32]) {
        let [cin, h, w] = self.in_chw;
        let cin_g = cin / self.groups;
        let [sy, sx] = g.stride;
        let [pt, pl] = [self.window.pad[0], self.window.pad[1]];
        let plane = g.rows * g.cols;
        // SAFETY: the lowering checked the input's extent.
        let x = unsafe {
            std::slice::from_raw_parts(self.x.at(n).add(grp * cin_g * h * w), cin_g * h * w)
        };
        // Phase-plane column j of phase px holds padded column j·sx + px,
        // input column j·sx + px − pl: columns j0..j1 hold input.
        let span = |px: usize| {
            let j0 = pl.saturating_sub(px).div_ceil(sx);
            let j1 = if w + pl > px {
                ((w - 1 + pl - px) / sx + 1).min(g.cols)
            } else {
                0
            };
            (j0.min(j1), j1)
        };
        for ci in 0..cin_g {
            let src = &x[ci * h * w..][..h * w];
            let chan = &mut buf[ci * g.channel..][..g.channel];
            for (iy, row) in src.chunks_exact(w).enumerate() {
                // Padded row iy + pt: phase (iy + pt) % sy, row (iy + pt) / sy.
                let (py, i) = ((iy + pt) % sy, (iy + pt) / sy);
                if i >= g.rows {
                    continue;
                }
                let at = |px: usize| (py * sx + px) * plane + i * g.cols;
                if sx == 2 {
                    let (even, odd) = chan.split_at_mut(at(1));
                    split_stride2_over_zeros(
                        row,
                        pl,
                        &mut even[at(0)..][..g.cols],
                        &mut odd[..g.cols],
                    );
                    continue;
                }
                for px in 0..sx {
                    let dst = &mut chan[at(px)..][..g.cols];
                    let (j0, j1) = span(px);
                    let x0 = j0 * sx + px - pl;
                    if sx == 1 {
                        copy_floats(&mut dst[j0..j1], &row[x0..x0 + j1 - j0]);
                    } else {
                        for (d, v) in dst[j0..j1].iter_mut().zip(row[x0..].iter().step_by(sx)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The activation [`avx2::block`] applies after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clamp {
    /// None.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

/// A thread's buffers for [`Grouped::run`].
#[derive(Default)]
struct Scratch {
    /// The padded, phase-split input planes of one group.
    input: Vec<f32>,
    /// The layer geometry whose padding `input` holds zeroed.
    key: Option<[usize; 13]>,
    /// Four output channels' flat rows.
    output: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Clamp, BLOCK_CHANNELS, BLOCK_POSITIONS};
    use std::arch::x86_64::*;

    /// Four output channels at 16 flat positions: for each (input channel,
    /// tap) `q`, two vectors read at `x + offsets[q]` times the four
    /// weights `w[4q..4q + 4]`, summed in order; then `bias[r]` (unless
    /// null) and the clamp; row `r` stored at `out + r · stride`.
    ///
    /// # Safety
    /// AVX2 and FMA; `x + offsets[q] + 16` and `w + 4 · offsets.len()` in
    /// bounds; `bias` null or four floats; `out` holds four rows of
    /// `stride` from 16 on.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn block(
        x: *const f32,
        offsets: &[usize],
        w: *const f32,
        bias: *const f32,
        clamp: Clamp,
        out: *mut f32,
        stride: usize,
    ) {
        const _: () = assert!(BLOCK_CHANNELS == 4 && BLOCK_POSITIONS == 16);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for (q, &o) in offsets.iter().enumerate() {
            // SAFETY: the caller's extents.
            unsafe {
                let p = x.add(o);
                let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
                let wq = w.add(q * 4);
                for (r, a) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*wq.add(r));
                    for (a, v) in a.iter_mut().zip(v) {
                        *a = _mm256_fmadd_ps(b, v, *a);
                    }
                }
            }
        }
        let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        for (r, a) in acc.iter_mut().enumerate() {
            for a in a.iter_mut() {
                if !bias.is_null() {
                    // SAFETY: four floats.
                    *a = _mm256_add_ps(*a, unsafe { _mm256_broadcast_ss(&*bias.add(r)) });
                }
                // `max(x, 0)` maps NaN to 0, as `Act::apply` does.
                match clamp {
                    Clamp::None => {}
                    Clamp::Relu => *a = _mm256_max_ps(*a, zero),
                    Clamp::Relu6 => *a = _mm256_min_ps(_mm256_max_ps(*a, zero), six),
                }
            }
            for (i, a) in a.iter().enumerate() {
                // SAFETY: the caller's extents.
                unsafe { _mm256_storeu_ps(out.add(r * stride + i * 8), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::conv::Layout;

    /// A kernel shared with the measurement's threads (as the pool shares them).
    #[derive(Clone, Copy)]
    struct Shared<'a>(&'a Grouped);
    // SAFETY: the threads write disjoint parts of the output.
    unsafe impl Send for Shared<'_> {}
    unsafe impl Sync for Shared<'_> {}
    impl Shared<'_> {
        /// Through an AVX2+FMA entry, as the network function calls kernels.
        fn run(self, threads: usize) {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn entry(k: &Grouped, threads: usize) {
                k.run(threads)
            }
            // SAFETY: `takes` (AVX2 and FMA) checked by the callers.
            unsafe { entry(self.0, threads) };
        }
    }

    /// Runs `k` on `threads` threads at once, each claiming units from the
    /// queue as the network function's threads do; with 0, one thread
    /// takes the units one at a time from the back, so that a write past a
    /// unit's outputs would land on finished ones.
    fn run(k: &Grouped, threads: usize) {
        k.queue.reset();
        if threads == 0 {
            conv::claim_from_back(true);
            Shared(k).run(1);
            conv::claim_from_back(false);
            return;
        }
        std::thread::scope(|sc| {
            for index in 0..threads {
                let k = Shared(k);
                sc.spawn(move || {
                    crate::backend::cpu::pool::set_thread_index(index);
                    k.run(threads)
                });
            }
        });
    }

    /// Over random shapes (kernels 1×2 to 5×5, strides 1 to 3 per axis,
    /// dilations 1 and 2, asymmetric padding, 2 to 32 input channels a
    /// group, 4 to 12 output channels a group, 2 to 5 groups, one to three
    /// samples; in every case one to three threads and the units in
    /// reverse order) and epilogues (none, bias, bias then ReLU or ReLU6,
    /// bias then a residual then ReLU): the outputs match a direct sum in
    /// f64 to 1e-5 of the largest, and the arena around the output, and
    /// the output of an untouched sample stride's gap, stay as they were.
    #[test]
    fn grouped_convolutions_match_a_direct_sum() {
        let probe = Window {
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1; 4],
            dilation: [1, 1],
        };
        if !takes(2, 2, 4, &probe) {
            return;
        }
        let mut rng = crate::rng::Stream::new(7, "grouped");
        let mut rnd = |n: usize| (rng.next_u64() % n as u64) as usize;
        for case in 0..120 {
            let groups = 2 + rnd(4);
            let cin_g = [2, 3, 4, 5, 8, 16, 32][rnd(7)];
            let cout_g = 4 * (1 + rnd(3));
            let kernel = [[3, 3], [3, 3], [1, 2], [2, 3], [5, 5]][rnd(5)];
            let stride = [1 + rnd(3), 1 + rnd(3)];
            let dilation = [1 + rnd(2), 1 + rnd(2)];
            let pad = [
                rnd(kernel[0]),
                rnd(kernel[1]),
                rnd(kernel[0]),
                rnd(kernel[1]),
            ];
            let window = Window {
                kernel,
                stride,
                pad,
                dilation,
            };
            let span = [0, 1].map(|a| (kernel[a] - 1) * dilation[a] + 1);
            let (h, w) = (span[0] + rnd(17), span[1] + rnd(30));
            let oh = (h + pad[0] + pad[2] - span[0]) / stride[0] + 1;
            let ow = (w + pad[1] + pad[3] - span[1]) / stride[1] + 1;
            let batch = 1 + rnd(3);
            let (cin, cout) = (groups * cin_g, groups * cout_g);
            let k = cin_g * kernel[0] * kernel[1];
            // Samples a little further apart than their extent.
            let (in_stride, out_stride) = (cin * h * w + 3, cout * oh * ow + 5);
            let (x_at, res_at) = (0, batch * in_stride);
            let out_at = res_at + batch * out_stride;
            let len = out_at + batch * out_stride + 32;
            let mut arena: Vec<f32> = (0..len).map(|_| rng_f32(&mut rnd)).collect();
            let weights: Vec<f32> = (0..cout * k).map(|_| rng_f32(&mut rnd)).collect();
            let bias: Vec<f32> = (0..cout).map(|_| rng_f32(&mut rnd)).collect();
            let mut packed = vec![0.0; packed_len(cout, k)];
            pack_weights_into(&weights, cout, k, &mut packed);
            let epilogue_kind = case % 5;
            let residual = Layout {
                base: res_at,
                sample_stride: out_stride,
                row_stride: oh * ow,
                col_stride: 1,
            };
            let epilogue = match epilogue_kind {
                0 => vec![],
                1 => vec![Step::Bias(bias.as_ptr())],
                2 => vec![Step::Bias(bias.as_ptr()), Step::Act(Act::Relu)],
                3 => vec![Step::Bias(bias.as_ptr()), Step::Act(Act::Relu6)],
                _ => vec![
                    Step::Bias(bias.as_ptr()),
                    Step::Add(residual),
                    Step::Act(Act::Relu),
                ],
            };
            let before = arena.clone();
            let base = arena.as_mut_ptr();
            // SAFETY: the offsets are inside the arena.
            let (xp, op) = unsafe { (base.add(x_at), base.add(out_at)) };
            let k = Grouped::new(
                Images {
                    ptr: xp,
                    sample_stride: in_stride,
                },
                Images {
                    ptr: op,
                    sample_stride: out_stride,
                },
                [cin, h, w],
                [cout, oh, ow],
                groups,
                window,
                packed.as_ptr(),
                epilogue,
                base,
                batch,
            );
            // The direct sum.
            let mut want = vec![0f64; batch * cout * oh * ow];
            for n in 0..batch {
                for oc in 0..cout {
                    let grp = oc / cout_g;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = 0f64;
                            for ci in 0..cin_g {
                                for ky in 0..kernel[0] {
                                    for kx in 0..kernel[1] {
                                        let iy = (oy * stride[0] + ky * dilation[0]) as isize
                                            - pad[0] as isize;
                                        let ix = (ox * stride[1] + kx * dilation[1]) as isize
                                            - pad[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let c = grp * cin_g + ci;
                                        let xv = before[x_at
                                            + n * in_stride
                                            + (c * h + iy as usize) * w
                                            + ix as usize];
                                        let wv = weights[oc * cin_g * kernel[0] * kernel[1]
                                            + (ci * kernel[0] + ky) * kernel[1]
                                            + kx];
                                        acc += xv as f64 * wv as f64;
                                    }
                                }
                            }
                            let j = (oc * oh + oy) * ow + ox;
                            if epilogue_kind >= 1 {
                                acc += bias[oc] as f64;
                            }
                            if epilogue_kind == 4 {
                                acc += before[res_at + n * out_stride + j] as f64;
                            }
                            if matches!(epilogue_kind, 2 | 4) {
                                acc = acc.max(0.0);
                            }
                            if epilogue_kind == 3 {
                                acc = acc.clamp(0.0, 6.0);
                            }
                            want[n * cout * oh * ow + j] = acc;
                        }
                    }
                }
            }
            let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            for threads in [0, 1 + rnd(3)] {
                // A fresh thread-local scratch would hide stale padding:
                // run twice, the second over the first's buffers.
                for _ in 0..2 {
                    run(&k, threads);
                }
                // SAFETY: `arena` is not borrowed elsewhere while checking.
                let got = unsafe { std::slice::from_raw_parts(base, len) };
                for n in 0..batch {
                    let plane = cout * oh * ow;
                    for (j, &wv) in want[n * plane..(n + 1) * plane].iter().enumerate() {
                        let g = got[out_at + n * out_stride + j] as f64;
                        assert!(
                            (g - wv).abs() <= 1e-5 * scale,
                            "case {case} ({groups} groups, {cin_g}>{cout_g}, {h}x{w}, \
                             {window:?}, batch {batch}, epilogue {epilogue_kind}, \
                             threads {threads}): output {n}/{j} is {g}, want {wv}"
                        );
                    }
                }
                // Everything but the outputs is untouched.
                for (i, (&g, &b)) in got.iter().zip(&before).enumerate() {
                    let n = i.wrapping_sub(out_at) / out_stride;
                    let inside =
                        i >= out_at && n < batch && (i - out_at) % out_stride < cout * oh * ow;
                    assert!(
                        inside || g.to_bits() == b.to_bits(),
                        "case {case}: arena float {i} changed"
                    );
                }
            }
        }
    }

    /// A value in [-1, 1) from `rnd`.
    fn rng_f32(rnd: &mut impl FnMut(usize) -> usize) -> f32 {
        rnd(2001) as f32 / 1000.0 - 1.0
    }

    /// `cargo test --release -p netc-runtime grouped_throughput -- --ignored --nocapture`
    /// (`THREADS=2` for two threads, `SHAPE=` to pick): ResNeXt-50's grouped
    /// 3×3 convolutions with bias and ReLU.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn grouped_throughput() {
        // (name, channels, groups, input size, stride)
        const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
            ("rx 3x3 g32 128@56", 128, 32, 56, 1),
            ("rx 3x3/2 g32 256@56", 256, 32, 56, 2),
            ("rx 3x3 g32 256@28", 256, 32, 28, 1),
            ("rx 3x3/2 g32 512@28", 512, 32, 28, 2),
            ("rx 3x3 g32 512@14", 512, 32, 14, 1),
            ("rx 3x3/2 g32 1024@14", 1024, 32, 14, 2),
            ("rx 3x3 g32 1024@7", 1024, 32, 7, 1),
        ];
        let window = |stride| Window {
            kernel: [3, 3],
            stride: [stride; 2],
            pad: [1; 4],
            dilation: [1, 1],
        };
        if !takes(32, 4, 4, &window(1)) {
            println!("no AVX2+FMA: nothing to measure");
            return;
        }
        let only = std::env::var("SHAPE").unwrap_or_default();
        let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
        const RUNS: usize = 200;
        let mut total = 0.0;
        for &(name, c, groups, hw, stride) in SHAPES {
            if !name.contains(only.as_str()) {
                continue;
            }
            let o = (hw + 2 - 3) / stride + 1;
            let (input, output) = (c * hw * hw, c * o * o);
            let k = c / groups * 9;
            let mut arena: Vec<f32> = (0..input + output + 16)
                .map(|i| (i % 17) as f32 * 0.1 - 0.8)
                .collect();
            let w: Vec<f32> = (0..c * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut packed = vec![0.0; packed_len(c, k)];
            pack_weights_into(&w, c, k, &mut packed);
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
            let skip = arena.as_ptr().align_offset(64);
            let base = arena[skip..].as_mut_ptr();
            let g = Grouped::new(
                Images {
                    ptr: base,
                    sample_stride: input,
                },
                // SAFETY: the arena holds input and output.
                Images {
                    ptr: unsafe { base.add(input) },
                    sample_stride: output,
                },
                [c, hw, hw],
                [c, o, o],
                groups,
                window(stride),
                packed.as_ptr(),
                vec![
                    Step::Bias(bias.as_ptr()),
                    Step::Act(crate::backend::cpu::Act::Relu),
                ],
                base,
                1,
            );
            let shared = Shared(&g);
            let best = crate::backend::cpu::pool::best_time(
                threads,
                RUNS,
                &move |t| shared.run(t),
                &|| g.queue.reset(),
            );
            total += best;
            let macs = (output * k) as f64;
            println!(
                "{name:22} {:7.1} us {:6.1} GFLOP/s",
                best * 1e6,
                2.0 * macs / best / 1e9
            );
        }
        println!("total {:.1} us", total * 1e6);
    }
}
