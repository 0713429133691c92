//! The native CPU backend against the candle reference:
//! - every op and fused op over randomized shapes (odd sizes, padding,
//!   strides, dilation, groups including depthwise, channel counts that are not
//!   multiples of the vector width), at -O0 and -O2, batch 1–3, 1–3 threads,
//!   always with guard pages around the arena and the weights;
//! - every zoo model at reduced resolution, with guard pages;
//! - the generated activation kernels against f64 references.
//!
//! Bound: max |cpu − candle| / max |candle| ≤ 1e-5 (parity with PyTorch itself
//! is in tests/parity.rs).

use netc_compiler::ir::Activation;
use netc_compiler::passes::PassOptions;
use netc_runtime::{Backend, CpuOptions, HostTensor, Model, Program, Weights};
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// SplitMix64: a small deterministic generator for the cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.range(0, xs.len() - 1)]
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn rel_err(ours: &[f32], theirs: &[f32]) -> f64 {
    let scale = theirs
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let diff = ours.iter().zip(theirs).fold(0f64, |m, (a, b)| {
        let d = (*a as f64 - *b as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    diff / scale
}

const ACTS: [&str; 10] = [
    "relu",
    "relu6",
    "gelu",
    "gelu(approximate=\"tanh\")",
    "silu",
    "sigmoid",
    "hardswish",
    "hardsigmoid",
    "tanh",
    "identity",
];

/// One random test network (source text) exercising one family of ops.
fn case(r: &mut Rng, family: usize) -> String {
    let act = *r.pick(&ACTS);
    let body = match family {
        // Convolution, grouped or not, with bias / batch norm / activation.
        0 | 1 => {
            let groups = *r.pick(&[1, 1, 2, 3]);
            let cin = groups * r.range(1, 7);
            let cout = groups * r.range(1, 9);
            let (kh, kw) = (r.range(1, 5), r.range(1, 5));
            let (sh, sw) = (r.range(1, 3), r.range(1, 3));
            let pad = [r.range(0, 2), r.range(0, 2), r.range(0, 2), r.range(0, 2)];
            let dil = r.range(1, 2);
            let (h, w) = (r.range(kh * dil + 1, 17), r.range(kw * dil + 1, 19));
            let bias = r.range(0, 1) == 1;
            let bn = if r.range(0, 1) == 1 {
                " -> batch_norm"
            } else {
                ""
            };
            let residual = family == 1;
            let conv = |out: usize, g: usize, b: bool| {
                format!(
                    "conv({out}, k=({kh}, {kw}), stride=({sh}, {sw}), pad=({}, {}, {}, {}), dilation={dil}, groups={g}, bias={b})",
                    pad[0], pad[1], pad[2], pad[3]
                )
            };
            if residual {
                format!(
                    "input x: [{cin}, {h}, {w}]\n    a = x -> {}{bn}\n    b = x -> {}\n    s = a + b\n    return s -> {act}",
                    conv(cout, groups, bias),
                    conv(cout, 1, false)
                )
            } else {
                format!(
                    "input x: [{cin}, {h}, {w}]\n    return x -> {}{bn} -> {act}",
                    conv(cout, groups, bias)
                )
            }
        }
        // Depthwise (with a channel multiplier sometimes).
        2 => {
            let c = r.range(1, 13);
            let mult = *r.pick(&[1, 1, 2]);
            let k = r.range(2, 7);
            let s = r.range(1, 3);
            let p = r.range(0, k / 2 + 1);
            let d = r.range(1, 2);
            // Widths on both sides of the channel-blocked path's limit (28).
            let (h, w) = (r.range(k * d, 23), r.range(k * d, 45));
            if mult == 1 && r.range(0, 2) == 0 {
                // Same-size output and a residual add after the activation.
                let k = 2 * r.range(0, 2) + 1;
                format!(
                    "input x: [{c}, {h}, {w}]\n    a = x -> conv({c}, k={k}, stride=1, pad={}, groups={c}, bias=true) -> {act}\n    s = a + x\n    return s",
                    k / 2
                )
            } else {
                format!(
                    "input x: [{c}, {h}, {w}]\n    return x -> conv({}, k={k}, stride={s}, pad={p}, dilation={d}, groups={c}, bias=false) -> batch_norm -> {act}",
                    c * mult
                )
            }
        }
        // Pooling, padding, adaptive pooling.
        3 => {
            let c = r.range(1, 9);
            let k = r.range(1, 4);
            let s = r.range(1, 3);
            let p = r.range(0, k / 2);
            let (h, w) = (r.range(k + 1, 21), r.range(k + 1, 23));
            let ceil = r.range(0, 1) == 1;
            let include = r.range(0, 1) == 1;
            let d = r.range(1, 2);
            let pool = if r.range(0, 1) == 1 {
                format!("max_pool(k={k}, stride={s}, pad={p}, dilation={d}, ceil_mode={ceil})")
            } else {
                format!("avg_pool(k={k}, stride={s}, pad={p}, ceil_mode={ceil}, count_include_pad={include})")
            };
            let (oh, ow) = (r.range(1, 4), r.range(1, 4));
            format!(
                "input x: [{c}, {h}, {w}]\n    a = x -> {pool}\n    b = x -> pad(pad=({}, {}, {}, {}), value=0.25) -> adaptive_avg_pool(size=({oh}, {ow}))\n    return concat([a -> global_avg_pool, b -> global_avg_pool])",
                r.range(0, 2), r.range(0, 2), r.range(0, 2), r.range(0, 2)
            )
        }
        // Token ops: linear (+ residual), layer norm, softmax, permute.
        4 => {
            // Sometimes wider than a 256-row epilogue block.
            let s = r.range(1, 19);
            let f = if r.range(0, 3) == 0 {
                r.range(250, 300)
            } else {
                r.range(1, 37)
            };
            let out = r.range(1, 41);
            format!(
                "input x: [{s}, {f}]\n    y = x -> linear({f}) -> {act}\n    z = x + y\n    return z -> layer_norm -> linear({out}) -> softmax(axis={}) -> transpose(a=1, b=2)",
                r.range(1, 2)
            )
        }
        // Channels-first layer norm, layer scale, squeeze-excite style broadcasting.
        5 => {
            let c = r.range(1, 17);
            let (h, w) = (r.range(1, 13), r.range(1, 13));
            format!(
                "input x: [{c}, {h}, {w}]\n    y = x -> layer_norm(axis=1) -> layer_scale\n    g = y -> global_avg_pool -> conv({c}, k=1) -> sigmoid\n    m = y * g\n    return m -> permute(perm=[0, 2, 3, 1]) -> select(axis={}, index=0)",
                r.range(1, 3)
            )
        }
        // Concatenation of convolutions, split and sum (DenseNet/GoogLeNet shapes).
        6 => {
            let c = r.range(1, 9);
            let (h, w) = (r.range(3, 15), r.range(3, 15));
            let (a, b) = (r.range(1, 11), r.range(1, 11));
            format!(
                "input x: [{c}, {h}, {w}]\n    p = x -> conv({a}, k=3, pad=1) -> {act}\n    q = x -> conv({b}, k=1) -> relu\n    j = concat([x, p, q])\n    k = concat([j, j -> conv(3, k=1)]) -> batch_norm -> relu\n    return k -> conv({}, k=1)",
                r.range(1, 7)
            )
        }
        // Self-attention.
        _ => {
            let heads = r.range(1, 4);
            let e = heads * r.range(1, 9);
            let s = r.range(1, 21);
            format!(
                "input x: [{s}, {e}]\n    y = x -> layer_norm -> self_attention(heads={heads}, bias={})\n    z = x + y\n    return z",
                r.range(0, 1) == 1
            )
        }
    };
    format!("network t() {{\n    {body}\n}}\n")
}

fn run_both(model: &mut Model, level: u8, batch: usize, threads: usize, seed: u64) -> f64 {
    model
        .optimize(&PassOptions {
            level,
            passes: None,
            verify: true,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let weights = Weights::deterministic(model.elaborated(), seed);
    let g = model.graph();
    let mut r = Rng(seed ^ 0xabcdef);
    let inputs: Vec<HostTensor> = g
        .inputs
        .iter()
        .map(|i| {
            let mut shape = vec![batch];
            shape.extend(g.node(i.node).shape.per_sample());
            let n = shape.iter().product();
            HostTensor {
                shape,
                data: (0..n).map(|_| r.unit() * 4.0 - 2.0).collect(),
            }
        })
        .collect();
    let reference = model
        .session(&weights)
        .unwrap_or_else(|e| panic!("{e}"))
        .run(&inputs)
        .unwrap_or_else(|e| panic!("{e}"));
    let session = model
        .session_with(
            &weights,
            &Backend::Cpu(CpuOptions {
                threads,
                guard_pages: true,
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let cpu = session.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
    // A second run gives the same bits: nothing a run leaves behind (work
    // queues, padded copies, scratch) changes the next one.
    let again = session.run(&inputs).unwrap_or_else(|e| panic!("{e}"));
    for (a, b) in cpu.iter().zip(&again) {
        let same = a
            .data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "a second run differs");
    }
    let mut worst = 0f64;
    for (a, b) in cpu.iter().zip(&reference) {
        assert_eq!(a.shape, b.shape);
        worst = worst.max(rel_err(&a.data, &b.data));
    }
    worst
}

#[test]
fn every_op_matches_candle_over_random_shapes() {
    if std::env::var_os("NETC_CPU_BASELINE").is_some() {
        // Run by `baseline_code_matches_candle_over_random_shapes`.
        use netc_runtime::backend::cpu::gemm::Kernel;
        assert_eq!(Kernel::detect(), Kernel::Portable);
    }
    let mut r = Rng(2026);
    let mut failures = Vec::new();
    let mut worst = 0f64;
    let cases = 8 * 12;
    for i in 0..cases {
        let src = case(&mut r, i % 8);
        let mut model = Model::from_source("case.net", &src, Path::new("."), &[])
            .unwrap_or_else(|e| panic!("case {i} does not compile:\n{src}\n{e}"));
        let batch = r.range(1, 3);
        let threads = r.range(1, 3);
        for level in [0, 2] {
            let err = run_both(&mut model, level, batch, threads, i as u64);
            worst = worst.max(err);
            if err.is_nan() || err > TOLERANCE {
                failures.push(format!(
                    "case {i} -O{level} batch {batch} threads {threads}: {err:.2e}\n{src}"
                ));
            }
        }
    }
    eprintln!("{cases} cases, worst relative error {worst:.2e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Pixel-major convolutions (overlapping windows, 16 output channels a
/// group or a multiple of it, K ≥ 128 from ≥ 16 input channels, or 3 on
/// AVX-512 CPUs; the random
/// cases above are too narrow to take that path) against candle: strides,
/// dilation, asymmetric padding, groups, a residual epilogue, several
/// samples and threads, and a batch whose padded input is too large to pad
/// at once (12 × 16 × 300 × 300: run sample by sample).
#[test]
fn pixel_major_convolutions_match_candle() {
    let cases = [
        ("input x: [16, 13, 11]\n    return x -> conv(32, k=3, pad=1) -> relu", &[1, 3][..]),
        (
            "input x: [24, 20, 17]\n    a = x -> conv(48, k=(3, 5), stride=2, pad=(1, 2, 0, 1), dilation=2) -> batch_norm\n    b = x -> conv(48, k=(5, 9), stride=2, pad=(1, 2, 0, 1), bias=false)\n    s = a + b\n    return s -> silu",
            &[2][..],
        ),
        ("input x: [32, 9, 9]\n    return x -> conv(64, k=3, pad=1, groups=2) -> relu6", &[1, 2][..]),
        // Asymmetric padding: with one pixel all round this would run as
        // Winograd (see the test below).
        ("input x: [16, 300, 300]\n    return x -> conv(16, k=3, pad=(1, 1, 1, 2))", &[12][..]),
        // A 7×7/2 stem of three channels: pixel-major on AVX-512 CPUs.
        ("input x: [3, 23, 21]\n    a = x -> conv(32, k=7, stride=2, pad=3, bias=false) -> batch_norm\n    return a -> relu", &[1, 2][..]),
    ];
    cases_match_candle(&cases);
}

/// 1×1 stride-2 convolutions (ResNet's shortcuts) against candle: input
/// rows of 2 to 41 columns, so that the padded copy's every-other-column
/// gather runs its vector eights, its tail, or only the tail.
#[test]
fn strided_one_by_one_convolutions_match_candle() {
    let cases = [
        ("input x: [24, 34, 41]\n    return x -> conv(40, k=1, stride=2, bias=false) -> batch_norm", &[1, 2][..]),
        ("input x: [40, 17, 16]\n    a = x -> conv(20, k=1, stride=2)\n    return a -> relu", &[1][..]),
        ("input x: [16, 5, 2]\n    return x -> conv(32, k=1, stride=2)", &[3][..]),
    ];
    cases_match_candle(&cases);
}

/// Each case (a network body, and the batches to run) matches candle on one
/// and two threads.
fn cases_match_candle(cases: &[(&str, &[usize])]) {
    for (i, (body, batches)) in cases.iter().enumerate() {
        let src = format!("network t() {{\n    {body}\n}}\n");
        let mut model = Model::from_source("case.net", &src, Path::new("."), &[])
            .unwrap_or_else(|e| panic!("case {i} does not compile:\n{src}\n{e}"));
        for &batch in *batches {
            for threads in [1, 2] {
                let err = run_both(&mut model, 2, batch, threads, i as u64);
                assert!(
                    err <= TOLERANCE,
                    "case {i} batch {batch} threads {threads}: {err:.2e}\n{src}"
                );
            }
        }
    }
}

/// 3×3 stride-1 convolutions with one pixel of padding, 16 or more channels
/// in and out and a map of 49 tiles or more (16 or more with 256 output
/// channels, on CPUs without AVX-512) run as Winograd F(2×2, 3×3)
/// where the CPU has AVX2 and FMA, and match candle: odd and even maps
/// (partial tiles), bands of several tile rows and one band, more than a K
/// block of input channels, output channels that are not a multiple of
/// six, bias, batch norm, residual and activation epilogues, batches and
/// threads; a convolution just outside the conditions runs otherwise.
#[test]
fn winograd_convolutions_match_candle() {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f")
        && std::env::var_os("NETC_NO_AVX512").is_none();
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    let cases = [
        ("input x: [16, 14, 14]\n    return x -> conv(16, k=3, pad=1) -> relu", true),
        ("input x: [20, 29, 31]\n    a = x -> conv(20, k=3, pad=1, bias=false) -> batch_norm\n    s = a + x\n    return s -> relu", true),
        ("input x: [300, 15, 13]\n    return x -> conv(26, k=3, pad=1) -> silu", true),
        ("input x: [24, 56, 56]\n    return x -> conv(40, k=3, pad=1, bias=false) -> batch_norm -> relu6", true),
        ("input x: [16, 12, 12]\n    return x -> conv(16, k=3, pad=1)", false),
        // A small map: direct where the products would be one-panel zmm tiles.
        ("input x: [64, 7, 8]\n    return x -> conv(256, k=3, pad=1) -> relu", !avx512),
        ("input x: [64, 7, 8]\n    return x -> conv(255, k=3, pad=1) -> relu", false),
        ("input x: [16, 14, 14]\n    return x -> conv(16, k=3, pad=1, dilation=2)", false),
    ];
    cases_match_candle_and_take(&cases, "winograd");
}

/// Each case (a network body, and whether it should run on `kernel`)
/// matches candle at batches 1 and 3 on one and two threads, and runs on
/// `kernel` exactly when it should (and the CPU has AVX2 and FMA, and the
/// baseline code is not forced).
fn cases_match_candle_and_take(cases: &[(&str, bool)], kernel: &str) {
    #[cfg(target_arch = "x86_64")]
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    for (i, (body, takes)) in cases.iter().enumerate() {
        let (mut model, src) = case_matching_candle(i, body);
        let kernels = kernels_run(&mut model);
        let want = *takes && avx2 && std::env::var_os("NETC_CPU_BASELINE").is_none();
        assert_eq!(
            kernels.contains(&kernel),
            want,
            "case {i}: kernels {kernels:?}\n{src}"
        );
    }
}

/// Case `i`, a network body, compiled and checked against candle at
/// batches 1 and 3 on one and two threads; the model and its source.
fn case_matching_candle(i: usize, body: &str) -> (Model, String) {
    let src = format!("network t() {{\n    {body}\n}}\n");
    let mut model = Model::from_source("case.net", &src, Path::new("."), &[])
        .unwrap_or_else(|e| panic!("case {i} does not compile:\n{src}\n{e}"));
    for batch in [1, 3] {
        for threads in [1, 2] {
            let err = run_both(&mut model, 2, batch, threads, i as u64);
            assert!(
                err <= TOLERANCE,
                "case {i} batch {batch} threads {threads}: {err:.2e}\n{src}"
            );
        }
    }
    (model, src)
}

/// The kernels the CPU backend runs `model` with, one per layer, in order
/// (from its profile, on inputs of 0.5).
fn kernels_run(model: &mut Model) -> Vec<&'static str> {
    let weights = Weights::deterministic(model.elaborated(), 1);
    let session = model
        .session_with(&weights, &Backend::Cpu(CpuOptions::default()))
        .unwrap();
    let Program::Cpu(p) = session.program() else {
        unreachable!()
    };
    let shape: Vec<usize> = [1]
        .into_iter()
        .chain(
            model
                .graph()
                .node(model.graph().inputs[0].node)
                .shape
                .per_sample(),
        )
        .collect();
    let x = HostTensor {
        data: vec![0.5; shape.iter().product()],
        shape,
    };
    p.profile(&[x]).unwrap().iter().map(|e| e.kernel).collect()
}

/// Grouped convolutions with 2 to 32 input channels and a multiple of four
/// output channels a group run directly (`grouped.rs`) where the CPU has
/// AVX2 and FMA, and match candle: ResNeXt's shape, stride 2 on odd maps,
/// a residual epilogue, a smooth activation, a rectangular dilated kernel
/// with asymmetric padding, batches and threads; convolutions just outside
/// the conditions run otherwise.
#[test]
fn grouped_convolutions_match_candle() {
    let cases = [
        ("input x: [64, 14, 14]\n    return x -> conv(64, k=3, pad=1, groups=16, bias=false) -> batch_norm -> relu", true),
        ("input x: [32, 15, 17]\n    return x -> conv(64, k=3, stride=2, pad=1, groups=4) -> relu6", true),
        ("input x: [24, 9, 11]\n    a = x -> conv(24, k=3, pad=1, groups=3, bias=false) -> batch_norm\n    s = a + x\n    return s -> relu", true),
        ("input x: [16, 10, 13]\n    return x -> conv(16, k=(3, 5), pad=(2, 1, 0, 3), dilation=2, groups=2) -> silu", true),
        ("input x: [12, 8, 8]\n    return x -> conv(18, k=3, pad=1, groups=3)", false),
        ("input x: [128, 8, 8]\n    return x -> conv(128, k=3, pad=1, groups=2)", false),
    ];
    cases_match_candle_and_take(&cases, "grouped");
}

/// The randomized cases again on the code of CPUs with AVX2 and FMA but
/// without AVX-512 (ymm pixel-major tiles, no few-channel 1×1 path, ymm
/// activations), forced with `NETC_NO_AVX512` in a child process of this
/// test binary, so that a host with AVX-512 also checks what such CPUs run.
#[test]
fn avx2_code_matches_candle_over_random_shapes() {
    #[cfg(target_arch = "x86_64")]
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = false;
    if !avx512 || std::env::var_os("NETC_NO_AVX512").is_some() {
        // Without AVX-512 the test above already runs this code.
        return;
    }
    rerun_random_cases_with("NETC_NO_AVX512");
}

/// The randomized cases, and the lowering's fusions of squeeze-excitation
/// parts, again on the code of CPUs without AVX2 and FMA (portable
/// micro-kernel, baseline kernel entries, generated activations,
/// feature-major linear layers, the depthwise row path's portable loop),
/// forced with `NETC_CPU_BASELINE` in a child process: the choice is made
/// once per process.
#[test]
fn baseline_code_matches_candle_over_random_shapes() {
    if std::env::var_os("NETC_CPU_BASELINE").is_some() {
        return;
    }
    rerun_with(
        "NETC_CPU_BASELINE",
        &[
            "every_op_matches_candle_over_random_shapes",
            "scaled_inputs_of_pointwise_convolutions_match_candle",
            "global_pools_of_depthwise_outputs_match_candle",
        ],
    );
}

/// Runs `every_op_matches_candle_over_random_shapes` in a child process of
/// this test binary with `var` set (code paths are chosen once per process)
/// and asserts that it ran and passed.
fn rerun_random_cases_with(var: &str) {
    rerun_with(var, &["every_op_matches_candle_over_random_shapes"]);
}

/// Runs `tests` of this binary again in a child process with `var` set.
fn rerun_with(var: &str, tests: &[&str]) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(var, "1")
        .arg("--exact")
        .args(tests)
        .arg("--nocapture")
        .output()
        .expect("run the test binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{var}: {text}");
    let passed = format!("{} passed", tests.len());
    assert!(text.contains(&passed), "{var}: {text}");
}

/// Every zoo variant at a reduced resolution, guard pages on: any access
/// outside the arena or the weights faults; outputs match candle.
#[test]
fn zoo_runs_inside_its_buffers_and_matches_candle() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let s = p.file_stem().unwrap().to_string_lossy();
            // Family files define the networks that the variant files alias.
            !matches!(
                &*s,
                "resnet" | "vgg" | "densenet" | "efficientnet" | "convnext" | "vit" | "replknet"
            )
        })
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let res = if name.starts_with("vit") { 32 } else { 64 };
        let set = format!("resolution={res}");
        let mut model = Model::from_file(f, &[&set]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = run_both(&mut model, 2, 1, 2, 7);
        eprintln!("{name}: {err:.2e}");
        if err.is_nan() || err > TOLERANCE {
            failures.push(format!("{name}: {err:.2e}"));
        }
    }
    assert!(files.len() >= 29, "zoo files not found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// erf in f64 (Taylor series near 0, continued fraction for erfc beyond).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 2.5 {
        let (mut term, mut sum, mut n) = (a, a, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -a * a / n;
            sum += term / (2.0 * n + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Lentz's continued fraction for erfc.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = k as f64 / 2.0 / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    v.copysign(x)
}

fn reference(a: Activation, x: f64) -> f64 {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Gelu => {
            // 0.5·x·erfc(-x/√2), in the form that keeps relative accuracy for x < 0.
            let z = -x / std::f64::consts::SQRT_2;
            let erfc = if z > 0.0 {
                let mut f = 0.0;
                if z < 2.5 {
                    1.0 - erf(z)
                } else {
                    for k in (1..80).rev() {
                        f = k as f64 / 2.0 / (z + f);
                    }
                    (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
                }
            } else {
                1.0 - erf(z)
            };
            0.5 * x * erfc
        }
        Activation::GeluTanh => {
            x * sigmoid(2.0 * 0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x))
        }
        Activation::Silu => x * sigmoid(x),
        Activation::Sigmoid => sigmoid(x),
        Activation::Hardswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Hardsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::Tanh => x.tanh(),
    }
}

/// The activations (generated, and their AVX2 twins) are accurate to 1e-6 relative wherever the
/// result is a normal float and the function is well conditioned; for both
/// GELUs below -3 (results under 4e-3, condition number ≳ x²: rounding the
/// input alone moves the result by more than 1e-6) the bound is 4e-9 absolute,
/// i.e. 1e-6 of the largest result in that range.
#[test]
fn activations_are_accurate_on_both_paths() {
    let model = Model::from_source(
        "a.net",
        "network a() {\n    input x: [4]\n    return x -> relu\n}\n",
        Path::new("."),
        &[],
    )
    .unwrap();
    let session = model
        .session_with(&Weights::default(), &Backend::Cpu(CpuOptions::default()))
        .unwrap();
    let Program::Cpu(p) = session.program() else {
        unreachable!()
    };
    // Odd length: the scalar tail runs too.
    let xs: Vec<f32> = (0..=200_001)
        .map(|i| -20.0 + 40.0 * i as f32 / 200_001.0)
        .chain([0.0, -0.0, 1e-6, -1e-6, 1e-20, 87.0, -87.0, 100.0, -100.0])
        .collect();
    let mut report = Vec::new();
    // What this CPU runs (the AVX2 twins where it has AVX2 and FMA), and the
    // generated kernels that CPUs without them run.
    for (path, generated) in [("run", false), ("generated", true)] {
        for a in Activation::ALL {
            let mut ys = xs.clone();
            if generated {
                p.apply_generated_activation(a, &mut ys);
            } else {
                p.apply_activation(a, &mut ys);
            }
            let mut worst = 0f64;
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = reference(a, x as f64);
                let err = (y as f64 - want).abs();
                let ok = if want.abs() < 1e-30 {
                    err < 1e-30
                } else if matches!(a, Activation::Gelu | Activation::GeluTanh) && x < -3.0 {
                    err <= 4e-9
                } else {
                    let rel = err / want.abs();
                    worst = worst.max(rel);
                    rel <= 1e-6
                };
                assert!(ok, "{path} {}({x}) = {y}, want {want}", a.name());
            }
            report.push(format!("{path} {}: {worst:.1e}", a.name()));
        }
    }
    eprintln!("{}", report.join(", "));
}

/// A tensor without a batch axis is broadcast to every sample, so an
/// element-wise op or a fused residual add must not write its output over it:
/// sample 0's result would replace what sample 1 still reads. (The memory plan
/// counts sizes per sample, where the two look alike.)
#[test]
fn unbatched_operands_are_not_overwritten_in_place() {
    let src = "network t() {
    input x: [8, 3, 3]
    param a: [4, 3, 3]
    param b: [4, 3, 3]
    s = concat([a, b], axis=0)
    t = concat([b, a], axis=0)
    y = x + s
    z = x -> conv(8, k=1) -> batch_norm
    return (y + (z + t)) * x
}
";
    let mut model =
        Model::from_source("case.net", src, Path::new("."), &[]).unwrap_or_else(|e| panic!("{e}"));
    for level in [0, 2] {
        for batch in [1, 3] {
            let err = run_both(&mut model, level, batch, 2, 7);
            assert!(err <= TOLERANCE, "-O{level} batch {batch}: {err:.2e}");
        }
    }
}

/// `src` at -O0 and -O2, each at a random batch (1–3) and thread count
/// (1–2), within [`TOLERANCE`] of candle.
fn matches_candle_at_both_levels(r: &mut Rng, src: &str, seed: u64) {
    let mut model =
        Model::from_source("case.net", src, Path::new("."), &[]).unwrap_or_else(|e| panic!("{e}"));
    for level in [0, 2] {
        let batch = r.range(1, 3);
        let threads = r.range(1, 3);
        let err = run_both(&mut model, level, batch, threads, seed);
        assert!(
            err <= TOLERANCE,
            "{src}-O{level} batch {batch} threads {threads}: {err:.2e}"
        );
    }
}

/// Convolutions whose epilogue ends in a smooth activation (after batch
/// norm's bias) apply it over finished rows of positions on the in-place
/// paths (1×1 reading the input, windowed reading the padded input) and the
/// packed path (27 row panels), when the rows are long enough, and in the
/// tiles otherwise:
/// maps above and below that length, batches whose chunks cross samples.
#[test]
fn convolutions_with_a_smooth_activation_match_candle() {
    let mut r = Rng(78);
    for (cin, hw, cout, k, act) in [
        (16, 20, 40, 1, "silu"),
        (24, 9, 48, 1, "gelu"),
        (8, 17, 30, 3, "silu"),
        (12, 6, 20, 3, "sigmoid"),
        (32, 40, 96, 1, "silu"),
        // More row panels than the in-place 1×1 path takes: B packed.
        (32, 40, 160, 1, "silu"),
        (16, 15, 80, 3, "tanh"),
    ] {
        let src = format!(
            "network t() {{\n    input x: [{cin}, {hw}, {hw}]\n    return x -> conv({cout}, k={k}, pad={}, bias=false) -> batch_norm -> {act}\n}}\n",
            k / 2
        );
        matches_candle_at_both_levels(&mut r, &src, hw as u64);
    }
}

/// Linear layers whose epilogue ends in a smooth activation (no residual
/// after it) apply it over each finished block of rows rather than per tile
/// (`conv/token.rs`); the random cases above always add a residual. Token
/// counts that leave partial tiles and cross samples, features that are not a
/// multiple of 16, depths past one K block, with and without a bias.
#[test]
fn linear_layers_with_a_smooth_activation_match_candle() {
    let mut r = Rng(77);
    for (tokens, kin, kout, bias, act) in [
        (7, 40, 24, true, "gelu"),
        (50, 40, 64, true, "gelu"),
        (197, 300, 70, false, "silu"),
        (13, 520, 33, true, "sigmoid"),
        (64, 16, 400, true, "gelu(approximate=\"tanh\")"),
    ] {
        let src = format!(
            "network t() {{\n    input x: [{tokens}, {kin}]\n    return x -> linear({kout}, bias={bias}) -> {act}\n}}\n"
        );
        matches_candle_at_both_levels(&mut r, &src, tokens as u64);
    }
}

/// A squeeze-excitation scaling that feeds a pointwise convolution runs as
/// the convolution's weights scaled per input channel (`scale_columns`)
/// where the weights are small against the map, at batch 1, and matches
/// candle at batches 1 and 3 on one and two threads: the scale on either
/// side of the product, EfficientNet's block (depthwise, scaling,
/// projection, residual from the block's input), K past one block (300
/// channels). Not taken: a residual that is the scaled tensor itself (the
/// plan puts the output over it, and the convolution reads it), a map too
/// small for the weights.
#[test]
fn scaled_inputs_of_pointwise_convolutions_match_candle() {
    let se = |c: usize, squeeze: usize, x: &str| {
        format!("s = {x} -> global_avg_pool -> conv({squeeze}, k=1) -> silu -> conv({c}, k=1) -> sigmoid")
    };
    let cases = [
        (format!("input x: [32, 20, 20]\n    {}\n    y = x * s\n    return y -> conv(16, k=1, bias=false) -> batch_norm", se(32, 8, "x")), true),
        (format!("input x: [24, 9, 11]\n    h = x -> conv(24, k=3, pad=1, groups=24) -> silu\n    {}\n    y = s * h\n    z = y -> conv(24, k=1, bias=false) -> batch_norm\n    return z + x", se(24, 6, "h")), true),
        (format!("input x: [300, 12, 12]\n    {}\n    y = x * s\n    return y -> conv(30, k=1)", se(300, 20, "x")), true),
        (format!("input x: [24, 9, 11]\n    {}\n    y = x * s\n    z = y -> conv(24, k=1) -> batch_norm\n    return z + x", se(24, 6, "x")), false),
        (format!("input x: [64, 6, 6]\n    {}\n    y = x * s\n    return y -> conv(40, k=1)", se(64, 16, "x")), false),
    ];
    for (i, (body, takes)) in cases.iter().enumerate() {
        let (mut model, src) = case_matching_candle(i, body);
        let kernels = kernels_run(&mut model);
        assert_eq!(
            (
                kernels.contains(&"scale_columns"),
                kernels.contains(&"binary")
            ),
            (*takes, !*takes),
            "case {i}: kernels {kernels:?}\n{src}"
        );
    }
}

/// A global average pool of a depthwise convolution's output is computed
/// by the convolution as it finishes each plane (no `adaptive_pool`
/// kernel), and matches candle at batches 1 and 3 on one and two threads:
/// wide maps (the row path, stride 2 included) and narrow ones (channel
/// blocks, a partial block of eight), a smooth activation applied over the
/// plane first and a clamp in the registers, the output also read by a
/// squeeze-excitation's product.
#[test]
fn global_pools_of_depthwise_outputs_match_candle() {
    let cases = [
        "input x: [24, 60, 60]\n    h = x -> conv(24, k=3, pad=1, groups=24) -> silu\n    s = h -> global_avg_pool -> conv(6, k=1) -> silu -> conv(24, k=1) -> sigmoid\n    return h * s",
        "input x: [16, 57, 57]\n    h = x -> conv(16, k=3, stride=2, pad=1, groups=16, bias=false) -> batch_norm -> relu6\n    return h -> global_avg_pool",
        "input x: [20, 9, 9]\n    h = x -> conv(20, k=5, pad=2, groups=20) -> silu\n    s = h -> global_avg_pool -> conv(5, k=1) -> relu -> conv(20, k=1) -> sigmoid\n    return h * s",
        "input x: [12, 7, 7]\n    return x -> conv(12, k=3, pad=1, groups=12) -> global_avg_pool",
    ];
    for (i, body) in cases.iter().enumerate() {
        let (mut model, src) = case_matching_candle(i, body);
        let kernels = kernels_run(&mut model);
        assert!(
            kernels.contains(&"depthwise") && !kernels.contains(&"adaptive_pool"),
            "case {i}: kernels {kernels:?}\n{src}"
        );
    }
}
