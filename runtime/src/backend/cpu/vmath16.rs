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
//!
//! Each function takes N registers and runs their chains interleaved, step
//! by step: one chain at a time leaves the out-of-order window full of
//! operations waiting on each other. GELU over a slice, one core: 0.85 ns
//! per element as one chain, 0.76 as two, 0.67 as four, 0.63 as six (the
//! same bits each way).

use super::jit::{
    ERFC_POLY_HALVED, EXP_POLY, GELU_HALF_RSQRT2, LN2_PARTS, TANH_LIMIT, TANH_P, TANH_Q,
};
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

/// `[f(0), f(1), …, f(N − 1)]` with `$i` bound to each index in turn: one
/// step of every chain, written out lane after lane (the loop is unrolled
/// and the array lives in registers).
macro_rules! each {
    ($n:expr, $i:ident => $e:expr) => {{
        let mut r = [_mm512_setzero_ps(); $n];
        for $i in 0..$n {
            r[$i] = $e;
        }
        r
    }};
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn poly<const N: usize>(x: [__m512; N], coeffs: &[f32]) -> [__m512; N] {
    let mut acc = [_mm512_set1_ps(coeffs[0]); N];
    for &k in &coeffs[1..] {
        let k = _mm512_set1_ps(k);
        acc = each!(N, i => _mm512_fmadd_ps(acc[i], x[i], k));
    }
    acc
}

/// [`ERFC_POLY_HALVED`]'s polynomial by Estrin's scheme, as `jit.rs`'s
/// `poly_estrin10`.
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn poly_estrin10<const N: usize>(t: [__m512; N], c: &[f32; 10]) -> [__m512; N] {
    let k = |i: usize| _mm512_set1_ps(c[9 - i]);
    let pair = |hi: usize| each!(N, i => _mm512_fmadd_ps(k(hi), t[i], k(hi - 1)));
    let (q0, q1, q2, q3, q4) = (pair(1), pair(3), pair(5), pair(7), pair(9));
    let t2 = each!(N, i => _mm512_mul_ps(t[i], t[i]));
    let r0 = each!(N, i => _mm512_fmadd_ps(q1[i], t2[i], q0[i]));
    let r1 = each!(N, i => _mm512_fmadd_ps(q3[i], t2[i], q2[i]));
    let t4 = each!(N, i => _mm512_mul_ps(t2[i], t2[i]));
    let s0 = each!(N, i => _mm512_fmadd_ps(r1[i], t4[i], r0[i]));
    let t8 = each!(N, i => _mm512_mul_ps(t4[i], t4[i]));
    each!(N, i => _mm512_fmadd_ps(q4[i], t8[i], s0[i]))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn exp16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    let x = each!(N, i => _mm512_max_ps(_mm512_set1_ps(-87.0), x[i]));
    let x = each!(N, i => _mm512_min_ps(_mm512_set1_ps(88.0), x[i]));
    // n = round(x·log2 e) by the magic bias, as `jit.rs`'s exp.
    let magic = _mm512_set1_ps(12_582_912.0);
    let log2e = _mm512_set1_ps(std::f32::consts::LOG2_E);
    let shifted = each!(N, i => _mm512_fmadd_ps(x[i], log2e, magic));
    let n = each!(N, i => _mm512_sub_ps(shifted[i], magic));
    let r = each!(N, i => _mm512_fmadd_ps(n[i], _mm512_set1_ps(LN2_PARTS[0]), x[i]));
    let r = each!(N, i => _mm512_fmadd_ps(n[i], _mm512_set1_ps(LN2_PARTS[1]), r[i]));
    let p = poly(r, &EXP_POLY);
    let r2 = each!(N, i => _mm512_mul_ps(r[i], r[i]));
    let p = each!(N, i => _mm512_fmadd_ps(p[i], r2[i], r[i]));
    let p = each!(N, i => _mm512_add_ps(p[i], _mm512_set1_ps(1.0)));
    each!(N, i => {
        let e = _mm512_sub_epi32(
            _mm512_castps_si512(shifted[i]),
            _mm512_set1_epi32(0x4B40_0000 - 127),
        );
        _mm512_mul_ps(p[i], _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e)))
    })
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn sigmoid16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    let one = _mm512_set1_ps(1.0);
    let e = exp16(each!(N, i => _mm512_xor_ps(x[i], _mm512_set1_ps(-0.0))));
    each!(N, i => _mm512_div_ps(one, _mm512_add_ps(one, e[i])))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn silu16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    // x / (1 + e^-x), as `jit.rs`'s SiLU.
    let one = _mm512_set1_ps(1.0);
    let e = exp16(each!(N, i => _mm512_xor_ps(x[i], _mm512_set1_ps(-0.0))));
    each!(N, i => _mm512_div_ps(x[i], _mm512_add_ps(one, e[i])))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn tanh16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    let x = each!(N, i => _mm512_max_ps(_mm512_set1_ps(-TANH_LIMIT), x[i]));
    let x = each!(N, i => _mm512_min_ps(_mm512_set1_ps(TANH_LIMIT), x[i]));
    let x2 = each!(N, i => _mm512_mul_ps(x[i], x[i]));
    let p = poly(x2, &TANH_P);
    let p = each!(N, i => _mm512_mul_ps(p[i], x[i]));
    let q = poly(x2, &TANH_Q);
    each!(N, i => _mm512_div_ps(p[i], q[i]))
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn gelu16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let ax = each!(N, i => _mm512_andnot_ps(_mm512_set1_ps(-0.0), x[i]));
    let k = _mm512_set1_ps(GELU_HALF_RSQRT2);
    let hz = each!(N, i => _mm512_fmadd_ps(ax[i], k, one));
    let t = each!(N, i => _mm512_div_ps(one, hz[i]));
    let p = poly_estrin10(t, &ERFC_POLY_HALVED);
    let hx = each!(N, i => _mm512_mul_ps(x[i], half));
    let x2h = each!(N, i => _mm512_mul_ps(x[i], hx[i]));
    let x2h_lo = each!(N, i => _mm512_fmsub_ps(x[i], hx[i], x2h[i]));
    let arg = each!(N, i => _mm512_sub_ps(_mm512_sub_ps(p[i], x2h_lo[i]), x2h[i]));
    let e = exp16(arg);
    each!(N, i => {
        let h = _mm512_mul_ps(t[i], e[i]);
        let pos = _mm512_sub_ps(one, h);
        // `select_negative`: h where x < 0 (ordered), else pos.
        let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x[i], _mm512_setzero_ps());
        _mm512_mul_ps(x[i], _mm512_mask_blend_ps(lt, pos, h))
    })
}

