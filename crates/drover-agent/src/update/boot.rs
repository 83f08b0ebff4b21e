//! The bootloader behind a small trait, for the `rootfs-ab` installer
//! (docs/updates.md).
//!
//! Every implementation stores the same four variables, and the bootloader
//! scripts in the docs read them the same way:
//!
//! | variable | meaning |
//! |---|---|
//! | `drover_slot` | the committed slot (`a` or `b`), booted when no trial is pending; unset means `a` |
//! | `drover_try_slot` | the slot to try (unset or empty: none) |
//! | `drover_boot_attempts` | trial boots left (the bootloader decrements it before each trial boot) |
//! | `upgrade_available` | `1` while a trial is pending, `0` once committed or given up |
//!
//! [`BootEnv::boot`] is the bootloader's decision, written once in Rust so
//! tests can simulate reboots ([`FileBootControl::simulate_boot`]) exactly
//! as the GRUB and U-Boot scripts behave. Implementations: a JSON file
//! ([`FileBootControl`], tests and demos), the GRUB environment block
//! through `grub-editenv` ([`GrubEnv`]) and the U-Boot environment through
//! `fw_printenv` / `fw_setenv` ([`UBootEnv`]).
//!
//! This module must never decide *what* to boot on its own: it reads and
//! writes what the installer asks, and writes a trial only in one command
//! so a power cut leaves either the old or the new variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::script::{RunError, run_bounded};

pub const VAR_SLOT: &str = "drover_slot";
pub const VAR_TRY_SLOT: &str = "drover_try_slot";
pub const VAR_ATTEMPTS: &str = "drover_boot_attempts";
pub const VAR_UPGRADE: &str = "upgrade_available";
/// Only in [`FileBootControl`]'s file: the slot the last simulated boot
/// started (a real device learns it from `drover.slot=` on the kernel
/// command line).
pub const VAR_BOOTED: &str = "drover_booted_slot";

/// The most trial boots the bootloader scripts can count (GRUB has no
/// arithmetic: its script counts down with one comparison per value).
pub const MAX_BOOT_ATTEMPTS: u32 = 9;

/// How long a bootloader tool may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// One of the two root filesystem slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// `a` or `b` (case-insensitive).
    pub fn parse(s: &str) -> Option<Slot> {
        match s.trim() {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bootloader interface failed: the message says which tool or file and
/// what to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootError(pub String);

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BootError {}

/// The A/B variables, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEnv {
    /// The committed slot.
    pub slot: Slot,
    /// The slot on trial, if any.
    pub try_slot: Option<Slot>,
    /// Trial boots left.
    pub attempts_left: u32,
    /// A trial is pending.
    pub upgrade_available: bool,
}

impl BootEnv {
    /// A committed environment booting `slot`.
    pub fn committed(slot: Slot) -> BootEnv {
        BootEnv {
            slot,
            try_slot: None,
            attempts_left: 0,
            upgrade_available: false,
        }
    }

    /// Whether the bootloader would still try a slot other than `slot`.
    pub fn trial_pending(&self) -> bool {
        self.upgrade_available && self.try_slot.is_some()
    }

    /// Reads the variables; missing ones take the defaults the bootloader
    /// scripts use (`drover_slot` = `a`, no trial).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<BootEnv, BootError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let slot = match get(VAR_SLOT) {
            None => Slot::A,
            Some(v) => Slot::parse(v).ok_or_else(|| {
                BootError(format!(
                    "{VAR_SLOT} is {v:?} in the bootloader environment; it must be `a` or `b`: set it to the slot the device boots from"
                ))
            })?,
        };
        let try_slot = match get(VAR_TRY_SLOT) {
            None => None,
            Some(v) => Some(Slot::parse(v).ok_or_else(|| {
                BootError(format!(
                    "{VAR_TRY_SLOT} is {v:?} in the bootloader environment; it must be `a`, `b` or empty"
                ))
            })?),
        };
        let attempts_left = match get(VAR_ATTEMPTS) {
            None => 0,
            Some(v) => v.parse::<u32>().map_err(|_| {
                BootError(format!(
                    "{VAR_ATTEMPTS} is {v:?} in the bootloader environment; it must be a number from 0 to {MAX_BOOT_ATTEMPTS}"
                ))
            })?,
        };
        let upgrade_available = get(VAR_UPGRADE) == Some("1");
        Ok(BootEnv {
            slot,
            try_slot,
            attempts_left,
            upgrade_available,
        })
    }

    /// The variables to store: `Some(value)` to set, `None` to unset.
    pub fn to_vars(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            (VAR_SLOT, Some(self.slot.as_str().to_string())),
            (VAR_ATTEMPTS, Some(self.attempts_left.to_string())),
            (
                VAR_UPGRADE,
                Some(if self.upgrade_available { "1" } else { "0" }.to_string()),
            ),
            (VAR_TRY_SLOT, self.try_slot.map(|s| s.as_str().to_string())),
        ]
    }

    /// What the bootloader does at power-on, exactly as the GRUB and U-Boot
    /// scripts in docs/updates.md: with a trial pending and
    /// attempts left, it counts one attempt down and boots the trial slot;
    /// with none left it gives the trial up and boots the committed slot.
    /// Returns the slot booted and the environment it saved.
    pub fn boot(&self) -> (Slot, BootEnv) {
        let mut next = *self;
        match (self.upgrade_available, self.try_slot) {
            (true, Some(try_slot)) if self.attempts_left > 0 => {
                next.attempts_left -= 1;
                (try_slot, next)
            }
            (true, Some(_)) => {
                next.upgrade_available = false;
                next.try_slot = None;
                (self.slot, next)
            }
            _ => (self.slot, next),
        }
    }
}

