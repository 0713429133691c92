//! Single-precision GEMM: `C = A·B (+ C)`, row-major, the core the JIT-generated
//! convolution drivers will call (issue 6). A packed, register-blocked 6x16
//! micro-kernel in AVX2+FMA (twelve ymm accumulators), chosen at run time, with a
//! portable fallback; B is packed into 16-column panels and A into 6-row panels
//! per K block so the kernel streams contiguous memory. [`pack_weights`] and
//! [`Kernel::run_into`] are the pieces the convolution driver (`conv/`) uses
//! with weights packed once, at load.

/// Rows of the micro-kernel tile.
pub const MR: usize = 6;
/// Columns of the micro-kernel tile (two 8-float ymm registers).
pub const NR: usize = 16;
/// Depth of one K block. 128 so that the AVX-512 tiles' four B panels
/// (128 × 64 floats, 32 KiB) stay in the 48 KiB L1 while every row panel
/// runs against them: at 256 (64 KiB) they came from L2 and the 6×64 tile
/// ran at 154 against 170 GFLOP/s a core (a standalone copy of the tile,
/// Xeon host). `conv_throughput` (two threads, FLUSH and PRODUCER, three
/// interleaved rounds, minima): the 1×1s with K ≥ 256 0.83–0.91× the
/// time, ViT-B/16's linear layers 0.92–0.95×, all shapes 0.94×; K of 160
/// and 192 (a second, short block) 1.13×.
const KC: usize = 128;

/// Where the micro-kernel finds row `kk` (NR floats) of its B panel.
pub trait PanelRows: Copy {
    /// Row `kk`.
    ///
    /// # Safety
    /// `kk` must be below the panel's depth.
    unsafe fn row(self, kk: usize) -> *const f32;
}

/// A packed panel: rows NR floats apart.
impl PanelRows for *const f32 {
    #[inline(always)]
    unsafe fn row(self, kk: usize) -> *const f32 {
        // SAFETY: the caller's bound on kk.
        unsafe { self.add(kk * NR) }
    }
}

/// Where the micro-kernel finds element (`kk`, `r`) of its A panel.
pub trait TileRows: Copy {
    /// Element `r` (below MR) of row `kk`.
    ///
    /// # Safety
    /// `kk` must be below the panel's depth.
    unsafe fn at(self, kk: usize, r: usize) -> *const f32;
}

/// A packed panel: rows of MR floats.
impl TileRows for *const f32 {
    #[inline(always)]
    unsafe fn at(self, kk: usize, r: usize) -> *const f32 {
        // SAFETY: the caller's bound on kk.
        unsafe { self.add(kk * MR + r) }
    }
}

/// A read in place, unpacked: tile row `r` is the run of K floats at
/// `self.0[r]` (a token's features, for token-major products).
#[derive(Clone, Copy, Debug)]
pub struct RowPointers(pub [*const f32; MR]);

impl TileRows for RowPointers {
    #[inline(always)]
    unsafe fn at(self, kk: usize, r: usize) -> *const f32 {
        // SAFETY: the caller's bound on kk; each row holds the panel's depth.
        unsafe { self.0[r].add(kk) }
    }
}

/// A read in place from a convolution's padded input (pixel-major
/// convolutions, `conv/pixels.rs`): element (`kk`, `r`) is at
/// `pixels[r] + offsets[kk]`, pixel `r`'s window corner plus tap `kk`'s
/// offset, so the micro-kernel broadcasts input values where they lie.
#[derive(Clone, Copy, Debug)]
pub struct Windowed {
    /// Each tile row's (output pixel's) window corner.
    pub pixels: [*const f32; MR],
    /// Per row of the K block, its offset from a corner.
    pub offsets: *const usize,
}

impl TileRows for Windowed {
    #[inline(always)]
    unsafe fn at(self, kk: usize, r: usize) -> *const f32 {
        // SAFETY: the caller's bound on kk; offsets are the driver's.
        unsafe { self.pixels[r].add(*self.offsets.add(kk)) }
    }
}

/// B read in place, unpacked: row `kk` is the NR floats at
/// `base + offsets[kk]` (a convolution's padded input, where each tap of a
/// run of output pixels is a contiguous run).
#[derive(Clone, Copy, Debug)]
pub struct Indirect {
    /// The panel's first column at offset 0.
    pub base: *const f32,
    /// Per row of the K block, its offset from `base`.
    pub offsets: *const usize,
}

impl PanelRows for Indirect {
    #[inline(always)]
    unsafe fn row(self, kk: usize) -> *const f32 {
        // SAFETY: the caller's bound on kk; offsets are the driver's.
        unsafe { self.base.add(*self.offsets.add(kk)) }
    }
}

/// A row-major matrix view.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    /// Elements.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows, in elements.
    pub stride: usize,
}

impl MatRef<'_> {
    #[inline]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.stride + c]
    }
}

/// `c[m×n] (+)= a[m×k] · b[k×n]`; `c` is row-major with row stride `ldc`.
/// With `accumulate` false, `c` is overwritten.
///
/// # Panics
/// If the shapes disagree or a slice is too short for its view.
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(
        m == 0 || a.data.len() >= (m - 1) * a.stride + k,
        "A is too short"
    );
    assert!(
        k == 0 || b.data.len() >= (k - 1) * b.stride + n,
        "B is too short"
    );
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "C is too short");
    if k == 0 && !accumulate {
        for r in 0..m {
            c[r * ldc..r * ldc + n].fill(0.0);
        }
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let kernel = Kernel::detect();
    #[cfg(target_arch = "x86_64")]
    let zmm = kernel == Kernel::Avx2Fma && avx512::available();
    // The thread's packing buffers, reused (attention calls this twice per
    // head); `pack_b` and `pack_a` write every element read.
    let (mut bpack, mut apack) = SGEMM_PACKS.take();
    for (v, len) in [
        (&mut bpack, KC.min(k) * n.div_ceil(NR) * NR),
        (&mut apack, KC.min(k) * MR),
    ] {
        if v.len() < len {
            v.resize(len, 0.0);
        }
    }
    let mut tile = [0f32; MR * NR];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        pack_b(b, k0, kc, &mut bpack);
        for i0 in (0..m).step_by(MR) {
            let mr = MR.min(m - i0);
            pack_a(a, i0, mr, k0, kc, &mut apack);
            // The first K block stores, later ones (or all, when asked) add.
            let add = accumulate || k0 > 0;
            let mut p = 0;
            while p * NR < n {
                let j0 = p * NR;
                let nr = NR.min(n - j0);
                #[cfg(target_arch = "x86_64")]
                if zmm && mr == MR && nr == NR {
                    // Up to four full panels at once on the zmm tiles: the
                    // same sums (one chain in K order each) as the ymm
                    // kernel's tiles.
                    let pn = ((n - j0) / NR).min(4);
                    let at = i0 * ldc + j0;
                    let (ap, bp) = (apack.as_ptr(), bpack[p * kc * NR..].as_ptr());
                    let cp = c[at..].as_mut_ptr();
                    // SAFETY: AVX-512F checked; apack holds kc steps of MR,
                    // bpack pn panels of kc×NR from panel p; C holds MR rows
                    // of pn·NR from `at` at stride ldc (full panels, checked
                    // above to be inside C).
                    unsafe { avx512::tiles(pn, kc, ap, bp, cp, ldc, add) };
                    p += pn;
                    continue;
                }
                let panel = &bpack[p * kc * NR..(p + 1) * kc * NR];
                p += 1;
                if mr == MR && nr == NR {
                    // A full tile: straight into C (checked above to hold it).
                    let at = i0 * ldc + j0;
                    // SAFETY: the panels hold kc steps; C holds MR rows of NR
                    // from `at` at stride ldc.
                    unsafe {
                        kernel.run_into(
                            kc,
                            apack.as_ptr(),
                            panel.as_ptr(),
                            c[at..].as_mut_ptr(),
                            ldc,
                            add,
                        )
                    };
                    continue;
                }
                kernel.run(kc, &apack[..kc * MR], panel, &mut tile);
                for r in 0..mr {
                    let row = &mut c[(i0 + r) * ldc + j0..(i0 + r) * ldc + j0 + nr];
                    for (dst, v) in row.iter_mut().zip(&tile[r * NR..r * NR + nr]) {
                        *dst = if add { *dst + v } else { *v };
                    }
                }
            }
        }
    }
    SGEMM_PACKS.set((bpack, apack));
}

