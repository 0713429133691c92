//! Removes nodes that no output depends on (inputs are kept: they are the interface).

use crate::ir::{Graph, Op};
use std::collections::HashSet;

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut live: HashSet<_> = g.outputs.iter().map(|o| o.node).collect();
    let mut stack: Vec<_> = live.iter().copied().collect();
    while let Some(n) = stack.pop() {
        for o in g.operands(n) {
            if live.insert(o) {
                stack.push(o);
            }
        }
    }
    let dead: Vec<_> = g
        .topo_order()
        .into_iter()
        .rev()
        .filter(|n| !live.contains(n) && !matches!(g.node(*n).op, Op::Input { .. }))
        .collect();
    for &n in &dead {
        g.g.remove_node(n);
    }
    !dead.is_empty()
}
