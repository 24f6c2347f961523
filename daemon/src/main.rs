//! cleanroomd: arguments, the start-up order, systemd notification. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use cleanroomd::args::Args;
use cleanroomd::config::{self, Overrides, Source};
use cleanroomd::host::Host;
use cleanroomd::server::{self, listener};
use cleanroomd::state::{Live, Parts, SocketInfo, State};
use cleanroomd::store::Store;
use cleanroomd::{privileges, systemd};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    if let (Some(procs), Some(fd)) = (&args.run_helper, args.helper_fd) {
        // A helper of the daemon's (cgroup v1 runs): nothing else of the daemon happens.
        return cleanroomd::run::helper::serve(fd, procs);
    }
    init_logging();
    match run(args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The start-up order matters; each step says why it sits where it does.
fn run(args: Args, started: Instant) -> anyhow::Result<()> {
    // 1. Configuration first: every later step depends on it, and a bad file must stop
    //    the daemon before it touches anything.
    let source = match args.config {
        Some(p) => Source::Explicit(p),
        None => Source::Default(PathBuf::from(config::DEFAULT_CONFIG_PATH)),
    };
    let overrides = Overrides {
        socket: args.socket,
        state_dir: args.state_dir,
        host_root: args.host_root,
    };
    if args.revert {
        return offline_revert(&source, &overrides, args.force);
    }
    if args.cleanup {
        return offline_cleanup(&source, &overrides);
    }
    let loaded = config::load(&source, &overrides)?;
    if args.check_config {
        let from = loaded.file.as_ref().map_or_else(
            || "built-in defaults".to_owned(),
            |p| p.display().to_string(),
        );
        let text = format!(
            "# effective configuration (from {from})\n{}",
            loaded.config.to_toml()
        );
        std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
        return Ok(());
    }
    let live = Live::new(loaded);
    let cfg = live.config.clone();

    // 2. Every connection is a file descriptor.
    match privileges::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "raised RLIMIT_NOFILE"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }

    // 3. The store (with migrations) before the socket: a broken database must fail the
    //    start before any client can connect.
    let store = Store::open(&cfg.daemon.state_dir)?;
    // Room kept for putting the host back should the file system fill up.
    store.keep_reserve();

    // 4. The socket: systemd's if it passed one, else bound here (stale file replaced,
    //    live daemon refused), with its group and mode set before anyone is told. Before
    //    anything is touched, so a daemon refused here leaves the host as it found it;
    //    connections queue in the kernel until step 8 serves them, so no request sees a
    //    half-recovered host.
    let listening = match listener::inherited()? {
        Some(l) => l,
        None => listener::bind(&cfg.socket.path, &cfg.socket.group, cfg.socket.mode.0)?,
    };

    // 4b. The scrape endpoint, when asked for: bound here too, so a taken port stops the
    //     start before anything is touched.
    let metrics_listener = match cfg.metrics.address().map_err(anyhow::Error::msg)? {
        Some(addr) => Some(server::http::bind(addr)?),
        None => None,
    };

    // 5. Run cgroups below our own, and what a dead daemon left ended and removed: its
    //    runs and its shield (a profile's partition is the shield: recovery raises it
    //    again when it re-applies the profile). The store's lock keeps a second daemon on
    //    this state directory out; another state directory is another instance, whose
    //    cgroups and shield journal are its own. Before serving, so no new run can start
    //    first.
    let host = Host::new(&cfg.daemon.host_root);
    let cgroup = host.cgroup_mode().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot detect cgroup hierarchies");
        cleanroom_proto::CgroupMode::None
    });
    let runner = std::sync::Arc::new(cleanroomd::run::Runner::new(
        host.clone(),
        cgroup,
        cfg.runs.max_output_bytes,
        &cleanroomd::run::instance_tag(&cfg.daemon.state_dir),
        store.clone(),
        cfg.runs.shield(),
    ));

    // 5b. Recovery: the journal left by a previous run is re-applied or reverted (a new
    //     boot recaptures the originals); pin rules added by hand follow `on_start` like
    //     the profile. A start that fails here removes the run cgroups it made.
    let pins = Arc::new(cleanroomd::pin::Pinner::new());
    let recovery = recover(&host, &store, &live, &cfg, &pins, &runner);
    if let Err(e) = recovery {
        runner.shutdown();
        return Err(e);
    }

    // 6. Drop unneeded capabilities while this is the only thread: capabilities are per
    //    thread, and every thread created later inherits the reduced sets.
    privileges::drop_capabilities(cfg.daemon.host_root != std::path::Path::new("/"))?;
    // Pin rules recovery re-applied follow processes from now on.
    pins.enable_events(&host, &store);

    // 7. Only now the runtime and its threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("cleanroomd")
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(serve(
        listening,
        metrics_listener,
        live,
        source,
        overrides,
        store,
        host,
        cgroup,
        started,
        runner,
        pins,
    ));
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    listening: listener::Listening,
    metrics_listener: Option<std::net::TcpListener>,
    live: Live,
    source: Source,
    overrides: Overrides,
    store: Store,
    host: Host,
    cgroup: cleanroom_proto::CgroupMode,
    started: Instant,
    runner: Arc<cleanroomd::run::Runner>,
    pins: Arc<cleanroomd::pin::Pinner>,
) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listening.listener)
        .context("cannot register the socket with the runtime")?;
    let grace = Duration::from_millis(live.config.limits.shutdown_grace_ms);
    let state = State::new(Parts {
        live,
        source,
        overrides,
        store,
        host,
        cgroup,
        socket: SocketInfo {
            path: listening.path.clone(),
            activated: listening.activated,
        },
        started,
        runner,
        pins,
    });
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    // 8. READY only now: the socket accepts (the kernel queues connections since bind),
    //    recovery is done, signals are handled.
    if let Ok(a) = cleanroomd::tune::active(state.store()) {
        state.set_active_profile(a.profile.as_deref());
        state
            .metrics()
            .journal_entries
            .set(a.journal_entries as i64);
    }
    // The scrape endpoint answers from READY on, like the socket.
    if let Some(l) = metrics_listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(address = %addr, "serving metrics over HTTP");
        }
        tokio::spawn(server::http::serve(l, Arc::clone(&state)));
    }
    systemd::ready(&state.status_line());
    tracing::info!(
        socket = %state.socket().path.display(),
        activated = state.socket().activated,
        state_db = %state.store().path().display(),
        cgroup = state.cgroup().as_str(),
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "cleanroomd ready"
    );
    if let Some(every) = systemd::watchdog_interval() {
        let token = state.shutdown().clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => systemd::watchdog(),
                }
            }
        });
    }

    let signals = {
        let state = Arc::clone(&state);
        async move {
            loop {
                tokio::select! {
                    _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                    _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                    _ = sighup.recv() => {
                        systemd::reloading();
                        let st = Arc::clone(&state);
                        match tokio::task::spawn_blocking(move || st.reload()).await {
                            Ok(Ok(r)) => tracing::info!(changed = ?r.changed, restart_required = ?r.restart_required, "SIGHUP: configuration reloaded"),
                            Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: new configuration refused; the old one stays in force"),
                            Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                        }
                        systemd::reloaded(&state.status_line());
                    }
                }
            }
            systemd::stopping();
            state.shutdown().cancel();
        }
    };
    tokio::spawn(signals);

    state.engine().runner().warm_up();
    tokio::spawn(drift_checks(Arc::clone(&state)));
    tokio::spawn(status_updates(Arc::clone(&state)));

    let tracker = server::run(listener, Arc::clone(&state)).await;
    // 9. Stop: no new connections (the accept loop has ended), requests in flight get up
    //    to the grace period, then the socket file goes if we created it.
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = tracker.len(),
            "grace period over; closing connections with requests in flight"
        );
    }
    // Runs were cancelled with the shutdown token; wait for their cleanup (processes
    // killed, cgroups removed).
    state.runs().close();
    if tokio::time::timeout(Duration::from_millis(300), state.runs().wait())
        .await
        .is_err()
    {
        tracing::warn!("runs still cleaning up at exit; ending them here");
    }
    // History rows written after their answers are written before the exit.
    if tokio::time::timeout(Duration::from_secs(5), state.store().settled())
        .await
        .is_err()
    {
        tracing::warn!("history rows still being written at exit; the newest may be lost");
    }
    // Whatever is left of runs and the shield goes now: a stopped daemon may not start
    // again for a long time (socket activation), so nothing waits for the next start.
    let runner = Arc::clone(state.engine().runner());
    let _ = tokio::task::spawn_blocking(move || runner.shutdown()).await;
    if state.live().config.tuning.revert_on_stop {
        let _guard = state.tune_lock().lock().await;
        let st = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || {
            let live = st.live();
            cleanroomd::tune::revert(st.tune_ctx(&live), false)
        })
        .await
        {
            Ok(Ok(r)) => tracing::info!(
                ok = r.ok,
                left = r.journal_entries,
                "tuning reverted on stop"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot revert tuning on stop"),
            Err(e) => tracing::error!(error = %e, "revert task failed"),
        }
    }
    if !state.socket().activated {
        if let Err(e) = std::fs::remove_file(&state.socket().path) {
            tracing::warn!(socket = %state.socket().path.display(), error = %e, "cannot remove socket file");
        }
    }
    tracing::info!("cleanroomd stopped");
    Ok(())
}

