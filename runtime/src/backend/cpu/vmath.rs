//! Eight-lane (AVX2 + FMA) twins of the generated activations in `jit.rs`:
//! the same approximations (exp as in `jit.rs`, Eigen's tanh, Numerical
//! Recipes' erfc), the same operations in the same order, on ymm registers.
//!
//! Why they exist beside the generated kernels: Cranelift's x86-64 backend
//! has 128-bit vectors only, so a generated activation does half the work per
//! instruction of one written for ymm, and the GEMM epilogue would have to
//! store each tile and call out to it. [`act_tile`] runs inside the fused
//! micro-kernel on the accumulators themselves, and [`apply`] is what
//! [`super::Act::apply`] runs on CPUs with AVX2 and FMA (measured in
//! `docs/benchmarks.md`). CPUs without them run the generated kernels.

use super::jit::{
    ERFC_POLY_HALVED, EXP_POLY, GELU_HALF_RSQRT2, LN2_PARTS, TANH_LIMIT, TANH_P, TANH_Q,
};
use netc_compiler::ir::Activation;
use std::arch::x86_64::*;

/// Whether this CPU runs the functions of this module (not when the
/// baseline is forced, see `gemm::baseline_forced`).
#[inline]
pub fn available() -> bool {
    super::gemm::Kernel::detect() == super::gemm::Kernel::Avx2Fma
}

/// Horner's rule, highest coefficient first.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn poly(x: __m256, coeffs: &[f32]) -> __m256 {
    let mut acc = _mm256_set1_ps(coeffs[0]);
    for &k in &coeffs[1..] {
        acc = _mm256_fmadd_ps(acc, x, _mm256_set1_ps(k));
    }
    acc
}

/// [`ERFC_POLY_HALVED`]'s degree-9 polynomial by Estrin's scheme, as `jit.rs`'s
/// `poly_estrin10` (see there).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn poly_estrin10(t: __m256, c: &[f32; 10]) -> __m256 {
    let k = |i: usize| _mm256_set1_ps(c[9 - i]);
    let q0 = _mm256_fmadd_ps(k(1), t, k(0));
    let q1 = _mm256_fmadd_ps(k(3), t, k(2));
    let q2 = _mm256_fmadd_ps(k(5), t, k(4));
    let q3 = _mm256_fmadd_ps(k(7), t, k(6));
    let q4 = _mm256_fmadd_ps(k(9), t, k(8));
    let t2 = _mm256_mul_ps(t, t);
    let r0 = _mm256_fmadd_ps(q1, t2, q0);
    let r1 = _mm256_fmadd_ps(q3, t2, q2);
    let t4 = _mm256_mul_ps(t2, t2);
    let s0 = _mm256_fmadd_ps(r1, t4, r0);
    let t8 = _mm256_mul_ps(t4, t4);
    _mm256_fmadd_ps(q4, t8, s0)
}

/// `x < 0 ? neg : pos`, lane by lane.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn select_negative(x: __m256, neg: __m256, pos: __m256) -> __m256 {
    let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
    _mm256_blendv_ps(pos, neg, lt)
}

/// e^x, as `jit.rs`'s: inputs clamped to [-87, 88] (NaN stays NaN), range
/// reduction by ln 2 in two parts, a degree-5 polynomial, 2^n through the
/// exponent bits.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
    // max/min return their second operand when either is NaN: the bound
    // first keeps a NaN input.
    let x = _mm256_max_ps(_mm256_set1_ps(-87.0), x);
    let x = _mm256_min_ps(_mm256_set1_ps(88.0), x);
    // n = round(x·log2 e) by the magic bias, as `jit.rs`'s exp.
    let magic = _mm256_set1_ps(12_582_912.0);
    let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
    let n = _mm256_sub_ps(shifted, magic);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(LN2_PARTS[0]), x);
    let r = _mm256_fmadd_ps(n, _mm256_set1_ps(LN2_PARTS[1]), r);
    let p = poly(r, &EXP_POLY);
    let r2 = _mm256_mul_ps(r, r);
    let p = _mm256_fmadd_ps(p, r2, r);
    let p = _mm256_add_ps(p, _mm256_set1_ps(1.0));
    // n (within [-126, 127]) is in the low mantissa bits of `shifted`,
    // whose integer is n + 0x4B40_0000.
    let e = _mm256_sub_epi32(
        _mm256_castps_si256(shifted),
        _mm256_set1_epi32(0x4B40_0000 - 127),
    );
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e));
    _mm256_mul_ps(p, scale)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn sigmoid8(x: __m256) -> __m256 {
    let nx = _mm256_xor_ps(x, _mm256_set1_ps(-0.0));
    let one = _mm256_set1_ps(1.0);
    _mm256_div_ps(one, _mm256_add_ps(one, exp8(nx)))
}

