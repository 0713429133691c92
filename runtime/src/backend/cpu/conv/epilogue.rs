//! Epilogues: bias, activation and residual add applied to finished tiles
//! of a GEMM, fused into the micro-kernel where it can run them in registers.

use super::{Act, FusedColumns, FusedPlan, Layout, Problem, Step};
use crate::backend::cpu::gemm::{Kernel, PanelRows, MR, NR};

/// `steps` without a final smooth activation (`Act::is_smooth`, after at
/// most a bias), and that activation, for kernels that apply it over whole
/// finished rows or planes instead of per tile: a tile's accumulators go
/// through a call, the stack and one short chain per register pair, where
/// rows still in cache give `vmath16::apply` four chains to interleave.
/// ReLU and ReLU6 stay in the registers; the hard sigmoid and swish are too
/// cheap to repay a pass. Otherwise `steps` whole and `None`.
pub(crate) fn split_deferred_act(steps: &[Step]) -> (&[Step], Option<Act>) {
    match steps {
        [rest @ .., Step::Act(a)] if a.is_smooth() && matches!(rest, [] | [Step::Bias(_)]) => {
            (rest, Some(*a))
        }
        _ => (steps, None),
    }
}

/// Applies `steps` to `row`, which holds outputs of channel `ch` of sample
/// `n` from position `pos` (of the channel's plane) on, for kernels that
/// finish an output row at a time: the bias of `ch`, the activation, the
/// residual at the same positions (a layout with unit column stride,
/// relative to `arena`).
#[inline(always)]
pub(crate) fn apply_steps_to_row(
    steps: &[Step],
    arena: *const f32,
    n: usize,
    ch: usize,
    pos: usize,
    row: &mut [f32],
) {
    for step in steps {
        match *step {
            Step::Bias(b) => {
                // SAFETY: the bias holds a float per output channel.
                let b = unsafe { *b.add(ch) };
                row.iter_mut().for_each(|v| *v += b);
            }
            Step::Act(a) => a.apply(row),
            Step::Add(l) => {
                let at = l.base + n * l.sample_stride + ch * l.row_stride + pos;
                // SAFETY: the residual has the output's extent (lowering).
                let res = unsafe { std::slice::from_raw_parts(arena.add(at), row.len()) };
                row.iter_mut().zip(res).for_each(|(v, r)| *v += r);
            }
        }
    }
}

impl Problem {
    /// The epilogue as the fused micro-kernel runs it, if it can: an optional
    /// bias first, then at most one activation and one residual add in
    /// either order. The tile's rows are channels and its columns positions,
    /// so the output and the residual must be unit-stride along positions.
    pub(super) fn fused_plan(&self) -> Option<FusedPlan> {
        self.plan_epilogue(|l| l.col_stride == 1)
            .filter(|_| self.out.col_stride == 1)
    }

    /// A smooth activation (sigmoid, SiLU, tanh, the GELUs) that ends the
    /// epilogue after at most a bias, which a driver may apply over whole
    /// finished rows instead of per tile (see [`split_deferred_act`]).
    pub(super) fn deferred_act(&self) -> Option<Act> {
        split_deferred_act(&self.epilogue).1
    }

