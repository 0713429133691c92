//! The reference backend: every IR op lowered to candle-core tensor ops. Simple
//! and obviously right; the oracle the optimizing backends are tested against.

mod kernels;

use crate::weights::{HostTensor, Weights};
use candle_core::{DType, Device, Tensor};
use netc_compiler::ir::{
    Activation, BinaryOp, Dim, Epilogue, FusedBase, Graph, NodeIndex, NormAxis, Op, PoolKind,
};
use netc_grammar::Diagnostic;
use std::collections::HashMap;

/// A graph prepared for candle: weights resident on the device, operands
/// resolved, and each value's last use known so memory is released early.
pub struct CandleProgram {
    graph: Graph,
    device: Device,
    order: Vec<NodeIndex>,
    operands: HashMap<NodeIndex, Vec<NodeIndex>>,
    /// For each node, the values that die once it has run.
    frees: HashMap<NodeIndex, Vec<NodeIndex>>,
    params: HashMap<NodeIndex, Vec<Tensor>>,
}

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn internal(e: candle_core::Error) -> Diagnostic {
    Diagnostic::new(
        "netc::backend",
        format!("candle failed: {}", first_line(&e)),
    )
    .help("this is a bug in netc's candle lowering; please report it with the model")
}

impl CandleProgram {
    /// Prepares `graph` with `weights` (which must have been validated against it).
    pub fn new(graph: &Graph, weights: &Weights, device: &Device) -> Result<Self, Diagnostic> {
        let order = graph.topo_order();
        let mut operands = HashMap::new();
        let mut last_use: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        for &id in &order {
            let ops = graph.operands(id);
            for &o in &ops {
                last_use.insert(o, id);
            }
            operands.insert(id, ops);
        }
        let outputs: Vec<NodeIndex> = graph.outputs.iter().map(|o| o.node).collect();
        let mut frees: HashMap<NodeIndex, Vec<NodeIndex>> = HashMap::new();
        for (v, user) in last_use {
            if !outputs.contains(&v) {
                frees.entry(user).or_default().push(v);
            }
        }
        let mut params = HashMap::new();
        for &id in &order {
            let node = graph.node(id);
            let mut ts = Vec::new();
            for p in &node.params {
                let w = weights.get(&p.key).ok_or_else(|| {
                    Diagnostic::new("netc::weights", format!("no weights for `{}`", p.key))
                        .label(node.span, "this layer")
                })?;
                ts.push(Tensor::from_slice(&w.data, w.shape.as_slice(), device).map_err(internal)?);
            }
            params.insert(id, ts);
        }
        Ok(CandleProgram {
            graph: graph.clone(),
            device: device.clone(),
            order,
            operands,
            frees,
            params,
        })
    }

    /// The graph this program runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Runs the network on host tensors (one per graph input, in order; any batch size).
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, Diagnostic> {
        let ins = self.check_inputs(inputs)?;
        let outs = self.run_tensors(ins)?;
        outs.into_iter()
            .map(|t| {
                let shape = t.dims().to_vec();
                let data = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(internal)?;
                Ok(HostTensor { shape, data })
            })
            .collect()
    }

