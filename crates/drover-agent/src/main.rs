//! `drover-agent`: the on-device daemon.
//!
//! Today this is only the skeleton the workspace needs: it builds as its
//! own small binary that links no server dependency (scripts/test.sh checks
//! that with `cargo tree`). Enrollment, the control channel and the rest
//! arrive with the devices issue; until then every subcommand says so
//! instead of pretending to work.

use std::process::ExitCode;

const USAGE: &str = "usage: drover-agent [--version | --help]

Subcommands (enroll, run) are not implemented yet in this build.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => {
            println!("drover-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: `{other}` is not available in this drover-agent build yet\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
