//! Token-major products (linear layers, attention projections):
//! `out[token, feature] = Σ_k x[token, k] · w[feature, k]`, with tokens as the
//! micro-kernel's rows and features as its columns. The weights are the
//! kernel's B operand, packed once at load ([`pack_weights_cols`]); the
//! tokens, whose K runs are contiguous, are packed per call into 6-row A
//! panels. A finished tile is then six token rows of sixteen consecutive
//! features: the epilogue (bias per feature, activation, residual) runs on
//! the registers and stores contiguous rows, where the feature-major product
//! would have to turn every block of sums around first. A smooth final
//! activation runs over each finished block's rows instead
//! ([`Problem::deferred_act`]).
//!
//! [`pack_weights_cols`]: crate::backend::cpu::gemm::pack_weights_cols

use super::{grow, FusedPlan, Gather, Problem, Scratch, Step};
use crate::backend::cpu::gemm::{Kernel, RowPointers, TileEpilogue, K_BLOCK, MR, NR};

/// One panel of MR tokens of a block, as every feature panel's tiles use it.
pub(super) struct TokenPanel {
    /// Each tile row's token, at feature 0.
    rows: [*const f32; MR],
    /// The output of the panel's first token at feature 0.
    out: *mut f32,
    /// The residual of the first token at feature 0 (null: none fused).
    residual: *const f32,
    /// The first token and how many the panel holds.
    j: usize,
    mr: usize,
    /// A full panel within one sample: the fused kernel can store it.
    fusable: bool,
}

// SAFETY: the pointers are into the arena of the run that wrote them; the
// list is rebuilt for every block before it is read, so a thread's scratch
// never uses another run's (or thread's) pointers.
unsafe impl Send for TokenPanel {}

/// The most token panels per block: 192 tokens, 192 KiB of packed tokens
/// at K = 256, so that each weight panel serves up to 32 tiles once in L1.
const TOKEN_PANELS: usize = 32;
/// The most feature panels per block: 256 features.
const FEATURE_PANELS: usize = 16;

/// Weight panels a single token's row runs against at once
/// ([`Kernel::run_one_row_panels`]: eight accumulators).
const ONE_TOKEN_PANELS: usize = 4;

/// Weight panels a token panel runs against at once on the AVX-512 tiles
/// ([`Problem::zmm_token_tiles`]).
const ZMM_FEATURE_PANELS: usize = 4;

/// How many weight panels ahead of the one in use [`prefetch_lines`] asks
/// for. ViT-B/16, one thread, three alternations (`netc bench --iters 5`):
/// none 435.0–448.8 ms, one panel ahead 426.9–452.2, two 423.8–429.1.
const PREFETCH_AHEAD: usize = 2;

/// The fewest weights (floats: 1 MiB, twice a core's L2 here) for which
/// [`Problem::run_tokens`] prefetches weight panels: smaller layers keep
/// their weights in cache across token blocks and runs.
const PREFETCH_MIN_WEIGHTS: usize = 1 << 18;

