//! The `module-sdk` binary: the command line is `module_sdk::cli`, so that the man page and shell
//! completions can be generated from the same command definition (`agent-docgen`).

fn main() -> std::process::ExitCode {
    module_sdk::cli::main()
}
