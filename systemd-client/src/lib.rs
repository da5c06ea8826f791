//! `systemd-client`: what the agents and `module-sdk` use to drive systemd's service manager
//! (`org.freedesktop.systemd1`) over D-Bus instead of shelling out to `systemctl`.
//!
//! Why a crate of its own: three places need it (the node-agent on the *system* bus, the module-agent
//! and the steps of a module on their user's *user* bus, and `module-sdk unit`), and the hard parts
//! must be done once and right:
//!
//! * **Waiting for jobs.** `StartUnit` and friends only *queue* a job. [`Systemd::start`] (and
//!   `stop`/`restart`/`reload`) subscribe to the manager and open the `JobRemoved` signal stream
//!   *before* the call, then wait for the signal of their own job: the job's result (`done`,
//!   `failed`, `timeout`, `dependency`, …, see [`JobResult`]) decides success, as `systemctl`
//!   does without `--no-block`.
//! * **Errors a sysadmin can act on.** A failed job becomes [`Error::JobFailed`], which carries the
//!   unit's states and the last lines of its journal.
//! * **Fresh user managers.** Connecting to a user bus that was just started can fail for a moment
//!   ("Transport endpoint is not connected", connection refused): [`Systemd::connect`] retries,
//!   bounded, with backoff.
//!
//! The client only asks systemd to do things and reports what systemd said; it never edits unit
//! files itself and never decides policy (what to start when) — that belongs to steps.

mod client;
mod error;
mod job;
mod journal;
mod name;
mod status;

pub use client::{Bus, ConnectRetry, EnableOutcome, Systemd, UnitFileChange};
pub use error::{Error, JobFailure, Result};
pub use job::{JobResult, Verb};
pub use journal::Journal;
pub use name::UnitName;
pub use status::UnitStatus;
