//! The native CPU backend (issue 6, in progress). Today it holds the GEMM core
//! the JIT-generated convolution drivers will call; the backend itself (Cranelift
//! code generation over the memory plan) is not built yet, so nothing selects it.

pub mod gemm;
