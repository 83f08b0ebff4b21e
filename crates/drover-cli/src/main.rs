//! The `drover` binary: `drover server` and the operator CLI.
//!
//! This file only wires things together; each subcommand lives in `cmd/`.

mod cli;
mod client;
mod cmd;
mod error;
mod output;
mod profile;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.global.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            e.print(json);
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
