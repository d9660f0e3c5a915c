//! Rendering diagnostics as text with ariadne.
//!
//! The only module that knows ariadne. Offsets are bytes; colour is a
//! parameter, decided by the CLI (a terminal and no `NO_COLOR`), and always
//! off in snapshots.

use crate::diagnostic::{Diagnostic, Severity};
use crate::span::Sources;
use ariadne::{CharSet, Config, IndexType, Label, Report, ReportKind};
use std::ops::Range;

/// Renders diagnostics one after another, with a closing count line.
pub fn render(diagnostics: &[Diagnostic], sources: &Sources, color: bool) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&render_one(d, sources, color));
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    match (errors, warnings) {
        (0, 0) => {}
        (e, 0) => out.push_str(&format!("{}\n", plural(e, "error"))),
        (0, w) => out.push_str(&format!("{}\n", plural(w, "warning"))),
        (e, w) => out.push_str(&format!(
            "{} and {}\n",
            plural(e, "error"),
            plural(w, "warning")
        )),
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Renders one diagnostic.
pub fn render_one(d: &Diagnostic, sources: &Sources, color: bool) -> String {
    type S = (String, Range<usize>);
    let name = |id| sources.get(id).name.clone();
    let span = |s: crate::span::Span| -> S { (name(s.source), s.start..s.end) };
    let kind = match d.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let config = Config::default()
        .with_index_type(IndexType::Byte)
        .with_color(color)
        .with_char_set(if color {
            CharSet::Unicode
        } else {
            CharSet::Ascii
        });
    let mut report = Report::build(kind, span(d.primary.span))
        .with_config(config)
        .with_code(d.code)
        .with_message(&d.message);
    let primary = Label::new(span(d.primary.span)).with_order(0);
    report = report.with_label(if d.primary.message.is_empty() {
        primary
    } else {
        primary.with_message(&d.primary.message)
    });
    for (i, l) in d.labels.iter().enumerate() {
        report = report.with_label(
            Label::new(span(l.span))
                .with_message(&l.message)
                .with_order(i as i32 + 1),
        );
    }
    for n in &d.notes {
        report = report.with_note(n);
    }
    for h in &d.hints {
        report = report.with_help(h);
    }
    let cache = ariadne::sources(
        sources
            .iter()
            .map(|(_, s)| (s.name.clone(), s.text.clone())),
    );
    let mut buf = Vec::new();
    // Writing to a Vec cannot fail; a missing source renders without a snippet.
    let _ = report.finish().write(cache, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
