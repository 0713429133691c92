//! Cranelift code generation for the CPU backend:
//!
//! - the **network function**: one entry point per compiled graph and batch
//!   size, a straight line of direct calls to each layer's kernel with its
//!   descriptor's address baked in as a constant (every pool thread runs
//!   it, SPMD; each kernel returns once its layer's work is done, by
//!   whichever threads, so there is no barrier between calls);
//! - **activation kernels** over contiguous `f32` runs, in F32X4 with a scalar
//!   tail: ReLU/ReLU6/hard-sigmoid as compare-and-select, and exp-based
//!   functions (sigmoid, SiLU, tanh, GELU) as polynomial approximations.
//!   CPUs with AVX2 and FMA run their eight-lane twins in `vmath.rs` instead
//!   (same approximations, coefficients shared from here, 2–3× faster).
//!
//! The GEMM micro-kernel is not generated here: Cranelift's x86-64 backend
//! has 128-bit vectors only (≈28 GFLOP/s per core against ≈80 for the AVX2
//! micro-kernel in `gemm.rs`).

// Polynomial coefficients are written as published (Cephes, Eigen, Numerical
// Recipes) or as fitted, even where f32 cannot hold every digit.
#![allow(clippy::excessive_precision)]

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{
    types, AbiParam, Endianness, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use netc_compiler::ir::Activation;

/// exp's reduction `r = x − n·ln 2` with ln 2 in two parts (Cephes), and
/// its polynomial (highest coefficient first; e^r ≈ 1 + r + r²·poly(r));
/// shared with `vmath.rs` and `vmath16.rs`. The polynomial is a degree-5
/// fit for relative error on |r| ≤ ln 2 / 2 (`tools/coefficients/exp_poly.py`:
/// 1.7e-7 evaluated in f32, against Cephes' degree 7 at 6.9e-8): SiLU is a
/// fifth of EfficientNet-B0, and two fewer multiply-adds and constants took
/// it from 0.59 to 0.46 ns an element (`activation_throughput`), while the
/// activations stay within `activations_are_accurate_on_both_paths`' 1e-6
/// (worst now: SiLU 2.3e-7, GELU 6.2e-7).
pub(super) const LN2_PARTS: [f32; 2] = [-0.693_359_4, 2.121_944_4e-4];
/// See [`LN2_PARTS`].
pub(super) const EXP_POLY: [f32; 4] = [
    8.312_482_4e-3,
    4.189_031_2e-2,
    1.666_711_6e-1,
    4.999_923_1e-1,
];
/// Eigen's rational tanh: the input bound, numerator and denominator
/// polynomials in x² (the numerator is then multiplied by x).
pub(super) const TANH_LIMIT: f32 = 7.905_311;
/// See [`TANH_LIMIT`].
pub(super) const TANH_P: [f32; 7] = [
    -2.760_768_5e-16,
    2.000_187_9e-13,
    -8.604_671_5e-11,
    5.122_297e-8,
    1.485_722_4e-5,
    6.372_619_3e-4,
    4.893_524_6e-3,
];
/// See [`TANH_LIMIT`].
pub(super) const TANH_Q: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3];
/// Numerical Recipes' erfc: the polynomial in t = 1/(1 + z/2) whose exp gives
/// erfc(z) = t·exp(poly(t) − z²).
pub(super) const ERFC_POLY: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_203_98,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// [`ERFC_POLY`] with ln 2 taken from its constant term, so that
/// t·exp(poly(t) − z²) is erfc(z)/2, the half GELU needs, without a multiply.
pub(super) const ERFC_POLY_HALVED: [f32; 10] = {
    let mut c = ERFC_POLY;
    c[9] -= std::f32::consts::LN_2;
    c
};
/// 1/(2√2): GELU's t = 1/(1 + z/2) with z = |x|/√2 as one multiply-add.
pub(super) const GELU_HALF_RSQRT2: f32 = 0.5 * std::f32::consts::FRAC_1_SQRT_2;

/// An activation kernel: `dst[i] = f(src[i])` for `i < len` (`dst` may be `src`).
pub type ActFn = unsafe extern "C" fn(src: *const f32, dst: *mut f32, len: usize);

/// A layer kernel called by the network function: `(descriptor, tid,
/// threads)`. The kernels take their units from work queues and do not read
/// `tid` (a queue finds the calling thread's home range through
/// `pool::thread_index`); it stays in the signature for kernels that need it.
pub type LayerFn = unsafe extern "C" fn(desc: *const u8, tid: usize, threads: usize);

