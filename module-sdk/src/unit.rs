//! `module-sdk unit start|stop|restart|reload|enable|disable|status|daemon-reload`: systemd units
//! for steps and module authors, over D-Bus (the `systemd_client` crate) rather than `systemctl`,
//! so that a step gets one clear error with the unit's state and journal when a unit fails, and
//! exit codes it can act on:
//!
//! * 0: done (`status`: the unit is active);
//! * 1: the job failed or systemd refused it (masked unit, reload not supported, …);
//! * 2: bad arguments (a unit name that is not one);
//! * 3: `status` only: the unit exists but is not active (as `systemctl is-active`);
//! * 69: the bus or its manager is unreachable, or there is no such unit (`EX_UNAVAILABLE`, as
//!   `core_events::exit::NO_SUCH_EVENT` for an event without steps);
//! * 70: any other D-Bus error;
//! * 77: not allowed (e.g. `--system` start as a non-root user).

use module_sdk::exit_code;
use systemd_client::{Bus, Error, Systemd, UnitName};

/// `status` of a unit that is not active.
pub const NOT_ACTIVE: i32 = 3;
/// A job that failed, or a request systemd refused.
pub const FAILED: i32 = 1;

pub const LONG_ABOUT: &str = "\
Start, stop, enable… systemd units, and wait until systemd has done it.

Which manager: by default your own user manager (`systemd --user`) on the user bus: in a
module's step that is the module's user, whose units live in ~/.config/systemd/user. The bus
is found at $DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus, else /run/user/UID/bus; a
user manager runs only while the user is logged in or lingering (loginctl enable-linger).
With --system: the node's system manager (PID 1), for node steps; changing system units
needs root. A bus that is not up yet is retried for about 10 seconds.

Waiting: start, stop, restart and reload return when systemd's job for the unit has ended,
like `systemctl` without --no-block, and succeed only if the job did (result \"done\").
A failed job prints the job result, the unit's state and its last 10 journal lines. A
Type=simple service counts as started as soon as its process is forked; give a unit whose
start must really be checked Type=notify, Type=exec or Type=oneshot.

enable and disable change the unit's [Install] symlinks (not runtime, forced, then a
daemon-reload), and with --now also start or stop it.";

