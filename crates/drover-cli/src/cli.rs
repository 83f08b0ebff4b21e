//! Command-line grammar of `drover`. Every command takes `--json`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drover_proto::api::Role;

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "Drover: manage a fleet of Linux devices as if it were one machine"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Login profile file (default: ~/.config/drover/config.toml).
    #[arg(long, global = true, env = "DROVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server URL, overriding the login profile.
    #[arg(long, global = true, env = "DROVER_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token, overriding the login profile.
    #[arg(
        long,
        global = true,
        env = "DROVER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for the server, e.g. DATA/ca.crt.
    #[arg(long, global = true, env = "DROVER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (SQLite and local files by default).
    Server(ServerArgs),
    /// Check a server URL and token, then store them so later commands need no flags.
    Login,
    /// Forget the stored login profile.
    Logout,
    /// Show who the current token belongs to.
    Whoami,
    /// Manage operator API tokens (admin).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Read the audit log, newest first.
    Audit(AuditArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Data directory: SQLite database, fleet CA, certificates, admin token.
    #[arg(
        long = "data",
        env = "DROVER_DATA",
        default_value = "./drover-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "DROVER_LISTEN", default_value = drover_server::ServerConfig::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Database URL: postgres://USER@HOST/DB selects PostgreSQL (default: SQLite in the data directory).
    #[arg(
        long,
        env = "DROVER_DATABASE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// URL devices and operators use to reach this server (default: from --listen).
    #[arg(long, env = "DROVER_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Your own TLS certificate chain (PEM) instead of one from the fleet CA.
    #[arg(
        long,
        env = "DROVER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(
        long,
        env = "DROVER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP. Tokens then cross the network in clear: local experiments only.
    #[arg(long, env = "DROVER_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Log format (the level is set with DROVER_LOG, e.g. DROVER_LOG=debug).
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        role: Role,
        /// A label to recognise the token by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime, e.g. 90m, 12h, 30d (default: never expires).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        expires: Option<u64>,
    },
    /// List tokens (never their secrets).
    List,
    /// Show one token.
    Show { id: String },
    /// Revoke a token at once.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many entries (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Only entries older than this id (paging).
    #[arg(long)]
    pub before: Option<i64>,
    /// Only calls made with this token id.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action, e.g. tokens.create.
    #[arg(long)]
    pub action: Option<String>,
}

/// Parses `90`, `90s`, `15m`, `12h`, `30d` or `2w` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: write e.g. 90m, 12h or 30d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use s, m, h, d or w"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("15m"), Ok(900));
        assert_eq!(parse_duration_secs("30d"), Ok(2_592_000));
        assert!(parse_duration_secs("1y").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("99999999999999999999d").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
