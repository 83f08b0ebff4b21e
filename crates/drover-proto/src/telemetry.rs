//! Telemetry on the control channel (docs/monitoring.md): metric points and
//! events buffered on the device, sent in batches, acknowledged by the
//! server, and only then deleted on the device.
//!
//! Every record carries the boot it was made in, a sequence number that
//! increases by one per record within that boot, the wall-clock time the
//! device believed it was, and the monotonic time since boot. The server
//! deduplicates by (device, boot, seq), so resending after a lost ack is
//! harmless, and stores points at their original time.

use serde::{Deserialize, Serialize};

/// Most records in one batch.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Longest metric or event name.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest event message.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 1024;
/// Most labels on one record.
pub const MAX_LABELS: usize = 8;

/// How much the device trusted its wall clock when it made a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockQuality {
    /// NTP-synchronised (or otherwise known good).
    Synced,
    /// Made while the clock was wrong and corrected afterwards from the
    /// monotonic time and a later good reading.
    Corrected,
    /// The clock was not known to be right and could not be corrected.
    Unsynced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Dropped first when the buffer is full (routine metrics).
    Low,
    Normal,
    /// Dropped last (events such as crashes, rule actions).
    High,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordBody {
    Metric {
        name: String,
        value: f64,
    },
    Event {
        name: String,
        /// `info`, `warning` or `critical`.
        severity: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// Wall-clock Unix milliseconds (after any correction).
    pub time_ms: i64,
    /// Milliseconds since boot (CLOCK_BOOTTIME).
    pub mono_ms: u64,
    pub clock: ClockQuality,
    pub priority: Priority,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// What was recorded (nested rather than flattened so unknown fields
    /// are still refused).
    pub body: RecordBody,
}

/// Body of `AgentMessage::Telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryBatch {
    /// The boot the records were made in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Records in increasing `seq` order.
    pub records: Vec<Record>,
    /// Records dropped on the device because its buffer was full, since the
    /// last batch the server acknowledged (never silent).
    #[serde(default)]
    pub dropped: u64,
}

/// Body of `ServerMessage::TelemetryAck`: every record of `boot_id` with
/// `seq <= up_to_seq` is stored (or was a duplicate) and may be deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryAck {
    pub boot_id: String,
    pub up_to_seq: u64,
    /// Records refused (bad name, NaN, out of the accepted time window,
    /// over the cardinality limit), with the reason, so the device can log
    /// them; they count as acknowledged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    pub seq: u64,
    pub reason: String,
}
