//! netc's middle end: elaboration of `.net` programs into a shape-checked IR
//! (`elaborate`), the IR itself (`ir`), op semantics shared by every phase
//! (`ops`), the IR verifier (`verify`), and the IR's printers and analyses
//! (`print`, `stats`).
//!
//! Data flows one way: `netc_grammar` AST → [`elaborate`] → [`ir::Graph`] →
//! passes → backends. Nothing here depends on a backend.

pub mod elaborate;
pub mod ir;
pub mod memory_plan;
pub mod ops;
pub mod passes;
pub mod print;
pub mod stats;
pub mod verify;

pub use elaborate::{elaborate, Options, Source};
pub use ir::Graph;
