//! Recursive-descent parser from query text to [`Expr`].
//!
//! ```text
//! query     = or_expr END
//! or_expr   = and_expr { "or" and_expr }
//! and_expr  = not_expr { "and" not_expr }
//! not_expr  = "not" not_expr | "(" or_expr ")" | condition
//! condition = "has" key_field
//!           | field op value
//!           | field [ "not" ] "in" "(" value { "," value } ")"
//! ```
//!
//! The parser only recurses through `(` and `not`, and both count against
//! [`MAX_DEPTH`], so no input can overflow the stack.

use crate::ast::{CompareOp, Expr, Field, is_key_char, is_keyword};
use crate::error::ParseError;
use crate::lexer::{Lexer, Token, TokenKind, shorten};

/// Longest query source accepted, in bytes. The canonical form written by
/// `Display` must fit too, so that it always parses back.
pub(crate) const MAX_SOURCE_BYTES: usize = 4096;
/// Deepest nesting of parentheses and `not` accepted.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most conditions (`=`, `in`, `has`, ...) accepted in one query.
pub(crate) const MAX_TERMS: usize = 256;

const OPERATOR_LIST: &str = "=, !=, ~, !~, <, <=, >, >=, in or not in";

pub(crate) fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > MAX_SOURCE_BYTES {
        // Point at the first character that does not fit.
        let column = src
            .char_indices()
            .take_while(|(i, c)| i + c.len_utf8() <= MAX_SOURCE_BYTES)
            .count()
            + 1;
        return Err(ParseError::new(
            column,
            format!(
                "query is too long: expected at most {MAX_SOURCE_BYTES} bytes, found {}",
                src.len()
            ),
        ));
    }
    let mut parser = Parser {
        lexer: Lexer::new(src),
        pending: None,
        depth: 0,
        terms: 0,
    };
    let expr = parser.or_expr("")?;
    let end = parser.next()?;
    if end.kind != TokenKind::End {
        return Err(after_condition_error(&end, None));
    }
    // The canonical form spaces operators and may escape characters, so it
    // can be longer than a compact source; refuse what could not round-trip.
    let canonical_len = expr.to_string().len();
    if canonical_len > MAX_SOURCE_BYTES {
        return Err(ParseError::new(
            1,
            format!(
                "query is too long: written in canonical form (one space around each operator) \
                 it takes {canonical_len} bytes; expected at most {MAX_SOURCE_BYTES}"
            ),
        ));
    }
    Ok(expr)
}

struct Parser {
    lexer: Lexer,
    /// A token read ahead and put back.
    pending: Option<Token>,
    /// Open parentheses and `not`s around the current position.
    depth: usize,
    /// Conditions read so far.
    terms: usize,
}

