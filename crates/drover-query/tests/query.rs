//! The query language through its public API: what each operator matches,
//! precedence, missing fields, canonical text, and every error with its
//! column.

use std::collections::BTreeMap;

use drover_query::{DeviceView, ParseError, Query};

/// Owns what a `DeviceView` borrows.
#[derive(Clone, Default)]
struct Device {
    id: String,
    connection: String,
    enrollment: String,
    tags: BTreeMap<String, String>,
    inventory: BTreeMap<String, String>,
    groups: Vec<String>,
}

impl Device {
    fn new(id: &str) -> Device {
        Device {
            id: id.to_owned(),
            connection: "online".to_owned(),
            enrollment: "accepted".to_owned(),
            ..Device::default()
        }
    }

    fn connection(mut self, value: &str) -> Device {
        value.clone_into(&mut self.connection);
        self
    }

    fn enrollment(mut self, value: &str) -> Device {
        value.clone_into(&mut self.enrollment);
        self
    }

    fn tag(mut self, key: &str, value: &str) -> Device {
        self.tags.insert(key.to_owned(), value.to_owned());
        self
    }

    fn inventory(mut self, key: &str, value: &str) -> Device {
        self.inventory.insert(key.to_owned(), value.to_owned());
        self
    }

    fn group(mut self, name: &str) -> Device {
        self.groups.push(name.to_owned());
        self
    }

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

#[track_caller]
fn matches(src: &str, device: &Device) -> bool {
    match Query::parse(src) {
        Ok(q) => q.matches(&device.view()),
        Err(e) => panic!("{src:?} should parse: {e}\n{}", e.render(src)),
    }
}

#[track_caller]
fn error(src: &str) -> ParseError {
    match Query::parse(src) {
        Ok(q) => panic!("{src:?} should not parse, got {q}"),
        Err(e) => e,
    }
}

#[track_caller]
fn canonical(src: &str) -> String {
    Query::parse(src)
        .unwrap_or_else(|e| panic!("{src:?} should parse: {e}"))
        .to_string()
}

fn eu_arm_gateway() -> Device {
    Device::new("gw-0042")
        .tag("region", "eu")
        .tag("site", "Berlin HQ")
        .inventory("arch", "aarch64")
        .inventory("net.eth0.mac", "00:11:22:33:44:55")
        .inventory("software.openssl", "3.0.10")
        .inventory("kernel", "5.15.0-91-generic")
        .inventory("mem_mb", "1024")
        .group("gateways")
        .group("eu-pilot")
}

// ---- operators ----------------------------------------------------------

#[test]
fn the_documented_example_selects_online_eu_arm_devices() {
    let q = r#"tag.region = "eu" and inventory.arch = "aarch64" and status = online"#;
    let device = eu_arm_gateway();
    assert!(matches(q, &device));
    assert!(!matches(q, &device.clone().connection("offline")));
    assert!(!matches(q, &device.clone().tag("region", "us")));
    assert!(!matches(q, &device.inventory("arch", "x86_64")));
}

#[test]
fn equals_is_exact_and_case_sensitive() {
    let d = eu_arm_gateway();
    assert!(matches("tag.region = eu", &d));
    assert!(!matches("tag.region = EU", &d));
    assert!(!matches("tag.region = e", &d));
    assert!(matches(r#"tag.site = "Berlin HQ""#, &d));
    // `=` compares text even when both sides are numbers.
    assert!(!matches("inventory.mem_mb = 1024.0", &d));
}

#[test]
fn not_equals_is_the_opposite_of_equals() {
    let d = eu_arm_gateway();
    assert!(!matches("tag.region != eu", &d));
    assert!(matches("tag.region != us", &d));
}

#[test]
fn glob_matches_star_and_question_mark() {
    let d = eu_arm_gateway();
    assert!(matches("id ~ gw-*", &d));
    assert!(matches(r#"id ~ "gw-004?""#, &d));
    assert!(!matches(r#"id ~ "gw-00?""#, &d));
    assert!(matches("inventory.net.eth0.mac ~ 00:11:*", &d));
    assert!(!matches("id ~ gw", &d), "a glob must match the whole value");
    assert!(matches("id !~ web-*", &d));
    assert!(!matches("id !~ gw-*", &d));
}

#[test]
fn ordering_is_numeric_when_both_sides_are_numbers() {
    let d = eu_arm_gateway();
    // As text "1024" < "512"; as numbers it is larger.
    assert!(matches("inventory.mem_mb > 512", &d));
    assert!(matches("inventory.mem_mb >= 1024", &d));
    assert!(matches("inventory.mem_mb <= 1024.0", &d));
    assert!(!matches("inventory.mem_mb < 1024", &d));
    assert!(matches("inventory.mem_mb > -1e3", &d));
}

#[test]
fn ordering_falls_back_to_version_order() {
    let d = eu_arm_gateway();
    assert!(matches("inventory.software.openssl > 3.0.2", &d));
    assert!(matches("inventory.software.openssl < 3.1", &d));
    assert!(matches("inventory.kernel >= 5.4", &d));
    assert!(matches("inventory.kernel < 6", &d));
    assert!(matches("inventory.kernel > 5.15.0-90-generic", &d));
}

#[test]
fn two_part_versions_that_parse_as_numbers_compare_as_numbers() {
    // The documented rule, pinned so a change to it is deliberate: "1.10" and
    // "1.9" are both numbers, so 1.10 < 1.9. Three-part versions are safe.
    let d = Device::new("d").inventory("software.app", "1.10");
    assert!(matches("inventory.software.app < 1.9", &d));
    let d = Device::new("d").inventory("software.app", "1.10.0");
    assert!(matches("inventory.software.app > 1.9.0", &d));
}

#[test]
fn in_and_not_in_test_membership_of_a_list() {
    let d = eu_arm_gateway();
    assert!(matches("tag.region in (us, eu)", &d));
    assert!(matches(r#"tag.region in ("eu")"#, &d));
    assert!(!matches("tag.region in (us, apac)", &d));
    assert!(matches("tag.region not in (us, apac)", &d));
    assert!(!matches("tag.region not in (eu)", &d));
}

#[test]
fn has_tests_that_a_key_is_present() {
    let d = eu_arm_gateway().tag("empty", "");
    assert!(matches("has tag.region", &d));
    assert!(
        matches("has tag.empty", &d),
        "an empty value is still present"
    );
    assert!(matches("has inventory.net.eth0.mac", &d));
    assert!(!matches("has tag.owner", &d));
    assert!(
        !matches("has inventory.region", &d),
        "tags and inventory are separate"
    );
    assert!(matches("not has tag.owner", &d));
}

#[test]
fn a_missing_field_is_unequal_to_everything() {
    let d = Device::new("bare");
    // Positive tests on an absent key are false ...
    for q in [
        "tag.x = a",
        "tag.x = \"\"",
        "tag.x ~ *",
        "tag.x < 5",
        "tag.x <= 5",
        "tag.x > 5",
        "tag.x >= 5",
        "tag.x in (a, b)",
        "inventory.x = a",
    ] {
        assert!(!matches(q, &d), "{q} should be false for a missing tag");
    }
    // ... and their negations true.
    for q in [
        "tag.x != a",
        "tag.x !~ *",
        "tag.x not in (a, b)",
        "not tag.x < 5",
    ] {
        assert!(matches(q, &d), "{q} should be true for a missing tag");
    }
}

#[test]
fn status_matches_connection_or_enrollment() {
    let online = Device::new("d").connection("online").enrollment("accepted");
    assert!(matches("status = online", &online));
    assert!(matches("status = accepted", &online));
    assert!(!matches("status = offline", &online));
    assert!(!matches("status != online", &online));
    assert!(
        !matches("status != accepted", &online),
        "either value counts"
    );
    assert!(matches("status != pending", &online));
    let pending = Device::new("d").connection("offline").enrollment("pending");
    assert!(matches("status = pending", &pending));
    assert!(matches("status in (pending, rejected)", &pending));
    assert!(matches("status not in (online, accepted)", &pending));
    assert!(matches("status ~ off*", &pending));
}

#[test]
fn group_matches_any_group_the_device_is_in() {
    let d = eu_arm_gateway();
    assert!(matches("group = gateways", &d));
    assert!(matches("group = eu-pilot", &d));
    assert!(!matches("group = sensors", &d));
    assert!(matches("group != sensors", &d));
    assert!(!matches("group != gateways", &d));
    assert!(matches("group in (sensors, gateways)", &d));
    assert!(matches("group ~ eu-*", &d));
    assert!(!matches("group = gateways", &Device::new("lonely")));
    assert!(matches("group != gateways", &Device::new("lonely")));
}

#[test]
fn id_is_matched_like_any_value() {
    let d = eu_arm_gateway();
    assert!(matches("id = gw-0042", &d));
    assert!(matches("id in (gw-0041, gw-0042)", &d));
    assert!(matches("id > gw-0041", &d));
}

// ---- precedence and syntax ----------------------------------------------

#[test]
fn and_binds_tighter_than_or() {
    // a or (b and c): true through `a` alone.
    let only_a = Device::new("d").tag("a", "1");
    assert!(matches("tag.a = 1 or tag.b = 1 and tag.c = 1", &only_a));
    // (a or b) and c needs `c`.
    assert!(!matches("(tag.a = 1 or tag.b = 1) and tag.c = 1", &only_a));
    // (b and c) or a, written the other way round.
    assert!(matches("tag.b = 1 and tag.c = 1 or tag.a = 1", &only_a));
}

#[test]
fn not_binds_tighter_than_and_and_or() {
    let b_only = Device::new("d").tag("b", "1");
    // (not a) and b
    assert!(matches("not tag.a = 1 and tag.b = 1", &b_only));
    // not (a or b)
    assert!(!matches("not (tag.a = 1 or tag.b = 1)", &b_only));
    // (not a) or b
    let a_only = Device::new("d").tag("a", "1");
    assert!(!matches("not tag.a = 1 or tag.b = 1", &a_only));
    assert!(matches("not not tag.a = 1", &a_only));
}

#[test]
fn keywords_and_field_names_are_case_insensitive() {
    let d = eu_arm_gateway();
    assert!(matches(
        "TAG.region = eu AND NOT Status = offline Or GROUP Not In (x) aNd HAS Inventory.arch",
        &d
    ));
    // Keys and values keep their case.
    assert!(!matches("tag.REGION = eu", &d));
}

#[test]
fn strings_take_escapes_and_bare_words_take_path_characters() {
    let d = Device::new("d")
        .tag("note", "say \"hi\"\\\n\tbye")
        .tag("path", "/opt/app:v2_1-rc.3");
    assert!(matches(r#"tag.note = "say \"hi\"\\\n\tbye""#, &d));
    assert!(matches("tag.path = /opt/app:v2_1-rc.3", &d));
    assert!(matches("tag.path ~ /opt/*", &d));
}

#[test]
fn whitespace_is_optional_around_symbols_and_may_span_lines() {
    let d = eu_arm_gateway();
    assert!(matches("tag.region=eu and(group in(gateways,x))", &d));
    assert!(matches("tag.region = eu\n  and status = online\n", &d));
}

#[test]
fn operators_on_status_and_group_exclude_ordering() {
    for src in ["status < online", "group >= a"] {
        let e = error(src);
        assert!(e.message.contains("does not apply to"), "{e}");
    }
}

// ---- canonical text ------------------------------------------------------

#[test]
fn display_writes_canonical_text() {
    assert_eq!(
        canonical("TAG.region=eu AND NOT Status=offline"),
        "tag.region = eu and not status = offline"
    );
    assert_eq!(
        canonical(r#"tag.a = "plain" or tag.b = "two words""#),
        r#"tag.a = plain or tag.b = "two words""#
    );
    assert_eq!(
        canonical(r#"tag.a in ("and",x,"",  "q\"\n")"#),
        r#"tag.a in ("and", x, "", "q\"\n")"#
    );
    assert_eq!(canonical("((tag.a = 1))"), "tag.a = 1");
    assert_eq!(
        canonical("(tag.a = 1 or tag.b = 2) and tag.c = 3"),
        "(tag.a = 1 or tag.b = 2) and tag.c = 3"
    );
    assert_eq!(
        canonical("tag.a = 1 or (tag.b = 2 and tag.c = 3)"),
        "tag.a = 1 or tag.b = 2 and tag.c = 3"
    );
    assert_eq!(
        canonical("tag.a = 1 or (tag.b = 2 or tag.c = 3)"),
        "tag.a = 1 or (tag.b = 2 or tag.c = 3)"
    );
    assert_eq!(canonical("not (not has tag.x)"), "not not has tag.x");
    assert_eq!(canonical("tag.x NOT IN (a)"), "tag.x not in (a)");
}

#[test]
fn equality_ignores_formatting_but_source_keeps_it() {
    let compact = Query::parse("TAG.a=b").unwrap();
    let spaced: Query = "tag.a = \"b\"".parse().unwrap();
    assert_eq!(compact, spaced);
    assert_eq!(compact.source(), "TAG.a=b");
    assert_eq!(spaced.source(), "tag.a = \"b\"");
    assert_ne!(compact, Query::parse("tag.a = c").unwrap());
}

// ---- errors ----------------------------------------------------------------

#[test]
fn error_display_names_the_column_and_what_was_expected() {
    let e = error(r#"tag.region = "eu" and status ="#);
    assert_eq!(
        e.to_string(),
        r#"column 31: expected a value after "=", found end of query"#
    );
}

#[test]
fn each_error_points_at_its_column() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "",
            1,
            r#"expected a condition such as tag.region = "eu", found end of query"#,
        ),
        (
            "tags.region = eu",
            1,
            r#"unknown field "tags.region"; did you mean "tag.region"?"#,
        ),
        ("inv.arch = x", 1, r#"did you mean "inventory.arch"?"#),
        ("stauts = online", 1, r#"did you mean "status"?"#),
        (
            "region = eu",
            1,
            r#"did you mean "tag.region" or "inventory.region"?"#,
        ),
        (
            "x.y = z",
            1,
            "expected tag.<key>, inventory.<key>, status, id or group",
        ),
        ("status.x = a", 1, r#""status" has no keys"#),
        (
            "tag = a",
            1,
            r#"expected a field such as tag.region, found "tag" without a key"#,
        ),
        ("tag. = a", 5, r#"expected a key after "tag.""#),
        ("tag.a* = b", 6, r#"unexpected "*" in a key"#),
        (
            "tag.region == eu",
            12,
            r#"unknown operator "=="; did you mean "="?"#,
        ),
        ("tag.a <> b", 7, r#"did you mean "!="?"#),
        ("tag.a =~ b", 7, r#"did you mean "~"?"#),
        ("tag.a is b", 7, r#"expected an operator after "tag.a""#),
        (
            "tag.a",
            6,
            r#"found end of query; to test that the key is present, write "has tag.a""#,
        ),
        (r#"tag.region = "eu"#, 14, "unterminated string"),
        (r#"tag.a = "x\"#, 9, "unterminated string"),
        (r#"tag.a = "a\q""#, 11, r#"unknown escape "\q""#),
        ("tag.a = 'eu'", 9, "expected a double-quoted string"),
        (
            "tag.a ~ web-?",
            13,
            r#"a value containing "?" must be double-quoted"#,
        ),
        ("tag.a = Zürich", 10, r#"unexpected character "ü""#),
        (
            "tag.a = and",
            9,
            r#"found keyword "and"; write "and" in double quotes"#,
        ),
        (
            "tag.a =",
            8,
            r#"expected a value after "=", found end of query"#,
        ),
        (
            "tag.a = eu west",
            12,
            "a value containing spaces must be double-quoted",
        ),
        (
            "tag.a = b tag.c = d",
            11,
            r#"is "and" or "or" missing before it?"#,
        ),
        ("tag.a = b && tag.c = d", 11, r#"did you mean "and"?"#),
        ("tag.a = b || tag.c = d", 11, r#"did you mean "or"?"#),
        ("tag.a = b not tag.c = d", 11, r#"did you mean "and not"?"#),
        (
            "(tag.a = b",
            11,
            r#"expected "and", "or" or ")" to close the "(" at column 1"#,
        ),
        ("tag.a = b)", 10, r#"there is no "(" for it to close"#),
        (
            "tag.a not = b",
            11,
            r#"expected "in" after "not", found "=""#,
        ),
        ("tag.a in a, b", 10, r#"expected "(" after "in""#),
        ("tag.a in ()", 11, "a list needs at least one value"),
        (
            "tag.a in (a b)",
            13,
            r#"expected "," or ")" in the list, found "b""#,
        ),
        (
            "tag.a in (a,)",
            13,
            r#"expected a value after ",", found ")""#,
        ),
        (
            "status < online",
            8,
            r#"operator "<" does not apply to status"#,
        ),
        (
            "has status",
            5,
            r#"expected a tag.<key> or inventory.<key> field after "has""#,
        ),
        (
            "has",
            4,
            r#"expected a field such as tag.region after "has""#,
        ),
        ("!tag.a = b", 1, r#"use "not" to negate a condition"#),
        (
            "tag.a = b and",
            14,
            r#"expected a condition after "and", found end of query"#,
        ),
        (
            "not",
            4,
            r#"expected a condition after "not", found end of query"#,
        ),
        (r#""eu" = tag.a"#, 1, r#"found string "eu""#),
    ];
    for &(src, column, message) in cases {
        let e = error(src);
        assert_eq!(e.column, column, "column for {src:?}: {e}");
        assert!(
            e.message.contains(message),
            "message for {src:?}\n  got:  {}\n  want: …{message}…",
            e.message
        );
    }
}

#[test]
fn the_first_mistake_in_reading_order_is_reported() {
    // The unknown operator comes before the unterminated string.
    assert_eq!(error(r#"tag.a == "x"#).column, 7);
    // The unexpected character comes before the missing value.
    assert_eq!(error("tag.a = @ and").column, 9);
}

#[test]
fn render_shows_the_line_and_a_caret() {
    let src = "tag.region == eu";
    let e = error(src);
    assert_eq!(e.render(src), "tag.region == eu\n           ^");
}

#[test]
fn parse_error_is_a_std_error() {
    let boxed: Box<dyn std::error::Error> = Box::new(error("tag.a"));
    assert!(boxed.to_string().starts_with("column 6: "));
}

// ---- limits ----------------------------------------------------------------

#[test]
fn source_may_be_4096_bytes_but_not_more() {
    let fits = format!("tag.a = \"{}\"", "x".repeat(4096 - 10));
    assert_eq!(fits.len(), 4096);
    assert!(Query::parse(&fits).is_ok());

    let too_long = format!("tag.a = \"{}\"", "x".repeat(4096 - 9));
    let e = error(&too_long);
    assert_eq!(e.column, 4097);
    assert!(
        e.message
            .contains("expected at most 4096 bytes, found 4097"),
        "{e}"
    );
}

#[test]
fn length_limit_column_counts_characters() {
    // 9 + 2000 * 2 = 4009 bytes in 2009 characters, then ASCII: byte 4097
    // is the 88th "x", at character column 2009 + 88.
    let src = format!("tag.a = \"{}{}\"", "é".repeat(2000), "x".repeat(100));
    assert_eq!(error(&src).column, 2009 + 88);
}

#[test]
fn canonical_form_must_fit_the_limit_too() {
    // Compact, the list fits; with ", " separators it would not.
    let src = format!("tag.a in ({}a)", "a,".repeat(2000));
    assert!(src.len() <= 4096);
    let e = error(&src);
    assert_eq!(e.column, 1);
    assert!(e.message.contains("canonical form"), "{e}");
}

#[test]
fn nesting_may_be_32_deep_but_not_more() {
    let nested = |n: usize| format!("{}tag.a = b{}", "(".repeat(n), ")".repeat(n));
    assert!(Query::parse(&nested(32)).is_ok());
    let e = error(&nested(33));
    assert_eq!(e.column, 33);
    assert!(e.message.contains("nests too deeply"), "{e}");

    let negated = |n: usize| format!("{}tag.a = b", "not ".repeat(n));
    assert!(Query::parse(&negated(32)).is_ok());
    assert_eq!(error(&negated(33)).column, 32 * 4 + 1);

    // Parentheses and `not` count together: 16 "not (" make 32 levels, so
    // the 17th "not" is one too many.
    let mixed = format!("{}{}", "not (".repeat(17), "tag.a = b");
    assert_eq!(error(&mixed).column, 16 * 5 + 1);
}

#[test]
fn hostile_nesting_is_an_error_not_a_stack_overflow() {
    for src in [
        "(".repeat(4096),
        "not ".repeat(1024),
        "((((not ".repeat(512),
    ] {
        let e = error(&src);
        assert!(e.message.contains("nests too deeply"), "{e}");
    }
}

#[test]
fn a_query_may_have_256_conditions_but_not_more() {
    let terms = |n: usize| vec!["tag.a = b"; n].join(" or ");
    assert!(Query::parse(&terms(256)).is_ok());
    let e = error(&terms(257));
    assert_eq!(e.column, 256 * "tag.a = b or ".len() + 1);
    assert!(e.message.contains("too many conditions"), "{e}");
    // `has` and `in` count as conditions too.
    let mixed = ["has tag.a", "tag.b in (c)"].repeat(129).join(" and ");
    assert!(error(&mixed).message.contains("too many conditions"));
}
