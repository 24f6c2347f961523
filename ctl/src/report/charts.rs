//! The report's charts, drawn by plotters as SVG text (inlined in the HTML: no script, no
//! network, text a browser, a screen reader and a test can read from the DOM).
//!
//! Each function returns `None` when it has nothing to draw (and the page says so in
//! words instead).

use cleanroom_proto::{Metric, RunsHistoryResult};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{Batch, Compared, Report, measure_name, shorten};

/// Chart size, pixels (the page scales it to its width).
const SIZE: (u32, u32) = (900, 380);
/// The series' colours (Tableau 10: told apart by most colour-blind readers).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
];
/// Outliers and regressions (no batch's colour).
const ALERT: RGBColor = RGBColor(214, 39, 40);
const FONT: &str = "sans-serif";

/// The colour of batch `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Draws with `draw` on a fresh canvas: the SVG text, or `None` when plotters fails (it
/// does not on finite data; a chart is left out rather than the report).
fn svg(draw: impl FnOnce(&Area<'_>) -> Drawn) -> Option<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).ok()?;
        draw(&root).ok()?;
        root.present().ok()?;
    }
    Some(out)
}

/// `lo..hi` widened by 8 % (and made non-empty) so points are not on the frame.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - span * 0.08)..(hi + span * 0.08)
}

fn bounds(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// Ticks of a count axis: whole numbers only (plotters also picks halves).
fn whole(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{:.0}", x)
    } else {
        String::new()
    }
}

/// A spread of points across a box's width that does not depend on chance: the fractional
/// parts of multiples of the golden ratio, centred.
fn jitter(k: usize) -> f64 {
    ((k as f64 * 0.618_033_988_75).fract() - 0.5) * 0.36
}

/// The ends of a box's whiskers: the furthest values within Tukey's fences, never inside
/// the box (when no value lies between a quartile and its fence, the whisker is none).
fn whiskers(values: &[f64], q: [f64; 3]) -> (f64, f64) {
    let (lo, hi) = cleanroom_proto::stats::fences(q);
    let (a, b) =
        bounds(values.iter().copied().filter(|v| *v >= lo && *v <= hi)).unwrap_or((q[0], q[2]));
    (a.min(q[0]), b.max(q[2]))
}

/// Every batch's values of the measure: each repeat a point, the box its quartiles with
/// the median, whiskers to the furthest values within Tukey's fences, outliers as red
/// crosses.
pub fn distribution(report: &Report) -> Option<String> {
    let metric = report.metric;
    let sets: Vec<Vec<f64>> = report
        .batches
        .iter()
        .map(|b| b.result.metric_values(metric))
        .collect();
    let (lo, hi) = bounds(sets.iter().flatten().copied())?;
    let names: Vec<String> = report.batches.iter().map(Batch::name).collect();
    let n = sets.len();
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Distribution: every repeat's {}", measure_name(metric)),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(78)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, padded(lo, hi))?;
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-9 && i >= 0.0 && (i as usize) < n {
                shorten(&names[i as usize], 22)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&label)
            .x_desc("batch")
            .y_desc(measure_name(metric))
            .label_style((FONT, 13))
            .draw()?;
        for (i, values) in sets.iter().enumerate() {
            let c = colour(i);
            let x = i as f64;
            let Some(q) = cleanroom_proto::stats::quartiles(values) else {
                continue;
            };
            let (fence_lo, fence_hi) = cleanroom_proto::stats::fences(q);
            let inside = whiskers(values, q);
            let w = 0.22;
            chart.draw_series([
                Rectangle::new([(x - w, q[0]), (x + w, q[2])], c.mix(0.18).filled()),
                Rectangle::new([(x - w, q[0]), (x + w, q[2])], c.stroke_width(2)),
            ])?;
            chart.draw_series(
                [
                    vec![(x - w, q[1]), (x + w, q[1])],
                    vec![(x, q[2]), (x, inside.1)],
                    vec![(x, q[0]), (x, inside.0)],
                    vec![(x - w / 2.0, inside.1), (x + w / 2.0, inside.1)],
                    vec![(x - w / 2.0, inside.0), (x + w / 2.0, inside.0)],
                ]
                .into_iter()
                .enumerate()
                .map(|(k, line)| {
                    PathElement::new(line, c.stroke_width(if k == 0 { 3 } else { 1 }))
                }),
            )?;
            chart.draw_series(values.iter().enumerate().map(|(k, v)| {
                let at = (x + jitter(k), *v);
                if *v < fence_lo || *v > fence_hi {
                    Cross::new(at, 5, ALERT.stroke_width(2)).into_dyn()
                } else {
                    Circle::new(at, 3, c.mix(0.75).filled()).into_dyn()
                }
            }))?;
        }
        Ok(())
    })
}