/// Eigen's rational tanh, as `jit.rs`'s.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn tanh8(x: __m256) -> __m256 {
    // Bound first, so that NaN stays NaN (see `exp8`).
    let x = _mm256_max_ps(_mm256_set1_ps(-TANH_LIMIT), x);
    let x = _mm256_min_ps(_mm256_set1_ps(TANH_LIMIT), x);
    let x2 = _mm256_mul_ps(x, x);
    let p = poly(x2, &TANH_P);
    let p = _mm256_mul_ps(p, x);
    let q = poly(x2, &TANH_Q);
    _mm256_div_ps(p, q)
}

/// Exact (erf) GELU through erfc, as `jit.rs`'s.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu8(x: __m256) -> __m256 {
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    let hz = _mm256_fmadd_ps(ax, _mm256_set1_ps(GELU_HALF_RSQRT2), one);
    let t = _mm256_div_ps(one, hz);
    let p = poly_estrin10(t, &ERFC_POLY_HALVED);
    let hx = _mm256_mul_ps(x, half);
    let x2h = _mm256_mul_ps(x, hx);
    let x2h_lo = _mm256_fmsub_ps(x, hx, x2h);
    let arg = _mm256_sub_ps(_mm256_sub_ps(p, x2h_lo), x2h);
    let h = _mm256_mul_ps(t, exp8(arg));
    let pos = _mm256_sub_ps(one, h);
    _mm256_mul_ps(x, select_negative(x, h, pos))
}

/// GELU with the tanh approximation, as x·sigmoid(2u).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu_tanh8(x: __m256) -> __m256 {
    let x2 = _mm256_mul_ps(x, x);
    let inner = _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x2, _mm256_set1_ps(1.0));
    let u = _mm256_mul_ps(x, inner);
    let u2 = _mm256_mul_ps(u, _mm256_set1_ps(2.0 * 0.797_884_6));
    _mm256_mul_ps(x, sigmoid8(u2))
}

/// relu6(x + 3) / 6.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hardsigmoid8(x: __m256) -> __m256 {
    let y = _mm256_add_ps(x, _mm256_set1_ps(3.0));
    let y = _mm256_max_ps(y, _mm256_setzero_ps());
    let y = _mm256_min_ps(y, _mm256_set1_ps(6.0));
    _mm256_mul_ps(y, _mm256_set1_ps(1.0 / 6.0))
}

/// Transposes an 8×8 block held as eight row vectors into eight column
/// vectors.
///
/// # Safety
/// The CPU must support AVX2 (callers compiled with it call it without
/// `unsafe`).
#[target_feature(enable = "avx2")]
#[inline]
pub fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Expands `$body` once per activation with `$f` bound to its 8-lane
/// function, so that every loop is specialised to one activation. `None`
/// is exp (softmax's kernel).
macro_rules! per_activation {
    ($a:expr, $f:ident => $body:block) => {
        match $a {
            Some(Activation::Relu) => {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                fn $f(x: __m256) -> __m256 {
                    // NaN maps to 0, as the scalar `max` does.
                    _mm256_max_ps(x, _mm256_setzero_ps())
                }
                $body
            }
            Some(Activation::Relu6) => {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                fn $f(x: __m256) -> __m256 {
                    _mm256_min_ps(_mm256_max_ps(x, _mm256_setzero_ps()), _mm256_set1_ps(6.0))
                }
                $body
            }
            Some(Activation::Hardsigmoid) => {
                use hardsigmoid8 as $f;
                $body
            }
            Some(Activation::Hardswish) => {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                fn $f(x: __m256) -> __m256 {
                    _mm256_mul_ps(x, hardsigmoid8(x))
                }
                $body
            }
            Some(Activation::Sigmoid) => {
                use sigmoid8 as $f;
                $body
            }
            Some(Activation::Silu) => {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                fn $f(x: __m256) -> __m256 {
                    // x / (1 + e^-x), as `jit.rs`'s SiLU.
                    let nx = _mm256_xor_ps(x, _mm256_set1_ps(-0.0));
                    let d = _mm256_add_ps(_mm256_set1_ps(1.0), exp8(nx));
                    _mm256_div_ps(x, d)
                }
                $body
            }
            Some(Activation::Tanh) => {
                use tanh8 as $f;
                $body
            }
            Some(Activation::GeluTanh) => {
                use gelu_tanh8 as $f;
                $body
            }
            Some(Activation::Gelu) => {
                use gelu8 as $f;
                $body
            }
            None => {
                use exp8 as $f;
                $body
            }
        }
    };
}

/// Applies activation `a` (exp for `None`) to `x` in place: on zmm
/// registers where `vmath16` has the function and the CPU AVX-512 (the same
/// bits), else [`apply_ymm`].
///
/// # Safety
/// The CPU must support AVX2 and FMA (see [`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn apply(a: Option<Activation>, x: &mut [f32]) {
    if super::vmath16::covers(a) && super::vmath16::available() {
        // SAFETY: available() checked the CPU.
        unsafe { super::vmath16::apply(a, x) };
        return;
    }
    // SAFETY: the caller's.
    unsafe { apply_ymm(a, x) }
}

