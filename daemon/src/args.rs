//! The daemon's command line, as a library module so that man pages and shell completions
//! are generated from the same definition the binary parses (`cleanroom-docgen`).

use std::path::PathBuf;

use clap::Parser;

/// The cleanroom daemon: tunes the host with a crash-safe journal and runs tests and
/// benchmarks in isolation. Controlled with cleanroomctl over a Unix socket.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Examples:\n  \
        cleanroomd                                   # as systemd starts it\n  \
        cleanroomd --check-config                    # validate and print the effective config\n  \
        cleanroomd --revert                          # put the host back with no daemon running\n  \
        cleanroomd --revert --force                  # conflicts too; forget what the kernel refuses\n  \
        cleanroomd --cleanup                         # end runs a killed daemon left (ExecStopPost=)\n  \
        cleanroomd --socket /tmp/cr.sock --state-dir /tmp/cr-state   # a private instance\n\n\
        Signals: SIGTERM/SIGINT stop (requests in flight finish first), SIGHUP reloads the\n\
        configuration (an invalid file is logged and the old one kept).\n\
        Logs go to stderr; RUST_LOG=debug shows more."
)]
pub struct Args {
    /// Configuration file. A missing default file means built-in defaults; a missing
    /// file given here is an error.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Socket to serve, instead of the configured one.
    #[arg(long, value_name = "PATH", env = cleanroom_proto::SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    /// Directory of the state database [default: /var/lib/cleanroom].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Root under which /proc and /sys are read and written [default: /]. For tests.
    #[arg(long, value_name = "DIR")]
    pub host_root: Option<PathBuf>,
    /// Validate the configuration, print the effective configuration, and exit.
    #[arg(long, conflicts_with = "revert")]
    pub check_config: bool,
    /// Put back the original values journaled in the state directory, without serving:
    /// for when the daemon cannot start (`cleanroomctl profile revert` is the way while
    /// it runs; this refuses while a daemon holds the state directory). A configuration
    /// file that does not load is reported and the default state directory used (or
    /// --state-dir). Also lowers a CPU shield a stopped daemon left raised. Exit 1 when
    /// conflicts or failures remain, or part of the shield the kernel refuses to take back.
    #[arg(long)]
    pub revert: bool,
    /// With --revert: also restore knobs someone else changed since (conflicts), and
    /// forget the parts of a CPU shield the kernel refuses to take back (each printed
    /// with the value it should hold, to set by hand, and written to the audit log).
    #[arg(long, requires = "revert")]
    pub force: bool,
    /// End the runs and lower the CPU shield a stopped daemon left (tuning stays as it
    /// is), without serving: the service's ExecStopPost=, for a daemon killed at the stop
    /// timeout (on cgroup v2 its exclusive runs live outside the service's cgroup).
    #[arg(long, conflicts_with_all = ["revert", "check_config"])]
    pub cleanup: bool,
    /// Internal: run as a helper that clones one run's child from inside the run's cgroups
    /// (cgroup v1), joining the cgroups of these `cgroup.procs` files first.
    #[arg(long, hide = true, num_args = 0.., value_name = "CGROUP_PROCS", requires = "helper_fd")]
    pub run_helper: Option<Vec<PathBuf>>,
    /// Internal: the run helper's socket to the daemon.
    #[arg(long, hide = true, value_name = "FD")]
    pub helper_fd: Option<i32>,
}
