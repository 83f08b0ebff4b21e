//! The `app` installer: each version in its own directory, an atomic
//! symlink switch, a restart hook, the previous version kept for rollback.
//!
//! Layout under `ROOT` (`[update.app].root`, default `DATA/apps`):
//!
//! ```text
//! ROOT/<release name>/<version>/     one directory per version
//! ROOT/<release name>/current        symlink to "<version>" (relative)
//! ```
//!
//! The payload is either a **tar archive** (ustar/GNU, detected by the magic
//! `ustar` at offset 257), unpacked into the version directory (regular
//! files, directories, symlinks and hard links inside it only: absolute
//! paths, `..` and links pointing out are refused), or **a single file**,
//! written as `<version>/<release name>` with mode 0755.
//!
//! - `install` unpacks into `.tmp-<version>` and renames it into place, so
//!   a version directory is always complete; it remembers what `current`
//!   pointed to (in the deployment's work dir) before anything changes.
//! - `activate` points `current` at the new version (symlink to a temp name,
//!   then rename) and runs `restart_command` with `DROVER_APP_NAME`,
//!   `DROVER_APP_VERSION`, `DROVER_APP_DIR`; a non-zero exit fails the
//!   activation (`restart_failed`).
//! - `rollback` points `current` back, runs the restart command for the old
//!   version and removes the new version's directory.
//! - `commit` removes versions other than the current and the previous one
//!   and keeps the payload as the delta base (`DATA/update/base/<name>.payload`).
//!
//! Every step is idempotent. Nothing of the running version is touched
//! before `activate`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::UpdateConfig;
use super::installer::{Activation, InstallContext, InstallError, Installer};

pub const KIND: &str = "app";
const CURRENT: &str = "current";

pub struct AppInstaller {
    root: PathBuf,
    restart_command: Vec<String>,
    restart_timeout: Duration,
    base_dir: PathBuf,
}

/// What `install` found before changing anything (work dir).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Previous {
    version: Option<String>,
}

impl AppInstaller {
    pub fn new(cfg: &UpdateConfig, data_dir: &Path) -> AppInstaller {
        AppInstaller {
            root: cfg
                .app
                .root
                .clone()
                .unwrap_or_else(|| data_dir.join("apps")),
            restart_command: cfg.app.restart_command.clone(),
            restart_timeout: Duration::from_secs(cfg.app.restart_timeout_secs.unwrap_or(60).max(1)),
            base_dir: super::journal::update_dir(data_dir).join("base"),
        }
    }

    /// `ROOT/<name>`.
    pub fn app_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn previous_file(work: &Path, name: &str) -> PathBuf {
        work.join(format!("app-{name}.previous.json"))
    }

    fn activated_marker(work: &Path, name: &str) -> PathBuf {
        work.join(format!("app-{name}.activated"))
    }

    fn current_version(&self, name: &str) -> Option<String> {
        let link = std::fs::read_link(self.app_dir(name).join(CURRENT)).ok()?;
        link.file_name()?.to_str().map(str::to_string)
    }

