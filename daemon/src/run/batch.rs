//! The run engine: a batch is executed here, from its first event to its stored result.
//!
//! A batch: listed as in progress → exclusive cores taken (waiting for them if asked, and
//! cancellably) → warm-ups and measured repeats, each a run of [`Runner::run_once`] → cores
//! released (the shield lowered after the last holder) → statistics, the comparison with a
//! baseline → stored in the history (and saved as a baseline if asked). Along the way it
//! emits typed [`RunEvent`]s; whoever drives it (the server, later suites and interleaved
//! comparisons) maps them to its own output. Nothing here knows about connections.

use cleanroom_proto::stats;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cleanroom_proto::{
    Design, EndReason, Fingerprint, MAX_RECORDS, Metric, Rerun, RunRecord, RunResult,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::active::{Active, Listing, Registration};
use super::compare::{Plan, Side};
use super::error::Error;
use super::{Exclusive, Job, Runner, Want, compare, fingerprint, history, instructions, verdict};
use crate::config::Quotas;
use crate::quota::Exceeded;
use crate::store::{Store, history as rows};

/// Who a batch is for, as the kernel identified the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Uid.
    pub uid: u32,
    /// Gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Whether the caller is an admin (sees and ends every batch).
    pub admin: bool,
}

impl Caller {
    /// Whether the caller may see (or end) what `owner` owns.
    pub fn may_see(&self, owner: u32) -> bool {
        self.admin || self.uid == owner
    }
}

/// A baseline a batch is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// Its name, as comparisons show it (`baseline:NAME`).
    pub against: String,
    /// Its batch.
    pub batch: String,
    /// Who ran it.
    pub owner: u32,
    /// Its label.
    pub label: Option<String>,
    /// Its stored result.
    pub result: RunResult,
}

/// What to run and how often, fully resolved ([`super::request::resolve`] makes one from
/// a `run.start`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Who asked; the batch is stored as theirs.
    pub owner: Caller,
    /// The command, its identity, environment and limits.
    pub job: Job,
    /// Exclusive cores, if any.
    pub exclusive: Option<Want>,
    /// Wait for exclusive cores other runs hold instead of failing.
    pub wait: bool,
    /// Measured repetitions.
    pub repeat: u32,
    /// Unmeasured repetitions first.
    pub warmup: u32,
    /// Stored with the batch.
    pub label: Option<String>,
    /// The command as asked, stored with the batch.
    pub argv: Vec<String>,
    /// Save the measured runs as this baseline (public or not).
    pub save_baseline: Option<(String, bool)>,
    /// Compare the measured runs with this baseline.
    pub baseline: Option<Baseline>,
    /// Refuse to run when the environment differs from the baseline's.
    pub strict: bool,
    /// The measure compared with the baseline.
    pub metric: Metric,
    /// Count instructions in the measured runs (under cachegrind).
    pub instructions: bool,
    /// Nobody waits for the answer: a failure is stored too.
    pub detached: bool,
    /// Files to copy out of the last run's clean room once the batch ends.
    pub collect: Option<super::collect::Rules>,
}

/// Settings in force when a batch starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Batches kept in the history.
    pub history_limit: u32,
    /// How verdicts are reached.
    pub verdict: verdict::Settings,
    /// Which repeats are noisy, and how many are measured again.
    pub noise: NoiseRule,
    /// What the fingerprint takes from the daemon's state (the profile).
    pub context: fingerprint::Context,
    /// The isolation pool of the active profile, replacing the configured one.
    pub pool: Option<BTreeSet<u32>>,
    /// The per-uid quotas in force.
    pub quotas: Quotas,
}

/// Foreign CPU time below this is never noise, milliseconds: starting, watching and
/// reaping a run costs the daemon about that on the run's CPUs (on a CPU the run shares),
/// and measuring again cannot remove it.
pub const NOISE_FLOOR_MS: f64 = 2.0;

/// How much more CPU time than wall time × CPUs a run may show before its clocks are
/// taken to disagree, milliseconds (besides 2 %): the CPU time is counted from the exec,
/// the wall time from just before it, and each side rounds.
pub const CLOCK_SLACK_MS: f64 = 1.0;

/// Which repeats are noisy, and how many are measured again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseRule {
    /// Share of the run's CPU time (wall × CPUs) foreign CPU time may take (0: off).
    pub share: f64,
    /// Most noisy repeats measured again, per batch (per command of a comparison).
    pub max_reruns: u32,
}