    /// [`Problem::fused_plan`]'s parsing of the steps, with `residual_fits`
    /// saying which residual layouts a tile can read as rows.
    pub(super) fn plan_epilogue(
        &self,
        residual_fits: impl Fn(&Layout) -> bool,
    ) -> Option<FusedPlan> {
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
                Step::Act(a) if plan.act.is_none() => plan.act = Some(a.fusable()?),
                Step::Add(l) if plan.residual.is_none() && residual_fits(&l) => {
                    plan.residual = Some(l);
                    plan.residual_first = plan.act.is_none();
                }
                _ => return None,
            }
        }
        Some(plan)
    }

    /// The fused kernel's view of output columns `j..j+nr` (one column
    /// panel), for every row panel's tile: `None` where a tile cannot be
    /// fused (no plan, a partial panel, or columns of two samples).
    #[inline(always)]
    pub(super) fn fused_columns<'a>(
        &self,
        plan: &'a Option<FusedPlan>,
        j: usize,
        nr: usize,
    ) -> Option<FusedColumns<'a>> {
        let ps = self.per_sample;
        let plan = plan.as_ref()?;
        if nr != NR || j / ps != (j + NR - 1) / ps {
            return None;
        }
        Some(FusedColumns {
            plan,
            out: self.at_ptr(self.out.at(ps, 0, j)),
            residual: plan.residual.map_or(std::ptr::null(), |l| {
                self.at_ptr(l.at(ps, 0, j)) as *const f32
            }),
        })
    }

    /// Runs the last K block of a full tile (rows `r0..r0+MR` of the column
    /// panel `cols`) with the epilogue fused into the micro-kernel, storing
    /// straight to the output; false when the panel or CPU does not allow it.
    ///
    /// # Safety
    /// As [`Problem::run`]; `ap`/`bp` are this tile's panels and `prior` its
    /// partial sums (or null); rows `r0..r0+MR` are inside the output.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn try_fused(
        &self,
        cols: &Option<FusedColumns>,
        kernel: Kernel,
        kc: usize,
        ap: *const f32,
        bp: impl PanelRows,
        (prior, prior_ld): (*const f32, usize),
        r0: usize,
    ) -> bool {
        let Some(c) = cols else { return false };
        // SAFETY: row r0 of the residual and output is inside them.
        let residual = c
            .plan
            .residual
            .map(|l| (unsafe { c.residual.add(r0 * l.row_stride) }, l.row_stride));
        // SAFETY: bias holds m floats and r0 + MR <= m.
        let e = unsafe { c.plan.tile(r0, false, residual) };
        // SAFETY: as above.
        let out = unsafe { c.out.add(r0 * self.out.row_stride) };
        // SAFETY: the caller's extents; the output and residual rows of the
        // tile are unit-stride runs of NR inside their tensors.
        unsafe { kernel.run_fused(kc, ap, bp, prior, prior_ld, out, self.out.row_stride, &e) }
    }

    /// Applies the epilogue to output columns `j..j+nr`, rows `r0..r1`, whose
    /// sums are at `acc` (rows `ld` apart): for a token-major output a column
    /// is a contiguous run of features, so bias, activation, residual and
    /// store are all vector operations. Rows go in blocks of
    /// [`COLUMN_ROWS`], each transposed into `column` (token-major, L1-sized)
    /// first.
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
        let o = &self.out;
        column.clear();
        column.resize(COLUMN_ROWS.min(r1 - r0) * nr, 0.0);
        for b0 in (r0..r1).step_by(COLUMN_ROWS) {
            let rows = COLUMN_ROWS.min(r1 - b0);
            // SAFETY: acc holds rows r0..r1 of at least nr floats at stride ld.
            unsafe { transpose_into(acc.add((b0 - r0) * ld), ld, rows, nr, column.as_mut_ptr()) };
            for (t, (n, p)) in tile_columns(j, nr, self.per_sample).enumerate() {
                let column = &mut column[t * rows..(t + 1) * rows];
                for step in &self.epilogue {
                    match *step {
                        Step::Bias(b) => {
                            // SAFETY: bias holds m floats.
                            let b = unsafe { std::slice::from_raw_parts(b.add(b0), rows) };
                            column.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                        }
                        Step::Act(a) => a.apply(column),
                        Step::Add(l) => {
                            let at =
                                l.base + n * l.sample_stride + p * l.col_stride + b0 * l.row_stride;
                            for (i, v) in column.iter_mut().enumerate() {
                                // SAFETY: the residual has the output's extent.
                                *v += unsafe { *self.at_ptr(at + i * l.row_stride) };
                            }
                        }
                    }
                }
                let at = o.base + n * o.sample_stride + p * o.col_stride + b0;
                // SAFETY: the caller guarantees the output's extent; rows are unit-stride.
                unsafe { std::slice::from_raw_parts_mut(self.at_ptr(at), rows) }
                    .copy_from_slice(column);
            }
        }
    }

    /// Applies the epilogue to one micro-tile, rows `r0..r0+mr` and columns
    /// `j..j+nr` of the output, whose sums are at `src` (rows `ld` apart), and
    /// stores it. Runs right after the tile's last K block, while it is in L1.
    /// Without `act` the activation is left to a later pass
    /// ([`Problem::deferred_act`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) unsafe fn epilogue_tile(
        &self,
        r0: usize,
        mr: usize,
        j: usize,
        nr: usize,
        src: *const f32,
        ld: usize,
        act: bool,
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
                        Step::Act(a) if act => a.apply(&mut row),
                        Step::Act(_) => {}
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
                Step::Act(a) if act => a.apply(buf),
                Step::Act(_) => {}
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

/// Rows per block of [`Problem::epilogue_columns`]: 16 columns of 256 rows
/// are 16 KiB, in L1 with room for the output rows they are stored to.
const COLUMN_ROWS: usize = 256;

/// `dst[t·rows + r] = src[r·ld + t]` for `r < rows`, `t < cols`: a block of
/// GEMM sums turned token-major. (This feature-major path for linear layers
/// runs on CPUs without AVX2 only; with AVX2 they are token-major products,
/// `token.rs`.)
///
/// # Safety
/// `src` must hold `rows` rows of `cols` floats at stride `ld`, and `dst`
/// `rows·cols` floats.
#[inline(always)]
unsafe fn transpose_into(src: *const f32, ld: usize, rows: usize, cols: usize, dst: *mut f32) {
    for t in 0..cols {
        for r in 0..rows {
            // SAFETY: as for this function.
            unsafe { *dst.add(t * rows + r) = *src.add(r * ld + t) };
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
