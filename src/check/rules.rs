//! Rules that relate several sections: quantization and method, labels of
//! head and data, token length and the model's positions.

use super::read::Cx;
use super::value::{Record, ValKind};
use crate::config::*;
use crate::diagnostic::{Code, Diagnostic};
use crate::span::Span;

/// The span of the value at a dotted path of the pipeline record, when written.
fn span_at(record: &Record, path: &str) -> Option<Span> {
    let mut rec = record;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = rec.get(part)?;
        if parts.peek().is_none() {
            return Some(field.value.span);
        }
        rec = match &field.value.kind {
            ValKind::Record(r) | ValKind::Decl { record: r, .. } => r,
            _ => return None,
        };
    }
    None
}

/// Applies every cross-section rule to a checked configuration.
pub fn cross_field(cx: &mut Cx, record: &Record, config: &RunConfig) {
    let method_span = span_at(record, "method");
    let format_span = span_at(record, "quantize.format");
    let fallback = method_span
        .or(format_span)
        .or_else(|| span_at(record, "model"))
        .unwrap_or(Span::new(crate::span::SourceId(0), 0, 0));
    let format = config.quantize.format;
    match (&config.method, format) {
        (Method::Full, f) if f != QuantFormat::None => {
            let mut d = Diagnostic::error(
                Code::QuantizedFullFineTune,
                method_span.unwrap_or(fallback),
                format!("full fine-tuning cannot train a {}-bit base", f.bits().unwrap_or(4)),
            )
            .label("full fine-tuning updates every weight")
            .hint("use `method = qlora(rank = 8)` to train LoRA adapters over the quantized base, or set `quantize.format = none`");
            if let Some(s) = format_span {
                d = d.with_label(s, "the base is quantized here");
            }
            cx.error(d);
        }
        (Method::Lora(_), f) if f != QuantFormat::None => {
            let mut d = Diagnostic::error(Code::QuantizationMismatch, method_span.unwrap_or(fallback), "LoRA over a quantized base is QLoRA")
                .label("`lora` keeps the base unquantized")
                .hint("write `method = qlora(...)` with the same arguments, or set `quantize.format = none`");
            if let Some(s) = format_span {
                d = d.with_label(s, "the base is quantized here");
            }
            cx.error(d);
        }
        (Method::Qlora(_), QuantFormat::None) => {
            let mut d = Diagnostic::error(
                Code::QuantizationMismatch,
                format_span.unwrap_or(fallback),
                "QLoRA needs a quantized base",
            )
            .label("the base is left unquantized here")
            .hint("remove `quantize.format` (QLoRA defaults to nf4), or use `method = lora(...)`");
            if let Some(s) = method_span {
                d = d.with_label(s, "QLoRA chosen here");
            }
            cx.error(d);
        }
        _ => {}
    }
    if config.model.labels != config.dataset.labels {
        let span = span_at(record, "model.labels").unwrap_or(fallback);
        let mut d = Diagnostic::error(
            Code::LabelMismatch,
            span,
            "the head's labels differ from the dataset's",
        )
        .label(format!("the head has [{}]", config.model.labels.join(", ")))
        .note(format!(
            "the dataset has [{}]",
            config.dataset.labels.join(", ")
        ))
        .hint(
            "list the same labels in the same order, or remove `model.labels` to use the dataset's",
        );
        if let Some(s) = span_at(record, "dataset.labels") {
            d = d.with_label(s, "the dataset's labels");
        }
        cx.error(d);
    }
    let max = config.model.base.dims.max_positions;
    if config.dataset.max_tokens > max {
        let span = span_at(record, "dataset.max_tokens").unwrap_or(fallback);
        cx.error(
            Diagnostic::error(
                Code::TooManyTokens,
                span,
                format!(
                    "`max_tokens` is {}, but `{}` reads at most {max}",
                    config.dataset.max_tokens, config.model.base.name
                ),
            )
            .label("longer than the model's position table")
            .hint(format!("set `dataset.max_tokens` to {max} or less")),
        );
    }
}
