//! Each pass: a snapshot of the IR before and after it on a program built to
//! exercise it, and an equivalence test: the graph before and after the pass,
//! run on the candle reference backend with the same (transformed) weights and
//! inputs, agree to a relative error of 1e-5. The pass must also change the
//! graph (a pass test that cannot fail is no test).

use netc_compiler::passes::PassOptions;
use netc_compiler::print::print;
use netc_runtime::rng::Stream;
use netc_runtime::{HostTensor, Model, Weights};
use std::path::Path;

const TOLERANCE: f64 = 1e-5;

fn input_for(model: &Model) -> Vec<HostTensor> {
    let g = model.elaborated();
    g.inputs
        .iter()
        .map(|i| {
            let mut shape = vec![2];
            shape.extend(g.node(i.node).shape.per_sample());
            let mut s = Stream::new(11, &i.name);
            let data = (0..shape.iter().product::<usize>())
                .map(|_| (2.0 * s.uniform() - 1.0) as f32)
                .collect();
            HostTensor { shape, data }
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64)).max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

/// Runs `pass` alone on `src`; returns "before\n---\nafter" IR text after checking equivalence.
fn check(pass: &str, src: &str) -> String {
    let mut model =
        Model::from_source("test.net", src, Path::new("."), &[]).unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::deterministic(model.elaborated(), 3);
    let inputs = input_for(&model);
    let before = model.session(&weights).unwrap().run(&inputs).unwrap();
    let before_ir = print(model.graph(), None);
    let runs = model
        .optimize(&PassOptions {
            level: 2,
            passes: Some(vec![pass.to_string()]),
            verify: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        runs[0].changed,
        "pass `{pass}` did not change the test program"
    );
    let after_ir = print(model.graph(), None);
    let after = model
        .session(&weights)
        .unwrap_or_else(|e| panic!("{e}"))
        .run(&inputs)
        .unwrap();
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.shape, b.shape);
        let err = rel_err(&a.data, &b.data);
        assert!(err <= TOLERANCE, "pass `{pass}`: relative error {err:.3e}");
    }
    let transforms: Vec<String> = model
        .graph()
        .weight_transforms
        .iter()
        .map(|t| format!("; {t}"))
        .collect();
    format!("{before_ir}---\n{after_ir}{}", transforms.join("\n"))
}

#[test]
fn fold_batch_norm() {
    let src = r#"
network N() {
    input x: [3, 12, 12]
    a = x -> conv1: conv(8, k=3, pad=1, bias=false) -> bn1: batch_norm -> relu
    // BN before an unpadded 1x1 conv folds into it; before a padded conv it cannot.
    b = a -> bn2: batch_norm -> conv2: conv(8, k=1) -> bn3: batch_norm(eps=1e-3) -> conv3: conv(4, k=3, pad=1)
    c = b -> global_avg_pool -> flatten -> fc: linear(6) -> bn4: batch_norm
    return c
}
"#;
    insta::assert_snapshot!(check("fold-batch-norm", src));
}

#[test]
fn fuse_epilogue() {
    let src = r#"
network N() {
    input x: [4, 10, 10]
    y = x -> c1: conv(8, k=3, pad=1) -> relu -> c2: conv(8, k=3, pad=1)
    s = x -> down: conv(8, k=1)
    z = relu(y + s) -> c3: conv(8, k=1) -> silu
    return z -> global_avg_pool -> flatten -> fc: linear(5) -> relu6
}
"#;
    insta::assert_snapshot!(check("fuse-epilogue", src));
}

#[test]
fn reparameterize() {
    let src = r#"
network N() {
    input x: [6, 9, 9]
    big = x -> lk: conv(6, k=7, pad=3, groups=6)
    small = x -> sk: conv(6, k=3, pad=1, groups=6)
    return big + small
}
"#;
    insta::assert_snapshot!(check("reparameterize", src));
}

#[test]
fn simplify_shapes() {
    let src = r#"
network N() {
    input x: [4, 6, 6]
    t = x -> permute([0, 2, 3, 1]) -> permute([0, 3, 1, 2]) -> reshape([4, 36]) -> reshape([144]) -> reshape([4, 6, 6])
    return t -> global_avg_pool -> flatten
}
"#;
    insta::assert_snapshot!(check("simplify-shapes", src));
}

#[test]
fn fold_padding() {
    let src = r#"
network N() {
    input x: [3, 8, 8]
    return x -> pad((1, 2, 0, 1)) -> conv(4, k=3) -> pad(1) -> avg_pool(2, stride=1)
}
"#;
    insta::assert_snapshot!(check("fold-padding", src));
}

#[test]
fn pool_before_conv() {
    // A DenseNet transition (with a bias, which passes through), and pools
    // that must stay where they are: padded (its bias would be averaged with
    // the padding's zeros at the border, so moving it changes the numbers),
    // and after a 3×3 convolution.
    let src = r#"
network N() {
    input x: [8, 8, 8]
    t = x -> batch_norm -> relu -> conv(4, k=1) -> avg_pool(2, stride=2)
    padded = x -> conv(4, k=1) -> avg_pool(3, stride=2, pad=1)
    wide = x -> conv(4, k=3, pad=1) -> avg_pool(2, stride=2)
    return t + wide + padded
}
"#;
    insta::assert_snapshot!(check("pool-before-conv", src));
}

#[test]
fn remove_identity() {
    let src = r#"
network N() {
    input x: [3, 8, 8]
    return x -> conv(4, k=3) -> dropout(0.3) -> identity -> relu
}
"#;
    insta::assert_snapshot!(check("remove-identity", src));
}

#[test]
fn dead_code() {
    let src = r#"
network N() {
    input x: [3, 8, 8]
    unused = x -> conv(4, k=3) -> relu
    return x -> conv(2, k=1)
}
"#;
    insta::assert_snapshot!(check("dead-code", src));
}

/// ResNeXt's three equivalent forms: (A) N paths summed, (B) N paths concatenated
/// then projected, and the split form; all must end as grouped convolutions.
#[test]
fn canonicalize_cardinality() {
    let form_a = r#"
network N() {
    input x: [8, 6, 6]
    return x -> fork 4 { [conv(2, k=1), relu, conv(2, k=3, pad=1), relu, conv(8, k=1)] } -> sum
}
"#;
    let form_b = r#"
network N() {
    input x: [8, 6, 6]
    return x -> fork 4 { [conv(2, k=1), relu, conv(2, k=3, pad=1), relu] } -> concat -> conv(8, k=1)
}
"#;
    let split = r#"
network N() {
    input x: [8, 6, 6]
    return x -> split(4) -> each { conv(3, k=3, pad=1) } -> concat
}
"#;
    let mut all = String::new();
    for (name, src) in [("form A", form_a), ("form B", form_b), ("split", split)] {
        let text = check("canonicalize-cardinality", src);
        let after = text.split("---\n").nth(1).unwrap();
        assert!(
            after.contains("g=4"),
            "{name}: no grouped convolution:\n{after}"
        );
        assert!(
            !after.contains("concat"),
            "{name}: a concat survived:\n{after}"
        );
        all.push_str(&format!("# {name}\n{text}\n"));
    }
    insta::assert_snapshot!(all);
}

#[test]
fn fold_constants() {
    let src = r#"
network N() {
    input x: [4, 3, 3]
    param a: [4, 1, 1]
    param t: [1, 4]
    let scale = sigmoid(a) * a + reshape(permute(t, perm=[1, 0]), shape=[4, 1, 1])
    return x * scale
}
"#;
    insta::assert_snapshot!(check("fold-constants", src));
}
