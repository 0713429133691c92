//! The embedding API: compile once, load weights, run many times (from any
//! number of threads).

use crate::backend::candle::CandleProgram;
use crate::backend::cpu::{CpuOptions, CpuProgram};
use crate::weights::{HostTensor, Weights};
use candle_core::Device;
use netc_compiler::elaborate::{elaborate, Options, Source};
use netc_compiler::ir::Graph;
use netc_compiler::passes::{self, PassOptions, PassRun};
use netc_grammar::{render_plain, Diagnostic, SourceMap};
use std::path::Path;

/// A compiled network and the sources it came from (for diagnostics).
///
/// Keeps the elaborated graph (whose parameter keys are the checkpoint's) and
/// the graph that runs (optimized by [`Model::optimize`]); weights are loaded
/// against the first and transformed into the second's once, when a session
/// is made.
pub struct Model {
    elaborated: Graph,
    graph: Graph,
    sources: SourceMap,
}

/// An error from compiling or running, with its rendered diagnostics.
#[derive(Debug)]
pub struct Error {
    /// The diagnostics.
    pub diagnostics: Vec<Diagnostic>,
    /// The diagnostics rendered as text with their source snippets.
    pub rendered: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl std::error::Error for Error {}

impl Model {
    /// Compiles a `.net` file; `set` holds `name=value` overrides as on the CLI.
    pub fn from_file(path: impl AsRef<Path>, set: &[&str]) -> Result<Model, Error> {
        let opts = Options {
            network: None,
            set: set.iter().map(|s| s.to_string()).collect(),
        };
        let mut sources = SourceMap::new();
        match elaborate(Source::Path(path.as_ref()), &opts, &mut sources) {
            Ok(graph) => Ok(Self::from_graph(graph, sources)),
            Err(d) => Err(Self::error(d, &sources)),
        }
    }

    /// Compiles source text; imports resolve relative to `base`.
    pub fn from_source(name: &str, text: &str, base: &Path, set: &[&str]) -> Result<Model, Error> {
        let opts = Options {
            network: None,
            set: set.iter().map(|s| s.to_string()).collect(),
        };
        let mut sources = SourceMap::new();
        match elaborate(Source::Text { name, text, base }, &opts, &mut sources) {
            Ok(graph) => Ok(Self::from_graph(graph, sources)),
            Err(d) => Err(Self::error(d, &sources)),
        }
    }

    /// Wraps an elaborated (unoptimized) graph.
    pub fn from_graph(graph: Graph, sources: SourceMap) -> Model {
        Model {
            elaborated: graph.clone(),
            graph,
            sources,
        }
    }

    /// Optimizes the graph that runs, starting from the elaborated one.
    pub fn optimize(&mut self, opts: &PassOptions) -> Result<Vec<PassRun>, Error> {
        let mut g = self.elaborated.clone();
        let runs = passes::run(&mut g, opts, |_, _| {})
            .map_err(|e| Self::error(vec![Diagnostic::new("netc::pass", e)], &self.sources))?;
        self.graph = g;
        Ok(runs)
    }

    fn error(diagnostics: Vec<Diagnostic>, sources: &SourceMap) -> Error {
        let rendered = render_plain(&diagnostics, sources);
        Error {
            diagnostics,
            rendered,
        }
    }

    /// The graph that runs (optimized if [`Model::optimize`] was called).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The elaborated graph, whose parameter keys are the checkpoint's.
    pub fn elaborated(&self) -> &Graph {
        &self.elaborated
    }

    /// The source files (to render diagnostics that point into them).
    pub fn sources(&self) -> &SourceMap {
        &self.sources
    }

    /// Loads and validates a safetensors checkpoint for this network.
    pub fn load_weights(&self, path: impl AsRef<Path>) -> Result<Weights, Error> {
        Weights::load(path.as_ref(), &self.elaborated).map_err(|d| Self::error(d, &self.sources))
    }

    /// A session on the CPU with the given weights.
    pub fn session(&self, weights: &Weights) -> Result<Session, Error> {
        self.session_on(weights, &Device::Cpu)
    }

    /// A session on a candle device (CPU, or CUDA with the `cuda` feature).
    pub fn session_on(&self, weights: &Weights, device: &Device) -> Result<Session, Error> {
        self.session_with(weights, &Backend::Candle(device.clone()))
    }

    /// A session on any backend. `weights` are keyed as the elaborated graph's
    /// parameters (the checkpoint's names); the optimized graph's weight
    /// transformations are applied here, once.
    pub fn session_with(&self, weights: &Weights, backend: &Backend) -> Result<Session, Error> {
        let transformed;
        let weights = if self.graph.weight_transforms.is_empty() {
            weights
        } else {
            let mut w = weights.clone();
            w.apply_transforms(&self.graph.weight_transforms)
                .map_err(|e| {
                    Self::error(vec![Diagnostic::new("netc::weights", e)], &self.sources)
                })?;
            transformed = w;
            &transformed
        };
        let program = match backend {
            Backend::Candle(device) => Program::Candle(Box::new(
                CandleProgram::new(&self.graph, weights, device)
                    .map_err(|d| Self::error(vec![d], &self.sources))?,
            )),
            Backend::Cpu(options) => Program::Cpu(Box::new(
                CpuProgram::new(&self.graph, weights, *options)
                    .map_err(|d| Self::error(vec![d], &self.sources))?,
            )),
        };
        Ok(Session {
            program,
            sources: self.sources.clone(),
        })
    }

    /// A CPU session with PyTorch-default random weights (seeded).
    pub fn session_with_random_weights(&self, seed: u64) -> Result<Session, Error> {
        self.session(&Weights::pytorch_default(&self.elaborated, seed))
    }
}

/// Which backend a session runs on.
#[derive(Clone)]
pub enum Backend {
    /// candle-core tensor ops (the reference; CUDA with the `cuda` feature).
    Candle(Device),
    /// The native CPU backend: generated code, AVX2 GEMM, a thread pool.
    Cpu(CpuOptions),
}

/// A program on one backend.
pub enum Program {
    /// The candle reference.
    Candle(Box<CandleProgram>),
    /// The native CPU backend.
    Cpu(Box<CpuProgram>),
}

/// A network ready to run. `run` takes `&self`: share it across threads.
pub struct Session {
    program: Program,
    sources: SourceMap,
}

impl Session {
    /// Runs on host tensors, one per network input; returns one per output.
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, Error> {
        match &self.program {
            Program::Candle(p) => p.run(inputs),
            Program::Cpu(p) => p.run(inputs),
        }
        .map_err(|d| Model::error(vec![d], &self.sources))
    }

    /// The graph being run.
    pub fn graph(&self) -> &Graph {
        match &self.program {
            Program::Candle(p) => p.graph(),
            Program::Cpu(p) => p.graph(),
        }
    }

    /// The program (for tools that drive execution node by node or profile it).
    pub fn program(&self) -> &Program {
        &self.program
    }
}

impl HostTensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }
}
