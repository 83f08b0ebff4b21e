//! Parser tests: every error names the line (and column) of what was wrong.

use super::*;

const GOOD: &str = r#"version = 7

[[rules]]
name = "no-cryptominer"
condition = { kind = "process_running", name = "cryptominer" }
actions = [
  { kind = "event", severity = "critical", message = "cryptominer found" },
  { kind = "kill", grace_secs = 2 },
]

[[rules]]
name = "hot"
condition = { kind = "metric", metric = "cpu", above = 90.0, window_secs = 120 }
actions = [{ kind = "event" }]

[[rules]]
name = "backdoor-port"
condition = { kind = "port_listening", port = 4444 }
actions = [{ kind = "block", port = 4444, protocol = "tcp", direction = "in" }]

[[rules]]
name = "passwd"
condition = { kind = "file_changed", path = "/etc/passwd", checks = ["sha256"] }
actions = [{ kind = "run_command", argv = ["/usr/bin/logger", "passwd changed"], timeout_secs = 5 }]

[[rules]]
name = "nginx-gone"
condition = { kind = "process_missing", exe = "/usr/sbin/nginx" }
actions = [{ kind = "stop_service", service = "kiosk.service" }]
"#;

#[test]
fn a_good_set_parses_with_defaults_and_rule_positions() {
    let set = parse(GOOD).unwrap();
    assert_eq!(set.version, "7");
    assert_eq!(set.rules.len(), 5);
    let r = &set.rules[0];
    assert_eq!(
        (r.name.as_str(), r.line, r.column),
        ("no-cryptominer", 4, 8)
    );
    assert_eq!(
        r.condition.process_match().unwrap().name,
        Some("cryptominer")
    );
    assert_eq!(r.actions[1], Action::Kill { grace_secs: 2 });
    assert!(matches!(
        set.rules[1].condition,
        Condition::Metric { window_secs: 120, above: Some(a), below: None, .. } if a == 90.0
    ));
    assert!(matches!(
        set.rules[2].condition,
        Condition::PortListening {
            port: 4444,
            protocol: Protocol::Tcp
        }
    ));
    assert!(matches!(
        &set.rules[3].condition,
        Condition::FileChanged { checks, .. } if checks == &[FileCheck::Sha256]
    ));
    let text = "version = \"2026-11-27.a\"\n";
    assert_eq!(parse(text).unwrap().version, "2026-11-27.a");
    assert!(
        parse(text).unwrap().rules.is_empty(),
        "an empty set is valid"
    );
}

fn error(text: &str) -> RulesError {
    parse(text).expect_err("must be refused")
}

#[test]
fn syntax_errors_name_the_line_and_column() {
    let e = error("version = 1\n\n[[rules]]\nname = \"x\nactions = []\n");
    assert_eq!(e.line, 4, "{e}");
    let e = error(
        "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"event\" }]\ncolour = \"red\"\n",
    );
    assert_eq!(e.line, 6, "{e}");
    assert!(e.message.contains("colour"), "{e}");
}

#[test]
fn an_unknown_action_or_condition_is_refused_with_its_line() {
    let e = error(
        "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [\n  { kind = \"event\" },\n  { kind = \"reboot\" },\n]\n",
    );
    assert_eq!((e.line, e.column), (7, 3), "{e}");
    assert!(e.message.contains("reboot"), "{e}");
    assert!(e.message.contains("rule \"a\""), "{e}");
    let e = error(
        "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_maybe\" }\nactions = [{ kind = \"event\" }]\n",
    );
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.contains("process_maybe"), "{e}");
    let e = error(
        "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"port_listening\", port = 22, host = \"x\" }\nactions = [{ kind = \"event\" }]\n",
    );
    assert!(
        e.message.contains("host"),
        "unknown fields are refused: {e}"
    );
}

