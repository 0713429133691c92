//! Numerical parity with PyTorch. Each fixture in tests/fixtures/ (made by
//! tools/reference/make_fixtures.py) holds an input, torchvision's output and
//! how to rebuild the model; the weights are regenerated here bit-exactly from
//! (seed, key, index). Every optimization level runs on both backends (candle
//! and the native CPU backend). Bound: max |netc − torch| / max |torch| ≤ 1e-4.

use netc_compiler::passes::PassOptions;
use netc_runtime::weights::read_tensor;
use netc_runtime::{Backend, CpuOptions, Model, Weights};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const TOLERANCE: f64 = 1e-4;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Relative error of `ours` against `theirs`.
fn rel_err(ours: &[f32], theirs: &[f32]) -> f64 {
    let scale = theirs
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

/// Checks one fixture file at every optimization level; returns the worst relative error.
pub fn check_fixture(path: &Path) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let set: Vec<String> = serde_json::from_str(&meta["set"]).unwrap();
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    let seed: u64 = meta["seed"].parse().unwrap();
    let mut model =
        Model::from_file(root().join(&meta["model"]), &set).unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::deterministic(model.graph(), seed);
    // The generator must agree with the Python twin bit for bit.
    let check: Vec<f32> = serde_json::from_str(&meta["check"]).unwrap();
    let first = &weights
        .get(&meta["check_key"])
        .expect("check key is a parameter")
        .data[..check.len()];
    assert_eq!(
        first,
        &check[..],
        "deterministic weights differ from tools/reference's"
    );
    let input = read_tensor(&bytes, Some("input")).unwrap();
    let expected = read_tensor(&bytes, Some("output")).unwrap();
    let mut worst = 0f64;
    for level in 0..=2 {
        let opts = PassOptions {
            level,
            passes: None,
            verify: true,
        };
        model.optimize(&opts).unwrap_or_else(|e| panic!("{e}"));
        let backends = [
            ("candle", Backend::Candle(netc_runtime::candle_cpu())),
            ("cpu", Backend::Cpu(CpuOptions::default())),
        ];
        for (name, backend) in backends {
            let session = model
                .session_with(&weights, &backend)
                .unwrap_or_else(|e| panic!("{e}"));
            let out = session
                .run(std::slice::from_ref(&input))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out[0].shape, expected.shape);
            let err = rel_err(&out[0].data, &expected.data);
            eprintln!(
                "  {} -O{level} {name}: {err:.2e}",
                path.file_stem().unwrap().to_string_lossy()
            );
            worst = worst.max(err);
        }
    }
    worst
}

fn fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_backend_matches_pytorch_on_every_fixture() {
    let mut report = Vec::new();
    let mut failed = false;
    for f in fixtures() {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let err = check_fixture(&f);
        report.push(format!("{name}: {err:.2e}"));
        failed |= err.is_nan() || err > TOLERANCE;
    }
    eprintln!("{}", report.join("\n"));
    assert!(!report.is_empty(), "no fixtures found");
    assert!(
        !failed,
        "relative error over {TOLERANCE}:\n{}",
        report.join("\n")
    );
}

/// Full-resolution parity (docs/parity.md): set NETC_PARITY_DIR to a directory made
/// by `make_fixtures.py --full --out DIR`.
#[test]
#[ignore = "needs NETC_PARITY_DIR with full-size fixtures"]
fn every_backend_matches_pytorch_at_full_size() {
    let dir = std::env::var("NETC_PARITY_DIR").expect("NETC_PARITY_DIR");
    let mut failed = false;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for f in entries {
        let err = check_fixture(&f);
        println!("{}: {err:.2e}", f.file_stem().unwrap().to_string_lossy());
        failed |= err.is_nan() || err > TOLERANCE;
    }
    assert!(!failed);
}
