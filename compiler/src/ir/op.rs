//! Operations and their attributes.
//!
//! Adding an op: a variant here (with its text form in `Display`), its shape rule,
//! parameter slots and MACs in `crate::ops`, and its surface syntax in
//! `crate::elaborate::builtins`. See ARCHITECTURE.md.

use std::fmt;

/// Element-wise activation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// min(max(x, 0), 6)
    Relu6,
    /// Exact (erf) GELU.
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// x · sigmoid(x)
    Silu,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// x · relu6(x + 3) / 6
    Hardswish,
    /// relu6(x + 3) / 6
    Hardsigmoid,
    /// tanh
    Tanh,
}

impl Activation {
    /// All activations, for name lookup.
    pub const ALL: [Activation; 9] = [
        Activation::Relu,
        Activation::Relu6,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::Tanh,
    ];

    /// The surface name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Hardswish => "hardswish",
            Activation::Hardsigmoid => "hardsigmoid",
            Activation::Tanh => "tanh",
        }
    }

    /// Looks an activation up by surface name.
    pub fn from_name(name: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Binary element-wise operations (with broadcasting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
}

impl BinaryOp {
    /// The IR mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// Which axis a layer norm normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NormAxis {
    /// The last axis (`nn.LayerNorm` on channels-last data).
    Last,
    /// Axis 1 (`LayerNorm2d` on NCHW data).
    ChannelsFirst,
}

/// Pooling reductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Maximum.
    Max,
    /// Mean.
    Avg,
}

/// Attributes shared by 2-D windows (convolution and pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (h, w).
    pub stride: [usize; 2],
    /// Padding (top, left, bottom, right).
    pub pad: [usize; 4],
    /// Dilation (h, w).
    pub dilation: [usize; 2],
}

impl Window {
    /// Output extent along one spatial axis (0 = height, 1 = width), or `None`
    /// if the dilated kernel does not fit the padded input.
    pub fn out_extent(&self, input: usize, axis: usize, ceil_mode: bool) -> Option<usize> {
        let padded = input + self.pad[axis] + self.pad[axis + 2];
        let span = self.dilation[axis] * (self.kernel[axis] - 1) + 1;
        if span > padded {
            return None;
        }
        let s = self.stride[axis];
        let mut out = if ceil_mode {
            (padded - span).div_ceil(s) + 1
        } else {
            (padded - span) / s + 1
        };
        // PyTorch: in ceil mode the last window must start inside the input or left padding.
        if ceil_mode && (out - 1) * s >= input + self.pad[axis] {
            out -= 1;
        }
        Some(out)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k={}", pair(self.kernel))?;
        if self.stride != [1, 1] {
            write!(f, " s={}", pair(self.stride))?;
        }
        if self.pad != [0; 4] {
            let [t, l, b, r] = self.pad;
            if t == b && l == r {
                write!(f, " p={}", pair([t, l]))?;
            } else {
                write!(f, " p=({t},{l},{b},{r})")?;
            }
        }
        if self.dilation != [1, 1] {
            write!(f, " d={}", pair(self.dilation))?;
        }
        Ok(())
    }
}

fn pair(p: [usize; 2]) -> String {
    if p[0] == p[1] {
        p[0].to_string()
    } else {
        format!("{}x{}", p[0], p[1])
    }
}

