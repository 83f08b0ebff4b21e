//! The offline telemetry buffer: `DATA/telemetry.redb`.
//!
//! Records wait here, in the order they were made, until the server
//! acknowledged them. The buffer is bounded in bytes; when a new record does
//! not fit, the oldest record of the lowest priority present is dropped
//! (low, then normal, then high; a new record is dropped itself when only
//! records of a higher priority are left), and every drop is counted. The
//! count is persisted and sent in the `dropped` field of a batch, and only
//! what an acknowledged batch carried is subtracted: loss is never silent.
//!
//! Layout (redb tables):
//!
//! | table | key → value |
//! |---|---|
//! | `records_low`, `records_normal`, `records_high` | (boot number, seq) → the record as JSON (the wire form) |
//! | `boots` | boot number → boot id; boot numbers order boots as this device saw them |
//! | `seqs` | boot number → last seq assigned in that boot, so a restarted agent continues it |
//! | `meta` | `bytes`, `dropped`, `boot_count`, `unsynced_boot` |
//!
//! One table per priority makes "oldest of the lowest priority" the first
//! entry of a table, and "oldest overall" a merge of three ordered scans.
//!
//! Durability: new records are committed with `Durability::Immediate` (an
//! fsync before [`Buffer::push`] returns): a record the agent made survives
//! kill -9 and power loss. Deleting acknowledged records is committed with
//! `Durability::None`: if that is lost, the records come back and are sent
//! again, and the server drops them as duplicates of (device, boot, seq).
//! Such a commit becomes durable with the next push.
//!
//! The byte bound counts each record's encoded size plus
//! [`RECORD_OVERHEAD`]; the file itself is larger (B-tree pages, pages
//! freed by copy-on-write and reused later). This module never deletes a
//! record that is not acknowledged, except to make room, and then counts it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use drover_proto::telemetry::{ClockQuality, Priority, Record, RecordBody};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::clock::Stamp;

/// A records table: (boot number, seq) → record JSON.
type Records = TableDefinition<'static, (u64, u64), &'static [u8]>;
/// One entry of a records range scan.
type Entry<'a> = Result<
    (
        redb::AccessGuard<'a, (u64, u64)>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

const LOW: Records = TableDefinition::new("records_low");
const NORMAL: Records = TableDefinition::new("records_normal");
const HIGH: Records = TableDefinition::new("records_high");
const BOOTS: TableDefinition<u64, &str> = TableDefinition::new("boots");
const SEQS: TableDefinition<u64, u64> = TableDefinition::new("seqs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Bytes counted per record on top of its encoding (key and B-tree entry).
pub const RECORD_OVERHEAD: u64 = 32;
/// The file name in the data directory.
pub const FILE: &str = "telemetry.redb";

const TABLES: [(Priority, Records); 3] = [
    (Priority::Low, LOW),
    (Priority::Normal, NORMAL),
    (Priority::High, HIGH),
];

fn class(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// Where a record is: its priority class (0 low, 1 normal, 2 high), boot
/// number and seq.
pub type Key = (u8, u64, u64);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BufferError {
    #[error(
        "{0} is open in another process: is another drover-agent running with the same data directory?"
    )]
    InUse(String),
    #[error("telemetry buffer {path}: {message}")]
    Db { path: String, message: String },
}

/// A record to store; its seq is assigned by [`Buffer::push`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub stamp: Stamp,
    pub priority: Priority,
    pub labels: BTreeMap<String, String>,
    pub body: RecordBody,
}

/// What [`Buffer::push`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushReport {
    pub stored: usize,
    /// Records dropped to make room, older ones or new ones.
    pub dropped: u64,
}

/// Which end of the buffer a batch is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The oldest records (backlog), of the oldest boot that has any.
    Oldest,
    /// The newest records of the current boot (fresh data).
    Newest,
}

/// Records taken for one batch, in seq order, all of one boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub boot_no: u64,
    pub boot_id: String,
    pub keys: Vec<Key>,
    pub records: Vec<Record>,
}

