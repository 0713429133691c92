//! The surface syntax of built-in ops: their argument names, kinds and defaults,
//! and how bound arguments plus operand shapes become an IR [`Op`].

use super::value::{ArgValue, Value};
use crate::ir::{Activation, BinaryOp, NormAxis, Op, PoolKind, Shape, Window};
use netc_grammar::Span;
use std::collections::HashMap;

/// What an argument accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// An integer.
    Int,
    /// A number.
    Float,
    /// A boolean.
    Bool,
    /// A string.
    Str,
    /// An int or an `(h, w)` pair.
    Pair,
    /// An int, `(h, w)`, `(top, left, bottom, right)` or `"same"`.
    Pad,
    /// A list of ints.
    IntList,
}

impl ArgKind {
    fn describe(self) -> &'static str {
        match self {
            ArgKind::Int => "an int",
            ArgKind::Float => "a number",
            ArgKind::Bool => "a bool",
            ArgKind::Str => "a string",
            ArgKind::Pair => "an int or an (h, w) pair",
            ArgKind::Pad => "an int, (h, w), (top, left, bottom, right) or \"same\"",
            ArgKind::IntList => "a list of ints",
        }
    }
}

/// A default value for an argument.
#[derive(Debug, Clone, Copy)]
pub enum ArgDefault {
    /// Required: no default.
    Required,
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A bool.
    Bool(bool),
    /// A string.
    Str(&'static str),
    /// The value of another argument (pooling stride defaults to the kernel).
    SameAs(&'static str),
}

/// One argument of a built-in op.
#[derive(Debug, Clone, Copy)]
pub struct ArgSpec {
    /// Name (also the keyword).
    pub name: &'static str,
    /// What it accepts.
    pub kind: ArgKind,
    /// Default.
    pub default: ArgDefault,
}

const fn arg(name: &'static str, kind: ArgKind, default: ArgDefault) -> ArgSpec {
    ArgSpec {
        name,
        kind,
        default,
    }
}

/// How many tensors an op consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// One tensor.
    One,
    /// Exactly two tensors (positional, or a list of two).
    Two,
    /// A list of tensors (or several positional tensors).
    Many,
}

/// How an op becomes IR.
#[derive(Clone, Copy)]
pub enum Lowering {
    /// One node.
    Node(fn(&Args, &[&Shape]) -> Result<Op, ArgError>),
    /// A left fold of a binary op over a list (`sum`, `mul` of lists).
    Fold(BinaryOp),
    /// Channel split into equal chunks: one slice node per chunk, a list results.
    Split,
}

/// A built-in op's specification.
pub struct OpSpec {
    /// The surface name.
    pub name: &'static str,
    /// Its arguments, in positional order.
    pub args: &'static [ArgSpec],
    /// What it consumes.
    pub inputs: Inputs,
    /// Whether it is an element-wise activation (accepted where `activation` is expected).
    pub is_activation: bool,
    /// How it lowers.
    pub lowering: Lowering,
    /// One line for `did you mean` and docs.
    pub doc: &'static str,
}

/// An argument problem found while building an op.
#[derive(Debug, Clone)]
pub struct ArgError {
    /// What is wrong.
    pub message: String,
    /// The offending argument, when there is one.
    pub span: Option<Span>,
    /// How to fix it.
    pub help: Option<String>,
}

impl ArgError {
    fn new(message: impl Into<String>, span: Option<Span>) -> Self {
        ArgError {
            message: message.into(),
            span,
            help: None,
        }
    }

    fn help(mut self, h: impl Into<String>) -> Self {
        self.help = Some(h.into());
        self
    }
}

/// Bound arguments of one op application, with defaults applied.
pub struct Args<'a> {
    spec: &'static OpSpec,
    bound: &'a HashMap<&'static str, ArgValue>,
}

impl<'a> Args<'a> {
    /// Wraps bound arguments.
    pub fn new(spec: &'static OpSpec, bound: &'a HashMap<&'static str, ArgValue>) -> Self {
        Args { spec, bound }
    }