thread_local! {
    /// [`sgemm`]'s packed B and A, kept between calls on each thread.
    static SGEMM_PACKS: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::Cell::new((Vec::new(), Vec::new()))
    };
}

/// B[k0..k0+kc, :] into panels of NR columns, each kc×NR row-major, zero-padded.
fn pack_b(b: MatRef<'_>, k0: usize, kc: usize, out: &mut [f32]) {
    for (p, j0) in (0..b.cols).step_by(NR).enumerate() {
        let nr = NR.min(b.cols - j0);
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for kk in 0..kc {
            let src = &b.data[(k0 + kk) * b.stride + j0..(k0 + kk) * b.stride + j0 + nr];
            let dst = &mut panel[kk * NR..kk * NR + NR];
            dst[..nr].copy_from_slice(src);
            dst[nr..].fill(0.0);
        }
    }
}

/// A[i0..i0+mr, k0..k0+kc] into a kc×MR column panel, zero-padded.
fn pack_a(a: MatRef<'_>, i0: usize, mr: usize, k0: usize, kc: usize, out: &mut [f32]) {
    for kk in 0..kc {
        for r in 0..MR {
            out[kk * MR + r] = if r < mr { a.at(i0 + r, k0 + kk) } else { 0.0 };
        }
    }
}

/// Pre-packs a row-major `m×k` matrix (the weights) into the layout
/// [`Kernel::run_into`] reads: for each K block of [`K_BLOCK`] (the last may be
/// shorter), `m` rounded up to [`MR`] rows as consecutive `kc×MR` column panels.
/// Block `kb` starts at `k0 * m.div_ceil(MR) * MR`.
pub fn pack_weights(w: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_len(m, k)];
    pack_weights_into(w, m, k, &mut out);
    out
}

/// Floats [`pack_weights`] produces for an `m×k` matrix.
pub fn packed_len(m: usize, k: usize) -> usize {
    m.div_ceil(MR) * MR * k
}

/// [`pack_weights`] into `out` (of [`packed_len`] floats, zeroed).
pub fn pack_weights_into(w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    pack_panels::<MR>(w, m, k, out)
}

/// Pre-packs a row-major `m×k` matrix (a linear layer's weights, `m`
/// features) as the micro-kernel's *B* operand, for products whose output is
/// token-major (`out[token, feature] = Σ x[token, k]·w[feature, k]`): for each
/// K block, `m` rounded up to [`NR`] features as consecutive `kc×NR` panels.
/// Block `kb` starts at `k0 * m.div_ceil(NR) * NR`.
pub fn pack_weights_cols(w: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_cols_len(m, k)];
    pack_weights_cols_into(w, m, k, &mut out);
    out
}

/// Floats [`pack_weights_cols`] produces for an `m×k` matrix.
pub fn packed_cols_len(m: usize, k: usize) -> usize {
    m.div_ceil(NR) * NR * k
}

/// [`pack_weights_cols`] into `out` (of [`packed_cols_len`] floats, zeroed).
pub fn pack_weights_cols_into(w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    pack_panels::<NR>(w, m, k, out)
}

/// Rows of `w` (`m×k`) into K-blocked `kc×P` panels, `P` rows each.
fn pack_panels<const P: usize>(w: &[f32], m: usize, k: usize, out: &mut [f32]) {
    assert!(w.len() >= m * k, "weights too short");
    let mpad = m.div_ceil(P) * P;
    assert!(out.len() >= mpad * k, "packed buffer too short");
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for (p, i0) in (0..m).step_by(P).enumerate() {
            let at = k0 * mpad + p * kc * P;
            let panel = &mut out[at..at + kc * P];
            // Row by row: contiguous reads, strided writes within one panel.
            for r in 0..P.min(m - i0) {
                let row = &w[(i0 + r) * k + k0..(i0 + r) * k + k0 + kc];
                for (kk, v) in row.iter().enumerate() {
                    panel[kk * P + r] = *v;
                }
            }
        }
    }
}

/// Depth of the K blocks of [`pack_weights`].
pub const K_BLOCK: usize = KC;

/// The micro-kernel chosen for this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX2 + FMA, 6x16.
    Avx2Fma,
    /// Portable Rust, 6x16.
    Portable,
}

/// Whether `NETC_CPU_BASELINE` is set: the CPU backend then runs the code of
/// CPUs without AVX2 and FMA (portable micro-kernel, baseline kernel entries,
/// generated activations) on any CPU, so that path can be tested where it
/// is not the natural one. Read once per process.
pub fn baseline_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("NETC_CPU_BASELINE").is_some())
}

impl Kernel {
    /// The best kernel this CPU supports (the portable one when
    /// [`baseline_forced`]).
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && !baseline_forced()
        {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    /// tile[MR×NR] = apanel[kc×MR]ᵀ · bpanel[kc×NR].
    fn run(self, kc: usize, apanel: &[f32], bpanel: &[f32], tile: &mut [f32; MR * NR]) {
        assert!(apanel.len() >= kc * MR && bpanel.len() >= kc * NR);
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU reports AVX2 and FMA; the slices
            // were checked to hold kc panels above.
            Kernel::Avx2Fma => unsafe { avx2::kernel(kc, apanel.as_ptr(), bpanel.as_ptr(), tile) },
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2Fma => portable(kc, apanel, bpanel, tile),
            Kernel::Portable => portable(kc, apanel, bpanel, tile),
        }
    }
}

impl Kernel {
    /// `c[MR×NR] (+)= apanel[kc×MR]ᵀ · bpanel[kc×NR]` with `c` rows `ldc` apart.
    ///
    /// # Safety
    /// `a` must hold `kc*MR` floats, `b` `kc*NR`, and `c` `MR` rows of `NR`
    /// floats at stride `ldc`.
    #[inline]
    pub unsafe fn run_into(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            Kernel::Avx2Fma => unsafe { avx2::kernel_into(kc, a, b, c, ldc, accumulate) },
            _ => {
                let mut tile = [0f32; MR * NR];
                // SAFETY: the caller guarantees the extents.
                let (ap, bp) = unsafe {
                    (
                        std::slice::from_raw_parts(a, kc * MR),
                        std::slice::from_raw_parts(b, kc * NR),
                    )
                };
                portable(kc, ap, bp, &mut tile);
                for r in 0..MR {
                    for j in 0..NR {
                        // SAFETY: as above.
                        unsafe {
                            let d = c.add(r * ldc + j);
                            *d = if accumulate {
                                *d + tile[r * NR + j]
                            } else {
                                tile[r * NR + j]
                            };
                        }
                    }
                }
            }
        }
    }
}

/// The epilogue the fused micro-kernel applies to a finished MR×NR tile in
/// registers: `+ bias[row]`, then the residual and the clamp in the order
/// `residual_first` says. The operations are the unfused epilogue's, in its
/// order, so results are bit-identical.
#[derive(Clone, Copy, Debug)]
pub struct TileEpilogue {
    /// Bias of the tile's first row (null: none), or with `bias_per_column`
    /// the NR biases of its columns.
    pub bias: *const f32,
    /// Whether the bias varies along columns (token-major products, whose
    /// columns are features) rather than rows.
    pub bias_per_column: bool,
    /// Residual element (tile row 0, column 0) (null: none).
    pub residual: *const f32,
    /// Distance between the residual's rows.
    pub residual_ld: usize,
    /// Whether the residual is added before the activation.
    pub residual_first: bool,
    /// Activation (ReLU and ReLU6 inline; the others from `vmath.rs`).
    pub act: Option<netc_compiler::ir::Activation>,
}

