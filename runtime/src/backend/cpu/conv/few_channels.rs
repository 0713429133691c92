//! 1×1 stride-1 convolutions with few output channels on large maps
//! (MobileNetV2's and EfficientNet-B0's 16- and 24-channel projections), on
//! CPUs with AVX-512: sixteen pixels of one input channel per zmm register,
//! read where they lie, and every output channel's sums in a register of
//! its own, so each input vector feeds all of them.
//!
//! Why: with so few rows the packed path (`Problem::run_block`) copies every
//! input value into a B panel to use it in two or three row panels, and a
//! row panel of six channels ends the sixteen (a third panel of four rows);
//! reading B in place there put each K row in another channel plane, planes
//! a multiple of 1 KiB apart that share four L1 sets (`panel_stays_in_l1`).
//! Here the input is streamed once, channel plane by channel plane, in
//! whole cache lines. Sums are formed in the packed path's order (per K
//! block from zero, blocks added in turn), so both give the same bits.

use super::{FusedPlan, Gather, Problem};
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::gemm::avx512;
use crate::backend::cpu::gemm::{K_BLOCK, MR};
use netc_compiler::ir::Activation;

/// The most output channels this path takes: every channel's sums of a K
/// block stay in a zmm register (24 of 32), with room for the input vector
/// and broadcasts (past one K block the running totals take as many again
/// and spill; the projections this is for have K ≤ 256).
pub const FEW_CHANNELS_MAX: usize = 24;

/// Pixels per register.
const LANES: usize = 16;

