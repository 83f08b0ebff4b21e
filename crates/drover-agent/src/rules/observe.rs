//! What the rules look at, read from `/proc` and the filesystem: running
//! processes (name, executable, its SHA-256), listening ports, file
//! states. Everything takes the `/proc` folder as a parameter so tests can
//! point it elsewhere; nothing here changes the system.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use drover_rules::Protocol;

/// One running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// `/proc/PID/comm` without the newline.
    pub comm: String,
    /// `/proc/PID/exe`, when readable (other users' processes need root).
    pub exe: Option<String>,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// with the pid, it names one process even when pids are reused.
    pub start: u64,
}

/// `(state, start time)` from `/proc/PID/stat`.
pub fn stat(proc_dir: &Path, pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")).ok()?;
    // The name (field 2) may hold spaces and parentheses: fields after
    // the last ')' are fixed.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is `state`; field 22 is `starttime`, the 20th after it.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Every process (zombies left out: they run nothing).
pub fn processes(proc_dir: &Path) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((state, start)) = stat(proc_dir, pid) else {
            continue;
        };
        if state == 'Z' || state == 'X' {
            continue;
        }
        let base = entry.path();
        let Ok(comm) = std::fs::read_to_string(base.join("comm")) else {
            continue;
        };
        let exe = std::fs::read_link(base.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        out.push(Proc {
            pid,
            comm: comm.trim_end_matches('\n').to_string(),
            exe,
            start,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Streams a file through SHA-256; `None` if it is unreadable or larger
/// than `max_bytes`.
pub fn sha256_file(path: &Path, max_bytes: u64) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() > max_bytes {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Some(
        ctx.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Executable hashes, remembered by (path, size, mtime) so each binary is
/// read once, not once per process per evaluation.
#[derive(Debug, Default)]
pub struct HashCache {
    known: HashMap<(String, u64, i128), Option<String>>,
}

impl HashCache {
    /// The SHA-256 of process `pid`'s executable. Read through
    /// `/proc/PID/exe`, so a binary deleted or replaced on disk after the
    /// process started is still the one that runs.
    pub fn exe_sha256(&mut self, proc_dir: &Path, p: &Proc, max_bytes: u64) -> Option<String> {
        let link = proc_dir.join(p.pid.to_string()).join("exe");
        let meta = std::fs::metadata(&link).ok()?;
        let key = (
            p.exe.clone().unwrap_or_default(),
            meta.len(),
            mtime_ns(&meta),
        );
        if let Some(h) = self.known.get(&key) {
            return h.clone();
        }
        if self.known.len() > 4096 {
            self.known.clear();
        }
        let h = sha256_file(&link, max_bytes);
        self.known.insert(key, h.clone());
        h
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Local ports something listens on: TCP sockets in LISTEN, bound UDP
/// sockets, over IPv4 and IPv6.
pub fn listening(proc_dir: &Path) -> HashSet<(Protocol, u16)> {
    let mut out = HashSet::new();
    for (file, proto, state) in [
        ("tcp", Protocol::Tcp, "0A"),
        ("tcp6", Protocol::Tcp, "0A"),
        ("udp", Protocol::Udp, "07"),
        ("udp6", Protocol::Udp, "07"),
    ] {
        let Ok(text) = std::fs::read_to_string(proc_dir.join("net").join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(st)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if st != state {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
            {
                out.insert((proto, port));
            }
        }
    }
    out
}

/// What a file looks like now, for `file_changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub exists: bool,
    pub mtime_ns: i128,
    pub size: u64,
    /// Only when asked for; `None` also when unreadable or too large.
    pub sha256: Option<String>,
}

pub fn file_state(path: &Path, with_hash: bool, max_bytes: u64) -> FileState {
    match std::fs::metadata(path) {
        Ok(meta) => FileState {
            exists: true,
            mtime_ns: mtime_ns(&meta),
            size: meta.len(),
            sha256: if with_hash && meta.is_file() {
                sha256_file(path, max_bytes)
            } else {
                None
            },
        },
        Err(_) => FileState {
            exists: false,
            mtime_ns: 0,
            size: 0,
            sha256: None,
        },
    }
}

/// `/proc/self/exe` and friends, for the processes rules must never kill.
pub fn protected(proc_dir: &Path, max_bytes: u64, with_hash: bool) -> Vec<drover_rules::Protected> {
    let me = std::process::id();
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    let mut out = Vec::new();
    for (role, pid) in [
        ("the agent itself", me),
        ("the agent's supervisor (its parent process)", parent),
        ("pid 1 (init)", 1),
    ] {
        if pid == 0 || out.iter().any(|p: &drover_rules::Protected| p.pid == pid) {
            continue;
        }
        let base: PathBuf = proc_dir.join(pid.to_string());
        let comm = std::fs::read_to_string(base.join("comm"))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_default();
        let exe = std::fs::read_link(base.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let sha256 = if with_hash {
            sha256_file(&base.join("exe"), max_bytes)
        } else {
            None
        };
        out.push(drover_rules::Protected {
            role: role.into(),
            pid,
            comm,
            exe,
            sha256,
        });
    }
    out
}
