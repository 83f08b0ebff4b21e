//! Properties over generated syntax trees, devices and arbitrary text.
//!
//! These live inside the crate because they build syntax trees directly;
//! behaviour through the public API is tested in `tests/query.rs`.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

use crate::ast::{CompareOp, Expr, Field};
use crate::eval::{compare_versions, glob_match};
use crate::{DeviceView, Query};

fn query(expr: Expr) -> Query {
    Query {
        source: String::new(),
        expr,
    }
}

/// Keys that generated devices also use, so conditions sometimes hold.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["region", "arch", "net.eth0.mac", "a-b/c:d"])
            .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9_./:-]{1,12}",
    ]
}

/// Values that devices also hold, plus text that must be quoted to survive.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["eu", "us", "1.2", "1.10", "10", "-3", "online", "g1"])
            .prop_map(str::to_owned),
        1 => "[a-z0-9*?.-]{0,6}",
        1 => prop::sample::select(vec!["", "and", "OR", "Not", "in", "has", "a b", "\"", "\\", "\n\t"])
            .prop_map(str::to_owned),
        1 => "\\PC{0,8}",
        1 => any::<String>().prop_map(|s| s.chars().take(8).collect()),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        key().prop_map(Field::Tag),
        key().prop_map(Field::Inventory),
        Just(Field::Status),
        Just(Field::Id),
        Just(Field::Group),
    ]
}

fn condition() -> impl Strategy<Value = Expr> {
    prop_oneof![
        (
            field(),
            prop::sample::select(CompareOp::ALL.to_vec()),
            value()
        )
            .prop_map(|(field, op, value)| {
                // The parser rejects ordering on status and group.
                let op = if op.is_ordering() && !field.allows_ordering() {
                    CompareOp::Eq
                } else {
                    op
                };
                Expr::Compare { field, op, value }
            }),
        (field(), vec(value(), 1..4), any::<bool>()).prop_map(|(field, values, negated)| {
            Expr::In {
                field,
                values,
                negated,
            }
        }),
        prop_oneof![key().prop_map(Field::Tag), key().prop_map(Field::Inventory)]
            .prop_map(Expr::Has),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    // Depth 5 keeps nesting and term counts well inside the parser's limits.
    condition().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 2..4).prop_map(Expr::Or),
            vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    connection: String,
    enrollment: String,
    tags: BTreeMap<String, String>,
    inventory: BTreeMap<String, String>,
    groups: Vec<String>,
}

impl Device {
    fn view(&self) -> DeviceView<'_> {
        DeviceView {
            id: &self.id,
            connection: &self.connection,
            enrollment: &self.enrollment,
            tags: &self.tags,
            inventory: &self.inventory,
            groups: &self.groups,
        }
    }
}

fn device() -> impl Strategy<Value = Device> {
    (
        value(),
        prop::sample::select(vec!["online", "offline"]),
        prop::sample::select(vec!["pending", "accepted", "rejected", "revoked"]),
        btree_map(key(), value(), 0..4),
        btree_map(key(), value(), 0..4),
        vec(value(), 0..3),
    )
        .prop_map(
            |(id, connection, enrollment, tags, inventory, groups)| Device {
                id,
                connection: connection.to_owned(),
                enrollment: enrollment.to_owned(),
                tags,
                inventory,
                groups,
            },
        )
}

/// Text built from the language's own tokens, valid or not, so the parser
/// gets past its first token far more often than with random characters.
fn query_like_text() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "tag.region",
        "inventory.arch",
        "status",
        "id",
        "group",
        "tags.x",
        "=",
        "!=",
        "~",
        "!~",
        "<",
        "<=",
        ">",
        ">=",
        "==",
        "in",
        "not",
        "and",
        "or",
        "has",
        "(",
        ")",
        ",",
        "\"eu\"",
        "\"a b\"",
        "\"",
        "\\",
        "eu",
        "1.10",
        "*",
        "?",
        "AND",
        "Not",
        "\n",
    ]);
    (vec(token, 0..24), vec(any::<bool>(), 24)).prop_map(|(tokens, spaces)| {
        let mut out = String::new();
        for (token, space) in tokens.iter().zip(spaces) {
            out.push_str(token);
            if space {
                out.push(' ');
            }
        }
        out
    })
}

fn check_parse_is_total(src: &str) -> Result<(), TestCaseError> {
    match Query::parse(src) {
        Ok(q) => {
            let canonical = q.to_string();
            let again = Query::parse(&canonical)
                .map_err(|e| TestCaseError::fail(format!("{canonical:?} does not parse: {e}")))?;
            prop_assert_eq!(&again, &q);
            prop_assert_eq!(again.to_string(), canonical);
        }
        Err(e) => {
            prop_assert!(e.column >= 1 && e.column <= src.chars().count() + 1, "{e}");
            prop_assert!(!e.message.is_empty());
            let rendered = e.render(src);
            prop_assert!(rendered.ends_with('^'));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(src in any::<String>()) {
        check_parse_is_total(&src)?;
    }

    #[test]
    fn parse_never_panics_on_token_soup(src in query_like_text()) {
        check_parse_is_total(&src)?;
    }

    #[test]
    fn display_parses_back_to_the_same_query(e in expr()) {
        let q = query(e);
        let canonical = q.to_string();
        let parsed = Query::parse(&canonical)
            .map_err(|err| TestCaseError::fail(format!("{canonical:?}: {err}")))?;
        prop_assert_eq!(&parsed, &q);
        prop_assert_eq!(parsed.to_string(), canonical);
    }

    #[test]
    fn not_matches_exactly_when_the_query_does_not(e in expr(), d in device()) {
        let q = query(e.clone());
        let negated = query(Expr::Not(Box::new(e)));
        prop_assert_eq!(negated.matches(&d.view()), !q.matches(&d.view()));

        // The same through text, as an operator would write it.
        let text = format!("not ({q})");
        let parsed = Query::parse(&text)
            .map_err(|err| TestCaseError::fail(format!("{text:?}: {err}")))?;
        prop_assert_eq!(parsed.matches(&d.view()), !q.matches(&d.view()));
    }

    #[test]
    fn negative_operators_complement_positive_ones(
        f in field(), v in value(), values in vec(value(), 1..4), d in device()
    ) {
        let pairs = [(CompareOp::Eq, CompareOp::Ne), (CompareOp::Glob, CompareOp::NotGlob)];
        for (positive, negative) in pairs {
            let pos = query(Expr::Compare { field: f.clone(), op: positive, value: v.clone() });
            let neg = query(Expr::Compare { field: f.clone(), op: negative, value: v.clone() });
            prop_assert_eq!(neg.matches(&d.view()), !pos.matches(&d.view()));
        }
        let within = query(Expr::In { field: f.clone(), values: values.clone(), negated: false });
        let outside = query(Expr::In { field: f, values, negated: true });
        prop_assert_eq!(outside.matches(&d.view()), !within.matches(&d.view()));
    }

    #[test]
    fn version_order_is_antisymmetric(a in "[0-9a-z.-]{0,10}", b in "[0-9a-z.-]{0,10}") {
        prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        prop_assert_eq!(compare_versions(&a, &a), std::cmp::Ordering::Equal);
    }

    #[test]
    fn glob_without_wildcards_is_equality(a in "[a-c]{0,5}", b in "[a-c]{0,5}") {
        prop_assert_eq!(glob_match(&a, &b), a == b);
        prop_assert!(glob_match("*", &b));
        let prefix_pattern = format!("{a}*");
        prop_assert_eq!(glob_match(&prefix_pattern, &b), b.starts_with(&a));
    }
}
