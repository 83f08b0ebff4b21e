//! Carrying out destructive actions: kill a process, stop a service, run a
//! command, block traffic with nftables. Each returns an [`Outcome`] that
//! becomes a `rules.action` event, so nothing fails silently: an action
//! that cannot run here (no systemd, no `nft`) says `unsupported` and why.
//!
//! This module never decides *whether* to act (policy and protection are
//! checked by the caller) except for one last guard: it never signals the
//! agent, its parent or pid 1.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drover_rules::{Direction, Protocol};
use tokio::io::AsyncWriteExt;

/// How an action went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `ok`, `failed`, `unsupported` or `denied`.
    pub result: &'static str,
    pub message: String,
}

impl Outcome {
    pub fn ok(message: impl Into<String>) -> Outcome {
        Outcome {
            result: "ok",
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Outcome {
        Outcome {
            result: "failed",
            message: message.into(),
        }
    }
    pub fn unsupported(message: impl Into<String>) -> Outcome {
        Outcome {
            result: "unsupported",
            message: message.into(),
        }
    }
    pub fn denied(message: impl Into<String>) -> Outcome {
        Outcome {
            result: "denied",
            message: message.into(),
        }
    }
}

/// Pids never signalled: this process, its parent, pid 1.
pub fn untouchable(pid: u32) -> bool {
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    pid <= 1 || pid == std::process::id() || pid == parent
}

/// SIGTERM, then SIGKILL if the same process (pid and start time) still
/// runs after `grace`. A zombie counts as gone: it no longer runs.
pub async fn kill(proc_dir: &Path, pid: u32, start: u64, comm: &str, grace: Duration) -> Outcome {
    if untouchable(pid) {
        return Outcome::denied(format!(
            "refused to signal pid {pid} ({comm}): it is the agent, its parent or pid 1"
        ));
    }
    let same = |proc_dir: &Path| {
        super::observe::stat(proc_dir, pid)
            .is_some_and(|(st, s)| s == start && st != 'Z' && st != 'X')
    };
    if !same(proc_dir) {
        return Outcome::ok(format!("pid {pid} ({comm}) was already gone"));
    }
    if let Err(e) = signal(pid, libc::SIGTERM) {
        return Outcome::failed(format!("cannot send SIGTERM to pid {pid} ({comm}): {e}"));
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !same(proc_dir) {
            return Outcome::ok(format!("pid {pid} ({comm}) ended after SIGTERM"));
        }
    }
    if !same(proc_dir) {
        return Outcome::ok(format!("pid {pid} ({comm}) ended after SIGTERM"));
    }
    if let Err(e) = signal(pid, libc::SIGKILL) {
        return Outcome::failed(format!("cannot send SIGKILL to pid {pid} ({comm}): {e}"));
    }
    Outcome::ok(format!(
        "pid {pid} ({comm}) killed with SIGKILL after {} s of SIGTERM",
        grace.as_secs()
    ))
}

fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) with a positive pid signals that one process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `argv` (no shell) with stdin from `input`, killed after `timeout`.
/// `Err` only when it could not be started at all.
async fn run(
    argv: &[String],
    input: Option<&str>,
    timeout: Duration,
) -> Result<(Option<i32>, String), std::io::Error> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes()).await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let text = if out.stderr.is_empty() {
                out.stdout
            } else {
                out.stderr
            };
            let text = String::from_utf8_lossy(&text);
            let tail: String = text
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Ok((out.status.code(), tail.trim().to_string()))
        }
        Ok(Err(e)) => Err(e),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => Ok((
            None,
            format!("timed out after {} s and was killed", timeout.as_secs()),
        )),
    }
}

/// `run_command`: exit 0 is ok, anything else failed.
pub async fn run_command(argv: &[String], timeout: Duration) -> Outcome {
    match run(argv, None, timeout).await {
        Ok((Some(0), _)) => Outcome::ok(format!("{} exited 0", argv[0])),
        Ok((Some(code), tail)) => Outcome::failed(format!("{} exited {code}: {tail}", argv[0])),
        Ok((None, tail)) => Outcome::failed(format!("{}: {tail}", argv[0])),
        Err(e) => Outcome::failed(format!("cannot start {}: {e}", argv[0])),
    }
}

