//! Pixel-major windowed convolutions: output pixels as the micro-kernel's
//! rows and output channels as its columns,
//! `out[c, j] = Σ_k x[j, k] · w[c, k]`, for convolutions with few output
//! channels (a multiple of NR, at most [`PIXEL_MAJOR_MAX_M`]): DenseNet's
//! 32-channel growth convolutions, the 64-channel 3×3 convolutions of
//! ResNet's first stage, the stems.
//!
//! Why: with channels as rows (the rest of `conv/`), such a problem has too
//! few row panels to pay for packing B, so B is read in place — sixteen
//! pixels of one output row per tap, unaligned loads, and rows that end in
//! half-empty panels. Here every micro-kernel step broadcasts one input
//! value per pixel straight from the padded input ([`Windowed`]) and loads
//! the weights as whole, aligned vectors of sixteen channels packed once at
//! load ([`pack_weights_cols`]); tiles are any six consecutive output pixels,
//! across row ends, so no lanes are wasted. The sums of a block of pixels
//! are turned around once (channel-major) for the usual epilogue.
//!
//! [`pack_weights_cols`]: crate::backend::cpu::gemm::pack_weights_cols

use super::{grow, Gather, Problem, Scratch};
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::gemm::avx512;
use crate::backend::cpu::gemm::{Kernel, Windowed, K_BLOCK, MR, NR};

/// The most output channels of a pixel-major convolution: up to four
/// column panels. Above that, channels as rows fill the row panels and the
/// packed B panel serves enough of them to pay for its packing.
pub const PIXEL_MAJOR_MAX_M: usize = 64;

/// The most pixels per block (a multiple of MR and of NR): the sums of a
/// block for up to [`PIXEL_MAJOR_MAX_M`] channels take 12 KiB.
const BLOCK_PIXELS: usize = 48;

/// The least depth (K) of a pixel-major convolution. Each block of pixels
/// is turned around for the epilogue at a cost per output element, which a
/// short product does not repay: the stems (K = 147 and 27) ran 1.4–2.2×
/// slower pixel-major (`conv_throughput`, and DenseNet-121's stem in-model
/// 1.22–1.35 → 1.88–2.21 ms); at K = 576 (ResNet's 64-channel 3×3) the two
/// were even, at 1152 (DenseNet's growth convolutions) pixel-major won.
pub const PIXEL_MAJOR_MIN_K: usize = 256;