/// Every batch's repeats in the order they ran, warm-ups (wall time only) first as hollow
/// points left of the dashed line: warm-up and drift show as a slope. The warm-ups of a
/// batch counted under cachegrind ran without it: they are left out, not a step.
pub fn sequence(report: &Report) -> Option<String> {
    let metric = report.metric;
    let warm = |b: &Batch| {
        if metric == Metric::Wall && b.result.cost_factor.is_none() {
            b.result.warmup_ms.clone()
        } else {
            Vec::new()
        }
    };
    let sets: Vec<(Vec<f64>, Vec<f64>)> = report
        .batches
        .iter()
        .map(|b| (warm(b), b.result.metric_values(metric)))
        .collect();
    if sets.iter().all(|(_, m)| m.len() < 2) {
        return None;
    }
    let (lo, hi) = bounds(sets.iter().flat_map(|(w, m)| w.iter().chain(m)).copied())?;
    let (warmups, longest) = span(&sets);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Repeats in order: {}", measure_name(metric)),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(78)
            .build_cartesian_2d(0.5..longest as f64 + 0.5, padded(lo, hi))?;
        chart
            .configure_mesh()
            .x_label_formatter(&whole)
            .x_desc(if warmups > 0 {
                "run (warm-ups hollow, then measured repeats)"
            } else {
                "measured repeat"
            })
            .y_desc(measure_name(metric))
            .label_style((FONT, 13))
            .draw()?;
        if warmups > 0 {
            let x = warmups as f64 + 0.5;
            chart.draw_series(DashedLineSeries::new(
                [(x, lo), (x, hi)],
                6,
                4,
                BLACK.mix(0.4).stroke_width(1),
            ))?;
        }
        for (i, ((w, m), b)) in sets.iter().zip(&report.batches).enumerate() {
            let c = colour(i);
            // Measured repeats start after the longest warm-up, so all line up.
            let first = warmups - w.len();
            let warm_at: Vec<(f64, f64)> = w
                .iter()
                .enumerate()
                .map(|(k, v)| ((first + k + 1) as f64, *v))
                .collect();
            let at: Vec<(f64, f64)> = m
                .iter()
                .enumerate()
                .map(|(k, v)| ((warmups + k + 1) as f64, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(at.iter().copied(), c.stroke_width(1)))?
                .label(b.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
            chart.draw_series(at.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
            chart.draw_series(
                warm_at
                    .iter()
                    .map(|p| Circle::new(*p, 4, c.stroke_width(2))),
            )?;
        }
        legend(&mut chart)
    })
}

/// The most warm-ups of any batch (every batch's measured repeats start after them, so
/// they line up), and the positions the axis must hold.
fn span(sets: &[(Vec<f64>, Vec<f64>)]) -> (usize, usize) {
    let warmups = sets.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
    let measured = sets.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
    (warmups, warmups + measured)
}

fn legend<'a, DB, X, Y>(chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>) -> Drawn
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
}

/// Foreign CPU time on each repeat's CPUs (what else ran there), per repeat: the noise
/// each measurement took. `None` when no repeat was measured for it.
pub fn noise(report: &Report) -> Option<String> {
    let sets: Vec<Vec<f64>> = report
        .batches
        .iter()
        .map(|b| {
            let records = if b.result.runs.is_empty() {
                std::slice::from_ref(&b.result.last)
            } else {
                b.result.runs.as_slice()
            };
            records
                .iter()
                .map(|r| r.noise.foreign_cpu_ms.unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let (_, hi) = bounds(sets.iter().flatten().copied())?;
    let longest = sets.iter().map(Vec::len).max()?;
    if longest < 2 {
        return None;
    }
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Noise: other CPU time on the run's CPUs", (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(78)
            .build_cartesian_2d(0.5..longest as f64 + 0.5, 0.0..(hi.max(1.0) * 1.1))?;
        chart
            .configure_mesh()
            .x_label_formatter(&whole)
            .x_desc("measured repeat")
            .y_desc("foreign CPU time (ms)")
            .label_style((FONT, 13))
            .draw()?;
        let n = sets.len() as f64;
        for (i, (values, b)) in sets.iter().zip(&report.batches).enumerate() {
            let c = colour(i);
            // Side by side within a repeat's slot.
            let w = 0.8 / n;
            let offset = -0.4 + w * i as f64;
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(k, v)| {
                            let x = (k + 1) as f64 + offset;
                            Rectangle::new([(x, 0.0), (x + w * 0.9, *v)], c.filled())
                        }),
                )?
                .label(b.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
        }
        legend(&mut chart)
    })
}

