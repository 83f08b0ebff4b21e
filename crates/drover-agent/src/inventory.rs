//! Device inventory: the facts a device reports about itself.
//!
//! The agent calls [`collect`] on a blocking thread every
//! `inventory.interval_secs` and reports the result as one flat map of dotted
//! keys (`os.id`, `net.eth0.mac`, `software.openssl`, `custom.site`). The map
//! is flat so that server-side queries (`inventory.arch = "aarch64"`) and
//! deltas ([`diff`] and [`apply`]) stay simple. `docs/inventory.md` lists the
//! keys and documents the configuration and the drop-in script protocol.
//!
//! The sources are small files under `/proc`, `/sys` and `/etc` (read through
//! [`SystemPaths`] so tests can point them at a fixture tree), the dpkg
//! status database, configured commands and files, and the operator's
//! executable scripts in `scripts_dir`.
//!
//! This module must never:
//!
//! - **block forever.** Every child process runs under a timeout and is
//!   killed (SIGKILL) when the timeout expires. A pipe that a background
//!   process still holds open is abandoned after a short grace period.
//! - **fail the whole report because one source failed.** Every source is
//!   best-effort. A source that does not exist omits its keys. A source that
//!   exists but is broken adds a short reason under `custom_errors.*` or
//!   `software_errors.*`, next to everything that did work.
//! - **read more than its limits.** The limits are the constants below: 64 KiB
//!   of stdout and 100 keys per script, 64-byte keys, 1024-byte values, 64 KiB
//!   per system file, 64 MiB of dpkg status.
//! - **trust what it reads.** File contents, script output and interface names
//!   are checked or sanitized before they become keys or values.
//!
//! It uses only std and serde: no async runtime and no libc bindings.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A device's inventory: dotted keys to values, sorted by key.
pub type Inventory = BTreeMap<String, String>;

/// Keys that change on every collection. [`diff`] ignores them, so a delta
/// is only sent when something else changed; the agent sends them with full
/// reports only.
pub const VOLATILE_KEYS: &[&str] = &["uptime_secs"];

/// Default for [`InventoryConfig::interval_secs`].
pub const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// Smallest `interval_secs` that [`InventoryConfig::validate`] accepts.
pub const MIN_INTERVAL_SECS: u64 = 60;
/// Default for [`InventoryConfig::scripts_dir`].
pub const DEFAULT_SCRIPTS_DIR: &str = "/etc/drover/inventory.d";
/// Default for [`InventoryConfig::script_timeout_secs`].
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 10;
/// Largest `script_timeout_secs` that [`InventoryConfig::validate`] accepts;
/// [`collect`] clamps larger values to it.
pub const MAX_SCRIPT_TIMEOUT_SECS: u64 = 600;
/// At most this much of a script's stdout is read; the pipe is then closed.
pub const SCRIPT_STDOUT_MAX_BYTES: usize = 64 * 1024;
/// At most this many distinct keys are taken from one script.
pub const SCRIPT_MAX_KEYS: usize = 100;
/// Longest key a script may print (without the `custom.` prefix), and
/// longest software name.
pub const KEY_MAX_BYTES: usize = 64;
/// Longest value a script, command or file may provide.
pub const VALUE_MAX_BYTES: usize = 1024;

const DPKG_STATUS_PATH: &str = "/var/lib/dpkg/status";
const SYSTEM_FILE_MAX_BYTES: u64 = 64 * 1024;
const DPKG_STATUS_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// A `command` source needs one line; more than this is not read.
const COMMAND_STDOUT_MAX_BYTES: usize = 4 * 1024;
/// A `file` source needs one line; more than this is not read.
const FILE_SOURCE_MAX_BYTES: usize = 4 * 1024;
/// Kept from a child's stderr to explain a failure; the rest is drained.
const STDERR_KEEP_BYTES: usize = 4 * 1024;
const MAX_INTERFACES: usize = 256;
const REASON_MAX_BYTES: usize = 256;
const STDERR_LINE_MAX_BYTES: usize = 160;
/// How long to wait for a child's pipes to close after it has exited or
/// been killed. A background process the child started can hold them open
/// indefinitely; after this the output so far is used.
const PIPE_GRACE: Duration = Duration::from_millis(500);
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(50);

/// The `[inventory]` table of the agent configuration. Every field is
/// optional; see `docs/inventory.md`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// How often the agent collects inventory, in seconds.
    pub interval_secs: u64,
    /// Folder of executable inventory scripts, run in name order.
    pub scripts_dir: PathBuf,
    /// Timeout for each script and each `command` software source, in
    /// seconds.
    pub script_timeout_secs: u64,
    /// Where `software.<name>` versions come from. For each name the first
    /// source that yields a version wins.
    pub software: Vec<SoftwareSource>,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            interval_secs: DEFAULT_INTERVAL_SECS,
            scripts_dir: PathBuf::from(DEFAULT_SCRIPTS_DIR),
            script_timeout_secs: DEFAULT_SCRIPT_TIMEOUT_SECS,
            software: Vec::new(),
        }
    }
}

/// One source of `software.<name>` = version entries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SoftwareSource {
    /// Versions of installed Debian packages, read from the dpkg status
    /// database (`/var/lib/dpkg/status` unless `status_file` is set). A
    /// package that is not installed is omitted.
    Dpkg {
        packages: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_file: Option<PathBuf>,
    },
    /// Runs `argv` (no shell) under the script timeout. The version is the
    /// first non-empty line of stdout, or with `extract_version` the first
    /// whitespace-separated token that starts with a digit (or `v` and a
    /// digit). A program that does not exist is omitted.
    Command {
        name: String,
        argv: Vec<String>,
        #[serde(default)]
        extract_version: bool,
    },
    /// The version is the first non-empty line of the file. A file that does
    /// not exist is omitted.
    File { name: String, path: PathBuf },
}

/// Why an [`InventoryConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InventoryConfigError {
    IntervalTooShort {
        interval_secs: u64,
    },
    ScriptTimeoutOutOfRange {
        script_timeout_secs: u64,
    },
    RelativePath {
        field: String,
        path: PathBuf,
    },
    /// `index` is the position in `inventory.software`.
    InvalidSoftwareName {
        index: usize,
        name: String,
    },
    EmptyArgv {
        index: usize,
        name: String,
    },
}

impl fmt::Display for InventoryConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IntervalTooShort { interval_secs } => write!(
                f,
                "inventory.interval_secs = {interval_secs} is too short; use at least {MIN_INTERVAL_SECS}"
            ),
            Self::ScriptTimeoutOutOfRange {
                script_timeout_secs,
            } => write!(
                f,
                "inventory.script_timeout_secs = {script_timeout_secs} is out of range; use 1 to {MAX_SCRIPT_TIMEOUT_SECS}"
            ),
            Self::RelativePath { field, path } => write!(
                f,
                "inventory.{field} = {:?} is relative; use an absolute path",
                path.display().to_string()
            ),
            Self::InvalidSoftwareName { index, name } => write!(
                f,
                "inventory.software[{index}]: {name:?} is not a valid software name; use 1 to {KEY_MAX_BYTES} characters from A-Z a-z 0-9 _ . + - without leading, trailing or doubled dots"
            ),
            Self::EmptyArgv { index, name } => write!(
                f,
                "inventory.software[{index}] ({name:?}): argv is empty; give the program and its arguments"
            ),
        }
    }
}

impl std::error::Error for InventoryConfigError {}

impl InventoryConfig {
    /// Checks what [`collect`] would otherwise have to work around: call it
    /// when loading the agent configuration so mistakes are reported at
    /// start-up instead of as error keys in the inventory.
    pub fn validate(&self) -> Result<(), InventoryConfigError> {
        if self.interval_secs < MIN_INTERVAL_SECS {
            return Err(InventoryConfigError::IntervalTooShort {
                interval_secs: self.interval_secs,
            });
        }
        if !(1..=MAX_SCRIPT_TIMEOUT_SECS).contains(&self.script_timeout_secs) {
            return Err(InventoryConfigError::ScriptTimeoutOutOfRange {
                script_timeout_secs: self.script_timeout_secs,
            });
        }
        require_absolute("scripts_dir", &self.scripts_dir)?;
        for (index, source) in self.software.iter().enumerate() {
            let invalid = |name: &str| InventoryConfigError::InvalidSoftwareName {
                index,
                name: name.to_owned(),
            };
            match source {
                SoftwareSource::Dpkg {
                    packages,
                    status_file,
                } => {
                    if let Some(bad) = packages.iter().find(|p| !is_valid_software_name(p)) {
                        return Err(invalid(bad));
                    }
                    if let Some(path) = status_file {
                        require_absolute(&format!("software[{index}].status_file"), path)?;
                    }
                }
                SoftwareSource::Command { name, argv, .. } => {
                    if !is_valid_software_name(name) {
                        return Err(invalid(name));
                    }
                    if argv.is_empty() {
                        return Err(InventoryConfigError::EmptyArgv {
                            index,
                            name: name.clone(),
                        });
                    }
                }
                SoftwareSource::File { name, path } => {
                    if !is_valid_software_name(name) {
                        return Err(invalid(name));
                    }
                    require_absolute(&format!("software[{index}].path"), path)?;
                }
            }
        }
        Ok(())
    }
}

