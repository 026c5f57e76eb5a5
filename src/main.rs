//! The `stsgate` binary: parse the command line, set up logging (and, when
//! the configuration asks for it, OpenTelemetry traces), run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use stsgate::cli::{Cli, LogFormat, run};
use stsgate::runtime::telemetry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

/// The request path allocates and frees many small blocks, across tokio's
/// worker threads; mimalloc does it in far fewer instructions than glibc's
/// malloc and keeps less resident (issue 17). aws-lc's own allocations stay
/// with the C library.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits EX_USAGE, as for any configuration the user must fix.
const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stsgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Traces only for `serve`, from its file's `telemetry` section: the
    // subscriber is set before the rest of the file is loaded.
    let section = matches
        .subcommand_matches("serve")
        .and_then(|serve| serve.get_one::<PathBuf>("config"))
        .and_then(|path| telemetry::section_of(path));
    let exporter = match section.map(|cfg| {
        let _in_runtime = runtime.enter();
        telemetry::start(&cfg)
    }) {
        Some(Err(why)) => {
            eprintln!("stsgate: {why}");
            return ExitCode::from(EX_CONFIG);
        }
        Some(Ok(exporter)) => exporter,
        None => None,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = matches!(cli.log_format, LogFormat::Json);
    let subscriber = telemetry::subscriber(json, filter, std::io::stderr, exporter.as_ref());
    // Also forwards dependencies' `log` records, as `fmt().init()` did.
    if let Err(e) = subscriber.try_init() {
        eprintln!("stsgate: cannot set up logging: {e}");
    }
    let code = runtime.block_on(run(cli));
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}
