//! Depthwise convolution (one input channel per group), computed directly
//! rather than as a GEMM: each output is a sum over the kernel's taps of one
//! input channel, too little work per weight for a packed product.
//!
//! Two paths, chosen by output width:
//! - wide maps: per channel, the input plane is copied into a zero-padded,
//!   stride-phase-split buffer so every tap reads a contiguous run, and rows
//!   of outputs are summed in registers ([`Depthwise::run`]); 3×3 stride-2
//!   layers copy two input rows at a time instead and split even and odd
//!   columns in registers (`avx2::stride2_3x3`);
//! - narrow maps (rows would leave lanes idle): eight channels at a time,
//!   interleaved so that one vector holds one pixel of eight channels
//!   ([`Depthwise::run_channel_blocked`]).
//!
//! All sum the taps in the same order, so they give the same bits.

use super::conv;
use super::kernels::{madd, put_buffers, split_stride2_over_zeros, take_buffers, Images};
use std::cell::RefCell;

/// A convolution with one input channel per group (depthwise), computed directly.
#[derive(Debug)]
pub struct Depthwise {
    /// Input images `[C, H, W]`.
    pub x: Images,
    /// Output images `[Cout, OH, OW]`.
    pub out: Images,
    /// Input (h, w).
    pub in_hw: [usize; 2],
    /// Output channels, height, width.
    pub out_chw: [usize; 3],
    /// Output channels per input channel.
    pub multiplier: usize,
    /// Kernel, stride, (top, left) padding, dilation.
    pub window: netc_compiler::ir::Window,
    /// `[Cout, 1, kh, kw]`.
    pub weights: *const f32,
    /// Epilogue; layouts are relative to `arena`.
    pub epilogue: Vec<conv::Step>,
    /// Base of the epilogue's layouts.
    pub arena: *mut f32,
    /// Batch.
    pub batch: usize,
    /// Where a global average pool of this output, fused, writes each
    /// channel's mean (`[Cout]` per sample), computed as each plane is
    /// finished, while it is in cache: the pool would read the whole output
    /// again (EfficientNet-B0's squeeze-excitations).
    pub means: Option<Images>,
    /// Hands out channels (or blocks of eight) to the threads as they ask:
    /// a static split made the layer wait for a thread whose core was busy
    /// (this machine is shared), as `conv::WorkQueue` says.
    pub queue: conv::WorkQueue,
}

