//! Ops candle-core lacks or does slowly, built from its primitives: asymmetric
//! padding, padded/dilated/ceil-mode pooling, adaptive pooling, depthwise
//! convolution, and strided window extraction shared by them.

use candle_core::{DType, Result, Tensor};

/// Pads the two spatial axes of an NCHW tensor with `value`.
pub fn pad2d(x: &Tensor, pad: [usize; 4], value: f64) -> Result<Tensor> {
    let [t, l, b, r] = pad;
    if pad == [0; 4] {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r);
    }
    let (n, c, h, w) = x.dims4()?;
    let full = |dims: (usize, usize, usize, usize)| {
        Tensor::full(value as f32, dims, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::new();
    if t > 0 {
        parts.push(full((n, c, t, w))?);
    }
    parts.push(x.clone());
    if b > 0 {
        parts.push(full((n, c, b, w))?);
    }
    let x = Tensor::cat(&parts, 2)?;
    let hp = h + t + b;
    let mut parts = Vec::new();
    if l > 0 {
        parts.push(full((n, c, hp, l))?);
    }
    parts.push(x);
    if r > 0 {
        parts.push(full((n, c, hp, r))?);
    }
    Tensor::cat(&parts, 3)
}

/// Every `stride`-th element of axis `dim`, starting at `start`, `count` of them.
/// Works by narrowing then folding the stride into a new axis, so no gather is needed.
fn strided(x: &Tensor, dim: usize, start: usize, count: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(dim, start, count);
    }
    let len = x.dim(dim)?;
    let need = start + count * stride;
    let x = if need > len {
        x.pad_with_zeros(dim, 0, need - len)?
    } else {
        x.clone()
    };
    let x = x.narrow(dim, start, count * stride)?;
    let mut shape = x.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, stride);
    x.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// The window tap (ky, kx) of a padded NCHW input: an [N, C, oh, ow] view.
#[allow(clippy::too_many_arguments)]
fn tap(
    xp: &Tensor,
    ky: usize,
    kx: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let rows = strided(xp, 2, ky * dilation[0], oh, stride[0])?;
    strided(&rows, 3, kx * dilation[1], ow, stride[1])
}

