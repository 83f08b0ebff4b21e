//! Splits query text into tokens, one at a time, each with its column.
//!
//! The parser pulls tokens on demand, so the first mistake in reading order
//! is the one reported, whether the lexer or the parser finds it.

use crate::ast::{is_bare_char, is_keyword};
use crate::error::ParseError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A run of bare characters: a keyword, a field or an unquoted value.
    Word(String),
    /// A double-quoted string, escapes already resolved.
    Str(String),
    /// A run of operator characters, known or not (`=`, `==`, `&&`, ...);
    /// the parser decides, so it can suggest the right operator.
    Op(String),
    LParen,
    RParen,
    Comma,
    End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    /// 1-based character column of the token's first character.
    pub(crate) column: usize,
}

impl Token {
    pub(crate) fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.kind, TokenKind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// How an error message names this token after "found".
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Word(w) if is_keyword(w) => format!("keyword \"{w}\""),
            TokenKind::Word(w) | TokenKind::Op(w) => format!("\"{}\"", shorten(w)),
            TokenKind::Str(s) => format!("string {:?}", shorten(s)),
            TokenKind::LParen => "\"(\"".to_owned(),
            TokenKind::RParen => "\")\"".to_owned(),
            TokenKind::Comma => "\",\"".to_owned(),
            TokenKind::End => "end of query".to_owned(),
        }
    }
}

/// Cuts user text quoted in an error message to a readable length.
pub(crate) fn shorten(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn is_op_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~' | '<' | '>' | '&' | '|')
}

pub(crate) struct Lexer {
    chars: Vec<char>,
    /// Index into `chars` of the next character; its column is `pos + 1`.
    pos: usize,
}

impl Lexer {
    pub(crate) fn new(src: &str) -> Lexer {
        Lexer {
            chars: src.chars().collect(),
            pos: 0,
        }
    }

    pub(crate) fn next_token(&mut self) -> Result<Token, ParseError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let column = self.pos + 1;
        let Some(&c) = self.chars.get(self.pos) else {
            return Ok(Token {
                kind: TokenKind::End,
                column,
            });
        };
        let kind = match c {
            '(' => {
                self.pos += 1;
                TokenKind::LParen
            }
            ')' => {
                self.pos += 1;
                TokenKind::RParen
            }
            ',' => {
                self.pos += 1;
                TokenKind::Comma
            }
            '"' => TokenKind::Str(self.string()?),
            c if is_op_char(c) => TokenKind::Op(self.run(is_op_char)),
            c if is_bare_char(c) => TokenKind::Word(self.run(is_bare_char)),
            '\'' => {
                return Err(ParseError::new(
                    column,
                    "unexpected character \"'\": expected a double-quoted string such as \"eu\"",
                ));
            }
            '?' => {
                return Err(ParseError::new(
                    column,
                    "unexpected character \"?\": a value containing \"?\" must be double-quoted, \
                     e.g. tag.host ~ \"web-?\"",
                ));
            }
            other => {
                return Err(ParseError::new(
                    column,
                    format!(
                        "unexpected character \"{}\": bare words may contain only ASCII letters, \
                         digits and _ - . / : *; put other values in double quotes",
                        other.escape_debug()
                    ),
                ));
            }
        };
        Ok(Token { kind, column })
    }

    fn run(&mut self, belongs: fn(char) -> bool) -> String {
        let start = self.pos;
        while self.chars.get(self.pos).is_some_and(|&c| belongs(c)) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// Reads a string whose opening quote is at `self.pos`.
    fn string(&mut self) -> Result<String, ParseError> {
        let open_column = self.pos + 1;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.chars.get(self.pos) {
                None => {
                    return Err(ParseError::new(
                        open_column,
                        "unterminated string: expected a closing double quote for the string \
                         that starts here, found end of query",
                    ));
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    let escaped = match self.chars.get(self.pos + 1) {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some(other) => {
                            return Err(ParseError::new(
                                self.pos + 1,
                                format!(
                                    "unknown escape \"\\{}\" in string: expected \\\" \\\\ \\n or \
                                     \\t after a backslash",
                                    other.escape_debug()
                                ),
                            ));
                        }
                        None => {
                            return Err(ParseError::new(
                                open_column,
                                "unterminated string: expected a closing double quote for the \
                                 string that starts here, found end of query",
                            ));
                        }
                    };
                    out.push(escaped);
                    self.pos += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<TokenKind> {
        let mut lexer = Lexer::new(src);
        let mut out = Vec::new();
        loop {
            let token = lexer.next_token().expect("lexes");
            if token.kind == TokenKind::End {
                return out;
            }
            out.push(token.kind);
        }
    }

    #[test]
    fn operators_need_no_spaces_around_them() {
        assert_eq!(
            kinds("tag.a!=-5"),
            vec![
                TokenKind::Word("tag.a".into()),
                TokenKind::Op("!=".into()),
                TokenKind::Word("-5".into()),
            ]
        );
    }

    #[test]
    fn escapes_are_resolved() {
        assert_eq!(
            kinds(r#""a\"b\\c\nd\te""#),
            vec![TokenKind::Str("a\"b\\c\nd\te".into())]
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let mut lexer = Lexer::new("\"ü\" x");
        lexer.next_token().unwrap();
        assert_eq!(lexer.next_token().unwrap().column, 5);
    }

    #[test]
    fn long_text_is_shortened_in_messages() {
        let long = "a".repeat(100);
        assert_eq!(shorten(&long), format!("{}…", "a".repeat(40)));
        assert_eq!(shorten("short"), "short");
    }
}
