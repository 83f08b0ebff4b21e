//! Helpers shared by Drover's test suites. Never linked into a shipped binary.
//!
//! - [`postgres_url`] gives each test its own fresh PostgreSQL database, so
//!   tests run in parallel without seeing each other's rows.
//! - [`TcpProxy`] sits between a program and a service and can cut every
//!   connection, to test a database or server that disappears mid-run.
//! - [`Backend`] lists the store backends every store test must cover.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The PostgreSQL server the tests use: `DROVER_TEST_POSTGRES_URL`, or the
/// local default of this machine kind. `scripts/test.sh` makes sure it runs.
pub fn postgres_admin_url() -> String {
    std::env::var("DROVER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates a new, empty database and returns its URL. Panics with a clear
/// message when PostgreSQL is not reachable: a backend test must never be
/// skipped silently.
pub async fn postgres_url() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin}: {e}. Run the suite with scripts/test.sh, \
             which starts it, or set DROVER_TEST_POSTGRES_URL"
            )
        });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!(
        "drover_t_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// The store backends every store-facing test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// A fresh database URL for this backend; SQLite lives in `dir`.
    pub async fn fresh_url(self, dir: &std::path::Path) -> String {
        match self {
            Backend::Sqlite => format!("sqlite:{}", dir.join("drover.db").display()),
            Backend::Postgres => postgres_url().await,
        }
    }
}

/// A TCP proxy to `target` that can refuse and cut connections on demand.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cut_rx) = watch::channel(0u64);
        let up2 = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                // Only cuts after this connection was accepted end it.
                cut_rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        TcpProxy { addr, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
