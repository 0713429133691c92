//! Cardinality canonicalization: N identical parallel paths (ResNeXt's forms A
//! and B: split-transform-merge) become grouped convolutions (form C).
//!
//! Local rewrites, applied to a fixed point:
//! - **stack**: identical convolutions reading the same tensor become one
//!   convolution with their output channels stacked, followed by slices;
//! - **group**: identical convolutions reading the ordered slices that cover a
//!   tensor's channels become one grouped convolution over it, followed by slices;
//! - **hoist**: the same activation on every covering slice moves before the slicing;
//! - **concat**: concatenating the ordered covering slices of a tensor is the tensor;
//! - **sum**: a sum of identical ungrouped convolutions over the covering slices of a
//!   tensor is one convolution over it with the input channels concatenated.
//!
//! Weights follow through `ConcatOutputs`, `ConcatInputs` and `SumTensors`.

use crate::ir::{
    BinaryOp, Graph, Node, NodeIndex, Op, ParamRole, ParamSlot, WeightTransform, Window,
};

/// Convolution attributes that must agree for paths to merge.
#[derive(PartialEq, Clone, Copy)]
struct ConvSig {
    out: usize,
    window: Window,
    groups: usize,
    bias: bool,
}

fn conv_sig(op: &Op) -> Option<ConvSig> {
    match op {
        Op::Conv2d {
            out_channels,
            window,
            groups,
            bias,
        } => Some(ConvSig {
            out: *out_channels,
            window: *window,
            groups: *groups,
            bias: *bias,
        }),
        _ => None,
    }
}

fn keys(node: &Node) -> (String, Option<String>) {
    let w = node.params[0].key.clone();
    let b = node
        .params
        .iter()
        .find(|p| p.role == ParamRole::Bias)
        .map(|p| p.key.clone());
    (w, b)
}

/// The ordered slices (axis 1) of `x` that cover all its channels, each read only once.
fn covering_slices(g: &Graph, x: NodeIndex) -> Option<Vec<NodeIndex>> {
    let channels = g.node(x).shape.known(1)?;
    let mut slices: Vec<(usize, usize, NodeIndex)> = g
        .users(x)
        .into_iter()
        .filter_map(|u| match g.node(u).op {
            Op::Slice {
                axis: 1,
                start,
                end,
            } => Some((start, end, u)),
            _ => None,
        })
        .collect();
    slices.sort();
    let mut at = 0;
    for &(s, e, _) in &slices {
        if s != at {
            return None;
        }
        at = e;
    }
    (at == channels && slices.len() >= 2 && slices.iter().all(|s| g.sole_user(s.2).is_some()))
        .then(|| slices.into_iter().map(|s| s.2).collect())
}

/// Replaces each of `olds` by a slice of `merged` along axis 1, in order.
fn reslice(g: &mut Graph, merged: NodeIndex, olds: &[NodeIndex]) {
    let mut start = 0;
    for &old in olds {
        let c = g.node(old).shape.known(1).unwrap_or(0);
        let node = Node {
            op: Op::Slice {
                axis: 1,
                start,
                end: start + c,
            },
            name: format!("{}.slice{start}", g.node(merged).name),
            shape: g.node(old).shape.clone(),
            dtype: g.node(old).dtype,
            params: Vec::new(),
            span: g.node(old).span,
        };
        let s = g.add_node(node, &[merged]);
        g.replace_uses(old, s);
        start += c;
    }
}

/// Builds the merged convolution node (named after the first path).
fn merged_conv(
    g: &mut Graph,
    first: NodeIndex,
    sig: ConvSig,
    out: usize,
    groups: usize,
    input: NodeIndex,
    cin_per_group: usize,
) -> NodeIndex {
    let (w, b) = keys(g.node(first));
    let mut shape = g.node(first).shape.clone();
    shape.0[1] = crate::ir::Dim::Known(out);
    let mut params = vec![ParamSlot {
        key: w,
        shape: vec![
            out,
            cin_per_group,
            sig.window.kernel[0],
            sig.window.kernel[1],
        ],
        role: ParamRole::Weight,
    }];
    if let Some(b) = b {
        params.push(ParamSlot {
            key: b,
            shape: vec![out],
            role: ParamRole::Bias,
        });
    }
    let node = Node {
        op: Op::Conv2d {
            out_channels: out,
            window: sig.window,
            groups,
            bias: sig.bias,
        },
        name: format!("{}.merged", g.node(first).name),
        shape,
        dtype: g.node(first).dtype,
        params,
        span: g.node(first).span,
    };
    g.add_node(node, &[input])
}