/// [`apply`] on ymm registers, sixteen lanes per step in two independent
/// chains, the tail through a padded vector.
///
/// # Safety
/// The CPU must support AVX2 and FMA (see [`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn apply_ymm(a: Option<Activation>, x: &mut [f32]) {
    per_activation!(a, f => {
        let mut pairs = x.chunks_exact_mut(16);
        for c in &mut pairs {
            // SAFETY: the chunk holds 16 floats.
            unsafe {
                let p = c.as_mut_ptr();
                let (u, v) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                _mm256_storeu_ps(p, f(u));
                _mm256_storeu_ps(p.add(8), f(v));
            }
        }
        for c in pairs.into_remainder().chunks_mut(8) {
            let mut lanes = [0f32; 8];
            lanes[..c.len()].copy_from_slice(c);
            // SAFETY: `lanes` holds 8 floats.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), f(_mm256_loadu_ps(lanes.as_ptr())));
            }
            let n = c.len();
            c.copy_from_slice(&lanes[..n]);
        }
    })
}

/// Applies activation `a` to every register of a micro-tile, inside the
/// fused GEMM kernel; lane for lane the same results as [`apply`] (on zmm
/// registers, as there, where `vmath16` has the function and the CPU
/// AVX-512).
///
/// # Safety
/// The CPU must support AVX2 and FMA (callers compiled with both call it
/// without `unsafe`).
#[target_feature(enable = "avx2,fma")]
#[inline]
pub fn act_tile(a: Activation, tile: &mut [__m256]) {
    if super::vmath16::covers(Some(a)) && super::vmath16::available() {
        // SAFETY: available() checked the CPU; the zmm twins give these bits.
        unsafe { super::vmath16::act_tile(a, tile) };
        return;
    }
    per_activation!(Some(a), f => {
        for v in tile.iter_mut() {
            *v = f(*v);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same inputs through the generated kernels and these: both implement
    /// one approximation, so they agree to a few ulp (FMA contraction and
    /// rounding order may differ by one step).
    #[test]
    fn agrees_with_the_generated_kernels() {
        if !available() {
            return;
        }
        let (_jit, kernels) = super::super::jit::compile_activations().unwrap();
        let xs: Vec<f32> = (0..20_011)
            .map(|i| -30.0 + 60.0 * i as f32 / 20_011.0)
            .chain([0.0, -0.0, 1e-6, -1e-6, 87.0, -87.0, 100.0, -100.0])
            .collect();
        for (a, f) in &kernels {
            let mut want = vec![0f32; xs.len()];
            // SAFETY: both buffers hold xs.len() floats.
            unsafe { f(xs.as_ptr(), want.as_mut_ptr(), xs.len()) };
            let mut got = xs.clone();
            // SAFETY: AVX2 and FMA checked above.
            unsafe { apply(*a, &mut got) };
            for ((x, w), g) in xs.iter().zip(&want).zip(&got) {
                let name = a.map_or("exp", |a| a.name());
                let tol = 4.0 * f32::EPSILON * w.abs().max(f32::MIN_POSITIVE);
                assert!((g - w).abs() <= tol, "{name}({x}) = {g}, generated {w}");
            }
        }
    }

    /// NaN in, NaN out, as PyTorch gives, for the exp-based functions.
    #[test]
    fn smooth_activations_keep_nan() {
        if !available() {
            return;
        }
        use Activation::*;
        for a in [
            None,
            Some(Sigmoid),
            Some(Silu),
            Some(Tanh),
            Some(Gelu),
            Some(GeluTanh),
        ] {
            let mut x = [f32::NAN; 3];
            // SAFETY: AVX2 and FMA checked above.
            unsafe { apply(a, &mut x) };
            assert!(x.iter().all(|v| v.is_nan()), "{a:?}: {x:?}");
        }
    }

    /// The fused kernel's path gives exactly [`apply`]'s results.
    #[test]
    fn tile_and_slice_paths_are_identical() {
        if !available() {
            return;
        }
        let xs: Vec<f32> = (0..96).map(|i| (i as f32 - 48.0) / 7.0).collect();
        for a in Activation::ALL {
            let mut want = xs.clone();
            // SAFETY: AVX2 and FMA checked above.
            unsafe { apply(Some(a), &mut want) };
            // SAFETY: as above; 12 registers of 8 lanes from 96 floats.
            let got = unsafe {
                let mut tile: [__m256; 12] =
                    std::array::from_fn(|i| _mm256_loadu_ps(xs.as_ptr().add(8 * i)));
                act_tile(a, &mut tile);
                let mut out = vec![0f32; 96];
                for (i, v) in tile.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *v);
                }
                out
            };
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{}",
                a.name()
            );
        }
    }
}
