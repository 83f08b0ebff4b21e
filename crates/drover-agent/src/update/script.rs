//! The `script` installer: an update module (an executable in the modules
//! folder, named by the payload) does the work, step by step, through the
//! protocol in docs/updates.md, modelled on Mender's update
//! modules: `MODULE <step> <work_dir>` with the payload and release in
//! `DROVER_*` variables; exit 0 is success, 3 "step not supported".
//!
//! Also home of `run_bounded`, the one way this crate's installers run an
//! external program: no stdin, bounded output tails, and a timeout that
//! kills the program's whole process group.
//!
//! It must never run anything outside the modules folder: the module name
//! is a plain file name, checked before every step.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::ScriptConfig;
use super::installer::{Activation, InstallContext, InstallError, Installer};

/// Default time one module step may take.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 600;
/// Exit code of a step a module does not implement.
pub const EXIT_NOT_SUPPORTED: i32 = 3;
/// Bytes kept from the end of a program's stdout and of its stderr.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;
/// Lines of stderr quoted in an error.
const STDERR_LINES: usize = 20;
/// Characters of stderr quoted in an error.
const STDERR_CHARS: usize = 2000;

/// A program that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    /// The last [`OUTPUT_TAIL_BYTES`] of stdout and of stderr.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug)]
pub(crate) enum RunError {
    /// It could not be started.
    Spawn(std::io::Error),
    /// It (or something it started that kept its output open) ran past the
    /// timeout; its process group was killed.
    TimedOut { stderr: Vec<u8> },
    /// Waiting for it failed.
    Io(String),
}

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    closed: bool,
}

fn tail_reader(mut from: impl Read + Send + 'static) -> Arc<Mutex<Tail>> {
    let tail = Arc::new(Mutex::new(Tail::default()));
    let t = tail.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                    t.bytes.extend_from_slice(&buf[..n]);
                    if t.bytes.len() > OUTPUT_TAIL_BYTES {
                        let cut = t.bytes.len() - OUTPUT_TAIL_BYTES;
                        t.bytes.drain(..cut);
                    }
                }
            }
        }
        t.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
    });
    tail
}

fn take(tail: &Arc<Mutex<Tail>>) -> (Vec<u8>, bool) {
    let t = tail.lock().unwrap_or_else(|e| e.into_inner());
    (t.bytes.clone(), t.closed)
}

/// Runs `cmd` (stdin `/dev/null`, stdout and stderr captured, in a process
/// group of its own) until it has exited and closed its output, or until
/// `timeout`, when the whole group gets SIGKILL. Processes it leaves behind
/// after a normal exit are left alone (an activation may start services).
pub(crate) fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Finished, RunError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    let pgid = child.id() as libc::pid_t;
    let out = tail_reader(child.stdout.take().expect("stdout is piped"));
    let err = tail_reader(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let mut status = None;
    loop {
        if status.is_none() {
            status = child
                .try_wait()
                .map_err(|e| RunError::Io(format!("cannot wait for the process: {e}")))?;
        }
        let (stdout, out_closed) = take(&out);
        let (stderr, err_closed) = take(&err);
        if let Some(status) = status
            && out_closed
            && err_closed
        {
            return Ok(Finished {
                status,
                stdout,
                stderr,
            });
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) with a negative pid signals the process group
            // created for this child above; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            if status.is_none() {
                let _ = child.wait();
            }
            return Err(RunError::TimedOut { stderr });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of `stderr`, bounded, for an error message.
pub(crate) fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let start = lines.len().saturating_sub(STDERR_LINES);
    let joined = lines[start..].join("\n");
    let chars: Vec<char> = joined.chars().collect();
    let cut = chars.len().saturating_sub(STDERR_CHARS);
    chars[cut..].iter().collect::<String>().trim().to_string()
}

/// The module steps (the first argument).
pub const STEPS: &[&str] = &[
    "download",
    "install",
    "activate",
    "health",
    "commit",
    "rollback",
    "supports-rollback",
];

/// What a step answered.
enum Step {
    Done { stdout: String },
    NotSupported,
}

/// Runs update modules from one folder.
#[derive(Debug, Clone)]
pub struct ScriptInstaller {
    pub modules_dir: PathBuf,
    pub step_timeout: Duration,
    /// Passed as `DROVER_DEVICE_TYPE`.
    pub device_type: String,
}

