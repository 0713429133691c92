//! Model-zoo parity with the reference implementations: for every row of
//! `tests/reference/torchvision_zoo.tsv` (plus RepLKNet-31B), `netc summary --json`
//! must report exactly the reference parameter count and MACs, and where a
//! `state_dict` key list exists, exactly its keys and shapes, in order.
//!
//! Adding a model is adding a row (and its `models/<name>.net`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn summary(model: &str) -> Result<serde_json::Value, String> {
    let path = root().join("models").join(format!("{model}.net"));
    if !path.exists() {
        return Err(format!("models/{model}.net is missing"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(["summary", "--json"])
        .arg(&path)
        .output()
        .expect("run netc");
    if !out.status.success() {
        return Err(format!(
            "netc summary {model} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{model}: summary --json is not JSON: {e}"))
}

struct Row {
    model: String,
    resolution: u64,
    params: u64,
    macs: u64,
}

fn table() -> Vec<Row> {
    let text = std::fs::read_to_string(root().join("tests/reference/torchvision_zoo.tsv")).unwrap();
    let mut rows: Vec<Row> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Row {
                model: f[0].to_string(),
                resolution: f[1].parse().unwrap(),
                params: f[2].parse().unwrap(),
                macs: f[3].parse().unwrap(),
            }
        })
        .collect();
    // RepLKNet-31B (training form), from the RepLKNet-pytorch repository; see tests/reference/README.md.
    rows.push(Row {
        model: "replknet31b".into(),
        resolution: 224,
        params: 79_864_168,
        macs: 0,
    });
    rows
}

fn state_dict(model: &str) -> Option<Vec<(String, Vec<u64>)>> {
    let path: &Path = &root().join(format!("tests/reference/state_dict/{model}.txt"));
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(|l| {
                let (k, s) = l.split_once('\t').unwrap();
                (k.to_string(), serde_json::from_str(s).unwrap())
            })
            .collect(),
    )
}

#[test]
fn every_zoo_model_matches_its_reference() {
    let mut failures = Vec::new();
    for row in table() {
        let s = match summary(&row.model) {
            Ok(s) => s,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let params = s["params"].as_u64().unwrap();
        let macs = s["macs"].as_u64().unwrap();
        let res = s["inputs"][0]["shape"][2].as_u64().unwrap();
        if params != row.params {
            failures.push(format!("{}: params {params} != {}", row.model, row.params));
        }
        if row.macs != 0 && macs != row.macs {
            failures.push(format!("{}: MACs {macs} != {}", row.model, row.macs));
        }
        if row.model == "replknet31b" {
            // The reference gives 15.43 GMACs rounded to 10 MMACs.
            let g = macs as f64 / 1e9;
            if (g - 15.43).abs() > 0.005 {
                failures.push(format!("replknet31b: {g:.4} GMACs, expected 15.43"));
            }
        }
        if res != row.resolution {
            failures.push(format!(
                "{}: resolution {res} != {}",
                row.model, row.resolution
            ));
        }
        if let Some(keys) = state_dict(&row.model) {
            let mine: Vec<(String, Vec<u64>)> = s["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_string(),
                        p["shape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d.as_u64().unwrap())
                            .collect(),
                    )
                })
                .collect();
            if mine != keys {
                let first = mine
                    .iter()
                    .zip(&keys)
                    .position(|(a, b)| a != b)
                    .unwrap_or(mine.len().min(keys.len()));
                failures.push(format!(
                    "{}: state_dict differs at entry {first}: netc {:?} vs torchvision {:?} ({} vs {} entries)",
                    row.model,
                    mine.get(first),
                    keys.get(first),
                    mine.len(),
                    keys.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_reference_key_list_is_covered() {
    let rows = table();
    let dir = std::fs::read_dir(root().join("tests/reference/state_dict")).unwrap();
    let mut n = 0;
    for e in dir {
        let name = e.unwrap().file_name().into_string().unwrap();
        let model = name.trim_end_matches(".txt");
        assert!(
            rows.iter().any(|r| r.model == model),
            "{model} has keys but no row"
        );
        n += 1;
    }
    assert_eq!(n, 11, "the eleven reference key lists");
}
