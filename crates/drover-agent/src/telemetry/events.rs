//! Events: log lines that match configured patterns, and watched processes
//! that go away or come back with a new pid. Events are buffered with
//! priority high (dropped last).
//!
//! **Log patterns** follow a file like `tail -F`: lines written after the
//! agent started are matched (the file is not replayed at start), a
//! rotated file (new inode at the path) is read to its end before the new
//! one is read from its start, and a truncated file is read again from its
//! start (noticed when the file is shorter than what was read; a file
//! truncated and then written past that point between two polls is not
//! noticed, as with `tail -F`). A pattern is a glob over the whole line: `*` any run of
//! characters, `?` one character, everything else literal, so `*ERROR*`
//! matches any line containing `ERROR`. There is no regular-expression
//! engine, to keep the agent small. At most 256 KiB are read per file per
//! poll and a line is cut at 4 KiB; the event message is the line, cut at
//! 1024 bytes. Read positions are kept in memory only: lines written while
//! the agent is not running are not matched.
//!
//! **Watched processes** are looked up by name in `/proc` each poll
//! (`comm`, or the base name of `argv[0]` for names over 15 bytes). A name
//! that had processes and has none any more gives `process.gone`
//! (critical); one whose processes were all replaced by new pids between
//! two polls (a supervisor restarted it) gives `process.restarted`
//! (warning). A crash and a restart within one poll interval without a pid
//! change cannot be seen.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

const MAX_READ_PER_POLL: u64 = 256 * 1024;
const MAX_LINE: usize = 4096;

/// One `[[telemetry.log_patterns]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogPattern {
    /// The log file to follow.
    pub file: PathBuf,
    /// A glob over the whole line (`*`, `?`).
    pub pattern: String,
    /// The event name (a metric-style name, e.g. `app.error`).
    pub event: String,
    /// `info`, `warning` (default) or `critical`.
    #[serde(default = "warning")]
    pub severity: String,
}

fn warning() -> String {
    "warning".into()
}

impl LogPattern {
    pub fn validate(&self) -> Result<(), String> {
        if self.pattern.is_empty() {
            return Err(format!(
                "log pattern for {}: the pattern is empty (use \"*\" for every line)",
                self.file.display()
            ));
        }
        if !super::statsd::valid_name(&self.event) {
            return Err(format!(
                "log pattern for {}: event name {:?} must be 1-128 ASCII letters, digits or _ . - / :, starting with a letter or _",
                self.file.display(),
                self.event
            ));
        }
        if !matches!(self.severity.as_str(), "info" | "warning" | "critical") {
            return Err(format!(
                "log pattern for {}: severity must be info, warning or critical, not {:?}",
                self.file.display(),
                self.severity
            ));
        }
        Ok(())
    }
}

/// An event before it gets a time and a seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub severity: &'static str,
    pub message: String,
    pub labels: BTreeMap<String, String>,
}

fn severity(s: &str) -> &'static str {
    match s {
        "info" => "info",
        "critical" => "critical",
        _ => "warning",
    }
}

