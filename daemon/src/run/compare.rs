//! Comparisons as the protocol reports them: the verdicts of [`super::verdict`] with what
//! they rest on (the sides' medians and sizes, the between-batch spread of sequential
//! batches, the environments' differences) and why they cannot decide when they cannot.

use cleanroom_proto::{BetweenBatch, Comparison, Design, Fingerprint, Verdict};

use super::verdict::{self, MIN_SAMPLES, Outcome, Resampled, Settings, median_of as median};

/// One side of a comparison.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// Its measured values of the metric.
    pub values: &'a [f64],
    /// The environment it ran in, if known.
    pub fingerprint: Option<&'a Fingerprint>,
}

/// What makes a comparison: the metric, the reference's name, the design.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The metric (`wall_ms`, `cpu_ms`).
    pub metric: String,
    /// The reference side's name (a batch id or `baseline:NAME`).
    pub against: String,
    /// The reference side's batch id (what a baseline named then).
    pub against_batch: String,
    /// Paired rounds or sequential batches.
    pub design: Design,
}

/// One comparison of a family before the family's correction: the bootstrap, or why
/// there is none.
#[derive(Debug)]
pub struct Prepared {
    plan: Plan,
    old: (f64, usize),
    new: (f64, usize),
    resampled: Option<Resampled>,
    reason: Option<String>,
    more: Option<u32>,
    between: Option<BetweenBatch>,
    differs: Vec<cleanroom_proto::FieldDiff>,
    same_executable: Option<bool>,
    /// Why the verdict cannot stand whatever its interval says (wall and CPU time
    /// disagree).
    overruled: Option<String>,
}

/// Least share of its wall time a command spends on CPUs to count as CPU-bound: below
/// it, wall and CPU time may rightly tell different stories (a command that waits). No
/// upper bound: a clock that loses time under load shows as a share above 1 too.
const CPU_BOUND: f64 = 0.8;

/// Most the two sides' shares may differ, relative to the larger: a new version that
/// waits more, or runs more in parallel, changes wall time for real, which CPU time
/// cannot see.
const SAME_SHARE: f64 = 0.05;

/// Whether wall time and CPU time of the same paired rounds disagree about a CPU-bound
/// comparison: each decides (at the family's base level), and they decide differently
/// (`equivalent` against `slower`, say). Then the machine's clock, not the commands, made
/// the wall-time ratio (on a virtual machine whose host deschedules its CPUs under load,
/// wall times are compressed and noisy while CPU time is not), and the wall-time verdict
/// cannot be trusted. Outcomes rather than intervals: a run's fixed costs differ between
/// the two clocks (start-up waits count in wall time only), which moves a large ratio by
/// a little without changing what it says. `None` when they agree, when either cannot
/// decide, when the commands are not CPU-bound, or when either cannot be resampled.
pub fn clock_disagreement(
    wall: (&[f64], &[f64]),
    cpu: (&[f64], &[f64]),
    s: &Settings,
) -> Option<String> {
    let share = |w: &[f64], c: &[f64]| {
        let mw = median(w);
        (mw > 0.0).then(|| median(c) / mw)
    };
    let (Some(a), Some(b)) = (share(wall.0, cpu.0), share(wall.1, cpu.1)) else {
        return None;
    };
    if !(a >= CPU_BOUND && b >= CPU_BOUND && (a - b).abs() <= SAME_SHARE * a.max(b)) {
        return None;
    }
    let pairs = |a: &[f64], b: &[f64]| -> Vec<(f64, f64)> {
        a.iter().copied().zip(b.iter().copied()).collect()
    };
    let w = verdict::paired(&pairs(wall.0, wall.1), s)?.verdict(s.level, s.delta);
    let c = verdict::paired(&pairs(cpu.0, cpu.1), s)?.verdict(s.level, s.delta);
    let decided = |o: Outcome| o != Outcome::Inconclusive;
    let apart = decided(w.outcome) && decided(c.outcome) && w.outcome != c.outcome;
    apart.then(|| {
        format!(
            "wall time and CPU time disagree in the same rounds: wall ratio {:.4} [{:.4}, \
             {:.4}], CPU ratio {:.4} [{:.4}, {:.4}]; the clock does not keep time on this \
             machine under its load (a virtual CPU descheduled by its host), so no \
             wall-time verdict: compare with --metric cpu",
            w.ratio, w.low, w.high, c.ratio, c.low, c.high
        )
    })
}

