//! `drover-agent`: enroll this device, then keep its control channel up.
//!
//! Exit codes: 0 done (or pending acceptance after `enroll`), 1 failure,
//! 2 bad command line or configuration, 3 the server refused the device,
//! 4 the update engine asks for the agent to be restarted (self-update:
//! the supervisor starts the new binary; the state is journaled).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use drover_agent::apply::Applier;
use drover_agent::backoff::{Backoff, random_unit};
use drover_agent::config::{AgentConfig, DEFAULT_CONFIG};
use drover_agent::enroll::{EnrollError, Trust, enroll};
use drover_agent::identity::{self, Identity};
use drover_agent::session::{Agent, InventorySource, Stop};
use drover_agent::state::AgentState;
use drover_agent::telemetry::{TelemetryHandle, TelemetryParts};
use drover_agent::update::download::MtlsSource;
use drover_agent::update::engine::{EngineParts, UpdateHandle};
use drover_proto::device::{EnrollStatus, EnrollmentToken};

#[derive(Parser)]
#[command(name = "drover-agent", version, about = "Drover device agent")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "DROVER_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Data directory (keys, certificates, state); overrides the config file.
    #[arg(long, global = true, env = "DROVER_AGENT_DATA")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll with a token, or without one (the device then waits for an
    /// operator, unless its key was pre-authorized).
    Enroll {
        /// The token from `drover enroll-tokens create`.
        #[arg(long, env = "DROVER_ENROLL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Server URL, when enrolling without a token.
        #[arg(long, requires = "ca_fingerprint")]
        server: Option<String>,
        /// SHA-256 of the fleet CA (from `drover server` output), without a token.
        #[arg(long)]
        ca_fingerprint: Option<String>,
        /// Wait (asking again) until an operator accepts a pending device.
        #[arg(long)]
        wait: bool,
    },
    /// Keep the control channel up (the daemon).
    Run,
    /// Print this device's id and public key (for `drover devices preauthorize`).
    Key,
    /// Run the agent (`current` version) and revert a self-update that
    /// does not come up healthy; what systemd runs. ARGS default to `run`.
    Supervise {
        #[arg(last = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let explicit = std::env::var_os("DROVER_AGENT_CONFIG").is_some()
        || std::env::args().any(|a| a.starts_with("--config"));
    let mut config = match AgentConfig::load(&cli.config, explicit) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    if let Some(d) = cli.data {
        config.data_dir = d;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async move {
        match cli.command {
            Command::Key => key(&config),
            Command::Enroll {
                token,
                server,
                ca_fingerprint,
                wait,
            } => {
                let trust = match (token, server, ca_fingerprint) {
                    (Some(t), _, _) => match EnrollmentToken::decode(&t) {
                        Ok(t) => Trust::Token(t),
                        Err(e) => return fail(2, e),
                    },
                    (None, Some(url), Some(fp)) => Trust::Pinned {
                        url,
                        ca_fingerprint: fp,
                    },
                    _ => return fail(2, "give --token, or --server with --ca-fingerprint"),
                };
                enroll_cmd(&config, &trust, wait).await
            }
            Command::Run => run(config).await,
            Command::Supervise { args } => drover_agent::supervisor::run_from_cli(
                &config,
                explicit.then_some(cli.config.as_path()),
                args,
            ),
        }
    })
}

