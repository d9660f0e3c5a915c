//! Loading a file and everything it imports.
//!
//! Imports are either stdlib modules (`import "std/models"`) or project files
//! relative to the importing file (`import "./common.ft"`). Paths never leave
//! the project, cycles are reported at the import that closes them, and each
//! module records what its names are bound to.

use crate::diagnostic::{Code, Diagnostic, closest};
use crate::span::{SourceId, Sources, Span};
use crate::stdlib;
use crate::syntax::{self, ast};
use std::collections::BTreeMap;

/// Reads project files. Paths are project-relative and `/`-separated.
pub trait Loader {
    /// The text of the file, or why it cannot be read.
    fn read(&self, path: &str) -> Result<String, String>;
}

/// A loaded module.
pub struct Module {
    /// `std/NAME` or a project-relative path.
    pub path: String,
    /// Whether it is part of the stdlib.
    pub is_std: bool,
    /// Its source.
    pub source: SourceId,
    /// Its syntax tree.
    pub file: ast::File,
    /// Import alias → module index.
    pub imports: BTreeMap<String, (usize, Span)>,
    /// Name → item index, for `let`s and declarations.
    pub names: BTreeMap<String, usize>,
}

impl Module {
    /// The directory relative paths in this module resolve against.
    pub fn dir(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(d, _)| d)
    }
}

/// All modules reachable from the entry file; index 0 is the entry.
pub struct Modules {
    /// The modules.
    pub list: Vec<Module>,
}

impl Modules {
    /// The module a source belongs to.
    pub fn by_source(&self, source: SourceId) -> Option<&Module> {
        self.list.iter().find(|m| m.source == source)
    }
}

struct LoadState<'a> {
    loader: &'a dyn Loader,
    sources: &'a mut Sources,
    display_prefix: &'a str,
    modules: Vec<Module>,
    by_path: BTreeMap<String, usize>,
    stack: Vec<String>,
    errors: Vec<Diagnostic>,
}

/// Loads `entry` (a project-relative path) and its imports. `display_prefix`
/// is prepended to project paths in diagnostics (the entry's directory as
/// the user wrote it).
pub fn load(
    entry: &str,
    loader: &dyn Loader,
    sources: &mut Sources,
    display_prefix: &str,
) -> (Modules, Vec<Diagnostic>) {
    let mut st = LoadState {
        loader,
        sources,
        display_prefix,
        modules: Vec::new(),
        by_path: BTreeMap::new(),
        stack: Vec::new(),
        errors: Vec::new(),
    };
    let text = match loader.read(entry) {
        Ok(t) => t,
        Err(why) => {
            let source = st.sources.add(format!("{display_prefix}{entry}"), "");
            st.errors.push(
                Diagnostic::error(
                    Code::ImportNotFound,
                    Span::new(source, 0, 0),
                    format!("cannot read `{display_prefix}{entry}`: {why}"),
                )
                .hint("check the path; pipeline files end in `.ft`"),
            );
            return (Modules { list: Vec::new() }, st.errors);
        }
    };
    st.add(entry.to_string(), false, text);
    (Modules { list: st.modules }, st.errors)
}