    fn spec(&self, name: &str) -> &'static ArgSpec {
        self.spec
            .args
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("op `{}` has no argument `{name}`", self.spec.name))
    }

    /// The span of an argument, if given explicitly.
    pub fn span(&self, name: &str) -> Option<Span> {
        self.bound.get(name).map(|a| a.span)
    }

    fn value(&self, name: &str) -> Value {
        if let Some(a) = self.bound.get(name) {
            return a.value.clone();
        }
        match self.spec(name).default {
            ArgDefault::Required => Value::None,
            ArgDefault::Int(v) => Value::Int(v),
            ArgDefault::Float(v) => Value::Float(v),
            ArgDefault::Bool(v) => Value::Bool(v),
            ArgDefault::Str(v) => Value::Str(v.into()),
            ArgDefault::SameAs(other) => self.value(other),
        }
    }

    fn positive(&self, name: &str, v: i64) -> Result<usize, ArgError> {
        if v <= 0 || v > super::limits::MAX_DIM as i64 {
            return Err(ArgError::new(
                format!(
                    "`{name}` must be between 1 and {}, found {v}",
                    super::limits::MAX_DIM
                ),
                self.span(name),
            ));
        }
        Ok(v as usize)
    }

    /// An int argument.
    pub fn int(&self, name: &str) -> i64 {
        match self.value(name) {
            Value::Int(v) => v,
            Value::Float(f) => f as i64,
            _ => 0,
        }
    }

    /// A positive int argument (a size or count).
    pub fn size(&self, name: &str) -> Result<usize, ArgError> {
        self.positive(name, self.int(name))
    }

    /// A float argument.
    pub fn float(&self, name: &str) -> f64 {
        match self.value(name) {
            Value::Int(v) => v as f64,
            Value::Float(f) => f,
            _ => 0.0,
        }
    }

    /// A bool argument.
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.value(name), Value::Bool(true))
    }

    /// A string argument.
    pub fn str(&self, name: &str) -> String {
        match self.value(name) {
            Value::Str(s) => s.to_string(),
            _ => String::new(),
        }
    }

    /// An int-or-pair argument as (h, w), each positive.
    pub fn pair(&self, name: &str) -> Result<[usize; 2], ArgError> {
        match self.value(name) {
            Value::List(items) => Ok([
                self.positive(name, as_int(&items[0]))?,
                self.positive(name, as_int(&items[1]))?,
            ]),
            v => {
                let n = self.positive(name, as_int(&v))?;
                Ok([n, n])
            }
        }
    }

    /// A list-of-ints argument.
    pub fn ints(&self, name: &str) -> Vec<i64> {
        match self.value(name) {
            Value::List(items) => items.iter().map(as_int).collect(),
            _ => Vec::new(),
        }
    }

    /// A padding argument, resolved against the input and the window.
    pub fn pad(
        &self,
        name: &str,
        input_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<[usize; 4], ArgError> {
        let nonneg = |v: i64| -> Result<usize, ArgError> {
            if !(0..=super::limits::MAX_DIM as i64).contains(&v) {
                return Err(ArgError::new(
                    format!(
                        "padding must be between 0 and {}, found {v}",
                        super::limits::MAX_DIM
                    ),
                    self.span(name),
                ));
            }
            Ok(v as usize)
        };
        match self.value(name) {
            Value::Str(s) if &*s == "same" => {
                // TensorFlow's rule: output = ceil(input / stride); extra padding goes bottom/right.
                let mut p = [0usize; 4];
                for a in 0..2 {
                    let out = input_hw[a].div_ceil(stride[a]);
                    let span = dilation[a] * (kernel[a] - 1) + 1;
                    let total = ((out - 1) * stride[a] + span).saturating_sub(input_hw[a]);
                    p[a] = total / 2;
                    p[a + 2] = total - total / 2;
                }
                Ok(p)
            }
            Value::Str(s) if &*s == "valid" => Ok([0; 4]),
            Value::Str(s) => Err(ArgError::new(
                format!("unknown padding mode \"{s}\""),
                self.span(name),
            )
            .help("padding is an int, (h, w), (top, left, bottom, right), \"same\" or \"valid\"")),
            Value::List(items) if items.len() == 2 => {
                let h = nonneg(as_int(&items[0]))?;
                let w = nonneg(as_int(&items[1]))?;
                Ok([h, w, h, w])
            }
            Value::List(items) => Ok([
                nonneg(as_int(&items[0]))?,
                nonneg(as_int(&items[1]))?,
                nonneg(as_int(&items[2]))?,
                nonneg(as_int(&items[3]))?,
            ]),
            v => {
                let n = nonneg(as_int(&v))?;
                Ok([n; 4])
            }
        }
    }
}

