//! Convolution and linear layers as one GEMM with pre-packed weights:
//! `out[m, j] = Σ_k W[m, k] · B[k, j]`, where `m` is the output channel
//! (feature), `j` the output position across the whole batch, and `B` is never
//! materialised: K×NC slices of it are gathered straight from the input into the
//! micro-kernel's panel layout (implicit im2col). Partial sums for a block of
//! columns stay in a per-thread buffer in L2; when the last K block is done the
//! epilogue (bias, activation, residual add, in the op's order) runs over it
//! while it is hot and stores to the output.

use super::gemm::{Kernel, TileAct, TileEpilogue, K_BLOCK, MR, NR};
use super::Act;

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
    /// Weights packed by [`super::gemm::pack_weights`].
    pub a: *const f32,
    /// The input.
    pub b: Gather,
    /// The output.
    pub out: Layout,
    /// Epilogue steps in order.
    pub epilogue: Vec<Step>,
    /// The arena every layout's offsets are relative to.
    pub arena: *mut f32,
}

// SAFETY: the pointers are to the program's arena and weights, which outlive
// every run; threads write disjoint parts (see `Problem::run`).
unsafe impl Send for Problem {}
unsafe impl Sync for Problem {}

/// An epilogue the fused micro-kernel can run (see [`Problem::fused_plan`]).
struct FusedPlan {
    bias: *const f32,
    act: TileAct,
    residual: Option<Layout>,
    residual_first: bool,
}

/// Per-thread scratch: packed B and the partial sums of one column block.
#[derive(Default)]
pub struct Scratch {
    bpack: Vec<f32>,
    acc: Vec<f32>,
    cols: Vec<usize>,
    /// One output column of a token-major epilogue.
    column: Vec<f32>,
    /// A stride-1 convolution's input with its padding written out
    /// (`[sample][channel][row][column]`), so windows need no bounds tests.
    padded: Vec<f32>,
    /// Whether `padded` holds this problem's input for the current run.
    padded_ready: bool,
}

/// The most columns [`column_block`] gives.
const COLUMN_BLOCK_MAX: usize = 512;

/// Columns per block such that the partial sums of `rows` rows stay near 256 KiB.
fn column_block(rows: usize) -> usize {
    ((64 * 1024 / rows.max(1)) / NR * NR).clamp(NR, COLUMN_BLOCK_MAX)
}

impl Problem {
    #[inline(always)]
    fn at_ptr(&self, offset: usize) -> *mut f32 {
        // SAFETY: offsets come from the lowering, checked against the arena's extent.
        unsafe { self.arena.add(offset) }
    }

    /// The padded input's geometry: rows, the length of one column phase of a
    /// row (`row_len = stride_w · phase_len`), and channels.
    fn padded_geometry(&self, w: &Window) -> (usize, usize, usize) {
        let oh = self.per_sample / w.out_w;
        let rows = (oh - 1) * w.stride[0] + (w.kernel[0] - 1) * w.dilation[0] + 1;
        let cols = (w.out_w - 1) * w.stride[1] + (w.kernel[1] - 1) * w.dilation[1] + 1;
        (
            rows,
            cols.div_ceil(w.stride[1]),
            self.k / (w.kernel[0] * w.kernel[1]),
        )
    }