/// The network function: `(tid, threads)`.
pub type NetworkFn = unsafe extern "C" fn(tid: usize, threads: usize);

/// One call in the network function.
#[derive(Clone, Copy)]
pub struct Call {
    /// The kernel.
    pub func: LayerFn,
    /// Its descriptor (must outlive the generated code).
    pub desc: *const u8,
}

/// Owns generated code; frees it on drop.
pub struct Jit {
    module: Option<JITModule>,
}

// SAFETY: the module is only used to own code memory after finalisation.
unsafe impl Send for Jit {}
unsafe impl Sync for Jit {}

impl Drop for Jit {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: nothing calls the generated code once its owner is dropped
            // (the program that holds function pointers owns this `Jit`).
            unsafe { m.free_memory() };
        }
    }
}

fn module() -> Result<JITModule, String> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| format!("cranelift setting {k}: {e}"))
    };
    set(&mut flags, "opt_level", "speed")?;
    set(&mut flags, "is_pic", "false")?;
    // cranelift_native's builder enables what this CPU has (SSE4.1 for
    // `nearest`, AVX+FMA for `vfmadd`).
    let isa = cranelift_native::builder()
        .map_err(|e| format!("cranelift: this host is not supported: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| format!("cranelift: {e}"))?;
    Ok(JITModule::new(JITBuilder::with_isa(
        isa,
        default_libcall_names(),
    )))
}

/// The activations that need generated code (ReLU and ReLU6 are inlined in Rust).
pub const GENERATED: [Activation; 7] = [
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Silu,
    Activation::Sigmoid,
    Activation::Hardswish,
    Activation::Hardsigmoid,
    Activation::Tanh,
];

/// The activation kernels: `Some(activation)` or `None` for `exp`.
pub type ActivationKernels = Vec<(Option<Activation>, ActFn)>;

/// Generated code for one program.
pub struct Generated {
    /// Owner of the code.
    pub jit: Jit,
    /// The network function.
    pub network: NetworkFn,
}

/// Compiles the activation kernels (one per [`GENERATED`] activation, then
/// `exp` itself under `None`, for softmax).
pub fn compile_activations() -> Result<(Jit, ActivationKernels), String> {
    let mut m = module()?;
    let mut ids = Vec::new();
    for a in GENERATED.map(Some).into_iter().chain([None]) {
        ids.push((a, activation_kernel(&mut m, a)?));
    }
    m.finalize_definitions()
        .map_err(|e| format!("cranelift: {e}"))?;
    let fns = ids
        .into_iter()
        .map(|(a, id)| {
            let p = m.get_finalized_function(id);
            // SAFETY: generated with the `ActFn` signature.
            (a, unsafe { std::mem::transmute::<*const u8, ActFn>(p) })
        })
        .collect();
    Ok((Jit { module: Some(m) }, fns))
}

/// Compiles the network function for `calls`, made in order.
pub fn compile_network(calls: &[Call]) -> Result<Generated, String> {
    let mut m = module()?;
    let ptr = types::I64;
    let mut sig = m.make_signature();
    sig.params.push(AbiParam::new(ptr));
    sig.params.push(AbiParam::new(ptr));
    let id = m
        .declare_function("network", Linkage::Local, &sig)
        .map_err(|e| format!("cranelift: {e}"))?;
    let mut ctx = m.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let layer_sig = {
            let mut s = Signature::new(m.isa().default_call_conv());
            for _ in 0..3 {
                s.params.push(AbiParam::new(ptr));
            }
            b.import_signature(s)
        };
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let tid = b.block_params(entry)[0];
        let threads = b.block_params(entry)[1];
        for c in calls {
            let f = b.ins().iconst(ptr, c.func as usize as i64);
            let d = b.ins().iconst(ptr, c.desc as i64);
            b.ins().call_indirect(layer_sig, f, &[d, tid, threads]);
        }
        b.ins().return_(&[]);
        b.finalize(m.isa().frontend_config());
    }
    m.define_function(id, &mut ctx)
        .map_err(|e| format!("cranelift: {e:?}"))?;
    m.clear_context(&mut ctx);
    m.finalize_definitions()
        .map_err(|e| format!("cranelift: {e}"))?;
    let p = m.get_finalized_function(id);
    // SAFETY: generated with the `NetworkFn` signature.
    let network = unsafe { std::mem::transmute::<*const u8, NetworkFn>(p) };
    Ok(Generated {
        jit: Jit { module: Some(m) },
        network,
    })
}