impl NoiseRule {
    /// Why `r` is noisy, if it is: foreign CPU time beyond the share of its CPUs' time
    /// (and at least [`NOISE_FLOOR_MS`]), more CPU time than its CPUs had in its wall
    /// time, thermal throttling, or its CPUs' frequency apart by more than 5 %.
    pub fn noisy(&self, r: &RunRecord) -> Option<String> {
        // A run that failed is never measured again: a rerun that passes would hide the
        // failure.
        if self.share <= 0.0 || r.end_reason != EndReason::Exited || r.exit_code != Some(0) {
            return None;
        }
        let cpus = crate::host::format::parse_cpu_list(&r.cpus)
            .map(|c| c.len())
            .unwrap_or(1)
            .max(1);
        let capacity = r.wall_ms * cpus as f64;
        if let Some(foreign) = r.noise.foreign_cpu_ms {
            if capacity > 0.0 && foreign > self.share * capacity && foreign >= NOISE_FLOOR_MS {
                return Some(format!(
                    "foreign CPU time {foreign:.1} ms on CPUs {}: {:.0} % of their {capacity:.1} ms (over runs.noisy_percent = {})",
                    r.cpus,
                    foreign / capacity * 100.0,
                    self.share * 100.0
                ));
            }
        }
        // More CPU time than its CPUs had in its wall time cannot be: the clock that
        // measured the wall time disagrees with the one that counted the CPU time (a
        // virtual CPU its host descheduled; seen here under load: 11.4 ms wall for 15.4 ms
        // of CPU). Such a wall time is not a measurement. The slack covers the edges of the
        // two intervals.
        let cpu = r.user_ms + r.sys_ms;
        if capacity > 0.0 && cpu > capacity * 1.02 + CLOCK_SLACK_MS {
            return Some(format!(
                "its CPU time {cpu:.1} ms is more than its {cpus} CPU(s) had in its wall time of {:.1} ms: the clocks disagree (a virtual CPU descheduled by its host?)",
                r.wall_ms
            ));
        }
        if let Some(n) = r.noise.throttle_events.filter(|n| *n > 0) {
            return Some(format!("{n} thermal throttling events on its CPUs"));
        }
        if let (Some(lo), Some(hi)) = (r.noise.freq_min_khz, r.noise.freq_max_khz) {
            if hi as f64 > lo as f64 * 1.05 {
                return Some(format!("its CPUs' frequency moved: {lo} to {hi} kHz"));
            }
        }
        None
    }
}

/// What a batch emits while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// First: the batch id (to cancel it by).
    Started {
        /// The batch id.
        batch: String,
    },
    /// A chunk of a run's output.
    Output {
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A repetition finished.
    Progress {
        /// Repetitions done, warm-ups included.
        done: u32,
        /// Repetitions in all, warm-ups included.
        total: u32,
        /// Whether the one that finished was a warm-up.
        warmup: bool,
        /// Its wall time, milliseconds.
        wall_ms: f64,
        /// For a comparison: which command.
        command: Option<u32>,
    },
}

/// Executes batches on this host and keeps the list of those in progress.
#[derive(Debug)]
pub struct Engine {
    pub(super) runner: Arc<Runner>,
    pub(super) store: Store,
    active: Arc<Active>,
    /// Batch ids reserved in the store and not yet given.
    ids: std::sync::Mutex<std::ops::Range<u64>>,
    /// Executables' hashes, for fingerprints.
    hashes: Arc<fingerprint::Hashes>,
}

/// Free space the state directory must have for a batch to start: its result (a few
/// hundred KiB at most) and the journal's room to put the host back.
const MIN_FREE_BYTES: u64 = 4 << 20;

/// Batch ids reserved at a time (one durable write per this many batches).
const ID_BLOCK: u64 = 100;

impl Engine {
    /// An engine running on `runner`, storing results in `store`.
    pub fn new(runner: Arc<Runner>, store: Store) -> Self {
        Self {
            runner,
            store,
            active: Arc::new(Active::default()),
            ids: std::sync::Mutex::new(0..0),
            hashes: Arc::default(),
        }
    }

    /// The runner (cgroups, cores, shield).
    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// The batches in progress.
    pub fn active(&self) -> &Arc<Active> {
        &self.active
    }