fn require_absolute(field: &str, path: &Path) -> Result<(), InventoryConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(InventoryConfigError::RelativePath {
            field: field.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Where the built-in system sources live. Production uses `/`; tests point
/// `root` at a fixture tree holding `proc/`, `sys/`, `etc/` and so on.
///
/// Only built-in paths (`/proc`, `/sys`, the os-release files and the default
/// dpkg status file) are resolved under `root`. Paths written in the
/// configuration are used as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPaths {
    pub root: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
        }
    }
}

impl SystemPaths {
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `absolute` (such as `/proc/uptime`) under `root`.
    pub fn resolve(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}

/// Collects the whole inventory. Never fails and never blocks longer than
/// the script timeout (plus a short grace) per child process it runs; see
/// the module documentation.
pub fn collect(cfg: &InventoryConfig, paths: &SystemPaths, agent_version: &str) -> Inventory {
    let mut inv = Inventory::new();
    if let Some(version) = clean_system_value(agent_version) {
        inv.insert("agent.version".to_owned(), version);
    }
    inv.insert("arch".to_owned(), uname_arch().to_owned());
    collect_os_release(paths, &mut inv);
    collect_kernel(paths, &mut inv);
    collect_cpu_and_memory(paths, &mut inv);
    collect_network(paths, &mut inv);
    let timeout = Duration::from_secs(cfg.script_timeout_secs.clamp(1, MAX_SCRIPT_TIMEOUT_SECS));
    collect_software(&cfg.software, paths, timeout, &mut inv);
    collect_scripts(&cfg.scripts_dir, timeout, &mut inv);
    inv
}

/// The change from `old` to `new`, ignoring [`VOLATILE_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InventoryDelta {
    /// Keys that are new or whose value changed, with their new value.
    pub set: Inventory,
    /// Keys that disappeared, sorted.
    pub removed: Vec<String>,
}

impl InventoryDelta {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }
}

fn is_volatile(key: &str) -> bool {
    VOLATILE_KEYS.contains(&key)
}

/// What changed between two inventories, except [`VOLATILE_KEYS`]: for
/// every other key, `apply(&mut old, &diff(&old, &new))` makes `old` equal
/// to `new`, and an empty delta means nothing but volatile keys changed.
pub fn diff(old: &Inventory, new: &Inventory) -> InventoryDelta {
    let set = new
        .iter()
        .filter(|(key, value)| !is_volatile(key) && old.get(*key) != Some(*value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let removed = old
        .keys()
        .filter(|key| !is_volatile(key) && !new.contains_key(*key))
        .cloned()
        .collect();
    InventoryDelta { set, removed }
}

/// Applies a delta: removals first, then sets, so a key in both ends up
/// set. Volatile keys in `base` are left as they are.
pub fn apply(base: &mut Inventory, delta: &InventoryDelta) {
    for key in &delta.removed {
        base.remove(key);
    }
    for (key, value) in &delta.set {
        base.insert(key.clone(), value.clone());
    }
}

/// The `uname -m` name of the architecture this agent was built for. A
/// 32-bit agent on a 64-bit kernel reports its own architecture here and
/// the kernel's in `kernel.arch`.
pub fn uname_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        // The compile-time name does not say v6 or v7; Drover's 32-bit ARM
        // builds target ARMv7 (hard float).
        "arm" => "armv7l",
        "powerpc" => "ppc",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips32r6" => "mips",
        "mips64r6" => "mips64",
        other => other,
    }
}

// ---------------------------------------------------------------------------
// System sources
// ---------------------------------------------------------------------------

/// Reads at most `max` bytes. Any error (missing file, permission) is
/// `None`: system sources are best-effort.
fn read_capped(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

fn read_system_text(path: &Path) -> Option<String> {
    read_capped(path, SYSTEM_FILE_MAX_BYTES).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The first line of a small system file, cleaned; `None` if missing or
/// empty.
fn read_system_value(path: &Path) -> Option<String> {
    clean_system_value(read_system_text(path)?.lines().next()?)
}

/// Trims, replaces control characters and caps the length of a value that
/// comes from a trusted-but-unchecked system source.
fn clean_system_value(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    let mut value: String = trimmed
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    truncate_utf8(&mut value, VALUE_MAX_BYTES);
    Some(value)
}

fn collect_os_release(paths: &SystemPaths, inv: &mut Inventory) {
    // os-release(5): /etc/os-release takes precedence; /usr/lib/os-release
    // is the fallback when the former does not exist.
    let text = ["/etc/os-release", "/usr/lib/os-release"]
        .iter()
        .find_map(|p| read_system_text(&paths.resolve(p)));
    let Some(text) = text else { return };
    let fields = parse_os_release(&text);
    for (field, key) in [
        ("ID", "os.id"),
        ("NAME", "os.name"),
        ("VERSION_ID", "os.version_id"),
        ("PRETTY_NAME", "os.pretty_name"),
    ] {
        if let Some(value) = fields.get(field).and_then(|v| clean_system_value(v)) {
            inv.insert(key.to_owned(), value);
        }
    }
}

/// Parses os-release(5) / env-file syntax: `KEY=value` lines, `#` comments,
/// values unquoted, 'single quoted' (literal) or "double quoted" (where `\`
/// escapes `"`, `\`, `$` and `` ` ``), concatenated as in a shell. Lines
/// that do not parse (bad name, unterminated quote) are skipped.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, raw)) = line.split_once('=') else {
            continue;
        };
        if !is_env_name(name) {
            continue;
        }
        if let Some(value) = shell_unquote(raw.trim()) {
            fields.insert(name.to_owned(), value);
        }
    }
    fields
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Shell-like unquoting of one assignment value (as systemd's env-file
/// parser does it). `None` for an unterminated quote or a trailing lone
/// backslash.
fn shell_unquote(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    c => out.push(c),
                }
            },
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    Some(out)
}

fn collect_kernel(paths: &SystemPaths, inv: &mut Inventory) {
    for (key, file) in [
        ("kernel.release", "/proc/sys/kernel/osrelease"),
        ("kernel.version", "/proc/sys/kernel/version"),
        // Linux 6.1 and later; the kernel's `uname -m`.
        ("kernel.arch", "/proc/sys/kernel/arch"),
        ("hostname", "/proc/sys/kernel/hostname"),
        ("boot_id", "/proc/sys/kernel/random/boot_id"),
    ] {
        if let Some(value) = read_system_value(&paths.resolve(file)) {
            inv.insert(key.to_owned(), value);
        }
    }
    if let Some(secs) = read_system_text(&paths.resolve("/proc/uptime"))
        .as_deref()
        .and_then(parse_uptime_secs)
    {
        inv.insert("uptime_secs".to_owned(), secs.to_string());
    }
}

/// Whole seconds from `/proc/uptime` ("12345.67 54321.00").
fn parse_uptime_secs(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let whole = first.split_once('.').map_or(first, |(whole, _)| whole);
    whole.parse().ok()
}

fn collect_cpu_and_memory(paths: &SystemPaths, inv: &mut Inventory) {
    // CPUs present rather than online: CPU hotplug for power saving would
    // otherwise make the inventory change all day.
    let cpus = [
        "/sys/devices/system/cpu/present",
        "/sys/devices/system/cpu/online",
    ]
    .iter()
    .find_map(|p| read_system_text(&paths.resolve(p)).and_then(|t| count_cpu_list(&t)))
    .or_else(|| read_system_text(&paths.resolve("/proc/cpuinfo")).and_then(|t| count_cpuinfo(&t)));
    if let Some(count) = cpus {
        inv.insert("cpu.count".to_owned(), count.to_string());
    }
    if let Some(kib) = read_system_text(&paths.resolve("/proc/meminfo"))
        .as_deref()
        .and_then(parse_mem_total_kib)
    {
        inv.insert("mem.total_kib".to_owned(), kib.to_string());
    }
}

/// Counts a kernel CPU list such as "0-3,5,7-8". `None` if malformed.
fn count_cpu_list(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut count: u64 = 0;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let n = part.parse::<u64>().ok()?;
                (n, n)
            }
        };
        if last < first {
            return None;
        }
        count = count.checked_add(last - first + 1)?;
    }
    Some(count)
}

/// Counts `processor : N` lines of /proc/cpuinfo (not the capitalised
/// `Processor : <model>` line old ARM kernels print).
fn count_cpuinfo(text: &str) -> Option<u64> {
    let count = text
        .lines()
        .filter(|line| line.split(':').next().map(str::trim) == Some("processor"))
        .count() as u64;
    (count > 0).then_some(count)
}

fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn collect_network(paths: &SystemPaths, inv: &mut Inventory) {
    let dir = paths.resolve("/sys/class/net");
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut names: Vec<OsString> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    let mut reported = 0;
    for name in names {
        let base = dir.join(&name);
        // /sys/class/net also holds plain files such as `bonding_masters`.
        if !base.is_dir() {
            continue;
        }
        if reported == MAX_INTERFACES {
            break;
        }
        reported += 1;
        let label = sanitize_segment(&name.to_string_lossy());
        if let Some(mac) = read_system_value(&base.join("address")) {
            inv.insert(format!("net.{label}.mac"), mac);
        }
        if let Some(state) = read_system_value(&base.join("operstate")) {
            inv.insert(format!("net.{label}.state"), state);
        }
        if let Some(mtu) = read_system_value(&base.join("mtu")).filter(|m| m.parse::<u32>().is_ok())
        {
            inv.insert(format!("net.{label}.mtu"), mtu);
        }
    }
}

// ---------------------------------------------------------------------------
// Software sources
// ---------------------------------------------------------------------------

fn collect_software(
    sources: &[SoftwareSource],
    paths: &SystemPaths,
    timeout: Duration,
    inv: &mut Inventory,
) {
    // First source with a version wins, so a list can say "ask the program,
    // else read its VERSION file". Errors only show for names that got no
    // version from any source.
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let note_error = |errors: &mut BTreeMap<String, String>, name: &str, reason: String| {
        let key = if is_valid_software_name(name) {
            name.to_owned()
        } else {
            sanitize_segment(name)
        };
        errors.entry(key).or_insert_with(|| cap_reason(reason));
    };
    for source in sources {
        match source {
            SoftwareSource::Dpkg {
                packages,
                status_file,
            } => {
                let mut wanted = BTreeSet::new();
                for package in packages {
                    if !is_valid_software_name(package) {
                        note_error(&mut errors, package, "invalid package name".to_owned());
                    } else if !found.contains_key(package) {
                        wanted.insert(package.as_str());
                    }
                }
                if wanted.is_empty() {
                    continue;
                }
                let path = status_file
                    .clone()
                    .unwrap_or_else(|| paths.resolve(DPKG_STATUS_PATH));
                match read_dpkg_versions(&path, &wanted) {
                    Ok(versions) => {
                        for (package, version) in versions {
                            found.entry(package).or_insert(version);
                        }
                    }
                    // Not a dpkg-based system: nothing is installed.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        for package in wanted {
                            note_error(
                                &mut errors,
                                package,
                                format!("cannot read {}: {e}", path.display()),
                            );
                        }
                    }
                }
            }
            SoftwareSource::Command {
                name,
                argv,
                extract_version,
            } => {
                if !is_valid_software_name(name) {
                    note_error(&mut errors, name, "invalid software name".to_owned());
                    continue;
                }
                if found.contains_key(name) {
                    continue;
                }
                match command_version(argv, *extract_version, timeout) {
                    Ok(Some(version)) => {
                        found.insert(name.clone(), version);
                    }
                    Ok(None) => {}
                    Err(reason) => note_error(&mut errors, name, reason),
                }
            }
            SoftwareSource::File { name, path } => {
                if !is_valid_software_name(name) {
                    note_error(&mut errors, name, "invalid software name".to_owned());
                    continue;
                }
                if found.contains_key(name) {
                    continue;
                }
                match file_version(path) {
                    Ok(Some(version)) => {
                        found.insert(name.clone(), version);
                    }
                    Ok(None) => {}
                    Err(reason) => note_error(&mut errors, name, reason),
                }
            }
        }
    }
    for (name, version) in found {
        errors.remove(&name);
        inv.insert(format!("software.{name}"), version);
    }
    for (name, reason) in errors {
        inv.insert(format!("software_errors.{name}"), reason);
    }
}

#[derive(Default)]
struct DpkgStanza {
    package: Option<String>,
    status: Option<String>,
    version: Option<String>,
}

impl DpkgStanza {
    fn finish(&mut self, wanted: &BTreeSet<&str>, found: &mut BTreeMap<String, String>) {
        let stanza = std::mem::take(self);
        let (Some(package), Some(status), Some(version)) =
            (stanza.package, stanza.status, stanza.version)
        else {
            return;
        };
        if wanted.contains(package.as_str())
            && dpkg_is_installed(&status)
            && is_valid_value(&version)
        {
            // With multi-arch copies of one package the first one wins;
            // `Multi-Arch: same` forces them to one version anyway.
            found.entry(package).or_insert(version);
        }
    }
}

/// `Status: <want> <flag> <state>`: installed means flag `ok` and state
/// `installed`, whatever the want (`install`, and also `hold` for held
/// packages).
fn dpkg_is_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    matches!(words.as_slice(), [_, "ok", "installed"])
}

/// Versions of the `wanted` packages that are installed, from a dpkg status
/// file (deb822 stanzas separated by blank lines). Reads at most
/// `DPKG_STATUS_MAX_BYTES` and stops early once every package is found.
fn read_dpkg_versions(
    path: &Path,
    wanted: &BTreeSet<&str>,
) -> io::Result<BTreeMap<String, String>> {
    // Opening a FIFO or a device could block forever.
    if !fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = File::open(path)?;
    let mut reader = BufReader::new(file.take(DPKG_STATUS_MAX_BYTES));
    let mut found = BTreeMap::new();
    let mut stanza = DpkgStanza::default();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = reader.read_until(b'\n', &mut raw)?;
        // Old package descriptions are not always UTF-8; they are never
        // fields we read, so lossy decoding is fine.
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        if n == 0 || line.trim().is_empty() {
            stanza.finish(wanted, &mut found);
            if n == 0 || found.len() == wanted.len() {
                break;
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue; // continuation of a multi-line field
        }
        if let Some((field, value)) = line.split_once(':') {
            let value = Some(value.trim().to_owned());
            if field.eq_ignore_ascii_case("Package") {
                stanza.package = value;
            } else if field.eq_ignore_ascii_case("Status") {
                stanza.status = value;
            } else if field.eq_ignore_ascii_case("Version") {
                stanza.version = value;
            }
        }
    }
    Ok(found)
}

/// `Ok(None)`: the program does not exist (not installed). `Err`: it exists
/// but gave no usable version.
fn command_version(
    argv: &[String],
    extract: bool,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("argv is empty".to_owned());
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    let run = match run_with_timeout(&mut cmd, timeout, COMMAND_STDOUT_MAX_BYTES) {
        Ok(run) => run,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot run {program}: {e}")),
    };
    match run.status {
        None => return Err(format!("{program} timed out after {timeout:?} (killed)")),
        // Truncation closes the pipe, so a SIGPIPE death is expected then.
        Some(status) if !status.success() && !run.stdout_truncated => {
            return Err(format!("{program}: {}", exit_reason(status, &run.stderr)));
        }
        Some(_) => {}
    }
    let text = String::from_utf8_lossy(complete_lines(&run.stdout, run.stdout_truncated));
    let version = if extract {
        extract_version_token(&text).ok_or("no token starting with a digit in the output")?
    } else {
        first_nonempty_line(&text).ok_or("no output")?
    };
    checked_value(version).map(Some)
}

/// `Ok(None)`: the file does not exist. `Err`: it exists but gave no usable
/// version.
fn file_version(path: &Path) -> Result<Option<String>, String> {
    // Opening a FIFO or a device could block forever.
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(format!("{} is not a regular file", path.display()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(FILE_SOURCE_MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let truncated = bytes.len() > FILE_SOURCE_MAX_BYTES;
    let text = String::from_utf8_lossy(complete_lines(&bytes, truncated));
    match first_nonempty_line(&text) {
        Some(line) => checked_value(line).map(Some),
        None if truncated => Err(format!(
            "first line is longer than {FILE_SOURCE_MAX_BYTES} bytes"
        )),
        None => Err("file is empty".to_owned()),
    }
}

/// The complete lines of possibly truncated output: drops what follows the
/// last newline when the data was cut off.
fn complete_lines(bytes: &[u8], truncated: bool) -> &[u8] {
    if !truncated {
        return bytes;
    }
    match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..=end],
        None => &[],
    }
}

fn first_nonempty_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

/// The first whitespace-separated token that starts with a digit, or with
/// `v`/`V` and a digit (the `v` is dropped), after stripping surrounding
/// brackets and trailing punctuation: "Docker version 24.0.5, build x" gives
/// "24.0.5", "OpenSSL 3.0.11 19 Sep 2023" gives "3.0.11", "v18.17.0" gives
/// "18.17.0".
fn extract_version_token(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|token| {
        let token = token
            .trim_start_matches(['(', '['])
            .trim_end_matches([',', ';', ':', '.', ')', ']']);
        let token = match token.strip_prefix(['v', 'V']) {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
            _ => token,
        };
        token
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some(token)
    })
}

