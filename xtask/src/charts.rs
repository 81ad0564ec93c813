//! The results folders' charts (grouped bars of scores, memory, time and throughput; a loss curve
//! per run), drawn with plotters' SVG backend.
//!
//! plotters writes text as SVG `<text>` elements that the viewer lays out with its own fonts, and
//! without its `ttf` feature (which needs the system's fontconfig) it cannot measure them. So the
//! layout here reserves room for every label from a generous width per character, sizes the chart
//! from its labels, wraps group labels instead of rotating them, and draws the legend in rows of
//! its own below the plot: no label can run into a bar, a line or another label.

use std::path::Path;

use anyhow::{Context, Result, bail};
use kdlora_schema::StepRecord;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::preset::LORA_STUDENT;

const FONT: &str = "sans-serif";
/// plotters' font sizes; its SVG backend writes `size / 1.24` as the CSS font size.
const TITLE_SIZE: f64 = 22.0;
const LABEL_SIZE: f64 = 16.0;
/// Width of one character as a share of the CSS font size. DejaVu Sans (the usual `sans-serif`
/// on Linux, and rsvg's) averages about 0.55 em over mixed text and 0.7 em over capitals; 0.64
/// keeps labels such as "KD-LoRA (MiniLM-L3)" inside the room they get.
const CHAR_EM: f64 = 0.64;
const MARGIN: u32 = 14;
const PLOT_HEIGHT: u32 = 270;
const BAR_WIDTH: f64 = 20.0;
/// Room on either side of a group's bars.
const GROUP_PAD: f64 = 10.0;
/// Longest line of a group label before it wraps at a space.
const GROUP_LABEL_CHARS: usize = 18;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
];
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);

/// One group of bars (e.g. a task) with one value per series (e.g. a method); `None` leaves a gap.
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

/// A grouped bar chart.
pub struct Bars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// The legend's entries, one per value of each group.
    pub series: &'a [String],
    pub groups: &'a [Group],
    /// A line under the legend (what a marker in the labels means).
    pub note: Option<&'a str>,
}

/// CSS pixels of `text` at plotters size `size`, erring wide.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size / 1.24 * CHAR_EM
}

/// Height of one line of text at plotters size `size`.
fn line_height(size: f64) -> f64 {
    (size / 1.24 * 1.4).ceil()
}

/// `text` broken at spaces into lines of at most `max` characters (a longer word keeps its line).
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= max => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

/// An axis from `lo` to `hi` (both multiples of a step of 1, 2 or 5 x 10^k, about five steps)
/// and its tick count: the ticks plotters then picks are exactly these multiples.
fn nice_axis(min: f64, max: f64) -> (f64, f64, usize) {
    let lo = min.min(0.0);
    let hi = if max > lo { max } else { lo + 1.0 };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let lo = (lo / step + 1e-9).floor() * step;
    let hi = (hi / step - 1e-9).ceil() * step;
    let ticks = ((hi - lo) / step).round() as usize + 1;
    (lo, hi, ticks)
}

