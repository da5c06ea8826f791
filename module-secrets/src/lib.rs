//! Secrets of agent modules, encrypted per module with age (x25519).
//!
//! Every module has an **identity** (private key) in a file in its home, mode 0600
//! (`$HOME/.config/agent/secret.key`, see [`keyfile`]), and publishes the matching **public key** at
//! `module/<id>/public_key`. A secret is stored as ASCII-armored age ciphertext to that public key in
//! the hash `module/<id>/secrets` (field = secret name). Anybody who may write the hash can encrypt to
//! the module (a node step giving a module its database password: [`store::set_for`]); only the module
//! can decrypt. Plaintext never goes over the wire and is held in [`Secret`], which prints as `***`
//! and is zeroed on drop.
//!
//! Layers:
//! * pure — [`Secret`], [`SecretName`], [`Identity`], [`Recipient`], [`encrypt`], [`decrypt`],
//!   [`store::decrypt_entries`];
//! * files — [`KeyFile`]: create (atomic, never overwriting), load (checks the mode), locks;
//! * Redis (synchronous `redis` API, any [`redis::ConnectionLike`]) — [`store`]: set / set_for / get /
//!   list / remove / decrypt_all / publish_public_key;
//! * both — [`lifecycle`]: [`init`] and [`rotate`] (with the recovery rule for an interrupted rotation).
//!
//! For the engine: load the identity with [`KeyFile::load`] and call [`decrypt_all`] (or read the hash
//! itself and call [`store::decrypt_entries`]) to learn every value to scrub from a run's output.

pub mod cluster_key;
pub mod crypto;
pub mod error;
pub mod keyfile;
pub mod lifecycle;
pub mod secret;
pub mod store;

pub use cluster_key::ClusterKey;
pub use crypto::{decrypt, encrypt, Identity, Recipient};
pub use error::{Error, Result};
pub use keyfile::{default_path, KeyFile, KeyLock};
pub use lifecycle::{init, rotate, Init, Rotation};
pub use secret::{Secret, SecretName, MAX_VALUE_LEN};
pub use store::{decrypt_all, Decrypted};
