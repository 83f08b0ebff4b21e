//! The metrics query language (docs/monitoring.md):
//!
//! ```text
//! AGG(metric) [by device | by tag.KEY | by inventory.KEY] [where DEVICE-QUERY]
//! ```
//!
//! `AGG` is one of `count`, `avg`, `min`, `max`, `sum`, `p50`, `p95`; the
//! `where` part is a device query in the language of `drover-query`
//! (docs/query.md) and runs to the end of the text, so `by` comes first.
//! Examples: `avg(cpu) by tag.region where group = "eu-gateways"`,
//! `p95(mem.used) by device where tag.site = berlin`, `count(boot.count)`.
//!
//! Also here, because the server, the CLI and the device-side checks must
//! agree on them: what a metric name may look like ([`valid_metric_name`])
//! and how durations such as `6h` are written ([`parse_duration_ms`]).
//!
//! Like `drover-query`, this crate treats its input as hostile: it never
//! panics, bounds the text it accepts, and every error names a 1-based
//! column (counting characters) and says what was expected and found. It
//! does no I/O and reads no clock.

use std::fmt;

pub use drover_query::{ParseError, Query};

/// Longest query text accepted, in bytes (the device query part has its own
/// limits on top, see docs/query.md).
pub const MAX_QUERY_BYTES: usize = 4096 + 256;

/// Longest metric or event name, in bytes (the device protocol's limit).
pub const MAX_NAME_BYTES: usize = 128;

/// How the points of each bucket are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Count,
    Avg,
    Min,
    Max,
    Sum,
    P50,
    P95,
}

impl Aggregate {
    pub const ALL: [Aggregate; 7] = [
        Aggregate::Count,
        Aggregate::Avg,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Sum,
        Aggregate::P50,
        Aggregate::P95,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Sum => "sum",
            Aggregate::P50 => "p50",
            Aggregate::P95 => "p95",
        }
    }

    /// The quantile a percentile aggregate asks for (`None` for the others).
    pub fn quantile(self) -> Option<f64> {
        match self {
            Aggregate::P50 => Some(0.5),
            Aggregate::P95 => Some(0.95),
            _ => None,
        }
    }

    fn parse(word: &str) -> Option<Aggregate> {
        Aggregate::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(word))
    }
}

/// What the result is split by: one series per distinct value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// One series per device.
    Device,
    /// One series per value of a tag; devices without the tag form their own series.
    Tag(String),
    /// One series per value of an inventory entry.
    Inventory(String),
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupBy::Device => f.write_str("device"),
            GroupBy::Tag(k) => write!(f, "tag.{k}"),
            GroupBy::Inventory(k) => write!(f, "inventory.{k}"),
        }
    }
}

/// A parsed metrics query.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    pub aggregate: Aggregate,
    pub metric: String,
    pub group_by: Option<GroupBy>,
    /// Only devices matching this device query.
    pub filter: Option<Query>,
}

/// Whether `name` may name a metric or event: 1 to 128 bytes, an ASCII
/// letter or `_` first, then ASCII letters, digits and `_ . - / :`.
pub fn valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_BYTES
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|&c| is_name_byte(c))
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"_.-/:".contains(&c)
}

/// Characters of a tag or inventory key (as in docs/query.md).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-./:".contains(c)
}

/// Parses a duration such as `90s`, `15m`, `6h`, `2d` or `1w` (one number
/// and one unit; `ms` is also accepted) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {t:?} has no unit: write e.g. 90s, 15m, 6h, 2d or 1w"))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.len() > 12 {
        return Err(format!(
            "duration {t:?} must start with a whole number: write e.g. 90s, 15m, 6h, 2d or 1w"
        ));
    }
    let n: i64 = num
        .parse()
        .map_err(|_| format!("duration {t:?} is not a number"))?;
    let unit_ms: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in duration {t:?}: use ms, s, m, h, d or w"
            ));
        }
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 100 * 365 * 86_400_000)
        .ok_or_else(|| format!("duration {t:?} is longer than 100 years"))
}