/// Interleaved rounds of `old` and `new` (the same length: one value each per round).
pub fn paired(plan: Plan, old: Side<'_>, new: Side<'_>, s: &Settings) -> Prepared {
    let rounds: Vec<(f64, f64)> = old
        .values
        .iter()
        .copied()
        .zip(new.values.iter().copied())
        .collect();
    let mut p = Prepared::new(plan, old, new);
    if rounds.len() < MIN_SAMPLES {
        p.too_few(rounds.len(), "rounds");
    } else {
        p.resampled = verdict::paired(&rounds, s);
    }
    p
}

/// Two batches measured at different times: `spread` is the command's between-batch
/// spread (`None`: unknown, and then no verdict but `inconclusive`).
pub fn sequential(
    plan: Plan,
    old: Side<'_>,
    new: Side<'_>,
    spread: Result<BetweenBatch, String>,
    s: &Settings,
) -> Prepared {
    let mut p = Prepared::new(plan, old, new);
    let n = old.values.len().min(new.values.len());
    if n < MIN_SAMPLES {
        p.too_few(n, "repeats a side");
        return p;
    }
    match spread {
        Ok(between) => {
            p.resampled = verdict::independent(old.values, new.values, s)
                .map(|r| r.widened(between.percent / 100.0, s.seed));
            p.between = Some(between);
        }
        Err(why) => p.reason = Some(why),
    }
    p
}

impl Prepared {
    fn new(plan: Plan, old: Side<'_>, new: Side<'_>) -> Self {
        let (differs, same_executable) = match (old.fingerprint, new.fingerprint) {
            (Some(a), Some(b)) => (b.differences(a), b.same_executable(a)),
            _ => (Vec::new(), None),
        };
        Self {
            plan,
            old: (median(old.values), old.values.len()),
            new: (median(new.values), new.values.len()),
            resampled: None,
            reason: None,
            more: None,
            between: None,
            differs,
            same_executable,
            overruled: None,
        }
    }

    /// Checks a wall-time comparison against the CPU time of the same rounds (old, new):
    /// when the two disagree ([`clock_disagreement`]), the verdict is `inconclusive`,
    /// saying why.
    pub fn checked_against_cpu(
        mut self,
        wall: (&[f64], &[f64]),
        cpu: (&[f64], &[f64]),
        s: &Settings,
    ) -> Self {
        if self.resampled.is_some() {
            self.overruled = clock_disagreement(wall, cpu, s);
        }
        self
    }

    fn too_few(&mut self, n: usize, what: &str) {
        self.reason = Some(format!(
            "too few measurements for a verdict: {n} {what} (at least {MIN_SAMPLES})"
        ));
        self.more = Some((MIN_SAMPLES - n) as u32);
    }

    /// The environment fields that differ between the sides.
    pub fn environment_differs(&self) -> &[cleanroom_proto::FieldDiff] {
        &self.differs
    }
}

