//! The `agentctl` binary: everything is in the library (`agentctl::main`), so that the man page and
//! shell completions can be generated from the same command definition (`agent-docgen`).

fn main() {
    agentctl::main()
}
