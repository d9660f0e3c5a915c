//! The tokenizer's overrides on a tiny WordPiece `tokenizer.json` that, like the
//! sentence-transformers files, pads every input to a fixed 128.

use std::path::{Path, PathBuf};

use ftl::runtime::tokenize::TextTokenizer;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tiny_wordpiece.json")
}

#[test]
fn pads_to_the_longest_in_the_batch_with_a_mask() {
    let tokenizer = TextTokenizer::from_file(&fixture(), 64, 0).unwrap();
    let batch = tokenizer.encode_batch(&["Hello world.", "a"]).unwrap();
    assert_eq!((batch.batch, batch.seq), (2, 5));
    assert_eq!(batch.ids, [2, 4, 5, 6, 3, 2, 7, 3, 0, 0]);
    assert_eq!(batch.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
    assert_eq!(batch.tokens(1), [2, 7, 3]);
}

#[test]
fn truncates_to_max_tokens_keeping_special_tokens() {
    let tokenizer = TextTokenizer::from_file(&fixture(), 4, 0).unwrap();
    let batch = tokenizer
        .encode_batch(&["hello world hello world cafes"])
        .unwrap();
    assert_eq!(batch.ids, [2, 4, 5, 3]);
}

#[test]
fn unknown_words_and_empty_text() {
    let tokenizer = TextTokenizer::from_file(&fixture(), 16, 0).unwrap();
    let batch = tokenizer.encode_batch(&["café zebra", ""]).unwrap();
    assert_eq!(batch.tokens(0), [2, 8, 1, 3]);
    assert_eq!(batch.tokens(1), [2, 3]);
}

#[test]
fn bad_files_are_errors() {
    let missing = TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json"), 16, 0);
    assert_eq!(missing.err().unwrap().code(), "R001");
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("tokenizer.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let error = TextTokenizer::from_file(&broken, 16, 0).err().unwrap();
    assert_eq!(error.code(), "R011");
    assert!(error.to_string().contains("tokenizer.json"));
    assert_eq!(
        TextTokenizer::from_file(&fixture(), 1, 0)
            .err()
            .unwrap()
            .code(),
        "R011"
    );
}