/// Reads and writes the bootloader's A/B variables.
pub trait BootControl: Send + Sync {
    /// The current variables.
    fn read(&self) -> Result<BootEnv, BootError>;

    /// Stores `env`. Variables set in one step: a trial becomes visible to
    /// the bootloader all at once.
    fn write(&self, env: &BootEnv) -> Result<(), BootError>;

    /// The slot the running system was booted from.
    fn booted_slot(&self) -> Result<Slot, BootError>;

    /// For messages: `grub-editenv /boot/grub/grubenv`, …
    fn describe(&self) -> String;
}

/// Finds `drover.slot=a|b` on a kernel command line (`/proc/cmdline`), the
/// way the bootloader scripts tell the system which slot they booted.
pub fn slot_from_cmdline(path: &Path) -> Result<Slot, BootError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BootError(format!("cannot read {}: {e}", path.display())))?;
    let value = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("drover.slot="))
        .next_back()
        .ok_or_else(|| {
            BootError(format!(
                "{} has no drover.slot=a|b: the bootloader script must add it to the kernel command line (docs/updates.md)",
                path.display()
            ))
        })?;
    Slot::parse(value).ok_or_else(|| {
        BootError(format!(
            "{} says drover.slot={value}; expected a or b",
            path.display()
        ))
    })
}

fn parse_name_value_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Runs a bootloader tool, returning its stdout; failures name the command
/// and carry its stderr.
fn run_tool(program: &Path, args: &[&str]) -> Result<String, BootError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let shown = format!("{} {}", program.display(), args.join(" "));
    match run_bounded(cmd, TOOL_TIMEOUT) {
        Ok(done) if done.status.success() => Ok(String::from_utf8_lossy(&done.stdout).into_owned()),
        Ok(done) => Err(BootError(format!(
            "`{shown}` exited with {}: {}",
            done.status,
            String::from_utf8_lossy(&done.stderr).trim()
        ))),
        Err(RunError::Spawn(e)) => Err(BootError(format!(
            "cannot run `{shown}`: {e} (is the bootloader tool installed? its path is configurable in [update.rootfs])"
        ))),
        Err(RunError::TimedOut { .. }) => Err(BootError(format!(
            "`{shown}` did not finish within {TOOL_TIMEOUT:?} and was killed"
        ))),
        Err(RunError::Io(e)) => Err(BootError(format!("`{shown}`: {e}"))),
    }
}

