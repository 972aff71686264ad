//! Human output of the read verbs: aligned tables and human units.

use std::fmt::Write as _;

use crate::control::{
    AclEntryView, AclList, AclOrigin, CounterView, RuleView, Stats, Status, TopEntry, TopOrder,
};

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header row and rows of cells, columns separated by two spaces, no trailing
/// blanks.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.columns[i].0.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                match self.columns[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:width$}  {value}");
    }
    out
}

/// Scales `value` by `base` until it shows in at most three significant digits with one of
/// `suffixes`: one decimal below 100, none from 100.
fn scaled(value: f64, base: f64, suffixes: &[&str], separator: &str) -> String {
    let mut value = value;
    let mut unit = 0;
    loop {
        // What the value would print as at this unit (rounded as displayed).
        let shown = if value < 100.0 {
            (value * 10.0).round() / 10.0
        } else {
            value.round()
        };
        if shown < 1000.0 || unit + 1 == suffixes.len() {
            let text = if unit == 0 || shown >= 100.0 {
                format!("{shown:.0}")
            } else {
                format!("{shown:.1}")
            };
            return format!("{text}{separator}{}", suffixes[unit]);
        }
        value /= base;
        unit += 1;
    }
}

/// A count: exact below 1000, then 1.2k, 34.5k, 678k, 1.2M, ... (SI steps of 1000).
pub fn count(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    scaled(n as f64, 1000.0, &["", "k", "M", "G", "T", "P", "E"], "")
}

