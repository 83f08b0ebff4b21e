//! `drover rules apply|show|clear`: agent-side rule sets of groups and
//! devices (docs/rules.md). A file is checked here with the same parser
//! the server and the agent use before it is sent, so a mistake is named
//! by file, line and column without a round trip.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::client::{Client, escape};
use crate::error::{CliError, CliResult, Kind};
use crate::output::{self, or_dash};

/// Whose rule set: exactly one of a group or a device.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Scope {
    /// The rule set of this group (its members run it unless they have
    /// their own).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// This device's own rule set (it wins over its groups').
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
}

impl Scope {
    fn path(&self) -> String {
        match (&self.group, &self.device) {
            (Some(g), _) => format!("/api/v1/groups/{}/rules", escape(g)),
            (_, Some(d)) => format!("/api/v1/devices/{}/rules", escape(d)),
            _ => unreachable!("clap requires one"),
        }
    }

    fn what(&self) -> String {
        match (&self.group, &self.device) {
            (Some(g), _) => format!("group {g}"),
            (_, Some(d)) => format!("device {d}"),
            _ => unreachable!("clap requires one"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check a rule set file and store it for a group or a device; devices
    /// get it with their desired state and load it without restarting.
    Apply {
        /// The rule set (TOML, see docs/rules.md).
        file: PathBuf,
        #[command(flatten)]
        scope: Scope,
    },
    /// A group's rule set, or what a device should run and reports.
    Show {
        #[command(flatten)]
        scope: Scope,
        /// Print the rule set text too.
        #[arg(long)]
        text: bool,
    },
    /// Delete a group's or a device's own rule set.
    Clear {
        #[command(flatten)]
        scope: Scope,
    },
}

fn summary(set: &Value) -> String {
    let names: Vec<&str> = set["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "version {} ({} rules: {})",
        set["version"].as_str().unwrap_or("?"),
        names.len(),
        names.join(", ")
    )
}

pub async fn run(client: &Client, cmd: RulesCommand, json: bool) -> CliResult<()> {
    match cmd {
        RulesCommand::Apply { file, scope } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                CliError::usage(format!("cannot read rule set {}: {e}", file.display()))
            })?;
            if let Err(e) = drover_rules::parse(&text) {
                return Err(CliError::new(
                    Kind::Usage,
                    "invalid_rules",
                    format!(
                        "{}: {e}; nothing was sent (see docs/rules.md)",
                        file.display()
                    ),
                ));
            }
            let set: Value = client
                .put(&scope.path(), &serde_json::json!({ "text": text }))
                .await?;
            if json {
                return output::json(&set);
            }
            println!(
                "stored rule set {} for {}; devices load it with their next desired state",
                summary(&set),
                scope.what()
            );
            Ok(())
        }
        RulesCommand::Show { scope, text } => {
            let v: Value = client.get(&scope.path()).await?;
            if json {
                return output::json(&v);
            }
            let shown = if scope.device.is_some() {
                println!(
                    "device:           {}",
                    v["device_id"].as_str().unwrap_or("?")
                );
                println!(
                    "should run:       {} {}",
                    or_dash(v["effective_source"].as_str()),
                    or_dash(v["effective_version"].as_str())
                );
                println!(
                    "reports running:  {} {}",
                    or_dash(v["reported_source"].as_str()),
                    or_dash(v["reported_version"].as_str())
                );
                if let Some(e) = v["reported_error"].as_str() {
                    println!("last refusal:     {e}");
                }
                match v.get("own").filter(|o| !o.is_null()) {
                    Some(own) => {
                        println!("own rule set:     {}", summary(own));
                        own.clone()
                    }
                    None => {
                        println!("own rule set:     -");
                        Value::Null
                    }
                }
            } else {
                println!("rule set:   {}", summary(&v));
                println!(
                    "updated:    {} by {}",
                    v["updated_at"].as_str().unwrap_or("?"),
                    or_dash(v["updated_by"].as_str())
                );
                println!("sha256:     {}", v["sha256"].as_str().unwrap_or("?"));
                v.clone()
            };
            if text && let Some(t) = shown["text"].as_str() {
                println!();
                print!("{t}");
            }
            Ok(())
        }
        RulesCommand::Clear { scope } => {
            let v: Value = client.delete(&scope.path()).await?;
            if json {
                return output::json(&v);
            }
            println!("deleted rule set {} of {}", summary(&v), scope.what());
            Ok(())
        }
    }
}
