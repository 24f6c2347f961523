//! The report as one HTML file: styles inline, charts inline SVG, no script and nothing
//! fetched, so it opens from a CI artifact, a mail attachment or a host without network.

use cleanroom_proto::{Fingerprint, Metric, RunResult};
use quick_xml::escape::escape;

use super::{Batch, Report, charts, measure_name, printable, value, when};

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #1b1b1b; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #ddd; padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.differs { background: #fff3cd; }
code { font-family: ui-monospace, monospace; font-size: .88rem; overflow-wrap: anywhere; }
figure.chart { margin: 1rem 0; }
figure.chart svg { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .88rem; }
.swatch { display: inline-block; width: .8em; height: .8em; margin-right: .35em; vertical-align: baseline; }
.slower { color: #b71c1c; font-weight: 600; }
.faster { color: #1b5e20; font-weight: 600; }
.equivalent { color: #1b5e20; }
.inconclusive { color: #8a6d00; }
p.note { background: #fff3cd; padding: .4rem .6rem; border-left: 4px solid #8a6d00; }
";

/// Text for HTML, escaped (and without control characters).
fn t(text: &str) -> String {
    escape(printable(text).as_str()).into_owned()
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let title = title(report);
    page.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"cleanroomctl {}\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        env!("CARGO_PKG_VERSION"),
        t(&title)
    ));
    page.push_str(&format!(
        "<h1>{}</h1>\n<p class=\"meta\">{} · measure: {} · made {}</p>\n",
        t(&title),
        plural(report.batches.len(), "batch", "batches"),
        measure_name(report.metric),
        when(report.generated)
    ));
    for note in &report.notes {
        page.push_str(&format!("<p class=\"note\">{}</p>\n", t(note)));
    }
    if !report.batches.is_empty() {
        page.push_str("<h2 id=\"batches\">Batches</h2>\n");
        page.push_str(&batches_table(report));
        figure(
            &mut page,
            "distribution",
            charts::distribution(report),
            "Every measured repeat is a point; the box spans the quartiles with the median \
             across it, the whiskers reach the furthest repeats within 1.5 IQR of the box, \
             red crosses are the repeats beyond (outliers).",
        );
        figure(
            &mut page,
            "sequence",
            charts::sequence(report),
            "Repeats in the order they ran: a slope is warm-up or drift, a step a change \
             in the machine during the batch.",
        );
        figure(
            &mut page,
            "noise",
            charts::noise(report),
            "CPU time other tasks, interrupts and the hypervisor took on each repeat's \
             CPUs while it ran: what disturbed each measurement.",
        );
    }
    if !report.comparisons.is_empty() {
        page.push_str("<h2 id=\"comparisons\">Comparisons</h2>\n");
        page.push_str(&comparisons_table(report));
        figure(
            &mut page,
            "comparison",
            charts::comparisons(report),
            "The point is the ratio of the medians, the bar its confidence interval; the \
             green band is the margin within which a change does not matter.",
        );
    }
    for (i, h) in report.histories.iter().enumerate() {
        page.push_str(&format!(
            "<h2 id=\"history-{i}\">History of {}</h2>\n",
            t(&h.label)
        ));
        if h.batches.is_empty() {
            page.push_str("<p>No stored batch carries this label.</p>\n");
            continue;
        }
        figure(
            &mut page,
            &format!("history-{i}"),
            charts::history(h),
            "Each point is a batch's median; triangles are baselines; a dashed red line \
             is a change point (E-Divisive with a permutation test at 5 %).",
        );
        page.push_str(&history_table(h));
    }
    if !report.batches.is_empty() {
        page.push_str("<h2 id=\"environment\">Environment</h2>\n");
        page.push_str(&fingerprints(&report.batches));
    }
    page.push_str("</body>\n</html>\n");
    page
}

fn title(report: &Report) -> String {
    match (report.batches.first(), report.histories.first()) {
        (_, Some(h)) if report.batches.len() <= 1 => format!("cleanroom report: {}", h.label),
        (Some(b), _) if report.batches.len() == 1 => format!("cleanroom report: {}", b.name()),
        _ => format!(
            "cleanroom report: {}",
            report
                .batches
                .iter()
                .map(Batch::name)
                .collect::<Vec<_>>()
                .join(" · ")
        ),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn figure(page: &mut String, id: &str, svg: Option<String>, caption: &str) {
    let Some(svg) = svg else {
        return;
    };
    page.push_str(&format!(
        "<figure class=\"chart\" id=\"chart-{id}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        t(caption)
    ));
}

fn swatch(i: usize) -> String {
    let c = charts::colour(i);
    format!(
        "<span class=\"swatch\" style=\"background: rgb({}, {}, {})\"></span>",
        c.0, c.1, c.2
    )
}

fn batches_table(report: &Report) -> String {
    let metric = report.metric;
    let mut out = String::from(
        "<table>\n<tr><th>batch</th><th>command</th><th>ran</th><th>repeats</th>\
         <th>median</th><th>mean ± σ</th><th>min … max</th><th>outliers</th><th>ended</th></tr>\n",
    );
    for (i, b) in report.batches.iter().enumerate() {
        let r = &b.result;
        let values = r.metric_values(metric);
        let s = cleanroom_proto::stats::summarize(&values);
        let num = |f: &dyn Fn(&cleanroom_proto::Summary) -> String| {
            s.as_ref().map_or_else(|| "–".into(), f)
        };
        let ran = r
            .stored
            .as_ref()
            .map_or_else(String::new, |s| format!("{} by uid {}", when(s.ts), s.uid));
        out.push_str(&format!(
            "<tr><td>{}<b>{}</b><br><code>{}</code></td><td><code>{}</code></td><td>{}</td>\
             <td class=\"num\">{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
            swatch(i),
            t(&b.title()),
            t(&b.source),
            t(&b.command()),
            t(&ran),
            values.len(),
            match (r.cost_factor, r.warmup_ms.len()) {
                (Some(f), _) => format!(" (under cachegrind, ×{f:.0} the time of a plain run)"),
                (None, 0) => String::new(),
                (None, w) => format!(" (+{w} warm-up)"),
            },
            num(&|s| value(metric, s.median)),
            num(&|s| if values.len() > 1 {
                format!("{} ± {}", value(metric, s.mean), value(metric, s.stddev))
            } else {
                value(metric, s.mean)
            }),
            num(&|s| format!("{} … {}", value(metric, s.min), value(metric, s.max))),
            num(&|s| s.outliers.len().to_string()),
            t(&ended(r)),
        ));
    }
    out.push_str("</table>\n");
    out
}

fn ended(r: &RunResult) -> String {
    let mut s = crate::output::ended(&r.last);
    if !r.reruns.is_empty() {
        s.push_str(&format!(
            "; {} measured again (noisy)",
            plural(r.reruns.len(), "repeat", "repeats")
        ));
    }
    s
}

fn comparisons_table(report: &Report) -> String {
    let mut out = String::from(
        "<table>\n<tr><th>batch</th><th>against</th><th>verdict</th><th>ratio</th>\
         <th>interval</th><th>medians</th><th>design</th><th>notes</th></tr>\n",
    );
    for c in &report.comparisons {
        let k = &c.comparison;
        let against = c
            .reference
            .map_or_else(|| k.against.clone(), |r| report.batches[r].title());
        let mut notes = Vec::new();
        if let Some(reason) = &k.reason {
            notes.push(reason.clone());
        }
        if let Some(n) = k.more_repeats {
            notes.push(format!("about {n} more repeats would decide it"));
        }
        if !k.environment_differs.is_empty() {
            notes.push(format!(
                "environment differs: {}",
                k.environment_differs
                    .iter()
                    .map(|d| d.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !c.stored {
            notes.push("compared for this report as sequential batches".into());
        }
        let metric = metric_of(&k.metric).unwrap_or(report.metric);
        out.push_str(&format!(
            "<tr><td>{}{}</td><td>{}</td><td class=\"{v}\">{v}</td><td class=\"num\">×{:.3} ({:+.1} %)</td>\
             <td class=\"num\">{:.3} … {:.3} ({:.0} %)</td><td class=\"num\">{} → {}</td><td>{}</td><td>{}</td></tr>\n",
            swatch(c.batch),
            t(&report.batches[c.batch].title()),
            t(&against),
            k.ratio,
            (k.ratio - 1.0) * 100.0,
            k.low,
            k.high,
            k.level * 100.0,
            value(metric, k.baseline_median),
            value(metric, k.median),
            match k.design {
                cleanroom_proto::Design::Paired => "interleaved rounds",
                cleanroom_proto::Design::Independent => "sequential batches",
            },
            t(&notes.join("; ")),
            v = k.verdict.as_str(),
        ));
    }
    out.push_str("</table>\n");
    out
}

fn metric_of(series: &str) -> Option<Metric> {
    [
        Metric::Wall,
        Metric::Cpu,
        Metric::Instructions,
        Metric::Cycles,
    ]
    .into_iter()
    .find(|m| m.series() == series)
}

fn history_table(h: &cleanroom_proto::RunsHistoryResult) -> String {
    let mut out = String::from(
        "<table>\n<tr><th>batch</th><th>ended</th><th>uid</th><th>repeats</th><th>median</th>\
         <th>baselines</th><th>change point</th></tr>\n",
    );
    for (i, b) in h.batches.iter().enumerate() {
        let cp = super::change_point(h, i);
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>\n",
            t(&b.batch),
            when(b.ts),
            b.uid,
            b.runs,
            value(h.metric, b.median),
            t(&b.baselines.join(", ")),
            t(&cp)
        ));
    }
    out.push_str("</table>\n");
    out
}

/// The batches' environments side by side, fields that differ between them marked.
fn fingerprints(batches: &[Batch]) -> String {
    let prints: Vec<serde_json::Map<String, serde_json::Value>> = batches
        .iter()
        .map(
            |b| match serde_json::to_value(b.result.fingerprint.clone().unwrap_or_default()) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            },
        )
        .collect();
    let fields: Vec<String> = match serde_json::to_value(Fingerprint::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let mut out = String::from("<table>\n<tr><th>field</th>");
    for (i, b) in batches.iter().enumerate() {
        out.push_str(&format!("<th>{}{}</th>", swatch(i), t(&b.title())));
    }
    out.push_str("</tr>\n");
    for field in fields {
        let cells: Vec<String> = prints
            .iter()
            .map(|p| match p.get(&field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            })
            .collect();
        if cells.iter().all(String::is_empty) {
            continue;
        }
        let differs = cells.iter().any(|c| c != &cells[0]) && !field.starts_with("executable");
        out.push_str(&format!("<tr><th>{}</th>", t(&field.replace('_', " "))));
        for c in cells {
            out.push_str(&format!(
                "<td{}><code>{}</code></td>",
                if differs { " class=\"differs\"" } else { "" },
                t(&c)
            ));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}