impl ScriptInstaller {
    pub fn new(cfg: &ScriptConfig, data_dir: &Path, device_type: &str) -> ScriptInstaller {
        ScriptInstaller {
            modules_dir: cfg
                .modules_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("modules")),
            step_timeout: Duration::from_secs(
                cfg.step_timeout_secs
                    .unwrap_or(DEFAULT_STEP_TIMEOUT_SECS)
                    .max(1),
            ),
            device_type: device_type.to_string(),
        }
    }

    /// The module's path, after checking its name and that it is an
    /// executable file.
    fn module(&self, ctx: &InstallContext<'_>) -> Result<PathBuf, InstallError> {
        let Some(name) = ctx.payload.module.as_deref() else {
            return Err(InstallError::new(
                "module_missing",
                "the `script` payload names no update module",
            ));
        };
        let plain = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !plain {
            return Err(InstallError::new(
                "module_missing",
                format!("update module name {name:?} is not a plain file name"),
            ));
        }
        let path = self.modules_dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|e| {
            InstallError::new(
                "module_missing",
                format!(
                    "update module {name:?} is not installed ({}: {e}); install it there with mode 0755",
                    path.display()
                ),
            )
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(InstallError::new(
                "module_missing",
                format!(
                    "update module {} is not an executable file; chmod 0755 it",
                    path.display()
                ),
            ));
        }
        Ok(path)
    }

    fn run_step(&self, ctx: &InstallContext<'_>, step: &str) -> Result<Step, InstallError> {
        let module = self.module(ctx)?;
        let name = ctx.payload.module.as_deref().unwrap_or_default();
        let work = ctx.work_dir.join("module");
        drover_fs::ensure_dir(&work, 0o700)
            .map_err(|e| InstallError::io(&format!("cannot create {}", work.display()), &e))?;
        let mut cmd = Command::new(&module);
        cmd.arg(step)
            .arg(&work)
            .current_dir(&work)
            .env("DROVER_STEP", step)
            .env("DROVER_PAYLOAD", ctx.payload_path)
            .env("DROVER_PAYLOAD_SHA256", &ctx.payload.sha256)
            .env("DROVER_RELEASE_NAME", &ctx.manifest.name)
            .env("DROVER_RELEASE_VERSION", &ctx.manifest.version)
            .env("DROVER_WORK_DIR", &work)
            .env("DROVER_DEVICE_TYPE", &self.device_type);
        tracing::info!(module = name, step, "running update module step");
        match run_bounded(cmd, self.step_timeout) {
            Ok(done) if done.status.success() => Ok(Step::Done {
                stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
            }),
            Ok(done) if done.status.code() == Some(EXIT_NOT_SUPPORTED) => Ok(Step::NotSupported),
            Ok(done) => Err(InstallError::new(
                "module_failed",
                format!(
                    "update module {name} step {step} exited with {}: {}",
                    done.status,
                    stderr_tail(&done.stderr)
                ),
            )),
            Err(RunError::TimedOut { stderr }) => Err(InstallError::new(
                "module_timeout",
                format!(
                    "update module {name} step {step} did not finish within {} s and was killed (step_timeout_secs in [update.script]): {}",
                    self.step_timeout.as_secs(),
                    stderr_tail(&stderr)
                ),
            )),
            Err(RunError::Spawn(e)) => Err(InstallError::new(
                "module_failed",
                format!(
                    "cannot run update module {}: {e} (check its #! line)",
                    module.display()
                ),
            )),
            Err(RunError::Io(e)) => Err(InstallError::new(
                "module_failed",
                format!("update module {name} step {step}: {e}"),
            )),
        }
    }

    /// A required step: "not supported" is a failure.
    fn required(&self, ctx: &InstallContext<'_>, step: &str) -> Result<String, InstallError> {
        match self.run_step(ctx, step)? {
            Step::Done { stdout } => Ok(stdout),
            Step::NotSupported => Err(InstallError::new(
                "module_failed",
                format!(
                    "update module {} does not implement the required step {step} (exit {EXIT_NOT_SUPPORTED})",
                    ctx.payload.module.as_deref().unwrap_or_default()
                ),
            )),
        }
    }

    /// Whether the module can roll back (`supports-rollback` prints `yes`).
    pub fn supports_rollback(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError> {
        match self.run_step(ctx, "supports-rollback")? {
            Step::NotSupported => Ok(false),
            Step::Done { stdout } => {
                match first_word(&stdout)
                    .map(|w| w.to_ascii_lowercase())
                    .as_deref()
                {
                    Some("yes") => Ok(true),
                    Some("no") => Ok(false),
                    other => Err(InstallError::new(
                        "module_failed",
                        format!(
                            "update module {} answered supports-rollback with {:?}; expected `yes` or `no`",
                            ctx.payload.module.as_deref().unwrap_or_default(),
                            other.unwrap_or("")
                        ),
                    )),
                }
            }
        }
    }
}

fn first_word(stdout: &str) -> Option<&str> {
    stdout.split_whitespace().next()
}