fn as_int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Float(f) => *f as i64,
        _ => 0,
    }
}

/// Checks an argument value against its kind (at call time, so errors point at the call).
pub fn check_arg(kind: ArgKind, v: &Value) -> Result<Value, String> {
    let int_like = |v: &Value| match v {
        Value::Int(_) => true,
        Value::Float(f) => f.fract() == 0.0,
        _ => false,
    };
    let ok = match kind {
        ArgKind::Int => int_like(v),
        ArgKind::Float => matches!(v, Value::Int(_) | Value::Float(_)),
        ArgKind::Bool => matches!(v, Value::Bool(_)),
        ArgKind::Str => matches!(v, Value::Str(_)),
        ArgKind::Pair => {
            int_like(v) || matches!(v, Value::List(l) if l.len() == 2 && l.iter().all(int_like))
        }
        ArgKind::Pad => {
            int_like(v)
                || matches!(v, Value::Str(_))
                || matches!(v, Value::List(l) if (l.len() == 2 || l.len() == 4) && l.iter().all(int_like))
        }
        ArgKind::IntList => matches!(v, Value::List(l) if l.iter().all(int_like)),
    };
    if ok {
        Ok(v.clone())
    } else {
        Err(format!(
            "expected {}, found {} `{v}`",
            kind.describe(),
            v.kind()
        ))
    }
}

fn nchw(x: &Shape) -> [usize; 2] {
    [x.known(2).unwrap_or(1), x.known(3).unwrap_or(1)]
}

fn conv(a: &Args, x: &[&Shape]) -> Result<Op, ArgError> {
    let kernel = a.pair("k")?;
    let stride = a.pair("stride")?;
    let dilation = a.pair("dilation")?;
    let pad = a.pad("pad", nchw(x[0]), kernel, stride, dilation)?;
    Ok(Op::Conv2d {
        out_channels: a.size("out")?,
        window: Window {
            kernel,
            stride,
            pad,
            dilation,
        },
        groups: a.size("groups")?,
        bias: a.bool("bias"),
    })
}

fn pool(kind: PoolKind, a: &Args, x: &[&Shape]) -> Result<Op, ArgError> {
    let kernel = a.pair("k")?;
    let stride = a.pair("stride")?;
    let dilation = if kind == PoolKind::Max {
        a.pair("dilation")?
    } else {
        [1, 1]
    };
    let pad = a.pad("pad", nchw(x[0]), kernel, stride, dilation)?;
    Ok(Op::Pool {
        kind,
        window: Window {
            kernel,
            stride,
            pad,
            dilation,
        },
        ceil_mode: a.bool("ceil_mode"),
        count_include_pad: kind == PoolKind::Max || a.bool("count_include_pad"),
    })
}

fn axis_arg(a: &Args, name: &str, x: &Shape) -> Result<usize, ArgError> {
    let v = a.int(name);
    x.axis(v).ok_or_else(|| {
        ArgError::new(
            format!("axis {v} is out of range for a tensor of shape {x}"),
            a.span(name),
        )
    })
}

macro_rules! act {
    ($name:literal, $act:expr, $doc:literal) => {
        OpSpec {
            name: $name,
            args: &[],
            inputs: Inputs::One,
            is_activation: true,
            lowering: Lowering::Node(|_, _| Ok(Op::Act($act))),
            doc: $doc,
        }
    };
}

use ArgDefault as D;
use ArgKind as K;