/// An IR operation with its attributes. Shapes are not stored here: they are on the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A network input.
    Input {
        /// Per-sample dims (the batch is implicit).
        dims: Vec<usize>,
    },
    /// A learned tensor (`param` statement); its one slot is keyed by the node name.
    Parameter {
        /// The tensor's shape (no batch dimension).
        shape: Vec<usize>,
    },
    /// 2-D convolution, NCHW.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel, stride, padding, dilation.
        window: Window,
        /// Channel groups.
        groups: usize,
        /// Whether it has a bias.
        bias: bool,
    },
    /// Inference-mode batch normalisation over axis 1.
    BatchNorm {
        /// Epsilon.
        eps: f64,
    },
    /// Layer normalisation with affine parameters.
    LayerNorm {
        /// Epsilon.
        eps: f64,
        /// Normalised axis.
        axis: NormAxis,
    },
    /// `y = x Wᵀ + b` over the last axis.
    Linear {
        /// Output features.
        out_features: usize,
        /// Whether it has a bias.
        bias: bool,
    },
    /// Batched matrix product of two operands.
    MatMul,
    /// Element-wise activation.
    Act(Activation),
    /// Element-wise binary op with broadcasting.
    Binary(BinaryOp),
    /// Windowed pooling.
    Pool {
        /// Max or average.
        kind: PoolKind,
        /// Window (dilation only for max).
        window: Window,
        /// PyTorch's `ceil_mode`.
        ceil_mode: bool,
        /// For average pooling: whether padding counts in the divisor.
        count_include_pad: bool,
    },
    /// Adaptive average pooling to a fixed output size.
    AdaptiveAvgPool {
        /// Output (h, w).
        size: [usize; 2],
        /// Whether the result is flattened to `[N, C·h·w]` (a fused `flatten`).
        flatten: bool,
    },
    /// Constant padding of the two spatial axes.
    Pad {
        /// (top, left, bottom, right).
        pad: [usize; 4],
        /// Fill value.
        value: f64,
    },
    /// Flattens dims `start..` into one.
    Flatten {
        /// First flattened axis (≥ 1).
        start: usize,
    },
    /// Reshape of the per-sample dims (the batch is kept).
    Reshape {
        /// The new per-sample dims.
        dims: Vec<usize>,
    },
    /// Axis permutation (the batch stays at 0).
    Permute {
        /// New order of the axes.
        perm: Vec<usize>,
    },
    /// Concatenation of all operands along an axis.
    Concat {
        /// The axis.
        axis: usize,
    },
    /// The range `start..end` of one axis.
    Slice {
        /// The axis.
        axis: usize,
        /// First index.
        start: usize,
        /// One past the last index.
        end: usize,
    },
    /// One index of an axis, removing that axis.
    Select {
        /// The axis.
        axis: usize,
        /// The index.
        index: usize,
    },
    /// Broadcasts a `[1, ...]` learned tensor over the batch: `[N, ...]`.
    ExpandBatch,
    /// Softmax along an axis.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Dropout (identity at inference; kept so structure and names match the source).
    Dropout {
        /// Drop probability in training.
        p: f64,
    },
    /// Identity.
    Identity,
    /// Multi-head self-attention over `[N, S, E]` (PyTorch's `nn.MultiheadAttention`
    /// with packed q/k/v projection).
    SelfAttention {
        /// Number of heads.
        heads: usize,
        /// Whether projections have biases.
        bias: bool,
    },
    /// Per-channel learned scale (ConvNeXt's layer scale); the slot is keyed by the node name.
    LayerScale {
        /// The channel axis (1 for NCHW, last for tokens).
        axis: usize,
    },
    /// A convolution or linear layer with an epilogue applied to each output
    /// element while it is hot (made by the `fuse-epilogue` pass). Operand 0 is
    /// the input; `Epilogue::Add(i)` reads operand `i`.
    Fused {
        /// The main computation.
        base: FusedBase,
        /// Steps applied in order to the base's output.
        epilogue: Vec<Epilogue>,
    },
}

/// The computation at the heart of a fused node.
#[derive(Debug, Clone, PartialEq)]
pub enum FusedBase {
    /// A 2-D convolution (no bias: a bias is an epilogue step).
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel, stride, padding, dilation.
        window: Window,
        /// Channel groups.
        groups: usize,
    },
    /// A linear layer over the last axis (no bias).
    Linear {
        /// Output features.
        out_features: usize,
    },
}

impl FusedBase {
    /// The plain op this base computes (with or without a bias), so shape,
    /// parameter and MAC rules are shared with the unfused op.
    pub fn unfused(&self, bias: bool) -> Op {
        match self {
            FusedBase::Conv2d {
                out_channels,
                window,
                groups,
            } => Op::Conv2d {
                out_channels: *out_channels,
                window: *window,
                groups: *groups,
                bias,
            },
            FusedBase::Linear { out_features } => Op::Linear {
                out_features: *out_features,
                bias,
            },
        }
    }
}

/// One step of a fused epilogue.
#[derive(Debug, Clone, PartialEq)]
pub enum Epilogue {
    /// Add the per-channel bias parameter.
    Bias,
    /// Apply an activation.
    Act(Activation),
    /// Add operand `i` element-wise (a residual connection); same shape as the output.
    Add(usize),
}