/// Emits `fn(src, dst, len)`: a 4-wide loop, then a scalar loop for the tail.
fn activation_kernel(m: &mut JITModule, act: Option<Activation>) -> Result<FuncId, String> {
    let ptr = types::I64;
    let mut sig = m.make_signature();
    for _ in 0..3 {
        sig.params.push(AbiParam::new(ptr));
    }
    let id = m
        .declare_function(
            &format!("act_{}", act.map_or("exp", |a| a.name())),
            Linkage::Local,
            &sig,
        )
        .map_err(|e| format!("cranelift: {e}"))?;
    let mut ctx = m.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    {
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let entry = b.create_block();
        let vhead = b.create_block();
        let vbody = b.create_block();
        let uhead = b.create_block();
        let ubody = b.create_block();
        let shead = b.create_block();
        let sbody = b.create_block();
        let exit = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.append_block_param(vhead, ptr);
        b.append_block_param(uhead, ptr);
        b.append_block_param(shead, ptr);
        b.switch_to_block(entry);
        let (src, dst, len) = {
            let p = b.block_params(entry);
            (p[0], p[1], p[2])
        };
        let zero = b.ins().iconst(ptr, 0);
        let vend = b.ins().band_imm_s(len, !3i64);
        let uend = b.ins().band_imm_s(len, !7i64);
        let flags = MemFlagsData::new().with_notrap();
        b.ins().jump(uhead, &[zero.into()]);

        // Two independent 4-wide chains per step over [0, len & !7): each
        // chain is one long dependency (polynomials, exp), so a second one in
        // flight fills the pipelines (measured 3-10% faster; four spill).
        b.switch_to_block(uhead);
        let i = b.block_params(uhead)[0];
        let more = b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan,
            i,
            uend,
        );
        b.ins().brif(more, ubody, &[], vhead, &[i.into()]);
        b.switch_to_block(ubody);
        let off = b.ins().ishl_imm_u(i, 2);
        let sa = b.ins().iadd(src, off);
        let da = b.ins().iadd(dst, off);
        let xs: Vec<Value> = (0..2)
            .map(|u| b.ins().load(types::F32X4, flags, sa, 16 * u))
            .collect();
        let ys: Vec<Value> = xs
            .into_iter()
            .map(|x| {
                Math {
                    b: &mut b,
                    ty: types::F32X4,
                }
                .activation(act, x)
            })
            .collect();
        for (u, y) in ys.into_iter().enumerate() {
            b.ins().store(flags, y, da, 16 * u as i32);
        }
        let next = b.ins().iadd_imm_s(i, 8);
        b.ins().jump(uhead, &[next.into()]);

        // 4-wide loop over [0, len & !3).
        b.switch_to_block(vhead);
        let i = b.block_params(vhead)[0];
        let more = b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan,
            i,
            vend,
        );
        b.ins().brif(more, vbody, &[], shead, &[i.into()]);
        b.switch_to_block(vbody);
        let off = b.ins().ishl_imm_u(i, 2);
        let sa = b.ins().iadd(src, off);
        let da = b.ins().iadd(dst, off);
        let x = b.ins().load(types::F32X4, flags, sa, 0);
        let y = Math {
            b: &mut b,
            ty: types::F32X4,
        }
        .activation(act, x);
        b.ins().store(flags, y, da, 0);
        let next = b.ins().iadd_imm_s(i, 4);
        b.ins().jump(vhead, &[next.into()]);

        // Scalar tail.
        b.switch_to_block(shead);
        let i = b.block_params(shead)[0];
        let more = b.ins().icmp(
            cranelift_codegen::ir::condcodes::IntCC::UnsignedLessThan,
            i,
            len,
        );
        b.ins().brif(more, sbody, &[], exit, &[]);
        b.switch_to_block(sbody);
        let off = b.ins().ishl_imm_u(i, 2);
        let sa = b.ins().iadd(src, off);
        let da = b.ins().iadd(dst, off);
        let x = b.ins().load(types::F32, flags, sa, 0);
        let y = Math {
            b: &mut b,
            ty: types::F32,
        }
        .activation(act, x);
        b.ins().store(flags, y, da, 0);
        let next = b.ins().iadd_imm_s(i, 1);
        b.ins().jump(shead, &[next.into()]);

        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(m.isa().frontend_config());
    }
    m.define_function(id, &mut ctx)
        .map_err(|e| format!("cranelift: {e:?}"))?;
    m.clear_context(&mut ctx);
    Ok(id)
}

