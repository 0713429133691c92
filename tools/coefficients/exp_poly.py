#!/usr/bin/env python3
"""Fits `EXP_POLY` (runtime/src/backend/cpu/jit.rs): e^r ≈ 1 + r + r²·q(r), q cubic,
for the least maximum relative error on |r| ≤ ln 2 / 2 (the reduced argument's range),
by Lawson's iteratively reweighted least squares; then checks the coefficients rounded to
f32, evaluated as the kernels do (Horner with fused multiply-adds, f32 rounding per step).

    .venv/bin/python tools/coefficients/exp_poly.py

Needs numpy only. Prints the coefficients (highest first) and both error figures.
"""

import numpy as np

f32 = np.float32
a = np.log(2) / 2 * 1.0005
r = np.linspace(-a, a, 20001)
r = r[np.abs(r) > 1e-6]
target = (np.exp(r) - 1 - r) / r**2
V = np.vstack([r**0, r, r**2, r**3]).T
w = np.ones_like(r)
for _ in range(200):
    W = (r**2 / np.exp(r)) * w
    c, *_ = np.linalg.lstsq(V * W[:, None], target * W, rcond=None)
    err = np.abs((V @ c - target) * r**2 / np.exp(r))
    w = w * (err / err.max() + 1e-3) ** 0.5
    w /= w.max()
print(f"fit: max relative error {err.max():.3g}")


def fma(x, y, z):
    # f32 operands: their product is exact in f64, so one rounding, as an FMA.
    return f32(np.float64(x) * np.float64(y) + np.float64(z))


cs = [f32(v) for v in c]
rr = np.linspace(-a, a, 200001).astype(f32)
p = np.full_like(rr, cs[3])
for k in (cs[2], cs[1], cs[0]):
    p = fma(p, rr, k)
r2 = f32(rr.astype(np.float64) ** 2)
p = fma(p, r2, rr)
p = f32(p.astype(np.float64) + 1.0)
exact = np.exp(rr.astype(np.float64))
print(f"in f32: max relative error {(np.abs(p - exact) / exact).max():.3g}")
print("EXP_POLY (highest first):", [float(v) for v in cs[::-1]])
