//! The stable text form of the IR, for humans (`netc ir`) and snapshot tests.
//!
//! One line per node in topological order:
//! `%name = op attrs (%operand, ...) : shape  {param: shape, ...}  @file:line:col`.

use crate::ir::Graph;
use netc_grammar::SourceMap;
use std::fmt::Write;

/// Prints the graph. With `sources`, each node ends with its source location
/// (file name without directories, so the text is stable across machines).
pub fn print(g: &Graph, sources: Option<&SourceMap>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "network {}", g.name);
    for id in g.topo_order() {
        let n = g.node(id);
        let operands: Vec<String> = g
            .operands(id)
            .iter()
            .map(|o| format!("%{}", g.node(*o).name))
            .collect();
        let _ = write!(out, "  %{} = {}", n.name, n.op);
        if !operands.is_empty() {
            let _ = write!(out, " ({})", operands.join(", "));
        }
        let _ = write!(out, " : {}", n.shape);
        if !n.params.is_empty() {
            let ps: Vec<String> = n
                .params
                .iter()
                .map(|p| {
                    let short = p
                        .key
                        .strip_prefix(&n.name)
                        .and_then(|s| s.strip_prefix('.'))
                        .unwrap_or(&p.key);
                    let short = if short.is_empty() { "value" } else { short };
                    format!("{short}: {:?}", p.shape)
                })
                .collect();
            let _ = write!(out, "  {{{}}}", ps.join(", "));
        }
        if let Some(src) = sources {
            let (line, col) = src.line_col(n.span);
            let file = &src.get(n.span.file).name;
            let base = std::path::Path::new(file)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or(file);
            let _ = write!(out, "  @{base}:{line}:{col}");
        }
        out.push('\n');
    }
    for o in &g.outputs {
        let _ = writeln!(out, "  return {} = %{}", o.name, g.node(o.node).name);
    }
    out
}