/// Emits f32 math for scalars (`F32`) or four lanes (`F32X4`).
struct Math<'a, 'b> {
    b: &'a mut FunctionBuilder<'b>,
    ty: Type,
}

impl Math<'_, '_> {
    fn c(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if self.ty == types::F32 {
            s
        } else {
            self.b.ins().splat(self.ty, s)
        }
    }
    fn add(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fadd(x, y)
    }
    fn sub(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fsub(x, y)
    }
    fn mul(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fmul(x, y)
    }
    fn div(&mut self, x: Value, y: Value) -> Value {
        self.b.ins().fdiv(x, y)
    }
    /// x·y + z, fused.
    fn fma(&mut self, x: Value, y: Value, z: Value) -> Value {
        self.b.ins().fma(x, y, z)
    }
    /// `a < b ? x : y` (false when either is NaN).
    fn select_lt(&mut self, a: Value, b: Value, x: Value, y: Value) -> Value {
        let m = self.b.ins().fcmp(FloatCC::LessThan, a, b);
        if self.ty == types::F32 {
            self.b.ins().select(m, x, y)
        } else {
            // A lane mask selects with one blend: the cheap form of min/max
            // (Cranelift's `fmin`/`fmax` are long NaN-correct sequences).
            let mf = self.b.ins().bitcast(
                self.ty,
                MemFlagsData::new().with_endianness(Endianness::Little),
                m,
            );
            self.b.ins().bitselect(mf, x, y)
        }
    }
    fn max(&mut self, x: Value, y: Value) -> Value {
        self.select_lt(x, y, y, x)
    }
    fn min(&mut self, x: Value, y: Value) -> Value {
        self.select_lt(x, y, x, y)
    }
    /// A degree-9 polynomial (highest coefficient first) by Estrin's
    /// scheme: pairs `a·t + b`, then `t²`, `t⁴`, `t⁸` combine them four
    /// operations deep where Horner's rule is nine. Three more operations,
    /// but GELU's chain (division, polynomial, exp) was long enough that
    /// its vectors waited on latency: the AVX2 twin 1.43 → 1.34 ns an
    /// element (`activation_throughput`, best of six runs each).
    fn poly_estrin10(&mut self, t: Value, c: &[f32; 10]) -> Value {
        let k = |s: &mut Self, i: usize| s.c(c[9 - i]);
        let pair = |s: &mut Self, hi: usize| {
            let (a, b) = (k(s, hi), k(s, hi - 1));
            s.fma(a, t, b)
        };
        let (q0, q1, q2, q3, q4) = (
            pair(self, 1),
            pair(self, 3),
            pair(self, 5),
            pair(self, 7),
            pair(self, 9),
        );
        let t2 = self.mul(t, t);
        let r0 = self.fma(q1, t2, q0);
        let r1 = self.fma(q3, t2, q2);
        let t4 = self.mul(t2, t2);
        let s0 = self.fma(r1, t4, r0);
        let t8 = self.mul(t4, t4);
        self.fma(q4, t8, s0)
    }