/// Whether systemd manages this system (as `systemctl` itself checks).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `stop_service`: `systemctl stop` where systemd runs; unsupported elsewhere.
pub async fn stop_service(service: &str) -> Outcome {
    if !systemd_running() {
        return Outcome::unsupported(format!(
            "cannot stop {service}: systemd does not run on this device (no /run/systemd/system); stop_service needs systemctl"
        ));
    }
    let argv = ["systemctl", "stop", "--", service].map(String::from);
    match run(&argv, None, Duration::from_secs(90)).await {
        Ok((Some(0), _)) => Outcome::ok(format!("stopped {service}")),
        Ok((_, tail)) => Outcome::failed(format!("systemctl stop {service} failed: {tail}")),
        Err(e) => Outcome::unsupported(format!("cannot run systemctl: {e}")),
    }
}

/// The nftables table every block goes into.
pub const NFT_TABLE: &str = "drover";

/// The nft script that adds a block (creating the table and chains if needed).
pub fn nft_script(
    rule: &str,
    address: Option<&str>,
    port: Option<u16>,
    protocol: Option<Protocol>,
    direction: Direction,
) -> String {
    let mut s = format!(
        "table inet {NFT_TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n  chain output {{ type filter hook output priority 0; policy accept; }}\n}}\n"
    );
    let family = |a: &str| {
        if a.contains(':') { "ip6" } else { "ip" }
    };
    let proto = protocol.unwrap_or(Protocol::Tcp).as_str();
    let comment = format!("drover rule {rule}");
    let mut add = |chain: &str, addr_field: &str, port_field: &str| {
        let mut m = String::new();
        if let Some(a) = address {
            m.push_str(&format!("{} {addr_field} {a} ", family(a)));
        }
        if let Some(p) = port {
            m.push_str(&format!("{proto} {port_field} {p} "));
        }
        s.push_str(&format!(
            "add rule inet {NFT_TABLE} {chain} {m}drop comment \"{comment}\"\n"
        ));
    };
    if matches!(direction, Direction::In | Direction::Both) {
        // Traffic from the address, to the local port.
        add("input", "saddr", "dport");
    }
    if matches!(direction, Direction::Out | Direction::Both) {
        // Traffic to the address and remote port.
        add("output", "daddr", "dport");
    }
    s
}

/// `block`: applies [`nft_script`] with `nft -f -`. Unsupported where `nft`
/// is missing or refuses (no nf_tables in the kernel, no privilege).
pub async fn block(script: &str) -> Outcome {
    let argv = ["nft", "-f", "-"].map(String::from);
    match run(&argv, Some(script), Duration::from_secs(30)).await {
        Ok((Some(0), _)) => Outcome::ok("nftables rule added to table inet drover".to_string()),
        Ok((_, tail)) => Outcome::unsupported(format!(
            "nft refused the block (nftables missing in the kernel, or the agent lacks CAP_NET_ADMIN?): {tail}"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::unsupported(
            "nft is not installed on this device (Debian: nftables); traffic is NOT blocked",
        ),
        Err(e) => Outcome::unsupported(format!("cannot run nft: {e}; traffic is NOT blocked")),
    }
}

/// Removes every block (the table), when a new rule set replaces the one
/// that added them. Quietly does nothing where there is no table or no nft.
pub async fn clear_blocks() {
    let argv = ["nft", "delete", "table", "inet", NFT_TABLE].map(String::from);
    if let Ok((Some(code), tail)) = run(&argv, None, Duration::from_secs(30)).await
        && code != 0
        && !tail.contains("No such file")
    {
        tracing::warn!(%tail, "cannot remove the nftables table inet drover");
    }
}
