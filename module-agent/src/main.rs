//! The `module-agent` binary: everything is in the library (`module_agent::main`), so that the man
//! page and shell completions can be generated from the same command definition (`agent-docgen`).

fn main() -> anyhow::Result<()> {
    module_agent::main()
}
