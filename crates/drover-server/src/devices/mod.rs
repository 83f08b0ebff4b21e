//! Devices: enrollment, live connections, presence and desired state.
//!
//! [`Devices`] is the one place that decides what a device is allowed to
//! be: it verifies CSRs and enrollment tokens, issues device certificates
//! from the fleet CA, keeps the registry of live control channels, and
//! computes each device's effective desired configuration (its groups'
//! documents, then its own). The HTTP layers (`api::device_endpoints` for
//! devices, `api::devices` for operators) only translate.
//!
//! It must never trust anything a device says about its identity: the id
//! always comes from the verified certificate's key.

pub mod channel;
pub mod enrollment;
pub mod registry;
pub mod rules;
pub mod telemetry;
pub mod updates;

use std::sync::Arc;
use std::time::Duration;

use drover_proto::device::Document;
use drover_query::{DeviceView, Query};

use crate::pki::FleetCa;
use crate::store::{DeviceRecord, GroupRecord, Store, StoreResult};

pub use registry::Registry;

/// Timings and limits of the device side.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// How often agents send a heartbeat.
    pub heartbeat_interval: Duration,
    /// A device silent for this long is offline; its connection is closed.
    pub offline_after: Duration,
    /// Lifetime of issued device certificates.
    pub cert_validity: Duration,
    /// Connection and enrollment attempts allowed per source address per second.
    pub connects_per_ip_per_sec: u32,
    /// How often presence (`last_seen`) is written to the database.
    pub presence_flush_interval: Duration,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            heartbeat_interval: Duration::from_secs(30),
            offline_after: Duration::from_secs(90),
            cert_validity: Duration::from_secs(90 * 24 * 3600),
            connects_per_ip_per_sec: 50,
            presence_flush_interval: Duration::from_secs(10),
        }
    }
}

/// The device side of the control plane.
pub struct Devices {
    pub store: Arc<dyn Store>,
    pub ca: Arc<FleetCa>,
    pub registry: Registry,
    pub settings: DeviceSettings,
    pub limiter: registry::RateLimiter,
    /// Set while the server stops: presence was flushed in one batch.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// The groups, read once and kept until a group changes: every connect
    /// and push needs them, and a reconnect storm must not turn into one
    /// database read per device. (With replicas this becomes a cache
    /// invalidated over NATS.)
    groups: std::sync::RwLock<Option<Arc<Vec<GroupRecord>>>>,
    /// Each device's release target, cached the same way (see [`updates`]).
    targets: std::sync::RwLock<Option<Arc<updates::Targets>>>,
    /// The stored rule sets, cached the same way (see [`rules`]).
    rule_sets: std::sync::RwLock<Option<Arc<rules::RuleSets>>>,
    /// Telemetry checks, the ingestion queue and its writer (see [`telemetry`]).
    pub telemetry: telemetry::Ingest,
}

/// A device's effective desired configuration and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub revision: String,
    pub config: Document,
    /// Groups the device is a member of, by name.
    pub groups: Vec<String>,
    /// The release the device should run (its deployment's target).
    pub update: Option<drover_proto::device::UpdateTarget>,
    /// The rule set the device should run (see [`rules`]).
    pub rules: Option<drover_proto::device::RuleSetTarget>,
}

/// Revision of a configuration: short hex SHA-256 of its canonical JSON, so
/// equal configurations have equal revisions wherever they were computed.
pub fn revision_of(config: &Document) -> String {
    let digest = crate::auth::sha256_hex(&drover_proto::device::canonical_json(config));
    digest[..16].to_string()
}

/// Whether `device` belongs to `group` (static member or query match).
pub fn is_member(group: &GroupRecord, device: &DeviceRecord, connection: &str) -> bool {
    if group.members.iter().any(|m| m == &device.id) {
        return true;
    }
    let Some(q) = &group.query else { return false };
    match Query::parse(q) {
        Ok(query) => query.matches(&view(device, connection, &[])),
        Err(_) => false,
    }
}

/// The query-language view of a device.
pub fn view<'a>(
    device: &'a DeviceRecord,
    connection: &'a str,
    groups: &'a [String],
) -> DeviceView<'a> {
    DeviceView {
        id: &device.id,
        connection,
        enrollment: device.enrollment.as_str(),
        tags: &device.tags,
        inventory: &device.inventory,
        groups,
    }
}

