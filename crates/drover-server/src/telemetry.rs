//! Process-wide metrics recorder (Prometheus text at `/metrics`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process's Prometheus recorder, installed on first use. Several
/// in-process servers (tests) share it.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then our handle
            // simply renders nothing, which tests would notice.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Fleet gauges of `/metrics` (docs/monitoring.md, "Fleet metrics"):
/// recomputed every `fleet_gauges_interval` from the live registry and a
/// few grouped counts, never per scrape. Label sets that disappear (the
/// last device of an agent version updated) are set to 0, not left stale.
pub mod fleet {
    use std::collections::BTreeSet;

    use crate::devices::Devices;
    use crate::store::StoreResult;
    use crate::store::alerts::FleetCounts;

    /// Label pairs of one gauge series.
    pub type Labels = Vec<(&'static str, String)>;

    /// (gauge name, labels) published last time.
    pub type Published = BTreeSet<(&'static str, Labels)>;

    /// One refresh: the gauge values it set.
    #[derive(Debug, Clone, Default, PartialEq)]
    pub struct FleetGauges {
        pub values: Vec<(&'static str, Labels, f64)>,
    }

    /// The gauge values of `counts` with `online` devices connected.
    pub fn gauges(counts: &FleetCounts, online: i64) -> FleetGauges {
        let mut v = Vec::new();
        for (enrollment, n) in &counts.by_enrollment {
            // Only accepted devices can hold a control channel.
            let (on, off) = if enrollment == "accepted" {
                let on = online.min(*n);
                (on, n - on)
            } else {
                (0, *n)
            };
            for (conn, count) in [("online", on), ("offline", off)] {
                v.push((
                    "drover_fleet_devices",
                    vec![
                        ("enrollment", enrollment.clone()),
                        ("connection", conn.into()),
                    ],
                    count as f64,
                ));
            }
        }
        for (version, n) in &counts.by_agent_version {
            let version = if version.is_empty() {
                "unknown"
            } else {
                version
            };
            v.push((
                "drover_fleet_agent_versions",
                vec![("version", version.to_string())],
                *n as f64,
            ));
        }
        for (rule, n) in &counts.firing_by_rule {
            v.push((
                "drover_alerts_firing",
                vec![("rule", rule.clone())],
                *n as f64,
            ));
        }
        for (state, n) in &counts.deployment_devices_by_state {
            v.push((
                "drover_fleet_update_devices",
                vec![("state", state.clone())],
                *n as f64,
            ));
        }
        FleetGauges { values: v }
    }

    /// Recomputes and publishes the gauges; `published` remembers label
    /// sets so vanished ones go to 0.
    pub async fn refresh(devices: &Devices, published: &mut Published) -> StoreResult<FleetGauges> {
        let counts = devices.store.fleet_counts().await?;
        let g = gauges(&counts, devices.registry.len() as i64);
        let mut now = Published::new();
        for (name, labels, value) in &g.values {
            let owned: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            metrics::gauge!(*name, &owned).set(*value);
            now.insert((*name, labels.clone()));
        }
        for (name, labels) in published.difference(&now) {
            let owned: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            metrics::gauge!(*name, &owned).set(0.0);
        }
        *published = now;
        Ok(g)
    }

    /// Refreshes every `interval` until `stop`.
    pub async fn run(
        devices: std::sync::Arc<Devices>,
        interval: std::time::Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = Published::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = refresh(&devices, &mut published).await {
                        tracing::warn!(error = %e, "fleet gauges not refreshed; retrying at the next interval");
                    }
                }
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
        }
    }
}
