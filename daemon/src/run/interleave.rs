//! Interleaved comparisons (`run.compare`): two or more commands run alternately on the
//! same CPUs, in a random order each round, so whatever drifts (load, frequency, caches)
//! hits every command alike; each command is stored as a batch of its own, the second and
//! later with their verdict against the first.
//!
//! A comparison: every command listed as a batch in progress (one cancellation token:
//! cancelling any ends all) → exclusive cores taken once, for all → each command's
//! fingerprint → warm-up rounds, then measured rounds, each command once a round in a
//! seeded random order (a noisy repeat measured again at once, within its command's
//! budget) → with `until_decided`, after the rounds asked for, another round while any
//! verdict is `inconclusive` and the budget lasts → cores released → the verdicts of the
//! family (paired bootstrap, Holm) → every batch stored.

use std::time::{Duration, Instant};

use cleanroom_proto::{CompareResult, Design, EndReason, Metric, Rerun, RunRecord};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::active::Registration;
use super::batch::{Batch, Engine, Ran, RunEvent, Settings, on_cores, result_of};
use super::compare::{self, Plan, Side};
use super::error::Error;
use super::verdict;

/// A comparison, resolved ([`super::request::resolve_compare`] makes one).
#[derive(Debug, Clone)]
pub struct Compare {
    /// One batch per command; the first is the reference. They share every option but the
    /// command and the label.
    pub sides: Vec<Batch>,
    /// The measure compared.
    pub metric: Metric,
    /// Keep adding rounds while a verdict is inconclusive.
    pub until_decided: bool,
    /// Most rounds (with `until_decided`).
    pub max_rounds: u32,
    /// Most time measuring (with `until_decided`).
    pub max_time: Duration,
    /// Seed of the round order and the bootstrap.
    pub seed: u64,
}

/// The value of `metric` in one run.
fn value(r: &RunRecord, metric: Metric) -> f64 {
    match metric {
        Metric::Wall => r.wall_ms,
        Metric::Cpu => r.user_ms + r.sys_ms,
        // A run whose count is missing (its stderr cut at the output cap) is left out.
        Metric::Instructions => r.instructions.map_or(f64::NAN, |n| n as f64),
        Metric::Cycles => r
            .counters
            .as_ref()
            .and_then(|c| c.cycles)
            .map_or(f64::NAN, |n| n as f64),
    }
}

impl Compare {
    /// How many times `until_decided` looks at the verdicts at most: after the rounds
    /// asked for, each time they have doubled, and at `max_rounds`.
    pub fn looks(&self) -> u32 {
        looks(self.until_decided, self.sides[0].repeat, self.max_rounds)
    }

    /// The level each look decides at: every look is a chance of a false `slower`, so
    /// the error α is split evenly among them (Bonferroni): `1 − α/looks`.
    pub fn level(&self, level: f64) -> f64 {
        1.0 - (1.0 - level) / f64::from(self.looks())
    }
}

/// The looks of [`Compare::looks`] for `asked` rounds and at most `max_rounds`.
fn looks(until_decided: bool, asked: u32, max_rounds: u32) -> u32 {
    if !until_decided {
        return 1;
    }
    let mut n = asked.max(1);
    let mut looks = 1;
    while n < max_rounds {
        n = n.saturating_mul(2).min(max_rounds);
        looks += 1;
    }
    looks
}

impl Engine {
    /// Admits every side of `cmp` under its id (see [`Engine::admit`]); all or none.
    pub fn admit_all(
        &self,
        ids: &[String],
        cmp: &Compare,
        cancel: &CancellationToken,
        quotas: &crate::config::Quotas,
    ) -> Result<Vec<Registration>, Error> {
        ids.iter()
            .zip(&cmp.sides)
            .map(|(id, side)| self.admit(id, side, cancel.clone(), quotas))
            .collect()
    }

