//! `netc`: the command-line driver. Each subcommand is a thin layer over the
//! library crates; see ARCHITECTURE.md.

use clap::{Args, Parser, Subcommand};
use netc_compiler::elaborate::{elaborate_timed, Options, Source, Timings};
use netc_compiler::ir::Graph;
use netc_compiler::passes::{self, PassOptions};
use netc_compiler::stats::{self, grouped};
use netc_grammar::{Diagnostic, SourceMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod image_input;

#[derive(Parser)]
#[command(
    name = "netc",
    version,
    about = "Compiler for the .net neural-network language"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Input {
    /// The `.net` file.
    file: PathBuf,
    /// Override a network parameter, e.g. `--set width=1.5` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// The network to build when the file defines several.
    #[arg(long)]
    network: Option<String>,
}

#[derive(Args, Clone)]
struct Optimize {
    /// Optimization level: 0 none, 1 canonicalize and fold, 2 everything.
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=2))]
    level: Option<u8>,
    /// Run exactly these passes, in this order (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "PASS,...")]
    passes: Option<Vec<String>>,
    /// Verify the IR after every pass (always on in debug builds).
    #[arg(long)]
    verify_each: bool,
}

impl Optimize {
    fn options(&self, default_level: u8) -> PassOptions {
        PassOptions {
            level: self.level.unwrap_or(default_level),
            passes: self.passes.clone(),
            verify: self.verify_each || cfg!(debug_assertions),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Report diagnostics only.
    Check(Input),
    /// Parse, elaborate and check a network, and print a short report.
    Build {
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        opt: Optimize,
        /// Print a per-pass time table.
        #[arg(long)]
        time_passes: bool,
        /// Write the IR text to this file.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Per-layer table: name, op, output shape, parameters, MACs.
    Summary {
        #[command(flatten)]
        input: Input,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a network on an input with a checkpoint.
    Run {
        #[command(flatten)]
        input: Input,
        /// Weights: a safetensors file keyed by the network's parameter names
        /// (an export of torchvision's `state_dict()` loads unchanged).
        #[arg(long)]
        weights: PathBuf,
        /// The input: a .safetensors (tensor named after the network input, or its
        /// only tensor) or an image (.png/.jpg) preprocessed as for ImageNet.
        #[arg(long = "input", value_name = "X")]
        x: PathBuf,
        /// Write every output to this .safetensors file, by output name.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print the K most probable ImageNet classes.
        #[arg(long)]
        top: Option<usize>,
        /// Execution backend.
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        backend: Backend,
        /// Threads for the CPU backend.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
        threads: u64,
        #[command(flatten)]
        opt: Optimize,
    },
    /// Measure inference latency: warm-up, then the median and spread over iterations.
    Bench {
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        opt: Optimize,
        /// Backends to measure, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "cpu")]
        backend: Vec<Backend>,
        /// Worker threads for the backend's thread pool.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=256))]
        threads: u64,
        /// Weights (.safetensors); random PyTorch-default weights if absent.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// After timing, run once layer by layer and print where the time goes
        /// (CPU backend).
        #[arg(long)]
        profile: bool,
        /// Timed iterations (after warm-up).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        iters: u64,
        /// Batch size.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
        batch: u64,
        /// Print one JSON object per backend.
        #[arg(long)]
        json: bool,
    },
    /// Write deterministic random weights (PyTorch's default initialisers).
    InitWeights {
        #[command(flatten)]
        input: Input,
        /// Output .safetensors file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print the IR text.
    Ir {
        #[command(flatten)]
        input: Input,
        #[command(flatten)]
        opt: Optimize,
        /// Print the IR after this pass (or `all`); implies -O2 unless -O is given.
        #[arg(long, value_name = "PASS")]
        print_after: Option<String>,
        /// Leave out source locations.
        #[arg(long)]
        no_locations: bool,
    },
}

/// Execution backends selectable on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// The candle-core reference backend.
    Candle,
    /// The native CPU backend (generated code, AVX2 GEMM, thread pool).
    Cpu,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Candle => "candle",
            Backend::Cpu => "cpu",
        }
    }

    fn runtime(self, threads: usize) -> netc_runtime::Backend {
        match self {
            Backend::Candle => netc_runtime::Backend::Candle(netc_runtime::candle_cpu()),
            Backend::Cpu => netc_runtime::Backend::Cpu(netc_runtime::CpuOptions {
                threads,
                guard_pages: false,
            }),
        }
    }
}

fn report(diags: &[Diagnostic], sources: &SourceMap) {
    if std::io::stderr().is_terminal() {
        for d in diags {
            eprintln!("{:?}", miette::Report::new(d.render(sources)));
        }
    } else {
        eprint!("{}", netc_grammar::render_plain(diags, sources));
    }
    let n = diags.len();
    eprintln!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
}

fn compile(
    input: &Input,
    sources: &mut SourceMap,
    timings: &mut Timings,
) -> Result<Graph, ExitCode> {
    let opts = Options {
        network: input.network.clone(),
        set: input.set.clone(),
    };
    elaborate_timed(Source::Path(&input.file), &opts, sources, timings).map_err(|diags| {
        report(&diags, sources);
        ExitCode::FAILURE
    })
}

fn shape_json(s: &netc_compiler::ir::Shape) -> serde_json::Value {
    serde_json::Value::Array(
        s.0.iter()
            .map(|d| match d {
                netc_compiler::ir::Dim::Batch => serde_json::Value::from("N"),
                netc_compiler::ir::Dim::Known(n) => serde_json::Value::from(*n),
            })
            .collect(),
    )
}

fn io_list(
    g: &Graph,
    items: impl Iterator<Item = (String, netc_compiler::ir::NodeIndex)>,
) -> serde_json::Value {
    serde_json::Value::Array(
        items
            .map(|(name, n)| serde_json::json!({ "name": name, "shape": shape_json(&g.node(n).shape) }))
            .collect(),
    )
}

fn read_inputs(g: &Graph, x: &Path) -> Result<Vec<netc_runtime::HostTensor>, ExitCode> {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        ExitCode::FAILURE
    };
    let ext = x
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if g.inputs.len() != 1 && ext != "safetensors" {
        return Err(fail(format!(
            "the network has {} inputs; pass them in one .safetensors file",
            g.inputs.len()
        )));
    }
    if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
        let shape = &g.node(g.inputs[0].node).shape;
        let (c, h, w) = match shape.per_sample().as_slice() {
            [c, h, w] => (*c, *h, *w),
            _ => {
                return Err(fail(format!(
                    "an image input needs a [N, 3, H, W] network input, this one is {shape}"
                )))
            }
        };
        if c != 3 {
            return Err(fail(format!(
                "an image has 3 channels; the network input is {shape}"
            )));
        }
        return image_input::load(x, h, w).map(|t| vec![t]).map_err(fail);
    }
    let bytes =
        std::fs::read(x).map_err(|e| fail(format!("cannot read `{}`: {e}", x.display())))?;
    g.inputs
        .iter()
        .map(|i| {
            let only = g.inputs.len() == 1;
            netc_runtime::weights::read_tensor(&bytes, Some(&i.name))
                .or_else(|e| {
                    if only {
                        netc_runtime::weights::read_tensor(&bytes, None)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| fail(format!("input `{}` from `{}`: {e}", i.name, x.display())))
        })
        .collect()
}

fn print_top(logits: &netc_runtime::HostTensor, k: usize) -> Result<(), ExitCode> {
    let classes = *logits.shape.last().unwrap_or(&0);
    if classes == 0 || logits.data.len() < classes {
        eprintln!("error: --top needs a [N, classes] output");
        return Err(ExitCode::FAILURE);
    }
    let row = &logits.data[..classes];
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = row.iter().map(|v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let mut idx: Vec<usize> = (0..classes).collect();
    idx.sort_by(|a, b| exps[*b].total_cmp(&exps[*a]));
    let labels: Vec<&str> = IMAGENET_LABELS.lines().collect();
    for &i in idx.iter().take(k) {
        let label = if classes == labels.len() {
            labels[i]
        } else {
            ""
        };
        println!("{:>6.2}%  {i:>4}  {label}", 100.0 * exps[i] / sum);
    }
    Ok(())
}

/// ImageNet-1k class names in index order (from torchvision's metadata).
const IMAGENET_LABELS: &str = include_str!("imagenet_labels.txt");

fn write_file(path: &Path, text: &str) -> Result<(), ExitCode> {
    std::fs::write(path, text).map_err(|e| {
        eprintln!("error: cannot write `{}`: {e}", path.display());
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    let mut sources = SourceMap::new();
    let mut timings = Timings::new();
    match cli.command {
        Command::Check(input) => {
            let g = compile(&input, &mut sources, &mut timings)?;
            println!("{}: ok ({} nodes)", g.name, g.len());
        }
        Command::Build {
            input,
            opt,
            time_passes,
            output,
        } => {
            let start = Instant::now();
            let mut g = compile(&input, &mut sources, &mut timings)?;
            let front_end = start.elapsed();
            // The figures users compare with torchvision are the source model's.
            let totals = stats::totals(&g);
            let t = Instant::now();
            let mut opts = opt.options(2);
            // The verifier is cheap next to elaboration; `build` always checks each pass.
            opts.verify = true;
            let runs = passes::run(&mut g, &opts, |_, _| {}).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            })?;
            timings.push(("passes", t.elapsed()));
            let t = Instant::now();
            let mem = netc_compiler::memory_plan::plan(&g);
            timings.push(("memory plan", t.elapsed()));
            let optimized = stats::totals(&g);
            println!("network     {}", g.name);
            for i in &g.inputs {
                println!("input       {}: {}", i.name, g.node(i.node).shape);
            }
            for o in &g.outputs {
                println!("output      {}: {}", o.name, g.node(o.node).shape);
            }
            println!("nodes       {} after passes", g.len());
            if g.weight_transforms.is_empty() {
                println!("parameters  {}", grouped(totals.params));
            } else {
                println!(
                    "parameters  {} ({} stored after folding)",
                    grouped(totals.params),
                    grouped(optimized.params + optimized.buffers)
                );
            }
            println!("buffers     {}", grouped(totals.buffers));
            if optimized.macs == totals.macs {
                println!("MACs        {}", grouped(totals.macs));
            } else {
                // Passes that reorder linear ops (pool-before-conv) run fewer.
                println!(
                    "MACs        {} ({} after passes)",
                    grouped(totals.macs),
                    grouped(optimized.macs)
                );
            }
            println!(
                "arena       {} bytes per image (lower bound {}, without reuse {}; {} concats written in place)",
                grouped(mem.arena),
                grouped(mem.lower_bound),
                grouped(mem.naive),
                mem.concats_eliminated
            );
            if let Some(out) = output {
                let t = Instant::now();
                write_file(&out, &netc_compiler::print::print(&g, Some(&sources)))?;
                timings.push(("write IR", t.elapsed()));
                println!("IR written  {}", out.display());
            }
            let phases: Vec<String> = timings
                .iter()
                .map(|(name, d)| format!("{name} {:.2} ms", d.as_secs_f64() * 1e3))
                .collect();
            println!(
                "time        {} (total {:.2} ms, front-end {:.2} ms)",
                phases.join(", "),
                start.elapsed().as_secs_f64() * 1e3,
                front_end.as_secs_f64() * 1e3
            );
            if time_passes {
                println!(
                    "\n{:<26} {:>10} {:>8} {:>14}",
                    "pass", "time (ms)", "changed", "nodes"
                );
                for r in &runs {
                    println!(
                        "{:<26} {:>10.3} {:>8} {:>14}",
                        r.name,
                        r.time.as_secs_f64() * 1e3,
                        if r.changed { "yes" } else { "no" },
                        format!("{} -> {}", r.nodes.0, r.nodes.1)
                    );
                }
                // The CPU backend's share of compiling: weight packing (with
                // zero weights of the right shapes: the cost does not depend
                // on the values), the generated kernels and the network function.
                let mut zeros = netc_runtime::Weights::default();
                for (_, p) in g.params() {
                    zeros.insert(p.key.clone(), netc_runtime::HostTensor::zeros(&p.shape));
                }
                let program = netc_runtime::backend::cpu::CpuProgram::new(
                    &g,
                    &zeros,
                    netc_runtime::CpuOptions::default(),
                )
                .map_err(|d| {
                    report(&[d], &sources);
                    ExitCode::FAILURE
                })?;
                let codegen_ms = program.prepare(1).map_err(|d| {
                    report(&[d], &sources);
                    ExitCode::FAILURE
                })?;
                let ct = program.compile_times();
                let total = start.elapsed().as_secs_f64() * 1e3;
                println!(
                    "\ncpu backend: weight packing {:.2} ms, activation kernels {:.2} ms, lowering + network function (batch 1) {:.2} ms",
                    ct.pack_ms, ct.activations_ms, codegen_ms
                );
                println!(
                    "compile total (front-end, passes, memory plan, packing, codegen): {total:.2} ms"
                );
            }
        }
        Command::Summary { input, json } => {
            let g = compile(&input, &mut sources, &mut timings)?;
            let rows = stats::rows(&g);
            let totals = stats::totals(&g);
            if json {
                let params: Vec<serde_json::Value> = g
                    .params()
                    .map(|(_, p)| serde_json::json!({ "name": p.key, "shape": p.shape, "trainable": p.role.is_trainable() }))
                    .collect();
                let layers: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| serde_json::json!({ "name": r.name, "op": r.op, "shape": shape_json(&r.shape), "params": r.params, "macs": r.macs }))
                    .collect();
                let obj = serde_json::json!({
                    "network": g.name,
                    "params": totals.params,
                    "buffers": totals.buffers,
                    "macs": totals.macs,
                    "inputs": io_list(&g, g.inputs.iter().map(|i| (i.name.clone(), i.node))),
                    "outputs": io_list(&g, g.outputs.iter().map(|o| (o.name.clone(), o.node))),
                    "parameters": params,
                    "layers": layers,
                });
                println!("{}", serde_json::to_string_pretty(&obj).unwrap_or_default());
            } else {
                print!("{}", netc_compiler::stats::table(&rows, &totals));
            }
        }
        Command::Run {
            input,
            weights,
            x,
            output,
            top,
            backend,
            threads,
            opt,
        } => {
            let g = compile(&input, &mut sources, &mut timings)?;
            let w = netc_runtime::Weights::load(&weights, &g).map_err(|d| {
                report(&d, &sources);
                ExitCode::FAILURE
            })?;
            let inputs = read_inputs(&g, &x)?;
            let mut model = netc_runtime::Model::from_graph(g, sources.clone());
            model.optimize(&opt.options(2)).map_err(|e| {
                report(&e.diagnostics, &sources);
                ExitCode::FAILURE
            })?;
            let session = model
                .session_with(&w, &backend.runtime(threads as usize))
                .map_err(|e| {
                    report(&e.diagnostics, &sources);
                    ExitCode::FAILURE
                })?;
            let t = Instant::now();
            let outs = session.run(&inputs).map_err(|e| {
                report(&e.diagnostics, &sources);
                ExitCode::FAILURE
            })?;
            let elapsed = t.elapsed();
            let g = model.graph();
            for (o, t) in g.outputs.iter().zip(&outs) {
                println!("output {}: {:?}", o.name, t.shape);
            }
            println!("time {:.2} ms", elapsed.as_secs_f64() * 1e3);
            if let Some(k) = top {
                print_top(&outs[0], k)?;
            }
            if let Some(path) = output {
                let mut w = netc_runtime::Weights::default();
                for (o, t) in g.outputs.iter().zip(outs) {
                    w.insert(o.name.clone(), t);
                }
                w.save(&path).map_err(|e| {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                })?;
                println!("outputs written to {}", path.display());
            }
        }
        Command::Bench {
            input,
            opt,
            backend,
            threads,
            iters,
            batch,
            json,
            weights,
            profile,
        } => {
            let g = compile(&input, &mut sources, &mut timings)?;
            let loaded = match &weights {
                Some(path) => Some(netc_runtime::Weights::load(path, &g).map_err(|d| {
                    report(&d, &sources);
                    ExitCode::FAILURE
                })?),
                None => None,
            };
            let mut model = netc_runtime::Model::from_graph(g, sources.clone());
            model.optimize(&opt.options(2)).map_err(|e| {
                report(&e.diagnostics, &sources);
                ExitCode::FAILURE
            })?;
            let weights = match loaded {
                Some(w) => w,
                None => netc_runtime::Weights::pytorch_default(model.elaborated(), 0),
            };
            let inputs: Vec<netc_runtime::HostTensor> = model
                .graph()
                .inputs
                .iter()
                .map(|i| {
                    let mut shape = vec![batch as usize];
                    shape.extend(model.graph().node(i.node).shape.per_sample());
                    netc_runtime::HostTensor::zeros(&shape)
                })
                .collect();
            for b in backend {
                let t = Instant::now();
                let session = model
                    .session_with(&weights, &b.runtime(threads as usize))
                    .map_err(|e| {
                        report(&e.diagnostics, &sources);
                        ExitCode::FAILURE
                    })?;
                let session_ms = t.elapsed().as_secs_f64() * 1e3;
                let run_once = || -> Result<f64, ExitCode> {
                    let t = Instant::now();
                    session.run(&inputs).map_err(|e| {
                        report(&e.diagnostics, &sources);
                        ExitCode::FAILURE
                    })?;
                    Ok(t.elapsed().as_secs_f64() * 1e3)
                };
                let warmup = (iters / 5).clamp(1, 5);
                for _ in 0..warmup {
                    run_once()?;
                }
                let mut times = Vec::with_capacity(iters as usize);
                for i in 0..iters {
                    times.push(run_once()?);
                    if !json && std::io::stderr().is_terminal() {
                        eprint!(
                            "\r{} {}/{iters}",
                            "#".repeat(((i + 1) * 30 / iters) as usize),
                            i + 1
                        );
                    }
                }
                if !json && std::io::stderr().is_terminal() {
                    eprintln!();
                }
                let samples = times.clone();
                times.sort_by(f64::total_cmp);
                let median = times[times.len() / 2];
                let (min, max) = (times[0], times[times.len() - 1]);
                let layers = if profile {
                    best_profile(&session, &inputs, &sources)?
                } else {
                    None
                };
                if json {
                    let mut obj = serde_json::json!({
                        "network": model.graph().name, "backend": b.name(), "threads": threads,
                        "batch": batch, "iters": iters, "median_ms": median, "min_ms": min, "max_ms": max,
                        "samples_ms": samples, "session_ms": session_ms,
                    });
                    if let Some(layers) = &layers {
                        obj["profile"] = layers
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "node": e.node, "op": e.op, "kernel": e.kernel,
                                    "ms": e.ms, "macs": e.macs,
                                })
                            })
                            .collect();
                    }
                    println!("{obj}");
                } else {
                    println!(
                        "{} {} batch {batch} threads {threads}: median {median:.2} ms (min {min:.2}, max {max:.2}) over {iters} runs; session created in {session_ms:.1} ms",
                        model.graph().name,
                        b.name()
                    );
                }
                if let (Some(layers), false) = (&layers, json) {
                    print_profile(layers);
                }
            }
        }
        Command::InitWeights {
            input,
            output,
            seed,
        } => {
            let g = compile(&input, &mut sources, &mut timings)?;
            let w = netc_runtime::Weights::pytorch_default(&g, seed);
            w.save(&output).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            })?;
            println!("{} tensors written to {}", w.len(), output.display());
        }
        Command::Ir {
            input,
            opt,
            print_after,
            no_locations,
        } => {
            let mut g = compile(&input, &mut sources, &mut timings)?;
            let src = (!no_locations).then_some(&sources);
            let opts = opt.options(if print_after.is_some() { 2 } else { 0 });
            if let Some(p) = &print_after {
                if p != "all" && passes::find(p).is_none() {
                    let known: Vec<&str> = passes::PASSES.iter().map(|p| p.name).collect();
                    eprintln!(
                        "error: unknown pass `{p}` for --print-after; passes: {}, or `all`",
                        known.join(", ")
                    );
                    return Err(ExitCode::FAILURE);
                }
            }
            let mut printed = false;
            passes::run(&mut g, &opts, |name, g| {
                if print_after.as_deref() == Some("all") || print_after.as_deref() == Some(name) {
                    println!("; IR after {name}");
                    print!("{}", netc_compiler::print::print(g, src));
                    printed = true;
                }
            })
            .map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            })?;
            match (&print_after, printed) {
                (Some(p), false) => {
                    eprintln!("error: pass `{p}` did not run at this optimization level");
                    return Err(ExitCode::FAILURE);
                }
                (None, _) => print!("{}", netc_compiler::print::print(&g, src)),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Runs the network layer by layer three times (the first warms the caches the
/// way a timed run does) and keeps the fastest pass; `None` for backends that
/// cannot run layer by layer.
fn best_profile(
    session: &netc_runtime::Session,
    inputs: &[netc_runtime::HostTensor],
    sources: &SourceMap,
) -> Result<Option<Vec<netc_runtime::backend::cpu::ProfileEntry>>, ExitCode> {
    let netc_runtime::Program::Cpu(p) = session.program() else {
        eprintln!("note: --profile is available for the cpu backend only");
        return Ok(None);
    };
    let total =
        |v: &[netc_runtime::backend::cpu::ProfileEntry]| v.iter().map(|e| e.ms).sum::<f64>();
    let mut best: Option<Vec<netc_runtime::backend::cpu::ProfileEntry>> = None;
    for _ in 0..3 {
        let e = p.profile(inputs).map_err(|d| {
            report(&[d], sources);
            ExitCode::FAILURE
        })?;
        if best.as_ref().is_none_or(|b| total(&e) < total(b)) {
            best = Some(e);
        }
    }
    Ok(best)
}

/// Prints a layer-by-layer profile: the time per op kind and the slowest layers.
fn print_profile(entries: &[netc_runtime::backend::cpu::ProfileEntry]) {
    let total: f64 = entries.iter().map(|e| e.ms).sum();
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for e in entries {
        let key = format!("{} ({})", e.op, e.kernel);
        match by_op.iter_mut().find(|(k, _, _)| *k == key) {
            Some(row) => {
                row.1 += e.ms;
                row.2 += 1;
            }
            None => by_op.push((key, e.ms, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("profile: {total:.2} ms layer by layer (best of 3)");
    println!(
        "{:<40} {:>6} {:>10} {:>7}",
        "op (kernel)", "count", "ms", "share"
    );
    for (k, ms, n) in &by_op {
        println!("{k:<40} {n:>6} {ms:>10.3} {:>6.1}%", 100.0 * ms / total);
    }
    let mut slow: Vec<_> = entries.iter().collect();
    slow.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    println!("slowest layers:");
    for e in slow.iter().take(10) {
        // GFLOP/s counts a multiply-accumulate as two operations, as the
        // benchmark doc's floor does.
        let rate = if e.macs > 0 && e.ms > 0.0 {
            format!("{:>6.1} GFLOP/s", 2.0 * e.macs as f64 / (e.ms * 1e6))
        } else {
            String::new()
        };
        println!("  {:<48} {:<14} {:>8.3} ms  {rate}", e.node, e.op, e.ms);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // candle's CPU kernels use the global rayon pool; size it before first use.
    if let Command::Bench { threads, .. } | Command::Run { threads, .. } = &cli.command {
        std::env::set_var("RAYON_NUM_THREADS", (*threads).max(1).to_string());
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
