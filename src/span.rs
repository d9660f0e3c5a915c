//! Source files and byte spans.
//!
//! Every AST node and every value that came from a `.ft` file carries a [`Span`]:
//! a source id plus byte offsets. [`Sources`] owns the text of each file the
//! checker read, so diagnostics can be rendered long after parsing.

use serde::{Deserialize, Serialize};

/// Index of a file in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceId(pub u32);

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// The file the range is in.
    pub source: SourceId,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// A span over `start..end` of `source`.
    pub fn new(source: SourceId, start: usize, end: usize) -> Span {
        Span { source, start, end }
    }

    /// The smallest span covering both `self` and `other` (same source).
    pub fn to(self, other: Span) -> Span {
        Span::new(
            self.source,
            self.start.min(other.start),
            self.end.max(other.end),
        )
    }
}

/// One source file: its display name (a project-relative path, or `std/NAME`
/// for the embedded standard library) and its text.
#[derive(Clone, Debug)]
pub struct Source {
    /// What diagnostics call the file.
    pub name: String,
    /// The file's full text.
    pub text: String,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

/// All files read while checking one entry file.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<Source>,
}

impl Sources {
    /// An empty set.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Adds a file and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> SourceId {
        let text: String = text.into();
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        self.files.push(Source {
            name: name.into(),
            text,
            line_starts,
        });
        SourceId(self.files.len() as u32 - 1)
    }

    /// The file with this id.
    pub fn get(&self, id: SourceId) -> &Source {
        &self.files[id.0 as usize]
    }

    /// The id of the file with this name, if it was read.
    pub fn find(&self, name: &str) -> Option<SourceId> {
        self.files
            .iter()
            .position(|f| f.name == name)
            .map(|i| SourceId(i as u32))
    }

    /// The entry file's id (the first one added).
    pub fn find_entry(&self) -> SourceId {
        SourceId(0)
    }

    /// Every file, in the order read.
    pub fn iter(&self) -> impl Iterator<Item = (SourceId, &Source)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (SourceId(i as u32), f))
    }

    /// The text a span covers.
    pub fn slice(&self, span: Span) -> &str {
        &self.get(span.source).text[span.start..span.end]
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, source: SourceId, offset: usize) -> (usize, usize) {
        let file = self.get(source);
        let offset = offset.min(file.text.len());
        let line = file.line_starts.partition_point(|&s| s <= offset);
        let start = file.line_starts[line - 1];
        let col = file
            .text
            .get(start..offset)
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, col)
    }
}
