//! Agent-side rule sets (docs/rules.md): the TOML format, the parser and
//! every check that does not need the device.
//!
//! The server runs [`parse`] before it stores a rule set, the agent runs it
//! again (a rule set can also reach a device some other way) and then
//! [`check_protected`] with facts only the device knows: which processes
//! are the agent, its supervisor and pid 1. Errors carry the line and
//! column of what was wrong, so an operator can fix the file.
//!
//! This crate does no I/O, never panics on any input, and knows nothing of
//! how conditions are measured or actions carried out (that is the agent's
//! `rules` module).

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

/// Largest rule set text, in bytes (it travels inside one 64 KiB frame).
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Most rules in one set.
pub const MAX_RULES: usize = 128;
/// Most actions of one rule.
pub const MAX_ACTIONS: usize = 16;
/// Longest rule name.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest version text.
pub const MAX_VERSION_BYTES: usize = 64;
/// The kernel keeps at most this many bytes of a process name (`comm`).
pub const MAX_COMM_BYTES: usize = 15;
/// Longest event message.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Why a rule set was refused: where (1-based line and column, in
/// characters) and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RulesError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for RulesError {}

/// A parsed, checked rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    /// The operator's version text (`version = 7` or `version = "2026-11-27a"`).
    pub version: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    /// Where the rule's name is, for messages about the rule.
    pub line: usize,
    pub column: usize,
    pub condition: Condition,
    pub actions: Vec<Action>,
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// What of a file is compared with its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileCheck {
    Mtime,
    Size,
    Sha256,
}

fn default_window() -> u64 {
    60
}

fn default_file_checks() -> Vec<FileCheck> {
    vec![FileCheck::Mtime, FileCheck::Size, FileCheck::Sha256]
}

/// When a rule fires (docs/rules.md, "Conditions").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// The mean of the agent's own samples of `metric` over the last
    /// `window_secs` is above `above` (or below `below`).
    Metric {
        metric: String,
        #[serde(default)]
        above: Option<f64>,
        #[serde(default)]
        below: Option<f64>,
        #[serde(default = "default_window")]
        window_secs: u64,
    },
    /// A process matching every given matcher runs.
    ProcessRunning {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        exe: Option<String>,
        #[serde(default)]
        sha256: Option<String>,
    },
    /// No process matching every given matcher runs.
    ProcessMissing {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        exe: Option<String>,
        #[serde(default)]
        sha256: Option<String>,
    },
    /// Something listens on this port (TCP: state LISTEN; UDP: bound).
    PortListening {
        port: u16,
        #[serde(default = "tcp")]
        protocol: Protocol,
    },
    /// The file differs from its baseline: the state when the rule set was
    /// loaded (or the last change), or the given `sha256`.
    FileChanged {
        path: String,
        #[serde(default = "default_file_checks")]
        checks: Vec<FileCheck>,
        #[serde(default)]
        sha256: Option<String>,
    },
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// The process matchers of a process condition (every given one must match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMatch<'a> {
    /// Exactly the kernel's process name (`/proc/PID/comm`).
    pub name: Option<&'a str>,
    /// Exactly the executable's path (`/proc/PID/exe`).
    pub exe: Option<&'a str>,
    /// The executable's SHA-256, lowercase hex.
    pub sha256: Option<&'a str>,
}

impl ProcessMatch<'_> {
    /// Whether a process with this name and executable matches. `sha256`
    /// is asked for only when a hash is needed and everything else matched
    /// (hashing an executable is the expensive part).
    pub fn matches(
        &self,
        comm: &str,
        exe: Option<&str>,
        sha256: impl FnOnce() -> Option<String>,
    ) -> bool {
        if self.name.is_some_and(|n| n != comm) {
            return false;
        }
        if let Some(want) = self.exe
            && exe != Some(want)
        {
            return false;
        }
        match self.sha256 {
            Some(want) => sha256().is_some_and(|h| h.eq_ignore_ascii_case(want)),
            None => true,
        }
    }
}

impl Condition {
    /// The matchers of a process condition.
    pub fn process_match(&self) -> Option<ProcessMatch<'_>> {
        match self {
            Condition::ProcessRunning { name, exe, sha256 }
            | Condition::ProcessMissing { name, exe, sha256 } => Some(ProcessMatch {
                name: name.as_deref(),
                exe: exe.as_deref(),
                sha256: sha256.as_deref(),
            }),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Condition::Metric { .. } => "metric",
            Condition::ProcessRunning { .. } => "process_running",
            Condition::ProcessMissing { .. } => "process_missing",
            Condition::PortListening { .. } => "port_listening",
            Condition::FileChanged { .. } => "file_changed",
        }
    }
}