    /// For a windowed convolution, writes its input with the padding made
    /// explicit into `padded` (each thread its own copy: the copy is
    /// `1/(M·taps)` of the convolution's work) and returns true. Each padded
    /// row is split into `stride_w` column phases (phase `c % s` holds padded
    /// column `c` at `c / s`), so the pixels one kernel tap reads along an
    /// output row are contiguous: the gather is then one short copy per tap
    /// and row segment, with no bounds work. Inputs above 16 Mi floats, or
    /// column strides above 4, return false.
    ///
    /// # Safety
    /// The input layout must address memory valid for this problem.
    #[inline(always)]
    unsafe fn pad_input(&self, padded: &mut Vec<f32>) -> bool {
        let Gather::Window(l, w) = self.b else {
            return false;
        };
        let sx = w.stride[1];
        if sx > 4 {
            return false;
        }
        let (rows, phase_len, channels) = self.padded_geometry(&w);
        let row_len = sx * phase_len;
        let samples = self.n / self.per_sample;
        let len = samples * channels * rows * row_len;
        if len > 1 << 24 {
            return false;
        }
        let [h, wd] = w.in_hw;
        let pl = w.pad[1];
        // Input columns that land in the padded row.
        let used = wd.min(row_len.saturating_sub(pl));
        padded.clear();
        padded.resize(len, 0.0);
        for (i, dst) in padded.chunks_exact_mut(row_len).enumerate() {
            let (nc, r) = (i / rows, i % rows);
            let (n, c) = (nc / channels, nc % channels);
            let iy = r.wrapping_sub(w.pad[0]);
            if iy >= h || used == 0 {
                continue;
            }
            let at = l.base + n * l.sample_stride + c * l.row_stride + iy * wd;
            // SAFETY: row iy of channel c of sample n is inside the input.
            let src = unsafe { std::slice::from_raw_parts(self.at_ptr(at), used) };
            if sx == 1 {
                dst[pl..pl + used].copy_from_slice(src);
            } else {
                for (x, v) in src.iter().enumerate() {
                    let col = x + pl;
                    dst[(col % sx) * phase_len + col / sx] = *v;
                }
            }
        }
        true
    }

    /// Runs this thread's share of the problem: column ranges when there are
    /// enough columns for every thread, otherwise row panels.
    ///
    /// # Safety
    /// Every layout must address memory valid for the extents of this problem;
    /// the output must not overlap the input, and other threads running the same
    /// problem write disjoint parts of it.
    #[inline(always)]
    pub unsafe fn run(&self, tid: usize, threads: usize, scratch: &mut Scratch) {
        // SAFETY: as for this function.
        scratch.padded_ready = unsafe { self.pad_input(&mut scratch.padded) };
        let panels = self.m.div_ceil(MR);
        if self.n >= threads * 4 * NR || panels < threads {
            let (j0, j1) = split(self.n.div_ceil(NR), tid, threads);
            unsafe { self.run_block(0, panels, j0 * NR, (j1 * NR).min(self.n), scratch) };
        } else {
            let (p0, p1) = split(panels, tid, threads);
            unsafe { self.run_block(p0, p1, 0, self.n, scratch) };
        }
    }

