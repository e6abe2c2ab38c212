//! The `dbops` binary: parses arguments, calls the library, prints. No backup logic
//! lives here.

mod agent;
mod cli;
mod commands;
mod files;
mod maintain;
mod output;
mod wal;

use std::process::ExitCode;

use clap::Parser as _;

use ops_core::ErrorKind;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let agent = matches!(cli.command, cli::Command::Run(_) | cli::Command::Daemon(_));
    output::init_logging(cli.verbose, agent);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbops: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            output::print_error(&e, json);
            ExitCode::from(exit_code(e.kind()))
        }
    }
}

/// Exit codes (documented in the README):
/// 0 success; 1 failure; 2 bad usage; 3 damage or a mismatch found (verify, or a
/// restore that met damaged data); 4 repository locked; 5 repository cannot be opened
/// (missing, wrong password, unknown format); 6 a server or store is unreachable
/// (worth retrying later); 7 the database refused the credentials or none were found
/// (retrying will not help).
pub(crate) fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => 2,
        ErrorKind::Corrupt | ErrorKind::Mismatch => 3,
        ErrorKind::Locked => 4,
        ErrorKind::NotInitialized | ErrorKind::WrongPassword | ErrorKind::UnsupportedFormat => 5,
        ErrorKind::Unreachable => 6,
        ErrorKind::Authentication => 7,
        _ => 1,
    }
}

/// A command line clap refused: its own text, and with `--json` also the JSON error
/// document, so that a script reading stdout always gets one. Help and version go to
/// stdout as usual.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    if matches!(
        e.kind(),
        Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args().skip(1).any(|a| a == "--json") {
        // clap's text up to its usage block, on one line.
        let text = e.to_string();
        let message = text
            .lines()
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
            .map(|l| l.trim().trim_start_matches("error: "))
            .collect::<Vec<_>>()
            .join(" ");
        let doc = serde_json::json!({
            "ok": false,
            "error": { "kind": ErrorKind::InvalidInput.as_str(), "message": message, "context": {} },
        });
        println!("{doc}");
    }
    let _ = e.print();
    // `dbops health` is a monitoring plugin: a command line it cannot read is
    // "unknown" (3), never "critical" (2).
    if std::env::args()
        .skip(1)
        .any(|a| a == "health" || a == "integrity")
    {
        return ExitCode::from(3);
    }
    ExitCode::from(2)
}
