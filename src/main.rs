//! The `cutover` command line. Thin: each subcommand calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cutover::demo::DemoPorts;
use cutover::{check, demo, server, telemetry};

// Measured under load: glibc malloc spends about twice mimalloc's share of CPU here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cutover: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
