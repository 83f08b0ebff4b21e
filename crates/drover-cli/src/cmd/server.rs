//! `drover server`: runs the control plane until SIGTERM or SIGINT.

use std::time::Duration;

use drover_server::devices::DeviceSettings;
use drover_server::{ServerConfig, StartError};

use crate::cli::{LogFormat, ServerArgs};
use crate::error::{CliError, CliResult};
use crate::output;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

pub async fn run(args: ServerArgs, json: bool) -> CliResult<()> {
    init_logging(args.log_format);
    let cfg = ServerConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        database_url: args.database,
        public_url: args.public_url,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        insecure_http: args.insecure_http,
        devices: DeviceSettings {
            heartbeat_interval: Duration::from_secs(args.heartbeat_interval_secs),
            offline_after: Duration::from_secs(
                args.offline_after_secs
                    .unwrap_or(args.heartbeat_interval_secs * 3),
            ),
            cert_validity: Duration::from_secs(args.device_cert_validity_secs),
            connects_per_ip_per_sec: args.connects_per_ip_per_sec,
            ..Default::default()
        },
    };
    let server = drover_server::start(cfg).await.map_err(|e| match e {
        // Mistakes in the flags themselves are usage errors.
        StartError::PublicUrl { .. } | StartError::Tls(_) => CliError::usage(e.to_string()),
        other => CliError::failed(other.to_string()),
    })?;
    let data = server.data_dir.display().to_string();
    let ca = server.data_dir.join("ca.crt").display().to_string();
    if json {
        output::json(&serde_json::json!({
            "url": server.public_url,
            "listen": server.local_addr,
            "backend": server.backend.as_str(),
            "data_dir": data,
            "ca_cert": ca,
            "ca_fingerprint": server.ca_fingerprint,
            "admin_token": server.admin_token,
        }))?;
    } else {
        println!(
            "Drover server listening on {} ({}, data in {data})",
            server.public_url,
            server.backend.as_str()
        );
        println!("Fleet CA: {ca} (sha256 {})", server.ca_fingerprint);
        if let Some(token) = &server.admin_token {
            println!(
                "Admin token (shown once; also saved to {data}/admin.token, mode 0600):\n  {token}"
            );
        }
        println!(
            "Log in with:\n  drover login --server {} --token \"$(cat {data}/admin.token)\" --ca-cert {ca}",
            server.public_url
        );
    }
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}
