//! Lowering an optimized graph to CPU kernels for one batch size: every value
//! gets its address in the arena from the memory plan (batch-major: a buffer of
//! `b` bytes per sample at plan offset `o` holds sample `n` at `o·N + n·b`),
//! and every node becomes a kernel descriptor with its shapes, strides,
//! addresses and epilogue fixed.

use super::conv::{Gather, Layout, Problem, Step, Window as ConvWindow, WorkQueue};
use super::kernels::{self as k, Images, Kernel, View};
use super::{Act, Prepared};
use netc_compiler::ir::{
    BinaryOp, Dim, Epilogue, FusedBase, Graph, NodeIndex, NormAxis, Op, PoolKind,
};
use netc_compiler::memory_plan::MemoryPlan;
use std::collections::HashMap;

/// Where a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Val {
    /// Sample 0.
    pub ptr: *mut f32,
    /// Distance between samples (0 for values without a batch axis).
    pub stride: usize,
    /// Samples (1 for values without a batch axis).
    pub batch: usize,
}

/// The lowered program for one batch size.
pub struct Lowered {
    /// Kernels in execution order.
    pub kernels: Vec<Kernel>,
    /// The node each kernel came from.
    pub origins: Vec<NodeIndex>,
    /// Every value's location.
    pub vals: HashMap<NodeIndex, Val>,
}

/// What lowering needs besides the graph.
pub struct Ctx<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// Its memory plan.
    pub plan: &'a MemoryPlan,
    /// Packed and prepared weights.
    pub prepared: &'a Prepared,
    /// The arena (plan.arena·batch bytes, then attention scratch).
    pub arena: *mut f32,
    /// Its length in floats.
    pub arena_len: usize,
    /// Batch size.
    pub batch: usize,
    /// Generated activation kernels.
    pub acts: &'a HashMap<netc_compiler::ir::Activation, Act>,
    /// The generated exp kernel.
    pub exp: Act,
}

