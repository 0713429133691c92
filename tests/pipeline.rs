//! The whole pipeline over the zoo: every model optimizes at -O2 with the
//! verifier after each pass, and its memory plan is sound (no two live buffers
//! overlap) and within 10% of the lower bound. `cargo test --release --test
//! pipeline -- --nocapture` prints the table kept in docs/passes.md.

use netc_compiler::elaborate::{elaborate, Options, Source};
use netc_compiler::memory_plan;
use netc_compiler::passes::{self, PassOptions};
use netc_grammar::SourceMap;
use std::path::PathBuf;

fn zoo() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        // Model files define a network named after the file; family files do not.
        .filter(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            std::fs::read_to_string(p)
                .unwrap()
                .contains(&format!("network {stem}"))
        })
        .collect();
    v.sort();
    v
}

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1 << 20) as f64)
}

#[test]
fn every_model_optimizes_and_plans_within_ten_percent_of_the_bound() {
    let mut failures = Vec::new();
    println!("| model | nodes -O0 | nodes -O2 | arena MiB | lower bound MiB | arena / bound | no reuse MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for path in zoo() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let mut sources = SourceMap::new();
        let mut g = elaborate(Source::Path(&path), &Options::default(), &mut sources)
            .unwrap_or_else(|_| panic!("{name} does not elaborate"));
        let before = g.len();
        let opts = PassOptions {
            level: 2,
            passes: None,
            verify: true,
        };
        if let Err(e) = passes::run(&mut g, &opts, |_, _| {}) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        let plan = memory_plan::plan(&g);
        if let Err(e) = memory_plan::check(&plan) {
            failures.push(format!("{name}: {e}"));
        }
        let ratio = plan.arena as f64 / plan.lower_bound as f64;
        if ratio > 1.10 {
            failures.push(format!(
                "{name}: arena {} is {ratio:.3}x the lower bound {}",
                plan.arena, plan.lower_bound
            ));
        }
        println!(
            "| {name} | {before} | {} | {} | {} | {ratio:.3} | {} |",
            g.len(),
            mib(plan.arena),
            mib(plan.lower_bound),
            mib(plan.naive)
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Executes a graph through its memory plan: every activation lives in one arena
/// at its planned offset (in-place writes, views and concat elimination included),
/// each node reads its operands from the arena and writes its result there. The
/// outputs must equal a plain run: a wrong plan (a buffer reused while still live,
/// a concat slice at the wrong offset) corrupts them.
fn run_through_plan(model: &str, set: &[&str]) -> f64 {
    use netc_compiler::ir::Op;
    use netc_runtime::{HostTensor, Model, Weights};
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    let mut m = Model::from_file(path, set).unwrap_or_else(|e| panic!("{e}"));
    m.optimize(&PassOptions {
        level: 2,
        passes: None,
        verify: true,
    })
    .unwrap();
    let w = Weights::deterministic(m.elaborated(), 9);
    let session = m.session(&w).unwrap();
    let g = session.graph().clone();
    let plan = memory_plan::plan(&g);
    memory_plan::check(&plan).unwrap();
    let input = {
        let mut shape = vec![1];
        shape.extend(g.node(g.inputs[0].node).shape.per_sample());
        let n: usize = shape.iter().product();
        HostTensor {
            shape,
            data: (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect(),
        }
    };
    let expected = session.run(std::slice::from_ref(&input)).unwrap();
    let mut arena = vec![f32::NAN; (plan.arena / 4) as usize];
    let at = |n| {
        (plan.buffers[plan.buffer_of[&n]].offset
            + plan.offset_in_buffer.get(&n).copied().unwrap_or(0)) as usize
            / 4
    };
    let shape_of = |n| {
        let mut s = vec![1];
        s.extend(g.node(n).shape.per_sample());
        s
    };
    let mut params: std::collections::HashMap<_, HostTensor> = Default::default();
    for n in g.topo_order() {
        let node = g.node(n);
        let read = |o, arena: &Vec<f32>| -> HostTensor {
            if let Some(p) = params.get(&o) {
                return p.clone();
            }
            let s = shape_of(o);
            let len: usize = s.iter().product();
            HostTensor {
                shape: s,
                data: arena[at(o)..at(o) + len].to_vec(),
            }
        };
        let netc_runtime::Program::Candle(program) = session.program() else {
            unreachable!("a CPU session by default")
        };
        let out = match &node.op {
            Op::Input { .. } => input.clone(),
            Op::Parameter { .. } => {
                let t = program.run_node(n, &[]).unwrap();
                params.insert(n, t);
                continue;
            }
            // An eliminated concat is already in place: its operands wrote their slices.
            Op::Concat { .. } if plan.offset_in_buffer.contains_key(&n) => continue,
            _ => {
                let ops: Vec<HostTensor> =
                    g.operands(n).into_iter().map(|o| read(o, &arena)).collect();
                program.run_node(n, &ops).unwrap()
            }
        };
        let start = at(n);
        arena[start..start + out.data.len()].copy_from_slice(&out.data);
    }
    let o = g.outputs[0].node;
    let len: usize = shape_of(o).iter().product();
    let got = &arena[at(o)..at(o) + len];
    let scale = expected[0]
        .data
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64));
    got.iter()
        .zip(&expected[0].data)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()))
        / scale
}

#[test]
fn executing_the_memory_plan_gives_the_same_outputs() {
    for (model, set) in [
        ("densenet121.net", &["resolution=64"][..]),
        ("googlenet.net", &["resolution=64"][..]),
        ("resnet18.net", &["resolution=64"][..]),
        ("mobilenet_v2.net", &["resolution=64"][..]),
    ] {
        let err = run_through_plan(model, set);
        assert!(
            err <= 1e-6,
            "{model}: relative error {err:.3e} through the memory plan"
        );
    }
}
