//! Structural re-parameterization: `add(conv_a(x), conv_b(x))` where both read
//! the same input with the same stride, groups and output channels, and the
//! smaller kernel sits centred in the larger (padding differs by half the
//! kernel difference), becomes one convolution with the summed kernel
//! (RepLKNet's 5x5 beside the large kernel, RepVGG's 3x3 + 1x1). Runs after
//! BatchNorm folding so each branch is a single conv with a bias.

use crate::ir::{BinaryOp, Graph, NodeIndex, Op, ParamRole, ParamSlot, WeightTransform, Window};

fn conv(g: &Graph, n: NodeIndex) -> Option<(usize, Window, usize, bool)> {
    match &g.node(n).op {
        Op::Conv2d {
            out_channels,
            window,
            groups,
            bias,
        } => Some((*out_channels, *window, *groups, *bias)),
        _ => None,
    }
}

/// Whether `small` is `large` with a kernel shrunk symmetrically (same output grid).
fn nests(small: &Window, large: &Window) -> bool {
    let d = |a: usize| large.kernel[a] as i64 - small.kernel[a] as i64;
    small.stride == large.stride
        && small.dilation == [1, 1]
        && large.dilation == [1, 1]
        && (0..2).all(|a| d(a) >= 0 && d(a) % 2 == 0)
        && (0..4).all(|i| large.pad[i] as i64 - small.pad[i] as i64 == d(i % 2) / 2)
}

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for add in g.topo_order() {
        if !g.g.contains_node(add) || g.node(add).op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        let ops = g.operands(add);
        let (a, b) = (ops[0], ops[1]);
        if a == b || g.sole_user(a) != Some(add) || g.sole_user(b) != Some(add) {
            continue;
        }
        let (Some(ca), Some(cb)) = (conv(g, a), conv(g, b)) else {
            continue;
        };
        if g.operands(a)[0] != g.operands(b)[0] || ca.0 != cb.0 || ca.2 != cb.2 {
            continue;
        }
        let (large, small) = if ca.1.kernel[0] >= cb.1.kernel[0] {
            (a, b)
        } else {
            (b, a)
        };
        let (wl, ws) = (conv(g, large).unwrap().1, conv(g, small).unwrap().1);
        if !nests(&ws, &wl) || g.node(a).shape != g.node(b).shape {
            continue;
        }
        let slots = |n: NodeIndex| {
            let p = &g.node(n).params;
            (
                p[0].key.clone(),
                p.iter()
                    .find(|s| s.role == ParamRole::Bias)
                    .map(|s| s.key.clone()),
            )
        };
        let branches = vec![slots(large), slots(small)];
        let out_weight = branches[0].0.clone();
        let out_bias =
            branches[0]
                .1
                .clone()
                .unwrap_or_else(|| match out_weight.strip_suffix("weight") {
                    Some(stem) => format!("{stem}bias"),
                    None => format!("{out_weight}.bias"),
                });
        g.weight_transforms.push(WeightTransform::SumKernels {
            branches,
            kernel: wl.kernel,
            out_weight,
            out_bias: out_bias.clone(),
        });
        let node = &mut g.g[large];
        if let Op::Conv2d { bias, .. } = &mut node.op {
            *bias = true;
        }
        if !node.params.iter().any(|p| p.role == ParamRole::Bias) {
            let c = node.params[0].shape[0];
            node.params.push(ParamSlot {
                key: out_bias,
                shape: vec![c],
                role: ParamRole::Bias,
            });
        }
        g.replace_uses(add, large);
        g.remove_node(add);
        g.remove_node(small);
        changed = true;
    }
    changed
}
