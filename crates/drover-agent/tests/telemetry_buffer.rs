//! The telemetry buffer and log tailing with real processes and real files:
//! a writer killed with SIGKILL mid-stream loses nothing it committed and
//! its successor continues the sequence; a followed log file is rotated
//! and truncated under the tail.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use drover_agent::telemetry::buffer::{Buffer, FILE, NewRecord, Pick};
use drover_agent::telemetry::clock::Stamp;
use drover_agent::telemetry::events::{LogPattern, LogTail};
use drover_proto::telemetry::{ClockQuality, Priority, RecordBody};

const CHILD_ENV: &str = "DROVER_TEST_TELEMETRY_WRITER_DIR";

fn record(i: u64) -> NewRecord {
    NewRecord {
        stamp: Stamp {
            time_ms: 1_750_000_000_000 + i as i64,
            mono_ms: 1_000 + i,
            clock: ClockQuality::Synced,
        },
        priority: Priority::Low,
        labels: BTreeMap::new(),
        body: RecordBody::Metric {
            name: "writer.i".into(),
            value: i as f64,
        },
    }
}

/// The child: pushes one record per transaction forever, printing each
/// committed seq, and acknowledges the oldest few now and then.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut b = Buffer::open(&std::path::Path::new(&dir).join(FILE), "boot-k", 1 << 24).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        b.push(vec![record(i)], &HashSet::new()).unwrap();
        writeln!(out, "committed {}", b.last_seq()).unwrap();
        if i % 10 == 9 {
            let s = b
                .select(Pick::Oldest, &HashSet::new(), false, 5, 1 << 20)
                .unwrap()
                .unwrap();
            b.ack(&s.keys, 0).unwrap();
            let seqs: Vec<String> = s.records.iter().map(|r| r.seq.to_string()).collect();
            writeln!(out, "acked {}", seqs.join(" ")).unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn a_writer_killed_with_sigkill_loses_no_committed_record_and_the_sequence_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut committed = Vec::new();
    let mut acked = HashSet::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while committed.len() < 300 {
        let line = lines.next().expect("the writer runs").unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed.push(n.parse::<u64>().unwrap());
        } else if let Some(seqs) = line.strip_prefix("acked ") {
            acked.extend(seqs.split(' ').map(|s| s.parse::<u64>().unwrap()));
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    child.wait().unwrap();

    let mut b = Buffer::open(&dir.path().join(FILE), "boot-k", 1 << 24).unwrap();
    let mut present = HashSet::new();
    let mut skip = HashSet::new();
    while let Some(s) = b.select(Pick::Oldest, &skip, false, 500, 1 << 20).unwrap() {
        skip.extend(s.keys.iter().copied());
        present.extend(s.records.iter().map(|r| r.seq));
    }
    for seq in &committed {
        assert!(
            present.contains(seq) || acked.contains(seq),
            "record {seq} was committed and never acknowledged, but is gone"
        );
    }
    // Deletions are not fsynced: some acknowledged records may be back;
    // resending them is harmless (the server drops duplicates).
    let last = *committed.last().unwrap();
    assert!(b.last_seq() >= last);
    b.push(vec![record(1_000_000)], &HashSet::new()).unwrap();
    assert!(
        b.last_seq() > last,
        "a restarted agent never reuses a seq of this boot"
    );
    assert_eq!(b.boot_count(), 1, "the same boot is not counted again");
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_followed_log_survives_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, "old ERROR before the agent started\n");
    let mut tail = LogTail::new(LogPattern {
        file: log.clone(),
        pattern: "*ERROR*".into(),
        event: "app.error".into(),
        severity: "critical".into(),
    });
    let mut ev = Vec::new();
    tail.poll(100, &mut ev);
    assert!(ev.is_empty(), "history is not replayed");

    append(&log, "fine\nERROR one\nhalf a li");
    tail.poll(100, &mut ev);
    append(&log, "ne with ERROR\n");
    tail.poll(100, &mut ev);
    // logrotate: rename, the writer finishes its line in the old file,
    // then a new file appears.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), "ERROR last in old\n");
    append(&log, "ERROR first in new\n");
    tail.poll(100, &mut ev);
    // copytruncate: same file, cut to zero, written again.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    tail.poll(100, &mut ev);
    append(&log, "ERROR after truncation\n");
    tail.poll(100, &mut ev);
    let messages: Vec<&str> = ev.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "ERROR one",
            "half a line with ERROR",
            "ERROR last in old",
            "ERROR first in new",
            "ERROR after truncation"
        ]
    );
    assert!(
        ev.iter()
            .all(|e| e.name == "app.error" && e.severity == "critical")
    );

    // More matches than allowed per poll: the rest are counted.
    append(&log, &"ERROR flood\n".repeat(30));
    let mut few = Vec::new();
    assert_eq!(tail.poll(10, &mut few), 20);
    assert_eq!(few.len(), 10);
}

/// Not a test: prints what a commit costs on this disk (docs/benchmarks.md).
/// `cargo test -p drover-agent --release --test telemetry_buffer -- --ignored --nocapture commit_cost`
#[test]
#[ignore]
fn commit_cost() {
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let mut b = Buffer::open(&dir.path().join(FILE), "boot-c", 1 << 26).unwrap();
    let n = 200;
    let t = std::time::Instant::now();
    for i in 0..n {
        b.push(
            (0..30).map(|j| record(i * 30 + j)).collect(),
            &HashSet::new(),
        )
        .unwrap();
    }
    let push = t.elapsed() / n as u32;
    let t = std::time::Instant::now();
    let mut acks = 0;
    while let Some(s) = b
        .select(Pick::Oldest, &HashSet::new(), false, 500, 60_000)
        .unwrap()
    {
        b.ack(&s.keys, 0).unwrap();
        acks += 1;
    }
    let ack = t.elapsed() / acks;
    println!("push of 30 records, Durability::Immediate: {push:?} each ({n} pushes)");
    println!("select + ack of a batch, Durability::None: {ack:?} each ({acks} batches)");
}
