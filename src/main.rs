//! The `echoview` command: parse arguments, run the subcommand, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = echoview::cli::Cli::parse();
    match echoview::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // A reader that closes our stdout early (`| head`) is a normal end, not a failure.
            if err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("echoview: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
