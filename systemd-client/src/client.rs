//! The connection to one systemd manager and the operations on it. Every operation is one or two
//! D-Bus calls; the only state is the connection, which is subscribed to the manager's signals from
//! the start (a lingering user manager sends no `JobRemoved` to unsubscribed clients).

use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::Connection;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

use crate::error::{no_such_unit_hint, Error, JobFailure, Result};
use crate::job::{JobResult, Verb};
use crate::journal::Journal;
use crate::name::UnitName;
use crate::status::UnitStatus;

/// How many journal lines a failed job's error carries.
const JOURNAL_LINES: usize = 10;

/// Which systemd manager to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// The calling user's own manager (`systemd --user`), on the user bus: what a module's steps
    /// and its module-agent use. Address: `$DBUS_SESSION_BUS_ADDRESS`, else
    /// `$XDG_RUNTIME_DIR/bus`, else `/run/user/<uid>/bus`.
    User,
    /// The node's manager (PID 1) on the system bus: what the node-agent uses (as root).
    System,
}

impl Bus {
    /// The address zbus will connect to, for messages.
    pub fn address(self) -> String {
        match self {
            Bus::User => std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_else(|_| {
                let dir = std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| {
                    use std::os::unix::fs::MetadataExt;
                    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
                    format!("/run/user/{uid}")
                });
                format!("unix:path={dir}/bus")
            }),
            Bus::System => std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                .unwrap_or_else(|_| "unix:path=/var/run/dbus/system_bus_socket".into()),
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Bus::User => {
                "the user's manager runs only while the user is logged in or lingering \
                 (loginctl enable-linger USER); outside a step set XDG_RUNTIME_DIR=/run/user/UID \
                 (or DBUS_SESSION_BUS_ADDRESS) and run as that user"
            }
            Bus::System => "is dbus running (systemctl status dbus.service)?",
        }
    }
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bus::User => "user",
            Bus::System => "system",
        })
    }
}

/// How [`Systemd::connect_with`] retries a connection that fails in a way that passes (a user bus
/// that is starting: connection refused, "Transport endpoint is not connected", no socket yet).
#[derive(Debug, Clone, Copy)]
pub struct ConnectRetry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Pause after the first failure; doubled after each further one, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ConnectRetry {
    /// 12 attempts over about 9.5 s: a user manager that linger just started needs a few seconds
    /// on a busy node.
    fn default() -> Self {
        ConnectRetry {
            attempts: 12,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Whether a connection error may pass if we try again.
pub(crate) fn is_transient(e: &zbus::Error) -> bool {
    match e {
        zbus::Error::InputOutput(io) | zbus::Error::Connection(io, _) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::NotConnected
                | ErrorKind::NotFound
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::TimedOut
        ),
        zbus::Error::Handshake(_) => true,
        zbus::Error::FDO(fdo) => matches!(
            **fdo,
            zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
        ),
        _ => false,
    }
}

/// One change `EnableUnitFiles`/`DisableUnitFiles` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFileChange {
    /// `symlink` or `unlink`.
    pub kind: String,
    pub file: String,
    pub destination: String,
}

/// As `systemctl enable` says it.
impl fmt::Display for UnitFileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.as_str() {
            "symlink" => write!(f, "Created symlink {} → {}.", self.file, self.destination),
            "unlink" => write!(f, "Removed \"{}\".", self.file),
            other => write!(f, "{other} {} {}", self.file, self.destination),
        }
    }
}

fn changes(list: Vec<(String, String, String)>) -> Vec<UnitFileChange> {
    list.into_iter()
        .map(|(kind, file, destination)| UnitFileChange {
            kind,
            file,
            destination,
        })
        .collect()
}

/// What `enable` did.
#[derive(Debug, Clone)]
pub struct EnableOutcome {
    pub changes: Vec<UnitFileChange>,
    /// False when the unit file has no `[Install]` section: enabling it cannot do anything.
    pub has_install_info: bool,
}

/// A connection to one systemd manager, subscribed to its signals.
pub struct Systemd {
    bus: Bus,
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    /// Connects to `bus` with the default retries ([`ConnectRetry::default`]).
    pub async fn connect(bus: Bus) -> Result<Self> {
        Systemd::connect_with(bus, ConnectRetry::default()).await
    }

