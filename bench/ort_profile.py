#!/usr/bin/env python3
"""ONNX Runtime's own per-node profile of a model, to set beside `netc bench --profile`.

Uses the ONNX file `bench/peers.py` exported (bench/.cache/<model>_b<batch>.onnx), the
same session options as the peer run (2 intra-op threads, ORT_ENABLE_ALL), and ONNX
Runtime's profiler. Prints the median run time, the per-op-type totals and the slowest
nodes, each node's time the median of its runs after the warm-up ones.

    .venv/bin/python bench/ort_profile.py resnet50 [--batch 1] [--runs 25] [--top 40]

Run `bench/peers.py` once first (it writes the cache). ONNX Runtime names a fused node
after its last op (`/layer1/layer1.0/relu_1/Relu_output_0_nchwc` is conv2 + BN + ReLU).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model name, as in bench/peers.py (e.g. resnet50)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=25, help="runs profiled (default 25)")
    p.add_argument("--warmup", type=int, default=5, help="runs left out of the medians (default 5)")
    p.add_argument("--top", type=int, default=40, help="slowest nodes listed (default 40)")
    p.add_argument("--cache-dir", default=str(REPO / "bench" / ".cache"))
    a = p.parse_args(argv)
    if a.runs <= a.warmup:
        p.error("--runs must be above --warmup")

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(f"error: {e}; install with .venv/bin/pip install onnxruntime numpy", file=sys.stderr)
        return 2
    path = Path(a.cache_dir) / f"{a.model}_b{a.batch}.onnx"
    if not path.exists():
        print(f"error: {path} does not exist; run bench/peers.py first", file=sys.stderr)
        return 2

    times, rows = profile(path, a.threads, a.runs, a.warmup)
    by_op = collections.Counter()
    for ms, _, op in rows:
        by_op[op] += ms

    print(f"{a.model} batch {a.batch}, {a.threads} threads, onnxruntime {ort.__version__}")
    print(f"median run {statistics.median(times[a.warmup:]) * 1e3:.2f} ms; "
          f"nodes' medians sum to {sum(r[0] for r in rows):.2f} ms")
    for op, ms in by_op.most_common():
        print(f"  {op:24} {ms:8.3f} ms")
    print(f"slowest {min(a.top, len(rows))} nodes:")
    for ms, node, op in sorted(rows, reverse=True)[: a.top]:
        print(f"  {ms:7.3f} ms  {op:18} {node}")
    return 0


def profile(path: Path, threads: int, runs: int, warmup: int):
    """Runs the ONNX file at `path` `runs` times with ONNX Runtime's profiler on,
    with the peer run's session options. Returns the run times (seconds, all
    runs) and one `(median ms, node, op type)` row per node, each node's
    median over the runs after the first `warmup`."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / path.stem)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random(inp.shape, dtype=np.float32)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append(time.perf_counter() - t)
    events = json.loads(Path(sess.end_profiling()).read_text())

    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_node[node].append(e["dur"] / 1e3)
            op_of[node] = e["args"].get("op_name", "?")
    rows = []
    for node, ms in per_node.items():
        kept = ms[warmup:] if len(ms) > warmup else ms
        rows.append((statistics.median(kept), node, op_of[node]))
    return times, rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