/// Each comparison's ratio of medians (new/old) with its interval, against the band of
/// no change that matters (1 ± δ).
pub fn comparisons(report: &Report) -> Option<String> {
    let list: &[Compared] = &report.comparisons;
    if list.is_empty() {
        return None;
    }
    let (lo, hi) = bounds(list.iter().flat_map(|c| {
        let d = c.comparison.delta_percent / 100.0;
        [c.comparison.low, c.comparison.high, 1.0 - d, 1.0 + d]
    }))?;
    let n = list.len();
    let names: Vec<String> = list
        .iter()
        .map(|c| {
            let b = report.batches[c.batch].name();
            let against = c.reference.map_or_else(
                || c.comparison.against.clone(),
                |r| report.batches[r].name(),
            );
            shorten(&format!("{b} vs {against}"), 30)
        })
        .collect();
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Comparison: ratio of medians (new / reference) with its interval",
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(200)
            .build_cartesian_2d(padded(lo, hi), -0.5..n as f64 - 0.5)?;
        let label = |y: &f64| {
            let i = y.round();
            if (y - i).abs() < 1e-9 && i >= 0.0 && (i as usize) < n {
                names[i as usize].clone()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n + 1)
            .y_label_formatter(&label)
            .x_desc("ratio (above 1: slower)")
            .label_style((FONT, 13))
            .draw()?;
        let d = list[0].comparison.delta_percent / 100.0;
        chart.draw_series([Rectangle::new(
            [(1.0 - d, -0.5), (1.0 + d, n as f64 - 0.5)],
            RGBColor(44, 160, 44).mix(0.15).filled(),
        )])?;
        chart.draw_series(DashedLineSeries::new(
            [(1.0, -0.5), (1.0, n as f64 - 0.5)],
            6,
            4,
            BLACK.mix(0.5).stroke_width(1),
        ))?;
        for (i, c) in list.iter().enumerate() {
            let y = i as f64;
            let k = &c.comparison;
            let col = match k.verdict {
                cleanroom_proto::Verdict::Slower => ALERT,
                cleanroom_proto::Verdict::Faster => RGBColor(44, 160, 44),
                _ => colour(c.batch),
            };
            chart.draw_series([
                PathElement::new(vec![(k.low, y), (k.high, y)], col.stroke_width(3)),
                PathElement::new(
                    vec![(k.low, y - 0.12), (k.low, y + 0.12)],
                    col.stroke_width(2),
                ),
                PathElement::new(
                    vec![(k.high, y - 0.12), (k.high, y + 0.12)],
                    col.stroke_width(2),
                ),
            ])?;
            chart.draw_series([Circle::new((k.ratio, y), 6, col.filled())])?;
            chart.draw_series([Text::new(
                format!("{} ×{:.3}", k.verdict.as_str(), k.ratio),
                (k.ratio, y + 0.3),
                (FONT, 14).into_font().color(&col),
            )])?;
        }
        Ok(())
    })
}