    fn load_previous(work: &Path, name: &str) -> Result<Option<Previous>, InstallError> {
        match std::fs::read(Self::previous_file(work, name)) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                InstallError::new(
                    "io_error",
                    format!("the app installer's record is damaged: {e}"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(InstallError::io(
                "cannot read the app installer's record",
                &e,
            )),
        }
    }

    /// Points `current` at `version` (or removes it), atomically.
    fn switch(&self, name: &str, version: Option<&str>) -> Result<(), InstallError> {
        let dir = self.app_dir(name);
        let cur = dir.join(CURRENT);
        match version {
            Some(v) => {
                let tmp = dir.join(".current.tmp");
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(v, &tmp)
                    .map_err(|e| InstallError::io("cannot create the `current` symlink", &e))?;
                std::fs::rename(&tmp, &cur)
                    .map_err(|e| InstallError::io("cannot switch the `current` symlink", &e))?;
            }
            None => match std::fs::remove_file(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(InstallError::io("cannot remove the `current` symlink", &e)),
            },
        }
        sync_dir(&dir).map_err(|e| InstallError::io("cannot sync the app directory", &e))
    }

    /// Runs the restart command for `version` of `name`.
    fn restart(&self, name: &str, version: &str) -> Result<(), InstallError> {
        let Some((prog, args)) = self.restart_command.split_first() else {
            return Ok(());
        };
        let dir = self.app_dir(name).join(version);
        let mut child = std::process::Command::new(prog)
            .args(args)
            .env("DROVER_APP_NAME", name)
            .env("DROVER_APP_VERSION", version)
            .env("DROVER_APP_DIR", &dir)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                InstallError::new(
                    "restart_failed",
                    format!("cannot run the restart command {prog:?}: {e}"),
                )
            })?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    return Err(InstallError::new(
                        "restart_failed",
                        format!(
                            "the restart command {prog:?} for {name} {version} exited with {st}"
                        ),
                    ));
                }
                Ok(None) if started.elapsed() > self.restart_timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(InstallError::new(
                        "restart_failed",
                        format!(
                            "the restart command {prog:?} for {name} {version} did not finish within {:?} (killed)",
                            self.restart_timeout
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(InstallError::io("cannot wait for the restart command", &e)),
            }
        }
    }

    fn unpack(&self, ctx: &InstallContext<'_>, into: &Path) -> Result<(), InstallError> {
        let mut f = std::fs::File::open(ctx.payload_path)
            .map_err(|e| InstallError::io("cannot open the payload", &e))?;
        let mut head = [0u8; 512];
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(InstallError::io("cannot read the payload", &e)),
            }
        }
        if got == 512 && &head[257..262] == b"ustar" {
            unpack_tar(ctx.payload_path, into)
        } else {
            let dest = into.join(&ctx.manifest.name);
            std::fs::copy(ctx.payload_path, &dest)
                .map_err(|e| InstallError::io(&format!("cannot write {}", dest.display()), &e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| InstallError::io("cannot make the payload executable", &e))?;
            Ok(())
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// fsyncs every file and directory under `dir` (before the rename that
/// publishes it).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sync_tree(&e.path())?;
        } else if t.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Whether `rel` is a plain relative path staying inside the root.
fn inside(rel: &Path) -> bool {
    let mut depth = 0i32;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Whether the OS error at the bottom of a (tar crate) error chain is ENOSPC.
fn is_enospc(e: &std::io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        cur = err.source();
    }
    false
}

/// The messages of an error and its sources, joined.
fn error_chain(e: &std::io::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        parts.push(err.to_string());
        cur = err.source();
    }
    parts.dedup();
    parts.join(": ")
}

fn unpack_tar(archive: &Path, into: &Path) -> Result<(), InstallError> {
    let bad = |m: String| InstallError::new("payload_invalid", m);
    let f = std::fs::File::open(archive)
        .map_err(|e| InstallError::io("cannot open the payload", &e))?;
    let mut ar = tar::Archive::new(f);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("the payload is not a readable tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| bad(format!("the payload's tar archive is damaged: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("a tar entry has a bad name: {e}")))?
            .into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) || !inside(&path) {
            return Err(bad(format!(
                "tar entry {} points outside the version directory",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| bad(format!("tar link {} has a bad target: {e}", path.display())))?
                    .ok_or_else(|| bad(format!("tar link {} has no target", path.display())))?
                    .into_owned();
                // A symlink resolves from its own directory, a hard link from the root.
                let resolved = if kind == tar::EntryType::Symlink {
                    path.parent().unwrap_or(Path::new("")).join(&target)
                } else {
                    target.clone()
                };
                if !inside(&resolved) {
                    return Err(bad(format!(
                        "tar link {} -> {} points outside the version directory",
                        path.display(),
                        target.display()
                    )));
                }
            }
            // pax/GNU headers carrying long names are read by the tar crate itself.
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(bad(format!(
                    "tar entry {} is a {other:?}; app payloads hold files, directories and links only",
                    path.display()
                )));
            }
        }
        let unpacked = entry.unpack_in(into).map_err(|e| {
            let detail = error_chain(&e);
            let reason = if is_enospc(&e) {
                "disk_full"
            } else {
                "io_error"
            };
            InstallError::new(
                reason,
                format!("cannot unpack {}: {detail}", path.display()),
            )
        })?;
        if !unpacked {
            return Err(bad(format!("tar entry {} was refused", path.display())));
        }
    }
    Ok(())
}

