//! The semantics of each op that do not need data: output shape, parameter
//! slots, and multiply-accumulate count. Elaboration, the verifier and passes all
//! use these, so an op's rules live in exactly one place.

use crate::ir::{broadcast, Dim, Epilogue, NormAxis, Op, ParamRole, ParamSlot, Shape};

/// Why an op cannot be applied to its operands.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
    /// Short label for the operands involved (printed under each operand's span).
    pub operand_labels: Vec<(usize, String)>,
}

impl OpError {
    fn new(message: impl Into<String>) -> Self {
        OpError {
            message: message.into(),
            help: None,
            operand_labels: Vec::new(),
        }
    }

    fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }

    fn operand(mut self, i: usize, label: impl Into<String>) -> Self {
        self.operand_labels.push((i, label.into()));
        self
    }
}

type Res<T> = Result<T, OpError>;

/// How many operands an op takes: exact, or at least.
pub fn arity(op: &Op) -> (usize, bool) {
    match op {
        Op::Input { .. } | Op::Parameter { .. } => (0, false),
        Op::Binary(_) | Op::MatMul => (2, false),
        Op::Concat { .. } | Op::Fused { .. } => (1, true),
        _ => (1, false),
    }
}

fn rank_at_least(s: &Shape, n: usize, what: &str) -> Res<()> {
    if s.rank() < n {
        return Err(OpError::new(format!(
            "{what} needs a tensor of rank {n} or more, found {s}"
        ))
        .operand(0, format!("shape {s}")));
    }
    Ok(())
}

fn expect_nchw(s: &Shape, what: &str) -> Res<[usize; 3]> {
    match (s.rank(), s.known(1), s.known(2), s.known(3)) {
        (4, Some(c), Some(h), Some(w)) => Ok([c, h, w]),
        _ => Err(
            OpError::new(format!("{what} needs an [N, C, H, W] tensor, found {s}"))
                .operand(0, format!("shape {s}"))
                .help("flatten/reshape/permute the tensor into NCHW layout first"),
        ),
    }
}

