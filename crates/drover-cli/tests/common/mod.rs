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
    pub fn port(&self) -> u16 {
        self.info["listen"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
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
    cmd.args(["server", "--json", "--data"]).arg(data);
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
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

/// The `drover-agent` binary next to `drover` (another package, so Cargo
/// gives tests no path for it); built on first use if it is missing.
pub fn agent_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = Path::new(DROVER).with_file_name("drover-agent");
        // Cargo builds `drover` for these tests but not the other package's
        // binary: build it (a no-op when fresh) so tests never run a stale
        // agent. DROVER_TEST_AGENT_PREBUILT=1 skips this when the caller
        // built everything (scripts/test.sh).
        if !bin.exists() || std::env::var_os("DROVER_TEST_AGENT_PREBUILT").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "drover-agent", "--bin", "drover-agent"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building drover-agent failed");
        }
        bin
    })
    .clone()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A device: its data directory and, while running, its agent process.
pub struct AgentProc {
    pub data: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl AgentProc {
    /// A device with its own data dir and a config file holding `extra_toml`.
    pub fn new(dir: &Path, name: &str, extra_toml: &str) -> AgentProc {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nreconnect_min_ms = 100\nreconnect_max_secs = 1\n{extra_toml}",
                data
            ),
        )
        .unwrap();
        AgentProc {
            data,
            config,
            child: None,
            log: dir.join(format!("{name}.log")),
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("DROVER_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run drover-agent")
    }

    pub fn enroll_with(&self, token: &str) -> Output {
        self.cmd(&["enroll", "--token", token])
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("DROVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn drover-agent run");
        self.child = Some(child);
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the agent to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("agent running");
        let status = wait_for("agent exit", limit, || child.try_wait().unwrap());
        self.child = None;
        status.code()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn device_id(&self) -> String {
        let out = self.cmd(&["key"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("device id: ")
            .to_string()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates an enrollment token through the CLI; returns the token text.
pub fn enroll_token(cli: &Cli, args: &[&str]) -> String {
    let mut all = vec!["enroll-tokens", "create"];
    all.extend_from_slice(args);
    cli.json(&all)["token"].as_str().unwrap().to_string()
}

/// `drover devices show ID --json`.
pub fn device(cli: &Cli, id: &str) -> Value {
    cli.json(&["devices", "show", id])
}
