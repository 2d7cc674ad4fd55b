//! What a benchmark run is turned into: BENCHMARKS.md, a compact table for the
//! terminal and a PNG chart. All three are made from [`Results`] alone, so a
//! saved run can be re-rendered without measuring again.
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::results::{Contender, Echo, Results};

/// The baseline every ratio is taken against: same client, same backends, no forwarder.
const DIRECT: &str = "direct";
/// Printed for a figure that was not measured, does not apply, or has no baseline.
const MISSING: &str = "–";
/// Message sizes shown by the terminal table and the chart (the markdown shows all).
const SMALL: usize = 64;
const LARGE: usize = 16 * 1024;
/// The font plotters draws with: the `ab_glyph` backend has no system font lookup.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";

/// An echo latency percentile: its name and where it is in an [`Echo`].
type Percentile = (&'static str, fn(&Echo) -> f64);
const PERCENTILES: [Percentile; 3] = [
    ("p50", |e| e.p50_us),
    ("p99", |e| e.p99_us),
    ("p99.9", |e| e.p999_us),
];

// ---------------------------------------------------------------------------
// Looking things up

fn direct(r: &Results) -> Option<&Contender> {
    r.contenders.iter().find(|c| c.name == DIRECT)
}

fn echo(c: &Contender, size: usize) -> Option<&Echo> {
    c.echo.iter().find(|e| e.message_bytes == size)
}

/// Every message size any contender ran, smallest first.
fn echo_sizes(r: &Results) -> Vec<usize> {
    let mut sizes: Vec<usize> = r
        .contenders
        .iter()
        .flat_map(|c| c.echo.iter().map(|e| e.message_bytes))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// A latency percentile of an echo run; none when nothing came back, since
/// the percentiles of an empty histogram mean nothing.
fn latency(e: Option<&Echo>, pick: fn(&Echo) -> f64) -> Option<f64> {
    e.filter(|e| e.received > 0).map(pick)
}

fn echo_p99(c: &Contender, size: usize) -> Option<f64> {
    latency(echo(c, size), |e| e.p99_us)
}

fn conn_per_second(c: &Contender) -> Option<f64> {
    c.conn_rate.as_ref().map(|cr| cr.per_second)
}

/// What one connection costs: all the contender's memory over the connections open.
/// What each idle connection added: (RSS + maps, minus before) / connections.
fn bytes_per_connection(c: &Contender) -> Option<f64> {
    let m = c.memory.as_ref().filter(|m| m.connections > 0)?;
    let total = (m.rss_bytes + m.map_bytes.unwrap_or(0)) as f64;
    Some((total - m.baseline_bytes as f64).max(0.0) / m.connections as f64)
}

// ---------------------------------------------------------------------------
// Formatting figures

/// About three significant figures: enough to compare, few enough to read.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return MISSING.into();
    }
    match v.abs() {
        0.0 => "0".into(),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.into(), num)
}

/// A difference, with its sign even when positive, so "+40" reads as a cost.
fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

/// `v` over direct's `base`, e.g. "1.10x"; "–" when either is missing or the base is zero.
fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b != 0.0 && v.is_finite() && b.is_finite() => {
            format!("{:.2}x", v / b)
        }
        _ => MISSING.into(),
    }
}

/// A contender's figure and its ratio to direct's, as two cells.
fn compared(r: &Results, c: &Contender, figure: impl Fn(&Contender) -> Option<f64>) -> [String; 2] {
    let v = figure(c);
    [opt(v), ratio(v, direct(r).and_then(&figure))]
}

/// Bytes in binary units, so memory reads at a glance.
fn bytes(v: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = v;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", num(v), UNITS[unit])
}

fn opt_bytes(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.into(), bytes)
}

/// A message size as people say it: "64 B", "16 KiB".
fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Keeps a multi-line message inside one markdown list item.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// BENCHMARKS.md