/// Floats of arena scratch the lowering needs beyond the plan: first the
/// scaled weights of [`scaled_input_conv`] ([`scaled_weights_floats`]), the
/// global pools' means ([`pool_means_floats`]), then attention's q/k/v and
/// context (the arena's last floats).
pub fn scratch_floats(g: &Graph, batch: usize) -> usize {
    let attention = g
        .topo_order()
        .into_iter()
        .filter_map(|n| match g.node(n).op {
            Op::SelfAttention { .. } => {
                Some(g.node(n).shape.numel_per_sample() as usize * batch * 4)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0);
    attention + scaled_weights_floats(g, batch) + pool_means_floats(g, batch)
}

/// Floats for every global average pool's output, each in a slot of its
/// own after the scaled weights: where a depthwise convolution that computes
/// the pool writes it (the plan may have put the pool's own buffer over
/// the convolution's input, which the convolution still reads).
fn pool_means_floats(g: &Graph, batch: usize) -> usize {
    g.topo_order()
        .into_iter()
        .filter(|&n| matches!(g.node(n).op, Op::AdaptiveAvgPool { size: [1, 1], .. }))
        .map(|n| g.node(n).shape.numel_per_sample() as usize * batch)
        .sum()
}

/// Floats for the largest packed weights of a pointwise convolution whose
/// input is a product (`Op::Binary(Mul)`), which [`scaled_input_conv`] may
/// scale into the scratch after the plan's arena; none for batches above 1,
/// which it leaves alone.
fn scaled_weights_floats(g: &Graph, batch: usize) -> usize {
    if batch != 1 {
        return 0;
    }
    g.topo_order()
        .into_iter()
        .filter_map(|n| {
            let node = g.node(n);
            let window = match &node.op {
                Op::Conv2d { window, .. }
                | Op::Fused {
                    base: FusedBase::Conv2d { window, .. },
                    ..
                } => window,
                _ => return None,
            };
            let input = *g.operands(n).first()?;
            let is_product = matches!(g.node(input).op, Op::Binary(BinaryOp::Mul));
            let (o, i) = (node.shape.per_sample(), g.node(input).shape.per_sample());
            (is_product && window.kernel == [1, 1] && o.len() == 3 && i.len() == 3)
                .then(|| super::gemm::packed_len(o[0], i[0]))
        })
        .max()
        .unwrap_or(0)
}

fn contiguous(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

impl Ctx<'_> {
    fn dims(&self, n: NodeIndex) -> Vec<usize> {
        self.graph
            .node(n)
            .shape
            .0
            .iter()
            .map(|d| match d {
                Dim::Batch => self.batch,
                Dim::Known(k) => *k,
            })
            .collect()
    }

    fn per_sample(&self, n: NodeIndex) -> Vec<usize> {
        self.graph.node(n).shape.per_sample()
    }

    fn images(v: Val) -> Images {
        Images {
            ptr: v.ptr,
            sample_stride: v.stride,
        }
    }

    /// The full view of a value (batch axis first when it has one).
    fn view(&self, n: NodeIndex, v: Val) -> View {
        let dims = self.dims(n);
        let shape = &self.graph.node(n).shape;
        let mut strides = contiguous(&dims);
        if shape.has_batch() {
            let ps = contiguous(&shape.per_sample());
            strides = std::iter::once(v.stride).chain(ps).collect();
        }
        View {
            ptr: v.ptr,
            dims,
            strides,
        }
    }

    /// `v` broadcast (right-aligned) to `dims`.
    fn broadcast(v: &View, dims: &[usize]) -> View {
        let off = dims.len() - v.dims.len();
        let strides = (0..dims.len())
            .map(|i| {
                if i < off || v.dims[i - off] == 1 && dims[i] != 1 {
                    0
                } else {
                    v.strides[i - off]
                }
            })
            .collect();
        View {
            ptr: v.ptr,
            dims: dims.to_vec(),
            strides,
        }
    }

    fn offset(&self, p: *mut f32) -> Result<usize, String> {
        let a = self.arena as usize;
        let q = p as usize;
        if q < a || q >= a + self.arena_len * 4 {
            return Err("a GEMM operand is not in the arena (a convolution or linear layer over a learned tensor)".into());
        }
        Ok((q - a) / 4)
    }

    fn act(&self, a: netc_compiler::ir::Activation) -> Act {
        use netc_compiler::ir::Activation as A;
        match a {
            A::Relu => Act::Relu,
            A::Relu6 => Act::Relu6,
            other => self.acts[&other],
        }
    }
}

/// A strided copy kernel, its views coalesced.
fn copy(mut src: View, mut dst: View) -> Kernel {
    k::coalesce(&mut [&mut src, &mut dst]);
    Kernel::Copy(k::Copy {
        src,
        dst,
        queue: WorkQueue::default(),
    })
}

/// Why a graph could not be lowered, and the node being lowered then.
#[derive(Debug)]
pub struct LowerError {
    /// The node, when the failure belongs to one.
    pub node: Option<NodeIndex>,
    /// What failed.
    pub message: String,
}

/// Lowers `ctx.graph`; `inputs` are bound by the caller to the returned
/// values. An error names the node being lowered, so that the diagnostic can
/// point at the source that made it.
pub fn lower(ctx: &Ctx<'_>) -> Result<Lowered, LowerError> {
    let mut at = None;
    lower_nodes(ctx, &mut at).map_err(|message| LowerError { node: at, message })
}

/// [`lower`], recording in `at` the node being lowered.
fn lower_nodes(ctx: &Ctx<'_>, at: &mut Option<NodeIndex>) -> Result<Lowered, String> {
    let g = ctx.graph;
    let plan = ctx.plan;
    let b = ctx.batch;
    let mut vals: HashMap<NodeIndex, Val> = HashMap::new();
    let mut kernels = Vec::new();
    // The next free float of the pool means' scratch (`pool_means_floats`).
    let mut means_at = plan.arena as usize / 4 * b + scaled_weights_floats(g, b);
    let mut origins = Vec::new();
    for id in g.topo_order() {
        *at = Some(id);
        let node = g.node(id);
        let operands = g.operands(id);
        let batched = node.shape.has_batch();
        let planned = |id: NodeIndex| -> Option<Val> {
            let buf = plan.buffer_of.get(&id)?;
            let buffer = &plan.buffers[*buf];
            let base = buffer.offset as usize / 4 * b
                + plan.offset_in_buffer.get(&id).copied().unwrap_or(0) as usize / 4;
            Some(Val {
                // SAFETY: within the arena (checked below).
                ptr: unsafe { ctx.arena.add(base) },
                stride: if batched {
                    buffer.bytes as usize / 4
                } else {
                    0
                },
                batch: if batched { b } else { 1 },
            })
        };
        let val = match &node.op {
            Op::Parameter { .. } => {
                let p = ctx.prepared.raw(id, 0);
                Val {
                    ptr: p as *mut f32,
                    stride: 0,
                    batch: 1,
                }
            }
            Op::Reshape { .. } | Op::Flatten { .. }
                if plan.buffer_of.contains_key(&id)
                    && plan.buffer_of.get(&id) == plan.buffer_of.get(&operands[0]) =>
            {
                // A view: same memory as the operand.
                let v = vals[&operands[0]];
                Val {
                    batch: if batched { b } else { 1 },
                    ..v
                }
            }
            _ => planned(id)
                .ok_or_else(|| format!("`{}` has no buffer in the memory plan", node.name))?,
        };
        // Every value must lie inside its memory.
        if !matches!(node.op, Op::Parameter { .. }) {
            let numel = node.shape.numel_per_sample() as usize;
            let end =
                (val.ptr as usize - ctx.arena as usize) / 4 + (val.batch - 1) * val.stride + numel;
            if end > ctx.arena_len {
                return Err(format!("`{}` would lie outside the arena", node.name));
            }
        }
        vals.insert(id, val);
        let x = |i: usize| vals[&operands[i]];
        let kernel = match &node.op {
            Op::Input { .. } | Op::Parameter { .. } => None,
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Dropout { .. } | Op::Identity => {
                let src = x(0);
                if src.ptr == val.ptr && (src.stride == val.stride || val.batch == 1) {
                    None
                } else {
                    // Not a view (e.g. across a concat's slice): copy contiguously.
                    // The operand read in the output's dims: samples at its own
                    // stride, each sample contiguous.
                    let dims = ctx.dims(id);
                    let strides = if batched {
                        std::iter::once(src.stride)
                            .chain(contiguous(&dims[1..]))
                            .collect()
                    } else {
                        contiguous(&dims)
                    };
                    let flat_src = View {
                        ptr: src.ptr,
                        dims,
                        strides,
                    };
                    Some(copy(flat_src, ctx.view(id, val)))
                }
            }
            Op::Conv2d { window, groups, .. }
            | Op::Fused {
                base: FusedBase::Conv2d { window, groups, .. },
                ..
            } => {
                let epi = match &node.op {
                    Op::Fused { epilogue, .. } => epilogue.clone(),
                    _ if node.params.len() > 1 => vec![Epilogue::Bias],
                    _ => Vec::new(),
                };
                match scaled_input_conv(ctx, id, &operands, &vals, val, window, *groups, &epi)? {
                    Some((mul, scale, gemm))
                        if origins.last() == Some(&mul)
                            && matches!(kernels.last(), Some(Kernel::Binary(_))) =>
                    {
                        // The scaling's own kernel gives way to the weights'.
                        kernels.pop();
                        origins.pop();
                        kernels.push(scale);
                        origins.push(mul);
                        Some(gemm)
                    }
                    _ => Some(conv(ctx, id, &operands, &vals, val, window, *groups, &epi)?),
                }
            }
            Op::Linear { .. } => {
                let mut epi = Vec::new();
                if node.params.len() > 1 {
                    epi.push(Epilogue::Bias);
                }
                Some(linear(ctx, id, &operands, &vals, val, &epi)?)
            }
            Op::Fused {
                base: FusedBase::Linear { .. },
                epilogue,
            } => Some(linear(ctx, id, &operands, &vals, val, epilogue)?),
            Op::BatchNorm { .. } | Op::LayerScale { .. } => {
                let dims = ctx.per_sample(id);
                let axis = match node.op {
                    Op::LayerScale { axis } => axis - 1,
                    _ => 0,
                };
                let outer: usize = dims[..axis].iter().product();
                let inner: usize = dims[axis + 1..].iter().product();
                let (scale, shift) = ctx.prepared.affine(id);
                Some(Kernel::ChannelAffine(k::ChannelAffine {
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: val.batch,
                    dims: [outer, dims[axis], inner],
                    scale: scale.to_vec(),
                    shift: shift.map(|s| s.to_vec()),
                    act: None,
                    queue: WorkQueue::default(),
                }))
            }
            Op::Act(a)
                if g.sole_user(operands[0]) == Some(id)
                    && origins.last() == Some(&operands[0])
                    && matches!(kernels.last(), Some(Kernel::ChannelAffine(k)) if k.act.is_none()) =>
            {
                // The batch norm just emitted feeds only this activation:
                // it writes this node's output with the activation applied,
                // one pass over the tensor instead of two (DenseNet's 58
                // pre-activation norm + ReLU pairs). Its own output is never
                // written; nothing else reads it.
                if let Some(Kernel::ChannelAffine(k)) = kernels.last_mut() {
                    k.out = Ctx::images(val);
                    k.act = Some(ctx.act(*a));
                }
                None
            }
            Op::Act(a) => {
                // Input and output may have different sample strides (a
                // concat's slice); each sample is contiguous in both.
                Some(Kernel::Activation(k::Activation {
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: val.batch,
                    len: node.shape.numel_per_sample() as usize,
                    act: ctx.act(*a),
                    queue: WorkQueue::default(),
                }))
            }
            Op::Binary(op) => {
                let mut out = ctx.view(id, val);
                let mut a = Ctx::broadcast(&ctx.view(operands[0], x(0)), &out.dims);
                let mut bb = Ctx::broadcast(&ctx.view(operands[1], x(1)), &out.dims);
                k::coalesce(&mut [&mut a, &mut bb, &mut out]);
                Some(Kernel::Binary(k::Binary {
                    op: *op,
                    a,
                    b: bb,
                    out,
                    queue: WorkQueue::default(),
                }))
            }
            Op::Pool {
                kind,
                window,
                count_include_pad,
                ..
            } => {
                let i = ctx.per_sample(operands[0]);
                let o = ctx.per_sample(id);
                if *kind == PoolKind::Avg && window.dilation != [1, 1] {
                    return Err("dilated average pooling".into());
                }
                Some(Kernel::Pool(k::Pool {
                    kind: *kind,
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: b,
                    channels: i[0],
                    in_hw: [i[1], i[2]],
                    out_hw: [o[1], o[2]],
                    window: *window,
                    count_include_pad: *count_include_pad,
                    queue: WorkQueue::default(),
                }))
            }
            Op::AdaptiveAvgPool { size, .. }
                if *size == [1, 1]
                    && origins.last() == Some(&operands[0])
                    && matches!(kernels.last(), Some(Kernel::Depthwise(d))
                        if d.means.is_none() && d.out_chw[0] == ctx.per_sample(id)[0]) =>
            {
                // A global average of the depthwise convolution just
                // emitted: it writes each channel's mean as it finishes the
                // plane (a squeeze-excitation's pool), no second pass. The
                // means go to a scratch slot of this pool's own, not to the
                // planned buffer, which may lie over the convolution's
                // input: the pool's users read them there.
                let channels = ctx.per_sample(id)[0];
                if means_at + channels * b > ctx.arena_len {
                    return Err(format!(
                        "`{}`: the pool's scratch would lie outside the arena",
                        node.name
                    ));
                }
                let means = Val {
                    // SAFETY: inside the arena (checked above).
                    ptr: unsafe { ctx.arena.add(means_at) },
                    stride: channels,
                    batch: b,
                };
                means_at += channels * b;
                vals.insert(id, means);
                if let Some(Kernel::Depthwise(d)) = kernels.last_mut() {
                    d.means = Some(Ctx::images(means));
                }
                None
            }
            Op::AdaptiveAvgPool { size, .. } => {
                let i = ctx.per_sample(operands[0]);
                Some(Kernel::AdaptivePool(k::AdaptivePool {
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: b,
                    channels: i[0],
                    in_hw: [i[1], i[2]],
                    out_hw: *size,
                    queue: WorkQueue::default(),
                }))
            }
            Op::Pad { pad, value } => {
                let i = ctx.per_sample(operands[0]);
                Some(Kernel::Pad(k::Pad {
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: b,
                    channels: i[0],
                    in_hw: [i[1], i[2]],
                    pad: *pad,
                    value: *value as f32,
                    queue: WorkQueue::default(),
                }))
            }
            Op::Permute { perm } => {
                let src = ctx.view(operands[0], x(0));
                let permuted = View {
                    ptr: src.ptr,
                    dims: perm.iter().map(|&p| src.dims[p]).collect(),
                    strides: perm.iter().map(|&p| src.strides[p]).collect(),
                };
                Some(copy(permuted, ctx.view(id, val)))
            }
            Op::Slice { axis, start, .. } | Op::Select { axis, index: start } => {
                let src = ctx.view(operands[0], x(0));
                let mut dims = src.dims.clone();
                let mut strides = src.strides.clone();
                // SAFETY: start is inside the axis (checked by shape inference).
                let ptr = unsafe { src.ptr.add(start * src.strides[*axis]) };
                match node.op {
                    Op::Select { .. } => {
                        dims.remove(*axis);
                        strides.remove(*axis);
                    }
                    _ => dims[*axis] = ctx.dims(id)[*axis],
                }
                Some(copy(View { ptr, dims, strides }, ctx.view(id, val)))
            }
            Op::Concat { axis } => {
                let out = ctx.view(id, val);
                let mut at = 0;
                let mut parts = Vec::new();
                for &o in &operands {
                    let ov = ctx.view(o, vals[&o]);
                    let width = ov.dims[*axis];
                    let mut dst = out.clone();
                    // SAFETY: inside the output (the operands' widths sum to its axis).
                    dst.ptr = unsafe { out.ptr.add(at * out.strides[*axis]) };
                    dst.dims[*axis] = width;
                    at += width;
                    // Written in place by the memory plan: nothing to copy.
                    let src = Ctx::broadcast(&ov, &dst.dims);
                    if src.ptr == dst.ptr && src.strides == dst.strides {
                        continue;
                    }
                    parts.push(copy(src, dst));
                }
                for p in parts {
                    kernels.push(p);
                    origins.push(id);
                }
                None
            }
            Op::ExpandBatch => {
                let dst = ctx.view(id, val);
                let src = Ctx::broadcast(&ctx.view(operands[0], x(0)), &dst.dims);
                Some(copy(src, dst))
            }
            Op::Softmax { .. } | Op::LayerNorm { .. } => {
                let dims = ctx.dims(id);
                let axis = match node.op {
                    Op::Softmax { axis } => axis,
                    Op::LayerNorm {
                        axis: NormAxis::Last,
                        ..
                    } => dims.len() - 1,
                    _ => 1,
                };
                if !batched {
                    return Err(format!(
                        "`{}`: a normalization of a value without a batch axis (computed from parameters alone)",
                        node.name
                    ));
                }
                if axis == 0 {
                    return Err(format!("`{}`: reduction over the batch", node.name));
                }
                let outer: usize = dims[1..axis].iter().product();
                let inner: usize = dims[axis + 1..].iter().product();
                let kind = match node.op {
                    Op::LayerNorm { eps, .. } => k::ReduceKind::LayerNorm {
                        eps: eps as f32,
                        gamma: ctx.prepared.raw(id, 0),
                        beta: ctx.prepared.raw(id, 1),
                    },
                    _ => k::ReduceKind::Softmax,
                };
                Some(Kernel::Reduce(k::Reduce {
                    kind,
                    x: Ctx::images(x(0)),
                    out: Ctx::images(val),
                    batch: b,
                    dims: [outer, dims[axis], inner],
                    exp: ctx.exp,
                    queue: WorkQueue::default(),
                }))
            }
            Op::MatMul => {
                let out = ctx.view(id, val);
                let r = out.dims.len();
                let av = ctx.view(operands[0], x(0));
                let bv = ctx.view(operands[1], x(1));
                let mut adims = out.dims.clone();
                adims[r - 1] = av.dims[av.dims.len() - 1];
                let mut bdims = out.dims.clone();
                bdims[r - 2] = adims[r - 1];
                let a = Ctx::broadcast(&av, &adims);
                let bb = Ctx::broadcast(&bv, &bdims);
                Some(Kernel::MatMul(k::MatMul {
                    a,
                    b: bb,
                    out,
                    queue: WorkQueue::default(),
                }))
            }
            Op::SelfAttention { heads, bias } => {
                Some(attention(ctx, id, &operands, &vals, val, *heads, *bias)?)
            }
        };
        if let Some(kern) = kernel {
            kernels.push(kern);
            origins.push(id);
        }
    }
    Ok(Lowered {
        kernels,
        origins,
        vals,
    })
}

/// A pointwise convolution whose input is `x · s`, `s` one scale per
/// channel of `x` (a squeeze-excitation block's output feeding its
/// projection) and nothing else reading the product: lowered as a
/// [`k::ScaleColumns`] kernel that scales the convolution's packed weights
/// by `s` into the arena's scratch after the plan (the product is planned in
/// place over `x`), and the convolution over `x` with those weights. `None`
/// where that does not apply: batches above 1 (the scales differ per
/// sample), convolutions that are not a single channel-major product, an
/// output planned over `x`, or more than half as many output channels as
/// positions (EfficientNet-B0's 112-channel projections at 14×14 then
/// spent in the scaling what the product had cost). Returns the product's
/// node, the scaling kernel and the convolution.
#[allow(clippy::too_many_arguments)]
fn scaled_input_conv(
    ctx: &Ctx<'_>,
    id: NodeIndex,
    operands: &[NodeIndex],
    vals: &HashMap<NodeIndex, Val>,
    out: Val,
    window: &netc_compiler::ir::Window,
    groups: usize,
    epilogue: &[Epilogue],
) -> Result<Option<(NodeIndex, Kernel, Kernel)>, String> {
    let g = ctx.graph;
    let mul = operands[0];
    let pointwise = window.kernel == [1, 1] && window.stride == [1, 1] && window.pad == [0; 4];
    if ctx.batch != 1
        || groups != 1
        || !pointwise
        || g.sole_user(mul) != Some(id)
        || !matches!(g.node(mul).op, Op::Binary(BinaryOp::Mul))
    {
        return Ok(None);
    }
    let factors = g.operands(mul);
    let product = ctx.per_sample(mul);
    let Some((x, s)) = [(0, 1), (1, 0)].into_iter().find_map(|(i, j)| {
        let (x, s) = (factors[i], factors[j]);
        let sd = ctx.per_sample(s);
        (ctx.per_sample(x) == product
            && product.len() == 3
            && sd.len() == 3
            && sd == [product[0], 1, 1])
        .then_some((x, s))
    }) else {
        return Ok(None);
    };
    let mut ops = operands.to_vec();
    ops[0] = x;
    let Kernel::Gemm(mut gemm) = conv(ctx, id, &ops, vals, out, window, groups, epilogue)? else {
        return Ok(None);
    };
    let [p] = gemm.problems.as_mut_slice() else {
        return Ok(None);
    };
    let floats = super::gemm::packed_len(p.m, p.k);
    // The plan may have put the convolution's output over `x` (a residual
    // the output replaces, as the plan does for `x + conv(x · s)`): the
    // convolution would then overwrite the input it reads.
    let bytes = |n: NodeIndex| {
        let start = vals[&n].ptr as usize;
        start..start + 4 * g.node(n).shape.numel_per_sample() as usize
    };
    let (xs, os) = (bytes(x), bytes(id));
    if p.a.is_null()
        || !p.a_cols.is_null()
        || !matches!(p.b, Gather::Strided(_))
        || p.m * 2 > p.n
        || floats > scaled_weights_floats(g, ctx.batch)
        || (xs.start < os.end && os.start < xs.end)
    {
        return Ok(None);
    }
    // The scratch right after the plan's buffers: no value lives there.
    let at = ctx.plan.arena as usize / 4 * ctx.batch;
    if at + floats > ctx.arena_len {
        return Err("the scaled weights' scratch would lie outside the arena".into());
    }
    // SAFETY: inside the arena (checked above).
    let dst = unsafe { ctx.arena.add(at) };
    let scale = Kernel::ScaleColumns(k::ScaleColumns {
        src: p.a,
        dst,
        scale: vals[&s].ptr,
        m: p.m,
        k: p.k,
        queue: WorkQueue::default(),
    });
    p.a = dst;
    Ok(Some((mul, scale, Kernel::Gemm(gemm))))
}

#[allow(clippy::too_many_arguments)]
fn conv(
    ctx: &Ctx<'_>,
    id: NodeIndex,
    operands: &[NodeIndex],
    vals: &HashMap<NodeIndex, Val>,
    out: Val,
    window: &netc_compiler::ir::Window,
    groups: usize,
    epilogue: &[Epilogue],
) -> Result<Kernel, String> {
    let i = ctx.per_sample(operands[0]);
    let o = ctx.per_sample(id);
    let (cin, h, w) = (i[0], i[1], i[2]);
    let (cout, oh, ow) = (o[0], o[1], o[2]);
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let [kh, kw] = window.kernel;
    let x = vals[&operands[0]];
    let steps = |row0: usize, out_rows: usize| {
        epilogue_steps(
            ctx,
            id,
            operands,
            vals,
            epilogue,
            row0,
            row0 * out_rows,
            out_rows,
            1,
        )
    };
    if cin_g == 1 && kh * kw > 1 {
        return Ok(Kernel::Depthwise(k::Depthwise {
            x: Ctx::images(x),
            out: Ctx::images(out),
            in_hw: [h, w],
            out_chw: [cout, oh, ow],
            multiplier: cout_g,
            window: *window,
            weights: ctx.prepared.raw(id, 0),
            epilogue: steps(0, oh * ow)?,
            arena: ctx.arena,
            batch: ctx.batch,
            means: None,
            queue: Default::default(),
        }));
    }
    if let Some(weights) = ctx.prepared.grouped(id) {
        return Ok(Kernel::Grouped(k::Grouped::new(
            Ctx::images(x),
            Ctx::images(out),
            [cin, h, w],
            [cout, oh, ow],
            groups,
            *window,
            weights,
            steps(0, oh * ow)?,
            ctx.arena,
            ctx.batch,
        )));
    }
    let xo = ctx.offset(x.ptr)?;
    let oo = ctx.offset(out.ptr)?;
    let conv_window = ConvWindow {
        in_hw: [h, w],
        out_w: ow,
        kernel: window.kernel,
        stride: window.stride,
        pad: [window.pad[0], window.pad[1]],
        dilation: window.dilation,
    };
    if let Some(u) = ctx.prepared.winograd(id) {
        let conv = Problem {
            m: cout,
            k: cin * kh * kw,
            n: ctx.batch * oh * ow,
            per_sample: oh * ow,
            a: u,
            a_cols: std::ptr::null(),
            b: Gather::Window(
                Layout {
                    base: xo,
                    sample_stride: x.stride,
                    row_stride: h * w,
                    col_stride: 1,
                },
                conv_window,
            ),
            out: Layout {
                base: oo,
                sample_stride: out.stride,
                row_stride: oh * ow,
                col_stride: 1,
            },
            epilogue: steps(0, oh * ow)?,
            arena: ctx.arena,
            queue: WorkQueue::default(),
        };
        return Ok(Kernel::Winograd(k::Winograd(super::conv::Winograd {
            conv,
        })));
    }
    let pointwise = kh == 1 && kw == 1 && window.stride == [1, 1] && window.pad == [0; 4];
    let mut problems = Vec::new();
    for grp in 0..groups {
        let xl = Layout {
            base: xo + grp * cin_g * h * w,
            sample_stride: x.stride,
            row_stride: h * w,
            col_stride: 1,
        };
        let b = if pointwise {
            Gather::Strided(xl)
        } else {
            Gather::Window(xl, conv_window)
        };
        // Pixel-major convolutions (`conv/pixels.rs`) have only their
        // B-operand packing.
        let cols = ctx.prepared.pixel_cols(id, grp);
        let p = Problem {
            m: cout_g,
            k: cin_g * kh * kw,
            n: ctx.batch * oh * ow,
            per_sample: oh * ow,
            a: match cols {
                Some(_) => std::ptr::null(),
                None => ctx.prepared.packed(id, grp),
            },
            a_cols: cols.unwrap_or(std::ptr::null()),
            b,
            out: Layout {
                base: oo + grp * cout_g * oh * ow,
                sample_stride: out.stride,
                row_stride: oh * ow,
                col_stride: 1,
            },
            epilogue: steps(grp * cout_g, oh * ow)?,
            arena: ctx.arena,
            queue: WorkQueue::default(),
        };
        if cols.is_some() && !p.paddable() {
            // A batch too large to pad at once: one problem per sample (one
            // sample always fits; the weights were packed only this way
            // because of that, see `conv::pads_one_sample`).
            for n in 0..ctx.batch {
                let shift = |l: Layout| Layout {
                    base: l.base + n * l.sample_stride,
                    ..l
                };
                let mut q = p.clone();
                q.n = oh * ow;
                q.b = match p.b {
                    Gather::Window(l, w) => Gather::Window(shift(l), w),
                    Gather::Strided(l) => Gather::Strided(shift(l)),
                };
                q.out = shift(p.out);
                for step in &mut q.epilogue {
                    if let Step::Add(l) = step {
                        *l = shift(*l);
                    }
                }
                if !q.paddable() {
                    return Err(format!(
                        "`{}`: one sample's padded input exceeds the pixel-major limit",
                        ctx.graph.node(id).name
                    ));
                }
                problems.push(q);
            }
            continue;
        }
        problems.push(p);
    }
    Ok(Kernel::Gemm(k::Gemm {
        problems,
        queue: WorkQueue::default(),
    }))
}

/// An op's epilogue as GEMM steps: the bias starts at row `row0` (a group's
/// first channel), residuals are addressed like the output (`rows`/`cols`
/// strides), offset by `res_base` floats.
#[allow(clippy::too_many_arguments)]
fn epilogue_steps(
    ctx: &Ctx<'_>,
    id: NodeIndex,
    operands: &[NodeIndex],
    vals: &HashMap<NodeIndex, Val>,
    epilogue: &[Epilogue],
    row0: usize,
    res_base: usize,
    row_stride: usize,
    col_stride: usize,
) -> Result<Vec<Step>, String> {
    epilogue
        .iter()
        .map(|e| {
            Ok(match e {
                // SAFETY: the bias holds one float per output row.
                Epilogue::Bias => Step::Bias(unsafe { ctx.prepared.raw(id, 1).add(row0) }),
                Epilogue::Act(a) => Step::Act(ctx.act(*a)),
                Epilogue::Add(i) => {
                    let r = vals[&operands[*i]];
                    Step::Add(Layout {
                        base: ctx.offset(r.ptr)? + res_base,
                        sample_stride: r.stride,
                        row_stride,
                        col_stride,
                    })
                }
            })
        })
        .collect()
}

fn linear(
    ctx: &Ctx<'_>,
    id: NodeIndex,
    operands: &[NodeIndex],
    vals: &HashMap<NodeIndex, Val>,
    out: Val,
    epilogue: &[Epilogue],
) -> Result<Kernel, String> {
    let i = ctx.per_sample(operands[0]);
    let o = ctx.per_sample(id);
    let in_f = *i.last().unwrap_or(&1);
    let out_f = *o.last().unwrap_or(&1);
    let rows = (ctx.graph.node(id).shape.numel_per_sample() as usize) / out_f;
    let x = vals[&operands[0]];
    if x.batch != ctx.batch {
        return Err("linear layer over a value without a batch axis".into());
    }
    let steps = epilogue_steps(ctx, id, operands, vals, epilogue, 0, 0, 1, out_f)?;
    let (a, a_cols) = ctx.prepared.token_major(id, 0);
    Ok(Kernel::Gemm(k::Gemm {
        problems: vec![Problem {
            m: out_f,
            k: in_f,
            n: ctx.batch * rows,
            per_sample: rows,
            a,
            a_cols,
            b: Gather::Strided(Layout {
                base: ctx.offset(x.ptr)?,
                sample_stride: x.stride,
                row_stride: 1,
                col_stride: in_f,
            }),
            out: Layout {
                base: ctx.offset(out.ptr)?,
                sample_stride: out.stride,
                row_stride: 1,
                col_stride: out_f,
            },
            epilogue: steps,
            arena: ctx.arena,
            queue: WorkQueue::default(),
        }],
        queue: WorkQueue::default(),
    }))
}

fn attention(
    ctx: &Ctx<'_>,
    id: NodeIndex,
    operands: &[NodeIndex],
    vals: &HashMap<NodeIndex, Val>,
    out: Val,
    heads: usize,
    bias: bool,
) -> Result<Kernel, String> {
    let o = ctx.per_sample(id);
    let (s, e) = (o[0], o[1]);
    let n = ctx.batch;
    let x = vals[&operands[0]];
    // Scratch after the plan's arena: qkv [N·S, 3E], then ctx [N·S, E].
    let scratch = ctx.arena_len - n * s * e * 4;
    let ctx_base = scratch + n * s * e * 3;
    let (in_b, out_w, out_b) = if bias {
        (
            Some(ctx.prepared.raw(id, 1)),
            2,
            Some(ctx.prepared.raw(id, 3)),
        )
    } else {
        (None, 1, None)
    };
    let (qkv_w, proj_w) = (
        ctx.prepared.token_major(id, 0),
        ctx.prepared.token_major(id, out_w),
    );
    let qkv = Problem {
        m: 3 * e,
        k: e,
        n: n * s,
        per_sample: s,
        a: qkv_w.0,
        a_cols: qkv_w.1,
        b: Gather::Strided(Layout {
            base: ctx.offset(x.ptr)?,
            sample_stride: x.stride,
            row_stride: 1,
            col_stride: e,
        }),
        out: Layout {
            base: scratch,
            sample_stride: s * 3 * e,
            row_stride: 1,
            col_stride: 3 * e,
        },
        epilogue: in_b.map(Step::Bias).into_iter().collect(),
        arena: ctx.arena,
        queue: WorkQueue::default(),
    };
    let proj = Problem {
        m: e,
        k: e,
        n: n * s,
        per_sample: s,
        a: proj_w.0,
        a_cols: proj_w.1,
        b: Gather::Strided(Layout {
            base: ctx_base,
            sample_stride: s * e,
            row_stride: 1,
            col_stride: e,
        }),
        out: Layout {
            base: ctx.offset(out.ptr)?,
            sample_stride: out.stride,
            row_stride: 1,
            col_stride: e,
        },
        epilogue: out_b.map(Step::Bias).into_iter().collect(),
        arena: ctx.arena,
        queue: WorkQueue::default(),
    };
    Ok(Kernel::Attention(Box::new(k::Attention {
        qkv,
        proj,
        // SAFETY: inside the scratch part of the arena.
        qkv_ptr: unsafe { ctx.arena.add(scratch) },
        ctx_ptr: unsafe { ctx.arena.add(ctx_base) },
        nseh: [n, s, e, heads],
        exp: ctx.exp,
        heads: WorkQueue::default(),
    })))
}
