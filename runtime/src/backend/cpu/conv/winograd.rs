//! 3×3 stride-1 convolutions as Winograd F(2×2, 3×3) (Lavin & Gray, 2015):
//! every 2×2 block of output pixels (a *tile*) reads a 4×4 block of input,
//! and with `V = Bᵀ·d·B` (input), `U = G·g·Gᵀ` (weights, transformed once, at
//! load) and `Y = Aᵀ·M·A` (output) the convolution becomes sixteen products
//! `M_ξ = U_ξ · V_ξ`, one per position ξ of the 4×4 transformed tile, each
//! `out channels × in channels` times `in channels × tiles`: 16 multiplies
//! per tile and channel pair where the direct convolution needs 36, 2.25×
//! fewer. The products run on the packed micro-kernel like any 1×1
//! convolution (on the AVX-512 tiles, four column panels at a time, where
//! the CPU has them: ResNet-50 two threads 40.4 → 35.5 ms on the Xeon
//! host); the transforms are additions only (and the weights' halves,
//! applied in f64 at load), so the results stay within a few ulps of the
//! direct sums.
//!
//! A thread's unit of work is a *band* of whole tile rows of one sample
//! and a block of output channels: it splits the band's input rows into
//! even and odd columns (with the padding written out, so tiles need no
//! bounds tests), transforms them to `V` (sixteen `channels × tiles`
//! matrices, tiles as the contiguous axis, eight tiles a vector),
//! multiplies, transforms the sums back to output rows, and hands those to
//! the convolution's usual epilogue (`Problem::epilogue_tile`). Consecutive
//! units of one band reuse its `V`.

use super::{grow, split, Gather, Problem, Scratch};
use crate::backend::cpu::gemm::{self, Indirect, Kernel, K_BLOCK, MR, NR};

/// The most tiles per band: 56×56 and 28×28 maps in bands of four and
/// seven tile rows (112 and 98 tiles, see [`Winograd::bands`]), 14×14 in one
/// (49). Measured (`conv_throughput`, interleaved) against 64 (two and
/// four rows, three and a half panels): one thread 0.88× the time on
/// ResNet-50's 28×28 3×3 and DenseNet-121's at 56×56, 0.95× at 56×56;
/// two threads 0.94× and 0.98×, the same at 56×56.
const BAND_TILES: usize = 112;

/// The fewest tiles a sample for which a convolution runs as Winograd: on
/// smaller maps each transformed weight serves too few tiles to pay for
/// reading 16/9 as many weights.
pub const WINOGRAD_MIN_TILES: usize = 49;

/// The fewest tiles a sample on smaller maps (7×7: 16 tiles) for
/// convolutions with at least [`WINOGRAD_SMALL_MAP_MIN_CHANNELS`] output
/// channels. Measured (`conv_throughput`, two threads, interleaved):
/// ResNet-50's layer4 3×3 (512 channels) 1.13–1.22 against 1.56–1.72 ms
/// direct, with weights from memory (`FLUSH=1`) as well; in-model medians
/// 45.6–46.1 against 49.7–50.5 ms. DenseNet-121's 7×7 growth convolutions
/// (32 output channels) were no faster with weights from memory: 0.079–0.109
/// against 0.072–0.083 ms.
pub const WINOGRAD_SMALL_MAP_MIN_TILES: usize = 16;

/// See [`WINOGRAD_SMALL_MAP_MIN_TILES`].
pub const WINOGRAD_SMALL_MAP_MIN_CHANNELS: usize = 256;

/// Whether a map of `tiles` tiles a sample has enough of them for
/// `cout` output channels. Small maps only without AVX-512: there the
/// products of a 16-tile map are one column panel, a one-panel zmm tile
/// (six accumulators, too few to hide the multiply-add latency), while the
/// direct convolution runs four-panel tiles. Measured on the Xeon host
/// (`netc bench --profile`, two threads): ResNet-50's layer4.1/4.2 3×3
/// 1.59 and 1.67 ms as Winograd against 1.18 and 1.18 direct.
fn enough_tiles(tiles: usize, cout: usize) -> bool {
    tiles >= WINOGRAD_MIN_TILES
        || (tiles >= WINOGRAD_SMALL_MAP_MIN_TILES
            && cout >= WINOGRAD_SMALL_MAP_MIN_CHANNELS
            && !zmm_host())
}

