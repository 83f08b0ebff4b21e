//! Custom metrics from local software: a StatsD-compatible UDP listener on
//! 127.0.0.1 and a drop-in folder, both aggregated per collection interval.
//!
//! StatsD lines (one or more per datagram, separated by `\n`):
//!
//! | line | meaning | recorded at the end of the interval |
//! |---|---|---|
//! | `name:12.5\|g` | gauge: the last value wins; `+N`/`-N` adds to the value of this interval | `name` |
//! | `name:3\|c`, `name:1\|c\|@0.1` | counter: summed, divided by the sample rate | `name` (the interval's sum) |
//! | `name:320\|ms`, `name:4\|h` | timer / histogram | `name.count`, `name.avg`, `name.min`, `name.max` |
//!
//! DogStatsD tags (`|#k:v`) are accepted and ignored. Names must be valid
//! metric names (ASCII letters, digits, `_ . - / :`, starting with a
//! letter or `_`, at most 128 bytes with any suffix). At most
//! `max_names` distinct names are kept per interval; lines beyond that,
//! and lines that do not parse, are counted (`agent.custom_invalid` /
//! `agent.custom_over_limit`) and otherwise ignored. Nothing a local
//! program sends can make this module fail or grow without bound.
//!
//! The drop-in folder (`DATA/metrics.d` by default) holds text files, read
//! once per interval: one `name value` per line, `#` starts a comment, a
//! value is a gauge. Files whose name starts with `.` are skipped, so a
//! writer can write `.x.tmp` and rename it into place. At most 100 files
//! of at most 64 KiB each are read.

use std::collections::BTreeMap;
use std::path::Path;

use super::collect::Point;

/// Longest metric name the server accepts.
const MAX_NAME: usize = drover_proto::telemetry::MAX_NAME_BYTES;
const MAX_DROPIN_FILES: usize = 100;
const MAX_DROPIN_FILE_BYTES: u64 = 64 * 1024;

/// The server's rule for metric names (`drover-metricsql`'s
/// `valid_metric_name`), so nothing is buffered only to be refused.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"_.-/:".contains(&c))
}

#[derive(Debug, Clone, PartialEq)]
enum Agg {
    Gauge(f64),
    Counter(f64),
    Timer {
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
    },
}

/// Custom metrics of the current interval.
#[derive(Debug)]
pub struct Aggregator {
    max_names: usize,
    metrics: BTreeMap<String, Agg>,
    /// Lines that did not parse, this interval.
    pub invalid: u64,
    /// Lines for a new name when `max_names` were already kept.
    pub over_limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Timer,
}

impl Aggregator {
    pub fn new(max_names: usize) -> Aggregator {
        Aggregator {
            max_names,
            metrics: BTreeMap::new(),
            invalid: 0,
            over_limit: 0,
        }
    }

