//! Row readers for TSV, CSV and JSONL, with label mapping and bad-row
//! handling.

use super::{BadRow, DataError, Example};
use crate::config::{BadRows, DatasetConfig, Format};
use std::path::Path;

/// The rows of one file.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// Usable rows, in file order.
    pub examples: Vec<Example>,
    /// Rows skipped under `bad_rows = skip`.
    pub skipped: Vec<BadRow>,
}

/// Reads one file of labelled text as `cfg` describes it. `shown` is the name
/// used in errors.
pub fn read_table(path: &Path, shown: &str, cfg: &DatasetConfig) -> Result<Table, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        file: shown.to_string(),
        reason: e.to_string(),
    })?;
    let mut rows = Rows {
        shown,
        cfg,
        table: Table {
            examples: Vec::new(),
            skipped: Vec::new(),
        },
    };
    match cfg.format {
        Format::Tsv => read_tsv(&bytes, &mut rows)?,
        Format::Csv => read_csv(&bytes, &mut rows)?,
        Format::Jsonl => read_jsonl(&bytes, &mut rows)?,
    }
    Ok(rows.table)
}

struct Rows<'a> {
    shown: &'a str,
    cfg: &'a DatasetConfig,
    table: Table,
}

impl Rows<'_> {
    /// Adds a row, or handles its problem by the bad-row policy.
    fn push(
        &mut self,
        line: u64,
        text: Option<&str>,
        label: Option<&str>,
    ) -> Result<(), DataError> {
        match self.example(line, text, label) {
            Ok(ex) => {
                self.table.examples.push(ex);
                Ok(())
            }
            Err((problem, fix)) => self.bad(line, problem, fix),
        }
    }

    fn bad(&mut self, line: u64, problem: String, fix: String) -> Result<(), DataError> {
        match self.cfg.bad_rows {
            BadRows::Error => Err(DataError::BadRow {
                file: self.shown.to_string(),
                line,
                problem,
                fix,
            }),
            BadRows::Skip => {
                self.table.skipped.push(BadRow {
                    file: self.shown.to_string(),
                    line,
                    problem,
                });
                Ok(())
            }
        }
    }

    fn not_utf8(&mut self, line: u64) -> Result<(), DataError> {
        let fix = "re-save the file as UTF-8, or set `dataset.bad_rows = skip`";
        self.bad(line, "the line is not valid UTF-8".into(), fix.into())
    }

    fn example(
        &self,
        line: u64,
        text: Option<&str>,
        label: Option<&str>,
    ) -> Result<Example, (String, String)> {
        let skip_hint =
            "fix the row, or set `dataset.bad_rows = skip` to skip such rows".to_string();
        let text = text
            .ok_or_else(|| {
                (
                    format!("the row has no `{}` value", self.cfg.text),
                    skip_hint.clone(),
                )
            })?
            .trim();
        if text.is_empty() {
            return Err(("the text is empty".into(), skip_hint));
        }
        let label = label
            .ok_or_else(|| {
                (
                    format!("the row has no `{}` value", self.cfg.label),
                    skip_hint.clone(),
                )
            })?
            .trim();
        let id = label_id(label, &self.cfg.labels).ok_or_else(|| {
            (
                format!("unknown label `{label}`"),
                format!(
                    "labels are {} or their ids 0–{}; fix the row, list the label in `dataset.labels`, or set `dataset.bad_rows = skip`",
                    self.cfg.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "),
                    self.cfg.labels.len() - 1
                ),
            )
        })?;
        Ok(Example {
            text: text.to_string(),
            label: id,
            line,
        })
    }

    fn missing_column(
        &self,
        column: &str,
        available: Vec<String>,
        field: &'static str,
    ) -> DataError {
        DataError::MissingColumn {
            file: self.shown.to_string(),
            column: column.to_string(),
            available,
            field,
        }
    }
}

/// A label written as a name or as an id.
pub fn label_id(label: &str, labels: &[String]) -> Option<u32> {
    if let Some(i) = labels.iter().position(|l| l == label) {
        return Some(i as u32);
    }
    match label.parse::<u32>() {
        Ok(i) if (i as usize) < labels.len() => Some(i),
        _ => None,
    }
}