/// The state directory and host root for an offline mode: the configuration's, or the
/// defaults (and the command line's) when it does not load.
fn offline_daemon_section(source: &Source, overrides: &Overrides) -> config::DaemonSection {
    match config::load(source, overrides) {
        Ok(l) => l.config.daemon,
        Err(e) => {
            let mut d = config::DaemonSection::default();
            if let Some(dir) = &overrides.state_dir {
                d.state_dir.clone_from(dir);
            }
            if let Some(root) = &overrides.host_root {
                d.host_root.clone_from(root);
            }
            tracing::warn!(
                "{e:#}; using state directory {} and host root {}",
                d.state_dir.display(),
                d.host_root.display()
            );
            d
        }
    }
}

/// `--cleanup`: what a stopped daemon left running (its runs, its shield) ends; tuning
/// stays. A daemon that stopped cleanly left nothing, and this finds nothing.
fn offline_cleanup(source: &Source, overrides: &Overrides) -> anyhow::Result<()> {
    let daemon = offline_daemon_section(source, overrides);
    if !daemon.state_dir.join(cleanroomd::store::DB_FILE).exists() {
        return Ok(());
    }
    let store = Store::open(&daemon.state_dir)
        .context("cannot take the state directory (is cleanroomd still running?)")?;
    let host = Host::new(&daemon.host_root);
    let lowered = cleanroomd::run::lower_left_shield(&host, &store, None).is_some();
    let ended =
        cleanroomd::run::end_left_runs(&host, &cleanroomd::run::instance_tag(&daemon.state_dir));
    if lowered || ended > 0 {
        tracing::warn!(
            shield_lowered = lowered,
            runs_ended = ended,
            "cleaned up after a daemon that did not stop cleanly"
        );
    }
    Ok(())
}

