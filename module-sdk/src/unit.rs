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

use crate::exit_code;
use crate::quadlet::QuadletName;
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
daemon-reload), and with --now also start or stop it.

Quadlet: NAME may be a Quadlet file's name (hello-httpd.container, pair.pod, web.network,
data.volume, app.kube, base.image, src.build) for the unit Podman's generator makes of it
(hello-httpd.service, pair-pod.service, web-network.service, …). start and restart reload
the manager first, so that a new or changed file in ~/.config/containers/systemd is what
starts. Generated units cannot be enabled: the file's [Install] section
(WantedBy=default.target) starts them at boot.";

pub const AFTER_HELP: &str = "\
Examples:
  module-sdk unit daemon-reload                     after writing ~/.config/systemd/user/*
  module-sdk unit enable --now hello0-httpd         enable and start (waits for the start)
  module-sdk unit restart hello0-httpd.service
  module-sdk unit start hello-httpd.container       Quadlet: reload, then start hello-httpd.service
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
    /// The unit, e.g. hello0-httpd.service (".service" is added when there is no suffix), or a
    /// Quadlet file's name (hello-httpd.container, pair.pod, …) for the unit generated from it.
    #[arg(value_name = "NAME", value_parser = unit_arg)]
    pub name: UnitArg,
}

/// What `NAME` named: a unit, or a Quadlet file and the unit Podman's generator makes of it.
#[derive(Debug, Clone)]
pub struct UnitArg {
    pub unit: UnitName,
    pub quadlet: Option<QuadletName>,
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

fn unit_arg(s: &str) -> Result<UnitArg, Error> {
    match QuadletName::parse(s) {
        Some(quadlet) => Ok(UnitArg {
            unit: UnitName::new(&quadlet.service_name())?,
            quadlet: Some(quadlet),
        }),
        None => Ok(UnitArg {
            unit: UnitName::new(s)?,
            quadlet: None,
        }),
    }
}

/// The Quadlet file the command names, if it names one.
fn quadlet_of(cmd: &UnitCmd) -> Option<&QuadletName> {
    match cmd {
        UnitCmd::Start(u)
        | UnitCmd::Stop(u)
        | UnitCmd::Restart(u)
        | UnitCmd::Reload(u)
        | UnitCmd::Status(u)
        | UnitCmd::Enable { unit: u, .. }
        | UnitCmd::Disable { unit: u, .. } => u.name.quadlet.as_ref(),
        UnitCmd::DaemonReload => None,
    }
}

/// A generated unit has no [Install] symlinks of its own: the Quadlet file's [Install] section
/// makes the generator add them at every daemon-reload.
fn refuse_enable(quadlet: &QuadletName, verb: &str) -> i32 {
    eprintln!(
        "module-sdk: error: {file} is a Quadlet file: the unit generated from it ({unit}) cannot \
         be {verb}d. An [Install] section in {file} (WantedBy=default.target) starts it at boot; \
         without one it starts only when asked (module-sdk unit start {file}).",
        file = quadlet.file_name(),
        unit = quadlet.service_name(),
    );
    exit_code::USAGE
}

/// Starting a Quadlet unit reloads the manager first, so that the generator has turned the file,
/// as it is now, into the unit that is started (a new or changed file is otherwise not seen).
async fn reload_for(sd: &Systemd, arg: &UnitArg, verbose: bool) -> Result<(), Error> {
    if let Some(quadlet) = &arg.quadlet {
        sd.daemon_reload().await?;
        if verbose {
            eprintln!(
                "reloaded: the generator made {} from {}",
                quadlet.service_name(),
                quadlet.file_name()
            );
        }
    }
    Ok(())
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
            if let (Error::NoSuchUnit { .. }, Some(quadlet)) = (&e, quadlet_of(&args.cmd)) {
                eprintln!(
                    "module-sdk: {unit} is generated from {file} (in ~/.config/containers/systemd \
                     for your user): is the file there, and does it parse? \
                     `{gen} -dryrun -user` prints the generator's errors; `module-sdk lint` \
                     checks a module's files.",
                    unit = quadlet.service_name(),
                    file = quadlet.file_name(),
                    gen = crate::quadlet::GENERATOR,
                );
            }
            exit_code_of(&e)
        }
    }
}

async fn execute(bus: Bus, cmd: &UnitCmd, verbose: bool) -> Result<i32, Error> {
    match cmd {
        UnitCmd::Enable { unit, .. } if unit.name.quadlet.is_some() => {
            return Ok(refuse_enable(unit.name.quadlet.as_ref().unwrap(), "enable"));
        }
        UnitCmd::Disable { unit, .. } if unit.name.quadlet.is_some() => {
            return Ok(refuse_enable(
                unit.name.quadlet.as_ref().unwrap(),
                "disable",
            ));
        }
        _ => {}
    }
    let sd = Systemd::connect(bus).await?;
    let done = |what: &str, unit: &UnitName| {
        if verbose {
            eprintln!("{what} {unit} ({bus} manager)");
        }
    };
    match cmd {
        UnitCmd::Start(u) => {
            reload_for(&sd, &u.name, verbose).await?;
            sd.start(&u.name.unit).await?;
            done("started", &u.name.unit);
        }
        UnitCmd::Stop(u) => {
            sd.stop(&u.name.unit).await?;
            done("stopped", &u.name.unit);
        }
        UnitCmd::Restart(u) => {
            reload_for(&sd, &u.name, verbose).await?;
            sd.restart(&u.name.unit).await?;
            done("restarted", &u.name.unit);
        }
        UnitCmd::Reload(u) => {
            sd.reload(&u.name.unit).await?;
            done("reloaded", &u.name.unit);
        }
        UnitCmd::Enable { unit, now } => {
            let outcome = sd.enable(&unit.name.unit).await?;
            for c in &outcome.changes {
                eprintln!("{c}");
            }
            if !outcome.has_install_info {
                eprintln!(
                    "module-sdk: warning: {} has no [Install] section (WantedBy=…): enabling it \
                     does nothing; it can only be started by hand or by another unit",
                    unit.name.unit
                );
            }
            done("enabled", &unit.name.unit);
            if *now {
                sd.start(&unit.name.unit).await?;
                done("started", &unit.name.unit);
            }
        }
        UnitCmd::Disable { unit, now } => {
            for c in sd.disable(&unit.name.unit).await? {
                eprintln!("{c}");
            }
            done("disabled", &unit.name.unit);
            if *now {
                sd.stop(&unit.name.unit).await?;
                done("stopped", &unit.name.unit);
            }
        }
        UnitCmd::Status(u) => {
            let status = sd.status(&u.name.unit).await?;
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