/// The output shape of `op` applied to operands of these shapes.
pub fn infer(op: &Op, inputs: &[&Shape]) -> Res<Shape> {
    let (n, variadic) = arity(op);
    if inputs.len() < n || (!variadic && inputs.len() != n) {
        return Err(OpError::new(format!(
            "`{}` takes {}{} operand(s), found {}",
            op.mnemonic(),
            if variadic { "at least " } else { "" },
            n,
            inputs.len()
        )));
    }
    let x = inputs.first().copied();
    Ok(match op {
        Op::Input { dims } => Shape::batched(dims),
        Op::Parameter { shape } => Shape::fixed(shape),
        Op::Conv2d {
            out_channels,
            window,
            groups,
            ..
        } => {
            let x = x.unwrap();
            let [c, h, w] = expect_nchw(x, "conv")?;
            if *groups == 0 || c % groups != 0 || out_channels % groups != 0 {
                let bad = if *groups == 0 || c % groups != 0 {
                    format!("{c} input channels")
                } else {
                    format!("{out_channels} output channels")
                };
                return Err(
                    OpError::new(format!("{bad} are not divisible by groups = {groups}"))
                        .operand(0, format!("{c} channels"))
                        .help("input and output channels must both be multiples of `groups`"),
                );
            }
            let oh = window.out_extent(h, 0, false);
            let ow = window.out_extent(w, 1, false);
            match (oh, ow) {
                (Some(oh), Some(ow)) => Shape::batched(&[*out_channels, oh, ow]),
                _ => return Err(kernel_too_large(window, h, w, x)),
            }
        }
        Op::BatchNorm { .. } => {
            let x = x.unwrap();
            rank_at_least(x, 2, "batch_norm")?;
            x.clone()
        }
        Op::LayerNorm { axis, .. } => {
            let x = x.unwrap();
            rank_at_least(x, 2, "layer_norm")?;
            if *axis == NormAxis::ChannelsFirst && x.rank() < 3 {
                return Err(OpError::new(
                    "channels-first layer_norm needs an [N, C, ...] tensor",
                ));
            }
            x.clone()
        }
        Op::Linear { out_features, .. } => {
            let x = x.unwrap();
            rank_at_least(x, 2, "linear")?;
            let mut s = x.clone();
            *s.0.last_mut().unwrap() = Dim::Known(*out_features);
            s
        }
        Op::MatMul => {
            let (a, b) = (inputs[0], inputs[1]);
            if a.rank() < 2 || b.rank() < 2 {
                return Err(OpError::new("matmul needs operands of rank 2 or more"));
            }
            let k1 = a.0[a.rank() - 1];
            let k2 = b.0[b.rank() - 2];
            if k1 != k2 {
                return Err(OpError::new(format!(
                    "matmul inner dimensions differ: {a} @ {b}"
                ))
                .operand(0, format!("shape {a}"))
                .operand(1, format!("shape {b}"))
                .help("the last dim of the left operand must equal the second-to-last of the right"));
            }
            let batch_a = Shape(a.0[..a.rank() - 2].to_vec());
            let batch_b = Shape(b.0[..b.rank() - 2].to_vec());
            let mut s = broadcast(&batch_a, &batch_b).ok_or_else(|| {
                OpError::new(format!(
                    "matmul batch dimensions do not broadcast: {a} @ {b}"
                ))
                .operand(0, format!("shape {a}"))
                .operand(1, format!("shape {b}"))
            })?;
            s.0.push(a.0[a.rank() - 2]);
            s.0.push(b.0[b.rank() - 1]);
            s
        }
        Op::Act(_) | Op::Dropout { .. } | Op::Identity => x.unwrap().clone(),
        Op::Binary(b) => broadcast(inputs[0], inputs[1]).ok_or_else(|| {
            OpError::new(format!(
                "shape mismatch in `{}`: {} and {} do not broadcast",
                b.name(),
                inputs[0],
                inputs[1]
            ))
            .operand(0, format!("shape {}", inputs[0]))
            .operand(1, format!("shape {}", inputs[1]))
            .help("element-wise operands must have equal dims, or 1 where they differ")
        })?,
        Op::Pool {
            window, ceil_mode, ..
        } => {
            let x = x.unwrap();
            let [c, h, w] = expect_nchw(x, "pooling")?;
            if window.pad[0] * 2 > window.kernel[0] || window.pad[1] * 2 > window.kernel[1] {
                return Err(OpError::new(format!(
                    "pooling padding {}x{} is more than half the kernel {}x{}",
                    window.pad[0], window.pad[1], window.kernel[0], window.kernel[1]
                ))
                .help("PyTorch rejects such windows; use a larger kernel or less padding"));
            }
            match (
                window.out_extent(h, 0, *ceil_mode),
                window.out_extent(w, 1, *ceil_mode),
            ) {
                (Some(oh), Some(ow)) => Shape::batched(&[c, oh, ow]),
                _ => return Err(kernel_too_large(window, h, w, x)),
            }
        }
        Op::AdaptiveAvgPool { size, flatten } => {
            let x = x.unwrap();
            let [c, _, _] = expect_nchw(x, "adaptive_avg_pool")?;
            if *flatten {
                Shape::batched(&[c * size[0] * size[1]])
            } else {
                Shape::batched(&[c, size[0], size[1]])
            }
        }
        Op::Fused { base, epilogue } => {
            let plain = base.unfused(false);
            let out = infer(&plain, &inputs[..1])?;
            for e in epilogue {
                if let Epilogue::Add(i) = e {
                    match inputs.get(*i) {
                        Some(s) if **s == out => {}
                        Some(s) => {
                            return Err(OpError::new(format!(
                                "fused residual {s} differs from the output {out}"
                            )))
                        }
                        None => {
                            return Err(OpError::new(format!(
                                "fused epilogue reads missing operand {i}"
                            )))
                        }
                    }
                }
            }
            let adds = epilogue
                .iter()
                .filter(|e| matches!(e, Epilogue::Add(_)))
                .count();
            if inputs.len() != 1 + adds {
                return Err(OpError::new(format!(
                    "fused node has {} operands for {adds} residual(s)",
                    inputs.len()
                )));
            }
            out
        }
        Op::Pad { pad, .. } => {
            let x = x.unwrap();
            let [c, h, w] = expect_nchw(x, "pad")?;
            Shape::batched(&[c, h + pad[0] + pad[2], w + pad[1] + pad[3]])
        }
        Op::Flatten { start } => {
            let x = x.unwrap();
            if *start == 0 || *start >= x.rank() {
                return Err(
                    OpError::new(format!("flatten start {start} is out of range for {x}"))
                        .help("the batch (axis 0) is never flattened; start must be 1..rank"),
                );
            }
            let mut s = x.0[..*start].to_vec();
            let tail: usize = x.0[*start..]
                .iter()
                .map(|d| match d {
                    Dim::Known(n) => *n,
                    Dim::Batch => 1,
                })
                .product();
            s.push(Dim::Known(tail));
            Shape(s)
        }
        Op::Reshape { dims } => {
            let x = x.unwrap();
            let have = x.numel_per_sample();
            let want: u64 = dims.iter().map(|&d| d as u64).product();
            if have != want {
                return Err(OpError::new(format!(
                    "cannot reshape {x} ({have} elements per sample) into {dims:?} ({want})"
                ))
                .operand(0, format!("shape {x}")));
            }
            if x.has_batch() {
                Shape::batched(dims)
            } else {
                Shape::fixed(dims)
            }
        }
        Op::Permute { perm } => {
            let x = x.unwrap();
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return Err(OpError::new(format!(
                    "{perm:?} is not a permutation of the {} axes of {x}",
                    x.rank()
                )));
            }
            if x.has_batch() && perm[0] != 0 {
                return Err(OpError::new("permute must keep the batch axis first")
                    .help("start the permutation with 0"));
            }
            Shape(perm.iter().map(|&i| x.0[i]).collect())
        }
        Op::Concat { axis } => {
            let first = inputs[0];
            if *axis >= first.rank() {
                return Err(OpError::new(format!(
                    "concat axis {axis} is out of range for {first}"
                )));
            }
            let mut total = 0usize;
            for (i, s) in inputs.iter().enumerate() {
                let same_rank = s.rank() == first.rank();
                let others_equal =
                    same_rank && (0..s.rank()).all(|d| d == *axis || s.0[d] == first.0[d]);
                if !others_equal {
                    return Err(OpError::new(format!(
                        "shape mismatch in concat along axis {axis}: {first} and {s}"
                    ))
                    .operand(0, format!("shape {first}"))
                    .operand(i, format!("shape {s}"))
                    .help("all dims except the concatenated one must be equal"));
                }
                match s.0[*axis] {
                    Dim::Known(n) => total += n,
                    Dim::Batch => {
                        return Err(OpError::new("cannot concatenate along the batch axis"))
                    }
                }
            }
            let mut s = first.clone();
            s.0[*axis] = Dim::Known(total);
            s
        }
        Op::Slice { axis, start, end } => {
            let x = x.unwrap();
            match x.0.get(*axis) {
                Some(Dim::Known(n)) if start < end && end <= n => {
                    let mut s = x.clone();
                    s.0[*axis] = Dim::Known(end - start);
                    s
                }
                _ => {
                    return Err(OpError::new(format!(
                        "slice {start}..{end} of axis {axis} is out of range for {x}"
                    )))
                }
            }
        }
        Op::Select { axis, index } => {
            let x = x.unwrap();
            match x.0.get(*axis) {
                Some(Dim::Known(n)) if index < n => {
                    let mut s = x.clone();
                    s.0.remove(*axis);
                    s
                }
                _ => {
                    return Err(OpError::new(format!(
                        "index {index} of axis {axis} is out of range for {x}"
                    )))
                }
            }
        }
        Op::ExpandBatch => {
            let x = x.unwrap();
            if x.has_batch() || x.known(0) != Some(1) {
                return Err(OpError::new(format!(
                    "expand_batch needs a learned tensor with a leading 1, found {x}"
                )));
            }
            let mut s = x.clone();
            s.0[0] = Dim::Batch;
            s
        }
        Op::Softmax { axis } => {
            let x = x.unwrap();
            if *axis >= x.rank() {
                return Err(OpError::new(format!(
                    "softmax axis {axis} is out of range for {x}"
                )));
            }
            x.clone()
        }
        Op::SelfAttention { heads, .. } => {
            let x = x.unwrap();
            match (x.rank(), x.known(2)) {
                (3, Some(e)) if *heads > 0 && e % heads == 0 => x.clone(),
                (3, Some(e)) => {
                    return Err(OpError::new(format!(
                        "embedding dim {e} is not divisible by {heads} heads"
                    ))
                    .operand(0, format!("shape {x}")))
                }
                _ => {
                    return Err(OpError::new(format!(
                        "self-attention needs an [N, S, E] tensor, found {x}"
                    ))
                    .operand(0, format!("shape {x}")))
                }
            }
        }
        Op::LayerScale { axis } => {
            let x = x.unwrap();
            if *axis >= x.rank() || x.known(*axis).is_none() {
                return Err(OpError::new(format!(
                    "layer_scale axis {axis} is out of range for {x}"
                )));
            }
            x.clone()
        }
    })
}