/// `--revert`: the journal replayed with no server, for a daemon that cannot start (a
/// broken configuration, a package being removed). The state directory's lock keeps it
/// from running beside a live daemon.
fn offline_revert(source: &Source, overrides: &Overrides, force: bool) -> anyhow::Result<()> {
    let daemon = offline_daemon_section(source, overrides);
    let store = Store::open(&daemon.state_dir).context(
        "cannot take the state directory (while cleanroomd runs, use `cleanroomctl profile revert`)",
    )?;
    let host = Host::new(&daemon.host_root);
    let pins = Arc::new(cleanroomd::pin::Pinner::new());
    // A shield a killed daemon left raised goes too: its tasks, cpusets and IRQs back;
    // with --force, what the kernel refuses to take back is forgotten (and audited).
    let actor = force.then(|| cleanroomd::store::AuditEvent {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: std::process::id() as i32,
        method: "cleanroomd --revert --force".to_owned(),
        params_digest: String::new(),
        outcome: String::new(),
    });
    let lowered = cleanroomd::run::lower_left_shield(&host, &store, actor.as_ref());
    let ended =
        cleanroomd::run::end_left_runs(&host, &cleanroomd::run::instance_tag(&daemon.state_dir));
    let result = cleanroomd::tune::revert(
        cleanroomd::tune::Ctx {
            host: &host,
            store: &store,
            profiles: &cleanroomd::tune::profile::ProfileSet::default(),
            allow: &[],
            pins: &pins,
            runner: None,
        },
        force,
    )?;
    // Pin rules added by hand go too: the whole host back.
    let unpinned = pins.revert_all(&host, &mut store.lock_blocking(), force)?;
    let mut out = String::new();
    if let Some(l) = &lowered {
        out.push_str(&shield_report(l));
    }
    if ended > 0 {
        out.push_str(&format!("ended {ended} run(s) a stopped daemon had left\n"));
    }
    for i in &result.items {
        let reason = i
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let status = serde_json::to_value(i.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        out.push_str(&format!("{status:<10} {} {}{reason}\n", i.knob, i.path));
    }
    let pins_ok = result
        .pins
        .iter()
        .chain(&unpinned)
        .all(|p| p.problems.is_empty());
    for p in result.pins.iter().chain(&unpinned) {
        out.push_str(&format!(
            "{:<10} {} task(s) of pin rule {}\n",
            "restored", p.changed, p.rule
        ));
        for q in &p.problems {
            out.push_str(&format!(
                "{:<10} pid {} tid {} {}: {} ({})\n",
                q.status,
                q.pid,
                q.tid,
                q.attr,
                q.actual.as_deref().unwrap_or("?"),
                q.reason.as_deref().unwrap_or("")
            ));
        }
    }
    let ok = result.ok && pins_ok;
    out.push_str(&format!(
        "revert {}: {} knob(s) left in the journal\n",
        if ok { "complete" } else { "incomplete" },
        result.journal_entries
    ));
    std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
    if lowered.as_ref().is_some_and(|l| l.kept()) {
        anyhow::bail!(
            "the kernel refuses to take back part of the CPU shield, which stays journaled \
             (exclusive runs are refused until it is lowered); --force forgets it"
        )
    }
    if ok {
        Ok(())
    } else {
        anyhow::bail!("conflicts or failures remain (--force restores conflicting knobs too)")
    }
}

/// What `--revert` did to a shield left raised: a line, then a line per file the kernel
/// refused to take back (kept, or forgotten with --force: then the admin's to set by
/// hand, and in the audit log).
fn shield_report(l: &cleanroomd::run::shield::Lowered) -> String {
    let mut out = format!(
        "lowered the CPU shield a stopped daemon had left raised ({} restored)\n",
        l.restored
    );
    for i in &l.refused {
        let current = i.current.as_deref().unwrap_or("(unreadable)");
        let (status, then) = match i.status {
            cleanroom_proto::ShieldItemStatus::Kept => ("kept", "stays journaled"),
            cleanroom_proto::ShieldItemStatus::Forgotten => ("forgot", "set it by hand"),
        };
        out.push_str(&format!(
            "{status:<10} {}: should hold {}, holds {current}; {then} ({})\n",
            i.path, i.original, i.reason
        ));
    }
    if let Some(dir) = &l.partition_left {
        out.push_str(&format!(
            "kept       partition {dir}: a process the kernel cannot end holds it (it gave its CPUs back; the next start removes it)\n"
        ));
    }
    out
}

/// Keeps the service manager's status line (`systemctl status`, `StatusText`) in step
/// with the active profile and the runs in progress. A line the manager had no room for is
/// sent again a second later, or replaced by a newer one.
async fn status_updates(state: Arc<State>) {
    let mut shown = state.status_line();
    let mut pending = false;
    loop {
        let retry = async {
            if pending {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = state.shutdown().cancelled() => break,
            () = state.status_changed() => {}
            () = retry => {}
        }
        let line = state.status_line();
        if line == shown && !pending {
            continue;
        }
        pending = systemd::status(&line) == systemd::Sent::Full;
        shown = line;
    }
}

/// Verifies the active profile every `tuning.drift_check_interval_s` seconds (0: never
/// wakes up for it), updating the drift metric and logging drifted knobs.
async fn drift_checks(state: Arc<State>) {
    loop {
        let every = state.live().config.tuning.drift_check_interval_s;
        if every == 0 {
            // Off: sleep until a reload may have turned it on.
            tokio::select! {
                () = state.shutdown().cancelled() => return,
                () = state.reloaded().notified() => continue,
            }
        }
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            () = state.reloaded().notified() => continue,
            () = tokio::time::sleep(Duration::from_secs(every)) => {}
        }
        let st = Arc::clone(&state);
        let result = tokio::task::spawn_blocking(move || {
            let live = st.live();
            cleanroomd::tune::verify(st.tune_ctx(&live))
        })
        .await;
        match result {
            Ok(Ok(r)) => {
                state.metrics().observe_tuning(&r);
                for i in r
                    .items
                    .iter()
                    .filter(|i| i.status == cleanroom_proto::KnobStatus::Drifted)
                {
                    tracing::warn!(knob = %i.knob, expected = ?i.before, actual = ?i.after, "tuning drift");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "drift check failed"),
            Err(e) => tracing::warn!(error = %e, "drift check task failed"),
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // Under journald the journal stamps each line itself; plain lines read best there.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// Step 5b of the start: the rules added by hand loaded, tuning recovered per `on_start`,
/// and those rules in force again or reverted.
fn recover(
    host: &Host,
    store: &Store,
    live: &Live,
    cfg: &cleanroomd::config::Config,
    pins: &Arc<cleanroomd::pin::Pinner>,
    runner: &Arc<cleanroomd::run::Runner>,
) -> anyhow::Result<()> {
    pins.load(&store.lock_blocking())
        .context("cannot read the pin rules added by hand")?;
    let recovered = cleanroomd::tune::recover(
        cleanroomd::tune::Ctx {
            host,
            store,
            profiles: &live.profiles,
            allow: &cfg.tuning.sysctl_allow,
            pins,
            runner: Some(runner),
        },
        cfg.tuning.on_start,
    )
    .context("tuning recovery failed")?;
    tracing::info!(outcome = %recovered, "tuning recovery");
    if cfg.tuning.on_start == cleanroomd::tune::OnStart::Revert {
        let reverted = pins
            .revert_all(host, &mut store.lock_blocking(), false)
            .context("cannot revert the pin rules added by hand")?;
        if !reverted.is_empty() {
            tracing::info!(
                rules = reverted.len(),
                "pin rules added by hand reverted at start"
            );
        }
    } else {
        pins.resume(host, store)
            .context("cannot put the pin rules added by hand in force")?;
    }
    Ok(())
}