/// Groups (in name order) overlaid, then the device's own document.
pub fn effective(device: &DeviceRecord, groups: &[GroupRecord], connection: &str) -> Effective {
    let mut config = Document::new();
    let mut names = Vec::new();
    for g in groups.iter().filter(|g| is_member(g, device, connection)) {
        names.push(g.name.clone());
        config.extend(g.desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    config.extend(device.desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    Effective {
        revision: revision_of(&config),
        config,
        groups: names,
        update: None,
        rules: None,
    }
}

impl Devices {
    pub fn new(store: Arc<dyn Store>, ca: Arc<FleetCa>, settings: DeviceSettings) -> Devices {
        Devices {
            limiter: registry::RateLimiter::new(settings.connects_per_ip_per_sec),
            store,
            ca,
            registry: Registry::default(),
            settings,
            shutting_down: Default::default(),
            groups: Default::default(),
            targets: Default::default(),
            rule_sets: Default::default(),
            telemetry: telemetry::Ingest::new(Default::default()),
        }
    }

    /// When the device was last heard from: live for a connected device,
    /// else as stored.
    pub fn last_seen(&self, device: &DeviceRecord) -> Option<i64> {
        match self.registry.get(&device.id) {
            Some(c) => Some(c.last_seen.load(std::sync::atomic::Ordering::Relaxed)),
            None => device.last_seen,
        }
    }

    /// `online` or `offline`, from the live registry.
    pub fn connection(&self, id: &str) -> &'static str {
        if self.registry.is_online(id) {
            "online"
        } else {
            "offline"
        }
    }

    /// Reads a device, lets `change` edit it, and writes it back if it
    /// changed, retrying when another writer got there first.
    pub async fn update_device(
        &self,
        id: &str,
        change: impl Fn(&mut DeviceRecord) -> bool,
    ) -> StoreResult<Option<DeviceRecord>> {
        for _ in 0..8 {
            let Some(mut device) = self.store.get_device(id).await? else {
                return Ok(None);
            };
            let version = device.version;
            if !change(&mut device) {
                return Ok(Some(device));
            }
            device.updated_at = crate::clock::now_ms();
            let put = crate::store::Change::PutDevice {
                device: device.clone(),
                expected_version: Some(version),
            };
            if self.store.apply(&[put], None).await? {
                device.version = version + 1;
                return Ok(Some(device));
            }
        }
        Err(crate::store::StoreError::Conflict(format!(
            "device {id} is being changed by many writers at once; try again"
        )))
    }

    /// The groups, from the cache or the database.
    pub async fn groups(&self) -> StoreResult<Arc<Vec<GroupRecord>>> {
        if let Some(g) = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(g);
        }
        let loaded = Arc::new(self.store.list_groups().await?);
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        Ok(loaded)
    }

    /// Forgets the cached groups; call after any change to a group.
    pub fn groups_changed(&self) {
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Sends each connected device (or just `only`) its desired
    /// configuration if it changed since the last push.
    pub async fn reconcile(&self, only: Option<&str>) -> StoreResult<usize> {
        let groups = self.groups().await?;
        let ids: Vec<String> = match only {
            Some(id) => vec![id.to_string()],
            None => self.registry.online_ids(),
        };
        let mut pushed = 0;
        for id in ids {
            let Some(conn) = self.registry.get(&id) else {
                continue;
            };
            let Some(device) = self.store.get_device(&id).await? else {
                continue;
            };
            let eff = self.effective_full(&device, &groups, "online").await?;
            if conn.push_desired_if_changed(&eff) {
                pushed += 1;
            }
        }
        Ok(pushed)
    }

    /// Writes the registry's last-seen times to the database.
    pub async fn flush_presence(&self) {
        let seen = self.registry.last_seen_all();
        if let Err(e) = self.store.touch_devices(&seen).await {
            tracing::warn!(error = %e, "could not record device presence");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Enrollment;

    fn device(id: &str, tags: &[(&str, &str)]) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            public_key: String::new(),
            enrollment: Enrollment::Accepted,
            hostname: None,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            inventory: Document::new(),
            inventory_hash: None,
            desired: [("log_level".to_string(), "debug".to_string())].into(),
            reported: None,
            agent_version: None,
            cert_serial: None,
            cert_not_after: None,
            enrolled_via: None,
            created_at: 0,
            updated_at: 0,
            last_seen: None,
            version: 1,
        }
    }

    fn group(
        name: &str,
        query: Option<&str>,
        members: &[&str],
        desired: &[(&str, &str)],
    ) -> GroupRecord {
        GroupRecord {
            name: name.into(),
            query: query.map(str::to_string),
            members: members.iter().map(|m| m.to_string()).collect(),
            desired: desired
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: 0,
            updated_at: 0,
            version: 1,
        }
    }

    #[test]
    fn groups_overlay_in_name_order_and_the_device_wins() {
        let d = device("d1", &[("region", "eu")]);
        let groups = vec![
            group(
                "a-all",
                Some("status = online"),
                &[],
                &[("ntp", "pool"), ("log_level", "info"), ("timezone", "UTC")],
            ),
            group(
                "b-eu",
                Some(r#"tag.region = "eu""#),
                &[],
                &[("ntp", "eu.pool")],
            ),
            group(
                "c-us",
                Some(r#"tag.region = "us""#),
                &[],
                &[("ntp", "us.pool")],
            ),
            group("d-static", None, &["d1"], &[("feature", "on")]),
        ];
        let eff = effective(&d, &groups, "online");
        assert_eq!(eff.groups, ["a-all", "b-eu", "d-static"]);
        assert_eq!(eff.config["ntp"], "eu.pool");
        assert_eq!(
            eff.config["log_level"], "debug",
            "device document overrides groups"
        );
        assert_eq!(eff.config["feature"], "on");
        let offline = effective(&d, &groups, "offline");
        assert_ne!(
            offline.revision, eff.revision,
            "membership by status changes the result"
        );
        assert_eq!(revision_of(&eff.config), eff.revision);
    }
}
