//! Loading checkpoints: a torchvision-style export loads unchanged; every kind of
//! bad file is a clear error naming the tensor (and the layer's source), never a panic.

use netc_runtime::{HostTensor, Model, Weights};
use std::path::PathBuf;

fn model() -> Model {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/resnet18.net");
    Model::from_file(path, &["resolution=32"]).unwrap()
}

/// Serializes tensors the way safetensors.torch.save_file does, with an optional dtype.
fn encode(tensors: &[(&str, Vec<usize>, Vec<f32>)], dtype: &str) -> Vec<u8> {
    let typed: Vec<(&str, Vec<usize>, Vec<f32>, &str)> = tensors
        .iter()
        .map(|(n, s, v)| (*n, s.clone(), v.clone(), dtype))
        .collect();
    encode_typed(&typed)
}

fn encode_typed(tensors: &[(&str, Vec<usize>, Vec<f32>, &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values, dtype) in tensors {
        let dtype = *dtype;
        let start = data.len();
        for v in values {
            match dtype {
                "F32" => data.extend(v.to_le_bytes()),
                "F16" => data.extend(half_bits(*v, false).to_le_bytes()),
                "BF16" => data.extend(half_bits(*v, true).to_le_bytes()),
                "I64" => data.extend((*v as i64).to_le_bytes()),
                _ => unreachable!(),
            }
        }
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// f16 / bf16 bit patterns (exact for the small values used here).
fn half_bits(v: f32, bf16: bool) -> u16 {
    if bf16 {
        (v.to_bits() >> 16) as u16
    } else {
        let b = v.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
        let man = ((b >> 13) & 0x3ff) as u16;
        if v == 0.0 {
            sign
        } else {
            sign | ((exp as u16) << 10) | man
        }
    }
}

fn checkpoint(m: &Model, dtype: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let w = Weights::deterministic(m.elaborated(), 1);
    let v: Vec<(String, Vec<usize>, Vec<f32>)> = w
        .keys()
        .into_iter()
        .map(|k| {
            let t = w.get(k).unwrap();
            // Values exactly representable in bf16/f16 when converting.
            let data = if dtype == "F32" {
                t.data.clone()
            } else {
                t.data.iter().map(|x| (x * 64.0).round() / 64.0).collect()
            };
            (k.to_string(), t.shape.clone(), data)
        })
        .collect();
    v
}

fn as_refs(v: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<(&str, Vec<usize>, Vec<f32>)> {
    v.iter()
        .map(|(a, b, c)| (a.as_str(), b.clone(), c.clone()))
        .collect()
}

fn load(m: &Model, bytes: &[u8]) -> Result<Weights, String> {
    Weights::from_bytes(bytes, "test.safetensors", m.elaborated())
        .map_err(|d| netc_grammar::render_plain(&d, m.sources()))
}

#[test]
fn a_state_dict_export_loads_including_num_batches_tracked() {
    let m = model();
    let t = checkpoint(&m, "F32");
    let ok = load(&m, &encode(&as_refs(&t), "F32")).unwrap();
    assert_eq!(ok.len(), t.len());
    // torch's state_dict also carries BatchNorm counters (int64 scalars): ignored.
    let mut typed: Vec<(&str, Vec<usize>, Vec<f32>, &str)> = t
        .iter()
        .map(|(k, s, v)| (k.as_str(), s.clone(), v.clone(), "F32"))
        .collect();
    typed.push(("bn1.num_batches_tracked", vec![], vec![0.0], "I64"));
    let mut bytes = encode_typed(&typed);
    assert!(load(&m, &bytes).is_ok());
    bytes.truncate(bytes.len() - 10);
    let e = load(&m, &bytes).unwrap_err();
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn f16_and_bf16_are_converted() {
    let m = model();
    for dtype in ["F16", "BF16"] {
        let t = checkpoint(&m, dtype);
        let w = load(&m, &encode(&as_refs(&t), dtype)).unwrap_or_else(|e| panic!("{dtype}: {e}"));
        let (k, _, v) = &t[0];
        let got = &w.get(k).unwrap().data;
        assert!(
            got.iter()
                .zip(v)
                .all(|(a, b)| (a - b).abs() <= 1e-2 * b.abs().max(1e-3)),
            "{dtype}"
        );
    }
}

#[test]
fn missing_unexpected_misshapen_and_mistyped_tensors_are_named() {
    let m = model();
    let mut t = checkpoint(&m, "F32");
    t.retain(|(k, _, _)| k != "layer1.0.conv1.weight");
    t.push(("layer9.extra.weight".into(), vec![2], vec![0.0, 1.0]));
    for (k, s, v) in t.iter_mut() {
        if k == "fc.weight" {
            *s = vec![10, 512];
            v.truncate(5120);
        }
    }
    let e = load(&m, &encode(&as_refs(&t), "F32")).unwrap_err();
    assert!(e.contains("has no tensor `layer1.0.conv1.weight`"), "{e}");
    assert!(e.contains("resnet.net"), "the layer's source is shown: {e}");
    assert!(e.contains("`fc.weight` has shape [10, 512]"), "{e}");
    assert!(e.contains("layer9.extra.weight"), "{e}");
    let ints = load(&m, &encode(&as_refs(&checkpoint(&m, "F32")), "I64")).unwrap_err();
    assert!(ints.contains("has dtype I64"), "{ints}");
    assert!(ints.contains("f32, f16 and bf16"), "{ints}");
}

#[test]
fn garbage_and_empty_files_are_errors() {
    let m = model();
    for bytes in [
        vec![],
        vec![0xff; 7],
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}".to_vec(),
        vec![0xff; 64],
    ] {
        assert!(load(&m, &bytes).is_err());
    }
}

#[test]
fn one_session_runs_from_several_threads() {
    let m = model();
    let s = m.session_with_random_weights(5).unwrap();
    let x = HostTensor {
        shape: vec![2, 3, 32, 32],
        data: (0..6144).map(|i| (i % 17) as f32 / 17.0).collect(),
    };
    let first = s.run(std::slice::from_ref(&x)).unwrap();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| s.run(std::slice::from_ref(&x)).unwrap()))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap()[0].data, first[0].data);
        }
    });
    // A wrong input shape is an error, not a panic.
    let bad = HostTensor::zeros(&[1, 3, 31, 32]);
    let e = s.run(&[bad]).unwrap_err();
    assert!(
        e.rendered.contains("expects [N, 3, 32, 32]"),
        "{}",
        e.rendered
    );
}
