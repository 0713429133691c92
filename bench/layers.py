#!/usr/bin/env python3
"""netc against ONNX Runtime block by block, profiled back to back in rounds.

Each round runs `netc bench --profile --json` (layer times, best of 3) and then ONNX
Runtime's profiler (`ort_profile.profile`, the peer run's session options) on the same
model, so both see the machine in the same state. Layers are summed per block: the
first `--depth` components of the module path (`layer2.0`, `features.3`). netc's names
are torchvision's module paths already (`layer2.0.conv1`); ONNX Runtime's nodes are named
after the exporter's scopes (`/layer2/layer2.0/relu/Relu_output_0_nchwc`), turned into
the same dotted path (`layer2.0.relu`). A block's figure is its lowest per-round sum
over the rounds, which on a noisy shared host is the most repeatable one; the rounds'
whole-run medians are printed too. Blocks that only one side has (ONNX Runtime's layout
reorders, a stem that the two name differently: netc `conv1`, ONNX Runtime `relu`) are
listed as they are, so the totals always hold every layer of both; nodes that ONNX
Runtime's optimizer added without a scope are summed per op type, `(ReorderOutput)`.

    .venv/bin/python bench/layers.py resnet50 [--rounds 3] [--depth 2] [--json out.json]

Run `bench/peers.py` once first: it writes the cached weights and ONNX files.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ort_profile  # noqa: E402  (the sibling script)

REPO = Path(__file__).resolve().parent.parent


def ort_module(node: str) -> str:
    """The module path of an ONNX Runtime node, from the exporter's scope names:
    each scope either extends the one before it (`layer1` → `layer1.0`) or names a
    child of it (`layer1.0` → `relu`); the last component is the op's own name."""
    parts: list[str] = []
    comps = [c for c in node.strip("/").split("/") if c]
    for c in comps[:-1] if len(comps) > 1 else comps:
        if parts and c.startswith(parts[-1] + "."):
            parts[-1] = c
        else:
            parts.append(c)
    return ".".join(parts)


def block(path: str, depth: int) -> str:
    return ".".join(path.split(".")[:depth])


def netc_round(a, model: str) -> tuple[float, dict[str, float]]:
    cmd = [a.netc, "bench", str(REPO / "models" / f"{model}.net"), "--profile", "--json",
           "--iters", str(a.iters), "--threads", str(a.threads), "--batch", str(a.batch)]
    weights = Path(a.cache_dir) / f"{model}.safetensors"
    if weights.exists():
        cmd += ["--weights", str(weights)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {run.returncode}:\n{run.stderr}")
    d = json.loads(run.stdout.strip().splitlines()[-1])
    sums: dict[str, float] = collections.Counter()
    for layer in d["profile"]:
        sums[block(layer["node"], a.depth)] += layer["ms"]
    return d["median_ms"], sums


def ort_round(a, model: str) -> tuple[float, dict[str, float]]:
    path = Path(a.cache_dir) / f"{model}_b{a.batch}.onnx"
    times, rows = ort_profile.profile(path, a.threads, a.ort_runs, a.ort_warmup)
    sums: dict[str, float] = collections.Counter()
    for ms, node, op in rows:
        # Nodes the optimizer added (layout reorders) have no scope: one
        # block per op type.
        key = block(ort_module(node), a.depth) if "/" in node else f"({op})"
        sums[key] += ms
    return statistics.median(times[a.ort_warmup:]) * 1e3, sums


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model name, as in bench/peers.py (e.g. resnet50)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--depth", type=int, default=2, help="module path components per block")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=10, help="netc bench's timed runs a round")
    p.add_argument("--ort-runs", type=int, default=15, help="ONNX Runtime's profiled runs a round")
    p.add_argument("--ort-warmup", type=int, default=3)
    p.add_argument("--netc", default=str(REPO / "target" / "release" / "netc"))
    p.add_argument("--cache-dir", default=str(REPO / "bench" / ".cache"))
    p.add_argument("--json", help="also write every round's block sums here")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.depth < 1 or a.ort_runs <= a.ort_warmup:
        p.error("--rounds and --depth must be positive, --ort-runs above --ort-warmup")
    for need in [Path(a.netc), Path(a.cache_dir) / f"{a.model}_b{a.batch}.onnx"]:
        if not need.exists():
            print(f"error: {need} does not exist (cargo build --release; bench/peers.py)",
                  file=sys.stderr)
            return 2

    rounds = []
    for r in range(a.rounds):
        n_med, n = netc_round(a, a.model)
        o_med, o = ort_round(a, a.model)
        rounds.append({"netc_median_ms": n_med, "ort_median_ms": o_med, "netc": n, "ort": o})
        print(f"round {r + 1}/{a.rounds}: whole-run medians netc {n_med:.2f} ms, "
              f"ONNX Runtime {o_med:.2f} ms", file=sys.stderr)

    keys = sorted({k for rd in rounds for side in ("netc", "ort") for k in rd[side]})
    rows = []
    for k in keys:
        n = min(rd["netc"].get(k, 0.0) for rd in rounds)
        o = min(rd["ort"].get(k, 0.0) for rd in rounds)
        rows.append((n - o, k, n, o))
    tn = sum(r[2] for r in rows)
    to = sum(r[3] for r in rows)
    print(f"{a.model} batch {a.batch}, {a.threads} threads, {a.rounds} rounds; "
          f"per block the lowest per-round sum (ms)")
    print(f"{'block':32} {'netc':>9} {'ORT':>9} {'netc-ORT':>9} {'ratio':>6}")
    for diff, k, n, o in sorted(rows, reverse=True):
        ratio = f"{n / o:6.2f}" if n > 0 and o > 0 else "     -"
        print(f"{k:32} {n:9.3f} {o:9.3f} {diff:+9.3f} {ratio}")
    print(f"{'total':32} {tn:9.3f} {to:9.3f} {tn - to:+9.3f} {tn / to if to else 0:6.2f}")
    meds = [(rd["netc_median_ms"], rd["ort_median_ms"]) for rd in rounds]
    print("whole-run medians per round (netc / ONNX Runtime): "
          + ", ".join(f"{n:.2f} / {o:.2f}" for n, o in meds))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "batch": a.batch,
                                            "threads": a.threads, "rounds": rounds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
