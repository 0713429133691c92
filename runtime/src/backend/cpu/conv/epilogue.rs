//! Epilogues: bias, activation and residual add applied to finished tiles
//! of a GEMM, fused into the micro-kernel where it can run them in registers.

use super::{FusedPlan, Layout, Problem, Step};
use crate::backend::cpu::gemm::{Kernel, PanelRows, TileEpilogue, MR, NR};
use crate::backend::cpu::Act;
use netc_compiler::ir::Activation;

impl Problem {
    /// The epilogue as the fused micro-kernel runs it, if it can: an optional
    /// bias first, then at most one activation and one residual add in
    /// either order.
    pub(super) fn fused_plan(&self) -> Option<FusedPlan> {
        let mut steps = self.epilogue.as_slice();
        let mut plan = FusedPlan {
            bias: std::ptr::null(),
            act: None,
            residual: None,
            residual_first: false,
        };
        if let [Step::Bias(b), rest @ ..] = steps {
            plan.bias = *b;
            steps = rest;
        }
        for step in steps {
            match *step {
                Step::Act(a) if plan.act.is_none() => {
                    plan.act = Some(match a {
                        Act::Relu => Activation::Relu,
                        Act::Relu6 => Activation::Relu6,
                        Act::Generated(Some(a), _) => a,
                        // exp is softmax's, never an epilogue's.
                        Act::Generated(None, _) => return None,
                    })
                }
                Step::Add(l) if plan.residual.is_none() && l.col_stride == 1 => {
                    plan.residual = Some(l);
                    plan.residual_first = plan.act.is_none();
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
    pub(super) unsafe fn try_fused(
        &self,
        plan: &Option<FusedPlan>,
        kernel: Kernel,
        kc: usize,
        ap: *const f32,
        bp: impl PanelRows,
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

    /// Applies the epilogue to output columns `j..j+nr`, rows `r0..r1`, whose
    /// sums are at `acc` (rows `ld` apart), one column at a time: for a
    /// token-major output a column is a contiguous run of features, so bias,
    /// activation, residual and store are all vector operations.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn epilogue_columns(
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
    pub(super) unsafe fn epilogue_tile(
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
