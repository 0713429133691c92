//! Execution backends. Each backend is a folder; all consume the IR (never the AST).

pub mod candle;
pub mod cpu;