/// Whether a step's stdout asks for a reboot: a line `reboot`.
fn wants_reboot(stdout: &str) -> bool {
    stdout
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case("reboot"))
}

impl Installer for ScriptInstaller {
    fn kind(&self) -> &'static str {
        "script"
    }

    /// `download` (optional), then `install`.
    fn install(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        self.run_step(ctx, "download")?;
        self.required(ctx, "install")?;
        Ok(())
    }

    fn activate(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        Ok(match self.run_step(ctx, "activate")? {
            Step::Done { stdout } if wants_reboot(&stdout) => Activation::RebootRequired,
            _ => Activation::Done,
        })
    }

    /// The module's `health` step: exit 0 (or "not supported") means the
    /// new version runs and is healthy; any other exit is a failure with
    /// reason `module_unhealthy`.
    fn confirm_activated(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError> {
        match self.run_step(ctx, "health") {
            Ok(_) => Ok(true),
            Err(e) if e.reason == "module_failed" => {
                Err(InstallError::new("module_unhealthy", e.message))
            }
            Err(e) => Err(e),
        }
    }

    fn commit(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        self.run_step(ctx, "commit")?;
        Ok(())
    }

    fn rollback(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        if !self.supports_rollback(ctx)? {
            return Err(InstallError::new(
                "rollback_unsupported",
                format!(
                    "update module {} does not support rollback: the device keeps what its install step left",
                    ctx.payload.module.as_deref().unwrap_or_default()
                ),
            ));
        }
        let stdout = self.required(ctx, "rollback")?;
        Ok(if wants_reboot(&stdout) {
            Activation::RebootRequired
        } else {
            Activation::Done
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_release::{Manifest, Payload};

    fn manifest(module: &str) -> Manifest {
        Manifest {
            format: 1,
            name: "firmware".into(),
            version: "2.1.0".into(),
            device_types: vec!["rpi4".into()],
            created_at: 1_800_000_000,
            expires_at: None,
            payloads: vec![Payload {
                kind: "script".into(),
                sha256: "ab".repeat(32),
                size: 5,
                module: Some(module.into()),
                delta: None,
            }],
            health: None,
            provenance: None,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        installer: ScriptInstaller,
        manifest: Manifest,
        payload: PathBuf,
        work: PathBuf,
    }

    impl Fixture {
        fn new(module: &str, body: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let modules = dir.path().join("modules");
            std::fs::create_dir_all(&modules).unwrap();
            let p = modules.join(module);
            std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(dir.path().join("payload.bin"), b"hello").unwrap();
            std::fs::create_dir_all(dir.path().join("work")).unwrap();
            let installer = ScriptInstaller {
                modules_dir: modules,
                step_timeout: Duration::from_secs(20),
                device_type: "rpi4".into(),
            };
            Fixture {
                manifest: manifest(module),
                payload: dir.path().join("payload.bin"),
                work: dir.path().join("work"),
                dir,
                installer,
            }
        }

        fn ctx(&self) -> InstallContext<'_> {
            InstallContext {
                manifest: &self.manifest,
                payload: &self.manifest.payloads[0],
                payload_path: &self.payload,
                work_dir: &self.work,
                data_dir: self.dir.path(),
            }
        }
    }

    /// A module that logs each step with its arguments and environment,
    /// installs the payload into `DIR/installed`, and keeps the previous
    /// content for rollback.
    fn good_module(dir: &Path) -> String {
        format!(
            r#"log='{}/log'; target='{}/installed'
echo "$1 $2 $DROVER_RELEASE_NAME $DROVER_RELEASE_VERSION $DROVER_DEVICE_TYPE $(basename "$DROVER_PAYLOAD") $([ "$DROVER_WORK_DIR" = "$2" ] && echo same)" >> "$log"
case "$1" in
download) exit 3 ;;
install) [ -f "$target" ] && cp "$target" "$2/previous"; cp "$DROVER_PAYLOAD" "$target" ;;
activate) echo "switching"; echo reboot ;;
health) grep -q hello "$target" ;;
commit) rm -f "$2/previous" ;;
supports-rollback) echo yes ;;
rollback) if [ -f "$2/previous" ]; then cp "$2/previous" "$target"; else rm -f "$target"; fi ;;
*) exit 3 ;;
esac
"#,
            dir.display(),
            dir.display()
        )
    }

    #[test]
    fn a_module_runs_each_step_with_the_documented_arguments_and_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Fixture::new("firmware-v1", &good_module(tmp.path()));
        let ctx = f.ctx();
        let i = &f.installer;
        i.install(&ctx).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("installed")).unwrap(),
            b"hello"
        );
        assert_eq!(i.activate(&ctx).unwrap(), Activation::RebootRequired);
        assert!(i.confirm_activated(&ctx).unwrap());
        i.commit(&ctx).unwrap();
        let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
        let work = f.dir.path().join("work/module");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 5, "{log}");
        for (line, step) in lines
            .iter()
            .zip(["download", "install", "activate", "health", "commit"])
        {
            assert_eq!(
                *line,
                format!(
                    "{step} {} firmware 2.1.0 rpi4 payload.bin same",
                    work.display()
                )
            );
        }
    }

    #[test]
    fn rollback_runs_when_the_module_supports_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("installed"), b"old").unwrap();
        let f = Fixture::new("firmware-v1", &good_module(tmp.path()));
        let ctx = f.ctx();
        f.installer.install(&ctx).unwrap();
        assert_eq!(f.installer.rollback(&ctx).unwrap(), Activation::Done);
        assert_eq!(std::fs::read(tmp.path().join("installed")).unwrap(), b"old");
    }

    #[test]
    fn a_failing_install_reports_module_failed_with_the_end_of_stderr() {
        let mut body = String::from("[ \"$1\" = install ] || exit 3\n");
        for i in 0..50 {
            body.push_str(&format!("echo 'progress line {i}' >&2\n"));
        }
        body.push_str("echo 'flash write failed at block 7' >&2\nexit 1\n");
        let f = Fixture::new("bad-install", &body);
        let e = f.installer.install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_failed");
        assert!(
            e.message.contains("step install") && e.message.contains("block 7"),
            "{e}"
        );
        assert!(
            !e.message.contains("progress line 10\n"),
            "only the last lines: {e}"
        );
        assert!(e.message.len() < 2500, "bounded: {}", e.message.len());
    }

    #[test]
    fn a_hanging_step_is_killed_with_its_children_and_reports_module_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("child.pid");
        let body = format!(
            "[ \"$1\" = install ] || exit 3\nsleep 300 &\necho $! > '{}'\necho 'waiting for the modem' >&2\nwait\n",
            pidfile.display()
        );
        let mut f = Fixture::new("hangs", &body);
        f.installer.step_timeout = Duration::from_secs(1);
        let e = f.installer.install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_timeout");
        assert!(e.message.contains("waiting for the modem"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` was in the module's process group: it dies
        // (SIGKILL lands asynchronously; a zombie awaits its reaping).
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(
                Instant::now() < until,
                "the module's child still runs: {stat}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_module_without_rollback_support_is_reported_as_such() {
        let f = Fixture::new(
            "no-rollback",
            "case \"$1\" in supports-rollback) echo no ;; install) ;; *) exit 3 ;; esac\n",
        );
        let ctx = f.ctx();
        f.installer.install(&ctx).unwrap();
        assert_eq!(f.installer.activate(&ctx).unwrap(), Activation::Done);
        let e = f.installer.rollback(&ctx).unwrap_err();
        assert_eq!(e.reason, "rollback_unsupported");
    }

    #[test]
    fn an_unhealthy_module_fails_confirmation() {
        let f = Fixture::new(
            "sick",
            "case \"$1\" in health) echo 'service did not start' >&2; exit 1 ;; *) exit 0 ;; esac\n",
        );
        let e = f.installer.confirm_activated(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_unhealthy");
        assert!(e.message.contains("service did not start"), "{e}");
    }

    #[test]
    fn missing_unnamed_or_non_executable_modules_are_module_missing() {
        let mut f = Fixture::new("present", "exit 0\n");
        f.manifest.payloads[0].module = Some("absent".into());
        let e = f.installer.install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_missing");
        assert!(
            e.message.contains("absent") && e.message.contains("0755"),
            "{e}"
        );
        f.manifest.payloads[0].module = Some("../present".into());
        let e = f.installer.install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_missing");
        assert!(e.message.contains("plain file name"), "{e}");
        let p = f.installer.modules_dir.join("present");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        f.manifest.payloads[0].module = Some("present".into());
        let e = f.installer.install(&f.ctx()).unwrap_err();
        assert_eq!(e.reason, "module_missing");
        assert!(e.message.contains("not an executable"), "{e}");
    }

    #[test]
    fn install_is_required_but_other_steps_may_be_unsupported() {
        let f = Fixture::new("minimal", "exit 3\n");
        let ctx = f.ctx();
        let e = f.installer.install(&ctx).unwrap_err();
        assert_eq!(e.reason, "module_failed");
        assert!(e.message.contains("required step install"), "{e}");
        assert_eq!(f.installer.activate(&ctx).unwrap(), Activation::Done);
        assert!(f.installer.confirm_activated(&ctx).unwrap());
        f.installer.commit(&ctx).unwrap();
        assert!(!f.installer.supports_rollback(&ctx).unwrap());
    }
}
