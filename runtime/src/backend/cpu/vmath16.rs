//! Sixteen-lane (AVX-512) twins of `vmath.rs`'s exp-based activations
//! (exp, sigmoid, SiLU, tanh, GELU and its tanh form): the same operations
//! in the same order on zmm registers, so every lane gets exactly the bits
//! the eight-lane function gives it.
//!
//! Why: those functions are one long chain of dependent operations per
//! vector (GELU: about 45, through a division, a ten-term polynomial and
//! exp), so a tile of them is bound by latency, not by the FMA units. A zmm
//! register carries sixteen lanes down the same chain, and there are 32 of
//! them, so the constants stay in registers. Measured on the Zen 4 host
//! (`activation_throughput`, and a 12-register tile as the fused GEMM kernel
//! runs it): GELU 1.93 → 1.17 ns per element on one core. The cheap
//! activations (ReLU, ReLU6, hard sigmoid and swish) stay on ymm.

use super::jit::{ERFC_POLY, EXP_POLY, LN2_PARTS, TANH_LIMIT, TANH_P, TANH_Q};
use netc_compiler::ir::Activation;
use std::arch::x86_64::*;

/// Whether this CPU runs the zmm twins: it has AVX-512F and DQ, the
/// baseline is not forced (`gemm::baseline_forced`), and `NETC_NO_AVX512`
/// is not set (so the eight-lane path can be measured and tested on such
/// CPUs). Read once per process.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        super::vmath::available()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::env::var_os("NETC_NO_AVX512").is_none()
    })
}

/// Whether `a` (exp for `None`) has a twin here.
pub fn covers(a: Option<Activation>) -> bool {
    use Activation::*;
    matches!(a, None | Some(Sigmoid | Silu | Tanh | Gelu | GeluTanh))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn poly(x: __m512, coeffs: &[f32]) -> __m512 {
    let mut acc = _mm512_set1_ps(coeffs[0]);
    for &k in &coeffs[1..] {
        acc = _mm512_fmadd_ps(acc, x, _mm512_set1_ps(k));
    }
    acc
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(_mm512_set1_ps(-87.0), x);
    let x = _mm512_min_ps(_mm512_set1_ps(88.0), x);
    let t = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_PARTS[0]), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(LN2_PARTS[1]), r);
    let p = poly(r, &EXP_POLY);
    let r2 = _mm512_mul_ps(r, r);
    let p = _mm512_fmadd_ps(p, r2, r);
    let p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
    let shifted = _mm512_add_ps(n, _mm512_set1_ps(12_582_912.0));
    let e = _mm512_sub_epi32(
        _mm512_castps_si512(shifted),
        _mm512_set1_epi32(0x4B40_0000 - 127),
    );
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e));
    _mm512_mul_ps(p, scale)
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn sigmoid16(x: __m512) -> __m512 {
    let nx = _mm512_xor_ps(x, _mm512_set1_ps(-0.0));
    let one = _mm512_set1_ps(1.0);
    _mm512_div_ps(one, _mm512_add_ps(one, exp16(nx)))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn silu16(x: __m512) -> __m512 {
    _mm512_mul_ps(x, sigmoid16(x))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn tanh16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(_mm512_set1_ps(-TANH_LIMIT), x);
    let x = _mm512_min_ps(_mm512_set1_ps(TANH_LIMIT), x);
    let x2 = _mm512_mul_ps(x, x);
    let p = poly(x2, &TANH_P);
    let p = _mm512_mul_ps(p, x);
    let q = poly(x2, &TANH_Q);
    _mm512_div_ps(p, q)
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn gelu16(x: __m512) -> __m512 {
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let z = _mm512_andnot_ps(_mm512_set1_ps(-0.0), z);
    let hz = _mm512_fmadd_ps(half, z, one);
    let t = _mm512_div_ps(one, hz);
    let p = poly(t, &ERFC_POLY);
    let x2 = _mm512_mul_ps(x, x);
    let nx2 = _mm512_xor_ps(x2, _mm512_set1_ps(-0.0));
    let x2_lo = _mm512_fmadd_ps(x, x, nx2);
    let e_hi = _mm512_mul_ps(nx2, half);
    let lo = _mm512_mul_ps(x2_lo, half);
    let arg_lo = _mm512_sub_ps(p, lo);
    let arg = _mm512_add_ps(e_hi, arg_lo);
    let erfc = _mm512_mul_ps(t, exp16(arg));
    let h = _mm512_mul_ps(half, erfc);
    let pos = _mm512_sub_ps(one, h);
    // `select_negative`: h where x < 0 (ordered), else pos.
    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mul_ps(x, _mm512_mask_blend_ps(lt, pos, h))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn gelu_tanh16(x: __m512) -> __m512 {
    let x2 = _mm512_mul_ps(x, x);
    let inner = _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), x2, _mm512_set1_ps(1.0));
    let u = _mm512_mul_ps(x, inner);
    let u2 = _mm512_mul_ps(u, _mm512_set1_ps(2.0 * 0.797_884_6));
    _mm512_mul_ps(x, sigmoid16(u2))
}

/// Expands `$body` with `$f` bound to the zmm twin of `$a` (one of
/// [`covers`]'), so that each loop is specialised to one function.
macro_rules! per_twin {
    ($a:expr, $f:ident => $body:block) => {
        match $a {
            None => {
                use exp16 as $f;
                $body
            }
            Some(Activation::Sigmoid) => {
                use sigmoid16 as $f;
                $body
            }
            Some(Activation::Silu) => {
                use silu16 as $f;
                $body
            }
            Some(Activation::Tanh) => {
                use tanh16 as $f;
                $body
            }
            Some(Activation::Gelu) => {
                use gelu16 as $f;
                $body
            }
            Some(Activation::GeluTanh) => {
                use gelu_tanh16 as $f;
                $body
            }
            Some(other) => unreachable!("{} has no zmm twin", other.name()),
        }
    };
}

/// `vmath::act_tile` on zmm registers: two ymm registers of the tile per
/// zmm (an odd last one zero-extended). Only for [`covers`]'s functions.
///
/// # Safety
/// The CPU must support AVX-512F and DQ ([`available`]).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub unsafe fn act_tile(a: Activation, tile: &mut [__m256]) {
    per_twin!(Some(a), f => {
        let mut pairs = tile.chunks_exact_mut(2);
        for p in &mut pairs {
            let z = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(p[0]), p[1]);
            let z = f(z);
            p[0] = _mm512_castps512_ps256(z);
            p[1] = _mm512_extractf32x8_ps::<1>(z);
        }
        for v in pairs.into_remainder() {
            *v = _mm512_castps512_ps256(f(_mm512_zextps256_ps512(*v)));
        }
    })
}