/// A rate per second: two significant decimals below 10, then like [`count`].
pub fn rate(per_second: f64) -> String {
    if !per_second.is_finite() || per_second <= 0.0 {
        return "0".into();
    }
    if per_second < 10.0 {
        return format!("{per_second:.2}");
    }
    if per_second < 1000.0 {
        return format!("{per_second:.0}");
    }
    scaled(per_second, 1000.0, &["", "k", "M", "G", "T", "P", "E"], "")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`, ...
pub fn bytes(n: u64) -> String {
    scaled(
        n as f64,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"],
        " ",
    )
}

/// A duration in seconds as its two largest units: `45s`, `2m5s`, `1h2m`, `3d4h`; zero units
/// are left out (`1h`, not `1h0m`).
pub fn duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let Some(first) = UNITS.iter().position(|(size, _)| seconds >= *size) else {
        return "0s".into();
    };
    let mut out = String::new();
    let mut rest = seconds;
    for (size, name) in &UNITS[first..(first + 2).min(UNITS.len())] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            let _ = write!(out, "{n}{name}");
        }
    }
    out
}

/// A rule's window: `500ms`, `1s`, `1m30s`, `2h`.
pub fn window(seconds: f64) -> String {
    let millis = (seconds * 1000.0).round();
    if millis < 1000.0 || millis % 1000.0 != 0.0 {
        return format!("{millis:.0}ms");
    }
    duration((millis / 1000.0) as u64)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if p > 0.0 && p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{p:.1}%")
    }
}

/// `throttle-ctl status`
pub fn status(s: &Status) -> String {
    let mut out = fields(&[
        ("interface", format!("{} ({} mode)", s.iface, s.attach_mode)),
        ("program", format!("id {}", s.program_id)),
        ("generation", s.generation.to_string()),
        ("uptime", duration(s.uptime_seconds)),
        (
            "adopted",
            if s.adopted {
                "yes (took over the pinned program and maps)".into()
            } else {
                "no".into()
            },
        ),
        (
            "pinned at",
            s.pin_dir.clone().unwrap_or_else(|| "- (not pinned)".into()),
        ),
        ("config", s.config_path.clone()),
    ]);
    if !s.maps.is_empty() {
        let mut table = Table::new(&[
            ("MAP", Align::Left),
            ("ENTRIES", Align::Right),
            ("MAX", Align::Right),
            ("USED", Align::Right),
        ]);
        for m in &s.maps {
            table.row(vec![
                m.name.clone(),
                count(m.entries),
                count(m.max_entries),
                percent(m.entries, m.max_entries),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    out
}

/// `50 connections/1s`
fn limit(rule: &RuleView) -> String {
    let amount = if rule.unit == "bytes" {
        bytes(rule.limit)
    } else {
        format!("{} {}", count(rule.limit), rule.unit)
    };
    format!("{amount}/{}", window(rule.window_seconds))
}

fn action(rule: &RuleView) -> String {
    match rule.dscp {
        Some(dscp) => format!("{} (dscp {dscp})", rule.action),
        None => rule.action.clone(),
    }
}

/// Units admitted and refused by a rule, in its own unit (bytes in binary units).
fn rules_table(rules: &[RuleView]) -> Table {
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("NAME", Align::Left),
        ("PROTO", Align::Left),
        ("PORT", Align::Right),
        ("LIMIT", Align::Left),
        ("ACTION", Align::Left),
        ("PASSED", Align::Right),
        ("DROPPED", Align::Right),
        ("MARKED", Align::Right),
        ("DRY-RUN", Align::Right),
        ("BYTES PASSED", Align::Right),
        ("BYTES DROPPED", Align::Right),
    ]);
    for r in rules {
        let c = &r.counters;
        table.row(vec![
            r.id.to_string(),
            r.name.clone(),
            r.protocol.clone(),
            r.port.map_or_else(|| "any".into(), |p| p.to_string()),
            limit(r),
            action(r),
            count(c.passed),
            count(c.dropped),
            count(c.marked),
            count(c.dry_run),
            bytes(c.bytes_passed),
            bytes(c.bytes_dropped),
        ]);
    }
    table
}

/// `throttle-ctl rules`
pub fn rules(rules: &[RuleView]) -> String {
    if rules.is_empty() {
        return "no rules applied\n".into();
    }
    rules_table(rules).render()
}

/// `throttle-ctl top`
pub fn top(entries: &[TopEntry], order: TopOrder) -> String {
    if entries.is_empty() {
        return "no tracked sources\n".into();
    }
    let mut table = Table::new(&[
        ("SOURCE", Align::Left),
        ("RULE", Align::Left),
        ("ADMITTED/S", Align::Right),
        ("REFUSED", Align::Right),
    ]);
    for e in entries {
        table.row(vec![
            e.source.clone(),
            e.rule.clone(),
            rate(e.admitted_per_second),
            count(e.refused),
        ]);
    }
    let by = match order {
        TopOrder::Drops => "most refused first",
        TopOrder::Rate => "highest admitted rate first",
    };
    let n = entries.len();
    let plural = if n == 1 { "" } else { "s" };
    format!("{}({n} source{plural}, {by})\n", table.render())
}

fn counters(c: &CounterView) -> String {
    let mut table = Table::new(&[("COUNTER", Align::Left), ("VALUE", Align::Right)]);
    for (name, value) in [
        ("passed", count(c.passed)),
        ("dropped", count(c.dropped)),
        ("marked", count(c.marked)),
        ("dry-run", count(c.dry_run)),
        ("bytes passed", bytes(c.bytes_passed)),
        ("bytes dropped", bytes(c.bytes_dropped)),
        ("allowlisted", count(c.allowlisted)),
        ("denylisted", count(c.denylisted)),
        ("evasive", count(c.evasive)),
        ("malformed", count(c.malformed)),
        ("non-ip", count(c.non_ip)),
        ("new sources", count(c.new_sources)),
    ] {
        table.row(vec![name.into(), value]);
    }
    table.render()
}

/// `throttle-ctl stats`
pub fn stats(s: &Stats) -> String {
    let mut out = fields(&[
        ("generation", s.generation.to_string()),
        (
            "reloads",
            format!(
                "{} succeeded, {} failed",
                count(s.reloads_succeeded),
                count(s.reloads_failed)
            ),
        ),
        ("over-quota events", count(s.over_quota_events)),
    ]);
    out.push_str("\nall rules (current and removed):\n");
    out.push_str(&counters(&s.global));
    out.push_str("\nper rule:\n");
    out.push_str(&rules(&s.rules));
    out
}

/// `throttle-ctl acl`: allow entries first, then deny; config entries before API ones.
pub fn acl(entries: &[AclEntryView]) -> String {
    if entries.is_empty() {
        return "both access lists are empty\n".into();
    }
    let mut sorted: Vec<&AclEntryView> = entries.iter().collect();
    sorted.sort_by_key(|e| (e.list == AclList::Deny, e.origin == AclOrigin::Api));
    let mut table = Table::new(&[
        ("LIST", Align::Left),
        ("CIDR", Align::Left),
        ("EXPIRES IN", Align::Right),
        ("FROM", Align::Left),
    ]);
    for e in sorted {
        table.row(vec![
            e.list.as_str().into(),
            e.cidr.clone(),
            e.expires_in_seconds
                .map_or_else(|| "never".into(), duration),
            match e.origin {
                AclOrigin::Config => "config".into(),
                AclOrigin::Api => "api".into(),
            },
        ]);
    }
    table.render()
}

/// The confirmation of `block` / `allow`.
pub fn acl_added(e: &AclEntryView) -> String {
    let what = match e.list {
        AclList::Deny => "blocked",
        AclList::Allow => "allowed",
    };
    let expiry = match (e.list, e.expires_in_seconds) {
        (AclList::Deny, Some(s)) => format!(" for {}", duration(s)),
        (AclList::Deny, None) => " (no expiry)".into(),
        (AclList::Allow, _) => " (never limited)".into(),
    };
    format!("{what} {}{expiry}\n", e.cidr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::MapOccupancy;

    #[test]
    fn counts() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1.0k");
        assert_eq!(count(1234), "1.2k");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(99_960), "100k");
        assert_eq!(count(123_456), "123k");
        // Rounding up to 1000 moves to the next unit instead of printing `1000k`.
        assert_eq!(count(999_600), "1.0M");
        assert_eq!(count(3_400_000), "3.4M");
        assert_eq!(count(7_500_000_000), "7.5G");
        assert_eq!(count(u64::MAX), "18.4E");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(999), "999 B");
        // Four digits never show: 1000 to 1023 bytes read as 1.0 KiB.
        assert_eq!(bytes(1023), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 * 1024), "200 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 + 200 * 1024 * 1024), "3.2 GiB");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(f64::NAN), "0");
        assert_eq!(rate(0.5), "0.50");
        assert_eq!(rate(42.4), "42");
        assert_eq!(rate(20_000.0), "20.0k");
        assert_eq!(rate(1_500_000.0), "1.5M");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(125), "2m5s");
        assert_eq!(duration(3600), "1h");
        assert_eq!(duration(3723), "1h2m");
        assert_eq!(duration(3603), "1h");
        assert_eq!(duration(86_400 + 4 * 3600 + 59), "1d4h");
        assert_eq!(duration(400 * 86_400), "400d");
        assert_eq!(window(0.5), "500ms");
        assert_eq!(window(1.0), "1s");
        assert_eq!(window(1.5), "1500ms");
        assert_eq!(window(90.0), "1m30s");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("N", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1".into(), "".into()]);
        t.row(vec!["longer".into(), "12345".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME        N  NOTE\n\
             a           1\n\
             longer  12345  x\n"
        );
    }

    fn rule() -> RuleView {
        RuleView {
            id: 1,
            name: "https-new-connections".into(),
            protocol: "tcp".into(),
            port: Some(443),
            unit: "connections".into(),
            limit: 50,
            window_seconds: 1.0,
            action: "mark".into(),
            dscp: Some(8),
            counters: CounterView {
                passed: 1_234_567,
                dropped: 42,
                bytes_passed: 5 * 1024 * 1024,
                ..Default::default()
            },
        }
    }

    #[test]
    fn rules_rendering() {
        let text = rules(&[rule()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID  NAME"));
        for cell in [
            "https-new-connections",
            "443",
            "50 connections/1s",
            "mark (dscp 8)",
            "1.2M",
            "42",
            "5.0 MiB",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {text}");
        }
        // Columns line up: every cell of the row ends where its header does for right-aligned
        // ones (PASSED here).
        let end = lines[0].find("PASSED").unwrap() + "PASSED".len();
        assert_eq!(&lines[1][end - 4..end], "1.2M");
        assert_eq!(rules(&[]), "no rules applied\n");
    }

    #[test]
    fn status_rendering() {
        let s = Status {
            iface: "eth0".into(),
            attach_mode: "driver".into(),
            program_id: 42,
            generation: 3,
            uptime_seconds: 3723,
            adopted: true,
            pin_dir: Some("/sys/fs/bpf/throttle".into()),
            config_path: "/etc/throttle/throttle.yaml".into(),
            maps: vec![MapOccupancy {
                name: "sources".into(),
                entries: 1500,
                max_entries: 1_048_576,
            }],
        };
        let text = status(&s);
        assert!(text.contains("interface   eth0 (driver mode)\n"), "{text}");
        assert!(text.contains("uptime      1h2m\n"));
        assert!(text.contains("pinned at   /sys/fs/bpf/throttle\n"));
        assert!(text.contains("sources     1.5k  1.0M  0.1%"), "{text}");
    }

    #[test]
    fn acl_rendering_sorted() {
        let entry = |list, cidr: &str, expires, origin| AclEntryView {
            list,
            cidr: cidr.into(),
            expires_in_seconds: expires,
            origin,
        };
        let text = acl(&[
            entry(AclList::Deny, "198.18.0.0/24", Some(600), AclOrigin::Api),
            entry(AclList::Allow, "10.0.0.0/8", None, AclOrigin::Config),
            entry(AclList::Deny, "2001:db8::/32", None, AclOrigin::Config),
        ]);
        assert_eq!(
            text,
            "LIST   CIDR           EXPIRES IN  FROM\n\
             allow  10.0.0.0/8          never  config\n\
             deny   2001:db8::/32       never  config\n\
             deny   198.18.0.0/24         10m  api\n"
        );
        assert_eq!(
            acl_added(&entry(
                AclList::Deny,
                "198.18.0.0/24",
                Some(600),
                AclOrigin::Api
            )),
            "blocked 198.18.0.0/24 for 10m\n"
        );
    }

    #[test]
    fn top_rendering() {
        let text = top(
            &[TopEntry {
                source: "198.18.0.3".into(),
                rule: "dns".into(),
                admitted_per_second: 500.0,
                refused: 97_500,
            }],
            TopOrder::Drops,
        );
        assert!(text.contains("198.18.0.3  dns"), "{text}");
        assert!(text.contains("500    97.5k"), "{text}");
        assert!(text.ends_with("(1 source, most refused first)\n"));
    }
}
