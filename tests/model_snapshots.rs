//! Snapshots of the IR text and of `netc summary` for representative models.
//! Review every diff with `cargo insta review`: a change here is a change in
//! what the compiler produces.

use std::path::PathBuf;
use std::process::Command;

fn netc(args: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_netc"))
        .current_dir(&root)
        .args(args)
        .output()
        .expect("run netc");
    assert!(
        out.status.success(),
        "netc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

macro_rules! ir {
    ($name:ident) => {
        #[test]
        fn $name() {
            let path = concat!("models/", stringify!($name), ".net");
            insta::assert_snapshot!(concat!("ir_", stringify!($name)), netc(&["ir", path]));
        }
    };
}

macro_rules! summary {
    ($test:ident, $name:literal) => {
        #[test]
        fn $test() {
            let path = concat!("models/", $name, ".net");
            insta::assert_snapshot!(concat!("summary_", $name), netc(&["summary", path]));
        }
    };
}

ir!(resnet18);
ir!(resnext50_32x4d);
ir!(mobilenet_v2);

summary!(summary_resnet50, "resnet50");
summary!(summary_resnext50_32x4d, "resnext50_32x4d");
summary!(summary_densenet121, "densenet121");
summary!(summary_efficientnet_b0, "efficientnet_b0");
summary!(summary_convnext_tiny, "convnext_tiny");
summary!(summary_vit_b_16, "vit_b_16");
summary!(summary_replknet31b, "replknet31b");
summary!(summary_googlenet, "googlenet");

/// The optimized IR of ResNet-50: one node per convolution, plus pooling and the classifier.
#[test]
fn ir_resnet50_optimized() {
    let text = netc(&[
        "ir",
        "models/resnet50.net",
        "--print-after",
        "dead-code",
        "--no-locations",
    ]);
    assert!(!text.contains("batch_norm"), "batch norms survive");
    let convs = text
        .lines()
        .filter(|l| l.contains("= fused_conv2d"))
        .count();
    let nodes = text
        .lines()
        .filter(|l| l.trim_start().starts_with('%'))
        .count();
    assert_eq!(convs, 53);
    // input, max_pool, the pooling+flatten and the classifier are the rest.
    assert_eq!(nodes, convs + 4);
    insta::assert_snapshot!("ir_resnet50_optimized", text);
}
