//! Prometheus metrics, served at `/metrics`: the admin API's request counter, kept here, and
//! the data plane's figures, read from the daemon through [`Control`] at each scrape.
//!
//! The data-plane counters are absolute totals kept in BPF maps, so they are built as metric
//! families at scrape time rather than mirrored into client-side counters.

use prometheus::{
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
    IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::control::{Control, CounterView, Stats, Status};

/// Label of admin requests that matched no route: keeps the `route` label set bounded.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The daemon's metrics: a registry for what the daemon itself counts, and [`Metrics::render`]
/// for everything.
pub struct Metrics {
    registry: Registry,
    admin_requests: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "throttle_admin_requests_total",
                "Admin API requests, by matched route template and HTTP status code.",
            ),
            &["route", "code"],
        )
        .expect("a valid metric definition");
        registry
            .register(Box::new(admin_requests.clone()))
            .expect("registered once, in a fresh registry");
        Metrics {
            registry,
            admin_requests,
        }
    }

    /// Counts one admin API request. `route` must be a route template (or
    /// [`UNMATCHED_ROUTE`]), never a raw path, so the label set stays bounded.
    pub fn admin_request(&self, route: &str, code: u16) {
        self.admin_requests
            .with_label_values(&[route, &code.to_string()])
            .inc();
    }

    /// The text exposition (content type [`prometheus::TEXT_FORMAT`]). Reads `stats()` and
    /// `status()` now; when either fails, the rest is still served and `throttle_up` is 0.
    pub fn render(&self, control: &dyn Control) -> String {
        let mut families = self.registry.gather();
        let mut up = true;
        match control.stats() {
            Ok(stats) => families.extend(stats_families(&stats)),
            Err(e) => {
                up = false;
                tracing::error!(category = "metrics", error = %e, "cannot read the counters for a scrape");
            }
        }
        match control.status() {
            Ok(status) => families.extend(status_families(&status)),
            Err(e) => {
                up = false;
                tracing::error!(category = "metrics", error = %e, "cannot read the status for a scrape");
            }
        }
        families.push(family(
            "throttle_up",
            "1 when this scrape could read the data plane's counters and status, else 0.",
            MetricType::GAUGE,
            [(vec![], if up { 1.0 } else { 0.0 })],
        ));
        // The encoder refuses empty families (e.g. no rules, no admin request yet).
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));

        let mut text = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut text) {
            tracing::error!(category = "metrics", error = %e, "cannot encode the metrics");
        }
        text
    }
}

