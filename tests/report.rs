//! End-to-end test of `cleanroomctl report`, checked the way a person meets it: the HTML
//! rendered by headless Chromium (Debian's `chromium`, installed by scripts/setup), its
//! console read for errors, its DOM for the charts' titles and axis labels, its screenshot
//! for painted charts; and the Markdown, CSV and JSON forms read back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cleanroom::{Daemon, is_root_or_skip};
use serde_json::Value;

/// Headless Chromium on `page` with `args` (as root it needs --no-sandbox; its profile in
/// a directory of the test's own): its output, and the console messages it logged.
fn chromium(dir: &Path, page: &Path, args: &[&str]) -> (Output, Vec<String>) {
    // Bounded: a browser that hangs fails the test instead of holding it.
    let out = Command::new("timeout")
        .args(["-k", "5", "120", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (scripts/setup installs it)");
    assert!(out.status.success(), "chromium failed: {out:?}");
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (out, console)
}

/// The `<figure id="chart-NAME">` element of `dom`, whole.
fn figure<'a>(dom: &'a str, name: &str) -> &'a str {
    let open = format!("<figure class=\"chart\" id=\"chart-{name}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no chart {name} in the page"));
    let end = dom[start..].find("</figure>").expect("figure closed") + start;
    &dom[start..end]
}

