#!/usr/bin/env python3
"""Benchmark netc against its peers (PyTorch eager, ONNX Runtime CPU) on CPU.

For every model and batch size the runners are measured round-robin in several
rounds (the starting runner rotates each round), so that noise on a shared
machine hits all of them alike. Writes a Markdown report (between the markers
<!-- peers:begin --> and <!-- peers:end -->, preserving anything outside them), a
JSON file with every raw sample, and an SVG bar chart of the batch-1 medians.

Example (the full run that produces docs/benchmarks.md):

    .venv/bin/python bench/peers.py

Small end-to-end check:

    .venv/bin/python bench/peers.py --models mobilenet_v2 --batches 1 --iters 3 \\
        --out /tmp/bench_test.md

See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = [
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "efficientnet_b0",
    "densenet121",
    "convnext_tiny",
    "vit_b_16",
]
RESOLUTION = 224
SEED = 0
OPSET = 17
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"

# The "floor" for ResNet-50 at batch 1: 2 FLOPs per MAC at the machine's measured
# GEMM peak on the benchmark's thread count.
RESNET50_MACS = 4_089_184_256

PYTORCH, ORT = "pytorch", "onnxruntime"
LABELS = {PYTORCH: "PyTorch", ORT: "ONNX Runtime"}


class BenchError(RuntimeError):
    """An error with a message fit for the user (no traceback needed)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def label(runner: str) -> str:
    if runner.startswith("netc-"):
        return f"netc {runner[5:]}"
    return LABELS.get(runner, runner)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.strip().split("\n\n")[2:-1])
        + "\n\nExit status: 0 when every measurement succeeded; 1 on a setup error (nothing\n"
        "written); 2 when some runner failed for some model (the report is still\n"
        "written and lists the failures).",
    )
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated torchvision model names; each needs models/<name>.net "
                        "(default: %(default)s)")
    p.add_argument("--batches", default="1,8",
                   help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for every runner: torch.set_num_threads, ORT intra_op_num_threads, "
                        "netc --threads (default: %(default)s)")
    p.add_argument("--iters", type=int, default=30,
                   help="timed iterations per runner, split evenly over the rounds "
                        "(rounded up to a multiple of --rounds) (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="round-robin rounds per model and batch (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations before each round of the in-process runners (PyTorch, ORT); "
                        "default: clamp(iters_per_round/5, 1, 5), the rule netc bench uses")
    p.add_argument("--netc", default=str(REPO / "target" / "release" / "netc"),
                   help="netc binary (default: target/release/netc; build it with "
                        "`cargo build --release`)")
    p.add_argument("--netc-backends", default="cpu",
                   help="comma-separated netc backends to measure, each one a runner (`netc bench "
                        "--backend B`); 'none' or '' skips netc (default: %(default)s)")
    p.add_argument("--no-netc-weights", action="store_true",
                   help="do not pass --weights to netc bench (for netc builds without that flag; "
                        "netc then uses its own random weights)")
    p.add_argument("--no-pytorch", action="store_true", help="skip the PyTorch eager runner")
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime runner")
    p.add_argument("--no-placement", action="store_true",
                   help="do not measure the cross-core round trip before each runner's turn "
                        "(netc-runtime's `cross_core_costs` test, built with cargo on first use)")
    p.add_argument("--cache-dir", default=str(REPO / "bench" / ".cache"),
                   help="where the safetensors weights and ONNX files go (default: bench/.cache)")
    p.add_argument("--refresh-cache", action="store_true",
                   help="re-create the cached weights and ONNX files even if they look current")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"),
                   help="Markdown report; the JSON (raw samples) and SVG (plot) are written next to it "
                        "with the same stem (default: docs/benchmarks.md)")
    p.add_argument("--peak-gflops", type=float, default=130.0,
                   help="GEMM peak (GFLOP/s, on --threads threads) for the ResNet-50 batch-1 floor "
                        "(default: %(default)s)")
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds to sleep before each runner's turn, so that the previous runner's "
                        "spin-waiting worker threads (OpenMP, ORT) have gone idle (default: %(default)s)")
    p.add_argument("--netc-timeout", type=float, default=1800.0,
                   help="seconds before one netc bench subprocess is killed (default: %(default)s)")
    a = p.parse_args(argv)

    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    try:
        a.batches = [int(b) for b in a.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches: expected comma-separated integers, got {a.batches!r}")
    nb = a.netc_backends.strip()
    a.netc_backends = [] if nb in ("", "none") else [b.strip() for b in nb.split(",") if b.strip()]
    if not a.models:
        p.error("--models is empty")
    if not a.batches or any(b < 1 for b in a.batches):
        p.error("--batches: need at least one batch size, each >= 1")
    for name, v in (("--threads", a.threads), ("--iters", a.iters), ("--rounds", a.rounds)):
        if v < 1:
            p.error(f"{name} must be >= 1")
    if a.settle < 0:
        p.error("--settle must be >= 0")
    if a.warmup is not None and a.warmup < 0:
        p.error("--warmup must be >= 0")
    if not a.netc_backends and a.no_pytorch and a.no_ort:
        p.error("nothing to measure: no netc backend, --no-pytorch and --no-ort")
    a.iters_per_round = math.ceil(a.iters / a.rounds)
    if a.warmup is None:
        a.warmup = min(max(a.iters_per_round // 5, 1), 5)
    return a


# ------------------------------------------------------------------ environment


def machine_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
        if names:
            info["cpu"] = names[0].strip()
        info["logical_cpus"] = len(re.findall(r"^processor\s*:", text, re.M)) or os.cpu_count()
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if flags:
            have = set(flags.group(1).split())
            info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni",
                                        "avx512_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if mem:
            info["memory_gib"] = round(int(mem.group(1)) / 2**20, 1)
    except OSError:
        pass
    info["kernel"] = platform.release()
    return info


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs' time spent non-idle over `seconds` (from /proc/stat)."""
    def snap():
        f = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(f), f[3] + (f[4] if len(f) > 4 else 0)  # total, idle + iowait
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return 1 - (i1 - i0) / (t1 - t0) if t1 > t0 else None
    except (OSError, ValueError, IndexError):
        return None


def git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def reproduce_command(argv: list[str]) -> str:
    exe = Path(sys.executable)
    try:
        py = str(exe.relative_to(REPO)) if exe.is_relative_to(REPO) else "python"
    except AttributeError:  # Python < 3.9
        py = "python"
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join([py, str(script), *argv])


def import_frameworks(a) -> dict:
    mods = {}
    try:
        import torch
        import torchvision
        mods["torch"], mods["torchvision"] = torch, torchvision
    except ImportError as e:
        raise BenchError(f"cannot import torch/torchvision ({e}); use the repo's venv: .venv/bin/python")
    try:
        import safetensors.torch  # noqa: F401
        mods["safetensors"] = safetensors
    except ImportError as e:
        raise BenchError(f"cannot import safetensors ({e}); .venv/bin/pip install safetensors")
    if not a.no_ort:
        try:
            import onnxruntime
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            mods["onnxruntime"] = onnxruntime
        except ImportError as e:
            raise BenchError(f"cannot import onnxruntime/onnx ({e}); .venv/bin/pip install onnxruntime onnx "
                             "(or pass --no-ort)")
    return mods


# ------------------------------------------------------------------ model cache


def build_torch_model(torchvision, torch, name: str):
    torch.manual_seed(SEED)
    try:
        model = torchvision.models.get_model(name, weights=None)
    except (ValueError, KeyError) as e:
        raise BenchError(f"{name}: not a torchvision model ({e})")
    return model.eval()


def cache_meta(mods, name: str) -> dict:
    return {"model": name, "seed": SEED, "resolution": RESOLUTION, "opset": OPSET,
            "torch": mods["torch"].__version__, "torchvision": mods["torchvision"].__version__}


def ensure_weights(mods, model, name: str, cache: Path, refresh: bool) -> Path:
    path = cache / f"{name}.safetensors"
    meta_path = cache / f"{name}.safetensors.meta.json"
    meta = cache_meta(mods, name)
    meta.pop("opset")
    if not refresh and path.exists() and meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return path
        except (OSError, json.JSONDecodeError):
            pass
    from safetensors.torch import save_file
    # netc ignores num_batches_tracked; it is kept so the file is a plain torchvision state_dict.
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(sd, str(tmp), metadata={"source": f"torchvision.models.{name}(weights=None), seed {SEED}"})
    tmp.replace(path)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    log(f"  wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({len(sd)} tensors)")
    return path


def ensure_onnx(mods, model, name: str, batch: int, cache: Path, refresh: bool) -> tuple[Path, dict]:
    """Exports `model` at a fixed batch size; returns the path and {exporter, opset}."""
    torch = mods["torch"]
    path = cache / f"{name}_b{batch}.onnx"
    meta_path = cache / f"{name}_b{batch}.onnx.meta.json"
    want = cache_meta(mods, name) | {"batch": batch}
    if not refresh and path.exists() and meta_path.exists():
        try:
            got = json.loads(meta_path.read_text())
            if {k: got.get(k) for k in want} == want:
                return path, {"exporter": got.get("exporter"), "opset": got.get("opset_actual")}
        except (OSError, json.JSONDecodeError):
            pass
    for stale in (path, Path(str(path) + ".data")):
        stale.unlink(missing_ok=True)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION)
    errors = []
    exporter = None
    import warnings
    # The TorchScript exporter writes opset 17 as asked; the dynamo exporter (the default since
    # torch 2.9) only emits opset >= 18 and is the fallback.
    for dynamo in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kw = dict(opset_version=OPSET, input_names=["image"], output_names=["logits"])
                try:
                    torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **kw)
                except TypeError:  # torch without the `dynamo` argument
                    if dynamo:
                        raise
                    torch.onnx.export(model, (x,), str(path), **kw)
            exporter = "dynamo" if dynamo else "torchscript"
            break
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other one
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {e}")
            path.unlink(missing_ok=True)
    if exporter is None:
        raise BenchError(f"{name}: ONNX export failed at batch {batch}:\n  " + "\n  ".join(errors))
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    meta_path.write_text(json.dumps(want | {"exporter": exporter, "opset_actual": opset}, indent=1) + "\n")
    log(f"  exported {path.name} ({exporter} exporter, opset {opset})")
    return path, {"exporter": exporter, "opset": opset}


# --------------------------------------------------------------------- runners


class InProcessRunner:
    """Times one callable; `round(k)` runs warm-up then k timed calls."""

    def __init__(self, name: str, fn, warmup: int):
        self.name, self.fn, self.warmup = name, fn, warmup
        self.samples: list[float] = []
        self.rounds: list[dict] = []
        self.extra: dict = {}

    def round(self, k: int) -> None:
        for _ in range(self.warmup):
            self.fn()
        times = []
        for _ in range(k):
            t = time.perf_counter()
            self.fn()
            times.append((time.perf_counter() - t) * 1e3)
        self.samples += times
        self.rounds.append({"iters": k, "median_ms": statistics.median(times),
                            "min_ms": min(times), "max_ms": max(times)})

    def result(self) -> dict:
        s = self.samples
        return {"median_ms": statistics.median(s), "min_ms": min(s), "max_ms": max(s),
                "median_of": "samples", "samples_ms": s, "rounds": self.rounds, **self.extra}


class NetcRunner:
    """One `netc bench` subprocess per round; netc does its own warm-up."""

    def __init__(self, a, backend: str, name: str, batch: int, weights: Path | None):
        self.name = f"netc-{backend}"
        self.backend, self.batch = backend, batch
        self.cmd = [a.netc, "bench", str(REPO / "models" / f"{name}.net"), "--backend", backend,
                    "--threads", str(a.threads), "--iters", str(a.iters_per_round),
                    "--batch", str(batch), "--json"]
        if weights is not None:
            self.cmd += ["--weights", str(weights)]
        self.threads, self.timeout = a.threads, a.netc_timeout
        self.samples: list[float] = []
        self.rounds: list[dict] = []

    def round(self, k: int) -> None:
        t = time.perf_counter()
        try:
            p = subprocess.run(self.cmd, capture_output=True, text=True, timeout=self.timeout, cwd=REPO)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {self.timeout:.0f} s: {shlex.join(self.cmd)}")
        wall = time.perf_counter() - t
        if p.returncode != 0:
            tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
            raise BenchError(f"exit status {p.returncode}: {shlex.join(self.cmd)}\n{tail}")
        rows = []
        for line in p.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        rows = [r for r in rows if r.get("backend") == self.backend]
        if len(rows) != 1:
            raise BenchError(f"expected one JSON line with backend {self.backend!r} from "
                             f"{shlex.join(self.cmd)}, got stdout:\n{p.stdout.strip()[-2000:]}")
        r = rows[0]
        for key in ("median_ms", "min_ms", "max_ms"):
            if not isinstance(r.get(key), (int, float)):
                raise BenchError(f"netc JSON lacks {key}: {r}")
        if r.get("batch") not in (None, self.batch) or r.get("threads") not in (None, self.threads):
            raise BenchError(f"netc measured batch {r.get('batch')} threads {r.get('threads')}, "
                             f"asked for batch {self.batch} threads {self.threads}: {r}")
        raw = r.get("samples_ms") or r.get("times_ms")
        if isinstance(raw, list) and raw:
            self.samples += [float(v) for v in raw]
        self.rounds.append({"iters": r.get("iters", k), "median_ms": r["median_ms"], "min_ms": r["min_ms"],
                            "max_ms": r["max_ms"], "process_wall_s": round(wall, 3), "json": r})

    def result(self) -> dict:
        mins = min(r["min_ms"] for r in self.rounds)
        maxs = max(r["max_ms"] for r in self.rounds)
        if self.samples and len(self.samples) == sum(r["iters"] for r in self.rounds):
            return {"median_ms": statistics.median(self.samples), "min_ms": mins, "max_ms": maxs,
                    "median_of": "samples", "samples_ms": self.samples, "rounds": self.rounds}
        # `netc bench --json` reports per-process summaries only: the median of the round medians.
        return {"median_ms": statistics.median(r["median_ms"] for r in self.rounds), "min_ms": mins,
                "max_ms": maxs, "median_of": "round medians", "samples_ms": None, "rounds": self.rounds}


def torch_runner(mods, model, batch: int, warmup: int) -> InProcessRunner:
    torch = mods["torch"]
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g)

    def fn():
        with torch.inference_mode():
            model(x)

    return InProcessRunner(PYTORCH, fn, warmup)


