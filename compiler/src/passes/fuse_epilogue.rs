//! Fuses what follows a convolution or linear layer into it: its bias, then a
//! chain of activations and residual adds, each applied to an output tile while
//! it is hot. A step is absorbed only when the fused node is its only reader.
//! For `add(a, b)` where both sides are convolutions, the one earlier in the
//! graph absorbs the add and reads the other as its residual operand.

use crate::ir::{BinaryOp, Epilogue, FusedBase, Graph, NodeIndex, Op};

fn to_fused(op: &Op) -> Option<(FusedBase, bool)> {
    match op {
        Op::Conv2d {
            out_channels,
            window,
            groups,
            bias,
        } => Some((
            FusedBase::Conv2d {
                out_channels: *out_channels,
                window: *window,
                groups: *groups,
            },
            *bias,
        )),
        Op::Linear { out_features, bias } => Some((
            FusedBase::Linear {
                out_features: *out_features,
            },
            *bias,
        )),
        _ => None,
    }
}

/// Absorbs the chain after `n` (already fused); returns whether anything was absorbed.
fn absorb(g: &mut Graph, n: NodeIndex) -> bool {
    let mut changed = false;
    while let Some(user) = g.sole_user(n) {
        let step = match &g.node(user).op {
            Op::Act(a) => Some((Epilogue::Act(*a), None)),
            Op::Binary(BinaryOp::Add) => {
                let ops = g.operands(user);
                let other = if ops[0] == n { ops[1] } else { ops[0] };
                (ops[0] != ops[1] && g.node(other).shape == g.node(n).shape).then(|| {
                    let i = g.operands(n).len();
                    (Epilogue::Add(i), Some(other))
                })
            }
            _ => None,
        };
        let Some((step, extra)) = step else { break };
        let mut operands = g.operands(n);
        if let Some(o) = extra {
            operands.push(o);
        }
        if let Op::Fused { epilogue, .. } = &mut g.g[n].op {
            epilogue.push(step);
        }
        g.set_operands(n, &operands);
        // The fused node (keeping the layer's name, which keys its parameters)
        // now stands for the step's result.
        g.replace_uses(user, n);
        g.remove_node(user);
        changed = true;
    }
    changed
}

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for n in g.topo_order() {
        if !g.g.contains_node(n) {
            continue;
        }
        let Some((base, bias)) = to_fused(&g.node(n).op) else {
            continue;
        };
        let epilogue = if bias {
            vec![Epilogue::Bias]
        } else {
            Vec::new()
        };
        g.g[n].op = Op::Fused { base, epilogue };
        absorb(g, n);
        changed = true;
    }
    changed
}
