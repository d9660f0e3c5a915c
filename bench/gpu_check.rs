//! Runs MiniLM- and MPNet-shaped encoders (random weights, loaded through the
//! safetensors loader) on the CPU backend and, when a CUDA device is present, on
//! the CUDA backend; prints their largest difference and the GPU throughput at
//! batch 32 × 64 tokens. Without a GPU it says so and exits 0.
//!
//! `cargo run --release --example gpu_check [BATCHES]`

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::model::loader::expected_tensors;
use ftl::runtime::model::{EncoderConfig, load_encoder, mean_pool};

const MINILM: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
  "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
  "max_position_embeddings": 512, "type_vocab_size": 2, "pad_token_id": 0, "layer_norm_eps": 1e-12}"#;
const MPNET: &str = r#"{"model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768,
  "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
  "max_position_embeddings": 514, "pad_token_id": 1, "layer_norm_eps": 1e-5,
  "relative_attention_num_buckets": 32}"#;
const BATCH: usize = 32;
const SEQ: usize = 64;

/// A small deterministic generator for weights and ids.
fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn write_random_weights(path: &Path, config: &EncoderConfig) {
    let mut state = 42u64;
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(config)
        .into_iter()
        .map(|t| {
            let n: usize = t.stored.iter().product();
            let is_gamma = t.path.ends_with("gamma");
            let bytes = (0..n)
                .flat_map(|_| {
                    let v = lcg(&mut state) * 0.1 + if is_gamma { 1.0 } else { 0.0 };
                    v.to_le_bytes()
                })
                .collect();
            (t.upstream, t.stored, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                    .expect("consistent view");
            (name.clone(), view)
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serializes"),
    )
    .expect("writes");
}

fn inputs(config: &EncoderConfig) -> (Vec<i64>, Vec<i64>) {
    let mut state = 7u64;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in 0..BATCH {
        let len = 4 + (row * 7) % (SEQ - 4);
        for col in 0..SEQ {
            let token = col < len;
            let id = ((lcg(&mut state) + 0.5) * (config.vocab_size - 10) as f32) as i64 + 5;
            ids.push(if token {
                id
            } else {
                config.pad_token_id as i64
            });
            mask.push(token as i64);
        }
    }
    (ids, mask)
}

fn pooled<B: Backend>(
    path: &Path,
    config: &EncoderConfig,
    device: &B::Device,
    batches: usize,
) -> (Vec<f32>, f64, f64, f64) {
    let started = Instant::now();
    let (encoder, _) = load_encoder::<B>(path, config, device).expect("loads");
    let load = started.elapsed().as_secs_f64();
    let (ids, mask) = inputs(config);
    let run = || {
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [BATCH, SEQ]), device);
        let mask =
            Tensor::<B, 2, Int>::from_data(TensorData::new(mask.clone(), [BATCH, SEQ]), device);
        let out = mean_pool(encoder.forward(ids, mask.clone()), mask);
        out.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32")
    };
    let started = Instant::now();
    let first = run();
    let first_batch = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..batches {
        run();
    }
    let rate = (batches * BATCH) as f64 / started.elapsed().as_secs_f64();
    (first, load, first_batch, rate)
}

fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("ftl-gpu-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, json) in [("minilm-shaped", MINILM), ("mpnet-shaped", MPNET)] {
        let config = EncoderConfig::from_json(json, Path::new("config.json")).expect("valid");
        let path = dir.join(format!("{name}.safetensors"));
        write_random_weights(&path, &config);
        let (cpu, cpu_load, cpu_first, cpu_rate) =
            pooled::<Cpu>(&path, &config, &cpu_device(), batches);
        println!(
            "{name}: cpu load {cpu_load:.2} s, first batch {cpu_first:.2} s, {cpu_rate:.1} sentences/s"
        );
        #[cfg(feature = "cuda")]
        {
            use ftl::runtime::backend::{Gpu, cuda_available};
            if !cuda_available() {
                println!("{name}: no CUDA driver; CPU only");
                continue;
            }
            let gpu = std::panic::catch_unwind(|| {
                let device = burn::backend::cuda::CudaDevice::new(0);
                pooled::<Gpu>(&path, &config, &device, batches * 20)
            });
            match gpu {
                Ok((gpu, load, first_batch, rate)) => {
                    let diff = cpu
                        .iter()
                        .zip(&gpu)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    println!(
                        "{name}: cuda load {load:.2} s, first batch {first_batch:.2} s, {rate:.1} sentences/s, max |cpu - cuda| pooled {diff:e}"
                    );
                }
                Err(_) => println!("{name}: no usable CUDA device; CPU only"),
            }
        }
        #[cfg(not(feature = "cuda"))]
        let _ = cpu;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