    fn check_inputs(&self, inputs: &[HostTensor]) -> Result<Vec<Tensor>, Diagnostic> {
        super::check_inputs(&self.graph, inputs)?;
        inputs
            .iter()
            .map(|t| {
                Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device).map_err(internal)
            })
            .collect()
    }

    /// Runs the network on device tensors.
    pub fn run_tensors(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Diagnostic> {
        let mut values: HashMap<NodeIndex, Tensor> = HashMap::new();
        let mut inputs = inputs.into_iter();
        let mut n = 1;
        for &id in &self.order {
            let node = self.graph.node(id);
            let args: Vec<&Tensor> = self.operands[&id].iter().map(|o| &values[o]).collect();
            let y = match &node.op {
                Op::Input { .. } => {
                    let t = inputs.next().ok_or_else(|| Diagnostic::new("netc::input", "too few inputs"))?;
                    n = t.dim(0).map_err(internal)?;
                    t
                }
                op => self.eval(op, &args, &self.params[&id], &node.shape, n).map_err(|e| {
                    Diagnostic::new("netc::backend", format!("candle failed in `{}` ({}): {}", node.name, op.mnemonic(), first_line(&e)))
                        .label(node.span, "this layer")
                        .help("this is a bug in netc's candle lowering; please report it with the model")
                })?,
            };
            values.insert(id, y);
            if let Some(dead) = self.frees.get(&id) {
                for d in dead {
                    values.remove(d);
                }
            }
        }
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|o| values[&o.node].clone())
            .collect())
    }

    /// Runs one node on host operands (batch 1 or more), for tools that drive
    /// execution themselves, such as the test that executes a memory plan.
    pub fn run_node(
        &self,
        id: NodeIndex,
        operands: &[HostTensor],
    ) -> Result<HostTensor, Diagnostic> {
        let node = self.graph.node(id);
        let xs: Vec<Tensor> = operands
            .iter()
            .map(|t| Tensor::from_slice(&t.data, t.shape.as_slice(), &self.device))
            .collect::<candle_core::Result<_>>()
            .map_err(internal)?;
        let refs: Vec<&Tensor> = xs.iter().collect();
        let batch = operands
            .first()
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(1);
        let y = self
            .eval(&node.op, &refs, &self.params[&id], &node.shape, batch)
            .map_err(internal)?;
        let shape = y.dims().to_vec();
        let data = y
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(internal)?;
        Ok(HostTensor { shape, data })
    }

    fn eval(
        &self,
        op: &Op,
        x: &[&Tensor],
        p: &[Tensor],
        shape: &netc_compiler::ir::Shape,
        batch: usize,
    ) -> candle_core::Result<Tensor> {
        let out_dims = || -> Vec<usize> {
            shape
                .0
                .iter()
                .map(|d| match d {
                    Dim::Batch => batch,
                    Dim::Known(k) => *k,
                })
                .collect()
        };
        Ok(match op {
            Op::Input { .. } => unreachable!("inputs are bound before evaluation"),
            Op::Parameter { .. } => p[0].clone(),
            Op::Conv2d { window, groups, .. } => {
                let o = out_dims();
                let y = kernels::conv2d(
                    x[0],
                    &p[0],
                    window.stride,
                    window.pad,
                    window.dilation,
                    *groups,
                    [o[2], o[3]],
                )?;
                match p.get(1) {
                    Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
                    None => y,
                }
            }
            Op::BatchNorm { eps } => {
                let (w, b, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
                let scale = w.broadcast_div(&(var + *eps)?.sqrt()?)?;
                let shift = (b - mean.broadcast_mul(&scale)?)?;
                let mut bshape = vec![1usize; x[0].rank()];
                bshape[1] = scale.dim(0)?;
                x[0].broadcast_mul(&scale.reshape(bshape.clone())?)?
                    .broadcast_add(&shift.reshape(bshape)?)?
            }
            Op::LayerNorm { eps, axis } => {
                let dim = match axis {
                    NormAxis::Last => x[0].rank() - 1,
                    NormAxis::ChannelsFirst => 1,
                };
                let mean = x[0].mean_keepdim(dim)?;
                let centered = x[0].broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(dim)?;
                let normed = centered.broadcast_div(&(var + *eps)?.sqrt()?)?;
                let mut bshape = vec![1usize; x[0].rank()];
                bshape[dim] = p[0].dim(0)?;
                normed
                    .broadcast_mul(&p[0].reshape(bshape.clone())?)?
                    .broadcast_add(&p[1].reshape(bshape)?)?
            }
            Op::Linear { .. } => kernels::linear(x[0], &p[0], p.get(1))?,
            Op::MatMul => x[0].contiguous()?.broadcast_matmul(&x[1].contiguous()?)?,
            Op::Act(a) => activation(*a, x[0])?,
            Op::Binary(b) => match b {
                BinaryOp::Add => x[0].broadcast_add(x[1])?,
                BinaryOp::Sub => x[0].broadcast_sub(x[1])?,
                BinaryOp::Mul => x[0].broadcast_mul(x[1])?,
                BinaryOp::Div => x[0].broadcast_div(x[1])?,
            },
            Op::Pool {
                kind,
                window,
                count_include_pad,
                ..
            } => {
                let o = out_dims();
                match kind {
                    PoolKind::Max => kernels::max_pool(
                        x[0],
                        window.kernel,
                        window.stride,
                        window.pad,
                        window.dilation,
                        [o[2], o[3]],
                    )?,
                    PoolKind::Avg => kernels::avg_pool(
                        x[0],
                        window.kernel,
                        window.stride,
                        window.pad,
                        [o[2], o[3]],
                        *count_include_pad,
                    )?,
                }
            }
            Op::AdaptiveAvgPool { size, flatten } => {
                let y = kernels::adaptive_avg_pool(x[0], *size)?;
                if *flatten {
                    y.flatten_from(1)?
                } else {
                    y
                }
            }
            Op::Fused { base, epilogue } => {
                // The base is the plain conv/linear without its bias; the bias is a step.
                let mut y = self.eval(&base.unfused(false), &x[..1], &p[..1], shape, batch)?;
                for e in epilogue {
                    y = match e {
                        Epilogue::Bias => {
                            let b = &p[1];
                            let mut bshape = vec![1usize; y.rank()];
                            let axis = if matches!(base, FusedBase::Conv2d { .. }) {
                                1
                            } else {
                                y.rank() - 1
                            };
                            bshape[axis] = b.dim(0)?;
                            y.broadcast_add(&b.reshape(bshape)?)?
                        }
                        Epilogue::Act(a) => activation(*a, &y)?,
                        Epilogue::Add(i) => (y + x[*i])?,
                    };
                }
                y
            }
            Op::Pad { pad, value } => kernels::pad2d(x[0], *pad, *value)?,
            Op::Flatten { .. } | Op::Reshape { .. } => x[0].contiguous()?.reshape(out_dims())?,
            Op::Permute { perm } => x[0].permute(perm.clone())?.contiguous()?,
            Op::Concat { axis } => Tensor::cat(x, *axis)?,
            Op::Slice { axis, start, end } => x[0].narrow(*axis, *start, end - start)?,
            Op::Select { axis, index } => x[0].narrow(*axis, *index, 1)?.squeeze(*axis)?,
            Op::ExpandBatch => x[0].broadcast_as(out_dims())?.contiguous()?,
            Op::Softmax { axis } => kernels::softmax(x[0], *axis)?,
            Op::Dropout { .. } | Op::Identity => x[0].clone(),
            Op::SelfAttention { heads, bias } => {
                let (in_b, out_w, out_b) = if *bias {
                    (Some(&p[1]), &p[2], Some(&p[3]))
                } else {
                    (None, &p[1], None)
                };
                kernels::self_attention(x[0], &p[0], in_b, out_w, out_b, *heads)?
            }
            Op::LayerScale { axis } => {
                let mut bshape = vec![1usize; x[0].rank()];
                bshape[*axis] = p[0].elem_count();
                x[0].broadcast_mul(&p[0].reshape(bshape)?)?
            }
        })
    }
}

