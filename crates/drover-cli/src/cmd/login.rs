//! `drover login`, `drover logout`, `drover whoami`.

use drover_proto::api::WhoAmI;

use super::{profile_path, read_ca};
use crate::cli::GlobalArgs;
use crate::client::Client;
use crate::error::{CliError, CliResult};
use crate::output;
use crate::profile::{self, Profile};

/// Checks the server and token with `/api/v1/whoami`, then stores them.
pub async fn login(g: &GlobalArgs) -> CliResult<()> {
    let (Some(server), Some(token)) = (&g.server, &g.token) else {
        return Err(CliError::usage(
            "login needs --server URL and --token TOKEN (and --ca-cert DATA/ca.crt for a server using the fleet CA)",
        ));
    };
    let ca_cert_pem = g.ca_cert.as_deref().map(read_ca).transpose()?;
    let client = Client::new(server, token, ca_cert_pem.as_deref())?;
    let me: WhoAmI = client.get("/api/v1/whoami").await?;
    let path = profile_path(g)?;
    profile::save(
        &path,
        &Profile {
            server: server.clone(),
            token: token.clone(),
            ca_cert_pem,
        },
    )?;
    if g.json {
        output::json(&serde_json::json!({ "profile": path, "server": server, "whoami": me }))
    } else {
        println!(
            "Logged in to {server} as {} ({} role); profile saved to {}",
            me.name,
            me.role,
            path.display()
        );
        Ok(())
    }
}

pub fn logout(g: &GlobalArgs) -> CliResult<()> {
    let path = profile_path(g)?;
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(CliError::failed(format!(
                "cannot remove {}: {e}",
                path.display()
            )));
        }
    };
    if g.json {
        output::json(&serde_json::json!({ "profile": path, "removed": removed }))
    } else {
        if removed {
            println!("Logged out: removed {}", path.display());
        } else {
            println!("Not logged in: {} does not exist", path.display());
        }
        Ok(())
    }
}

pub async fn whoami(client: &Client, json: bool) -> CliResult<()> {
    let me: WhoAmI = client.get("/api/v1/whoami").await?;
    if json {
        return output::json(&me);
    }
    output::table(
        &["token", "name", "role", "server version"],
        vec![vec![
            me.token_id,
            me.name,
            me.role.to_string(),
            me.server_version,
        ]],
    );
    Ok(())
}