thread_local! {
    /// A depthwise convolution's zero-padded, phase-split input plane, one
    /// output row, and its geometry (phase ranges, tap offsets).
    static DEPTHWISE_SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<usize>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// `dst = src` (equal lengths) in eight-float moves, inline: short rows
/// are copied without a call to `memcpy`.
#[inline(always)]
pub(crate) fn copy_floats(dst: &mut [f32], src: &[f32]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Output columns a depthwise row computes at once (two ymm registers).
const DW_CHUNK: usize = 16;

/// The narrowest output map the row path's row-blocked tiles take from
/// [`Depthwise::run_channel_blocked`], for 3-wide kernels with column
/// stride 1.
/// Measured with `depthwise_throughput` (two threads, AVX2 entry, Zen 4,
/// `DW_PATH` forcing each path, two to three runs), channel-blocked against
/// tiles: at 7 columns 0.65–0.92× the time (3×3 960@7: 31.7–31.9 against
/// 34.5 µs), at 14 about even (576@14: 30.9–31.5 against 28.0–33.0), at
/// 28 1.15–1.39× (192@28: 38.1–39.4 against 28.1–33.4), at 56 1.4–1.6×.
const DW_TILES_MIN_WIDTH: usize = 14;

/// [`DW_TILES_MIN_WIDTH`] for 3-wide kernels with a column stride: at 14
/// output columns the channel-blocked path takes 0.7–0.8× the tiles' time
/// (MobileNetV2's 3×3/2 192@28: 21.9–23.5 against 28.3–32.9 µs), at 28
/// even or slower (144@56: 63.3–65.0 against 53.4–66.9, the tiles' middle
/// runs 58.5–61.9).
const DW_TILES_MIN_WIDTH_STRIDED: usize = 28;

/// [`DW_TILES_MIN_WIDTH`] for 5-wide kernels: the channel-blocked path
/// takes 0.73× the tiles' time at 14 columns (EfficientNet-B0's 5×5
/// 672@14: 57.0–58.4 against 78.5–78.7 µs), 0.75× at 28 (240@28: 74.8–76.4
/// against 99.7–100.1) and 0.9× at 28 with stride 2 (144@56: 86.5–91.0
/// against 94.5–101.1). No 5×5 layer of the zoo is wider.
const DW_TILES_MIN_WIDTH_5_WIDE: usize = 56;

/// [`DW_TILES_MIN_WIDTH`] for kernels wider than 5: the channel-blocked
/// path takes 0.61–0.65× the tiles' time for ConvNeXt-T's 7×7 layers at 14,
/// 28 and 56 columns (384@14: 55.1–56.1 against 85.8–86.5 µs; 192@28:
/// 99.3–99.7 against 161.8–161.9; 96@56: 179.6–181.3 against 280.4–280.6).
/// (An earlier channel-blocked path, before its AVX2 pixel kernels, was
/// even with the tiles at 14 and 28.)
const DW_TILES_MIN_WIDTH_WIDE_KERNEL: usize = 112;

/// The narrowest output map of a 3×3 stride-2 layer that the row path
/// reads a row at a time (`avx2::stride2_3x3`) rather than through the
/// padded, phase-split plane. In the network (MobileNetV2, profile minima
/// of 10 interleaved rounds) its 96@112 (56 columns out) took 0.91× the
/// plane's time, its 144@56 (28 columns) 1.09×, though 0.9–0.97× in
/// isolation (`depthwise_throughput`).
const DW_STRIDE2_MIN_WIDTH: usize = 56;

/// The widest output map [`Depthwise::run_channel_blocked`] takes when the
/// row path has no row-blocked tiles for the layer: at 14 columns it takes
/// half the time of one row at a time; at 56 the same for 3×3 kernels and
/// 1.13× for 7×7 (AVX2 host).
const DW_BLOCKED_MAX_WIDTH_UNTILED: usize = 28;

/// The channel-blocked paths' geometry.
struct Blocked {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Top and left padding.
    pad: [usize; 2],
    /// The padded rows and columns the outputs read.
    padded: [usize; 2],
}

impl Depthwise {
    fn blocked(&self) -> Blocked {
        let netc_compiler::ir::Window {
            kernel,
            stride,
            dilation,
            pad,
        } = self.window;
        let [_, oh, ow] = self.out_chw;
        let extent =
            |a: usize, out: usize| (out - 1) * stride[a] + (kernel[a] - 1) * dilation[a] + 1;
        Blocked {
            kernel,
            stride,
            dilation,
            pad: [pad[0], pad[1]],
            padded: [extent(0, oh), extent(1, ow)],
        }
    }

    /// Runs this thread's share of the channels, claimed from
    /// [`Depthwise::queue`] as it is free. On the row path, per
    /// channel: the input plane is copied once into a zero-padded buffer
    /// whose columns are split into `stride` phases, so that every kernel tap
    /// reads a contiguous run (3×3 stride-2 layers at least
    /// [`DW_STRIDE2_MIN_WIDTH`] wide: two input rows at a time, see
    /// `avx2::stride2_3x3`); then each chunk of output columns sums all
    /// taps in registers (on AVX2, blocks of up to eight vectors, with bias
    /// and activation applied there — a smooth activation over the finished
    /// plane instead, see [`Depthwise::deferred_act`]) and is stored once.
    #[inline(always)]
    pub(super) fn run(&self, threads: usize) {
        let ow = self.out_chw[2];
        let blocked = self.multiplier == 1
            && if self.row_blocked().is_some() {
                let min = match (self.window.kernel[1], self.window.stride[1]) {
                    (6.., _) => DW_TILES_MIN_WIDTH_WIDE_KERNEL,
                    (4..=5, _) => DW_TILES_MIN_WIDTH_5_WIDE,
                    (_, 2..) => DW_TILES_MIN_WIDTH_STRIDED,
                    _ => DW_TILES_MIN_WIDTH,
                };
                ow < min
            } else {
                ow <= DW_BLOCKED_MAX_WIDTH_UNTILED
            };
        self.run_path(threads, blocked);
    }

    /// The bias and activation of the row path's row-blocked tiles, if they
    /// take this layer: AVX2 and FMA, a kernel they have, an epilogue of a
    /// bias and an activation.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn row_blocked(&self) -> Option<(Option<*const f32>, Option<super::Act>)> {
        #[cfg(target_arch = "x86_64")]
        if super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma
            && avx2::row_blocked(
                self.window.kernel,
                self.window.stride[0],
                self.window.dilation[0],
            )
        {
            return avx2::bias_then_act(&self.epilogue);
        }
        None
    }

    /// The epilogue the kernels apply, and a smooth final activation split
    /// off to run over each finished plane (or a channel block's adjacent
    /// planes) instead (`conv::split_deferred_act`).
    fn deferred_act(&self) -> (&[conv::Step], Option<super::Act>) {
        conv::split_deferred_act(&self.epilogue)
    }

    /// [`Depthwise::run`] on the channel-blocked path or the row path.
    #[inline(always)]
    fn run_path(&self, threads: usize, channel_blocked: bool) {
        if channel_blocked {
            #[cfg(target_arch = "x86_64")]
            if super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma
                && avx2::fusable(&self.epilogue)
            {
                // SAFETY: AVX2 and FMA checked; extents checked at lowering.
                unsafe { self.run_channel_blocked_avx2(threads) };
                return;
            }
            self.run_channel_blocked(threads);
            return;
        }
        let [c_out, oh, ow] = self.out_chw;
        let [h, w] = self.in_hw;
        let win = &self.window;
        let fma = super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma;
        let [kh, kw] = win.kernel;
        let (s, d, pl) = (win.stride[1], win.dilation[1], win.pad[1]);
        let (sy, dy, pt) = (win.stride[0], win.dilation[0], win.pad[0]);
        let owc = ow.div_ceil(DW_CHUNK) * DW_CHUNK;
        // Padded rows and the length of one phase of a padded row.
        let rows = (oh - 1) * sy + (kh - 1) * dy + 1;
        let plen = ((owc - 1) * s + (kw - 1) * d + 1).div_ceil(s);
        // Out of the thread-local, not inside `with`'s closure (which would
        // be compiled without the caller's AVX2/FMA features).
        let mut scratch = DEPTHWISE_SCRATCH.take();
        {
            let (plane, row, geometry) = &mut scratch;
            plane.clear();
            plane.resize(s * rows * plen, 0.0);
            row.clear();
            // One output row, or the row-blocked path's last four, or
            // `stride2_3x3`'s three input rows.
            #[cfg(target_arch = "x86_64")]
            row.resize((4 * owc).max(3 * avx2::stride2_pitch(ow)), 0.0);
            #[cfg(not(target_arch = "x86_64"))]
            row.resize(4 * owc, 0.0);
            // Everything with a division, computed once: per phase p, the
            // in-bounds range [first, end) of its indices (index i holds input
            // column i·s + p − pl) and the input column of `first`; then per
            // tap, its offset in the plane.
            geometry.clear();
            for p in 0..s {
                let first = pl.saturating_sub(p).div_ceil(s).min(plen);
                let end = ((w + pl).saturating_sub(p)).div_ceil(s).clamp(first, plen);
                geometry.extend([first, end, (first * s + p).saturating_sub(pl)]);
            }
            for ky in 0..kh {
                for kx in 0..kw {
                    let o = kx * d;
                    geometry.push(((o % s) * rows + ky * dy) * plen + o / s);
                }
            }
            // Per kernel column, its offset in the plane (row-blocked path).
            for kx in 0..kw {
                let o = kx * d;
                geometry.push((o % s) * rows * plen + o / s);
            }
            let (phases, rest) = geometry.split_at(3 * s);
            let (taps, cols) = rest.split_at(kh * kw);
            // Bias and activations run on the registers before the store; a
            // smooth final activation over each finished plane.
            let fused = fma && avx2::fusable(&self.epilogue);
            let (steps, deferred) = match self.deferred_act() {
                (steps, Some(a)) if fused => (steps, Some(a)),
                _ => (self.epilogue.as_slice(), None),
            };
            // The deferred activation over channel `oc` of sample `n`, once
            // its outputs are done.
            let finish_plane = |n: usize, oc: usize| {
                // SAFETY: extents checked at lowering: the channel's oh·ow
                // outputs.
                let plane = unsafe {
                    std::slice::from_raw_parts_mut(self.out.at(n).add(oc * oh * ow), oh * ow)
                };
                if let Some(a) = deferred {
                    a.apply(plane);
                }
                self.write_mean(n, oc, plane);
            };
            #[cfg(target_arch = "x86_64")]
            let row_blocked = self
                .row_blocked()
                .map(|(bias, act)| (bias, if deferred.is_some() { None } else { act }));
            // 3×3, stride 2, padding 1, wide: a row at a time from the input.
            #[cfg(target_arch = "x86_64")]
            let stride2 = ow >= DW_STRIDE2_MIN_WIDTH
                && [kh, kw] == [3, 3]
                && [sy, s] == [2, 2]
                && [dy, d] == [1, 1]
                && [pt, pl] == [1, 1];
            for (lo, hi) in self.queue.chunks(self.batch * c_out, threads, 1) {
                for unit in lo..hi {
                    let (n, oc) = (unit / c_out, unit % c_out);
                    let ic = oc / self.multiplier;
                    // SAFETY: extents checked at lowering.
                    let xin =
                        unsafe { std::slice::from_raw_parts(self.x.at(n).add(ic * h * w), h * w) };
                    let wk = unsafe {
                        std::slice::from_raw_parts(self.weights.add(oc * kh * kw), kh * kw)
                    };
                    #[cfg(target_arch = "x86_64")]
                    let channel = |bias: Option<*const f32>, act, tmp| avx2::Channel {
                        w: wk,
                        // SAFETY: bias holds one float per output channel.
                        bias: bias.map(|b| unsafe { *b.add(oc) }),
                        act,
                        // SAFETY: extents checked at lowering.
                        out: unsafe { self.out.at(n).add(oc * oh * ow) },
                        hw: [oh, ow],
                        tmp,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if let (Some((bias, act)), true) = (row_blocked, stride2) {
                        let p = avx2::Strided {
                            x: xin.as_ptr(),
                            in_hw: [h, w],
                            ch: channel(bias, act, row.as_mut_ptr()),
                        };
                        // SAFETY: AVX2 and FMA checked (`row_blocked`); the
                        // plane and output extents are the layer's; `row`
                        // holds three rows of `stride2_pitch(ow)` floats.
                        unsafe { avx2::stride2_3x3(&p) };
                        finish_plane(n, oc);
                        continue;
                    }
                    // Only the elements that hold input are written: the padding
                    // is the same for every channel and stays as zeroed above
                    // (per-row fills and `memcpy` calls cost more than the
                    // copying on 14-column maps).
                    #[cfg(target_arch = "x86_64")]
                    if s == 1 && fma {
                        let (first, end, x0) = (phases[0], phases[1], phases[2]);
                        let n_rows = rows.min(pt + h).saturating_sub(pt);
                        // SAFETY: each plane row from pt on has room for the
                        // end − first ≤ plen − first floats from `first`, and
                        // past `end` only padding; each input row holds
                        // x0 + end − first ≤ w.
                        unsafe {
                            avx2::copy_rows(
                                plane.as_mut_ptr().add(pt * plen + first),
                                plen,
                                // Past `end` a row holds padding (zeros).
                                plen - first,
                                xin.as_ptr().add(x0),
                                w,
                                end - first,
                                n_rows,
                            )
                        };
                    } else {
                        self.fill_plane(xin, plane, phases, rows, plen);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    self.fill_plane(xin, plane, phases, rows, plen);
                    #[cfg(target_arch = "x86_64")]
                    if let Some((bias, act)) = row_blocked {
                        let p = avx2::Plane {
                            src: plane.as_ptr(),
                            pitch: plen,
                            cols,
                            ch: channel(bias, act, row.as_mut_ptr()),
                        };
                        // SAFETY: AVX2 and FMA checked (`row_blocked`); the plane has
                        // `rows` rows of `plen ≥ owc` columns past every column
                        // offset per phase; `row` holds 4·owc floats.
                        unsafe { avx2::plane(&p, win.kernel, sy) };
                        finish_plane(n, oc);
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        // SAFETY: extents checked at lowering.
                        let out = unsafe { self.out.at(n).add(oc * oh * ow) };
                        for oy in 0..oh {
                            // A finished row goes straight to the output when the
                            // whole vectors' overrun lands in later rows of this
                            // channel (written after it, by this thread), else
                            // through `row`.
                            let direct = fused && oy * ow + ow.next_multiple_of(8) <= oh * ow;
                            let dst = if direct {
                                // SAFETY: checked just above.
                                unsafe { out.add(oy * ow) }
                            } else {
                                row.as_mut_ptr()
                            };
                            // SAFETY: every read is inside the plane (its phase
                            // rows hold `plen ≥ owc` columns past each tap's
                            // offset); `dst` holds ow rounded up to 8 floats.
                            unsafe {
                                avx2::row(
                                    plane.as_ptr().add(oy * sy * plen),
                                    taps,
                                    wk,
                                    fused.then_some((steps, oc)),
                                    dst,
                                    ow,
                                )
                            };
                            if direct {
                                continue;
                            }
                            if fused {
                                self.store_row(n, oc, oy, &row[..ow]);
                            } else {
                                self.finish(n, oc, oy, &mut row[..ow]);
                            }
                        }
                        finish_plane(n, oc);
                        continue;
                    }
                    for oy in 0..oh {
                        let base = oy * sy * plen;
                        for x in (0..owc).step_by(DW_CHUNK) {
                            let mut acc = [0f32; DW_CHUNK];
                            for (&tap, &wv) in taps.iter().zip(wk) {
                                let at = base + tap + x;
                                let v: &[f32; DW_CHUNK] =
                                    plane[at..at + DW_CHUNK].try_into().unwrap();
                                for (a, v) in acc.iter_mut().zip(v) {
                                    *a = madd(fma, wv, *v, *a);
                                }
                            }
                            row[x..x + DW_CHUNK].copy_from_slice(&acc);
                        }
                        self.finish(n, oc, oy, &mut row[..ow]);
                    }
                    finish_plane(n, oc);
                }
            }
        }
        DEPTHWISE_SCRATCH.set(scratch);
    }

    /// Copies one input channel into the zero-padded, phase-split plane of
    /// [`Depthwise::run`]'s row path: only the elements that hold input
    /// (the padding is the same for every channel and stays zero).
    #[inline(always)]
    fn fill_plane(
        &self,
        xin: &[f32],
        plane: &mut [f32],
        phases: &[usize],
        rows: usize,
        plen: usize,
    ) {
        let [h, w] = self.in_hw;
        let (s, pl, pt) = (
            self.window.stride[1],
            self.window.pad[1],
            self.window.pad[0],
        );
        for r in pt..rows.min(pt + h) {
            let iy = r - pt;
            if s == 2 {
                let (p0, p1) = plane.split_at_mut(rows * plen);
                let (d0, d1) = (&mut p0[r * plen..][..plen], &mut p1[r * plen..][..plen]);
                split_stride2_over_zeros(&xin[iy * w..iy * w + w], pl, d0, d1);
                continue;
            }
            for (p, ph) in phases.chunks_exact(3).enumerate() {
                let dst = &mut plane[(p * rows + r) * plen..][..plen];
                let src = &xin[iy * w..iy * w + w];
                let (first, end, x0) = (ph[0], ph[1], ph[2]);
                let dst = &mut dst[first..end];
                match s {
                    1 => copy_floats(dst, &src[x0..x0 + dst.len()]),
                    2 => dst
                        .iter_mut()
                        .zip(src[x0..].iter().step_by(2))
                        .for_each(|(d, v)| *d = *v),
                    _ => dst
                        .iter_mut()
                        .zip(src[x0..].iter().step_by(s))
                        .for_each(|(d, v)| *d = *v),
                }
            }
        }
    }

    /// Small maps, where rows of [`DW_CHUNK`] outputs would leave lanes
    /// idle: eight channels at a time, their padded planes interleaved
    /// (`[row][column][channel]`) so that one vector holds one pixel of eight
    /// channels and every output is a sum of `taps` vector multiply-adds with
    /// no idle lane. Taps are summed in the same order as in
    /// [`Depthwise::run`]'s row path, so both give the same bits.
    #[inline(always)]
    fn run_channel_blocked(&self, threads: usize) {
        const L: usize = 8;
        let fma = super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma;
        let [c_out, oh, ow] = self.out_chw;
        let [h, w] = self.in_hw;
        let Blocked {
            kernel: [kh, kw],
            stride: [sy, sx],
            dilation: [dy, dx],
            pad: [pt, pl],
            padded: [hp, wp],
        } = self.blocked();
        let taps = kh * kw;
        let blocks = c_out.div_ceil(L);
        let [mut plane, mut wts, mut out, mut row] =
            take_buffers([hp * wp * L, taps * L, oh * ow * L, ow]);
        for (lo, hi) in self.queue.chunks(self.batch * blocks, threads, 1) {
            for unit in lo..hi {
                let (n, c0) = (unit / blocks, unit % blocks * L);
                let lanes = L.min(c_out - c0);
                plane.fill(0.0);
                for l in 0..lanes {
                    // SAFETY: extents checked at lowering.
                    let src = unsafe {
                        std::slice::from_raw_parts(self.x.at(n).add((c0 + l) * h * w), h * w)
                    };
                    // SAFETY: as above.
                    let wk = unsafe {
                        std::slice::from_raw_parts(self.weights.add((c0 + l) * taps), taps)
                    };
                    for (t, &v) in wk.iter().enumerate() {
                        wts[t * L + l] = v;
                    }
                    for (iy, line) in src.chunks_exact(w).enumerate() {
                        let py = iy + pt;
                        if py >= hp {
                            break;
                        }
                        let dst = &mut plane[py * wp * L..(py + 1) * wp * L];
                        for (ix, &v) in line.iter().enumerate().take(wp.saturating_sub(pl)) {
                            dst[(ix + pl) * L + l] = v;
                        }
                    }
                }
                for l in lanes..L {
                    for t in 0..taps {
                        wts[t * L + l] = 0.0;
                    }
                }
                // Four outputs at a time: four independent chains of multiply-adds
                // (one chain would wait on each FMA's latency), one weight load
                // for four of them.
                const X: usize = 4;
                assert!(
                    plane.len() >= hp * wp * L && wts.len() >= taps * L && out.len() >= oh * ow * L
                );
                let (pp, wq, op) = (plane.as_ptr(), wts.as_ptr(), out.as_mut_ptr());
                for oy in 0..oh {
                    let mut ox = 0;
                    while ox < ow {
                        let xs = X.min(ow - ox);
                        let mut acc = [[0f32; L]; X];
                        for ky in 0..kh {
                            let at = ((oy * sy + ky * dy) * wp + ox * sx) * L;
                            for kx in 0..kw {
                                // SAFETY: tap (ky, kx) of outputs ox..ox+xs reads
                                // padded row oy·sy + ky·dy < hp and columns below
                                // wp; the weights hold taps·L floats.
                                let wv: [f32; L] =
                                    unsafe { *(wq.add((ky * kw + kx) * L) as *const [f32; L]) };
                                for (i, acc) in acc.iter_mut().enumerate().take(xs) {
                                    let p: [f32; L] = unsafe {
                                        *(pp.add(at + (i * sx + kx * dx) * L) as *const [f32; L])
                                    };
                                    for ((a, p), wv) in acc.iter_mut().zip(p).zip(wv) {
                                        *a = madd(fma, wv, p, *a);
                                    }
                                }
                            }
                        }
                        for (i, acc) in acc.iter().enumerate().take(xs) {
                            // SAFETY: output (oy, ox + i) is inside `out`.
                            unsafe { *(op.add((oy * ow + ox + i) * L) as *mut [f32; L]) = *acc };
                        }
                        ox += xs;
                    }
                }
                // Bias and activation on the interleaved block (one vector per
                // pixel, one activation call per block); a residual needs the
                // row path.
                let simple = self
                    .epilogue
                    .iter()
                    .all(|s| matches!(s, conv::Step::Bias(_) | conv::Step::Act(_)));
                if !simple {
                    for l in 0..lanes {
                        for oy in 0..oh {
                            for (ox, r) in row.iter_mut().enumerate() {
                                *r = out[(oy * ow + ox) * L + l];
                            }
                            self.finish(n, c0 + l, oy, &mut row);
                        }
                    }
                    continue;
                }
                let block = &mut out[..oh * ow * L];
                for step in &self.epilogue {
                    match *step {
                        conv::Step::Bias(b) => {
                            let mut bias = [0f32; L];
                            // SAFETY: bias holds Cout floats; lanes ≤ Cout − c0.
                            bias[..lanes].copy_from_slice(unsafe {
                                std::slice::from_raw_parts(b.add(c0), lanes)
                            });
                            for px in block.chunks_exact_mut(L) {
                                px.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
                            }
                        }
                        conv::Step::Act(a) => a.apply(block),
                        conv::Step::Add(_) => unreachable!("handled above"),
                    }
                }
                let ps = oh * ow;
                for l in 0..lanes {
                    // SAFETY: extents checked at lowering.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(self.out.at(n).add((c0 + l) * ps), ps)
                    };
                    for (d, px) in dst.iter_mut().zip(block.chunks_exact(L)) {
                        *d = px[l];
                    }
                    self.write_mean(n, c0 + l, dst);
                }
            }
        }
        put_buffers([plane, wts, out, row]);
    }

    /// Channel `oc`'s mean over its finished `plane` (sample `n`), where a
    /// fused global average pool wants it: the pool kernel's sum, bit for bit.
    #[inline(always)]
    fn write_mean(&self, n: usize, oc: usize, plane: &[f32]) {
        if let Some(means) = &self.means {
            // SAFETY: the lowering gave the means a scratch slot of Cout
            // floats per sample, inside the arena.
            unsafe { *means.at(n).add(oc) = super::kernels::global_mean(plane) };
        }
    }

    /// Stores a finished output row.
    #[inline(always)]
    fn store_row(&self, n: usize, oc: usize, oy: usize, row: &[f32]) {
        let [_, oh, ow] = self.out_chw;
        debug_assert_eq!(row.len(), ow);
        // SAFETY: extents checked at lowering.
        let dst = unsafe { self.out.at(n).add((oc * oh + oy) * ow) };
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst, ow) };
    }

    /// [`Depthwise::run_channel_blocked`] on AVX2 registers, for epilogues
    /// of bias and activations: 8×8 transposes interleave eight channels'
    /// rows into pixel vectors and take each output row back apart; each
    /// output pixel vector sums its taps in its own chain, eight pixels at a
    /// time, and gets its bias and activation before it leaves the register
    /// (a smooth activation runs over the block's planes once they are
    /// done, see [`Depthwise::deferred_act`]).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; extents as checked at lowering.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_channel_blocked_avx2(&self, threads: usize) {
        use std::arch::x86_64::*;
        const L: usize = 8;
        let [c_out, oh, ow] = self.out_chw;
        let [h, w] = self.in_hw;
        let Blocked {
            kernel: [kh, kw],
            stride: [sy, sx],
            dilation: [dy, dx],
            pad: [pt, pl],
            padded: [hp, wp],
        } = self.blocked();
        let taps = kh * kw;
        // Input columns that land inside the padded row.
        let cols = w.min(wp.saturating_sub(pl));
        let blocks = c_out.div_ceil(L);
        let [mut plane, mut wts, mut row] =
            take_buffers([hp * wp * L, taps * L, ow.next_multiple_of(L) * L]);
        let geometry = avx2::Taps {
            kh,
            kw,
            row: dy * wp * L,
            col: dx * L,
            step: sx * L,
        };
        let ps = oh * ow;
        // A smooth final activation over each block's finished planes.
        let (steps, deferred) = self.deferred_act();
        // Every unit writes the same pixels of the plane (all eight lanes),
        // so its padding is zeroed once per run.
        plane.fill(0.0);
        for (lo, hi) in self.queue.chunks(self.batch * blocks, threads, 1) {
            for unit in lo..hi {
                let (n, c0) = (unit / blocks, unit % blocks * L);
                let lanes = L.min(c_out - c0);
                wts.fill(0.0);
                for l in 0..lanes {
                    for t in 0..taps {
                        // SAFETY: the weights hold Cout·taps floats.
                        wts[t * L + l] = unsafe { *self.weights.add((c0 + l) * taps + t) };
                    }
                }
                // SAFETY (this block): channels c0..c0 + lanes of sample n are
                // inside the input and output images; plane rows hold wp pixels
                // and only pixels pl..pl + cols are written; `row` holds ow
                // rounded up to 8 pixels.
                unsafe {
                    let src = self.x.at(n).add(c0 * h * w);
                    for iy in 0..h.min(hp.saturating_sub(pt)) {
                        let dst = plane.as_mut_ptr().add(((iy + pt) * wp + pl) * L);
                        let mut ix = 0;
                        while ix < cols {
                            let m = (cols - ix).min(L);
                            let mut r = [_mm256_setzero_ps(); L];
                            // Fixed trip counts: a loop cut at `lanes` became
                            // copies of the array through `memcpy`.
                            for (l, r) in r.iter_mut().enumerate() {
                                if l < lanes {
                                    *r = avx2::load_first(src.add(l * h * w + iy * w + ix), m);
                                }
                            }
                            let px = crate::backend::cpu::vmath::transpose8(r);
                            for (i, v) in px.iter().enumerate().take(m) {
                                _mm256_storeu_ps(dst.add((ix + i) * L), *v);
                            }
                            ix += m;
                        }
                    }
                    let out = self.out.at(n).add(c0 * ps);
                    let epilogue = (steps, c0, lanes);
                    for oy in 0..oh {
                        let base = plane.as_ptr().add(oy * sy * wp * L);
                        let mut ox = 0;
                        while ox < ow {
                            let c = (ow - ox).min(L);
                            let (b, d) = (base.add(ox * sx * L), row.as_mut_ptr().add(ox * L));
                            let wq = wts.as_ptr();
                            let g = &geometry;
                            // The kernel for `c` pixels (and the kernel width).
                            macro_rules! by_count {
                                ($f:ident $(, $kw:literal)?) => {
                                    match c {
                                        8 => avx2::$f::<8 $(, $kw)?>(b, wq, g, epilogue, d),
                                        7 => avx2::$f::<7 $(, $kw)?>(b, wq, g, epilogue, d),
                                        6 => avx2::$f::<6 $(, $kw)?>(b, wq, g, epilogue, d),
                                        5 => avx2::$f::<5 $(, $kw)?>(b, wq, g, epilogue, d),
                                        4 => avx2::$f::<4 $(, $kw)?>(b, wq, g, epilogue, d),
                                        3 => avx2::$f::<3 $(, $kw)?>(b, wq, g, epilogue, d),
                                        2 => avx2::$f::<2 $(, $kw)?>(b, wq, g, epilogue, d),
                                        _ => avx2::$f::<1 $(, $kw)?>(b, wq, g, epilogue, d),
                                    }
                                };
                            }
                            match (sx, dx, kw) {
                                (1, 1, 3) => by_count!(pixels_unit_stride, 3),
                                (1, 1, 5) => by_count!(pixels_unit_stride, 5),
                                (1, 1, 7) => by_count!(pixels_unit_stride, 7),
                                _ => by_count!(pixels),
                            }
                            ox += c;
                        }
                        // Pixel vectors back into channel rows.
                        let mut ox = 0;
                        while ox < ow {
                            let m = (ow - ox).min(L);
                            // All eight pixel vectors (`row` holds ow rounded up
                            // to 8): the lanes past `m` are not stored.
                            let mut r = [_mm256_setzero_ps(); L];
                            for (i, r) in r.iter_mut().enumerate() {
                                *r = _mm256_loadu_ps(row.as_ptr().add((ox + i) * L));
                            }
                            let ch = crate::backend::cpu::vmath::transpose8(r);
                            // Whole vectors where the overrun lands in later rows
                            // of the same channel, written after this one (AMD's
                            // masked stores are microcoded and slow).
                            let whole = oy * ow + ox + L <= ps;
                            for (l, v) in ch.iter().enumerate().take(lanes) {
                                let d = out.add(l * ps + oy * ow + ox);
                                if whole {
                                    _mm256_storeu_ps(d, *v);
                                } else {
                                    avx2::store_first(d, *v, m);
                                }
                            }
                            ox += m;
                        }
                    }
                    if let Some(a) = deferred {
                        // The block's channels are adjacent planes.
                        a.apply(std::slice::from_raw_parts_mut(out, lanes * ps));
                    }
                    for l in 0..lanes {
                        let plane = std::slice::from_raw_parts(out.add(l * ps), ps);
                        self.write_mean(n, c0 + l, plane);
                    }
                }
            }
        }
        put_buffers([plane, wts, row]);
    }

    #[inline(always)]
    fn finish(&self, n: usize, oc: usize, oy: usize, row: &mut [f32]) {
        let [_, oh, ow] = self.out_chw;
        let ps = oh * ow;
        conv::apply_steps_to_row(&self.epilogue, self.arena, n, oc, oy * ow, row);
        // SAFETY: extents checked at lowering.
        let dst = unsafe { self.out.at(n).add(oc * ps + oy * ow) };
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst, ow) };
    }
}