    /// Connects to `bus` and subscribes to the manager, retrying transient failures.
    pub async fn connect_with(bus: Bus, retry: ConnectRetry) -> Result<Self> {
        let attempts = retry.attempts.max(1);
        let mut delay = retry.first_delay;
        let mut attempt = 1;
        loop {
            match Systemd::try_connect(bus).await {
                Ok(s) => return Ok(s),
                Err(e) if attempt < attempts && is_transient(&e) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(retry.max_delay);
                    attempt += 1;
                }
                Err(source) => {
                    return Err(Error::Unreachable {
                        bus,
                        address: bus.address(),
                        attempts: attempt,
                        hint: bus.hint(),
                        cause: source,
                    })
                }
            }
        }
    }

    async fn try_connect(bus: Bus) -> zbus::Result<Self> {
        let conn = match bus {
            Bus::User => Connection::session().await?,
            Bus::System => Connection::system().await?,
        };
        let manager = ManagerProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // Also proves that the manager answers on this bus.
        manager.subscribe().await?;
        Ok(Systemd { bus, conn, manager })
    }

    pub fn bus(&self) -> Bus {
        self.bus
    }

    /// Starts `unit` and waits for the job to end (`systemctl start`).
    pub async fn start(&self, unit: &UnitName) -> Result<()> {
        self.job(Verb::Start, unit).await
    }

    /// Stops `unit` and waits for the job to end (`systemctl stop`).
    pub async fn stop(&self, unit: &UnitName) -> Result<()> {
        self.job(Verb::Stop, unit).await
    }

    /// Restarts `unit` (starts it if stopped) and waits for the job to end.
    pub async fn restart(&self, unit: &UnitName) -> Result<()> {
        self.job(Verb::Restart, unit).await
    }

    /// Reloads `unit` (its `ExecReload=`) and waits for the job to end.
    pub async fn reload(&self, unit: &UnitName) -> Result<()> {
        self.job(Verb::Reload, unit).await
    }

    /// `systemctl reset-failed UNIT`: forgets its failed state and its start-rate counter, so that
    /// a start right after several restarts (a reinstall, say) is not refused with
    /// `start-limit-hit`. A unit that is not loaded has nothing to reset.
    pub async fn reset_failed(&self, unit: &UnitName) -> Result<()> {
        match self.manager.reset_failed_unit(unit.to_string()).await {
            Ok(()) => Ok(()),
            Err(e)
                if Error::method_error(&e)
                    .is_some_and(|(name, _)| name.ends_with("NoSuchUnit")) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::from_call(self.bus, "reset-failed", unit, e)),
        }
    }

    /// Queues the job and waits for its `JobRemoved` signal. The signal stream is opened before
    /// the call: the job may end before the call's reply arrives.
    async fn job(&self, verb: Verb, unit: &UnitName) -> Result<()> {
        let mut removed =
            self.manager
                .receive_job_removed()
                .await
                .map_err(|source| Error::Bus {
                    what: format!("listening for the {} manager's JobRemoved signal", self.bus),
                    cause: source,
                })?;
        let (name, mode) = (unit.to_string(), "replace".to_string());
        let call = match verb {
            Verb::Start => self.manager.start_unit(name, mode).await,
            Verb::Stop => self.manager.stop_unit(name, mode).await,
            Verb::Restart => self.manager.restart_unit(name, mode).await,
            Verb::Reload => self.manager.reload_unit(name, mode).await,
        };
        let job = call.map_err(|e| Error::from_call(self.bus, verb.as_str(), unit, e))?;
        let result = loop {
            let Some(signal) = removed.next().await else {
                return Err(Error::Bus {
                    what: format!("waiting for the {verb} job of {unit} ({})", job.as_str()),
                    cause: zbus::Error::Failure("the connection to the bus was closed".into()),
                });
            };
            let args = signal.args().map_err(|source| Error::Bus {
                what: "reading a JobRemoved signal".into(),
                cause: source,
            })?;
            if args.job().as_str() == job.as_str() {
                break JobResult::parse(args.result());
            }
        };
        if result.is_success() {
            return Ok(());
        }
        let status = self.read_status(unit).await.ok();
        let journal = Journal::tail(self.bus, unit, JOURNAL_LINES).await;
        Err(Error::JobFailed(Box::new(JobFailure {
            bus: self.bus,
            verb,
            unit: unit.clone(),
            result,
            status,
            journal,
        })))
    }

    /// `systemctl daemon-reload`: re-reads all unit files; returns when the reload is done.
    pub async fn daemon_reload(&self) -> Result<()> {
        self.manager.reload().await.map_err(|e| {
            if let Some((name, message)) = Error::method_error(&e) {
                if name.ends_with("AccessDenied")
                    || name.ends_with("InteractiveAuthorizationRequired")
                {
                    return Error::Denied {
                        bus: self.bus,
                        what: "reload",
                        unit: "the unit files".into(),
                        name,
                        message,
                    };
                }
            }
            Error::Bus {
                what: format!("reloading the {} manager", self.bus),
                cause: e,
            }
        })
    }

    /// `systemctl enable`: the `[Install]` symlinks (EnableUnitFiles, runtime=false, force=true),
    /// then a daemon-reload so the manager sees them.
    pub async fn enable(&self, unit: &UnitName) -> Result<EnableOutcome> {
        let (has_install_info, list) = self
            .manager
            .enable_unit_files(vec![unit.to_string()], false, true)
            .await
            .map_err(|e| Error::from_call(self.bus, "enable", unit, e))?;
        self.daemon_reload().await?;
        Ok(EnableOutcome {
            changes: changes(list),
            has_install_info,
        })
    }

    /// `systemctl disable`: removes the `[Install]` symlinks, then a daemon-reload.
    pub async fn disable(&self, unit: &UnitName) -> Result<Vec<UnitFileChange>> {
        let list = self
            .manager
            .disable_unit_files(vec![unit.to_string()], false)
            .await
            .map_err(|e| Error::from_call(self.bus, "disable", unit, e))?;
        self.daemon_reload().await?;
        Ok(changes(list))
    }

    /// The unit's states. A unit systemd cannot find is [`Error::NoSuchUnit`].
    pub async fn status(&self, unit: &UnitName) -> Result<UnitStatus> {
        let status = self.read_status(unit).await?;
        if status.is_not_found() {
            return Err(Error::NoSuchUnit {
                bus: self.bus,
                unit: unit.clone(),
                detail: "no unit file, LoadState=not-found".into(),
                hint: no_such_unit_hint(self.bus),
            });
        }
        Ok(status)
    }

    async fn read_status(&self, unit: &UnitName) -> Result<UnitStatus> {
        let bus_err = |source| Error::Bus {
            what: format!("reading the state of {unit} from the {} manager", self.bus),
            cause: source,
        };
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .map_err(|e| Error::from_call(self.bus, "look up", unit, e))?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(bus_err)?;
        let load_state = proxy.load_state().await.map_err(bus_err)?;
        let active_state = proxy.active_state().await.map_err(bus_err)?;
        let sub_state = proxy.sub_state().await.map_err(bus_err)?;
        let unit_file_state = proxy.unit_file_state().await.ok();
        let fragment_path = proxy.fragment_path().await.ok();
        let result = self.type_result(unit, &path).await;
        Ok(UnitStatus {
            unit: unit.to_string(),
            load_state,
            active_state,
            sub_state,
            result,
            unit_file_state,
            fragment_path,
        })
    }

    /// The `Result` property of the unit's type interface (`…systemd1.Service.Result`), for the
    /// types that have one.
    async fn type_result(&self, unit: &UnitName, path: &zbus::OwnedObjectPath) -> Option<String> {
        let iface = match unit.kind() {
            "service" => "Service",
            "socket" => "Socket",
            "mount" => "Mount",
            "automount" => "Automount",
            "swap" => "Swap",
            "timer" => "Timer",
            "path" => "Path",
            "scope" => "Scope",
            _ => return None,
        };
        let iface = format!("org.freedesktop.systemd1.{iface}");
        let props = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .ok()?;
        let iface = zbus::names::InterfaceName::try_from(iface).ok()?;
        let value = props.get(iface, "Result").await.ok()?;
        String::try_from(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Arc;

    fn io_err(kind: ErrorKind) -> zbus::Error {
        zbus::Error::InputOutput(Arc::new(io::Error::from(kind)))
    }

    #[test]
    fn passing_connection_failures_are_retried_others_not() {
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::NotConnected, // "Transport endpoint is not connected"
            ErrorKind::NotFound,
        ] {
            assert!(is_transient(&io_err(kind)), "{kind:?}");
        }
        assert!(is_transient(&zbus::Error::Handshake("closed".into())));
        assert!(is_transient(&zbus::Error::FDO(Box::new(
            zbus::fdo::Error::ServiceUnknown("x".into())
        ))));
        assert!(!is_transient(&io_err(ErrorKind::PermissionDenied)));
        assert!(!is_transient(&zbus::Error::Address("bad".into())));
        assert!(!is_transient(&zbus::Error::FDO(Box::new(
            zbus::fdo::Error::AccessDenied("x".into())
        ))));
    }

    #[tokio::test]
    async fn an_absent_bus_is_unreachable_after_the_bounded_retries() {
        // A socket path that does not exist: NotFound, transient, so every attempt is made.
        let dir = std::env::temp_dir().join(format!("systemd-client-test-{}", std::process::id()));
        std::env::set_var(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}/none", dir.display()),
        );
        let retry = ConnectRetry {
            attempts: 3,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        };
        let started = std::time::Instant::now();
        let Err(e) = Systemd::connect_with(Bus::System, retry).await else {
            panic!("connected to a bus that does not exist");
        };
        assert!(started.elapsed() >= Duration::from_millis(30));
        match &e {
            Error::Unreachable {
                attempts, address, ..
            } => {
                assert_eq!(*attempts, 3);
                assert!(address.contains("/none"), "{address}");
            }
            other => panic!("not Unreachable: {other}"),
        }
        assert!(e.to_string().contains("(3 attempts)"), "{e}");
    }

    #[test]
    fn changes_read_like_systemctl() {
        let c = changes(vec![
            (
                "symlink".into(),
                "/a/wants/x.service".into(),
                "/b/x.service".into(),
            ),
            ("unlink".into(), "/a/wants/x.service".into(), String::new()),
        ]);
        assert_eq!(
            c[0].to_string(),
            "Created symlink /a/wants/x.service → /b/x.service."
        );
        assert_eq!(c[1].to_string(), "Removed \"/a/wants/x.service\".");
    }
}