/// The text of every SVG `<text>` element in `svg`, entities decoded as a reader sees them.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..t.find("</text>")?];
            Some(
                body.trim()
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&amp;", "&"),
            )
        })
        .collect()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn the_report_renders_in_a_browser_with_its_charts() {
    if !is_root_or_skip("the_report_renders_in_a_browser_with_its_charts") {
        return;
    }
    let d = Daemon::start();
    let dir: PathBuf = d.dir().to_owned();
    // The harness sees a page's console: a page that logs and throws is caught.
    let bad = dir.join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><p>x</p><script>console.error('boom'); missing();</script>",
    )
    .unwrap();
    let (_, console) = chromium(&dir, &bad, &["--dump-dom"]);
    assert!(
        console.iter().any(|l| l.contains("boom")) && console.iter().any(|l| l.contains("missing")),
        "the console is not read: {console:?}"
    );

    // A labelled batch with warm-ups saved as a baseline (the label as hostile as labels
    // may be: markup, a comma, quotes), two commands compared, and a label's history.
    let hostile = "rep <script>alert(1)</script>, \"q\" | x";
    let base = json(&d.ctl(&[
        "--json",
        "run",
        "--repeat",
        "12",
        "--warmup",
        "2",
        "--label",
        hostile,
        "--save-baseline",
        "base",
        "--",
        "sleep",
        "0.005",
    ]));
    let compared = d.ctl(&[
        "--json", "compare", "--rounds", "8", "--label", "old", "--label", "new", "--", "sleep",
        "0.005", "::", "sleep", "0.02",
    ]);
    let compared: Value =
        serde_json::from_slice(&compared.stdout).unwrap_or_else(|e| panic!("{e}: {compared:?}"));
    let side = |i: usize| compared["sides"][i]["batch"].as_str().unwrap().to_owned();
    let (old, new) = (side(0), side(1));
    for _ in 0..6 {
        json(&d.ctl(&[
            "--json", "run", "--repeat", "3", "--label", "hist", "--", "true",
        ]));
    }
    let html = dir.join("r.html");
    let out = d.ctl(&[
        "report",
        "baseline:base",
        &old,
        &new,
        "--label",
        "hist",
        "-o",
        html.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: no script and nothing that fetches (the environment table may quote
    // a URL of the kernel's command line as text); the label shown as text, not markup.
    let lower = page.to_lowercase();
    for absent in [
        "<script", "<link", "<img", "<iframe", "<object", "src=", "href=", "url(", "@import",
    ] {
        assert!(!lower.contains(absent), "the page holds {absent:?}");
    }
    assert!(page.contains("rep &lt;script&gt;alert(1)&lt;/script&gt;"));

    // The browser: no console message at all (the page has no script to log one; a
    // resource it could not load would be one), and the DOM it built holds every chart
    // with its title, axis labels and drawn points.
    let (out, console) = chromium(&dir, &html, &["--dump-dom"]);
    assert!(console.is_empty(), "console messages: {console:?}");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !dom.to_lowercase().contains("<script"),
        "a label became markup"
    );
    let charts = [
        (
            "distribution",
            vec![
                "Distribution: every repeat's wall time (ms)",
                "wall time (ms)",
                "batch",
            ],
        ),
        (
            "sequence",
            vec![
                "Repeats in order: wall time (ms)",
                "run (warm-ups hollow, then measured repeats)",
                "wall time (ms)",
            ],
        ),
        (
            "noise",
            vec![
                "Noise: other CPU time on the run's CPUs",
                "measured repeat",
                "foreign CPU time (ms)",
            ],
        ),
        (
            "comparison",
            vec![
                "Comparison: ratio of medians (new / reference) with its interval",
                "ratio (above 1: slower)",
            ],
        ),
        (
            "history-0",
            vec![
                "History of hist: median wall time (ms) per batch",
                "batch, oldest to newest (ended, UTC)",
                "median wall time (ms)",
            ],
        ),
    ];
    for (name, wanted) in charts {
        let fig = figure(&dom, name);
        assert!(fig.contains("<svg"), "{name}: no SVG");
        let t = texts(fig);
        for w in wanted {
            assert!(t.iter().any(|x| x == w), "{name}: no text {w:?} in {t:?}");
        }
    }
    // Every measured repeat is a point: a circle, or a red cross (two lines) for an
    // outlier; 12 + 8 + 8 and the label's newest 3.
    let dist = figure(&dom, "distribution");
    let circles = dist.matches("<circle").count();
    let crosses = dist.matches("stroke=\"#D62728\"").count() / 2;
    assert_eq!(
        circles + crosses,
        31,
        "{circles} circles, {crosses} crosses"
    );
    assert!(texts(dist).iter().any(|t| t.starts_with("rep <script>")));
    // Both comparisons have their verdict written at their point; the 4× slower one says
    // so.
    let cmp = texts(figure(&dom, "comparison"));
    assert!(cmp.iter().any(|t| t.starts_with("slower ×")), "{cmp:?}");
    assert_eq!(
        cmp.iter()
            .filter(|t| ["slower", "faster", "equivalent", "inconclusive"]
                .iter()
                .any(|v| t.starts_with(v)))
            .count(),
        2,
        "{cmp:?}"
    );
    // The history lists its six batches, the environment its fields.
    assert!(dom.contains("History of hist"));
    assert!(dom.contains("<h2 id=\"environment\">Environment</h2>"));
    assert!(dom.contains("cgroup"));

    // The screenshot: the charts are painted. Each batch's colour covers real areas (the
    // points, boxes, lines and bars of its series; anti-aliased edges within reach), far
    // beyond its legend swatches (a few hundred pixels).
    let shot = dir.join("shot.png");
    let (_, console) = chromium(
        &dir,
        &html,
        &[
            "--window-size=1100,4200",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(console.is_empty(), "console messages: {console:?}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let near = |c: &[u8; 3], to: [u8; 3]| {
        c.iter()
            .zip(to)
            .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 40)
    };
    // The first four batches' colours (the palette of ctl/src/report/charts.rs).
    for (name, colour) in [
        ("blue", [31, 119, 180]),
        ("orange", [255, 127, 14]),
        ("green", [44, 160, 44]),
        ("purple", [148, 103, 189]),
    ] {
        let n = pixels.iter().filter(|p| near(p, colour)).count();
        eprintln!("{name}: {n} pixels");
        assert!(n > 1500, "{name}: {n} pixels painted");
    }

    // Markdown: the tables, the label escaped so it renders as text.
    let out = d.ctl(&["report", "baseline:base", &old, &new, "--format", "md"]);
    assert!(out.status.success(), "{out:?}");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("## Comparisons"), "{md}");
    assert!(
        md.contains("rep \\<script\\>alert(1)\\</script\\>, \"q\" \\| x"),
        "{md}"
    );

    // CSV: a row for each warm-up and each measured repeat, the label whole, the values
    // the stored batch's.
    let csv_path = dir.join("r.csv");
    let out = d.ctl(&["report", "baseline:base", "-o", csv_path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut rows = csv::Reader::from_path(&csv_path).unwrap();
    let header = rows.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 14, "2 warm-ups and 12 repeats");
    assert!(rows.iter().all(|r| &r[col("label")] == hostile));
    assert_eq!(
        rows.iter().filter(|r| &r[col("kind")] == "warmup").count(),
        2
    );
    let walls: Vec<f64> = rows
        .iter()
        .filter(|r| &r[col("kind")] == "measured")
        .map(|r| r[col("wall_ms")].parse().unwrap())
        .collect();
    let stored: Vec<f64> = base["samples"]["wall_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(walls, stored);

    // JSON: everything gathered.
    let out = d.ctl(&[
        "report",
        "baseline:base",
        &old,
        &new,
        "--label",
        "hist",
        "--format",
        "json",
    ]);
    let r = json(&out);
    assert_eq!(r["batches"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(r["comparisons"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["histories"][0]["batches"].as_array().unwrap().len(), 6);
    assert_eq!(r["batches"][0]["result"]["stored"]["label"], hostile);

    // Usage errors before the daemon is asked; a batch that is not there named; a file
    // that cannot be written named, nothing left behind.
    let out = d.ctl(&["report"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let many: Vec<String> = (0..9).map(|i| i.to_string()).collect();
    let mut args = vec!["report"];
    args.extend(many.iter().map(String::as_str));
    let out = d.ctl(&args);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 8 batches"));
    let out = d.ctl(&["report", "424242"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stored batch 424242"));
    // -o through a symbolic link writes the file it names; -o /dev/stdout writes there.
    let target = dir.join("target.md");
    std::fs::write(&target, "old").unwrap();
    let link = dir.join("link.md");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = d.ctl(&["report", "baseline:base", "-o", link.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .starts_with("# cleanroom report")
    );
    let out = d.ctl(&[
        "report",
        "baseline:base",
        "--format",
        "md",
        "-o",
        "/dev/stdout",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("# cleanroom report"));
    assert!(
        std::fs::symlink_metadata("/dev/stdout")
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let nowhere = dir.join("no-such-dir").join("r.html");
    let out = d.ctl(&["report", "baseline:base", "-o", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-dir"),
        "{out:?}"
    );
}