impl Parser {
    fn next(&mut self) -> Result<Token, ParseError> {
        match self.pending.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    fn put_back(&mut self, token: Token) {
        debug_assert!(self.pending.is_none(), "one token of lookahead at most");
        self.pending = Some(token);
    }

    fn enter(&mut self, column: usize) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(ParseError::new(
                column,
                format!(
                    "query nests too deeply: expected at most {MAX_DEPTH} levels of parentheses \
                     and \"not\", found more"
                ),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn count_term(&mut self, column: usize) -> Result<(), ParseError> {
        if self.terms >= MAX_TERMS {
            return Err(ParseError::new(
                column,
                format!("query has too many conditions: expected at most {MAX_TERMS}, found more"),
            ));
        }
        self.terms += 1;
        Ok(())
    }

    /// `after` names the token before this expression, for error messages;
    /// empty at the start of the query.
    fn or_expr(&mut self, after: &'static str) -> Result<Expr, ParseError> {
        let mut items = vec![self.and_expr(after)?];
        loop {
            let token = self.next()?;
            if token.is_keyword("or") {
                items.push(self.and_expr("or")?);
            } else {
                self.put_back(token);
                break;
            }
        }
        Ok(collapse(items, Expr::Or))
    }

    fn and_expr(&mut self, after: &'static str) -> Result<Expr, ParseError> {
        let mut items = vec![self.not_expr(after)?];
        loop {
            let token = self.next()?;
            if token.is_keyword("and") {
                items.push(self.not_expr("and")?);
            } else {
                self.put_back(token);
                break;
            }
        }
        Ok(collapse(items, Expr::And))
    }

    fn not_expr(&mut self, after: &'static str) -> Result<Expr, ParseError> {
        let token = self.next()?;
        if token.is_keyword("not") {
            self.enter(token.column)?;
            let inner = self.not_expr("not")?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        match &token.kind {
            TokenKind::LParen => {
                self.enter(token.column)?;
                let inner = self.or_expr("(")?;
                let close = self.next()?;
                if close.kind != TokenKind::RParen {
                    return Err(after_condition_error(&close, Some(token.column)));
                }
                self.depth -= 1;
                Ok(inner)
            }
            TokenKind::Word(word) if word.eq_ignore_ascii_case("has") => self.has(token.column),
            TokenKind::Word(word) if !is_keyword(word) => self.condition(word, token.column),
            _ => Err(expected_condition(&token, after)),
        }
    }

    fn has(&mut self, has_column: usize) -> Result<Expr, ParseError> {
        self.count_term(has_column)?;
        let token = self.next()?;
        let field = match &token.kind {
            TokenKind::Word(word) if !is_keyword(word) => parse_field(word, token.column)?,
            _ => {
                return Err(ParseError::new(
                    token.column,
                    format!(
                        "expected a field such as tag.region after \"has\", found {}",
                        token.describe()
                    ),
                ));
            }
        };
        if !field.has_key() {
            return Err(ParseError::new(
                token.column,
                format!(
                    "expected a tag.<key> or inventory.<key> field after \"has\", found \
                     \"{field}\": \"has\" tests whether a tag or inventory key is present"
                ),
            ));
        }
        Ok(Expr::Has(field))
    }

    fn condition(&mut self, word: &str, column: usize) -> Result<Expr, ParseError> {
        let field = parse_field(word, column)?;
        self.count_term(column)?;
        let token = self.next()?;
        match &token.kind {
            TokenKind::Op(symbol) => {
                let Some(op) = CompareOp::from_symbol(symbol) else {
                    return Err(unknown_operator(symbol, token.column));
                };
                if op.is_ordering() && !field.allows_ordering() {
                    return Err(ParseError::new(
                        token.column,
                        format!(
                            "operator \"{symbol}\" does not apply to {field}: expected =, !=, ~, \
                             !~, in or not in"
                        ),
                    ));
                }
                let value = self.value(&format!("after \"{symbol}\""))?;
                Ok(Expr::Compare { field, op, value })
            }
            TokenKind::Word(w) if w.eq_ignore_ascii_case("in") => self.list(field, false),
            TokenKind::Word(w) if w.eq_ignore_ascii_case("not") => {
                let next = self.next()?;
                if next.is_keyword("in") {
                    return self.list(field, true);
                }
                let mut message =
                    format!("expected \"in\" after \"not\", found {}", next.describe());
                if matches!(&next.kind, TokenKind::Op(_)) {
                    message.push_str(
                        "; to negate a comparison use \"!=\" or \"!~\", or put \"not\" before the \
                         field",
                    );
                }
                Err(ParseError::new(next.column, message))
            }
            _ => {
                let mut message = format!(
                    "expected an operator after \"{field}\" ({OPERATOR_LIST}), found {}",
                    token.describe()
                );
                let at_boundary = token.kind == TokenKind::End
                    || token.kind == TokenKind::RParen
                    || token.is_keyword("and")
                    || token.is_keyword("or");
                if field.has_key() && at_boundary {
                    message.push_str(&format!(
                        "; to test that the key is present, write \"has {field}\""
                    ));
                }
                Err(ParseError::new(token.column, message))
            }
        }
    }

    /// The parenthesized list after `in`.
    fn list(&mut self, field: Field, negated: bool) -> Result<Expr, ParseError> {
        let open = self.next()?;
        if open.kind != TokenKind::LParen {
            return Err(ParseError::new(
                open.column,
                format!(
                    "expected \"(\" after \"in\", found {}; write a list such as \
                     tag.region in (eu, us)",
                    open.describe()
                ),
            ));
        }
        let mut values = vec![self.value("after \"(\" (a list needs at least one value)")?];
        loop {
            let token = self.next()?;
            match token.kind {
                TokenKind::RParen => break,
                TokenKind::Comma => values.push(self.value("after \",\"")?),
                _ => {
                    return Err(ParseError::new(
                        token.column,
                        format!(
                            "expected \",\" or \")\" in the list, found {}",
                            token.describe()
                        ),
                    ));
                }
            }
        }
        Ok(Expr::In {
            field,
            values,
            negated,
        })
    }

    /// `context` completes "expected a value ...", e.g. `after "="`.
    fn value(&mut self, context: &str) -> Result<String, ParseError> {
        let token = self.next()?;
        match token.kind {
            TokenKind::Str(s) => Ok(s),
            TokenKind::Word(w) if is_keyword(&w) => Err(ParseError::new(
                token.column,
                format!(
                    "expected a value {context}, found keyword \"{w}\"; write \"{w}\" in double \
                     quotes to use it as a value"
                ),
            )),
            TokenKind::Word(w) => Ok(w),
            _ => Err(ParseError::new(
                token.column,
                format!("expected a value {context}, found {}", token.describe()),
            )),
        }
    }
}

fn collapse(mut items: Vec<Expr>, combine: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1
        && let Some(only) = items.pop()
    {
        return only;
    }
    combine(items)
}

fn expected_condition(found: &Token, after: &str) -> ParseError {
    let mut message = if after.is_empty() {
        format!(
            "expected a condition such as tag.region = \"eu\", found {}",
            found.describe()
        )
    } else {
        format!(
            "expected a condition after \"{after}\", found {}",
            found.describe()
        )
    };
    match &found.kind {
        TokenKind::Op(op) if op == "!" => message.push_str("; use \"not\" to negate a condition"),
        TokenKind::Str(_) => {
            message.push_str("; a condition starts with a field such as tag.region or status")
        }
        _ => {}
    }
    ParseError::new(found.column, message)
}

/// What follows a complete condition was neither `and`, `or`, nor the `)`
/// or end of query that would close it.
fn after_condition_error(found: &Token, open_paren: Option<usize>) -> ParseError {
    let expected = match open_paren {
        None => "\"and\", \"or\" or end of query".to_owned(),
        Some(column) => format!("\"and\", \"or\" or \")\" to close the \"(\" at column {column}"),
    };
    let mut message = format!("expected {expected}, found {}", found.describe());
    match &found.kind {
        TokenKind::Op(op) if op == "&&" || op == "&" => message.push_str("; did you mean \"and\"?"),
        TokenKind::Op(op) if op == "||" || op == "|" => message.push_str("; did you mean \"or\"?"),
        TokenKind::RParen => message.push_str("; there is no \"(\" for it to close"),
        TokenKind::Word(w) if w.eq_ignore_ascii_case("not") => {
            message.push_str("; did you mean \"and not\"?")
        }
        TokenKind::Word(w) if is_keyword(w) => {}
        TokenKind::Word(w) if parse_field(w, 1).is_ok() => {
            message.push_str("; is \"and\" or \"or\" missing before it?")
        }
        TokenKind::Word(_) => message.push_str("; a value containing spaces must be double-quoted"),
        _ => {}
    }
    ParseError::new(found.column, message)
}

fn unknown_operator(symbol: &str, column: usize) -> ParseError {
    let suggestion = match symbol {
        "==" | "===" => Some("\"=\""),
        "!==" | "<>" | "=!" => Some("\"!=\""),
        "=~" | "~=" | "~~" => Some("\"~\""),
        "~!" | "!~~" | "!=~" => Some("\"!~\""),
        "=<" => Some("\"<=\""),
        "=>" => Some("\">=\""),
        "!" => Some("\"!=\" or \"!~\""),
        "&&" | "&" => Some("\"and\""),
        "||" | "|" => Some("\"or\""),
        _ => None,
    };
    let shown = shorten(symbol);
    let message = match suggestion {
        Some(suggestion) => format!("unknown operator \"{shown}\"; did you mean {suggestion}?"),
        None => format!("unknown operator \"{shown}\": expected {OPERATOR_LIST}"),
    };
    ParseError::new(column, message)
}

/// Reads a field from a word that starts at `column`.
fn parse_field(word: &str, column: usize) -> Result<Field, ParseError> {
    let Some((prefix, key)) = word.split_once('.') else {
        return match word.to_ascii_lowercase().as_str() {
            "status" => Ok(Field::Status),
            "id" => Ok(Field::Id),
            "group" => Ok(Field::Group),
            "tag" | "inventory" => {
                let lower = word.to_ascii_lowercase();
                Err(ParseError::new(
                    column,
                    format!(
                        "expected a field such as {lower}.region, found \"{word}\" without a key"
                    ),
                ))
            }
            _ => Err(unknown_field(word, column)),
        };
    };
    let make: fn(String) -> Field = if prefix.eq_ignore_ascii_case("tag") {
        Field::Tag
    } else if prefix.eq_ignore_ascii_case("inventory") {
        Field::Inventory
    } else if ["status", "id", "group"]
        .iter()
        .any(|f| prefix.eq_ignore_ascii_case(f))
    {
        return Err(ParseError::new(
            column,
            format!(
                "\"{}\" has no keys: expected \"{}\", found \"{}\"",
                prefix.to_ascii_lowercase(),
                prefix.to_ascii_lowercase(),
                shorten(word)
            ),
        ));
    } else {
        return Err(unknown_field(word, column));
    };
    let key_column = column + prefix.chars().count() + 1;
    if key.is_empty() {
        return Err(ParseError::new(
            key_column,
            format!(
                "expected a key after \"{prefix}.\", found nothing; write it like {}.region",
                prefix.to_ascii_lowercase()
            ),
        ));
    }
    if let Some((offset, bad)) = key.chars().enumerate().find(|(_, c)| !is_key_char(*c)) {
        return Err(ParseError::new(
            key_column + offset,
            format!(
                "unexpected \"{bad}\" in a key: keys may contain only letters, digits and \
                 _ - . / :"
            ),
        ));
    }
    Ok(make(key.to_owned()))
}

fn unknown_field(word: &str, column: usize) -> ParseError {
    let shown = shorten(word);
    let message = match suggest_field(word) {
        Some(suggestion) => format!("unknown field \"{shown}\"; did you mean {suggestion}?"),
        None => format!(
            "unknown field \"{shown}\": expected tag.<key>, inventory.<key>, status, id or group"
        ),
    };
    ParseError::new(column, message)
}

/// A likely intended field for a misspelled one, already quoted.
fn suggest_field(word: &str) -> Option<String> {
    if let Some((prefix, key)) = word.split_once('.') {
        if key.is_empty() || !key.chars().all(is_key_char) {
            return None;
        }
        let table: [(&str, &[&str]); 2] = [
            ("tag", &["tags", "label", "labels"]),
            ("inventory", &["inv", "inventories"]),
        ];
        let target = closest(prefix, &table)?;
        return Some(format!("\"{target}.{key}\""));
    }
    let table: [(&str, &[&str]); 3] = [
        ("status", &["state", "connection", "enrollment"]),
        ("id", &["device", "device_id", "uuid"]),
        ("group", &["groups"]),
    ];
    if let Some(target) = closest(word, &table) {
        return Some(format!("\"{target}\""));
    }
    let looks_like_key =
        word.starts_with(|c: char| c.is_ascii_alphabetic()) && word.chars().all(is_key_char);
    looks_like_key.then(|| format!("\"tag.{word}\" or \"inventory.{word}\""))
}

/// The target `name` is an alias or a small misspelling of.
fn closest<'t>(name: &str, table: &[(&'t str, &[&str])]) -> Option<&'t str> {
    const LONGEST_NAME: usize = 32;
    if name.len() > LONGEST_NAME {
        return None;
    }
    let name = name.to_ascii_lowercase();
    table.iter().find_map(|&(target, aliases)| {
        let allowed = if target.len() <= 3 { 1 } else { 2 };
        let near = aliases.contains(&name.as_str()) || edit_distance(&name, target) <= allowed;
        near.then_some(target)
    })
}

