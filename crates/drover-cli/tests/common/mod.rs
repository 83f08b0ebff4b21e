//! Runs real `drover` processes for the tests: a server on a free loopback
//! port, and CLI commands against it with their own profile file.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DROVER: &str = env!("CARGO_BIN_EXE_drover");

/// A `drover server` child process.
pub struct ServerProc {
    pub child: Child,
    pub info: Value,
    pub data: PathBuf,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl ServerProc {
    pub fn url(&self) -> String {
        self.info["url"].as_str().unwrap().to_string()
    }
    pub fn ca(&self) -> PathBuf {
        self.data.join("ca.crt")
    }
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
    /// Waits for the process to exit (bounded) and returns its status.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(20))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `drover server --json` with `args` and waits for its startup
/// document. Panics with the server's stderr if it exits instead.
pub fn start_server(data: &Path, database: Option<&str>, args: &[&str]) -> ServerProc {
    match try_start_server(data, database, args) {
        Ok(s) => s,
        Err((code, err)) => panic!("server failed to start ({code:?}): {err}"),
    }
}

/// Like [`start_server`], but returns (exit code, stderr) when it fails.
pub fn try_start_server(
    data: &Path,
    database: Option<&str>,
    args: &[&str],
) -> Result<ServerProc, (Option<i32>, String)> {
    let mut cmd = Command::new(DROVER);
    cmd.args(["server", "--json", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"]);
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    cmd.args(args)
        .env_remove("DROVER_DATABASE")
        .env("DROVER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn drover server");
    // Collect stderr in the background so the pipe never fills.
    let (tx, stderr) = std::sync::mpsc::channel();
    let mut err_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = err_pipe.read_to_string(&mut buf);
        let _ = tx.send(buf);
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut doc = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            let code = child.wait().ok().and_then(|s| s.code());
            let err = stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            return Err((code, err));
        }
        doc.push_str(&line);
        if line == "}\n" {
            break;
        }
    }
    let info: Value = serde_json::from_str(&doc).expect("startup document is JSON");
    Ok(ServerProc {
        child,
        info,
        data: data.to_path_buf(),
        stderr,
    })
}

/// A CLI user with its own profile file.
pub struct Cli {
    pub profile: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        Cli {
            profile: dir.path().join("config.toml"),
            _dir: dir,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(DROVER)
            .args(args)
            .env("DROVER_CONFIG", &self.profile)
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_CA_CERT")
            .stdin(Stdio::null())
            .output()
            .expect("run drover")
    }

    /// Runs with `--json`, asserts success and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "drover {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "drover {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn login(&self, server: &ServerProc, token: &str) {
        let ca = server.ca();
        let out = self.run(&[
            "login",
            "--server",
            &server.url(),
            "--token",
            token,
            "--ca-cert",
            ca.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "login failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stderr and exit code of a failed command.
pub fn failure(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The `--database` for `backend`: `None` (the default SQLite file in the
/// data directory) or a fresh PostgreSQL database.
pub fn database_for(backend: drover_testkit::Backend) -> Option<String> {
    match backend {
        drover_testkit::Backend::Sqlite => None,
        drover_testkit::Backend::Postgres => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drover_testkit::postgres_url()),
        ),
    }
}