/// `info`, `warning` or `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Traffic direction of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    In,
    Out,
    #[default]
    Both,
}

fn default_grace() -> u64 {
    5
}

fn default_timeout() -> u64 {
    30
}

/// What a rule does when it fires (docs/rules.md, "Actions").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// An event to the server (name default `rule.<rule name>`).
    Event {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        severity: Severity,
        #[serde(default)]
        message: Option<String>,
    },
    /// SIGTERM to each matching process, SIGKILL after `grace_secs`.
    Kill {
        #[serde(default = "default_grace")]
        grace_secs: u64,
    },
    /// `systemctl stop SERVICE`.
    StopService { service: String },
    /// Runs `argv` (no shell), killed after `timeout_secs`.
    RunCommand {
        argv: Vec<String>,
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
    /// Drops traffic from/to an address and/or port (nftables).
    Block {
        #[serde(default)]
        address: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        protocol: Option<Protocol>,
        #[serde(default)]
        direction: Direction,
    },
}

/// The kinds of action, as local policy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Event,
    Kill,
    StopService,
    RunCommand,
    Block,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Event => "event",
            ActionKind::Kill => "kill",
            ActionKind::StopService => "stop_service",
            ActionKind::RunCommand => "run_command",
            ActionKind::Block => "block",
        }
    }
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Event { .. } => ActionKind::Event,
            Action::Kill { .. } => ActionKind::Kill,
            Action::StopService { .. } => ActionKind::StopService,
            Action::RunCommand { .. } => ActionKind::RunCommand,
            Action::Block { .. } => ActionKind::Block,
        }
    }
}

/// The device's local policy (`[rules.policy]` in agent.toml): which
/// destructive actions it allows at all. Events are always allowed; by
/// default nothing else is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub allow: Vec<ActionKind>,
}

impl Policy {
    pub fn allows(&self, kind: ActionKind) -> bool {
        kind == ActionKind::Event || self.allow.contains(&kind)
    }
}

impl RuleSet {
    /// (rule name, action kind) of every action the policy does not allow.
    pub fn denied(&self, policy: &Policy) -> Vec<(String, ActionKind)> {
        self.rules
            .iter()
            .flat_map(|r| {
                r.actions
                    .iter()
                    .filter(|a| !policy.allows(a.kind()))
                    .map(|a| (r.name.clone(), a.kind()))
            })
            .collect()
    }
}

/// A process the rules must never kill, as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// What it is, for the message: "the agent itself", "pid 1".
    pub role: String,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub sha256: Option<String>,
}

/// Refuses a rule set with a kill rule that matches a protected process.
pub fn check_protected(set: &RuleSet, protected: &[Protected]) -> Result<(), RulesError> {
    for r in &set.rules {
        if !r.actions.iter().any(|a| matches!(a, Action::Kill { .. })) {
            continue;
        }
        let Some(m) = r.condition.process_match() else {
            continue;
        };
        if let Some(p) = protected
            .iter()
            .find(|p| m.matches(&p.comm, p.exe.as_deref(), || p.sha256.clone()))
        {
            return Err(RulesError {
                line: r.line,
                column: r.column,
                message: format!(
                    "rule {:?} would kill {} (pid {}, {}); match the process more narrowly",
                    r.name, p.role, p.pid, p.comm
                ),
            });
        }
    }
    Ok(())
}

// ---- parsing ---------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    version: Option<Spanned<toml::Value>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    condition: Spanned<toml::Table>,
    actions: Spanned<Vec<Spanned<toml::Table>>>,
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn err_at(text: &str, offset: usize, message: impl Into<String>) -> RulesError {
    let (line, column) = position(text, offset);
    RulesError {
        line,
        column,
        message: message.into(),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Metric and event names: as the server accepts them (docs/monitoring.md).
fn valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-/:".contains(&c))
}

fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
}

/// Names of pid 1 and of the agent, which a kill rule may never name.
const PROTECTED_NAMES: &[&str] = &["drover-agent", "systemd", "init"];

fn serde_message(e: &toml::de::Error) -> String {
    e.message().trim().to_string()
}

