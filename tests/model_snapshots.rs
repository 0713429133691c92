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

summary!(summary_resnet50, "resnet50");
summary!(summary_resnext50_32x4d, "resnext50_32x4d");
