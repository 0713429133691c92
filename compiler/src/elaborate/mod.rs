//! Elaboration: from source files to a shape-checked IR graph.
//!
//! `program` loads the root file and its imports; `resolve` runs static checks
//! (reporting several errors at once); `eval` and `apply` evaluate the chosen
//! network, turning every op application into an IR node; `builtins` and
//! `functions` define the built-in ops and functions; `limits` bounds the work.

mod apply;
pub mod builtins;
mod eval;
mod functions;
pub mod limits;
mod program;
mod resolve;
pub mod value;

pub use eval::Override;
pub use program::{Def, Program, Source};

use crate::ir::Graph;
use netc_grammar::{did_you_mean, Diagnostic, SourceMap, Span};
use std::path::Path;

/// What to build and with which parameter overrides.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The network to build; by default the only one in the root file (or the one
    /// named like the file).
    pub network: Option<String>,
    /// `name=value` overrides of network parameters, as given on the command line.
    pub set: Vec<String>,
}

/// Parses `--set name=value` arguments into overrides; each becomes a source file
/// named `--set` so errors in it are shown like any other.
pub fn parse_overrides(
    set: &[String],
    sources: &mut SourceMap,
) -> Result<Vec<Override>, Vec<Diagnostic>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for s in set {
        let file = sources.add("--set", s.clone());
        let Some(eq) = s.find('=') else {
            errors.push(
                Diagnostic::new(
                    "netc::bad_set",
                    format!("`--set {s}` is not of the form name=value"),
                )
                .label(Span::new(file, 0, s.len()), "missing `=`")
                .help("write e.g. `--set width=1.5` or `--set layers=[2, 2, 2, 2]`"),
            );
            continue;
        };
        let name = s[..eq].trim();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            errors.push(
                Diagnostic::new("netc::bad_set", format!("`{name}` is not a parameter name"))
                    .label(Span::new(file, 0, eq), "expected a name")
                    .help("write e.g. `--set width=1.5`"),
            );
            continue;
        }
        let text = &s[eq + 1..];
        // Parse the value in the file's own coordinates so spans line up.
        let padded = format!("{}{}", " ".repeat(eq + 1), text);
        match netc_grammar::parse_expr(file, &padded) {
            Ok(value) => out.push(Override {
                name: name.to_string(),
                value,
                name_span: Span::new(file, 0, eq),
            }),
            Err(mut d) => {
                d.code = "netc::bad_set";
                d.message = format!("bad value in `--set {s}`: {}", d.message);
                errors.push(d);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Wall time of each front-end phase.
pub type Timings = Vec<(&'static str, std::time::Duration)>;

/// Loads, checks and elaborates one network. All diagnostics refer to `sources`.
pub fn elaborate(
    root: Source<'_>,
    opts: &Options,
    sources: &mut SourceMap,
) -> Result<Graph, Vec<Diagnostic>> {
    elaborate_timed(root, opts, sources, &mut Vec::new())
}

/// Stack for the elaboration thread. Parsing and evaluation recurse per nesting
/// level (bounded by the parser's and `limits`' caps); this leaves ample room.
const STACK_BYTES: usize = 256 << 20;

/// [`elaborate`], recording the time of each phase (parse, check, elaborate).
///
/// Runs on a dedicated thread with a large stack, so that deeply nested (but
/// legal) programs cannot overflow the caller's stack.
pub fn elaborate_timed(
    root: Source<'_>,
    opts: &Options,
    sources: &mut SourceMap,
    timings: &mut Timings,
) -> Result<Graph, Vec<Diagnostic>> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netc-elaborate".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(s, || elaborate_on_this_thread(root, opts, sources, timings))
            .expect("spawn the elaboration thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn elaborate_on_this_thread(
    root: Source<'_>,
    opts: &Options,
    sources: &mut SourceMap,
    timings: &mut Timings,
) -> Result<Graph, Vec<Diagnostic>> {
    let t0 = std::time::Instant::now();
    let stem = match &root {
        Source::Path(p) => p.file_stem().and_then(|s| s.to_str()).map(str::to_string),
        Source::Text { name, .. } => Path::new(name)
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string),
    };
    let prog = Program::load(root, sources)?;
    timings.push(("parse", t0.elapsed()));
    let t1 = std::time::Instant::now();
    let mut errors = resolve::check(&prog);
    let overrides = match parse_overrides(&opts.set, sources) {
        Ok(o) => o,
        Err(mut e) => {
            errors.append(&mut e);
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let name = match &opts.network {
        Some(n) => n.clone(),
        None => match prog.root_networks.as_slice() {
            [one] => one.to_string(),
            [] => {
                let text = &sources.get(prog.root).text;
                let d = Diagnostic::new("netc::no_network", "this file defines no network")
                    .label(Span::new(prog.root, 0, text.len().min(1)), "in this file")
                    .help("add `network Name(...) { input x: [3, 224, 224] ... return y }`, or `network name = Family(...)`");
                return Err(vec![d]);
            }
            many => match many.iter().find(|n| Some(n.to_string()) == stem) {
                Some(n) => n.to_string(),
                None => {
                    let list: Vec<&str> = many.iter().map(|n| &**n).collect();
                    return Err(vec![Diagnostic::new(
                        "netc::ambiguous_network",
                        format!(
                            "this file defines {} networks: {}",
                            many.len(),
                            list.join(", ")
                        ),
                    )
                    .help("choose one with `--network NAME`")]);
                }
            },
        },
    };
    if !prog.defs.contains_key(name.as_str()) {
        let names: Vec<&str> = prog
            .defs
            .iter()
            .filter(|(_, d)| matches!(d, Def::Network(_)))
            .map(|(k, _)| &**k)
            .collect();
        let d = Diagnostic::new(
            "netc::unknown_network",
            format!("no network named `{name}`"),
        );
        return Err(vec![match did_you_mean(&name, names.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("networks defined: {}", names.join(", "))),
        }]);
    }
    timings.push(("check", t1.elapsed()));
    let t2 = std::time::Instant::now();
    let mut elab = eval::Elab::new(&prog, sources, &name);
    elab.eval_consts().map_err(|d| vec![d])?;
    elab.network(&name, None, &overrides).map_err(|d| vec![d])?;
    timings.push(("elaborate", t2.elapsed()));
    Ok(elab.graph)
}
