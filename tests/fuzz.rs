//! Property tests: the parser and elaborator never panic, hang or allocate without
//! bound, whatever the input. Inputs are zoo sources under random mutations
//! (token insertions, deletions, duplications, number changes) and random text.
//! Every outcome must be a graph that passes the verifier or diagnostics that
//! render.

use netc_compiler::elaborate::{elaborate, Options, Source};
use netc_grammar::{render_plain, SourceMap};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// Every zoo model as one self-contained source: a thin file's imports are
/// inlined, so mutations reach elaboration instead of failing on a missing import.
fn seeds() -> Vec<(String, Option<String>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(models())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let network = text.contains(&format!("network {stem}")).then_some(stem);
            let mut out = String::new();
            for line in text.lines() {
                match line
                    .trim()
                    .strip_prefix("import \"")
                    .and_then(|r| r.strip_suffix('"'))
                {
                    Some(file) => {
                        out.push_str(&std::fs::read_to_string(models().join(file)).unwrap())
                    }
                    None => out.push_str(line),
                }
                out.push('\n');
            }
            (out, network)
        })
        .collect()
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    "->",
    ":",
    "=",
    "==",
    "..",
    "**",
    "-",
    "+",
    "*",
    "/",
    "//",
    "x",
    "conv",
    "relu",
    "repeat",
    "dense",
    "fork",
    "each",
    "if",
    "else",
    "for",
    "in",
    "let",
    "return",
    "block",
    "network",
    "input",
    "param",
    "0",
    "-1",
    "3",
    "999999999",
    "1e308",
    "0.5",
    "\"",
    "\"{i}\"",
    "true",
    "[]",
    "()",
    "channels(x)",
    "concat",
    "split(3)",
    "k=",
    "groups=7",
    "stride=0",
    "import \"nope.net\"",
    "\n",
    " ",
    "#",
    "/*",
];

fn check(text: &str, network: Option<&str>) {
    let mut sources = SourceMap::new();
    let base = models();
    let src = Source::Text {
        name: "fuzz.net",
        text,
        base: &base,
    };
    let opts = Options {
        network: network.map(str::to_string),
        set: Vec::new(),
    };
    match elaborate(src, &opts, &mut sources) {
        Ok(g) => {
            if std::env::var_os("NETC_FUZZ_STATS").is_some() {
                eprintln!("fuzz-outcome ok");
            }
            let problems = netc_compiler::verify::verify(&g);
            assert!(
                problems.is_empty(),
                "verifier: {problems:?}\n--- input:\n{text}"
            );
            let _ = netc_compiler::stats::totals(&g);
            let _ = netc_compiler::print::print(&g, Some(&sources));
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            if std::env::var_os("NETC_FUZZ_STATS").is_some() {
                eprintln!("fuzz-outcome {}", diags[0].code);
            }
            let _ = render_plain(&diags, &sources);
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, usize),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Digit(usize, u8),
}

fn mutate(seed: &str, muts: &[Mutation]) -> String {
    let mut s: Vec<u8> = seed.as_bytes().to_vec();
    for m in muts {
        let n = s.len().max(1);
        match *m {
            Mutation::Insert(at, tok) => {
                let at = at % n;
                let t = TOKENS[tok % TOKENS.len()].as_bytes();
                s.splice(at..at, t.iter().copied());
            }
            Mutation::Delete(at, len) => {
                let at = at % n;
                let end = (at + len % 16).min(s.len());
                s.drain(at..end);
            }
            Mutation::Duplicate(at, len) => {
                let at = at % n;
                let end = (at + len % 64).min(s.len());
                let piece: Vec<u8> = s[at..end].to_vec();
                s.splice(at..at, piece);
            }
            Mutation::Digit(at, d) => {
                // Change a digit, to reach shape and limit errors deep in elaboration.
                if let Some(pos) = s[at % n..].iter().position(u8::is_ascii_digit) {
                    let i = at % n + pos;
                    s[i] = b'0' + d % 10;
                }
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Delete(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Digit(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_zoo_sources_never_panic(which in any::<usize>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let (seed, network) = &seeds[which % seeds.len()];
        check(&mutate(seed, &muts), network.as_deref());
    }

    /// Changing only digits keeps the syntax valid, so these inputs exercise
    /// elaboration: shape errors, limits, huge and zero sizes.
    #[test]
    fn mutated_numbers_never_panic(which in any::<usize>(), muts in prop::collection::vec((any::<usize>(), any::<u8>()), 1..5)) {
        let seeds = seeds();
        let (seed, network) = &seeds[which % seeds.len()];
        let muts: Vec<Mutation> = muts.into_iter().map(|(a, d)| Mutation::Digit(a, d)).collect();
        check(&mutate(seed, &muts), network.as_deref());
    }

    #[test]
    fn token_soup_never_panics(toks in prop::collection::vec(0..TOKENS.len(), 0..80)) {
        let text: String = toks.iter().map(|&t| TOKENS[t]).collect::<Vec<_>>().join(" ");
        check(&text, None);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check(&text, None);
    }
}

#[test]
fn every_zoo_model_elaborates_and_verifies() {
    for (seed, network) in seeds() {
        check(&seed, network.as_deref());
    }
}
