#![forbid(unsafe_code)]

use herald::cli::CliError;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Variables that are not valid UTF-8 count as unset, as `std::env::var` treats them.
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let invocation = match herald::cli::parse(std::env::args_os(), vars) {
        Ok(i) => i,
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    match herald::commands::run(invocation).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::FAILURE
        }
    }
}
