//! Calls `ifsock::Probes::load()` and prints `loaded` or `error: MESSAGE` (exit status 0 or 1):
//! tests/tests/library.rs runs it with capabilities taken away to read what the error names.
fn main() -> std::process::ExitCode {
    match ifsock::Probes::load() {
        Ok(_) => {
            println!("loaded");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
