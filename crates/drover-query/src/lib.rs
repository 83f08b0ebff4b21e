//! The device query language behind dynamic groups and
//! `drover devices list --query`.
//!
//! A query such as
//! `tag.region = "eu" and inventory.arch = "aarch64" and status = online`
//! is parsed once with [`Query::parse`] and then tested against many devices
//! with [`Query::matches`]. `docs/query.md` has the grammar, what each
//! operator means and example errors.
//!
//! Queries come from operators, API clients and stored group definitions,
//! so the parser treats its input as hostile:
//!
//! - It never panics and never overflows the stack, whatever the input. The
//!   source may be at most 4096 bytes, nesting at most 32 levels deep and a
//!   query at most 256 conditions; anything more is a [`ParseError`].
//! - Each error carries a 1-based column and says what was expected and what
//!   was found; [`ParseError::render`] draws a caret under the column.
//! - `Display` writes a canonical form that parses back to an equal query,
//!   so a query can be stored in canonical form and reloaded.
//!
//! This crate must never do I/O, read the clock or the environment, or
//! depend on anything beyond `std`: the server, the CLI and perhaps the agent
//! link it. [`Query::matches`] reads only the [`DeviceView`] it is given.

mod ast;
mod error;
mod eval;
mod lexer;
mod parser;

#[cfg(test)]
mod proptests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use crate::error::ParseError;

/// A parsed device query.
///
/// Two queries are equal when they have the same syntax tree. The source
/// text does not take part, so `TAG.a=b` equals `tag.a = "b"`.
#[derive(Clone, Debug)]
pub struct Query {
    source: String,
    expr: ast::Expr,
}

impl Query {
    /// Parses query text. See the crate documentation for the limits.
    pub fn parse(src: &str) -> Result<Query, ParseError> {
        let expr = parser::parse(src)?;
        Ok(Query {
            source: src.to_owned(),
            expr,
        })
    }

    /// Whether `device` satisfies the query.
    pub fn matches(&self, device: &DeviceView<'_>) -> bool {
        eval::matches(&self.expr, device)
    }

    /// The text the query was parsed from, unchanged.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Query {
    fn eq(&self, other: &Query) -> bool {
        self.expr == other.expr
    }
}

impl Eq for Query {}

impl FromStr for Query {
    type Err = ParseError;

    fn from_str(src: &str) -> Result<Query, ParseError> {
        Query::parse(src)
    }
}

/// The canonical text: lowercase keywords and field names, one space around
/// each operator, values quoted only when they must be, parentheses only
/// where they change the meaning. It parses back to an equal [`Query`].
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.expr, f)
    }
}

/// What a query can see of one device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceView<'a> {
    /// Matched by the `id` field.
    pub id: &'a str,
    /// `"online"` or `"offline"`; the `status` field matches it or
    /// `enrollment`.
    pub connection: &'a str,
    /// `"pending"`, `"accepted"`, `"rejected"` or `"revoked"`.
    pub enrollment: &'a str,
    /// Matched by `tag.<key>`.
    pub tags: &'a BTreeMap<String, String>,
    /// Flat dotted keys such as `net.eth0.mac`, matched by `inventory.<key>`.
    pub inventory: &'a BTreeMap<String, String>,
    /// Names of the groups the device belongs to, matched by `group`.
    pub groups: &'a [String],
}
