//! What a run records and how it is shown: the per-step metrics line, the
//! run summary, the loss curve as SVG, the run's `report.md`, and the table
//! that compares the runs of a sweep.

use crate::estimate::human_bytes;
use crate::metrics::Stability;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// One line of `metrics.jsonl`: an optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step, from 1.
    pub step: u64,
    /// Epoch, from 1.
    pub epoch: u32,
    /// Training loss of the step (mean over its examples).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Examples per second over the step.
    pub samples_per_s: f64,
    /// Non-padding tokens per second over the step.
    pub tokens_per_s: f64,
    /// Device memory in use, in bytes, when sampled.
    pub memory_bytes: Option<u64>,
}

/// Evaluation of one split at one point of training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// `eval` or `test`.
    pub split: String,
    /// Optimizer step it was taken after.
    pub step: u64,
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean of per-class F1.
    pub macro_f1: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Examples evaluated.
    pub examples: u64,
}

/// Wall time of a run by phase, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Resolving and loading model and data.
    pub load: f64,
    /// From the first step's start to its end (compilation and autotuning).
    pub warmup: f64,
    /// The other training steps.
    pub train: f64,
    /// Evaluation.
    pub eval: f64,
}

impl Timing {
    /// All phases.
    pub fn total(&self) -> f64 {
        self.load + self.warmup + self.train + self.eval
    }
}

/// `summary.json`: everything needed to compare and reproduce a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `PIPELINE/POINT`.
    pub run: String,
    /// The plan hash of the run's configuration.
    pub plan_hash: String,
    /// `full`, `lora` or `qlora`.
    pub method: String,
    /// The model's declaration name.
    pub model: String,
    /// Final evaluations (the last of each split).
    pub evaluations: Vec<Evaluation>,
    /// Highest device memory seen, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// The estimate made before the run, in bytes.
    pub estimated_memory_bytes: u64,
    /// Time by phase.
    pub timing: Timing,
    /// Loss stability.
    pub stability: Stability,
    /// Parameters that trained.
    pub trainable_parameters: u64,
    /// All parameters of the base.
    pub total_parameters: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Training seed.
    pub seed: u64,
    /// Device the run used (`cuda:0`, `cpu`).
    pub device: String,
    /// Versions of ftl and its compute stack.
    pub versions: BTreeMap<String, String>,
    /// sha256 of the model's and data's files, by role.
    pub sha256: BTreeMap<String, String>,
    /// Rows skipped under `bad_rows = skip`.
    pub skipped_rows: u64,
    /// Things the reader should know: an early stop at the time budget, a resume.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Summary {
    /// The final evaluation of `split`.
    pub fn evaluation(&self, split: &str) -> Option<&Evaluation> {
        self.evaluations.iter().rev().find(|e| e.split == split)
    }
}

/// The loss curve (raw and smoothed) as a standalone SVG.
pub fn loss_svg(steps: &[StepMetrics]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 320.0, 56.0, 16.0, 16.0, 40.0);
    let points: Vec<(f64, f64)> = steps
        .iter()
        .filter(|s| s.loss.is_finite())
        .map(|s| (s.step as f64, s.loss))
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    svg.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    if points.is_empty() {
        svg.push_str(
            r#"<text x="50%" y="50%" text-anchor="middle">no steps recorded</text></svg>"#,
        );
        return svg;
    }
    let (x0, x1) = (
        points[0].0,
        points[points.len() - 1].0.max(points[0].0 + 1.0),
    );
    let y1 = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let y0 = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let y1 = if y1 > y0 { y1 } else { y0 + 1.0 };
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);
    let _ = write!(
        svg,
        r##"<g stroke="#888" stroke-width="1"><line x1="{left}" y1="{}" x2="{}" y2="{}"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}"/></g>"##,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let v = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.3}</text>"#,
            left - 4.0,
            sy(v) + 4.0
        );
        let s = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{s:.0}</text>"#,
            sx(s),
            h - bottom + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        (left + w - right) / 2.0,
        h - 6.0
    );
    let line = |pts: &[(f64, f64)]| {
        pts.iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#9ecae1" stroke-width="1" points="{}"/>"##,
        line(&points)
    );
    let mut ema = points[0].1;
    let smooth: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, y)| {
            ema = 0.95 * ema + 0.05 * y;
            (x, ema)
        })
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#08519c" stroke-width="2" points="{}"/>"##,
        line(&smooth)
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#08519c">loss (EMA 0.95)</text>"##,
        w - right,
        top + 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// `report.md` of one run.