/// Parses and checks a rule set. The whole set is refused at the first
/// problem found, with its line and column.
pub fn parse(text: &str) -> Result<RuleSet, RulesError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(RulesError {
            line: 1,
            column: 1,
            message: format!(
                "a rule set is at most {MAX_TEXT_BYTES} bytes, this one {}; split it or drop rules",
                text.len()
            ),
        });
    }
    let raw: RawSet = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        err_at(text, offset, serde_message(&e))
    })?;
    let version = match raw.version {
        None => {
            return Err(RulesError {
                line: 1,
                column: 1,
                message: "a rule set needs `version = …` (a number or a short text) so devices can report which one is active".into(),
            });
        }
        Some(v) => {
            let span = v.span();
            let text_v = match v.into_inner() {
                toml::Value::Integer(i) if i >= 0 => i.to_string(),
                toml::Value::String(s) => s,
                _ => {
                    return Err(err_at(
                        text,
                        span.start,
                        "version must be a non-negative integer or a string",
                    ));
                }
            };
            if text_v.is_empty()
                || text_v.len() > MAX_VERSION_BYTES
                || !text_v
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-+:".contains(&c))
            {
                return Err(err_at(
                    text,
                    span.start,
                    format!(
                        "version must be 1-{MAX_VERSION_BYTES} characters from letters, digits and _.-+:"
                    ),
                ));
            }
            text_v
        }
    };
    if raw.rules.len() > MAX_RULES {
        let at = raw.rules[MAX_RULES].span().start;
        return Err(err_at(
            text,
            at,
            format!("a rule set holds at most {MAX_RULES} rules"),
        ));
    }
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for r in raw.rules {
        let r = r.into_inner();
        let name_at = r.name.span().start;
        let name = r.name.into_inner();
        if !valid_rule_name(&name) {
            return Err(err_at(
                text,
                name_at,
                format!(
                    "rule name {name:?} must be 1-{MAX_NAME_BYTES} characters from letters, digits and _.-"
                ),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(err_at(
                text,
                name_at,
                format!("a second rule named {name:?}; rule names must be unique"),
            ));
        }
        let cond_at = r.condition.span().start;
        let condition: Condition = toml::Value::Table(r.condition.into_inner())
            .try_into()
            .map_err(|e: toml::de::Error| {
                err_at(
                    text,
                    cond_at,
                    format!("rule {name:?}: condition: {}", serde_message(&e)),
                )
            })?;
        check_condition(&condition)
            .map_err(|m| err_at(text, cond_at, format!("rule {name:?}: {m}")))?;
        let actions_at = r.actions.span().start;
        let raw_actions = r.actions.into_inner();
        if raw_actions.is_empty() || raw_actions.len() > MAX_ACTIONS {
            return Err(err_at(
                text,
                actions_at,
                format!("rule {name:?} needs 1-{MAX_ACTIONS} actions"),
            ));
        }
        let mut actions = Vec::with_capacity(raw_actions.len());
        for a in raw_actions {
            let at = a.span().start;
            let action: Action =
                toml::Value::Table(a.into_inner())
                    .try_into()
                    .map_err(|e: toml::de::Error| {
                        err_at(
                            text,
                            at,
                            format!("rule {name:?}: action: {}", serde_message(&e)),
                        )
                    })?;
            check_action(&action, &condition)
                .map_err(|m| err_at(text, at, format!("rule {name:?}: {m}")))?;
            actions.push(action);
        }
        let (line, column) = position(text, name_at);
        rules.push(Rule {
            name,
            line,
            column,
            condition,
            actions,
        });
    }
    Ok(RuleSet { version, rules })
}

fn check_condition(c: &Condition) -> Result<(), String> {
    match c {
        Condition::Metric {
            metric,
            above,
            below,
            window_secs,
        } => {
            if !valid_metric_name(metric) {
                return Err(format!(
                    "metric name {metric:?} is not a metric name (letters, digits and _.-/:, starting with a letter)"
                ));
            }
            match (above, below) {
                (Some(v), None) | (None, Some(v)) if v.is_finite() => {}
                (Some(_), Some(_)) | (None, None) => {
                    return Err(
                        "a metric condition needs exactly one of `above` and `below`".into(),
                    );
                }
                _ => return Err("the threshold must be a finite number".into()),
            }
            if !(1..=86_400).contains(window_secs) {
                return Err("window_secs must be 1-86400".into());
            }
        }
        Condition::ProcessRunning { name, exe, sha256 }
        | Condition::ProcessMissing { name, exe, sha256 } => {
            if name.is_none() && exe.is_none() && sha256.is_none() {
                return Err("a process condition needs `name`, `exe` or `sha256`".into());
            }
            if let Some(n) = name
                && (n.is_empty()
                    || n.len() > MAX_COMM_BYTES
                    || n.contains('/')
                    || n.chars().any(char::is_control))
            {
                return Err(format!(
                    "process name {n:?} can never match: the kernel keeps 1-{MAX_COMM_BYTES} bytes of a name (/proc/PID/comm) without '/'; match a longer name with `exe`"
                ));
            }
            if let Some(e) = exe
                && !e.starts_with('/')
            {
                return Err(format!("exe {e:?} must be an absolute path"));
            }
            if let Some(h) = sha256
                && !is_hex64(h)
            {
                return Err("sha256 must be 64 hex digits".into());
            }
        }
        Condition::PortListening { port, .. } => {
            if *port == 0 {
                return Err("port must be 1-65535".into());
            }
        }
        Condition::FileChanged {
            path,
            checks,
            sha256,
        } => {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must be absolute"));
            }
            if checks.is_empty() {
                return Err("checks must name at least one of mtime, size, sha256".into());
            }
            if let Some(h) = sha256
                && !is_hex64(h)
            {
                return Err("sha256 must be 64 hex digits".into());
            }
        }
    }
    Ok(())
}

