//! One module per subcommand; [`run`] dispatches.

pub mod alerts;
mod audit;
mod demo;
pub mod deploy;
mod devices;
mod login;
pub mod metrics;
pub mod release;
pub mod rules;
mod server;
mod sim;
mod tokens;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::client::Client;
use crate::error::{CliError, CliResult, Kind};
use crate::profile;

pub async fn run(cli: Cli) -> CliResult<()> {
    let g = &cli.global;
    match cli.command {
        Command::Server(args) => server::run(args, g.json).await,
        Command::Login => login::login(g).await,
        Command::Logout => login::logout(g),
        Command::Whoami => login::whoami(&connect(g)?, g.json).await,
        Command::Tokens(cmd) => tokens::run(&connect(g)?, cmd, g.json).await,
        Command::Audit(args) => audit::run(&connect(g)?, args, g.json).await,
        Command::EnrollTokens(cmd) => devices::enroll_tokens(&connect(g)?, cmd, g.json).await,
        Command::Devices(cmd) => devices::devices(&connect(g)?, cmd, g.json).await,
        Command::Groups(cmd) => devices::groups(&connect(g)?, cmd, g.json).await,
        Command::Release(cmd) => release::run(cmd, g).await,
        Command::Releases(cmd) => deploy::releases(&connect(g)?, cmd, g.json).await,
        Command::Deploy(args) => deploy::deploy(&connect(g)?, args, g.json).await,
        Command::Deployments(cmd) => deploy::deployments(&connect(g)?, cmd, g.json).await,
        Command::Metrics(cmd) => metrics::run(&connect(g)?, cmd, g.json).await,
        Command::Rules(cmd) => rules::run(&connect(g)?, cmd, g.json).await,
        Command::Alerts(cmd) => alerts::run(&connect(g)?, cmd, g.json).await,
        Command::Sim(args) => sim::run(args, g).await,
        Command::Demo(args) => demo::run(args, g.json).await,
    }
}

/// Where the login profile lives.
fn profile_path(g: &GlobalArgs) -> CliResult<std::path::PathBuf> {
    match &g.config {
        Some(p) => Ok(p.clone()),
        None => profile::default_path(),
    }
}

fn read_ca(path: &std::path::Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read CA certificate {}: {e}",
            path.display()
        ))
    })
}

/// A client from the stored profile, with flags and environment on top.
pub(crate) fn connect(g: &GlobalArgs) -> CliResult<Client> {
    let stored = profile::load(&profile_path(g)?)?;
    let server = g
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|p| p.server.clone()));
    let token = g
        .token
        .clone()
        .or_else(|| stored.as_ref().map(|p| p.token.clone()));
    let (Some(server), Some(token)) = (server, token) else {
        return Err(CliError::new(
            Kind::Auth,
            "not_logged_in",
            "not logged in: run `drover login --server URL --token TOKEN --ca-cert DATA/ca.crt` first",
        ));
    };
    let ca = match &g.ca_cert {
        Some(path) => Some(read_ca(path)?),
        None => stored.and_then(|p| p.ca_cert_pem),
    };
    Client::new(&server, &token, ca.as_deref())
}