pub fn run_report(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", summary.run);
    let _ = writeln!(
        md,
        "{} fine-tuning of `{}` on {}, seed {}, plan `{}`.\n",
        summary.method, summary.model, summary.device, summary.seed, summary.plan_hash
    );
    let _ = writeln!(
        md,
        "| split | accuracy | macro-F1 | examples |\n| --- | --- | --- | --- |"
    );
    for e in &summary.evaluations {
        let _ = writeln!(
            md,
            "| {} (step {}) | {:.2}% | {:.4} | {} |",
            e.split,
            e.step,
            e.accuracy * 100.0,
            e.macro_f1,
            e.examples
        );
    }
    let t = &summary.timing;
    let _ = writeln!(md, "\n![loss](loss.svg)\n");
    let _ = writeln!(
        md,
        "- steps: {}; trainable parameters: {} of {}",
        summary.steps, summary.trainable_parameters, summary.total_parameters
    );
    let peak = summary
        .peak_memory_bytes
        .map_or("not measured".into(), human_bytes);
    let _ = writeln!(
        md,
        "- peak device memory: {peak} (estimated {})",
        human_bytes(summary.estimated_memory_bytes)
    );
    let _ = writeln!(
        md,
        "- time: {:.1} s (load {:.1}, first step {:.1}, train {:.1}, eval {:.1})",
        t.total(),
        t.load,
        t.warmup,
        t.train,
        t.eval
    );
    let s = &summary.stability;
    let _ = writeln!(
        md,
        "- loss stability: std over the second half {:.4}, spikes {}, largest gradient norm {:.3}, non-finite losses {}",
        s.loss_std_second_half, s.spikes, s.max_grad_norm, s.non_finite
    );
    if summary.skipped_rows > 0 {
        let _ = writeln!(md, "- skipped rows: {}", summary.skipped_rows);
    }
    for note in &summary.notes {
        let _ = writeln!(md, "- {note}");
    }
    md
}

/// One row of a comparison: a finished run, or one the plan skipped.
#[derive(Clone, Debug)]
pub enum Row {
    /// A finished run.
    Done(Box<Summary>),
    /// A run that did not execute, and why.
    Skipped {
        /// `PIPELINE/POINT`.
        run: String,
        /// The reason.
        why: String,
    },
}

/// The comparison table of a sweep, in Markdown: accuracy, peak memory,
/// time and loss stability side by side.
pub fn comparison(rows: &[Row]) -> String {
    let mut md = String::from(
        "| run | eval accuracy | macro-F1 | peak memory | time | loss std (2nd half) | spikes | max grad norm |\n",
    );
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        match row {
            Row::Done(s) => {
                let (acc, f1) = s.evaluation("eval").map_or(("–".into(), "–".into()), |e| {
                    (
                        format!("{:.2}%", e.accuracy * 100.0),
                        format!("{:.4}", e.macro_f1),
                    )
                });
                let peak = s.peak_memory_bytes.map_or("–".into(), human_bytes);
                let st = &s.stability;
                let _ = writeln!(
                    md,
                    "| {} | {acc} | {f1} | {peak} | {:.1} s | {:.4} | {} | {:.2} |",
                    s.run,
                    s.timing.total(),
                    st.loss_std_second_half,
                    st.spikes,
                    st.max_grad_norm
                );
            }
            Row::Skipped { run, why } => {
                let _ = writeln!(md, "| {run} | skipped: {why} | | | | | | |");
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(i: u64, loss: f64) -> StepMetrics {
        StepMetrics {
            step: i,
            epoch: 1,
            loss,
            lr: 1e-4,
            grad_norm: 1.0,
            samples_per_s: 100.0,
            tokens_per_s: 2000.0,
            memory_bytes: None,
        }
    }

    #[test]
    fn svg_has_both_curves_inside_the_canvas() {
        let steps: Vec<StepMetrics> = (1..=100)
            .map(|i| step(i, 0.7 / (1.0 + i as f64 / 20.0)))
            .collect();
        let svg = loss_svg(&steps);
        assert_eq!(svg.matches("<polyline").count(), 2);
        for poly in svg.split("points=\"").skip(1) {
            let pts = poly.split('"').next().expect("points");
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!(
                    (0.0..=640.0).contains(&x) && (0.0..=320.0).contains(&y),
                    "{x},{y}"
                );
            }
        }
    }

    #[test]
    fn svg_of_no_steps_says_so() {
        assert!(loss_svg(&[]).contains("no steps recorded"));
        assert!(loss_svg(&[step(1, f64::NAN)]).contains("no steps recorded"));
    }
}