fn check_action(a: &Action, c: &Condition) -> Result<(), String> {
    match a {
        Action::Event { name, message, .. } => {
            if let Some(n) = name
                && !valid_metric_name(n)
            {
                return Err(format!(
                    "event name {n:?} must be letters, digits and _.-/: (at most 128), starting with a letter"
                ));
            }
            if message
                .as_ref()
                .is_some_and(|m| m.len() > MAX_MESSAGE_BYTES)
            {
                return Err(format!(
                    "an event message is at most {MAX_MESSAGE_BYTES} bytes"
                ));
            }
        }
        Action::Kill { grace_secs } => {
            let Condition::ProcessRunning { name, exe, .. } = c else {
                return Err(format!(
                    "kill needs a process_running condition (it kills the processes that matched), not {}",
                    c.kind()
                ));
            };
            if *grace_secs > 300 {
                return Err("grace_secs is at most 300".into());
            }
            let exe_name = exe.as_deref().and_then(|e| e.rsplit('/').next());
            for n in [name.as_deref(), exe_name].into_iter().flatten() {
                if PROTECTED_NAMES.contains(&n) {
                    return Err(format!(
                        "refused: a kill rule matching {n:?} would kill the agent itself or pid 1"
                    ));
                }
            }
        }
        Action::StopService { service } => {
            if service.is_empty()
                || service.len() > 256
                || service.contains('/')
                || service.starts_with('-')
                || service.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!("service {service:?} is not a unit name"));
            }
            let unit = service.strip_suffix(".service").unwrap_or(service);
            if unit == "drover-agent" {
                return Err("refused: stopping drover-agent would stop the agent itself".into());
            }
        }
        Action::RunCommand { argv, timeout_secs } => {
            match argv.first() {
                Some(p) if p.starts_with('/') => {}
                _ => {
                    return Err("run_command needs argv with an absolute program path first (no shell runs it)".into());
                }
            }
            if argv.len() > 64 || argv.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                return Err("argv holds at most 64 arguments of 4096 bytes, without NUL".into());
            }
            if !(1..=3600).contains(timeout_secs) {
                return Err("timeout_secs must be 1-3600".into());
            }
        }
        Action::Block {
            address,
            port,
            protocol,
            ..
        } => {
            if address.is_none() && port.is_none() {
                return Err("block needs an `address`, a `port`, or both".into());
            }
            if let Some(addr) = address
                && !valid_address(addr)
            {
                return Err(format!(
                    "address {addr:?} must be an IPv4 or IPv6 address, optionally with /PREFIX"
                ));
            }
            if *port == Some(0) {
                return Err("port must be 1-65535".into());
            }
            if protocol.is_some() && port.is_none() {
                return Err("protocol only applies together with a port".into());
            }
        }
    }
    Ok(())
}

fn valid_address(s: &str) -> bool {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => true,
        Some(p) => p.parse::<u8>().is_ok_and(|p| p <= max) && !p.starts_with('+'),
    }
}

#[cfg(test)]
mod tests;
