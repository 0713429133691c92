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