    /// Row panels `p0..p1`, columns `c0..c1`.
    #[inline(always)]
    unsafe fn run_block(&self, p0: usize, p1: usize, c0: usize, c1: usize, s: &mut Scratch) {
        if p0 >= p1 || c0 >= c1 {
            return;
        }
        let kernel = Kernel::detect();
        let rows = (p1 - p0) * MR;
        let nc_max = column_block(rows);
        let mpad = self.m.div_ceil(MR) * MR;
        let blocks = self.k.div_ceil(K_BLOCK);
        // Token-major outputs (linear layers: features contiguous per token)
        // keep every K block in `acc` and run the epilogue per output column
        // once a column panel has all its rows, so stores are contiguous.
        let by_column = self.out.row_stride == 1 && self.out.col_stride != 1;
        if blocks > 1 || by_column {
            grow(&mut s.acc, rows * nc_max);
        }
        grow(&mut s.bpack, K_BLOCK.min(self.k) * nc_max);
        let mut tile = [0f32; MR * NR];
        let plan = self.fused_plan();
        for j0 in (c0..c1).step_by(nc_max) {
            let nc = nc_max.min(c1 - j0);
            let ncp = nc.div_ceil(NR) * NR;
            for (kb, k0) in (0..self.k).step_by(K_BLOCK).enumerate() {
                let kc = K_BLOCK.min(self.k - k0);
                let last = kb + 1 == blocks;
                let padded: &[f32] = if s.padded_ready { &s.padded } else { &[] };
                unsafe { self.pack_b(k0, kc, j0, nc, &mut s.bpack, &mut s.cols, padded) };
                for q in 0..ncp / NR {
                    let bp = s.bpack[q * kc * NR..].as_ptr();
                    let (j, nr) = (j0 + q * NR, NR.min(nc - q * NR));
                    for p in p0..p1 {
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
                                if self.try_fused(&plan, kernel, kc, ap, bp, prior, r0, j, nr) {
                                    continue;
                                }
                            }
                            if last && kb == 0 && !by_column {
                                // One K block: straight from registers to the epilogue.
                                kernel.run_into_cols(kc, ap, bp, tile.as_mut_ptr(), NR, false, nr);
                                self.epilogue_tile(r0, mr, j, nr, tile.as_ptr(), NR);
                            } else {
                                let c = s.acc.as_mut_ptr().add((p - p0) * MR * ncp + q * NR);
                                kernel.run_into_cols(kc, ap, bp, c, ncp, kb > 0, nr);
                                if last && !by_column {
                                    self.epilogue_tile(r0, mr, j, nr, c, ncp);
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
        }
    }

    /// The epilogue as the fused micro-kernel runs it, if it can: an optional
    /// bias first, then at most one ReLU/ReLU6 and one residual add in
    /// either order.
    fn fused_plan(&self) -> Option<FusedPlan> {
        let mut steps = self.epilogue.as_slice();
        let mut plan = FusedPlan {
            bias: std::ptr::null(),
            act: TileAct::Identity,
            residual: None,
            residual_first: false,
        };
        if let [Step::Bias(b), rest @ ..] = steps {
            plan.bias = *b;
            steps = rest;
        }
        for step in steps {
            match *step {
                Step::Act(Act::Relu) if plan.act == TileAct::Identity => plan.act = TileAct::Relu,
                Step::Act(Act::Relu6) if plan.act == TileAct::Identity => plan.act = TileAct::Relu6,
                Step::Add(l) if plan.residual.is_none() && l.col_stride == 1 => {
                    plan.residual = Some(l);
                    plan.residual_first = plan.act == TileAct::Identity;
                }
                _ => return None,
            }
        }
        (self.out.col_stride == 1).then_some(plan)
    }

    /// Runs the last K block of a full tile (rows `r0..r0+MR`, columns
    /// `j..j+NR`) with the epilogue fused into the micro-kernel, storing
    /// straight to the output; false when the tile or CPU does not allow it.
    ///
    /// # Safety
    /// As [`Problem::run`]; `ap`/`bp` are this tile's panels and `prior` its
    /// partial sums (or null).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn try_fused(
        &self,
        plan: &Option<FusedPlan>,
        kernel: Kernel,
        kc: usize,
        ap: *const f32,
        bp: *const f32,
        (prior, prior_ld): (*const f32, usize),
        r0: usize,
        j: usize,
        nr: usize,
    ) -> bool {
        let ps = self.per_sample;
        let Some(plan) = plan else { return false };
        if nr != NR || j / ps != (j + NR - 1) / ps {
            return false;
        }
        let (residual, residual_ld) = match plan.residual {
            Some(l) => (self.at_ptr(l.at(ps, r0, j)) as *const f32, l.row_stride),
            None => (std::ptr::null(), 0),
        };
        let bias = if plan.bias.is_null() {
            plan.bias
        } else {
            // SAFETY: bias holds m floats and r0 + MR <= m.
            unsafe { plan.bias.add(r0) }
        };
        let e = TileEpilogue {
            bias,
            residual,
            residual_ld,
            residual_first: plan.residual_first,
            act: plan.act,
        };
        let out = self.at_ptr(self.out.at(ps, r0, j));
        // SAFETY: the caller's extents; the output and residual rows of the
        // tile are unit-stride runs of NR inside their tensors.
        unsafe { kernel.run_fused(kc, ap, bp, prior, prior_ld, out, self.out.row_stride, &e) }
    }

    /// Gathers B[k0..k0+kc, j0..j0+nc] into NR-column panels (zero-padded).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_b(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
        cols: &mut Vec<usize>,
        padded: &[f32],
    ) {
        let ncp = nc.div_ceil(NR) * NR;
        let ps = self.per_sample;
        match self.b {
            Gather::Window(_, w) if !padded.is_empty() => {
                let (rows, phase_len, channels) = self.padded_geometry(&w);
                let (sy, sx) = (w.stride[0], w.stride[1]);
                let row_len = sx * phase_len;
                let plane = rows * row_len;
                // Per panel, runs of consecutive output pixels of one output
                // row: (lane, length, index of the window's top-left corner).
                cols.clear();
                let mut panel_segs = [0usize; COLUMN_BLOCK_MAX / NR + 1];
                row_segments(j0, nc, ps, w.out_w, |q, t, len, n, oy, ox| {
                    cols.extend([t, len, n * channels * plane + oy * sy * row_len + ox]);
                    panel_segs[q + 1] = cols.len() / 3;
                });
                let (kh, kw) = (w.kernel[0], w.kernel[1]);
                for kk in 0..kc {
                    let kidx = k0 + kk;
                    let (c, r) = (kidx / (kh * kw), kidx % (kh * kw));
                    let dx = (r % kw) * w.dilation[1];
                    let off = c * plane
                        + (r / kw) * w.dilation[0] * row_len
                        + (dx % sx) * phase_len
                        + dx / sx;
                    for q in 0..ncp / NR {
                        let dst = &mut out[q * kc * NR + kk * NR..q * kc * NR + kk * NR + NR];
                        for seg in cols[panel_segs[q] * 3..panel_segs[q + 1] * 3].chunks_exact(3) {
                            let (t0, len, at) = (seg[0], seg[1], seg[2] + off);
                            copy_short(&mut dst[t0..t0 + len], &padded[at..at + len]);
                        }
                        dst[NR.min(nc - q * NR)..].fill(0.0);
                    }
                }
            }
            Gather::Strided(l) => {
                cols.clear();
                cols.extend((j0..j0 + nc).map(|j| l.at(ps, 0, j)));
                for q in 0..ncp / NR {
                    let panel = &mut out[q * kc * NR..(q + 1) * kc * NR];
                    let lanes = NR.min(nc - q * NR);
                    if l.row_stride == 1 {
                        // K is contiguous (a linear layer's rows): read each
                        // column's run of K once and scatter it into the panel.
                        if lanes < NR {
                            panel.fill(0.0);
                        }
                        #[cfg(target_arch = "x86_64")]
                        if lanes == NR && kc >= 8 && Kernel::detect() == Kernel::Avx2Fma {
                            let mut src = [std::ptr::null(); NR];
                            for (t, p) in src.iter_mut().enumerate() {
                                *p = self.at_ptr(cols[q * NR + t] + k0) as *const f32;
                            }
                            // SAFETY: AVX2 checked; each source holds kc floats
                            // and the panel kc·NR.
                            let done =
                                unsafe { transpose_into_panel(&src, kc, panel.as_mut_ptr()) };
                            for (t, p) in src.iter().enumerate() {
                                for kk in done..kc {
                                    // SAFETY: as above.
                                    panel[kk * NR + t] = unsafe { *p.add(kk) };
                                }
                            }
                            continue;
                        }
                        for t in 0..lanes {
                            // SAFETY: the caller guarantees the layout's extent.
                            let src = unsafe {
                                std::slice::from_raw_parts(self.at_ptr(cols[q * NR + t] + k0), kc)
                            };
                            for (kk, v) in src.iter().enumerate() {
                                panel[kk * NR + t] = *v;
                            }
                        }
                        continue;
                    }
                    let first = cols[q * NR];
                    let contiguous =
                        l.col_stride == 1 && cols[q * NR + lanes - 1] == first + lanes - 1;
                    for kk in 0..kc {
                        let dst = &mut panel[kk * NR..kk * NR + NR];
                        let row = (k0 + kk) * l.row_stride;
                        if contiguous {
                            // SAFETY: the caller guarantees the layout's extent.
                            let src = unsafe {
                                std::slice::from_raw_parts(self.at_ptr(first + row), lanes)
                            };
                            dst[..lanes].copy_from_slice(src);
                        } else {
                            for (t, d) in dst[..lanes].iter_mut().enumerate() {
                                // SAFETY: as above.
                                *d = unsafe { *self.at_ptr(cols[q * NR + t] + row) };
                            }
                        }
                        dst[lanes..].fill(0.0);
                    }
                }
            }
            Gather::Window(l, w) => {
                let [h, wd] = w.in_hw;
                let (sx, kw) = (w.stride[1], w.kernel[1]);
                // Split each panel's columns into segments of consecutive output
                // pixels of one output row: along a segment the input column
                // advances by the stride, so each (segment, kernel tap) is one
                // bounds computation and a copy instead of a test per element.
                // `cols` holds, per segment: lane, length, sample base, input
                // row of the window's top (as wrapping usize), then per kernel
                // column: the first input column and the in-bounds lane range.
                let per_seg = 4 + 3 * kw;
                cols.clear();
                let mut panel_segs = [0usize; COLUMN_BLOCK_MAX / NR + 1];
                row_segments(j0, nc, ps, w.out_w, |q, t, len, n, oy, ox| {
                    cols.extend([t, len, l.base + n * l.sample_stride]);
                    cols.push((oy * w.stride[0]).wrapping_sub(w.pad[0]));
                    for kx in 0..kw {
                        // First input column, signed.
                        let x0 = (ox * sx + kx * w.dilation[1]) as isize - w.pad[1] as isize;
                        let lo = if x0 >= 0 {
                            0
                        } else {
                            ((-x0) as usize).div_ceil(sx).min(len)
                        };
                        let hi = if x0 >= wd as isize {
                            0
                        } else {
                            ((wd as isize - 1 - x0) as usize / sx + 1).min(len)
                        };
                        cols.extend([x0 as usize, lo, hi.max(lo)]);
                    }
                    panel_segs[q + 1] = cols.len() / per_seg;
                });
                let khw = w.kernel[0] * kw;
                for kk in 0..kc {
                    let kidx = k0 + kk;
                    let (c, r) = (kidx / khw, kidx % khw);
                    let (ky, kx) = (r / kw, r % kw);
                    let dy = ky * w.dilation[0];
                    let chan = c * l.row_stride;
                    for q in 0..ncp / NR {
                        let dst = &mut out[q * kc * NR + kk * NR..q * kc * NR + kk * NR + NR];
                        let lanes = NR.min(nc - q * NR);
                        for seg in cols[panel_segs[q] * per_seg..panel_segs[q + 1] * per_seg]
                            .chunks_exact(per_seg)
                        {
                            let (t0, len, sample, top) = (seg[0], seg[1], seg[2], seg[3]);
                            let d = &mut dst[t0..t0 + len];
                            let y = top.wrapping_add(dy);
                            let [x0, lo, hi] = [seg[4 + 3 * kx], seg[5 + 3 * kx], seg[6 + 3 * kx]];
                            if y >= h || lo >= hi {
                                d.fill(0.0);
                                continue;
                            }
                            d[..lo].fill(0.0);
                            d[hi..].fill(0.0);
                            let at = (sample + chan + y * wd)
                                .wrapping_add(x0)
                                .wrapping_add(lo * sx);
                            if sx == 1 {
                                // SAFETY: lanes lo..hi are inside the input row.
                                let src =
                                    unsafe { std::slice::from_raw_parts(self.at_ptr(at), hi - lo) };
                                copy_short(&mut d[lo..hi], src);
                            } else {
                                for (i, v) in d[lo..hi].iter_mut().enumerate() {
                                    // SAFETY: as above, every sx-th element.
                                    *v = unsafe { *self.at_ptr(at + i * sx) };
                                }
                            }
                        }
                        dst[lanes..].fill(0.0);
                    }
                }
            }
        }
    }

    /// Applies the epilogue to output columns `j..j+nr`, rows `r0..r1`, whose
    /// sums are at `acc` (rows `ld` apart), one column at a time: for a
    /// token-major output a column is a contiguous run of features, so bias,
    /// activation, residual and store are all vector operations.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue_columns(
        &self,
        r0: usize,
        r1: usize,
        j: usize,
        nr: usize,
        acc: *const f32,
        ld: usize,
        column: &mut Vec<f32>,
    ) {
        let rows = r1 - r0;
        column.clear();
        column.resize(rows, 0.0);
        let o = &self.out;
        for (t, (n, p)) in tile_columns(j, nr, self.per_sample).enumerate() {
            for (i, v) in column.iter_mut().enumerate() {
                // SAFETY: acc holds `rows` rows at stride ld.
                *v = unsafe { *acc.add(i * ld + t) };
            }
            for step in &self.epilogue {
                match *step {
                    Step::Bias(b) => {
                        // SAFETY: bias holds m floats.
                        let b = unsafe { std::slice::from_raw_parts(b.add(r0), rows) };
                        column.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                    Step::Act(a) => a.apply(column),
                    Step::Add(l) => {
                        let at =
                            l.base + n * l.sample_stride + p * l.col_stride + r0 * l.row_stride;
                        for (i, v) in column.iter_mut().enumerate() {
                            // SAFETY: the residual has the output's extent.
                            *v += unsafe { *self.at_ptr(at + i * l.row_stride) };
                        }
                    }
                }
            }
            let at = o.base + n * o.sample_stride + p * o.col_stride + r0;
            // SAFETY: the caller guarantees the output's extent; rows are unit-stride.
            unsafe { std::slice::from_raw_parts_mut(self.at_ptr(at), rows) }
                .copy_from_slice(column);
        }
    }

    /// Applies the epilogue to one micro-tile, rows `r0..r0+mr` and columns
    /// `j..j+nr` of the output, whose sums are at `src` (rows `ld` apart), and
    /// stores it. Runs right after the tile's last K block, while it is in L1.
    #[inline(always)]
    unsafe fn epilogue_tile(
        &self,
        r0: usize,
        mr: usize,
        j: usize,
        nr: usize,
        src: *const f32,
        ld: usize,
    ) {
        let ps = self.per_sample;
        let unit = |l: &Layout| l.col_stride == 1;
        let fast = nr == NR
            && j / ps == (j + NR - 1) / ps
            && unit(&self.out)
            && self.epilogue.iter().all(|s| match s {
                Step::Add(l) => unit(l),
                _ => true,
            });
        if fast {
            // Sixteen columns of one sample, all unit-stride: fixed-size rows
            // the compiler keeps in vector registers.
            for r in r0..r0 + mr {
                let mut row = [0f32; NR];
                // SAFETY: the tile holds mr rows of NR floats at stride ld.
                row.copy_from_slice(unsafe {
                    std::slice::from_raw_parts(src.add((r - r0) * ld), NR)
                });
                for step in &self.epilogue {
                    match *step {
                        Step::Bias(b) => {
                            // SAFETY: bias holds m floats.
                            let b = unsafe { *b.add(r) };
                            row.iter_mut().for_each(|v| *v += b);
                        }
                        Step::Act(a) => a.apply(&mut row),
                        Step::Add(l) => {
                            // SAFETY: the residual has the output's extent.
                            let res = unsafe {
                                std::slice::from_raw_parts(self.at_ptr(l.at(ps, r, j)), NR)
                            };
                            row.iter_mut().zip(res).for_each(|(v, x)| *v += x);
                        }
                    }
                }
                // SAFETY: the caller guarantees the output's extent.
                unsafe {
                    std::slice::from_raw_parts_mut(self.at_ptr(self.out.at(ps, r, j)), NR)
                        .copy_from_slice(&row)
                };
            }
            return;
        }
        // Any layout: the whole tile through each step (one call of a
        // generated activation per tile), then stored element by element.
        let mut buf = [0f32; MR * NR];
        for r in 0..mr {
            // SAFETY: the tile holds mr rows of NR floats at stride ld.
            buf[r * NR..r * NR + nr]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(src.add(r * ld), nr) });
        }
        let buf = &mut buf[..mr * NR];
        for step in &self.epilogue {
            match *step {
                Step::Bias(b) => {
                    for (r, row) in buf.chunks_exact_mut(NR).enumerate() {
                        // SAFETY: bias holds m floats.
                        let b = unsafe { *b.add(r0 + r) };
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
                Step::Act(a) => a.apply(buf),
                Step::Add(l) => {
                    for (t, (n, p)) in tile_columns(j, nr, ps).enumerate() {
                        let at =
                            l.base + n * l.sample_stride + p * l.col_stride + r0 * l.row_stride;
                        for r in 0..mr {
                            // SAFETY: the residual has the output's extent.
                            buf[r * NR + t] += unsafe { *self.at_ptr(at + r * l.row_stride) };
                        }
                    }
                }
            }
        }
        let o = &self.out;
        for (t, (n, p)) in tile_columns(j, nr, ps).enumerate() {
            let at = o.base + n * o.sample_stride + p * o.col_stride + r0 * o.row_stride;
            for r in 0..mr {
                // SAFETY: the caller guarantees the output's extent.
                unsafe { *self.at_ptr(at + r * o.row_stride) = buf[r * NR + t] };
            }
        }
    }
}

/// Writes `panel[kk·NR + t] = src[t][kk]` for `kk` below `kc` rounded down
/// to 8, with 8×8 in-register transposes (a linear layer's tokens, whose
/// features are contiguous, into a GEMM panel); returns how many rows it did.
///
/// # Safety
/// AVX2 must be available; each `src[t]` must hold `kc` floats and `panel`
/// `kc·NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_into_panel(src: &[*const f32; NR], kc: usize, panel: *mut f32) -> usize {
    use std::arch::x86_64::*;
    let full = kc / 8 * 8;
    for kk in (0..full).step_by(8) {
        for half in 0..NR / 8 {
            let r: [__m256; 8] =
                std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src[half * 8 + i].add(kk)) });
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, c) in cols.iter().enumerate() {
                unsafe { _mm256_storeu_ps(panel.add((kk + i) * NR + half * 8), *c) };
            }
        }
    }
    full
}