fn checked_value(value: &str) -> Result<String, String> {
    if value.len() > VALUE_MAX_BYTES {
        Err(format!("version is longer than {VALUE_MAX_BYTES} bytes"))
    } else if value.chars().any(char::is_control) {
        Err("version contains control characters".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

// ---------------------------------------------------------------------------
// Drop-in scripts
// ---------------------------------------------------------------------------

/// Names a package manager or an editor leaves behind, which must not run.
fn is_ignored_script_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.contains(".dpkg-")
        || name.contains(".ucf-")
        || name.ends_with(".rpmnew")
        || name.ends_with(".rpmsave")
        || name.ends_with(".rpmorig")
}

fn collect_scripts(dir: &Path, timeout: Duration, inv: &mut Inventory) {
    // Directory-level problems stop every script, so this key cannot clash
    // with a script's own error key.
    let dir_error = |inv: &mut Inventory, reason: String| {
        inv.insert("custom_errors.scripts_dir".to_owned(), cap_reason(reason));
    };
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => return dir_error(inv, format!("cannot read {}: {e}", dir.display())),
    };
    if !meta.is_dir() {
        return dir_error(inv, format!("{} is not a directory", dir.display()));
    }
    // Anyone who can add a file there could run code as the agent.
    if meta.permissions().mode() & 0o002 != 0 {
        return dir_error(
            inv,
            format!(
                "refused: {} is writable by other users (chmod o-w); no scripts ran",
                dir.display()
            ),
        );
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return dir_error(inv, format!("cannot read {}: {e}", dir.display())),
    };
    let mut names: Vec<OsString> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| !is_ignored_script_name(&name.to_string_lossy()))
        .collect();
    names.sort(); // byte order, like run-parts
    for name in names {
        let path = dir.join(&name);
        // Follows symlinks; a dangling link is skipped like any non-file.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if !meta.is_file() || mode & 0o111 == 0 {
            continue;
        }
        let label = sanitize_segment(&name.to_string_lossy());
        if mode & 0o002 != 0 {
            inv.insert(
                format!("custom_errors.{label}"),
                "refused: file is writable by other users (chmod o-w)".to_owned(),
            );
            continue;
        }
        run_script(&path, &label, timeout, inv);
    }
}

fn run_script(path: &Path, label: &str, timeout: Duration, inv: &mut Inventory) {
    let error_key = format!("custom_errors.{label}");
    let run = match run_with_timeout(&mut Command::new(path), timeout, SCRIPT_STDOUT_MAX_BYTES) {
        Ok(run) => run,
        Err(e) => {
            // The file exists (it was just listed), so ENOENT means the
            // interpreter named on its #! line does not.
            let reason = if e.kind() == io::ErrorKind::NotFound {
                "cannot run: the interpreter on its #! line was not found".to_owned()
            } else {
                format!("cannot run: {e}")
            };
            inv.insert(error_key, cap_reason(reason));
            return;
        }
    };
    let mut problems = Vec::new();
    // A script that failed or timed out may have printed half its facts;
    // none of them are trusted. After truncation the exit status is
    // ignored: closing the pipe is what usually ends such a script.
    let trusted = match run.status {
        None => {
            problems.push(format!("timed out after {timeout:?} (killed)"));
            false
        }
        Some(_) if run.stdout_truncated => true,
        Some(status) if status.success() => true,
        Some(status) => {
            problems.push(exit_reason(status, &run.stderr));
            false
        }
    };
    if run.stdout_truncated {
        problems.push(format!(
            "stdout over {SCRIPT_STDOUT_MAX_BYTES} bytes; the rest was not read"
        ));
    }
    if trusted {
        let parsed = parse_script_output(&run.stdout, run.stdout_truncated);
        for (key, value) in parsed.keys {
            inv.insert(format!("custom.{key}"), value);
        }
        if parsed.invalid_lines > 0 {
            problems.push(format!("{} invalid lines skipped", parsed.invalid_lines));
        }
        if parsed.over_key_limit > 0 {
            problems.push(format!(
                "{} lines over the {SCRIPT_MAX_KEYS}-key limit skipped",
                parsed.over_key_limit
            ));
        }
    }
    if run.pipes_left_open {
        problems.push("a process it started still holds its output open".to_owned());
    }
    if !problems.is_empty() {
        inv.insert(error_key, cap_reason(problems.join("; ")));
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ScriptOutput {
    keys: BTreeMap<String, String>,
    invalid_lines: usize,
    over_key_limit: usize,
}

/// Parses `key=value` lines. Blank lines and `#` comments are skipped
/// silently; anything else that breaks the rules is counted. With
/// `truncated`, the cut-off last line is dropped.
fn parse_script_output(stdout: &[u8], truncated: bool) -> ScriptOutput {
    let mut out = ScriptOutput::default();
    let complete = complete_lines(stdout, truncated);
    for raw in complete.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            out.invalid_lines += 1;
            continue;
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, v)| is_valid_custom_key(k) && is_valid_value(v))
        else {
            out.invalid_lines += 1;
            continue;
        };
        if out.keys.len() >= SCRIPT_MAX_KEYS && !out.keys.contains_key(key) {
            out.over_key_limit += 1;
            continue;
        }
        out.keys.insert(key.to_owned(), value.to_owned());
    }
    out
}

fn is_valid_key(key: &str, extra: &[char]) -> bool {
    !key.is_empty()
        && key.len() <= KEY_MAX_BYTES
        && key.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') || extra.contains(&c)
        })
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
}

/// Script keys: 1-64 of `[A-Za-z0-9_.-]`, dots only between segments.
fn is_valid_custom_key(key: &str) -> bool {
    is_valid_key(key, &[])
}

/// Software names also allow `+`, which Debian package names use
/// (`libstdc++6`).
fn is_valid_software_name(name: &str) -> bool {
    is_valid_key(name, &['+'])
}

fn is_valid_value(value: &str) -> bool {
    value.len() <= VALUE_MAX_BYTES && !value.chars().any(char::is_control)
}

/// Makes a file or interface name usable as one key segment: characters
/// outside `[A-Za-z0-9_.-]` and misplaced dots become `_`, at most
/// `KEY_MAX_BYTES` long.
fn sanitize_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len().min(KEY_MAX_BYTES));
    for c in name.chars() {
        if out.len() >= KEY_MAX_BYTES {
            break;
        }
        let keep = c.is_ascii_alphanumeric()
            || c == '_'
            || c == '-'
            || (c == '.' && !out.is_empty() && !out.ends_with('.'));
        out.push(if keep { c } else { '_' });
    }
    if out.ends_with('.') {
        out.pop();
        out.push('_');
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn exit_reason(status: ExitStatus, stderr: &[u8]) -> String {
    let mut reason = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    let stderr = String::from_utf8_lossy(stderr);
    if let Some(line) = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        let mut line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        truncate_utf8(&mut line, STDERR_LINE_MAX_BYTES);
        reason.push_str(": ");
        reason.push_str(&line);
    }
    reason
}

fn cap_reason(mut reason: String) -> String {
    truncate_utf8(&mut reason, REASON_MAX_BYTES);
    reason
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

// ---------------------------------------------------------------------------
// Running a child with a timeout
// ---------------------------------------------------------------------------

struct RunOutput {
    /// `None` when the child was killed at the deadline.
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    /// More than the limit was written; the pipe was closed after it.
    stdout_truncated: bool,
    /// First `STDERR_KEEP_BYTES` of stderr.
    stderr: Vec<u8>,
    /// A pipe was still open `PIPE_GRACE` after the child ended, so the
    /// output may be incomplete and a reader thread was left behind.
    pipes_left_open: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

enum PipeEvent {
    Data(Stream, Vec<u8>),
    /// The stdout limit was hit and the pipe closed.
    Overflow,
    Closed(Stream),
}

#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stdout_open: bool,
    stderr_open: bool,
}

impl Captured {
    fn take(&mut self, event: PipeEvent) {
        match event {
            PipeEvent::Data(Stream::Stdout, bytes) => self.stdout.extend_from_slice(&bytes),
            PipeEvent::Data(Stream::Stderr, bytes) => self.stderr.extend_from_slice(&bytes),
            PipeEvent::Overflow => {
                self.stdout_truncated = true;
                self.stdout_open = false;
            }
            PipeEvent::Closed(Stream::Stdout) => self.stdout_open = false,
            PipeEvent::Closed(Stream::Stderr) => self.stderr_open = false,
        }
    }

    fn any_open(&self) -> bool {
        self.stdout_open || self.stderr_open
    }
}

/// Runs `cmd` with stdin from /dev/null, keeping at most `stdout_max` bytes
/// of stdout. Kills the child when `timeout` expires. Pipes are read by
/// two small threads, because std has no non-blocking pipe reads; polling
/// `try_wait` happens on this thread. `Err` only if the child cannot be
/// started.
fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
    stdout_max: usize,
) -> io::Result<RunOutput> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut child = spawn_retrying_busy(cmd)?;
    let (tx, rx) = mpsc::channel();
    let mut captured = Captured::default();
    let started = (|| -> io::Result<()> {
        if let Some(stdout) = child.stdout.take() {
            spawn_pipe_reader(stdout, Stream::Stdout, stdout_max, true, tx.clone())?;
            captured.stdout_open = true;
        }
        if let Some(stderr) = child.stderr.take() {
            spawn_pipe_reader(stderr, Stream::Stderr, STDERR_KEEP_BYTES, false, tx)?;
            captured.stderr_open = true;
        }
        Ok(())
    })();
    if let Err(e) = started {
        kill_and_reap(&mut child);
        return Err(e);
    }

    let mut poll = POLL_MIN;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(e);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_and_reap(&mut child);
            break None;
        }
        // Waiting on the channel doubles as the poll sleep, and collects
        // output while the child runs.
        let wait = poll.min(deadline - now);
        if captured.any_open() {
            match rx.recv_timeout(wait) {
                Ok(event) => captured.take(event),
                Err(RecvTimeoutError::Timeout) => poll = (poll * 2).min(POLL_MAX),
                Err(RecvTimeoutError::Disconnected) => thread::sleep(wait),
            }
        } else {
            thread::sleep(wait);
            poll = (poll * 2).min(POLL_MAX);
        }
    };

    let grace_end = Instant::now() + PIPE_GRACE;
    let mut pipes_left_open = false;
    while captured.any_open() {
        let now = Instant::now();
        if now >= grace_end {
            pipes_left_open = true;
            break;
        }
        match rx.recv_timeout(grace_end - now) {
            Ok(event) => captured.take(event),
            Err(RecvTimeoutError::Timeout) => {
                pipes_left_open = true;
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(RunOutput {
        status,
        stdout: captured.stdout,
        stdout_truncated: captured.stdout_truncated,
        stderr: captured.stderr,
        pipes_left_open,
    })
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean the child is already gone.
    let _ = child.kill();
    let _ = child.wait();
}

/// `spawn`, retried briefly on ETXTBSY: exec fails that way while any
/// process (a package manager, or a fork in another thread) still holds the
/// file open for writing.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<Child> {
    let mut delay = Duration::from_millis(5);
    for _ in 0..4 {
        match cmd.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy => {
                thread::sleep(delay);
                delay *= 4;
            }
            other => return other,
        }
    }
    cmd.spawn()
}