    /// Feeds one datagram.
    pub fn feed(&mut self, packet: &[u8]) {
        let Ok(text) = std::str::from_utf8(packet) else {
            self.invalid += 1;
            return;
        };
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            if !self.line(line) {
                self.invalid += 1;
            }
        }
    }

    /// One StatsD line; false when it does not parse.
    fn line(&mut self, line: &str) -> bool {
        let Some((name, rest)) = line.split_once(':') else {
            return false;
        };
        let mut parts = rest.split('|');
        let (Some(value), Some(kind)) = (parts.next(), parts.next()) else {
            return false;
        };
        let kind = match kind {
            "g" => Kind::Gauge,
            "c" => Kind::Counter,
            "ms" | "h" => Kind::Timer,
            _ => return false,
        };
        let mut rate = 1.0;
        for p in parts {
            if let Some(r) = p.strip_prefix('@') {
                match r.parse::<f64>() {
                    Ok(r) if r > 0.0 && r <= 1.0 => rate = r,
                    _ => return false,
                }
            } else if !p.starts_with('#') {
                return false;
            }
        }
        let Ok(v) = value.parse::<f64>() else {
            return false;
        };
        let relative = kind == Kind::Gauge && (value.starts_with('+') || value.starts_with('-'));
        let suffix = if kind == Kind::Timer {
            ".count".len()
        } else {
            0
        };
        if !v.is_finite() || !valid_name(name) || name.len() + suffix > MAX_NAME {
            return false;
        }
        self.add(name, kind, v, rate, relative)
    }

    fn add(&mut self, name: &str, kind: Kind, v: f64, rate: f64, relative: bool) -> bool {
        if !self.metrics.contains_key(name) && self.metrics.len() >= self.max_names {
            self.over_limit += 1;
            return true;
        }
        let fresh = || match kind {
            Kind::Gauge => Agg::Gauge(0.0),
            Kind::Counter => Agg::Counter(0.0),
            Kind::Timer => Agg::Timer {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            },
        };
        let entry = self.metrics.entry(name.to_string()).or_insert_with(fresh);
        // A name reused with another type starts over with the new type.
        let same = matches!(
            (&*entry, kind),
            (Agg::Gauge(_), Kind::Gauge)
                | (Agg::Counter(_), Kind::Counter)
                | (Agg::Timer { .. }, Kind::Timer)
        );
        if !same {
            *entry = fresh();
        }
        match entry {
            Agg::Gauge(g) if relative => *g += v,
            Agg::Gauge(g) => *g = v,
            Agg::Counter(c) => *c += v / rate,
            Agg::Timer {
                count,
                sum,
                min,
                max,
            } => {
                *count += 1;
                *sum += v;
                *min = min.min(v);
                *max = max.max(v);
            }
        }
        true
    }

    /// Sets a gauge (from the drop-in folder).
    pub fn gauge(&mut self, name: &str, value: f64) -> bool {
        if !value.is_finite() || !valid_name(name) {
            return false;
        }
        self.add(name, Kind::Gauge, value, 1.0, false)
    }

    /// The interval's values; starts the next interval.
    pub fn flush(&mut self) -> Vec<Point> {
        let mut out = Vec::with_capacity(self.metrics.len() + 2);
        for (name, agg) in std::mem::take(&mut self.metrics) {
            match agg {
                Agg::Gauge(v) | Agg::Counter(v) if v.is_finite() => out.push(Point::new(&name, v)),
                Agg::Timer {
                    count,
                    sum,
                    min,
                    max,
                } if count > 0 && sum.is_finite() => {
                    out.push(Point::new(&format!("{name}.count"), count as f64));
                    out.push(Point::new(&format!("{name}.avg"), sum / count as f64));
                    out.push(Point::new(&format!("{name}.min"), min));
                    out.push(Point::new(&format!("{name}.max"), max));
                }
                _ => self.invalid += 1,
            }
        }
        if self.invalid > 0 {
            out.push(Point::new("agent.custom_invalid", self.invalid as f64));
            tracing::debug!(
                lines = self.invalid,
                "custom metric lines ignored (not valid StatsD or drop-in lines)"
            );
        }
        if self.over_limit > 0 {
            out.push(Point::new(
                "agent.custom_over_limit",
                self.over_limit as f64,
            ));
        }
        self.invalid = 0;
        self.over_limit = 0;
        out
    }

    /// Reads the drop-in folder into this interval (a missing folder is
    /// no metrics).
    pub fn read_dropin(&mut self, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<_> = rd
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files.into_iter().take(MAX_DROPIN_FILES) {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if meta.len() > MAX_DROPIN_FILE_BYTES {
                tracing::warn!(file = %path.display(), "drop-in metrics file over 64 KiB; skipped");
                self.invalid += 1;
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                self.invalid += 1;
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut it = line.split_whitespace();
                let ok = match (it.next(), it.next(), it.next()) {
                    (Some(n), Some(v), None) => v.parse::<f64>().is_ok_and(|v| self.gauge(n, v)),
                    _ => false,
                };
                if !ok {
                    self.invalid += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(points: &[Point]) -> BTreeMap<String, f64> {
        points.iter().map(|p| (p.name.clone(), p.value)).collect()
    }

    #[test]
    fn gauges_counters_and_timers_are_aggregated_per_interval() {
        let mut a = Aggregator::new(100);
        a.feed(b"queue.depth:5|g\nqueue.depth:7|g\nqueue.depth:+3|g\nqueue.depth:-1|g");
        a.feed(b"requests:1|c\nrequests:2|c\r\nrequests:1|c|@0.5|#env:prod\n");
        a.feed(b"latency:100|ms\nlatency:300|ms\nlatency:200|h");
        let v = values(&a.flush());
        assert_eq!(v["queue.depth"], 9.0);
        assert_eq!(v["requests"], 5.0);
        assert_eq!(v["latency.count"], 3.0);
        assert_eq!(v["latency.avg"], 200.0);
        assert_eq!(v["latency.min"], 100.0);
        assert_eq!(v["latency.max"], 300.0);
        assert!(!v.contains_key("agent.custom_invalid"));
        assert!(a.flush().is_empty(), "a new interval starts empty");
    }

    #[test]
    fn bad_lines_are_counted_and_never_stored() {
        let mut a = Aggregator::new(2);
        for bad in [
            &b"no-colon"[..],
            b"x:1",
            b"x:1|q",
            b"x:abc|g",
            b"x:NaN|g",
            b"x:inf|c",
            b"9bad:1|g",
            b"sp ace:1|g",
            b"x:1|c|@2",
            b"x:1|c|junk",
            &[0xff, 0xfe],
        ] {
            a.feed(bad);
        }
        let long = format!("{}:1|ms", "a".repeat(MAX_NAME - 2));
        a.feed(long.as_bytes());
        a.feed(b"a:1|g\nb:1|g\nc:1|g\na:2|g");
        let v = values(&a.flush());
        assert_eq!(v["agent.custom_invalid"], 12.0);
        assert_eq!(v["agent.custom_over_limit"], 1.0, "c is over the 2 names");
        assert_eq!(v["a"], 2.0);
        assert!(!v.contains_key("c"));
    }

    #[test]
    fn the_drop_in_folder_gives_gauges_and_skips_hidden_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("app.txt"),
            "# comment\nbattery.pct 81.5\n\nfans 2\nbad line here\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".tmp"), "hidden 1\n").unwrap();
        std::fs::write(
            d.path().join("big"),
            "x 1\n".repeat(MAX_DROPIN_FILE_BYTES as usize),
        )
        .unwrap();
        let mut a = Aggregator::new(100);
        a.read_dropin(d.path());
        a.read_dropin(&d.path().join("missing"));
        let v = values(&a.flush());
        assert_eq!(v["battery.pct"], 81.5);
        assert_eq!(v["fans"], 2.0);
        assert!(!v.contains_key("hidden") && !v.contains_key("x"));
        assert_eq!(
            v["agent.custom_invalid"], 2.0,
            "the bad line and the big file"
        );
    }
}
