//! `drover server` settings. The CLI fills them from flags and `DROVER_*`
//! environment variables; tests build them directly.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Holds the SQLite database, the fleet CA, certificates and the admin token.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `sqlite:PATH` or `postgres://…`; `None` means `sqlite:DATA/drover.db`.
    pub database_url: Option<String>,
    /// The URL devices and operators use; `None` derives it from `listen`.
    pub public_url: Option<String>,
    /// Bring-your-own TLS certificate chain and key (PEM), instead of one
    /// issued by the fleet CA.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP. Only for local experiments (devices cannot use it:
    /// their identity is their TLS client certificate).
    pub insecure_http: bool,
    /// Timings and limits of device connections.
    pub devices: crate::devices::DeviceSettings,
}

impl ServerConfig {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8443";

    /// Defaults for a data directory: loopback, SQLite, fleet-CA TLS.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default"),
            database_url: None,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            devices: Default::default(),
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("drover.db").display()))
    }
}
