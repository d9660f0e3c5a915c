//! Loading safetensors weights: the happy path on tiny models, and every way a
//! file can be wrong, each of which must be an error naming the file or tensor.

mod common;

use common::{TINY_BERT, TINY_MPNET, config, value, write_weights};
use ftl::runtime::backend::{Cpu, cpu_device};
use ftl::runtime::error::RuntimeError;
use ftl::runtime::model::loader::expected_tensors;
use ftl::runtime::model::{load_encoder, load_model_dir};

/// Element (out 3, in 5) of layer 1's query weight: as loaded (burn holds
/// `[in, out]`) and as written by `write_weights` (upstream stores `[out, in]`).
fn query_element(
    encoder: &ftl::runtime::model::Encoder<Cpu>,
    config: &ftl::runtime::model::EncoderConfig,
) -> (f32, f32) {
    let index = expected_tensors(config)
        .iter()
        .position(|t| t.path == "layers.1.attention.query.weight")
        .unwrap();
    let weight: Vec<f32> = encoder.layers[1]
        .attention
        .query
        .base_weight()
        .into_data()
        .to_vec()
        .unwrap();
    let h = config.hidden_size;
    let (out, inp) = (3, 5);
    (weight[inp * h + out], value(index, out * h + inp))
}

#[test]
fn loads_every_tensor_and_transposes_linear_weights() {
    for json in [TINY_BERT, TINY_MPNET] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(json);
        let path = dir.path().join("model.safetensors");
        write_weights(&path, &config, |_| {});
        let (encoder, report) = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap();
        let expected = expected_tensors(&config);
        assert_eq!(report.tensors, expected.len());
        assert_eq!(
            report.skipped,
            [
                "embeddings.position_ids",
                "pooler.dense.bias",
                "pooler.dense.weight"
            ]
        );
        assert!(report.unused.is_empty());

        // Stored [out, in] upstream; burn holds [in, out].
        let (loaded, stored) = query_element(&encoder, &config);
        assert_eq!(loaded, stored);
    }
}

#[test]
fn wrong_shape_is_named_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let path = dir.path().join("model.safetensors");
    write_weights(&path, &config, |tensors| {
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "encoder.layer.1.output.dense.weight")
            .unwrap();
        t.1 = vec![16, 16];
        t.2.truncate(256);
    });
    let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
    assert_eq!(
        error,
        RuntimeError::TensorShape {
            path: path.clone(),
            tensor: "encoder.layer.1.output.dense.weight".into(),
            expected: vec![16, 32],
            found: vec![16, 16],
        }
    );
    assert!(
        error
            .to_string()
            .contains("encoder.layer.1.output.dense.weight")
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_MPNET);
    let path = dir.path().join("model.safetensors");
    write_weights(&path, &config, |tensors| {
        tensors.retain(|t| t.0 != "encoder.relative_attention_bias.weight")
    });
    let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
    assert!(
        matches!(&error, RuntimeError::MissingTensor { tensor, .. } if tensor == "encoder.relative_attention_bias.weight")
    );
}

#[test]
fn prefixed_task_model_reports_missing_and_unused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let path = dir.path().join("model.safetensors");
    write_weights(&path, &config, |tensors| {
        for t in tensors.iter_mut() {
            t.0 = format!("bert.{}", t.0);
        }
    });
    let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
    assert_eq!(error.code(), "R007");
    assert!(error.hint().contains("prefix"));
}

#[test]
fn truncated_file_is_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let path = dir.path().join("model.safetensors");
    write_weights(&path, &config, |_| {});
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 3, 8, 100, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
        assert!(
            matches!(error, RuntimeError::CorruptWeights { .. }),
            "cut at {cut}: {error}"
        );
    }
}

#[test]
fn pickles_are_refused_by_name_and_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let bin = dir.path().join("pytorch_model.bin");
    std::fs::write(&bin, b"\x80\x02}q\x00.").unwrap();
    let error = load_encoder::<Cpu>(&bin, &config, &cpu_device()).unwrap_err();
    assert_eq!(
        error,
        RuntimeError::UnsafeWeightsFormat { path: bin.clone() }
    );
    assert!(error.hint().contains("arbitrary code"));

    // A torch zip saved under the safetensors name.
    let disguised = dir.path().join("model.safetensors");
    std::fs::write(&disguised, b"PK\x03\x04rest-of-a-zip").unwrap();
    let error = load_encoder::<Cpu>(&disguised, &config, &cpu_device()).unwrap_err();
    assert_eq!(error, RuntimeError::UnsafeWeightsFormat { path: disguised });
}

#[test]
fn model_dir_with_only_a_pickle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), TINY_BERT).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"\x80\x02").unwrap();
    let error = load_model_dir::<Cpu>(dir.path(), &cpu_device()).unwrap_err();
    assert_eq!(error.code(), "R005");
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let path = dir.path().join("model.safetensors");
    let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
    assert!(matches!(error, RuntimeError::Io { .. }));
    assert!(error.to_string().contains("model.safetensors"));
}

#[test]
fn integer_weights_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(TINY_BERT);
    let path = dir.path().join("model.safetensors");
    // Store the word table as I64 by writing it raw.
    write_weights(&path, &config, |_| {});
    let (encoder, _) = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap();
    assert_eq!(encoder.hidden_size(), 16);

    let h = config.hidden_size;
    let ints: Vec<u8> = (0..(config.vocab_size * h) as i32)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::I32,
        vec![config.vocab_size, h],
        &ints,
    )
    .unwrap();
    std::fs::write(
        &path,
        safetensors::serialize([("embeddings.word_embeddings.weight", view)], None).unwrap(),
    )
    .unwrap();
    let error = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap_err();
    assert!(
        matches!(&error, RuntimeError::TensorDtype { tensor, .. } if tensor == "embeddings.word_embeddings.weight"),
        "{error}"
    );
}

/// Rewrites every F32 tensor of a safetensors file in a half-precision dtype.
fn to_half(path: &std::path::Path, dtype: safetensors::Dtype) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let converted: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != safetensors::Dtype::F32 {
                return (
                    name,
                    view.shape().to_vec(),
                    view.dtype(),
                    view.data().to_vec(),
                );
            }
            let data = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    match dtype {
                        safetensors::Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                        _ => half::bf16::from_f32(v).to_le_bytes(),
                    }
                })
                .collect();
            (name, view.shape().to_vec(), dtype, data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = converted
        .iter()
        .map(|(name, shape, dtype, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn half_precision_checkpoints_are_widened_exactly() {
    for dtype in [safetensors::Dtype::F16, safetensors::Dtype::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let config = config(TINY_BERT);
        let path = dir.path().join("model.safetensors");
        write_weights(&path, &config, |_| {});
        to_half(&path, dtype);
        let (encoder, report) = load_encoder::<Cpu>(&path, &config, &cpu_device()).unwrap();
        assert_eq!(report.tensors, expected_tensors(&config).len());

        let (loaded, stored) = query_element(&encoder, &config);
        let expected = match dtype {
            safetensors::Dtype::F16 => half::f16::from_f32(stored).to_f32(),
            _ => half::bf16::from_f32(stored).to_f32(),
        };
        assert_eq!(loaded, expected, "{dtype:?}");
        assert_ne!(
            expected, stored,
            "the test value must not be exact in {dtype:?}"
        );
    }
}