    /// Runs comparison `cmp`, its sides admitted by [`Engine::admit_all`] as `ids`: see
    /// the module documentation.
    pub async fn compare(
        &self,
        listed: Vec<Registration>,
        ids: Vec<String>,
        cmp: Compare,
        settings: Settings,
        events: mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> Result<CompareResult, Error> {
        let _listed = listed;
        for id in &ids {
            let _ = events.send(RunEvent::Started { batch: id.clone() }).await;
        }
        // Fingerprints before the cores are taken: reading files holds no core.
        let mut fingerprints = Vec::with_capacity(cmp.sides.len());
        for side in &cmp.sides {
            fingerprints.push(self.fingerprint(&settings, &side.job).await);
        }
        let first = &cmp.sides[0];
        let exclusive = self.acquire(&ids[0], first, &settings, &cancel).await?;
        let shield = exclusive.as_ref().map(|x| x.method.to_owned());
        for f in &mut fingerprints {
            f.shield = shield.clone();
            f.exclusive_cpus = exclusive.as_ref().map(|x| x.cpus.clone());
        }
        let mut jobs = Vec::with_capacity(cmp.sides.len());
        let mut hold = None;
        for side in &cmp.sides {
            let (job, h) = on_cores(side, &settings, exclusive.as_ref());
            hold = hold.or(h);
            jobs.push(job);
        }
        let mut rounds = Rounds {
            engine: self,
            cmp: &cmp,
            jobs: &jobs,
            hold,
            settings: &settings,
            events: &events,
            cancel: &cancel,
            rng: ChaCha8Rng::seed_from_u64(cmp.seed),
            measured: vec![Vec::new(); jobs.len()],
            reruns: vec![Vec::new(); jobs.len()],
            plain: vec![Vec::new(); jobs.len()],
            done: 0,
        };
        let stopped = rounds.run().await;
        let Rounds {
            measured,
            reruns,
            plain,
            ..
        } = rounds;
        if let Some(x) = exclusive {
            x.release().await;
            self.active().release_exclusive(&ids[0]);
        }
        let complete = measured.iter().map(Vec::len).min().unwrap_or(0);
        let comparisons =
            verdicts(&cmp, &ids[0], &measured, complete, &fingerprints, &settings).await?;
        let mut comparisons: Vec<Option<cleanroom_proto::Comparison>> = std::iter::once(None)
            .chain(comparisons.into_iter().map(Some))
            .collect();
        let mut sides = Vec::with_capacity(ids.len());
        for (i, (((id, mut records), (fingerprint, reruns)), plain)) in ids
            .iter()
            .zip(measured)
            .zip(fingerprints.into_iter().zip(reruns))
            .zip(plain)
            .enumerate()
        {
            if records.is_empty() {
                // Ended before this command's first run: stored as such.
                let mut none = RunRecord::new(id.clone(), EndReason::Cancelled, String::new());
                none.error = Some(format!("the comparison stopped ({stopped}) before it ran"));
                records.push(none);
            }
            let ran = Ran {
                measured: records,
                shield: shield.clone(),
                fingerprint: Some(fingerprint),
                reruns,
                warmups: plain,
                counted: cmp.sides[i].instructions,
                collected: None,
            };
            let mut result = result_of(id.clone(), complete.max(2) as u32, ran)?;
            result.comparison = comparisons.get_mut(i).and_then(Option::take);
            self.store_result(&cmp.sides[i], &settings, &result).await?;
            sides.push(result);
        }
        Ok(CompareResult {
            sides,
            rounds: complete as u32,
            stopped: stopped.to_owned(),
            metric: cmp.metric,
            seed: cmp.seed,
        })
    }
}

/// The verdicts of every command after the first against it, over the `complete` rounds
/// every command finished (on the blocking pool: a bootstrap per command).
async fn verdicts(
    cmp: &Compare,
    reference: &str,
    measured: &[Vec<RunRecord>],
    complete: usize,
    fingerprints: &[cleanroom_proto::Fingerprint],
    settings: &Settings,
) -> Result<Vec<cleanroom_proto::Comparison>, Error> {
    // The rounds where every command has a value (all, but for a missing count).
    let whole: Vec<usize> = (0..complete)
        .filter(|i| {
            measured
                .iter()
                .all(|side| value(&side[*i], cmp.metric).is_finite())
        })
        .collect();
    let values: Vec<Vec<f64>> = measured
        .iter()
        .map(|side| whole.iter().map(|i| value(&side[*i], cmp.metric)).collect())
        .collect();
    // Wall time is checked against the CPU time of the same rounds.
    let cpu: Option<Vec<Vec<f64>>> = (cmp.metric == Metric::Wall).then(|| {
        measured
            .iter()
            .map(|side| {
                whole
                    .iter()
                    .map(|i| value(&side[*i], Metric::Cpu))
                    .collect()
            })
            .collect()
    });
    let (metric, reference, fingerprints) = (
        cmp.metric.series().to_owned(),
        reference.to_owned(),
        fingerprints.to_vec(),
    );
    let s = verdict::Settings {
        seed: cmp.seed,
        ..settings.verdict
    };
    Ok(tokio::task::spawn_blocking(move || {
        family(
            &metric,
            &reference,
            &values,
            cpu.as_deref(),
            &fingerprints,
            &s,
        )
    })
    .await?)
}

/// The comparisons of commands 1.. against command 0, decided together.
fn family(
    metric: &str,
    reference: &str,
    values: &[Vec<f64>],
    cpu: Option<&[Vec<f64>]>,
    fingerprints: &[cleanroom_proto::Fingerprint],
    s: &verdict::Settings,
) -> Vec<cleanroom_proto::Comparison> {
    let prepared = (1..values.len())
        .map(|i| {
            let plan = Plan {
                metric: metric.to_owned(),
                against: reference.to_owned(),
                against_batch: reference.to_owned(),
                design: Design::Paired,
            };
            let p = compare::paired(
                plan,
                Side {
                    values: &values[0],
                    fingerprint: fingerprints.first(),
                },
                Side {
                    values: &values[i],
                    fingerprint: fingerprints.get(i),
                },
                s,
            );
            match cpu {
                Some(cpu) => p.checked_against_cpu((&values[0], &values[i]), (&cpu[0], &cpu[i]), s),
                None => p,
            }
        })
        .collect();
    compare::decide(prepared, s)
}

/// When measuring stops, once the rounds asked for are done.
#[derive(Debug, Clone, Copy)]
struct Budget {
    until_decided: bool,
    max_rounds: u32,
    max_time: Duration,
}

impl Budget {
    /// Why to stop after `n` rounds (every verdict `decided` or not, `elapsed` since the
    /// first measured round), or `None` to measure another round.
    fn stop(&self, n: u32, decided: bool, elapsed: Duration) -> Option<&'static str> {
        if !self.until_decided {
            Some("rounds")
        } else if decided {
            Some("decided")
        } else if n >= self.max_rounds {
            Some("max_rounds")
        } else if elapsed >= self.max_time {
            Some("max_seconds")
        } else {
            None
        }
    }
}