/// Whether `text` matches the glob `pat` (`*`, `?`), whole string.
pub fn glob(pat: &str, text: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A message from a log line: at most 1024 bytes, no control characters.
fn message(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > drover_proto::telemetry::MAX_EVENT_MESSAGE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

struct Open {
    file: std::fs::File,
    dev: u64,
    ino: u64,
    offset: u64,
}

/// Follows one file for one pattern.
pub struct LogTail {
    cfg: LogPattern,
    open: Option<Open>,
    started: bool,
    partial: Vec<u8>,
}

impl LogTail {
    pub fn new(cfg: LogPattern) -> LogTail {
        LogTail {
            cfg,
            open: None,
            started: false,
            partial: Vec::new(),
        }
    }

    /// Reads what was appended since the last poll; matching lines become
    /// events (at most `max_events`; the rest are counted in the result).
    pub fn poll(&mut self, max_events: usize, out: &mut Vec<Event>) -> u64 {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let meta = std::fs::metadata(&self.cfg.file).ok();
        let first = !self.started;
        self.started = true;
        let replaced = match (&self.open, &meta) {
            (Some(o), Some(m)) => o.dev != m.dev() || o.ino != m.ino(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if replaced {
            // Finish the old file (rotated away), then start the new one.
            if let Some(mut o) = self.open.take() {
                self.read_into(&mut o, &mut lines);
                if !self.partial.is_empty() {
                    lines.push(std::mem::take(&mut self.partial));
                }
            }
            if let Some(m) = &meta
                && let Ok(file) = std::fs::File::open(&self.cfg.file)
            {
                self.open = Some(Open {
                    file,
                    dev: m.dev(),
                    ino: m.ino(),
                    // Only lines written from now on at start; a file that
                    // appears later is read from its beginning.
                    offset: if first { m.len() } else { 0 },
                });
            }
        }
        if let Some(mut o) = self.open.take() {
            if let Some(m) = &meta
                && m.len() < o.offset
                && !replaced
            {
                // Truncated in place (copytruncate): from the start again.
                o.offset = 0;
                self.partial.clear();
            }
            self.read_into(&mut o, &mut lines);
            self.open = Some(o);
        }
        let mut suppressed = 0;
        for line in lines {
            let text = String::from_utf8_lossy(&line);
            if glob(&self.cfg.pattern, &text) {
                if out.len() < max_events {
                    let mut labels = BTreeMap::new();
                    labels.insert(
                        "file".to_string(),
                        self.cfg.file.to_string_lossy().chars().take(256).collect(),
                    );
                    out.push(Event {
                        name: self.cfg.event.clone(),
                        severity: severity(&self.cfg.severity),
                        message: message(&line),
                        labels,
                    });
                } else {
                    suppressed += 1;
                }
            }
        }
        suppressed
    }

    fn read_into(&mut self, o: &mut Open, lines: &mut Vec<Vec<u8>>) {
        if o.file.seek(SeekFrom::Start(o.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let n = (&mut o.file)
            .take(MAX_READ_PER_POLL)
            .read_to_end(&mut buf)
            .unwrap_or(0);
        o.offset += n as u64;
        for &b in &buf {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.partial));
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            }
        }
    }
}

/// Watches processes by name for disappearance and restarts.
pub struct ProcessWatch {
    proc_dir: PathBuf,
    names: Vec<String>,
    last: HashMap<String, Vec<u32>>,
    started: bool,
}

impl ProcessWatch {
    pub fn new(proc_dir: &Path, names: Vec<String>) -> ProcessWatch {
        ProcessWatch {
            proc_dir: proc_dir.to_path_buf(),
            names,
            last: HashMap::new(),
            started: false,
        }
    }

    pub fn poll(&mut self, out: &mut Vec<Event>) {
        if self.names.is_empty() {
            return;
        }
        let now = super::collect::processes(&self.proc_dir, &self.names);
        if self.started {
            for name in &self.names {
                let before = self.last.get(name).map(Vec::as_slice).unwrap_or(&[]);
                let after = now.get(name).map(Vec::as_slice).unwrap_or(&[]);
                let label = || {
                    let mut l = BTreeMap::new();
                    l.insert("process".to_string(), name.clone());
                    l
                };
                if !before.is_empty() && after.is_empty() {
                    out.push(Event {
                        name: "process.gone".into(),
                        severity: "critical",
                        message: format!("{name} (pid {}) is no longer running", join(before)),
                        labels: label(),
                    });
                } else if !before.is_empty()
                    && !after.is_empty()
                    && !after.iter().any(|p| before.contains(p))
                {
                    out.push(Event {
                        name: "process.restarted".into(),
                        severity: "warning",
                        message: format!(
                            "{name} was restarted: pid {} is gone, now pid {}",
                            join(before),
                            join(after)
                        ),
                        labels: label(),
                    });
                }
            }
        }
        self.started = true;
        self.last = now;
    }
}

fn join(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_lines() {
        assert!(glob("*ERROR*", "12:00 ERROR disk full"));
        assert!(!glob("*ERROR*", "12:00 error disk full"));
        assert!(glob("kernel: ?ops*", "kernel: Oops: 0000"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYbc"));
        assert!(!glob("a*b*c", "aXXbYYbd"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("*é*", "café"));
    }

    #[test]
    fn messages_are_cut_and_cleaned() {
        assert_eq!(message(b"a\tb\x1bc"), "a b c");
        let long = "é".repeat(1000);
        let m = message(long.as_bytes());
        assert!(m.len() <= 1024 && m.len() >= 1022);
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        let p = |pattern: &str, event: &str, severity: &str| LogPattern {
            file: "/var/log/x".into(),
            pattern: pattern.into(),
            event: event.into(),
            severity: severity.into(),
        };
        assert!(p("*E*", "app.error", "warning").validate().is_ok());
        assert!(
            p("", "app.error", "warning")
                .validate()
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            p("*", "app error", "info")
                .validate()
                .unwrap_err()
                .contains("event name")
        );
        assert!(
            p("*", "e", "fatal")
                .validate()
                .unwrap_err()
                .contains("severity")
        );
    }

    #[test]
    fn a_restart_and_a_disappearance_are_events() {
        let d = tempfile::tempdir().unwrap();
        let put = |pid: u32, comm: &str| {
            std::fs::create_dir_all(d.path().join(pid.to_string())).unwrap();
            std::fs::write(d.path().join(format!("{pid}/comm")), format!("{comm}\n")).unwrap();
        };
        put(10, "kiosk");
        let mut w = ProcessWatch::new(d.path(), vec!["kiosk".into()]);
        let mut ev = Vec::new();
        w.poll(&mut ev);
        assert!(ev.is_empty());
        std::fs::remove_dir_all(d.path().join("10")).unwrap();
        put(11, "kiosk");
        w.poll(&mut ev);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].name, "process.restarted");
        assert!(ev[0].message.contains("pid 10") && ev[0].message.contains("pid 11"));
        std::fs::remove_dir_all(d.path().join("11")).unwrap();
        w.poll(&mut ev);
        assert_eq!(ev[1].name, "process.gone");
        assert_eq!(ev[1].severity, "critical");
        assert_eq!(ev[1].labels["process"], "kiosk");
        w.poll(&mut ev);
        assert_eq!(ev.len(), 2, "gone is reported once");
    }
}