    /// A batch id never given before: from a block reserved in the store (reserved anew
    /// when it runs out).
    pub async fn new_batch_id(&self) -> Result<String, Error> {
        loop {
            if let Some(id) = self.ids.lock().unwrap_or_else(|p| p.into_inner()).next() {
                return Ok(id.to_string());
            }
            let block = self.store.call(|c| rows::reserve_ids(c, ID_BLOCK)).await?;
            *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = block;
        }
    }

    /// Admits `batch` as `id`, ended by `cancel`: refused where runs cannot happen or
    /// when its owner is at a quota on batches, else listed as in progress from now on (so
    /// `run.cancel` finds it even before it starts), until the returned registration is
    /// dropped.
    pub fn admit(
        &self,
        id: &str,
        batch: &Batch,
        cancel: CancellationToken,
        quotas: &Quotas,
    ) -> Result<Registration, Error> {
        if let Some(why) = self.runner.unavailable() {
            return Err(Error::Unavailable(why.to_string()));
        }
        // Its result is stored after the answer: with no room for it, fail now, clearly.
        if let Ok(free) = self.store.free_bytes() {
            if free < MIN_FREE_BYTES {
                let dir = self.store.path().parent().unwrap_or(self.store.path());
                return Err(Error::StateFull {
                    dir: dir.display().to_string(),
                    free_kib: free / 1024,
                    need_kib: MIN_FREE_BYTES / 1024,
                });
            }
        }
        let listing = Listing {
            owner: batch.owner.uid,
            admin: batch.owner.admin,
            label: batch.label.clone(),
            argv: batch.argv.clone(),
            detached: batch.detached,
        };
        Ok(self.active.register(id, listing, cancel, quotas)?)
    }

    /// Executes `batch` as `id`, admitted by [`Engine::admit`]: see the module
    /// documentation. `events` gets its events (a receiver gone is fine); `cancel` ends it
    /// early (its runs are killed and what was measured is stored).
    pub async fn execute(
        &self,
        listed: Registration,
        id: String,
        batch: Batch,
        settings: Settings,
        events: mpsc::Sender<RunEvent>,
        cancel: CancellationToken,
    ) -> Result<RunResult, Error> {
        let _listed = listed;
        let _ = events.send(RunEvent::Started { batch: id.clone() }).await;
        // The fingerprint's files are read before any core is held.
        let mut fingerprint = self.fingerprint(&settings, &batch.job).await;
        let exclusive = match self.acquire(&id, &batch, &settings, &cancel).await {
            Ok(x) => x,
            Err(e) => return self.failed(id, &batch, &settings, e).await,
        };
        let shield = exclusive.as_ref().map(|x| x.method.to_owned());
        fingerprint.shield = shield.clone();
        fingerprint.exclusive_cpus = exclusive.as_ref().map(|x| x.cpus.clone());
        let (job, hold) = on_cores(&batch, &settings, exclusive.as_ref());
        if let Some(differ) = batch
            .baseline
            .as_ref()
            .filter(|_| batch.strict)
            .and_then(|b| differences(&fingerprint, b.result.fingerprint.as_ref()))
        {
            if let Some(x) = exclusive {
                x.release().await;
                self.active.release_exclusive(&id);
            }
            return self
                .failed(id, &batch, &settings, Error::EnvironmentsDiffer(differ))
                .await;
        }
        let (mut reruns, mut plain) = (Vec::new(), Vec::new());
        let measured = self
            .repeat(
                &batch,
                &job,
                hold,
                settings.noise,
                (&mut reruns, &mut plain),
                &events,
                &cancel,
            )
            .await;
        if let Some(x) = exclusive {
            x.release().await;
            self.active.release_exclusive(&id);
        }
        let collected = match &batch.collect {
            Some(rules) => Some(collect_from(rules, &batch.job, &cancel).await),
            None => None,
        };
        let ran = Ran {
            measured,
            shield,
            fingerprint: Some(fingerprint),
            reruns,
            warmups: plain,
            counted: batch.instructions,
            collected,
        };
        self.finish(id, &batch, &settings, ran).await
    }