impl Problem {
    /// The epilogue, when this problem runs here: a 1×1 stride-1
    /// convolution (B strided with unit column stride) with at most
    /// [`FEW_CHANNELS_MAX`] output channels, unit-stride output, at least
    /// four registers of pixels per sample, weights packed in row panels, a
    /// CPU with AVX-512, and an epilogue of a bias, a residual add and a
    /// ReLU or ReLU6 (or fewer).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn few_channels(&self) -> Option<FusedPlan> {
        let Gather::Strided(l) = self.b else {
            return None;
        };
        #[cfg(target_arch = "x86_64")]
        let zmm = avx512::available();
        #[cfg(not(target_arch = "x86_64"))]
        let zmm = false;
        if !(zmm
            && l.col_stride == 1
            && self.out.col_stride == 1
            && self.m <= FEW_CHANNELS_MAX
            && self.per_sample >= 4 * LANES
            && !self.a.is_null()
            && self.a_cols.is_null())
        {
            return None;
        }
        self.fused_plan()
            .filter(|p| matches!(p.act, None | Some(Activation::Relu | Activation::Relu6)))
    }

    /// Runs this thread's share: runs of sixteen pixels of one sample,
    /// claimed from [`Problem::queue`] as the thread is free.
    ///
    /// # Safety
    /// As [`Problem::run`]; `plan` is [`Problem::few_channels`]'s.
    #[cfg(target_arch = "x86_64")]
    pub(super) unsafe fn run_few_channels(&self, threads: usize, plan: &FusedPlan) {
        let Gather::Strided(l) = self.b else {
            unreachable!("few_channels() takes only strided inputs");
        };
        let ps = self.per_sample;
        let per_sample = ps.div_ceil(LANES);
        let units = self.n / ps * per_sample;
        for (u0, u1) in self.queue.chunks(units, threads, 1) {
            for u in u0..u1 {
                let (n, p0) = (u / per_sample, u % per_sample * LANES);
                let strip = Strip {
                    j: n * ps + p0,
                    len: LANES.min(ps - p0),
                    x: self.at_ptr(l.at(ps, 0, n * ps + p0)),
                    x_stride: l.row_stride,
                };
                // SAFETY: AVX-512 is `few_channels`' condition; the strip's
                // pixels are inside the input and output (lowering's
                // extents); the packed weights hold m rounded up to MR rows.
                unsafe {
                    match self.m.div_ceil(MR) {
                        1 => self.strip::<1>(plan, &strip),
                        2 => self.strip::<2>(plan, &strip),
                        3 => self.strip::<3>(plan, &strip),
                        _ => self.strip::<4>(plan, &strip),
                    }
                }
            }
        }
    }

    /// The `Q` row panels (m rounded up to MR rows; those past m have zero
    /// weights) of one strip, the epilogue on the registers, the first m
    /// rows stored. Each panel's six rows are written out one by one: as a
    /// loop over rows, the accumulators lived on the stack.
    ///
    /// # Safety
    /// As [`Problem::run_few_channels`]; Q is m rounded up to MR, over MR.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn strip<const Q: usize>(&self, plan: &FusedPlan, s: &Strip) {
        use std::arch::x86_64::*;
        let mpad = self.m.div_ceil(MR) * MR;
        debug_assert!(Q * MR == mpad);
        let mask: __mmask16 = if s.len >= LANES {
            0xFFFF
        } else {
            ((1u32 << s.len) - 1) as __mmask16
        };
        const { assert!(MR == 6) };
        let mut sums = [[_mm512_setzero_ps(); MR]; Q];
        for (kb, k0) in (0..self.k).step_by(K_BLOCK).enumerate() {
            let kc = K_BLOCK.min(self.k - k0);
            // SAFETY (this block): K block k0 of the packed weights starts
            // at k0·mpad, its row panel q at q·kc·MR, row r of step kk at
            // kk·MR + r; input channel k0 + kk of the strip is `len`
            // floats at x + (k0 + kk)·x_stride.
            let a = unsafe { self.a.add(k0 * mpad) };
            let mut acc = [[_mm512_setzero_ps(); MR]; Q];
            for kk in 0..kc {
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, s.x.add((k0 + kk) * s.x_stride)) };
                for (q, acc) in acc.iter_mut().enumerate() {
                    let w = unsafe { a.add(q * kc * MR + kk * MR) };
                    let fma = |i: usize, acc: __m512| unsafe {
                        _mm512_fmadd_ps(_mm512_set1_ps(*w.add(i)), xv, acc)
                    };
                    acc[0] = fma(0, acc[0]);
                    acc[1] = fma(1, acc[1]);
                    acc[2] = fma(2, acc[2]);
                    acc[3] = fma(3, acc[3]);
                    acc[4] = fma(4, acc[4]);
                    acc[5] = fma(5, acc[5]);
                }
            }
            if kb == 0 {
                sums = acc;
            } else {
                for (s, a) in sums.as_flattened_mut().iter_mut().zip(acc.as_flattened()) {
                    *s = _mm512_add_ps(*s, *a);
                }
            }
        }
        let ps = self.per_sample;
        // SAFETY (both uses): the residual has the output's extent.
        let residual = plan
            .residual
            .map(|l| self.at_ptr(l.at(ps, 0, s.j)) as *const f32);
        let residual_ld = plan.residual.map_or(0, |l| l.row_stride);
        let zero = _mm512_setzero_ps();
        for (r, &v) in sums.as_flattened().iter().enumerate().take(self.m) {
            // The fused micro-kernel's order: bias, then the residual and
            // the activation in the plan's order.
            let mut v = if plan.bias.is_null() {
                v
            } else {
                // SAFETY: the bias holds m floats.
                _mm512_add_ps(v, _mm512_set1_ps(unsafe { *plan.bias.add(r) }))
            };
            if plan.residual_first {
                v = unsafe { add_row(v, residual, r * residual_ld, mask) };
            }
            // max(v, 0) is 0 for a NaN v, as the other paths clamp.
            v = match plan.act {
                Some(Activation::Relu) => _mm512_max_ps(v, zero),
                Some(Activation::Relu6) => {
                    _mm512_min_ps(_mm512_max_ps(v, zero), _mm512_set1_ps(6.0))
                }
                _ => v,
            };
            if !plan.residual_first {
                v = unsafe { add_row(v, residual, r * residual_ld, mask) };
            }
            // SAFETY: the strip's pixels of row r are inside the output.
            unsafe { _mm512_mask_storeu_ps(self.at_ptr(self.out.at(ps, r, s.j)), mask, v) };
        }
    }
}

