#!/usr/bin/env python3
"""Numerical-parity fixtures: PyTorch forward passes of torchvision models with
deterministic weights.

Weights are not stored: every parameter is generated from (seed, state_dict key,
element index) by the same function netc implements in runtime/src/rng.rs and
runtime/src/weights.rs (`Weights::deterministic`). A fixture holds only the
input, PyTorch's output and how to rebuild the model, so fixtures are small
enough to commit while the weights are those of the full model.

Usage (PyTorch in a git-ignored venv; CPU is enough):
    python3 -m venv .venv && .venv/bin/pip install torch torchvision safetensors numpy
    .venv/bin/python tools/reference/make_fixtures.py                 # all fixtures -> tests/fixtures/
    .venv/bin/python tools/reference/make_fixtures.py resnet18        # some of them
    .venv/bin/python tools/reference/make_fixtures.py --full --out /tmp/parity   # 224x224 (docs/parity.md)
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))

MASK64 = (1 << 64) - 1


def key_hash(key: str) -> int:
    """FNV-1a, 64-bit (runtime/src/rng.rs: key_hash)."""
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniforms(seed: int, key: str, n: int) -> np.ndarray:
    """Element i: SplitMix64(base + (i + 1) * golden) >> 11, scaled to [0, 1)."""
    base = np.uint64(key_hash(key) ^ seed)
    with np.errstate(over="ignore"):
        z = base + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / float(1 << 53))


def fixture_tensor(seed: int, key: str, shape) -> torch.Tensor:
    """runtime/src/weights.rs: fixture_rule."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniforms(seed, key, n)
    if key.endswith("running_var"):
        v = 0.5 + u
    elif key.endswith("running_mean") or key.endswith("bias"):
        v = (2.0 * u - 1.0) * 0.1
    elif len(shape) == 1:
        v = 0.5 + u
    else:
        fan_in = max(1, int(np.prod(shape[1:])))
        v = (2.0 * u - 1.0) * (1.0 / np.sqrt(float(fan_in)))
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def load_deterministic(model: torch.nn.Module, seed: int):
    sd = model.state_dict()
    new = {}
    for k, t in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = t
        else:
            new[k] = fixture_tensor(seed, k, list(t.shape))
    model.load_state_dict(new, strict=True)
    return [k for k in sd if not k.endswith("num_batches_tracked")]


def tv(name, **kw):
    return lambda: getattr(torchvision.models, name)(weights=None, **kw)


# name -> (constructor, .net file, --set overrides, resolution)
FIXTURES = {
    "resnet18": (tv("resnet18"), "models/resnet18.net", ["resolution=64"], 64),
    "resnext50_32x4d": (tv("resnext50_32x4d"), "models/resnext50_32x4d.net", ["resolution=64"], 64),
}

from fixtures_zoo import FULL, MORE  # noqa: E402

FIXTURES.update(MORE)


def make(name, full, out_dir, seed=0):
    ctor, net, sets, res = FULL[name] if full and name in FULL else FIXTURES[name]
    if full:
        sets = [s for s in sets if not s.startswith(("resolution=", "image_size="))]
        res = None
    torch.manual_seed(0)
    model = ctor().eval()
    keys = load_deterministic(model, seed)
    if res is None:
        res = int(dict(l.split("\t")[0:2] for l in open("tests/reference/torchvision_zoo.tsv").read().splitlines()[1:]).get(name, 224))
    x = fixture_tensor(seed + 1, "input", [1, 3, res, res]) * 4.0
    with torch.no_grad():
        y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    meta = {
        "model": net,
        "set": json.dumps(sets),
        "seed": str(seed),
        "check_key": keys[0],
        "check": json.dumps([float(v) for v in fixture_tensor(seed, keys[0], list(model.state_dict()[keys[0]].shape)).flatten()[:4]]),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    path = os.path.join(out_dir, f"{name}.safetensors")
    save_file({"input": x.contiguous(), "output": y.contiguous()}, path, metadata=meta)
    print(f"{name}: input {list(x.shape)} output {list(y.shape)} max|y| {y.abs().max():.4g} -> {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="fixtures to make (default: all)")
    ap.add_argument("--full", action="store_true", help="native resolution instead of the reduced one")
    ap.add_argument("--out", default="tests/fixtures", help="output directory")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    for name in args.names or FIXTURES:
        if name not in FIXTURES:
            sys.exit(f"unknown fixture {name}; known: {', '.join(FIXTURES)}")
        make(name, args.full, args.out)


if __name__ == "__main__":
    main()
