//! `drover-agent supervise`: the small process systemd runs, which runs the
//! real agent (`DIR/current/drover-agent run …`) and guards self-updates
//! (docs/updates.md).
//!
//! While `DIR/trial.json` names the version it started, the child must write
//! `DIR/healthy.json` for that version (or commit, which ends the trial)
//! within the trial's window. If it exits first, or the window passes, the
//! supervisor switches `current` back, writes `DIR/reverted.json` and starts
//! the previous agent, which reports the failure. Outside a trial a child
//! that exits is restarted with exponential backoff. SIGTERM, SIGINT and
//! SIGHUP are forwarded to the child; after SIGTERM or SIGINT the
//! supervisor exits with the child.
//!
//! It must stay minimal and never depend on the network or the update
//! engine: it is the one part of the agent a self-update does not replace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::update::selfupdate::{self, SUPERVISED_ENV, Trial};

/// How the supervisor runs.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// The agent folder (`[update.agent] dir`, default `DATA/agent`).
    pub dir: PathBuf,
    /// Started when `current` is absent or broken: the supervisor's own
    /// executable.
    pub fallback_exe: PathBuf,
    /// Arguments of the child, `run` by default.
    pub args: Vec<OsString>,
    /// Extra environment for the child.
    pub envs: Vec<(OsString, OsString)>,
    /// How often the child and the marker files are looked at.
    pub poll: Duration,
    /// After SIGTERM to an unhealthy trial agent, how long before SIGKILL.
    pub stop_grace: Duration,
    /// Restart delay after a crash outside a trial; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A child that ran this long resets the backoff.
    pub stable_after: Duration,
}

