//! The `.net` language front door: the pest grammar (`net.pest`), the AST, the
//! parser that builds it, source spans, and the diagnostics every later phase reports.
//!
//! This crate knows nothing about tensors or shapes; `netc-compiler` gives the AST
//! its meaning.

pub mod ast;
pub mod diagnostic;
pub mod parser;
pub mod span;

pub use diagnostic::{did_you_mean, render_plain, Diagnostic};
pub use parser::{parse, parse_expr};
pub use span::{FileId, SourceMap, Span, Spanned};