impl Kernel {
    /// `out[MR×NR] = epilogue(prior + apanel[kc×MR]ᵀ · bpanel[kc×NR])`, `out`
    /// rows `out_ld` apart; `prior` (partial sums of earlier K blocks, rows
    /// `prior_ld` apart) may be null. Returns false, doing nothing, when this
    /// CPU has no fused kernel.
    ///
    /// # Safety
    /// `a` must hold `kc*MR` floats, `b` `kc*NR`; `out`, `prior` and the
    /// epilogue's pointers MR rows of NR floats at their strides (bias: MR).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn run_fused<A: TileRows, B: PanelRows>(
        self,
        kc: usize,
        a: A,
        b: B,
        prior: *const f32,
        prior_ld: usize,
        out: *mut f32,
        out_ld: usize,
        epilogue: &TileEpilogue,
    ) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            Kernel::Avx2Fma => unsafe {
                avx2::kernel_fused(kc, a, b, prior, prior_ld, out, out_ld, epilogue);
                true
            },
            _ => {
                let _ = (kc, a, b, prior, prior_ld, out, out_ld, epilogue);
                false
            }
        }
    }
}

impl Kernel {
    /// [`Kernel::run_into`] for a panel whose columns past `cols` and rows
    /// past `rows` are padding: with `cols <= NR / 2` only the first half of
    /// the tile is computed (half the multiply-adds), with fewer than MR
    /// rows only those rows, and only `cols` columns of `rows` rows of `c`
    /// are guaranteed written.
    ///
    /// # Safety
    /// As [`Kernel::run_into`].
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_into_cols(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        cols: usize,
        rows: usize,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            Kernel::Avx2Fma => unsafe {
                avx2::kernel_part_into(kc, a, b, c, ldc, accumulate, cols, rows)
            },
            // SAFETY: as above.
            _ => unsafe { self.run_into(kc, a, b, c, ldc, accumulate) },
        }
    }
}

impl Kernel {
    /// The row panels of A at `a` (`a_stride` floats apart, `panels` of
    /// them) times the first `cols` columns of one packed B panel, when
    /// `cols` is 1 or 2 and the CPU has AVX2 ([`avx2::narrow_panels`]);
    /// writes every panel's MR rows into `c` (rows `ldc` apart, adding to it
    /// with `accumulate`). Returns false, doing nothing, otherwise.
    ///
    /// # Safety
    /// As [`Kernel::run_into`] for each row panel, `c` holding
    /// `panels·MR` rows.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn run_narrow_panels<B: PanelRows>(
        self,
        kc: usize,
        a: *const f32,
        a_stride: usize,
        panels: usize,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        cols: usize,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx2Fma && (1..=2).contains(&cols) {
            macro_rules! go {
                ($p:literal, $c:literal) => {
                    // SAFETY: AVX2 and FMA checked; extents are the caller's.
                    unsafe {
                        avx2::narrow_panels::<$p, $c, _>(kc, a, a_stride, b, c, ldc, accumulate)
                    }
                };
            }
            match (panels, cols) {
                (1, 1) => go!(1, 1),
                (2, 1) => go!(2, 1),
                (3, 1) => go!(3, 1),
                (4, 1) => go!(4, 1),
                (1, _) => go!(1, 2),
                (2, _) => go!(2, 2),
                (3, _) => go!(3, 2),
                (4, _) => go!(4, 2),
                _ => return false,
            }
            return true;
        }
        let _ = (kc, a, a_stride, panels, b, c, ldc, accumulate, cols);
        false
    }
}

impl Kernel {
    /// [`Kernel::run_into`] with A read in place ([`RowPointers`] for
    /// token-major products, [`Windowed`] for pixel-major convolutions), for
    /// a tile whose first `rows` rows only are wanted. The AVX2 kernel reads
    /// A directly and does no multiply-adds for the rows past `rows` (a last,
    /// partial token panel: a classifier head over one token is all partial
    /// panel, and the six-row kernel ran MobileNetV2's 1280→1000 layer at
    /// 4.8 GFLOP/s); each row's sums are the full kernel's, bit for bit. The
    /// portable kernel computes all MR rows from a packed copy.
    ///
    /// # Safety
    /// As [`Kernel::run_into`], with every row of `a` holding `kc` floats
    /// (`kc` at most [`K_BLOCK`]) and `rows` at most [`MR`]; `c` holds MR
    /// rows either way.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_into_rows<A: TileRows>(
        self,
        kc: usize,
        a: A,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        rows: usize,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            Kernel::Avx2Fma => unsafe {
                avx2::kernel_some_rows_into(kc, a, b, c, ldc, accumulate, rows)
            },
            _ => {
                assert!(kc <= KC);
                let mut panel = [0f32; KC * MR];
                for kk in 0..kc {
                    for r in 0..MR {
                        // SAFETY: row r holds kc floats.
                        panel[kk * MR + r] = unsafe { *a.at(kk, r) };
                    }
                }
                // SAFETY: the panel holds kc·MR floats; the rest is the caller's.
                unsafe { self.run_into(kc, panel.as_ptr(), b, c, ldc, accumulate) }
            }
        }
    }

    /// One tile row (a single token's K run at `a`) against `panels`
    /// consecutive packed B panels, `panel_stride` floats apart, into
    /// `panels·NR` consecutive floats at `c` (added to them with
    /// `accumulate`). The AVX2 kernel runs four panels at a time: one row of
    /// one panel is two multiply-add chains, which leaves the FMA pipes
    /// waiting on their own latency (MobileNetV2's 1280→1000 classifier at
    /// 15–18 GFLOP/s in `conv_throughput`); four panels are eight. Each
    /// output is still one chain in K order, so the sums are
    /// [`Kernel::run_into_rows`]'s bit for bit.
    ///
    /// # Safety
    /// `a` holds `kc` floats (`kc` at most [`K_BLOCK`]), each panel `kc`
    /// rows of NR floats, `c` `panels·NR` floats.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_one_row_panels(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        panel_stride: usize,
        panels: usize,
        c: *mut f32,
        accumulate: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx2Fma {
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            unsafe { avx2::one_row_panels_into(kc, a, b, panel_stride, panels, c, accumulate) };
            return;
        }
        for p in 0..panels {
            // SAFETY: the caller's extents; the tile's other rows repeat
            // row 0 and land in a scratch tile, not in `c`.
            unsafe {
                let mut tile = [0f32; MR * NR];
                let out = c.add(p * NR);
                if accumulate {
                    std::ptr::copy_nonoverlapping(out, tile.as_mut_ptr(), NR);
                }
                self.run_into_rows(
                    kc,
                    RowPointers([a; MR]),
                    b.add(p * panel_stride),
                    tile.as_mut_ptr(),
                    NR,
                    accumulate,
                    1,
                );
                std::ptr::copy_nonoverlapping(tile.as_ptr(), out, NR);
            }
        }
    }

    /// [`Kernel::run_into_cols`] with B read in place. The AVX2 kernel reads
    /// it directly; the portable one from a packed copy.
    ///
    /// # Safety
    /// As [`Kernel::run_into`], with every row of `b` holding NR floats (`kc`
    /// at most [`K_BLOCK`]).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_into_cols_indirect(
        self,
        kc: usize,
        a: *const f32,
        b: Indirect,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        cols: usize,
        rows: usize,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only when the CPU has AVX2 and FMA; extents are the caller's.
            Kernel::Avx2Fma => unsafe {
                avx2::kernel_part_into(kc, a, b, c, ldc, accumulate, cols, rows)
            },
            _ => {
                assert!(kc <= KC);
                let mut panel = [0f32; KC * NR];
                for kk in 0..kc {
                    // SAFETY: row kk holds NR floats.
                    let row = unsafe { std::slice::from_raw_parts(b.row(kk), NR) };
                    panel[kk * NR..(kk + 1) * NR].copy_from_slice(row);
                }
                // SAFETY: the panel holds kc·NR floats; the rest is the caller's.
                let p = panel.as_ptr();
                unsafe { self.run_into_cols(kc, a, p, c, ldc, accumulate, cols, rows) }
            }
        }
    }
}