fn key(config: &AgentConfig) -> ExitCode {
    match identity::load_or_create_key(&config.data_dir) {
        Ok(k) => {
            println!("device id: {}", identity::device_id(&k));
            print!("{}", k.public_key_pem());
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

async fn enroll_cmd(config: &AgentConfig, trust: &Trust, wait: bool) -> ExitCode {
    loop {
        match enroll(&config.data_dir, trust, hostname()).await {
            Ok(r) if r.status == EnrollStatus::Accepted => {
                println!("enrolled as device {}", r.device_id);
                return ExitCode::SUCCESS;
            }
            Ok(r) => {
                println!(
                    "device {} is pending: an operator must run `drover devices accept {}`",
                    r.device_id, r.device_id
                );
                if !wait {
                    println!("`drover-agent run` keeps asking until then");
                    return ExitCode::SUCCESS;
                }
                let secs = r.retry_after_secs.unwrap_or(30).clamp(1, 3600);
                tokio::time::sleep(Duration::from_secs_f64(secs as f64 * (0.5 + random_unit())))
                    .await;
            }
            Err(EnrollError::Refused { code, message }) => {
                return fail(3, format!("{message} ({code})"));
            }
            Err(e) => return fail(1, e),
        }
    }
}

/// The daemon: wait for acceptance if pending, then keep the channel up.
async fn run(config: AgentConfig) -> ExitCode {
    let data = config.data_dir.clone();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = signal_stop.send(true);
    });
    let mut backoff = Backoff::new(
        Duration::from_millis(config.reconnect_min_ms.max(10)),
        Duration::from_secs(config.reconnect_max_secs.max(1)),
    );
    let identity = loop {
        match Identity::load(&data) {
            Ok(Some(id)) => break id,
            Ok(None) => {}
            Err(e) => return fail(2, e),
        }
        // Not enrolled yet: a pending device keeps asking.
        let server: Option<identity::ServerInfo> = std::fs::read(data.join(identity::SERVER_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(server) = server else {
            return fail(
                2,
                format!(
                    "this device is not enrolled ({} has no server.json): run `drover-agent enroll` first",
                    data.display()
                ),
            );
        };
        let trust = Trust::Pinned {
            url: server.url,
            ca_fingerprint: server.ca_fingerprint,
        };
        match enroll(&data, &trust, hostname()).await {
            Ok(r) if r.status == EnrollStatus::Accepted => continue,
            Ok(_) => tracing::info!("waiting for an operator to accept this device"),
            Err(EnrollError::Refused { code, message }) => {
                return fail(3, format!("{message} ({code})"));
            }
            Err(e) => tracing::warn!(error = %e, "enrollment check failed"),
        }
        let delay = backoff.next_delay().max(Duration::from_millis(200));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = async { let mut s = stop.clone(); let _ = s.wait_for(|v| *v).await; } => return ExitCode::SUCCESS,
        }
    };
    backoff.reset();
    let state = match AgentState::load(&data) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    tracing::info!(device_id = %identity.device_id, server = %identity.server.url, "agent starting");
    let update = match UpdateHandle::spawn(
        EngineParts {
            data_dir: data.clone(),
            config: config.update.clone(),
            installers: drover_agent::update::installers(&config.update, &data),
            source: Arc::new(MtlsSource::from_data_dir(
                identity.server.url.clone(),
                data.clone(),
            )),
            connected: tokio::sync::watch::channel(false).1,
            proc_dir: PathBuf::from("/proc"),
        },
        config.update.reboot_command.clone(),
    ) {
        Ok(u) => u,
        Err(e) => return fail(2, format!("updates: {e}")),
    };
    // A self-update needs this process replaced: stop cleanly, exit 4.
    let mut restart = update.restart_requested();
    let restart_stop = stop_tx.clone();
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restarting_flag = restarting.clone();
    tokio::spawn(async move {
        if restart.wait_for(|r| *r).await.is_ok() {
            restarting_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = restart_stop.send(true);
        }
    });
    let telemetry = if config.telemetry.enabled {
        let boot_id = match drover_agent::telemetry::clock::boot_id() {
            Ok(b) => b,
            Err(e) => return fail(2, format!("telemetry: {e}")),
        };
        match TelemetryHandle::spawn(TelemetryParts {
            data_dir: data.clone(),
            config: config.telemetry.clone(),
            clock: Arc::new(drover_agent::telemetry::clock::SystemClock),
            boot_id,
            proc_dir: PathBuf::from("/proc"),
            sys_dir: PathBuf::from("/sys"),
        }) {
            Ok(t) => Some(t),
            Err(e) => return fail(2, format!("telemetry: {e}")),
        }
    } else {
        None
    };
    let rules = config.rules.enabled.then(|| {
        drover_agent::rules::RulesHandle::spawn(drover_agent::rules::RulesParts {
            data_dir: Some(data.clone()),
            config: config.rules.clone(),
            proc_dir: PathBuf::from("/proc"),
            sys_dir: PathBuf::from("/sys"),
        })
    });
    let mut agent = Agent {
        identity,
        applier: Applier::Files {
            desired_file: config.desired_file(),
            hook: config.apply_hook.clone(),
            hook_timeout: Duration::from_secs(config.apply_hook_timeout_secs.max(1)),
        },
        inventory_interval: Duration::from_secs(config.inventory.interval_secs.max(1)),
        inventory: InventorySource::System(config.inventory.clone()),
        state,
        persist: Some(data),
        bind: None,
        backoff,
        renew_at_fraction_left: config.renew_at_fraction_left,
        stats: Default::default(),
        update: Some(update),
        telemetry,
        rules,
    };
    match agent.run(stop).await {
        Stop::Requested if restarting.load(std::sync::atomic::Ordering::SeqCst) => {
            tracing::info!("restarting for an agent update");
            ExitCode::from(4)
        }
        Stop::Requested => ExitCode::SUCCESS,
        Stop::Refused { code, message } => fail(
            3,
            format!("the server refuses this device: {message} ({code})"),
        ),
    }
}
