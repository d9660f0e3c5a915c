//! The encoder layers on tiny random models: shapes, padding, pooling, the head,
//! MPNet's relative buckets, and config validation. No real weights needed.

mod common;

use std::path::Path;

use burn::prelude::*;
use common::{TINY_BERT, TINY_MPNET, config};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::error::RuntimeError;
use ftl::runtime::model::encoder::relative_position_bucket;
use ftl::runtime::model::{ClassificationHeadConfig, EncoderConfig, Pooling, cls_pool, mean_pool};
use safetensors::SafeTensors;

fn ints(values: Vec<i64>, shape: [usize; 2]) -> Tensor<Cpu, 2, Int> {
    Tensor::from_data(TensorData::new(values, shape), &cpu_device())
}

fn floats<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn forward_gives_one_state_per_token() {
    for json in [TINY_BERT, TINY_MPNET] {
        let encoder = config(json).init::<Cpu>(&cpu_device());
        let ids = ints(vec![2, 5, 7, 3, 2, 9, 3, 1], [2, 4]);
        let mask = ints(vec![1, 1, 1, 1, 1, 1, 1, 0], [2, 4]);
        let hidden = encoder.try_forward(ids, mask).unwrap();
        assert_eq!(hidden.dims(), [2, 4, 16]);
        assert!(floats(hidden).iter().all(|v| v.is_finite()));
    }
}

/// Padding a batch further must not change the states of real tokens: the mask
/// hides pad keys, and MPNet's positions count only non-pad tokens.
#[test]
fn extra_padding_leaves_token_states_unchanged() {
    for (json, pad) in [(TINY_BERT, 0), (TINY_MPNET, 1)] {
        let encoder = config(json).init::<Cpu>(&cpu_device());
        let short = encoder.forward(ints(vec![4, 5, 6], [1, 3]), ints(vec![1, 1, 1], [1, 3]));
        let long = encoder.forward(
            ints(vec![4, 5, 6, pad, pad], [1, 5]),
            ints(vec![1, 1, 1, 0, 0], [1, 5]),
        );
        let short = floats(short);
        let long = floats(long.slice(s![.., 0..3, ..]));
        let diff = short
            .iter()
            .zip(&long)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "padding changed token states by {diff}");
    }
}

#[test]
fn mpnet_positions_start_after_the_pad_id() {
    let encoder = config(TINY_MPNET).init::<Cpu>(&cpu_device());
    let positions = encoder
        .embeddings
        .position_ids(ints(vec![0, 7, 2, 1, 1], [1, 5]));
    let values: Vec<i64> = positions.into_data().convert::<i64>().to_vec().unwrap();
    assert_eq!(values, [2, 3, 4, 1, 1]);
}

#[test]
fn bad_inputs_are_errors() {
    let encoder = config(TINY_BERT).init::<Cpu>(&cpu_device());
    let error = encoder
        .try_forward(ints(vec![1, 2], [1, 2]), ints(vec![1, 1, 1], [1, 3]))
        .unwrap_err();
    assert_eq!(error.code(), "R010");
    let long = vec![1; 41];
    let error = encoder
        .try_forward(ints(long.clone(), [1, 41]), ints(long, [1, 41]))
        .unwrap_err();
    assert!(error.to_string().contains("at most 40"), "{error}");
}

#[test]
fn mean_pool_ignores_padding() {
    let device = cpu_device();
    let hidden = Tensor::<Cpu, 3>::from_data(
        TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 100.0, 100.0], [1, 3, 2]),
        &device,
    );
    let mask = ints(vec![1, 1, 0], [1, 3]);
    assert_eq!(floats(mean_pool(hidden.clone(), mask)), [2.0, 3.0]);
    assert_eq!(floats(cls_pool(hidden)), [1.0, 2.0]);
}

#[test]
fn head_is_reproducible_from_its_seed() {
    let device = cpu_device();
    let head =
        |seed| ClassificationHeadConfig::new(16, 3, Pooling::Mean, seed).init::<Cpu>(&device);
    let weights = |seed| floats(head(seed).classifier.weight.val());
    assert_eq!(weights(7), weights(7));
    assert_ne!(weights(7), weights(8));
    let w = weights(7);
    let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
    assert!((0.01..0.04).contains(&std), "std {std}");

    let encoder = config(TINY_BERT).init::<Cpu>(&device);
    let mask = ints(vec![1, 1, 1, 0], [1, 4]);
    let hidden = encoder.forward(ints(vec![2, 5, 3, 0], [1, 4]), mask.clone());
    let logits = head(7).forward(hidden, mask);
    assert_eq!(logits.dims(), [1, 3]);
}

/// The bucket of every relative position in -600..=600 equals upstream's.
#[test]
fn relative_buckets_match_upstream() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/mpnet_base.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let upstream: Vec<i64> = file
        .tensor("relative_buckets")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let ours: Vec<i64> = (-600..=600)
        .map(|r| relative_position_bucket(r, 32, 128))
        .collect();
    assert_eq!(ours, upstream);
}

#[test]
fn config_errors_name_the_field() {
    let path = Path::new("models/x/config.json");
    let bad = TINY_BERT.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    match EncoderConfig::from_json(&bad, path).unwrap_err() {
        RuntimeError::ConfigInvalid { field, .. } => assert_eq!(field, "hidden_size"),
        other => panic!("{other}"),
    }
    let gpt = TINY_BERT.replace("\"bert\"", "\"gpt2\"");
    assert_eq!(
        EncoderConfig::from_json(&gpt, path).unwrap_err().code(),
        "R004"
    );
    let error = EncoderConfig::from_json("{\"model_type\": \"bert\"}", path).unwrap_err();
    assert_eq!(error.code(), "R002");
    assert!(
        error.to_string().contains("models/x/config.json"),
        "{error}"
    );
    let relu = TINY_BERT.replace("\"gelu\"", "\"relu\"");
    assert_eq!(
        EncoderConfig::from_json(&relu, path).unwrap_err().code(),
        "R003"
    );
}

/// `model.dropout` reaches every dropout of the encoder: at 0 a training-mode
/// forward pass no longer depends on the random stream; at 0.5 it does.
#[test]
fn encoder_dropout_can_be_set_for_the_whole_encoder() {
    type Train = burn::backend::Autodiff<Cpu>;
    let device = cpu_device();
    let ids = Tensor::<Train, 2, Int>::from_data(
        TensorData::new(vec![2i64, 5, 7, 3, 2, 9, 3, 1], [2, 4]),
        &device,
    );
    let mask = Tensor::<Train, 2, Int>::from_data(
        TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 0], [2, 4]),
        &device,
    );
    for json in [TINY_BERT, TINY_MPNET] {
        let mut encoder = config(json).init::<Train>(&device);
        let pass = |encoder: &ftl::runtime::model::Encoder<Train>, seed: u64| -> Vec<f32> {
            <Train as burn::tensor::backend::Backend>::seed(&device, seed);
            encoder
                .forward(ids.clone(), mask.clone())
                .inner()
                .into_data()
                .to_vec()
                .unwrap()
        };
        encoder.set_dropout(0.5);
        assert_ne!(pass(&encoder, 1), pass(&encoder, 2), "dropout is active");
        encoder.set_dropout(0.0);
        assert_eq!(pass(&encoder, 1), pass(&encoder, 2), "no dropout anywhere");
    }
}
