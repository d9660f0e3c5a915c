//! Comments, found by a small scanner beside the parser.
//!
//! The grammar skips comments, so the formatter asks this module where they
//! are. The scanner knows just enough of the syntax to not mistake a `#`
//! inside a string for a comment.

/// One `# ...` comment.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    /// Byte offset of the `#`.
    pub start: usize,
    /// Byte offset of the end of the line (exclusive).
    pub end: usize,
    /// The text, `#` included, trailing whitespace removed.
    pub text: String,
    /// True when only whitespace precedes it on its line.
    pub own_line: bool,
}

/// Every comment in `text`, in order.
pub fn comments(text: &str) -> Vec<Comment> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    let mut line_start = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' | b'\n' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'#' {
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            let own_line = text[line_start..i].trim().is_empty();
            out.push(Comment {
                start: i,
                end,
                text: text[i..end].trim_end().to_string(),
                own_line,
            });
            i = end;
            continue;
        }
        if bytes.get(i) == Some(&b'\n') {
            line_start = i + 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_inside_a_string_is_not_a_comment() {
        let found = comments("a = \"x # y\" # real\n# own\n");
        let texts: Vec<_> = found
            .iter()
            .map(|c| (c.text.as_str(), c.own_line))
            .collect();
        assert_eq!(texts, vec![("# real", false), ("# own", true)]);
    }

    #[test]
    fn escaped_quote_keeps_the_string_open() {
        let found = comments(r##"a = "say \"#\"" # c"##);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].text, "# c");
    }
}
