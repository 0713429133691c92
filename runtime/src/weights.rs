//! Weights: loading safetensors checkpoints by the IR's parameter keys (which
//! equal torchvision's `state_dict` keys), validating them against the graph,
//! and generating deterministic weights.

use crate::rng::Stream;
use netc_compiler::ir::{Graph, Op, ParamRole, ParamSlot, WeightTransform};
use netc_grammar::{Diagnostic, Span};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Largest weight file accepted (bytes); larger is refused before reading.
pub const MAX_WEIGHT_FILE_BYTES: u64 = 16 << 30;

/// Parameter tensors by key, as f32 in row-major order.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    tensors: HashMap<String, HostTensor>,
}

/// A tensor in host memory: f32, row-major (parameters, inputs and outputs).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Weights {
    /// The tensor for `key`.
    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }

    /// Inserts or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, t: HostTensor) {
        self.tensors.insert(key.into(), t);
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Keys in sorted order.
    pub fn keys(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    /// Reads a safetensors file and validates it against `graph`: every parameter
    /// present with the right shape, nothing unexpected (`num_batches_tracked`
    /// from torch checkpoints is ignored), f32/f16/bf16 accepted. All problems
    /// are reported together.
    pub fn load(path: &Path, graph: &Graph) -> Result<Weights, Vec<Diagnostic>> {
        let io = |msg: String| {
            vec![Diagnostic::new("netc::weights", msg)
                .help("pass a .safetensors file, e.g. one exported from `model.state_dict()`")]
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| io(format!("cannot read `{}`: {e}", path.display())))?;
        if meta.len() > MAX_WEIGHT_FILE_BYTES {
            return Err(io(format!(
                "`{}` is {} bytes, over the limit of {MAX_WEIGHT_FILE_BYTES}",
                path.display(),
                meta.len()
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| io(format!("cannot read `{}`: {e}", path.display())))?;
        Self::from_bytes(&bytes, &path.display().to_string(), graph)
    }

    /// [`Weights::load`] from bytes in memory; `name` is used in messages.
    pub fn from_bytes(bytes: &[u8], name: &str, graph: &Graph) -> Result<Weights, Vec<Diagnostic>> {
        let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            vec![Diagnostic::new("netc::weights", format!("`{name}` is not a valid safetensors file: {e}"))
                .help("the file may be truncated or corrupt; export it again with safetensors.torch.save_file")]
        })?;
        let mut errors = Vec::new();
        let mut out = Weights::default();
        let expected: BTreeMap<&str, (&ParamSlot, Span)> = graph
            .params()
            .map(|(n, p)| (p.key.as_str(), (p, graph.node(n).span)))
            .collect();
        for (key, (slot, span)) in &expected {
            let view = match file.tensor(key) {
                Ok(v) => v,
                Err(_) => {
                    errors.push(
                        Diagnostic::new("netc::weights", format!("`{name}` has no tensor `{key}`"))
                            .label(*span, format!("the layer that needs `{key}` {:?}", slot.shape))
                            .help("the checkpoint must carry every parameter under its state_dict name"),
                    );
                    continue;
                }
            };
            if view.shape() != slot.shape.as_slice() {
                errors.push(
                    Diagnostic::new(
                        "netc::weights",
                        format!(
                            "`{key}` has shape {:?} in `{name}`, the network expects {:?}",
                            view.shape(),
                            slot.shape
                        ),
                    )
                    .label(*span, "this layer")
                    .help("the checkpoint is for a different architecture or width"),
                );
                continue;
            }
            match to_f32(view.dtype(), view.data()) {
                Ok(data) if data.len() == slot.numel() as usize => {
                    out.insert(
                        key.to_string(),
                        HostTensor {
                            shape: slot.shape.clone(),
                            data,
                        },
                    );
                }
                Ok(_) => errors.push(
                    Diagnostic::new(
                        "netc::weights",
                        format!("`{key}` in `{name}` holds the wrong number of bytes"),
                    )
                    .label(*span, "this layer")
                    .help("the file is corrupt"),
                ),
                Err(dt) => errors.push(
                    Diagnostic::new(
                        "netc::weights",
                        format!("`{key}` in `{name}` has dtype {dt}"),
                    )
                    .label(*span, "this layer")
                    .help("netc reads f32, f16 and bf16 weights"),
                ),
            }
        }
        let mut unexpected: Vec<String> = file
            .names()
            .into_iter()
            .filter(|k| !expected.contains_key(k) && !k.ends_with("num_batches_tracked"))
            .map(str::to_string)
            .collect();
        unexpected.sort();
        if !unexpected.is_empty() {
            let shown: Vec<&str> = unexpected.iter().take(8).map(String::as_str).collect();
            let more = unexpected.len().saturating_sub(8);
            errors.push(
                Diagnostic::new(
                    "netc::weights",
                    format!(
                        "`{name}` has {} tensor(s) the network does not use: {}{}",
                        unexpected.len(),
                        shown.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    ),
                )
                .help("the checkpoint is for another model, or the network names differ from it"),
            );
        }
        if errors.len() > 20 {
            let n = errors.len();
            errors.truncate(20);
            errors.push(Diagnostic::new(
                "netc::weights",
                format!("... {} more weight problems", n - 20),
            ));
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Applies the graph's recorded weight transformations in order, turning a
    /// checkpoint keyed by the original names into the optimized graph's
    /// parameters. Consumed keys that no later step reads are dropped.
    pub fn apply_transforms(&mut self, transforms: &[WeightTransform]) -> Result<(), String> {
        for t in transforms {
            self.apply_one(t).map_err(|e| format!("{t}: {e}"))?;
        }
        Ok(())
    }

    fn take(&mut self, key: &str) -> Result<HostTensor, String> {
        self.tensors
            .remove(key)
            .ok_or_else(|| format!("missing `{key}`"))
    }

    fn bn_scale_shift(
        &mut self,
        bn: &[String; 4],
        eps: f64,
    ) -> Result<(Vec<f64>, Vec<f64>), String> {
        let g = self.take(&bn[0])?;
        let b = self.take(&bn[1])?;
        let m = self.take(&bn[2])?;
        let v = self.take(&bn[3])?;
        let scale: Vec<f64> = g
            .data
            .iter()
            .zip(&v.data)
            .map(|(g, v)| *g as f64 / (*v as f64 + eps).sqrt())
            .collect();
        let shift: Vec<f64> = b
            .data
            .iter()
            .zip(&m.data)
            .zip(&scale)
            .map(|((b, m), s)| *b as f64 - *m as f64 * s)
            .collect();
        Ok((scale, shift))
    }

    fn apply_one(&mut self, t: &WeightTransform) -> Result<(), String> {
        match t {
            WeightTransform::FoldBatchNormAfter {
                weight,
                bias,
                out_bias,
                bn,
                eps,
            } => {
                let (scale, shift) = self.bn_scale_shift(bn, *eps)?;
                let mut w = self.take(weight)?;
                let per = w.data.len() / scale.len().max(1);
                for (c, chunk) in w.data.chunks_mut(per).enumerate() {
                    for v in chunk {
                        *v = (*v as f64 * scale[c]) as f32;
                    }
                }
                let b0 = match bias {
                    Some(k) => self.take(k)?.data,
                    None => vec![0.0; scale.len()],
                };
                let data = (0..scale.len())
                    .map(|c| (b0[c] as f64 * scale[c] + shift[c]) as f32)
                    .collect();
                self.insert(weight.clone(), w);
                self.insert(
                    out_bias.clone(),
                    HostTensor {
                        shape: vec![scale.len()],
                        data,
                    },
                );
            }
            WeightTransform::FoldBatchNormBefore {
                weight,
                bias,
                out_bias,
                bn,
                eps,
                groups,
            } => {
                let (scale, shift) = self.bn_scale_shift(bn, *eps)?;
                let mut w = self.take(weight)?;
                let out = w.shape[0];
                let cin_g = w.shape[1];
                let k: usize = w.shape[2..].iter().product::<usize>().max(1);
                let out_g = out / groups.max(&1);
                let mut b: Vec<f64> = match bias {
                    Some(key) => self.take(key)?.data.iter().map(|v| *v as f64).collect(),
                    None => vec![0.0; out],
                };
                for (o, bias) in b.iter_mut().enumerate() {
                    let g = o / out_g.max(1);
                    for i in 0..cin_g {
                        let c = g * cin_g + i;
                        for j in 0..k {
                            let idx = (o * cin_g + i) * k + j;
                            *bias += w.data[idx] as f64 * shift[c];
                            w.data[idx] = (w.data[idx] as f64 * scale[c]) as f32;
                        }
                    }
                }
                self.insert(weight.clone(), w);
                self.insert(
                    out_bias.clone(),
                    HostTensor {
                        shape: vec![out],
                        data: b.iter().map(|v| *v as f32).collect(),
                    },
                );
            }
            WeightTransform::SumKernels {
                branches,
                kernel,
                out_weight,
                out_bias,
            } => {
                let mut acc: Option<HostTensor> = None;
                let mut bias_acc: Option<Vec<f64>> = None;
                for (wk, bk) in branches {
                    let w = self.take(wk)?;
                    let (o, i, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
                    let (th, tw) = (kernel[0], kernel[1]);
                    if kh > th || kw > tw || (th - kh) % 2 != 0 || (tw - kw) % 2 != 0 {
                        return Err(format!("kernel {kh}x{kw} cannot be centred in {th}x{tw}"));
                    }
                    let (dy, dx) = ((th - kh) / 2, (tw - kw) / 2);
                    let a = acc.get_or_insert_with(|| HostTensor {
                        shape: vec![o, i, th, tw],
                        data: vec![0.0; o * i * th * tw],
                    });
                    for oi in 0..o * i {
                        for y in 0..kh {
                            for x in 0..kw {
                                a.data[oi * th * tw + (y + dy) * tw + x + dx] +=
                                    w.data[oi * kh * kw + y * kw + x];
                            }
                        }
                    }
                    let b = bias_acc.get_or_insert_with(|| vec![0.0; o]);
                    if let Some(bk) = bk {
                        for (acc, v) in b.iter_mut().zip(self.take(bk)?.data) {
                            *acc += v as f64;
                        }
                    }
                }
                let w = acc.ok_or("no branches")?;
                let b = bias_acc.unwrap_or_default();
                self.insert(out_weight.clone(), w);
                self.insert(
                    out_bias.clone(),
                    HostTensor {
                        shape: vec![b.len()],
                        data: b.iter().map(|v| *v as f32).collect(),
                    },
                );
            }
            WeightTransform::ConcatInputs { parts, out } => {
                let ts: Vec<HostTensor> = parts
                    .iter()
                    .map(|p| self.take(p))
                    .collect::<Result<_, _>>()?;
                let first = ts.first().ok_or("no parts")?;
                let (o, k) = (first.shape[0], first.shape[2..].iter().product::<usize>());
                let cin: usize = ts.iter().map(|t| t.shape[1]).sum();
                let mut data = Vec::with_capacity(o * cin * k);
                for oc in 0..o {
                    for t in &ts {
                        let per = t.shape[1] * k;
                        data.extend_from_slice(&t.data[oc * per..(oc + 1) * per]);
                    }
                }
                let mut shape = first.shape.clone();
                shape[1] = cin;
                self.insert(out.clone(), HostTensor { shape, data });
            }
            WeightTransform::Evaluate {
                op,
                inputs,
                out,
                shape,
            } => {
                let ts: Vec<HostTensor> = inputs
                    .iter()
                    .map(|(k, _)| {
                        self.tensors
                            .get(k)
                            .cloned()
                            .ok_or_else(|| format!("missing `{k}`"))
                    })
                    .collect::<Result<_, _>>()?;
                let data = crate::backend::candle::evaluate_constant(op, &ts, shape)
                    .map_err(|e| e.to_string())?;
                self.insert(
                    out.clone(),
                    HostTensor {
                        shape: shape.clone(),
                        data,
                    },
                );
            }
            WeightTransform::SumTensors { parts, out } => {
                let mut acc: Option<HostTensor> = None;
                for p in parts {
                    let t = self.take(p)?;
                    match &mut acc {
                        None => acc = Some(t),
                        Some(a) => a.data.iter_mut().zip(&t.data).for_each(|(x, y)| *x += y),
                    }
                }
                self.insert(out.clone(), acc.ok_or("no parts")?);
            }
            WeightTransform::ConcatOutputs { parts, out } => {
                let mut shape: Option<Vec<usize>> = None;
                let mut data = Vec::new();
                for p in parts {
                    let t = self.take(p)?;
                    match &mut shape {
                        None => shape = Some(t.shape.clone()),
                        Some(s) => s[0] += t.shape[0],
                    }
                    data.extend(t.data);
                }
                self.insert(
                    out.clone(),
                    HostTensor {
                        shape: shape.ok_or("no parts")?,
                        data,
                    },
                );
            }
        }
        Ok(())
    }

    /// Writes the tensors (in key order) as a safetensors file of f32.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }

    /// The safetensors encoding of the tensors.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let keys = self.keys();
        let raw: Vec<(String, Vec<u8>, Vec<usize>)> = keys
            .iter()
            .map(|k| {
                let t = &self.tensors[*k];
                let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (k.to_string(), bytes, t.shape.clone())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raw
            .iter()
            .map(|(k, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize(views, None).map_err(|e| e.to_string())
    }

    /// Deterministic weights for fixtures: element values depend only on
    /// (seed, key, index). See [`crate::rng`] and `tools/reference/make_fixtures.py`.
    pub fn deterministic(graph: &Graph, seed: u64) -> Weights {
        let mut out = Weights::default();
        for (_, p) in graph.params() {
            let n = p.numel() as usize;
            let mut s = Stream::new(seed, &p.key);
            let data = match fixture_rule(p) {
                FixtureRule::FanIn(bound) => (0..n)
                    .map(|_| ((2.0 * s.uniform() - 1.0) * bound) as f32)
                    .collect(),
                FixtureRule::AroundOne => (0..n).map(|_| (0.5 + s.uniform()) as f32).collect(),
                FixtureRule::Small => (0..n)
                    .map(|_| ((2.0 * s.uniform() - 1.0) * 0.1) as f32)
                    .collect(),
            };
            out.insert(
                p.key.clone(),
                HostTensor {
                    shape: p.shape.clone(),
                    data,
                },
            );
        }
        out
    }

    /// Random weights with PyTorch's default initialisers for each module
    /// (what `nn.Conv2d(...)` etc. hold right after construction), seeded.
    pub fn pytorch_default(graph: &Graph, seed: u64) -> Weights {
        let mut out = Weights::default();
        for id in graph.topo_order() {
            let node = graph.node(id);
            for p in &node.params {
                let n = p.numel() as usize;
                let mut s = Stream::new(seed, &p.key);
                let fan_in: usize = p.shape.iter().skip(1).product::<usize>().max(1);
                let uniform =
                    |s: &mut Stream, bound: f64| ((2.0 * s.uniform() - 1.0) * bound) as f32;
                let data: Vec<f32> = match (&node.op, p.role) {
                    (_, ParamRole::RunningMean) => vec![0.0; n],
                    (_, ParamRole::RunningVar) => vec![1.0; n],
                    (Op::BatchNorm { .. } | Op::LayerNorm { .. }, ParamRole::Weight) => {
                        vec![1.0; n]
                    }
                    (Op::BatchNorm { .. } | Op::LayerNorm { .. }, ParamRole::Bias) => vec![0.0; n],
                    // nn.MultiheadAttention: xavier_uniform in_proj, zero biases,
                    // out_proj as nn.Linear's weight.
                    (Op::SelfAttention { .. }, ParamRole::Bias) => vec![0.0; n],
                    (Op::SelfAttention { .. }, ParamRole::Weight)
                        if p.key.ends_with("in_proj_weight") =>
                    {
                        let bound = (6.0 / (p.shape[0] + p.shape[1]) as f64).sqrt();
                        (0..n).map(|_| uniform(&mut s, bound)).collect()
                    }
                    // kaiming_uniform(a=sqrt(5)) and the matching bias bound: 1/sqrt(fan_in).
                    (
                        Op::Conv2d { .. } | Op::Linear { .. } | Op::SelfAttention { .. },
                        ParamRole::Weight,
                    ) => {
                        let bound = 1.0 / (fan_in as f64).sqrt();
                        (0..n).map(|_| uniform(&mut s, bound)).collect()
                    }
                    (Op::Conv2d { .. } | Op::Linear { .. }, ParamRole::Bias) => {
                        let weight_fan_in = node.params[0]
                            .shape
                            .iter()
                            .skip(1)
                            .product::<usize>()
                            .max(1);
                        let bound = 1.0 / (weight_fan_in as f64).sqrt();
                        (0..n).map(|_| uniform(&mut s, bound)).collect()
                    }
                    // ConvNeXt's layer scale starts at 1e-6.
                    (Op::LayerScale { .. }, _) => vec![1e-6; n],
                    // Learned tokens and embeddings: normal(0, 0.02) as ViT initialises them.
                    _ => (0..n).map(|_| (s.normal() * 0.02) as f32).collect(),
                };
                out.insert(
                    p.key.clone(),
                    HostTensor {
                        shape: p.shape.clone(),
                        data,
                    },
                );
            }
        }
        out
    }
}

enum FixtureRule {
    FanIn(f64),
    AroundOne,
    Small,
}

/// The fixture rule for a slot, mirrored in tools/reference/make_fixtures.py:
/// running_var and 1-D weights (norm scales) in [0.5, 1.5); biases and
/// running_mean in [-0.1, 0.1); everything else uniform in ±1/sqrt(fan_in).
fn fixture_rule(p: &ParamSlot) -> FixtureRule {
    if p.key.ends_with("running_var") {
        FixtureRule::AroundOne
    } else if p.key.ends_with("running_mean") || p.key.ends_with("bias") {
        FixtureRule::Small
    } else if p.shape.len() == 1 {
        FixtureRule::AroundOne
    } else {
        let fan_in: usize = p.shape.iter().skip(1).product::<usize>().max(1);
        FixtureRule::FanIn(1.0 / (fan_in as f64).sqrt())
    }
}

fn to_f32(dtype: safetensors::Dtype, data: &[u8]) -> Result<Vec<f32>, String> {
    use safetensors::Dtype as D;
    Ok(match dtype {
        D::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        D::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        D::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("{other:?}")),
    })
}

/// Reads one named tensor (or the only tensor) of a safetensors file as f32.
pub fn read_tensor(bytes: &[u8], name: Option<&str>) -> Result<HostTensor, String> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let names = file.names();
    let key = match name {
        Some(n) if names.contains(&n) => n.to_string(),
        _ if names.len() == 1 => names[0].to_string(),
        Some(n) => {
            return Err(format!(
                "no tensor named `{n}` (the file has: {})",
                names.iter().take(8).copied().collect::<Vec<_>>().join(", ")
            ))
        }
        None => {
            return Err(format!(
                "the file has {} tensors; name the one to use",
                names.len()
            ))
        }
    };
    let view = file.tensor(&key).map_err(|e| e.to_string())?;
    let data = to_f32(view.dtype(), view.data())
        .map_err(|dt| format!("tensor `{key}` has unsupported dtype {dt}"))?;
    let numel: usize = view.shape().iter().product();
    if data.len() != numel {
        return Err(format!("tensor `{key}` holds the wrong number of bytes"));
    }
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data,
    })
}
