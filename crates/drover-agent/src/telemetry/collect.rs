//! System metrics, read from `/proc`, `/sys` and `statvfs`: no subprocess,
//! a handful of small file reads per sample.
//!
//! | metric | unit | from |
//! |---|---|---|
//! | `cpu` | % of all cores busy since the last sample | `/proc/stat` |
//! | `cpu.iowait` | % of all cores waiting for I/O | `/proc/stat` |
//! | `load1` | 1-minute load average | `/proc/loadavg` |
//! | `mem.used_pct` | % of `MemTotal` not `MemAvailable` | `/proc/meminfo` |
//! | `mem.available_bytes` | bytes | `/proc/meminfo` |
//! | `disk.used_pct`, `disk.free_bytes` | per configured mount point (label `mount`), as `df` counts | `statvfs` |
//! | `net.rx_bytes_per_sec`, `net.tx_bytes_per_sec` | all interfaces but `lo`, since the last sample | `/proc/net/dev` |
//! | `temp` | °C, the hottest thermal zone (left out when the kernel exposes none) | `/sys/class/thermal/thermal_zone*/temp` |
//! | `uptime_secs` | seconds | `/proc/uptime` |
//! | `agent.rss_bytes`, `agent.cpu_pct` | the agent itself | `/proc/self/statm`, `/proc/self/stat` |
//!
//! Rates need two samples, so the first sample after start has none. A
//! file that cannot be read leaves its metrics out of that sample; this
//! module never fails and never panics on odd content.
//!
//! Service states (`service.active`, label `service`) are in
//! [`services`]; they use `systemctl is-active` when systemd runs and a
//! process-name check otherwise.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A metric value with its labels, before it gets a time and a seq.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: String,
    pub value: f64,
    pub labels: BTreeMap<String, String>,
}