/// `v` plus the masked lanes at `row + offset`, or `v` without a row.
///
/// # Safety
/// AVX-512; the masked lanes at `row + offset` are readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn add_row(
    v: std::arch::x86_64::__m512,
    row: Option<*const f32>,
    offset: usize,
    mask: std::arch::x86_64::__mmask16,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    match row {
        // SAFETY: the caller's.
        Some(p) => _mm512_add_ps(v, unsafe { _mm512_maskz_loadu_ps(mask, p.add(offset)) }),
        None => v,
    }
}

/// One run of up to sixteen pixels of one sample.
#[cfg(target_arch = "x86_64")]
struct Strip {
    /// Its first column.
    j: usize,
    /// Its pixels.
    len: usize,
    /// Input channel 0 of its first pixel.
    x: *const f32,
    /// Between input channels.
    x_stride: usize,
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::{Gather, Layout, Problem, Scratch, Step, WorkQueue};
    use crate::backend::cpu::gemm::{avx512, pack_weights, MR};
    use crate::backend::cpu::Act;

    /// The few-channel path gives the packed path's bits: 1 to 24 output
    /// channels, one or two K blocks, samples whose pixels end in a partial
    /// register, bias with ReLU6, a residual before or after ReLU, one and
    /// two threads.
    #[test]
    fn few_channels_match_the_packed_path() {
        if !avx512::available() {
            return;
        }
        for (m, k, ps) in [
            (1, 3, 64),
            (6, 32, 100),
            (7, 300, 64),
            (16, 32, 112),
            (24, 144, 100),
        ] {
            let batch = 2;
            let n = batch * ps;
            let (input, out_len) = (batch * k * ps, batch * m * ps);
            let w: Vec<f32> = (0..m * k)
                .map(|i| ((i * 13) % 17) as f32 * 0.05 - 0.4)
                .collect();
            let packed = pack_weights(&w, m, k);
            let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.1 - 0.5).collect();
            let layout = |base: usize, rows: usize| Layout {
                base,
                sample_stride: rows * ps,
                row_stride: ps,
                col_stride: 1,
            };
            let residual = layout(input, m);
            let epilogues = [
                vec![Step::Bias(bias.as_ptr()), Step::Act(Act::Relu6)],
                vec![Step::Bias(bias.as_ptr()), Step::Add(residual)],
                vec![
                    Step::Bias(bias.as_ptr()),
                    Step::Act(Act::Relu),
                    Step::Add(residual),
                ],
                vec![Step::Add(residual), Step::Act(Act::Relu)],
            ];
            for epilogue in epilogues {
                let mut arena: Vec<f32> = (0..input + 2 * out_len)
                    .map(|i| ((i * 7919) % 41) as f32 * 0.1 - 2.0)
                    .collect();
                let p = Problem {
                    m,
                    k,
                    n,
                    per_sample: ps,
                    a: packed.as_ptr(),
                    a_cols: std::ptr::null(),
                    b: Gather::Strided(layout(0, k)),
                    out: layout(input + out_len, m),
                    epilogue,
                    arena: arena.as_mut_ptr(),
                    queue: WorkQueue::default(),
                };
                assert!(p.few_channels().is_some(), "m {m}");
                let out = input + out_len..input + 2 * out_len;
                // SAFETY: the arena holds input, residual and output; the
                // packed path runs all row panels and columns on one thread.
                unsafe { p.run_block(0, m.div_ceil(MR), 0, n, &mut Scratch::default()) };
                let want = arena[out.clone()].to_vec();
                for threads in [1, 2] {
                    arena[out.clone()].fill(f32::NAN);
                    p.queue.reset();
                    std::thread::scope(|sc| {
                        for index in 0..threads {
                            let p = &p;
                            sc.spawn(move || {
                                crate::backend::cpu::pool::set_thread_index(index);
                                // SAFETY: as above; threads write disjoint strips.
                                unsafe { p.run(threads, &mut Scratch::default()) }
                            });
                        }
                    });
                    let got = &arena[out.clone()];
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "m {m} k {k} ps {ps} threads {threads}: element {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
