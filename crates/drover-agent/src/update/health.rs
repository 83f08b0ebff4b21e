//! Health checks after activation: the release's own (`health` in the
//! manifest) plus the device's (`[update].health_checks`). All must pass
//! before the deadline; they are retried every second until then. A check
//! that never passed is named in the failure, which the engine reports as
//! `health_check_failed` before rolling back.
//!
//! - `reconnect`: the agent is connected to the server (at some moment
//!   after activation: the check only runs after it).
//! - `command`: argv exits 0 (no shell), killed when the deadline or 30 s
//!   per run is hit.
//! - `process`: a process with that name (`/proc/*/comm`) runs.
//! - `http`: a plain `http://` URL answers with a 2xx (or the given) status.
//!
//! Checks only observe; they never change the device.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_release::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Longest single run of a command check.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One line naming a check, for messages.
pub fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Reconnect {} => "reconnect".into(),
        HealthCheck::Command { argv } => format!("command {argv:?}"),
        HealthCheck::Process { name } => format!("process {name:?}"),
        HealthCheck::Http { url, status } => match status {
            Some(s) => format!("http {url} (status {s})"),
            None => format!("http {url}"),
        },
    }
}

/// Runs one check once; `Err` says why it did not pass.
pub async fn check_once(
    check: &HealthCheck,
    connected: &watch::Receiver<bool>,
    proc_dir: &Path,
    time_left: Duration,
) -> Result<(), String> {
    match check {
        HealthCheck::Reconnect {} => {
            if *connected.borrow() {
                Ok(())
            } else {
                Err("the agent is not connected to the server".into())
            }
        }
        HealthCheck::Command { argv } => run_command(argv, time_left.min(COMMAND_TIMEOUT)).await,
        HealthCheck::Process { name } => {
            if process_running(proc_dir, name) {
                Ok(())
            } else {
                Err(format!("no process named {name:?} is running"))
            }
        }
        HealthCheck::Http { url, status } => {
            http_check(url, *status, time_left.min(Duration::from_secs(10))).await
        }
    }
}

/// Retries `checks` until all pass (Ok) or `deadline` passes (Err with the
/// checks that still fail). At least one round runs.
pub async fn run_until(
    checks: &[HealthCheck],
    deadline: Instant,
    connected: &watch::Receiver<bool>,
    proc_dir: &Path,
) -> Result<(), String> {
    loop {
        let mut failing = Vec::new();
        for c in checks {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) =
                check_once(c, connected, proc_dir, left.max(Duration::from_secs(1))).await
            {
                failing.push(format!("{}: {e}", describe(c)));
            }
        }
        if failing.is_empty() {
            return Ok(());
        }
        if Instant::now() + RETRY_EVERY > deadline {
            return Err(failing.join("; "));
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut child = tokio::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {prog:?}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("did not finish within {timeout:?} (killed)"))
        }
        Ok(Err(e)) => Err(format!("failed: {e}")),
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(format!("exited with {st}")),
    }
}

/// Whether a process whose `comm` is `name` runs. The kernel keeps the
/// first 15 bytes of a program name in `comm`, so longer names compare on
/// those.
pub fn process_running(proc_dir: &Path, name: &str) -> bool {
    let want = &name.as_bytes()[..name.len().min(15)];
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            && std::fs::read(e.path().join("comm"))
                .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == want)
    })
}

/// Splits `http://host[:port]/path` into (host, port, path).
fn split_http(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').ok_or("bad IPv6 address")?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port in {url:?}"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    Ok((host, port, path.to_string()))
}

async fn http_check(url: &str, want: Option<u16>, timeout: Duration) -> Result<(), String> {
    let (host, port, path) = split_http(url)?;
    let status = tokio::time::timeout(timeout, async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: drover-agent-health\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        // Only the status line matters.
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s
                .read(&mut chunk)
                .await
                .map_err(|e| format!("cannot read the answer: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "the answer is not HTTP".to_string())?;
        Ok::<u16, String>(code)
    })
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))??;
    let ok = match want {
        Some(w) => status == w,
        None => (200..300).contains(&status),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_split() {
        assert_eq!(
            split_http("http://127.0.0.1:8080/health").unwrap(),
            ("127.0.0.1".into(), 8080, "/health".into())
        );
        assert_eq!(
            split_http("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            split_http("http://[::1]:9/x").unwrap(),
            ("::1".into(), 9, "/x".into())
        );
        assert!(split_http("https://a").is_err());
    }

    #[tokio::test]
    async fn checks_pass_and_fail_for_real() {
        let (_tx, connected) = watch::channel(false);
        let proc_dir = Path::new("/proc");
        let t = Duration::from_secs(5);
        let ok = HealthCheck::Command {
            argv: vec!["true".into()],
        };
        let bad = HealthCheck::Command {
            argv: vec!["false".into()],
        };
        assert!(check_once(&ok, &connected, proc_dir, t).await.is_ok());
        assert!(
            check_once(&bad, &connected, proc_dir, t)
                .await
                .unwrap_err()
                .contains("exited")
        );
        let slow = HealthCheck::Command {
            argv: vec!["sleep".into(), "30".into()],
        };
        assert!(
            check_once(&slow, &connected, proc_dir, Duration::from_millis(200))
                .await
                .unwrap_err()
                .contains("killed")
        );
        // This test binary's own name is in /proc.
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        let me = me.trim();
        assert!(
            check_once(
                &HealthCheck::Process { name: me.into() },
                &connected,
                proc_dir,
                t
            )
            .await
            .is_ok()
        );
        assert!(
            check_once(
                &HealthCheck::Process {
                    name: "no-such-process-x".into()
                },
                &connected,
                proc_dir,
                t
            )
            .await
            .is_err()
        );
        assert!(
            check_once(&HealthCheck::Reconnect {}, &connected, proc_dir, t)
                .await
                .is_err()
        );
        // A real local HTTP endpoint answering 204 then 500.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for (i, s) in listener.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let code = if i == 0 { "204 No Content" } else { "500 Oops" };
                let _ = write!(s, "HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let url = format!("http://{addr}/health");
        let http = HealthCheck::Http {
            url: url.clone(),
            status: None,
        };
        assert!(check_once(&http, &connected, proc_dir, t).await.is_ok());
        assert!(
            check_once(&http, &connected, proc_dir, t)
                .await
                .unwrap_err()
                .contains("500")
        );
        // run_until names the failing check when the deadline passes.
        let err = run_until(
            &[ok, bad],
            Instant::now() + Duration::from_millis(1500),
            &connected,
            proc_dir,
        )
        .await
        .unwrap_err();
        assert!(err.contains("command [\"false\"]"), "{err}");
    }
}
