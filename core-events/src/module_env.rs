//! Fields of `module/<id>/module.env` (`Prefix::module_env`) that the core itself reads or writes.
//! Every other field is the module's own; each field is exported to the module's steps as an
//! environment variable of the same name (unless [`crate::step_env::is_reserved`]).

/// The module's image reference, written by `agentctl module add` and read by the node's
/// `module.init` tools (the field name the seed used, kept for compatibility).
pub const EVENTS_IMAGE: &str = "EVENTS_IMAGE";

/// `1` in a scratch module's module.env (a throwaway copy made by `agentctl backup verify`):
/// `module-sdk route add` requests no route for it, so it never takes the original's name.
pub const SCRATCH_MODULE: &str = "SCRATCH_MODULE";

/// Written by the node's `module.update` for the length of an upgrade (removed by its commit and
/// by its rollback, which puts the old module.env back), so that the module's own `module.update`,
/// `module.init` and `health` steps see it: the version the module ran before, the version being
/// installed, and the image it ran before (the new one is [`EVENTS_IMAGE`]).
pub const UPDATE_FROM_VERSION: &str = "UPDATE_FROM_VERSION";
pub const UPDATE_TO_VERSION: &str = "UPDATE_TO_VERSION";
pub const UPDATE_FROM_IMAGE: &str = "UPDATE_FROM_IMAGE";
