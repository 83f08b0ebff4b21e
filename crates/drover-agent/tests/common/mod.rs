//! Fixtures for the update tests: a real artifact server on loopback (plain
//! HTTP, Range requests, faults on demand), signed releases, and engines
//! built on temporary directories with the real `app` installer.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use drover_agent::update::config::UpdateConfig;
use drover_agent::update::download::PlainHttpSource;
use drover_agent::update::engine::{Engine, EngineParts, Step};
use drover_proto::device::{UpdateState, UpdateTarget};
use drover_release::keys::KeyRole;
use drover_release::{HealthConfig, KeyPair, Manifest, Payload, PayloadDelta, SignedManifest};
use tokio::sync::watch;

pub const DEVICE_TYPE: &str = "testbox";
pub const APP: &str = "kiosk";

/// What the artifact server does with the next requests.
#[derive(Default)]
pub struct ServerState {
    pub artifacts: HashMap<String, Vec<u8>>,
    /// Close the connection after sending this many body bytes (once).
    pub cut_after: Option<usize>,
    /// Answer 503 to this many requests.
    pub fail_next: u32,
    /// Refuse connections (drop them at once) while true.
    pub down: bool,
    /// Run before answering the next request (fill the disk, …).
    pub before_next: Option<Box<dyn FnOnce() + Send>>,
    /// (path, Range header) of every request answered.
    pub requests: Vec<(String, Option<String>)>,
}

pub struct ArtifactServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<ServerState>>,
}

impl ArtifactServer {
    pub fn start() -> ArtifactServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<ServerState>> = Default::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(&mut conn, &st));
            }
        });
        ArtifactServer { addr, state }
    }

    pub fn publish(&self, data: &[u8]) -> String {
        let sha = drover_release::sha256_hex(data);
        self.state
            .lock()
            .unwrap()
            .artifacts
            .insert(sha.clone(), data.to_vec());
        sha
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(conn: &mut std::net::TcpStream, st: &Mutex<ServerState>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let range = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("range:")
            .map(|v| v.trim().to_string())
    });
    let (hook, reply) = {
        let mut s = st.lock().unwrap();
        if s.down {
            return;
        }
        s.requests.push((path.clone(), range.clone()));
        let hook = s.before_next.take();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            (hook, Err(503))
        } else {
            let sha = path.strip_prefix("/v1/artifacts/").unwrap_or("");
            match s.artifacts.get(sha) {
                None => (hook, Err(404)),
                Some(data) => (hook, Ok((data.clone(), s.cut_after.take()))),
            }
        }
    };
    if let Some(h) = hook {
        h();
    }
    let (data, cut) = match reply {
        Err(code) => {
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return;
        }
        Ok(x) => x,
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (status, body, extra) = match from {
        Some(n) if n >= data.len() => {
            let _ = write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                data.len()
            );
            return;
        }
        Some(n) => (
            "206 Partial Content",
            &data[n..],
            format!(
                "Content-Range: bytes {}-{}/{}\r\n",
                n,
                data.len() - 1,
                data.len()
            ),
        ),
        None => ("200 OK", &data[..], String::new()),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Accept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = match cut {
        Some(c) => &body[..c.min(body.len())],
        None => body,
    };
    for chunk in body.chunks(16 * 1024) {
        if conn.write_all(chunk).is_err() {
            return;
        }
    }
    let _ = conn.flush();
}

/// A device: data dir, app root, restart hook, and a root key it trusts.
pub struct Device {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub apps: PathBuf,
    pub restart_log: PathBuf,
    pub server: ArtifactServer,
    pub root: KeyPair,
    pub connected_tx: watch::Sender<bool>,
    pub config: UpdateConfig,
}

/// An app payload: a shell script exiting `code` when started.
pub fn app_script(version: &str, code: i32) -> Vec<u8> {
    format!("#!/bin/sh\n# kiosk {version}\necho \"kiosk {version} started\"\nexit {code}\n")
        .into_bytes()
}