impl Installer for AppInstaller {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn install(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        let name = &ctx.manifest.name;
        let version = &ctx.manifest.version;
        // Remember what runs now, once: a repeated install (after a crash)
        // must not overwrite it.
        let prev_file = Self::previous_file(ctx.work_dir, name);
        if Self::load_previous(ctx.work_dir, name)?.is_none() {
            drover_fs::ensure_dir(ctx.work_dir, 0o700)
                .map_err(|e| InstallError::io("cannot create the work directory", &e))?;
            let prev = Previous {
                version: self.current_version(name).filter(|v| v != version),
            };
            drover_fs::write_atomic(
                &prev_file,
                &serde_json::to_vec(&prev).expect("serializes"),
                0o600,
            )
            .map_err(|e| InstallError::io("cannot record the running version", &e))?;
        }
        let dir = self.app_dir(name);
        drover_fs::ensure_dir(&dir, 0o755)
            .map_err(|e| InstallError::io(&format!("cannot create {}", dir.display()), &e))?;
        let target = dir.join(version);
        if target.is_dir() {
            return Ok(());
        }
        let tmp = dir.join(format!(".tmp-{version}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| InstallError::io(&format!("cannot clear {}", tmp.display()), &e))?;
        }
        std::fs::create_dir(&tmp)
            .map_err(|e| InstallError::io(&format!("cannot create {}", tmp.display()), &e))?;
        let result = self
            .unpack(ctx, &tmp)
            .and_then(|_| {
                sync_tree(&tmp).map_err(|e| InstallError::io("cannot sync the new version", &e))
            })
            .and_then(|_| {
                std::fs::rename(&tmp, &target)
                    .and_then(|_| sync_dir(&dir))
                    .map_err(|e| {
                        InstallError::io(
                            &format!("cannot move the new version to {}", target.display()),
                            &e,
                        )
                    })
            });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    fn activate(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let name = &ctx.manifest.name;
        let version = &ctx.manifest.version;
        if !self.app_dir(name).join(version).is_dir() {
            return Err(InstallError::new(
                "install_incomplete",
                format!("{name} {version} is not installed; cannot activate it"),
            ));
        }
        // Before switching: a rollback must switch back even after a crash
        // right after the rename.
        drover_fs::write_atomic(&Self::activated_marker(ctx.work_dir, name), b"", 0o600)
            .map_err(|e| InstallError::io("cannot record the activation", &e))?;
        self.switch(name, Some(version))?;
        self.restart(name, version)?;
        Ok(Activation::Done)
    }

    fn confirm_activated(&self, ctx: &InstallContext<'_>) -> Result<bool, InstallError> {
        Ok(self.current_version(&ctx.manifest.name).as_deref()
            == Some(ctx.manifest.version.as_str()))
    }

    fn commit(&self, ctx: &InstallContext<'_>) -> Result<(), InstallError> {
        let name = &ctx.manifest.name;
        let version = &ctx.manifest.version;
        let previous = Self::load_previous(ctx.work_dir, name)?.and_then(|p| p.version);
        let dir = self.app_dir(name);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| InstallError::io(&format!("cannot list {}", dir.display()), &e))?;
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == CURRENT || n == *version || Some(&n) == previous.as_ref() {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove an old app version");
                }
            } else if n.starts_with(".current.tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Keep the payload as the base for the next delta.
        drover_fs::ensure_dir(&self.base_dir, 0o700)
            .map_err(|e| InstallError::io("cannot create the delta base directory", &e))?;
        let base = self.base_dir.join(format!("{name}.payload"));
        let tmp = self.base_dir.join(format!(".{name}.payload.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(ctx.payload_path, &tmp)
            .or_else(|_| std::fs::copy(ctx.payload_path, &tmp).map(|_| ()))
            .and_then(|_| std::fs::rename(&tmp, &base))
            .and_then(|_| sync_dir(&self.base_dir))
            .map_err(|e| InstallError::io("cannot keep the payload as the delta base", &e))?;
        Ok(())
    }

    fn rollback(&self, ctx: &InstallContext<'_>) -> Result<Activation, InstallError> {
        let name = &ctx.manifest.name;
        let version = &ctx.manifest.version;
        let Some(prev) = Self::load_previous(ctx.work_dir, name)? else {
            // `install` never started: nothing changed.
            return Ok(Activation::Done);
        };
        let dir = self.app_dir(name);
        if Self::activated_marker(ctx.work_dir, name).exists() {
            self.switch(name, prev.version.as_deref())?;
            if let Some(v) = &prev.version {
                self.restart(name, v)?;
            }
        }
        if prev.version.as_deref() != Some(version.as_str()) {
            for p in [dir.join(version), dir.join(format!(".tmp-{version}"))] {
                match std::fs::remove_dir_all(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(InstallError::io(
                            &format!("cannot remove {}", p.display()),
                            &e,
                        ));
                    }
                }
            }
        }
        Ok(Activation::Done)
    }

    fn installed_version(&self, name: &str) -> Option<String> {
        self.current_version(name)
    }

    fn installed_payload(&self, name: &str) -> Option<PathBuf> {
        let p = self.base_dir.join(format!("{name}.payload"));
        p.is_file().then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_root_are_recognised() {
        assert!(inside(Path::new("a/b/../c")));
        assert!(inside(Path::new("./a")));
        assert!(!inside(Path::new("../a")));
        assert!(!inside(Path::new("a/../../b")));
        assert!(!inside(Path::new("/etc/passwd")));
    }
}
