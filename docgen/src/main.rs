//! `agent-docgen OUT_DIR`: the man pages and shell completions of `agentctl`, `module-sdk`,
//! `node-agent` and `module-agent`, written from the same clap definitions that parse their command
//! lines, so that `man` and `--help` cannot disagree. scripts/package.sh runs it; the Debian package
//! ships what it writes:
//!
//! * `OUT_DIR/man/<tool>[-<subcommand>…].1`: one page per command and per visible subcommand;
//! * `OUT_DIR/completions/bash/<tool>`, `zsh/_<tool>`, `fish/<tool>.fish`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Command;
use clap_complete::Shell;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: agent-docgen OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions)");
    };
    let out = PathBuf::from(out);
    let tools = [
        agentctl::command(),
        module_sdk::cli::command(),
        node_agent::command(),
        module_agent::command(),
    ];
    for tool in tools {
        let name = tool.get_name().to_owned();
        write_man_pages(&out.join("man"), tool.clone(), &name)?;
        write_completions(&out.join("completions"), tool, &name)?;
    }
    Ok(())
}

/// The page of `cmd` as `NAME.1`, then one page per visible subcommand as `NAME-SUB.1`, recursively
/// (the `git-commit(1)` convention, so that `man agentctl-node-setup` works).
fn write_man_pages(dir: &Path, cmd: Command, name: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // clap takes &'static names without its `string` feature, which would change every tool's
    // build; this process writes a few dozen pages and exits.
    let mut cmd = cmd.name(&*Box::leak(name.to_owned().into_boxed_str()));
    cmd.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_man_pages(dir, sub.clone(), &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

/// Completions for bash, zsh and fish, under the file names each shell's completion loader looks
/// for (bash-completion loads `completions/NAME` on first use of NAME).
fn write_completions(dir: &Path, mut cmd: Command, name: &str) -> Result<()> {
    for (shell, file) in [
        (Shell::Bash, name.to_owned()),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let shell_dir = dir.join(shell.to_string());
        fs::create_dir_all(&shell_dir)
            .with_context(|| format!("cannot create {}", shell_dir.display()))?;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, name, &mut script);
        let path = shell_dir.join(file);
        fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