/// The content of BENCHMARKS.md.
pub fn markdown(r: &Results) -> String {
    [
        intro(),
        machine(r),
        versions(r),
        run(r),
        echo_tables(r),
        max_rate_table(r),
        conn_rate_table(r),
        bulk_table(r),
        memory_table(r),
        scale_table(r),
        reload_table(r),
        notes(r),
    ]
    .join("\n")
}

/// A GitHub table: names left-aligned, figures right-aligned.
fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        s += if i == 0 { " --- |" } else { " ---: |" };
    }
    s += "\n";
    for row in rows {
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

/// One row per contender, in the order they ran.
fn rows(r: &Results, row: impl Fn(&Contender) -> Vec<String>) -> Vec<Vec<String>> {
    r.contenders.iter().map(row).collect()
}

fn intro() -> String {
    "# wsfwd benchmarks\n\n\
     wsfwd (`wsfwd-tc`) side by side with iptables, nftables, nginx (stream and http) and \
     HAProxy, all forwarding the same WebSocket and TCP workloads from the same client to \
     the same backends, each peer in its own network namespace on one machine, in one run. \
     `direct` is the baseline: the client talks to the backends with no forwarder. Figures \
     are also given as a ratio to direct's, so that noise from the shared machine (CPU \
     frequency, neighbours) largely cancels and what remains is the forwarder's cost. Echo \
     latency is measured at a fixed, open-loop rate from each message's intended send time, \
     so stalls are not hidden (coordinated omission). CPU is the whole machine's non-idle \
     time per message; \"over direct\" is what the forwarder adds.\n"
        .into()
}

fn machine(r: &Results) -> String {
    let m = &r.machine;
    format!(
        "## Machine\n\n\
         - CPU: {}\n\
         - Cores: {}\n\
         - Memory: {:.1} GiB\n\
         - Kernel: {}\n\
         - Started: {}\n",
        m.cpu,
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        m.kernel,
        r.started,
    )
}

fn versions(r: &Results) -> String {
    let mut s = "## Versions\n\n".to_string();
    if r.versions.is_empty() {
        s += "- none recorded\n";
    }
    for (tool, version) in &r.versions {
        let _ = writeln!(s, "- {tool}: {version}");
    }
    s
}

fn run(r: &Results) -> String {
    let short = if r.short {
        "yes (shorter runs: figures are noisier)"
    } else {
        "no"
    };
    let ipvs = if r.ipvs.is_empty() { MISSING } else { &r.ipvs };
    format!(
        "## Run\n\n```sh\n{}\n```\n\n- Short run: {short}\n- IPVS: {}\n",
        r.command,
        one_line(ipvs),
    )
}

fn echo_tables(r: &Results) -> String {
    let mut s = "## WebSocket echo at a fixed rate\n".to_string();
    for size in echo_sizes(r) {
        s += "\n";
        s += &echo_table(r, size);
    }
    s
}

fn echo_table(r: &Results, size: usize) -> String {
    let base = direct(r).and_then(|d| echo(d, size));
    let header = [
        "contender",
        "p50 (µs)",
        "vs direct",
        "p99 (µs)",
        "vs direct",
        "p99.9 (µs)",
        "vs direct",
        "received/sent",
        "CPU ns/msg",
        "CPU over direct ns/msg",
        "BPF ns/msg",
        "BPF ns/packet",
    ];
    let rows = rows(r, |c| {
        let e = echo(c, size);
        let mut row = vec![c.name.clone()];
        for (_, pick) in PERCENTILES {
            let v = latency(e, pick);
            row.push(opt(v));
            row.push(ratio(v, latency(base, pick)));
        }
        row.push(e.map_or_else(|| MISSING.into(), |e| format!("{}/{}", e.received, e.sent)));
        let cpu = e.map(|e| e.cpu_ns_per_msg);
        row.push(opt(cpu));
        row.push(match (cpu, base) {
            (Some(cpu), Some(b)) => signed(cpu - b.cpu_ns_per_msg),
            _ => MISSING.into(),
        });
        row.push(opt(e.and_then(|e| e.bpf_ns_per_msg)));
        row.push(opt(e.and_then(|e| e.bpf_ns_per_packet)));
        row
    });
    format!(
        "### {} messages\n\n{}\n{}",
        size_label(size),
        echo_setup(r, size),
        md_table(&header, &rows)
    )
}

/// The load of an echo run, the same for every contender; taken from direct's
/// run if there is one.
fn echo_setup(r: &Results, size: usize) -> String {
    let run = direct(r)
        .and_then(|d| echo(d, size))
        .or_else(|| r.contenders.iter().find_map(|c| echo(c, size)));
    match run {
        Some(e) => format!(
            "{} msgs/s over {} connections for {} s.\n",
            e.rate, e.connections, e.seconds
        ),
        None => String::new(),
    }
}

fn max_rate_table(r: &Results) -> String {
    let header = ["contender", "msgs/s", "vs direct"];
    let rows = rows(r, |c| {
        let mut row = vec![c.name.clone()];
        row.extend(compared(r, c, |c| c.max_rate.map(f64::from)));
        row
    });
    format!(
        "## Max rate with p99 < 10 ms ({} messages)\n\nThe rate doubles until a step fails (p99 over 10 ms, or over 1% of messages lost), \
         then the gap between the last held and the failed rate is halved until it is within 5%.\n\n{}",
        size_label(SMALL),
        md_table(&header, &rows)
    )
}

fn conn_rate_table(r: &Results) -> String {
    let header = ["contender", "conn/s", "vs direct", "p99 (µs)", "errors"];
    let rows = rows(r, |c| {
        let mut row = vec![c.name.clone()];
        row.extend(compared(r, c, conn_per_second));
        let cr = c.conn_rate.as_ref();
        row.push(opt(cr.map(|cr| cr.p99_us)));
        row.push(cr.map_or_else(|| MISSING.into(), |cr| cr.errors.to_string()));
        row
    });
    format!(
        "## Connection rate\n\nConnect, upgrade, one echo, close.\n\n{}",
        md_table(&header, &rows)
    )
}

fn bulk_table(r: &Results) -> String {
    let header = [
        "contender",
        "1 stream Gbit/s",
        "vs direct",
        "4 streams Gbit/s",
        "vs direct",
    ];
    let rows = rows(r, |c| {
        let mut row = vec![c.name.clone()];
        row.extend(compared(r, c, |c| {
            c.bulk.as_ref().map(|b| b.one_stream_gbps)
        }));
        row.extend(compared(r, c, |c| {
            c.bulk.as_ref().map(|b| b.four_streams_gbps)
        }));
        row
    });
    format!("## Bulk TCP (iperf3)\n\n{}", md_table(&header, &rows))
}

fn memory_table(r: &Results) -> String {
    let header = [
        "contender",
        "connections",
        "RSS",
        "maps",
        "per conntrack entry",
        "per connection",
    ];
    let rows = rows(r, |c| {
        let m = c.memory.as_ref();
        vec![
            c.name.clone(),
            m.map_or_else(|| MISSING.into(), |m| m.connections.to_string()),
            opt_bytes(m.map(|m| m.rss_bytes as f64)),
            opt_bytes(m.and_then(|m| m.map_bytes).map(|b| b as f64)),
            opt_bytes(m.and_then(|m| m.bytes_per_ct_entry)),
            opt_bytes(bytes_per_connection(c)),
        ]
    });
    format!(
        "## Memory with idle connections\n\n\
         Per connection is what the connections added: (RSS + maps, minus the same before them) / \
         connections. wsfwd's conntrack is preallocated, so its maps do not grow; each flow takes \
         two of its entries.\n\n{}",
        md_table(&header, &rows)
    )
}

fn scale_table(r: &Results) -> String {
    let header = [
        "contender",
        "services",
        "conn/s",
        "p99 (µs)",
        "errors",
        "maps",
    ];
    let rows: Vec<Vec<String>> = r
        .scale
        .iter()
        .map(|s| {
            vec![
                s.contender.clone(),
                s.services.to_string(),
                num(s.conn_rate.per_second),
                num(s.conn_rate.p99_us),
                s.conn_rate.errors.to_string(),
                opt_bytes(s.map_bytes.map(|b| b as f64)),
            ]
        })
        .collect();
    format!(
        "## Scale: connection rate with many services\n\n{}",
        md_table(&header, &rows)
    )
}

/// The reload section alone.
pub fn reload_section(r: &Results) -> String {
    reload_table(r)
}

fn reload_table(r: &Results) -> String {
    let Some(x) = &r.reload else { return "## Reloads\n\nNot measured (see errors).\n".into() };
    let rows = vec![
        vec![format!("one endpoint changed, 2 services ({} changes)", x.one_change_count), format!("{:.2}", x.one_change_p50_ms), format!("{:.2}", x.one_change_p99_ms)],
        vec![format!("one endpoint changed, {} services", x.big_services), format!("{:.2}", x.big_one_change_p50_ms), format!("{:.2}", x.big_one_change_p99_ms)],
        vec![format!("every service changed, {} services", x.big_services), format!("{:.0}", x.big_all_changed_ms), "".into()],
    ];
    format!(
        "## Reloads\n\nTime from renaming a new config file into place to the change being live (the \
         frontend's `SERVICES` entry switched), in ms: inotify, parsing, compiling and writing the \
         maps included.\n\n{}\n64-byte echo p99: {} µs quiet, {} µs with {} reloads spread over the run \
         ({} errors).\n",
        md_table(&["change", "p50 (ms)", "p99 (ms)"], &rows),
        num(x.echo_p99_us_quiet),
        num(x.echo_p99_us_reloading),
        x.reloads_during_echo,
        x.echo_errors
    )
}

fn notes(r: &Results) -> String {
    let lines: Vec<String> = r
        .contenders
        .iter()
        .flat_map(|c| {
            let na = c
                .not_applicable
                .iter()
                .map(move |n| (c, "not applicable", n));
            let errors = c.errors.iter().map(move |e| (c, "error", e));
            na.chain(errors)
        })
        .map(|(c, kind, text)| format!("- {}: {kind}: {}\n", c.name, one_line(text)))
        .collect();
    let body = if lines.is_empty() {
        "None.\n".to_string()
    } else {
        lines.concat()
    };
    format!("## Not applicable / errors\n\n{body}")
}

// ---------------------------------------------------------------------------
// Terminal

/// A compact summary for the terminal: one line per contender under a header.
pub fn table(r: &Results) -> String {
    let header = [
        "contender".to_string(),
        format!("{} p99 µs", size_label(SMALL)),
        "vs direct".into(),
        format!("{} p99 µs", size_label(LARGE)),
        "vs direct".into(),
        "max msgs/s".into(),
        "conn/s".into(),
        "bulk Gbit/s".into(),
        "mem/conn".into(),
    ];
    let mut lines = vec![header.to_vec()];
    lines.extend(rows(r, |c| {
        let mut row = vec![c.name.clone()];
        row.extend(compared(r, c, |c| echo_p99(c, SMALL)));
        row.extend(compared(r, c, |c| echo_p99(c, LARGE)));
        row.push(opt(c.max_rate.map(f64::from)));
        row.push(opt(conn_per_second(c)));
        row.push(opt(c.bulk.as_ref().map(|b| b.one_stream_gbps)));
        row.push(opt_bytes(bytes_per_connection(c)));
        row
    }));
    aligned(&lines)
}

/// Pads columns to a common width: names left, figures right.
fn aligned(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            let cells = lines.iter().filter_map(|l| l.get(i));
            cells.map(|c| c.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                if i == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(s, "{}", cells.join("  ").trim_end());
    }
    s
}

// ---------------------------------------------------------------------------
// Chart

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// A PNG with the 64-byte echo latency percentiles (left) and the connection
/// rate (right) of every contender.
pub fn chart(r: &Results, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(620);
    latency_panel(r, &left)?;
    conn_rate_panel(r, &right)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Registers DejaVu Sans as plotters' "sans-serif": `ab_glyph` draws only
/// fonts registered at run time. Done once per process; a failure is retried.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: Mutex<bool> = Mutex::new(false);
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if *registered {
        return Ok(());
    }
    let font = std::fs::read(FONT_PATH).with_context(|| {
        format!("reading the chart font {FONT_PATH}: install fonts-dejavu-core")
    })?;
    // plotters keeps the font for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, font)
        .map_err(|_| anyhow!("{FONT_PATH} is not a usable font"))?;
    *registered = true;
    Ok(())
}

/// The same colour for a contender in both panels.
fn colour(index: usize) -> RGBAColor {
    Palette99::pick(index).to_rgba()
}

/// Log-scale bounds around all `values`, widened to whole powers of ten: plotters
/// labels a log axis only from the first power of ten within it. A default when
/// there are no values.
fn log_bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let positive: Vec<f64> = values.filter(|v| v.is_finite() && *v > 0.0).collect();
    if positive.is_empty() {
        return (0.01, 10.0);
    }
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = positive.iter().copied().fold(0.0, f64::max);
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil());
    // One value, or all on the same power of ten: still show a decade.
    let hi = if hi > lo { hi } else { lo * 10.0 };
    // A hair under the power of ten, so that rounding in plotters' key point
    // search does not skip it.
    (lo * 0.99, hi)
}

