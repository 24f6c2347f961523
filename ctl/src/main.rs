//! cleanroomctl: the command-line client of cleanroomd.
//!
//! Thin on purpose: it parses arguments, sends one JSON-RPC request over the daemon's Unix
//! socket, and prints the answer for a person (aligned text) or a program (`--json`).
//!
//! Exit codes: 0 ok; 1 the operation failed; 2 usage; 69 daemon unreachable; 77 permission
//! denied.

mod client;
mod output;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use cleanroom_proto::{
    Metrics, NoParams, Ping, ProfileActive, ProfileApply, ProfileApplyParams, ProfileList,
    ProfileRecommend, ProfileRevert, ProfileRevertParams, ProfileShow, ProfileShowParams,
    ProfileVerify, Reload, Status, TuneResult,
};
use serde::Serialize;

use client::{CallError, Client};

const EXIT_HELP: &str = "Exit codes:\n  \
    0   success\n  \
    1   the operation failed (the message says why)\n  \
    2   usage error\n  \
    69  the daemon is unreachable (not running, or wrong --socket)\n  \
    77  permission denied (the message names the group to join)";

/// Control cleanroomd, the cleanroom system tuner and clean-room test runner.
#[derive(Debug, Parser)]
#[command(
    version,
    after_help = format!("Examples:\n  \
        cleanroomctl status                 # what the daemon is, and who you are to it\n  \
        cleanroomctl --json status | jq .   # the same, for scripts\n  \
        cleanroomctl ping                   # round-trip time to the daemon\n  \
        cleanroomctl metrics                # Prometheus metrics\n  \
        sudo cleanroomctl reload            # re-read /etc/cleanroom/cleanroomd.toml\n\n{EXIT_HELP}")
)]
struct Cli {
    /// Socket of the daemon.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = cleanroom_proto::SOCKET_ENV,
        default_value = cleanroom_proto::DEFAULT_SOCKET
    )]
    socket: PathBuf,
    /// Print the result object as JSON on stdout and nothing else.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0,
          value_parser = parse_timeout)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the daemon's version, socket, state, cgroup mode, and your identity and role.
    #[command(after_help = "Examples:\n  cleanroomctl status\n  cleanroomctl status --json")]
    Status,
    /// Check that the daemon answers, and how fast.
    #[command(
        after_help = "Examples:\n  cleanroomctl ping\n  cleanroomctl --socket /tmp/cr.sock ping"
    )]
    Ping,
    /// Print the daemon's metrics in Prometheus text format.
    #[command(after_help = "Examples:\n  cleanroomctl metrics | grep cleanroomd_requests_total")]
    Metrics,
    /// Tuning profiles: list, show, apply, revert, verify, recommend.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Make the daemon re-read its configuration (like SIGHUP); needs role admin.
    #[command(
        after_help = "An invalid file is refused with an error naming the key and line, and the\n\
        configuration in force stays unchanged.\n\nExamples:\n  sudo cleanroomctl reload"
    )]
    Reload,
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// List the profiles the daemon found (broken ones with their error).
    #[command(after_help = "Examples:\n  cleanroomctl profile list")]
    List,
    /// Show a profile with includes resolved and the file each value came from.
    #[command(after_help = "Examples:\n  cleanroomctl profile show benchmark")]
    Show {
        /// Profile name.
        name: String,
    },
    /// Apply a profile: originals are journaled durably before any write; a failure
    /// undoes what this apply wrote (unless --best-effort). Needs role admin.
    #[command(after_help = "Exit code 1 when a knob failed.\n\nExamples:\n  \
        cleanroomctl profile apply throughput-performance --dry-run\n  \
        sudo cleanroomctl profile apply throughput-performance")]
    Apply {
        /// Profile name.
        name: String,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Apply what can be applied; do not undo on a failure.
        #[arg(long)]
        best_effort: bool,
    },
    /// Put back every original value cleanroom changed. A knob someone else changed since
    /// is left alone and reported as a conflict (unless --force). Needs role admin.
    #[command(
        after_help = "Exit code 1 when conflicts or failures remain.\n\nExamples:\n  \
        sudo cleanroomctl profile revert\n  sudo cleanroomctl profile revert --force"
    )]
    Revert {
        /// Restore knobs someone else changed too.
        #[arg(long)]
        force: bool,
    },
    /// Compare the active profile with the host, knob by knob.
    #[command(
        after_help = "Exit code 1 when a knob drifted.\n\nExamples:\n  cleanroomctl profile verify"
    )]
    Verify,
    /// Recommend a profile for this host, with the reasons.
    #[command(after_help = "Examples:\n  cleanroomctl profile recommend")]
    Recommend,
    /// Show the active profile and the journal's size.
    #[command(after_help = "Examples:\n  cleanroomctl profile active")]
    Active,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!(
            "{s} is out of range: give a number of seconds above 0, at most 86400"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cleanroomctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli) -> Result<(), CallError> {
    let mut client = Client::connect(&cli.socket, Duration::from_secs_f64(cli.timeout))?;
    match cli.command {
        Command::Status => {
            let r = client.call::<Status>(&NoParams {})?;
            emit(cli, &r, || output::status(&r))
        }
        Command::Ping => {
            let started = Instant::now();
            let r = client.call::<Ping>(&NoParams {})?;
            let rtt = started.elapsed();
            emit(cli, &r, || output::ping(&cli.socket, rtt))
        }
        Command::Metrics => {
            let r = client.call::<Metrics>(&NoParams {})?;
            emit(cli, &r, || r.text.clone())
        }
        Command::Profile(ref p) => profile(cli, &mut client, p),
        Command::Reload => {
            let r = client.call::<Reload>(&NoParams {})?;
            emit(cli, &r, || output::reload(&r))
        }
    }
}