/// Whether the products run on the AVX-512 tiles on this CPU.
fn zmm_host() -> bool {
    #[cfg(target_arch = "x86_64")]
    return gemm::avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The fewest input and output channels: the transforms cost per channel
/// and tile, the products per channel pair.
pub const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Whether a convolution runs as Winograd F(2×2, 3×3): one group, a 3×3
/// window with stride 1, no dilation and one pixel of padding on every side
/// (so the output has the input's size), enough channels and tiles
/// ([`WINOGRAD_MIN_CHANNELS`], [`WINOGRAD_MIN_TILES`],
/// [`WINOGRAD_SMALL_MAP_MIN_TILES`]), on a CPU with the
/// AVX2 kernel. `NETC_NO_WINOGRAD` turns it off (for measuring).
pub fn winograd(
    groups: usize,
    cin: usize,
    cout: usize,
    window: &netc_compiler::ir::Window,
    out_hw: [usize; 2],
) -> bool {
    groups == 1
        && window.kernel == [3, 3]
        && window.stride == [1, 1]
        && window.dilation == [1, 1]
        && window.pad == [1; 4]
        && cin >= WINOGRAD_MIN_CHANNELS
        && cout >= WINOGRAD_MIN_CHANNELS
        && enough_tiles(out_hw[0].div_ceil(2) * out_hw[1].div_ceil(2), cout)
        && Kernel::detect() == Kernel::Avx2Fma
        && std::env::var_os("NETC_NO_WINOGRAD").is_none()
}

/// Floats [`pack_weights_into`] produces for `m` output and `c` input channels.
pub fn packed_len(m: usize, c: usize) -> usize {
    16 * gemm::packed_len(m, c)
}

/// Transforms 3×3 weights (`[m][c][3][3]`) to `U_ξ = G·g·Gᵀ` (in f64,
/// rounded once) and packs each of the sixteen `m × c` matrices by
/// [`gemm::pack_weights_into`], one after the other, into `out` (of
/// [`packed_len`] floats, zeroed).
pub fn pack_weights_into(w: &[f32], m: usize, c: usize, out: &mut [f32]) {
    assert_eq!(w.len(), m * c * 9, "3×3 weights");
    let plen = gemm::packed_len(m, c);
    let mut u = vec![0f32; 16 * m * c];
    for o in 0..m {
        for i in 0..c {
            let g = &w[(o * c + i) * 9..(o * c + i + 1) * 9];
            // G·g: four rows of three (G's rows applied down the kernel).
            let mut gg = [[0f64; 3]; 4];
            for x in 0..3 {
                let (a, b, d) = (g[x] as f64, g[3 + x] as f64, g[6 + x] as f64);
                gg[0][x] = a;
                gg[1][x] = (a + b + d) / 2.0;
                gg[2][x] = (a - b + d) / 2.0;
                gg[3][x] = d;
            }
            for (r, &[a, b, d]) in gg.iter().enumerate() {
                let row = [a, (a + b + d) / 2.0, (a - b + d) / 2.0, d];
                for (j, v) in row.into_iter().enumerate() {
                    u[((r * 4 + j) * m + o) * c + i] = v as f32;
                }
            }
        }
    }
    for (xi, u) in u.chunks_exact(m * c).enumerate() {
        gemm::pack_weights_into(u, m, c, &mut out[xi * plen..(xi + 1) * plen]);
    }
}

/// A Winograd F(2×2, 3×3) convolution: the convolution's [`Problem`]
/// (its input window, output, epilogue, arena and work queue) with `a`
/// holding the weights packed by [`pack_weights_into`].
#[derive(Debug, Clone)]
pub struct Winograd {
    /// The convolution (`k` = 9 × input channels, B windowed).
    pub conv: Problem,
}

/// A band's geometry.
#[derive(Clone, Copy)]
struct Bands {
    /// Tile rows and tiles per row of a sample.
    th: usize,
    tw: usize,
    /// Tile rows per band.
    rows: usize,
    /// Length of each even/odd half of a padded input row.
    half: usize,
    /// Padded input rows per band.
    in_rows: usize,
    /// Distance between rows of `V` and of the products' sums (tiles).
    ldv: usize,
    /// Distance between the sixteen matrices of `V` (`c` rows of `ldv`
    /// and a cache line, so that the sixteen stores of one vector of tiles
    /// do not all map to one L1 set).
    vplane: usize,
    /// Distance between padded input rows (`2·half` and a cache line).
    in_row: usize,
    /// Distance between channels of the output rows (pixels).
    lds: usize,
}

impl Winograd {
    fn bands(&self) -> Bands {
        let Gather::Window(_, w) = self.conv.b else {
            unreachable!("a Winograd convolution gathers windows");
        };
        let [h, wd] = w.in_hw;
        let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
        // As many bands as BAND_TILES gives, of even height: a 28×28 map's
        // 14 tile rows were bands of 8 and 6, one thread's home share
        // (four of the eight units) a third more work than the other's;
        // as 7 and 7 ResNet-50's 128-channel 3×3 took 0.718 against 0.753
        // ms (`conv_throughput`, two threads, six interleaved rounds, minima).
        let rows = (BAND_TILES / tw).clamp(1, th);
        let rows = th.div_ceil(th.div_ceil(rows));
        let tiles = rows * tw;
        // Whole column panels for the products, and eight tiles past the
        // last for a row's last vector.
        let ldv = tiles
            .next_multiple_of(NR)
            .max((tiles + 8).next_multiple_of(8));
        let c = self.conv.k / 9;
        Bands {
            th,
            tw,
            rows,
            // Vector loads read up to eight tiles past the last whole
            // vector, plus one column for the tiles' overlap.
            half: tw.next_multiple_of(8) + 8,
            in_rows: 2 * rows + 2,
            ldv,
            vplane: c * ldv + NR,
            in_row: 2 * (tw.next_multiple_of(8) + 8) + NR,
            lds: (2 * rows * wd + NR).next_multiple_of(8),
        }
    }

    /// Runs this thread's units (bands × output channel blocks) of the
    /// convolution, claimed from the queue as the thread is free; returns
    /// once every unit is done.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA ([`winograd`] requires it); the
    /// problem's layouts must address valid memory for its extents, the
    /// output must not overlap the input, and `conv.a` must hold the packed
    /// weights.
    #[inline(always)]
    pub unsafe fn run(&self, threads: usize, s: &mut Scratch) {
        let p = &self.conv;
        let Gather::Window(input, w) = p.b else {
            unreachable!("a Winograd convolution gathers windows");
        };
        let [h, wd] = w.in_hw;
        let g = self.bands();
        let (c, m, ps) = (p.k / 9, p.m, p.per_sample);
        let samples = p.n / ps;
        let bands = g.th.div_ceil(g.rows);
        let panels = m.div_ceil(MR);
        // Output channels cut in halves until every thread has a few units
        // (a 14×14 map is one band); each cut repeats the input transform.
        let mut mblocks = 1;
        while samples * bands * mblocks < 4 * threads && panels / (2 * mblocks) >= 2 {
            mblocks *= 2;
        }
        let units = samples * bands * mblocks;
        let block_rows = panels.div_ceil(mblocks) * MR;
        let kernel = Kernel::detect();
        #[cfg(target_arch = "x86_64")]
        let zmm = super::zmm_row_tiles();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        let plen = gemm::packed_len(m, c);
        let mpad = panels * MR;
        let splane = block_rows * g.ldv + NR;
        grow(&mut s.padded, c * g.in_rows * g.in_row);
        grow(&mut s.bpack, 16 * g.vplane);
        grow(&mut s.acc, 16 * splane);
        grow(&mut s.column, block_rows * g.lds);
        s.k_offsets.clear();
        s.k_offsets.extend((0..K_BLOCK).map(|kk| kk * g.ldv));
        let v = s.bpack.as_mut_ptr();
        let sums = s.acc.as_mut_ptr();
        let out_rows = s.column.as_mut_ptr();
        let offsets = s.k_offsets.as_ptr();
        // The band whose transformed input `v` holds.
        let mut have = None;
        for (u0, u1) in p.queue.chunks(units, threads, 1) {
            for u in u0..u1 {
                let (nb, mb) = (u / mblocks, u % mblocks);
                let (n, b) = (nb / bands, nb % bands);
                let ty0 = b * g.rows;
                let ty1 = (ty0 + g.rows).min(g.th);
                let tiles = (ty1 - ty0) * g.tw;
                if have != Some(nb) {
                    // SAFETY: the caller's; `padded` holds c·in_rows·in_row
                    // floats and `v` 16·vplane.
                    unsafe {
                        let x = p.arena.add(input.base + n * input.sample_stride);
                        split_rows(
                            x,
                            input.row_stride,
                            [h, wd],
                            ty0,
                            c,
                            &g,
                            s.padded.as_mut_ptr(),
                        );
                        transform_input(s.padded.as_ptr(), ty1 - ty0, c, &g, v);
                    }
                    have = Some(nb);
                }
                let (p0, p1) = split(panels, mb, mblocks);
                let qn = tiles.div_ceil(NR);
                // Column panels on the AVX-512 tiles, four at a time: all
                // but a last one of one or two tiles, which the narrow
                // panels below take (a partial panel runs whole: `V` and
                // the sums have ldv ≥ qn·NR columns, and the tiles past
                // the band's are never read back).
                let zq = match zmm {
                    false => 0,
                    true if tiles - (qn - 1) * NR <= 2 => qn - 1,
                    true => qn,
                };
                for xi in 0..16 {
                    for (kb, k0) in (0..c).step_by(K_BLOCK).enumerate() {
                        let kc = K_BLOCK.min(c - k0);
                        #[cfg(target_arch = "x86_64")]
                        for g0 in (0..zq).step_by(4) {
                            // SAFETY: as for the panels below; the tile
                            // writes all MR rows of each row panel, which
                            // the sums' block_rows (whole panels) hold.
                            unsafe {
                                let b = (
                                    v.add(xi * g.vplane + k0 * g.ldv + g0 * NR) as *const f32,
                                    g.ldv,
                                    NR,
                                );
                                let ab = p.a.add(xi * plen + k0 * mpad);
                                for pp in p0..p1 {
                                    let cp =
                                        sums.add(xi * splane + (pp - p0) * MR * g.ldv + g0 * NR);
                                    gemm::avx512::tiles_rows(
                                        4.min(zq - g0),
                                        kc,
                                        ab.add(pp * kc * MR),
                                        b,
                                        cp,
                                        g.ldv,
                                        kb > 0,
                                    );
                                }
                            }
                        }
                        for q in zq..qn {
                            let nr = NR.min(tiles - q * NR);
                            // SAFETY: `v` holds 16 matrices of c rows of
                            // ldv ≥ tiles rounded up to NR floats; the
                            // weights 16 packed matrices of plen floats,
                            // block k0 at k0·mpad; `sums` 16 planes of
                            // block_rows rows of ldv.
                            unsafe {
                                let b = Indirect {
                                    base: v.add(xi * g.vplane + k0 * g.ldv + q * NR),
                                    offsets,
                                };
                                let ab = p.a.add(xi * plen + k0 * mpad);
                                if nr <= 2 {
                                    // A last column or two (a 7×7 tile grid's
                                    // 49 tiles end in one): four row panels a
                                    // call, their rows as the vector lanes.
                                    for pg in (p0..p1).step_by(4) {
                                        let np = 4.min(p1 - pg);
                                        let cp =
                                            sums.add(xi * splane + (pg - p0) * MR * g.ldv + q * NR);
                                        let a = ab.add(pg * kc * MR);
                                        let ran = kernel.run_narrow_panels(
                                            kc,
                                            a,
                                            kc * MR,
                                            np,
                                            b,
                                            cp,
                                            g.ldv,
                                            kb > 0,
                                            nr,
                                        );
                                        debug_assert!(ran);
                                    }
                                    continue;
                                }
                                for pp in p0..p1 {
                                    let a = ab.add(pp * kc * MR);
                                    let cp =
                                        sums.add(xi * splane + (pp - p0) * MR * g.ldv + q * NR);
                                    let mr = MR.min(m - pp * MR);
                                    kernel.run_into_cols_indirect(
                                        kc,
                                        a,
                                        b,
                                        cp,
                                        g.ldv,
                                        kb > 0,
                                        nr,
                                        mr,
                                    );
                                }
                            }
                        }
                    }
                }
                let valid_rows = m.min(p1 * MR) - p0 * MR;
                // SAFETY: `sums` holds the block's products, `out_rows`
                // block_rows rows of lds floats.
                unsafe { transform_output(sums, splane, valid_rows, ty1 - ty0, wd, &g, out_rows) };
                let (y0, y1) = (2 * ty0, h.min(2 * ty1));
                let pixels = (y1 - y0) * wd;
                for r0 in (0..valid_rows).step_by(MR) {
                    let mr = MR.min(valid_rows - r0);
                    for x0 in (0..pixels).step_by(NR) {
                        let nr = NR.min(pixels - x0);
                        // SAFETY: the rows hold the band's output pixels;
                        // the output is the layer's.
                        unsafe {
                            let src = out_rows.add(r0 * g.lds + x0);
                            p.epilogue_tile(
                                p0 * MR + r0,
                                mr,
                                n * ps + y0 * wd + x0,
                                nr,
                                src,
                                g.lds,
                                true,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Input rows `2·ty0 − 1 ..` (`g.in_rows` of them, zero outside the image)
/// of every channel of one sample at `x` (channels `plane` floats apart,
/// `hw` each), split into even and odd padded columns: padded column `x'`
/// is input column `x' − 1`, so `even[i]` is column `2i − 1` and `odd[i]`
/// column `2i`. Written to `out` as `[channel][row]`, rows `g.in_row`
/// apart, each `even` then `odd` (`g.half` floats each).
///
/// # Safety
/// AVX2; `x` must hold the sample's channels; `out` `c·in_rows·in_row` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn split_rows(
    x: *const f32,
    plane: usize,
    [h, wd]: [usize; 2],
    ty0: usize,
    c: usize,
    g: &Bands,
    out: *mut f32,
) {
    for ch in 0..c {
        for r in 0..g.in_rows {
            // SAFETY: the caller's extents.
            unsafe {
                let even = out.add((ch * g.in_rows + r) * g.in_row);
                let odd = even.add(g.half);
                let y = (2 * ty0 + r).wrapping_sub(1);
                if y >= h {
                    std::ptr::write_bytes(even, 0, 2 * g.half);
                    continue;
                }
                let row = x.add(ch * plane + y * wd);
                let pairs = wd / 2;
                *even = 0.0;
                let done =
                    crate::backend::cpu::kernels::deinterleave_avx2(row, pairs, odd, even.add(1));
                for i in done..pairs {
                    *odd.add(i) = *row.add(2 * i);
                    *even.add(i + 1) = *row.add(2 * i + 1);
                }
                // The odd column, then zeros to the end of both halves.
                let mut o = pairs;
                if wd % 2 == 1 {
                    *odd.add(pairs) = *row.add(wd - 1);
                    o += 1;
                }
                std::ptr::write_bytes(odd.add(o), 0, g.half - o);
                std::ptr::write_bytes(even.add(pairs + 1), 0, g.half - pairs - 1);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn split_rows(
    _: *const f32,
    _: usize,
    _: [usize; 2],
    _: usize,
    _: usize,
    _: &Bands,
    _: *mut f32,
) {
    unreachable!("Winograd convolutions need AVX2");
}

/// `V_ξ = Bᵀ·d·B` for every channel and tile of a band of `rows` tile rows
/// whose input [`split_rows`] wrote to `split`: `v[ξ][channel][tile]`, rows
/// `g.ldv` apart, tiles numbered across the band's tile rows. Eight tiles a
/// vector; a row's last vector runs past its end into the next row's first
/// tiles (or the padding after the band), which the next row then writes.
///
/// # Safety
/// AVX2; `split` as [`split_rows`] wrote it, `v` 16·vplane floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// ξ = 4i + j: the index picks a column of the row sums and a plane of `v`.
#[allow(clippy::needless_range_loop)]
unsafe fn transform_input(split: *const f32, rows: usize, c: usize, g: &Bands, v: *mut f32) {
    use std::arch::x86_64::*;
    for ch in 0..c {
        for ty in 0..rows {
            for tx in (0..g.tw).step_by(8) {
                let mut t = [[_mm256_setzero_ps(); 4]; 4];
                for (i, t) in t.iter_mut().enumerate() {
                    // SAFETY: rows 2·ty + i < in_rows; tx + 9 ≤ half.
                    let (d0, d1, d2, d3) = unsafe {
                        let even = split.add((ch * g.in_rows + 2 * ty + i) * g.in_row + tx);
                        let odd = even.add(g.half);
                        (
                            _mm256_loadu_ps(even),
                            _mm256_loadu_ps(odd),
                            _mm256_loadu_ps(even.add(1)),
                            _mm256_loadu_ps(odd.add(1)),
                        )
                    };
                    // Bᵀ along the row: columns (0 − 2, 1 + 2, 2 − 1, 1 − 3).
                    *t = [
                        _mm256_sub_ps(d0, d2),
                        _mm256_add_ps(d1, d2),
                        _mm256_sub_ps(d2, d1),
                        _mm256_sub_ps(d1, d3),
                    ];
                }
                let at = ty * g.tw + tx;
                for j in 0..4 {
                    // Bᵀ down the column.
                    let col = [
                        _mm256_sub_ps(t[0][j], t[2][j]),
                        _mm256_add_ps(t[1][j], t[2][j]),
                        _mm256_sub_ps(t[2][j], t[1][j]),
                        _mm256_sub_ps(t[1][j], t[3][j]),
                    ];
                    for (i, x) in col.into_iter().enumerate() {
                        // SAFETY: at + 8 ≤ ldv.
                        unsafe {
                            _mm256_storeu_ps(v.add((i * 4 + j) * g.vplane + ch * g.ldv + at), x)
                        };
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_input(_: *const f32, _: usize, _: usize, _: &Bands, _: *mut f32) {
    unreachable!("Winograd convolutions need AVX2");
}

/// `Y = Aᵀ·M·A` for the first `valid` output channels of the products
/// `sums` (`[ξ][channel][tile]`, planes `splane` and rows `g.ldv` apart) of a band of
/// `tile_rows` tile rows: each channel's output rows of the band, one after
/// the other (`wd` pixels each), at `out + channel·g.lds`. A row's last
/// vector runs past its end into the next output row, so each tile row
/// goes from its last vector to its first, and its upper output row before
/// its lower.
///
/// # Safety
/// AVX2; `sums` as the products wrote it, `out` `valid·lds` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// ξ = 4i + j: the index picks a plane of `sums` and a column of `s`.
#[allow(clippy::needless_range_loop)]
unsafe fn transform_output(
    sums: *const f32,
    splane: usize,
    valid: usize,
    tile_rows: usize,
    wd: usize,
    g: &Bands,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    for r in 0..valid {
        for ty in 0..tile_rows {
            for tx in (0..g.tw).step_by(8).rev() {
                let at = ty * g.tw + tx;
                let mut s = [[_mm256_setzero_ps(); 4]; 2];
                for j in 0..4 {
                    // SAFETY: at + 8 ≤ ldv.
                    let mcol: [__m256; 4] = std::array::from_fn(|i| unsafe {
                        _mm256_loadu_ps(sums.add((i * 4 + j) * splane + r * g.ldv + at))
                    });
                    // Aᵀ down the column: (0 + 1 + 2, 1 − 2 − 3).
                    s[0][j] = _mm256_add_ps(_mm256_add_ps(mcol[0], mcol[1]), mcol[2]);
                    s[1][j] = _mm256_sub_ps(_mm256_sub_ps(mcol[1], mcol[2]), mcol[3]);
                }
                for (dy, s) in s.iter().enumerate() {
                    let y0 = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), s[2]);
                    let y1 = _mm256_sub_ps(_mm256_sub_ps(s[1], s[2]), s[3]);
                    // Tiles' left and right pixels interleaved: 16 pixels.
                    let lo = _mm256_unpacklo_ps(y0, y1);
                    let hi = _mm256_unpackhi_ps(y0, y1);
                    // SAFETY: (2·tile_rows − 1)·wd + 2·tx + 16 ≤ lds.
                    unsafe {
                        let d = out.add(r * g.lds + (2 * ty + dy) * wd + 2 * tx);
                        _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
                        _mm256_storeu_ps(d.add(8), _mm256_permute2f128_ps(lo, hi, 0x31));
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output(
    _: *const f32,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: &Bands,
    _: *mut f32,
) {
    unreachable!("Winograd convolutions need AVX2");
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run_feature_major, set_test_epilogue, test_silu, windowed_input};
    use super::*;

    /// The Winograd path gives the direct (channel-major, packed) path's
    /// results within 1e-5 of the output's largest magnitude, over odd and
    /// even map sizes (partial tiles and vectors, bands of several tile
    /// rows, one band), several K blocks, output channels that are not a
    /// multiple of the tile's rows, blocks of output channels (three
    /// threads' cuts), two samples and the epilogues of
    /// `set_test_epilogue`; and stores nothing past the output.
    #[test]
    fn winograd_matches_direct_convolution() {
        if Kernel::detect() != Kernel::Avx2Fma {
            return;
        }
        let (_jit, silu) = test_silu();
        // (cin, cout, h, w)
        let cases = [
            (16, 16, 7, 7),
            (20, 30, 13, 9),
            (32, 64, 14, 14),
            (24, 40, 29, 31),
            (300, 26, 8, 10),
            (16, 50, 56, 56),
            // Bands of 7 and 7, and of 7 and 6, tile rows.
            (16, 24, 28, 28),
            (16, 20, 26, 32),
        ];
        for (cin, cout, h, w) in cases {
            let (b, k, per, input) = windowed_input(cin, h, w, 3, 1, 1, 1);
            let samples = 2;
            // run_feature_major's weights.
            let wts: Vec<f32> = (0..cout * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.01)
                .collect();
            let mut u = vec![0f32; packed_len(cout, cin)];
            pack_weights_into(&wts, cout, cin, &mut u);
            let run = |wino: bool, threads: usize, epilogue: usize| {
                run_feature_major(cout, k, per, samples, input, b, |p, s| {
                    let mut p = p.clone();
                    set_test_epilogue(&mut p, epilogue, silu);
                    // SAFETY: the arena holds both samples' input and output.
                    unsafe {
                        if wino {
                            p.a = u.as_ptr();
                            // One caller claims every unit; `threads` sets
                            // how finely the units are cut.
                            Winograd { conv: p }.run(threads, s);
                        } else {
                            s.padded_ready = p.pad_input(&mut s.padded, 0..samples, 0..usize::MAX);
                            p.run_block(0, cout.div_ceil(MR), 0, p.n, s);
                        }
                    }
                })
            };
            for epilogue in 0..7 {
                let want: Vec<f32> = run(false, 1, epilogue)
                    .into_iter()
                    .map(f32::from_bits)
                    .collect();
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for threads in [1, 3] {
                    // The ymm kernel's products and, where the CPU has
                    // AVX-512, the zmm tiles': the same sums, so the same
                    // bits.
                    super::super::force_ymm_row_tiles(true);
                    let ymm = run(true, threads, epilogue);
                    super::super::force_ymm_row_tiles(false);
                    let got = run(true, threads, epilogue);
                    assert!(
                        got == ymm,
                        "{cin} {cout} {h}x{w}, {threads} threads, epilogue {epilogue}: \
                         the zmm tiles' products differ from the ymm kernel's"
                    );
                    let got: Vec<f32> = got.into_iter().map(f32::from_bits).collect();
                    let worst = got
                        .iter()
                        .zip(&want)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    assert!(
                        worst <= 1e-5 * scale,
                        "{cin} {cout} {h}x{w}, {threads} threads, epilogue {epilogue}: \
                         off by {worst} (largest output {scale})"
                    );
                }
            }
        }
    }
}
