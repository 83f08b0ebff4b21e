//! Feeds arbitrary UTF-8 to the rule set parser (docs/rules.md).
//!
//! Checks that parsing never panics, that every refusal names a line and
//! column inside the text (1-based, the column at most one past the line's
//! last character), and that an accepted set keeps the limits the parser
//! promises: a version, unique rule names, 1–16 actions per rule.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match drover_rules::parse(text) {
        Err(e) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(e.line >= 1 && e.line <= lines.len().max(1), "{e} in {} lines", lines.len());
            let len = lines.get(e.line - 1).map_or(0, |l| l.chars().count());
            assert!(e.column >= 1 && e.column <= len + 1, "{e}: line has {len} characters");
            assert!(!e.message.is_empty());
        }
        Ok(set) => {
            assert!(!set.version.is_empty() && set.version.len() <= drover_rules::MAX_VERSION_BYTES);
            let mut names = std::collections::HashSet::new();
            for r in &set.rules {
                assert!(names.insert(&r.name), "duplicate rule {}", r.name);
                assert!((1..=drover_rules::MAX_ACTIONS).contains(&r.actions.len()));
            }
        }
    }
});