#[test]
fn semantic_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"event\" }]\n",
            1,
            "version",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a b\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"event\" }]\n",
            3,
            "rule name",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"port_listening\", port = 1 }\nactions = [{ kind = \"kill\" }]\n",
            5,
            "kill needs a process_running",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"a-very-long-process-name\" }\nactions = [{ kind = \"event\" }]\n",
            4,
            "never match",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"metric\", metric = \"cpu\" }\nactions = [{ kind = \"event\" }]\n",
            4,
            "exactly one",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = []\n",
            5,
            "1-16 actions",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"run_command\", argv = [\"rm\"] }]\n",
            5,
            "absolute",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"block\", address = \"10.0.0.300\" }]\n",
            5,
            "address",
        ),
        (
            "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"event\" }]\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"y\" }\nactions = [{ kind = \"event\" }]\n",
            7,
            "unique",
        ),
    ];
    for (text, line, needle) in cases {
        let e = error(text);
        assert_eq!(e.line, *line, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn a_rule_that_would_kill_the_agent_or_pid_1_is_refused() {
    for cond in [
        r#"{ kind = "process_running", name = "drover-agent" }"#,
        r#"{ kind = "process_running", exe = "/usr/local/bin/drover-agent" }"#,
        r#"{ kind = "process_running", name = "systemd" }"#,
        r#"{ kind = "process_running", exe = "/sbin/init" }"#,
    ] {
        let text = format!(
            "version = 1\n[[rules]]\nname = \"oops\"\ncondition = {cond}\nactions = [{{ kind = \"kill\" }}]\n"
        );
        let e = error(&text);
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("refused"), "{e}");
    }
    let e = error(
        "version = 1\n[[rules]]\nname = \"a\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"stop_service\", service = \"drover-agent.service\" }]\n",
    );
    assert!(e.message.contains("agent itself"), "{e}");

    // What only the device knows: a hash that is the agent's own binary.
    let hash = "ab".repeat(32);
    let text = format!(
        "version = 1\n[[rules]]\nname = \"by-hash\"\ncondition = {{ kind = \"process_running\", sha256 = \"{hash}\" }}\nactions = [{{ kind = \"kill\" }}]\n"
    );
    let set = parse(&text).expect("the server cannot know whose hash it is");
    let me = Protected {
        role: "the agent itself".into(),
        pid: 4242,
        comm: "drover-agent".into(),
        exe: Some("/opt/x/agent".into()),
        sha256: Some(hash.to_uppercase()),
    };
    let e = check_protected(&set, std::slice::from_ref(&me)).unwrap_err();
    assert_eq!((e.line, e.column), (3, 8));
    assert!(
        e.message.contains("the agent itself") && e.message.contains("4242"),
        "{e}"
    );
    let other = Protected {
        sha256: Some("cd".repeat(32)),
        ..me
    };
    assert!(check_protected(&set, &[other]).is_ok());
}

#[test]
fn local_policy_allows_only_events_by_default() {
    let set = parse(GOOD).unwrap();
    let denied = set.denied(&Policy::default());
    let kinds: Vec<ActionKind> = denied.iter().map(|(_, k)| *k).collect();
    assert_eq!(
        kinds,
        [
            ActionKind::Kill,
            ActionKind::Block,
            ActionKind::RunCommand,
            ActionKind::StopService
        ]
    );
    let policy: Policy = toml::from_str("allow = [\"kill\", \"block\"]").unwrap();
    let denied: Vec<_> = set.denied(&policy).into_iter().map(|(r, _)| r).collect();
    assert_eq!(denied, ["passwd", "nginx-gone"]);
    assert!(toml::from_str::<Policy>("allow = [\"reboot\"]").is_err());
}

#[test]
fn process_matchers_need_every_given_field_and_hash_lazily() {
    let m = ProcessMatch {
        name: Some("sleep"),
        exe: Some("/usr/bin/sleep"),
        sha256: None,
    };
    assert!(m.matches("sleep", Some("/usr/bin/sleep"), || panic!("no hash needed")));
    assert!(!m.matches("sleep", Some("/bin/other"), || None));
    assert!(!m.matches("sleep", None, || None));
    let h = ProcessMatch {
        name: None,
        exe: None,
        sha256: Some("aa"),
    };
    assert!(h.matches("x", None, || Some("AA".into())));
    assert!(
        !h.matches("x", None, || None),
        "an unreadable binary never matches a hash"
    );
}

#[test]
fn positions_count_characters_and_survive_odd_offsets() {
    assert_eq!(position("ab\ncd", 4), (2, 2));
    assert_eq!(
        position("é\nx", 1),
        (1, 1),
        "mid-character offsets snap back"
    );
    assert_eq!(position("", 10), (1, 1));
    assert!(parse(&"x".repeat(MAX_TEXT_BYTES + 1)).is_err());
    assert!(parse("\u{0}").is_err());
}

#[test]
fn the_examples_in_docs_rules_md_parse() {
    let doc = include_str!("../../../docs/rules.md");
    let mut checked = 0;
    for block in doc.split("```toml\n").skip(1) {
        let text = block.split("```").next().unwrap();
        if !text.contains("version =") {
            continue; // the agent.toml policy snippet
        }
        parse(text).unwrap_or_else(|e| panic!("docs/rules.md example: {e}\n{text}"));
        checked += 1;
    }
    assert!(checked >= 2, "the examples were found");
    let e = parse(
        "version = 2\n\n[[rules]]\nname = \"x\"\ncondition = { kind = \"process_running\", name = \"x\" }\nactions = [{ kind = \"reboot\" }]\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 6, column 12: rule \"x\": action: unknown variant `reboot`, expected one of `event`, `kill`, `stop_service`, `run_command`, `block`",
        "the message docs/rules.md shows"
    );
}

proptest::proptest! {
    /// Any text: no panic, and a refusal points inside the text.
    #[test]
    fn any_text_is_parsed_or_refused_at_a_position_inside_it(
        text in "(version = [0-9]{1,3}\n|\\[\\[rules\\]\\]\n|name = \"[a-z]{1,4}\"\n|condition = \\{ kind = \"(process_running|port_listening|metric)\", [a-z]{1,5} = [0-9a-z\"]{1,6} \\}\n|actions = \\[\\{ kind = \"(event|kill|block)\" \\}\\]\n|[ -~]{0,12}\n){0,12}"
    ) {
        match parse(&text) {
            Err(e) => {
                let lines: Vec<&str> = text.split('\n').collect();
                proptest::prop_assert!(e.line >= 1 && e.line <= lines.len(), "{} for {:?}", e, text);
                let len = lines[e.line - 1].chars().count();
                proptest::prop_assert!(e.column >= 1 && e.column <= len + 1, "{} for {:?}", e, text);
            }
            Ok(set) => proptest::prop_assert!(!set.version.is_empty()),
        }
    }
}
