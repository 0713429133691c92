//! Gathering B, the GEMM's right-hand side, from the input into the
//! micro-kernel's 16-column panels: strided (1×1 convolutions, linear layers,
//! with 8×8 register transposes for K-contiguous rows) and windowed (implicit
//! im2col, from a copy of the input with its padding written out).

use super::super::depthwise::copy_floats;
use super::{Gather, Problem, Window, COLUMN_BLOCK_MAX};
use crate::backend::cpu::gemm::{Kernel, NR};

/// The most floats a padded copy of a convolution's input may take (per
/// thread): 64 MiB.
pub const PAD_MAX_FLOATS: usize = 1 << 24;

/// Whether one sample of a `channels`×`hw` input padded for `window` fits
/// [`PAD_MAX_FLOATS`] with a column stride of at most 4, as
/// [`Problem::paddable`] requires — judged from the IR's window before any
/// problem exists, by an upper bound of the padded copy's size (rows at
/// most the padded height, phase-split rows at most the padded width plus a
/// stride).
pub fn pads_one_sample(
    channels: usize,
    hw: [usize; 2],
    window: &netc_compiler::ir::Window,
) -> bool {
    let [pt, pl, pb, pr] = window.pad;
    let rows = hw[0] + pt + pb;
    let row_len = hw[1] + pl + pr + window.stride[1];
    window.stride[1] <= 4
        && channels
            .checked_mul(rows)
            .and_then(|v| v.checked_mul(row_len))
            .is_some_and(|v| v <= PAD_MAX_FLOATS)
}

impl Problem {
    /// The window as the padded copy of the input presents it to the gather.
    /// A 1×1 window reads only every stride-th row and column, so its copy
    /// keeps just those: a subsampled input of the output's size, read with
    /// stride 1 and no padding (a quarter of the copy for ResNet's stride-2
    /// shortcuts). Other windows read every padded row and column.
    pub(super) fn padded_window(&self, w: &Window) -> Window {
        if w.kernel == [1, 1] {
            let oh = self.per_sample / w.out_w;
            Window {
                in_hw: [oh, w.out_w],
                out_w: w.out_w,
                kernel: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
            }
        } else {
            *w
        }
    }

    /// The padded input's geometry for [`Problem::padded_window`]`(w)`: rows,
    /// the length of one column phase of a row (`row_len = stride_w ·
    /// phase_len`), and channels.
    pub(super) fn padded_geometry(&self, w: &Window) -> (usize, usize, usize) {
        let w = self.padded_window(w);
        let oh = self.per_sample / w.out_w;
        let rows = (oh - 1) * w.stride[0] + (w.kernel[0] - 1) * w.dilation[0] + 1;
        let cols = (w.out_w - 1) * w.stride[1] + (w.kernel[1] - 1) * w.dilation[1] + 1;
        (
            rows,
            cols.div_ceil(w.stride[1]),
            self.k / (w.kernel[0] * w.kernel[1]),
        )
    }

    /// Every K row's offset in the padded input ([`Problem::pad_input`])
    /// from a window's top-left corner, into `out` (`k` entries): the taps
    /// of one channel, then the same shifted by a channel plane per
    /// channel, so the packing loops do no divisions.
    pub(super) fn padded_offsets(&self, w: &Window, out: &mut Vec<usize>) {
        let (rows, phase_len, _) = self.padded_geometry(w);
        let w = self.padded_window(w);
        let sx = w.stride[1];
        let row_len = sx * phase_len;
        let (kh, kw) = (w.kernel[0], w.kernel[1]);
        out.clear();
        out.extend((0..kh * kw).map(|r| {
            let dx = (r % kw) * w.dilation[1];
            (r / kw) * w.dilation[0] * row_len + (dx % sx) * phase_len + dx / sx
        }));
        for i in kh * kw..self.k {
            let o = out[i - kh * kw] + rows * row_len;
            out.push(o);
        }
    }