impl Problem {
    /// Runs this thread's share of a token-major product: blocks of up to
    /// [`TOKEN_PANELS`]·MR tokens × [`FEATURE_PANELS`]·NR features, claimed
    /// from [`Problem::queue`].
    ///
    /// # Safety
    /// As [`Problem::run`]; `self.a_cols` holds the weights packed by
    /// `pack_weights_cols`, B gathers K-contiguous token rows, the output is
    /// token-major (`out.row_stride == 1`).
    #[inline(always)]
    pub(super) unsafe fn run_tokens(&self, threads: usize, s: &mut Scratch) {
        let Gather::Strided(x) = self.b else {
            unreachable!("token-major products gather strided token rows");
        };
        let kernel = Kernel::detect();
        // Where the CPU has AVX-512, several feature panels at once on the
        // zmm tiles (`zmm_token_tiles`).
        #[cfg(target_arch = "x86_64")]
        let zmm = kernel == Kernel::Avx2Fma && super::zmm_row_tiles();
        let ps = self.per_sample;
        let fpanels = self.m.div_ceil(NR);
        let mpad = fpanels * NR;
        // Blocks of even size, and enough of them (features cut finer when
        // tokens are few) that threads get equal shares.
        let tpanels = self.n.div_ceil(MR);
        let tblocks = tpanels.div_ceil(TOKEN_PANELS);
        let tb = tpanels.div_ceil(tblocks) * MR;
        let mut fb = FEATURE_PANELS;
        while fb > 1 && tblocks * fpanels.div_ceil(fb) < 4 * threads {
            fb = fb.div_ceil(2);
        }
        let fblocks = fpanels.div_ceil(fb);
        let fb = fpanels.div_ceil(fblocks);
        let blocks = self.k.div_ceil(K_BLOCK);
        let ld = fb * NR;
        grow(&mut s.acc, tb * ld);
        // Tile rows are tokens: a residual must be unit-stride along features.
        let mut plan = self.plan_epilogue(|l| l.row_stride == 1);
        // A smooth final activation over each finished block's rows of
        // features (see `deferred_act`).
        let deferred = self.deferred_act().filter(|_| self.out.row_stride == 1);
        if let (Some(plan), Some(_)) = (&mut plan, deferred) {
            plan.act = None;
        }
        // Weights that stay in cache between token blocks need no prefetch
        // (ConvNeXt-T's first stages ran 2–3% slower with it).
        let prefetch = self.m * self.k >= PREFETCH_MIN_WEIGHTS;
        let mut panels = std::mem::take(&mut s.token_panels);
        let mut tile = [0f32; MR * NR];
        for (u0, u1) in self.queue.chunks(tblocks * fblocks, threads, 1) {
            for u in u0..u1 {
                let (t0, q0) = (u / fblocks * tb, u % fblocks * fb);
                if t0 >= self.n || q0 >= fpanels {
                    continue;
                }
                let tn = tb.min(self.n - t0);
                let q1 = (q0 + fb).min(fpanels);
                // Each token panel's rows, output and residual at feature 0,
                // once per block rather than per tile: the divisions and
                // pointer arrays cost a K = 96 product a quarter of its time
                // when they were redone for every tile.
                panels.clear();
                panels.extend((0..tn.div_ceil(MR)).map(|p| {
                    let (j, mr) = (t0 + p * MR, MR.min(tn - p * MR));
                    TokenPanel {
                        // Rows past the last token repeat it (their sums are
                        // not stored).
                        rows: std::array::from_fn(|r| {
                            self.at_ptr(x.at(ps, 0, j + r.min(mr - 1))) as *const f32
                        }),
                        out: self.at_ptr(self.out.at(ps, 0, j)),
                        residual: plan
                            .as_ref()
                            .and_then(|plan| plan.residual)
                            .map_or(std::ptr::null(), |l| {
                                self.at_ptr(l.at(ps, 0, j)) as *const f32
                            }),
                        j,
                        mr,
                        fusable: mr == MR && j / ps == (j + MR - 1) / ps,
                    }
                }));
                // One token (a batch-1 classifier): its row against several
                // weight panels at once (`run_one_row_panels`).
                let one_token = tn == 1;
                for (kb, k0) in (0..self.k).step_by(K_BLOCK).enumerate() {
                    let kc = K_BLOCK.min(self.k - k0);
                    let last = kb + 1 == blocks;
                    if one_token {
                        let panel = &panels[0];
                        let mut q = q0;
                        while q < q1 {
                            let count = (q1 - q).min(ONE_TOKEN_PANELS);
                            if prefetch {
                                for p in q..q + count {
                                    if let Some((nb, kcn)) = self.panel_at(
                                        p + PREFETCH_AHEAD,
                                        q1,
                                        q0,
                                        k0,
                                        kc,
                                        last,
                                        mpad,
                                    ) {
                                        prefetch_lines(nb, kcn, 0, kcn);
                                    }
                                }
                            }
                            // SAFETY: the packed weights hold mpad·k floats
                            // (block k0 at k0·mpad, its panels kc·NR apart);
                            // acc holds the block's features; the token's
                            // row holds k floats.
                            unsafe {
                                let acc = s.acc.as_mut_ptr().add((q - q0) * NR);
                                kernel.run_one_row_panels(
                                    kc,
                                    panel.rows[0].add(k0),
                                    self.a_cols.add(k0 * mpad + q * kc * NR),
                                    kc * NR,
                                    count,
                                    acc,
                                    kb > 0,
                                );
                                if last {
                                    for p in q..q + count {
                                        let (f0, acc) = (p * NR, acc.add((p - q) * NR));
                                        let nr = NR.min(self.m - f0);
                                        let act = deferred.is_none();
                                        self.token_epilogue(f0, nr, panel.j, 1, acc, ld, act);
                                    }
                                }
                            }
                            q += count;
                        }
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if zmm {
                        // SAFETY: as for the ymm tiles below; AVX-512F checked.
                        unsafe {
                            self.zmm_token_tiles(
                                &panels,
                                (q0, q1),
                                (kb, k0, kc, last),
                                (mpad, ld),
                                s.acc.as_mut_ptr(),
                                prefetch,
                                deferred.is_none(),
                                plan.as_ref().filter(|p| p.clamps_only()),
                            )
                        };
                        continue;
                    }
                    for q in q0..q1 {
                        let f0 = q * NR;
                        let nr = NR.min(self.m - f0);
                        // SAFETY: the packed weights hold mpad·k floats; block
                        // k0 starts at k0·mpad.
                        let bp = unsafe { self.a_cols.add(k0 * mpad + q * kc * NR) };
                        // The fused epilogue of this feature panel (its
                        // residual pointer set per token panel).
                        let fused = match &plan {
                            Some(plan) if last && nr == NR => {
                                // SAFETY: bias holds m floats and f0 + NR <= m.
                                let mut e = unsafe { plan.tile(f0, true, None) };
                                let res_stride = plan.residual.map_or(0, |l| {
                                    e.residual_ld = l.col_stride;
                                    l.row_stride
                                });
                                Some((e, f0 * res_stride))
                            }
                            _ => None,
                        };
                        // The weight panel this block reads PREFETCH_AHEAD
                        // panels on (in the next K block past the last), its
                        // lines shared out over this panel's token tiles.
                        let next = if prefetch {
                            self.panel_at(q + PREFETCH_AHEAD, q1, q0, k0, kc, last, mpad)
                        } else {
                            None
                        };
                        let per_tile = next.map_or(0, |(_, kcn)| kcn.div_ceil(panels.len()));
                        for (p, panel) in panels.iter().enumerate() {
                            if let Some((nb, kcn)) = next {
                                // A panel of the packed weights: kcn·NR floats,
                                // one cache line a K step.
                                prefetch_lines(nb, kcn, p * per_tile, per_tile);
                            }
                            // The panel's tokens read in place from K block k0.
                            let ap = RowPointers(panel.rows.map(|r| {
                                // SAFETY: each token row holds k floats.
                                unsafe { r.add(k0) }
                            }));
                            // SAFETY: acc holds `tb` rows of `ld` floats.
                            let acc =
                                unsafe { s.acc.as_mut_ptr().add(p * MR * ld + (q - q0) * NR) };
                            let prior = if kb == 0 {
                                (std::ptr::null(), 0)
                            } else {
                                (acc as *const f32, ld)
                            };
                            // SAFETY: panels and tiles as above; the output and
                            // residual rows are the layer's.
                            unsafe {
                                if let (Some((e, res_at)), true) = (fused, panel.fusable) {
                                    if self.fused_token_tile(
                                        e, res_at, panel, kernel, kc, ap, bp, prior, f0,
                                    ) {
                                        continue;
                                    }
                                }
                                let (j, mr) = (panel.j, panel.mr);
                                if last && kb == 0 {
                                    let t = tile.as_mut_ptr();
                                    kernel.run_into_rows(kc, ap, bp, t, NR, false, mr);
                                    let src = tile.as_ptr();
                                    self.token_epilogue(f0, nr, j, mr, src, NR, deferred.is_none());
                                } else {
                                    kernel.run_into_rows(kc, ap, bp, acc, ld, kb > 0, mr);
                                    if last {
                                        let act = deferred.is_none();
                                        self.token_epilogue(f0, nr, j, mr, acc, ld, act);
                                    }
                                }
                            }
                        }
                    }
                }
                if let Some(a) = deferred {
                    let (f0, f1) = (q0 * NR, (q1 * NR).min(self.m));
                    for t in t0..t0 + tn {
                        // SAFETY: token t's features f0..f1 are contiguous
                        // (row stride 1) inside the output.
                        a.apply(unsafe {
                            std::slice::from_raw_parts_mut(
                                self.at_ptr(self.out.at(ps, f0, t)),
                                f1 - f0,
                            )
                        });
                    }
                }
            }
        }
        s.token_panels = panels;
    }

    /// Weight panel `ahead` (and its K steps) of K block `k0` (`kc` deep;
    /// `last` of the product) when it is inside the block's panels `..q1`;
    /// past them, the next K block's panel `q0 + ahead - q1` (none after
    /// the `last` block). What a block's work on panel `q` prefetches is
    /// panel `q + PREFETCH_AHEAD`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn panel_at(
        &self,
        ahead: usize,
        q1: usize,
        q0: usize,
        k0: usize,
        kc: usize,
        last: bool,
        mpad: usize,
    ) -> Option<(*const f32, usize)> {
        if ahead < q1 {
            Some((self.a_cols.wrapping_add(k0 * mpad + ahead * kc * NR), kc))
        } else if !last {
            let (k1, kc1) = (k0 + K_BLOCK, K_BLOCK.min(self.k - k0 - K_BLOCK));
            let q = (q0 + ahead - q1).min(q1 - 1);
            Some((self.a_cols.wrapping_add(k1 * mpad + q * kc1 * NR), kc1))
        } else {
            None
        }
    }