fn profile(cli: &Cli, client: &mut Client, cmd: &ProfileCommand) -> Result<(), CallError> {
    let tune = |cli: &Cli, r: TuneResult, what: &str| -> Result<(), CallError> {
        emit(cli, &r, || output::tune(&r))?;
        if r.ok {
            Ok(())
        } else {
            Err(CallError::Failed(what.to_owned()))
        }
    };
    match cmd {
        ProfileCommand::List => {
            let r = client.call::<ProfileList>(&NoParams {})?;
            emit(cli, &r, || output::profile_list(&r))
        }
        ProfileCommand::Show { name } => {
            let r = client.call::<ProfileShow>(&ProfileShowParams { name: name.clone() })?;
            emit(cli, &r, || output::profile_show(&r))
        }
        ProfileCommand::Apply {
            name,
            dry_run,
            best_effort,
        } => {
            let r = client.call::<ProfileApply>(&ProfileApplyParams {
                name: name.clone(),
                dry_run: *dry_run,
                best_effort: *best_effort,
            })?;
            tune(
                cli,
                r,
                &format!("applying {name} failed; what it wrote was undone unless --best-effort"),
            )
        }
        ProfileCommand::Revert { force } => {
            let r = client.call::<ProfileRevert>(&ProfileRevertParams { force: *force })?;
            tune(
                cli,
                r,
                "revert left conflicts or failures in the journal (see above; --force restores conflicts)",
            )
        }
        ProfileCommand::Verify => {
            let r = client.call::<ProfileVerify>(&NoParams {})?;
            tune(cli, r, "the host drifted from the active profile")
        }
        ProfileCommand::Recommend => {
            let r = client.call::<ProfileRecommend>(&NoParams {})?;
            emit(cli, &r, || output::recommend(&r))
        }
        ProfileCommand::Active => {
            let r = client.call::<ProfileActive>(&NoParams {})?;
            emit(cli, &r, || output::active(&r))
        }
    }
}

/// Prints the result as JSON with `--json`, else as the human text `human` makes.
fn emit<T: Serialize>(
    cli: &Cli,
    result: &T,
    human: impl FnOnce() -> String,
) -> Result<(), CallError> {
    let text = if cli.json {
        let mut s = serde_json::to_string(result)
            .map_err(|e| CallError::Protocol(format!("cannot encode result: {e}")))?;
        s.push('\n');
        s
    } else {
        human()
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CallError::Protocol(format!("cannot write output: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeout_must_be_positive() {
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("abc").is_err());
        assert_eq!(parse_timeout("0.5"), Ok(0.5));
    }
}