fn columns(header: &[String], rows: &Rows) -> Result<(usize, usize), DataError> {
    let find = |name: &str| header.iter().position(|h| h.trim() == name);
    let text = find(&rows.cfg.text)
        .ok_or_else(|| rows.missing_column(&rows.cfg.text, header.to_vec(), "dataset.text"))?;
    let label = find(&rows.cfg.label)
        .ok_or_else(|| rows.missing_column(&rows.cfg.label, header.to_vec(), "dataset.label"))?;
    Ok((text, label))
}

/// Tab-separated, header first, no quoting (as GLUE ships it).
fn read_tsv(bytes: &[u8], rows: &mut Rows) -> Result<(), DataError> {
    let mut lines = bytes.split(|&b| b == b'\n').enumerate();
    let header = match lines.next() {
        Some((_, h)) => std::str::from_utf8(h).map_err(|_| utf8_error(rows.shown, 1))?,
        None => return Ok(()),
    };
    let header: Vec<String> = header
        .trim_end_matches('\r')
        .split('\t')
        .map(|s| s.trim_start_matches('\u{feff}').to_string())
        .collect();
    let (ti, li) = columns(&header, rows)?;
    for (i, raw) in lines {
        let line = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            rows.not_utf8(line)?;
            continue;
        };
        let fields: Vec<&str> = text.split('\t').collect();
        rows.push(line, fields.get(ti).copied(), fields.get(li).copied())?;
    }
    Ok(())
}

/// Comma-separated with a header; quoted fields may hold commas, quotes and newlines.
fn read_csv(bytes: &[u8], rows: &mut Rows) -> Result<(), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(bytes);
    let header: Vec<String> = match reader.byte_headers() {
        Ok(h) => h
            .iter()
            .map(|f| {
                String::from_utf8_lossy(f)
                    .trim_start_matches('\u{feff}')
                    .to_string()
            })
            .collect(),
        Err(e) => {
            return Err(DataError::BadRow {
                file: rows.shown.into(),
                line: 1,
                problem: e.to_string(),
                fix: "fix the header row".into(),
            });
        }
    };
    let (ti, li) = columns(&header, rows)?;
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line() + 1;
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                return Err(DataError::BadRow {
                    file: rows.shown.into(),
                    line,
                    problem: format!("the CSV is malformed: {e}"),
                    fix: "check the quoting on this line: a quote inside a quoted field is written twice (\"\")".into(),
                });
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        if record
            .iter()
            .all(|f| f.iter().all(|b| b.is_ascii_whitespace()))
        {
            continue;
        }
        let field = |i: usize| record.get(i).map(std::str::from_utf8);
        match (field(ti), field(li)) {
            (Some(Err(_)), _) | (_, Some(Err(_))) => {
                rows.not_utf8(line)?;
            }
            (t, l) => {
                let (t, l) = (t.and_then(Result::ok), l.and_then(Result::ok));
                rows.push(line, t, l)?;
            }
        }
    }
    Ok(())
}

/// One JSON object per line; the label may be a string or a number.
fn read_jsonl(bytes: &[u8], rows: &mut Rows) -> Result<(), DataError> {
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            rows.not_utf8(line)?;
            continue;
        };
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                rows.bad(
                    line,
                    format!("not a JSON object: {e}"),
                    "each line holds one JSON object, e.g. {\"text\": \"...\", \"label\": 1}"
                        .into(),
                )?;
                continue;
            }
        };
        let get = |key: &str| -> Option<String> {
            match value.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                serde_json::Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let (t, l) = (get(&rows.cfg.text), get(&rows.cfg.label));
        rows.push(line, t.as_deref(), l.as_deref())?;
    }
    Ok(())
}

fn utf8_error(file: &str, line: u64) -> DataError {
    DataError::BadRow {
        file: file.into(),
        line,
        problem: "the header is not valid UTF-8".into(),
        fix: "re-save the file as UTF-8".into(),
    }
}
