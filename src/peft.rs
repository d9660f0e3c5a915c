//! Hugging Face PEFT's adapter format: the `adapter_config.json` of a LoRA
//! run and the tensor names of `adapter_model.safetensors`, so that
//! `PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), RUN/adapter)`
//! loads what ftl trained.
//!
//! Names follow PEFT's `get_peft_model_state_dict` for a bare encoder
//! (`AutoModel`, no task head): `base_model.model.` + the module path +
//! `.lora_A.weight` / `.lora_B.weight`, the adapter name removed.
//! See huggingface/peft `src/peft/utils/save_and_load.py`.

use crate::config::{Architecture, Lora, ModelSpec};
use serde_json::{Value, json};

/// The module path of a LoRA target in layer `layer`, as transformers names
/// it inside `BertModel` / `MPNetModel`.
pub fn module_path(arch: Architecture, layer: u32, target: &str) -> String {
    let inner = match (arch, target) {
        (Architecture::Bert, "query" | "key" | "value") => format!("attention.self.{target}"),
        (Architecture::Mpnet, "q" | "k" | "v" | "o") => format!("attention.attn.{target}"),
        (_, other) => other.to_string(),
    };
    format!("encoder.layer.{layer}.{inner}")
}

/// The two tensor names of one adapted module: (A, B). A is
/// `[rank, in_features]`, B is `[out_features, rank]`, as in PyTorch's Linear.
pub fn lora_keys(arch: Architecture, layer: u32, target: &str) -> (String, String) {
    let base = format!("base_model.model.{}", module_path(arch, layer, target));
    (
        format!("{base}.lora_A.weight"),
        format!("{base}.lora_B.weight"),
    )
}

/// `target_modules` for PEFT: plain names when PEFT's suffix matching selects
/// exactly these modules, else a regex over full module paths (PEFT matches a
/// string with `re.fullmatch`). `output.dense` would also match
/// `attention.output.dense` by suffix, for example.
pub fn target_modules(arch: Architecture, targets: &[String], all_modules: &[String]) -> Value {
    let ambiguous = targets.iter().any(|t| {
        all_modules
            .iter()
            .any(|m| m != t && m.ends_with(&format!(".{t}")) && !targets.contains(m))
    });
    if !ambiguous {
        return json!(targets);
    }
    let inner: Vec<String> = targets
        .iter()
        .map(|t| {
            module_path(arch, 0, t)
                .trim_start_matches("encoder.layer.0.")
                .replace('.', "\\.")
        })
        .collect();
    Value::String(format!("encoder\\.layer\\.\\d+\\.({})", inner.join("|")))
}

/// The `adapter_config.json` of a LoRA or QLoRA run.
pub fn adapter_config(model: &ModelSpec, lora: &Lora) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": model.hub.clone().or_else(|| model.path.clone()),
        "revision": model.revision,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": target_modules(model.architecture, &lora.targets, &model.modules),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "use_rslora": false,
        "use_dora": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bert_and_mpnet_key_names_match_peft() {
        assert_eq!(
            lora_keys(Architecture::Bert, 0, "query"),
            (
                "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight".to_string(),
                "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight".to_string()
            )
        );
        assert_eq!(
            lora_keys(Architecture::Mpnet, 11, "v").1,
            "base_model.model.encoder.layer.11.attention.attn.v.lora_B.weight"
        );
        assert_eq!(
            lora_keys(Architecture::Bert, 5, "output.dense").0,
            "base_model.model.encoder.layer.5.output.dense.lora_A.weight"
        );
        assert_eq!(
            lora_keys(Architecture::Bert, 2, "attention.output.dense").0,
            "base_model.model.encoder.layer.2.attention.output.dense.lora_A.weight"
        );
    }

    #[test]
    fn target_modules_stay_plain_unless_suffixes_collide() {
        let bert: Vec<String> = [
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            target_modules(Architecture::Bert, &["query".into(), "value".into()], &bert),
            json!(["query", "value"])
        );
        assert_eq!(
            target_modules(Architecture::Bert, &["output.dense".into()], &bert),
            json!("encoder\\.layer\\.\\d+\\.(output\\.dense)")
        );
        // With both dense outputs chosen, suffix matching selects exactly them.
        assert_eq!(
            target_modules(
                Architecture::Bert,
                &["attention.output.dense".into(), "output.dense".into()],
                &bert
            ),
            json!(["attention.output.dense", "output.dense"])
        );
    }
}