/// Splits columns `j0..j0+nc` into their NR-wide panels and each panel into
/// runs of consecutive output pixels of one output row, calling
/// `f(panel, first lane, length, sample, output row, first output column)`
/// for each run in order (every panel has at least one).
#[inline(always)]
fn row_segments(
    j0: usize,
    nc: usize,
    per_sample: usize,
    out_w: usize,
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize),
) {
    for q in 0..nc.div_ceil(NR) {
        let lanes = NR.min(nc - q * NR);
        let mut t = 0;
        while t < lanes {
            let j = j0 + q * NR + t;
            let (n, pix) = (j / per_sample, j % per_sample);
            let (oy, ox) = (pix / out_w, pix % out_w);
            let len = (lanes - t).min(out_w - ox).min(per_sample - pix);
            f(q, t, len, n, oy, ox);
            t += len;
        }
    }
}

/// (sample, position) of columns `j..j+nr`, with one division for the tile
/// rather than two per element.
#[inline(always)]
fn tile_columns(j: usize, nr: usize, per_sample: usize) -> impl Iterator<Item = (usize, usize)> {
    let (mut n, mut p) = (j / per_sample, j % per_sample);
    (0..nr).map(move |_| {
        let at = (n, p);
        p += 1;
        if p == per_sample {
            (n, p) = (n + 1, 0);
        }
        at
    })
}