fn record_stack(g: &mut Graph, convs: &[NodeIndex]) {
    let ks: Vec<(String, Option<String>)> = convs.iter().map(|&c| keys(g.node(c))).collect();
    g.weight_transforms.push(WeightTransform::ConcatOutputs {
        parts: ks.iter().map(|k| k.0.clone()).collect(),
        out: ks[0].0.clone(),
    });
    if ks[0].1.is_some() {
        g.weight_transforms.push(WeightTransform::ConcatOutputs {
            parts: ks.iter().filter_map(|k| k.1.clone()).collect(),
            out: ks[0].1.clone().unwrap_or_default(),
        });
    }
}

fn remove_all(g: &mut Graph, nodes: &[NodeIndex]) {
    for &n in nodes {
        if g.g.contains_node(n) && g.users(n).is_empty() && !g.is_output(n) {
            g.remove_node(n);
        }
    }
}

/// Identical convolutions reading `x` directly → one stacked convolution.
fn stack(g: &mut Graph, x: NodeIndex) -> bool {
    let mut by_sig: Vec<(ConvSig, Vec<NodeIndex>)> = Vec::new();
    for u in g.users(x) {
        let Some(sig) = conv_sig(&g.node(u).op) else {
            continue;
        };
        if sig.groups != 1 || g.operands(u) != [x] {
            continue;
        }
        match by_sig.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, v)) => v.push(u),
            None => by_sig.push((sig, vec![u])),
        }
    }
    let Some((sig, convs)) = by_sig.into_iter().find(|(_, v)| v.len() >= 2) else {
        return false;
    };
    let cin = g.node(x).shape.known(1).unwrap_or(0);
    let merged = merged_conv(g, convs[0], sig, sig.out * convs.len(), 1, x, cin);
    record_stack(g, &convs);
    reslice(g, merged, &convs);
    remove_all(g, &convs);
    true
}

/// Identical convolutions over the covering slices of `x` → one grouped convolution.
fn group(g: &mut Graph, x: NodeIndex, slices: &[NodeIndex]) -> bool {
    let convs: Vec<NodeIndex> = slices.iter().filter_map(|&s| g.sole_user(s)).collect();
    if convs.len() != slices.len() {
        return false;
    }
    let Some(sig) = conv_sig(&g.node(convs[0]).op) else {
        return false;
    };
    let same = convs.iter().zip(slices).all(|(&c, &s)| {
        conv_sig(&g.node(c).op) == Some(sig)
            && g.operands(c) == [s]
            && g.node(s).shape == g.node(slices[0]).shape
    });
    // Ungrouped paths that are summed are one convolution over all channels
    // (form A's last layer): leave them to `sum`.
    let summed = convs.iter().all(|&c| {
        g.sole_user(c)
            .is_some_and(|u| g.node(u).op == Op::Binary(BinaryOp::Add))
    });
    if !same || (sig.groups == 1 && summed) {
        return false;
    }
    let n = convs.len();
    let cin_per_group = g.node(slices[0]).shape.known(1).unwrap_or(0) / sig.groups;
    let merged = merged_conv(
        g,
        convs[0],
        sig,
        sig.out * n,
        sig.groups * n,
        x,
        cin_per_group,
    );
    record_stack(g, &convs);
    reslice(g, merged, &convs);
    remove_all(g, &convs);
    remove_all(g, slices);
    true
}

/// The same activation on every covering slice of `x` → the activation on `x`, sliced.
fn hoist(g: &mut Graph, x: NodeIndex, slices: &[NodeIndex]) -> bool {
    let acts: Vec<NodeIndex> = slices.iter().filter_map(|&s| g.sole_user(s)).collect();
    let Some(first) = acts.first().map(|&a| g.node(a).op.clone()) else {
        return false;
    };
    if acts.len() != slices.len()
        || !matches!(first, Op::Act(_))
        || !acts.iter().all(|&a| g.node(a).op == first)
    {
        return false;
    }
    let node = Node {
        op: first,
        name: format!("{}.hoisted", g.node(acts[0]).name),
        shape: g.node(x).shape.clone(),
        dtype: g.node(x).dtype,
        params: Vec::new(),
        span: g.node(acts[0]).span,
    };
    let whole = g.add_node(node, &[x]);
    reslice(g, whole, &acts);
    remove_all(g, &acts);
    remove_all(g, slices);
    true
}

