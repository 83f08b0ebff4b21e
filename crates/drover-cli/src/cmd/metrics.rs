//! `drover metrics query|show|events`: fleet aggregates in the metrics
//! query language and one device's telemetry (docs/monitoring.md).
//!
//! The query is parsed by the server, which answers a bad one with the
//! column and the reason; this command only builds the request and prints.

use clap::{Args, Subcommand};
use drover_proto::metrics::{DeviceEvents, DeviceMetrics, MetricSeries, MetricsQueryResult};

use crate::client::{Client, escape};
use crate::error::CliResult;
use crate::output::{self, or_dash};

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Aggregate a metric over devices, e.g.
    /// `avg(cpu) by tag.region where group = "eu-gateways"`.
    Query(QueryArgs),
    /// One device's points of a metric in time order (without --name: the
    /// device's metric names).
    Show(ShowArgs),
    /// One device's events in time order.
    Events(EventsArgs),
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// `AGG(metric) [by device | by tag.KEY | by inventory.KEY] [where DEVICE-QUERY]`;
    /// AGG is count, avg, min, max, sum, p50 or p95.
    pub query: String,
    /// Start: a duration before now (6h, 30m, 2d) or an RFC 3339 time.
    #[arg(long, default_value = "1h")]
    pub since: String,
    /// End (exclusive): a duration before now or an RFC 3339 time (default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Bucket width (e.g. 5m); default: the resolution read (10s raw, 1m, 1h).
    #[arg(long)]
    pub step: Option<String>,
    /// Print every bucket (group, bucket start, value) instead of one summary line per group.
    #[arg(long)]
    pub buckets: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Device id.
    pub device: String,
    /// Metric name.
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "1h")]
    pub since: String,
    #[arg(long)]
    pub until: Option<String>,
    /// Most points to fetch.
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Device id.
    pub device: String,
    #[arg(long, default_value = "1d")]
    pub since: String,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub limit: Option<u32>,
}

/// `&k=v` for each present parameter.
fn params(pairs: &[(&str, Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("&{k}={}", escape(v))))
        .collect()
}

