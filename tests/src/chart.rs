//! docs/bench/chart.png: the figures of docs/bench/latest.json drawn as ratio bars, one panel
//! per benchmark suite, so a reader sees at a glance what costs how many times its baseline.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use plotters::{coord::ranged1d::SegmentValue, prelude::*};

/// Debian's fonts-dejavu-core (installed by `cargo xtask setup`).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const WIDTH: u32 = 1400;
const ROW_HEIGHT: u32 = 26;
const PANEL_CHROME: u32 = 110;

/// One bar: a row of latest.json.
struct Bar {
    label: String,
    value: f64,
    unit: String,
    ratio: f64,
}

/// A panel: one suite's rows of one unit.
struct Panel {
    title: &'static str,
    suite: &'static str,
    unit: &'static str,
    /// The product's target ratio, drawn as a second red line; bars over it are orange.
    target: Option<f64>,
}

const PANELS: [Panel; 4] = [
    Panel {
        title:
            "XDP decision cost, x bare program; red: 1x and the 2x target (cargo xtask bench xdp)",
        suite: "xdp",
        unit: "ns/packet",
        target: Some(2.0),
    },
    Panel {
        title: "Flood CPU per packet, x no filter (cargo xtask bench flood)",
        suite: "flood",
        unit: "ns/packet",
        target: None,
    },
    Panel {
        title: "Reload latency, x 10 rules (cargo xtask bench reload)",
        suite: "reload",
        unit: "ms",
        target: None,
    },
    Panel {
        title: "Rule-set apply in the data plane, x 10 rules (cargo xtask bench xdp)",
        suite: "xdp",
        unit: "ms",
        target: None,
    },
];

fn bars(rows: &[serde_json::Value], panel: &Panel) -> Vec<Bar> {
    rows.iter()
        .filter(|r| r["suite"] == panel.suite && r["unit"] == panel.unit)
        .filter_map(|r| {
            Some(Bar {
                label: r["what"].as_str().or(r["name"].as_str())?.to_string(),
                value: r["value"].as_f64()?,
                unit: r["unit"].as_str()?.to_string(),
                ratio: r["ratio"].as_f64()?,
            })
        })
        .collect()
}

/// Three significant digits or so: 0.0172 ms reads 0.017, 1487.5 ns reads 1488.
fn figure(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// Loads the chart's font; the benchmark calls it before measuring, so a missing font fails
/// in a second, not after minutes of flooding.
pub fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

/// Draws every suite present in `rows` (latest.json's entries) into `out`.
pub fn draw(rows: &[serde_json::Value], out: &Path) -> Result<()> {
    register_font()?;
    let panels: Vec<(&Panel, Vec<Bar>)> = PANELS
        .iter()
        .map(|p| (p, bars(rows, p)))
        .filter(|(_, b)| !b.is_empty())
        .collect();
    if panels.is_empty() {
        bail!("no benchmark figures to draw");
    }
    let heights: Vec<u32> = panels
        .iter()
        .map(|(_, b)| PANEL_CHROME + ROW_HEIGHT * b.len() as u32)
        .collect();
    let root = BitMapBackend::new(out, (WIDTH, heights.iter().sum())).into_drawing_area();
    root.fill(&WHITE)?;
    let mut rest = root;
    for ((panel, bars), height) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*height);
        draw_panel(&area, panel, bars)?;
        rest = below;
    }
    rest.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    bars: &[Bar],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let widest = bars.iter().map(|b| b.ratio).fold(1.0, f64::max);
    let x_max = panel.target.map_or(widest, |t| widest.max(t)) * 1.25;
    let n = bars.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(480)
        .build_cartesian_2d(0.0..x_max, (0u32..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("ratio to the baseline measured in the same run")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => (n - 1)
                .checked_sub(*i)
                .and_then(|k| bars.get(k as usize))
                .map(|b| b.label.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .y_labels(bars.len())
        .label_style(("sans-serif", 14))
        .draw()?;
    // First row on top.
    chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
        let i = n - 1 - k as u32;
        // Over the product's target: orange.
        let color = match panel.target {
            Some(t) if b.ratio > t => RGBColor(220, 120, 40),
            _ => RGBColor(70, 110, 180),
        };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (b.ratio, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
        let i = n - 1 - k as u32;
        Text::new(
            format!(" {} {} ({:.2}x)", figure(b.value), b.unit, b.ratio),
            (b.ratio, SegmentValue::CenterOf(i)),
            ("sans-serif", 13).into_font().color(&BLACK),
        )
    }))?;
    let lines = std::iter::once(1.0).chain(panel.target);
    for x in lines {
        chart.draw_series(LineSeries::new(
            [(x, SegmentValue::Exact(0)), (x, SegmentValue::Exact(n))],
            RED.stroke_width(1),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(suite: &str, what: &str, unit: &str, value: f64, ratio: f64) -> serde_json::Value {
        serde_json::json!({"suite": suite, "name": what, "what": what, "unit": unit,
                           "value": value, "ratio": ratio})
    }

    #[test]
    fn draws_one_panel_per_suite_and_unit_present() {
        let rows = vec![
            row("xdp", "bare XDP_PASS", "ns/packet", 6.0, 1.0),
            row("xdp", "tracked source", "ns/packet", 60.0, 10.0),
            row("xdp", "memory", "bytes", 133.0, 2.2),
            row("reload", "10 rules", "ms", 3.0, 1.0),
            row("reload", "10000 rules", "ms", 90.0, 30.0),
        ];
        let out = std::env::temp_dir().join(format!("throttle-chart-{}.png", std::process::id()));
        draw(&rows, &out).unwrap();
        let png = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // IHDR: width and height, big-endian, at bytes 16..24. Two panels of two rows each
        // (the memory row has no panel).
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), WIDTH);
        assert_eq!(height, 2 * (PANEL_CHROME + 2 * ROW_HEIGHT));
        assert!(
            draw(&rows[2..3], &out).is_err(),
            "nothing to draw is an error"
        );
    }
}