    /// Horner's rule, highest coefficient first.
    fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.c(coeffs[0]);
        for &k in &coeffs[1..] {
            let kk = self.c(k);
            acc = self.fma(acc, x, kk);
        }
        acc
    }

    /// e^x (range reduction by ln 2 in two parts, as Cephes' expf, and the
    /// degree-5 polynomial of [`EXP_POLY`]; 1.7e-7 relative). Inputs are
    /// clamped to [-87, 88].
    fn exp(&mut self, x: Value) -> Value {
        let lo = self.c(-87.0);
        let hi = self.c(88.0);
        let x = self.max(x, lo);
        let x = self.min(x, hi);
        // n = round(x·log2 e) by the magic bias 1.5·2^23: the multiply-add
        // rounds the exact product to an integer in the low mantissa bits
        // (|x·log2 e| < 2^22), so `shifted` serves both n and 2^n below —
        // one operation fewer than a multiply, a round and an add.
        let log2e = self.c(std::f32::consts::LOG2_E);
        let magic = self.c(12_582_912.0);
        let shifted = self.fma(x, log2e, magic);
        let n = self.sub(shifted, magic);
        let c1 = self.c(LN2_PARTS[0]);
        let c2 = self.c(LN2_PARTS[1]);
        let r = self.fma(n, c1, x);
        let r = self.fma(n, c2, r);
        let p = self.poly(r, &EXP_POLY);
        let r2 = self.mul(r, r);
        let one = self.c(1.0);
        let p = self.fma(p, r2, r);
        let p = self.add(p, one);
        // 2^n through the exponent bits of `shifted` (n within [-126, 127]
        // in its low mantissa bits): integer ops instead of a saturating
        // conversion, which Cranelift lowers to a long NaN/overflow-checking
        // sequence.
        let ity = if self.ty == types::F32 {
            types::I32
        } else {
            types::I32X4
        };
        let flags = MemFlagsData::new().with_endianness(Endianness::Little);
        let bits = self.b.ins().bitcast(ity, flags, shifted);
        // Low bits of 1.5·2^23 are zero: the integer is n + 0x4B40_0000; take
        // away that offset less the exponent bias 127.
        let offset = 0x4B40_0000i64 - 127;
        let bias = if self.ty == types::F32 {
            self.b.ins().iconst(types::I32, offset)
        } else {
            let s = self.b.ins().iconst(types::I32, offset);
            self.b.ins().splat(types::I32X4, s)
        };
        let e = self.b.ins().isub(bits, bias);
        let e = self.b.ins().ishl_imm_u(e, 23);
        let scale = self.b.ins().bitcast(self.ty, flags, e);
        self.mul(p, scale)
    }

    fn sigmoid(&mut self, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(nx);
        let one = self.c(1.0);
        let d = self.add(one, e);
        self.div(one, d)
    }

    /// tanh as Eigen's rational approximation (a few ulp on [-9, 9], exact
    /// saturation beyond); keeps relative accuracy near 0, where 1 - 2/(e^2x+1)
    /// would cancel.
    fn tanh(&mut self, x: Value) -> Value {
        let lo = self.c(-TANH_LIMIT);
        let hi = self.c(TANH_LIMIT);
        let x = self.max(x, lo);
        let x = self.min(x, hi);
        let x2 = self.mul(x, x);
        let p = self.poly(x2, &TANH_P);
        let p = self.mul(p, x);
        let q = self.poly(x2, &TANH_Q);
        self.div(p, q)
    }

    /// GELU with erf: 0.5·x·(1 + erf(x/√2)) written through erfc so that the
    /// negative side keeps relative accuracy (Numerical Recipes' erfc, fractional
    /// error < 1.2e-7 everywhere).
    fn gelu(&mut self, x: Value) -> Value {
        // t = 1/(1 + z/2), z = |x|/√2, as one multiply-add.
        let ax = self.b.ins().fabs(x);
        let k = self.c(GELU_HALF_RSQRT2);
        let one = self.c(1.0);
        let hz = self.fma(ax, k, one);
        let t = self.div(one, hz);
        let p = self.poly_estrin10(t, &ERFC_POLY_HALVED);
        // exp(p - z²) with z² = x²/2 taken as x·(x/2) rounded plus its FMA
        // residual (both exact halves of x·x's), summed once into the
        // argument: for |x| ≤ 3 the sum's rounding is ≤ 2.4e-7 relative in
        // the result, and below -3 the result is under 4e-3, where the bound
        // is absolute (see the tests). With ERFC_POLY_HALVED, t·exp(…) is
        // already 0.5·erfc(|z|).
        let half = self.c(0.5);
        let hx = self.mul(x, half);
        let x2h = self.mul(x, hx);
        let nx2h = self.b.ins().fneg(x2h);
        let x2h_lo = self.fma(x, hx, nx2h);
        let arg_lo = self.sub(p, x2h_lo);
        let arg = self.sub(arg_lo, x2h);
        let e = self.exp(arg);
        // x < 0: 0.5·erfc(|z|); x ≥ 0: 1 - 0.5·erfc(z).
        let h = self.mul(t, e);
        let pos = self.sub(one, h);
        let zero = self.c(0.0);
        let f = self.select_lt(x, zero, h, pos);
        self.mul(x, f)
    }

    fn activation(&mut self, a: Option<Activation>, x: Value) -> Value {
        let Some(a) = a else {
            return self.exp(x);
        };
        match a {
            Activation::Relu => {
                let z = self.c(0.0);
                self.max(x, z)
            }
            Activation::Relu6 => {
                let z = self.c(0.0);
                let six = self.c(6.0);
                let y = self.max(x, z);
                self.min(y, six)
            }
            Activation::Hardsigmoid | Activation::Hardswish => {
                let three = self.c(3.0);
                let z = self.c(0.0);
                let six = self.c(6.0);
                let inv6 = self.c(1.0 / 6.0);
                let y = self.add(x, three);
                let y = self.max(y, z);
                let y = self.min(y, six);
                let y = self.mul(y, inv6);
                if a == Activation::Hardswish {
                    self.mul(x, y)
                } else {
                    y
                }
            }
            Activation::Sigmoid => self.sigmoid(x),
            Activation::Silu => {
                // x / (1 + e^-x): one division and no multiply, where
                // x·sigmoid(x) took both (AVX2 twin 0.46 → 0.42 ns an
                // element, `activation_throughput`), and one rounding fewer.
                // Below x = -88, where exp's clamp holds e^-x at e^88, the
                // result is x·6e-39 rather than 0 (PyTorch's, and what the
                // product gave with denormals flushed): under 1e-30 for
                // |x| < 1e8.
                let nx = self.b.ins().fneg(x);
                let e = self.exp(nx);
                let one = self.c(1.0);
                let d = self.add(one, e);
                self.div(x, d)
            }
            Activation::Tanh => self.tanh(x),
            Activation::GeluTanh => {
                // 0.5·x·(1 + tanh(u)) = x·sigmoid(2u): no cancellation for x < 0.
                let k = self.c(2.0 * 0.797_884_6);
                let c = self.c(0.044_715);
                let x2 = self.mul(x, x);
                let one = self.c(1.0);
                let inner = self.fma(c, x2, one);
                let u = self.mul(x, inner);
                let u2 = self.mul(u, k);
                let s = self.sigmoid(u2);
                self.mul(x, s)
            }
            Activation::Gelu => self.gelu(x),
        }
    }
}