/// Computes a parameter-only op on the CPU (constant folding at load time).
pub fn evaluate_constant(
    op: &Op,
    inputs: &[HostTensor],
    shape: &[usize],
) -> candle_core::Result<Vec<f32>> {
    let dev = Device::Cpu;
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|t| Tensor::from_slice(&t.data, t.shape.as_slice(), &dev))
        .collect::<candle_core::Result<_>>()?;
    let y = match op {
        Op::Act(a) => activation(*a, &xs[0])?,
        Op::Binary(b) => match b {
            BinaryOp::Add => xs[0].broadcast_add(&xs[1])?,
            BinaryOp::Sub => xs[0].broadcast_sub(&xs[1])?,
            BinaryOp::Mul => xs[0].broadcast_mul(&xs[1])?,
            BinaryOp::Div => xs[0].broadcast_div(&xs[1])?,
        },
        Op::Reshape { .. } | Op::Identity | Op::Dropout { .. } => xs[0].reshape(shape)?,
        Op::Permute { perm } => xs[0].permute(perm.clone())?.contiguous()?,
        other => {
            return Err(candle_core::Error::Msg(format!(
                "cannot fold `{}`",
                other.mnemonic()
            )))
        }
    };
    y.reshape(shape)?.flatten_all()?.to_vec1::<f32>()
}

fn activation(a: Activation, x: &Tensor) -> candle_core::Result<Tensor> {
    let sigmoid = |x: &Tensor| (x.neg()?.exp()? + 1.0)?.recip();
    let hardsigmoid = |x: &Tensor| (x + 3.0)?.clamp(0f32, 6f32)? / 6.0;
    Ok(match a {
        Activation::Relu => x.relu()?,
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Silu => x.silu()?,
        Activation::Sigmoid => sigmoid(x)?,
        Activation::Hardswish => (x * hardsigmoid(x)?)?,
        Activation::Hardsigmoid => hardsigmoid(x)?,
        Activation::Tanh => x.tanh()?,
    })
}
