//! `drover sim`: many virtual devices in one process, each with its own key
//! and certificate, speaking the real protocol over real TLS through the
//! same code as `drover-agent` (the `drover-agent` library). Only the
//! device's surroundings are simulated: configuration is "applied" in
//! memory and the inventory is a fixed document.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_agent::apply::Applier;
use drover_agent::backoff::{Backoff, random_unit};
use drover_agent::enroll::{fetch_pinned_ca, request_certificate};
use drover_agent::identity::{Identity, ServerInfo};
use drover_agent::session::{Agent, InventorySource, Stats};
use drover_proto::api::{CreateEnrollToken, CreatedEnrollToken};
use drover_proto::device::{Document, EnrollStatus, EnrollmentToken};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use crate::cli::{GlobalArgs, SimArgs};
use crate::error::{CliError, CliResult};
use crate::output;

/// What the simulator reports.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SimReport {
    pub devices: u64,
    pub enrolled: u64,
    pub enroll_failures: u64,
    pub enroll_secs: f64,
    pub connected: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub applied: u64,
    pub churned: u64,
    pub elapsed_secs: f64,
}

/// A running simulated fleet.
pub struct Fleet {
    pub stats: Vec<Arc<Stats>>,
    stops: Vec<std::sync::Mutex<watch::Sender<bool>>>,
    global_stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    pub enrolled_report: SimReport,
    churned: Arc<std::sync::atomic::AtomicU64>,
}

/// Source address for device `i` when spreading over loopback: 127.0.x.y.
fn spread_addr(i: u64) -> IpAddr {
    let n = i % 50_000;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        (1 + n / 250) as u8,
        (1 + n % 250) as u8,
    ))
}

