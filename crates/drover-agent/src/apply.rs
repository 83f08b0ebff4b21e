//! Applying a desired configuration on the device: write it as a JSON object
//! where local software reads it, then run the optional apply hook. The hook
//! decides success (exit 0); its output tail becomes the reported error.

use std::path::PathBuf;
use std::time::Duration;

use drover_proto::device::Document;

/// How the desired configuration takes effect.
#[derive(Debug, Clone)]
pub enum Applier {
    /// A real device: a file and an optional hook.
    Files {
        desired_file: PathBuf,
        hook: Option<PathBuf>,
        hook_timeout: Duration,
    },
    /// A simulated device: succeeds unless the configuration sets
    /// `sim.fail_apply` to `true`.
    Simulated,
}

impl Applier {
    /// Applies `config`; on failure the file is put back to `previous` (the
    /// configuration still in effect), so local software never reads a
    /// configuration the device reports as not applied.
    pub async fn apply(
        &self,
        revision: &str,
        config: &Document,
        previous: &Document,
    ) -> Result<(), String> {
        match self {
            Applier::Simulated => {
                if config.get("sim.fail_apply").map(String::as_str) == Some("true") {
                    Err("simulated failure (sim.fail_apply = true)".into())
                } else {
                    Ok(())
                }
            }
            Applier::Files {
                desired_file,
                hook,
                hook_timeout,
            } => {
                let body = serde_json::to_vec_pretty(config).expect("serializes");
                if let Some(dir) = desired_file.parent() {
                    drover_fs::ensure_dir(dir, 0o755)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                drover_fs::write_atomic(desired_file, &body, 0o644)
                    .map_err(|e| format!("cannot write {}: {e}", desired_file.display()))?;
                let Some(hook) = hook else { return Ok(()) };
                let result = run_hook(hook, desired_file, revision, *hook_timeout).await;
                if result.is_err() {
                    let back = serde_json::to_vec_pretty(previous).expect("serializes");
                    if let Err(e) = drover_fs::write_atomic(desired_file, &back, 0o644) {
                        tracing::error!(error = %e, "cannot restore the previous desired configuration");
                    }
                }
                result
            }
        }
    }
}

async fn run_hook(
    hook: &PathBuf,
    desired_file: &PathBuf,
    revision: &str,
    timeout: Duration,
) -> Result<(), String> {
    let child = tokio::process::Command::new(hook)
        .env("DROVER_DESIRED_FILE", desired_file)
        .env("DROVER_REVISION", revision)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run apply hook {}: {e}", hook.display()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "apply hook {} did not finish within {timeout:?}",
            hook.display()
        )),
        Ok(Err(e)) => Err(format!("apply hook {} failed: {e}", hook.display())),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            });
            let tail: String = text
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!(
                "apply hook {} exited with {}: {}",
                hook.display(),
                out.status,
                tail.trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn writes_the_file_and_reports_hook_failures() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, "#!/bin/sh\ngrep -q '\"mode\": \"good\"' \"$DROVER_DESIRED_FILE\" || { echo \"bad mode in $DROVER_REVISION\" >&2; exit 3; }\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("etc/desired.json");
        let a = Applier::Files {
            desired_file: file.clone(),
            hook: Some(hook),
            hook_timeout: Duration::from_secs(10),
        };
        let good: Document = [("mode".to_string(), "good".to_string())].into();
        a.apply("r1", &good, &Document::new()).await.unwrap();
        let written: Document = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(written, good);
        let bad: Document = [("mode".to_string(), "bad".to_string())].into();
        let err = a.apply("r2", &bad, &good).await.unwrap_err();
        assert!(
            err.contains("exited") && err.contains("bad mode in r2"),
            "{err}"
        );
        let after: Document = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(
            after, good,
            "a failed apply leaves the configuration in effect"
        );
    }
}
