//! Pixel-major windowed convolutions: output pixels as the micro-kernel's
//! rows and output channels as its columns,
//! `out[c, j] = Σ_k x[j, k] · w[c, k]`, for convolutions with overlapping
//! windows, a multiple of NR output channels per group and enough depth
//! ([`pixel_major`]): DenseNet's 32-channel growth convolutions, ResNet's
//! 3×3 convolutions, ResNeXt's grouped 3×3s of 16 and 32 channels a group.
//!
//! Why: with channels as rows (the rest of `conv/`), B must be packed —
//! an im2col copy per column block — or, where the row panels are too few
//! to pay for that, read in place: sixteen pixels of one output row per tap,
//! unaligned loads, and rows that end in half-empty panels. Here every
//! micro-kernel step broadcasts one input value per pixel straight from the
//! padded input ([`Windowed`]) and loads the weights as whole, aligned
//! vectors of sixteen channels packed once at load ([`pack_weights_cols`]);
//! tiles are any six consecutive output pixels, across row ends, so no
//! lanes are wasted and nothing is packed per run. Where the CPU has
//! AVX-512 a tile covers up to 64 channels ([`avx512::tile`]), and its last
//! K block applies a bias / ReLU(6) / residual epilogue in registers and
//! stores channel-major through 8×8 register transposes
//! ([`avx512::tile_fused`]). Otherwise the sums of a block of pixels are
//! turned around once (channel-major) for the usual epilogue. Either way it
//! costs per output element, which short products do not repay.
//!
//! [`pack_weights_cols`]: crate::backend::cpu::gemm::pack_weights_cols

use super::{grow, take_unpadded, Gather, Problem, Scratch};
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::gemm::avx512;
use crate::backend::cpu::gemm::{Kernel, Windowed, K_BLOCK, MR, NR};

/// The most pixels per block: a 56×56 map in 33 blocks, 14×14 in three,
/// 7×7 in one.
const BLOCK_PIXELS: usize = 96;

/// The least depth (K) of a pixel-major convolution, and the least input
/// channels (per group) behind it. Each block of pixels is turned around
/// for the epilogue at a cost per output element, which short products do
/// not repay, and the stems, with three input channels, ran slower
/// pixel-major at every depth measured: `conv_throughput`'s 7×7/2 stem
/// (K = 147) 1.18–1.20 against 1.35–1.43 ms (two threads), MobileNetV2's
/// (K = 27) up to 2.2×, DenseNet-121's in-model 1.22–1.35 against 1.88–2.21.
/// ResNeXt-50's grouped 3×3s of layer3 (16 channels per group, K = 144)
/// gain: 1.89 → 1.51 ms for the stage (profile minima, 3 rounds).
pub const PIXEL_MAJOR_MIN_K: usize = 128;
/// See [`PIXEL_MAJOR_MIN_K`].
pub const PIXEL_MAJOR_MIN_CHANNELS: usize = 16;

/// [`PIXEL_MAJOR_MIN_CHANNELS`] where the CPU has the AVX-512 tiles, whose
/// last K block stores channel-major from registers (no turning around):
/// the 7×7/2 stems of ResNet-50 and DenseNet-121 (three channels, K = 147)
/// then gain. `conv_throughput` (two threads, PRODUCER, three interleaved
/// rounds, Xeon host): 1.78–1.80 ms channel-major against 1.21–1.46
/// pixel-major.
pub const PIXEL_MAJOR_MIN_CHANNELS_ZMM: usize = 3;