    /// Whether the padded copy (`pad_input`) takes this problem's input (it is
    /// windowed, its column stride at most 4 and it at most 16 Mi floats).
    pub fn paddable(&self) -> bool {
        let Gather::Window(_, w) = self.b else {
            return false;
        };
        let (rows, phase_len, channels) = self.padded_geometry(&w);
        let row_len = self.padded_window(&w).stride[1] * phase_len;
        w.stride[1] <= 4 && (self.n / self.per_sample) * channels * rows * row_len <= PAD_MAX_FLOATS
    }

    /// For a windowed convolution, writes its input with the padding made
    /// explicit into `padded` (each thread its own copy: the copy is
    /// `1/(M·taps)` of the convolution's work) and returns true. Each padded
    /// row is split into `stride_w` column phases (phase `c % s` holds padded
    /// column `c` at `c / s`), so the pixels one kernel tap reads along an
    /// output row are contiguous: the gather is then one short copy per tap
    /// and row segment, with no bounds work. 1×1 windows keep only the pixels
    /// they read (see [`Problem::padded_window`]). Only rows `wanted_rows` (of
    /// the padded rows) of samples `wanted` are written (the others keep
    /// their places, unwritten). Returns false, writing
    /// nothing, when the problem is not [`Problem::paddable`].
    ///
    /// # Safety
    /// The input layout must address memory valid for this problem.
    #[inline(always)]
    pub(super) unsafe fn pad_input(
        &self,
        padded: &mut Vec<f32>,
        wanted: std::ops::Range<usize>,
        wanted_rows: std::ops::Range<usize>,
    ) -> bool {
        let Gather::Window(l, w) = self.b else {
            return false;
        };
        if !self.paddable() {
            return false;
        }
        let pw = self.padded_window(&w);
        let (rows, phase_len, channels) = self.padded_geometry(&w);
        let phases = pw.stride[1];
        let row_len = phases * phase_len;
        let samples = self.n / self.per_sample;
        let len = samples * channels * rows * row_len;
        // Padded row r is input row r·row_step − pad_top; element i of column
        // phase ph is input column i·col_step + ph − pad_left.
        let row_step = w.stride[0] / pw.stride[0];
        let col_step = w.stride[1];
        let [h, wd] = w.in_hw;
        let [pt, pl] = w.pad;
        // Every element is written below, so the buffer only ever grows. NR
        // floats of slack past the end: a micro-kernel reading B in place
        // reads whole NR-wide rows, and the last may run past the input.
        if padded.len() < len + NR {
            padded.resize(len + NR, 0.0);
        }
        // Only `wanted` (the samples this thread's columns read) and of
        // them rows `wanted_rows`; the buffer keeps every sample's place so
        // offsets stay the same.
        let wanted_rows = wanted_rows.start.min(rows)..wanted_rows.end.min(rows);
        for n in wanted.start..wanted.end.min(samples) {
            for c in 0..channels {
                for r in wanted_rows.clone() {
                    let i = (n * channels + c) * rows + r;
                    let dst = &mut padded[i * row_len..(i + 1) * row_len];
                    let iy = (r * row_step).wrapping_sub(pt);
                    if iy >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let at = l.base + n * l.sample_stride + c * l.row_stride + iy * wd;
                    // SAFETY: row iy of channel c of sample n is inside the input.
                    let src = unsafe { std::slice::from_raw_parts(self.at_ptr(at), wd) };
                    if col_step == 2 && phases == 2 {
                        let (even, odd) = dst.split_at_mut(phase_len);
                        super::super::kernels::split_stride2(src, pl, even, odd);
                        continue;
                    }
                    for (ph, d) in dst.chunks_exact_mut(phase_len).enumerate() {
                        // Lanes lo..hi read input columns inside the row.
                        let first = ph as isize - pl as isize;
                        let lo = if first >= 0 {
                            0
                        } else {
                            ((-first) as usize).div_ceil(col_step)
                        }
                        .min(phase_len);
                        let hi = if first >= wd as isize {
                            lo
                        } else {
                            ((wd as isize - 1 - first) as usize / col_step + 1).clamp(lo, phase_len)
                        };
                        // The padding first, then the row over it: short
                        // edges as one 8-float store each rather than a
                        // memset call (rows are short; three calls per row
                        // were 4% of DenseNet-121 in `perf`).
                        let len = d.len();
                        if len >= 8 && lo <= 8 && len - hi <= 8 {
                            if lo > 0 {
                                d[..8].copy_from_slice(&[0.0; 8]);
                            }
                            if hi < len {
                                d[len - 8..].copy_from_slice(&[0.0; 8]);
                            }
                        } else {
                            d[..lo].fill(0.0);
                            d[hi..].fill(0.0);
                        }
                        let x0 = (first + (lo * col_step) as isize) as usize;
                        if col_step == 1 {
                            copy_floats(&mut d[lo..hi], &src[x0..x0 + hi - lo]);
                        } else {
                            let mut done = 0;
                            // Every other column (ResNet's strided 1×1
                            // shortcuts) eight at a time where the vectors'
                            // sixteen columns are inside the row.
                            #[cfg(target_arch = "x86_64")]
                            if col_step == 2 && super::super::vmath::available() {
                                let n = (hi - lo).min((wd - x0) / 2);
                                // SAFETY: AVX2 checked; 2·n floats from x0
                                // are inside the row, n inside `d[lo..]`.
                                done = unsafe {
                                    super::super::kernels::take_even_avx2(
                                        src[x0..].as_ptr(),
                                        n,
                                        d[lo..].as_mut_ptr(),
                                    )
                                };
                            }
                            for (k, v) in d[lo..hi].iter_mut().enumerate().skip(done) {
                                *v = src[x0 + k * col_step];
                            }
                        }
                    }
                }
            }
        }
        true
    }