fn kernel_too_large(window: &crate::ir::Window, h: usize, w: usize, x: &Shape) -> OpError {
    let kh = window.dilation[0] * (window.kernel[0] - 1) + 1;
    let kw = window.dilation[1] * (window.kernel[1] - 1) + 1;
    let ph = h + window.pad[0] + window.pad[2];
    let pw = w + window.pad[1] + window.pad[3];
    OpError::new(format!(
        "kernel {kh}x{kw} is larger than the padded input {ph}x{pw}"
    ))
    .operand(0, format!("shape {x}"))
    .help("use a smaller kernel or stride earlier, more padding, or a larger input resolution")
}

/// The parameter slots of a node named `name` (keys `name.weight`, ...).
pub fn params(op: &Op, name: &str, inputs: &[&Shape]) -> Vec<ParamSlot> {
    let slot = |suffix: &str, shape: Vec<usize>, role| ParamSlot {
        key: if suffix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            suffix.to_string()
        } else {
            format!("{name}.{suffix}")
        },
        shape,
        role,
    };
    let c = |axis: usize| inputs[0].known(axis).unwrap_or(0);
    let last = || {
        inputs[0].0.last().and_then(|d| match d {
            Dim::Known(n) => Some(*n),
            Dim::Batch => None,
        })
    };
    match op {
        Op::Parameter { shape } => vec![slot("", shape.clone(), ParamRole::Weight)],
        Op::Conv2d {
            out_channels,
            window,
            groups,
            bias,
        } => {
            let mut v = vec![slot(
                "weight",
                vec![
                    *out_channels,
                    c(1) / groups,
                    window.kernel[0],
                    window.kernel[1],
                ],
                ParamRole::Weight,
            )];
            if *bias {
                v.push(slot("bias", vec![*out_channels], ParamRole::Bias));
            }
            v
        }
        Op::BatchNorm { .. } => {
            let ch = c(1);
            vec![
                slot("weight", vec![ch], ParamRole::Weight),
                slot("bias", vec![ch], ParamRole::Bias),
                slot("running_mean", vec![ch], ParamRole::RunningMean),
                slot("running_var", vec![ch], ParamRole::RunningVar),
            ]
        }
        Op::LayerNorm { axis, .. } => {
            let ch = match axis {
                NormAxis::Last => last().unwrap_or(0),
                NormAxis::ChannelsFirst => c(1),
            };
            vec![
                slot("weight", vec![ch], ParamRole::Weight),
                slot("bias", vec![ch], ParamRole::Bias),
            ]
        }
        Op::Linear { out_features, bias } => {
            let mut v = vec![slot(
                "weight",
                vec![*out_features, last().unwrap_or(0)],
                ParamRole::Weight,
            )];
            if *bias {
                v.push(slot("bias", vec![*out_features], ParamRole::Bias));
            }
            v
        }
        Op::SelfAttention { bias, .. } => {
            let e = last().unwrap_or(0);
            let mut v = vec![slot("in_proj_weight", vec![3 * e, e], ParamRole::Weight)];
            if *bias {
                v.push(slot("in_proj_bias", vec![3 * e], ParamRole::Bias));
            }
            v.push(slot("out_proj.weight", vec![e, e], ParamRole::Weight));
            if *bias {
                v.push(slot("out_proj.bias", vec![e], ParamRole::Bias));
            }
            v
        }
        Op::Fused { base, epilogue } => params(
            &base.unfused(epilogue.contains(&Epilogue::Bias)),
            name,
            &inputs[..1],
        ),
        Op::LayerScale { axis } => {
            let ch = c(*axis);
            let trailing = inputs[0].rank() - axis - 1;
            let mut shape = vec![ch];
            shape.extend(std::iter::repeat_n(1, trailing));
            vec![slot("", shape, ParamRole::Weight)]
        }
        _ => Vec::new(),
    }
}

