use netc_grammar::{parse, FileId};

const SAMPLE: &str = r#"
// A ResNeXt bottleneck.
import "common.net"
let EPS = 1e-5
enum Act { relu, silu }
block Bottleneck(planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64, k: (int, int) = (3, 3)) {
    let width = planes * width_per_group / 64 * groups
    let out = planes * 4
    main = x -> conv1: conv(width, k=1) -> bn1: batch_norm -> relu
             -> conv2: conv(width, k=3, stride=stride, pad=1, groups=groups) -> bn2: batch_norm -> relu
             -> conv3: conv(out, k=1) -> bn3: batch_norm
    skip = if stride != 1 or channels(x) != out { x -> downsample: [conv(out, k=1, stride=stride), batch_norm] } else { x }
    return relu(main + skip)
}
network Net(res: int = 224) {
    input image: [3, res, res]
    x = image -> features: [
        stem: conv(32, k=3),
        ..[Bottleneck(64 * 2 ** 1) for i in range(3) if i > 0],
        if res > 100 { extra: conv(8, k=1) },
        "layer{i + 1}": repeat 3 as j { Bottleneck(64, stride = if j == 0 { 2 } else { 1 }) },
        dense 6 as i { "denselayer{i+1}": DenseLayer(32) },
    ]
    for (i, c) in enumerate([1, 2]) { x = x -> fork { a: conv(c, k=1), b: conv(c, k=1) } -> concat }
    x = x -> split(4) -> each as g { conv(1, k=3, pad=1) } -> concat
    x = x -> fork 4 { conv(4, k=1) } -> sum
    return x -> global_avg_pool -> flatten -> fc: linear(1000)
}
network Small = Net(res = 32)
"#;

#[test]
fn parses_the_language_tour() {
    let f = parse(FileId(0), SAMPLE);
    assert!(f.is_ok(), "{:?}", f.err());
    assert_eq!(f.unwrap().items.len(), 6);
}

#[test]
fn syntax_errors_say_what_was_expected() {
    let e = parse(FileId(0), "block A() { x = conv(3, k=) }").unwrap_err();
    assert!(
        e.message.starts_with("syntax error: expected"),
        "{}",
        e.message
    );
    assert_eq!(e.help.as_deref(), Some("a value is missing after `=`"));
}

#[test]
fn deep_nesting_is_rejected_not_overflowed() {
    let src = format!("let a = {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let e = parse(FileId(0), &src).unwrap_err();
    assert_eq!(e.code, "netc::nesting_too_deep");
}