fn is_loopback_url(url: &str) -> bool {
    drover_agent::https::host_port(url)
        .ok()
        .and_then(|(h, _)| h.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// Resolves the enrollment token: given, or created with the API token.
async fn enrollment_token(args: &SimArgs, g: &GlobalArgs) -> CliResult<EnrollmentToken> {
    if let Some(t) = &args.enroll_token {
        return EnrollmentToken::decode(t).map_err(CliError::usage);
    }
    let client = super::connect(g)?;
    let mut tags: Document = args.tags.iter().cloned().collect();
    tags.entry("sim".into()).or_insert_with(|| "true".into());
    let created: CreatedEnrollToken = client
        .post(
            "/api/v1/enroll-tokens",
            &CreateEnrollToken {
                name: Some("drover-sim".into()),
                tags,
                uses: Some(args.devices),
                expires_in_secs: Some(24 * 3600),
            },
        )
        .await?;
    EnrollmentToken::decode(&created.token).map_err(CliError::failed)
}

/// A real update engine for simulated device `i`: its own data folder, the
/// `app` installer (no restart command), downloads over the device's mTLS.
fn sim_update_engine(
    dir: &std::path::Path,
    i: u64,
    identity: &Identity,
    bind: Option<std::net::IpAddr>,
    args: &SimArgs,
    token: &EnrollmentToken,
) -> CliResult<drover_agent::update::engine::UpdateHandle> {
    use drover_agent::update::config::UpdateConfig;
    use drover_agent::update::download::MtlsSource;
    use drover_agent::update::engine::{EngineParts, UpdateHandle};
    let data = dir.join(format!("sim-{i:05}"));
    drover_server::fsutil::ensure_dir(&data, 0o700)
        .map_err(|e| CliError::failed(format!("{}: {e}", data.display())))?;
    let mut roots = args.release_roots.clone();
    roots.extend(token.release_roots.iter().cloned());
    let config = UpdateConfig {
        device_type: args.device_type.clone(),
        release_root_keys: roots,
        min_free_bytes: 0,
        ..Default::default()
    };
    let id = identity.clone();
    let parts = EngineParts {
        installers: vec![Box::new(drover_agent::update::app::AppInstaller::new(
            &config, &data,
        ))],
        data_dir: data,
        config,
        source: Arc::new(MtlsSource {
            url: identity.server.url.clone(),
            tls: Box::new(move || id.tls()),
            bind,
        }),
        connected: watch::channel(false).1,
        proc_dir: "/proc".into(),
    };
    UpdateHandle::spawn(parts, vec![])
        .map_err(|e| CliError::failed(format!("simulated device {i}: {e}")))
}

/// Enrolls `n` devices and starts them. Returns once all are enrolled.
pub async fn start_fleet(
    token: &EnrollmentToken,
    args: &SimArgs,
    show_progress: bool,
) -> CliResult<Fleet> {
    let url = token.url.clone();
    let ca_pem = fetch_pinned_ca(&url, &token.ca).await.map_err(|e| {
        CliError::new(
            crate::error::Kind::Unreachable,
            "unreachable",
            e.to_string(),
        )
    })?;
    let spread = args.spread_addresses && is_loopback_url(&url);
    let bar = if show_progress {
        let b = indicatif::ProgressBar::new(args.devices);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "enrolling {bar:40} {pos}/{len} devices ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let sem = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut enrolling = tokio::task::JoinSet::new();
    for i in 0..args.devices {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let (url, ca_pem, secret, bar) = (
            url.clone(),
            ca_pem.clone(),
            token.secret.clone(),
            bar.clone(),
        );
        let fingerprint = token.ca.clone();
        enrolling.spawn(async move {
            let _permit = permit;
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let hostname = format!("sim-{i:05}");
            let mut last = String::new();
            for attempt in 0..5u32 {
                match request_certificate(&url, &ca_pem, &key, Some(secret.clone()), Some(hostname.clone())).await {
                    Ok(r) if r.status == EnrollStatus::Accepted => {
                        bar.inc(1);
                        let now = drover_agent::enroll::now_ms();
                        return Ok((i, Identity {
                            device_id: r.device_id,
                            server: ServerInfo { url, ca_fingerprint: fingerprint, cert_expires_at_ms: r.certificate_expires_at_ms, cert_received_at_ms: Some(now) },
                            key: Arc::new(key),
                            cert_pem: r.certificate_pem.unwrap_or_default(),
                            ca_pem,
                        }));
                    }
                    Ok(_) => return Err("enrolled as pending: the token must accept devices".to_string()),
                    Err(drover_agent::enroll::EnrollError::Refused { code, message }) if code != "rate_limited" && code != "busy" => {
                        return Err(format!("{code}: {message}"));
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
            }
            Err(last)
        });
    }
    let mut identities = Vec::with_capacity(args.devices as usize);
    let mut failures = 0u64;
    let mut first_error = None;
    while let Some(r) = enrolling.join_next().await {
        match r {
            Ok(Ok(pair)) => identities.push(pair),
            Ok(Err(e)) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    bar.finish_and_clear();
    if identities.is_empty() {
        return Err(CliError::failed(format!(
            "no device could enroll: {}",
            first_error.unwrap_or_default()
        )));
    }
    if let Some(e) = &first_error {
        eprintln!("warning: {failures} devices failed to enroll; first error: {e}");
    }
    identities.sort_by_key(|(i, _)| *i);
    let enroll_secs = started.elapsed().as_secs_f64();

    let (global_stop, _) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut stats = Vec::new();
    let mut stops = Vec::new();
    for (i, identity) in identities {
        let st = Arc::new(Stats::default());
        let (tx, rx) = watch::channel(false);
        stats.push(st.clone());
        stops.push(std::sync::Mutex::new(tx));
        let bind = spread.then(|| spread_addr(i));
        let inventory: Document = [
            ("hostname".to_string(), format!("sim-{i:05}")),
            ("arch".to_string(), std::env::consts::ARCH.to_string()),
            (
                "agent.version".to_string(),
                drover_agent::AGENT_VERSION.to_string(),
            ),
            ("os.id".to_string(), "drover-sim".to_string()),
        ]
        .into();
        let update = match &args.updates_dir {
            Some(dir) => Some(sim_update_engine(dir, i, &identity, bind, args, token)?),
            // Without it, simulated devices answer updates `updates_disabled`.
            None => None,
        };
        let mut agent = Agent {
            identity,
            applier: Applier::Simulated,
            inventory: InventorySource::Fixed(inventory),
            inventory_interval: Duration::from_secs(3600),
            state: Default::default(),
            persist: None,
            bind,
            backoff: Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(args.reconnect_max_secs.max(1)),
            ),
            renew_at_fraction_left: 1.0 / 3.0,
            stats: st,
            update,
            // Simulated devices send no telemetry.
            telemetry: None,
            rules: None,
        };
        let mut global = global_stop.subscribe();
        tasks.spawn(async move {
            let mut rx = rx;
            loop {
                agent.run(rx.clone()).await;
                if *global.borrow() {
                    return;
                }
                // Churned: stay away a moment, then come back.
                let _ = rx.changed().await;
                if *global.borrow_and_update() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis((random_unit() * 2000.0) as u64)).await;
                rx.borrow_and_update();
            }
        });
    }
    Ok(Fleet {
        stats,
        stops,
        global_stop,
        tasks,
        enrolled_report: SimReport {
            devices: args.devices,
            enrolled: args.devices - failures,
            enroll_failures: failures,
            enroll_secs,
            ..Default::default()
        },
        churned: Default::default(),
    })
}

impl Fleet {
    pub fn report(&self, started: Instant) -> SimReport {
        let mut r = self.enrolled_report.clone();
        for s in &self.stats {
            r.connected += u64::from(s.connected.load(Ordering::Relaxed));
            r.connects += s.connects.load(Ordering::Relaxed);
            r.disconnects += s.failures.load(Ordering::Relaxed);
            r.applied += s.applied.load(Ordering::Relaxed);
        }
        r.churned = self.churned.load(Ordering::Relaxed);
        r.elapsed_secs = started.elapsed().as_secs_f64();
        r
    }

    /// Disconnects device `i`; it reconnects after a short random pause.
    pub fn churn(&self, i: usize) {
        if let Some(tx) = self.stops.get(i) {
            let tx = tx.lock().unwrap_or_else(|p| p.into_inner());
            let _ = tx.send(true);
            let _ = tx.send(false);
            self.churned.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub async fn stop(mut self) {
        let _ = self.global_stop.send(true);
        for tx in &self.stops {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(true);
        }
        while self.tasks.join_next().await.is_some() {}
    }
}

pub async fn run(args: SimArgs, g: &GlobalArgs) -> CliResult<()> {
    if !(0.0..=1.0).contains(&args.churn_per_min) {
        return Err(CliError::usage(
            "--churn-per-min is a share of the fleet per minute, from 0 to 1",
        ));
    }
    let token = enrollment_token(&args, g).await?;
    let started = Instant::now();
    let fleet = start_fleet(&token, &args, !g.json).await?;
    if !g.json {
        println!(
            "{} devices enrolled in {:.1}s; connecting to {} (Ctrl-C to stop)",
            fleet.enrolled_report.enrolled, fleet.enrolled_report.enroll_secs, token.url
        );
    }
    let deadline = args.duration_secs.map(|s| started + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut churn_debt = 0.0;
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        churn_debt += args.churn_per_min * fleet.stats.len() as f64 / 60.0;
        while churn_debt >= 1.0 {
            churn_debt -= 1.0;
            fleet.churn((random_unit() * fleet.stats.len() as f64) as usize);
        }
        if !g.json && last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let r = fleet.report(started);
            println!(
                "{:>6.0}s  connected {}/{}  connects {}  disconnects {}  configs applied {}",
                r.elapsed_secs, r.connected, r.enrolled, r.connects, r.disconnects, r.applied
            );
        }
    }
    let report = fleet.report(started);
    fleet.stop().await;
    if g.json {
        output::json(&report)
    } else {
        println!(
            "done: {} devices, {} connects, {} disconnects, {} configurations applied in {:.0}s",
            report.enrolled,
            report.connects,
            report.disconnects,
            report.applied,
            report.elapsed_secs
        );
        Ok(())
    }
}
