//! `drover releases …`, `drover deploy …`, `drover deployments …`: what
//! is published and which devices should run it.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use drover_proto::api::{
    CreateDeployment, DeploymentInfo, DeploymentList, ReleaseInfo, ReleaseList,
};

use crate::client::{Client, escape};
use crate::error::{CliError, CliResult};
use crate::output::{self, or_dash};

#[derive(Debug, Subcommand)]
pub enum ReleasesCommand {
    /// Published releases.
    List,
    /// One release: payloads, signing keys, provenance.
    Show {
        /// `name@version`.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Release id, `name@version` (see `drover releases list`).
    pub release: String,
    /// A device to update (repeatable).
    #[arg(long = "device", value_name = "ID", conflicts_with = "group")]
    pub devices: Vec<String>,
    /// Every accepted member of this group now.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Let devices install a version older than the one they run.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Wait up to this many seconds for every device to finish (committed,
    /// rolled back or failed); exit 1 if any did not commit.
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// Recent deployments, newest first.
    List,
    /// Per-device state and reasons of one deployment.
    Show {
        id: String,
        /// Wait up to this many seconds for every device to finish.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
}

fn counts(d: &DeploymentInfo) -> String {
    d.counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn releases(client: &Client, cmd: ReleasesCommand, json: bool) -> CliResult<()> {
    match cmd {
        ReleasesCommand::List => {
            let list: ReleaseList = client.get("/api/v1/releases").await?;
            if json {
                return output::json(&list);
            }
            let rows = list
                .releases
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.device_types.join(","),
                        r.payloads
                            .iter()
                            .map(|p| p.kind.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                        r.signed_by.join(","),
                        r.created_at.clone(),
                    ]
                })
                .collect();
            output::table(
                &[
                    "release",
                    "device types",
                    "payloads",
                    "signed by",
                    "published",
                ],
                rows,
            );
            Ok(())
        }
        ReleasesCommand::Show { id } => {
            let r: ReleaseInfo = client
                .get(&format!("/api/v1/releases/{}", escape(&id)))
                .await?;
            if json {
                return output::json(&r);
            }
            println!("release:      {}", r.id);
            println!("device types: {}", r.device_types.join(", "));
            println!("signed by:    {}", r.signed_by.join(", "));
            println!(
                "published:    {} by {}",
                r.created_at,
                or_dash(r.created_by.as_deref())
            );
            if !r.provenance.is_null() {
                println!("provenance:   {}", r.provenance);
            }
            let rows = r
                .payloads
                .iter()
                .map(|p| {
                    vec![
                        p.kind.clone(),
                        p.sha256.clone(),
                        p.size.to_string(),
                        match (&p.delta_base_version, &p.delta_sha256) {
                            (Some(v), Some(s)) => format!("from {v} ({})", &s[..12.min(s.len())]),
                            _ => "-".into(),
                        },
                    ]
                })
                .collect();
            output::table(&["type", "sha256", "bytes", "delta"], rows);
            Ok(())
        }
    }
}

/// Polls a deployment until every device is final or `secs` pass.
async fn wait_for(client: &Client, id: &str, secs: u64, json: bool) -> CliResult<DeploymentInfo> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} devices finished {msg}")
                .expect("template"),
        );
        b
    });
    loop {
        let d: DeploymentInfo = client
            .get(&format!("/api/v1/deployments/{}", escape(id)))
            .await?;
        let total = d.devices.len() as u64;
        let done = d.devices.iter().filter(|x| x.state.is_final()).count() as u64;
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
            b.set_message(counts(&d));
        }
        if done == total || Instant::now() >= deadline {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_deployment(d: &DeploymentInfo) {
    println!("deployment: {}", d.id);
    println!("release:    {}", d.release);
    println!("target:     {}", d.target);
    println!(
        "created:    {} by {}",
        d.created_at,
        or_dash(d.created_by.as_deref())
    );
    println!("states:     {}", counts(d));
    if !d.devices.is_empty() {
        let rows = d
            .devices
            .iter()
            .map(|x| {
                vec![
                    x.device_id.clone(),
                    x.state.as_str().to_string(),
                    x.progress
                        .map(|p| format!("{p}%"))
                        .unwrap_or_else(|| "-".into()),
                    or_dash(x.reason.as_deref()),
                    or_dash(x.message.as_deref()),
                    x.updated_at.clone(),
                ]
            })
            .collect();
        output::table(
            &[
                "device", "state", "progress", "reason", "message", "updated",
            ],
            rows,
        );
    }
}

/// Exit 1 when waiting ended with devices that did not commit.
fn outcome(d: &DeploymentInfo) -> CliResult<()> {
    let bad: Vec<&str> = d
        .devices
        .iter()
        .filter(|x| x.state != drover_proto::device::UpdateState::Committed)
        .map(|x| x.device_id.as_str())
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "{} device(s) did not commit: {}; `drover deployments show {}` has the reasons",
            bad.len(),
            bad.join(", "),
            d.id
        )))
    }
}

pub async fn deploy(client: &Client, args: DeployArgs, json: bool) -> CliResult<()> {
    let body = CreateDeployment {
        release: args.release,
        devices: args.devices,
        group: args.group,
        allow_downgrade: args.allow_downgrade,
    };
    let d: DeploymentInfo = client.post("/api/v1/deployments", &body).await?;
    let Some(secs) = args.wait else {
        if json {
            return output::json(&d);
        }
        println!(
            "Deployment {} sends {} to {} ({}). Offline devices get it when they reconnect.",
            d.id,
            d.release,
            d.target,
            counts(&d)
        );
        println!("Follow it with: drover deployments show {}", d.id);
        return Ok(());
    };
    let d = wait_for(client, &d.id, secs, json).await?;
    if json {
        output::json(&d)?;
    } else {
        print_deployment(&d);
    }
    outcome(&d)
}

pub async fn deployments(client: &Client, cmd: DeploymentsCommand, json: bool) -> CliResult<()> {
    match cmd {
        DeploymentsCommand::List => {
            let list: DeploymentList = client.get("/api/v1/deployments").await?;
            if json {
                return output::json(&list);
            }
            let rows = list
                .deployments
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.release.clone(),
                        d.target.chars().take(40).collect(),
                        counts(d),
                        d.created_at.clone(),
                    ]
                })
                .collect();
            output::table(
                &["deployment", "release", "target", "states", "created"],
                rows,
            );
            Ok(())
        }
        DeploymentsCommand::Show { id, wait } => {
            let d = match wait {
                Some(secs) => wait_for(client, &id, secs, json).await?,
                None => {
                    client
                        .get(&format!("/api/v1/deployments/{}", escape(&id)))
                        .await?
                }
            };
            if json {
                return output::json(&d);
            }
            print_deployment(&d);
            Ok(())
        }
    }
}
