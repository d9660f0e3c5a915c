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
use ftl::runtime::model::{EncoderConfig, load_encoder, mean_pool};

#[path = "random_weights.rs"]
mod random_weights;
use random_weights::{MINILM, MPNET, lcg, write_random_weights};

const BATCH: usize = 32;
const SEQ: usize = 64;

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