impl Point {
    pub fn new(name: &str, value: f64) -> Point {
        Point {
            name: name.to_string(),
            value,
            labels: BTreeMap::new(),
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Point {
        self.labels.insert(k.to_string(), v.to_string());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    total: u64,
    idle: u64,
    iowait: u64,
}

/// Samples system metrics; keeps what rates need between samples.
pub struct Collector {
    proc_dir: PathBuf,
    mounts: Vec<PathBuf>,
    thermal: Vec<PathBuf>,
    prev_cpu: Option<CpuTimes>,
    prev_net: Option<(u64, u64, u64)>,
    prev_self: Option<(u64, u64)>,
    page_size: u64,
    ticks_per_sec: u64,
}

impl Collector {
    /// `proc_dir` and `sys_dir` are `/proc` and `/sys` outside tests.
    pub fn new(proc_dir: &Path, sys_dir: &Path, mounts: &[PathBuf]) -> Collector {
        let mut thermal: Vec<PathBuf> = std::fs::read_dir(sys_dir.join("class/thermal"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
                    .map(|e| e.path().join("temp"))
                    .filter(|p| p.exists())
                    .collect()
            })
            .unwrap_or_default();
        thermal.sort();
        let sysconf = |name| {
            let v = unsafe { libc::sysconf(name) };
            if v > 0 { v as u64 } else { 0 }
        };
        Collector {
            proc_dir: proc_dir.to_path_buf(),
            mounts: mounts.to_vec(),
            thermal,
            prev_cpu: None,
            prev_net: None,
            prev_self: None,
            page_size: sysconf(libc::_SC_PAGESIZE).max(1),
            ticks_per_sec: sysconf(libc::_SC_CLK_TCK).max(1),
        }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_dir.join(rel)).ok()
    }

    /// One sample; `mono_ms` is the monotonic time it is taken at.
    pub fn sample(&mut self, mono_ms: u64) -> Vec<Point> {
        let mut out = Vec::with_capacity(16);
        if let Some(cpu) = self.read("stat").as_deref().and_then(parse_cpu) {
            if let Some(prev) = self.prev_cpu {
                let dt = cpu.total.saturating_sub(prev.total);
                if dt > 0 && cpu.total >= prev.total {
                    let idle = cpu.idle.saturating_sub(prev.idle);
                    let io = cpu.iowait.saturating_sub(prev.iowait);
                    let busy = dt.saturating_sub(idle + io);
                    out.push(Point::new("cpu", pct(busy, dt)));
                    out.push(Point::new("cpu.iowait", pct(io, dt)));
                }
            }
            self.prev_cpu = Some(cpu);
        }
        if let Some(l) = self
            .read("loadavg")
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        {
            out.push(Point::new("load1", l));
        }
        if let Some((total, avail)) = self.read("meminfo").as_deref().and_then(parse_meminfo) {
            out.push(Point::new(
                "mem.used_pct",
                pct(total.saturating_sub(avail), total),
            ));
            out.push(Point::new("mem.available_bytes", avail as f64));
        }
        for m in &self.mounts {
            if let Some((used_pct, free)) = disk(m) {
                let label = m.to_string_lossy();
                out.push(Point::new("disk.used_pct", used_pct).label("mount", &label));
                out.push(Point::new("disk.free_bytes", free as f64).label("mount", &label));
            }
        }
        if let Some((rx, tx)) = self.read("net/dev").as_deref().map(parse_net_dev) {
            if let Some((prx, ptx, pt)) = self.prev_net {
                let secs = mono_ms.saturating_sub(pt) as f64 / 1000.0;
                // A counter that went back (interface gone, reset) gives no rate.
                if secs > 0.0 && rx >= prx && tx >= ptx {
                    out.push(Point::new(
                        "net.rx_bytes_per_sec",
                        ((rx - prx) as f64 / secs).round(),
                    ));
                    out.push(Point::new(
                        "net.tx_bytes_per_sec",
                        ((tx - ptx) as f64 / secs).round(),
                    ));
                }
            }
            self.prev_net = Some((rx, tx, mono_ms));
        }
        let hottest = self
            .thermal
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<i64>().ok())
            .max();
        if let Some(t) = hottest {
            out.push(Point::new("temp", t as f64 / 1000.0));
        }
        if let Some(u) = self
            .read("uptime")
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        {
            out.push(Point::new("uptime_secs", u.floor()));
        }
        if let Some(pages) = self
            .read("self/statm")
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            out.push(Point::new(
                "agent.rss_bytes",
                (pages * self.page_size) as f64,
            ));
        }
        if let Some(ticks) = self.read("self/stat").as_deref().and_then(parse_self_ticks) {
            if let Some((pt, pm)) = self.prev_self {
                let ms = mono_ms.saturating_sub(pm);
                if ms > 0 && ticks >= pt {
                    let cpu_ms = (ticks - pt) as f64 * 1000.0 / self.ticks_per_sec as f64;
                    out.push(Point::new(
                        "agent.cpu_pct",
                        round2(100.0 * cpu_ms / ms as f64),
                    ));
                }
            }
            self.prev_self = Some((ticks, mono_ms));
        }
        out
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    round2(100.0 * part as f64 / whole as f64)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = v.iter().take(8).sum();
    Some(CpuTimes {
        total,
        idle: v[3],
        iowait: v.get(4).copied().unwrap_or(0),
    })
}

fn parse_meminfo(s: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut avail = None;
    for line in s.lines() {
        let mut it = line.split_whitespace();
        match it.next() {
            Some("MemTotal:") => total = it.next()?.parse::<u64>().ok(),
            Some("MemAvailable:") => avail = it.next()?.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some((total? * 1024, avail? * 1024))
}

/// Received and sent bytes over every interface but `lo`.
fn parse_net_dev(s: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in s.lines().skip(2) {
        let Some((iface, rest)) = line.split_once(':') else {
            continue;
        };
        if iface.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx = rx.wrapping_add(f[0]);
            tx = tx.wrapping_add(f[8]);
        }
    }
    (rx, tx)
}

/// utime + stime of `/proc/self/stat`, in clock ticks.
fn parse_self_ticks(s: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (% used as `df` shows it, bytes available to unprivileged users).
fn disk(mount: &Path) -> Option<(f64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mount.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64);
    let avail = st.f_bavail as u64;
    Some((pct(used, used + avail), avail * frsize))
}

/// Running processes by name: `comm`, and the base name of `argv[0]`
/// when a wanted name is longer than `comm` keeps (15 bytes). Only names
/// in `wanted` are returned.
pub fn processes(proc_dir: &Path, wanted: &[String]) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let Ok(rd) = std::fs::read_dir(proc_dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        let comm = comm.trim_end_matches('\n');
        for w in wanted {
            let hit = if w == comm {
                true
            } else if w.len() > 15 && !comm.is_empty() && w.starts_with(comm) {
                std::fs::read(e.path().join("cmdline"))
                    .ok()
                    .and_then(|c| {
                        let argv0 = c.split(|b| *b == 0).next()?.to_vec();
                        let s = String::from_utf8(argv0).ok()?;
                        Some(s.rsplit('/').next() == Some(w.as_str()))
                    })
                    .unwrap_or(false)
            } else {
                false
            };
            if hit {
                out.entry(w.clone()).or_default().push(pid);
            }
        }
    }
    for pids in out.values_mut() {
        pids.sort_unstable();
    }
    out
}

/// How service states are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceCheck {
    /// `systemctl is-active NAME…` (systemd runs: `/run/systemd/system` exists).
    Systemd,
    /// A running process whose name is the service name.
    ProcessName,
}

impl ServiceCheck {
    pub fn detect() -> ServiceCheck {
        if Path::new("/run/systemd/system").is_dir() {
            ServiceCheck::Systemd
        } else {
            ServiceCheck::ProcessName
        }
    }
}