pub const AFTER_HELP: &str = "\
Examples:
  module-sdk unit daemon-reload                     after writing ~/.config/systemd/user/*
  module-sdk unit enable --now hello0-httpd         enable and start (waits for the start)
  module-sdk unit restart hello0-httpd.service
  module-sdk unit status hello0-httpd || echo not active
  module-sdk unit --system status node-agent        the node's system manager

Exit codes: 0 done (status: active); 1 the job failed or systemd refused it; 2 bad
arguments; 3 status: not active; 69 bus unreachable or no such unit; 70 other D-Bus
error; 77 not allowed (--system without root).";

/// Arguments of `module-sdk unit`.
#[derive(Debug, clap::Args)]
pub struct UnitArgs {
    /// Use the node's system manager (system bus) instead of your own user manager (user bus).
    #[arg(long, global = true)]
    pub system: bool,

    #[command(subcommand)]
    pub cmd: UnitCmd,
}

/// A unit name argument; `NAME` without a type suffix means `NAME.service`.
#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The unit, e.g. hello0-httpd.service (".service" is added when there is no suffix).
    #[arg(value_name = "NAME", value_parser = unit_arg)]
    pub name: UnitName,
}

#[derive(Debug, clap::Subcommand)]
pub enum UnitCmd {
    /// Start a unit and wait until it has started (exit 1 with its journal if it failed).
    Start(NameArg),
    /// Stop a unit and wait until it has stopped.
    Stop(NameArg),
    /// Restart a unit (start it if it is stopped) and wait for the job.
    Restart(NameArg),
    /// Reload a unit (its ExecReload=) and wait for the job; exit 1 if it has no ExecReload=.
    Reload(NameArg),
    /// Enable a unit (create its [Install] symlinks, then daemon-reload); --now also starts it.
    Enable {
        #[command(flatten)]
        unit: NameArg,
        /// Also start the unit, and wait for it.
        #[arg(long)]
        now: bool,
    },
    /// Disable a unit (remove its [Install] symlinks, then daemon-reload); --now also stops it.
    Disable {
        #[command(flatten)]
        unit: NameArg,
        /// Also stop the unit, and wait for it.
        #[arg(long)]
        now: bool,
    },
    /// Print the unit's states; exit 0 if it is active, 3 if not (as `systemctl is-active`).
    Status(NameArg),
    /// Make the manager re-read all unit files (after adding or changing one).
    DaemonReload,
}

fn unit_arg(s: &str) -> Result<UnitName, Error> {
    UnitName::new(s)
}

/// The exit code for an error of the client.
pub fn exit_code_of(e: &Error) -> i32 {
    match e {
        Error::BadName { .. } => exit_code::USAGE,
        Error::Unreachable { .. } | Error::NoSuchUnit { .. } => exit_code::UNAVAILABLE,
        Error::JobFailed(_) | Error::Refused { .. } => FAILED,
        Error::Denied { .. } => exit_code::NO_PERMISSION,
        Error::Bus { .. } => exit_code::SOFTWARE,
    }
}

/// Runs the command; returns the exit code (errors already printed).
pub fn run(args: &UnitArgs, verbose: bool) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("module-sdk: error: cannot start the async runtime: {e}");
            return exit_code::SOFTWARE;
        }
    };
    let bus = if args.system { Bus::System } else { Bus::User };
    match runtime.block_on(execute(bus, &args.cmd, verbose)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("module-sdk: error: {e}");
            exit_code_of(&e)
        }
    }
}

async fn execute(bus: Bus, cmd: &UnitCmd, verbose: bool) -> Result<i32, Error> {
    let sd = Systemd::connect(bus).await?;
    let done = |what: &str, unit: &UnitName| {
        if verbose {
            eprintln!("{what} {unit} ({bus} manager)");
        }
    };
    match cmd {
        UnitCmd::Start(u) => {
            sd.start(&u.name).await?;
            done("started", &u.name);
        }
        UnitCmd::Stop(u) => {
            sd.stop(&u.name).await?;
            done("stopped", &u.name);
        }
        UnitCmd::Restart(u) => {
            sd.restart(&u.name).await?;
            done("restarted", &u.name);
        }
        UnitCmd::Reload(u) => {
            sd.reload(&u.name).await?;
            done("reloaded", &u.name);
        }
        UnitCmd::Enable { unit, now } => {
            let outcome = sd.enable(&unit.name).await?;
            for c in &outcome.changes {
                eprintln!("{c}");
            }
            if !outcome.has_install_info {
                eprintln!(
                    "module-sdk: warning: {} has no [Install] section (WantedBy=…): enabling it \
                     does nothing; it can only be started by hand or by another unit",
                    unit.name
                );
            }
            done("enabled", &unit.name);
            if *now {
                sd.start(&unit.name).await?;
                done("started", &unit.name);
            }
        }
        UnitCmd::Disable { unit, now } => {
            for c in sd.disable(&unit.name).await? {
                eprintln!("{c}");
            }
            done("disabled", &unit.name);
            if *now {
                sd.stop(&unit.name).await?;
                done("stopped", &unit.name);
            }
        }
        UnitCmd::Status(u) => {
            let status = sd.status(&u.name).await?;
            print!("{status}");
            return Ok(if status.is_active() { 0 } else { NOT_ACTIVE });
        }
        UnitCmd::DaemonReload => {
            sd.daemon_reload().await?;
            if verbose {
                eprintln!("{bus} manager reloaded its unit files");
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use systemd_client::{JobFailure, JobResult, Journal, Verb};

    #[test]
    fn exit_codes() {
        let name = UnitName::new("x").unwrap();
        let failed = Error::JobFailed(Box::new(JobFailure {
            bus: Bus::User,
            verb: Verb::Start,
            unit: name.clone(),
            result: JobResult::Failed,
            status: None,
            journal: Journal::Unavailable("-".into()),
        }));
        assert_eq!(exit_code_of(&failed), 1);
        let missing = Error::NoSuchUnit {
            bus: Bus::User,
            unit: name,
            detail: "x".into(),
            hint: "",
        };
        assert_eq!(exit_code_of(&missing), 69);
        assert_eq!(exit_code_of(&UnitName::new("").unwrap_err()), 2);
    }
}
