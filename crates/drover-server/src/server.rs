//! Starting and stopping `drover server`: data directory, lock, database,
//! fleet CA, bootstrap admin token, TLS and the listener.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use drover_proto::api::{AuditOutcome, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{AppState, router};
use crate::auth::mint_token;
use crate::clock::now_ms;
use crate::config::ServerConfig;
use crate::devices::Devices;
use crate::fsutil::{ensure_dir, write_atomic};
use crate::pki::{FleetCa, PkiError, server_cert_is_current};
use crate::store::sql::redact_url;
use crate::store::{Backend, NewAudit, SqlStore, Store, StoreError, TokenRecord};

pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const LOCK_FILE: &str = "server.lock";

/// Why the server did not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is in use by another drover server{pid}; stop it first or choose another --data directory"
    )]
    DataDirInUse { path: PathBuf, pid: String },
    #[error(
        "cannot open the database {url}: {source}. Check that the database is running and that --database / DROVER_DATABASE is right"
    )]
    Database { url: String, source: StoreError },
    #[error("fleet CA: {0}")]
    Pki(#[from] PkiError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("invalid --public-url {url:?}: {reason}")]
    PublicUrl { url: String, reason: String },
    #[error(
        "cannot listen on {addr}: {source}. Is another server using this port? Pick another with --listen"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server. Dropping it stops accepting at once and releases the
/// data directory; call [`shutdown`](Self::shutdown) to drain and close cleanly.
pub struct RunningServer {
    pub local_addr: SocketAddr,
    /// The URL operators and devices use.
    pub public_url: String,
    pub data_dir: PathBuf,
    pub backend: Backend,
    /// SHA-256 fingerprint of the fleet CA certificate.
    pub ca_fingerprint: String,
    /// The bootstrap admin token, only on the start that created it.
    pub admin_token: Option<String>,
    /// The device side, for tests and embedding (registry, settings).
    pub devices: Arc<Devices>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    store: SqlStore,
    _lock: File,
}

impl RunningServer {
    /// Stops accepting, lets open requests finish (bounded), closes the
    /// database and releases the data directory lock.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        // Control channels outlive their HTTP connection (upgraded), so
        // close them explicitly; agents reconnect with jitter.
        // Presence of every connected device in one batch first; the
        // closing connections then skip their own (one-by-one) writes.
        self.devices
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.devices.flush_presence().await;
        self.devices
            .registry
            .close_all("server_shutdown", "the server is shutting down");
        for _ in 0..100 {
            if self.devices.registry.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.store.close().await;
        tracing::info!("server stopped");
    }
}

/// Takes the data directory's lock so that two servers never share it.
fn lock_data_dir(dir: &std::path::Path) -> Result<File, StartError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StartError::DataDir {
        path: dir.into(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StartError::DataDirInUse {
                path: dir.into(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

/// Creates a bootstrap admin token when no usable admin token exists: on the
/// first start, and as the recovery path when every admin token expired
/// (whoever can restart the server with its data directory is its admin).
/// The file is written before the database row so that a crash in between
/// never leaves an admin token nobody can read.
async fn bootstrap_admin(
    store: &SqlStore,
    cfg: &ServerConfig,
) -> Result<Option<String>, StartError> {
    let db = |source| StartError::Database {
        url: redact_url(&cfg.database_url()),
        source,
    };
    if store.count_usable_admins(now_ms()).await.map_err(db)? > 0 {
        return Ok(None);
    }
    let minted = mint_token();
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    write_atomic(&path, format!("{}\n", minted.bearer).as_bytes(), 0o600).map_err(|source| {
        StartError::DataDir {
            path: path.clone(),
            source,
        }
    })?;
    let now = now_ms();
    let record = TokenRecord {
        id: minted.id.clone(),
        name: "bootstrap-admin".into(),
        role: Role::Admin,
        secret_hash: minted.secret_hash,
        created_at: now,
        created_by: None,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    let audit = NewAudit {
        at: now,
        actor: "server".into(),
        actor_name: "drover server".into(),
        action: "tokens.bootstrap".into(),
        target: Some(minted.id),
        method: "-".into(),
        path: "-".into(),
        status: 201,
        outcome: AuditOutcome::Success,
        detail: serde_json::json!({ "file": path.display().to_string() }),
    };
    store
        .create_token(&record, Some(&audit))
        .await
        .map_err(db)?;
    Ok(Some(minted.bearer))
}

fn server_tls(
    cfg: &ServerConfig,
    ca: &FleetCa,
    hosts: &[String],
) -> Result<rustls::ServerConfig, StartError> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let (cert, key) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (read(c)?, read(k)?),
        (None, None) => {
            let cert_path = cfg.data_dir.join("server.crt");
            let key_path = cfg.data_dir.join("server.key");
            let existing = std::fs::read_to_string(&cert_path)
                .ok()
                .zip(std::fs::read_to_string(&key_path).ok());
            match existing {
                Some((c, k)) if server_cert_is_current(&c, ca, hosts) => (c, k),
                _ => {
                    let (c, k) = ca.issue_server_cert(hosts)?;
                    let io = |path: &PathBuf| {
                        let path = path.clone();
                        move |source| StartError::DataDir { path, source }
                    };
                    write_atomic(&key_path, k.as_bytes(), 0o600).map_err(io(&key_path))?;
                    write_atomic(&cert_path, c.as_bytes(), 0o644).map_err(io(&cert_path))?;
                    tracing::info!(hosts = ?hosts, "issued a new server certificate from the fleet CA");
                    (c, k)
                }
            }
        }
        _ => {
            return Err(StartError::Tls(
                "give both --tls-cert and --tls-key, or neither".into(),
            ));
        }
    };
    crate::http::tls_config(&cert, &key, ca.cert_der()).map_err(StartError::Tls)
}

/// Gives memory freed after a burst (a reconnect storm's handshakes) back
/// to the system. glibc keeps freed heap pages otherwise, so the process
/// would stay at its peak even when it holds only idle connections.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Writes device presence to the database every flush interval.
async fn flush_presence(devices: Arc<Devices>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(devices.settings.presence_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                devices.flush_presence().await;
                ticks += 1;
                if ticks.is_multiple_of(3) {
                    release_free_memory();
                }
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Starts a server as configured and returns once it is listening.
pub async fn start(cfg: ServerConfig) -> Result<RunningServer, StartError> {
    ensure_dir(&cfg.data_dir, 0o700).map_err(|source| StartError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let lock = lock_data_dir(&cfg.data_dir)?;
    // Bind first so `--listen 127.0.0.1:0` yields the real port for the URL.
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.listen,
        source,
    })?;

    let scheme = if cfg.insecure_http { "http" } else { "https" };
    let public_url = cfg.public_url.clone().unwrap_or_else(|| {
        let host = if local_addr.ip().is_unspecified() {
            "localhost".to_string()
        } else {
            local_addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        format!("{scheme}://{host}:{}", local_addr.port())
    });
    let (url_scheme, public_host, _) =
        drover_proto::url::split(&public_url).map_err(|reason| StartError::PublicUrl {
            url: public_url.clone(),
            reason,
        })?;
    if url_scheme != scheme {
        return Err(StartError::PublicUrl {
            url: public_url,
            reason: format!(
                "the server speaks {scheme} (see --insecure-http), the URL says {url_scheme}"
            ),
        });
    }

    let url = cfg.database_url();
    let store = SqlStore::connect(&url)
        .await
        .map_err(|source| StartError::Database {
            url: redact_url(&url),
            source,
        })?;
    let (ca, ca_created) = FleetCa::load_or_create(&cfg.data_dir)?;
    if ca_created {
        tracing::info!(fingerprint = %ca.fingerprint(), "created the fleet CA");
    }
    let admin_token = bootstrap_admin(&store, &cfg).await?;

    let tls = if cfg.insecure_http {
        tracing::warn!("serving plain HTTP (--insecure-http): tokens cross the network in clear");
        None
    } else {
        let mut hosts = vec![public_host];
        let mut extras = vec!["localhost".to_string()];
        if !local_addr.ip().is_unspecified() {
            extras.push(local_addr.ip().to_string());
        }
        for extra in extras {
            if !hosts.contains(&extra) {
                hosts.push(extra);
            }
        }
        Some(Arc::new(server_tls(&cfg, &ca, &hosts)?))
    };

    let ca = Arc::new(ca);
    let devices = Arc::new(Devices::new(
        Arc::new(store.clone()),
        ca.clone(),
        cfg.devices.clone(),
    ));
    let artifacts_dir = cfg.data_dir.join("artifacts");
    let artifacts = crate::artifacts::Artifacts::local(&artifacts_dir).map_err(|source| {
        StartError::DataDir {
            path: artifacts_dir.clone(),
            source,
        }
    })?;
    let state = AppState::new(devices.clone(), public_url.clone(), artifacts);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(flush_presence(devices.clone(), rx.clone()));
    // Alerts: evaluator, webhook queue, fleet gauges (docs/monitoring.md).
    let alerting = Arc::new(crate::alerts::Alerting::new(
        devices.clone(),
        crate::alerts::AlertSettings::from_env(),
    ));
    tokio::spawn(crate::alerts::run_evaluator(alerting.clone(), rx.clone()));
    tokio::spawn(crate::alerts::webhook::run_deliveries(
        alerting.clone(),
        rx.clone(),
    ));
    tokio::spawn(crate::telemetry::fleet::run(
        devices.clone(),
        alerting.settings.fleet_gauges_interval,
        rx.clone(),
    ));
    let app = router(state);
    let task = tokio::spawn(crate::http::serve(listener, tls, app, rx));
    tracing::info!(%local_addr, %public_url, backend = store.backend().as_str(), "drover server listening");

    Ok(RunningServer {
        local_addr,
        public_url,
        data_dir: cfg.data_dir.clone(),
        backend: store.backend(),
        ca_fingerprint: ca.fingerprint(),
        devices,
        admin_token,
        shutdown: tx,
        task,
        store,
        _lock: lock,
    })
}