/// Whether a convolution with `m` output channels in one group, depth `k`
/// and a windowed input runs pixel-major, on a CPU with the AVX2 kernel
/// (whose `Windowed` reads are what make it pay). The weights are packed
/// both ways for it; the lowering still needs [`Problem::paddable`].
/// `NETC_NO_PIXEL_MAJOR` turns it off (for measuring).
pub fn pixel_major(m: usize, k: usize, groups: usize, windowed: bool) -> bool {
    windowed
        && groups == 1
        && m.is_multiple_of(NR)
        && m <= PIXEL_MAJOR_MAX_M
        && k >= PIXEL_MAJOR_MIN_K
        && Kernel::detect() == Kernel::Avx2Fma
        && std::env::var_os("NETC_NO_PIXEL_MAJOR").is_none()
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
        let zmm = self.m.div_ceil(NR) <= 4 && avx512::available();
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
            return;
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
        // Blocks small enough that every thread gets several.
        let block = ps
            .div_ceil(4 * threads)
            .next_multiple_of(MR)
            .clamp(MR, BLOCK_PIXELS);
        let per_sample_blocks = ps.div_ceil(block);
        grow(&mut s.acc, block * mpad);
        grow(&mut s.bpack, mpad * block.next_multiple_of(NR));
        let window_rows = (w.kernel[0] - 1) * w.dilation[0] + 1;
        s.padded_rows.clear();
        s.padded_rows.resize(samples * rows, false);
        let mut corners = std::mem::take(&mut s.cols);
        while let Some((u0, u1)) = self.queue.claim(samples * per_sample_blocks, threads, 1) {
            for u in u0..u1 {
                let (n, b) = (u / per_sample_blocks, u % per_sample_blocks);
                let p0 = b * block;
                let tn = block.min(ps - p0);
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
                    #[cfg(target_arch = "x86_64")]
                    if zmm {
                        for t in 0..tn.div_ceil(MR) {
                            let a = windowed(t, k0);
                            // SAFETY: as below; avx512::available() checked.
                            unsafe {
                                let bp = self.a_cols.add(k0 * mpad);
                                let c = s.acc.as_mut_ptr().add(t * MR * mpad);
                                let acc = kb > 0;
                                match fpanels {
                                    1 => avx512::tile::<1, _>(kc, a, bp, c, mpad, acc),
                                    2 => avx512::tile::<2, _>(kc, a, bp, c, mpad, acc),
                                    3 => avx512::tile::<3, _>(kc, a, bp, c, mpad, acc),
                                    _ => avx512::tile::<4, _>(kc, a, bp, c, mpad, acc),
                                }
                            }
                        }
                        continue;
                    }
                    for q in 0..fpanels {
                        // SAFETY: the packed weights hold mpad·k floats; block
                        // k0 starts at k0·mpad.
                        let bp = unsafe { self.a_cols.add(k0 * mpad + q * kc * NR) };
                        for t in 0..tn.div_ceil(MR) {
                            let a = windowed(t, k0);
                            // SAFETY: acc holds `block` rows of mpad floats;
                            // every window read is inside the padded input.
                            unsafe {
                                let c = s.acc.as_mut_ptr().add(t * MR * mpad + q * NR);
                                kernel.run_into_rows(kc, a, bp, c, mpad, kb > 0);
                            }
                        }
                    }
                }
                // Channel-major, for the epilogue: channel c's sums for the
                // block's pixels in one row of `ld` floats.
                let ld = block.next_multiple_of(NR);
                for (t, sums) in s.acc[..tn * mpad].chunks_exact(mpad).enumerate() {
                    for (c, v) in sums[..self.m].iter().enumerate() {
                        s.bpack[c * ld + t] = *v;
                    }
                }
                let j0 = n * ps + p0;
                for r0 in (0..self.m).step_by(MR) {
                    let mr = MR.min(self.m - r0);
                    for c0 in (0..tn).step_by(NR) {
                        let nr = NR.min(tn - c0);
                        // SAFETY: the tile's rows are inside `bpack`; the
                        // output is the layer's.
                        unsafe {
                            let src = s.bpack.as_ptr().add(r0 * ld + c0);
                            self.epilogue_tile(r0, mr, j0 + c0, nr, src, ld);
                        }
                    }
                }
            }
        }
        self.queue.leave(threads);
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
        let end = wanted.end.min(rows);
        let mut r = wanted.start;
        while r < end {
            if done[r] {
                r += 1;
                continue;
            }
            // A run of rows not padded yet, in one call.
            let run_end = (r..end).find(|&x| done[x]).unwrap_or(end);
            // SAFETY: the caller's.
            let ok = unsafe { self.pad_input(&mut s.padded, n..n + 1, r..run_end) };
            debug_assert!(ok);
            done[r..run_end].fill(true);
            r = run_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run_feature_major, windowed_input};
    use super::*;

    /// Pixel-major runs give the channel-major packed path's results bit
    /// for bit (the same sums in the same order, the same epilogue), with
    /// the 6×16 AVX2 kernel and the AVX-512 tile of one to four panels, over
    /// strides, dilation, several K blocks, blocks that cross output rows,
    /// partial tiles and two samples.
    #[test]
    fn pixel_major_matches_channel_major() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        let zmm = cfg!(target_arch = "x86_64") && avx512::available();
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
        ];
        for (cin, cout, h, w, kern, stride, pad, dil) in cases {
            let (b, k, per, input) = windowed_input(cin, h, w, kern, stride, pad, dil);
            let samples = 2;
            let wts: Vec<f32> = (0..cout * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.01)
                .collect();
            let cols = crate::backend::cpu::gemm::pack_weights_cols(&wts, cout, k);
            let run = |how: u8| {
                run_feature_major(cout, k, per, samples, input, b, |p, s| {
                    let mut p = p.clone();
                    assert!(p.paddable());
                    // SAFETY: the arena holds both samples' input and output.
                    unsafe {
                        if how == 0 {
                            s.padded_ready = p.pad_input(&mut s.padded, 0..samples, 0..usize::MAX);
                            p.run_block(0, cout.div_ceil(MR), 0, p.n, s);
                        } else {
                            p.a_cols = cols.as_ptr();
                            s.padded_samples.resize(samples, false);
                            p.run_pixels_on(1, s, how == 2);
                        }
                    }
                })
            };
            let want = run(0);
            let name = format!("{cin} {cout} {h}x{w} k{kern} s{stride} p{pad} d{dil}");
            assert_eq!(run(1), want, "{name}: AVX2");
            if zmm {
                assert_eq!(run(2), want, "{name}: AVX-512");
            }
        }
    }
}
