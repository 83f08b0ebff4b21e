//! `drover release …`: release keys, signed bundles and publishing.
//! Signing happens here, on the operator's (or CI's) machine; the server
//! never sees a private key.

use clap::Subcommand;

use crate::cli::GlobalArgs;
use crate::error::{CliError, CliResult};

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make a release key pair.
    Keygen,
}

pub async fn run(cmd: ReleaseCommand, _g: &GlobalArgs) -> CliResult<()> {
    match cmd {
        ReleaseCommand::Keygen => Err(CliError::usage("not built yet")),
    }
}