/// Whether each service in `names` is active, in order.
pub async fn services(check: ServiceCheck, proc_dir: &Path, names: &[String]) -> Vec<bool> {
    if names.is_empty() {
        return Vec::new();
    }
    match check {
        ServiceCheck::Systemd => {
            // One subprocess for all services: one line per unit, in order.
            let out = tokio::process::Command::new("systemctl")
                .arg("is-active")
                .arg("--")
                .args(names)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            match tokio::time::timeout(std::time::Duration::from_secs(10), out).await {
                Ok(Ok(o)) => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    let lines: Vec<&str> = text.lines().collect();
                    (0..names.len())
                        .map(|i| lines.get(i).is_some_and(|l| l.trim() == "active"))
                        .collect()
                }
                _ => {
                    tracing::warn!(
                        "`systemctl is-active` failed or timed out; services reported inactive"
                    );
                    vec![false; names.len()]
                }
            }
        }
        ServiceCheck::ProcessName => {
            let running = processes(proc_dir, names);
            names.iter().map(|n| running.contains_key(n)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(dir: &Path, cpu: &str, rx: u64) {
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::create_dir_all(dir.join("self")).unwrap();
        std::fs::write(dir.join("stat"), format!("{cpu}\ncpu0 1 2 3 4\n")).unwrap();
        std::fs::write(dir.join("loadavg"), "0.42 0.30 0.10 1/100 1234\n").unwrap();
        std::fs::write(
            dir.join("meminfo"),
            "MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  250 kB\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("net/dev"),
            format!("h1\nh2\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: {rx} 5 0 0 0 0 0 0 {} 5 0 0 0 0 0 0\n", rx / 2),
        )
        .unwrap();
        std::fs::write(dir.join("uptime"), "123.45 100.0\n").unwrap();
        std::fs::write(dir.join("self/statm"), "100 25 10 1 0 20 0\n").unwrap();
        std::fs::write(
            dir.join("self/stat"),
            "42 (a (b) c) S 1 42 42 0 -1 0 0 0 0 0 70 30 0 0 20 0 1 0 0 0 0\n",
        )
        .unwrap();
    }

    #[test]
    fn rates_come_from_deltas_between_two_samples() {
        let d = tempfile::tempdir().unwrap();
        let proc_dir = d.path().join("proc");
        let sys = d.path().join("sys");
        let zone = sys.join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "48500\n").unwrap();
        fake_proc(&proc_dir, "cpu  100 0 100 700 100 0 0 0 0 0", 1000);
        let mut c = Collector::new(&proc_dir, &sys, &[PathBuf::from("/")]);
        let first = c.sample(10_000);
        let names: Vec<&str> = first.iter().map(|p| p.name.as_str()).collect();
        assert!(!names.contains(&"cpu"), "no rate from one sample");
        assert!(names.contains(&"disk.used_pct"));
        // 1000 more jiffies: 300 busy, 100 iowait, 600 idle; 5000 bytes in 5 s.
        fake_proc(&proc_dir, "cpu  250 0 250 1300 200 0 0 0 0 0", 6000);
        let second = c.sample(15_000);
        let get = |n: &str| second.iter().find(|p| p.name == n).map(|p| p.value);
        assert_eq!(get("cpu"), Some(30.0));
        assert_eq!(get("cpu.iowait"), Some(10.0));
        assert_eq!(get("load1"), Some(0.42));
        assert_eq!(get("mem.used_pct"), Some(75.0));
        assert_eq!(get("mem.available_bytes"), Some(256_000.0));
        assert_eq!(get("net.rx_bytes_per_sec"), Some(1000.0), "lo left out");
        assert_eq!(get("net.tx_bytes_per_sec"), Some(500.0));
        assert_eq!(get("temp"), Some(48.5));
        assert_eq!(get("uptime_secs"), Some(123.0));
        assert!(get("agent.rss_bytes").unwrap() > 0.0);
        assert_eq!(get("agent.cpu_pct"), Some(0.0), "no new ticks");
        assert_eq!(
            second
                .iter()
                .find(|p| p.name == "disk.free_bytes")
                .unwrap()
                .labels["mount"],
            "/"
        );
    }

    #[test]
    fn odd_or_missing_files_leave_metrics_out_instead_of_failing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("stat"), "garbage").unwrap();
        std::fs::write(d.path().join("meminfo"), "MemTotal: x kB").unwrap();
        let mut c = Collector::new(d.path(), d.path(), &[PathBuf::from("/no/such/mount")]);
        assert!(c.sample(1).is_empty());
        assert!(c.sample(2).is_empty());
        assert_eq!(parse_self_ticks("1 (x) S"), None);
    }

    #[tokio::test]
    async fn a_service_without_systemd_is_a_running_process_of_that_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until it has exec'd, the child still carries the test's name.
        let comm = format!("/proc/{}/comm", child.id());
        for _ in 0..500 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let names = vec!["sleep".to_string(), "no-such-daemon-xyz".to_string()];
        let up = services(ServiceCheck::ProcessName, Path::new("/proc"), &names).await;
        assert_eq!(up, [true, false]);
        let table = processes(Path::new("/proc"), &names);
        assert!(table["sleep"].contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