    /// One K block of a token block on the AVX-512 tiles: each token panel
    /// against up to [`ZMM_FEATURE_PANELS`] weight panels at once (the
    /// packed panels lie `kc·NR` apart, the tiles' B layout), sums into the
    /// block's accumulators, and after the last K block the epilogue: on
    /// the registers for whole tiles whose epilogue `fused` allows (bias,
    /// ReLU(6) or none, residual: [`avx512::tile_tokens_fused`]), else per
    /// feature panel from the stored sums. Each sum is one chain in K
    /// order, as on the ymm kernel: the same bits. The register epilogue
    /// saved the stored sums' round trip through `token_epilogue`:
    /// ConvNeXt-T 47.7 → 45.9 ms and ViT-B/16 148 → 140 (two threads,
    /// three alternated rounds, medians).
    ///
    /// Why: the 6×16 ymm kernel reaches 75 GFLOP/s a core on the Xeon
    /// (two 512-bit FMA ports) where the zmm tiles reach 120; ViT-B/16's
    /// linear layers and attention projections ran at the ymm kernel's peak.
    ///
    /// # Safety
    /// As [`Problem::run_tokens`]; AVX-512F; `acc` holds the block's
    /// token rows of `ld` floats.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn zmm_token_tiles(
        &self,
        panels: &[TokenPanel],
        (q0, q1): (usize, usize),
        (kb, k0, kc, last): (usize, usize, usize, bool),
        (mpad, ld): (usize, usize),
        acc: *mut f32,
        prefetch: bool,
        act: bool,
        fused: Option<&FusedPlan>,
    ) {
        use crate::backend::cpu::gemm::avx512;
        let res_ld = fused.and_then(|p| p.residual).map_or(0, |l| l.col_stride);
        let mut q = q0;
        while q < q1 {
            let pn = (q1 - q).min(ZMM_FEATURE_PANELS);
            // The next group's weight panels (the next K block's first
            // ones past the last group), their lines shared out over the
            // token panels.
            let next: [Option<(*const f32, usize)>; ZMM_FEATURE_PANELS] =
                std::array::from_fn(|i| {
                    (prefetch && i < pn)
                        .then(|| self.panel_at(q + pn + i, q1, q0, k0, kc, last, mpad))
                        .flatten()
                });
            // SAFETY: the packed weights hold mpad·k floats; block k0
            // starts at k0·mpad, its panels kc·NR apart.
            let bp = unsafe { self.a_cols.add(k0 * mpad + q * kc * NR) };
            for (p, panel) in panels.iter().enumerate() {
                for (nb, kcn) in next.iter().flatten() {
                    let per_tile = kcn.div_ceil(panels.len());
                    prefetch_lines(*nb, *kcn, p * per_tile, per_tile);
                }
                let ap = RowPointers(panel.rows.map(|r| {
                    // SAFETY: each token row holds k floats.
                    unsafe { r.add(k0) }
                }));
                // SAFETY: acc holds the block's MR-row token panels of ld
                // floats (rows past the last token are scratch); pn panels
                // of kc·NR weights from bp.
                unsafe {
                    let c = acc.add(p * MR * ld + (q - q0) * NR);
                    // The last K block of a whole tile (MR tokens of one
                    // sample, whole feature panels) runs its epilogue on the
                    // registers and stores the outputs itself.
                    if let (true, Some(plan), true) =
                        (last && panel.fusable, fused, (q + pn) * NR <= self.m)
                    {
                        let f0 = q * NR;
                        // Features are unit-stride in the output and in the
                        // residual (`plan_epilogue`'s condition).
                        let residual =
                            (!panel.residual.is_null()).then(|| (panel.residual.add(f0), res_ld));
                        let e = plan.tile(f0, true, residual);
                        let prior = if kb > 0 {
                            c as *const f32
                        } else {
                            std::ptr::null()
                        };
                        let (out, ol) = (panel.out.add(f0), self.out.col_stride);
                        match pn {
                            1 => avx512::tile_tokens_fused::<1, _>(
                                kc, ap, bp, prior, ld, &e, out, ol,
                            ),
                            2 => avx512::tile_tokens_fused::<2, _>(
                                kc, ap, bp, prior, ld, &e, out, ol,
                            ),
                            3 => avx512::tile_tokens_fused::<3, _>(
                                kc, ap, bp, prior, ld, &e, out, ol,
                            ),
                            _ => avx512::tile_tokens_fused::<4, _>(
                                kc, ap, bp, prior, ld, &e, out, ol,
                            ),
                        }
                        continue;
                    }
                    avx512::tiles(pn, kc, ap, bp, c, ld, kb > 0);
                    if last {
                        for i in 0..pn {
                            let f0 = (q + i) * NR;
                            let nr = NR.min(self.m - f0);
                            let src = c.add(i * NR);
                            self.token_epilogue(f0, nr, panel.j, panel.mr, src, ld, act);
                        }
                    }
                }
            }
            q += pn;
        }
    }

    /// A full tile (MR tokens of one sample, features `f0..f0+NR`) through
    /// the fused kernel with epilogue `e` (bias from `f0`; the residual, if
    /// any, at `res_at` floats from the panel's), straight to the output;
    /// false, doing nothing, where the CPU has no fused kernel.
    ///
    /// # Safety
    /// As [`Problem::run_tokens`], for this tile.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn fused_token_tile(
        &self,
        mut e: TileEpilogue,
        res_at: usize,
        panel: &TokenPanel,
        kernel: Kernel,
        kc: usize,
        ap: RowPointers,
        bp: *const f32,
        (prior, prior_ld): (*const f32, usize),
        f0: usize,
    ) -> bool {
        if !panel.residual.is_null() {
            // SAFETY: the residual has the output's extent.
            e.residual = unsafe { panel.residual.add(res_at) };
        }
        // SAFETY: the output's features are `row_stride` (1) apart.
        let out = unsafe { panel.out.add(f0 * self.out.row_stride) };
        // SAFETY: the caller's extents; output and residual rows are runs of
        // NR features of one token each, `col_stride` apart.
        unsafe { kernel.run_fused(kc, ap, bp, prior, prior_ld, out, self.out.col_stride, &e) }
    }

    /// The epilogue of a partial tile (or one the fused kernel cannot run):
    /// rows are tokens `j..j+mr`, columns features `f0..f0+nr`, sums at `src`
    /// (rows `ld` apart). The same operations as the fused kernel's, in the
    /// same order; without `act` the activation is left to the block's pass.
    ///
    /// # Safety
    /// As [`Problem::run_tokens`], for this tile.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn token_epilogue(
        &self,
        f0: usize,
        nr: usize,
        j: usize,
        mr: usize,
        src: *const f32,
        ld: usize,
        act: bool,
    ) {
        let ps = self.per_sample;
        for r in 0..mr {
            let mut row = [0f32; NR];
            // SAFETY: the tile holds mr rows of nr floats at stride ld.
            row[..nr].copy_from_slice(unsafe { std::slice::from_raw_parts(src.add(r * ld), nr) });
            let row = &mut row[..nr];
            for step in &self.epilogue {
                match *step {
                    Step::Bias(b) => {
                        // SAFETY: bias holds m floats.
                        let b = unsafe { std::slice::from_raw_parts(b.add(f0), nr) };
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                    Step::Act(a) if act => a.apply(row),
                    Step::Act(_) => {}
                    Step::Add(l) => {
                        let at = l.at(ps, f0, j + r);
                        for (i, v) in row.iter_mut().enumerate() {
                            // SAFETY: the residual has the output's extent.
                            *v += unsafe { *self.at_ptr(at + i * l.row_stride) };
                        }
                    }
                }
            }
            // SAFETY: the output's features are contiguous per token.
            unsafe {
                std::slice::from_raw_parts_mut(self.at_ptr(self.out.at(ps, f0, j + r)), nr)
                    .copy_from_slice(row)
            };
        }
    }
}

/// Asks for lines `first..first + count` (of `lines`, 64 bytes each) of
/// the weight panel at `panel` to be brought into L2 ahead of its use.
///
/// Why: in the network each layer's packed weights come from memory (ViT-B/16
/// reads 344 MB of them a run), and the hardware prefetcher takes a panel up
/// only once its first tile is already stalling on it: the 3072→768 product
/// ran 8% slower in the network than in `conv_throughput`, whose weights stay
/// in L3. Safe for any address: a prefetch is a hint and never faults.
#[inline(always)]
fn prefetch_lines(panel: *const f32, lines: usize, first: usize, count: usize) {
    #[cfg(target_arch = "x86_64")]
    for l in first..(first + count).min(lines) {
        // SAFETY: prefetching reads nothing and cannot fault, whatever the
        // address (`wrapping_add` forms it without claiming it in bounds).
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                panel.wrapping_add(l * 16) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (panel, lines, first, count);
}