/// Whether a convolution with `m` output channels per group (each group is
/// its own problem: ResNeXt's), depth `k` and window `kernel`/`stride` runs
/// pixel-major, on a CPU with the AVX2
/// kernel (whose `Windowed` reads are what make it pay). Such weights are
/// packed only as B panels (where one sample can be padded:
/// [`super::pads_one_sample`]); the lowering runs a batch that
/// [`Problem::paddable`] refuses sample by sample. `NETC_NO_PIXEL_MAJOR`
/// turns it off (for measuring).
///
/// Only windows that overlap (kernel larger than stride on both axes):
/// there neighbouring pixels' taps share input cache lines, and im2col
/// would copy each input value several times. Measured in-model (profile
/// minima, interleaved), channel-major was faster on the others: ResNet's
/// 1×1 stride-2 shortcuts (layer2.0.downsample 1.16–1.19 against
/// 1.51–1.64 ms pixel-major: each K row another channel plane, K lines per
/// tile that do not stay in L1), ConvNeXt's 2×2/2 downsampling (0.72 and
/// 0.69 against 0.86 and 0.78 ms for the first two) and ViT's 16×16/16
/// patches (1.27 against 1.41 ms).
pub fn pixel_major(m: usize, k: usize, kernel: [usize; 2], stride: [usize; 2]) -> bool {
    kernel[0] > stride[0]
        && kernel[1] > stride[1]
        && m.is_multiple_of(NR)
        && k >= PIXEL_MAJOR_MIN_K
        && k / (kernel[0] * kernel[1]) >= min_channels()
        && Kernel::detect() == Kernel::Avx2Fma
        && std::env::var_os("NETC_NO_PIXEL_MAJOR").is_none()
}

/// [`PIXEL_MAJOR_MIN_CHANNELS`], or its AVX-512 form.
fn min_channels() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return PIXEL_MAJOR_MIN_CHANNELS_ZMM;
    }
    PIXEL_MAJOR_MIN_CHANNELS
}

impl Problem {
    /// Runs this thread's share of a pixel-major convolution: blocks of up
    /// to [`BLOCK_PIXELS`] output pixels of one sample, claimed from
    /// [`Problem::queue`] as the thread is free.
    ///
    /// # Safety
    /// As [`Problem::run`]; `self.a_cols` holds the weights packed by
    /// `pack_weights_cols`, B is windowed and [`Problem::paddable`].
    #[inline(always)]
    pub(super) unsafe fn run_pixels(&self, threads: usize, s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        let zmm = avx512::available();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        // SAFETY: the caller's; the zmm tile only where the CPU has it.
        unsafe { self.run_pixels_on(threads, s, zmm) }
    }