/// `vmath::apply` on zmm registers, 32 lanes per step in two chains, the
/// tail through a padded register. Only for [`covers`]'s functions.
///
/// # Safety
/// The CPU must support AVX-512F and DQ ([`available`]).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub unsafe fn apply(a: Option<Activation>, x: &mut [f32]) {
    per_twin!(a, f => {
        let mut pairs = x.chunks_exact_mut(32);
        for c in &mut pairs {
            // SAFETY: the chunk holds 32 floats.
            unsafe {
                let p = c.as_mut_ptr();
                let (u, v) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                _mm512_storeu_ps(p, f(u));
                _mm512_storeu_ps(p.add(16), f(v));
            }
        }
        for c in pairs.into_remainder().chunks_mut(16) {
            let mut lanes = [0f32; 16];
            lanes[..c.len()].copy_from_slice(c);
            // SAFETY: `lanes` holds 16 floats.
            unsafe {
                _mm512_storeu_ps(lanes.as_mut_ptr(), f(_mm512_loadu_ps(lanes.as_ptr())));
            }
            let n = c.len();
            c.copy_from_slice(&lanes[..n]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every twin gives the eight-lane function's bits, lane for lane,
    /// over ordinary values, the clamps' edges, infinities and NaN; the
    /// tile path and the slice path agree too.
    #[test]
    fn twins_give_the_eight_lane_bits() {
        if !available() {
            eprintln!("no AVX-512 here (or NETC_NO_AVX512): the zmm twins are not exercised");
            return;
        }
        let xs: Vec<f32> = (0..4001)
            .map(|i| -40.0 + 80.0 * i as f32 / 4000.0)
            .chain([
                0.0,
                -0.0,
                1e-7,
                -1e-7,
                87.0,
                -87.0,
                88.5,
                -88.5,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                f32::MIN_POSITIVE,
                TANH_LIMIT,
            ])
            .collect();
        let activations = [None]
            .into_iter()
            .chain(Activation::ALL.into_iter().map(Some))
            .filter(|a| covers(*a));
        for a in activations {
            let name = a.map_or("exp", |a| a.name());
            let mut want = xs.clone();
            // SAFETY: available() implies AVX2 and FMA.
            unsafe { super::super::vmath::apply_ymm(a, &mut want) };
            let mut got = xs.clone();
            // SAFETY: available() checked above.
            unsafe { apply(a, &mut got) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{name}: apply");
            if let Some(a) = a {
                // 7 registers: three pairs and an odd one.
                let mut tile: Vec<__m256> = xs[..56]
                    .chunks_exact(8)
                    // SAFETY: each chunk holds 8 floats.
                    .map(|c| unsafe { _mm256_loadu_ps(c.as_ptr()) })
                    .collect();
                // SAFETY: available() checked above.
                unsafe { act_tile(a, &mut tile) };
                let mut out = vec![0f32; 56];
                for (i, v) in tile.iter().enumerate() {
                    // SAFETY: out holds 56 floats.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *v) };
                }
                assert_eq!(bits(&out), bits(&want[..56]), "{name}: tile");
            }
        }
    }
}
