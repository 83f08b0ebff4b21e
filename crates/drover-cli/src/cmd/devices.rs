//! `drover enroll-tokens …`, `drover devices …`, `drover groups …`.

use drover_proto::api::{
    CreateEnrollToken, CreateGroup, CreatedEnrollToken, DeviceDetail, DeviceList, DeviceSummary,
    Document, EnrollTokenInfo, EnrollTokenList, GroupInfo, GroupList, Preauthorize,
    PreauthorizedKey, SetDesired, TagChange,
};

use crate::cli::{DevicesCommand, EnrollTokensCommand, GroupsCommand};
use crate::client::{Client, escape};
use crate::error::{CliError, CliResult};
use crate::output::{self, or_dash};

fn doc(pairs: Vec<(String, String)>) -> Document {
    pairs.into_iter().collect()
}

fn show_doc(d: &Document) -> String {
    d.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Path segments are escaped; the server validates their shape.
fn seg(s: &str) -> String {
    escape(s)
}

/// A release root public key given inline or as a file.
fn read_release_root(arg: &str) -> CliResult<String> {
    let text = if arg.trim().starts_with("ed25519:") {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).map_err(|e| {
            CliError::usage(format!(
                "--release-root {arg}: not an `ed25519:…` key and not a readable file ({e})"
            ))
        })?
    };
    let key = drover_release::PublicKey::parse(text.trim())
        .map_err(|e| CliError::usage(format!("--release-root {arg}: {e}")))?;
    Ok(key.to_string())
}

pub async fn enroll_tokens(client: &Client, cmd: EnrollTokensCommand, json: bool) -> CliResult<()> {
    match cmd {
        EnrollTokensCommand::Create {
            name,
            tags,
            uses,
            expires,
            release_roots,
        } => {
            let roots = release_roots
                .iter()
                .map(|r| read_release_root(r))
                .collect::<CliResult<Vec<_>>>()?;
            let body = CreateEnrollToken {
                name: Some(name),
                tags: doc(tags),
                uses,
                expires_in_secs: expires,
            };
            let mut t: CreatedEnrollToken = client.post("/api/v1/enroll-tokens", &body).await?;
            if !roots.is_empty() {
                let mut token =
                    drover_proto::device::EnrollmentToken::decode(&t.token).map_err(|e| {
                        CliError::failed(format!("the server sent a damaged token: {e}"))
                    })?;
                token.release_roots = roots;
                t.token = token.encode();
            }
            if json {
                return output::json(&t);
            }
            println!(
                "Created enrollment token {} ({}{}).",
                t.info.id,
                t.info
                    .uses_left
                    .map(|n| format!("{n} uses"))
                    .unwrap_or_else(|| "unlimited uses".into()),
                t.info
                    .expires_at
                    .as_deref()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            println!(
                "On each device (shown only now):\n  drover-agent enroll --token {}",
                t.token
            );
            Ok(())
        }
        EnrollTokensCommand::List => {
            let list: EnrollTokenList = client.get("/api/v1/enroll-tokens").await?;
            if json {
                return output::json(&list);
            }
            let rows = list
                .tokens
                .iter()
                .map(|t: &EnrollTokenInfo| {
                    vec![
                        t.id.clone(),
                        t.name.clone(),
                        if t.revoked_at.is_some() {
                            "revoked".into()
                        } else {
                            "active".into()
                        },
                        t.uses_left
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "unlimited".into()),
                        or_dash(t.expires_at.as_deref()),
                        show_doc(&t.tags),
                    ]
                })
                .collect();
            output::table(
                &["id", "name", "state", "uses left", "expires", "tags"],
                rows,
            );
            Ok(())
        }
        EnrollTokensCommand::Revoke { id } => {
            let t: EnrollTokenInfo = client
                .delete(&format!("/api/v1/enroll-tokens/{}", seg(&id)))
                .await?;
            if json {
                return output::json(&t);
            }
            println!("Revoked enrollment token {}.", t.id);
            Ok(())
        }
    }
}

fn device_rows(devices: &[DeviceSummary]) -> Vec<Vec<String>> {
    devices
        .iter()
        .map(|d| {
            let status = if d.enrollment == "accepted" {
                d.connection.clone()
            } else {
                d.enrollment.clone()
            };
            vec![
                d.id.clone(),
                or_dash(d.hostname.as_deref()),
                status,
                if d.in_sync { "yes".into() } else { "no".into() },
                or_dash(d.agent_version.as_deref()),
                or_dash(d.last_seen.as_deref()),
                show_doc(&d.tags),
            ]
        })
        .collect()
}

const DEVICE_HEADER: &[&str] = &[
    "id",
    "hostname",
    "status",
    "in sync",
    "agent",
    "last seen",
    "tags",
];