impl SupervisorOptions {
    pub fn new(dir: PathBuf, fallback_exe: PathBuf, args: Vec<OsString>) -> SupervisorOptions {
        SupervisorOptions {
            dir,
            fallback_exe,
            args,
            envs: Vec::new(),
            poll: Duration::from_millis(200),
            stop_grace: Duration::from_secs(10),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// The binary to start and its version (`None`: the fallback executable).
fn launch_target(opts: &SupervisorOptions) -> (PathBuf, Option<String>) {
    if let Some(v) = selfupdate::current_version(&opts.dir) {
        let bin = selfupdate::version_binary(&opts.dir, &v);
        if bin.is_file() {
            return (bin, Some(v));
        }
        tracing::error!(version = %v, path = %bin.display(), "`current` points to a missing agent binary; starting the fallback");
    }
    (opts.fallback_exe.clone(), None)
}

fn signal_child(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn describe(status: Option<ExitStatus>) -> Option<String> {
    status.map(|s| s.to_string())
}

/// Exit code for the supervisor when it stops with the child.
fn exit_code(status: Option<ExitStatus>) -> i32 {
    status.and_then(|s| s.code()).unwrap_or(0)
}

/// SIGTERM, then SIGKILL after `grace`; returns how the child ended.
fn terminate(child: &mut Child, grace: Duration, poll: Duration) -> Option<ExitStatus> {
    signal_child(child, libc::SIGTERM);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(poll.min(Duration::from_millis(50)));
    }
    let _ = child.kill();
    child.wait().ok()
}

enum Watch {
    /// The child exited on its own.
    Exited(Option<ExitStatus>),
    /// A stop signal came; the child has exited.
    Stopped(Option<ExitStatus>),
    /// The trial window passed; the child was stopped.
    TrialExpired(Option<ExitStatus>),
}

/// Runs the agent until a stop signal. `signal` receives signal numbers
/// (the binary's handler stores them; tests store them directly); each is
/// forwarded to the child. Returns the exit code for the process.
pub fn supervise(opts: &SupervisorOptions, signal: &AtomicI32) -> i32 {
    if let Err(e) = selfupdate::finish_interrupted_revert(&opts.dir) {
        tracing::error!(error = %e, "cannot complete an interrupted revert");
    }
    let mut backoff = opts.backoff_min;
    loop {
        let (exe, version) = launch_target(opts);
        let trial = selfupdate::read_trial(&opts.dir)
            .filter(|t| Some(&t.version) == version.as_ref())
            .filter(|t| !selfupdate::is_healthy(&opts.dir, &t.version));
        let started = Instant::now();
        let mut cmd = Command::new(&exe);
        cmd.args(&opts.args).env(SUPERVISED_ENV, "1");
        for (k, v) in &opts.envs {
            cmd.env(k, v);
        }
        // If the supervisor dies without forwarding a signal (SIGKILL), its
        // agent gets SIGTERM from the kernel instead of living on as an
        // orphan next to the agent a restarted supervisor would start.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec here.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        tracing::info!(exe = %exe.display(), version = version.as_deref().unwrap_or("built-in"), trial = trial.is_some(), "starting the agent");
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                if let Some(t) = &trial {
                    do_revert(opts, t, "agent_crashed", Some(format!("cannot start: {e}")));
                    continue;
                }
                tracing::error!(exe = %exe.display(), error = %e, "cannot start the agent");
                if wait_or_stop(backoff, opts.poll, signal) {
                    return 1;
                }
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
        };
        match watch(opts, &mut child, trial.as_ref(), started, signal) {
            Watch::Stopped(status) => return exit_code(status),
            Watch::TrialExpired(status) => {
                let t = trial.as_ref().expect("only trials expire");
                do_revert(opts, t, "agent_not_healthy", describe(status));
                continue;
            }
            Watch::Exited(status) => {
                if let Some(t) = &trial
                    && selfupdate::read_trial(&opts.dir).is_some_and(|now| now.version == t.version)
                    && !selfupdate::is_healthy(&opts.dir, &t.version)
                {
                    do_revert(opts, t, "agent_crashed", describe(status));
                    continue;
                }
                // The old agent exits after activating a new one: start it now.
                let handover = selfupdate::read_trial(&opts.dir).is_some_and(|t| {
                    Some(&t.version) != version.as_ref()
                        && selfupdate::current_version(&opts.dir).as_ref() == Some(&t.version)
                });
                if handover {
                    backoff = opts.backoff_min;
                    continue;
                }
                // Misconfigured or refused: restarting cannot help here;
                // systemd's policy decides.
                if let Some(code @ (2 | 3)) = status.and_then(|s| s.code()) {
                    tracing::error!(code, "the agent exited with a permanent failure");
                    return code;
                }
                if started.elapsed() >= opts.stable_after {
                    backoff = opts.backoff_min;
                }
                tracing::warn!(status = ?status, delay = ?backoff, "the agent exited; restarting");
                if wait_or_stop(backoff, opts.poll, signal) {
                    return 0;
                }
                backoff = (backoff * 2).min(opts.backoff_max);
            }
        }
    }
}

fn do_revert(opts: &SupervisorOptions, trial: &Trial, reason: &str, status: Option<String>) {
    tracing::error!(version = %trial.version, reason, status = status.as_deref().unwrap_or(""), "the new agent failed its trial; reverting");
    if let Err(e) = selfupdate::revert(&opts.dir, trial, reason, status) {
        // Without the switch the failed agent would start again: fall back
        // to removing `current`, which starts the supervisor's own binary.
        tracing::error!(error = %e, "cannot revert cleanly; starting the built-in agent");
        let _ = selfupdate::switch_link(&opts.dir, "current", None);
        let _ = std::fs::remove_file(opts.dir.join(selfupdate::TRIAL_FILE));
    }
}

/// Sleeps `delay` unless a stop signal comes (returns true then).
fn wait_or_stop(delay: Duration, poll: Duration, signal: &AtomicI32) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        let sig = signal.swap(0, Ordering::SeqCst);
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            return true;
        }
        std::thread::sleep(poll.min(until.saturating_duration_since(Instant::now())));
    }
    false
}

fn watch(
    opts: &SupervisorOptions,
    child: &mut Child,
    trial: Option<&Trial>,
    started: Instant,
    signal: &AtomicI32,
) -> Watch {
    let mut trial = trial;
    let deadline = trial.map(|t| started + Duration::from_secs(t.healthy_within_secs));
    let mut stopping = false;
    loop {
        let sig = signal.swap(0, Ordering::SeqCst);
        if sig != 0 {
            signal_child(child, sig);
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                stopping = true;
            }
        }
        match child.try_wait() {
            Ok(Some(status)) if stopping => return Watch::Stopped(Some(status)),
            Ok(Some(status)) => return Watch::Exited(Some(status)),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for the agent");
                let _ = child.kill();
                let status = child.wait().ok();
                return if stopping {
                    Watch::Stopped(status)
                } else {
                    Watch::Exited(status)
                };
            }
        }
        if let Some(t) = trial {
            let still =
                selfupdate::read_trial(&opts.dir).is_some_and(|now| now.version == t.version);
            if !still || selfupdate::is_healthy(&opts.dir, &t.version) {
                tracing::info!(version = %t.version, "the trial ended: healthy, committed or rolled back");
                trial = None;
            } else if !stopping && deadline.is_some_and(|d| Instant::now() >= d) {
                let status = terminate(child, opts.stop_grace, opts.poll);
                return Watch::TrialExpired(status);
            }
        }
        std::thread::sleep(opts.poll);
    }
}

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

