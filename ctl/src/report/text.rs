//! The report as Markdown (the tables of the HTML one, for a pull request or a wiki) and
//! as CSV (every repeat of every batch, one row each, for a spreadsheet or pandas).

use super::{Report, measure_name, printable, value, when};

/// Text for a Markdown table cell: nothing a renderer takes for markup (HTML, emphasis,
/// links, code, a cell boundary) and on one line.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in printable(text).chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A text cell a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, a tab or a
/// carriage return first) made plain text with a leading `'` (OWASP's advice for CSV).
fn inert(text: String) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text,
    }
}

/// The report's tables in Markdown.
pub fn markdown(report: &Report) -> String {
    let metric = report.metric;
    let mut out = format!(
        "# cleanroom report\n\n{} batch{} · measure: {} · made {}\n",
        report.batches.len(),
        if report.batches.len() == 1 { "" } else { "es" },
        measure_name(metric),
        when(report.generated)
    );
    for note in &report.notes {
        out.push_str(&format!("\n> {}\n", cell(note)));
    }
    if !report.batches.is_empty() {
        out.push_str(
            "\n## Batches\n\n| Batch | Command | Repeats | Median | Mean ± σ | Min … Max | Outliers |\n\
             |:---|:---|---:|---:|---:|---:|---:|\n",
        );
        for b in &report.batches {
            let values = b.result.metric_values(metric);
            let Some(s) = cleanroom_proto::stats::summarize(&values) else {
                out.push_str(&format!(
                    "| {} ({}) | {} | 0 | – | – | – | – |\n",
                    cell(&b.title()),
                    cell(&b.source),
                    cell(&b.command())
                ));
                continue;
            };
            out.push_str(&format!(
                "| {} ({}) | {} | {} | {} | {} ± {} | {} … {} | {} |\n",
                cell(&b.title()),
                cell(&b.source),
                cell(&b.command()),
                values.len(),
                value(metric, s.median),
                value(metric, s.mean),
                value(metric, s.stddev),
                value(metric, s.min),
                value(metric, s.max),
                s.outliers.len()
            ));
        }
    }
    if !report.comparisons.is_empty() {
        out.push_str(
            "\n## Comparisons\n\n| Batch | Against | Verdict | Ratio | Interval |\n\
             |:---|:---|:---|---:|---:|\n",
        );
        for c in &report.comparisons {
            let k = &c.comparison;
            let against = c
                .reference
                .map_or_else(|| k.against.clone(), |r| report.batches[r].title());
            out.push_str(&format!(
                "| {} | {} | **{}** | ×{:.3} ({:+.1} %) | {:.3} … {:.3} ({:.0} %) |\n",
                cell(&report.batches[c.batch].title()),
                cell(&against),
                k.verdict.as_str(),
                k.ratio,
                (k.ratio - 1.0) * 100.0,
                k.low,
                k.high,
                k.level * 100.0
            ));
        }
    }
    for h in &report.histories {
        out.push_str(&format!(
            "\n## History of {}\n\n| Batch | Ended | Repeats | Median | Baselines | Change point |\n\
             |:---|:---|---:|---:|:---|:---|\n",
            cell(&h.label)
        ));
        for (i, b) in h.batches.iter().enumerate() {
            let cp = super::change_point(h, i);
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                cell(&b.batch),
                when(b.ts),
                b.runs,
                value(h.metric, b.median),
                cell(&b.baselines.join(", ")),
                cp
            ));
        }
    }
    out
}

/// Every repeat of every batch: warm-ups (wall time only) then measured repeats.
pub fn csv(report: &Report) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = [
        "source",
        "batch",
        "label",
        "command",
        "kind",
        "repeat",
        "wall_ms",
        "user_ms",
        "sys_ms",
        "cpu_ms",
        "max_rss_kb",
        "instructions",
        "exit_code",
        "foreign_cpu_ms",
    ];
    w.write_record(header).map_err(|e| e.to_string())?;
    for b in &report.batches {
        let r = &b.result;
        let label = r
            .stored
            .as_ref()
            .and_then(|s| s.label.clone())
            .unwrap_or_default();
        let fixed = [
            inert(printable(&b.source)),
            r.batch.clone(),
            inert(printable(&label)),
            inert(b.command()),
        ];
        for (k, wall) in r.warmup_ms.iter().enumerate() {
            let mut row: Vec<String> = fixed.to_vec();
            row.extend(["warmup".into(), (k + 1).to_string(), wall.to_string()]);
            row.extend(std::iter::repeat_n(String::new(), header.len() - row.len()));
            w.write_record(&row).map_err(|e| e.to_string())?;
        }
        let series = |name: &str| r.samples.get(name);
        let n = r.metric_values(cleanroom_proto::Metric::Wall).len();
        for k in 0..n {
            let record = r.runs.get(k).or((n == 1).then_some(&r.last));
            let at = |name: &str, one: Option<f64>| {
                series(name)
                    .and_then(|v| v.get(k).copied())
                    .or(one)
                    .map_or_else(String::new, |v| v.to_string())
            };
            let mut row: Vec<String> = fixed.to_vec();
            row.extend([
                "measured".into(),
                (k + 1).to_string(),
                at("wall_ms", record.map(|x| x.wall_ms)),
                at("user_ms", record.map(|x| x.user_ms)),
                at("sys_ms", record.map(|x| x.sys_ms)),
                at("cpu_ms", record.map(|x| x.user_ms + x.sys_ms)),
                at("max_rss_kb", record.map(|x| x.max_rss_kb as f64)),
                at(
                    "instructions",
                    record.and_then(|x| x.instructions.map(|n| n as f64)),
                ),
                r.exit_codes
                    .get(k)
                    .copied()
                    .or(record.map(|x| x.exit_code))
                    .flatten()
                    .map_or_else(String::new, |c| c.to_string()),
                record
                    .and_then(|x| x.noise.foreign_cpu_ms)
                    .map_or_else(String::new, |v| v.to_string()),
            ]);
            w.write_record(&row).map_err(|e| e.to_string())?;
        }
    }
    let bytes = w.into_inner().map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_never_formulas() {
        assert_eq!(inert("=HYPERLINK(\"x\")".into()), "'=HYPERLINK(\"x\")");
        assert_eq!(inert("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(inert("sleep 1".into()), "sleep 1");
    }

    #[test]
    fn markdown_cells_hold_no_markup() {
        assert_eq!(cell("a|b"), "a\\|b");
        assert_eq!(cell("<script>"), "\\<script\\>");
        assert_eq!(cell("x\ny"), "x\u{fffd}y");
    }
}