fn print_detail(d: &DeviceDetail) {
    output::table(DEVICE_HEADER, device_rows(std::slice::from_ref(&d.summary)));
    println!();
    println!(
        "enrolled via: {}   certificate expires: {}",
        or_dash(d.enrolled_via.as_deref()),
        or_dash(d.certificate_expires_at.as_deref())
    );
    println!(
        "groups: {}",
        if d.desired.groups.is_empty() {
            "-".into()
        } else {
            d.desired.groups.join(", ")
        }
    );
    println!(
        "desired revision: {}   reported: {}",
        d.desired.revision,
        match &d.reported {
            Some(r) => format!(
                "{} ({}{})",
                r.revision,
                r.status,
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            None => "-".into(),
        }
    );
    if !d.drift.is_empty() {
        println!("\nDRIFT (desired vs reported)");
        output::table(
            &["key", "desired", "reported"],
            d.drift
                .iter()
                .map(|x| {
                    vec![
                        x.key.clone(),
                        or_dash(x.desired.as_deref()),
                        or_dash(x.reported.as_deref()),
                    ]
                })
                .collect(),
        );
    }
    if !d.inventory.is_empty() {
        println!("\nINVENTORY");
        output::table(
            &["key", "value"],
            d.inventory
                .iter()
                .map(|(k, v)| vec![k.clone(), v.clone()])
                .collect(),
        );
    }
}

pub async fn devices(client: &Client, cmd: DevicesCommand, json: bool) -> CliResult<()> {
    let detail_or_json = |d: DeviceDetail, what: &str| -> CliResult<()> {
        if json {
            return output::json(&d);
        }
        println!("{what} device {}.", d.summary.id);
        Ok(())
    };
    match cmd {
        DevicesCommand::List { query } => {
            let path = match &query {
                Some(q) => format!("/api/v1/devices?query={}", escape(q)),
                None => "/api/v1/devices".into(),
            };
            let list: DeviceList = client.get(&path).await?;
            if json {
                return output::json(&list);
            }
            output::table(DEVICE_HEADER, device_rows(&list.devices));
            Ok(())
        }
        DevicesCommand::Show { id } => {
            let d: DeviceDetail = client.get(&format!("/api/v1/devices/{}", seg(&id))).await?;
            if json {
                return output::json(&d);
            }
            print_detail(&d);
            Ok(())
        }
        DevicesCommand::Accept { id } => {
            let d = client
                .post(
                    &format!("/api/v1/devices/{}/accept", seg(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            detail_or_json(d, "Accepted")
        }
        DevicesCommand::Reject { id } => {
            let d = client
                .post(
                    &format!("/api/v1/devices/{}/reject", seg(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            detail_or_json(d, "Rejected")
        }
        DevicesCommand::Revoke { id } => {
            let d = client
                .post(
                    &format!("/api/v1/devices/{}/revoke", seg(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            detail_or_json(d, "Revoked")
        }
        DevicesCommand::Preauthorize { public_key, tags } => {
            let pem = std::fs::read_to_string(&public_key).map_err(|e| {
                CliError::usage(format!("cannot read {}: {e}", public_key.display()))
            })?;
            let k: PreauthorizedKey = client
                .post(
                    "/api/v1/devices/preauthorize",
                    &Preauthorize {
                        public_key_pem: pem,
                        tags: doc(tags),
                    },
                )
                .await?;
            if json {
                return output::json(&k);
            }
            println!(
                "Pre-authorized device {}: it is accepted when it first enrolls.",
                k.device_id
            );
            Ok(())
        }
        DevicesCommand::Tag { id, tags } => {
            let d = client
                .post(
                    &format!("/api/v1/devices/{}/tags", seg(&id)),
                    &TagChange {
                        set: doc(tags),
                        remove: vec![],
                    },
                )
                .await?;
            detail_or_json(d, "Tagged")
        }
        DevicesCommand::Untag { id, keys } => {
            let d = client
                .post(
                    &format!("/api/v1/devices/{}/tags", seg(&id)),
                    &TagChange {
                        set: Document::new(),
                        remove: keys,
                    },
                )
                .await?;
            detail_or_json(d, "Untagged")
        }
        DevicesCommand::SetDesired { id, pairs } => {
            let d = client
                .put(
                    &format!("/api/v1/devices/{}/desired", seg(&id)),
                    &SetDesired { config: doc(pairs) },
                )
                .await?;
            detail_or_json(d, "Set the desired configuration of")
        }
    }
}

fn group_rows(groups: &[GroupInfo]) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                or_dash(g.query.as_deref()),
                g.static_members.len().to_string(),
                g.members.len().to_string(),
                show_doc(&g.desired),
            ]
        })
        .collect()
}

const GROUP_HEADER: &[&str] = &["name", "query", "static", "members", "desired"];

pub async fn groups(client: &Client, cmd: GroupsCommand, json: bool) -> CliResult<()> {
    let one = |g: GroupInfo, json: bool| -> CliResult<()> {
        if json {
            return output::json(&g);
        }
        output::table(GROUP_HEADER, group_rows(std::slice::from_ref(&g)));
        if !g.members.is_empty() {
            println!("\nmembers: {}", g.members.join(" "));
        }
        Ok(())
    };
    match cmd {
        GroupsCommand::Create {
            name,
            query,
            devices,
        } => {
            if query.is_none() && devices.is_empty() {
                return Err(CliError::usage(
                    "give --query Q, --device ID (repeatable), or both",
                ));
            }
            let g: GroupInfo = client
                .post(
                    "/api/v1/groups",
                    &CreateGroup {
                        name,
                        query,
                        devices,
                    },
                )
                .await?;
            one(g, json)
        }
        GroupsCommand::List => {
            let list: GroupList = client.get("/api/v1/groups").await?;
            if json {
                return output::json(&list);
            }
            output::table(GROUP_HEADER, group_rows(&list.groups));
            Ok(())
        }
        GroupsCommand::Show { name } => one(
            client
                .get(&format!("/api/v1/groups/{}", seg(&name)))
                .await?,
            json,
        ),
        GroupsCommand::Delete { name } => {
            let g: GroupInfo = client
                .delete(&format!("/api/v1/groups/{}", seg(&name)))
                .await?;
            if json {
                return output::json(&g);
            }
            println!("Deleted group {}.", g.name);
            Ok(())
        }
        GroupsCommand::SetDesired { name, pairs } => {
            let g = client
                .put(
                    &format!("/api/v1/groups/{}/desired", seg(&name)),
                    &SetDesired { config: doc(pairs) },
                )
                .await?;
            one(g, json)
        }
    }
}