fn portable(kc: usize, a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    tile.fill(0.0);
    for kk in 0..kc {
        let bro = &b[kk * NR..kk * NR + NR];
        for r in 0..MR {
            let av = a[kk * MR + r];
            for (t, bv) in tile[r * NR..r * NR + NR].iter_mut().zip(bro) {
                // Not `mul_add`: without hardware FMA (the CPUs this kernel
                // is for) that is a libm call per element.
                *t += av * bv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PanelRows, TileRows, MR, NR};
    use netc_compiler::ir::Activation;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` must hold `kc*MR` and `b` `kc*NR` floats.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(kc: usize, a: *const f32, b: *const f32, tile: &mut [f32; MR * NR]) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(kk * MR + r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR), row[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8), row[1]);
        }
    }

    /// The R×NR sums (the first R rows of the MR-row panel) of one K block,
    /// two ymm accumulators per row.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` must hold `kc*MR` and `b` `kc*NR` floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_sums<const R: usize, A: TileRows, B: PanelRows>(
        kc: usize,
        a: A,
        b: B,
    ) -> [[__m256; 2]; R] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for kk in 0..kc {
            let row = b.row(kk);
            let b0 = _mm256_loadu_ps(row);
            let b1 = _mm256_loadu_ps(row.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.at(kk, r));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        acc
    }

    /// As [`kernel_into`] for the first 8 columns of the panel only: six
    /// accumulators, one B load per step.
    ///
    /// # Safety
    /// As [`kernel_into`]; `c` must hold `MR` rows of 8 floats at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_half_into<B: PanelRows>(
        kc: usize,
        a: *const f32,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let mut acc = [_mm256_setzero_ps(); MR];
        let mut a = a;
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(b.row(kk));
            for (r, row) in acc.iter_mut().enumerate() {
                *row = _mm256_fmadd_ps(_mm256_broadcast_ss(&*a.add(r)), b0, *row);
            }
            a = a.add(MR);
        }
        for (r, row) in acc.iter().enumerate() {
            let d = c.add(r * ldc);
            let v = if accumulate {
                _mm256_add_ps(*row, _mm256_loadu_ps(d))
            } else {
                *row
            };
            _mm256_storeu_ps(d, v);
        }
    }

    /// The first `C` (1 or 2) columns of one panel of B against `P` row
    /// panels of A (`a_stride` floats apart), with A's MR rows as the
    /// vector lanes: per step one load per row panel and one multiply-add
    /// per row panel and column, where [`kernel_half_into`] spends six
    /// multiply-adds per row panel on eight columns. Each row panel is its
    /// own chain of multiply-adds in step order, so every sum is formed as
    /// the other kernels form it (same bits). Writes all MR rows of each
    /// row panel, `ldc` apart, row panel after row panel.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; each row panel holds `kc·MR`
    /// floats, B `kc` rows; `c` holds `P·MR` rows of `C` floats.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn narrow_panels<const P: usize, const C: usize, B: PanelRows>(
        kc: usize,
        a: *const f32,
        a_stride: usize,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        const { assert!(MR <= 8 && P >= 1 && C >= 1) };
        let mut acc = [[_mm256_setzero_ps(); P]; C];
        // Whole vectors read two floats of the next step; the last step's
        // six are loaded under a mask (they may end the weights).
        let six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
        for kk in 0..kc {
            let mut av = [_mm256_setzero_ps(); P];
            for (i, av) in av.iter_mut().enumerate() {
                // SAFETY: row panel i holds kc·MR floats; below the last
                // step a whole vector ends inside it.
                *av = unsafe {
                    let p = a.add(i * a_stride + kk * MR);
                    if kk + 1 < kc {
                        _mm256_loadu_ps(p)
                    } else {
                        _mm256_maskload_ps(p, six)
                    }
                };
            }
            // SAFETY: B holds kc rows of at least C floats.
            let row = unsafe { b.row(kk) };
            for (j, acc) in acc.iter_mut().enumerate() {
                let bv = unsafe { _mm256_broadcast_ss(&*row.add(j)) };
                for i in 0..P {
                    acc[i] = _mm256_fmadd_ps(av[i], bv, acc[i]);
                }
            }
        }
        let mut lanes = [[[0f32; 8]; P]; C];
        for (acc, lanes) in acc.iter().zip(lanes.iter_mut()) {
            for (v, l) in acc.iter().zip(lanes.iter_mut()) {
                unsafe { _mm256_storeu_ps(l.as_mut_ptr(), *v) };
            }
        }
        for i in 0..P {
            for r in 0..MR {
                for (j, lanes) in lanes.iter().enumerate() {
                    // SAFETY: the caller's extents.
                    unsafe {
                        let d = c.add((i * MR + r) * ldc + j);
                        *d = if accumulate {
                            *d + lanes[i][r]
                        } else {
                            lanes[i][r]
                        };
                    }
                }
            }
        }
    }

    /// The kernel for a tile with `cols` columns and `rows` rows that are
    /// not padding: the half-width kernel for at most NR/2 columns, else
    /// one computing only the rows present.
    ///
    /// # Safety
    /// As [`kernel_into`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn kernel_part_into<B: PanelRows>(
        kc: usize,
        a: *const f32,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        cols: usize,
        rows: usize,
    ) {
        // SAFETY: the caller's extents.
        unsafe {
            if cols <= NR / 2 {
                kernel_half_into(kc, a, b, c, ldc, accumulate)
            } else {
                kernel_some_rows_into(kc, a, b, c, ldc, accumulate, rows)
            }
        }
    }

    /// [`kernel_rows_into`] for the first `rows` rows (all MR from MR on):
    /// no multiply-adds for the rows past them.
    ///
    /// # Safety
    /// As [`kernel_into`]; `c` must hold `rows.min(MR)` rows.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn kernel_some_rows_into<A: TileRows, B: PanelRows>(
        kc: usize,
        a: A,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        rows: usize,
    ) {
        // SAFETY: the caller's extents.
        unsafe {
            match rows {
                1 => kernel_rows_into::<1, _, _>(kc, a, b, c, ldc, accumulate),
                2 => kernel_rows_into::<2, _, _>(kc, a, b, c, ldc, accumulate),
                3 => kernel_rows_into::<3, _, _>(kc, a, b, c, ldc, accumulate),
                4 => kernel_rows_into::<4, _, _>(kc, a, b, c, ldc, accumulate),
                5 => kernel_rows_into::<5, _, _>(kc, a, b, c, ldc, accumulate),
                _ => kernel_into(kc, a, b, c, ldc, accumulate),
            }
        }
    }

    /// The kernel behind [`super::Kernel::run_one_row_panels`]: groups of
    /// up to four panels.
    ///
    /// # Safety
    /// As [`super::Kernel::run_one_row_panels`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn one_row_panels_into(
        kc: usize,
        a: *const f32,
        b: *const f32,
        panel_stride: usize,
        panels: usize,
        c: *mut f32,
        accumulate: bool,
    ) {
        let mut p = 0;
        while p < panels {
            let (b, c) = (b.add(p * panel_stride), c.add(p * NR));
            match panels - p {
                1 => one_row_group::<1>(kc, a, b, panel_stride, c, accumulate),
                2 => one_row_group::<2>(kc, a, b, panel_stride, c, accumulate),
                3 => one_row_group::<3>(kc, a, b, panel_stride, c, accumulate),
                _ => one_row_group::<4>(kc, a, b, panel_stride, c, accumulate),
            }
            p += 4;
        }
    }

    /// `P` panels of [`one_row_panels_into`]: per K step one broadcast and
    /// `2·P` multiply-adds, each output's chain in K order as in [`tile_sums`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn one_row_group<const P: usize>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        panel_stride: usize,
        c: *mut f32,
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for kk in 0..kc {
            let av = _mm256_broadcast_ss(&*a.add(kk));
            for (p, acc) in acc.iter_mut().enumerate() {
                let row = b.add(p * panel_stride + kk * NR);
                acc[0] = _mm256_fmadd_ps(av, _mm256_loadu_ps(row), acc[0]);
                acc[1] = _mm256_fmadd_ps(av, _mm256_loadu_ps(row.add(8)), acc[1]);
            }
        }
        // The panels' sums are consecutive: rows NR apart.
        store_rows(&acc, c, NR, accumulate);
    }

    /// Stores each row of sums (16 floats, `ldc` apart from `c`), or with
    /// `accumulate` adds it to what is there.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store_rows(acc: &[[__m256; 2]], c: *mut f32, ldc: usize, accumulate: bool) {
        for (r, row) in acc.iter().enumerate() {
            let d = c.add(r * ldc);
            if accumulate {
                _mm256_storeu_ps(d, _mm256_add_ps(row[0], _mm256_loadu_ps(d)));
                _mm256_storeu_ps(d.add(8), _mm256_add_ps(row[1], _mm256_loadu_ps(d.add(8))));
            } else {
                _mm256_storeu_ps(d, row[0]);
                _mm256_storeu_ps(d.add(8), row[1]);
            }
        }
    }

    /// The fused kernel behind [`super::Kernel::run_fused`].
    ///
    /// # Safety
    /// As [`super::Kernel::run_fused`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn kernel_fused<A: TileRows, B: PanelRows>(
        kc: usize,
        a: A,
        b: B,
        prior: *const f32,
        prior_ld: usize,
        out: *mut f32,
        out_ld: usize,
        e: &super::TileEpilogue,
    ) {
        let mut acc = tile_sums::<MR, _, _>(kc, a, b);
        for (r, v) in acc.iter_mut().enumerate() {
            if !prior.is_null() {
                // Earlier K blocks first, as the unfused path adds them.
                let p = prior.add(r * prior_ld);
                *v = [
                    _mm256_add_ps(_mm256_loadu_ps(p), v[0]),
                    _mm256_add_ps(_mm256_loadu_ps(p.add(8)), v[1]),
                ];
            }
            if e.bias_per_column {
                *v = [
                    _mm256_add_ps(v[0], _mm256_loadu_ps(e.bias)),
                    _mm256_add_ps(v[1], _mm256_loadu_ps(e.bias.add(8))),
                ];
            } else if !e.bias.is_null() {
                let bv = _mm256_broadcast_ss(&*e.bias.add(r));
                *v = [_mm256_add_ps(v[0], bv), _mm256_add_ps(v[1], bv)];
            }
        }
        let residual = |acc: &mut [[__m256; 2]; MR]| {
            if e.residual.is_null() {
                return;
            }
            for (r, v) in acc.iter_mut().enumerate() {
                let p = e.residual.add(r * e.residual_ld);
                *v = [
                    _mm256_add_ps(v[0], _mm256_loadu_ps(p)),
                    _mm256_add_ps(v[1], _mm256_loadu_ps(p.add(8))),
                ];
            }
        };
        if e.residual_first {
            residual(&mut acc);
        }
        match e.act {
            None => {}
            // Clamps on the registers: `act_tile` is too large to be inlined,
            // and handing it the accumulators spills all twelve to the stack
            // and back (8.8% of a 16-deep 1×1 convolution's time in `perf`).
            Some(Activation::Relu) => {
                let zero = _mm256_setzero_ps();
                for v in acc.iter_mut() {
                    *v = [_mm256_max_ps(v[0], zero), _mm256_max_ps(v[1], zero)];
                }
            }
            Some(Activation::Relu6) => {
                let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
                for v in acc.iter_mut() {
                    *v = [
                        _mm256_min_ps(_mm256_max_ps(v[0], zero), six),
                        _mm256_min_ps(_mm256_max_ps(v[1], zero), six),
                    ];
                }
            }
            // Smooth activations cost far more than the spill.
            Some(act) => acc = act_call(act, acc),
        }
        if !e.residual_first {
            residual(&mut acc);
        }
        for (r, v) in acc.iter().enumerate() {
            let d = out.add(r * out_ld);
            _mm256_storeu_ps(d, v[0]);
            _mm256_storeu_ps(d.add(8), v[1]);
        }
    }

    /// A smooth activation over a tile's accumulators, out of line so that
    /// [`kernel_fused`] stays small and passes its registers by value.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn act_call(a: Activation, mut acc: [[__m256; 2]; MR]) -> [[__m256; 2]; MR] {
        crate::backend::cpu::vmath::act_tile(a, acc.as_flattened_mut());
        acc
    }

    /// As [`kernel`], storing (or adding) into `c` with row stride `ldc`.
    ///
    /// # Safety
    /// As [`kernel`]; `c` must hold `MR` rows of `NR` floats at stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_into<A: TileRows, B: PanelRows>(
        kc: usize,
        a: A,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        unsafe { kernel_rows_into::<MR, A, B>(kc, a, b, c, ldc, accumulate) }
    }

    /// As [`kernel_into`] for the first `R` rows of the panel only (a last,
    /// partial row panel: no multiply-adds for its padding rows).
    ///
    /// # Safety
    /// As [`kernel_into`]; `c` must hold `R` rows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_rows_into<const R: usize, A: TileRows, B: PanelRows>(
        kc: usize,
        a: A,
        b: B,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let acc = tile_sums::<R, _, _>(kc, a, b);
        store_rows(&acc, c, ldc, accumulate);
    }
}