impl Device {
    pub fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let apps = dir.path().join("apps");
        std::fs::create_dir_all(&data).unwrap();
        let restart_log = dir.path().join("restarts.log");
        let hook = dir.path().join("restart.sh");
        // Starts the app once as a smoke test: a crashing app fails it.
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$DROVER_APP_NAME $DROVER_APP_VERSION $DROVER_APP_DIR\" >> {}\nexec \"$DROVER_APP_DIR/$DROVER_APP_NAME\" > /dev/null\n",
                restart_log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = KeyPair::generate(KeyRole::Root).unwrap();
        let mut config = UpdateConfig {
            device_type: DEVICE_TYPE.into(),
            release_root_keys: vec![root.public().to_string()],
            min_free_bytes: 0,
            health_timeout_secs: 5,
            ..Default::default()
        };
        config.app.root = Some(apps.clone());
        config.app.restart_command = vec![hook.display().to_string()];
        Device {
            dir,
            data,
            apps,
            restart_log,
            server: ArtifactServer::start(),
            root,
            connected_tx: watch::channel(true).0,
            config,
        }
    }

    pub fn parts(&self) -> EngineParts {
        EngineParts {
            data_dir: self.data.clone(),
            config: self.config.clone(),
            installers: drover_agent::update::installers(&self.config, &self.data),
            source: Arc::new(PlainHttpSource {
                addr: self.server.addr,
            }),
            connected: self.connected_tx.subscribe(),
            proc_dir: PathBuf::from("/proc"),
        }
    }

    /// A fresh engine from what is on disk (as after a restart).
    pub fn engine(&self) -> Engine {
        Engine::open(self.parts()).unwrap()
    }

    pub fn manifest(&self, version: &str, payload: &[u8]) -> Manifest {
        let sha = self.server.publish(payload);
        Manifest {
            format: 1,
            name: APP.into(),
            version: version.into(),
            device_types: vec![DEVICE_TYPE.into()],
            created_at: 1_700_000_000,
            expires_at: None,
            payloads: vec![Payload {
                kind: "app".into(),
                sha256: sha,
                size: payload.len() as u64,
                module: None,
                delta: None,
            }],
            health: None,
            provenance: None,
        }
    }

    pub fn target(&self, deployment: &str, m: &Manifest) -> UpdateTarget {
        UpdateTarget {
            deployment_id: deployment.into(),
            manifest: SignedManifest::sign(m, &self.root).unwrap().to_json(),
            key_list: None,
            allow_downgrade: false,
        }
    }

    /// Signs and offers `version` with `payload`, with optional health config.
    pub fn release(
        &self,
        deployment: &str,
        version: &str,
        payload: &[u8],
        health: Option<HealthConfig>,
    ) -> UpdateTarget {
        let mut m = self.manifest(version, payload);
        m.health = health;
        self.target(deployment, &m)
    }

    /// Version `current` points at.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.apps.join(APP).join("current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    pub fn version_dir(&self, v: &str) -> PathBuf {
        self.apps.join(APP).join(v)
    }

    pub fn restarts(&self) -> Vec<String> {
        std::fs::read_to_string(&self.restart_log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// Installs `version` fully (the running version for a test).
    pub async fn install(&self, deployment: &str, version: &str) {
        let mut e = self.engine();
        e.offer(self.release(deployment, version, &app_script(version, 0), None));
        assert_eq!(run_to_end(&mut e).await, UpdateState::Committed);
        assert_eq!(self.current().as_deref(), Some(version));
    }

    pub fn delta(base_version: &str, base: &[u8], patch: &[u8]) -> PayloadDelta {
        PayloadDelta {
            base_version: base_version.into(),
            base_sha256: drover_release::sha256_hex(base),
            sha256: drover_release::sha256_hex(patch),
            size: patch.len() as u64,
        }
    }

    pub fn update_dir(&self) -> PathBuf {
        self.data.join("update")
    }
}

/// Steps until the engine is idle (retrying downloads at once), returning
/// the final state.
pub async fn run_to_end(e: &mut Engine) -> UpdateState {
    for _ in 0..200 {
        match e.step().await {
            Step::Continue | Step::RetryAfter(_) => {}
            Step::Idle => return e.journal().expect("a journal").state,
            other => panic!("unexpected step {other:?}"),
        }
    }
    panic!("the engine did not settle in 200 steps")
}

/// Steps until the journal records `state` (journaled, not yet acted on).
pub async fn run_until(e: &mut Engine, state: UpdateState) {
    for _ in 0..200 {
        if e.journal().map(|j| j.state) == Some(state) {
            return;
        }
        match e.step().await {
            Step::Idle => panic!(
                "the engine went idle in {:?} before reaching {state:?}",
                e.journal().map(|j| j.state)
            ),
            other => assert!(
                matches!(other, Step::Continue | Step::RetryAfter(_)),
                "{other:?}"
            ),
        }
    }
    panic!("never reached {state:?}")
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