/// A label's history: each batch's median in the order they ran (the axis names when each
/// ended), its baselines marked, a change point a dashed red line before the first batch
/// after it, with the size of the change.
pub fn history(h: &RunsHistoryResult) -> Option<String> {
    let n = h.batches.len();
    if n == 0 {
        return None;
    }
    let (lo, hi) = bounds(h.batches.iter().map(|b| b.median))?;
    let y = padded(lo, hi);
    let title = shorten(&super::printable(&h.label), 40);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "History of {title}: median {} per batch",
                    measure_name(h.metric)
                ),
                (FONT, 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(78)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, y.clone())?;
        // A whole position names its batch's end, `12-06 16:57` of `2026-12-06 16:57:00 UTC`.
        let ended = |x: &f64| {
            let i = x.round();
            match h.batches.get(i as usize) {
                Some(b) if (x - i).abs() < 1e-9 && i >= 0.0 => {
                    let w = super::when(b.ts);
                    w.get(5..16).unwrap_or(&w).to_owned()
                }
                _ => String::new(),
            }
        };
        chart
            .configure_mesh()
            .x_labels(n.min(7))
            .x_label_formatter(&ended)
            .x_desc("batch, oldest to newest (ended, UTC)")
            .y_desc(format!("median {}", measure_name(h.metric)))
            .label_style((FONT, 13))
            .draw()?;
        let c = colour(0);
        let at: Vec<(f64, f64)> = h
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (i as f64, b.median))
            .collect();
        chart
            .draw_series(LineSeries::new(at.iter().copied(), c.stroke_width(2)))?
            .label("median")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3)));
        chart.draw_series(at.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        let base = RGBColor(255, 127, 14);
        let marked: Vec<(f64, &cleanroom_proto::HistoryPoint)> = h
            .batches
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.baselines.is_empty())
            .map(|(i, b)| (i as f64, b))
            .collect();
        if !marked.is_empty() {
            chart
                .draw_series(
                    marked
                        .iter()
                        .map(|(x, b)| TriangleMarker::new((*x, b.median), 8, base.filled())),
                )?
                .label("baseline")
                .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 6, base.filled()));
            chart.draw_series(marked.iter().map(|(x, b)| {
                Text::new(
                    shorten(&super::printable(&b.baselines.join(", ")), 24),
                    (*x, b.median),
                    (FONT, 13).into_font().color(&base),
                )
            }))?;
        }
        for cp in &h.change_points {
            if cp.index == 0 || cp.index as usize >= n {
                continue;
            }
            let x = f64::from(cp.index) - 0.5;
            chart.draw_series(DashedLineSeries::new(
                [(x, y.start), (x, y.end)],
                6,
                4,
                ALERT.stroke_width(2),
            ))?;
            chart.draw_series([Text::new(
                format!("change ×{:.3}", cp.magnitude),
                (x, y.end),
                (FONT, 13).into_font().color(&ALERT),
            )])?;
        }
        legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiskers_never_reach_into_the_box() {
        // Q1 = Q3 = 0 … 25 for [0, 0, 0, 100]: 100 is beyond the fence (62.5), so the upper
        // whisker ends at the box (matplotlib draws the same), not at 0 inside it.
        let v = [0.0, 0.0, 0.0, 100.0];
        let q = cleanroom_proto::stats::quartiles(&v).unwrap();
        assert_eq!(q, [0.0, 0.0, 25.0]);
        assert_eq!(whiskers(&v, q), (0.0, 25.0));
        // 1 … 10 and an outlier at 100: whiskers at 1 and 10 (Q1 3.5, Q3 8.5 by type 7 of
        // 1..=10 and 100; the upper fence 16).
        let mut v: Vec<f64> = (1..=10).map(f64::from).collect();
        v.push(100.0);
        let q = cleanroom_proto::stats::quartiles(&v).unwrap();
        assert_eq!(q, [3.5, 6.0, 8.5]);
        assert_eq!(whiskers(&v, q), (1.0, 10.0));
    }

    #[test]
    fn the_sequence_axis_holds_every_repeat() {
        // 3 warm-ups and 5 repeats beside none and 10: the second's repeats sit at 4 … 13.
        let sets = vec![(vec![1.0; 3], vec![1.0; 5]), (vec![], vec![1.0; 10])];
        assert_eq!(span(&sets), (3, 13));
    }

    #[test]
    fn jitter_stays_within_the_box() {
        for k in 0..1000 {
            assert!(jitter(k).abs() <= 0.18, "{k}");
        }
        assert_eq!(padded(10.0, 10.0), 9.2..10.8);
        assert_eq!(bounds([3.0, f64::NAN, 1.0]), Some((1.0, 3.0)));
        assert_eq!(bounds([f64::NAN]), None);
    }
}