impl Op {
    /// The IR mnemonic.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Parameter { .. } => "param",
            Op::Conv2d { .. } => "conv2d",
            Op::BatchNorm { .. } => "batch_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Linear { .. } => "linear",
            Op::MatMul => "matmul",
            Op::Act(a) => a.name(),
            Op::Binary(b) => b.name(),
            Op::Pool {
                kind: PoolKind::Max,
                ..
            } => "max_pool",
            Op::Pool {
                kind: PoolKind::Avg,
                ..
            } => "avg_pool",
            Op::AdaptiveAvgPool { .. } => "adaptive_avg_pool",
            Op::Pad { .. } => "pad",
            Op::Flatten { .. } => "flatten",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Select { .. } => "select",
            Op::ExpandBatch => "expand_batch",
            Op::Softmax { .. } => "softmax",
            Op::Dropout { .. } => "dropout",
            Op::Identity => "identity",
            Op::SelfAttention { .. } => "self_attention",
            Op::LayerScale { .. } => "layer_scale",
            Op::Fused {
                base: FusedBase::Conv2d { .. },
                ..
            } => "fused_conv2d",
            Op::Fused {
                base: FusedBase::Linear { .. },
                ..
            } => "fused_linear",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mnemonic())?;
        match self {
            Op::Conv2d {
                out_channels,
                window,
                groups,
                bias,
            } => {
                write!(f, " {out_channels} {window}")?;
                if *groups != 1 {
                    write!(f, " g={groups}")?;
                }
                if *bias {
                    f.write_str(" +bias")?;
                }
            }
            Op::BatchNorm { eps } => write!(f, " eps={eps:e}")?,
            Op::LayerNorm { eps, axis } => {
                write!(f, " eps={eps:e}")?;
                if *axis == NormAxis::ChannelsFirst {
                    f.write_str(" channels_first")?;
                }
            }
            Op::Linear { out_features, bias } => {
                write!(f, " {out_features}")?;
                if *bias {
                    f.write_str(" +bias")?;
                }
            }
            Op::Pool {
                window,
                ceil_mode,
                count_include_pad,
                kind,
            } => {
                write!(f, " {window}")?;
                if *ceil_mode {
                    f.write_str(" ceil")?;
                }
                if *kind == PoolKind::Avg && !count_include_pad && window.pad != [0; 4] {
                    f.write_str(" exclude_pad")?;
                }
            }
            Op::AdaptiveAvgPool { size, flatten } => {
                write!(f, " {}", pair(*size))?;
                if *flatten {
                    f.write_str(" flatten")?;
                }
            }
            Op::Pad { pad, value } => write!(
                f,
                " ({},{},{},{}) value={value}",
                pad[0], pad[1], pad[2], pad[3]
            )?,
            Op::Flatten { start } => write!(f, " start={start}")?,
            Op::Permute { perm } => write!(f, " {perm:?}")?,
            Op::Concat { axis } | Op::Softmax { axis } => write!(f, " axis={axis}")?,
            Op::Slice { axis, start, end } => write!(f, " axis={axis} {start}..{end}")?,
            Op::Select { axis, index } => write!(f, " axis={axis} index={index}")?,
            Op::Dropout { p } => write!(f, " p={p}")?,
            Op::SelfAttention { heads, bias } => {
                write!(f, " heads={heads}")?;
                if *bias {
                    f.write_str(" +bias")?;
                }
            }
            Op::LayerScale { axis } => write!(f, " axis={axis}")?,
            Op::Fused { base, epilogue } => {
                match base {
                    FusedBase::Conv2d {
                        out_channels,
                        window,
                        groups,
                    } => {
                        write!(f, " {out_channels} {window}")?;
                        if *groups != 1 {
                            write!(f, " g={groups}")?;
                        }
                    }
                    FusedBase::Linear { out_features } => write!(f, " {out_features}")?,
                }
                for e in epilogue {
                    match e {
                        Epilogue::Bias => f.write_str(" | bias")?,
                        Epilogue::Act(a) => write!(f, " | {}", a.name())?,
                        Epilogue::Add(i) => write!(f, " | add #{i}")?,
                    }
                }
            }
            Op::Parameter { shape } | Op::Reshape { dims: shape } | Op::Input { dims: shape } => {
                write!(f, " {shape:?}")?
            }
            Op::MatMul | Op::Act(_) | Op::Binary(_) | Op::ExpandBatch | Op::Identity => {}
        }
        Ok(())
    }
}