/// The comparisons of a family, each decided at its Holm level among those that could
/// be decided at all.
pub fn decide(family: Vec<Prepared>, s: &Settings) -> Vec<Comparison> {
    let decidable: Vec<Resampled> = family.iter().filter_map(|p| p.resampled.clone()).collect();
    // One member per decidable comparison, in order: each decidable one takes the next.
    let mut members = verdict::family(&decidable, s).into_iter();
    family
        .into_iter()
        .map(|p| {
            let ratio = p.new.0 / p.old.0;
            let member = p.resampled.as_ref().and_then(|_| members.next());
            let (verdict, low, high, level, p_value, p_adjusted, more) = match member {
                Some(m) => (
                    outcome(m.verdict.outcome),
                    m.verdict.low,
                    m.verdict.high,
                    m.level,
                    m.verdict.p,
                    m.p_adjusted,
                    m.verdict
                        .more_repeats
                        .map(|n| n.min(u32::MAX as usize) as u32),
                ),
                None => (
                    Verdict::Inconclusive,
                    f64::NAN,
                    f64::NAN,
                    s.level,
                    1.0,
                    1.0,
                    p.more,
                ),
            };
            let ratio = p.resampled.as_ref().map_or(ratio, |r| r.ratio);
            let (verdict, more) = match &p.overruled {
                Some(_) => (Verdict::Inconclusive, None),
                None => (verdict, more),
            };
            let reason = p.overruled.or(p.reason).or_else(|| {
                (!ratio.is_finite()).then(|| {
                    "no ratio: a side has no measurement, or its median is 0 (nothing to divide by)"
                        .to_owned()
                })
            });
            Comparison {
                metric: p.plan.metric,
                against: p.plan.against,
                against_batch: Some(p.plan.against_batch),
                design: p.plan.design,
                baseline_median: finite_or(p.old.0, 0.0),
                median: finite_or(p.new.0, 0.0),
                ratio: finite_or(ratio, 0.0),
                low: finite_or(low, finite_or(ratio, 0.0)),
                high: finite_or(high, finite_or(ratio, 0.0)),
                level,
                delta_percent: s.delta * 100.0,
                p_value,
                p_adjusted,
                verdict,
                more_repeats: more,
                reason,
                between_batch: p.between,
                n_baseline: p.old.1 as u32,
                n: p.new.1 as u32,
                environment_differs: p.differs,
                same_executable: p.same_executable,
            }
        })
        .collect()
}

/// A number that cannot be computed is shown as `or` (JSON has no NaN, and a stored
/// result must read back); `reason` says why.
fn finite_or(x: f64, or: f64) -> f64 {
    if x.is_finite() {
        x
    } else if or.is_finite() {
        or
    } else {
        0.0
    }
}

fn outcome(o: Outcome) -> Verdict {
    match o {
        Outcome::Slower => Verdict::Slower,
        Outcome::Faster => Verdict::Faster,
        Outcome::Equivalent => Verdict::Equivalent,
        Outcome::Inconclusive => Verdict::Inconclusive,
    }
}

/// The sampling variance of the log of `values`' median `m`: about π/2 · σ²/n, σ the
/// relative spread from the median absolute deviation (1.4826 · MAD / m).
fn log_median_variance(values: &[f64], m: f64) -> f64 {
    let mad = median(&values.iter().map(|x| (x - m).abs()).collect::<Vec<_>>());
    let sigma = 1.4826 * mad / m;
    std::f64::consts::FRAC_PI_2 * sigma * sigma / values.len() as f64
}

/// The between-batch spread of a command from the medians of its earlier batches (each
/// with its values): the variance of their logs beyond what each median's own sampling
/// error explains (a median's variance is about π/2 · σ²/n, σ from the batch's median
/// absolute deviation). `None` with fewer than three batches.
pub fn spread_of_history(batches: &[Vec<f64>]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = batches
        .iter()
        .filter(|b| !b.is_empty())
        .filter_map(|b| {
            let m = median(b);
            (m > 0.0 && m.is_finite()).then(|| (m.ln(), log_median_variance(b, m)))
        })
        .collect();
    if logs.len() < 3 {
        return None;
    }
    let k = logs.len() as f64;
    let mean = logs.iter().map(|l| l.0).sum::<f64>() / k;
    let observed = logs.iter().map(|l| (l.0 - mean).powi(2)).sum::<f64>() / (k - 1.0);
    let sampling = logs.iter().map(|l| l.1).sum::<f64>() / k;
    Some((observed - sampling).max(0.0).sqrt())
}

