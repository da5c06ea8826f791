//! The Redis ACL of the security model: who may write what (see `docs/SECURITY.md`).
//!
//! * [`rules`] — pure functions building each user's `ACL SETUSER` rule list: a module user writes only
//!   `module/<id>/*` and PUBLISHes only on its own channels; a node user also writes `module/*` and
//!   manages ACL users; the admin may do everything; the `default` user reads or is off.
//! * passwords and credentials files are `agent-redis`'s ([`Password`], [`Credentials`]).
//! * [`ops`] — the idempotent operations on a live Redis: [`setup_cluster`], [`add_agent`],
//!   [`remove_agent`], [`rotate_password`], each followed by `ACL SAVE` when there is an aclfile.
//!
//! * [`replicate`] — the agents' users made the same on every node's Redis of a cluster, from the
//!   replicated `cluster/users` key (ACL users are not replicated by Redis).
//!
//! `agentctl redis …` is the command line over this crate; the node-agent's tools call it too.

pub mod error;
pub mod ops;
pub mod replicate;
pub mod rules;

pub use agent_redis::{Credentials, Owner, Password};
pub use error::{Error, Result};
pub use ops::{
    add_agent, add_agent_to, remove_agent, rotate_password, save_acl, setup_cluster, user_exists,
    AgentOutcome, CredentialsFile, CredentialsStore, PasswordSource, Persistence, RemoveOutcome,
    RotateOutcome, SetupOptions, SetupOutcome, UserOutcome,
};
pub use rules::{
    agent_rules, agent_user, is_locked_default, join_rules, sentinel_rules, DefaultPolicy,
    ADMIN_USER, DEFAULT_USER,
};
