//! The command line end to end: exit codes, the build report, and `init-weights`
//! + `run` on a safetensors input and on a PNG image.

use std::path::PathBuf;
use std::process::{Command, Output};

fn netc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netc"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("run netc")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn build_reports_the_torchvision_figures() {
    let out = netc(&["build", "models/resnext50_32x4d.net"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("parameters  25,028,904"), "{text}");
    assert!(text.contains("MACs        4,230,479,872\n"), "{text}");
}

#[test]
fn build_reports_the_macs_left_after_passes() {
    // DenseNet-121's transitions pool before their 1×1 convolutions
    // (pool-before-conv); torchvision's figure comes first.
    let out = netc(&["build", "models/densenet121.net"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("MACs        2,834,161,664 (2,602,950,656 after passes)"),
        "{text}"
    );
}

#[test]
fn errors_exit_non_zero_without_panicking() {
    for args in [
        vec!["check", "models/does_not_exist.net"],
        vec!["build", "models/resnet50.net", "--set", "resolution=0"],
        vec!["build", "models/resnet50.net", "--set", "nope=1"],
        vec!["build", "models/resnet50.net", "--passes", "fold-bn"],
        vec!["ir", "models/resnet50.net", "--print-after", "nope"],
        vec![
            "run",
            "models/resnet18.net",
            "--weights",
            "Cargo.toml",
            "--input",
            "Cargo.toml",
        ],
    ] {
        let out = netc(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

/// A graph the CPU backend cannot lower (a softmax over the batch axis, which
/// candle runs): the error points at the source of the layer and says what
/// to use instead.
#[test]
fn cpu_lowering_errors_point_at_the_layer() {
    let path = tmp("batch_softmax.net");
    std::fs::write(
        &path,
        "network T() {\n    input x: [4, 8]\n    return x -> softmax(axis=0)\n}\n",
    )
    .unwrap();
    let out = netc(&[
        "bench",
        path.to_str().unwrap(),
        "--backend",
        "cpu",
        "--iters",
        "1",
    ]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("reduction over the batch"), "{err}");
    assert!(err.contains("batch_softmax.net:3:17"), "no span: {err}");
    assert!(err.contains("`softmax` comes from here"), "{err}");
    assert!(err.contains("--backend candle"), "no hint: {err}");
}

#[test]
fn init_weights_then_run_on_a_tensor_and_on_an_image() {
    let w = tmp("r18.safetensors");
    let w = w.to_str().unwrap();
    let out = netc(&[
        "init-weights",
        "models/resnet18.net",
        "--set",
        "resolution=64",
        "-o",
        w,
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An image input, resized and center-cropped to 64x64, with the top classes named.
    let png = tmp("cat.png");
    let img = image::RgbImage::from_fn(80, 60, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 4) as u8, 128])
    });
    img.save(&png).unwrap();
    let out = netc(&[
        "run",
        "models/resnet18.net",
        "--set",
        "resolution=64",
        "--weights",
        w,
        "--input",
        png.to_str().unwrap(),
        "--top",
        "3",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("output logits: [1, 1000]"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains('%')).count(),
        3,
        "{text}"
    );

    // The outputs written by name can be read back as an input-style tensor file.
    let y = tmp("y.safetensors");
    let out = netc(&[
        "run",
        "models/resnet18.net",
        "--set",
        "resolution=64",
        "--weights",
        w,
        "--input",
        png.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
        "-O0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&y).unwrap();
    let t = netc_runtime::weights::read_tensor(&bytes, Some("logits")).unwrap();
    assert_eq!(t.shape, [1, 1000]);
}

#[test]
fn bench_profile_json_lists_every_layer_with_its_macs() {
    let out = netc(&[
        "bench",
        "models/resnet18.net",
        "--iters",
        "1",
        "--profile",
        "--json",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let layers = v["profile"].as_array().expect("a profile array");
    // The per-layer MACs add up to torchvision's figure for the whole network.
    let macs: u64 = layers.iter().map(|e| e["macs"].as_u64().unwrap()).sum();
    assert_eq!(macs, 1_814_073_344);
    assert!(layers.iter().all(|e| e["ms"].as_f64().unwrap() >= 0.0));
    assert!(
        layers.iter().any(|e| e["node"] == "layer4.1.conv2"),
        "{text}"
    );
}