    /// The environment `job` runs in (blocking reads on the blocking pool), but for its
    /// exclusive CPUs and shield, which the caller fills in once it has them.
    pub(super) async fn fingerprint(&self, settings: &Settings, job: &Job) -> Fingerprint {
        let ctx = settings.context.clone();
        let (host, hashes, spec) = (
            self.runner.host().clone(),
            Arc::clone(&self.hashes),
            job.spec.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let path = spec
                .env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map_or("", |(_, v)| v.as_str());
            let runs = fingerprint::Runs {
                program: spec.argv.first().map_or("", String::as_str),
                path,
                cwd: &spec.cwd,
                uid: spec.uid,
                groups: std::iter::once(spec.gid)
                    .chain(spec.groups.iter().copied())
                    .collect(),
            };
            fingerprint::take(&host, &ctx, &runs, &hashes)
        })
        .await
        .unwrap_or_default()
    }

    /// Exclusive cores for the whole batch (the shield goes up with the first holder), or
    /// none when the batch does not ask; within the owner's `quotas.exclusive_cpus_per_uid`
    /// (with `--wait`, waiting for its own other batches to give some back).
    pub(super) async fn acquire(
        &self,
        id: &str,
        batch: &Batch,
        settings: &Settings,
        cancel: &CancellationToken,
    ) -> Result<Option<Exclusive>, Error> {
        let Some(want) = &batch.exclusive else {
            return Ok(None);
        };
        loop {
            // Listening before trying: a release between the try and the wait is not lost.
            let released = self.runner.released();
            let (runner, want, pool) = (
                Arc::clone(&self.runner),
                want.clone(),
                settings.pool.clone(),
            );
            let taken =
                tokio::task::spawn_blocking(move || runner.take_exclusive(&want, pool.as_ref()))
                    .await?;
            let why = match taken {
                Ok(x) => {
                    let held = (x.count(), x.cpus.clone(), x.method.to_owned());
                    match self.active.hold_exclusive(
                        id,
                        held,
                        settings.quotas.exclusive_cpus_per_uid,
                    ) {
                        Ok(()) => return Ok(Some(x)),
                        Err(over) => {
                            x.release().await;
                            if !batch.wait {
                                return Err(over.into());
                            }
                            over.to_string()
                        }
                    }
                }
                Err(super::cpus::PickError::Busy(why)) if batch.wait => why,
                Err(e) => return Err(e.into()),
            };
            tracing::debug!(reason = %why, "waiting for exclusive cores");
            tokio::select! {
                () = released => {}
                () = cancel.cancelled() => return Err(Error::CancelledWaiting(why)),
            }
        }
    }

    /// Warm-ups, then measured repeats, until the count is reached, a run does not exit
    /// normally, or the batch is cancelled.
    #[allow(clippy::too_many_arguments)]
    async fn repeat(
        &self,
        batch: &Batch,
        job: &Job,
        hold: Option<Hold>,
        noise: NoiseRule,
        (reruns, plain): (&mut Vec<Rerun>, &mut Vec<f64>),
        events: &mpsc::Sender<RunEvent>,
        cancel: &CancellationToken,
    ) -> Vec<RunRecord> {
        let total = batch.warmup + batch.repeat;
        let mut measured = Vec::new();
        for i in 0..total {
            let warmup = i < batch.warmup;
            let counted = batch.instructions && !warmup;
            let mut record = self.run_measured(job, counted, hold, events, cancel).await;
            // A warm-up that ended the batch is its measured run, not a warm-up's time.
            if warmup && record.end_reason == EndReason::Exited && !cancel.is_cancelled() {
                plain.push(record.wall_ms);
            }
            // A noisy repeat is measured again, within the batch's budget of reruns.
            while !warmup && batch.repeat > 1 && (reruns.len() as u32) < noise.max_reruns {
                let Some(reason) = noise.noisy(&record) else {
                    break;
                };
                if cancel.is_cancelled() {
                    break;
                }
                reruns.push(Rerun {
                    index: measured.len() as u32,
                    command: 0,
                    reason,
                });
                record = self.run_measured(job, counted, hold, events, cancel).await;
            }
            let _ = events
                .send(RunEvent::Progress {
                    done: i + 1,
                    total,
                    warmup,
                    wall_ms: record.wall_ms,
                    command: None,
                })
                .await;
            let stop = record.end_reason != EndReason::Exited || cancel.is_cancelled();
            if !warmup || stop {
                measured.push(record);
            }
            if stop {
                break;
            }
        }
        measured
    }

    /// A run of `job`: under cachegrind with its instructions counted when `counted`
    /// (from the summaries in its stderr, which still reaches `events` whole), else plain.
    pub(super) async fn run_measured(
        &self,
        job: &Job,
        counted: bool,
        hold: Option<Hold>,
        events: &mpsc::Sender<RunEvent>,
        cancel: &CancellationToken,
    ) -> RunRecord {
        if !counted {
            return self.run_held(job, hold, events, cancel).await;
        }
        let mut wrapped = job.clone();
        wrapped.spec.argv = instructions::wrap(&job.spec.argv);
        let (tx, mut rx) = mpsc::channel::<RunEvent>(2);
        let forward = events.clone();
        let tap = tokio::spawn(async move {
            let mut count = instructions::Count::default();
            while let Some(e) = rx.recv().await {
                if let RunEvent::Output {
                    stream: "stderr",
                    data,
                } = &e
                {
                    count.feed(data);
                }
                let _ = forward.send(e).await;
            }
            count.total()
        });
        let mut record = self.run_held(&wrapped, hold, &tx, cancel).await;
        drop(tx);
        record.instructions = tap.await.ok().flatten();
        record
    }

    /// One run of `job`, its timeout bounded by the time left of the exclusive hold.
    pub(super) async fn run_held(
        &self,
        job: &Job,
        hold: Option<Hold>,
        events: &mpsc::Sender<RunEvent>,
        cancel: &CancellationToken,
    ) -> RunRecord {
        let mut job = std::borrow::Cow::Borrowed(job);
        let mut held_out = false;
        if let Some((until, _)) = hold {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if job.timeout.is_none_or(|t| t > left) {
                job.to_mut().timeout = Some(left);
                held_out = true;
            }
        }
        let mut record = self.runner.run_once(&job, events, cancel.clone()).await;
        if let (true, Some((_, limit))) = (held_out, hold) {
            if record.end_reason == EndReason::Timeout {
                record.error = Some(format!(
                    "ended: exclusive CPUs are held at most quotas.exclusive_hold_s = {} s",
                    limit.as_secs()
                ));
            }
        }
        record
    }

    /// A batch that could not run: nobody waits for a detached one's answer, so its
    /// failure is stored.
    async fn failed(
        &self,
        id: String,
        batch: &Batch,
        settings: &Settings,
        e: Error,
    ) -> Result<RunResult, Error> {
        if batch.detached {
            let mut failed = RunRecord::new(id.clone(), EndReason::FailedToStart, String::new());
            failed.error = Some(e.to_string());
            let ran = Ran {
                measured: vec![failed],
                ..Ran::default()
            };
            if let Err(store_error) = self.finish(id, batch, settings, ran).await {
                tracing::warn!(error = %store_error, "cannot store a detached batch that failed");
            }
        }
        Err(e)
    }

    /// Statistics, the comparison with the baseline, and the history (and the baseline to
    /// save) once a batch has run.
    async fn finish(
        &self,
        id: String,
        batch: &Batch,
        settings: &Settings,
        ran: Ran,
    ) -> Result<RunResult, Error> {
        let mut result = result_of(id, batch.repeat, ran)?;
        if let Some(base) = &batch.baseline {
            let (old, new) = (
                base.result.metric_values(batch.metric),
                result.metric_values(batch.metric),
            );
            let label = batch.label.clone().or_else(|| base.label.clone());
            let spread = history::spread(
                &self.store,
                label.as_deref(),
                batch.owner.uid,
                [&base.batch, &result.batch],
                batch.metric,
                &old,
            )
            .await;
            let plan = Plan {
                metric: batch.metric.series().to_owned(),
                against: base.against.clone(),
                against_batch: base.batch.clone(),
                design: Design::Independent,
            };
            let s = settings.verdict;
            let (base_fp, fp) = (base.result.fingerprint.clone(), result.fingerprint.clone());
            result.comparison = verdict::in_turn(move || {
                let prepared = compare::sequential(
                    plan,
                    Side {
                        values: &old,
                        fingerprint: base_fp.as_ref(),
                    },
                    Side {
                        values: &new,
                        fingerprint: fp.as_ref(),
                    },
                    spread,
                    &s,
                );
                compare::decide(vec![prepared], &s).pop()
            })
            .await?;
        }
        self.store_result(batch, settings, &result).await?;
        Ok(result)
    }

    /// The history row (after the comparison, so a run never compares against itself),
    /// and the baseline to save, in one call of the store. Without a baseline to save,
    /// nothing can be refused: the row is written after the answer.
    pub(super) async fn store_result(
        &self,
        batch: &Batch,
        settings: &Settings,
        result: &RunResult,
    ) -> Result<(), Error> {
        let row = rows::BatchRow {
            batch: result.batch.clone(),
            ts: 0.0,
            uid: batch.owner.uid,
            label: batch.label.clone(),
            argv: serde_json::to_string(&batch.argv).unwrap_or_default(),
            result: serde_json::to_string(result).unwrap_or_default(),
        };
        let keep = settings.history_limit;
        let Some((save, public)) = batch.save_baseline.clone() else {
            // Nothing to refuse: written after the answer (readers of the history wait
            // for it, see `Store::settled`).
            self.store
                .behind("a batch's history row", move |c| {
                    rows::insert(c, &row, keep)
                })
                .await;
            return Ok(());
        };
        let by = rows::Saver {
            uid: batch.owner.uid,
            admin: batch.owner.admin,
            public,
            most: settings.quotas.baselines_for(batch.owner.admin),
        };
        let name = save.clone();
        let saved = self
            .store
            .call(move |c| {
                rows::insert(c, &row, keep)?;
                rows::save_baseline(c, &save, &row.batch, by)
            })
            .await?;
        match saved {
            rows::Saved::Saved => Ok(()),
            rows::Saved::Taken => Err(Error::BaselineTaken {
                batch: result.batch.clone(),
                name,
            }),
            rows::Saved::Full(owned) => Err(Exceeded::new(
                "baselines_per_uid",
                settings.quotas.baselines_per_uid,
                by.uid,
                format!(
                    "{owned} baselines saved; the runs are stored as batch {} (cleanroomctl baseline save {name} {} once one is deleted)",
                    result.batch, result.batch
                ),
            )
            .into()),
        }
    }
}