/// `dst.copy_from_slice(src)` for the short runs of the gathers (at most a
/// panel's width): fixed-size, possibly overlapping moves instead of a call
/// to `memmove`.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    if (8..=16).contains(&n) {
        let (head, tail): ([f32; 8], [f32; 8]) = (
            src[..8].try_into().unwrap(),
            src[n - 8..].try_into().unwrap(),
        );
        dst[..8].copy_from_slice(&head);
        dst[n - 8..].copy_from_slice(&tail);
    } else if (4..8).contains(&n) {
        let (head, tail): ([f32; 4], [f32; 4]) = (
            src[..4].try_into().unwrap(),
            src[n - 4..].try_into().unwrap(),
        );
        dst[..4].copy_from_slice(&head);
        dst[n - 4..].copy_from_slice(&tail);
    } else if n < 4 {
        // Element by element: a `copy_from_slice` here becomes a `memmove` call.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
    } else {
        dst.copy_from_slice(src);
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// `tid`'s share `[lo, hi)` of `n` items split as evenly as possible.
pub fn split(n: usize, tid: usize, threads: usize) -> (usize, usize) {
    (n * tid / threads, n * (tid + 1) / threads)
}

/// `cargo test --release -p netc-runtime conv_throughput -- --ignored --nocapture`:
/// single-thread GFLOP/s of the convolution driver on ResNet-50's layer shapes.
#[cfg(test)]
mod bench {
    use super::*;

    /// (name, cin, cout, hw, kernel, stride, pad)
    const SHAPES: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
        ("conv1 7x7/2", 3, 64, 224, 7, 2, 3),
        ("l1 3x3 64", 64, 64, 56, 3, 1, 1),
        ("l1 1x1 64>256", 64, 256, 56, 1, 1, 0),
        ("l1 1x1 256>64", 256, 64, 56, 1, 1, 0),
        ("l2 3x3 128", 128, 128, 28, 3, 1, 1),
        ("l2 1x1 512>128", 512, 128, 28, 1, 1, 0),
        ("l3 3x3 256", 256, 256, 14, 3, 1, 1),
        ("l3 1x1 1024>256", 1024, 256, 14, 1, 1, 0),
        ("l4 3x3 512", 512, 512, 7, 3, 1, 1),
        ("l4 1x1 512>2048", 512, 2048, 7, 1, 1, 0),
        ("l4 1x1 2048>512", 2048, 512, 7, 1, 1, 0),
        // Token-major linear layers (kernel 0; "hw" is the token count):
        // ConvNeXt-T stage 1, ViT-B/16's MLP.
        ("lin 96>384 x3136", 96, 384, 3136, 0, 1, 0),
        ("lin 384>96 x3136", 384, 96, 3136, 0, 1, 0),
        ("lin 768>3072 x197", 768, 3072, 197, 0, 1, 0),
        ("lin 3072>768 x197", 3072, 768, 197, 0, 1, 0),
    ];

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_avx2(p: &Problem, s: &mut Scratch, tid: usize, threads: usize) {
        unsafe { p.run(tid, threads, s) }
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn conv_throughput() {
        let mut total_ms = 0.0;
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
            let p = Problem {
                m: cout,
                k,
                n,
                per_sample: n,
                a: packed.as_ptr(),
                b,
                out: Layout {
                    base: input,
                    sample_stride: cout * n,
                    row_stride,
                    col_stride,
                },
                epilogue: vec![Step::Act(Act::Relu)],
                arena: arena.as_mut_ptr(),
            };
            let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
            let mut scratch: Vec<Scratch> = (0..threads).map(|_| Scratch::default()).collect();
            let mut best = f64::MAX;
            for _ in 0..40 {
                let t = std::time::Instant::now();
                std::thread::scope(|sc| {
                    for (tid, s) in scratch.iter_mut().enumerate() {
                        let p = &p;
                        // SAFETY: the arena holds input and output; threads write
                        // disjoint parts; AVX2 checked by the kernel choice.
                        sc.spawn(move || unsafe { run_avx2(p, s, tid, threads) });
                    }
                });
                best = best.min(t.elapsed().as_secs_f64());
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transposed_panels_match_element_by_element() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        let kc = 27;
        let rows: Vec<Vec<f32>> = (0..NR)
            .map(|t| (0..kc).map(|k| (t * 1000 + k) as f32).collect())
            .collect();
        let src: [*const f32; NR] = std::array::from_fn(|t| rows[t].as_ptr());
        let mut panel = vec![-1f32; kc * NR];
        // SAFETY: AVX2 checked; rows hold kc floats, the panel kc·NR.
        let done = unsafe { transpose_into_panel(&src, kc, panel.as_mut_ptr()) };
        assert_eq!(done, 24);
        for kk in 0..kc {
            for t in 0..NR {
                let want = if kk < done { rows[t][kk] } else { -1.0 };
                assert_eq!(panel[kk * NR + t], want, "row {kk}, lane {t}");
            }
        }
    }
}
