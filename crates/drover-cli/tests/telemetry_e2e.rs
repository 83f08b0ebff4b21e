//! Telemetry end to end with real processes: a `drover server`, a
//! `drover-agent run` collecting every second with custom metrics pushed
//! to its StatsD port, and the `drover metrics` CLI reading what arrived.
//!
//! - The server is down for a while: the agent keeps collecting, and after
//!   the server is back every record made meanwhile arrives exactly once,
//!   at its original time, in order.
//! - The agent is killed with SIGKILL while records wait: after a restart
//!   they are sent, the sequence continues, nothing is missing.
//! - The buffer overflows: the oldest records are dropped and the server
//!   is told how many.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{AgentProc, Cli, ServerProc, enroll_token, start_server, wait_for};
use serde_json::Value;

/// Distinct custom counters pushed per round.
const NAMES: usize = 250;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent_toml(statsd_port: u16, extra: &str) -> String {
    format!(
        "[telemetry]\ninterval_secs = 1\nevents_interval_secs = 1\nstatsd_port = {statsd_port}\nmax_custom_names = {NAMES}\n{extra}\n"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    server_data: std::path::PathBuf,
    server: Option<ServerProc>,
    port: u16,
    cli: Cli,
    agent: AgentProc,
    device: String,
    statsd: u16,
}

fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_data = dir.path().join("server");
    let server = start_server(&server_data, None, &[]);
    let port = server.port();
    let cli = Cli::new();
    cli.login(&server, &server.admin_token());
    let token = enroll_token(&cli, &["--uses", "1"]);
    let statsd = free_udp_port();
    let mut agent = AgentProc::new(dir.path(), "dev", &agent_toml(statsd, extra));
    let out = agent.enroll_with(&token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let device = agent.device_id();
    agent.start();
    let s = Setup {
        _dir: dir,
        server_data,
        server: Some(server),
        port,
        cli,
        agent,
        device,
        statsd,
    };
    // Two samples make the first CPU rate.
    wait_for("the first CPU point", Duration::from_secs(60), || {
        (!s.points("cpu").is_empty()).then_some(())
    });
    s
}

impl Setup {
    fn stop_server(&mut self) {
        let mut s = self.server.take().expect("server running");
        s.signal(libc::SIGKILL);
        s.wait(Duration::from_secs(10));
    }

    fn start_server(&mut self) {
        self.server = Some(start_server(
            &self.server_data,
            None,
            &["--listen", &format!("127.0.0.1:{}", self.port)],
        ));
    }

    fn metrics(&self, name: Option<&str>) -> Value {
        let mut args = vec![
            "metrics",
            "show",
            &self.device,
            "--since",
            "1h",
            "--limit",
            "100000",
        ];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        self.cli.json(&args)
    }

    fn points(&self, name: &str) -> Vec<Value> {
        self.metrics(Some(name))["points"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every point of the device: seq → (name, time_ms), and how many
    /// points there were (a duplicate would make more points than seqs).
    fn all(&self) -> (BTreeMap<u64, (String, i64)>, usize) {
        let names: Vec<String> = self.metrics(None)["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
        let mut out = BTreeMap::new();
        let mut count = 0;
        for n in names {
            for p in self.points(&n) {
                count += 1;
                out.insert(
                    p["seq"].as_u64().unwrap(),
                    (n.clone(), p["time_ms"].as_i64().unwrap()),
                );
            }
        }
        (out, count)
    }

    fn dropped_total(&self) -> i64 {
        self.metrics(None)["dropped_total"].as_i64().unwrap()
    }

    /// Pushes one increment of every custom counter.
    fn push_round(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for chunk in (0..NAMES).collect::<Vec<_>>().chunks(50) {
            let lines: Vec<String> = chunk.iter().map(|i| format!("e2e.c{i}:1|c")).collect();
            sock.send_to(lines.join("\n").as_bytes(), ("127.0.0.1", self.statsd))
                .unwrap();
        }
    }
}

/// The highest seq made before `before_ms`, and the seqs up to it that
/// the server does not have.
fn missing_before(all: &BTreeMap<u64, (String, i64)>, before_ms: i64) -> (u64, Vec<u64>) {
    let max = all
        .iter()
        .filter(|(_, (_, t))| *t < before_ms)
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(0);
    let missing = (1..=max).filter(|s| !all.contains_key(s)).collect();
    (max, missing)
}

#[test]
fn records_made_while_the_server_is_down_arrive_once_at_their_time_and_in_order() {
    let mut s = setup("");
    s.stop_server();
    let down_at = now_ms();
    let rounds = 8;
    for _ in 0..rounds {
        s.push_round();
        std::thread::sleep(Duration::from_millis(700));
    }
    // Let the last round be collected (1 s interval) before the server
    // returns, with room for a loaded machine: a round collected after
    // `up_at` would rightly carry a later time than this test expects.
    std::thread::sleep(Duration::from_millis(3000));
    let up_at = now_ms();
    s.start_server();

    let (all, count) = wait_for(
        "every record made while the server was down",
        Duration::from_secs(120),
        || {
            let (all, count) = s.all();
            let (max, missing) = missing_before(&all, up_at);
            // Until the backlog arrives, only the records from before the
            // outage are there (and none of them missing): wait for more.
            (max > (NAMES * rounds / 2) as u64 && missing.is_empty()).then_some((all, count))
        },
    );
    assert_eq!(count, all.len(), "no seq stored twice");
    let (max, _) = missing_before(&all, up_at);
    assert!(
        max > (NAMES * rounds / 2) as u64,
        "thousands of records were buffered: {max}"
    );
    // Every increment counted once.
    for name in ["e2e.c0", "e2e.c123", &format!("e2e.c{}", NAMES - 1)] {
        let pts = s.points(name);
        let sum: f64 = pts.iter().map(|p| p["value"].as_f64().unwrap()).sum();
        assert_eq!(sum, rounds as f64, "{name}: {pts:?}");
        // Their original times: made while the server was down.
        assert!(
            pts.iter().all(|p| {
                let t = p["time_ms"].as_i64().unwrap();
                t >= down_at - 1_000 && t < up_at
            }),
            "{name} points keep the time they were made: {pts:?}"
        );
        // In time order, the sequence only grows.
        let seqs: Vec<u64> = pts.iter().map(|p| p["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }
    let by_seq_times: Vec<i64> = all.values().map(|(_, t)| *t).collect();
    assert!(
        by_seq_times.windows(2).all(|w| w[0] <= w[1]),
        "seq order is time order"
    );
    assert_eq!(s.dropped_total(), 0);
    // The fleet aggregate sees the same: every increment once, in buckets
    // of the time the points were made, in time order.
    let agg = s
        .cli
        .json(&["metrics", "query", "sum(e2e.c0) by device", "--since", "1h"]);
    let series = agg["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "{agg}");
    assert_eq!(series[0]["group"], s.device.as_str(), "{agg}");
    let buckets = series[0]["buckets"].as_array().unwrap();
    let total: f64 = buckets.iter().map(|b| b["value"].as_f64().unwrap()).sum();
    assert_eq!(total, rounds as f64, "{agg}");
    let starts: Vec<i64> = buckets
        .iter()
        .map(|b| b["start_ms"].as_i64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{agg}");
    assert!(
        starts.iter().all(|t| *t >= down_at - 120_000 && *t < up_at),
        "buckets at the original times: {agg}"
    );
}

#[test]
fn records_waiting_when_the_agent_is_killed_are_sent_after_its_restart() {
    let mut s = setup("");
    s.stop_server();
    for _ in 0..4 {
        s.push_round();
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_millis(1500));
    s.agent.kill9();
    let killed_at = now_ms();
    s.agent.start();
    std::thread::sleep(Duration::from_millis(2500));
    let up_at = now_ms();
    s.start_server();
    let (all, count) = wait_for(
        "the records of both agent runs",
        Duration::from_secs(120),
        || {
            let (all, count) = s.all();
            let (max, missing) = missing_before(&all, up_at);
            let after_restart = all.values().any(|(_, t)| *t > killed_at && *t < up_at);
            (max > 0 && missing.is_empty() && after_restart).then_some((all, count))
        },
    );
    assert_eq!(count, all.len(), "nothing stored twice");
    let before_kill: BTreeSet<u64> = all
        .iter()
        .filter(|(_, (_, t))| *t < killed_at)
        .map(|(s, _)| *s)
        .collect();
    let after: BTreeSet<u64> = all
        .iter()
        .filter(|(_, (_, t))| *t > killed_at)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        before_kill.last() < after.first(),
        "the restarted agent continues the sequence"
    );
    let sum: f64 = s
        .points("e2e.c0")
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert!(sum >= 3.0, "the committed rounds arrived: {sum}");
}

#[test]
fn an_overflowing_buffer_drops_the_oldest_and_the_server_is_told_how_many() {
    let mut s = setup("max_buffer_bytes = 131072");
    s.stop_server();
    for _ in 0..10 {
        s.push_round();
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let up_at = now_ms();
    s.start_server();
    let dropped = wait_for("the dropped count", Duration::from_secs(120), || {
        let d = s.dropped_total();
        (d > 0).then_some(d)
    });
    let (all, missing) = wait_for(
        "every record that was not dropped",
        Duration::from_secs(120),
        || {
            let (all, _) = s.all();
            let (_, missing) = missing_before(&all, up_at);
            let d = s.dropped_total();
            (missing.len() as i64 <= d).then_some((all, missing))
        },
    );
    assert!(
        !missing.is_empty(),
        "records were lost, and counted ({dropped})"
    );
    // The oldest went: what was made last before the server came back is there.
    let (max, _) = missing_before(&all, up_at);
    assert!(all.contains_key(&max));
    let newest_missing = *missing.last().unwrap();
    let kept_after: usize = (newest_missing..=max)
        .filter(|q| all.contains_key(q))
        .count();
    assert!(kept_after > 0);
    let log = s.agent.log_text();
    assert!(log.contains("telemetry buffer full"), "{log}");
}
