//! `drover tokens create|list|show|revoke`.

use drover_proto::api::{CreateToken, CreatedToken, TokenInfo, TokenList};

use crate::cli::TokensCommand;
use crate::client::Client;
use crate::error::{CliError, CliResult};
use crate::output::{self, or_dash};

/// Token ids are hex; refusing anything else keeps paths well-formed.
fn check_id(id: &str) -> CliResult<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CliError::usage(format!(
            "{id:?} is not a token id: `drover tokens list` shows them"
        )));
    }
    Ok(())
}

fn rows(tokens: &[TokenInfo]) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            };
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.to_string(),
                state.into(),
                t.created_at.clone(),
                or_dash(t.expires_at.as_deref()),
                or_dash(t.last_used_at.as_deref()),
            ]
        })
        .collect()
}

const HEADER: &[&str] = &[
    "id",
    "name",
    "role",
    "state",
    "created",
    "expires",
    "last used",
];

pub async fn run(client: &Client, cmd: TokensCommand, json: bool) -> CliResult<()> {
    match cmd {
        TokensCommand::Create {
            role,
            name,
            expires,
        } => {
            let created: CreatedToken = client
                .post(
                    "/api/v1/tokens",
                    &CreateToken {
                        name,
                        role,
                        expires_in_secs: expires,
                    },
                )
                .await?;
            if json {
                return output::json(&created);
            }
            println!(
                "Created {} token {} ({:?}){}.",
                created.info.role,
                created.info.id,
                created.info.name,
                created
                    .info
                    .expires_at
                    .as_deref()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            println!(
                "Token (shown only now; store it safely):\n  {}",
                created.token
            );
            Ok(())
        }
        TokensCommand::List => {
            let list: TokenList = client.get("/api/v1/tokens").await?;
            if json {
                return output::json(&list);
            }
            output::table(HEADER, rows(&list.tokens));
            Ok(())
        }
        TokensCommand::Show { id } => {
            check_id(&id)?;
            let t: TokenInfo = client.get(&format!("/api/v1/tokens/{id}")).await?;
            if json {
                return output::json(&t);
            }
            output::table(HEADER, rows(std::slice::from_ref(&t)));
            Ok(())
        }
        TokensCommand::Revoke { id } => {
            check_id(&id)?;
            let t: TokenInfo = client.delete(&format!("/api/v1/tokens/{id}")).await?;
            if json {
                return output::json(&t);
            }
            println!("Revoked token {} ({:?}).", t.id, t.name);
            Ok(())
        }
    }
}