/// A log-axis label: as many decimals as a small power of ten needs ("0.001").
fn axis_ms(v: f64) -> String {
    if v >= 1.0 || v <= 0.0 {
        return format!("{v:.0}");
    }
    // The epsilon keeps 0.01 computed as 0.0100000000000002 at two decimals.
    let decimals = (-v.log10() - 1e-9).ceil() as usize;
    format!("{v:.decimals$}")
}

/// One line per contender through its p50, p99 and p99.9, in ms on a log scale
/// because forwarders differ by orders of magnitude in the tail.
fn latency_panel(r: &Results, area: &Area) -> anyhow::Result<()> {
    let series: Vec<(usize, &str, Vec<f64>)> = r
        .contenders
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let e = echo(c, SMALL);
            let ms: Option<Vec<f64>> = PERCENTILES
                .iter()
                .map(|(_, pick)| latency(e, *pick).map(|us| us / 1000.0))
                .collect();
            Some((i, c.name.as_str(), ms?))
        })
        .collect();
    let (lo, hi) = log_bounds(series.iter().flat_map(|(_, _, ms)| ms.iter().copied()));

    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("WebSocket echo latency, {} messages", size_label(SMALL)),
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d((0..2).into_segmented(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| PERCENTILES.get(i))
                .map_or_else(String::new, |(name, _)| name.to_string()),
            SegmentValue::Last => String::new(),
        })
        .y_desc("ms")
        // Few enough labels that only the powers of ten get one.
        .y_labels(10)
        .y_label_formatter(&|v| axis_ms(*v))
        .label_style((FONT, 14))
        .draw()?;

    for (index, name, ms) in series {
        let style = colour(index).stroke_width(2);
        let points: Vec<_> = (0..)
            .zip(ms)
            .map(|(i, v)| (SegmentValue::CenterOf(i), v))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        let dots = points
            .into_iter()
            .map(|p| Circle::new(p, 3, colour(index).filled()));
        chart.draw_series(dots)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    Ok(())
}