/// Every built-in op.
pub static OPS: &[OpSpec] = &[
    OpSpec {
        name: "conv",
        args: &[
            arg("out", K::Int, D::Required),
            arg("k", K::Pair, D::Required),
            arg("stride", K::Pair, D::Int(1)),
            arg("pad", K::Pad, D::Int(0)),
            arg("dilation", K::Pair, D::Int(1)),
            arg("groups", K::Int, D::Int(1)),
            arg("bias", K::Bool, D::Bool(true)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(conv),
        doc: "2-D convolution; input channels are inferred",
    },
    OpSpec {
        name: "batch_norm",
        args: &[arg("eps", K::Float, D::Float(1e-5))],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            Ok(Op::BatchNorm {
                eps: a.float("eps"),
            })
        }),
        doc: "batch normalisation over channels (axis 1)",
    },
    OpSpec {
        name: "layer_norm",
        args: &[
            arg("eps", K::Float, D::Float(1e-5)),
            arg("axis", K::Int, D::Int(-1)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            let axis = axis_arg(a, "axis", x[0])?;
            let axis = if axis == x[0].rank() - 1 {
                NormAxis::Last
            } else if axis == 1 {
                NormAxis::ChannelsFirst
            } else {
                return Err(ArgError::new(
                    "layer_norm normalises the last axis or axis 1 (channels-first)",
                    a.span("axis"),
                ));
            };
            Ok(Op::LayerNorm {
                eps: a.float("eps"),
                axis,
            })
        }),
        doc: "layer normalisation over the last axis, or axis 1 with axis=1",
    },
    OpSpec {
        name: "linear",
        args: &[
            arg("out", K::Int, D::Required),
            arg("bias", K::Bool, D::Bool(true)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            Ok(Op::Linear {
                out_features: a.size("out")?,
                bias: a.bool("bias"),
            })
        }),
        doc: "fully connected layer over the last axis",
    },
    OpSpec {
        name: "matmul",
        args: &[],
        inputs: Inputs::Two,
        is_activation: false,
        lowering: Lowering::Node(|_, _| Ok(Op::MatMul)),
        doc: "batched matrix product of two tensors",
    },
    act!("relu", Activation::Relu, "max(x, 0)"),
    act!("relu6", Activation::Relu6, "min(max(x, 0), 6)"),
    OpSpec {
        name: "gelu",
        args: &[arg("approximate", K::Str, D::Str("none"))],
        inputs: Inputs::One,
        is_activation: true,
        lowering: Lowering::Node(|a, _| match a.str("approximate").as_str() {
            "none" => Ok(Op::Act(Activation::Gelu)),
            "tanh" => Ok(Op::Act(Activation::GeluTanh)),
            other => Err(ArgError::new(
                format!("unknown GELU approximation \"{other}\""),
                a.span("approximate"),
            )
            .help("use \"none\" (exact, erf) or \"tanh\"")),
        }),
        doc: "Gaussian error linear unit",
    },
    act!("silu", Activation::Silu, "x * sigmoid(x) (swish)"),
    act!("sigmoid", Activation::Sigmoid, "logistic sigmoid"),
    act!("hardswish", Activation::Hardswish, "x * relu6(x + 3) / 6"),
    act!("hardsigmoid", Activation::Hardsigmoid, "relu6(x + 3) / 6"),
    act!("tanh", Activation::Tanh, "hyperbolic tangent"),
    OpSpec {
        name: "identity",
        args: &[],
        inputs: Inputs::One,
        is_activation: true,
        lowering: Lowering::Node(|_, _| Ok(Op::Identity)),
        doc: "the input unchanged",
    },
    OpSpec {
        name: "max_pool",
        args: &[
            arg("k", K::Pair, D::Required),
            arg("stride", K::Pair, D::SameAs("k")),
            arg("pad", K::Pad, D::Int(0)),
            arg("dilation", K::Pair, D::Int(1)),
            arg("ceil_mode", K::Bool, D::Bool(false)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| pool(PoolKind::Max, a, x)),
        doc: "max pooling (stride defaults to the kernel)",
    },
    OpSpec {
        name: "avg_pool",
        args: &[
            arg("k", K::Pair, D::Required),
            arg("stride", K::Pair, D::SameAs("k")),
            arg("pad", K::Pad, D::Int(0)),
            arg("ceil_mode", K::Bool, D::Bool(false)),
            arg("count_include_pad", K::Bool, D::Bool(true)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| pool(PoolKind::Avg, a, x)),
        doc: "average pooling (stride defaults to the kernel)",
    },
    OpSpec {
        name: "adaptive_avg_pool",
        args: &[arg("size", K::Pair, D::Required)],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            Ok(Op::AdaptiveAvgPool {
                size: a.pair("size")?,
                flatten: false,
            })
        }),
        doc: "average pooling to a fixed output size",
    },
    OpSpec {
        name: "global_avg_pool",
        args: &[],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|_, _| {
            Ok(Op::AdaptiveAvgPool {
                size: [1, 1],
                flatten: false,
            })
        }),
        doc: "mean over H and W, keeping [N, C, 1, 1]",
    },
    OpSpec {
        name: "pad",
        args: &[
            arg("pad", K::Pad, D::Required),
            arg("value", K::Float, D::Float(0.0)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            Ok(Op::Pad {
                pad: a.pad("pad", nchw(x[0]), [1, 1], [1, 1], [1, 1])?,
                value: a.float("value"),
            })
        }),
        doc: "constant padding of H and W",
    },
    OpSpec {
        name: "flatten",
        args: &[arg("start", K::Int, D::Int(1))],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            Ok(Op::Flatten {
                start: axis_arg(a, "start", x[0])?,
            })
        }),
        doc: "flattens axes start.. into one",
    },
    OpSpec {
        name: "reshape",
        args: &[arg("shape", K::IntList, D::Required)],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            let dims = a.ints("shape");
            let total = x[0].numel_per_sample();
            let known: u64 = dims
                .iter()
                .filter(|&&d| d != -1)
                .map(|&d| d.max(0) as u64)
                .product();
            let holes = dims.iter().filter(|&&d| d == -1).count();
            if holes > 1 || dims.iter().any(|&d| d == 0 || d < -1) {
                return Err(ArgError::new(
                    "reshape dims must be positive, with at most one -1",
                    a.span("shape"),
                ));
            }
            let fill = if holes == 1 && known > 0 && total % known == 0 {
                total / known
            } else {
                1
            };
            Ok(Op::Reshape {
                dims: dims
                    .iter()
                    .map(|&d| if d == -1 { fill as usize } else { d as usize })
                    .collect(),
            })
        }),
        doc: "reshape of the per-sample dims (the batch is kept)",
    },
    OpSpec {
        name: "permute",
        args: &[arg("perm", K::IntList, D::Required)],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            Ok(Op::Permute {
                perm: a.ints("perm").iter().map(|&i| i.max(0) as usize).collect(),
            })
        }),
        doc: "axis permutation including the batch axis 0",
    },
    OpSpec {
        name: "transpose",
        args: &[arg("a", K::Int, D::Required), arg("b", K::Int, D::Required)],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            let i = axis_arg(a, "a", x[0])?;
            let j = axis_arg(a, "b", x[0])?;
            let mut perm: Vec<usize> = (0..x[0].rank()).collect();
            perm.swap(i, j);
            Ok(Op::Permute { perm })
        }),
        doc: "swaps two axes",
    },
    OpSpec {
        name: "concat",
        args: &[arg("axis", K::Int, D::Int(1))],
        inputs: Inputs::Many,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            Ok(Op::Concat {
                axis: axis_arg(a, "axis", x[0])?,
            })
        }),
        doc: "concatenation of a list of tensors (channels by default)",
    },
    OpSpec {
        name: "sum",
        args: &[],
        inputs: Inputs::Many,
        is_activation: false,
        lowering: Lowering::Fold(BinaryOp::Add),
        doc: "element-wise sum of a list of tensors",
    },
    OpSpec {
        name: "add",
        args: &[],
        inputs: Inputs::Many,
        is_activation: false,
        lowering: Lowering::Fold(BinaryOp::Add),
        doc: "element-wise sum",
    },
    OpSpec {
        name: "mul",
        args: &[],
        inputs: Inputs::Many,
        is_activation: false,
        lowering: Lowering::Fold(BinaryOp::Mul),
        doc: "element-wise product of a list of tensors",
    },
    OpSpec {
        name: "softmax",
        args: &[arg("axis", K::Int, D::Int(-1))],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            Ok(Op::Softmax {
                axis: axis_arg(a, "axis", x[0])?,
            })
        }),
        doc: "softmax along an axis (the last by default)",
    },
    OpSpec {
        name: "dropout",
        args: &[arg("p", K::Float, D::Float(0.5))],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            let p = a.float("p");
            if !(0.0..1.0).contains(&p) {
                return Err(ArgError::new(
                    format!("dropout probability must be in [0, 1), found {p}"),
                    a.span("p"),
                ));
            }
            Ok(Op::Dropout { p })
        }),
        doc: "dropout (identity at inference)",
    },
    OpSpec {
        name: "split",
        args: &[
            arg("n", K::Int, D::Required),
            arg("axis", K::Int, D::Int(1)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Split,
        doc: "splits an axis into n equal chunks; a list of tensors",
    },
    OpSpec {
        name: "select",
        args: &[
            arg("axis", K::Int, D::Required),
            arg("index", K::Int, D::Required),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            let axis = axis_arg(a, "axis", x[0])?;
            let index = a.int("index");
            let n = x[0].known(axis).unwrap_or(0) as i64;
            let index = if index < 0 { index + n } else { index };
            if !(0..n).contains(&index) {
                return Err(ArgError::new(
                    format!("index {index} is out of range for axis {axis} of {}", x[0]),
                    a.span("index"),
                ));
            }
            Ok(Op::Select {
                axis,
                index: index as usize,
            })
        }),
        doc: "one index of an axis (x[:, 0] is select(axis=1, index=0))",
    },
    OpSpec {
        name: "expand_batch",
        args: &[],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|_, _| Ok(Op::ExpandBatch)),
        doc: "repeats a [1, ...] learned tensor over the batch",
    },
    OpSpec {
        name: "self_attention",
        args: &[
            arg("heads", K::Int, D::Required),
            arg("bias", K::Bool, D::Bool(true)),
            arg("dropout", K::Float, D::Float(0.0)),
        ],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, _| {
            Ok(Op::SelfAttention {
                heads: a.size("heads")?,
                bias: a.bool("bias"),
            })
        }),
        doc: "multi-head self-attention over [N, S, E] (nn.MultiheadAttention's parameters)",
    },
    OpSpec {
        name: "layer_scale",
        args: &[arg("axis", K::Int, D::Int(1))],
        inputs: Inputs::One,
        is_activation: false,
        lowering: Lowering::Node(|a, x| {
            Ok(Op::LayerScale {
                axis: axis_arg(a, "axis", x[0])?,
            })
        }),
        doc: "per-channel learned scale, its parameter named after the layer itself",
    },
];

