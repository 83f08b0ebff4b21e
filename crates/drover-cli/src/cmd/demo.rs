//! `drover demo`: the README's first command. Starts a server on the
//! embedded default (SQLite, local files), enrolls a simulated fleet with a
//! few tags and groups, prints how to explore it, and runs until Ctrl-C.

use std::time::Duration;

use drover_proto::api::{CreateEnrollToken, CreateGroup, CreatedEnrollToken, SetDesired};
use drover_proto::device::EnrollmentToken;
use drover_server::ServerConfig;
use drover_server::devices::DeviceSettings;

use crate::cli::{DemoArgs, SimArgs};
use crate::client::Client;
use crate::error::{CliError, CliResult};

pub async fn run(args: DemoArgs, json: bool) -> CliResult<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let existed = args.data_dir.join("drover.db").exists();
    let mut cfg = ServerConfig::new(&args.data_dir);
    cfg.listen = args.listen;
    cfg.devices = DeviceSettings {
        heartbeat_interval: Duration::from_secs(10),
        offline_after: Duration::from_secs(30),
        ..Default::default()
    };
    let server = drover_server::start(cfg)
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let admin = match &server.admin_token {
        Some(t) => t.clone(),
        None => std::fs::read_to_string(server.data_dir.join("admin.token"))
            .map(|t| t.trim().to_string())
            .map_err(|e| CliError::failed(format!("cannot read the admin token: {e}")))?,
    };
    let ca_path = server.data_dir.join("ca.crt");
    let ca_pem = std::fs::read_to_string(&ca_path)?;
    let client = Client::new(&server.public_url, &admin, Some(&ca_pem))?;

    // Groups: by region (dynamic), and everything online.
    for (name, query, ntp) in [
        ("eu", "tag.region = eu", Some("eu.pool.ntp.org")),
        ("us", "tag.region = us", Some("us.pool.ntp.org")),
        ("online", "status = online", None),
    ] {
        let created: Result<serde_json::Value, _> = client
            .post(
                "/api/v1/groups",
                &CreateGroup {
                    name: name.into(),
                    query: Some(query.into()),
                    devices: vec![],
                },
            )
            .await;
        if created.is_ok()
            && let Some(ntp) = ntp
        {
            let _: serde_json::Value = client
                .put(
                    &format!("/api/v1/groups/{name}/desired"),
                    &SetDesired {
                        config: [("ntp".to_string(), ntp.to_string())].into(),
                    },
                )
                .await?;
        }
    }
    // A release root key for the demo fleet, so updates can be tried. In a
    // real fleet it is made offline (`drover release keygen --root`) and
    // never stored next to the server.
    let root_path = server.data_dir.join("demo-release-root.key");
    let root = match std::fs::read_to_string(&root_path) {
        Ok(text) => drover_release::KeyPair::from_file_text(&text).map_err(CliError::failed)?,
        Err(_) => {
            let k = drover_release::KeyPair::generate(drover_release::keys::KeyRole::Root)
                .map_err(CliError::failed)?;
            drover_server::fsutil::write_atomic(&root_path, k.to_file_text().as_bytes(), 0o600)
                .map_err(|e| CliError::failed(format!("{}: {e}", root_path.display())))?;
            k
        }
    };
    // Half the fleet in each region, kiosks and routers mixed.
    let mut fleets = Vec::new();
    for (region, count) in [("eu", args.devices.div_ceil(2)), ("us", args.devices / 2)] {
        if count == 0 {
            continue;
        }
        let created: CreatedEnrollToken = client
            .post(
                "/api/v1/enroll-tokens",
                &CreateEnrollToken {
                    name: Some(format!("demo-{region}")),
                    tags: [
                        ("region".to_string(), region.to_string()),
                        ("fleet".to_string(), "demo".to_string()),
                    ]
                    .into(),
                    uses: Some(count),
                    expires_in_secs: Some(3600),
                },
            )
            .await?;
        let token = EnrollmentToken::decode(&created.token).map_err(CliError::failed)?;
        let sim = SimArgs {
            enroll_token: None,
            devices: count,
            tags: vec![],
            churn_per_min: 0.0,
            duration_secs: None,
            concurrency: 16,
            spread_addresses: true,
            reconnect_max_secs: 10,
            // Each simulated device runs the real update engine.
            updates_dir: Some(server.data_dir.join("demo-devices")),
            device_type: "demo-box".into(),
            release_roots: vec![root.public().to_string()],
        };
        fleets.push(super::sim::start_fleet(&token, &sim, !json).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = &server.public_url;
    let data = server.data_dir.display();
    if json {
        crate::output::json(&serde_json::json!({
            "url": url, "admin_token": admin, "ca_cert": ca_path, "devices": args.devices, "data_dir": data.to_string(),
            "release_root_key": root_path, "device_type": "demo-box",
        }))?;
    } else {
        println!(
            "Drover demo running at {url} with {} simulated devices (data in {data}).",
            args.devices
        );
        if existed {
            println!(
                "(This data directory was used before: devices of earlier demo runs show as offline.)"
            );
        }
        println!("\nAdmin token: {admin}\n\nIn another terminal:");
        println!(
            "  drover login --server {url} --token \"$(cat {data}/admin.token)\" --ca-cert {data}/ca.crt"
        );
        println!("  drover devices list");
        println!("  drover devices list --query 'tag.region = eu and status = online'");
        println!("  drover groups list");
        println!("  drover groups set-desired eu ntp=time.example.eu log_level=debug");
        println!("  drover devices show <ID>");
        println!("\nTry an update (the demo devices trust {data}/demo-release-root.key):");
        println!("  echo 'hello v1' > app.txt");
        println!(
            "  drover release build --name demo-app --version 1.0.0 --device-type demo-box --payload app:app.txt --key {data}/demo-release-root.key -o demo-app.drover"
        );
        println!("  drover release publish demo-app.drover");
        println!("  drover deploy demo-app@1.0.0 --group eu --wait 60");
        println!("\nAPI description: {url}/api/v1/openapi.json   metrics: {url}/metrics");
        println!("Press Ctrl-C to stop.");
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| CliError::failed(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for f in fleets {
        f.stop().await;
    }
    server.shutdown().await;
    Ok(())
}
