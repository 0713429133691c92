//! Folds inference-mode BatchNorm into an adjacent convolution or linear layer.
//!
//! After (ONNX Runtime's ConvBNFusion conditions: the BN is the layer's only
//! reader and the layer is not a graph output): `w' = w·γ/√(σ²+ε)`,
//! `b' = (b−μ)·γ/√(σ²+ε)+β`.
//!
//! Before (BN → conv/linear, the BN's only reader): exact only when the layer
//! has no padding, since padding zeros are inserted after normalisation and
//! would not be shifted; such BNs are left alone. `w' = w·s` on the input
//! channels, `b' = b + Σ w·t`.
//!
//! Weights follow: each fold appends a [`WeightTransform`] and the layer's
//! parameter slots become (weight, bias) under the layer's own keys.

use crate::ir::{Graph, NodeIndex, Op, ParamRole, ParamSlot, WeightTransform};

fn bn_keys(g: &Graph, bn: NodeIndex) -> [String; 4] {
    let p = &g.node(bn).params;
    [
        p[0].key.clone(),
        p[1].key.clone(),
        p[2].key.clone(),
        p[3].key.clone(),
    ]
}

/// Gives the layer a bias slot named after its weight; returns the bias key.
fn ensure_bias(g: &mut Graph, layer: NodeIndex) -> (Option<String>, String) {
    let node = &mut g.g[layer];
    let existing = node
        .params
        .iter()
        .find(|p| p.role == ParamRole::Bias)
        .map(|p| p.key.clone());
    let out = existing.clone().unwrap_or_else(|| {
        let w = &node.params[0].key;
        match w.strip_suffix("weight") {
            Some(stem) => format!("{stem}bias"),
            None => format!("{w}.bias"),
        }
    });
    let channels = node.params[0].shape[0];
    match &mut node.op {
        Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => *bias = true,
        _ => unreachable!("only conv and linear layers fold batch norms"),
    }
    if existing.is_none() {
        node.params.push(ParamSlot {
            key: out.clone(),
            shape: vec![channels],
            role: ParamRole::Bias,
        });
    }
    (existing, out)
}

/// Records the fold built by `transform(weight, old bias, new bias, bn keys)`,
/// gives `layer` its bias slot, and removes the BatchNorm (its readers read `bn`'s input).
fn fold_into(
    g: &mut Graph,
    bn: NodeIndex,
    layer: NodeIndex,
    transform: impl FnOnce(String, Option<String>, String, [String; 4]) -> WeightTransform,
) {
    let keys = bn_keys(g, bn);
    let weight = g.node(layer).params[0].key.clone();
    let (bias, out_bias) = ensure_bias(g, layer);
    g.weight_transforms
        .push(transform(weight, bias, out_bias, keys));
    let src = g.operands(bn)[0];
    g.replace_uses(bn, src);
    g.remove_node(bn);
}

fn is_foldable_layer(op: &Op) -> bool {
    matches!(op, Op::Conv2d { .. } | Op::Linear { .. })
}

/// Runs the pass.
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    for bn in g.topo_order() {
        if !g.g.contains_node(bn) {
            continue;
        }
        let Op::BatchNorm { eps } = g.node(bn).op else {
            continue;
        };
        let src = g.operands(bn)[0];
        // Linear layers fold only when the BN normalises their output features
        // (axis 1 of a 2-D tensor).
        let linear_ok = |g: &Graph, n: NodeIndex| g.node(n).shape.rank() == 2;
        let after = is_foldable_layer(&g.node(src).op)
            && g.sole_user(src) == Some(bn)
            && (matches!(g.node(src).op, Op::Conv2d { .. }) || linear_ok(g, src));
        if after {
            fold_into(g, bn, src, |weight, bias, out_bias, bn| {
                WeightTransform::FoldBatchNormAfter {
                    weight,
                    bias,
                    out_bias,
                    bn,
                    eps,
                }
            });
            changed = true;
            continue;
        }
        // BN before an unpadded layer.
        let Some(user) = g.sole_user(bn) else {
            continue;
        };
        let unpadded = match &g.node(user).op {
            Op::Conv2d { window, .. } => window.pad == [0; 4],
            Op::Linear { .. } => g.node(bn).shape.rank() == 2,
            _ => false,
        };
        if !unpadded || g.is_output(bn) {
            continue;
        }
        let groups = match g.node(user).op {
            Op::Conv2d { groups, .. } => groups,
            _ => 1,
        };
        fold_into(g, bn, user, |weight, bias, out_bias, bn| {
            WeightTransform::FoldBatchNormBefore {
                weight,
                bias,
                out_bias,
                bn,
                eps,
                groups,
            }
        });
        changed = true;
    }
    changed
}