    /// Gathers B[k0..k0+kc, j0..j0+nc] into NR-column panels (zero-padded).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn pack_b(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
        cols: &mut Vec<usize>,
        (padded, k_offsets): (&[f32], &[usize]),
    ) {
        let ncp = nc.div_ceil(NR) * NR;
        let ps = self.per_sample;
        match self.b {
            Gather::Window(_, w) if !padded.is_empty() => {
                let (rows, phase_len, channels) = self.padded_geometry(&w);
                let w = self.padded_window(&w);
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
                // The furthest element any segment reads, relative to a tap's
                // offset: one bounds check per tap instead of one per copy.
                let reach = cols.chunks_exact(3).map(|s| s[2] + s[1]).max().unwrap_or(0);
                for kk in 0..kc {
                    let off = k_offsets[k0 + kk];
                    assert!(off + reach <= padded.len());
                    let src = padded[off..].as_ptr();
                    for q in 0..ncp / NR {
                        let dst = &mut out[q * kc * NR + kk * NR..q * kc * NR + kk * NR + NR];
                        for seg in cols[panel_segs[q] * 3..panel_segs[q + 1] * 3].chunks_exact(3) {
                            let (t0, len, at) = (seg[0], seg[1], seg[2]);
                            debug_assert!(t0 + len <= NR);
                            // SAFETY: `row_segments` keeps t0 + len within the
                            // panel's NR lanes, and at + len ≤ reach was
                            // checked against `padded` above.
                            unsafe { copy_short(dst.as_mut_ptr().add(t0), src.add(at), len) };
                        }
                        dst[NR.min(nc - q * NR)..].fill(0.0);
                    }
                }
            }
            Gather::Strided(l) if l.row_stride == 1 => {
                // K is contiguous (a linear layer's tokens): read each column's
                // run of K once and scatter it into the panel.
                cols.clear();
                cols.extend((j0..j0 + nc).map(|j| l.at(ps, 0, j)));
                for q in 0..ncp / NR {
                    let panel = &mut out[q * kc * NR..(q + 1) * kc * NR];
                    let lanes = NR.min(nc - q * NR);
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
                        let done = unsafe { transpose_into_panel(&src, kc, panel.as_mut_ptr()) };
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
                }
            }
            Gather::Strided(l) if l.col_stride == 1 && j0 / ps == (j0 + nc - 1) / ps => {
                // One sample's consecutive positions of a 1×1 convolution:
                // each channel row's run of `nc` floats, cut into whole
                // panels. MobileNetV2's 32→16 at 112×112 spent half its time
                // in the general loop below, per (row, panel) pair.
                let first = l.at(ps, 0, j0);
                let whole = nc / NR;
                assert!(out.len() >= kc * ncp);
                for kk in 0..kc {
                    let src = self.at_ptr(first + (k0 + kk) * l.row_stride) as *const f32;
                    let dst = out[kk * NR..].as_mut_ptr();
                    for q in 0..whole {
                        // SAFETY: the caller guarantees the layout's extent (the
                        // row's nc floats); `out` holds ncp/NR panels of kc·NR.
                        unsafe {
                            let v = std::ptr::read_unaligned(src.add(q * NR) as *const [f32; NR]);
                            std::ptr::write_unaligned(dst.add(q * kc * NR) as *mut [f32; NR], v);
                        }
                    }
                    let lanes = nc - whole * NR;
                    if lanes > 0 {
                        let d = &mut out[whole * kc * NR + kk * NR..][..NR];
                        // SAFETY: as above, for the row's last `lanes` floats.
                        unsafe { copy_short(d.as_mut_ptr(), src.add(whole * NR), lanes) };
                        d[lanes..].fill(0.0);
                    }
                }
            }
            Gather::Strided(l) => {
                // Rows of B are rows of the input (1×1 convolutions): walk each
                // input row once, left to right, handing its pieces to every
                // panel. (Panel by panel would sweep the whole K block once per
                // panel, and a K block of a large layer does not stay in L2.)
                cols.clear();
                cols.extend((j0..j0 + nc).map(|j| l.at(ps, 0, j)));
                let panels = ncp / NR;
                // Per panel: whether its columns are consecutive in memory.
                let mut contiguous = [false; COLUMN_BLOCK_MAX / NR + 1];
                for (q, c) in contiguous[..panels].iter_mut().enumerate() {
                    let lanes = NR.min(nc - q * NR);
                    let first = cols[q * NR];
                    *c = l.col_stride == 1 && cols[q * NR + lanes - 1] == first + lanes - 1;
                }
                for kk in 0..kc {
                    let row = (k0 + kk) * l.row_stride;
                    for (q, &contiguous) in contiguous[..panels].iter().enumerate() {
                        let lanes = NR.min(nc - q * NR);
                        let dst = &mut out[q * kc * NR + kk * NR..q * kc * NR + kk * NR + NR];
                        if contiguous {
                            // SAFETY: the caller guarantees the layout's extent.
                            let src = unsafe {
                                std::slice::from_raw_parts(self.at_ptr(cols[q * NR] + row), lanes)
                            };
                            // SAFETY: both hold `lanes` floats.
                            unsafe { copy_short(dst.as_mut_ptr(), src.as_ptr(), lanes) };
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
                                // SAFETY: both hold hi − lo floats.
                                unsafe { copy_short(d[lo..].as_mut_ptr(), src.as_ptr(), hi - lo) };
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
            let cols = crate::backend::cpu::vmath::transpose8(r);
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

/// Copies `n` floats (at most [`NR`]) from `src` to `dst` with at most two
/// overlapping vector moves, for the gathers' short runs: a `copy_from_slice`
/// of a run-time length becomes a `memmove` call, which costs more than the
/// copy.
///
/// # Safety
/// `src` must be readable and `dst` writable for `n` floats, and they must
/// not overlap.
#[inline(always)]
unsafe fn copy_short(dst: *mut f32, src: *const f32, n: usize) {
    debug_assert!(n <= NR);
    // SAFETY (all arms): the moves stay within the first n floats of both.
    unsafe {
        // Constant-length copies become single vector moves; the two may
        // write the same lanes twice, with the same values.
        if n >= 8 {
            std::ptr::copy_nonoverlapping(src, dst, 8);
            std::ptr::copy_nonoverlapping(src.add(n - 8), dst.add(n - 8), 8);
        } else if n >= 4 {
            std::ptr::copy_nonoverlapping(src, dst, 4);
            std::ptr::copy_nonoverlapping(src.add(n - 4), dst.add(n - 4), 4);
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
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