/// Levenshtein distance, for names of at most a few dozen characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("tags", "tag"), 1);
        assert_eq!(edit_distance("inventroy", "inventory"), 2);
        assert_eq!(edit_distance("", "id"), 2);
        assert_eq!(edit_distance("status", "status"), 0);
    }

    #[test]
    fn or_binds_looser_than_and() {
        let expr = parse("tag.a = 1 or tag.b = 2 and tag.c = 3").unwrap();
        let Expr::Or(items) = expr else {
            panic!("expected or at the top, got {expr:?}")
        };
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[1], Expr::And(and) if and.len() == 2));
    }

    #[test]
    fn not_binds_tighter_than_and() {
        let expr = parse("not tag.a = 1 and tag.b = 2").unwrap();
        let Expr::And(items) = expr else {
            panic!("expected and at the top, got {expr:?}")
        };
        assert!(matches!(&items[0], Expr::Not(_)));
    }

    #[test]
    fn parentheses_are_not_merged_into_the_parent() {
        let expr = parse("tag.a = 1 or (tag.b = 2 or tag.c = 3)").unwrap();
        let Expr::Or(items) = expr else {
            panic!("expected or at the top, got {expr:?}")
        };
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[1], Expr::Or(inner) if inner.len() == 2));
    }

    #[test]
    fn redundant_parentheses_vanish() {
        assert_eq!(parse("((tag.a = 1))").unwrap(), parse("tag.a = 1").unwrap());
    }
}
