//! The module-agent user service: started (module.init/50start-agent), awaited
//! (module.init/60wait-ready) and stopped (module.remove/10stop-agent); and the module's own
//! units stopped while its agent runs on (module.stop/10stop-units, before a move's final backup).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use core_events::{EventName, ModuleId, Prefix, RunId, RunRecord, RunStatus};

use super::user::ModuleUser;
use super::{
    env_secs, quiet_stdout_of, run_ok, status, with_private_umask, Ctx, Result, ToolError,
};

const UNIT: &str = "module-agent.service";

/// Where `enable` links [`UNIT`] (its `WantedBy=default.target`), relative to the home.
const WANTS_DIR: &str = ".config/systemd/user/default.target.wants";

/// `systemctl --user -M ID@ ARGS…`: the module user's systemd manager.
fn user_systemctl(id: &ModuleId) -> Command {
    let mut c = Command::new("systemctl");
    c.args(["--user", "-M", &format!("{id}@")]);
    c
}

/// The state of the user's manager (`is-system-running`), empty when it cannot be asked.
fn manager_state(id: &ModuleId) -> Result<String> {
    let (_, out) = quiet_stdout_of(user_systemctl(id).arg("is-system-running"))?;
    Ok(out)
}

/// module.init/50start-agent.
pub fn start_agent(id: &ModuleId) -> Result<()> {
    let wait = env_secs("MODULE_MANAGER_WAIT", 60)?;
    let end = Instant::now() + wait;
    loop {
        let state = manager_state(id)?;
        if matches!(state.as_str(), "running" | "degraded") {
            break;
        }
        if Instant::now() > end {
            let uid = ModuleUser::lookup(id)?
                .map(|u| u.uid.to_string())
                .unwrap_or_else(|| "?".into());
            return Err(ToolError::TempFailure(format!(
                "the systemd user manager of {id} is not up after {}s (state '{state}'); see: systemctl status user@{uid}",
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // `enable` links the unit into this directory, which the user's manager would make 0755
    // (its umask): made by the user first, private, so every path below is there to check.
    let user = ModuleUser::require(id)?;
    let mut mkdir = user.command("mkdir");
    mkdir
        .args(["-p", "-m", "0700", "--"])
        .arg(user.home.join(WANTS_DIR));
    with_private_umask(|| run_ok(&mut mkdir))?;
    // As the user, through systemd-client (`module-sdk unit`), which rides out a user bus that is
    // still starting or drops a just-opened connection; enable --now is idempotent.
    user_unit(&user, &["enable", "--now", UNIT])?;
    user.make_private_paths(&[
        ".config",
        ".config/systemd",
        ".config/systemd/user",
        WANTS_DIR,
    ])?;
    print_agent_state(&user, id)
}

/// Prints the module-agent's ActiveState, as its user's manager reports it.
fn print_agent_state(user: &ModuleUser, id: &ModuleId) -> Result<()> {
    let (_, status) = quiet_stdout_of(user.command("module-sdk").args(["unit", "status", UNIT]))?;
    println!("module-agent of {id}: {}", active_state(&status));
    Ok(())
}

/// The ActiveState in `module-sdk unit status`'s output (`active: active (running)` → `active`).
fn active_state(status: &str) -> &str {
    status
        .lines()
        .find_map(|l| l.trim().strip_prefix("active:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("unknown")
}

/// `module-sdk unit ARGS…` as the module's user, on its user manager (systemd-client, D-Bus). Its
/// exit 69 (the user's bus not reachable after its retries) is "not ready" (75); others fail (1).
fn user_unit(user: &ModuleUser, args: &[&str]) -> Result<()> {
    let mut cmd = user.command("module-sdk");
    cmd.arg("unit").args(args);
    let st = status(&mut cmd)?;
    match st.code() {
        Some(0) => Ok(()),
        // sysexits EX_UNAVAILABLE, as module-sdk exits for an unreachable bus.
        Some(core_events::exit::tool::UNAVAILABLE) => Err(ToolError::TempFailure(format!(
            "the systemd user manager of {} cannot be reached: module-sdk unit {} failed ({st})",
            user.name,
            args.join(" ")
        ))),
        _ => Err(ToolError::Failed(format!(
            "module-sdk unit {} as {} failed ({st})",
            args.join(" "),
            user.name
        ))),
    }
}

/// module.remove/10stop-agent. Tolerates a half-installed module: no user, no user manager, no
/// unit — nothing to do.
pub fn stop_agent(id: &ModuleId) -> Result<()> {
    if ModuleUser::lookup(id)?.is_none() {
        println!("no user {id}: no module-agent to stop");
        return Ok(());
    }
    let state = manager_state(id)?;
    if matches!(state.as_str(), "running" | "degraded" | "starting") {
        let user = ModuleUser::require(id)?;
        match user_unit(&user, &["disable", "--now", UNIT]) {
            Ok(()) => println!("module-agent of {id} stopped"),
            Err(e) => eprintln!(
                "warning: could not stop module-agent of {id} (the user's processes are killed later): {e}"
            ),
        }
    } else {
        println!("the user manager of {id} is not running ('{state}'): nothing to stop");
    }
    Ok(())
}

/// module.stop/10stop-units: every running unit of the module's own (its unit file in its home, or
/// generated there by Quadlet) stopped, timers, sockets and paths first so that none starts a
/// service again; its module-agent keeps running, so a backup can still run the module's steps.
/// Nothing is disabled: `module.init` (or the user's manager at boot) starts them again.
pub fn stop_units(id: &ModuleId) -> Result<()> {
    let Some(user) = ModuleUser::lookup(id)? else {
        println!("no user {id}: no unit to stop");
        return Ok(());
    };
    let Some(units) = own_units_of(id, &user)? else {
        return Ok(());
    };
    let units = running(units);
    if units.is_empty() {
        println!("no unit of {id} is running");
        return Ok(());
    }
    for unit in &units {
        user_unit(&user, &["stop", unit])?;
        println!("{unit} of {id} stopped");
    }
    Ok(())
}

/// The module's own units (see [`own_units`]) and their ActiveState, from its user's manager;
/// `None` (said on stdout) when that manager is not running.
pub fn own_units_of(id: &ModuleId, user: &ModuleUser) -> Result<Option<Vec<(String, String)>>> {
    let state = manager_state(id)?;
    if !matches!(state.as_str(), "running" | "degraded" | "starting") {
        println!("the user manager of {id} is not running ('{state}'): no unit of its own runs");
        return Ok(None);
    }
    let (_, listed) = quiet_stdout_of(user_systemctl(id).args([
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
        "--type=service,socket,timer,path",
    ]))?;
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|u| *u != UNIT)
        .collect();
    if names.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let (_, shown) = quiet_stdout_of(
        user_systemctl(id)
            .args([
                "show",
                "-p",
                "Id",
                "-p",
                "FragmentPath",
                "-p",
                "ActiveState",
                "--",
            ])
            .args(&names),
    )?;
    Ok(Some(own_units(
        &shown,
        &user.home.to_string_lossy(),
        user.uid,
    )))
}

/// The units of [`own_units`] that failed (systemd's ActiveState): an unhealthy module.
pub fn failed(units: Vec<(String, String)>) -> Vec<String> {
    units
        .into_iter()
        .filter(|(_, state)| state == "failed")
        .map(|(unit, _)| unit)
        .collect()
}

/// The units of [`own_units`] that are not inactive (nor failed), in their stopping order.
fn running(units: Vec<(String, String)>) -> Vec<String> {
    units
        .into_iter()
        .filter(|(_, state)| !matches!(state.as_str(), "inactive" | "failed"))
        .map(|(unit, _)| unit)
        .collect()
}

/// The units of `systemctl show -p Id -p FragmentPath -p ActiveState` output that are the
/// module's own (their file under `home`, or generated by Quadlet from a file there), never the
/// module-agent, with their ActiveState: timers, sockets and paths before services.
pub fn own_units(shown: &str, home: &str, uid: u32) -> Vec<(String, String)> {
    let generated = format!("/run/user/{uid}/systemd/generator");
    let home = format!("{}/", home.trim_end_matches('/'));
    let mut units: Vec<(String, String)> = shown
        .split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .unwrap_or("")
            };
            let (unit, file, state) = (field("Id"), field("FragmentPath"), field("ActiveState"));
            let own = file.starts_with(&home) || file.starts_with(&generated);
            (own && !unit.is_empty() && unit != UNIT).then(|| (unit.to_string(), state.to_string()))
        })
        .collect();
    units.sort_by_key(|(u, _)| (u.ends_with(".service"), u.clone()));
    units
}

/// What `node-agent module-agents` does to every module's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum AllAgents {
    /// Print each module of this node and the state of its module-agent.
    List,
    /// Restart each module's agent onto the installed binary and unit file, one at a time, each
    /// waited for until it is ready (a stopped one is started). The modules' containers are units
    /// of their own and keep serving; a run in progress is interrupted and runs again.
    Restart {
        /// Only the agents that are stopped, run a replaced binary or a changed unit file: what the
        /// package's postinst does after an upgrade or a reinstall.
        #[arg(long)]
        stale: bool,
    },
    /// Stop each module's agent (left enabled, so a reinstall or a reboot starts it again): the
    /// package's prerm on `apt remove`. The modules' containers keep running.
    Stop,
}

/// `node-agent module-agents ACTION`: ACTION on the agent of every module of the node, one at a
/// time. A module whose agent cannot be reached is reported and the others are still done; the
/// result is the first failure.
pub fn all_agents(action: AllAgents) -> Result<()> {
    let mut first_failure = None;
    let ids = super::user::installed_modules()?;
    if ids.is_empty() {
        println!("no modules on this node");
    }
    for id in ids {
        if let Err(e) = one_agent(action, &id) {
            eprintln!("module-agent of {id}: {e}");
            first_failure.get_or_insert(e);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

fn one_agent(action: AllAgents, id: &ModuleId) -> Result<()> {
    let user = ModuleUser::require(id)?;
    let state = manager_state(id)?;
    if !matches!(state.as_str(), "running" | "degraded") {
        // Without linger (a module half removed) nothing runs it; with linger its manager is
        // starting and will start the agent itself.
        println!("module-agent of {id}: its user manager is not running ('{state}'): left alone");
        return Ok(());
    }
    match action {
        AllAgents::List => {}
        AllAgents::Restart { stale } => {
            let why = staleness(id)?;
            // The unit file may be new (a package upgrade): the user's manager must read it again.
            user_unit(&user, &["daemon-reload"])?;
            match why {
                None if stale => {
                    println!("module-agent of {id}: up to date, left running");
                    return Ok(());
                }
                Some(why) => println!("module-agent of {id}: restarting ({why})"),
                None => {}
            }
            user_unit(&user, &["restart", UNIT])?;
        }
        AllAgents::Stop => user_unit(&user, &["stop", UNIT])?,
    }
    print_agent_state(&user, id)
}

/// Why a module's agent must be restarted to run what is installed, if it must.
fn staleness(id: &ModuleId) -> Result<Option<&'static str>> {
    let show = |property: &str| -> Result<String> {
        let (_, out) = quiet_stdout_of(user_systemctl(id).args(["show", "-P", property, UNIT]))?;
        Ok(out)
    };
    if show("NeedDaemonReload")? == "yes" {
        return Ok(Some("its unit file changed"));
    }
    let pid = show("MainPID")?;
    if pid.is_empty() || pid == "0" {
        return Ok(Some("not running"));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    Ok(is_replaced_binary(&exe.to_string_lossy()).then_some("its binary was replaced"))
}

/// Whether a `/proc/PID/exe` link names a file that was deleted or replaced since the process
/// started (what dpkg does to a binary it upgrades or removes).
pub fn is_replaced_binary(exe: &str) -> bool {
    exe.ends_with(" (deleted)")
}

/// What the node knows of a module being installed, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Not yet: wait and look again.
    Wait,
    /// Ready; the message says why.
    Ready(&'static str),
    /// Its own module.init ended with this status.
    Failed(RunStatus),
}

/// The decision of wait-ready: `heartbeat` (the module's agent is live), `status` (of its startup
/// run `startup-module.init`, None when there is no record), `registered` (in node/NODE/modules).
pub fn readiness(heartbeat: bool, status: Option<RunStatus>, registered: bool) -> Readiness {
    if !heartbeat {
        return Readiness::Wait;
    }
    match status {
        // Installed before (70register) and live: ready, even when the startup run's record
        // has expired.
        None if registered => Readiness::Ready("ready (installed, agent live)"),
        Some(RunStatus::Done) => Readiness::Ready("ready"),
        Some(s) if s.is_terminal() => Readiness::Failed(s),
        _ => Readiness::Wait,
    }
}

/// module.init/60wait-ready. Only reads.
pub fn wait_ready(ctx: &Ctx, id: &ModuleId) -> Result<()> {
    let prefix = Prefix::module(id.agent_name().clone());
    let run_id = RunId::startup(&EventName::new("module.init").expect("valid event name"))
        .expect("valid run id");
    let (run, heartbeat) = (prefix.run(&run_id), prefix.heartbeat());
    let wait = env_secs("MODULE_READY_WAIT", 120)?;
    let end = Instant::now() + wait;
    let mut con = ctx.con()?;
    loop {
        let fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&run).query(&mut con)?;
        let record = (!fields.is_empty()).then(|| RunRecord::from_fields(&fields));
        let status = record.as_ref().and_then(|r| r.status);
        let live: bool = redis::cmd("EXISTS").arg(&heartbeat).query(&mut con)?;
        let registered = live && status.is_none() && ctx.is_registered(id)?;
        match readiness(live, status, registered) {
            Readiness::Ready(how) => {
                println!("module {id} is {how}");
                return Ok(());
            }
            Readiness::Failed(st) => {
                let record = record.unwrap_or_default();
                let (step, code) = (record.failed_step, record.exit_code.map(|c| c.to_string()));
                let output: Option<String> = redis::cmd("GET")
                    .arg(prefix.run_output(&run_id))
                    .query(&mut con)?;
                return Err(ToolError::Failed(format!(
                    "the module's own module.init of {id} {st} at step {} (exit {}); its output:\n{}",
                    step.unwrap_or_default(),
                    code.unwrap_or_default(),
                    output.unwrap_or_default().trim_end()
                )));
            }
            Readiness::Wait => {}
        }
        if Instant::now() > end {
            return Err(ToolError::TempFailure(format!(
                "module {id} not ready after {}s (heartbeat: {}, startup run: '{}'); see: journalctl --user -M {id}@ -u module-agent",
                wait.as_secs(),
                u8::from(live),
                status.map_or("none", RunStatus::as_str)
            )));
        }
        // A few reads of the node's own Redis a poll: a short period costs nothing and the
        // install ends closer to the module's own end (a 100 ms period added ~50 ms on average).
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_modules_own_running_units_are_stopped_timers_first() {
        let shown = "Id=hello-httpd.service\nFragmentPath=/run/user/1001/systemd/generator/hello-httpd.service\nActiveState=active\n\n\
                     Id=module-agent.service\nFragmentPath=/usr/lib/systemd/user/module-agent.service\nActiveState=active\n\n\
                     Id=dbus.socket\nFragmentPath=/usr/lib/systemd/user/dbus.socket\nActiveState=active\n\n\
                     Id=clean.timer\nFragmentPath=/home/hello1/.config/systemd/user/clean.timer\nActiveState=active\n\n\
                     Id=old.service\nFragmentPath=/home/hello1/.config/systemd/user/old.service\nActiveState=inactive\n\n\
                     Id=other.service\nFragmentPath=/home/hello10/.config/systemd/user/other.service\nActiveState=active";
        assert_eq!(
            running(own_units(shown, "/home/hello1", 1001)),
            ["clean.timer", "hello-httpd.service"]
        );
        assert!(running(own_units("", "/home/hello1", 1001)).is_empty());
    }

    #[test]
    fn a_binary_replaced_by_dpkg_reads_deleted() {
        assert!(is_replaced_binary("/usr/bin/module-agent (deleted)"));
        assert!(!is_replaced_binary("/usr/bin/module-agent"));
        assert!(!is_replaced_binary(""));
    }

    #[test]
    fn the_active_state_is_read_from_the_unit_status() {
        let status = "unit:   module-agent.service\nloaded: loaded (/x; enabled)\nactive: active (running)\nresult: success";
        assert_eq!(active_state(status), "active");
        assert_eq!(active_state("active: failed (Result: exit-code)"), "failed");
        assert_eq!(active_state(""), "unknown");
    }

    #[test]
    fn readiness_decisions() {
        use Readiness::*;
        use RunStatus::{Abandoned, Cancelled, Done, Queued, Running};
        assert_eq!(readiness(false, Some(Done), true), Wait, "no heartbeat yet");
        assert_eq!(readiness(true, Some(Done), false), Ready("ready"));
        assert_eq!(readiness(true, Some(Running), true), Wait);
        assert_eq!(readiness(true, Some(Queued), false), Wait);
        assert_eq!(readiness(true, None, false), Wait, "record not written yet");
        assert_eq!(
            readiness(true, None, true),
            Ready("ready (installed, agent live)"),
            "record expired on an installed module"
        );
        for s in [RunStatus::Failed, Abandoned, Cancelled] {
            assert_eq!(readiness(true, Some(s), true), Readiness::Failed(s));
        }
    }
}
