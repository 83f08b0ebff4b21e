//! Human tables and `--json` output.

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Prints rows as an aligned table with a header, like `kubectl get`.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads each line; strip the trailing spaces.
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `-` for absent values in tables.
pub fn or_dash(v: Option<&str>) -> String {
    v.map(str::to_string).unwrap_or_else(|| "-".into())
}
