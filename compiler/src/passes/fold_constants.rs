//! Constant folding of parameter-only subgraphs: an element-wise or layout op
//! whose operands are all learned tensors is computed once, at load time, and
//! becomes a learned tensor itself (e.g. `softplus`-style reparameterized scales,
//! or a transposed embedding). Shape arithmetic needs no pass: elaboration
//! evaluates every shape expression, so the IR only holds static shapes.

use crate::ir::{Graph, Op, ParamRole, ParamSlot, WeightTransform};

fn foldable(op: &Op) -> bool {
    matches!(
        op,
        Op::Act(_)
            | Op::Binary(_)
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Identity
            | Op::Dropout { .. }
    )
}

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    let mut keys: std::collections::HashSet<String> =
        g.params().map(|(_, p)| p.key.clone()).collect();
    for n in g.topo_order() {
        let operands = g.operands(n);
        let node = g.node(n);
        let all_params = !operands.is_empty()
            && operands
                .iter()
                .all(|o| matches!(g.node(*o).op, Op::Parameter { .. }));
        if !foldable(&node.op) || !all_params || node.shape.has_batch() || keys.contains(&node.name)
        {
            continue;
        }
        let inputs: Vec<(String, Vec<usize>)> = operands
            .iter()
            .map(|o| {
                (
                    g.node(*o).params[0].key.clone(),
                    g.node(*o).params[0].shape.clone(),
                )
            })
            .collect();
        let shape = node.shape.per_sample();
        let key = node.name.clone();
        g.weight_transforms.push(WeightTransform::Evaluate {
            op: node.op.clone(),
            inputs,
            out: key.clone(),
            shape: shape.clone(),
        });
        keys.insert(key.clone());
        let node = &mut g.g[n];
        node.op = Op::Parameter {
            shape: shape.clone(),
        };
        node.params = vec![ParamSlot {
            key,
            shape,
            role: ParamRole::Weight,
        }];
        g.set_operands(n, &[]);
        changed = true;
    }
    if changed {
        super::dead_code::run(g);
    }
    changed
}
