//! The edge proxy of a node: which routes and certificates it serves (from Redis), rendered into
//! one complete Caddy configuration and applied through Caddy's admin API. The node's `edge.sync`
//! event runs [`sync::apply`] (`node-agent edge apply`); docs/EDGE.md says how it fits together.

pub mod acme;
pub mod caddy;
pub mod certs;
pub mod error;
pub mod render;
pub mod store;
pub mod sync;

pub use error::{Error, Result};
