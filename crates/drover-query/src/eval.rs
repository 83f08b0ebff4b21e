//! Evaluates a parsed query against one device.
//!
//! Every operator with a negative form is defined as the exact complement of
//! its positive form (`!=` of `=`, `!~` of `~`, `not in` of `in`). A field
//! the device lacks has no value, so every positive test on it is false and
//! every negative test true. Evaluation must stay total: no panics, no
//! allocation that grows with anything but the device's own values.

use std::cmp::Ordering;

use crate::DeviceView;
use crate::ast::{CompareOp, Expr, Field};

pub(crate) fn matches(expr: &Expr, device: &DeviceView<'_>) -> bool {
    match expr {
        Expr::Or(items) => items.iter().any(|e| matches(e, device)),
        Expr::And(items) => items.iter().all(|e| matches(e, device)),
        Expr::Not(inner) => !matches(inner, device),
        Expr::Compare { field, op, value } => {
            let (test, negated) = positive_test(*op);
            let found = any_value(field, device, |actual| test(actual, value));
            found != negated
        }
        Expr::In {
            field,
            values,
            negated,
        } => {
            let found = any_value(field, device, |actual| values.iter().any(|v| v == actual));
            found != *negated
        }
        Expr::Has(field) => match field {
            Field::Tag(key) => device.tags.contains_key(key),
            Field::Inventory(key) => device.inventory.contains_key(key),
            Field::Status | Field::Id | Field::Group => false,
        },
    }
}

/// Whether any value the device has for `field` satisfies `test`. `status`
/// has two values (connection and enrollment) and `group` one per group.
fn any_value(field: &Field, device: &DeviceView<'_>, mut test: impl FnMut(&str) -> bool) -> bool {
    match field {
        Field::Tag(key) => device.tags.get(key).is_some_and(|v| test(v)),
        Field::Inventory(key) => device.inventory.get(key).is_some_and(|v| test(v)),
        Field::Status => test(device.connection) || test(device.enrollment),
        Field::Id => test(device.id),
        Field::Group => device.groups.iter().any(|g| test(g)),
    }
}

type Test = fn(&str, &str) -> bool;

/// The positive test behind `op` as `test(actual, expected)`, and whether
/// `op` is its negation. Negating outside [`any_value`] is what makes `!=`
/// true for a missing field and false when either status value matches.
fn positive_test(op: CompareOp) -> (Test, bool) {
    let equal: Test = |actual, expected| actual == expected;
    let glob: Test = |actual, pattern| glob_match(pattern, actual);
    match op {
        CompareOp::Eq => (equal, false),
        CompareOp::Ne => (equal, true),
        CompareOp::Glob => (glob, false),
        CompareOp::NotGlob => (glob, true),
        CompareOp::Lt => (|a, e| order(a, e) == Ordering::Less, false),
        CompareOp::Le => (|a, e| order(a, e) != Ordering::Greater, false),
        CompareOp::Gt => (|a, e| order(a, e) == Ordering::Greater, false),
        CompareOp::Ge => (|a, e| order(a, e) != Ordering::Less, false),
    }
}

/// Numeric order when both sides are finite numbers, version order otherwise.
pub(crate) fn order(a: &str, b: &str) -> Ordering {
    match (number(a), number(b)) {
        // Finite numbers always compare, so the fallback is never taken.
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => compare_versions(a, b),
    }
}

/// `inf` and `NaN` parse as `f64` but are no one's idea of a number here.
fn number(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Splits both sides on `.` and `-` and compares part by part: parts made
/// only of digits compare as numbers, any other pair compares as text. When
/// one side runs out first it is the smaller (`1.2` < `1.2.0`).
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split(['.', '-']);
    let mut right = b.split(['.', '-']);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let part = compare_parts(x, y);
                if part != Ordering::Equal {
                    return part;
                }
            }
        }
    }
}

fn compare_parts(x: &str, y: &str) -> Ordering {
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if is_number(x) && is_number(y) {
        // Compare digit strings without parsing so no length overflows.
        let x = x.trim_start_matches('0');
        let y = y.trim_start_matches('0');
        x.len().cmp(&y.len()).then_with(|| x.cmp(y))
    } else {
        x.cmp(y)
    }
}

/// Glob match over characters: `*` matches any run (also empty), `?`
/// exactly one character. Backtracks only to the last `*`, so the cost is
/// at most pattern length × text length, whatever the pattern.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position after the last `*` seen, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((after_star, tried)) => {
                    p = after_star;
                    t = tried + 1;
                    star = Some((after_star, tried + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_and_question_mark() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("web-*", "web-"));
        assert!(glob_match("*", ""));
        assert!(glob_match("w?b", "wéb"));
        assert!(!glob_match("w?b", "wb"));
        assert!(glob_match("*.eth0.*", "net.eth0.mac"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("web", "web-01"));
    }

    #[test]
    fn glob_with_many_stars_stays_fast() {
        let pattern = "*a".repeat(200) + "b";
        let text = "a".repeat(4000);
        assert!(!glob_match(&pattern, &text));
    }

    #[test]
    fn versions_compare_numeric_parts_as_numbers() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("3.0.2", "3.0.10"), Ordering::Less);
        assert_eq!(compare_versions("1.2", "1.2.0"), Ordering::Less);
        assert_eq!(
            compare_versions("5.15.0-91-generic", "5.4"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("1.02", "1.2"), Ordering::Equal);
        assert_eq!(compare_versions("1.2.rc1", "1.2.rc2"), Ordering::Less);
        let huge = "9".repeat(100);
        assert_eq!(compare_versions(&huge, "10"), Ordering::Greater);
    }

    #[test]
    fn numbers_compare_numerically_when_both_sides_are_numbers() {
        assert_eq!(order("1024", "512"), Ordering::Greater);
        assert_eq!(order("-5", "3"), Ordering::Less);
        assert_eq!(order("1e3", "999"), Ordering::Greater);
        assert_eq!(order("1.0", "1"), Ordering::Equal);
        // Not finite numbers: compared as versions (text), not as numbers.
        assert_eq!(order("inf", "5"), Ordering::Greater);
        assert_eq!(order("nan", "nan"), Ordering::Equal);
    }
}