/// The depthwise row path's arithmetic on AVX2: blocks of up to eight
/// vectors of outputs, one broadcast weight per tap feeding every vector's
/// chain (eight independent chains hide the FMA latency, and each input
/// vector is an FMA's memory operand), taps summed in the portable loop's
/// order so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::conv::Step;
    use super::super::Act;
    use std::arch::x86_64::*;

    /// Whether every step can run on registers (bias and activations).
    pub fn fusable(epilogue: &[Step]) -> bool {
        epilogue.iter().all(|s| match s {
            Step::Bias(_) => true,
            Step::Act(a) => a.fusable().is_some(),
            Step::Add(_) => false,
        })
    }

    /// One output row of `ow` outputs into `dst` (rounded up to whole
    /// vectors): output x sums `w[t] · src[taps[t] + x]` over the taps. With
    /// `epilogue` (steps [`fusable`] accepts, and the output channel), they
    /// are applied before the store.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `src + taps[t]` must hold
    /// `ow` rounded up to 8 floats for every tap, `dst` as many.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row(
        src: *const f32,
        taps: &[usize],
        w: &[f32],
        epilogue: Option<(&[Step], usize)>,
        dst: *mut f32,
        ow: usize,
    ) {
        let vectors = ow.div_ceil(8);
        let mut x = 0;
        while x < vectors {
            let c = (vectors - x).min(8);
            // SAFETY: the caller's extents cover vectors x..x + c.
            unsafe {
                let (s, d) = (src.add(8 * x), dst.add(8 * x));
                match c {
                    8 => block::<8>(s, taps, w, epilogue, d),
                    7 => block::<7>(s, taps, w, epilogue, d),
                    6 => block::<6>(s, taps, w, epilogue, d),
                    5 => block::<5>(s, taps, w, epilogue, d),
                    4 => block::<4>(s, taps, w, epilogue, d),
                    3 => block::<3>(s, taps, w, epilogue, d),
                    2 => block::<2>(s, taps, w, epilogue, d),
                    _ => block::<1>(s, taps, w, epilogue, d),
                }
            }
            x += c;
        }
    }

    /// Copies `rows` rows of `n` floats, `src_pitch` floats apart, to rows
    /// `dst_pitch` apart: whole vectors, then the rest through a masked load
    /// (zeros past `n`) and, where each destination row has `room` for a
    /// whole vector there, a plain store of it (AMD microcodes masked
    /// stores), else a masked store. The scalar tail of a generic copy cost
    /// as much as the multiply-adds on 14-column maps (`perf` of
    /// `depthwise_throughput`, MobileNetV2's 3×3 576@14: 44% of the time in
    /// the copy).
    ///
    /// # Safety
    /// AVX2; each source row holds `n` floats and each destination row
    /// `room` ≥ n, whose floats past `n` may be overwritten with zeros.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn copy_rows(
        dst: *mut f32,
        dst_pitch: usize,
        room: usize,
        src: *const f32,
        src_pitch: usize,
        n: usize,
        rows: usize,
    ) {
        let (whole, rest) = (n / 8 * 8, n % 8);
        let mask = first_lanes(rest);
        let plain = whole + 8 <= room;
        for r in 0..rows {
            // SAFETY: the caller's extents; masked lanes are not touched.
            unsafe {
                let (d, s) = (dst.add(r * dst_pitch), src.add(r * src_pitch));
                for x in (0..whole).step_by(8) {
                    _mm256_storeu_ps(d.add(x), _mm256_loadu_ps(s.add(x)));
                }
                if rest > 0 {
                    let v = _mm256_maskload_ps(s.add(whole), mask);
                    if plain {
                        _mm256_storeu_ps(d.add(whole), v);
                    } else {
                        _mm256_maskstore_ps(d.add(whole), mask, v);
                    }
                }
            }
        }
    }

    /// The first `m` (1..=8) floats at `p`, zeros after.
    ///
    /// # Safety
    /// AVX2; `p` must hold `m` floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn load_first(p: *const f32, m: usize) -> __m256 {
        // SAFETY: the caller's extent; masked lanes are not read.
        unsafe {
            if m >= 8 {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, first_lanes(m))
            }
        }
    }

    /// Stores the first `m` (1..=8) lanes of `v` at `p`.
    ///
    /// # Safety
    /// AVX2; `p` must hold `m` floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn store_first(p: *mut f32, v: __m256, m: usize) {
        // SAFETY: the caller's extent.
        unsafe {
            if m >= 8 {
                _mm256_storeu_ps(p, v);
                return;
            }
            // Four, two and one lanes from the registers (a loop over a
            // stored copy became a call to `memcpy`; AMD's masked stores
            // are microcoded).
            let (mut x, mut at) = (_mm256_castps256_ps128(v), 0);
            if m >= 4 {
                _mm_storeu_ps(p, x);
                x = _mm256_extractf128_ps::<1>(v);
                at = 4;
            }
            if m - at >= 2 {
                // Rust's `_mm_store_sd` is a typed (8-byte aligned) write.
                std::ptr::write_unaligned(p.add(at) as *mut f64, _mm_cvtsd_f64(_mm_castps_pd(x)));
                x = _mm_movehl_ps(x, x);
                at += 2;
            }
            if m - at == 1 {
                _mm_store_ss(p.add(at), x);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn first_lanes(m: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(m as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    /// Where the taps of an interleaved plane are, in floats.
    pub struct Taps {
        /// Kernel height and width.
        pub kh: usize,
        /// See `kh`.
        pub kw: usize,
        /// Between kernel rows.
        pub row: usize,
        /// Between kernel columns.
        pub col: usize,
        /// Between consecutive outputs.
        pub step: usize,
    }

    /// `P` consecutive output pixels of eight interleaved channels: pixel `i`
    /// sums `w[t] · base[i·step + t's offset]` over the taps (weights `L`
    /// floats per tap), then the epilogue (steps, first channel, channels
    /// present) runs on the registers, and the pixel vectors go to `dst`.
    ///
    /// # Safety
    /// AVX2 and FMA; every tap of every pixel inside the plane; `dst` holds
    /// `P` vectors; bias steps hold the channels present.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn pixels<const P: usize>(
        base: *const f32,
        w: *const f32,
        g: &Taps,
        (steps, c0, lanes): (&[Step], usize, usize),
        dst: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); P];
        // SAFETY (this block): the caller's extents.
        unsafe {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let wv = _mm256_loadu_ps(w.add((ky * g.kw + kx) * 8));
                    let p = base.add(ky * g.row + kx * g.col);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(p.add(i * g.step)), *a);
                    }
                }
            }
            finish_pixels(acc, (steps, c0, lanes), dst);
        }
    }

    /// [`pixels`] for stride 1 and no column dilation, with the kernel's
    /// width `KW`: each input vector of a kernel row is loaded once and fed
    /// to every output it reaches (weights of the row in registers), where
    /// [`pixels`] loads one per multiply-add. Each output still sums its
    /// taps row by row, left to right, so the bits are [`pixels`]'.
    ///
    /// # Safety
    /// As [`pixels`], with `g.col` and `g.step` both eight floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn pixels_unit_stride<const P: usize, const KW: usize>(
        base: *const f32,
        w: *const f32,
        g: &Taps,
        epilogue: (&[Step], usize, usize),
        dst: *mut f32,
    ) {
        debug_assert!(g.kw == KW && g.col == 8 && g.step == 8);
        let mut acc = [_mm256_setzero_ps(); P];
        // SAFETY (this block): the caller's extents; input vector j of a
        // kernel row is tap j − i of output i.
        unsafe {
            for ky in 0..g.kh {
                let mut wv = [_mm256_setzero_ps(); KW];
                for (kx, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(w.add((ky * KW + kx) * 8));
                }
                let row = base.add(ky * g.row);
                for j in 0..P + KW - 1 {
                    let x = _mm256_loadu_ps(row.add(j * 8));
                    for (kx, wv) in wv.iter().enumerate() {
                        if j >= kx && j - kx < P {
                            acc[j - kx] = _mm256_fmadd_ps(*wv, x, acc[j - kx]);
                        }
                    }
                }
            }
            finish_pixels(acc, epilogue, dst);
        }
    }

    /// The epilogue (steps, first channel, channels present) on `P` pixel
    /// vectors, then their stores to `dst`.
    ///
    /// # Safety
    /// AVX2 and FMA; `dst` holds `P` vectors; bias steps hold the channels
    /// present.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn finish_pixels<const P: usize>(
        mut acc: [__m256; P],
        (steps, c0, lanes): (&[Step], usize, usize),
        dst: *mut f32,
    ) {
        // SAFETY (this block): the caller's extents.
        unsafe {
            for step in steps {
                match *step {
                    Step::Bias(b) => {
                        let b = load_first(b.add(c0), lanes);
                        acc.iter_mut().for_each(|a| *a = _mm256_add_ps(*a, b));
                    }
                    Step::Act(a) => act(a, &mut acc),
                    Step::Add(_) => {}
                }
            }
            for (i, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(dst.add(i * 8), *a);
            }
        }
    }

    /// An activation on `P` registers: the clamps inline, the others (whose
    /// cost dwarfs a call) through `vmath` on a copy. Handing `acc` itself to
    /// a call that is not inlined would keep it in memory through the
    /// caller's tap loops: when this function stopped being inlined (a new
    /// caller), ConvNeXt-T's channel-blocked layers took 1.17× their time.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn act<const P: usize>(a: Act, acc: &mut [__m256; P]) {
        match a {
            Act::Relu => {
                let z = _mm256_setzero_ps();
                for v in acc.iter_mut() {
                    *v = _mm256_max_ps(*v, z);
                }
            }
            Act::Relu6 => {
                let (z, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
                for v in acc.iter_mut() {
                    *v = _mm256_min_ps(_mm256_max_ps(*v, z), six);
                }
            }
            a => {
                let mut t = [_mm256_setzero_ps(); 8];
                t[..P].copy_from_slice(acc);
                act_call(a, &mut t[..P]);
                acc.copy_from_slice(&t[..P]);
            }
        }
    }

    /// The smooth activations through `vmath`, never inlined, so that the
    /// callers above stay small enough to be inlined themselves.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn act_call(a: Act, t: &mut [__m256]) {
        if let Some(a) = a.fusable() {
            crate::backend::cpu::vmath::act_tile(a, t);
        }
    }

    /// Whether [`plane`] has a row-blocked version for this kernel: the
    /// shapes of the zoo's depthwise layers (3×3, 5×5, 7×7; row stride 1 or
    /// 2, no row dilation). Others take [`row`].
    pub fn row_blocked(kernel: [usize; 2], stride: usize, dilation: usize) -> bool {
        // A tile's accumulators must fit the activation call's eight.
        const _: () = assert!(TILE_ROWS * TILE_VECTORS <= 8);
        dilation == 1
            && matches!(
                (kernel[0], kernel[1], stride),
                (3, 3, 1) | (3, 3, 2) | (5, 5, 1) | (5, 5, 2) | (7, 7, 1) | (7, 7, 2)
            )
    }

    /// Output rows and vectors of [`plane`]'s largest tile.
    const TILE_ROWS: usize = 4;
    /// See [`TILE_ROWS`].
    const TILE_VECTORS: usize = 2;

    /// The bias and activation of an epilogue that is a bias, an
    /// activation ([`fusable`]), or a bias then an activation.
    pub fn bias_then_act(epilogue: &[Step]) -> Option<(Option<*const f32>, Option<Act>)> {
        match *epilogue {
            [] => Some((None, None)),
            [Step::Bias(b)] => Some((Some(b), None)),
            [Step::Act(a)] => a.fusable().map(|_| (None, Some(a))),
            [Step::Bias(b), Step::Act(a)] => a.fusable().map(|_| (Some(b), Some(a))),
            _ => None,
        }
    }

    /// One output channel's weights, epilogue and destination, for
    /// [`plane`] and [`stride2_3x3`].
    pub struct Channel<'a> {
        /// The channel's `kh · kw` weights.
        pub w: &'a [f32],
        /// The channel's bias, added first.
        pub bias: Option<f32>,
        /// The activation, applied after the bias.
        pub act: Option<Act>,
        /// The channel's output plane, `oh · ow` floats.
        pub out: *mut f32,
        /// Output rows and columns.
        pub hw: [usize; 2],
        /// Scratch: [`plane`]'s last rows (four rows of `ow` rounded up to
        /// 8) or [`stride2_3x3`]'s input rows (three of [`stride2_pitch`]).
        pub tmp: *mut f32,
    }

    /// A 3×3, stride-2 channel read from its input plane a row at a time,
    /// for [`stride2_3x3`].
    pub struct Strided<'a> {
        /// The channel's input plane, `h · w` floats.
        pub x: *const f32,
        /// Input rows and columns.
        pub in_hw: [usize; 2],
        /// Weights, epilogue, output.
        pub ch: Channel<'a>,
    }

    /// Floats per padded input row of [`stride2_3x3`] for `ow` output
    /// columns: a zero, the row, zeros to the end of the last group of
    /// four vectors of outputs' reads.
    pub fn stride2_pitch(ow: usize) -> usize {
        2 * ow.div_ceil(32) * 32 + 24
    }

    /// A whole output channel of a 3×3 convolution with stride 2 and one
    /// row and column of padding on the top and left. Each output row's
    /// two new input rows are copied behind a zero into an L1 buffer (the
    /// row path copies the whole plane, split into even and odd columns,
    /// first: half of its time on MobileNetV2's 96@112, a pass over 4.8 MB
    /// through L2). Eight outputs take sixteen consecutive inputs of each
    /// of their three rows (and the sixteen from one column earlier), split into
    /// even and odd columns in registers by `vshufps`, which leaves the
    /// lanes in the order 0, 1, 4, 5, 2, 3, 6, 7 in every vector alike, so
    /// the sums are put in order once, before the epilogue. Taps over the
    /// padding multiply zeros, as on the row path, and every sum is formed
    /// tap by tap in [`row`]'s order: the same bits.
    ///
    /// # Safety
    /// AVX2 and FMA; `x` holds `h · w` floats, `out` `oh · ow`, `tmp` three
    /// rows of `stride2_pitch(ow)` floats, with `w < 2·ow + 2` (as every
    /// stride-2 window with one column of padding on the left gives); `w`
    /// holds nine floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn stride2_3x3(d: &Strided) {
        let ([h, w], [oh, ow]) = (d.in_hw, d.ch.hw);
        let pitch = stride2_pitch(ow);
        // A padded row (a zero, then w floats) fits.
        assert!(w < pitch);
        let wv: [__m256; 9] = std::array::from_fn(|i| _mm256_set1_ps(d.ch.w[i]));
        // SAFETY (this block): `tmp` holds three rows of `pitch` floats;
        // input rows iy < h hold w floats; a group's reads end at
        // 2·(ox0 + 24) + 17 ≤ pitch; stores go to outputs below oh · ow.
        unsafe {
            let rows = [d.ch.tmp, d.ch.tmp.add(pitch), d.ch.tmp.add(2 * pitch)];
            std::ptr::write_bytes(d.ch.tmp, 0, 3 * pitch);
            // Input row iy into a buffer, from its second float (a row
            // outside the plane: zeros).
            let fill = |buf: *mut f32, iy: usize| {
                let dst = std::slice::from_raw_parts_mut(buf.add(1), w);
                if iy < h {
                    super::copy_floats(dst, std::slice::from_raw_parts(d.x.add(iy * w), w));
                } else {
                    dst.fill(0.0);
                }
            };
            // Rows 2·oy − 1, 2·oy, 2·oy + 1 are in rows[(2·oy + ky) % 3]:
            // the first is the previous output row's last.
            fill(rows[0], usize::MAX);
            let mut last = [0f32; 8];
            for oy in 0..oh {
                fill(rows[(2 * oy + 1) % 3], 2 * oy);
                fill(rows[(2 * oy + 2) % 3], 2 * oy + 1);
                let dst = d.ch.out.add(oy * ow);
                for ox0 in (0..ow).step_by(32) {
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for ky in 0..3 {
                        let m = rows[(2 * oy + ky) % 3].add(2 * ox0);
                        let k = &wv[ky * 3..ky * 3 + 3];
                        for (b, acc) in acc.iter_mut().enumerate() {
                            let m = m.add(16 * b);
                            let (m0, m1) = (_mm256_loadu_ps(m), _mm256_loadu_ps(m.add(8)));
                            let (l0, l1) = (_mm256_loadu_ps(m.add(1)), _mm256_loadu_ps(m.add(9)));
                            *acc = _mm256_fmadd_ps(k[0], _mm256_shuffle_ps::<0x88>(m0, m1), *acc);
                            *acc = _mm256_fmadd_ps(k[1], _mm256_shuffle_ps::<0x88>(l0, l1), *acc);
                            *acc = _mm256_fmadd_ps(k[2], _mm256_shuffle_ps::<0xdd>(l0, l1), *acc);
                        }
                    }
                    // Lane pairs (0,1) (4,5) (2,3) (6,7) back in order.
                    let mut acc = acc.map(|a| {
                        _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(a)))
                    });
                    if let Some(b) = d.ch.bias {
                        let b = _mm256_set1_ps(b);
                        for a in acc.iter_mut() {
                            *a = _mm256_add_ps(*a, b);
                        }
                    }
                    if let Some(a) = d.ch.act {
                        act::<4>(a, &mut acc);
                    }
                    for (b, a) in acc.iter().enumerate() {
                        let x0 = ox0 + 8 * b;
                        if x0 + 8 <= ow {
                            _mm256_storeu_ps(dst.add(x0), *a);
                        } else if x0 < ow {
                            _mm256_storeu_ps(last.as_mut_ptr(), *a);
                            std::ptr::copy_nonoverlapping(last.as_ptr(), dst.add(x0), ow - x0);
                        }
                    }
                }
            }
        }
    }

    /// Where a channel's outputs come from and go, for [`plane`].
    pub struct Plane<'a> {
        /// The zero-padded, phase-split input plane (see `Depthwise::run`).
        pub src: *const f32,
        /// Floats between consecutive rows of one phase of the plane.
        pub pitch: usize,
        /// Per kernel column, its offset in the plane.
        pub cols: &'a [usize],
        /// Weights, epilogue, output.
        pub ch: Channel<'a>,
    }

    /// A whole output channel, tiles of up to four output rows by two
    /// vectors: each input vector a tile needs is loaded once and feeds
    /// every output row whose taps read it (a 3×3 tile of 4×2 loads 36
    /// vectors for 72 multiply-adds, where one row at a time loads one per
    /// multiply-add). Each accumulator sums its taps in [`row`]'s order, so
    /// both give the same bits. [`row_blocked`] must accept the kernel.
    ///
    /// # Safety
    /// AVX2 and FMA; the plane holds `(oh − 1)·stride + kh` rows of every
    /// phase and, past every column offset, `ow` rounded up to 8 floats;
    /// `out` holds `oh · ow` floats, `tmp` four rows of `ow` rounded up to 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn plane(p: &Plane, kernel: [usize; 2], stride: usize) {
        // SAFETY: the caller's extents.
        unsafe {
            match (kernel[0], kernel[1], stride) {
                (3, 3, 1) => plane_k::<3, 3, 1>(p),
                (3, 3, 2) => plane_k::<3, 3, 2>(p),
                (5, 5, 1) => plane_k::<5, 5, 1>(p),
                (5, 5, 2) => plane_k::<5, 5, 2>(p),
                (7, 7, 1) => plane_k::<7, 7, 1>(p),
                (7, 7, 2) => plane_k::<7, 7, 2>(p),
                _ => unreachable!("row_blocked() refused this kernel"),
            }
        }
    }

    /// [`plane`] for one kernel shape and row stride. Column chunks of a
    /// row group run right to left and rows top to bottom, so a ragged
    /// chunk's whole-vector overrun always lands on outputs stored later;
    /// a group whose overrun would leave the channel (perhaps into another
    /// thread's) goes through `tmp`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn plane_k<const KH: usize, const KW: usize, const SY: usize>(p: &Plane) {
        let [oh, ow] = p.ch.hw;
        let vectors = ow.div_ceil(8);
        let ragged = ow % 8 != 0;
        let mut oy = 0;
        while oy < oh {
            let r = match oh - oy {
                4.. => 4,
                2 | 3 => 2,
                _ => 1,
            };
            // Whole vectors of the group's last row must end inside the
            // channel (with fewer than 8 columns they span several rows).
            let through_tmp = ragged && (oy + r - 1) * ow + vectors * 8 > oh * ow;
            // SAFETY (this block): rows oy..oy + r of the output (or of
            // `tmp`, pitch vectors·8) and the plane rows they read.
            unsafe {
                let (dst, pitch) = if through_tmp {
                    (p.ch.tmp, vectors * 8)
                } else {
                    (p.ch.out.add(oy * ow), ow)
                };
                let src = p.src.add(oy * SY * p.pitch);
                let mut x = vectors;
                while x > 0 {
                    let c = if x % 2 == 1 { 1 } else { 2 };
                    x -= c;
                    let t = (src.add(8 * x), dst.add(8 * x), pitch);
                    match (r, c) {
                        (TILE_ROWS, TILE_VECTORS) => {
                            tile::<KH, KW, SY, TILE_ROWS, TILE_VECTORS>(p, t)
                        }
                        (4, _) => tile::<KH, KW, SY, 4, 1>(p, t),
                        (2, 2) => tile::<KH, KW, SY, 2, 2>(p, t),
                        (2, _) => tile::<KH, KW, SY, 2, 1>(p, t),
                        (_, 2) => tile::<KH, KW, SY, 1, 2>(p, t),
                        _ => tile::<KH, KW, SY, 1, 1>(p, t),
                    }
                }
                if through_tmp {
                    for i in 0..r {
                        std::ptr::copy_nonoverlapping(
                            p.ch.tmp.add(i * pitch),
                            p.ch.out.add((oy + i) * ow),
                            ow,
                        );
                    }
                }
            }
            oy += r;
        }
    }

    /// `R` output rows by `C` vectors of one channel: input row `i` of the
    /// tile (plane row `i` from `src`) feeds output row `r` through kernel
    /// row `i − r·SY` when that is a row of the kernel.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<
        const KH: usize,
        const KW: usize,
        const SY: usize,
        const R: usize,
        const C: usize,
    >(
        p: &Plane,
        (src, dst, pitch): (*const f32, *mut f32, usize),
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // SAFETY (this block): the caller's extents; `cols` has KW entries
        // and `w` KH·KW.
        unsafe {
            for i in 0..(R - 1) * SY + KH {
                let line = src.add(i * p.pitch);
                for kx in 0..KW {
                    let at = line.add(*p.cols.get_unchecked(kx));
                    for c in 0..C {
                        let v = _mm256_loadu_ps(at.add(8 * c));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            if i >= r * SY && i - r * SY < KH {
                                let wv = *p.ch.w.get_unchecked((i - r * SY) * KW + kx);
                                acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(wv), v, acc[c]);
                            }
                        }
                    }
                }
            }
            // Straight-line code on the registers: a loop over the steps, a
            // `flatten` iterator, or a slice of `acc` handed to a call would
            // keep the accumulators in memory through the whole tile.
            if let Some(b) = p.ch.bias {
                let b = _mm256_set1_ps(b);
                for acc in &mut acc {
                    for a in acc {
                        *a = _mm256_add_ps(*a, b);
                    }
                }
            }
            match p.ch.act {
                None => {}
                Some(Act::Relu) => {
                    let z = _mm256_setzero_ps();
                    for acc in &mut acc {
                        for a in acc {
                            *a = _mm256_max_ps(*a, z);
                        }
                    }
                }
                Some(Act::Relu6) => {
                    let (z, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
                    for acc in &mut acc {
                        for a in acc {
                            *a = _mm256_min_ps(_mm256_max_ps(*a, z), six);
                        }
                    }
                }
                Some(a) => {
                    let mut t = [_mm256_setzero_ps(); 8];
                    for r in 0..R {
                        for c in 0..C {
                            t[r * C + c] = acc[r][c];
                        }
                    }
                    act_call(a, &mut t[..R * C]);
                    for r in 0..R {
                        for c in 0..C {
                            acc[r][c] = t[r * C + c];
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(r * pitch + 8 * c), *a);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const C: usize>(
        src: *const f32,
        taps: &[usize],
        w: &[f32],
        epilogue: Option<(&[Step], usize)>,
        dst: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); C];
        for (&t, &wv) in taps.iter().zip(w) {
            let wv = _mm256_set1_ps(wv);
            // SAFETY: the caller's extents.
            let p = unsafe { src.add(t) };
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(p.add(8 * i)) }, *a);
            }
        }
        if let Some((steps, oc)) = epilogue {
            for step in steps {
                match *step {
                    Step::Bias(b) => {
                        // SAFETY: bias holds one float per output channel.
                        let b = _mm256_set1_ps(unsafe { *b.add(oc) });
                        acc.iter_mut().for_each(|a| *a = _mm256_add_ps(*a, b));
                    }
                    Step::Act(a) => act(a, &mut acc),
                    Step::Add(_) => {}
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: the caller's extents.
            unsafe { _mm256_storeu_ps(dst.add(8 * i), *a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Act;
    use netc_compiler::ir::{Activation, Window};

    /// Runs `k` on `threads` threads at once, each claiming channels from
    /// the queue as the network function's threads do (a write past a
    /// claimed share then lands on another thread's outputs, before or
    /// after they are written).
    fn run(k: &Depthwise, threads: usize, channel_blocked: bool) {
        k.queue.reset();
        if threads == 0 {
            // One thread, the units in reverse order: each unit's outputs
            // are written after those of every unit that follows it.
            conv::claim_from_back(true);
            k.run_path(1, channel_blocked);
            conv::claim_from_back(false);
            return;
        }
        struct Shared<'a>(&'a Depthwise);
        // SAFETY: the threads write the outputs of the channels they claim.
        unsafe impl Sync for Shared<'_> {}
        let k = Shared(k);
        std::thread::scope(|sc| {
            for index in 0..threads {
                let k = &k;
                sc.spawn(move || {
                    crate::backend::cpu::pool::set_thread_index(index);
                    k.0.run_path(threads, channel_blocked)
                });
            }
        });
    }

    /// Over random shapes (kernel sizes, strides, dilations, asymmetric
    /// padding, partial channel blocks, ragged widths, one to three
    /// samples, one to three threads; about a third with the row-blocked
    /// tiles' kernels and a quarter 3×3 with stride 2 on 112 to 141 columns
    /// or 64 out, mostly padded by one on the top and left as
    /// `stride2_3x3` takes them; 150 cases on maps of 16 to 64 columns and
    /// 8 to 27 rows; a bias, then in a quarter a residual, then no
    /// activation, ReLU, ReLU6, SiLU or GELU): the row path and the
    /// channel-blocked path give the same bits, also with their units run
    /// one at a time in reverse order (a store past a unit's outputs would
    /// land on finished ones), and both match a direct sum in f64 (through
    /// the activation).
    #[test]
    fn row_and_channel_blocked_paths_agree_bit_for_bit() {
        let (_jit, kernels) = crate::backend::cpu::jit::compile_activations().unwrap();
        let smooth = [Activation::Silu, Activation::Gelu].map(|a| {
            let (_, f) = kernels.iter().find(|(k, _)| *k == Some(a)).unwrap();
            Act::Generated(Some(a), *f)
        });
        let mut seed = 0x5eed_u64;
        let mut rnd = |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % n
        };
        for case in 0..700 {
            // From 550 on, the earlier kinds again on wider and taller maps
            // than the random sizes give most kernels: 16, 32 or 48 columns
            // out (64 for stride 2) and 8 to 27 rows, so that the row-blocked
            // tiles run whole groups and the reverse order crosses many rows.
            let sized = case >= 550;
            let kind = if sized {
                300 + 150 * rnd(2) + rnd(100)
            } else {
                case
            };
            let c = 1 + rnd(19);
            let mut kernel = [1 + rnd(7), 1 + rnd(7)];
            let mut stride = [1 + rnd(3), 1 + rnd(3)];
            let mut dilation = [1 + rnd(2), 1 + rnd(2)];
            if kind >= 450 {
                // 3×3, stride 2 (`avx2::stride2_3x3` on AVX2 hosts).
                (kernel, stride, dilation) = ([3, 3], [2, 2], [1, 1]);
            } else if kind >= 300 {
                // The row-blocked tiles' kernels (on AVX2 hosts).
                let k = [3, 5, 7][rnd(3)];
                kernel = [k, k];
                stride[0] = 1 + rnd(2);
                dilation[0] = 1;
            }
            let mut pad = [
                rnd(kernel[0]),
                rnd(kernel[1]),
                rnd(kernel[0]),
                rnd(kernel[1]),
            ];
            if kind >= 450 && case % 4 != 0 {
                // Mostly its padding (a quarter keep other paddings).
                (pad[0], pad[1]) = (1, 1);
            }
            let span = [0, 1].map(|a| (kernel[a] - 1) * dilation[a] + 1);
            let (mut h, mut w) = (span[0] + rnd(20), span[1] + rnd(40));
            if kind >= 450 {
                // Wide enough for `stride2_3x3` (56 columns out).
                w = 112 + rnd(30);
            }
            if sized {
                let ow = if kind >= 450 { 64 } else { 16 * (1 + rnd(3)) };
                let oh = 8 + rnd(20);
                let size = |o: usize, a: usize| {
                    ((o - 1) * stride[a] + span[a]).saturating_sub(pad[a] + pad[a + 2])
                };
                (h, w) = (size(oh, 0).max(span[0]), size(ow, 1).max(span[1]));
            }
            let oh = (h + pad[0] + pad[2] - span[0]) / stride[0] + 1;
            let ow = (w + pad[1] + pad[3] - span[1]) / stride[1] + 1;
            let batch = 1 + rnd(3);
            let (input, output) = (c * h * w, c * oh * ow);
            let x: Vec<f32> = (0..batch * input)
                .map(|i| ((i * 7919 % 97) as f32 - 48.0) * 0.05)
                .collect();
            let taps = kernel[0] * kernel[1];
            let weights: Vec<f32> = (0..c * taps)
                .map(|i| ((i * 31 % 23) as f32 - 11.0) * 0.04)
                .collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.5).collect();
            // SiLU and GELU run over finished planes (`deferred_act`) on
            // both paths' AVX2 kernels.
            let act = [
                None,
                Some(Act::Relu),
                Some(Act::Relu6),
                Some(smooth[0]),
                Some(smooth[1]),
            ][rnd(5)];
            // A quarter add a residual before the activation (both paths'
            // epilogues row by row, off the fused kernels): it lies in the
            // arena before the inputs.
            let residual = rnd(4) == 0;
            let res: Vec<f32> = (0..batch * output)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.03)
                .collect();
            let mut epilogue = vec![conv::Step::Bias(bias.as_ptr())];
            if residual {
                epilogue.push(conv::Step::Add(conv::Layout {
                    base: 0,
                    sample_stride: output,
                    row_stride: oh * ow,
                    col_stride: 1,
                }));
            }
            epilogue.extend(act.map(conv::Step::Act));
            let threads = 1 + rnd(3);
            // Each path with `threads` threads at once, then one unit at a
            // time in reverse order (see `run`).
            let runs = [(false, threads), (true, threads), (false, 0), (true, 0)];
            let results = runs.map(|(blocked, threads)| {
                let mut arena = res.clone();
                arena.extend_from_slice(&x);
                // Sentinels after the outputs: no write may reach them.
                let end = batch * (output + input + output);
                arena.resize(end + 16, f32::NAN);
                let base = arena.as_mut_ptr();
                let k = Depthwise {
                    // SAFETY: the arena holds the residual, the inputs, then
                    // the outputs.
                    x: Images {
                        ptr: unsafe { base.add(batch * output) },
                        sample_stride: input,
                    },
                    out: Images {
                        ptr: unsafe { base.add(batch * (output + input)) },
                        sample_stride: output,
                    },
                    in_hw: [h, w],
                    out_chw: [c, oh, ow],
                    multiplier: 1,
                    window: Window {
                        kernel,
                        stride,
                        pad,
                        dilation,
                    },
                    weights: weights.as_ptr(),
                    epilogue: epilogue.clone(),
                    arena: base,
                    batch,
                    means: None,
                    queue: Default::default(),
                };
                run(&k, threads, blocked);
                let past = arena.split_off(end);
                assert!(past.iter().all(|v| v.is_nan()), "a write past the outputs");
                arena.split_off(batch * (output + input))
            });
            let what = format!(
                "case {case}: c {c} {h}x{w} k {kernel:?} s {stride:?} d {dilation:?} pad {pad:?} batch {batch} threads {threads} residual {residual}"
            );
            for (r, other) in results.iter().enumerate().skip(1) {
                let (blocked, t) = runs[r];
                for (i, (a, b)) in results[0].iter().zip(other).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{what}: output {i}: rows {a}, channel-blocked {blocked} reversed {} gave {b}",
                        t == 0
                    );
                }
            }
            for (i, &got) in results[0].iter().enumerate() {
                let (n, rest) = (i / output, i % output);
                let (ch, oy, ox) = (rest / (oh * ow), rest / ow % oh, rest % ow);
                let mut sum = 0f64;
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let iy = (oy * stride[0] + ky * dilation[0]).wrapping_sub(pad[0]);
                        let ix = (ox * stride[1] + kx * dilation[1]).wrapping_sub(pad[1]);
                        if iy < h && ix < w {
                            sum += f64::from(weights[ch * taps + ky * kernel[1] + kx])
                                * f64::from(x[n * input + (ch * h + iy) * w + ix]);
                        }
                    }
                }
                sum += f64::from(bias[ch]);
                if residual {
                    sum += f64::from(res[i]);
                }
                let want = match act {
                    Some(Act::Relu) => sum.max(0.0),
                    Some(Act::Relu6) => sum.clamp(0.0, 6.0),
                    Some(Act::Generated(Some(Activation::Silu), _)) => sum / (1.0 + (-sum).exp()),
                    // Within 1e-5 of the exact GELU where it matters here.
                    Some(Act::Generated(Some(Activation::Gelu), _)) => {
                        let mut y = [sum as f32];
                        smooth[1].apply(&mut y);
                        f64::from(y[0])
                    }
                    _ => sum,
                };
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{what}: output {i} is {got}, want {want}"
                );
            }
        }
    }

    /// The test above again on the code of CPUs without AVX2 and FMA (the
    /// portable row path and the scalar channel-blocked path), forced with
    /// `NETC_CPU_BASELINE` in a child process: the kernel choice is made
    /// once per process.
    #[test]
    fn baseline_paths_agree_bit_for_bit() {
        if crate::backend::cpu::gemm::baseline_forced() {
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("NETC_CPU_BASELINE", "1")
            .args([
                "--exact",
                "backend::cpu::depthwise::tests::row_and_channel_blocked_paths_agree_bit_for_bit",
            ])
            .output()
            .expect("run the test binary");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// A kernel shared with the measurement's threads (as the pool shares them).
    #[derive(Clone, Copy)]
    struct Shared<'a>(&'a Depthwise, Option<bool>);
    // SAFETY: the threads write disjoint parts of the output.
    unsafe impl Send for Shared<'_> {}
    unsafe impl Sync for Shared<'_> {}
    impl Shared<'_> {
        /// Through an AVX2+FMA entry where the CPU has them, as the network
        /// function calls kernels (the driver code outside the intrinsics is
        /// compiled for the baseline CPU otherwise); on the path `.1` forces
        /// (channel-blocked or not), else the one `run` picks.
        fn run(self, threads: usize) {
            fn go(k: &Depthwise, path: Option<bool>, threads: usize) {
                match path {
                    Some(blocked) => k.run_path(threads, blocked),
                    None => k.run(threads),
                }
            }
            #[cfg(target_arch = "x86_64")]
            if crate::backend::cpu::gemm::Kernel::detect()
                == crate::backend::cpu::gemm::Kernel::Avx2Fma
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn entry(k: &Depthwise, path: Option<bool>, threads: usize) {
                    match path {
                        Some(blocked) => k.run_path(threads, blocked),
                        None => k.run(threads),
                    }
                }
                // SAFETY: AVX2 and FMA checked.
                unsafe { entry(self.0, self.1, threads) };
                return;
            }
            go(self.0, self.1, threads)
        }
    }

    /// `cargo test --release -p netc-runtime depthwise_throughput -- --ignored --nocapture`
    /// (`THREADS=2` for two threads, `SHAPE=` to pick, `DW_PATH=rows` or
    /// `DW_PATH=blocked` to force a path): depthwise layers of
    /// MobileNetV2, EfficientNet-B0 and ConvNeXt-T with bias and ReLU6.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn depthwise_throughput() {
        // (name, channels, input size, kernel, stride)
        const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
            ("mb 3x3 32@112", 32, 112, 3, 1),
            ("mb 3x3/2 96@112", 96, 112, 3, 2),
            ("mb 3x3 144@56", 144, 56, 3, 1),
            ("mb 3x3/2 144@56", 144, 56, 3, 2),
            ("mb 3x3 192@28", 192, 28, 3, 1),
            ("mb 3x3/2 192@28", 192, 28, 3, 2),
            ("mb 3x3 576@14", 576, 14, 3, 1),
            ("mb 3x3/2 576@14", 576, 14, 3, 2),
            ("mb 3x3 960@7", 960, 7, 3, 1),
            ("ef 5x5 672@14", 672, 14, 5, 1),
            ("ef 5x5/2 672@14", 672, 14, 5, 2),
            ("ef 5x5 1152@7", 1152, 7, 5, 1),
            ("ef 5x5/2 144@56", 144, 56, 5, 2),
            ("ef 5x5 240@28", 240, 28, 5, 1),
            ("cn 7x7 96@56", 96, 56, 7, 1),
            ("cn 7x7 192@28", 192, 28, 7, 1),
            ("cn 7x7 384@14", 384, 14, 7, 1),
            ("cn 7x7 768@7", 768, 7, 7, 1),
        ];
        let only = std::env::var("SHAPE").unwrap_or_default();
        let threads: usize = std::env::var("THREADS").map_or(1, |t| t.parse().unwrap());
        let path = std::env::var("DW_PATH").ok().map(|p| p == "blocked");
        const RUNS: usize = 300;
        let mut total = 0.0;
        for &(name, c, hw, kern, stride) in SHAPES {
            if !name.contains(only.as_str()) {
                continue;
            }
            let pad = kern / 2;
            let o = (hw + 2 * pad - kern) / stride + 1;
            let (input, output) = (c * hw * hw, c * o * o);
            // The input and output start on cache lines, so that a run does
            // not depend on where the allocator put the vector (the memory
            // plan's buffers start on lines where the tensors before them
            // are whole lines, as in the zoo's networks).
            let mut arena: Vec<f32> = (0..input + output + 2 * 16)
                .map(|i| (i % 17) as f32 * 0.1 - 0.8)
                .collect();
            let weights: Vec<f32> = (0..c * kern * kern).map(|i| (i % 7) as f32 * 0.1).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.01).collect();
            let skip = arena.as_ptr().align_offset(64);
            let base = arena[skip..].as_mut_ptr();
            let k = Depthwise {
                x: Images {
                    ptr: base,
                    sample_stride: input,
                },
                // SAFETY: the arena holds input and output.
                out: Images {
                    ptr: unsafe { base.add(input) },
                    sample_stride: output,
                },
                in_hw: [hw, hw],
                out_chw: [c, o, o],
                multiplier: 1,
                window: netc_compiler::ir::Window {
                    kernel: [kern, kern],
                    stride: [stride, stride],
                    pad: [pad; 4],
                    dilation: [1, 1],
                },
                weights: weights.as_ptr(),
                epilogue: vec![conv::Step::Bias(bias.as_ptr()), conv::Step::Act(Act::Relu6)],
                arena: base,
                batch: 1,
                means: None,
                queue: Default::default(),
            };
            let shared = Shared(&k, path);
            let best = crate::backend::cpu::pool::best_time(
                threads,
                RUNS,
                &move |t| shared.run(t),
                &|| k.queue.reset(),
            );
            total += best;
            let macs = (output * kern * kern) as f64;
            println!(
                "{name:16} {:7.1} us {:6.2} GMAC/s",
                best * 1e6,
                macs / best / 1e9
            );
        }
        println!("total {:.1} us", total * 1e6);
    }
}