impl LoadState<'_> {
    fn add(&mut self, path: String, is_std: bool, text: String) -> usize {
        let display = if is_std {
            format!("{path}.ft")
        } else {
            format!("{}{path}", self.display_prefix)
        };
        let source = self.sources.add(display, text.clone());
        let file = match syntax::parse(source, &text) {
            Ok(f) => f,
            Err(errs) => {
                self.errors.extend(errs);
                ast::File {
                    source,
                    items: Vec::new(),
                }
            }
        };
        let index = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            is_std,
            source,
            file,
            imports: BTreeMap::new(),
            names: BTreeMap::new(),
        });
        self.by_path.insert(path.clone(), index);
        self.stack.push(path);
        let items = self.modules[index].file.items.clone();
        let mut seen: BTreeMap<String, Span> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let (name, span) = match item {
                ast::Item::Import(import) => {
                    let Some((target, alias)) = self.import(index, import) else {
                        continue;
                    };
                    self.modules[index]
                        .imports
                        .insert(alias.clone(), (target, import.span));
                    let span = import.alias.as_ref().map_or(import.path_span, |a| a.span);
                    (alias, span)
                }
                ast::Item::Let(l) => {
                    self.modules[index].names.insert(l.name.name.clone(), i);
                    (l.name.name.clone(), l.name.span)
                }
                ast::Item::Decl(d) => {
                    self.modules[index].names.insert(d.name.name.clone(), i);
                    (d.name.name.clone(), d.name.span)
                }
            };
            if let Some(first) = seen.get(&name) {
                self.errors.push(
                    Diagnostic::error(
                        Code::DuplicateDefinition,
                        span,
                        format!("`{name}` is defined twice in this file"),
                    )
                    .label("defined again here")
                    .with_label(*first, "first defined here")
                    .hint("rename one of them (imports can be renamed with `as`)"),
                );
            } else {
                seen.insert(name, span);
            }
        }
        self.stack.pop();
        index
    }

    /// Resolves and loads one import; returns the module index and the alias.
    fn import(&mut self, importer: usize, import: &ast::Import) -> Option<(usize, String)> {
        let (path, is_std) = self.resolve(importer, import)?;
        let alias = match &import.alias {
            Some(a) => a.name.clone(),
            None => default_alias(&path),
        };
        if let Some(&index) = self.by_path.get(&path) {
            if let Some(pos) = self.stack.iter().position(|p| *p == path) {
                let mut chain: Vec<String> = self.stack[pos..].to_vec();
                chain.push(path.clone());
                self.errors.push(
                    Diagnostic::error(Code::ImportCycle, import.path_span, "import cycle")
                        .label(format!("`{path}` is already being imported"))
                        .note(format!("the cycle: {}", chain.join(" → ")))
                        .hint("move what both files need into a third file that imports neither"),
                );
                return None;
            }
            return Some((index, alias));
        }
        let text = if is_std {
            stdlib::get(path.trim_start_matches("std/")).map(str::to_string)
        } else {
            match self.loader.read(&path) {
                Ok(t) => Some(t),
                Err(why) => {
                    self.errors.push(
                        Diagnostic::error(
                            Code::ImportNotFound,
                            import.path_span,
                            format!("cannot import `{}`", import.path),
                        )
                        .label(format!("{why}: {}{path}", self.display_prefix))
                        .hint("imported paths are relative to the importing file"),
                    );
                    return None;
                }
            }
        };
        let Some(text) = text else {
            let name = path.trim_start_matches("std/");
            let names = stdlib::names();
            let diag = Diagnostic::error(
                Code::ImportNotFound,
                import.path_span,
                format!("no stdlib module `{name}`"),
            )
            .label("not in the standard library")
            .maybe_hint(
                closest(name, names.iter().copied())
                    .map(|best| format!("did you mean `std/{best}`?")),
            )
            .note(format!(
                "the stdlib has: {}",
                names
                    .iter()
                    .map(|n| format!("std/{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            self.errors.push(diag);
            return None;
        };
        Some((self.add(path, is_std, text), alias))
    }

    /// Turns an import string into a module path, enforcing project bounds.
    fn resolve(&mut self, importer: usize, import: &ast::Import) -> Option<(String, bool)> {
        let raw = import.path.as_str();
        if let Some(name) = raw.strip_prefix("std/") {
            return Some((format!("std/{}", name.trim_end_matches(".ft")), true));
        }
        let module = &self.modules[importer];
        if module.is_std {
            self.errors.push(
                Diagnostic::error(
                    Code::ImportNotFound,
                    import.path_span,
                    "stdlib modules import only other stdlib modules",
                )
                .label("a project path"),
            );
            return None;
        }
        let with_ext = if raw.ends_with(".ft") {
            raw.to_string()
        } else {
            format!("{raw}.ft")
        };
        match project_path(module.dir(), &with_ext) {
            Ok(p) => Some((p, false)),
            Err(why) => {
                self.errors.push(path_escape(import.path_span, raw, &why));
                None
            }
        }
    }
}

/// `std/models` → `models`; `../shared/common-defs.ft` → `common_defs`.
fn default_alias(path: &str) -> String {
    let stem = path
        .rsplit('/')
        .next()
        .unwrap_or(path)
        .trim_end_matches(".ft");
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Joins `rel` onto project directory `dir` and normalises it; fails when the
/// result is absolute or climbs out of the project.
pub fn project_path(dir: &str, rel: &str) -> Result<String, String> {
    if rel.starts_with('/')
        || rel.starts_with('\\')
        || rel.chars().nth(1) == Some(':')
        || rel.starts_with('~')
    {
        return Err("absolute paths are not allowed".into());
    }
    if rel.contains('\\') {
        return Err("paths use `/`, not `\\`".into());
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("it climbs out of the project".into());
                }
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return Err("it names the project folder itself, not a file".into());
    }
    Ok(parts.join("/"))
}

/// The diagnostic for a path that leaves the project.
pub fn path_escape(span: Span, raw: &str, why: &str) -> Diagnostic {
    Diagnostic::error(Code::PathEscapesProject, span, format!("`{raw}` is outside the project"))
        .label(why.to_string())
        .note("pipelines are shared, so they may only read files inside the folder of the pipeline that is run")
        .hint("copy the file into the project, or use `data(\"...\")` to find data on the data search path (FTL_DATA_PATH)")
}
