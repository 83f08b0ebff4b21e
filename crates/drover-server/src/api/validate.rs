//! Shape checks for names, keys and documents that operators send.

use drover_proto::api::Document;

use crate::error::ApiError;

/// Tag and configuration keys: 1–128 of letters, digits, `_ . - / :`.
pub fn key(kind: &str, k: &str) -> Result<(), ApiError> {
    let ok = !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{kind} key {k:?} is not allowed: use 1-128 letters, digits or _ . - / :"
        )))
    }
}

/// A document: at most `max_entries`, valid keys, printable values up to `max_value` bytes.
pub fn document(
    kind: &str,
    doc: &Document,
    max_entries: usize,
    max_value: usize,
) -> Result<(), ApiError> {
    if doc.len() > max_entries {
        return Err(ApiError::bad_request(format!(
            "at most {max_entries} {kind} entries are allowed"
        )));
    }
    for (k, v) in doc {
        key(kind, k)?;
        if v.len() > max_value || v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(ApiError::bad_request(format!(
                "{kind} value of {k:?} must be at most {max_value} bytes without control characters"
            )));
        }
    }
    Ok(())
}

pub fn tags(doc: &Document) -> Result<(), ApiError> {
    document("tag", doc, 64, 256)
}

/// Group names: 1–64 of lowercase letters, digits, `-`, `_`, `.`; starting
/// with a letter or digit.
pub fn group_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "group name {name:?} is not allowed: use 1-64 lowercase letters, digits, - _ . (starting with a letter or digit)"
        )))
    }
}

pub fn device_id(id: &str) -> Result<(), ApiError> {
    if drover_proto::device::is_device_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "{id:?} is not a device id (24 hex characters); `drover devices list` shows them"
        )))
    }
}

/// Parses a device query, turning its error into a 400 that shows where.
pub fn query(q: &str) -> Result<drover_query::Query, ApiError> {
    drover_query::Query::parse(q).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("invalid query: {e}\n{}", e.render(q)),
        )
    })
}
