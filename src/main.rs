//! The `cutover` command line. Thin: each subcommand calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cutover::admin::client as cli;
use cutover::admin::client::{AdminClient, RampTarget, Switched};
use cutover::demo::DemoPorts;
use cutover::{check, demo, server, telemetry};

// jemalloc unless built with `--no-default-features` (see Cargo.toml for why).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Move traffic from a legacy service to its replacement, a percentage at a time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy, reloading the config when it changes.
    Run {
        #[arg(short, long, default_value = "config/cutover.yaml")]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a config like `nginx -t`: a summary and exit 0, or every error and exit 1.
    Check {
        #[arg(short, long, default_value = "config/cutover.yaml")]
        config: PathBuf,
    },
    /// Start two built-in backends and the proxy in front of them.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        #[arg(long, default_value_t = 9001)]
        legacy_port: u16,
        #[arg(long, default_value_t = 9002)]
        new_port: u16,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Send a route's traffic (or every route's, with --all) to its stable backend, now; or,
    /// with --flag, serve a flag's default to everyone.
    Kill {
        #[command(flatten)]
        target: SwitchTarget,
        /// Recorded with the kill and shown in status.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Undo a runtime kill: the configured split (or flag) applies again.
    Resume {
        #[command(flatten)]
        target: SwitchTarget,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Routes, splits, kill state and live per-backend numbers.
    Status {
        /// Redraw every second.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A shadowed route's comparison counts and its last mismatches, field by field.
    Diffs {
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A route's (or, with --flag, a flag's) ramp: where it stands, or a hand on it.
    Ramp {
        #[arg(value_enum)]
        action: RampCommand,
        #[arg(required_unless_present = "flag", conflicts_with = "flag")]
        route: Option<String>,
        /// A feature flag's ramp instead of a route's.
        #[arg(long)]
        flag: Option<String>,
        /// Recorded in the ramp's history (promote, abort).
        #[arg(long)]
        reason: Option<String>,
        /// With abort: kill the route too (all traffic to stable).
        #[arg(long)]
        kill: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RampCommand {
    /// The step, the time to the next, each gate reading and the history.
    Status,
    /// Hold the current step until resumed.
    Pause,
    /// Run again: a paused ramp with its time, an aborted one from the start of its step.
    Resume,
    /// The next step now, gate skipped (the reason is recorded).
    Promote,
    /// Back to the split in the config; with --kill, the route is killed too.
    Abort,
}

/// What a kill or resume applies to: one route, every route, or one flag.
#[derive(Args)]
struct SwitchTarget {
    #[arg(required_unless_present_any = ["all", "flag"], conflicts_with_all = ["all", "flag"])]
    route: Option<String>,
    /// Every route at once: the panic button.
    #[arg(long, conflicts_with = "flag")]
    all: bool,
    /// A feature flag instead of a route.
    #[arg(long)]
    flag: Option<String>,
}

#[derive(Args)]
struct AdminArgs {
    /// Base URL of the admin API.
    #[arg(long = "admin", default_value = "http://127.0.0.1:9901")]
    url: String,
    /// Bearer token for kill and resume.
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AdminArgs {
    fn client(self) -> AdminClient {
        AdminClient::new(&self.url, self.token, "CUTOVER_ADMIN_TOKEN")
    }
}

/// Exit code of a kill or resume that is in effect but could not be saved to `state_file`.
const EXIT_NOT_PERSISTED: u8 = 3;

/// Runs a kill or resume on a small runtime and reports it: exit 0, or 3 when it applies but
/// was not saved (a restart before cutover's retry succeeds would undo it), or 1 on error.
fn switch_call<F>(call: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<Switched>>,
{
    let mut unsaved = None;
    let result = server::run_blocking(Some(1), async {
        let switched = call.await?;
        println!("{}", switched.summary);
        unsaved = switched.persist_error;
        Ok(())
    });
    match (result, unsaved) {
        (Err(err), _) => {
            eprintln!("cutover: error: {err:#}");
            ExitCode::FAILURE
        }
        (Ok(()), Some(err)) => {
            eprintln!(
                "cutover: warning: applied, but NOT saved to state_file: {err}\n\
                 cutover retries the write; until it succeeds a restart would undo this \
                 (see `cutover status`)"
            );
            ExitCode::from(EXIT_NOT_PERSISTED)
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

/// clap makes sure exactly one of the two is given.
fn ramp_target(route: Option<String>, flag: Option<String>) -> RampTarget {
    match flag {
        Some(key) => RampTarget::Flag(key),
        None => RampTarget::Route(route.unwrap_or_default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, threads } => {
            telemetry::init_logging();
            server::run_blocking(threads, async move { server::serve(&config).await })
        }
        Command::Check { config } => {
            let (report, ok) = check::check(&config);
            if ok {
                print!("{report}");
                return ExitCode::SUCCESS;
            }
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
        Command::Demo {
            port,
            admin_port,
            legacy_port,
            new_port,
            threads,
        } => {
            telemetry::init_logging();
            let ports = DemoPorts {
                proxy: port,
                admin: admin_port,
                legacy: legacy_port,
                new: new_port,
            };
            server::run_blocking(threads, demo::run(ports))
        }
        Command::Kill {
            target,
            reason,
            admin,
        } => {
            let client = admin.client();
            return switch_call(async move {
                match target.flag {
                    Some(flag) => client.kill_flag(&flag, reason).await,
                    None => client.kill(target.route.as_deref(), reason).await,
                }
            });
        }
        Command::Resume { target, admin } => {
            let client = admin.client();
            return switch_call(async move {
                match target.flag {
                    Some(flag) => client.resume_flag(&flag).await,
                    None => client.resume(target.route.as_deref()).await,
                }
            });
        }
        Command::Status { watch, admin } => {
            let client = admin.client();
            server::run_blocking(Some(1), async move { cli::status(&client, watch).await })
        }
        Command::Ramp {
            action: RampCommand::Status,
            route,
            flag,
            admin,
            ..
        } => {
            let client = admin.client();
            let target = ramp_target(route, flag);
            server::run_blocking(Some(1), async move {
                print!("{}", client.ramp_status(&target).await?);
                Ok(())
            })
        }
        Command::Ramp {
            action,
            route,
            flag,
            reason,
            kill,
            admin,
        } => {
            if kill && !matches!(action, RampCommand::Abort) {
                eprintln!("cutover: error: --kill goes with `ramp abort` only");
                return ExitCode::FAILURE;
            }
            let action = match action {
                RampCommand::Pause => "pause",
                RampCommand::Resume => "resume",
                RampCommand::Promote => "promote",
                RampCommand::Status | RampCommand::Abort => "abort",
            };
            let client = admin.client();
            let target = ramp_target(route, flag);
            return switch_call(async move { client.ramp(&target, action, reason, kill).await });
        }
        Command::Diffs { route, admin } => {
            let client = admin.client();
            server::run_blocking(Some(1), async move {
                print!("{}", client.diffs(&route).await?.render());
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cutover: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
