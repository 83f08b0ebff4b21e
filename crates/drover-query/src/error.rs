//! The parse error: a column and a message that says what was expected and
//! what was found, plus a caret rendering for terminals.

use std::fmt;

/// Why a query did not parse, and where.
///
/// `column` is 1-based and counts characters (not bytes) from the start of
/// the query, newlines included. One past the last character means "at the
/// end of the query".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(column: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column,
            message: message.into(),
        }
    }

    /// The line of `src` that holds the error, and under it a caret at the
    /// error's column, for CLI output:
    ///
    /// ```text
    /// tags.region = "eu"
    /// ^
    /// ```
    ///
    /// Tabs before the caret are kept so the caret lines up. Control
    /// characters and bidirectional-text overrides in the line are shown as
    /// `�` so a hostile query cannot drive the terminal. Never panics, even
    /// when `src` is not the text that was parsed.
    pub fn render(&self, src: &str) -> String {
        let target = self.column.max(1);
        // Column of the first character of `line`.
        let mut line_start = 1;
        let mut line: Vec<char> = Vec::new();
        for (column, c) in (1..).zip(src.chars()) {
            if c == '\n' {
                if target <= column {
                    break;
                }
                line.clear();
                line_start = column + 1;
            } else {
                line.push(c);
            }
        }
        // A column past the end of the line puts the caret just after it.
        let offset = target.saturating_sub(line_start).min(line.len());
        let mut out: String = line.iter().map(|&c| visible(c)).collect();
        out.push('\n');
        out.extend(
            line[..offset]
                .iter()
                .map(|&c| if c == '\t' { '\t' } else { ' ' }),
        );
        out.push('^');
        out
    }
}

/// One visible character standing for `c` on a terminal.
fn visible(c: char) -> char {
    match c {
        '\t' => '\t',
        '\r' => ' ',
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => '\u{FFFD}',
        c if c.is_control() => '\u{FFFD}',
        c => c,
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_points_at_the_column() {
        let e = ParseError::new(5, "x");
        assert_eq!(e.render("tag.x == 1"), "tag.x == 1\n    ^");
    }

    #[test]
    fn render_at_end_of_query_puts_caret_after_last_char() {
        let e = ParseError::new(8, "x");
        assert_eq!(e.render("tag.x ="), "tag.x =\n       ^");
    }

    #[test]
    fn render_picks_the_line_holding_the_column() {
        // "a = b\n" is columns 1..=6; "and c ==" starts at column 7.
        let src = "a = b\nand c == d\nor e = f";
        let e = ParseError::new(13, "x");
        assert_eq!(e.render(src), "and c == d\n      ^");
    }

    #[test]
    fn render_keeps_tabs_so_the_caret_lines_up() {
        let e = ParseError::new(3, "x");
        assert_eq!(e.render("\ta?"), "\ta?\n\t ^");
    }

    #[test]
    fn render_hides_terminal_control_characters() {
        let e = ParseError::new(1, "x");
        assert_eq!(e.render("\u{1b}[2J"), "\u{FFFD}[2J\n^");
    }

    #[test]
    fn render_survives_columns_outside_the_text() {
        assert_eq!(ParseError::new(0, "x").render("ab"), "ab\n^");
        assert_eq!(ParseError::new(usize::MAX, "x").render("ab"), "ab\n  ^");
        assert_eq!(ParseError::new(3, "x").render(""), "\n^");
    }

    #[test]
    fn display_leads_with_the_column() {
        let e = ParseError::new(23, "expected a value after \"=\", found end of query");
        assert_eq!(
            e.to_string(),
            "column 23: expected a value after \"=\", found end of query"
        );
    }
}
