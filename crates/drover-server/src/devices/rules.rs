//! The rules side of [`Devices`]: which agent-side rule set each device
//! runs (docs/rules.md), folded into the desired state the control channel
//! pushes.
//!
//! Precedence: the device's own rule set, else the set of the first group
//! it is a member of in group-name order; sets are never merged. The
//! revision of the desired state covers the chosen set's source and text,
//! so storing a new set pushes it even when nothing else changed.
//!
//! Sets are cached like groups and targets (every connect needs them) and
//! the cache is dropped whenever one is stored or deleted. This module
//! never parses a set: the API did that before storing it, and the device
//! does it again.

use std::collections::HashMap;
use std::sync::Arc;

use drover_proto::device::RuleSetTarget;

use super::{Devices, Effective};
use crate::store::{DeviceRecord, GroupRecord, StoreResult};

/// Scope (`group:NAME`, `device:ID`) → the set and the SHA-256 of its text.
pub type RuleSets = HashMap<String, (Arc<RuleSetTarget>, String)>;

/// The scope key of a group's rule set.
pub fn group_scope(name: &str) -> String {
    format!("group:{name}")
}

/// The scope key of a device's own rule set.
pub fn device_scope(id: &str) -> String {
    format!("device:{id}")
}

/// The set a device runs: its own, else its first group's (in the order
/// of `groups`, which is name order).
pub fn effective_rules<'a>(
    sets: &'a RuleSets,
    device_id: &str,
    groups: &[String],
) -> Option<&'a (Arc<RuleSetTarget>, String)> {
    sets.get(&device_scope(device_id))
        .or_else(|| groups.iter().find_map(|g| sets.get(&group_scope(g))))
}

impl Devices {
    /// Every stored rule set, from the cache or the database.
    pub async fn rule_sets(&self) -> StoreResult<Arc<RuleSets>> {
        if let Some(s) = self
            .rule_sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(s);
        }
        let sets: RuleSets = self
            .store
            .list_rule_sets()
            .await?
            .into_iter()
            .map(|r| {
                let target = RuleSetTarget {
                    source: r.scope.clone(),
                    version: r.version,
                    text: r.text,
                };
                (r.scope, (Arc::new(target), r.sha256))
            })
            .collect();
        let sets = Arc::new(sets);
        *self.rule_sets.write().unwrap_or_else(|p| p.into_inner()) = Some(sets.clone());
        Ok(sets)
    }

    /// Forgets the cached rule sets; call after storing or deleting one.
    pub fn rule_sets_changed(&self) {
        *self.rule_sets.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The whole desired state: configuration, release target and rule
    /// set, with a revision that covers all three.
    pub async fn effective_full(
        &self,
        device: &DeviceRecord,
        groups: &[GroupRecord],
        connection: &str,
    ) -> StoreResult<Effective> {
        let mut eff = self
            .effective_with_update(device, groups, connection)
            .await?;
        let sets = self.rule_sets().await?;
        if let Some((target, sha)) = effective_rules(&sets, &device.id, &eff.groups) {
            let digest = crate::auth::sha256_hex(
                format!("{}+rules:{}:{sha}", eff.revision, target.source).as_bytes(),
            );
            eff.revision = digest[..16].to_string();
            eff.rules = Some((**target).clone());
        }
        Ok(eff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(scope: &str) -> (String, (Arc<RuleSetTarget>, String)) {
        (
            scope.to_string(),
            (
                Arc::new(RuleSetTarget {
                    source: scope.into(),
                    version: "1".into(),
                    text: "version = 1\n".into(),
                }),
                "h".into(),
            ),
        )
    }

    #[test]
    fn the_device_set_wins_then_the_first_group_in_name_order() {
        let mut sets: RuleSets = [set("group:b"), set("group:c")].into_iter().collect();
        let groups = vec!["a".to_string(), "b".into(), "c".into()];
        let pick = |sets: &RuleSets, groups: &[String]| {
            effective_rules(sets, "d1", groups).map(|(t, _)| t.source.clone())
        };
        assert_eq!(pick(&sets, &groups).as_deref(), Some("group:b"));
        assert_eq!(pick(&sets, &groups[..1]), None, "no group with a set");
        sets.extend([set("device:d1")]);
        assert_eq!(pick(&sets, &groups).as_deref(), Some("device:d1"));
    }
}
