//! `drover audit`: the audit log, newest first.

use drover_proto::api::AuditPage;

use crate::cli::AuditArgs;
use crate::client::{Client, escape};
use crate::error::CliResult;
use crate::output::{self, or_dash};

pub async fn run(client: &Client, args: AuditArgs, json: bool) -> CliResult<()> {
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(b) = args.before {
        path.push_str(&format!("&before={b}"));
    }
    if let Some(a) = &args.actor {
        path.push_str(&format!("&actor={}", escape(a)));
    }
    if let Some(a) = &args.action {
        path.push_str(&format!("&action={}", escape(a)));
    }
    let page: AuditPage = client.get(&path).await?;
    if json {
        return output::json(&page);
    }
    let rows = page
        .entries
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.clone(),
                format!("{} ({})", e.actor_name, e.actor),
                e.action.clone(),
                or_dash(e.target.as_deref()),
                e.outcome.as_str().to_string(),
                e.status.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "id", "time", "actor", "action", "target", "outcome", "status",
        ],
        rows,
    );
    if let Some(next) = page.next_before {
        println!("(more: drover audit --before {next})");
    }
    Ok(())
}
