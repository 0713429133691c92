//! Removes nodes that compute nothing at inference: dropout and identity.

use crate::ir::{Graph, Op};

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let doomed: Vec<_> = g
        .topo_order()
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, Op::Dropout { .. } | Op::Identity))
        .collect();
    for &n in &doomed {
        let src = g.operands(n)[0];
        g.replace_uses(n, src);
        g.remove_node(n);
    }
    !doomed.is_empty()
}