/// Installs handlers that record SIGTERM, SIGINT and SIGHUP for
/// [`supervise`], and returns where they are recorded.
pub fn install_signal_handlers() -> &'static AtomicI32 {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is
        // async-signal-safe; sigaction is given a zeroed, valid struct.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    &PENDING_SIGNAL
}

/// `drover-agent supervise [-- ARGS]` from the command line: `config_file`
/// is passed on when it was given explicitly.
pub fn run_from_cli(
    config: &crate::config::AgentConfig,
    config_file: Option<&Path>,
    args: Vec<OsString>,
) -> std::process::ExitCode {
    let dir = config
        .update
        .agent
        .dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("agent"));
    let fallback = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program's own path: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let args = if args.is_empty() {
        vec![OsString::from("run")]
    } else {
        args
    };
    let mut opts = SupervisorOptions::new(dir, fallback, args);
    opts.envs
        .push(("DROVER_AGENT_DATA".into(), config.data_dir.clone().into()));
    if let Some(c) = config_file {
        opts.envs
            .push(("DROVER_AGENT_CONFIG".into(), c.as_os_str().to_owned()));
    }
    let signal = install_signal_handlers();
    let code = supervise(&opts, signal);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::selfupdate::{
        HEALTHY_FILE, REVERTED_FILE, current_version, switch_link, take_revert_report,
        version_binary, write_trial,
    };
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    /// Waits (up to a minute) for `cond`; panics with `what` otherwise.
    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    struct Setup {
        tmp: tempfile::TempDir,
        dir: PathBuf,
        marks: PathBuf,
    }

    impl Setup {
        fn new() -> Setup {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("agent");
            let marks = tmp.path().join("marks");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::create_dir_all(&marks).unwrap();
            Setup { tmp, dir, marks }
        }

        /// A fake agent `version`: logs its start, runs `body`, and on
        /// SIGTERM logs it and exits.
        fn agent(&self, version: &str, body: &str) {
            let bin = version_binary(&self.dir, version);
            std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
            let m = self.marks.display();
            std::fs::write(
                &bin,
                format!(
                    "#!/bin/sh\ntrap 'echo term >> {m}/{version}.term; kill $p 2>/dev/null; exit 0' TERM\necho \"$* $DROVER_AGENT_SUPERVISED\" >> {m}/{version}.starts\n{body}\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn starts(&self, version: &str) -> usize {
            std::fs::read_to_string(self.marks.join(format!("{version}.starts")))
                .map(|s| s.lines().count())
                .unwrap_or(0)
        }

        fn trial(&self, version: &str, previous: &str, secs: u64) {
            write_trial(
                &self.dir,
                &Trial {
                    version: version.into(),
                    previous: Some(previous.into()),
                    healthy_within_secs: secs,
                    deadline_unix_secs: 0,
                },
            )
            .unwrap();
            switch_link(&self.dir, "previous", Some(previous)).unwrap();
            switch_link(&self.dir, "current", Some(version)).unwrap();
        }

        fn start(&self) -> (Arc<AtomicI32>, std::thread::JoinHandle<i32>) {
            let mut opts = SupervisorOptions::new(
                self.dir.clone(),
                self.tmp.path().join("no-such-fallback"),
                vec!["run".into()],
            );
            opts.poll = Duration::from_millis(20);
            opts.stop_grace = Duration::from_secs(5);
            opts.backoff_min = Duration::from_millis(50);
            opts.backoff_max = Duration::from_millis(200);
            let signal = Arc::new(AtomicI32::new(0));
            let s = signal.clone();
            (signal, std::thread::spawn(move || supervise(&opts, &s)))
        }
    }

    const SLEEP: &str = "sleep 300 & p=$!; wait $p";

    #[test]
    fn a_new_agent_that_exits_at_once_is_replaced_by_the_previous_one() {
        let s = Setup::new();
        s.agent("1.0.0", SLEEP);
        s.agent("2.0.0", "echo 'panic at start' >&2; exit 1");
        s.trial("2.0.0", "1.0.0", 60);
        let (signal, handle) = s.start();
        wait_for("the old agent to be back", || s.starts("1.0.0") == 1);
        assert_eq!(current_version(&s.dir).as_deref(), Some("1.0.0"));
        signal.store(libc::SIGTERM, Ordering::SeqCst);
        assert_eq!(handle.join().unwrap(), 0);
        assert_eq!(s.starts("2.0.0"), 1, "the broken agent ran once");
        let report = take_revert_report(&s.dir).unwrap();
        assert_eq!(report.version, "2.0.0");
        assert_eq!(report.restored.as_deref(), Some("1.0.0"));
        assert_eq!(report.reason, "agent_crashed");
        assert_eq!(report.exit_status.as_deref(), Some("exit status: 1"));
        assert!(selfupdate::read_trial(&s.dir).is_none());
        assert!(
            s.marks.join("1.0.0.term").exists(),
            "SIGTERM reached the agent"
        );
    }

    #[test]
    fn a_new_agent_that_never_reports_healthy_is_stopped_and_reverted() {
        let s = Setup::new();
        s.agent("1.0.0", SLEEP);
        s.agent("2.0.0", SLEEP);
        s.trial("2.0.0", "1.0.0", 1);
        let (signal, handle) = s.start();
        wait_for("the old agent to be back", || s.starts("1.0.0") == 1);
        signal.store(libc::SIGTERM, Ordering::SeqCst);
        handle.join().unwrap();
        assert!(
            s.marks.join("2.0.0.term").exists(),
            "the unhealthy agent got SIGTERM"
        );
        let report = take_revert_report(&s.dir).unwrap();
        assert_eq!(report.reason, "agent_not_healthy");
        assert_eq!(current_version(&s.dir).as_deref(), Some("1.0.0"));
    }

    #[test]
    fn an_old_agent_hands_over_to_a_new_one_that_reports_healthy_in_time() {
        let s = Setup::new();
        let agent_dir = s.dir.display().to_string();
        // The old agent "activates" the new one when told to, then exits.
        s.agent(
            "1.0.0",
            &format!(
                "while [ ! -f {m}/go ]; do sleep 0.02; done; exit 0",
                m = s.marks.display()
            ),
        );
        s.agent(
            "2.0.0",
            &format!("printf '{{\"version\":\"2.0.0\"}}' > {agent_dir}/{HEALTHY_FILE}; {SLEEP}"),
        );
        switch_link(&s.dir, "current", Some("1.0.0")).unwrap();
        let (signal, handle) = s.start();
        wait_for("the old agent", || s.starts("1.0.0") == 1);
        s.trial("2.0.0", "1.0.0", 1);
        std::fs::write(s.marks.join("go"), b"").unwrap();
        wait_for("the new agent to report healthy", || {
            selfupdate::is_healthy(&s.dir, "2.0.0")
        });
        // Well past the one-second window: still the new agent, no revert.
        std::thread::sleep(Duration::from_secs(2));
        signal.store(libc::SIGTERM, Ordering::SeqCst);
        handle.join().unwrap();
        assert!(!s.dir.join(REVERTED_FILE).exists());
        assert_eq!(current_version(&s.dir).as_deref(), Some("2.0.0"));
        assert_eq!(s.starts("2.0.0"), 1);
        assert_eq!(s.starts("1.0.0"), 1);
    }

    #[test]
    fn outside_a_trial_a_crashing_agent_is_restarted() {
        let s = Setup::new();
        s.agent("1.0.0", "exit 1");
        switch_link(&s.dir, "current", Some("1.0.0")).unwrap();
        let (signal, handle) = s.start();
        wait_for("three starts", || s.starts("1.0.0") >= 3);
        signal.store(libc::SIGTERM, Ordering::SeqCst);
        // The code is the last child's (0 or 1, depending on which came first).
        handle.join().unwrap();
        assert_eq!(current_version(&s.dir).as_deref(), Some("1.0.0"));
        assert!(!s.dir.join(REVERTED_FILE).exists());
        let starts = std::fs::read_to_string(s.marks.join("1.0.0.starts")).unwrap();
        assert!(
            starts.lines().all(|l| l == "run 1"),
            "arguments and DROVER_AGENT_SUPERVISED: {starts}"
        );
    }

    #[test]
    fn a_misconfigured_agent_stops_the_supervisor_with_its_exit_code() {
        let s = Setup::new();
        s.agent("1.0.0", "exit 2");
        switch_link(&s.dir, "current", Some("1.0.0")).unwrap();
        let (_signal, handle) = s.start();
        assert_eq!(handle.join().unwrap(), 2);
    }
}