/// Horizontal bars of connections per second, so the contender names fit.
fn conn_rate_panel(r: &Results, area: &Area) -> anyhow::Result<()> {
    let names: Vec<&str> = r.contenders.iter().map(|c| c.name.as_str()).collect();
    let rates: Vec<Option<f64>> = r.contenders.iter().map(conn_per_second).collect();
    let max = rates.iter().flatten().copied().fold(0.0, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    // Contenders top to bottom in the order they ran: row `top` is the first.
    let top = i32::try_from(names.len().max(1) - 1)?;
    let name_of = |row: i32| usize::try_from(top - row).ok().and_then(|i| names.get(i));

    let mut chart = ChartBuilder::on(area)
        .caption("Connection rate", (FONT, 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(110)
        .build_cartesian_2d(0.0..max * 1.25, (0..top).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("connections/s")
        .x_label_formatter(&|v| num(*v))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(row) => name_of(*row).map_or("", |n| n).to_string(),
            _ => String::new(),
        })
        .label_style((FONT, 14))
        .draw()?;

    let rows = (0..)
        .zip(&rates)
        .map(|(i, rate)| (top - i, i as usize, *rate));
    let bars = rows.clone().filter_map(|(row, index, rate)| {
        let next = if row < top {
            SegmentValue::Exact(row + 1)
        } else {
            SegmentValue::Last
        };
        let corners = [(0.0, SegmentValue::Exact(row)), (rate?, next)];
        let mut bar = Rectangle::new(corners, colour(index).filled());
        bar.set_margin(6, 6, 0, 0);
        Some(bar)
    });
    chart.draw_series(bars)?;

    let label_style =
        TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let labels = rows.map(|(row, _, rate)| {
        let at = (
            rate.unwrap_or(0.0) + max * 0.01,
            SegmentValue::CenterOf(row),
        );
        Text::new(opt(rate), at, label_style.clone())
    });
    chart.draw_series(labels)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Bulk, ConnRate, Memory, Scale};

    fn echo_run(size: usize, p99_us: f64, cpu: f64) -> Echo {
        Echo {
            message_bytes: size,
            connections: 100,
            rate: 2000,
            seconds: 10.0,
            sent: 20000,
            received: 20000,
            errors: 0,
            p50_us: p99_us / 2.0,
            p99_us,
            p999_us: p99_us * 2.0,
            cpu_ns_per_msg: cpu,
            bpf_ns_per_msg: None,
            bpf_ns_per_packet: None,
        }
    }

    fn sample() -> Results {
        let direct = Contender {
            name: "direct".into(),
            echo: vec![
                echo_run(SMALL, 100.0, 5000.0),
                echo_run(LARGE, 200.0, 9000.0),
            ],
            max_rate: Some(100_000),
            conn_rate: Some(ConnRate {
                per_second: 10_000.0,
                p99_us: 500.0,
                errors: 0,
            }),
            bulk: Some(Bulk {
                one_stream_gbps: 40.0,
                four_streams_gbps: 80.0,
            }),
            memory: None,
            ..Default::default()
        };
        let mut wsfwd_echo = echo_run(SMALL, 110.0, 4900.0);
        wsfwd_echo.bpf_ns_per_msg = Some(350.0);
        let wsfwd = Contender {
            name: "wsfwd-tc".into(),
            echo: vec![wsfwd_echo, echo_run(LARGE, 220.0, 9500.0)],
            max_rate: Some(95_000),
            conn_rate: Some(ConnRate {
                per_second: 9_000.0,
                p99_us: 600.0,
                errors: 0,
            }),
            bulk: Some(Bulk {
                one_stream_gbps: 36.0,
                four_streams_gbps: 78.0,
            }),
            memory: Some(Memory {
                connections: 1000,
                rss_bytes: 8 << 20,
                map_bytes: Some(2 << 20),
                bytes_per_ct_entry: Some(256.0),
                baseline_bytes: 0,
            }),
            ..Default::default()
        };
        let nginx = Contender {
            name: "nginx-http".into(),
            echo: vec![echo_run(SMALL, 300.0, 15000.0)],
            max_rate: None,
            conn_rate: None,
            bulk: None,
            memory: Some(Memory {
                connections: 1000,
                rss_bytes: 40 << 20,
                ..Default::default()
            }),
            not_applicable: vec!["bulk: iperf3 is not HTTP".into()],
            errors: vec!["16 KiB echo: timed out".into()],
        };
        Results {
            command: "cargo xtask bench --short".into(),
            short: true,
            started: "2025-01-01T00:00:00Z".into(),
            machine: crate::bench::results::Machine {
                cpu: "Test CPU".into(),
                cores: 8,
                memory_bytes: 16 << 30,
                kernel: "6.1.0".into(),
            },
            versions: vec![("nginx".into(), "nginx/1.22.1".into())],
            ipvs: "not available: no ip_vs module".into(),
            contenders: vec![direct, wsfwd, nginx],
            scale: vec![Scale {
                contender: "wsfwd-tc".into(),
                services: 10_000,
                conn_rate: ConnRate {
                    per_second: 8_800.0,
                    p99_us: 650.0,
                    errors: 0,
                },
                map_bytes: Some(5 << 20),
            }],
            reload: Some(crate::bench::results::Reload {
                one_change_count: 100,
                one_change_p50_ms: 0.57,
                one_change_p99_ms: 0.84,
                big_services: 10_000,
                big_one_change_p50_ms: 650.0,
                big_one_change_p99_ms: 700.0,
                big_all_changed_ms: 560.0,
                echo_p99_us_quiet: 2000.0,
                echo_p99_us_reloading: 2100.0,
                reloads_during_echo: 100,
                echo_errors: 0,
            }),
        }
    }

    #[test]
    fn ratios_are_to_direct_and_missing_when_direct_is() {
        assert_eq!(ratio(Some(110.0), Some(100.0)), "1.10x");
        assert_eq!(ratio(Some(1.0), Some(0.0)), MISSING);
        assert_eq!(ratio(Some(1.0), None), MISSING);
        assert_eq!(ratio(None, Some(1.0)), MISSING);
    }

    #[test]
    fn markdown_has_the_tables_ratios_and_notes() {
        let md = markdown(&sample());
        assert!(md.starts_with("# wsfwd benchmarks"));
        assert!(md.contains(
            "| contender | p50 (µs) | vs direct | p99 (µs) | vs direct | p99.9 (µs) | vs direct \
             | received/sent | CPU ns/msg | CPU over direct ns/msg | BPF ns/msg |"
        ));
        assert!(md.contains("### 64 B messages"));
        assert!(md.contains("### 16 KiB messages"));
        // wsfwd's 64 B p99 is 110 µs against direct's 100 µs.
        assert!(md.contains("| wsfwd-tc | 55.0 | 1.10x | 110 | 1.10x | 220 | 1.10x | 20000/20000 | 4900 | -100 | 350 |"));
        // nginx-http has no 16 KiB run and no bulk figures.
        assert!(md.contains(&format!("| nginx-http | {MISSING} | {MISSING} |")));
        assert!(md.contains("- nginx-http: not applicable: bulk: iperf3 is not HTTP"));
        assert!(md.contains("- nginx-http: error: 16 KiB echo: timed out"));
        // (8 MiB + 2 MiB) / 1000 connections.
        assert!(md.contains("| wsfwd-tc | 1000 | 8.00 MiB | 2.00 MiB | 256 B | 10.2 KiB |"));
        assert!(md.contains("| wsfwd-tc | 10000 | 8800 | 650 | 0 | 5.00 MiB |"));
        assert!(md.contains("cargo xtask bench --short"));
        assert!(md.contains("- Memory: 16.0 GiB"));
        assert!(md.contains("| one endpoint changed, 2 services (100 changes) | 0.57 | 0.84 |"), "{md}");
        assert!(md.contains("| every service changed, 10000 services | 560 |  |"), "{md}");
        assert!(md.contains("64-byte echo p99: 2000 µs quiet, 2100 µs with 100 reloads"), "{md}");
    }

    #[test]
    fn table_has_one_line_per_contender() {
        let r = sample();
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + r.contenders.len(), "{t}");
        for (line, c) in lines[1..].iter().zip(&r.contenders) {
            assert!(line.starts_with(&c.name), "{line}");
        }
        assert!(lines[2].contains("1.10x"), "{t}");
    }

    #[test]
    fn chart_writes_a_png() {
        // `cargo xtask test` installs the font; without it chart() must say so.
        assert!(Path::new(FONT_PATH).exists(), "{FONT_PATH} missing: install fonts-dejavu-core");
        let path = std::env::temp_dir().join(format!("wsfwd-report-{}.png", std::process::id()));
        chart(&sample(), &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        assert!(png.len() > 1000);
    }
}
