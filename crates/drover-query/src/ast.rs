//! The syntax tree of a query and its canonical text.
//!
//! `Display` is the parser's inverse: whatever it writes must parse back to
//! an equal tree. So it quotes every value that would not lex as one bare
//! word, and it puts parentheses around every `and`/`or` that sits inside
//! another operator. The parser never merges a parenthesized group into its
//! parent, so this module must not drop those parentheses either.

use std::fmt;

/// Words that are never read as a field or as a bare value.
const KEYWORDS: [&str; 5] = ["and", "or", "not", "in", "has"];

/// Whether `word` is a keyword. Keywords are case-insensitive.
pub(crate) fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| word.eq_ignore_ascii_case(k))
}

/// Characters of a bare (unquoted) word: a field with its key, or a value.
pub(crate) fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '*')
}

/// Characters of a tag or inventory key: the bare characters except `*`.
pub(crate) fn is_key_char(c: char) -> bool {
    c != '*' && is_bare_char(c)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    /// Two or more alternatives.
    Or(Vec<Expr>),
    /// Two or more conditions that must all hold.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: Field,
        op: CompareOp,
        value: String,
    },
    In {
        field: Field,
        values: Vec<String>,
        negated: bool,
    },
    /// The field is always `Field::Tag` or `Field::Inventory`.
    Has(Field),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Tag(String),
    Inventory(String),
    Status,
    Id,
    Group,
}

impl Field {
    /// `has` only applies to fields with a key.
    pub(crate) fn has_key(&self) -> bool {
        matches!(self, Field::Tag(_) | Field::Inventory(_))
    }

    /// `status` and `group` name states and memberships, which have no order.
    pub(crate) fn allows_ordering(&self) -> bool {
        !matches!(self, Field::Status | Field::Group)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Tag(key) => write!(f, "tag.{key}"),
            Field::Inventory(key) => write!(f, "inventory.{key}"),
            Field::Status => f.write_str("status"),
            Field::Id => f.write_str("id"),
            Field::Group => f.write_str("group"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Glob,
    NotGlob,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    pub(crate) const ALL: [CompareOp; 8] = [
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Glob,
        CompareOp::NotGlob,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ];

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Glob => "~",
            CompareOp::NotGlob => "!~",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    pub(crate) fn from_symbol(symbol: &str) -> Option<CompareOp> {
        CompareOp::ALL.into_iter().find(|op| op.symbol() == symbol)
    }

    pub(crate) fn is_ordering(self) -> bool {
        matches!(
            self,
            CompareOp::Lt | CompareOp::Le | CompareOp::Gt | CompareOp::Ge
        )
    }
}

/// A value as the query language writes it: bare when it lexes back as the
/// same single word, otherwise double-quoted with escapes.
pub(crate) struct ValueText<'a>(pub(crate) &'a str);

impl fmt::Display for ValueText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if !value.is_empty() && value.chars().all(is_bare_char) && !is_keyword(value) {
            return f.write_str(value);
        }
        f.write_str("\"")?;
        for c in value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                other => write!(f, "{other}")?,
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => write_joined(f, items, " or ", |e| matches!(e, Expr::Or(_))),
            Expr::And(items) => write_joined(f, items, " and ", |e| {
                matches!(e, Expr::Or(_) | Expr::And(_))
            }),
            Expr::Not(inner) => {
                f.write_str("not ")?;
                write_operand(f, inner, matches!(**inner, Expr::Or(_) | Expr::And(_)))
            }
            Expr::Compare { field, op, value } => {
                write!(f, "{field} {} {}", op.symbol(), ValueText(value))
            }
            Expr::In {
                field,
                values,
                negated,
            } => {
                let keyword = if *negated { "not in" } else { "in" };
                write!(f, "{field} {keyword} (")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", ValueText(value))?;
                }
                f.write_str(")")
            }
            Expr::Has(field) => write!(f, "has {field}"),
        }
    }
}

fn write_joined(
    f: &mut fmt::Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write_operand(f, item, needs_parens(item))?;
    }
    Ok(())
}

fn write_operand(f: &mut fmt::Formatter<'_>, expr: &Expr, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({expr})")
    } else {
        write!(f, "{expr}")
    }
}
