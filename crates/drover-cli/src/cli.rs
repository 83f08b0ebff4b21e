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
    /// Tokens that let devices enroll unattended.
    #[command(subcommand, name = "enroll-tokens")]
    EnrollTokens(EnrollTokensCommand),
    /// Devices: list, inspect, accept, tag, configure, revoke.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Device groups (static lists or queries) and their configuration.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Release keys, signed release bundles and publishing them.
    #[command(subcommand)]
    Release(crate::cmd::release::ReleaseCommand),
    /// Published releases.
    #[command(subcommand)]
    Releases(crate::cmd::deploy::ReleasesCommand),
    /// Make a release the target of devices or a group.
    Deploy(crate::cmd::deploy::DeployArgs),
    /// Deployments and each device's progress.
    #[command(subcommand)]
    Deployments(crate::cmd::deploy::DeploymentsCommand),
    /// Fleet metrics (aggregates by group and tag) and one device's telemetry.
    #[command(subcommand)]
    Metrics(crate::cmd::metrics::MetricsCommand),
    /// Agent-side rule sets of groups and devices (docs/rules.md).
    #[command(subcommand)]
    Rules(crate::cmd::rules::RulesCommand),
    /// Alerts on the server (list, show, ack) and their rules.
    #[command(subcommand)]
    Alerts(crate::cmd::alerts::AlertsCommand),
    /// Run many simulated devices in this process, over the real protocol.
    Sim(SimArgs),
    /// Start a server on the embedded default with a simulated fleet to explore.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// An enrollment token (`drover-enroll-v1.…`); without one, the sim
    /// creates one with the logged-in API token.
    #[arg(
        long = "enroll-token",
        env = "DROVER_ENROLL_TOKEN",
        hide_env_values = true
    )]
    pub enroll_token: Option<String>,
    /// How many devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub devices: u64,
    /// Tags for the devices when the sim creates the enrollment token (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub tags: Vec<(String, String)>,
    /// Share of the devices that disconnect and come back each minute (0-1).
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_min: f64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Connect from many 127.0.x.y addresses when the server is on loopback
    /// (as devices behind different NATs would).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub spread_addresses: bool,
    /// Reconnect backoff cap in seconds.
    #[arg(long, default_value_t = 30)]
    pub reconnect_max_secs: u64,
    /// Run a real update engine (with the `app` installer) in each device,
    /// keeping each device's update state and installed apps under
    /// DIR/sim-NNNNN. Without it, devices answer updates `updates_disabled`.
    #[arg(long, value_name = "DIR")]
    pub updates_dir: Option<PathBuf>,
    /// Device type the simulated devices report for updates.
    #[arg(long, default_value = "drover-sim")]
    pub device_type: String,
    /// Release root public key the simulated devices trust (`ed25519:…`,
    /// repeatable); roots in the enrollment token are trusted too.
    #[arg(long = "release-root", value_name = "KEY")]
    pub release_roots: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data directory of the demo server.
    #[arg(long = "data", default_value = "./drover-demo", value_name = "DIR")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = drover_server::ServerConfig::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Simulated devices to enroll.
    #[arg(long, default_value_t = 24)]
    pub devices: u64,
}

/// `key=value`, for tags and configuration.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokensCommand {
    /// Create a token; print it once, to give to devices.
    Create {
        #[arg(long, default_value = "enroll")]
        name: String,
        /// Tag every device enrolled with it (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
        /// How many devices may use it (default: unlimited).
        #[arg(long)]
        uses: Option<u64>,
        /// Lifetime, e.g. 24h or 30d (default: never expires).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
        expires: Option<u64>,
        /// A release root public key (`ed25519:…`, or a `.pub` file from
        /// `drover release keygen --root`) that devices enrolled with this
        /// token will trust for updates (repeatable). Added to the token here,
        /// on your machine: the server never chooses what devices trust.
        #[arg(long = "release-root", value_name = "KEY_OR_FILE")]
        release_roots: Vec<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, optionally filtered by a query (see docs/query.md).
    List {
        #[arg(long, short)]
        query: Option<String>,
    },
    /// Inventory, tags, desired vs reported configuration and drift.
    Show { id: String },
    /// Accept a pending device.
    Accept { id: String },
    /// Reject a pending device.
    Reject { id: String },
    /// Revoke a device: its connection closes and it can never reconnect.
    Revoke { id: String },
    /// Allow a device key in advance (`drover-agent key` prints it).
    Preauthorize {
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
    },
    /// Set tags.
    Tag {
        id: String,
        #[arg(required = true, value_name = "KEY=VALUE", value_parser = parse_pair)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags.
    Untag {
        id: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Replace the device's own desired configuration.
    SetDesired {
        id: String,
        #[arg(value_name = "KEY=VALUE", value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Create a group from a query, a list of devices, or both.
    Create {
        name: String,
        #[arg(long, short)]
        query: Option<String>,
        #[arg(long = "device", value_name = "ID")]
        devices: Vec<String>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Replace the group's desired configuration.
    SetDesired {
        name: String,
        #[arg(value_name = "KEY=VALUE", value_parser = parse_pair)]
        pairs: Vec<(String, String)>,
    },
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
    /// How often agents send a heartbeat.
    #[arg(long, env = "DROVER_HEARTBEAT_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub heartbeat_interval_secs: u64,
    /// A device silent this long is marked offline (default: 3 heartbeats).
    #[arg(long, env = "DROVER_OFFLINE_AFTER_SECS", value_parser = clap::value_parser!(u64).range(2..=86400))]
    pub offline_after_secs: Option<u64>,
    /// Lifetime of device certificates; agents renew at a third left.
    #[arg(long, env = "DROVER_DEVICE_CERT_VALIDITY_SECS", default_value_t = 90 * 24 * 3600, value_parser = clap::value_parser!(u64).range(10..=10 * 365 * 24 * 3600))]
    pub device_cert_validity_secs: u64,
    /// Device connection and enrollment attempts allowed per source address per second.
    #[arg(long, env = "DROVER_CONNECTS_PER_IP_PER_SEC", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub connects_per_ip_per_sec: u32,
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