    /// [`Problem::run_pixels`] with the AVX-512 tile (`zmm`, for at most
    /// four column panels) or the 6×16 AVX2 kernel.
    ///
    /// # Safety
    /// As [`Problem::run_pixels`]; `zmm` only where `avx512::available()`.
    #[inline(always)]
    unsafe fn run_pixels_on(&self, threads: usize, s: &mut Scratch, zmm: bool) {
        let Gather::Window(_, window) = self.b else {
            unreachable!("pixel-major products gather windows");
        };
        let kernel = Kernel::detect();
        let ps = self.per_sample;
        let samples = self.n / ps;
        let (rows, phase_len, channels) = self.padded_geometry(&window);
        let w = self.padded_window(&window);
        let (sy, row_len) = (w.stride[0], w.stride[1] * phase_len);
        let plane = rows * row_len;
        let ow = w.out_w;
        let mut offsets = std::mem::take(&mut s.k_offsets);
        self.padded_offsets(&window, &mut offsets);
        let fpanels = self.m.div_ceil(NR);
        let mpad = fpanels * NR;
        // Units of work: a block of up to BLOCK_PIXELS pixels of one sample
        // × a block of channel panels. Each unit streams its channels'
        // weights once, so pixel blocks are as large as allowed and channels
        // are cut finer until every thread has several units: in whole zmm
        // groups of four panels towards eight units a thread, then down to
        // one panel towards four (layer4 of ResNet-50, 49 pixels and 512
        // channels, streamed its 9.4 MB of 3×3 weights once per 12-pixel
        // block). Threads claim whole units, so with few of them one thread
        // ends up to a unit later than the other: ResNet-50's layer2 3×3s
        // (9 pixel blocks of 128 channels) ran 7% faster as 18 units of 64
        // channels; cutting groups of four further cost 1–2% (layer3/4).
        let tblocks = ps.div_ceil(BLOCK_PIXELS);
        let tb = ps.div_ceil(tblocks).next_multiple_of(MR);
        let units_for = |fb: usize| samples * tblocks * fpanels.div_ceil(fb);
        let mut fb = fpanels;
        while fb > 4 && units_for(fb) < 8 * threads {
            fb = (fb / 2).next_multiple_of(4);
        }
        while fb > 1 && units_for(fb) < 4 * threads {
            fb /= 2;
        }
        let fblocks = fpanels.div_ceil(fb);
        let ld = fb * NR;
        let ld_t = tb.next_multiple_of(NR);
        grow(&mut s.acc, tb.next_multiple_of(8) * ld);
        grow(&mut s.bpack, ld * ld_t);
        let window_rows = (w.kernel[0] - 1) * w.dilation[0] + 1;
        s.padded_rows.clear();
        s.padded_rows.resize(samples * rows, false);
        let mut corners = std::mem::take(&mut s.cols);
        // Panels per kernel call: four for the zmm tile, one for the AVX2 kernel.
        let group = if zmm { 4 } else { 1 };
        // With the zmm tile, the last K block runs the epilogue in registers
        // and stores channel-major itself where the epilogue allows it
        // (`avx512::tile_fused`): no sums stored, turned around and read
        // back. Measured (`conv_throughput`, interleaved, fast placement):
        // ResNet-50's 56×56 and 28×28 3×3s 1.5–2% faster, its 14×14 and 7×7
        // ones 0.3%, DenseNet-121's 14×14 growth convolution 3.5%; in-model
        // ResNeXt-50's grouped 3×3s of layer3 and layer4 (16 and 32
        // channels a group) 5–10% (profile minima, 3 rounds).
        let plan = self.fused_plan().filter(|p| zmm && p.clamps_only());
        let blocks = self.k.div_ceil(K_BLOCK);
        let units = samples * tblocks * fblocks;
        for (u0, u1) in self.queue.chunks(units, threads, 1) {
            for u in u0..u1 {
                let (nb, fq) = (u / fblocks, u % fblocks);
                let (n, b) = (nb / tblocks, nb % tblocks);
                let p0 = b * tb;
                let tn = tb.min(ps - p0);
                let (q0, q1) = (fq * fb, (fq * fb + fb).min(fpanels));
                // Only the padded rows this block's windows cover: a thread
                // copies its share of the input, not all of it.
                let first = p0 / ow * sy;
                let last = (p0 + tn - 1) / ow * sy + window_rows;
                // SAFETY: as for this function.
                unsafe { self.pad_rows(n, first..last, rows, s) };
                // Each pixel's window corner in the padded input.
                corners.clear();
                corners.extend((p0..p0 + tn).map(|p| {
                    let (oy, ox) = (p / ow, p % ow);
                    n * channels * plane + oy * sy * row_len + ox
                }));
                let padded = s.padded.as_ptr();
                // Tile t's pixels from K row k0 on; rows past the block's
                // last pixel repeat it (their sums are never read).
                let windowed = |t: usize, k0: usize| {
                    let mr = MR.min(tn - t * MR);
                    Windowed {
                        pixels: std::array::from_fn(|r| {
                            let c = corners[t * MR + r.min(mr - 1)];
                            // SAFETY: corners are inside `padded`.
                            unsafe { padded.add(c) }
                        }),
                        // SAFETY: offsets hold k entries.
                        offsets: unsafe { offsets.as_ptr().add(k0) },
                    }
                };
                for (kb, k0) in (0..self.k).step_by(K_BLOCK).enumerate() {
                    let kc = K_BLOCK.min(self.k - k0);
                    // A group of panels over all the block's tiles: its
                    // weights stay in L1/L2 while the tiles' input values
                    // cycle.
                    for g in (q0..q1).step_by(group) {
                        let panels = group.min(q1 - g);
                        // SAFETY: the packed weights hold mpad·k floats and
                        // block k0 starts at k0·mpad, panel g at g·kc·NR in it.
                        let bp = unsafe { self.a_cols.add(k0 * mpad + g * kc * NR) };
                        for t in 0..tn.div_ceil(MR) {
                            let a = windowed(t, k0);
                            let acc = kb > 0;
                            // SAFETY: acc holds `tb` rows of `ld` floats;
                            // every window read is inside the padded input;
                            // the zmm tiles only where avx512::available().
                            // The fused tile writes (and reads the residual
                            // and bias at) channels g·NR..(g + panels)·NR,
                            // within m (whole panels: `pixel_major` wants m
                            // a multiple of NR), and the first `mr` pixels
                            // from j, inside sample n.
                            unsafe {
                                let c = s.acc.as_mut_ptr().add(t * MR * ld + (g - q0) * NR);
                                #[cfg(target_arch = "x86_64")]
                                if let (Some(plan), true) = (&plan, kb + 1 == blocks) {
                                    let (ch, j) = (g * NR, n * ps + p0 + t * MR);
                                    let residual = plan.residual.map(|l| {
                                        (self.at_ptr(l.at(ps, ch, j)) as *const f32, l.row_stride)
                                    });
                                    let e = plan.tile(ch, true, residual);
                                    let prior = if acc {
                                        c as *const f32
                                    } else {
                                        std::ptr::null()
                                    };
                                    let mr = MR.min(tn - t * MR);
                                    let out = self.at_ptr(self.out.at(ps, ch, j));
                                    let ol = self.out.row_stride;
                                    match panels {
                                        1 => avx512::tile_fused::<1, _>(
                                            kc, a, bp, prior, ld, mr, &e, out, ol,
                                        ),
                                        2 => avx512::tile_fused::<2, _>(
                                            kc, a, bp, prior, ld, mr, &e, out, ol,
                                        ),
                                        3 => avx512::tile_fused::<3, _>(
                                            kc, a, bp, prior, ld, mr, &e, out, ol,
                                        ),
                                        _ => avx512::tile_fused::<4, _>(
                                            kc, a, bp, prior, ld, mr, &e, out, ol,
                                        ),
                                    }
                                    continue;
                                }
                                #[cfg(target_arch = "x86_64")]
                                if zmm {
                                    avx512::tiles(panels, kc, a, bp, c, ld, acc);
                                    continue;
                                }
                                // The last panel's rows past `tn` are never stored.
                                kernel.run_into_rows(kc, a, bp, c, ld, acc, MR.min(tn - t * MR));
                            }
                        }
                    }
                }
                if plan.is_some() {
                    // The tiles stored their outputs.
                    continue;
                }
                // Channel-major, for the epilogue: channel c's sums for the
                // block's pixels in one row of `ld_t` floats.
                let (c0, c1) = (q0 * NR, (q1 * NR).min(self.m));
                // SAFETY: acc holds tb8 rows of ld floats, bpack ld rows of
                // ld_t ≥ tb8; the channels are whole panels, so c1 − c0 ≤ ld
                // is a multiple of 8; AVX2 is the pixel-major condition.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    turn_around(
                        s.acc.as_ptr(),
                        ld,
                        tn.next_multiple_of(8),
                        c1 - c0,
                        s.bpack.as_mut_ptr(),
                        ld_t,
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                for (t, sums) in s.acc[..tn * ld].chunks_exact(ld).enumerate() {
                    for (c, v) in sums[..c1 - c0].iter().enumerate() {
                        s.bpack[c * ld_t + t] = *v;
                    }
                }
                let j0 = n * ps + p0;
                for r0 in (c0..c1).step_by(MR) {
                    let mr = MR.min(c1 - r0);
                    for t0 in (0..tn).step_by(NR) {
                        let nr = NR.min(tn - t0);
                        // SAFETY: the tile's rows are inside `bpack`; the
                        // output is the layer's.
                        unsafe {
                            let src = s.bpack.as_ptr().add((r0 - c0) * ld_t + t0);
                            self.epilogue_tile(r0, mr, j0 + t0, nr, src, ld_t, true);
                        }
                    }
                }
            }
        }
        s.cols = corners;
        s.k_offsets = offsets;
    }

