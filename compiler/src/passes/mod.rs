//! The optimization pipeline: an ordered list of passes, each a small module
//! that rewrites the [`Graph`] in place and says whether it changed anything.
//!
//! Levels: `-O0` runs nothing, `-O1` canonicalizes and folds, `-O2` (the
//! default for `netc build`) runs everything. `--passes a,b` picks passes by
//! name. The verifier runs after every pass when [`PassOptions::verify`] is set
//! (always in debug builds and tests) and names the pass that broke the IR.

mod canonicalize_cardinality;
mod dead_code;
mod fold_batch_norm;
mod fold_constants;
mod fold_padding;
mod fuse_epilogue;
mod pool_before_conv;
mod remove_identity;
mod reparameterize;
mod simplify_shapes;

use crate::ir::Graph;
use std::time::{Duration, Instant};

/// One pass.
pub struct Pass {
    /// The name used by `--passes` and `--print-after`.
    pub name: &'static str,
    /// The lowest optimization level that runs it.
    pub level: u8,
    /// What it does, for `--help` and docs.
    pub doc: &'static str,
    /// The rewrite; returns whether the graph changed.
    pub run: fn(&mut Graph) -> bool,
}

/// Every pass, in pipeline order.
pub const PASSES: &[Pass] = &[
    Pass {
        name: "fold-constants",
        level: 1,
        doc: "computes parameter-only subgraphs once, at load time",
        run: fold_constants::run,
    },
    Pass {
        name: "remove-identity",
        level: 1,
        doc: "removes dropout and identity nodes",
        run: remove_identity::run,
    },
    Pass {
        name: "simplify-shapes",
        level: 1,
        doc: "merges reshape/flatten chains, composes permutes, fuses pool+flatten",
        run: simplify_shapes::run,
    },
    Pass {
        name: "fold-padding",
        level: 1,
        doc: "folds explicit zero padding into the following conv or pool window",
        run: fold_padding::run,
    },
    Pass {
        name: "fold-batch-norm",
        level: 1,
        doc: "folds inference BatchNorm into the adjacent conv/linear",
        run: fold_batch_norm::run,
    },
    Pass {
        name: "canonicalize-cardinality",
        level: 2,
        doc: "turns N identical parallel paths over channel splits (ResNeXt forms A/B) into grouped convolutions",
        run: canonicalize_cardinality::run,
    },
    Pass {
        name: "reparameterize",
        level: 2,
        doc: "merges parallel conv branches over one input (RepLKNet, RepVGG) into one conv",
        run: reparameterize::run,
    },
    Pass {
        name: "pool-before-conv",
        level: 2,
        doc: "moves an unpadded average pooling in front of the 1×1 convolution it reads (DenseNet's transitions: a quarter of their MACs)",
        run: pool_before_conv::run,
    },
    Pass {
        name: "fuse-epilogue",
        level: 2,
        doc: "fuses bias, activation and residual add into the producing conv/linear",
        run: fuse_epilogue::run,
    },
    Pass {
        name: "dead-code",
        level: 1,
        doc: "removes nodes no output depends on",
        run: dead_code::run,
    },
];

/// How to run the pipeline.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Optimization level 0, 1 or 2.
    pub level: u8,
    /// Explicit pass list (overrides the level).
    pub passes: Option<Vec<String>>,
    /// Verify the IR after every pass.
    pub verify: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            level: 2,
            passes: None,
            verify: cfg!(debug_assertions),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone)]
pub struct PassRun {
    /// Pass name.
    pub name: &'static str,
    /// Wall time.
    pub time: Duration,
    /// Whether the graph changed.
    pub changed: bool,
    /// Nodes before and after.
    pub nodes: (usize, usize),
}

/// Looks a pass up by name.
pub fn find(name: &str) -> Option<&'static Pass> {
    PASSES.iter().find(|p| p.name == name)
}

/// The passes `opts` selects, in order; an unknown name is an error naming the known ones.
pub fn select(opts: &PassOptions) -> Result<Vec<&'static Pass>, String> {
    match &opts.passes {
        Some(names) => names
            .iter()
            .map(|n| {
                find(n).ok_or_else(|| {
                    let known: Vec<&str> = PASSES.iter().map(|p| p.name).collect();
                    match netc_grammar::did_you_mean(n, known.iter().copied()) {
                        Some(s) => format!("unknown pass `{n}`; did you mean `{s}`?"),
                        None => format!("unknown pass `{n}`; passes: {}", known.join(", ")),
                    }
                })
            })
            .collect(),
        None => Ok(PASSES
            .iter()
            .filter(|p| p.level <= opts.level && opts.level > 0)
            .collect()),
    }
}

/// Runs the selected passes; `after` sees the graph after each one. A verifier
/// failure is an error naming the pass.
pub fn run(
    g: &mut Graph,
    opts: &PassOptions,
    mut after: impl FnMut(&str, &Graph),
) -> Result<Vec<PassRun>, String> {
    let mut runs = Vec::new();
    for pass in select(opts)? {
        let before = g.len();
        let t = Instant::now();
        let changed = (pass.run)(g);
        let time = t.elapsed();
        if opts.verify {
            let problems = crate::verify::verify(g);
            if !problems.is_empty() {
                return Err(format!(
                    "the IR is invalid after pass `{}`:\n  {}",
                    pass.name,
                    problems.join("\n  ")
                ));
            }
        }
        runs.push(PassRun {
            name: pass.name,
            time,
            changed,
            nodes: (before, g.len()),
        });
        after(pass.name, g);
    }
    Ok(runs)
}
