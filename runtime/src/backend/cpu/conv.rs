//! Convolution and linear layers as one GEMM with pre-packed weights:
//! `out[m, j] = Σ_k W[m, k] · B[k, j]`, where `m` is the output channel
//! (feature), `j` the output position across the whole batch, and `B` is never
//! materialised: K×NC slices of it are gathered straight from the input into the
//! micro-kernel's panel layout (implicit im2col). Partial sums for a block of
//! columns stay in a per-thread buffer in L2; when the last K block is done the
//! epilogue (bias, activation, residual add, in the op's order) runs over it
//! while it is hot and stores to the output.

use super::gemm::{Kernel, K_BLOCK, MR, NR};
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

/// Per-thread scratch: packed B and the partial sums of one column block.
#[derive(Default)]
pub struct Scratch {
    bpack: Vec<f32>,
    acc: Vec<f32>,
    cols: Vec<usize>,
}

/// Columns per block such that the partial sums of `rows` rows stay near 256 KiB.
fn column_block(rows: usize) -> usize {
    ((64 * 1024 / rows.max(1)) / NR * NR).clamp(NR, 512)
}

impl Problem {
    #[inline(always)]
    fn at_ptr(&self, offset: usize) -> *mut f32 {
        // SAFETY: offsets come from the lowering, checked against the arena's extent.
        unsafe { self.arena.add(offset) }
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
        grow(&mut s.acc, rows * nc_max);
        grow(&mut s.bpack, K_BLOCK.min(self.k) * nc_max);
        for j0 in (c0..c1).step_by(nc_max) {
            let nc = nc_max.min(c1 - j0);
            let ncp = nc.div_ceil(NR) * NR;
            for k0 in (0..self.k).step_by(K_BLOCK) {
                let kc = K_BLOCK.min(self.k - k0);
                unsafe { self.pack_b(k0, kc, j0, nc, &mut s.bpack, &mut s.cols) };
                for q in 0..ncp / NR {
                    let bp = s.bpack[q * kc * NR..].as_ptr();
                    for p in p0..p1 {
                        // SAFETY: the packed weights hold mpad·k floats and block
                        // k0 starts at k0·mpad; acc holds rows×nc_max.
                        unsafe {
                            let ap = self.a.add(k0 * mpad + p * kc * MR);
                            let c = s.acc.as_mut_ptr().add((p - p0) * MR * ncp + q * NR);
                            kernel.run_into(kc, ap, bp, c, ncp, k0 > 0);
                        }
                    }
                }
            }
            let r1 = (p1 * MR).min(self.m);
            unsafe { self.epilogue(p0 * MR, r1, j0, nc, ncp, &s.acc) };
        }
    }

    /// Gathers B[k0..k0+kc, j0..j0+nc] into NR-column panels (zero-padded).
    #[inline(always)]
    unsafe fn pack_b(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
        cols: &mut Vec<usize>,
    ) {
        let ncp = nc.div_ceil(NR) * NR;
        let ps = self.per_sample;
        match self.b {
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
                // Per column: the sample's base and the window's top-left corner
                // (as signed coordinates: padding makes them negative).
                cols.clear();
                for j in j0..j0 + nc {
                    let (n, p) = (j / ps, j % ps);
                    let (oy, ox) = (p / w.out_w, p % w.out_w);
                    cols.push(l.base + n * l.sample_stride);
                    cols.push((oy * w.stride[0]).wrapping_sub(w.pad[0]));
                    cols.push((ox * w.stride[1]).wrapping_sub(w.pad[1]));
                }
                let khw = w.kernel[0] * w.kernel[1];
                for kk in 0..kc {
                    let kidx = k0 + kk;
                    let (c, r) = (kidx / khw, kidx % khw);
                    let dy = (r / w.kernel[1]) * w.dilation[0];
                    let dx = (r % w.kernel[1]) * w.dilation[1];
                    let chan = c * l.row_stride;
                    for q in 0..ncp / NR {
                        let dst = &mut out[q * kc * NR + kk * NR..q * kc * NR + kk * NR + NR];
                        let lanes = NR.min(nc - q * NR);
                        // Fast path: all lanes in one sample and one output row,
                        // unit stride, fully inside the input: one copy.
                        let c0 = &cols[q * NR * 3..q * NR * 3 + 3];
                        let cl = &cols[(q * NR + lanes - 1) * 3..(q * NR + lanes - 1) * 3 + 3];
                        let y = c0[1].wrapping_add(dy);
                        let x0 = c0[2].wrapping_add(dx);
                        if w.stride[1] == 1
                            && c0[0] == cl[0]
                            && c0[1] == cl[1]
                            && y < h
                            && x0 < wd
                            && cl[2].wrapping_add(dx) < wd
                            && cl[2].wrapping_add(dx) == x0 + lanes - 1
                        {
                            let at = c0[0] + chan + y * wd + x0;
                            // SAFETY: inside the input, which the caller guarantees.
                            let src = unsafe { std::slice::from_raw_parts(self.at_ptr(at), lanes) };
                            dst[..lanes].copy_from_slice(src);
                        } else {
                            for (t, d) in dst[..lanes].iter_mut().enumerate() {
                                let cc = &cols[(q * NR + t) * 3..(q * NR + t) * 3 + 3];
                                let y = cc[1].wrapping_add(dy);
                                let x = cc[2].wrapping_add(dx);
                                *d = if y < h && x < wd {
                                    // SAFETY: inside the input.
                                    unsafe { *self.at_ptr(cc[0] + chan + y * wd + x) }
                                } else {
                                    0.0
                                };
                            }
                        }
                        dst[lanes..].fill(0.0);
                    }
                }
            }
        }
    }

    /// Applies the epilogue to rows `r0..r1` of the accumulated block and stores it.
    #[inline(always)]
    unsafe fn epilogue(&self, r0: usize, r1: usize, j0: usize, nc: usize, ld: usize, acc: &[f32]) {
        let ps = self.per_sample;
        // Split the block's columns into runs inside one sample, so output
        // addresses are affine in the column within a run.
        let mut run_start = j0;
        while run_start < j0 + nc {
            let n = run_start / ps;
            let run_end = ((n + 1) * ps).min(j0 + nc);
            let len = run_end - run_start;
            for r in r0..r1 {
                let src = &acc[(r - r0) * ld + (run_start - j0)..][..len];
                let mut row = [0f32; 512];
                let row = &mut row[..len];
                row.copy_from_slice(src);
                for step in &self.epilogue {
                    match *step {
                        Step::Bias(b) => {
                            // SAFETY: bias holds m floats.
                            let b = unsafe { *b.add(r) };
                            row.iter_mut().for_each(|v| *v += b);
                        }
                        Step::Act(a) => a.apply(row),
                        Step::Add(l) => {
                            let at = l.at(ps, r, run_start);
                            for (t, v) in row.iter_mut().enumerate() {
                                // SAFETY: the residual has the output's extent.
                                *v += unsafe { *self.at_ptr(at + t * l.col_stride) };
                            }
                        }
                    }
                }
                let at = self.out.at(ps, r, run_start);
                let cs = self.out.col_stride;
                for (t, v) in row.iter().enumerate() {
                    // SAFETY: the caller guarantees the output's extent.
                    unsafe { *self.at_ptr(at + t * cs) = *v };
                }
            }
            run_start = run_end;
        }
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