/// Looks up a built-in op by name.
pub fn op(name: &str) -> Option<&'static OpSpec> {
    OPS.iter().find(|o| o.name == name)
}

/// Scalar and introspection functions callable in expressions.
pub static FUNCTIONS: &[(&str, &str)] = &[
    ("min", "smallest of its arguments (or of one list)"),
    ("max", "largest of its arguments (or of one list)"),
    ("ceil", "round up to an int"),
    ("floor", "round down to an int"),
    (
        "round",
        "round to the nearest int (halves to even, as Python)",
    ),
    ("abs", "absolute value"),
    ("int", "truncate to an int"),
    ("float", "convert to float"),
    ("sqrt", "square root"),
    ("len", "length of a list"),
    (
        "range",
        "range(n), range(a, b) or range(a, b, step): the ints from a up to (not including) b",
    ),
    ("enumerate", "list of (index, element) pairs"),
    ("zip", "list of tuples of corresponding elements"),
    (
        "make_divisible",
        "make_divisible(v, divisor, min_value = divisor): torchvision's channel rounding",
    ),
    ("channels", "the channel count (axis 1) of a tensor"),
    ("dim", "dim(t, axis): the extent of one axis of a tensor"),
    ("shape", "the per-sample dims of a tensor as a list"),
    ("str", "a value as a string"),
];