type Labels = Vec<(&'static str, String)>;

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(labels, value)| {
            let mut metric = Metric::from_label(
                labels
                    .into_iter()
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.to_owned());
                        pair.set_value(value);
                        pair
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut counter = Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                }
                _ => {
                    let mut gauge = Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
            }
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(name: &str, help: &str, value: u64) -> MetricFamily {
    family(name, help, MetricType::COUNTER, [(vec![], value as f64)])
}

fn stats_families(stats: &Stats) -> Vec<MetricFamily> {
    let per_rule = |pick: fn(&CounterView) -> Vec<(&'static str, u64)>| {
        stats
            .rules
            .iter()
            .flat_map(move |rule| {
                pick(&rule.counters).into_iter().map(|(verdict, n)| {
                    (
                        vec![("rule", rule.name.clone()), ("verdict", verdict.to_owned())],
                        n as f64,
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let g = &stats.global;
    vec![
        family(
            "throttle_packets_total",
            "Packets that matched a rule, by verdict. marked and dry_run packets were passed and \
             are also counted under passed.",
            MetricType::COUNTER,
            per_rule(|c| {
                vec![
                    ("passed", c.passed),
                    ("dropped", c.dropped),
                    ("marked", c.marked),
                    ("dry_run", c.dry_run),
                ]
            }),
        ),
        family(
            "throttle_bytes_total",
            "Bytes (whole frames) of packets that matched a rule, by verdict.",
            MetricType::COUNTER,
            per_rule(|c| vec![("passed", c.bytes_passed), ("dropped", c.bytes_dropped)]),
        ),
        family(
            "throttle_new_sources_total",
            "Sources that started being tracked under a rule.",
            MetricType::COUNTER,
            stats.rules.iter().map(|r| {
                (
                    vec![("rule", r.name.clone())],
                    r.counters.new_sources as f64,
                )
            }),
        ),
        family(
            "throttle_global_packets_total",
            "Every packet the program saw, all rules and none, by verdict.",
            MetricType::COUNTER,
            [
                (vec![("verdict", "passed".to_owned())], g.passed as f64),
                (vec![("verdict", "dropped".to_owned())], g.dropped as f64),
            ],
        ),
        counter(
            "throttle_malformed_packets_total",
            "Packets passed because a header was cut short or malformed.",
            g.malformed,
        ),
        counter(
            "throttle_non_ip_packets_total",
            "Packets passed because they are not IPv4 or IPv6.",
            g.non_ip,
        ),
        counter(
            "throttle_allowlisted_packets_total",
            "Packets passed by the allowlist.",
            g.allowlisted,
        ),
        counter(
            "throttle_denylisted_packets_total",
            "Packets dropped by the denylist.",
            g.denylisted,
        ),
        counter(
            "throttle_evasive_packets_total",
            "Packets dropped as evasive (tiny first fragments, over-long IPv6 header chains).",
            g.evasive,
        ),
        family(
            "throttle_reloads_total",
            "Rule-set reloads, by result.",
            MetricType::COUNTER,
            [
                (
                    vec![("result", "success".to_owned())],
                    stats.reloads_succeeded as f64,
                ),
                (
                    vec![("result", "failure".to_owned())],
                    stats.reloads_failed as f64,
                ),
            ],
        ),
        counter(
            "throttle_over_quota_events_total",
            "Over-quota events read from the kernel's ring buffer.",
            stats.over_quota_events,
        ),
    ]
}

fn status_families(status: &Status) -> Vec<MetricFamily> {
    let per_map = |pick: fn(&crate::control::MapOccupancy) -> u64| {
        status
            .maps
            .iter()
            .map(move |m| (vec![("map", m.name.clone())], pick(m) as f64))
            .collect::<Vec<_>>()
    };
    vec![
        family(
            "throttle_map_entries",
            "Entries in a BPF map.",
            MetricType::GAUGE,
            per_map(|m| m.entries),
        ),
        family(
            "throttle_map_max_entries",
            "Capacity of a BPF map, in entries.",
            MetricType::GAUGE,
            per_map(|m| m.max_entries),
        ),
        family(
            "throttle_attach_mode",
            "1 for the mode the XDP program is attached in (driver or skb).",
            MetricType::GAUGE,
            [(vec![("mode", status.attach_mode.clone())], 1.0)],
        ),
        family(
            "throttle_rule_set_generation",
            "Generation of the applied rule set (1 for the first apply, +1 per reload).",
            MetricType::GAUGE,
            [(vec![], status.generation as f64)],
        ),
        family(
            "throttle_uptime_seconds",
            "Seconds since the daemon started.",
            MetricType::GAUGE,
            [(vec![], status.uptime_seconds as f64)],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::admin::mock::MockControl;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn renders_rule_global_map_and_admin_figures() {
        let metrics = Metrics::new();
        metrics.admin_request("/v1/status", 200);
        metrics.admin_request("/v1/status", 200);
        let text = metrics.render(&MockControl::new());
        for line in [
            r#"throttle_packets_total{rule="ssh",verdict="passed"} 100"#,
            r#"throttle_packets_total{rule="ssh",verdict="dropped"} 7"#,
            r#"throttle_packets_total{rule="ssh",verdict="marked"} 2"#,
            r#"throttle_packets_total{rule="ssh",verdict="dry_run"} 3"#,
            r#"throttle_bytes_total{rule="ssh",verdict="passed"} 6400"#,
            r#"throttle_bytes_total{rule="dns",verdict="dropped"} 0"#,
            r#"throttle_new_sources_total{rule="ssh"} 4"#,
            r#"throttle_global_packets_total{verdict="passed"} 1000"#,
            r#"throttle_global_packets_total{verdict="dropped"} 50"#,
            "throttle_malformed_packets_total 5",
            "throttle_non_ip_packets_total 6",
            "throttle_allowlisted_packets_total 8",
            "throttle_denylisted_packets_total 9",
            "throttle_evasive_packets_total 10",
            r#"throttle_map_entries{map="SOURCES"} 3"#,
            r#"throttle_map_max_entries{map="SOURCES"} 65536"#,
            r#"throttle_attach_mode{mode="driver"} 1"#,
            "throttle_rule_set_generation 2",
            "throttle_uptime_seconds 3600",
            r#"throttle_reloads_total{result="success"} 1"#,
            r#"throttle_reloads_total{result="failure"} 1"#,
            "throttle_over_quota_events_total 11",
            r#"throttle_admin_requests_total{code="200",route="/v1/status"} 2"#,
            "throttle_up 1",
            "# TYPE throttle_packets_total counter",
            "# TYPE throttle_map_entries gauge",
        ] {
            assert!(has_line(&text, line), "missing `{line}` in:\n{text}");
        }
        // Every family has its HELP line.
        for type_line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = type_line.split(' ').nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }

    #[test]
    fn failed_reads_still_serve_the_rest_with_up_zero() {
        let metrics = Metrics::new();
        metrics.admin_request("/metrics", 200);
        let control = MockControl::new();
        control.fail_stats();
        let text = metrics.render(&control);
        assert!(has_line(&text, "throttle_up 0"), "{text}");
        assert!(!text.contains("throttle_packets_total"), "{text}");
        // Status-derived and admin figures are still there.
        assert!(has_line(&text, "throttle_rule_set_generation 2"), "{text}");
        assert!(
            has_line(
                &text,
                r#"throttle_admin_requests_total{code="200",route="/metrics"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn promtool_accepts_the_exposition() {
        let metrics = Metrics::new();
        metrics.admin_request("/v1/status", 200);
        metrics.admin_request(UNMATCHED_ROUTE, 404);
        let text = metrics.render(&MockControl::new());

        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("THROTTLE_TEST_TOOLS_REQUIRED").is_some() {
                    panic!("promtool not installed (THROTTLE_TEST_TOOLS_REQUIRED is set)");
                }
                println!("SKIPPED: promtool not installed");
                return;
            }
            other => other.expect("run promtool"),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed ({}):\n{}{}\n-- input --\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}