/// Reads `pipe` on its own thread and forwards what it reads. Keeps at most
/// `keep` bytes. Past that, with `stop_on_overflow` it closes the pipe (the
/// writer then gets EPIPE or SIGPIPE, as with `head`); otherwise it drains
/// and discards, so a chatty stderr cannot stall the child.
fn spawn_pipe_reader<R: Read + Send + 'static>(
    mut pipe: R,
    stream: Stream,
    keep: usize,
    stop_on_overflow: bool,
    tx: Sender<PipeEvent>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("inventory-pipe".to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = vec![0u8; 8 * 1024];
            let mut kept = 0;
            loop {
                let room = keep - kept;
                // One byte past the limit is enough to know there is more.
                let want = if stop_on_overflow {
                    buf.len().min(room + 1)
                } else {
                    buf.len()
                };
                let n = match pipe.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let take = n.min(room);
                if take > 0 {
                    kept += take;
                    if tx
                        .send(PipeEvent::Data(stream, buf[..take].to_vec()))
                        .is_err()
                    {
                        return; // the collector gave up on us
                    }
                }
                if n > take && stop_on_overflow {
                    let _ = tx.send(PipeEvent::Overflow);
                    return;
                }
            }
            let _ = tx.send(PipeEvent::Closed(stream));
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = write(dir, name, body);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn map(pairs: &[(&str, &str)]) -> Inventory {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Keys under `prefix`, for asserting one source at a time.
    fn only(inv: &Inventory, prefix: &str) -> Inventory {
        inv.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn no_scripts() -> InventoryConfig {
        InventoryConfig {
            scripts_dir: PathBuf::from("/nonexistent/drover-inventory-test.d"),
            ..InventoryConfig::default()
        }
    }

    fn run_scripts(dir: &Path, timeout: Duration) -> Inventory {
        let mut inv = Inventory::new();
        collect_scripts(dir, timeout, &mut inv);
        inv
    }

    fn software(sources: Vec<SoftwareSource>) -> Inventory {
        let mut inv = Inventory::new();
        let paths = SystemPaths::with_root("/nonexistent/drover-root");
        collect_software(&sources, &paths, Duration::from_secs(5), &mut inv);
        inv
    }

    fn fake_system(root: &Path) {
        write(
            root,
            "etc/os-release",
            "# comment\n\
             PRETTY_NAME=\"Acme Linux 3.1 \\\"Tern\\\" (\\$stable)\"\n\
             NAME='Acme Linux'\n\
             VERSION_ID=3.1\n\
             ID=acme\n\
             ID_LIKE=\"debian\"\n",
        );
        write(root, "usr/lib/os-release", "ID=ignored\n");
        write(root, "proc/sys/kernel/osrelease", "6.1.0-18-arm64\n");
        write(
            root,
            "proc/sys/kernel/version",
            "#1 SMP Debian 6.1.76-1 (2024-02-01)\n",
        );
        write(root, "proc/sys/kernel/arch", "aarch64\n");
        write(root, "proc/sys/kernel/hostname", "kiosk-17\n");
        write(
            root,
            "proc/sys/kernel/random/boot_id",
            "2f0c5f4e-6c1c-4b7a-9e3e-0d6c1a2b3c4d\n",
        );
        write(root, "proc/uptime", "12345.67 40000.12\n");
        write(
            root,
            "proc/meminfo",
            "MemTotal:        3884512 kB\nMemFree:          123456 kB\n",
        );
        write(root, "sys/devices/system/cpu/present", "0-3\n");
        write(root, "sys/devices/system/cpu/online", "0-1\n");
        for (name, mac, state, mtu) in [
            ("lo", "00:00:00:00:00:00", "unknown", "65536"),
            ("eth0", "dc:a6:32:01:02:03", "up", "1500"),
            ("wlan0", "dc:a6:32:0a:0b:0c", "down", "1500"),
            ("eth0.100", "dc:a6:32:01:02:03", "up", "1496"),
        ] {
            write(
                root,
                &format!("sys/class/net/{name}/address"),
                format!("{mac}\n"),
            );
            write(
                root,
                &format!("sys/class/net/{name}/operstate"),
                format!("{state}\n"),
            );
            write(
                root,
                &format!("sys/class/net/{name}/mtu"),
                format!("{mtu}\n"),
            );
        }
        // A tunnel has no MAC address: the file exists but is empty.
        write(root, "sys/class/net/wg0/address", "");
        write(root, "sys/class/net/wg0/operstate", "unknown\n");
        write(root, "sys/class/net/wg0/mtu", "1420\n");
        // Not an interface.
        write(root, "sys/class/net/bonding_masters", "\n");
    }

    #[test]
    fn fixture_tree_gives_exactly_the_expected_keys() {
        let root = tempfile::tempdir().unwrap();
        fake_system(root.path());
        let inv = collect(&no_scripts(), &SystemPaths::with_root(root.path()), "1.2.3");
        let expected = map(&[
            ("agent.version", "1.2.3"),
            ("arch", uname_arch()),
            ("boot_id", "2f0c5f4e-6c1c-4b7a-9e3e-0d6c1a2b3c4d"),
            ("cpu.count", "4"),
            ("hostname", "kiosk-17"),
            ("kernel.arch", "aarch64"),
            ("kernel.release", "6.1.0-18-arm64"),
            ("kernel.version", "#1 SMP Debian 6.1.76-1 (2024-02-01)"),
            ("mem.total_kib", "3884512"),
            ("net.eth0.mac", "dc:a6:32:01:02:03"),
            ("net.eth0.mtu", "1500"),
            ("net.eth0.state", "up"),
            ("net.eth0.100.mac", "dc:a6:32:01:02:03"),
            ("net.eth0.100.mtu", "1496"),
            ("net.eth0.100.state", "up"),
            ("net.wg0.mtu", "1420"),
            ("net.wg0.state", "unknown"),
            ("net.wlan0.mac", "dc:a6:32:0a:0b:0c"),
            ("net.wlan0.mtu", "1500"),
            ("net.wlan0.state", "down"),
            ("os.id", "acme"),
            ("os.name", "Acme Linux"),
            ("os.pretty_name", "Acme Linux 3.1 \"Tern\" ($stable)"),
            ("os.version_id", "3.1"),
            ("uptime_secs", "12345"),
        ]);
        assert_eq!(inv, expected);
    }

    #[test]
    fn empty_root_reports_only_what_needs_no_source() {
        let root = tempfile::tempdir().unwrap();
        let inv = collect(&no_scripts(), &SystemPaths::with_root(root.path()), "1.2.3");
        assert_eq!(
            inv,
            map(&[("agent.version", "1.2.3"), ("arch", uname_arch())])
        );
    }

    #[test]
    fn os_release_falls_back_to_usr_lib_only_when_etc_is_missing() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "usr/lib/os-release",
            "ID=debian\nVERSION_ID=\"12\"\n",
        );
        let paths = SystemPaths::with_root(root.path());
        let inv = collect(&no_scripts(), &paths, "");
        assert_eq!(
            only(&inv, "os."),
            map(&[("os.id", "debian"), ("os.version_id", "12")])
        );
        // A relative symlink, as Debian ships it, resolves inside the root.
        fs::create_dir_all(root.path().join("etc")).unwrap();
        symlink("../usr/lib/os-release", root.path().join("etc/os-release")).unwrap();
        assert_eq!(
            only(&collect(&no_scripts(), &paths, ""), "os.id"),
            map(&[("os.id", "debian")])
        );
        fs::remove_file(root.path().join("etc/os-release")).unwrap();
        write(root.path(), "etc/os-release", "ID=alpine\n");
        assert_eq!(
            only(&collect(&no_scripts(), &paths, ""), "os."),
            map(&[("os.id", "alpine")])
        );
    }

    #[test]
    fn os_release_quoting_follows_the_shell_rules() {
        let fields = parse_os_release(concat!(
            "A=plain\n",
            "B=\"double \\\"q\\\" \\\\ \\$x \\`y\\` \\n\"\n",
            "C='single \\ \"literal\"'\n",
            "D=un\\ quoted\\$\n",
            "E=\"con\"'cat'enated\n",
            "F=\"unterminated\n",
            "G='unterminated\n",
            "  H = \"spaces around\"  \n",
            "1BAD=x\n",
            "BAD-NAME=x\n",
            "no equals sign\n",
            "# I=comment\n",
            "J=\n",
            "K=\"\"\n",
            "L=trailing\\\n",
        ));
        assert_eq!(
            fields,
            BTreeMap::from([
                ("A".to_owned(), "plain".to_owned()),
                ("B".to_owned(), "double \"q\" \\ $x `y` \\n".to_owned()),
                ("C".to_owned(), "single \\ \"literal\"".to_owned()),
                ("D".to_owned(), "un quoted$".to_owned()),
                ("E".to_owned(), "concatenated".to_owned()),
                ("J".to_owned(), String::new()),
                ("K".to_owned(), String::new()),
            ])
        );
        // `  H = ...` has a space in the name and is rejected, like the
        // shell would.
    }

    #[test]
    fn cpu_count_reads_lists_and_falls_back_to_cpuinfo() {
        assert_eq!(count_cpu_list("0-3,5,7-8\n"), Some(7));
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("0-x"), None);
        assert_eq!(
            count_cpuinfo(
                "Processor\t: ARMv7 rev 4\nprocessor\t: 0\nprocessor\t: 1\nBogoMIPS : 38\n"
            ),
            Some(2)
        );
        assert_eq!(count_cpuinfo("nothing here"), None);

        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "proc/cpuinfo",
            "processor : 0\nprocessor : 1\nprocessor : 2\n",
        );
        let inv = collect(&no_scripts(), &SystemPaths::with_root(root.path()), "");
        assert_eq!(inv.get("cpu.count").map(String::as_str), Some("3"));
        // `online` is used when `present` is missing.
        write(root.path(), "sys/devices/system/cpu/online", "0-1\n");
        let inv = collect(&no_scripts(), &SystemPaths::with_root(root.path()), "");
        assert_eq!(inv.get("cpu.count").map(String::as_str), Some("2"));
    }

    #[test]
    fn uptime_and_meminfo_parse_only_well_formed_input() {
        assert_eq!(parse_uptime_secs("12345.67 54321.00\n"), Some(12345));
        assert_eq!(parse_uptime_secs("42 1"), Some(42));
        assert_eq!(parse_uptime_secs("garbage"), None);
        assert_eq!(parse_uptime_secs(""), None);
        assert_eq!(parse_mem_total_kib("MemTotal:  1024 kB\n"), Some(1024));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn odd_interface_names_become_safe_key_segments() {
        let root = tempfile::tempdir().unwrap();
        for name in ["we ird", "br-lan", "x:1"] {
            write(root.path(), &format!("sys/class/net/{name}/mtu"), "1500\n");
        }
        write(root.path(), "sys/class/net/bad/mtu", "not a number\n");
        let inv = collect(&no_scripts(), &SystemPaths::with_root(root.path()), "");
        assert_eq!(
            only(&inv, "net."),
            map(&[
                ("net.br-lan.mtu", "1500"),
                ("net.we_ird.mtu", "1500"),
                ("net.x_1.mtu", "1500"),
            ])
        );
    }

    #[test]
    fn sanitize_segment_keeps_keys_parseable() {
        assert_eq!(sanitize_segment("10-site.sh"), "10-site.sh");
        assert_eq!(sanitize_segment("a b/c"), "a_b_c");
        assert_eq!(sanitize_segment(".hidden"), "_hidden");
        assert_eq!(sanitize_segment("a..b."), "a._b_");
        assert_eq!(sanitize_segment(""), "_");
        assert_eq!(sanitize_segment("ünï"), "_n_");
        assert_eq!(sanitize_segment(&"x".repeat(100)).len(), KEY_MAX_BYTES);
    }

    const DPKG_STATUS: &[u8] = b"Package: openssl\n\
Status: install ok installed\n\
Priority: optional\n\
Version: 3.0.11-1~deb12u2\n\
Description: Secure Sockets Layer toolkit\n\
\x20a continuation line\n\
\tVersion: 9.9.9 (not a field)\n\
\x20.\n\
\n\
Package: removed-pkg\n\
Status: deinstall ok config-files\n\
Version: 1.0\n\
\n\
Package: held\n\
Status: hold ok installed\n\
Version: 2:4.5\n\
\n\
Package: broken\n\
Status: install reinstreq half-installed\n\
Version: 0.1\n\
\n\
Package: libc6\n\
Status: install ok installed\n\
Architecture: amd64\n\
Version: 2.36-9+deb12u4\n\
Description: caf\xe9 not UTF-8\n\
\n\
package: libstdc++6\n\
status: install ok installed\n\
version: 12.2.0-14\n\
\n\
Package: libc6\n\
Status: install ok installed\n\
Architecture: i386\n\
Version: 2.36-9+deb12u4\n";

    #[test]
    fn dpkg_reports_installed_packages_from_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let status = write(dir.path(), "status", DPKG_STATUS);
        let inv = software(vec![SoftwareSource::Dpkg {
            packages: [
                "openssl",
                "removed-pkg",
                "held",
                "broken",
                "libc6",
                "libstdc++6",
                "absent",
            ]
            .map(String::from)
            .to_vec(),
            status_file: Some(status),
        }]);
        assert_eq!(
            inv,
            map(&[
                ("software.held", "2:4.5"),
                ("software.libc6", "2.36-9+deb12u4"),
                ("software.libstdc++6", "12.2.0-14"),
                ("software.openssl", "3.0.11-1~deb12u2"),
            ])
        );
    }

    #[test]
    fn dpkg_default_status_file_is_under_the_root_and_may_be_missing() {
        let root = tempfile::tempdir().unwrap();
        let sources = vec![SoftwareSource::Dpkg {
            packages: vec!["openssl".to_owned()],
            status_file: None,
        }];
        let paths = SystemPaths::with_root(root.path());
        let mut inv = Inventory::new();
        collect_software(&sources, &paths, Duration::from_secs(1), &mut inv);
        assert_eq!(inv, Inventory::new(), "no dpkg database: nothing, no error");
        write(root.path(), "var/lib/dpkg/status", DPKG_STATUS);
        collect_software(&sources, &paths, Duration::from_secs(1), &mut inv);
        assert_eq!(inv, map(&[("software.openssl", "3.0.11-1~deb12u2")]));
    }

    #[test]
    fn command_source_takes_first_line_or_extracted_version() {
        let sh = |name: &str, body: &str, extract_version| SoftwareSource::Command {
            name: name.to_owned(),
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), body.to_owned()],
            extract_version,
        };
        let inv = software(vec![
            sh("python", "echo; echo 'Python 3.11.2  '; echo second", false),
            sh("python-x", "echo 'Python 3.11.2'", true),
            sh(
                "docker",
                "echo 'Docker version 24.0.5, build ced0996'",
                true,
            ),
            sh("node", "echo v18.17.0", true),
            sh(
                "failing",
                "echo 1.0; echo 'cannot open database' >&2; exit 3",
                false,
            ),
            sh("silent", "true", false),
            sh("wordy", "echo no digits here", true),
            sh("ansi", "printf '\\033[1m1.0\\033[0m\\n'", false),
            SoftwareSource::Command {
                name: "missing".to_owned(),
                argv: vec!["/nonexistent/bin/tool".to_owned(), "--version".to_owned()],
                extract_version: false,
            },
            SoftwareSource::Command {
                name: "empty-argv".to_owned(),
                argv: vec![],
                extract_version: false,
            },
        ]);
        assert_eq!(
            inv,
            map(&[
                ("software.docker", "24.0.5"),
                ("software.node", "18.17.0"),
                ("software.python", "Python 3.11.2"),
                ("software.python-x", "3.11.2"),
                (
                    "software_errors.ansi",
                    "version contains control characters"
                ),
                ("software_errors.empty-argv", "argv is empty"),
                (
                    "software_errors.failing",
                    "/bin/sh: exit status 3: cannot open database"
                ),
                ("software_errors.silent", "no output"),
                (
                    "software_errors.wordy",
                    "no token starting with a digit in the output"
                ),
            ])
        );
    }

    #[test]
    fn command_source_is_killed_at_the_timeout() {
        let sources = vec![SoftwareSource::Command {
            name: "slow".to_owned(),
            argv: vec!["/bin/sleep".to_owned(), "30".to_owned()],
            extract_version: false,
        }];
        let mut inv = Inventory::new();
        let started = Instant::now();
        collect_software(
            &sources,
            &SystemPaths::default(),
            Duration::from_millis(200),
            &mut inv,
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            inv,
            map(&[(
                "software_errors.slow",
                "/bin/sleep timed out after 200ms (killed)"
            )])
        );
    }

    #[test]
    fn file_source_takes_the_first_nonempty_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| SoftwareSource::File {
            name: name.to_owned(),
            path: write(dir.path(), name, content),
        };
        let inv = software(vec![
            file("app", b"\n  4.2.0-rc1 \nbuild 77\n"),
            file("empty", b""),
            file("huge", &vec![b'1'; FILE_SOURCE_MAX_BYTES + 10]),
            file(
                "long",
                &[vec![b'1'; VALUE_MAX_BYTES + 1], b"\n".to_vec()].concat(),
            ),
            SoftwareSource::File {
                name: "absent".to_owned(),
                path: dir.path().join("absent"),
            },
        ]);
        assert_eq!(
            inv,
            map(&[
                ("software.app", "4.2.0-rc1"),
                ("software_errors.empty", "file is empty"),
                (
                    "software_errors.huge",
                    "first line is longer than 4096 bytes"
                ),
                ("software_errors.long", "version is longer than 1024 bytes"),
            ])
        );
    }

    #[test]
    fn fifo_paths_are_refused_instead_of_blocking_forever() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let inv = software(vec![
            SoftwareSource::File {
                name: "from-fifo".to_owned(),
                path: fifo.clone(),
            },
            SoftwareSource::Dpkg {
                packages: vec!["libstdc++6".to_owned()],
                status_file: Some(fifo.clone()),
            },
        ]);
        assert_eq!(
            inv,
            map(&[
                (
                    "software_errors.from-fifo",
                    &format!("{} is not a regular file", fifo.display())
                ),
                (
                    "software_errors.libstdc++6",
                    &format!("cannot read {}: not a regular file", fifo.display())
                ),
            ])
        );
    }

    #[test]
    fn first_source_with_a_version_wins_and_clears_earlier_errors() {
        let dir = tempfile::tempdir().unwrap();
        let version_file = write(dir.path(), "VERSION", "2.0.0\n");
        let inv = software(vec![
            SoftwareSource::Command {
                name: "app".to_owned(),
                argv: vec!["/bin/false".to_owned()],
                extract_version: false,
            },
            SoftwareSource::File {
                name: "app".to_owned(),
                path: version_file.clone(),
            },
            SoftwareSource::Command {
                name: "app".to_owned(),
                argv: vec!["/bin/echo".to_owned(), "9.9.9".to_owned()],
                extract_version: false,
            },
            SoftwareSource::File {
                name: "bad name!".to_owned(),
                path: version_file,
            },
        ]);
        assert_eq!(
            inv,
            map(&[
                ("software.app", "2.0.0"),
                ("software_errors.bad_name_", "invalid software name"),
            ])
        );
    }

    #[test]
    fn version_token_extraction() {
        let cases = [
            ("OpenSSL 3.0.11 19 Sep 2023", Some("3.0.11")),
            (
                "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)",
                Some("5.2.15(1)-release"),
            ),
            ("Docker version 24.0.5, build ced0996", Some("24.0.5")),
            ("tool (1.2.3)", Some("1.2.3")),
            ("v18.17.0", Some("18.17.0")),
            ("very 2", Some("2")),
            ("version", None),
            ("", None),
        ];
        for (input, expected) in cases {
            assert_eq!(extract_version_token(input), expected, "{input:?}");
        }
    }

    #[test]
    fn scripts_run_in_name_order_and_later_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "20-b",
            "#!/bin/sh\necho site=second\necho rack=R2\n",
        );
        script(
            dir.path(),
            "10-a",
            "#!/bin/sh\n# comment lines and blank lines are fine\n\necho 'site=first'\necho ' spaced.key = spaced value '\nprintf 'crlf=yes\\r\\n'\nprintf 'empty='\n",
        );
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(
            inv,
            map(&[
                ("custom.crlf", "yes"),
                ("custom.empty", ""),
                ("custom.rack", "R2"),
                ("custom.site", "second"),
                ("custom.spaced.key", "spaced value"),
            ])
        );
    }

    #[test]
    fn non_scripts_and_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let body = "#!/bin/sh\necho ran=$(basename $0)\n";
        for name in [
            ".hidden",
            "backup~",
            "10-x.dpkg-old",
            "10-x.dpkg-dist",
            "10-x.ucf-new",
            "10-x.rpmnew",
        ] {
            script(dir.path(), name, body);
        }
        write(dir.path(), "not-executable", body);
        fs::create_dir(dir.path().join("subdir")).unwrap();
        symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
        let target = script(dir.path(), ".real", "#!/bin/sh\necho linked=yes\n");
        symlink(&target, dir.path().join("50-link")).unwrap();
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(inv, map(&[("custom.linked", "yes")]));
    }

    #[test]
    fn bad_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let long_key = "k".repeat(KEY_MAX_BYTES + 1);
        let max_key = "k".repeat(KEY_MAX_BYTES);
        let long_value = "v".repeat(VALUE_MAX_BYTES + 1);
        let max_value = "v".repeat(VALUE_MAX_BYTES);
        script(
            dir.path(),
            "10-mixed",
            &format!(
                "#!/bin/sh\n\
                 echo good=1\n\
                 echo 'no equals sign'\n\
                 echo '=no key'\n\
                 echo 'bad key=1'\n\
                 echo '.dot=1'\n\
                 echo 'a..b=1'\n\
                 echo '{long_key}=1'\n\
                 echo '{max_key}=1'\n\
                 echo 'long={long_value}'\n\
                 echo 'max={max_value}'\n\
                 printf 'ctl=a\\033b\\n'\n\
                 printf 'bin=\\377\\n'\n"
            ),
        );
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(
            inv,
            map(&[
                ("custom.good", "1"),
                (&format!("custom.{max_key}"), "1"),
                ("custom.max", &max_value),
                ("custom_errors.10-mixed", "9 invalid lines skipped"),
            ])
        );
    }

    #[test]
    fn at_most_100_keys_per_script() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "many",
            "#!/bin/sh\ni=0\nwhile [ $i -lt 105 ]; do echo k$i=$i; i=$((i+1)); done\necho k0=again\n",
        );
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        let custom = only(&inv, "custom.");
        assert_eq!(custom.len(), SCRIPT_MAX_KEYS);
        assert_eq!(custom.get("custom.k0").map(String::as_str), Some("again"));
        assert!(!custom.contains_key("custom.k100"));
        assert_eq!(
            inv.get("custom_errors.many").map(String::as_str),
            Some("5 lines over the 100-key limit skipped")
        );
    }

    #[test]
    fn failing_script_reports_exit_status_and_stderr_and_others_still_run() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "10-fails",
            "#!/bin/sh\necho half=done\necho 'sensor not found' >&2\nexit 3\n",
        );
        script(
            dir.path(),
            "20-killed",
            "#!/bin/sh\necho x=1\nkill -TERM $$\n",
        );
        script(dir.path(), "30-fine", "#!/bin/sh\necho ok=yes\n");
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(
            inv,
            map(&[
                ("custom.ok", "yes"),
                ("custom_errors.10-fails", "exit status 3: sensor not found"),
                ("custom_errors.20-killed", "killed by signal 15"),
            ])
        );
    }

    #[test]
    fn script_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "10-hangs",
            "#!/bin/sh\necho early=1\nexec sleep 30\n",
        );
        script(dir.path(), "20-fine", "#!/bin/sh\necho ok=yes\n");
        let started = Instant::now();
        let inv = run_scripts(dir.path(), Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            inv,
            map(&[
                ("custom.ok", "yes"),
                ("custom_errors.10-hangs", "timed out after 300ms (killed)"),
            ])
        );
    }

    #[test]
    fn stdout_is_cut_at_64_kib_and_the_script_stopped() {
        let dir = tempfile::tempdir().unwrap();
        // `yes` never ends on its own: only the closed pipe stops it.
        script(
            dir.path(),
            "flood",
            "#!/bin/sh\necho first=1\nexec yes spam=1\n",
        );
        let started = Instant::now();
        let inv = run_scripts(dir.path(), Duration::from_secs(20));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            inv,
            map(&[
                ("custom.first", "1"),
                ("custom.spam", "1"),
                (
                    "custom_errors.flood",
                    "stdout over 65536 bytes; the rest was not read"
                ),
            ])
        );
    }

    #[test]
    fn truncated_output_drops_the_cut_off_line() {
        let mut out = b"a=1\nb=2\nc=partial".to_vec();
        assert_eq!(
            parse_script_output(&out, true).keys,
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        out.truncate(3);
        assert_eq!(parse_script_output(&out, true), ScriptOutput::default());
        assert_eq!(parse_script_output(&out, false).keys.len(), 1);
    }

    #[test]
    fn background_process_holding_stdout_does_not_block_collection() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "daemonizes", "#!/bin/sh\nsleep 3 &\necho k=v\n");
        let started = Instant::now();
        let inv = run_scripts(dir.path(), Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            inv,
            map(&[
                ("custom.k", "v"),
                (
                    "custom_errors.daemonizes",
                    "a process it started still holds its output open"
                ),
            ])
        );
    }

    #[test]
    fn world_writable_scripts_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = script(dir.path(), "10-open", "#!/bin/sh\necho a=1\n");
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o757)).unwrap();
        script(dir.path(), "20-ok", "#!/bin/sh\necho b=1\n");
        assert_eq!(
            run_scripts(dir.path(), Duration::from_secs(5)),
            map(&[
                ("custom.b", "1"),
                (
                    "custom_errors.10-open",
                    "refused: file is writable by other users (chmod o-w)"
                ),
            ])
        );
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(
            inv.keys().collect::<Vec<_>>(),
            ["custom_errors.scripts_dir"]
        );
        assert!(inv["custom_errors.scripts_dir"].contains("writable by other users"));
    }

    #[test]
    fn missing_scripts_dir_is_not_an_error_but_a_file_is() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            run_scripts(&dir.path().join("absent"), Duration::from_secs(1)),
            Inventory::new()
        );
        let file = write(dir.path(), "file", "");
        let inv = run_scripts(&file, Duration::from_secs(1));
        assert!(inv["custom_errors.scripts_dir"].ends_with("is not a directory"));
    }

    #[test]
    fn script_with_a_missing_interpreter_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // Executable bit set, but the interpreter does not exist.
        script(
            dir.path(),
            "bad-shebang",
            "#!/nonexistent/interpreter\necho a=1\n",
        );
        let inv = run_scripts(dir.path(), Duration::from_secs(5));
        assert_eq!(
            inv,
            map(&[(
                "custom_errors.bad-shebang",
                "cannot run: the interpreter on its #! line was not found"
            )])
        );
    }

    #[test]
    fn diff_reports_exactly_what_changed_except_volatile_keys() {
        let old = map(&[("a", "1"), ("b", "2"), ("c", "3"), ("uptime_secs", "10")]);
        let new = map(&[("a", "1"), ("b", "20"), ("d", "4"), ("uptime_secs", "99")]);
        let delta = diff(&old, &new);
        assert_eq!(
            delta,
            InventoryDelta {
                set: map(&[("b", "20"), ("d", "4")]),
                removed: vec!["c".to_owned()],
            }
        );
        let mut base = old.clone();
        apply(&mut base, &delta);
        assert_eq!(
            base,
            map(&[("a", "1"), ("b", "20"), ("d", "4"), ("uptime_secs", "10")])
        );

        let only_uptime = map(&[("a", "1"), ("uptime_secs", "11")]);
        assert!(diff(&map(&[("a", "1"), ("uptime_secs", "10")]), &only_uptime).is_empty());
        assert!(diff(&map(&[("a", "1")]), &only_uptime).is_empty());
        assert!(diff(&only_uptime, &map(&[("a", "1")])).is_empty());
    }

    /// Property: for random pairs of inventories, applying the diff gives
    /// the new inventory on every non-volatile key, and an unchanged
    /// inventory gives an empty delta.
    #[test]
    fn apply_of_diff_reconstructs_new_for_random_inventories() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let keys = ["a", "b", "c", "d.e", "f", "uptime_secs"];
        let random_inventory = |next: &mut dyn FnMut() -> u64| -> Inventory {
            let mut inv = Inventory::new();
            for key in keys {
                if next().is_multiple_of(2) {
                    inv.insert(key.to_owned(), (next() % 3).to_string());
                }
            }
            inv
        };
        let strip = |inv: &Inventory| -> Inventory {
            inv.iter()
                .filter(|(k, _)| !is_volatile(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for _ in 0..2000 {
            let old = random_inventory(&mut next);
            let new = random_inventory(&mut next);
            let delta = diff(&old, &new);
            let mut rebuilt = old.clone();
            apply(&mut rebuilt, &delta);
            assert_eq!(strip(&rebuilt), strip(&new), "old={old:?} new={new:?}");
            assert_eq!(rebuilt.get("uptime_secs"), old.get("uptime_secs"));
            assert!(diff(&new, &new).is_empty());
            assert!(delta.set.keys().all(|k| !is_volatile(k)));
            assert!(delta.removed.iter().all(|k| !is_volatile(k)));
            assert!(delta.removed.windows(2).all(|w| w[0] < w[1]));
        }
    }

    /// The example in docs/inventory.md; keep the two in step.
    const DOC_EXAMPLE: &str = r#"
[inventory]
interval_secs = 3600                      # how often to collect; at least 60
scripts_dir = "/etc/drover/inventory.d"   # absolute path
script_timeout_secs = 10                  # per script and per command, 1 to 600

[[inventory.software]]
kind = "dpkg"
packages = ["openssl", "libc6", "libstdc++6"]

[[inventory.software]]
kind = "command"
name = "python3"
argv = ["python3", "--version"]
extract_version = true

[[inventory.software]]
kind = "file"
name = "acme-app"
path = "/opt/acme/VERSION"
"#;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct AgentToml {
        inventory: InventoryConfig,
    }

    #[test]
    fn documented_toml_example_parses_and_validates() {
        let parsed: AgentToml = toml::from_str(DOC_EXAMPLE).unwrap();
        assert_eq!(
            parsed.inventory,
            InventoryConfig {
                interval_secs: 3600,
                scripts_dir: PathBuf::from("/etc/drover/inventory.d"),
                script_timeout_secs: 10,
                software: vec![
                    SoftwareSource::Dpkg {
                        packages: ["openssl", "libc6", "libstdc++6"]
                            .map(String::from)
                            .to_vec(),
                        status_file: None,
                    },
                    SoftwareSource::Command {
                        name: "python3".to_owned(),
                        argv: vec!["python3".to_owned(), "--version".to_owned()],
                        extract_version: true,
                    },
                    SoftwareSource::File {
                        name: "acme-app".to_owned(),
                        path: PathBuf::from("/opt/acme/VERSION"),
                    },
                ],
            }
        );
        parsed.inventory.validate().unwrap();
        let again: AgentToml = toml::from_str(&toml::to_string(&parsed).unwrap()).unwrap();
        assert_eq!(again, parsed);
    }

    #[test]
    fn empty_table_gives_defaults_and_unknown_fields_are_rejected() {
        let parsed: AgentToml = toml::from_str("[inventory]\n").unwrap();
        assert_eq!(parsed.inventory, InventoryConfig::default());
        assert_eq!(parsed.inventory.interval_secs, 3600);
        assert_eq!(parsed.inventory.script_timeout_secs, 10);
        assert_eq!(
            parsed.inventory.scripts_dir,
            Path::new("/etc/drover/inventory.d")
        );
        assert!(parsed.inventory.software.is_empty());
        parsed.inventory.validate().unwrap();

        for bad in [
            "[inventory]\ninterval = 60\n",
            "[inventory]\n[[inventory.software]]\nkind = \"rpm\"\npackages = []\n",
            "[inventory]\n[[inventory.software]]\nkind = \"file\"\nname = \"a\"\npath = \"/a\"\nextra = 1\n",
            "[inventory]\n[[inventory.software]]\nname = \"a\"\npath = \"/a\"\n",
        ] {
            assert!(toml::from_str::<AgentToml>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_field_to_fix() {
        let check = |cfg: InventoryConfig| cfg.validate().unwrap_err().to_string();
        assert_eq!(
            check(InventoryConfig {
                interval_secs: 5,
                ..Default::default()
            }),
            "inventory.interval_secs = 5 is too short; use at least 60"
        );
        assert_eq!(
            check(InventoryConfig {
                script_timeout_secs: 0,
                ..Default::default()
            }),
            "inventory.script_timeout_secs = 0 is out of range; use 1 to 600"
        );
        assert_eq!(
            check(InventoryConfig {
                scripts_dir: "inventory.d".into(),
                ..Default::default()
            }),
            "inventory.scripts_dir = \"inventory.d\" is relative; use an absolute path"
        );
        let with = |source| InventoryConfig {
            software: vec![source],
            ..Default::default()
        };
        assert!(
            check(with(SoftwareSource::Dpkg {
                packages: vec!["ok".into(), "not ok".into()],
                status_file: None,
            }))
            .starts_with("inventory.software[0]: \"not ok\" is not a valid software name")
        );
        assert_eq!(
            check(with(SoftwareSource::Command {
                name: "x".into(),
                argv: vec![],
                extract_version: false,
            })),
            "inventory.software[0] (\"x\"): argv is empty; give the program and its arguments"
        );
        assert!(
            check(with(SoftwareSource::File {
                name: "x".into(),
                path: "VERSION".into(),
            }))
            .starts_with("inventory.software[0].path = \"VERSION\" is relative")
        );
    }

    #[test]
    fn real_machine_reports_kernel_arch_and_boot_id() {
        let inv = collect(&no_scripts(), &SystemPaths::default(), "0.0.0-test");
        for key in ["kernel.release", "arch", "boot_id", "agent.version"] {
            assert!(inv.contains_key(key), "{key} missing from {inv:?}");
        }
        assert_eq!(inv["boot_id"].len(), 36, "{inv:?}");
        assert!(!inv.keys().any(|k| k.starts_with("net.lo.")), "{inv:?}");
        assert!(inv.keys().all(|k| !k.is_empty() && !k.contains("..")));
    }
}