def ort_runner(mods, onnx_path: Path, batch: int, threads: int, warmup: int) -> InProcessRunner:
    ort = mods["onnxruntime"]
    import numpy as np
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    create_ms = (time.perf_counter() - t) * 1e3
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(SEED).standard_normal((batch, 3, RESOLUTION, RESOLUTION), dtype=np.float32)
    if any(isinstance(d, int) and d != s for d, s in zip(inp.shape, x.shape)):
        raise BenchError(f"{onnx_path.name}: input {inp.name} has shape {inp.shape}, expected {list(x.shape)}")
    feed = {inp.name: x}
    r = InProcessRunner(ORT, lambda: sess.run(None, feed), warmup)
    r.extra["session_create_ms"] = create_ms
    return r


# ------------------------------------------------------------------- benchmark


SLOW_PLACEMENT_NS = 250


class PlacementProbe:
    """The round trip of a cache line between the first two CPUs, measured by netc-runtime's
    `cross_core_costs` test (the binary is built once, with cargo). On this project's host it tells
    where the hypervisor has put the two vCPUs: 85-150 ns on two cores of one chiplet, 330-370 ns
    on different chiplets (where every line passed between threads costs about four times more and
    memory-bound networks run up to 1.7x slower, for every runner), about 64 ns on the two hardware
    threads of one core. See docs/benchmarks.md, "The host's slow phase"."""

    def __init__(self):
        self.exe = None
        try:
            out = subprocess.run(["cargo", "test", "--release", "-p", "netc-runtime", "--lib", "--no-run",
                                  "--message-format=json"], cwd=REPO, capture_output=True, text=True,
                                 timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"no placement probe: {e}")
            return
        for line in out.stdout.splitlines():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                    and msg.get("target", {}).get("name") == "netc_runtime" and msg.get("profile", {}).get("test")):
                self.exe = msg["executable"]
        if not self.exe:
            log("no placement probe: the netc-runtime test binary was not built:\n" + out.stderr[-2000:])

    def __call__(self) -> int | None:
        if not self.exe:
            return None
        try:
            out = subprocess.run([self.exe, "cross_core_costs", "--ignored", "--nocapture", "--test-threads=1"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(r"round trip (\d+) ns", out.stdout)
        return int(m.group(1)) if m else None


def bench_model(a, mods, name: str, cache: Path, probe: PlacementProbe | None = None) -> list[dict]:
    torch, torchvision = mods["torch"], mods["torchvision"]
    results = []
    net = REPO / "models" / f"{name}.net"
    errors_all: dict[str, str] = {}
    model = weights = None
    try:
        model = build_torch_model(torchvision, torch, name)
        if a.netc_backends and not a.no_netc_weights:
            weights = ensure_weights(mods, model, name, cache, a.refresh_cache)
    except BenchError as e:
        errors_all = {"*": str(e)}
    except Exception as e:  # noqa: BLE001
        errors_all = {"*": f"{name}: {type(e).__name__}: {e}"}
    if a.netc_backends and not net.exists():
        for b in a.netc_backends:
            errors_all[f"netc-{b}"] = f"{net.relative_to(REPO)} does not exist"

    for batch in a.batches:
        entry = {"model": name, "batch": batch, "runners": {}, "errors": {}}
        results.append(entry)
        if "*" in errors_all:
            entry["errors"]["*"] = errors_all["*"]
            log(f"  {name}: {errors_all['*']}")
            continue
        runners = []
        for b in a.netc_backends:
            if f"netc-{b}" in errors_all:
                entry["errors"][f"netc-{b}"] = errors_all[f"netc-{b}"]
            else:
                runners.append(NetcRunner(a, b, name, batch, weights))
        if not a.no_pytorch:
            runners.append(torch_runner(mods, model, batch, a.warmup))
        onnx_info = None
        if not a.no_ort:
            try:
                path, onnx_info = ensure_onnx(mods, model, name, batch, cache, a.refresh_cache)
                runners.append(ort_runner(mods, path, batch, a.threads, a.warmup))
            except BenchError as e:
                entry["errors"][ORT] = str(e)
            except Exception as e:  # noqa: BLE001
                entry["errors"][ORT] = f"{type(e).__name__}: {e}"
        if onnx_info:
            entry["onnx"] = onnx_info

        live = list(runners)
        for rnd in range(a.rounds):
            # Rotate the starting runner so that no runner always runs first (or right after another).
            order = live[rnd % len(live):] + live[:rnd % len(live)] if live else []
            for r in order:
                if r.name in entry["errors"]:
                    continue
                if probe:
                    entry.setdefault("placement_ns", {}).setdefault(r.name, []).append(probe())
                time.sleep(a.settle)
                try:
                    r.round(a.iters_per_round)
                except BenchError as e:
                    entry["errors"][r.name] = str(e)
                except Exception as e:  # noqa: BLE001
                    entry["errors"][r.name] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
            live = [r for r in live if r.name not in entry["errors"]]
            placed = entry.get("placement_ns", {})
            log(f"  {name} batch {batch} round {rnd + 1}/{a.rounds}: " + ", ".join(
                f"{label(r.name)} {r.rounds[-1]['median_ms']:.1f}" for r in live if r.rounds) + " ms (median)"
                + ("; cross-core round trip before each turn: " + ", ".join(
                    f"{label(n)} {v[-1]} ns" for n, v in placed.items() if v and v[-1] is not None)
                   if placed else ""))
        for r in live:
            entry["runners"][r.name] = r.result()
        for who, err in entry["errors"].items():
            log(f"  FAILED {name} batch {batch} {label(who)}: {err}")
        del runners, live
    return results


# ---------------------------------------------------------------------- report


def fmt_ms(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_pct(v) -> str:
    return "unknown" if v is None else f"{100 * v:.0f}%"


def fmt_load(v) -> str:
    return ", ".join(f"{x:.2f}" for x in v) if v else "unknown"


def resnet50_floor(a, results: list[dict]) -> dict | None:
    e = next((r for r in results if r["model"] == "resnet50" and r["batch"] == 1), None)
    if e is None:
        return None
    floor_ms = 2 * RESNET50_MACS / (a.peak_gflops * 1e9) * 1e3
    frac = {k: floor_ms / v["median_ms"] for k, v in e["runners"].items()}
    return {"macs": RESNET50_MACS, "peak_gflops": a.peak_gflops, "threads": a.threads,
            "floor_ms": floor_ms, "fraction": frac}


def runner_names(a) -> list[str]:
    names = [f"netc-{b}" for b in a.netc_backends]
    if not a.no_pytorch:
        names.append(PYTORCH)
    if not a.no_ort:
        names.append(ORT)
    return names


def render_markdown(a, meta: dict, results: list[dict], floor: dict | None, svg_name: str | None) -> str:
    names = runner_names(a)
    netcs = [n for n in names if n.startswith("netc-")]
    peers = [n for n in names if not n.startswith("netc-")]
    m = meta["machine"]
    out = [BEGIN, "", "<!-- Generated by bench/peers.py; edit outside the markers. -->", ""]
    cpu = f"{m['cpu']}, {m['logical_cpus']} logical CPUs"
    if m.get("usable_cpus") not in (None, m["logical_cpus"]):
        cpu += f" ({m['usable_cpus']} usable)"
    if m.get("memory_gib"):
        cpu += f", {m['memory_gib']} GiB RAM"
    out += [
        "## Peers: netc vs PyTorch vs ONNX Runtime (CPU)",
        "",
        f"- Machine: {cpu}" + (f"; SIMD: {', '.join(m['simd'])}" if m.get("simd") else "")
        + f"; Linux {m['kernel']}",
        f"- Date: {meta['date']}",
        f"- Versions: netc {meta['netc_git'] or '(unknown revision)'}, torch {meta['torch']}, "
        f"torchvision {meta['torchvision']}"
        + (f", onnxruntime {meta['onnxruntime']}" if meta.get("onnxruntime") else "")
        + f", Python {meta['python']}",
        f"- Threads: {a.threads} for every runner (PyTorch `torch.set_num_threads({a.threads})`; ONNX Runtime "
        f"`intra_op_num_threads={a.threads}`, `inter_op_num_threads=1`, `ORT_ENABLE_ALL`; "
        f"netc `--threads {a.threads}`)",
        f"- Input: float32, {RESOLUTION}x{RESOLUTION}, random weights (`torch.manual_seed({SEED})`, "
        "eval mode); netc " + ("loads the same weights from safetensors" if not a.no_netc_weights
                                else "uses its own random weights (`--no-netc-weights`)"),
        f"- Method: per model and batch, {a.rounds} round(s) round-robin over the runners (starting runner "
        f"rotates), {a.iters_per_round} timed iteration(s) per runner per round after "
        f"{a.warmup} warm-up iteration(s) (netc: its own warm-up, one `netc bench` process per round), "
        f"{a.settle:g} s pause before each runner's turn. "
        "Latency = median over all samples; netc's = median of its per-round medians unless netc reports "
        "samples. Ratios > 1 mean netc is faster.",
        f"- Other load: CPUs {fmt_pct(meta.get('cpu_busy_start'))} busy in the second before the run, "
        f"{fmt_pct(meta.get('cpu_busy_end'))} after it; load average {fmt_load(meta.get('loadavg_start'))} "
        f"at start, {fmt_load(meta.get('loadavg_end'))} at end",
        f"- Command: `{meta['command']}`",
        "",
    ]
    if svg_name:
        out += [f"![batch-1 median latency per model]({svg_name})", ""]

    for name in a.models:
        rows = [r for r in results if r["model"] == name]
        out += [f"### {name}", ""]
        header = ["batch"] + [f"{label(n)} ms" for n in names]
        for nc in netcs:
            header += [f"{label(p)} / {label(nc)}" for p in peers]
        if ORT in names:
            header.append("ORT session ms")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---:|" * len(header))
        notes = []
        for e in rows:
            cells = [str(e["batch"])]
            for n in names:
                r = e["runners"].get(n)
                cells.append(f"{fmt_ms(r['median_ms'])} <sub>{fmt_ms(r['min_ms'])}–{fmt_ms(r['max_ms'])}</sub>"
                             if r else "failed")
            for nc in netcs:
                for p in peers:
                    rn, rp = e["runners"].get(nc), e["runners"].get(p)
                    cells.append(f"{rp['median_ms'] / rn['median_ms']:.2f}" if rn and rp else "–")
            if ORT in names:
                r = e["runners"].get(ORT)
                cells.append(f"{r['session_create_ms']:.0f}" if r else "–")
            out.append("| " + " | ".join(cells) + " |")
            for who, err in e["errors"].items():
                first = err.strip().splitlines()[0] if err.strip() else err
                notes.append(f"- batch {e['batch']}, {label(who) if who != '*' else 'all runners'} failed: "
                             f"`{first[:300]}`")
        out.append("")
        onnx = next((e.get("onnx") for e in rows if e.get("onnx")), None)
        if onnx:
            out += [f"ONNX: {onnx['exporter']} exporter, opset {onnx['opset']}. "
                    "Cells: median <sub>min–max</sub> ms.", ""]
        if name == "resnet50" and floor and floor["fraction"]:
            out += [f"Floor at batch 1: 2 × {floor['macs']:,} MACs / {floor['peak_gflops']:g} GFLOP/s = "
                    f"{floor['floor_ms']:.1f} ms. Fraction of the floor achieved (floor / median): "
                    + ", ".join(f"{label(k)} {v:.2f}" for k, v in
                                sorted(floor["fraction"].items(), key=lambda kv: names.index(kv[0])))
                    + ".", ""]
        placed = [(e["batch"], e["placement_ns"]) for e in rows if e.get("placement_ns")]
        if placed:
            out.append(f"Cross-core round trip before each runner's turn, ns (above {SLOW_PLACEMENT_NS}: "
                       "the vCPUs on different chiplets, where memory-bound runs slow down):")
            for batch, per_runner in placed:
                out.append(f"- batch {batch}: " + "; ".join(
                    f"{label(n)} " + ", ".join("–" if v is None else (f"**{v}**" if v > SLOW_PLACEMENT_NS else str(v))
                                               for v in vals)
                    for n, vals in per_runner.items()))
            out.append("")
        if notes:
            out += notes + [""]
    out.append(END)
    return "\n".join(out)


def write_markdown(path: Path, block: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        text = path.read_text()
        i, j = text.find(BEGIN), text.find(END)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(END):]
        else:
            log(f"note: {path} has no {BEGIN} ... {END} markers; appending the generated section")
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_svg(a, results: list[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: matplotlib not installed; no plot written (.venv/bin/pip install matplotlib)")
        return False
    names = runner_names(a)
    models = [m for m in a.models if any(r["model"] == m and r["batch"] == 1 and r["runners"] for r in results)]
    if not models:
        return False
    plt.rcParams["svg.hashsalt"] = "netc-peers"  # stable ids: diffs show only real changes
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(models) + 2), 4.2))
    width = 0.8 / len(names)
    colors = {PYTORCH: "#ee4c2c", ORT: "#6c757d"}
    netc_colors = ["#1f77b4", "#2ca02c", "#9467bd", "#17becf"]
    for i, n in enumerate(names):
        xs, ys = [], []
        for j, m in enumerate(models):
            e = next(r for r in results if r["model"] == m and r["batch"] == 1)
            if n in e["runners"]:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(e["runners"][n]["median_ms"])
        color = colors.get(n) or netc_colors[[x for x in names if x.startswith("netc-")].index(n) % 4]
        bars = ax.bar(xs, ys, width, label=label(n), color=color)
        ax.bar_label(bars, labels=[fmt_ms(y) for y in ys], fontsize=6, padding=1, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_ylabel("median latency, ms (log scale)")
    ax.set_title(f"Batch 1, {RESOLUTION}x{RESOLUTION}, {a.threads} threads (lower is better)")
    ax.margins(y=0.15)
    ax.legend(fontsize=8, ncol=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return True


# ------------------------------------------------------------------------ main


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.netc_backends:
        netc = Path(a.netc)
        if not netc.is_file() or not os.access(netc, os.X_OK):
            raise BenchError(f"netc binary not found at {netc}: build it with `cargo build --release`, "
                             "pass --netc PATH, or --netc-backends none to measure only the peers")
    for name in a.models:
        if a.netc_backends and not (REPO / "models" / f"{name}.net").exists():
            raise BenchError(f"models/{name}.net does not exist (needed for netc); choose --models among: "
                             + ", ".join(sorted(p.stem for p in (REPO / 'models').glob('*.net'))))
    mods = import_frameworks(a)
    torch = mods["torch"]
    known = set(mods["torchvision"].models.list_models())
    unknown = [m for m in a.models if m not in known]
    if unknown:
        raise BenchError(f"not torchvision models: {', '.join(unknown)}")
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cache = Path(a.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    json_path, svg_path = out.with_suffix(".json"), out.with_suffix(".svg")

    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": mods["torchvision"].__version__,
        "onnxruntime": mods["onnxruntime"].__version__ if "onnxruntime" in mods else None,
        "netc_git": git_rev(),
        "command": reproduce_command(argv),
        "threads": a.threads, "iters": a.iters, "rounds": a.rounds, "iters_per_round": a.iters_per_round,
        "warmup": a.warmup, "resolution": RESOLUTION, "seed": SEED, "opset": OPSET,
        "netc_backends": a.netc_backends, "netc_weights": not a.no_netc_weights,
    }
    meta["loadavg_start"] = loadavg()
    meta["cpu_busy_start"] = cpu_busy()
    if meta["cpu_busy_start"] is not None and meta["cpu_busy_start"] > 0.1:
        log(f"warning: the CPUs were {100 * meta['cpu_busy_start']:.0f}% busy before the run; other work on "
            "this machine skews the numbers (multi-threaded OpenMP runs suffer most)")
    log(f"{meta['machine']['cpu']}, {a.threads} threads; runners: "
        + ", ".join(label(n) for n in runner_names(a)))
    probe = None if a.no_placement else PlacementProbe()
    results = []
    for name in a.models:
        log(f"{name}:")
        results += bench_model(a, mods, name, cache, probe)

    meta["loadavg_end"] = loadavg()
    meta["cpu_busy_end"] = cpu_busy()
    floor = resnet50_floor(a, results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "resnet50_floor": floor, "results": results}, indent=1) + "\n")
    have_svg = write_svg(a, results, svg_path)
    svg_ref = os.path.relpath(svg_path, out.parent) if have_svg else None
    write_markdown(out, render_markdown(a, meta, results, floor, svg_ref))
    log(f"wrote {out}, {json_path}" + (f", {svg_path}" if have_svg else ""))
    if floor and floor["fraction"]:
        log(f"resnet50 batch 1 floor {floor['floor_ms']:.1f} ms; fraction: "
            + ", ".join(f"{label(k)} {v:.2f}" for k, v in floor["fraction"].items()))
    failed = sum(len(e["errors"]) for e in results)
    if failed:
        log(f"{failed} measurement(s) failed; see the report")
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