/// A number as a human reads it: integers bare, others with up to 3 decimals.
pub fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Up to `width` block characters from low to high, averaging neighbours.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let cols = values.len().min(width);
    let per = values.len() as f64 / cols as f64;
    let points: Vec<f64> = (0..cols)
        .map(|c| {
            let from = (c as f64 * per) as usize;
            let to = (((c + 1) as f64 * per) as usize).clamp(from + 1, values.len());
            values[from..to].iter().sum::<f64>() / (to - from) as f64
        })
        .collect();
    let lo = points.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = points.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    points
        .iter()
        .map(|v| {
            if hi <= lo {
                BARS[3]
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn group_name(s: &MetricSeries, grouped: bool) -> String {
    match (&s.group, grouped) {
        (Some(g), _) => g.clone(),
        (None, true) => "(none)".into(),
        (None, false) => "(all)".into(),
    }
}

pub async fn run(client: &Client, cmd: MetricsCommand, json: bool) -> CliResult<()> {
    match cmd {
        MetricsCommand::Query(a) => {
            let path = format!(
                "/api/v1/metrics/query?q={}{}",
                escape(&a.query),
                params(&[
                    ("since", Some(a.since.clone())),
                    ("until", a.until.clone()),
                    ("step", a.step.clone()),
                ])
            );
            let r: MetricsQueryResult = client.get(&path).await?;
            if json {
                return output::json(&r);
            }
            print_query(&r, a.buckets);
            Ok(())
        }
        MetricsCommand::Show(a) => {
            let path = format!(
                "/api/v1/devices/{}/metrics?since={}{}",
                escape(&a.device),
                escape(&a.since),
                params(&[
                    ("name", a.name.clone()),
                    ("until", a.until.clone()),
                    ("limit", a.limit.map(|l| l.to_string())),
                ])
            );
            let m: DeviceMetrics = client.get(&path).await?;
            if json {
                return output::json(&m);
            }
            print_device(&m);
            Ok(())
        }
        MetricsCommand::Events(a) => {
            let path = format!(
                "/api/v1/devices/{}/events?since={}{}",
                escape(&a.device),
                escape(&a.since),
                params(&[
                    ("until", a.until.clone()),
                    ("limit", a.limit.map(|l| l.to_string())),
                ])
            );
            let e: DeviceEvents = client.get(&path).await?;
            if json {
                return output::json(&e);
            }
            let rows = e
                .events
                .iter()
                .map(|ev| {
                    vec![
                        ev.time.clone(),
                        ev.severity.clone(),
                        ev.name.clone(),
                        ev.message.clone(),
                    ]
                })
                .collect();
            output::table(&["time", "severity", "name", "message"], rows);
            if e.truncated {
                println!("(more events than shown: narrow --since/--until or raise --limit)");
            }
            Ok(())
        }
    }
}

fn print_query(r: &MetricsQueryResult, buckets: bool) {
    println!(
        "{}  from {} to {}, step {} s, read from {} data, {} devices matched",
        r.query,
        r.since,
        r.until,
        r.step_ms / 1000,
        r.source,
        r.matched_devices
    );
    let grouped = r.group_by.is_some();
    if r.series.is_empty() {
        println!("no device that matched has metric {:?}", r.metric);
        return;
    }
    if buckets {
        let rows = r
            .series
            .iter()
            .flat_map(|s| {
                let g = group_name(s, grouped);
                s.buckets.iter().map(move |b| {
                    vec![
                        g.clone(),
                        b.start.clone(),
                        fmt_value(b.value),
                        b.count.to_string(),
                    ]
                })
            })
            .collect();
        output::table(&["group", "bucket", &r.aggregate, "points"], rows);
        return;
    }
    let rows = r
        .series
        .iter()
        .map(|s| {
            let values: Vec<f64> = s.buckets.iter().map(|b| b.value).collect();
            let points: u64 = s.buckets.iter().map(|b| b.count).sum();
            let (lo, hi) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
                    (l.min(*v), h.max(*v))
                });
            let show = |v: f64| {
                if v.is_finite() {
                    fmt_value(v)
                } else {
                    "-".into()
                }
            };
            vec![
                group_name(s, grouped),
                s.devices.to_string(),
                points.to_string(),
                show(lo),
                show(hi),
                values
                    .last()
                    .map(|v| fmt_value(*v))
                    .unwrap_or_else(|| "-".into()),
                sparkline(&values, 40),
            ]
        })
        .collect();
    let by = r.group_by.as_deref().unwrap_or("group");
    output::table(
        &[
            by, "devices", "points", "lowest", "highest", "last", "trend",
        ],
        rows,
    );
}

fn print_device(m: &DeviceMetrics) {
    println!(
        "device {}  from {} to {}  dropped on the device: {}  last batch: {}",
        m.device_id,
        m.since,
        m.until,
        m.dropped_total,
        or_dash(m.last_batch_at.as_deref())
    );
    let Some(name) = &m.name else {
        if m.names.is_empty() {
            println!("no metrics stored for this device");
        } else {
            println!("metrics: {}", m.names.join(", "));
        }
        return;
    };
    if m.points.is_empty() {
        println!(
            "no points of {name:?} in this range (`drover metrics show {}` lists the device's metrics)",
            m.device_id
        );
        return;
    }
    let rows = m
        .points
        .iter()
        .map(|p| {
            vec![
                p.time.clone(),
                fmt_value(p.value),
                p.clock.clone(),
                p.boot_id.clone(),
                p.seq.to_string(),
            ]
        })
        .collect();
    output::table(&["time", name, "clock", "boot", "seq"], rows);
    if m.truncated {
        println!("(more points than shown: narrow --since/--until or raise --limit)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_sparklines_read_well() {
        assert_eq!(fmt_value(42.0), "42");
        assert_eq!(fmt_value(0.12345), "0.123");
        assert_eq!(fmt_value(2.5), "2.5");
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0, 5.0], 10), "▄▄");
        assert_eq!(
            sparkline(&(0..100).map(f64::from).collect::<Vec<_>>(), 10)
                .chars()
                .count(),
            10
        );
        assert_eq!(sparkline(&[], 10), "");
        assert_eq!(
            params(&[("a", Some("x y".into())), ("b", None)]),
            "&a=x%20y"
        );
    }
}