/// Formats milliseconds as the largest exact unit (`3600000` → `1h`).
pub fn format_duration_ms(ms: i64) -> String {
    for (unit, size) in [
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A cursor over the query text that knows the column of each character.
struct Cursor<'a> {
    chars: Vec<(usize, char)>,
    pos: usize,
    src: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(src: &'a str) -> Self {
        Cursor {
            chars: src.char_indices().collect(),
            pos: 0,
            src,
        }
    }

    /// 1-based column of the current character (one past the end at the end).
    fn column(&self) -> usize {
        self.pos + 1
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek().filter(|&c| f(c)) {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    /// What is at the cursor, for "found …" in messages.
    fn found(&self) -> String {
        match self.peek() {
            None => "end of query".to_string(),
            Some(_) => {
                let rest: String = self.chars[self.pos..]
                    .iter()
                    .map(|&(_, c)| c)
                    .take_while(|c| !c.is_whitespace())
                    .take(24)
                    .collect();
                format!("{rest:?}")
            }
        }
    }

    fn byte_offset(&self) -> usize {
        self.chars
            .get(self.pos)
            .map(|&(i, _)| i)
            .unwrap_or(self.src.len())
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            column: self.column(),
            message: message.into(),
        }
    }
}

impl MetricsQuery {
    /// Parses query text; see the crate documentation for the grammar.
    pub fn parse(src: &str) -> Result<MetricsQuery, ParseError> {
        if src.len() > MAX_QUERY_BYTES {
            return Err(ParseError {
                column: 1,
                message: format!("a metrics query may be at most {MAX_QUERY_BYTES} bytes long"),
            });
        }
        let mut c = Cursor::new(src);
        c.skip_ws();
        let agg_col = c.column();
        let word = c.take_while(|ch| ch.is_ascii_alphanumeric());
        let aggregate = match Aggregate::parse(&word) {
            Some(a) => a,
            None if word.is_empty() => {
                return Err(c.error(format!(
                    "expected an aggregate (count, avg, min, max, sum, p50, p95), found {}",
                    c.found()
                )));
            }
            None => {
                return Err(ParseError {
                    column: agg_col,
                    message: format!(
                        "unknown aggregate {word:?}: use count, avg, min, max, sum, p50 or p95"
                    ),
                });
            }
        };
        c.skip_ws();
        if c.peek() != Some('(') {
            return Err(c.error(format!(
                "expected \"(\" after {:?}, found {}",
                aggregate.as_str(),
                c.found()
            )));
        }
        c.pos += 1;
        c.skip_ws();
        let name_col = c.column();
        let metric = c.take_while(|ch| ch.is_ascii() && is_name_byte(ch as u8));
        if metric.is_empty() {
            return Err(c.error(format!("expected a metric name, found {}", c.found())));
        }
        if !valid_metric_name(&metric) {
            return Err(ParseError {
                column: name_col,
                message: format!(
                    "{metric:?} is not a metric name: use 1-{MAX_NAME_BYTES} letters, digits or _ . - / :, starting with a letter or _"
                ),
            });
        }
        c.skip_ws();
        if c.peek() != Some(')') {
            return Err(c.error(format!(
                "expected \")\" after the metric name, found {}",
                c.found()
            )));
        }
        c.pos += 1;
        let mut query = MetricsQuery {
            aggregate,
            metric,
            group_by: None,
            filter: None,
        };
        c.skip_ws();
        if c.peek().is_none() {
            return Ok(query);
        }
        let kw_col = c.column();
        let mut keyword = c.take_while(|ch| ch.is_ascii_alphabetic());
        if keyword.eq_ignore_ascii_case("by") {
            c.skip_ws();
            let key_col = c.column();
            let key = c.take_while(is_key_char);
            query.group_by = Some(match key.split_once('.') {
                _ if key.eq_ignore_ascii_case("device") => GroupBy::Device,
                Some((field, k)) if field.eq_ignore_ascii_case("tag") && !k.is_empty() => {
                    GroupBy::Tag(k.to_string())
                }
                Some((field, k)) if field.eq_ignore_ascii_case("inventory") && !k.is_empty() => {
                    GroupBy::Inventory(k.to_string())
                }
                _ if key.is_empty() => {
                    return Err(c.error(format!(
                        "expected what to group by (device, tag.KEY or inventory.KEY) after \"by\", found {}",
                        c.found()
                    )));
                }
                _ => {
                    return Err(ParseError {
                        column: key_col,
                        message: format!(
                            "cannot group by {key:?}: use device, tag.KEY or inventory.KEY"
                        ),
                    });
                }
            });
            c.skip_ws();
            if c.peek().is_none() {
                return Ok(query);
            }
            let col = c.column();
            keyword = c.take_while(|ch| ch.is_ascii_alphabetic());
            if !keyword.eq_ignore_ascii_case("where") {
                c.pos = col - 1;
                return Err(c.error(format!(
                    "expected \"where\" or the end of the query, found {}",
                    c.found()
                )));
            }
        } else if !keyword.eq_ignore_ascii_case("where") {
            c.pos = kw_col - 1;
            return Err(c.error(format!(
                "expected \"by\", \"where\" or the end of the query, found {}",
                c.found()
            )));
        }
        // `where`: the rest is a device query. Its columns are relative to
        // the rest; shift them so they point into the whole text.
        let where_end = c.column();
        let rest = &src[c.byte_offset()..];
        let filter = Query::parse(rest).map_err(|e| ParseError {
            column: e.column + where_end - 1,
            message: e.message,
        })?;
        query.filter = Some(filter);
        Ok(query)
    }
}

/// The canonical text, which parses back to an equal query.
impl fmt::Display for MetricsQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.aggregate.as_str(), self.metric)?;
        if let Some(g) = &self.group_by {
            write!(f, " by {g}")?;
        }
        if let Some(q) = &self.filter {
            write!(f, " where {q}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ParseError {
        MetricsQuery::parse(src).expect_err(src)
    }

    #[test]
    fn parses_the_issue_example() {
        let q =
            MetricsQuery::parse(r#"avg(cpu) by tag.region where group = "eu-gateways""#).unwrap();
        assert_eq!(q.aggregate, Aggregate::Avg);
        assert_eq!(q.metric, "cpu");
        assert_eq!(q.group_by, Some(GroupBy::Tag("region".into())));
        assert_eq!(
            q.filter.as_ref().map(|f| f.to_string()).as_deref(),
            Some("group = eu-gateways")
        );
        assert_eq!(
            q.to_string(),
            "avg(cpu) by tag.region where group = eu-gateways"
        );
    }

    #[test]
    fn every_part_but_the_aggregate_is_optional_and_keywords_ignore_case() {
        for (src, canonical) in [
            ("count(boot.count)", "count(boot.count)"),
            ("  P95 ( mem.used )  ", "p95(mem.used)"),
            ("MAX(temp) BY DEVICE", "max(temp) by device"),
            (
                "min(x) By Inventory.os.version",
                "min(x) by inventory.os.version",
            ),
            ("sum(net/rx) WHERE tag.a = b", "sum(net/rx) where tag.a = b"),
            (
                "p50(disk_used) where\n status = online",
                "p50(disk_used) where status = online",
            ),
        ] {
            let q = MetricsQuery::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(q.to_string(), canonical);
            assert_eq!(MetricsQuery::parse(&q.to_string()).unwrap(), q);
        }
    }

    #[test]
    fn errors_name_the_column_and_what_was_wrong() {
        let e = err("median(cpu)");
        assert_eq!(e.column, 1);
        assert!(e.message.contains("unknown aggregate \"median\""), "{e}");

        let e = err("avg cpu");
        assert_eq!(e.column, 5);
        assert!(e.message.contains("expected \"(\""), "{e}");

        let e = err("avg()");
        assert_eq!(e.column, 5);
        assert!(e.message.contains("expected a metric name"), "{e}");

        let e = err("avg(9cpu)");
        assert_eq!(e.column, 5);
        assert!(e.message.contains("is not a metric name"), "{e}");

        let e = err("avg(cpu");
        assert_eq!(e.column, 8);
        assert!(e.message.contains("found end of query"), "{e}");

        let e = err("avg(cpu) by site");
        assert_eq!(e.column, 13);
        assert!(e.message.contains("cannot group by \"site\""), "{e}");

        let e = err("avg(cpu) group tag.a");
        assert_eq!(e.column, 10);
        assert!(e.message.contains("expected \"by\", \"where\""), "{e}");

        let e = err("avg(cpu) by device tag.a = b");
        assert_eq!(e.column, 20);
        assert!(e.message.contains("expected \"where\""), "{e}");
    }

    #[test]
    fn device_query_errors_point_into_the_whole_text() {
        // "avg(cpu) where " is 15 characters; the bad "==" is at 7 of the rest.
        let src = "avg(cpu) where tag.a == b";
        let e = err(src);
        assert_eq!(e.column, 22, "{e}");
        assert_eq!(e.render(src).lines().nth(1), Some("                     ^"));
        let e = err("avg(cpu) where");
        assert_eq!(e.column, 15, "{e}");
        assert!(e.message.contains("end of query"), "{e}");
    }

    #[test]
    fn names_and_durations() {
        assert!(valid_metric_name("cpu"));
        assert!(valid_metric_name("_x.y-z/w:1"));
        assert!(!valid_metric_name(""));
        assert!(!valid_metric_name("1cpu"));
        assert!(!valid_metric_name("cpu load"));
        assert!(!valid_metric_name("cpü"));
        assert!(!valid_metric_name(&"a".repeat(129)));
        assert_eq!(parse_duration_ms("6h"), Ok(6 * 3_600_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("2d"), Ok(2 * 86_400_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("6").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("h").unwrap_err().contains("whole number"));
        assert!(
            parse_duration_ms("6y")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration_ms("999999999999w").is_err());
        assert_eq!(format_duration_ms(3_600_000), "1h");
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_columns_stay_in_range(src in "\\PC{0,80}") {
            if let Err(e) = MetricsQuery::parse(&src) {
                proptest::prop_assert!(e.column >= 1);
                proptest::prop_assert!(e.column <= src.chars().count() + 1);
            }
        }

        #[test]
        fn canonical_text_parses_back(
            agg in 0usize..7,
            metric in "[a-z_][a-z0-9_.]{0,10}",
            by in proptest::option::of("[a-z][a-z0-9_]{0,6}"),
        ) {
            let src = match &by {
                Some(k) => format!("{}({metric}) by tag.{k} where tag.x = y", Aggregate::ALL[agg].as_str()),
                None => format!("{}({metric})", Aggregate::ALL[agg].as_str()),
            };
            let q = MetricsQuery::parse(&src).unwrap();
            proptest::prop_assert_eq!(MetricsQuery::parse(&q.to_string()).unwrap(), q);
        }
    }
}
