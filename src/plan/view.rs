//! The human view of a plan: each run's fields as `path = value` lines,
//! marked with where each value came from.

use super::{Plan, Run};
use crate::estimate::human_bytes;
use serde_json::Value;

/// Renders the plan for `ftl plan`.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    let n = plan.runs.len();
    out.push_str(&format!(
        "plan for {}: {} run{}\n",
        plan.entry,
        n,
        if n == 1 { "" } else { "s" }
    ));
    for run in &plan.runs {
        out.push('\n');
        render_run(run, &mut out);
    }
    out
}

fn render_run(run: &Run, out: &mut String) {
    out.push_str(&format!("run {}  [{}]\n", run.name, run.hash));
    if let Some(why) = &run.skip {
        out.push_str(&format!("  SKIPPED: {why}\n"));
    }
    let json = serde_json::to_value(&run.config).expect("configurations serialize");
    let mut lines = Vec::new();
    flatten("", &json, &mut lines);
    let width = lines
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .max()
        .unwrap_or(0)
        .min(72);
    for (key, value) in lines {
        let origin = origin_of(run, &key);
        let pad = width.saturating_sub(key.len() + value.len());
        out.push_str(&format!(
            "  {key} = {value}{}  # {origin}\n",
            " ".repeat(pad)
        ));
    }
    let p = &run.parameters;
    out.push_str(&format!(
        "  parameters: {} trainable of {} in the base\n",
        p.trainable, p.base
    ));
    let m = &run.memory;
    let budget = match run.config.budget.gpu_memory {
        Some(b) => format!(", budget {}", human_bytes(b)),
        None => String::new(),
    };
    out.push_str(&format!(
        "  memory estimate: {}, highest {} (weights {}, gradients {}, optimizer {}, activations {}, workspace {}){budget}\n",
        human_bytes(m.total),
        m.peak_at.describe(),
        human_bytes(m.weights),
        human_bytes(m.gradients),
        human_bytes(m.optimizer),
        human_bytes(m.activations),
        human_bytes(m.workspace)
    ));
}

/// Where the value at `key` came from: the closest written ancestor, else a default.
fn origin_of(run: &Run, key: &str) -> String {
    // Plan paths that differ from the paths written in `.ft` files.
    let written = key
        .replace("train.length.", "train.")
        .replace("model.base.dims.", "model.base.");
    let mut k = written.as_str();
    loop {
        if let Some(pos) = run.origins.get(k) {
            return format!("{}:{}", pos.file, pos.line);
        }
        match k.rsplit_once('.') {
            Some((parent, _)) => k = parent,
            None => return "default".into(),
        }
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() && !is_leaf_object(map) => {
            for (k, child) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, child, out);
            }
        }
        _ => out.push((prefix.to_string(), v.to_string())),
    }
}

/// Small tagged values (`{"kind": "linear", "warmup": ...}`) stay on one line.
fn is_leaf_object(map: &serde_json::Map<String, Value>) -> bool {
    map.contains_key("kind")
        && map
            .values()
            .all(|v| !v.is_object() || v.as_object().is_some_and(|o| o.len() <= 1))
}
