//! Checking: an entry file and its imports to typed, fully resolved run
//! configurations, one per pipeline and sweep point.
//!
//! The stages inside: load modules ([`modules`]), elaborate values
//! ([`elab`]), expand sweeps ([`sweep`]), read each point into a
//! [`RunConfig`] ([`sections`], [`rules`]). Every problem is collected; none
//! stops the others, except that a file which does not load or parse is not
//! elaborated (its errors would only cascade).

pub mod declarations;
pub mod elab;
pub mod modules;
pub mod read;
pub mod rules;
pub mod sections;
pub mod sweep;
pub mod value;

use crate::config::RunConfig;
use crate::diagnostic::{Diagnostic, Result};
use crate::span::{Sources, Span};
use crate::syntax::ast::{DeclKind, Item};
pub use modules::Loader;
use read::Cx;
use std::collections::BTreeMap;
use value::ValKind;

/// The checked file: every run its pipelines describe.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The entry file's project path.
    pub entry: String,
    /// Project paths of every project file read (entry first), for copying into run directories.
    pub files: Vec<String>,
    /// One per pipeline and sweep point, in source order.
    pub runs: Vec<CheckedRun>,
}

/// One run before lowering.
#[derive(Clone, Debug)]
pub struct CheckedRun {
    /// The pipeline's name.
    pub pipeline: String,
    /// Where the pipeline is declared.
    pub pipeline_span: Span,
    /// The sweep point: axis path → point label (empty without a sweep).
    pub point: Vec<(String, String)>,
    /// The configuration.
    pub config: RunConfig,
    /// Where each written field came from.
    pub origins: BTreeMap<String, Span>,
}

/// Checks `entry` (a project-relative path) and everything it imports.
/// `display_prefix` is prepended to project paths in diagnostics.
pub fn check(
    entry: &str,
    loader: &dyn Loader,
    sources: &mut Sources,
    display_prefix: &str,
) -> Result<Checked> {
    let (modules, load_errors) = modules::load(entry, loader, sources, display_prefix);
    if !load_errors.is_empty() {
        return Err(load_errors);
    }
    let mut el = elab::Elab::new(&modules);
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for (m, module) in modules.list.iter().enumerate() {
        if module.is_std {
            continue;
        }
        for item in &module.file.items {
            match item {
                Item::Let(l) => {
                    // Evaluated for its errors; unused lets are still checked.
                    let _ = el.value(m, &l.value);
                }
                Item::Decl(d) => {
                    let Some(val) = el.declaration(m, &d.name.name) else {
                        continue;
                    };
                    let ValKind::Decl { record, .. } = &val.kind else {
                        continue;
                    };
                    let mut cx = Cx {
                        modules: &modules,
                        errors: &mut errors,
                        origins: BTreeMap::new(),
                        poisoned: &el.poisoned,
                    };
                    match d.kind {
                        DeclKind::Model => {
                            let _ = declarations::model_decl(&mut cx, &val);
                        }
                        DeclKind::Dataset => {
                            let _ = declarations::dataset_decl(&mut cx, &val);
                        }
                        DeclKind::Pipeline if m == 0 => {
                            runs.extend(sweep::expand(&mut cx, &d.name.name, d.name.span, record));
                        }
                        DeclKind::Pipeline => {}
                    }
                }
                Item::Import(_) => {}
            }
        }
    }
    errors.splice(0..0, el.errors);
    dedup(&mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let files = modules
        .list
        .iter()
        .filter(|m| !m.is_std)
        .map(|m| m.path.clone())
        .collect();
    Ok(Checked {
        entry: entry.to_string(),
        files,
        runs,
    })
}

/// A checked declaration of a library file (stdlib modules, shared files).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "declares", rename_all = "snake_case")]
pub enum Declaration {
    /// A `model` declaration.
    Model(crate::config::ModelSpec),
    /// A `dataset` declaration.
    Dataset(crate::config::DatasetConfig),
}

/// Checks the `model` and `dataset` declarations of `entry` and returns
/// them typed, by name, in source order.
pub fn declarations(
    entry: &str,
    loader: &dyn Loader,
    sources: &mut Sources,
    display_prefix: &str,
) -> Result<Vec<(String, Declaration)>> {
    let (modules, load_errors) = modules::load(entry, loader, sources, display_prefix);
    if !load_errors.is_empty() {
        return Err(load_errors);
    }
    let mut el = elab::Elab::new(&modules);
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for item in &modules.list[0].file.items {
        let Item::Decl(d) = item else { continue };
        let Some(val) = el.declaration(0, &d.name.name) else {
            continue;
        };
        let mut cx = Cx {
            modules: &modules,
            errors: &mut errors,
            origins: BTreeMap::new(),
            poisoned: &el.poisoned,
        };
        let decl = match d.kind {
            DeclKind::Model => declarations::model_decl(&mut cx, &val).map(Declaration::Model),
            DeclKind::Dataset => {
                declarations::dataset_decl(&mut cx, &val).map(Declaration::Dataset)
            }
            DeclKind::Pipeline => None,
        };
        if let Some(decl) = decl {
            out.push((d.name.name.clone(), decl));
        }
    }
    errors.splice(0..0, el.errors);
    dedup(&mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Drops repeats of the same diagnostic (a `let` used twice, a decl read
/// twice), keeping the first.
fn dedup(errors: &mut Vec<Diagnostic>) {
    let mut seen: Vec<(crate::diagnostic::Code, Span, String)> = Vec::new();
    errors.retain(|d| {
        let key = (d.code, d.primary.span, d.message.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
}
