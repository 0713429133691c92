//! Weight transformations recorded by passes that change parameters, so a
//! checkpoint keyed by the original (torchvision) names can be turned into the
//! optimized graph's parameters once, at load time.

use std::fmt;

/// One recorded transformation. Each reads tensors by key from the weight map
/// and writes its results under (possibly the same) keys.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightTransform {
    /// Folds an inference-mode BatchNorm that follows a convolution or linear
    /// layer into it: `w' = w·γ/√(σ²+ε)` (per output channel, axis 0),
    /// `b' = (b−μ)·γ/√(σ²+ε)+β`. The BatchNorm's keys are consumed.
    FoldBatchNormAfter {
        /// The layer's weight key (rewritten in place).
        weight: String,
        /// The layer's existing bias key, if it had one.
        bias: Option<String>,
        /// Where the folded bias is written.
        out_bias: String,
        /// BatchNorm keys: weight, bias, running_mean, running_var.
        bn: [String; 4],
        /// BatchNorm epsilon.
        eps: f64,
    },
    /// Folds a BatchNorm that precedes an unpadded convolution or linear layer:
    /// `w' = w·s` along the input-channel axis (1), `b' = b + Σ w·t` where
    /// `s = γ/√(σ²+ε)`, `t = β − μ·s`. Exact only without padding (padded zeros
    /// would not be normalised).
    FoldBatchNormBefore {
        /// The layer's weight key (rewritten in place).
        weight: String,
        /// The layer's existing bias key, if it had one.
        bias: Option<String>,
        /// Where the new bias is written.
        out_bias: String,
        /// BatchNorm keys: weight, bias, running_mean, running_var.
        bn: [String; 4],
        /// BatchNorm epsilon.
        eps: f64,
        /// Convolution groups (input channels per group = weight.shape[1]).
        groups: usize,
    },
    /// Merges parallel convolutions over the same input into one: each kernel is
    /// zero-padded (centred) to `kernel` and the kernels and biases are summed.
    SumKernels {
        /// The branches' (weight key, bias key) pairs.
        branches: Vec<(String, Option<String>)>,
        /// Target kernel size (h, w).
        kernel: [usize; 2],
        /// Merged weight key.
        out_weight: String,
        /// Merged bias key.
        out_bias: String,
    },
    /// Stacks N convolutions along the output-channel axis (axis 0): N paths over
    /// channel slices become one grouped convolution, weights in path order.
    ConcatOutputs {
        /// The paths' keys, in order (all weights, or all biases).
        parts: Vec<String>,
        /// The stacked key.
        out: String,
    },
    /// Concatenates convolution weights along the input-channel axis (1): a sum of
    /// N convolutions over consecutive channel slices becomes one convolution.
    ConcatInputs {
        /// The paths' weight keys, in channel order.
        parts: Vec<String>,
        /// The merged key.
        out: String,
    },
    /// Computes an element-wise or layout op over learned tensors once (constant
    /// folding); the inputs are kept (other nodes may read them).
    Evaluate {
        /// The op (activation, binary op, reshape, permute, identity).
        op: crate::ir::Op,
        /// Input keys and shapes, in operand order.
        inputs: Vec<(String, Vec<usize>)>,
        /// The result's key.
        out: String,
        /// The result's shape.
        shape: Vec<usize>,
    },
    /// Element-wise sum of same-shaped tensors (the biases of summed paths).
    SumTensors {
        /// The keys summed.
        parts: Vec<String>,
        /// The result's key.
        out: String,
    },
}

impl fmt::Display for WeightTransform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightTransform::FoldBatchNormAfter { weight, bn, .. } => {
                write!(
                    f,
                    "fold {} after {weight}",
                    bn[0].trim_end_matches(".weight")
                )
            }
            WeightTransform::FoldBatchNormBefore { weight, bn, .. } => {
                write!(
                    f,
                    "fold {} before {weight}",
                    bn[0].trim_end_matches(".weight")
                )
            }
            WeightTransform::SumKernels {
                branches,
                out_weight,
                ..
            } => {
                let names: Vec<&str> = branches.iter().map(|b| b.0.as_str()).collect();
                write!(f, "sum kernels {} into {out_weight}", names.join(" + "))
            }
            WeightTransform::ConcatOutputs { parts, out } => {
                write!(f, "stack {} tensors into {out}", parts.len())
            }
            WeightTransform::ConcatInputs { parts, out } => {
                write!(
                    f,
                    "join {} kernels along input channels into {out}",
                    parts.len()
                )
            }
            WeightTransform::Evaluate { op, out, .. } => {
                write!(f, "evaluate {} into {out}", op.mnemonic())
            }
            WeightTransform::SumTensors { parts, out } => {
                write!(f, "sum {} tensors into {out}", parts.len())
            }
        }
    }
}