/// The environment fields of `now` that differ from `then`'s, for a message; `None` when
/// none does. A side without a fingerprint (stored before them) differs in all.
pub fn differences(now: &Fingerprint, then: Option<&Fingerprint>) -> Option<String> {
    let Some(then) = then else {
        return Some("the reference was stored without its environment".into());
    };
    let d = now.differences(then);
    (!d.is_empty()).then(|| {
        d.iter()
            .map(|f| {
                format!(
                    "{}: {} → {}",
                    f.field,
                    f.baseline.as_deref().unwrap_or("unknown"),
                    f.current.as_deref().unwrap_or("unknown")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// `batch`'s job on its exclusive CPUs, if it has some, and until when it may hold them:
/// at most `quotas.exclusive_hold_s` from now (admins: no limit).
pub(super) fn on_cores(
    batch: &Batch,
    settings: &Settings,
    exclusive: Option<&Exclusive>,
) -> (Job, Option<Hold>) {
    let mut job = batch.job.clone();
    let mut hold = None;
    if let Some(x) = exclusive {
        job.limits.cpus = Some(x.cpus.clone());
        if !batch.owner.admin {
            let limit = std::time::Duration::from_secs(settings.quotas.exclusive_hold_s);
            hold = Some((tokio::time::Instant::now() + limit, limit));
        }
    }
    (job, hold)
}

/// When exclusive CPUs must be given back, and the limit that set it.
pub(super) type Hold = (tokio::time::Instant, std::time::Duration);

/// What a batch measured.
#[derive(Debug, Default)]
pub(super) struct Ran {
    pub(super) measured: Vec<RunRecord>,
    pub(super) shield: Option<String>,
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) reruns: Vec<Rerun>,
    /// The warm-ups' wall times, in order (with counting, they run plain).
    pub(super) warmups: Vec<f64>,
    /// Whether the measured runs were counted under cachegrind (their cost is the ratio
    /// to the warm-ups').
    pub(super) counted: bool,
    /// What `collect` copied out of the last run's clean room.
    pub(super) collected: Option<cleanroom_proto::Collected>,
}

/// Copies what `rules` asks for out of the clean room of `job`'s last run (on the blocking
/// pool, as the job's user, until `cancel`), letting its stage go.
async fn collect_from(
    rules: &super::collect::Rules,
    job: &Job,
    cancel: &CancellationToken,
) -> cleanroom_proto::Collected {
    let kept = job.latest.as_ref().and_then(super::collect::Latest::take);
    let (rules, spec, cancel) = (rules.clone(), job.spec.clone(), cancel.clone());
    let into = rules.into.display().to_string();
    tokio::task::spawn_blocking(move || {
        let (stage, mb) = spec
            .fs
            .as_ref()
            .map_or((std::path::PathBuf::new(), 0), |room| {
                (room.stage.clone(), room.upper_mb)
            });
        let mut groups = vec![spec.gid];
        groups.extend(spec.groups.iter().copied().filter(|g| *g != spec.gid));
        let job = super::collect::Collection {
            rules: &rules,
            stage: &stage,
            cwd: &spec.cwd,
            uid: spec.uid,
            groups: &groups,
            max_bytes: mb.max(1) << 20,
            cancel: &cancel,
        };
        super::collect::collect(&job, kept)
    })
    .await
    .unwrap_or_else(|e| cleanroom_proto::Collected {
        into,
        errors: vec![format!("the collecting task failed: {e}")],
        ..Default::default()
    })
}

/// The result of a batch of `repeat` asked for: the last run, and with more than one,
/// every run's values and their statistics.
pub(super) fn result_of(id: String, repeat: u32, ran: Ran) -> Result<RunResult, Error> {
    let Some(last) = ran.measured.last().cloned() else {
        return Err(Error::Task("no run was carried out".into()));
    };
    let mut result = bare(id, last);
    result.fingerprint = ran.fingerprint;
    result.reruns = ran.reruns;
    result.shield = ran.shield;
    result.collected = ran.collected;
    result.cost_factor = ran
        .counted
        .then_some(ran.warmups.as_slice())
        .and_then(|plain| {
            let walls: Vec<f64> = ran.measured.iter().map(|r| r.wall_ms).collect();
            let (counted, plain) = (stats::summarize(&walls)?, stats::summarize(plain)?);
            (plain.median > 0.0).then(|| counted.median / plain.median)
        });
    result.warmup_ms = ran.warmups;
    if repeat > 1 {
        result.stats = summaries(&ran.measured);
        result.samples = samples(&ran.measured);
        result.exit_codes = ran.measured.iter().map(|r| r.exit_code).collect();
        result.runs_omitted = ran.measured.len().saturating_sub(MAX_RECORDS) as u32;
        result.runs = ran.measured.iter().take(MAX_RECORDS).cloned().collect();
    }
    Ok(result)
}

/// Every measured value by metric, in run order.
fn samples(measured: &[RunRecord]) -> BTreeMap<String, Vec<f64>> {
    let metric = |f: fn(&RunRecord) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
    [
        ("wall_ms", metric(|r| r.wall_ms)),
        ("user_ms", metric(|r| r.user_ms)),
        ("sys_ms", metric(|r| r.sys_ms)),
        ("cpu_ms", metric(|r| r.user_ms + r.sys_ms)),
        ("max_rss_kb", metric(|r| r.max_rss_kb as f64)),
    ]
    .into_iter()
    .map(|(name, values)| (name.to_owned(), values))
    // Counted runs only, and only when every one has its count (a series is one value a
    // run, in run order).
    .chain(COUNTED.iter().filter_map(|(name, of)| {
        measured
            .iter()
            .map(of)
            .collect::<Option<Vec<f64>>>()
            .filter(|v| !v.is_empty())
            .map(|v| ((*name).to_owned(), v))
    }))
    .collect()
}

/// A measure only some runs have: its series name and its value in a run.
type CountedSeries = (&'static str, fn(&RunRecord) -> Option<f64>);

/// The series of counted measures: cachegrind's instructions, and the performance counters
/// (the PMU's instructions as `pmu_instructions`: a real CPU and a simulated one count
/// differently, so the two never share a series).
const COUNTED: &[CountedSeries] = &[
    ("instructions", |r| r.instructions.map(|n| n as f64)),
    ("task_clock_ms", |r| {
        r.counters.as_ref().map(|c| c.task_clock_ms)
    }),
    ("context_switches", |r| {
        r.counters.as_ref().map(|c| c.context_switches as f64)
    }),
    ("cpu_migrations", |r| {
        r.counters.as_ref().map(|c| c.cpu_migrations as f64)
    }),
    ("page_faults", |r| {
        r.counters.as_ref().map(|c| c.page_faults as f64)
    }),
    ("pmu_instructions", |r| {
        r.counters.as_ref()?.instructions.map(|n| n as f64)
    }),
    ("cycles", |r| r.counters.as_ref()?.cycles.map(|n| n as f64)),
    ("branch_misses", |r| {
        r.counters.as_ref()?.branch_misses.map(|n| n as f64)
    }),
    ("cache_misses", |r| {
        r.counters.as_ref()?.cache_misses.map(|n| n as f64)
    }),
];

/// Statistics by metric over the measured runs.
fn summaries(measured: &[RunRecord]) -> BTreeMap<String, cleanroom_proto::Summary> {
    samples(measured)
        .into_iter()
        .filter_map(|(name, values)| Some((name, stats::summarize(&values)?)))
        .collect()
}

/// The answer to a detached start: the batch goes on without its client.
pub fn detached(batch: String) -> RunResult {
    let mut r = bare(
        batch,
        RunRecord::new(String::new(), EndReason::Running, String::new()),
    );
    r.detached = true;
    r
}

/// A result of batch `batch` holding only `last`.
pub(crate) fn bare(batch: String, last: RunRecord) -> RunResult {
    RunResult {
        batch,
        last,
        runs: Vec::new(),
        runs_omitted: 0,
        samples: BTreeMap::new(),
        exit_codes: Vec::new(),
        stats: BTreeMap::new(),
        comparison: None,
        welch: None,
        fingerprint: None,
        cost_factor: None,
        reruns: Vec::new(),
        shield: None,
        detached: false,
        stored: None,
        warmup_ms: Vec::new(),
        collected: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(wall_ms: f64, cpu_ms: f64, cpus: &str, foreign_ms: Option<f64>) -> RunRecord {
        let mut r = RunRecord::new("1".into(), EndReason::Exited, cpus.into());
        r.exit_code = Some(0);
        r.wall_ms = wall_ms;
        r.user_ms = cpu_ms;
        r.noise.foreign_cpu_ms = foreign_ms;
        r
    }

    #[test]
    fn noisy_repeats_and_why() {
        let rule = NoiseRule {
            share: 0.10,
            max_reruns: 3,
        };
        // 20 ms on one CPU: 3 ms foreign is 15 %, noisy; 1.5 ms is 7.5 %, not.
        let why = rule.noisy(&record(20.0, 18.0, "1", Some(3.0))).unwrap();
        let mut failed = record(20.0, 18.0, "1", Some(3.0));
        failed.exit_code = Some(4);
        assert_eq!(rule.noisy(&failed), None, "a failed run is kept as it is");
        assert!(
            why.contains("foreign CPU time 3.0 ms on CPUs 1: 15 %"),
            "{why}"
        );
        assert_eq!(rule.noisy(&record(20.0, 18.0, "1", Some(1.5))), None);
        // On two CPUs the same 3 ms is 7.5 % of their 40 ms.
        assert_eq!(rule.noisy(&record(20.0, 18.0, "0-1", Some(3.0))), None);
        // A short run: 1.5 ms foreign is 50 % of 3 ms, but under the 2 ms floor.
        assert_eq!(rule.noisy(&record(3.0, 2.0, "1", Some(1.5))), None);
        // 15.4 ms of CPU in 11.4 ms of wall time on one CPU: the clocks disagree.
        let why = rule.noisy(&record(11.4, 15.4, "1", Some(0.6))).unwrap();
        assert!(why.contains("the clocks disagree"), "{why}");
        // Two threads on two CPUs may use twice the wall time; within the slack is fine.
        assert_eq!(rule.noisy(&record(11.4, 22.0, "0-1", None)), None);
        assert_eq!(rule.noisy(&record(10.0, 10.9, "1", None)), None);
        // Throttling and a moving frequency.
        let mut hot = record(20.0, 18.0, "1", None);
        hot.noise.throttle_events = Some(2);
        assert!(
            rule.noisy(&hot)
                .unwrap()
                .contains("2 thermal throttling events")
        );
        let mut moving = record(20.0, 18.0, "1", None);
        (moving.noise.freq_min_khz, moving.noise.freq_max_khz) = (Some(2_000_000), Some(3_000_000));
        assert!(rule.noisy(&moving).unwrap().contains("frequency moved"));
        // Off, and never for a run that did not exit.
        let off = NoiseRule { share: 0.0, ..rule };
        assert_eq!(off.noisy(&record(20.0, 18.0, "1", Some(10.0))), None);
        let mut killed = record(20.0, 18.0, "1", Some(10.0));
        killed.end_reason = EndReason::Timeout;
        assert_eq!(rule.noisy(&killed), None);
    }
}