/// The buffer; one per data directory (redb locks the file).
pub struct Buffer {
    db: Database,
    path: String,
    max_bytes: u64,
    boot_no: u64,
    boot_id: String,
    last_seq: u64,
    bytes: u64,
    dropped: u64,
    counts: [u64; 3],
    boot_count: u64,
    unsynced_pending: bool,
}

impl Buffer {
    /// Opens (or creates) the buffer at `path` for the boot `boot_id`.
    /// A boot id not seen before gets the next boot number and adds one
    /// to the boot count; a known one (the agent restarted) continues its
    /// sequence numbers.
    pub fn open(path: &Path, boot_id: &str, max_bytes: u64) -> Result<Buffer, BufferError> {
        let p = path.display().to_string();
        let err = |e: redb::Error| BufferError::Db {
            path: p.clone(),
            message: e.to_string(),
        };
        // The page cache only needs to hold what one batch touches.
        let cache = (max_bytes / 4).clamp(256 * 1024, 4 * 1024 * 1024) as usize;
        let db = match Database::builder().set_cache_size(cache).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(BufferError::InUse(p)),
            Err(e) => return Err(err(e.into())),
        };
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        let (boot_no, last_seq, boot_count, bytes, dropped, unsynced, counts) = {
            let mut boots = txn.open_table(BOOTS).map_err(|e| err(e.into()))?;
            let mut seqs = txn.open_table(SEQS).map_err(|e| err(e.into()))?;
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let mut counts = [0u64; 3];
            let mut tables = Vec::new();
            for (i, (_, def)) in TABLES.iter().enumerate() {
                let t = txn.open_table(*def).map_err(|e| err(e.into()))?;
                counts[i] = t.len().map_err(|e| err(e.into()))?;
                tables.push(t);
            }
            let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<u64, redb::Error> {
                Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0))
            };
            let mut known = None;
            let mut all = Vec::new();
            for entry in boots.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                if v.value() == boot_id {
                    known = Some(k.value());
                }
                all.push(k.value());
            }
            let mut boot_count = get(&meta, "boot_count").map_err(err)?;
            let boot_no = match known {
                Some(n) => n,
                None => {
                    let n = all.iter().max().map_or(1, |m| m + 1);
                    boots.insert(n, boot_id).map_err(|e| err(e.into()))?;
                    seqs.insert(n, 0).map_err(|e| err(e.into()))?;
                    boot_count += 1;
                    meta.insert("boot_count", boot_count)
                        .map_err(|e| err(e.into()))?;
                    n
                }
            };
            // Forget earlier boots that have nothing left to send.
            for n in all.into_iter().filter(|n| *n != boot_no) {
                let mut empty = true;
                for t in &tables {
                    if t.range((n, 0)..=(n, u64::MAX))
                        .map_err(|e| err(e.into()))?
                        .next()
                        .is_some()
                    {
                        empty = false;
                    }
                }
                if empty {
                    boots.remove(n).map_err(|e| err(e.into()))?;
                    seqs.remove(n).map_err(|e| err(e.into()))?;
                }
            }
            let last_seq = seqs
                .get(boot_no)
                .map_err(|e| err(e.into()))?
                .map(|v| v.value())
                .unwrap_or(0);
            (
                boot_no,
                last_seq,
                boot_count,
                get(&meta, "bytes").map_err(err)?,
                get(&meta, "dropped").map_err(err)?,
                get(&meta, "unsynced_boot").map_err(err)? == boot_no + 1,
                counts,
            )
        };
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Buffer {
            db,
            path: p,
            max_bytes,
            boot_no,
            boot_id: boot_id.to_string(),
            last_seq,
            bytes,
            dropped,
            counts,
            boot_count,
            unsynced_pending: unsynced,
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> BufferError {
        BufferError::Db {
            path: self.path.clone(),
            message: e.into().to_string(),
        }
    }

    /// Records held, over all priorities.
    pub fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Records dropped for lack of room and not yet reported in an
    /// acknowledged batch.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Boots this buffer has seen (the `boot.count` metric).
    pub fn boot_count(&self) -> u64 {
        self.boot_count
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    pub fn boot_no(&self) -> u64 {
        self.boot_no
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether records of this boot wait for a good clock to be corrected.
    pub fn unsynced_pending(&self) -> bool {
        self.unsynced_pending
    }

    /// Stores `records` in one transaction, committed durably, making room
    /// as the module docs say; records `in_flight` (sent, not yet
    /// acknowledged) are not dropped, so the dropped count is exactly what
    /// the server never got. Non-finite metric values are refused before
    /// this (JSON cannot carry them).
    pub fn push(
        &mut self,
        records: Vec<NewRecord>,
        in_flight: &HashSet<Key>,
    ) -> Result<PushReport, BufferError> {
        let mut report = PushReport::default();
        if records.is_empty() {
            return Ok(report);
        }
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let mut bytes = self.bytes;
        let mut counts = self.counts;
        let mut dropped = self.dropped;
        let mut seq = self.last_seq;
        let mut unsynced = self.unsynced_pending;
        {
            let mut tables = Vec::with_capacity(3);
            for (_, def) in TABLES {
                tables.push(txn.open_table(def).map_err(|e| self.err(e))?);
            }
            'records: for r in records {
                let mut rec = Record {
                    seq: seq + 1,
                    time_ms: r.stamp.time_ms,
                    mono_ms: r.stamp.mono_ms,
                    clock: r.stamp.clock,
                    priority: r.priority,
                    labels: r.labels,
                    body: r.body,
                };
                let mut value = serde_json::to_vec(&rec).expect("records serialize");
                let size = value.len() as u64 + RECORD_OVERHEAD;
                while bytes + size > self.max_bytes {
                    // The oldest record, not in flight, of the lowest
                    // priority class that has one.
                    let mut victim = None;
                    for (c, t) in tables.iter().enumerate().take(class(rec.priority) + 1) {
                        if counts[c] == 0 {
                            continue;
                        }
                        for e in t.iter().map_err(|e| self.err(e))? {
                            let (k, v) = e.map_err(|e| self.err(e))?;
                            let (b, s) = k.value();
                            if !in_flight.contains(&(c as u8, b, s)) {
                                victim = Some((c, (b, s), v.value().len() as u64));
                                break;
                            }
                        }
                        if victim.is_some() {
                            break;
                        }
                    }
                    match victim {
                        Some((c, k, len)) => {
                            tables[c].remove(k).map_err(|e| self.err(e))?;
                            bytes = bytes.saturating_sub(len + RECORD_OVERHEAD);
                            counts[c] -= 1;
                            dropped += 1;
                            report.dropped += 1;
                        }
                        // Only more important records left, or records in
                        // flight (or this one alone is too big): drop the
                        // new one.
                        None => {
                            dropped += 1;
                            report.dropped += 1;
                            continue 'records;
                        }
                    }
                }
                seq += 1;
                if rec.clock == ClockQuality::Unsynced {
                    unsynced = true;
                }
                rec.seq = seq;
                value = serde_json::to_vec(&rec).expect("records serialize");
                tables[class(rec.priority)]
                    .insert((self.boot_no, seq), value.as_slice())
                    .map_err(|e| self.err(e))?;
                bytes += value.len() as u64 + RECORD_OVERHEAD;
                counts[class(rec.priority)] += 1;
                report.stored += 1;
            }
            let mut seqs = txn.open_table(SEQS).map_err(|e| self.err(e))?;
            seqs.insert(self.boot_no, seq).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
            meta.insert("dropped", dropped).map_err(|e| self.err(e))?;
            if unsynced {
                meta.insert("unsynced_boot", self.boot_no + 1)
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.bytes = bytes;
        self.counts = counts;
        self.dropped = dropped;
        self.last_seq = seq;
        self.unsynced_pending = unsynced;
        Ok(report)
    }

    /// Up to `max_records` records (and about `max_bytes` of encoding) of
    /// one boot, in seq order, leaving out `skip` (batches in flight) and,
    /// when `hold_current` is set, every record of the current boot.
    pub fn select(
        &self,
        pick: Pick,
        skip: &HashSet<Key>,
        hold_current: bool,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Selected>, BufferError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut tables = Vec::with_capacity(3);
        for (p, def) in TABLES {
            tables.push((p, txn.open_table(def).map_err(|e| self.err(e))?));
        }
        let boot_no = match pick {
            Pick::Newest if hold_current => return Ok(None),
            Pick::Newest => self.boot_no,
            Pick::Oldest => {
                // The oldest boot with a record not in flight.
                let end = if hold_current {
                    (self.boot_no, 0)
                } else {
                    (u64::MAX, u64::MAX)
                };
                let mut oldest: Option<u64> = None;
                for (p, t) in &tables {
                    for e in t.range((0, 0)..end).map_err(|e| self.err(e))? {
                        let (k, _) = e.map_err(|e| self.err(e))?;
                        let (b, s) = k.value();
                        if !skip.contains(&(class(*p) as u8, b, s)) {
                            oldest = Some(oldest.map_or(b, |o: u64| o.min(b)));
                            break;
                        }
                    }
                }
                match oldest {
                    Some(b) => b,
                    None => return Ok(None),
                }
            }
        };
        let boot_id = if boot_no == self.boot_no {
            self.boot_id.clone()
        } else {
            let boots = txn.open_table(BOOTS).map_err(|e| self.err(e))?;
            match boots.get(boot_no).map_err(|e| self.err(e))? {
                Some(v) => v.value().to_string(),
                None => {
                    return Err(BufferError::Db {
                        path: self.path.clone(),
                        message: format!(
                            "records of boot number {boot_no} have no boot id; move the file aside to start a new buffer"
                        ),
                    });
                }
            }
        };
        // Up to `max_records` candidates from each table, then merged.
        let mut found: Vec<(u64, Priority, Vec<u8>)> = Vec::new();
        for (p, t) in &tables {
            let range = t
                .range((boot_no, 0)..=(boot_no, u64::MAX))
                .map_err(|e| self.err(e))?;
            let mut n = 0;
            let mut take = |e: Entry| -> Result<bool, BufferError> {
                let (k, v) = e.map_err(|e| self.err(e))?;
                let (_, s) = k.value();
                if skip.contains(&(class(*p) as u8, boot_no, s)) {
                    return Ok(true);
                }
                found.push((s, *p, v.value().to_vec()));
                n += 1;
                Ok(n < max_records)
            };
            match pick {
                Pick::Oldest => {
                    for e in range {
                        if !take(e)? {
                            break;
                        }
                    }
                }
                Pick::Newest => {
                    for e in range.rev() {
                        if !take(e)? {
                            break;
                        }
                    }
                }
            }
        }
        found.sort_by_key(|(s, _, _)| *s);
        if pick == Pick::Newest && found.len() > max_records {
            found.drain(..found.len() - max_records);
        }
        found.truncate(max_records);
        if pick == Pick::Newest {
            // Keep the newest that fit the byte budget.
            let mut total = 0;
            let mut start = found.len();
            while start > 0 && total + found[start - 1].2.len() < max_bytes {
                total += found[start - 1].2.len() + 1;
                start -= 1;
            }
            found.drain(..start);
        } else {
            let mut total = 0;
            let mut end = 0;
            while end < found.len() && total + found[end].2.len() < max_bytes {
                total += found[end].2.len() + 1;
                end += 1;
            }
            found.truncate(end);
        }
        if found.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::with_capacity(found.len());
        let mut records = Vec::with_capacity(found.len());
        for (s, p, v) in found {
            let r: Record = serde_json::from_slice(&v).map_err(|e| BufferError::Db {
                path: self.path.clone(),
                message: format!("record {s} of boot number {boot_no} is not readable: {e}"),
            })?;
            keys.push((class(p) as u8, boot_no, s));
            records.push(r);
        }
        Ok(Some(Selected {
            boot_no,
            boot_id,
            keys,
            records,
        }))
    }

    /// Deletes acknowledged records and subtracts the dropped count their
    /// batch reported. Committed without fsync (see the module docs).
    pub fn ack(&mut self, keys: &[Key], dropped_reported: u64) -> Result<(), BufferError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let mut bytes = self.bytes;
        let mut counts = self.counts;
        {
            let mut tables = Vec::with_capacity(3);
            for (_, def) in TABLES {
                tables.push(txn.open_table(def).map_err(|e| self.err(e))?);
            }
            for (c, b, s) in keys {
                let c = (*c as usize).min(2);
                if let Some(v) = tables[c].remove((*b, *s)).map_err(|e| self.err(e))? {
                    bytes = bytes.saturating_sub(v.value().len() as u64 + RECORD_OVERHEAD);
                    counts[c] = counts[c].saturating_sub(1);
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
            meta.insert("dropped", self.dropped.saturating_sub(dropped_reported))
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.bytes = bytes;
        self.counts = counts;
        self.dropped = self.dropped.saturating_sub(dropped_reported);
        Ok(())
    }

    /// Rewrites this boot's `Unsynced` records from their monotonic time
    /// with a good reading `now` (`time = mono_then + (wall_now -
    /// mono_now)`) and marks them `Corrected`. Returns how many.
    pub fn correct(&mut self, now: &Stamp) -> Result<usize, BufferError> {
        if !self.unsynced_pending {
            return Ok(0);
        }
        let offset = now.offset_ms();
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.err(redb::Error::from(e)))?;
        let mut n = 0;
        let mut bytes = self.bytes;
        {
            for (_, def) in TABLES {
                let mut t = txn.open_table(def).map_err(|e| self.err(e))?;
                let mut changed = Vec::new();
                for e in t
                    .range((self.boot_no, 0)..=(self.boot_no, u64::MAX))
                    .map_err(|e| self.err(e))?
                {
                    let (k, v) = e.map_err(|e| self.err(e))?;
                    let Ok(mut r) = serde_json::from_slice::<Record>(v.value()) else {
                        continue;
                    };
                    if r.clock == ClockQuality::Unsynced {
                        r.time_ms = r.mono_ms as i64 + offset;
                        r.clock = ClockQuality::Corrected;
                        let new = serde_json::to_vec(&r).expect("records serialize");
                        bytes = (bytes + new.len() as u64).saturating_sub(v.value().len() as u64);
                        changed.push((k.value(), new));
                    }
                }
                for (k, v) in changed {
                    t.insert(k, v.as_slice()).map_err(|e| self.err(e))?;
                    n += 1;
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("unsynced_boot", 0).map_err(|e| self.err(e))?;
            meta.insert("bytes", bytes).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.bytes = bytes;
        self.unsynced_pending = false;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::clock::MIN_PLAUSIBLE_MS;

    const T0: i64 = MIN_PLAUSIBLE_MS + 1_000_000;

    fn stamp(i: u64) -> Stamp {
        Stamp {
            time_ms: T0 + i as i64 * 1000,
            mono_ms: 50_000 + i * 1000,
            clock: ClockQuality::Synced,
        }
    }

    fn metric(i: u64, p: Priority) -> NewRecord {
        NewRecord {
            stamp: stamp(i),
            priority: p,
            labels: BTreeMap::new(),
            body: RecordBody::Metric {
                name: format!("m{i:02}"),
                value: 1.0,
            },
        }
    }

    fn all(b: &Buffer) -> Vec<Record> {
        let mut out = Vec::new();
        let mut skip = HashSet::new();
        while let Some(s) = b.select(Pick::Oldest, &skip, false, 500, 1 << 20).unwrap() {
            skip.extend(s.keys.iter().copied());
            out.extend(s.records);
        }
        out
    }

    #[test]
    fn when_full_the_oldest_low_priority_records_go_first_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut recs: Vec<NewRecord> = (1..=4).map(|i| metric(i, Priority::High)).collect();
        recs.extend((5..=7).map(|i| metric(i, Priority::Normal)));
        recs.extend((8..=10).map(|i| metric(i, Priority::Low)));
        // Room for these 10 and a few bytes (seqs from 10 on take a digit
        // more), not for an 11th.
        let mut probe = Buffer::open(&dir.path().join("probe.redb"), "boot-a", 1 << 20).unwrap();
        probe.push(recs.clone(), &HashSet::new()).unwrap();
        let limit = probe.bytes() + 8;
        let mut b = Buffer::open(&dir.path().join(FILE), "boot-a", limit).unwrap();
        assert_eq!(b.push(recs, &HashSet::new()).unwrap().dropped, 0);
        assert_eq!(b.len(), 10);
        // Two more normal ones: the two oldest low ones (8, 9) make room.
        let r = b
            .push(
                vec![metric(11, Priority::Normal), metric(12, Priority::Normal)],
                &HashSet::new(),
            )
            .unwrap();
        assert_eq!(r.dropped, 2);
        // Two high ones: low 10, then normal 5.
        b.push(
            vec![metric(13, Priority::High), metric(14, Priority::High)],
            &HashSet::new(),
        )
        .unwrap();
        // A low one when only normal and high are left: the new one goes.
        let r = b
            .push(vec![metric(15, Priority::Low)], &HashSet::new())
            .unwrap();
        assert_eq!((r.stored, r.dropped), (0, 1));
        let names: Vec<String> = all(&b)
            .into_iter()
            .map(|r| match r.body {
                RecordBody::Metric { name, .. } => name,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "m01", "m02", "m03", "m04", "m06", "m07", "m11", "m12", "m13", "m14"
            ]
        );
        assert_eq!(b.dropped(), 5, "8, 9, 10, 5 and the refused 15");
        assert!(b.bytes() <= limit);
        // The count survives a restart and is reduced only by what an
        // acknowledged batch reported.
        drop(b);
        let mut b = Buffer::open(&dir.path().join(FILE), "boot-a", limit).unwrap();
        assert_eq!(b.dropped(), 5);
        let s = b
            .select(Pick::Oldest, &HashSet::new(), false, 3, 1 << 20)
            .unwrap()
            .unwrap();
        b.push(vec![metric(16, Priority::High)], &HashSet::new())
            .unwrap(); // drops normal 6
        assert_eq!(b.dropped(), 6);
        b.ack(&s.keys, 5).unwrap();
        assert_eq!(b.dropped(), 1, "what was dropped after the batch stays");
        assert_eq!(b.len(), 7);
    }

    #[test]
    fn a_reopened_buffer_continues_the_sequence_and_keeps_unacknowledged_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut b = Buffer::open(&path, "boot-a", 1 << 20).unwrap();
        b.push(
            (1..=5).map(|i| metric(i, Priority::Low)).collect(),
            &HashSet::new(),
        )
        .unwrap();
        let s = b
            .select(Pick::Oldest, &HashSet::new(), false, 2, 1 << 20)
            .unwrap()
            .unwrap();
        b.ack(&s.keys, 0).unwrap();
        // (kill -9 with a real process: tests/telemetry_buffer.rs.)
        drop(b);
        let mut b = Buffer::open(&path, "boot-a", 1 << 20).unwrap();
        assert_eq!(b.boot_count(), 1);
        let seqs: Vec<u64> = all(&b).iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            [3, 4, 5],
            "acknowledged records are gone, the rest kept"
        );
        b.push(vec![metric(6, Priority::Low)], &HashSet::new())
            .unwrap();
        assert_eq!(all(&b).last().unwrap().seq, 6, "seq continues");
        drop(b);
        // A new boot: its own numbering, one more boot counted, the old
        // boot's records sent first.
        let mut b = Buffer::open(&path, "boot-b", 1 << 20).unwrap();
        assert_eq!(b.boot_count(), 2);
        b.push(vec![metric(7, Priority::High)], &HashSet::new())
            .unwrap();
        let first = b
            .select(Pick::Oldest, &HashSet::new(), false, 500, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(first.boot_id, "boot-a");
        let fresh = b
            .select(Pick::Newest, &HashSet::new(), false, 500, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(fresh.boot_id, "boot-b");
        assert_eq!(fresh.records[0].seq, 1);
    }

    #[test]
    fn unsynced_records_of_this_boot_are_corrected_from_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut b = Buffer::open(&path, "boot-a", 1 << 20).unwrap();
        let bad = |mono: u64| NewRecord {
            stamp: Stamp {
                time_ms: 3_000 + mono as i64,
                mono_ms: mono,
                clock: ClockQuality::Unsynced,
            },
            ..metric(0, Priority::Normal)
        };
        b.push(vec![bad(10_000), bad(20_000)], &HashSet::new())
            .unwrap();
        assert!(b.unsynced_pending());
        // Held while the clock is wrong: no batch of this boot.
        assert!(
            b.select(Pick::Oldest, &HashSet::new(), true, 500, 1 << 20)
                .unwrap()
                .is_none()
        );
        drop(b);
        // After an agent restart in the same boot, NTP sets the clock.
        let mut b = Buffer::open(&path, "boot-a", 1 << 20).unwrap();
        assert!(b.unsynced_pending());
        let good = Stamp {
            time_ms: T0,
            mono_ms: 30_000,
            clock: ClockQuality::Synced,
        };
        assert_eq!(b.correct(&good).unwrap(), 2);
        let recs = all(&b);
        assert_eq!(
            recs.iter()
                .map(|r| (r.time_ms, r.clock))
                .collect::<Vec<_>>(),
            [
                (T0 - 20_000, ClockQuality::Corrected),
                (T0 - 10_000, ClockQuality::Corrected)
            ]
        );
        assert_eq!(b.correct(&good).unwrap(), 0, "only once");
        // A record of an earlier boot cannot be corrected: it stays flagged.
        b.push(vec![bad(40_000)], &HashSet::new()).unwrap();
        drop(b);
        let mut b = Buffer::open(&path, "boot-b", 1 << 20).unwrap();
        assert!(!b.unsynced_pending());
        assert_eq!(b.correct(&good).unwrap(), 0);
        assert_eq!(all(&b).last().unwrap().clock, ClockQuality::Unsynced);
    }

    #[test]
    fn batches_respect_the_record_and_byte_limits_and_skip_what_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(&dir.path().join(FILE), "boot-a", 1 << 24).unwrap();
        b.push(
            (1..=1200).map(|i| metric(i, Priority::Low)).collect(),
            &HashSet::new(),
        )
        .unwrap();
        let s = b
            .select(Pick::Oldest, &HashSet::new(), false, 500, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(s.records.len(), 500);
        assert_eq!(s.records[0].seq, 1);
        let skip: HashSet<Key> = s.keys.iter().copied().collect();
        let s2 = b
            .select(Pick::Oldest, &skip, false, 500, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(s2.records[0].seq, 501);
        let n = serde_json::to_vec(&s2.records[0]).unwrap().len();
        let small = b
            .select(Pick::Oldest, &skip, false, 500, n * 3 + 3)
            .unwrap()
            .unwrap();
        assert_eq!(small.records.len(), 3);
        let fresh = b
            .select(Pick::Newest, &skip, false, 100, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            fresh.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1101..=1200).collect::<Vec<_>>()
        );
    }
}
