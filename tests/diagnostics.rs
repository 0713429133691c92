//! Every diagnostic the front-end promises, rendered as a user sees it (plain
//! text, no colours) and snapshotted. Each case also checks the code and that
//! the failure is an error, never a panic.

use netc_compiler::elaborate::{elaborate, Options, Source};
use netc_grammar::{render_plain, SourceMap};
use std::path::Path;

/// Elaborates `text` (as `test.net` in tests/diagnostics/) and returns the codes and rendering.
fn diagnose(text: &str, set: &[&str]) -> (Vec<&'static str>, String) {
    let mut sources = SourceMap::new();
    // Relative (cargo runs tests from the package root) so messages naming
    // paths are the same on every checkout.
    let base = Path::new("tests/diagnostics");
    let opts = Options {
        network: None,
        set: set.iter().map(|s| s.to_string()).collect(),
    };
    let src = Source::Text {
        name: "test.net",
        text,
        base,
    };
    match elaborate(src, &opts, &mut sources) {
        Ok(_) => panic!("expected diagnostics for:\n{text}"),
        Err(diags) => (
            diags.iter().map(|d| d.code).collect(),
            render_plain(&diags, &sources),
        ),
    }
}

macro_rules! case {
    ($name:ident, $code:literal, $src:expr) => {
        case!($name, $code, $src, &[]);
    };
    ($name:ident, $code:literal, $src:expr, $set:expr) => {
        #[test]
        fn $name() {
            let (codes, text) = diagnose($src, $set);
            assert_eq!(codes[0], $code, "{text}");
            insta::assert_snapshot!(stringify!($name), text);
        }
    };
}

const NET: &str = "network N(width: int = 8) {\n    input image: [3, 32, 32]\n    return image -> Body(width)\n}\n";

fn with_body(body: &str) -> String {
    format!("block Body(c: int) {{\n{body}\n}}\n{NET}")
}

case!(
    syntax_error_says_what_was_expected,
    "netc::syntax",
    "block Body(c: int) {\n    y = x -> conv(c, k=) -> relu\n    return y\n}\n"
);

case!(
    syntax_error_at_end_of_file,
    "netc::syntax",
    "network N() {\n    input image: [3, 32, 32]\n    return image -> relu\n"
);

case!(
    unknown_name_suggests_the_nearest,
    "netc::unknown_name",
    &with_body("    y = x -> conv(c, k=3, pad=1) -> batchnorm -> relu\n    return y")
);

case!(unknown_block_suggests_the_nearest, "netc::unknown_name",
    "block Bottleneck(c: int) {\n    return x -> conv(c, k=1)\n}\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> Bottlenek(8)\n}\n");

case!(
    unknown_op_suggests_the_nearest,
    "netc::unknown_name",
    &with_body("    return x -> conv(c, k=3) -> max_pol(2)")
);

case!(
    several_errors_are_reported_in_one_run,
    "netc::unknown_name",
    &with_body("    y = x -> conv(c, k=3) -> batchnorm\n    return y -> rleu -> linnear(10)")
);

case!(
    unknown_argument_name,
    "netc::unknown_argument",
    &with_body("    return x -> conv(c, kernel=3)")
);

case!(wrong_argument_count_for_a_block, "netc::arity",
    "block Body(c: int) {\n    return x -> conv(c, k=1)\n}\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> Body(8, 3)\n}\n");

case!(
    wrong_argument_type_for_an_op,
    "netc::type",
    &with_body("    return x -> conv(c, k=3, bias=1)")
);

case!(wrong_argument_type_for_a_block, "netc::type",
    "block Body(c: int, act: activation = relu) {\n    return x -> conv(c, k=1) -> act\n}\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> Body(8, act = 2.5)\n}\n");

case!(
    non_integral_float_for_an_int,
    "netc::type",
    "network N() {\n    input image: [3, 32, 32]\n    return image -> conv(32 * 0.3, k=1)\n}\n"
);

case!(missing_argument, "netc::missing_argument",
    "block Body(c: int) {\n    return x -> conv(c, k=1)\n}\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> Body()\n}\n");

case!(recursive_block_definition, "netc::recursive_block",
    "block A(c: int) {\n    return x -> B(c)\n}\nblock B(c: int) {\n    return x -> conv(c, k=1) -> A(c)\n}\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> A(8)\n}\n");

case!(
    shape_mismatch_in_add_labels_both_operands,
    "netc::shape_mismatch",
    &with_body("    y = x -> conv(c, k=3, pad=1) -> relu\n    return y + (x -> conv(c * 2, k=1))")
);

case!(
    shape_mismatch_in_concat,
    "netc::shape_mismatch",
    &with_body("    return x -> fork { a: conv(c, k=3, pad=1), b: conv(c, k=3) } -> concat")
);

case!(
    shape_mismatch_in_matmul,
    "netc::shape_mismatch",
    "network N() {\n    input a: [4, 8]\n    input b: [6, 5]\n    return matmul(a, b)\n}\n"
);

case!(
    channels_not_divisible_by_groups,
    "netc::groups",
    &with_body("    return x -> conv(c, k=3, pad=1, groups=2)")
);

case!(
    kernel_larger_than_padded_input,
    "netc::kernel_too_large",
    &with_body("    return x -> conv(c, k=7, stride=4) -> conv(c, k=9)")
);

case!(
    repeat_count_over_the_limit,
    "netc::limit",
    &with_body("    return x -> repeat 1000000 { relu }")
);

case!(
    tensor_size_over_the_limit,
    "netc::tensor_too_large",
    "network N() {\n    input image: [3, 65536, 65536]\n    return image -> relu\n}\n"
);

case!(
    activation_size_over_the_limit,
    "netc::tensor_too_large",
    "network N() {\n    input image: [3, 4096, 4096]\n    return image -> conv(256, k=1)\n}\n"
);

case!(
    set_of_an_unknown_parameter,
    "netc::unknown_argument",
    NET_WITH_BODY,
    &["widht=4"]
);

case!(
    set_with_a_syntax_error,
    "netc::bad_set",
    NET_WITH_BODY,
    &["width=(4"]
);

case!(
    set_with_the_wrong_type,
    "netc::type",
    NET_WITH_BODY,
    &["width=\"wide\""]
);

case!(
    set_without_equals,
    "netc::bad_set",
    NET_WITH_BODY,
    &["width"]
);

case!(missing_import, "netc::missing_import",
    "import \"commn.net\"\nnetwork N() {\n    input image: [3, 32, 32]\n    return image -> relu\n}\n");

case!(
    duplicate_parameter_key,
    "netc::duplicate_parameter",
    &with_body("    return x -> conv1: conv(c, k=1) -> conv1: conv(c, k=1)")
);

case!(
    tensor_used_as_a_layer,
    "netc::type",
    &with_body("    y = x -> relu\n    return x -> y")
);

case!(
    list_index_out_of_range,
    "netc::index",
    &with_body("    let sizes = [1, 2, 3]\n    return x -> conv(c, k=sizes[3])")
);

case!(
    condition_must_be_bool,
    "netc::type",
    &with_body("    return if c { x } else { x -> relu }")
);

const NET_WITH_BODY: &str = "block Body(c: int) {\n    return x -> conv(c, k=1)\n}\nnetwork N(width: int = 8) {\n    input image: [3, 32, 32]\n    return image -> Body(width)\n}\n";
