//! Shape-op simplification: a reshape or flatten of a reshape/flatten becomes
//! one reshape; reshapes to the same shape vanish; permutes compose and the
//! identity permutation vanishes; `adaptive_avg_pool` followed by `flatten`
//! becomes one pooling node that writes the flat result.

use crate::ir::{Graph, NodeIndex, Op};

fn bypass(g: &mut Graph, n: NodeIndex) {
    let src = g.operands(n)[0];
    g.replace_uses(n, src);
    g.remove_node(n);
}

/// Runs the pass to a fixed point (each sweep removes at least one node, so
/// there are at most as many sweeps as nodes).
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    while sweep(g) {
        changed = true;
    }
    changed
}

fn sweep(g: &mut Graph) -> bool {
    let mut changed = false;
    for n in g.topo_order() {
        if !g.g.contains_node(n) {
            continue;
        }
        let ops = g.operands(n);
        let Some(&src) = ops.first() else { continue };
        let same_shape = g.node(src).shape == g.node(n).shape;
        match (&g.node(n).op, &g.node(src).op) {
            (Op::Reshape { .. } | Op::Flatten { .. }, _) if same_shape => {
                bypass(g, n);
                changed = true;
            }
            (Op::Permute { perm }, _) if perm.iter().enumerate().all(|(i, p)| i == *p) => {
                bypass(g, n);
                changed = true;
            }
            (Op::Reshape { .. } | Op::Flatten { .. }, Op::Reshape { .. } | Op::Flatten { .. })
                if g.sole_user(src) == Some(n) =>
            {
                // reshape(reshape(x)) = reshape(x): read the inner source directly.
                let inner = g.operands(src)[0];
                let dims = g.node(n).shape.per_sample();
                g.g[n].op = Op::Reshape { dims };
                g.set_operands(n, &[inner]);
                g.remove_node(src);
                changed = true;
            }
            (Op::Permute { perm: outer }, Op::Permute { perm: inner })
                if g.sole_user(src) == Some(n) =>
            {
                let composed: Vec<usize> = outer.iter().map(|&i| inner[i]).collect();
                let x = g.operands(src)[0];
                g.g[n].op = Op::Permute { perm: composed };
                g.set_operands(n, &[x]);
                g.remove_node(src);
                changed = true;
            }
            (
                Op::Flatten { start: 1 },
                Op::AdaptiveAvgPool {
                    size,
                    flatten: false,
                },
            ) if g.sole_user(src) == Some(n) => {
                let size = *size;
                let x = g.operands(src)[0];
                g.g[n].op = Op::AdaptiveAvgPool {
                    size,
                    flatten: true,
                };
                g.set_operands(n, &[x]);
                // The merged node is the pooling: it keeps the pooling's name.
                let name = g.node(src).name.clone();
                g.remove_node(src);
                g.g[n].name = name;
                changed = true;
            }
            _ => {}
        }
    }
    changed
}