    /// Pads rows `wanted` of sample `n`'s padded input that this thread has
    /// not padded in this run (`rows` per sample).
    ///
    /// # Safety
    /// As [`Problem::run`]; [`Problem::paddable`].
    #[inline(always)]
    unsafe fn pad_rows(
        &self,
        n: usize,
        wanted: std::ops::Range<usize>,
        rows: usize,
        s: &mut Scratch,
    ) {
        let done = &mut s.padded_rows[n * rows..(n + 1) * rows];
        let mut at = wanted.start;
        while let Some(run) = take_unpadded(done, at..wanted.end) {
            at = run.end;
            // SAFETY: the caller's.
            let ok = unsafe { self.pad_input(&mut s.padded, n..n + 1, run) };
            debug_assert!(ok);
        }
    }
}

/// `dst[c·ld_t + t] = src[t·ld + c]` for `t < rows`, `c < cols` (both
/// multiples of 8), in 8×8 register transposes: the sums of a block of
/// pixels turned channel-major. Element by element this took 5% of a
/// pixel-major convolution (a store per sum into another cache line).
///
/// # Safety
/// AVX2; `src` must hold `rows` rows of `ld` floats (at least `cols`) and
/// `dst` `cols` rows of `ld_t` (at least `rows`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn turn_around(
    src: *const f32,
    ld: usize,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    ld_t: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows.is_multiple_of(8) && cols.is_multiple_of(8));
    for t in (0..rows).step_by(8) {
        for c in (0..cols).step_by(8) {
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, v) in r.iter_mut().enumerate() {
                // SAFETY: row t + i of src holds cols floats.
                *v = unsafe { _mm256_loadu_ps(src.add((t + i) * ld + c)) };
            }
            let r = crate::backend::cpu::vmath::transpose8(r);
            for (i, v) in r.iter().enumerate() {
                // SAFETY: row c + i of dst holds rows floats.
                unsafe { _mm256_storeu_ps(dst.add((c + i) * ld_t + t), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run_feature_major, set_test_epilogue, test_silu, windowed_input};
    use super::*;

    /// Pixel-major runs give the channel-major packed path's results bit
    /// for bit (the same sums in the same order, the same epilogue), with
    /// the 6×16 AVX2 kernel and the AVX-512 tile of one to four panels, over
    /// strides, dilation, several K blocks, blocks that cross output rows,
    /// partial tiles and two samples, and the epilogues of
    /// `set_test_epilogue` (fused into the zmm tile, or not).
    #[test]
    fn pixel_major_matches_channel_major() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        let (_jit, silu) = test_silu();
        #[cfg(target_arch = "x86_64")]
        let zmm = avx512::available();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        if !zmm {
            eprintln!("no AVX-512 here: only the AVX2 kernel is exercised");
        }
        // (cin, cout, h, w, kernel, stride, pad, dilation)
        let cases = [
            (32, 32, 11, 13, 3, 1, 1, 1),
            (40, 64, 9, 17, 3, 2, 1, 1),
            (64, 16, 7, 7, 3, 1, 1, 1),
            (12, 48, 10, 9, 5, 1, 2, 2),
            (20, 32, 14, 15, 7, 2, 3, 1),
            (30, 160, 7, 7, 3, 1, 1, 1),
            (29, 80, 16, 13, 3, 2, 1, 1),
        ];
        for (cin, cout, h, w, kern, stride, pad, dil) in cases {
            let (b, k, per, input) = windowed_input(cin, h, w, kern, stride, pad, dil);
            let samples = 2;
            let wts: Vec<f32> = (0..cout * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.01)
                .collect();
            let cols = crate::backend::cpu::gemm::pack_weights_cols(&wts, cout, k);
            let run = |how: u8, threads: usize, epilogue: usize| {
                run_feature_major(cout, k, per, samples, input, b, |p, s| {
                    let mut p = p.clone();
                    assert!(p.paddable());
                    set_test_epilogue(&mut p, epilogue, silu);
                    // SAFETY: the arena holds both samples' input and output.
                    unsafe {
                        if how == 0 {
                            s.padded_ready = p.pad_input(&mut s.padded, 0..samples, 0..usize::MAX);
                            p.run_block(0, cout.div_ceil(MR), 0, p.n, s);
                        } else {
                            p.a_cols = cols.as_ptr();
                            // One caller claims every unit; `threads` sets
                            // how finely the units are cut.
                            p.run_pixels_on(threads, s, how == 2);
                        }
                    }
                })
            };
            for epilogue in 0..7 {
                let want = run(0, 1, epilogue);
                for threads in [1, 3] {
                    let name = format!(
                        "{cin} {cout} {h}x{w} k{kern} s{stride} p{pad} d{dil}, {threads} threads, epilogue {epilogue}"
                    );
                    assert_eq!(run(1, threads, epilogue), want, "{name}: AVX2");
                    if zmm {
                        assert_eq!(run(2, threads, epilogue), want, "{name}: AVX-512");
                    }
                }
            }
        }
    }
}