/// A tick value as short as it can be written: `62.5`, `200`, `0.25` (never `62.50` or `200.00`).
pub(crate) fn tick_label(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

fn label_style(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

/// Legend entries packed into rows no wider than `width`; returns each entry's row and x offset.
fn legend_layout(series: &[String], width: f64) -> (Vec<(usize, f64)>, usize) {
    let mut placed = Vec::with_capacity(series.len());
    let (mut row, mut x) = (0, 0.0);
    for name in series {
        let w = legend_entry_width(name);
        if x > 0.0 && x + w > width {
            row += 1;
            x = 0.0;
        }
        placed.push((row, x));
        x += w;
    }
    (placed, if series.is_empty() { 0 } else { row + 1 })
}

fn legend_entry_width(name: &str) -> f64 {
    14.0 + 6.0 + text_width(name, LABEL_SIZE) + 22.0
}

/// Draws a grouped bar chart as standalone SVG.
pub fn grouped_bars(chart: &Bars) -> Result<String> {
    let Bars {
        title,
        y_label,
        series,
        groups,
        note,
    } = *chart;
    if let Some(g) = groups.iter().find(|g| g.values.len() != series.len()) {
        bail!(
            "chart `{title}`: group `{}` has {} values for {} series",
            g.label,
            g.values.len(),
            series.len()
        );
    }
    let values = groups.iter().flat_map(|g| g.values.iter().flatten());
    let (min, max) = values.fold((0.0_f64, 0.0_f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (lo, hi, ticks) = nice_axis(min, max);

    let line_h = line_height(LABEL_SIZE);
    let labels: Vec<Vec<String>> = groups
        .iter()
        .map(|g| wrap(&g.label, GROUP_LABEL_CHARS))
        .collect();
    let mut widths: Vec<f64> = labels
        .iter()
        .map(|lines| {
            let text = lines
                .iter()
                .map(|l| text_width(l, LABEL_SIZE))
                .fold(0.0, f64::max);
            (series.len() as f64 * BAR_WIDTH + 2.0 * GROUP_PAD).max(text + 12.0)
        })
        .collect();
    let label_lines = labels.iter().map(Vec::len).max().unwrap_or(1);
    let tick_w = (0..ticks)
        .map(|i| {
            text_width(
                &tick_label(lo + (hi - lo) * i as f64 / (ticks - 1) as f64),
                LABEL_SIZE,
            )
        })
        .fold(0.0, f64::max);
    // Tick labels, the rotated axis description beside them, and a gap.
    let y_area = (tick_w + line_h + 18.0).ceil();
    let plot_w: f64 = widths.iter().sum();
    let margin = f64::from(MARGIN);
    let needed = margin + y_area + plot_w + margin;
    let title_w = text_width(title, TITLE_SIZE) + 2.0 * margin;
    let note_w = note.map_or(0.0, |n| text_width(n, LABEL_SIZE) + 2.0 * margin);
    // A legend of one row when that stays under about twice the plot's width.
    let legend_one_row: f64 = series.iter().map(|s| legend_entry_width(s)).sum();
    let width = needed
        .max(title_w)
        .max(note_w)
        .max(legend_one_row.min(2.0 * needed) + 2.0 * margin)
        .max(420.0)
        .ceil();
    // Extra width goes to the groups, evenly.
    let extra = (width - needed) / groups.len().max(1) as f64;
    for w in &mut widths {
        *w += extra;
    }
    let plot_w = width - 2.0 * margin - y_area;
    let (legend, legend_rows) = legend_layout(series, width - 2.0 * margin);
    let title_h = line_height(TITLE_SIZE) + 12.0;
    let x_area = (label_lines as f64 * line_h + 10.0).ceil();
    let legend_h = legend_rows as f64 * line_h + 8.0;
    let note_h = if note.is_some() { line_h } else { 0.0 };
    let height =
        (title_h + margin + f64::from(PLOT_HEIGHT) + x_area + 8.0 + legend_h + note_h + margin)
            .ceil();

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        root.draw_text(
            title,
            &label_style(TITLE_SIZE, HPos::Center, VPos::Top),
            ((width / 2.0) as i32, 8),
        )?;
        let plot_bottom = title_h + margin + f64::from(PLOT_HEIGHT) + x_area;
        let plot_area = root.margin(title_h as u32, 0, 0, 0);
        let (plot_area, _) = plot_area.split_vertically((plot_bottom - title_h) as u32);
        let mut chart = ChartBuilder::on(&plot_area)
            .margin_top(MARGIN)
            .margin_left(MARGIN)
            .margin_right(MARGIN)
            .x_label_area_size(x_area as u32)
            .y_label_area_size(y_area as u32)
            .build_cartesian_2d(0.0..plot_w, lo..hi)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(ticks)
            .y_max_light_lines(0)
            .bold_line_style(GRID)
            .y_label_formatter(&|v| tick_label(*v))
            .y_desc(y_label)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .draw()?;
        let mut x0 = 0.0;
        for ((group, lines), w) in groups.iter().zip(&labels).zip(&widths) {
            let bars_x = x0 + (w - series.len() as f64 * BAR_WIDTH) / 2.0;
            chart.draw_series(group.values.iter().enumerate().filter_map(|(si, v)| {
                let v = (*v)?;
                let x = bars_x + si as f64 * BAR_WIDTH;
                Some(Rectangle::new(
                    [(x + 1.0, 0.0), (x + BAR_WIDTH - 1.0, v)],
                    COLORS[si % COLORS.len()].filled(),
                ))
            }))?;
            let (cx, cy) = chart.backend_coord(&(x0 + w / 2.0, lo));
            for (li, line) in lines.iter().enumerate() {
                root.draw_text(
                    line,
                    &label_style(LABEL_SIZE, HPos::Center, VPos::Top),
                    (cx, cy + 6 + (li as f64 * line_h) as i32),
                )?;
            }
            x0 += w;
        }
        let legend_top = plot_bottom + 8.0;
        for ((row, x), (si, name)) in legend.iter().zip(series.iter().enumerate()) {
            let x = (margin + x) as i32;
            let y = (legend_top + *row as f64 * line_h) as i32;
            root.draw(&Rectangle::new(
                [(x, y + 2), (x + 14, y + 14)],
                COLORS[si % COLORS.len()].filled(),
            ))?;
            root.draw_text(
                name,
                &label_style(LABEL_SIZE, HPos::Left, VPos::Center),
                (x + 20, y + 8),
            )?;
        }
        if let Some(note) = note {
            root.draw_text(
                note,
                &label_style(LABEL_SIZE, HPos::Left, VPos::Top),
                (MARGIN as i32, (legend_top + legend_h) as i32),
            )?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// One line of a line chart: its legend entry and its (x, y) points in x order.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Training-loss curves over optimizer steps (the loss, and with a teacher its two parts), with
/// the legend below the plot when there is more than one line.
pub fn loss_curves(title: &str, lines: &[Line]) -> Result<String> {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    if points().next().is_none() {
        bail!("chart `{title}`: no points");
    }
    let max_step = points().map(|p| p.0).fold(1.0, f64::max);
    let (min_loss, max_loss) =
        points().fold((0.0_f64, 0.0_f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (_, x_hi, x_ticks) = nice_axis(0.0, max_step);
    let (lo, hi, ticks) = nice_axis(min_loss, max_loss);
    let margin = f64::from(MARGIN);
    let line_h = line_height(LABEL_SIZE);
    let tick_w = (0..ticks)
        .map(|i| {
            text_width(
                &tick_label(lo + (hi - lo) * i as f64 / (ticks - 1) as f64),
                LABEL_SIZE,
            )
        })
        .fold(0.0, f64::max);
    let y_area = (tick_w + line_h + 18.0).ceil();
    let title_h = line_height(TITLE_SIZE) + 12.0;
    // The last x tick is centred on the plot's right edge: room for half of it.
    let right = margin + text_width(&tick_label(x_hi), LABEL_SIZE) / 2.0;
    let width = (text_width(title, TITLE_SIZE) + 2.0 * margin)
        .max(640.0)
        .ceil();
    let names: Vec<String> = if lines.len() > 1 {
        lines.iter().map(|l| l.name.clone()).collect()
    } else {
        Vec::new()
    };
    let (legend, legend_rows) = legend_layout(&names, width - 2.0 * margin);
    let legend_h = if legend_rows > 0 {
        legend_rows as f64 * line_h + 8.0
    } else {
        0.0
    };
    let x_area = 2.0 * line_h + 12.0;
    let plot_bottom = title_h + margin + f64::from(PLOT_HEIGHT) + x_area;
    let height = (plot_bottom + legend_h + margin).ceil();
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        root.draw_text(
            title,
            &label_style(TITLE_SIZE, HPos::Center, VPos::Top),
            ((width / 2.0) as i32, 8),
        )?;
        let area = root.margin(title_h as u32, 0, 0, 0);
        let (area, _) = area.split_vertically((plot_bottom - title_h) as u32);
        let mut chart = ChartBuilder::on(&area)
            .margin_top(MARGIN)
            .margin_left(MARGIN)
            .margin_right(right as u32)
            .x_label_area_size(x_area as u32)
            .y_label_area_size(y_area as u32)
            .build_cartesian_2d(0.0..x_hi, lo..hi)?;
        chart
            .configure_mesh()
            .x_labels(x_ticks)
            .y_labels(ticks)
            .max_light_lines(0)
            .bold_line_style(GRID)
            .x_label_formatter(&|v| tick_label(*v))
            .y_label_formatter(&|v| tick_label(*v))
            .x_desc("optimizer step")
            .y_desc("training loss")
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .draw()?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            if line.points.len() == 1 {
                chart.draw_series(
                    line.points
                        .iter()
                        .map(|p| Circle::new(*p, 3, color.filled())),
                )?;
            } else {
                chart.draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(2),
                ))?;
            }
        }
        let legend_top = plot_bottom + 8.0;
        for ((row, x), (i, name)) in legend.iter().zip(names.iter().enumerate()) {
            let x = (margin + x) as i32;
            let y = (legend_top + *row as f64 * line_h) as i32;
            root.draw(&Rectangle::new(
                [(x, y + 6), (x + 14, y + 10)],
                COLORS[i % COLORS.len()].filled(),
            ))?;
            root.draw_text(
                name,
                &label_style(LABEL_SIZE, HPos::Left, VPos::Center),
                (x + 20, y + 8),
            )?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// The per-step training log a run folder holds: one [`StepRecord`] per logging step.
pub const TRAIN_LOG: &str = "train_log.jsonl";

/// The records of a run's `train_log.jsonl`, or `None` when the run has none. A last line cut
/// short (a run still writing, or killed) is skipped; any other unreadable line is an error.
pub fn read_train_log(run_dir: &Path) -> Result<Option<Vec<StepRecord>>> {
    let path = run_dir.join(TRAIN_LOG);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<StepRecord>(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => bail!("{}:{}: {e}", path.display(), i + 1),
        }
    }
    Ok(Some(records))
}

/// The lines of a loss chart: the loss, and its parts when the run had a teacher.
fn loss_lines(records: &[StepRecord]) -> Vec<Line> {
    let line = |name: &str, value: &dyn Fn(&StepRecord) -> Option<f64>| Line {
        name: name.to_string(),
        points: records
            .iter()
            .filter_map(|r| Some((r.step as f64, value(r)?)).filter(|p| p.1.is_finite()))
            .collect(),
    };
    [
        line("loss", &|r| Some(r.loss)),
        line("task loss (labels)", &|r| r.task_loss),
        line("KD loss (teacher)", &|r| r.kd_loss),
    ]
    .into_iter()
    .filter(|l| !l.points.is_empty())
    .collect()
}

/// What [`write_loss_chart`] did.
#[derive(Debug, PartialEq)]
pub enum LossChart {
    Written,
    /// The run folder has no `train_log.jsonl` (a `kdlora` that does not write one).
    NoLog,
    /// The log has no records yet.
    Empty,
}

/// Draws `<run_dir>/loss.svg` from the run's `train_log.jsonl`.
pub fn write_loss_chart(run_dir: &Path, title: &str) -> Result<LossChart> {
    let Some(records) = read_train_log(run_dir)? else {
        return Ok(LossChart::NoLog);
    };
    let lines = loss_lines(&records);
    if lines.is_empty() {
        return Ok(LossChart::Empty);
    }
    crate::tables::write_atomic(&run_dir.join("loss.svg"), &loss_curves(title, &lines)?)?;
    Ok(LossChart::Written)
}

/// A method's name in a chart legend.
fn method_label(method: &str) -> &'static str {
    match method {
        "fft" => "FFT",
        "lora" => "LoRA",
        "kd-lora" => "KD-LoRA",
        LORA_STUDENT => "LoRA, no KD",
        _ => "?",
    }
}

/// The charts of a reproduce results folder, from its `results.json` (what `tables::write_all`
/// writes): `scores-FAMILY.svg` per family, `memory.svg` and `inference.svg`; (file name, SVG).
pub fn results_charts(results: &Value) -> Result<Vec<(String, String)>> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let methods = strs(&results["methods"]);
    let empty = Vec::new();
    let table1 = results["table1"].as_array().unwrap_or(&empty);
    let table2 = results["table2"].as_array().unwrap_or(&empty);
    let mut families: Vec<String> = Vec::new();
    for row in table1.iter().chain(table2) {
        if let Some(f) = row["family"].as_str()
            && !families.iter().any(|x| x == f)
        {
            families.push(f.to_string());
        }
    }
    // Table 2 names each family's models; the no-KD ablation trains KD-LoRA's student.
    let model_of = |family: &str, method: &str| -> Option<String> {
        let method = if method == LORA_STUDENT {
            "kd-lora"
        } else {
            method
        };
        table2
            .iter()
            .find(|r| r["family"] == family && r["method"] == method)
            .and_then(|r| r["model"].as_str())
            .map(|m| short_model_name(m).to_string())
    };
    let series_for = |family_models: &dyn Fn(&str) -> Option<String>, methods: &[String]| {
        methods
            .iter()
            .map(|m| match family_models(m) {
                Some(model) => format!("{} ({model})", method_label(m)),
                None => method_label(m).to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut charts = Vec::new();
    for family in &families {
        let rows: Vec<&Value> = table1.iter().filter(|r| r["family"] == **family).collect();
        if rows.is_empty() {
            continue;
        }
        let groups: Vec<Group> = rows
            .iter()
            .map(|r| Group {
                label: format!(
                    "{}{}",
                    r["row"].as_str().unwrap_or("?"),
                    if r["subset"].as_bool() == Some(true) {
                        "*"
                    } else {
                        ""
                    }
                ),
                values: (0..methods.len())
                    .map(|i| r["scores"][i].as_f64())
                    .collect(),
            })
            .collect();
        let series = series_for(&|m| model_of(family, m), &methods);
        let subset = rows.iter().any(|r| r["subset"].as_bool() == Some(true));
        let title = format!("{family}: GLUE dev score per task and method");
        charts.push((
            format!("scores-{family}.svg"),
            grouped_bars(&Bars {
                title: &title,
                y_label: "score (x100)",
                series: &series,
                groups: &groups,
                note: subset.then_some(
                    "* scored on a labelled subset (validation rows from GLUE's train split)",
                ),
            })?,
        ));
    }
    if table2.is_empty() {
        return Ok(charts);
    }
    let t2_methods: Vec<String> = ["fft", "lora", "kd-lora"]
        .into_iter()
        .filter(|m| table2.iter().any(|r| r["method"] == *m))
        .map(String::from)
        .collect();
    // With one family the legend names its models; with several, each group's label does.
    let one_family = families.len() == 1;
    let series = if one_family {
        series_for(&|m| model_of(&families[0], m), &t2_methods)
    } else {
        t2_methods
            .iter()
            .map(|m| {
                let side = if m == "kd-lora" { "student" } else { "teacher" };
                format!("{} ({side})", method_label(m))
            })
            .collect()
    };
    let groups_of = |key: &str| -> Vec<Group> {
        families
            .iter()
            .map(|family| Group {
                label: if one_family {
                    family.clone()
                } else {
                    let teacher = model_of(family, "fft").unwrap_or_default();
                    let student = model_of(family, "kd-lora").unwrap_or_default();
                    format!("{family} {teacher} {student}")
                },
                values: t2_methods
                    .iter()
                    .map(|m| {
                        table2
                            .iter()
                            .find(|r| r["family"] == *family && r["method"] == m.as_str())
                            .and_then(|r| r[key].as_f64())
                    })
                    .collect(),
            })
            .collect()
    };
    let tasks: Vec<&str> = table2
        .iter()
        .filter_map(|r| r["inference_task"].as_str())
        .collect();
    let inference_title = match tasks.first() {
        Some(task) if tasks.iter().all(|t| t == task) => {
            format!("Inference time over the {task} dev set per method")
        }
        _ => "Inference time over a dev set per method".to_string(),
    };
    charts.push((
        "memory.svg".into(),
        grouped_bars(&Bars {
            title: "Peak training memory per method",
            y_label: "MiB (median over tasks)",
            series: &series,
            groups: &groups_of("peak_rss_mib"),
            note: None,
        })?,
    ));
    charts.push((
        "inference.svg".into(),
        grouped_bars(&Bars {
            title: &inference_title,
            y_label: "seconds",
            series: &series,
            groups: &groups_of("inference_seconds"),
            note: None,
        })?,
    ));
    Ok(charts)
}

/// A model argument without the folder it lives in (`/x/models/all-MiniLM-L6-v2` ->
/// `all-MiniLM-L6-v2`).
fn short_model_name(model: &str) -> &str {
    let model = model.trim_end_matches('/');
    model.rsplit('/').next().unwrap_or(model)
}

/// Redraws the charts of results folders from what they hold: `results.json` (reproduce),
/// `bench.json` (bench), and each run folder's `train_log.jsonl` under `runs/` (its `loss.svg`).
pub fn redraw(dirs: &[std::path::PathBuf]) -> Result<()> {
    for dir in dirs {
        let mut drawn = Vec::new();
        let results = dir.join("results.json");
        if results.is_file() {
            let json: Value = serde_json::from_str(
                &std::fs::read_to_string(&results)
                    .with_context(|| format!("reading {}", results.display()))?,
            )
            .with_context(|| format!("parsing {}", results.display()))?;
            for (name, svg) in results_charts(&json)? {
                crate::tables::write_atomic(&dir.join(&name), &svg)?;
                drawn.push(name);
            }
        }
        let bench = dir.join("bench.json");
        if bench.is_file() {
            let json: Value = serde_json::from_str(
                &std::fs::read_to_string(&bench)
                    .with_context(|| format!("reading {}", bench.display()))?,
            )
            .with_context(|| format!("parsing {}", bench.display()))?;
            for (name, svg) in crate::bench::charts(&json)? {
                crate::tables::write_atomic(&dir.join(name), &svg)?;
                drawn.push(name.to_string());
            }
        }
        let mut losses = 0;
        for run_dir in run_dirs(&dir.join("runs")) {
            let title = run_dir
                .strip_prefix(dir.join("runs"))
                .unwrap_or(&run_dir)
                .display()
                .to_string();
            if write_loss_chart(&run_dir, &format!("{title}: training loss"))? == LossChart::Written
            {
                losses += 1;
            }
        }
        if losses > 0 {
            drawn.push(format!("loss.svg of {losses} runs"));
        }
        if drawn.is_empty() {
            bail!(
                "{}: no results.json, bench.json or runs/*/train_log.jsonl to draw from",
                dir.display()
            );
        }
        eprintln!("{}: {}", dir.display(), drawn.join(", "));
    }
    Ok(())
}

/// Folders under `dir` (at any depth) that hold a `train_log.jsonl`.
fn run_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.join(TRAIN_LOG).is_file() {
                found.push(path.clone());
            }
            found.extend(run_dirs(&path));
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One `<text>` of a chart: its box as a viewer would lay it out at most (`CHAR_EM` wide).
    #[derive(Debug)]
    pub(crate) struct TextBox {
        pub text: String,
        pub x0: f64,
        pub x1: f64,
        pub y0: f64,
        pub y1: f64,
    }

    fn attr(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].to_string())
    }

    /// The chart's size and the boxes of its unrotated texts.
    pub(crate) fn text_boxes(svg: &str) -> ((f64, f64), Vec<TextBox>) {
        let head = &svg[..svg.find('>').unwrap()];
        let size = (
            attr(head, "width").unwrap().parse().unwrap(),
            attr(head, "height").unwrap().parse().unwrap(),
        );
        let mut boxes = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find("<text") {
            let tag_end = rest[start..].find('>').unwrap() + start;
            let close = rest[tag_end..].find("</text>").unwrap() + tag_end;
            let tag = &rest[start..tag_end];
            let text = rest[tag_end + 1..close]
                .trim()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&");
            rest = &rest[close..];
            if tag.contains("transform") {
                continue; // the rotated y-axis description, alone in its strip
            }
            let num = |n: &str| attr(tag, n).unwrap().parse::<f64>().unwrap();
            let (x, y, size) = (num("x"), num("y"), num("font-size"));
            let w = text.chars().count() as f64 * size * 0.6;
            let x0 = match attr(tag, "text-anchor").as_deref() {
                Some("middle") => x - w / 2.0,
                Some("end") => x - w,
                _ => x,
            };
            // dy: 0.76em puts the top at y; 0.5ex the middle; -0.5ex the bottom.
            let y0 = match attr(tag, "dy").as_deref() {
                Some("0.76em") => y,
                Some("0.5ex") => y - size / 2.0,
                _ => y - size,
            };
            boxes.push(TextBox {
                text,
                x0,
                x1: x0 + w,
                y0,
                y1: y0 + size,
            });
        }
        (size, boxes)
    }

    /// Every text inside the canvas and clear of every other.
    pub(crate) fn assert_text_fits(svg: &str) {
        let ((w, h), boxes) = text_boxes(svg);
        assert!(!boxes.is_empty());
        for (i, a) in boxes.iter().enumerate() {
            assert!(
                a.x0 >= 0.0 && a.x1 <= w && a.y0 >= 0.0 && a.y1 <= h,
                "`{}` leaves the {w}x{h} canvas: {a:?}",
                a.text
            );
            for b in &boxes[i + 1..] {
                let apart = a.x1 <= b.x0 || b.x1 <= a.x0 || a.y1 <= b.y0 || b.y1 <= a.y0;
                assert!(apart, "`{}` overlaps `{}`: {a:?} {b:?}", a.text, b.text);
            }
        }
    }

    fn sample_bars(series: &[String], labels: &[&str]) -> String {
        let groups: Vec<Group> = labels
            .iter()
            .enumerate()
            .map(|(gi, l)| Group {
                label: l.to_string(),
                values: (0..series.len())
                    .map(|si| (gi + si != 1).then_some(40.0 + 7.5 * (gi * si) as f64))
                    .collect(),
            })
            .collect();
        grouped_bars(&Bars {
            title: "MiniLM: GLUE dev score per task and method <&>",
            y_label: "score (x100)",
            series,
            groups: &groups,
            note: Some("* scored on a labelled subset"),
        })
        .unwrap()
    }

    #[test]
    fn bar_chart_labels_fit_and_never_overlap() {
        let series: Vec<String> = [
            "FFT (all-MiniLM-L6-v2)",
            "LoRA (all-MiniLM-L6-v2)",
            "LoRA, no KD (paraphrase-MiniLM-L3-v2)",
            "KD-LoRA (paraphrase-MiniLM-L3-v2)",
        ]
        .map(String::from)
        .to_vec();
        for labels in [
            vec!["SST-2"],
            vec![
                "CoLA", "SST-2", "MRPC", "QQP*", "MNLI-m*", "QNLI", "RTE", "STS-B",
            ],
            vec!["student fft", "student kd-lora", "teacher inference"],
        ] {
            let svg = sample_bars(&series, &labels);
            assert_text_fits(&svg);
            for name in &series {
                assert!(svg.contains(name.as_str()), "legend lacks {name}");
            }
            assert!(svg.contains("&lt;&amp;&gt;"), "title not escaped");
            // One rectangle per present value, plus the background and the legend's swatches.
            let present = (0..labels.len())
                .flat_map(|gi| (0..series.len()).map(move |si| gi + si))
                .filter(|&sum| sum != 1)
                .count();
            assert_eq!(
                svg.matches("<rect").count(),
                1 + present + series.len(),
                "{svg}"
            );
        }
    }

    #[test]
    fn ticks_are_round_numbers_written_short() {
        for (min, max) in [
            (0.0, 250.0),
            (0.0, 85.3),
            (-2.1, 60.0),
            (0.0, 0.7),
            (0.0, 7890.0),
        ] {
            let (lo, hi, ticks) = nice_axis(min, max);
            assert!(
                lo <= min && hi >= max && hi <= max * 1.6 + 1.0,
                "{min}..{max}: {lo}..{hi}"
            );
            assert!(min < 0.0 || lo == 0.0, "{min}..{max}: starts at {lo}");
            let step = (hi - lo) / (ticks - 1) as f64;
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                "{min}..{max}: step {step}"
            );
            assert!((4..=11).contains(&ticks), "{min}..{max}: {ticks} ticks");
        }
        assert_eq!(tick_label(62.5), "62.5");
        assert_eq!(tick_label(200.0), "200");
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(-0.0), "0");
        let svg = sample_bars(&["a".to_string()], &["x", "y"]);
        let (_, boxes) = text_boxes(&svg);
        for tick in ["0", "10", "40"] {
            assert!(boxes.iter().any(|b| b.text == tick), "{boxes:?}");
        }
        assert!(!boxes.iter().any(|b| b.text.contains(".0")), "{boxes:?}");
    }

    #[test]
    fn group_labels_wrap_at_spaces() {
        assert_eq!(wrap("teacher kd-lora", 18), ["teacher kd-lora"]);
        assert_eq!(
            wrap("MiniLM all-MiniLM-L6-v2 paraphrase-MiniLM-L3-v2", 18),
            ["MiniLM", "all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2"]
        );
    }

    #[test]
    fn loss_chart_comes_from_the_train_log_and_is_skipped_without_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_loss_chart(dir.path(), "t").unwrap(), LossChart::NoLog);
        let mut log = String::new();
        for step in 1..=40 {
            let record = StepRecord {
                step,
                epoch: 1 + step / 21,
                loss: 1.0 / step as f64,
                task_loss: Some(0.6 / step as f64),
                kd_loss: Some(1.4 / step as f64),
                lr: 2e-4,
                grad_norm: Some(1.0),
                examples_per_second: 30.0,
                elapsed_seconds: step as f64,
            };
            log.push_str(&serde_json::to_string(&record).unwrap());
            log.push('\n');
        }
        log.push_str("{\"step\":41,\"lo"); // cut short by a kill
        std::fs::write(dir.path().join(TRAIN_LOG), &log).unwrap();
        let records = read_train_log(dir.path()).unwrap().unwrap();
        assert_eq!(records.len(), 40);
        let lines = loss_lines(&records);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].points[0], (1.0, 1.0));
        assert_eq!(
            write_loss_chart(
                dir.path(),
                "MiniLM sst2 kd-lora bs16_lr0.0005_s1: training loss"
            )
            .unwrap(),
            LossChart::Written
        );
        let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        for color in ["#4C72B0", "#DD8452", "#55A868"] {
            assert!(
                svg.lines()
                    .any(|l| l.contains("<polyline") && l.contains(color)),
                "no line in {color}"
            );
        }
        assert!(svg.contains("KD loss (teacher)"));
        assert_text_fits(&svg);

        std::fs::write(dir.path().join(TRAIN_LOG), "").unwrap();
        assert_eq!(write_loss_chart(dir.path(), "t").unwrap(), LossChart::Empty);
        std::fs::write(dir.path().join(TRAIN_LOG), "nope\n{\"step\":1}\n").unwrap();
        assert!(read_train_log(dir.path()).is_err());
    }

    #[test]
    fn results_charts_name_each_method_with_its_model() {
        let json = serde_json::json!({
            "methods": ["fft", "lora", "lora-student", "kd-lora"],
            "table1": [
                {"family": "MiniLM", "row": "SST-2", "subset": false, "scores": [85.3, 83.1, 79.7, 80.0]},
                {"family": "MiniLM", "row": "QQP", "subset": true, "scores": [78.5, 77.9, null, 67.5]},
            ],
            "table2": [
                {"family": "MiniLM", "method": "fft", "model": "all-MiniLM-L6-v2", "peak_rss_mib": 758.6, "inference_seconds": 2.77, "inference_task": "sst2"},
                {"family": "MiniLM", "method": "lora", "model": "all-MiniLM-L6-v2", "peak_rss_mib": 408.7, "inference_seconds": 2.69, "inference_task": "sst2"},
                {"family": "MiniLM", "method": "kd-lora", "model": "paraphrase-MiniLM-L3-v2", "peak_rss_mib": 285.1, "inference_seconds": 1.41, "inference_task": "sst2"},
            ],
        });
        let charts = results_charts(&json).unwrap();
        let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["scores-MiniLM.svg", "memory.svg", "inference.svg"]);
        for (_, svg) in &charts {
            assert_text_fits(svg);
        }
        assert!(
            charts[0]
                .1
                .contains("LoRA, no KD (paraphrase-MiniLM-L3-v2)")
        );
        assert!(charts[0].1.contains("QQP*"));
        assert!(charts[1].1.contains("LoRA (all-MiniLM-L6-v2)"));
        assert!(charts[1].1.contains("KD-LoRA (paraphrase-MiniLM-L3-v2)"));
        assert!(charts[2].1.contains("sst2 dev set"));
    }
}