/// `concat` of the ordered covering slices of one tensor (and nothing else) → that tensor.
fn concat(g: &mut Graph, n: NodeIndex) -> bool {
    if g.node(n).op != (Op::Concat { axis: 1 }) {
        return false;
    }
    let ops = g.operands(n);
    let Some(&first) = ops.first() else {
        return false;
    };
    let x = match g.node(first).op {
        Op::Slice { axis: 1, .. } => g.operands(first)[0],
        _ => return false,
    };
    let mut at = 0;
    for &o in &ops {
        match g.node(o).op {
            Op::Slice {
                axis: 1,
                start,
                end,
            } if start == at && g.operands(o) == [x] => at = end,
            _ => return false,
        }
    }
    if g.node(x).shape != g.node(n).shape {
        return false;
    }
    g.replace_uses(n, x);
    g.remove_node(n);
    remove_all(g, &ops);
    true
}

/// Leaves of the tree of binary adds rooted at `n` whose inner nodes are read once.
fn add_leaves(g: &Graph, n: NodeIndex, out: &mut Vec<NodeIndex>) {
    for o in g.operands(n) {
        if g.node(o).op == Op::Binary(BinaryOp::Add) && g.sole_user(o) == Some(n) {
            add_leaves(g, o, out);
        } else {
            out.push(o);
        }
    }
}

/// A sum of identical ungrouped convolutions over the covering slices of one tensor
/// → one convolution over the tensor.
fn sum(g: &mut Graph, root: NodeIndex) -> bool {
    if g.node(root).op != Op::Binary(BinaryOp::Add) {
        return false;
    }
    if let Some(u) = g.sole_user(root) {
        if g.node(u).op == Op::Binary(BinaryOp::Add) {
            return false; // handled at the top of the tree
        }
    }
    let mut leaves = Vec::new();
    add_leaves(g, root, &mut leaves);
    let Some(sig) = leaves.first().and_then(|&c| conv_sig(&g.node(c).op)) else {
        return false;
    };
    if sig.groups != 1 || leaves.len() < 2 {
        return false;
    }
    let mut slices = Vec::new();
    for &c in &leaves {
        if conv_sig(&g.node(c).op) != Some(sig) || g.sole_user(c).is_none() {
            return false;
        }
        slices.push(g.operands(c)[0]);
    }
    let x = match g.node(slices[0]).op {
        Op::Slice { axis: 1, .. } => g.operands(slices[0])[0],
        _ => return false,
    };
    let mut order: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &s) in slices.iter().enumerate() {
        match g.node(s).op {
            Op::Slice {
                axis: 1,
                start,
                end,
            } if g.operands(s) == [x] && g.sole_user(s).is_some() => order.push((start, end, i)),
            _ => return false,
        }
    }
    order.sort();
    let mut at = 0;
    for &(s, e, _) in &order {
        if s != at {
            return false;
        }
        at = e;
    }
    if Some(at) != g.node(x).shape.known(1) {
        return false;
    }
    let convs: Vec<NodeIndex> = order.iter().map(|o| leaves[o.2]).collect();
    let ks: Vec<(String, Option<String>)> = convs.iter().map(|&c| keys(g.node(c))).collect();
    g.weight_transforms.push(WeightTransform::ConcatInputs {
        parts: ks.iter().map(|k| k.0.clone()).collect(),
        out: ks[0].0.clone(),
    });
    if sig.bias {
        g.weight_transforms.push(WeightTransform::SumTensors {
            parts: ks.iter().filter_map(|k| k.1.clone()).collect(),
            out: ks[0].1.clone().unwrap_or_default(),
        });
    }
    let merged = merged_conv(g, convs[0], sig, sig.out, 1, x, at);
    g.replace_uses(root, merged);
    let mut dead = vec![root];
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        for o in g.operands(n) {
            if g.node(o).op == Op::Binary(BinaryOp::Add) && !dead.contains(&o) {
                dead.push(o);
                stack.push(o);
            }
        }
    }
    for d in dead {
        g.set_operands(d, &[]);
        g.g.remove_node(d);
    }
    remove_all(g, &convs);
    let s: Vec<NodeIndex> = order.iter().map(|o| slices[o.2]).collect();
    remove_all(g, &s);
    true
}

fn sweep(g: &mut Graph) -> bool {
    for n in g.topo_order() {
        if !g.g.contains_node(n) {
            continue;
        }
        if stack(g, n) || concat(g, n) || sum(g, n) {
            return true;
        }
        if let Some(slices) = covering_slices(g, n) {
            if group(g, n, &slices) || hoist(g, n, &slices) {
                return true;
            }
        }
    }
    false
}

/// Runs the rewrites to a fixed point (each removes at least one node).
pub fn run(g: &mut Graph) -> bool {
    let mut changed = false;
    let limit = g.len() + 1;
    for _ in 0..limit {
        if !sweep(g) {
            break;
        }
        changed = true;
    }
    changed
}