/// A JSON file standing in for the bootloader environment (tests, demos):
/// a flat object of the variables above plus `drover_booted_slot`, the slot
/// the last simulated boot started. A missing file is a device that booted
/// slot `a` and never updated.
#[derive(Debug, Clone)]
pub struct FileBootControl {
    pub path: PathBuf,
}

impl FileBootControl {
    pub fn new(path: impl Into<PathBuf>) -> FileBootControl {
        FileBootControl { path: path.into() }
    }

    fn read_vars(&self) -> Result<BTreeMap<String, String>, BootError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                BootError(format!(
                    "the boot environment file {} is not a JSON object of strings: {e}; fix or delete it",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(BootError(format!(
                "cannot read the boot environment file {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn write_vars(&self, vars: &BTreeMap<String, String>) -> Result<(), BootError> {
        let body = serde_json::to_vec_pretty(vars).expect("a string map serializes");
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            drover_fs::ensure_dir(dir, 0o700)
                .map_err(|e| BootError(format!("cannot create {}: {e}", dir.display())))?;
        }
        drover_fs::write_atomic(&self.path, &body, 0o644).map_err(|e| {
            BootError(format!(
                "cannot write the boot environment file {}: {e}",
                self.path.display()
            ))
        })
    }

    /// Simulates a power cycle: the bootloader's decision ([`BootEnv::boot`])
    /// is applied and saved, and the chosen slot becomes the booted one.
    pub fn simulate_boot(&self) -> Result<Slot, BootError> {
        let mut vars = self.read_vars()?;
        let (slot, next) = BootEnv::from_vars(&vars)?.boot();
        for (k, v) in next.to_vars() {
            match v {
                Some(v) => vars.insert(k.to_string(), v),
                None => vars.remove(k),
            };
        }
        vars.insert(VAR_BOOTED.to_string(), slot.as_str().to_string());
        self.write_vars(&vars)?;
        Ok(slot)
    }
}

impl BootControl for FileBootControl {
    fn read(&self) -> Result<BootEnv, BootError> {
        BootEnv::from_vars(&self.read_vars()?)
    }

    fn write(&self, env: &BootEnv) -> Result<(), BootError> {
        let mut vars = self.read_vars()?;
        for (k, v) in env.to_vars() {
            match v {
                Some(v) => vars.insert(k.to_string(), v),
                None => vars.remove(k),
            };
        }
        self.write_vars(&vars)
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        let vars = self.read_vars()?;
        match vars.get(VAR_BOOTED) {
            Some(v) => Slot::parse(v).ok_or_else(|| {
                BootError(format!(
                    "{VAR_BOOTED} is {v:?} in {}; expected a or b",
                    self.path.display()
                ))
            }),
            // Never booted through the simulation: the committed slot runs.
            None => Ok(BootEnv::from_vars(&vars)?.slot),
        }
    }

    fn describe(&self) -> String {
        format!("boot environment file {}", self.path.display())
    }
}

/// The GRUB environment block, through `grub-editenv FILE list|set|unset`.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    /// Usually `/boot/grub/grubenv`.
    pub env_file: PathBuf,
    /// `grub-editenv` (looked up in `PATH` when it has no `/`).
    pub editenv: PathBuf,
    /// Where the kernel command line is read, `/proc/cmdline`.
    pub cmdline: PathBuf,
}

impl GrubEnv {
    pub fn new(env_file: impl Into<PathBuf>) -> GrubEnv {
        GrubEnv {
            env_file: env_file.into(),
            editenv: PathBuf::from("grub-editenv"),
            cmdline: PathBuf::from("/proc/cmdline"),
        }
    }

    fn file(&self) -> Result<&str, BootError> {
        self.env_file.to_str().ok_or_else(|| {
            BootError(format!(
                "the GRUB environment path {} is not UTF-8",
                self.env_file.display()
            ))
        })
    }
}

impl BootControl for GrubEnv {
    fn read(&self) -> Result<BootEnv, BootError> {
        let out = run_tool(&self.editenv, &[self.file()?, "list"])?;
        BootEnv::from_vars(&parse_name_value_lines(&out))
    }

    fn write(&self, env: &BootEnv) -> Result<(), BootError> {
        let vars = env.to_vars();
        let file = self.file()?;
        // One `set` carries the trial (slot, attempts, upgrade_available
        // together); the following `unset` only removes a try slot that
        // `upgrade_available=0` has already disabled.
        let sets: Vec<String> = vars
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        let mut args = vec![file, "set"];
        args.extend(sets.iter().map(String::as_str));
        run_tool(&self.editenv, &args)?;
        let unsets: Vec<&str> = vars
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !unsets.is_empty() {
            let mut args = vec![file, "unset"];
            args.extend(unsets);
            run_tool(&self.editenv, &args)?;
        }
        Ok(())
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    fn describe(&self) -> String {
        format!("GRUB environment {}", self.env_file.display())
    }
}

/// The U-Boot environment, through `fw_printenv` and `fw_setenv -s SCRIPT`
/// (one write for all variables).
#[derive(Debug, Clone)]
pub struct UBootEnv {
    /// `fw_printenv` (looked up in `PATH` when it has no `/`).
    pub printenv: PathBuf,
    /// `fw_setenv`.
    pub setenv: PathBuf,
    /// Where the kernel command line is read, `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// Where the `fw_setenv` script is written before it runs.
    pub scratch_dir: PathBuf,
}

impl UBootEnv {
    pub fn new(scratch_dir: impl Into<PathBuf>) -> UBootEnv {
        UBootEnv {
            printenv: PathBuf::from("fw_printenv"),
            setenv: PathBuf::from("fw_setenv"),
            cmdline: PathBuf::from("/proc/cmdline"),
            scratch_dir: scratch_dir.into(),
        }
    }
}

impl BootControl for UBootEnv {
    fn read(&self) -> Result<BootEnv, BootError> {
        let out = run_tool(&self.printenv, &[])?;
        BootEnv::from_vars(&parse_name_value_lines(&out))
    }

    fn write(&self, env: &BootEnv) -> Result<(), BootError> {
        // The script format of fw_setenv: `name value` sets, a lone `name`
        // deletes; all lines land in one environment write.
        let mut script = String::new();
        for (k, v) in env.to_vars() {
            match v {
                Some(v) => script.push_str(&format!("{k} {v}\n")),
                None => script.push_str(&format!("{k}\n")),
            }
        }
        drover_fs::ensure_dir(&self.scratch_dir, 0o700)
            .map_err(|e| BootError(format!("cannot create {}: {e}", self.scratch_dir.display())))?;
        let path = self.scratch_dir.join("fw_setenv.script");
        drover_fs::write_atomic(&path, script.as_bytes(), 0o600)
            .map_err(|e| BootError(format!("cannot write {}: {e}", path.display())))?;
        let path_str = path.to_str().ok_or_else(|| {
            BootError(format!("the scratch path {} is not UTF-8", path.display()))
        })?;
        let result = run_tool(&self.setenv, &["-s", path_str]);
        let _ = std::fs::remove_file(&path);
        result.map(|_| ())
    }

    fn booted_slot(&self) -> Result<Slot, BootError> {
        slot_from_cmdline(&self.cmdline)
    }

    fn describe(&self) -> String {
        format!("U-Boot environment ({})", self.setenv.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn trial(slot: Slot, attempts: u32) -> BootEnv {
        BootEnv {
            slot: slot.other(),
            try_slot: Some(slot),
            attempts_left: attempts,
            upgrade_available: true,
        }
    }

    #[test]
    fn a_trial_slot_that_is_never_committed_falls_back_after_its_attempts() {
        let mut env = trial(Slot::B, 3);
        let mut booted = Vec::new();
        for _ in 0..5 {
            let (slot, next) = env.boot();
            booted.push(slot);
            env = next;
        }
        assert_eq!(booted, [Slot::B, Slot::B, Slot::B, Slot::A, Slot::A]);
        assert_eq!(env, BootEnv::committed(Slot::A));
    }

    #[test]
    fn a_committed_environment_always_boots_its_slot() {
        let env = BootEnv::committed(Slot::B);
        assert_eq!(env.boot(), (Slot::B, env));
    }

    #[test]
    fn file_boot_control_defaults_to_slot_a_and_simulates_boots() {
        let dir = tempfile::tempdir().unwrap();
        let ctl = FileBootControl::new(dir.path().join("sub/bootenv.json"));
        assert_eq!(ctl.read().unwrap(), BootEnv::committed(Slot::A));
        assert_eq!(ctl.booted_slot().unwrap(), Slot::A);
        ctl.write(&trial(Slot::B, 1)).unwrap();
        assert_eq!(ctl.booted_slot().unwrap(), Slot::A, "no reboot yet");
        assert_eq!(ctl.simulate_boot().unwrap(), Slot::B);
        assert_eq!(ctl.booted_slot().unwrap(), Slot::B);
        assert_eq!(ctl.read().unwrap(), trial(Slot::B, 0));
        assert_eq!(ctl.simulate_boot().unwrap(), Slot::A, "falls back");
        assert_eq!(ctl.read().unwrap(), BootEnv::committed(Slot::A));
    }

    #[test]
    fn bad_variables_are_refused_with_the_variable_named() {
        let vars: BTreeMap<String, String> = [(VAR_SLOT.to_string(), "c".to_string())].into();
        let e = BootEnv::from_vars(&vars).unwrap_err();
        assert!(e.0.contains("drover_slot") && e.0.contains("\"c\""), "{e}");
        let vars: BTreeMap<String, String> =
            [(VAR_ATTEMPTS.to_string(), "many".to_string())].into();
        assert!(
            BootEnv::from_vars(&vars)
                .unwrap_err()
                .0
                .contains(VAR_ATTEMPTS)
        );
    }

    #[test]
    fn the_booted_slot_comes_from_the_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        std::fs::write(&p, "console=ttyS0 root=/dev/sda3 drover.slot=b quiet\n").unwrap();
        assert_eq!(slot_from_cmdline(&p).unwrap(), Slot::B);
        std::fs::write(&p, "console=ttyS0 root=/dev/sda3\n").unwrap();
        assert!(
            slot_from_cmdline(&p)
                .unwrap_err()
                .0
                .contains("no drover.slot")
        );
    }

    /// A fake `grub-editenv` keeping `name=value` lines in the env file.
    fn fake_grub_editenv(dir: &Path) -> PathBuf {
        script(
            dir,
            "grub-editenv",
            r#"f=$1; cmd=$2; shift 2
touch "$f"
case $cmd in
list) cat "$f" ;;
set) for kv in "$@"; do k=${kv%%=*}; grep -v "^$k=" "$f" > "$f.new"; echo "$kv" >> "$f.new"; mv "$f.new" "$f"; done ;;
unset) for k in "$@"; do grep -v "^$k=" "$f" > "$f.new"; mv "$f.new" "$f"; done ;;
*) echo "unknown command $cmd" >&2; exit 1 ;;
esac
"#,
        )
    }