/// The AVX-512 tiles: MR rows × `P` sixteen-wide panels, one zmm register
/// per row and panel (up to 24 accumulators). Pixel-major convolutions
/// (`conv/pixels.rs`) run them with pixels as rows and channels as
/// columns; the channel-major driver (`Problem::zmm_row_tiles`) with
/// output channels as rows and positions as columns, B packed or read in
/// place ([`avx512::tile_rows`]). Each step loads `P` whole 16-wide rows
/// and broadcasts one value per tile row, so the loads per multiply-add are
/// a quarter of the 6×16 ymm tile's at P = 4 (Zen 4 runs a zmm FMA as two
/// ymm halves: the same peak, fewer instructions to issue).
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use super::{TileRows, MR, NR};
    use std::arch::x86_64::*;

    /// Whether this CPU has AVX-512F (and `NETC_NO_AVX512` is not set, as
    /// for `vmath16`): read once per process.
    pub fn available() -> bool {
        crate::backend::cpu::vmath16::available()
    }

    /// `c[r][q·NR..] (+)= Σ_kk a(kk, r) · b_q[kk]` for r < MR, q < P, where
    /// `b_q` is the `kc`×NR panel at `b + q·kc·NR`; `c` rows `ldc` apart.
    ///
    /// # Safety
    /// The CPU must support AVX-512F ([`available`]); `a` must be readable
    /// for `kc` rows, `b` hold `P` panels of `kc`×NR floats and `c` MR rows
    /// of `P·NR` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile<const P: usize, A: TileRows>(
        kc: usize,
        a: A,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's.
        let acc = unsafe { sums::<P, A>(kc, a, b) };
        // SAFETY: as for this function.
        unsafe { store(acc, c, ldc, accumulate) };
    }

    /// [`tile`] over `panels` (1 to 4; more are taken as 4) panels, chosen
    /// at run time: the callers' last group of a block is often narrower.
    ///
    /// # Safety
    /// As [`tile`] with P = `panels.min(4)`.
    #[inline(always)]
    pub unsafe fn tiles<A: TileRows>(
        panels: usize,
        kc: usize,
        a: A,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's, for the P chosen.
        unsafe {
            match panels {
                1 => tile::<1, A>(kc, a, b, c, ldc, accumulate),
                2 => tile::<2, A>(kc, a, b, c, ldc, accumulate),
                3 => tile::<3, A>(kc, a, b, c, ldc, accumulate),
                _ => tile::<4, A>(kc, a, b, c, ldc, accumulate),
            }
        }
    }

    /// `c[r][q·NR..] (+)= acc[r][q]`, rows `ldc` apart.
    ///
    /// # Safety
    /// AVX-512F; `c` holds MR rows of P·NR floats.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store<const P: usize>(
        acc: [[__m512; P]; MR],
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            for (q, v) in acc.iter().enumerate() {
                // SAFETY: row r of c holds P·NR floats.
                unsafe {
                    let d = c.add(r * ldc + q * NR);
                    let v = if accumulate {
                        _mm512_add_ps(*v, _mm512_loadu_ps(d))
                    } else {
                        *v
                    };
                    _mm512_storeu_ps(d, v);
                }
            }
        }
    }

    /// The MR×P·NR sums of one K block (see [`tile`]), in registers.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums<const P: usize, A: TileRows>(
        kc: usize,
        a: A,
        b: *const f32,
    ) -> [[__m512; P]; MR] {
        // SAFETY: the caller's; panel q's row kk is at b + q·kc·NR + kk·NR.
        unsafe { sums_at::<P, A>(kc, a, b, NR, kc * NR) }
    }

    /// [`sums`] with B's row `kk` of panel `q` at `b + kk·row + q·panel`:
    /// packed panels (`row` NR, `panel` kc·NR) or, for a 1×1 convolution
    /// read in place, the channel rows of its input or of a strided 1×1
    /// window's padded copy (`row` the row stride, `panel` NR: P·NR
    /// consecutive positions of each channel).
    ///
    /// # Safety
    /// As [`tile`], for those rows.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sums_at<const P: usize, A: TileRows>(
        kc: usize,
        a: A,
        b: *const f32,
        row: usize,
        panel: usize,
    ) -> [[__m512; P]; MR] {
        const { assert!(P >= 1 && P <= 4 && NR == 16) };
        let mut acc = [[_mm512_setzero_ps(); P]; MR];
        for kk in 0..kc {
            let mut w = [_mm512_setzero_ps(); P];
            for (q, w) in w.iter_mut().enumerate() {
                // SAFETY: the caller's rows.
                *w = unsafe { _mm512_loadu_ps(b.add(q * panel + kk * row)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the caller's bound on kk.
                let x = _mm512_set1_ps(unsafe { *a.at(kk, r) });
                for q in 0..P {
                    acc[q] = _mm512_fmadd_ps(x, w[q], acc[q]);
                }
            }
        }
        acc
    }

    /// The last K block of a pixel-major tile with its epilogue, stored
    /// channel-major: `out[c·out_ld + r] = epilogue(prior[r][c] + Σ_kk
    /// a(kk, r) · b_c[kk])` for the first `mr` pixels r and the P·NR
    /// channels c. `prior` (the earlier K blocks' sums, pixel rows
    /// `prior_ld` apart, as [`tile`] leaves them) may be null. The
    /// epilogue's bias holds the P·NR channels' biases (`bias_per_column`
    /// is not read: a pixel-major tile's columns are channels) and its
    /// residual, with the output's layout, starts at channel 0, pixel 0,
    /// channels `residual_ld` apart; its activation must be ReLU, ReLU6 or
    /// none. The sums, bias, residual and clamp are the channel-major
    /// epilogue's operations in its order (same bits); 8×8 register
    /// transposes turn each panel's six pixel rows into channel rows on the
    /// way out, where the unfused path stores the sums, turns them around
    /// in memory and reads them back for the epilogue.
    ///
    /// # Safety
    /// As [`tile`], and on a CPU with AVX2 and FMA; `1 <= mr <= MR`; `out`
    /// (and the residual) hold P·NR channel rows of `mr` floats.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_fused<const P: usize, A: TileRows>(
        kc: usize,
        a: A,
        b: *const f32,
        prior: *const f32,
        prior_ld: usize,
        mr: usize,
        e: &super::TileEpilogue,
        out: *mut f32,
        out_ld: usize,
    ) {
        use netc_compiler::ir::Activation;
        debug_assert!((1..=MR).contains(&mr));
        // SAFETY: the caller's.
        let mut acc = unsafe { sums::<P, A>(kc, a, b) };
        for (r, acc) in acc.iter_mut().enumerate() {
            for (q, v) in acc.iter_mut().enumerate() {
                if !prior.is_null() {
                    // SAFETY: prior row r holds P·NR floats.
                    *v = _mm512_add_ps(*v, unsafe {
                        _mm512_loadu_ps(prior.add(r * prior_ld + q * NR))
                    });
                }
                if !e.bias.is_null() {
                    // SAFETY: the bias holds P·NR floats.
                    *v = _mm512_add_ps(*v, unsafe { _mm512_loadu_ps(e.bias.add(q * NR)) });
                }
            }
        }
        let (zero, six) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        // Six pixels' lanes of one channel row: whole vector parts where
        // all six are there, else through a buffer.
        let load = |p: *const f32| -> __m256 {
            // SAFETY: the caller's extents: mr floats at p.
            unsafe {
                if mr == MR {
                    let lo = _mm_loadu_ps(p);
                    let hi = _mm_castpd_ps(_mm_load_sd(p.add(4) as *const f64));
                    _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(lo), hi)
                } else {
                    let mut buf = [0f32; 8];
                    std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), mr);
                    _mm256_loadu_ps(buf.as_ptr())
                }
            }
        };
        let store = |p: *mut f32, v: __m256| {
            // SAFETY: as for `load`.
            unsafe {
                if mr == MR {
                    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
                    _mm_store_sd(
                        p.add(4) as *mut f64,
                        _mm_castps_pd(_mm256_extractf128_ps::<1>(v)),
                    );
                } else {
                    let mut buf = [0f32; 8];
                    _mm256_storeu_ps(buf.as_mut_ptr(), v);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), p, mr);
                }
            }
        };
        // Panel by panel across the pixel rows (`acc[r][q]`), which the
        // unrolled loops index with constants.
        #[allow(clippy::needless_range_loop)]
        for q in 0..P {
            for half in 0..2 {
                // Pixel rows of eight channels (rows 6 and 7 unused).
                let mut rows = [zero; 8];
                for (r, row) in rows.iter_mut().take(MR).enumerate() {
                    let v = acc[r][q];
                    *row = if half == 0 {
                        _mm512_castps512_ps256(v)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
                    };
                }
                let channels = crate::backend::cpu::vmath::transpose8(rows);
                for (i, v) in channels.iter().enumerate() {
                    let c = q * NR + half * 8 + i;
                    let mut v = *v;
                    let residual = || {
                        // SAFETY: the residual holds channel c's mr floats.
                        load(unsafe { e.residual.add(c * e.residual_ld) })
                    };
                    if !e.residual.is_null() && e.residual_first {
                        v = _mm256_add_ps(v, residual());
                    }
                    v = match e.act {
                        None => v,
                        Some(Activation::Relu) => _mm256_max_ps(v, zero),
                        Some(Activation::Relu6) => _mm256_min_ps(_mm256_max_ps(v, zero), six),
                        Some(a) => unreachable!("{a:?} is not fused into pixel-major tiles"),
                    };
                    if !e.residual.is_null() && !e.residual_first {
                        v = _mm256_add_ps(v, residual());
                    }
                    // SAFETY: channel row c of out holds mr floats.
                    store(unsafe { out.add(c * out_ld) }, v);
                }
            }
        }
    }

    /// The last K block of a token-major tile with its epilogue, stored
    /// token-major: rows are MR tokens (`a`), columns the P·NR features of
    /// the packed weight panels `b`; `out[r·out_ld + c] = epilogue(prior[r]
    /// [c] + Σ_kk a(kk, r) · b_c[kk])`. `prior` (earlier K blocks' sums,
    /// rows `prior_ld` apart) may be null. The epilogue's bias holds the
    /// P·NR features' biases (`bias_per_column` set), its residual
    /// rows of P·NR features `residual_ld` apart; its activation must be
    /// ReLU, ReLU6 or none. The operations are the token epilogue's
    /// (`Problem::token_epilogue`) in its order, so the same bits, from
    /// the registers rather than from the sums stored and read back.
    ///
    /// # Safety
    /// As [`tile`]; `out`, `prior` and the residual hold MR rows of P·NR
    /// floats at their strides, the bias P·NR floats.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_tokens_fused<const P: usize, A: TileRows>(
        kc: usize,
        a: A,
        b: *const f32,
        prior: *const f32,
        prior_ld: usize,
        e: &super::TileEpilogue,
        out: *mut f32,
        out_ld: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { store_finished(sums::<P, A>(kc, a, b), prior, prior_ld, e, out, out_ld) }
    }

    /// Stores a fused tile's last K block, each register through
    /// [`finish`]: the bias per column (`e.bias_per_column`: P·NR floats)
    /// or per row (MR floats), rows `out_ld` apart.
    ///
    /// # Safety
    /// AVX-512F; `out`, `prior` (unless null) and the residual hold MR rows
    /// of P·NR floats at their strides; `e.act` ReLU, ReLU6 or none.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_finished<const P: usize>(
        acc: [[__m512; P]; MR],
        prior: *const f32,
        prior_ld: usize,
        e: &super::TileEpilogue,
        out: *mut f32,
        out_ld: usize,
    ) {
        for (r, acc) in acc.iter().enumerate() {
            for (q, v) in acc.iter().enumerate() {
                // SAFETY: the caller's extents, row r and column q·NR.
                unsafe {
                    let bias = match (e.bias.is_null(), e.bias_per_column) {
                        (true, _) => None,
                        (false, true) => Some(_mm512_loadu_ps(e.bias.add(q * NR))),
                        (false, false) => Some(_mm512_set1_ps(*e.bias.add(r))),
                    };
                    let prior = if prior.is_null() {
                        prior
                    } else {
                        prior.add(r * prior_ld + q * NR)
                    };
                    let v = finish(*v, prior, bias, r * e.residual_ld + q * NR, e);
                    _mm512_storeu_ps(out.add(r * out_ld + q * NR), v);
                }
            }
        }
    }

    /// One register of a fused tile's last K block: the earlier blocks'
    /// sums at `prior` (unless `prior` is null), the bias, the residual
    /// (`e.residual` + `residual_at`) and the clamp in the order `e`
    /// gives, each a separate rounding as in the unfused epilogues.
    ///
    /// # Safety
    /// AVX-512F; `prior` (where `e.residual` is not null, the residual)
    /// readable for 16 floats; `e.act` ReLU, ReLU6 or none.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn finish(
        mut v: __m512,
        prior: *const f32,
        bias: Option<__m512>,
        residual_at: usize,
        e: &super::TileEpilogue,
    ) -> __m512 {
        use netc_compiler::ir::Activation;
        let (zero, six) = (_mm512_setzero_ps(), _mm512_set1_ps(6.0));
        // SAFETY: the caller's.
        unsafe {
            if !prior.is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(prior));
            }
            if let Some(b) = bias {
                v = _mm512_add_ps(v, b);
            }
            // Only read where the residual is not null.
            let residual = e.residual.wrapping_add(residual_at);
            if !e.residual.is_null() && e.residual_first {
                v = _mm512_add_ps(v, _mm512_loadu_ps(residual));
            }
            v = match e.act {
                None => v,
                Some(Activation::Relu) => _mm512_max_ps(v, zero),
                Some(Activation::Relu6) => _mm512_min_ps(_mm512_max_ps(v, zero), six),
                Some(a) => unreachable!("{a:?} is not fused into zmm tiles"),
            };
            if !e.residual.is_null() && !e.residual_first {
                v = _mm512_add_ps(v, _mm512_loadu_ps(residual));
            }
        }
        v
    }

    /// [`tile`] with B's rows where [`sums_at`] says (`b`, `row`, `panel`).
    ///
    /// # Safety
    /// As [`tile`], for those rows.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_rows<const P: usize>(
        kc: usize,
        a: *const f32,
        (b, row, panel): (*const f32, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's.
        let acc = unsafe { sums_at::<P, *const f32>(kc, a, b, row, panel) };
        // SAFETY: as for this function.
        unsafe { store(acc, c, ldc, accumulate) };
    }

    /// [`tile_rows`] over `panels` (1 to 4; more are taken as 4) column
    /// panels, chosen at run time.
    ///
    /// # Safety
    /// As [`tile_rows`] with P = `panels.min(4)`.
    #[inline(always)]
    pub unsafe fn tiles_rows(
        panels: usize,
        kc: usize,
        a: *const f32,
        b: (*const f32, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's, for the P chosen.
        unsafe {
            match panels {
                1 => tile_rows::<1>(kc, a, b, c, ldc, accumulate),
                2 => tile_rows::<2>(kc, a, b, c, ldc, accumulate),
                3 => tile_rows::<3>(kc, a, b, c, ldc, accumulate),
                _ => tile_rows::<4>(kc, a, b, c, ldc, accumulate),
            }
        }
    }

    /// The last K block of a channel-major tile (rows: MR output channels
    /// of the packed weights `a`; columns: P·NR positions of B, its rows
    /// where [`sums_at`] says for `(b, row, panel)`) with its epilogue,
    /// stored to `out` (rows
    /// `out_ld` apart): `prior` (earlier K blocks' sums, rows `prior_ld`
    /// apart, or null) first, then the bias of each row, the residual (rows
    /// `residual_ld` apart) and the clamp in the order `e` gives: the fused
    /// AVX2 kernel's operations in its order, so the same bits. `e.act`
    /// must be ReLU, ReLU6 or none; `bias_per_column` unset.
    ///
    /// # Safety
    /// As [`tile`]; `out`, `prior` and the residual hold MR rows of P·NR
    /// floats, the bias MR floats.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile_rows_fused<const P: usize>(
        kc: usize,
        a: *const f32,
        (b, row, panel): (*const f32, usize, usize),
        prior: *const f32,
        prior_ld: usize,
        e: &super::TileEpilogue,
        out: *mut f32,
        out_ld: usize,
    ) {
        // SAFETY: the caller's.
        unsafe {
            let acc = sums_at::<P, *const f32>(kc, a, b, row, panel);
            store_finished(acc, prior, prior_ld, e, out, out_ld)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn matches_a_naive_product_on_awkward_shapes() {
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 7),
            (6, 16, 16),
            (13, 300, 33),
            (64, 27, 50),
            (7, 513, 17),
            // Five full panels and a partial one, two K blocks: the zmm
            // tiles' groups of four, one, and the ymm kernel's remainder.
            (13, 300, 90),
            (12, 64, 197),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let want = naive(&a, &b, m, k, n);
            let mut c = vec![1f32; m * n];
            let av = MatRef {
                data: &a,
                rows: m,
                cols: k,
                stride: k,
            };
            let bv = MatRef {
                data: &b,
                rows: k,
                cols: n,
                stride: n,
            };
            sgemm(av, bv, &mut c, n, false);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (*x as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{m}x{k}x{n}: {x} vs {y}"
                );
            }
            // Accumulating adds to what is there.
            sgemm(av, bv, &mut c, n, true);
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (*x as f64 - 2.0 * y).abs() <= 2e-4 * (1.0 + y.abs()),
                    "{m}x{k}x{n} accumulate"
                );
            }
        }
    }

    /// The kernels for partial tiles (half width; fewer rows) give the full
    /// kernel's bits on the columns and rows they own.
    #[test]
    fn partial_tile_kernels_match_the_full_one_on_their_part() {
        let a: Vec<f32> = (0..37 * MR).map(|i| (i % 7) as f32 * 0.3 - 0.9).collect();
        let b: Vec<f32> = (0..37 * NR).map(|i| (i % 5) as f32 * 0.7 - 1.3).collect();
        let kernel = Kernel::detect();
        for accumulate in [false, true] {
            let mut full = vec![1.5f32; MR * NR];
            // SAFETY: panels of 37 steps, tiles of MR×NR.
            unsafe {
                kernel.run_into(
                    37,
                    a.as_ptr(),
                    b.as_ptr(),
                    full.as_mut_ptr(),
                    NR,
                    accumulate,
                )
            };
            for (cols, rows) in [(5, MR), (8, 3), (16, 1), (9, 2), (16, 3), (12, 4), (16, 5)] {
                let mut part = vec![1.5f32; MR * NR];
                // SAFETY: as above.
                unsafe {
                    kernel.run_into_cols(
                        37,
                        a.as_ptr(),
                        b.as_ptr(),
                        part.as_mut_ptr(),
                        NR,
                        accumulate,
                        cols,
                        rows,
                    )
                };
                for r in 0..rows {
                    assert_eq!(
                        full[r * NR..r * NR + cols],
                        part[r * NR..r * NR + cols],
                        "{cols} columns, {rows} rows, row {r}"
                    );
                }
            }
        }
    }

    /// One row against several panels at once gives, panel by panel, the
    /// bits of the one-row kernel, on this CPU's kernel and the portable one,
    /// for group sizes 1 to 4 and a remainder.
    #[test]
    fn one_row_panels_match_the_one_row_kernel() {
        const K: usize = 45;
        let a: Vec<f32> = (0..K).map(|i| (i % 7) as f32 * 0.3 - 0.9).collect();
        let stride = K * NR + 3;
        let b: Vec<f32> = (0..7 * stride)
            .map(|i| (i % 11) as f32 * 0.7 - 1.3)
            .collect();
        for kernel in [Kernel::Portable, Kernel::detect()] {
            for panels in 1..=7 {
                for accumulate in [false, true] {
                    let mut together: Vec<f32> =
                        (0..panels * NR).map(|i| i as f32 * 0.25).collect();
                    let expected: Vec<f32> = (0..panels)
                        .flat_map(|p| {
                            let mut tile = [0f32; MR * NR];
                            tile[..NR].copy_from_slice(&together[p * NR..(p + 1) * NR]);
                            // SAFETY: a holds K floats, each panel K rows of NR.
                            unsafe {
                                kernel.run_into_rows(
                                    K,
                                    RowPointers([a.as_ptr(); MR]),
                                    b.as_ptr().add(p * stride),
                                    tile.as_mut_ptr(),
                                    NR,
                                    accumulate,
                                    1,
                                )
                            };
                            tile[..NR].to_vec()
                        })
                        .collect();
                    // SAFETY: as above; `together` holds panels·NR floats.
                    unsafe {
                        kernel.run_one_row_panels(
                            K,
                            a.as_ptr(),
                            b.as_ptr(),
                            stride,
                            panels,
                            together.as_mut_ptr(),
                            accumulate,
                        )
                    };
                    assert_eq!(together, expected, "{kernel:?}, {panels} panels");
                }
            }
        }
    }

    /// The narrow kernel (one or two columns, row panels as lanes) gives
    /// the full kernel's bits on every row panel, including when the last
    /// panel ends the weights (its last step is read under a mask).
    #[test]
    fn narrow_panels_match_the_full_kernel() {
        let kernel = Kernel::detect();
        for kc in [1, 6, 37] {
            let a: Vec<f32> = (0..4 * kc * MR)
                .map(|i| (i % 7) as f32 * 0.3 - 0.9)
                .collect();
            let b: Vec<f32> = (0..kc * NR).map(|i| (i % 5) as f32 * 0.7 - 1.3).collect();
            for panels in 1..=4 {
                // The weights end with the last panel read.
                let a = &a[(4 - panels) * kc * MR..];
                for cols in 1..=2 {
                    for accumulate in [false, true] {
                        let mut narrow = vec![1.5f32; panels * MR * cols];
                        // SAFETY: `panels` panels of kc steps; `narrow` holds
                        // panels·MR rows of `cols` floats.
                        let ran = unsafe {
                            kernel.run_narrow_panels(
                                kc,
                                a.as_ptr(),
                                kc * MR,
                                panels,
                                b.as_ptr(),
                                narrow.as_mut_ptr(),
                                cols,
                                accumulate,
                                cols,
                            )
                        };
                        if !ran {
                            assert_ne!(kernel, Kernel::Avx2Fma);
                            return;
                        }
                        for p in 0..panels {
                            let mut full = vec![1.5f32; MR * NR];
                            // SAFETY: one panel of kc steps, a tile of MR×NR.
                            unsafe {
                                kernel.run_into(
                                    kc,
                                    a[p * kc * MR..].as_ptr(),
                                    b.as_ptr(),
                                    full.as_mut_ptr(),
                                    NR,
                                    accumulate,
                                )
                            };
                            for r in 0..MR {
                                assert_eq!(
                                    full[r * NR..r * NR + cols],
                                    narrow[(p * MR + r) * cols..][..cols],
                                    "kc {kc}, {panels} panels, {cols} columns, panel {p} row {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn operands_read_in_place_give_the_packed_results() {
        let kc = 37;
        let a: Vec<f32> = (0..kc * MR).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..kc * NR).map(|i| (i % 5) as f32 - 2.0).collect();
        // A as six rows of kc (row r, step kk at r·kc + kk).
        let rows: Vec<f32> = (0..MR * kc).map(|i| a[(i % kc) * MR + i / kc]).collect();
        let ptrs = RowPointers(std::array::from_fn(|r| rows[r * kc..].as_ptr()));
        // B rows scattered with a gap of 3 floats between them.
        let spread: Vec<f32> = (0..kc * (NR + 3))
            .map(|i| {
                if i % (NR + 3) < NR {
                    b[i / (NR + 3) * NR + i % (NR + 3)]
                } else {
                    f32::NAN
                }
            })
            .collect();
        let offsets: Vec<usize> = (0..kc).map(|kk| kk * (NR + 3)).collect();
        let ind = Indirect {
            base: spread.as_ptr(),
            offsets: offsets.as_ptr(),
        };
        for kernel in [Kernel::Portable, Kernel::detect()] {
            let mut want = [0f32; MR * NR];
            Kernel::Portable.run(kc, &a, &b, &mut want);
            let (mut t1, mut t2) = ([0f32; MR * NR], [0f32; MR * NR]);
            // SAFETY: every operand holds kc steps; the tiles MR×NR.
            unsafe {
                kernel.run_into_rows(kc, ptrs, b.as_ptr(), t1.as_mut_ptr(), NR, false, MR);
                kernel.run_into_cols_indirect(
                    kc,
                    a.as_ptr(),
                    ind,
                    t2.as_mut_ptr(),
                    NR,
                    false,
                    NR,
                    MR,
                );
            }
            assert_eq!(t1, want, "{kernel:?} rows");
            assert_eq!(t2, want, "{kernel:?} indirect");
        }
    }

    #[test]
    fn both_kernels_agree() {
        let a: Vec<f32> = (0..40 * MR).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..40 * NR).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut t1 = [0f32; MR * NR];
        let mut t2 = [0f32; MR * NR];
        Kernel::Portable.run(40, &a, &b, &mut t1);
        Kernel::detect().run(40, &a, &b, &mut t2);
        assert_eq!(t1, t2);
    }
}

/// `cargo test --release -p netc-runtime gemm_throughput -- --ignored --nocapture`:
/// single-thread GFLOP/s of [`sgemm`] on square matrices.
#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "a measurement, not a check"]
    fn gemm_throughput() {
        for size in [256usize, 512, 1024] {
            let a = vec![0.5f32; size * size];
            let b = vec![0.25f32; size * size];
            let mut c = vec![0f32; size * size];
            let av = MatRef {
                data: &a,
                rows: size,
                cols: size,
                stride: size,
            };
            let bv = MatRef {
                data: &b,
                rows: size,
                cols: size,
                stride: size,
            };
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                sgemm(av, bv, &mut c, size, false);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gflops = 2.0 * (size as f64).powi(3) / best / 1e9;
            println!(
                "sgemm {size}^3 ({:?}): best {:.2} ms, {gflops:.1} GFLOP/s",
                Kernel::detect(),
                best * 1e3
            );
        }
    }

    /// `cargo test --release -p netc-runtime kernel_peak -- --ignored --nocapture`:
    /// the micro-kernel alone with both panels in L1, the ceiling for the drivers.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn kernel_peak() {
        let a = vec![0.5f32; K_BLOCK * MR];
        let b = vec![0.25f32; K_BLOCK * NR];
        let mut c = vec![0f32; MR * NR];
        let kernel = Kernel::detect();
        let mut best = f64::MAX;
        for _ in 0..10 {
            let t = std::time::Instant::now();
            for _ in 0..10_000 {
                // SAFETY: the panels hold K_BLOCK steps and c one tile.
                unsafe {
                    kernel.run_into(K_BLOCK, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), NR, true)
                };
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (K_BLOCK * MR * NR * 10_000) as f64;
        println!(
            "micro-kernel ({kernel:?}): {:.1} GFLOP/s",
            flops / best / 1e9
        );
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            let b = vec![0.25f32; 4 * K_BLOCK * NR];
            let mut c = vec![0f32; MR * 4 * NR];
            macro_rules! zmm {
                ($p:literal) => {{
                    let mut best = f64::MAX;
                    for _ in 0..10 {
                        let t = std::time::Instant::now();
                        for _ in 0..10_000 {
                            // SAFETY: AVX-512 checked; P panels of K_BLOCK
                            // steps; c holds MR rows of P·NR floats.
                            unsafe {
                                avx512::tile::<$p, _>(
                                    K_BLOCK,
                                    a.as_ptr(),
                                    b.as_ptr(),
                                    c.as_mut_ptr(),
                                    4 * NR,
                                    true,
                                )
                            };
                        }
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    let flops = 2.0 * (K_BLOCK * MR * $p * NR * 10_000) as f64;
                    println!(
                        "zmm tile {}x{}: {:.1} GFLOP/s",
                        MR,
                        $p * NR,
                        flops / best / 1e9
                    );
                }};
            }
            zmm!(1);
            zmm!(2);
            zmm!(4);
        }
    }
}