/// `cargo test --release -p netc-runtime activation_throughput -- --ignored --nocapture`:
/// nanoseconds per element of each generated activation on an L1-resident
/// buffer, and of its AVX2 twin in `vmath.rs`.
#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "a measurement, not a check"]
    fn activation_throughput() {
        // As the kernels run in a network (see `pool::with_flush_to_zero`):
        // in-place reruns drive some values towards zero, and denormal
        // intermediates would otherwise be timed at their microcode cost.
        crate::backend::cpu::pool::with_flush_to_zero(activation_throughput_flushed);
    }

    fn activation_throughput_flushed() {
        let (_jit, kernels) = compile_activations().unwrap();
        let x: Vec<f32> = (0..4096).map(|i| (i as f32 - 2048.0) / 512.0).collect();
        let mut y = vec![0f32; x.len()];
        for (a, f) in &kernels {
            let mut best = f64::MAX;
            // In place, as the kernels run (and as the twin below runs): the
            // same values pass through both.
            for _ in 0..20 {
                y.copy_from_slice(&x);
                let t = std::time::Instant::now();
                for _ in 0..50 {
                    // SAFETY: the buffer holds y.len() floats.
                    unsafe { f(y.as_ptr(), y.as_mut_ptr(), y.len()) };
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let name = a.map_or("exp", |a| a.name());
            let mut twin = f64::NAN;
            #[cfg(target_arch = "x86_64")]
            if crate::backend::cpu::vmath::available() {
                twin = f64::MAX;
                for _ in 0..20 {
                    y.copy_from_slice(&x);
                    let t = std::time::Instant::now();
                    for _ in 0..50 {
                        // SAFETY: AVX2 and FMA checked.
                        unsafe { crate::backend::cpu::vmath::apply(*a, &mut y) };
                    }
                    twin = twin.min(t.elapsed().as_secs_f64());
                }
            }
            let per = |t: f64| t / (50.0 * x.len() as f64) * 1e9;
            println!(
                "{name:12} generated {:.2} ns/element, AVX2 twin {:.2}",
                per(best),
                per(twin)
            );
        }
    }
}
