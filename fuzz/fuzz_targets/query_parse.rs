//! Feeds arbitrary UTF-8 to the device query parser.
//!
//! Checks that parsing never panics, that an error's column lies inside the
//! text (or just past it) and renders, and that every accepted query's
//! canonical text parses back to an equal query with the same text.

#![no_main]

use std::collections::BTreeMap;

use drover_query::{DeviceView, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let query = match Query::parse(src) {
        Ok(query) => query,
        Err(error) => {
            assert!(error.column >= 1 && error.column <= src.chars().count() + 1);
            assert!(error.render(src).ends_with('^'));
            return;
        }
    };
    assert_eq!(query.source(), src);
    let canonical = query.to_string();
    let reparsed = Query::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical text {canonical:?} of {src:?} fails: {e}"));
    assert_eq!(reparsed, query, "canonical text {canonical:?} of {src:?}");
    assert_eq!(reparsed.to_string(), canonical);

    // Evaluation must be total too.
    let tags = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
    let inventory = BTreeMap::from([("arch".to_owned(), "aarch64".to_owned())]);
    let groups = ["gateways".to_owned()];
    let device = DeviceView {
        id: "gw-1",
        connection: "online",
        enrollment: "accepted",
        tags: &tags,
        inventory: &inventory,
        groups: &groups,
    };
    let _ = query.matches(&device);
});