/// Extra bottom/right padding so windows cover `out` positions (ceil mode).
fn extra_for(
    out: [usize; 2],
    padded: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> [usize; 2] {
    let mut e = [0; 2];
    for a in 0..2 {
        let need = (out[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1;
        e[a] = need.saturating_sub(padded[a]);
    }
    e
}

/// Max pooling with padding, dilation and ceil mode; output size as given.
pub fn max_pool(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    out: [usize; 2],
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = [h + pad[0] + pad[2], w + pad[1] + pad[3]];
    let e = extra_for(out, padded, kernel, stride, dilation);
    let xp = pad2d(
        x,
        [pad[0], pad[1], pad[2] + e[0], pad[3] + e[1]],
        f64::NEG_INFINITY,
    )?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..kernel[0] {
        for kx in 0..kernel[1] {
            let t = tap(&xp, ky, kx, stride, dilation, out[0], out[1])?;
            acc = Some(match acc {
                None => t,
                Some(a) => a.maximum(&t)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))
}

/// Average pooling with PyTorch's divisor rules (padding, ceil mode, count_include_pad).
#[allow(clippy::too_many_arguments)]
pub fn avg_pool(
    x: &Tensor,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    out: [usize; 2],
    count_include_pad: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let padded = [h + pad[0] + pad[2], w + pad[1] + pad[3]];
    let e = extra_for(out, padded, kernel, stride, [1, 1]);
    let xp = pad2d(x, [pad[0], pad[1], pad[2] + e[0], pad[3] + e[1]], 0.0)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..kernel[0] {
        for kx in 0..kernel[1] {
            let t = tap(&xp, ky, kx, stride, [1, 1], out[0], out[1])?;
            acc = Some(match acc {
                None => t,
                Some(a) => (a + t)?,
            });
        }
    }
    let sum = acc.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))?;
    // aten's avg_pool2d: the window is clipped to input + padding for the
    // included-padding count, and to the input alone otherwise.
    let mut div = vec![0f32; out[0] * out[1]];
    for oy in 0..out[0] {
        for ox in 0..out[1] {
            let span = |o: usize, a: usize, size: usize| -> (i64, i64, i64) {
                let start = (o * stride[a]) as i64 - pad[a] as i64;
                let end = (start + kernel[a] as i64).min((size + pad[a + 2]) as i64);
                let pool = end - start;
                (start.max(0), end.min(size as i64), pool)
            };
            let (hs, he, ph) = span(oy, 0, h);
            let (ws, we, pw) = span(ox, 1, w);
            let d = if count_include_pad {
                ph * pw
            } else {
                (he - hs) * (we - ws)
            };
            div[oy * out[1] + ox] = 1.0 / d.max(1) as f32;
        }
    }
    let div = Tensor::from_vec(div, (1, 1, out[0], out[1]), x.device())?.to_dtype(x.dtype())?;
    sum.broadcast_mul(&div)
}

/// Adaptive average pooling with PyTorch's bins: [floor(i·n/o), ceil((i+1)·n/o)).
pub fn adaptive_avg_pool(x: &Tensor, size: [usize; 2]) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if size == [1, 1] {
        return x.mean_keepdim(2)?.mean_keepdim(3);
    }
    if h % size[0] == 0 && w % size[1] == 0 {
        let k = [h / size[0], w / size[1]];
        return avg_pool(x, k, k, [0; 4], size, true);
    }
    let bins = |n: usize, o: usize| -> Vec<(usize, usize)> {
        (0..o)
            .map(|i| (i * n / o, ((i + 1) * n).div_ceil(o)))
            .collect()
    };
    let mut rows = Vec::new();
    for (hs, he) in bins(h, size[0]) {
        let band = x.narrow(2, hs, he - hs)?.mean_keepdim(2)?;
        let mut cols = Vec::new();
        for (ws, we) in bins(w, size[1]) {
            cols.push(band.narrow(3, ws, we - ws)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cols, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// Depthwise convolution (groups == in == out channels) as a sum of k·k shifted,
/// per-channel-scaled taps: candle runs grouped convolutions one group at a time.
pub fn depthwise_conv(
    x: &Tensor,
    weight: &Tensor,
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    out: [usize; 2],
) -> Result<Tensor> {
    let (c, _, kh, kw) = weight.dims4()?;
    let xp = pad2d(x, pad, 0.0)?;
    let w = weight.reshape((c, kh * kw))?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        for kx in 0..kw {
            let t = tap(&xp, ky, kx, stride, dilation, out[0], out[1])?;
            let wk = w.narrow(1, ky * kw + kx, 1)?.reshape((1, c, 1, 1))?;
            let term = t.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))
}

/// A general 2-D convolution: asymmetric padding is applied explicitly, unequal
/// strides/dilations are handled by dilating the kernel and subsampling.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: [usize; 2],
    pad: [usize; 4],
    dilation: [usize; 2],
    groups: usize,
    out: [usize; 2],
) -> Result<Tensor> {
    let cin = x.dim(1)?;
    let cout = weight.dim(0)?;
    if groups > 1 && groups == cin && cout == cin {
        return depthwise_conv(x, weight, stride, pad, dilation, out);
    }
    let symmetric = pad[0] == pad[1] && pad[1] == pad[2] && pad[2] == pad[3];
    let (xp, p) = if symmetric {
        (x.clone(), pad[0])
    } else {
        (pad2d(x, pad, 0.0)?, 0)
    };
    let (weight, dilation) = if dilation[0] == dilation[1] {
        (weight.clone(), dilation[0])
    } else {
        (dilate_kernel(weight, dilation)?, 1)
    };
    if stride[0] == stride[1] {
        return xp
            .contiguous()?
            .conv2d(&weight, p, stride[0], dilation, groups);
    }
    let full = xp.contiguous()?.conv2d(&weight, p, 1, dilation, groups)?;
    let rows = strided(&full, 2, 0, out[0], stride[0])?;
    strided(&rows, 3, 0, out[1], stride[1])
}

fn dilate_kernel(w: &Tensor, d: [usize; 2]) -> Result<Tensor> {
    let (o, i, kh, kw) = w.dims4()?;
    let (nh, nw) = (d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1);
    let src = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut dst = vec![0f32; o * i * nh * nw];
    for a in 0..o * i {
        for y in 0..kh {
            for x in 0..kw {
                dst[a * nh * nw + y * d[0] * nw + x * d[1]] = src[a * kh * kw + y * kw + x];
            }
        }
    }
    Tensor::from_vec(dst, (o, i, nh, nw), w.device())?.to_dtype(w.dtype())
}

/// Softmax along `dim`, stabilised by the maximum.
pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let m = x.max_keepdim(dim)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(dim)?;
    e.broadcast_div(&s)
}

/// `x Wᵀ + b` over the last axis of any-rank `x`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&1);
    let m: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((m, k))?.matmul(&w.t()?)?;
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    y.reshape(out)
}

/// Multi-head self-attention with PyTorch's packed projection layout.
pub fn self_attention(
    x: &Tensor,
    in_w: &Tensor,
    in_b: Option<&Tensor>,
    out_w: &Tensor,
    out_b: Option<&Tensor>,
    heads: usize,
) -> Result<Tensor> {
    let (n, s, e) = x.dims3()?;
    let d = e / heads;
    let qkv = linear(x, in_w, in_b)?;
    let split = |i: usize| -> Result<Tensor> {
        qkv.narrow(2, i * e, e)?
            .reshape((n, s, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scores = (q.matmul(&k.transpose(2, 3)?.contiguous()?)? * (1.0 / (d as f64).sqrt()))?;
    let attn = softmax(&scores, 3)?;
    let ctx = attn
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((n, s, e))?;
    linear(&ctx, out_w, out_b)
}
