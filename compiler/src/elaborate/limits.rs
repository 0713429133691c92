//! Hard limits that keep hostile or mistaken input from hanging the compiler or
//! exhausting memory. Each is reported as a diagnostic naming the limit.

/// Largest single extent (channels, kernel, stride, padding, dims of inputs and reshapes).
pub const MAX_DIM: usize = 1 << 24;
/// Most elements in one activation per batch item, or in one parameter tensor (8 GiB of f32).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;
/// Largest count for `repeat`, `dense`, `fork n` and `range`.
pub const MAX_REPEAT: i64 = 10_000;
/// Longest list a program may build.
pub const MAX_LIST_LEN: usize = 1_000_000;
/// Most IR nodes in one network.
pub const MAX_NODES: usize = 1_000_000;
/// Deepest nesting of block applications.
pub const MAX_CALL_DEPTH: usize = 128;
/// Most evaluation steps (expressions evaluated) in one elaboration.
pub const MAX_STEPS: u64 = 50_000_000;
/// Most source files (the root and its imports).
pub const MAX_FILES: usize = 256;
/// Largest source file in bytes.
pub const MAX_SOURCE_BYTES: u64 = 8 << 20;
/// Longest string or label built by interpolation.
pub const MAX_STRING_LEN: usize = 4096;
