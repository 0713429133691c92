//! Execution backends. Each backend is a folder; all consume the IR (never the AST).

pub mod candle;
pub mod cpu;

use crate::weights::HostTensor;
use netc_compiler::ir::Graph;
use netc_grammar::Diagnostic;

/// Checks host inputs against the graph's (one per input, `[N, per-sample dims]`,
/// one batch size); returns the batch size.
pub fn check_inputs(graph: &Graph, inputs: &[HostTensor]) -> Result<usize, Diagnostic> {
    if inputs.len() != graph.inputs.len() {
        return Err(Diagnostic::new(
            "netc::input",
            format!(
                "the network takes {} input(s), {} given",
                graph.inputs.len(),
                inputs.len()
            ),
        ));
    }
    let mut batch = None;
    for (inp, t) in graph.inputs.iter().zip(inputs) {
        let want = graph.node(inp.node).shape.per_sample();
        let ok = t.shape.len() == want.len() + 1 && t.shape[1..] == want[..] && t.shape[0] >= 1;
        if !ok || t.data.len() != t.shape.iter().product::<usize>() {
            return Err(Diagnostic::new(
                "netc::input",
                format!(
                    "input `{}` has shape {:?}; the network expects [N, {}]",
                    inp.name,
                    t.shape,
                    want.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .label(graph.node(inp.node).span, "declared here"));
        }
        if *batch.get_or_insert(t.shape[0]) != t.shape[0] {
            return Err(Diagnostic::new(
                "netc::input",
                "inputs disagree on the batch size",
            ));
        }
    }
    Ok(batch.unwrap_or(1))
}
