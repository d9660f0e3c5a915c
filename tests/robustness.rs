//! Random and mutated inputs: the front end never panics and never hangs,
//! and whatever parses formats to text that parses to the same tree shape.
//! Bounded for CI; `tests/fuzz/` holds a cargo-fuzz target for long runs.

use ftl::project::MemoryLoader;
use ftl::span::Sources;
use proptest::prelude::*;

/// Runs every stage on `text` as the entry file; panics are the failure.
fn all_stages(text: &str) {
    let loader = MemoryLoader::new([("main.ft", text), ("lib/other.ft", "let x = 1\n")]);
    let mut sources = Sources::new();
    if let Ok(checked) = ftl::check("main.ft", &loader, &mut sources, "") {
        let _ = ftl::lower(&checked, &sources);
    }
    let mut s2 = Sources::new();
    let id = s2.add("main.ft", text);
    if let Ok(ast) = ftl::parse(id, text) {
        let once = ftl::fmt::format(&ast, text);
        let id2 = s2.add("formatted", once.clone());
        let ast2 = ftl::parse(id2, &once).unwrap_or_else(|d| {
            panic!("formatted text does not parse: {d:?}\n--- input\n{text}\n--- output\n{once}")
        });
        assert_eq!(
            ftl::fmt::format(&ast2, &once),
            once,
            "formatting is not idempotent for {text:?}"
        );
    }
    // Rendering must not panic either, whatever the spans.
    let mut s3 = Sources::new();
    if let Err(d) = ftl::check("main.ft", &loader, &mut s3, "") {
        let _ = ftl::render::render(&d, &s3, false);
    }
}

fn seeds() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["pipelines", "tests/cases"] {
        for e in std::fs::read_dir(root.join(dir)).expect("dir").flatten() {
            if e.path().extension().is_some_and(|x| x == "ft") {
                out.push(std::fs::read_to_string(e.path()).expect("read"));
            }
        }
    }
    out.sort();
    out
}

/// Pieces of the language, so random text often gets past the first token.
const TOKENS: &[&str] = &[
    "pipeline",
    "model",
    "dataset",
    "import",
    "let",
    "extends",
    "as",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    "=",
    ",",
    ".",
    "\"std/models\"",
    "models.minilm_l6",
    "lora",
    "qlora",
    "full",
    "rank",
    "8",
    "2e-4",
    "6%",
    "8GiB",
    "90s",
    "true",
    "#c\n",
    "\n",
    " ",
    "\"s\\q\"",
    "sweep",
    "method",
    "train",
    "base",
    "-",
    "_",
    "é",
    "\"",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..60)) {
        all_stages(&tokens.join(" "));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        all_stages(&text);
    }

    #[test]
    fn mutated_examples_never_panic(seed in 0usize..1000, cuts in prop::collection::vec((0usize..4000, 0usize..12, prop::sample::select(TOKENS)), 1..6)) {
        let seeds = seeds();
        let mut text = seeds[seed % seeds.len()].clone();
        for (at, len, insert) in cuts {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            let mut end = (at + len).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(at..end.max(at), insert);
        }
        all_stages(&text);
    }
}

#[test]
fn deep_nesting_does_not_overflow() {
    let deep = format!("let x = {}1{}\n", "[".repeat(2000), "]".repeat(2000));
    all_stages(&deep);
}