/// The rounds of a comparison in progress.
struct Rounds<'a> {
    engine: &'a Engine,
    cmp: &'a Compare,
    jobs: &'a [super::Job],
    hold: Option<super::batch::Hold>,
    settings: &'a Settings,
    events: &'a mpsc::Sender<RunEvent>,
    cancel: &'a CancellationToken,
    rng: ChaCha8Rng,
    /// Each command's measured runs, one a round.
    measured: Vec<Vec<RunRecord>>,
    /// Each command's repeats measured again.
    reruns: Vec<Vec<Rerun>>,
    /// Each command's warm-up wall times (plain, when the measured runs are counted).
    plain: Vec<Vec<f64>>,
    /// Runs done, warm-ups included.
    done: u32,
}

/// How a round ended.
enum Round {
    /// Every command ran and exited.
    Done,
    /// A run did not exit 0 (an exit code, timeout, signal, failed to start) or the
    /// comparison was cancelled.
    Stop(&'static str),
}

impl Rounds<'_> {
    /// Warm-up rounds, then measured rounds until the rounds asked for are done (and,
    /// with `until_decided`, every verdict decided or the budget spent); why it stopped.
    async fn run(&mut self) -> &'static str {
        let warmup = self.cmp.sides[0].warmup;
        let asked = self.cmp.sides[0].repeat;
        for _ in 0..warmup {
            if let Round::Stop(why) = self.round(true, asked).await {
                return why;
            }
        }
        let started = Instant::now();
        let mut n = 0;
        // The verdicts are looked at after the rounds asked for, then each time the rounds
        // have doubled, and at the last (see `Compare::looks`).
        let mut look = asked;
        loop {
            if n >= asked {
                let at_look = n >= look || n >= self.cmp.max_rounds;
                let decided = self.cmp.until_decided && at_look && self.decided(n).await;
                if n >= look {
                    look = n.saturating_mul(2).min(self.cmp.max_rounds);
                }
                let budget = Budget {
                    until_decided: self.cmp.until_decided,
                    max_rounds: self.cmp.max_rounds,
                    max_time: self.cmp.max_time,
                };
                if let Some(why) = budget.stop(n, decided, started.elapsed()) {
                    return why;
                }
            }
            if let Round::Stop(why) = self.round(false, asked.max(n + 1)).await {
                return why;
            }
            n += 1;
        }
    }

    /// Whether no verdict over the first `n` rounds is inconclusive.
    async fn decided(&self, n: u32) -> bool {
        let ids = "0";
        let fingerprints = vec![cleanroom_proto::Fingerprint::default(); self.jobs.len()];
        match verdicts(
            self.cmp,
            ids,
            &self.measured,
            n as usize,
            &fingerprints,
            self.settings,
        )
        .await
        {
            Ok(all) => all
                .iter()
                .all(|c| c.verdict != cleanroom_proto::Verdict::Inconclusive),
            Err(_) => false,
        }
    }

    /// One round: every command once, in a random order.
    async fn round(&mut self, warmup: bool, rounds: u32) -> Round {
        let k = self.jobs.len();
        let mut order: Vec<usize> = (0..k).collect();
        order.shuffle(&mut self.rng);
        let total = (self.cmp.sides[0].warmup + rounds) * k as u32;
        for i in order {
            let job = &self.jobs[i];
            let counted = self.cmp.sides[i].instructions && !warmup;
            let mut record = self
                .engine
                .run_measured(job, counted, self.hold, self.events, self.cancel)
                .await;
            // A warm-up that ends the comparison is its measured run, not a warm-up's time.
            if warmup && record.end_reason == EndReason::Exited && record.exit_code == Some(0) {
                self.plain[i].push(record.wall_ms);
            }
            let noise = self.settings.noise;
            while !warmup && (self.reruns[i].len() as u32) < noise.max_reruns {
                let Some(reason) = noise.noisy(&record) else {
                    break;
                };
                if self.cancel.is_cancelled() {
                    break;
                }
                self.reruns[i].push(Rerun {
                    index: self.measured[i].len() as u32,
                    command: i as u32,
                    reason,
                });
                record = self
                    .engine
                    .run_measured(job, counted, self.hold, self.events, self.cancel)
                    .await;
            }
            self.done += 1;
            let _ = self
                .events
                .send(RunEvent::Progress {
                    done: self.done,
                    total: total.max(self.done),
                    warmup,
                    wall_ms: record.wall_ms,
                    command: Some(i as u32),
                })
                .await;
            // A command that does not exit 0 has nothing to compare: its round ends the
            // comparison (and the result says which).
            let failed = record.end_reason != EndReason::Exited || record.exit_code != Some(0);
            if !warmup || failed {
                self.measured[i].push(record);
            }
            if self.cancel.is_cancelled() {
                return Round::Stop("cancelled");
            }
            if failed {
                return Round::Stop("failed");
            }
        }
        Round::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_stops_at_the_rounds_the_verdicts_or_the_limits() {
        let b = Budget {
            until_decided: false,
            max_rounds: 50,
            max_time: Duration::from_secs(60),
        };
        assert_eq!(b.stop(10, false, Duration::ZERO), Some("rounds"));
        let b = Budget {
            until_decided: true,
            ..b
        };
        assert_eq!(b.stop(10, false, Duration::ZERO), None);
        assert_eq!(b.stop(10, true, Duration::ZERO), Some("decided"));
        assert_eq!(b.stop(50, false, Duration::ZERO), Some("max_rounds"));
        assert_eq!(
            b.stop(10, false, Duration::from_secs(60)),
            Some("max_seconds")
        );
        assert_eq!(
            b.stop(50, true, Duration::from_secs(60)),
            Some("decided"),
            "a decided verdict wins over a spent budget"
        );
    }

    /// Three commands: the second and third compared with the first, as a family
    /// (Holm), each over the rounds paired.
    #[test]
    fn each_command_after_the_first_is_compared_with_it() {
        let s = verdict::Settings::default();
        let base: Vec<f64> = (0..12).map(|i| 100.0 + f64::from(i % 3)).collect();
        let slower: Vec<f64> = base.iter().map(|x| x * 1.5).collect();
        let same = base.clone();
        let fps = vec![cleanroom_proto::Fingerprint::default(); 3];
        let c = family("wall_ms", "7", &[base, slower, same], None, &fps, &s);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].verdict, cleanroom_proto::Verdict::Slower, "{c:?}");
        assert_eq!(c[1].verdict, cleanroom_proto::Verdict::Equivalent, "{c:?}");
        assert!(
            c.iter()
                .all(|x| x.against == "7" && x.design == Design::Paired)
        );
        assert_eq!(c[0].level, 1.0 - 0.05 / 2.0, "the smaller p-value at α/2");
        assert_eq!(c[1].level, 0.95);
    }

    #[test]
    fn looks_double_the_rounds() {
        // 10, 20, 40, 80, 100: five looks.
        assert_eq!(looks(true, 10, 100), 5);
        assert_eq!(looks(true, 10, 10), 1);
        assert_eq!(looks(false, 10, 100), 1);
        assert_eq!(looks(true, 5, 50), 5, "5, 10, 20, 40, 50");
    }
}