#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn gelu_tanh16<const N: usize>(x: [__m512; N]) -> [__m512; N] {
    let u2 = each!(N, i => {
        let x2 = _mm512_mul_ps(x[i], x[i]);
        let inner = _mm512_fmadd_ps(_mm512_set1_ps(0.044_715), x2, _mm512_set1_ps(1.0));
        let u = _mm512_mul_ps(x[i], inner);
        _mm512_mul_ps(u, _mm512_set1_ps(2.0 * 0.797_884_6))
    });
    let s = sigmoid16(u2);
    each!(N, i => _mm512_mul_ps(x[i], s[i]))
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

/// Runs `$f` over `$n` zmm registers at a time, each made of two
/// neighbouring ymm registers of `$tile` (a `&mut [__m256]`, left holding
/// what remains).
macro_rules! zmm_chunks {
    ($tile:ident, $f:ident, $n:literal) => {
        let mut chunks = std::mem::take(&mut $tile).chunks_exact_mut(2 * $n);
        for c in &mut chunks {
            let z = $f(each!($n, i => {
                _mm512_insertf32x8::<1>(_mm512_castps256_ps512(c[2 * i]), c[2 * i + 1])
            }));
            for (i, z) in z.iter().enumerate() {
                c[2 * i] = _mm512_castps512_ps256(*z);
                c[2 * i + 1] = _mm512_extractf32x8_ps::<1>(*z);
            }
        }
        $tile = chunks.into_remainder();
    };
}

/// `vmath::act_tile` on zmm registers: two ymm registers of the tile per
/// zmm (an odd last one zero-extended), six chains interleaved — a whole
/// 6×16 GEMM tile at once. Only for [`covers`]'s functions.
///
/// # Safety
/// The CPU must support AVX-512F and DQ ([`available`]).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
#[inline(never)]
pub unsafe fn act_tile(a: Activation, tile: &mut [__m256]) {
    per_twin!(Some(a), f => {
        let mut rest = tile;
        zmm_chunks!(rest, f, 6);
        zmm_chunks!(rest, f, 2);
        zmm_chunks!(rest, f, 1);
        for v in rest {
            *v = _mm512_castps512_ps256(f([_mm512_zextps256_ps512(*v)])[0]);
        }
    })
}

/// `vmath::apply` on zmm registers: 64 lanes per step in four interleaved
/// chains, then 16 at a time, the tail through a padded register. Only for
/// [`covers`]'s functions.
///
/// # Safety
/// The CPU must support AVX-512F and DQ ([`available`]).
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
pub unsafe fn apply(a: Option<Activation>, x: &mut [f32]) {
    per_twin!(a, f => {
        let mut quads = x.chunks_exact_mut(64);
        for c in &mut quads {
            let p = c.as_mut_ptr();
            // SAFETY: the chunk holds 64 floats.
            let y = f(each!(4, i => unsafe { _mm512_loadu_ps(p.add(16 * i)) }));
            for (i, y) in y.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(p.add(16 * i), *y) };
            }
        }
        for c in quads.into_remainder().chunks_mut(16) {
            let mut lanes = [0f32; 16];
            lanes[..c.len()].copy_from_slice(c);
            // SAFETY: `lanes` holds 16 floats.
            unsafe {
                _mm512_storeu_ps(lanes.as_mut_ptr(), f([_mm512_loadu_ps(lanes.as_ptr())])[0]);
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
            let Some(a) = a else { continue };
            // Every way through the tile: six-register chunks, pairs of
            // registers, single pairs and an odd register.
            // Values from across the range (the slice check above covers the
            // special values).
            for n in [7, 12, 13, 25] {
                let at: Vec<usize> = (0..8 * n).map(|j| (j * 157 + 4001) % xs.len()).collect();
                let pick = |v: &[f32]| at.iter().map(|&j| v[j]).collect::<Vec<f32>>();
                let mut tile: Vec<__m256> = pick(&xs)
                    .chunks_exact(8)
                    // SAFETY: each chunk holds 8 floats.
                    .map(|c| unsafe { _mm256_loadu_ps(c.as_ptr()) })
                    .collect();
                // SAFETY: available() checked above.
                unsafe { act_tile(a, &mut tile) };
                let mut out = vec![0f32; 8 * n];
                for (i, v) in tile.iter().enumerate() {
                    // SAFETY: out holds 8·n floats.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *v) };
                }
                assert_eq!(bits(&out), bits(&pick(&want)), "{name}: tile of {n}");
            }
        }
    }
}