    #[test]
    fn grub_env_reads_and_writes_through_grub_editenv() {
        let dir = tempfile::tempdir().unwrap();
        let mut grub = GrubEnv::new(dir.path().join("grubenv"));
        grub.editenv = fake_grub_editenv(dir.path());
        grub.cmdline = dir.path().join("cmdline");
        assert_eq!(grub.read().unwrap(), BootEnv::committed(Slot::A));
        grub.write(&trial(Slot::B, 3)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("grubenv")).unwrap();
        assert!(text.contains("drover_try_slot=b") && text.contains("upgrade_available=1"));
        assert_eq!(grub.read().unwrap(), trial(Slot::B, 3));
        grub.write(&BootEnv::committed(Slot::B)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("grubenv")).unwrap();
        assert!(!text.contains("drover_try_slot"), "unset: {text}");
        assert_eq!(grub.read().unwrap(), BootEnv::committed(Slot::B));
        std::fs::write(&grub.cmdline, "root=x drover.slot=b\n").unwrap();
        assert_eq!(grub.booted_slot().unwrap(), Slot::B);
    }

    #[test]
    fn grub_tool_failures_name_the_command_and_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut grub = GrubEnv::new(dir.path().join("grubenv"));
        grub.editenv = script(
            dir.path(),
            "grub-editenv",
            "echo 'no space left' >&2; exit 1\n",
        );
        let e = grub.read().unwrap_err();
        assert!(e.0.contains("list") && e.0.contains("no space left"), "{e}");
        grub.editenv = dir.path().join("missing-grub-editenv");
        let e = grub.write(&BootEnv::committed(Slot::A)).unwrap_err();
        assert!(e.0.contains("cannot run"), "{e}");
    }

    #[test]
    fn grub_env_with_the_real_grub_editenv() {
        let Some(tool) = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("grub-editenv"))
                .find(|p| p.is_file())
        }) else {
            println!("skipped: grub-editenv is not installed (Debian package grub-common)");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        let status = Command::new(&tool)
            .arg(&file)
            .arg("create")
            .status()
            .unwrap();
        assert!(status.success());
        let mut grub = GrubEnv::new(&file);
        grub.editenv = tool;
        assert_eq!(grub.read().unwrap(), BootEnv::committed(Slot::A));
        grub.write(&trial(Slot::B, 2)).unwrap();
        assert_eq!(grub.read().unwrap(), trial(Slot::B, 2));
        // The bootloader's countdown, applied to the real block.
        let mut booted = Vec::new();
        for _ in 0..3 {
            let (slot, next) = grub.read().unwrap().boot();
            grub.write(&next).unwrap();
            booted.push(slot);
        }
        assert_eq!(booted, [Slot::B, Slot::B, Slot::A]);
        assert_eq!(grub.read().unwrap(), BootEnv::committed(Slot::A));
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            1024,
            "still a GRUB environment block"
        );
    }

    /// Fake `fw_printenv` / `fw_setenv -s SCRIPT` over a `name=value` file.
    fn fake_uboot(dir: &Path) -> (PathBuf, PathBuf) {
        let env = dir.join("uboot.env");
        let print = script(
            dir,
            "fw_printenv",
            &format!("touch '{}'; cat '{}'\n", env.display(), env.display()),
        );
        let set = script(
            dir,
            "fw_setenv",
            &format!(
                r#"f='{}'; [ "$1" = "-s" ] || {{ echo "expected -s SCRIPT" >&2; exit 1; }}
touch "$f"; cp "$f" "$f.new"
while read -r k v; do
  grep -v "^$k=" "$f.new" > "$f.tmp"; mv "$f.tmp" "$f.new"
  [ -n "$v" ] && echo "$k=$v" >> "$f.new"
done < "$2"
mv "$f.new" "$f"
"#,
                env.display()
            ),
        );
        (print, set)
    }

    #[test]
    fn uboot_env_reads_and_writes_through_fw_tools() {
        let dir = tempfile::tempdir().unwrap();
        let (print, set) = fake_uboot(dir.path());
        let mut uboot = UBootEnv::new(dir.path().join("scratch"));
        uboot.printenv = print;
        uboot.setenv = set;
        uboot.cmdline = dir.path().join("cmdline");
        std::fs::write(dir.path().join("uboot.env"), "bootdelay=2\n").unwrap();
        assert_eq!(uboot.read().unwrap(), BootEnv::committed(Slot::A));
        uboot.write(&trial(Slot::B, 3)).unwrap();
        assert_eq!(uboot.read().unwrap(), trial(Slot::B, 3));
        let text = std::fs::read_to_string(dir.path().join("uboot.env")).unwrap();
        assert!(text.contains("bootdelay=2"), "other variables stay: {text}");
        uboot.write(&BootEnv::committed(Slot::B)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("uboot.env")).unwrap();
        assert!(!text.contains(VAR_TRY_SLOT), "deleted: {text}");
        assert_eq!(uboot.read().unwrap(), BootEnv::committed(Slot::B));
        assert!(
            !dir.path().join("scratch/fw_setenv.script").exists(),
            "the script is removed"
        );
        std::fs::write(&uboot.cmdline, "drover.slot=a\n").unwrap();
        assert_eq!(uboot.booted_slot().unwrap(), Slot::A);
    }
}