/// Multiply-accumulates per batch item, counted as torchvision's figures count them
/// (`torch.utils.flop_counter` / 2): convolutions, linear layers and matrix products,
/// attention's included; biases, norms and element-wise ops are free.
pub fn macs(op: &Op, inputs: &[&Shape], output: &Shape) -> u64 {
    let per = |s: &Shape| s.numel_per_sample();
    match op {
        Op::Conv2d { window, groups, .. } => {
            let cin = inputs[0].known(1).unwrap_or(0) as u64;
            per(output) * (cin / *groups as u64) * (window.kernel[0] * window.kernel[1]) as u64
        }
        Op::Fused { base, .. } => macs(&base.unfused(false), &inputs[..1], output),
        Op::Linear { .. } => {
            let k = inputs[0].0.last().map_or(0, |d| match d {
                Dim::Known(n) => *n as u64,
                Dim::Batch => 0,
            });
            per(output) * k
        }
        Op::MatMul => {
            let a = inputs[0];
            let k = a.known(a.rank() - 1).unwrap_or(0) as u64;
            per(output) * k
        }
        Op::SelfAttention { heads, .. } => {
            let s = inputs[0].known(1).unwrap_or(0) as u64;
            let e = inputs[0].known(2).unwrap_or(0) as u64;
            let h = *heads as u64;
            let d = e / h.max(1);
            // q/k/v projection, q·kᵀ, attention·v, output projection.
            s * e * 3 * e + h * s * s * d * 2 + s * e * e
        }
        _ => 0,
    }
}