/// The drift within one batch, as a stand-in for the between-batch spread when there is
/// no history: the log ratio of the medians of its second and first halves, whole (not
/// divided by √2: one difference is a weak estimate, so it is taken generously), and
/// never less than that difference's own sampling error (equal halves would otherwise
/// claim no spread at all). `None` below ten values.
pub fn spread_of_drift(values: &[f64]) -> Option<f64> {
    if values.len() < 10 {
        return None;
    }
    let (a, b) = values.split_at(values.len() / 2);
    let (ma, mb) = (median(a), median(b));
    if !(ma > 0.0 && mb > 0.0) {
        return None;
    }
    let error = (log_median_variance(a, ma) + log_median_variance(b, mb)).sqrt();
    Some((mb / ma).ln().abs().max(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            metric: "wall_ms".into(),
            against: "1".into(),
            against_batch: "1".into(),
            design: Design::Paired,
        }
    }

    #[test]
    fn a_wall_time_verdict_the_cpu_time_contradicts_is_overruled() {
        let s = Settings::default();
        // 30 rounds of a CPU-bound pair: CPU time 3 % apart (100 → 103 ms, ±0.5 %:
        // `slower`), the wall clock squeezing the difference away (both ~100 ms ± 1 %:
        // `equivalent`): the wall-time verdict goes.
        let jitter = |i: usize, amp: f64| 1.0 + amp * (((i * 7919) % 13) as f64 / 6.0 - 1.0);
        let cpu_old: Vec<f64> = (0..30).map(|i| 100.0 * jitter(i, 0.005)).collect();
        let cpu_new: Vec<f64> = (0..30).map(|i| 103.0 * jitter(i + 5, 0.005)).collect();
        let wall_old: Vec<f64> = (0..30).map(|i| 100.5 * jitter(i + 2, 0.01)).collect();
        let wall_new: Vec<f64> = (0..30).map(|i| 100.5 * jitter(i + 9, 0.01)).collect();
        let why = clock_disagreement((&wall_old, &wall_new), (&cpu_old, &cpu_new), &s)
            .expect("disagreement");
        assert!(why.contains("--metric cpu"), "{why}");
        let c = decide(
            vec![
                paired(
                    plan(),
                    Side {
                        values: &wall_old,
                        fingerprint: None,
                    },
                    Side {
                        values: &wall_new,
                        fingerprint: None,
                    },
                    &s,
                )
                .checked_against_cpu(
                    (&wall_old, &wall_new),
                    (&cpu_old, &cpu_new),
                    &s,
                ),
            ],
            &s,
        );
        assert_eq!(c[0].verdict, Verdict::Inconclusive);
        assert!(
            c[0].reason
                .as_deref()
                .unwrap()
                .starts_with("wall time and CPU time disagree")
        );
        // Wall time that tells the CPU time's story stands, also with a start-up cost of
        // its own that moves a large ratio a little (2 → 1.97).
        let wall_new: Vec<f64> = cpu_new.iter().map(|c| c + 0.5).collect();
        let wall_old: Vec<f64> = cpu_old.iter().map(|c| c + 0.5).collect();
        assert!(clock_disagreement((&wall_old, &wall_new), (&cpu_old, &cpu_new), &s).is_none());
        let cpu_twice: Vec<f64> = cpu_old.iter().map(|c| c * 2.0).collect();
        let wall_twice: Vec<f64> = cpu_twice.iter().map(|c| c + 3.0).collect();
        let wall_once: Vec<f64> = cpu_old.iter().map(|c| c + 3.0).collect();
        assert!(
            clock_disagreement((&wall_once, &wall_twice), (&cpu_old, &cpu_twice), &s).is_none()
        );
        // A new version that waits 10 % more (its CPU time unchanged) is slower for real:
        // wall time says so, CPU time cannot, and the verdict stands.
        let waits: Vec<f64> = wall_old.iter().map(|w| w * 1.1).collect();
        assert!(clock_disagreement((&wall_old, &waits), (&cpu_old, &cpu_old), &s).is_none());
        // Nor is a parallel one judged by it (CPU time beyond wall time).
        let parallel: Vec<f64> = cpu_old.iter().map(|c| c * 3.0).collect();
        let quicker: Vec<f64> = wall_old.iter().map(|w| w * 0.5).collect();
        assert!(clock_disagreement((&wall_old, &quicker), (&cpu_old, &parallel), &s).is_none());
        // A command that waits (CPU time a tenth of its wall time) is not judged by it.
        let idle_old: Vec<f64> = cpu_old.iter().map(|c| c / 10.0).collect();
        let idle_new: Vec<f64> = cpu_old.iter().map(|c| c / 10.0).collect();
        let wall_new: Vec<f64> = (0..30).map(|i| 103.0 * jitter(i + 9, 0.001)).collect();
        assert!(clock_disagreement((&wall_old, &wall_new), (&idle_old, &idle_new), &s).is_none());
    }

    #[test]
    fn fewer_than_five_rounds_are_inconclusive_and_say_so() {
        let s = Settings::default();
        let old = [100.0, 101.0, 99.0];
        let new = [150.0, 151.0, 149.0];
        let side = |values| Side {
            values,
            fingerprint: None,
        };
        let c = decide(vec![paired(plan(), side(&old), side(&new), &s)], &s);
        assert_eq!(c[0].verdict, Verdict::Inconclusive);
        assert_eq!(c[0].more_repeats, Some(2));
        assert!(
            c[0].reason.as_deref().unwrap().contains("3 rounds"),
            "{c:?}"
        );
        assert!((c[0].ratio - 1.5).abs() < 1e-12);
    }

    #[test]
    fn sequential_batches_without_a_known_spread_cannot_decide() {
        let s = Settings::default();
        let old: Vec<f64> = (0..8).map(|i| 100.0 + f64::from(i) * 0.01).collect();
        let new: Vec<f64> = old.iter().map(|x| x * 1.2).collect();
        let side = |values| Side {
            values,
            fingerprint: None,
        };
        let unknown = sequential(
            plan(),
            side(&old),
            side(&new),
            Err("unknown spread".into()),
            &s,
        );
        let known = sequential(
            plan(),
            side(&old),
            side(&new),
            Ok(BetweenBatch {
                percent: 1.0,
                source: "history".into(),
                from: 5,
            }),
            &s,
        );
        let c = decide(vec![unknown, known], &s);
        assert_eq!(c[0].verdict, Verdict::Inconclusive);
        assert_eq!(c[0].reason.as_deref(), Some("unknown spread"));
        assert_eq!(c[1].verdict, Verdict::Slower, "{c:?}");
        assert_eq!(c[1].level, 0.95, "one decidable comparison: no correction");
    }

    /// Worked by hand: batches with medians 100, 110, 90, 100 and no spread of their own:
    /// the logs' sample variance is that of ln(1), ln(1.1), ln(0.9), ln(1) = 0, 0.09531,
    /// −0.10536, 0: mean −0.0025125, variance 0.0067183, sd 0.081966.
    #[test]
    fn the_history_spread_is_the_variance_of_log_medians_beyond_sampling() {
        let flat = |m: f64| vec![m; 9];
        let sd = spread_of_history(&[flat(100.0), flat(110.0), flat(90.0), flat(100.0)]).unwrap();
        assert!((sd - 0.081_966).abs() < 1e-5, "{sd}");
        assert!(spread_of_history(&[flat(1.0), flat(2.0)]).is_none());
        // Batches as spread inside as between them show no between-batch spread.
        let wide: Vec<Vec<f64>> = (0..4)
            .map(|i| {
                (0..9)
                    .map(|j| 100.0 + 20.0 * f64::from((j + i) % 9) - 80.0)
                    .collect()
            })
            .collect();
        let sd = spread_of_history(&wide).unwrap();
        assert!(sd < 0.05, "{sd}");
        // Drift: halves with medians 100 and 105 and no spread of their own.
        let drift: Vec<f64> = [100.0; 6].into_iter().chain([105.0; 6]).collect();
        assert!((spread_of_drift(&drift).unwrap() - 1.05f64.ln()).abs() < 1e-12);
        // Equal halves, each 98, 100, 102 twice: MAD 2, σ = 1.4826 · 2/100; each half's
        // log-median variance π/2 · σ²/6 = 2.3018e-4; the two together √4.6037e-4 =
        // 0.021456: the floor.
        let flat: Vec<f64> = [98.0, 100.0, 102.0].repeat(4);
        let sd = spread_of_drift(&flat).unwrap();
        assert!((sd - 0.021_456).abs() < 1e-5, "{sd}");
        assert!(spread_of_drift(&[1.0; 9]).is_none());
    }
}
