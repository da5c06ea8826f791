//! `module-sdk secret …`: the module's secrets, age-encrypted to its own key (the `module_secrets`
//! crate does the work; this is the command line around it).
//!
//! Inside a step the module is the step's own (`AGENT_NAME`, `AGENT_KIND=module`, `REDIS_URL`) and the
//! identity is `$HOME/.config/agent/secret.key` (the module-agent runs as the module's user). Outside a
//! step, `--module ID`, `REDIS_URL` or `--redis-url` and `--identity FILE` say the same.
//!
//! Values are read from standard input only, never from the command line (argv is visible to every
//! user through `ps` and `/proc`), and only `get` ever prints one.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use core_events::{AgentName, Prefix};
use module_secrets::{self as ms, KeyFile, Secret, SecretName, MAX_VALUE_LEN};

use crate::context::{process_env, redis_url_from};
use crate::error::{Error, Result};
use crate::ops::Timeouts;
use crate::redis_url::RedisUrl;

/// Environment variable that names the identity file (same as `--identity`).
pub const IDENTITY_VAR: &str = "AGENT_SECRET_KEY_FILE";

const SECRET_AFTER_HELP: &str = "\
Examples (inside a step of module traefik0):
  module-sdk secret init                               create the key, publish the public key
  printf %s \"$PW\" | module-sdk secret set DB_PASSWORD  store a value (read from stdin only)
  module-sdk secret get DB_PASSWORD                    print it (followed by a newline)
  module-sdk secret list                               the names of the module's secrets
  module-sdk secret rm DB_PASSWORD                     remove one
  module-sdk secret rotate                             new key, every secret re-encrypted
A node step or an admin gives a module a secret (only the module can read it):
  printf %s \"$PW\" | module-sdk secret set-for traefik0 DB_PASSWORD
Outside a step:
  REDIS_URL=redis://127.0.0.1:6379 module-sdk secret --module traefik0 \\
      --identity /home/traefik0/.config/agent/secret.key get DB_PASSWORD

Keys: module/<id>/public_key (the age recipient) and the hash module/<id>/secrets
(name -> ASCII-armored age ciphertext). Only ciphertext goes to Redis. The identity
(private key) is $HOME/.config/agent/secret.key, mode 0600 (--identity FILE or
AGENT_SECRET_KEY_FILE to use another); back it up: without it the secrets are lost.

Exit codes: 0 ok; 1 no such secret, or the module has no public key; 2 bad arguments;
65 the secret does not decrypt (not encrypted to this key, or damaged); 69 Redis
unreachable; 70 other Redis error; 74 I/O error; 75 locked or changed concurrently,
try again; 77 Redis refused (ACL: only the node agent or an admin may write another
module's secrets); 78 no identity, identity unusable, key mismatch, or an interrupted
rotation to finish with `module-sdk secret rotate`.";

/// `module-sdk secret …`
#[derive(Args, Debug)]
#[command(after_help = SECRET_AFTER_HELP)]
pub struct SecretArgs {
    /// The module whose secrets to use, instead of this step's own (needed outside a step).
    #[arg(long, value_name = "ID", global = true)]
    pub module: Option<AgentName>,

    /// Redis to use instead of REDIS_URL. Prefer the REDIS_URL variable when the URL has a password:
    /// the command line is visible to other users.
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,

    /// The module's identity file (private key). Default: $HOME/.config/agent/secret.key.
    #[arg(long, value_name = "FILE", global = true, env = IDENTITY_VAR)]
    pub identity: Option<PathBuf>,

    #[command(subcommand)]
    pub cmd: SecretCmd,
}

#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Create the module's identity if it has none and publish its public key; prints the public key.
    ///
    /// Idempotent: with an identity already there and its key published it changes nothing. If
    /// module/<id>/public_key holds another key, it stops (secrets may be encrypted to that one);
    /// --force publishes this identity's key anyway.
    Init {
        /// Publish this identity's public key even if another one is published.
        #[arg(long)]
        force: bool,
    },

    /// Store a secret; the value is read from standard input only (never from the command line).
    ///
    /// One trailing newline is dropped (`echo "$PW" | module-sdk secret set NAME` stores $PW); --raw
    /// keeps the value byte for byte. The value is encrypted to the module's public key before it
    /// is sent to Redis.
    Set {
        /// Secret name: 1 to 64 of A-Z a-z 0-9 _ . - (not starting with -).
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: SecretName,
        /// Keep a trailing newline.
        #[arg(long)]
        raw: bool,
    },

    /// Print a secret's value, followed by a newline (--raw: the value only, byte for byte).
    Get {
        /// Secret name: 1 to 64 of A-Z a-z 0-9 _ . - (not starting with -).
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: SecretName,
        /// Print the value exactly, without the newline.
        #[arg(long)]
        raw: bool,
    },

    /// List the names of the module's secrets, one per line, sorted.
    List,

    /// Remove a secret. Removing one that is not set is not an error.
    Rm {
        /// Secret name: 1 to 64 of A-Z a-z 0-9 _ . - (not starting with -).
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: SecretName,
    },

    /// New identity for the module; every secret re-encrypted to it; prints the new public key.
    ///
    /// All new ciphertexts and the new public key are written in one transaction; only then does the
    /// new key file replace the old one. An interrupted rotation is finished (or undone, if it had
    /// not reached Redis) by running `rotate` again.
    Rotate,

    /// Store a secret for another module, encrypted to its published public key (for node steps and
    /// admins).
    ///
    /// The value is read from standard input, like `set`. Needs only REDIS_URL (or --redis-url) with
    /// the right to write module/<MODULE>/secrets: under the Redis ACL a module may not write another
    /// module's keys.
    SetFor {
        /// The module that will be able to read the secret.
        #[arg(value_name = "MODULE")]
        to: AgentName,
        /// Secret name: 1 to 64 of A-Z a-z 0-9 _ . - (not starting with -).
        #[arg(value_name = "NAME", value_parser = name_arg)]
        name: SecretName,
        /// Keep a trailing newline.
        #[arg(long)]
        raw: bool,
    },

    /// Print the module's published public key (module/<id>/public_key).
    PublicKey,
}

fn name_arg(s: &str) -> Result<SecretName> {
    SecretName::new(s).map_err(|e| Error::Usage(e.to_string()))
}

/// Runs one `secret` command.
pub fn run(args: SecretArgs, verbose: bool) -> Result<()> {
    match &args.cmd {
        SecretCmd::SetFor { to, name, raw } => {
            if args.module.is_some() {
                return Err(Error::Usage(
                    "set-for names its module as an argument: `secret set-for MODULE NAME` (drop \
                     --module)"
                        .into(),
                ));
            }
            let url = match given_url(&args)? {
                Some(url) => url,
                None => redis_url_from(process_env)?,
            };
            let value = read_value(name, *raw)?;
            let target = Prefix::module(to.clone());
            let mut con = connect(&url)?;
            let to =
                ms::store::set_for(&mut con, &target, name, &value).map_err(|e| lift(&url, e))?;
            if verbose {
                eprintln!(
                    "{name} encrypted to {to} and written to {}",
                    target.secrets()
                );
            }
            Ok(())
        }
        SecretCmd::PublicKey => {
            let (prefix, url) = target(&args)?;
            let mut con = connect(&url)?;
            match ms::store::published_key(&mut con, &prefix).map_err(|e| lift(&url, e))? {
                Some(key) => print(format!("{key}\n").as_bytes()),
                None => Err(Error::Secret(ms::Error::NoPublicKey {
                    key: prefix.public_key(),
                    module: prefix.agent().to_string(),
                })),
            }
        }
        SecretCmd::List => {
            let (prefix, url) = target(&args)?;
            let names = ms::store::list(&mut connect(&url)?, &prefix).map_err(|e| lift(&url, e))?;
            print(
                names
                    .iter()
                    .map(|n| format!("{n}\n"))
                    .collect::<String>()
                    .as_bytes(),
            )
        }
        SecretCmd::Rm { name } => {
            let (prefix, url) = target(&args)?;
            let existed =
                ms::store::remove(&mut connect(&url)?, &prefix, name).map_err(|e| lift(&url, e))?;
            if verbose {
                let what = if existed {
                    "removed from"
                } else {
                    "was not in"
                };
                eprintln!("{name} {what} {}", prefix.secrets());
            }
            Ok(())
        }
        SecretCmd::Init { force } => {
            let (prefix, url) = target(&args)?;
            let keys = key_file(&args)?;
            let mut con = connect(&url)?;
            let init = ms::init(&mut con, &prefix, &keys, *force).map_err(|e| lift(&url, e))?;
            if verbose {
                let made = if init.created { "created" } else { "kept" };
                let published = if init.published {
                    "published"
                } else {
                    "already published"
                };
                eprintln!(
                    "identity {} {made}; public key {published} at {}",
                    keys.path().display(),
                    prefix.public_key()
                );
            }
            print(format!("{}\n", init.recipient).as_bytes())
        }
        SecretCmd::Set { name, raw } => {
            let (prefix, url) = target(&args)?;
            let keys = key_file(&args)?;
            let value = read_value(name, *raw)?;
            let _lock = keys.lock_shared().map_err(Error::Secret)?;
            let identity = keys.load().map_err(Error::Secret)?;
            let mut con = connect(&url)?;
            ms::store::set(&mut con, &prefix, &identity, name, &value)
                .map_err(|e| lift(&url, e))?;
            if verbose {
                eprintln!("{name} encrypted and written to {}", prefix.secrets());
            }
            Ok(())
        }
        SecretCmd::Get { name, raw } => {
            let (prefix, url) = target(&args)?;
            let keys = key_file(&args)?;
            let _lock = keys.lock_shared().map_err(Error::Secret)?;
            let identity = keys.load().map_err(Error::Secret)?;
            let mut con = connect(&url)?;
            let value =
                ms::store::get(&mut con, &prefix, &identity, name).map_err(|e| lift(&url, e))?;
            let mut out = std::io::stdout().lock();
            out.write_all(value.expose())
                .and_then(|()| if *raw { Ok(()) } else { out.write_all(b"\n") })
                .and_then(|()| out.flush())
                .map_err(Error::Stdout)
        }
        SecretCmd::Rotate => {
            let (prefix, url) = target(&args)?;
            let keys = key_file(&args)?;
            let mut con = connect(&url)?;
            let r = ms::rotate(&mut con, &prefix, &keys).map_err(|e| lift(&url, e))?;
            if r.resumed {
                eprintln!(
                    "finished an interrupted rotation: {} secrets of {} are encrypted to {}",
                    r.secrets,
                    prefix.as_str(),
                    r.recipient
                );
            } else {
                eprintln!(
                    "rotated: {} secrets of {} re-encrypted to {}",
                    r.secrets,
                    prefix.as_str(),
                    r.recipient
                );
            }
            print(format!("{}\n", r.recipient).as_bytes())
        }
    }
}

/// Sorts a `module_secrets` error: Redis errors the way every other command does (unreachable /
/// denied / other, URL masked), the rest as they are.
fn lift(url: &RedisUrl, e: ms::Error) -> Error {
    match e {
        ms::Error::Redis {
            what,
            cause: source,
        } => Error::from_redis(url.masked(), what, source),
        other => Error::Secret(other),
    }
}

fn given_url(args: &SecretArgs) -> Result<Option<RedisUrl>> {
    args.redis_url
        .as_deref()
        .map(|u| RedisUrl::parse("--redis-url", u))
        .transpose()
}

/// The module whose secrets are meant, and the Redis URL.
fn target(args: &SecretArgs) -> Result<(Prefix, RedisUrl)> {
    crate::context::module_target(
        args.module.as_ref(),
        given_url(args)?,
        "secrets; use --module ID for a module's, or `secret set-for MODULE NAME` to give one a \
         secret",
    )
}

fn key_file(args: &SecretArgs) -> Result<KeyFile> {
    match &args.identity {
        Some(p) => Ok(KeyFile::new(p)),
        None => ms::default_path(std::env::var_os("HOME").as_deref())
            .map(KeyFile::new)
            .map_err(Error::Secret),
    }
}

/// Reads the value from standard input (only there).
fn read_value(name: &SecretName, raw: bool) -> Result<Secret> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "module-sdk: type the value of {name}, then Enter and Ctrl-D (it shows on the screen: \
             prefer a pipe)"
        );
    }
    let mut value = Secret::read_from(stdin.lock(), MAX_VALUE_LEN).map_err(|e| match e {
        ms::Error::Read(e) => Error::Stdin(e),
        other => Error::Usage(other.to_string()),
    })?;
    if !raw {
        value.strip_one_newline();
    }
    if value.is_empty() {
        return Err(Error::Usage(format!(
            "the value of {name} on standard input is empty: values are read from standard input \
             only, never from the command line: printf %s \"$VALUE\" | module-sdk secret set {name}"
        )));
    }
    Ok(value)
}

fn connect(url: &RedisUrl) -> Result<redis::Connection> {
    crate::ops::connect(url, Timeouts::NORMAL)
}

use crate::ops::print_stdout as print;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_code;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Secret(SecretArgs),
    }

    fn parse(args: &[&str]) -> std::result::Result<SecretArgs, clap::Error> {
        let mut all = vec!["module-sdk", "secret"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.cmd {
            Top::Secret(s) => s,
        })
    }

    #[test]
    fn values_never_come_from_argv() {
        for bad in [
            &["set", "DB", "hunter22"][..],
            &["set-for", "mod0", "DB", "hunter22"],
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn arguments_parse() {
        let a = parse(&["get", "DB_PASSWORD", "--module", "mod0", "--raw"]).unwrap();
        assert_eq!(a.module.as_ref().map(|m| m.as_str()), Some("mod0"));
        assert!(
            matches!(a.cmd, SecretCmd::Get { ref name, raw: true } if name.as_str() == "DB_PASSWORD")
        );
        let a = parse(&["--identity", "/k", "set-for", "other0", "X"]).unwrap();
        assert_eq!(a.identity, Some(PathBuf::from("/k")));
        assert!(a.module.is_none());
        assert!(matches!(a.cmd, SecretCmd::SetFor { ref to, .. } if to.as_str() == "other0"));
        for bad in [
            &["get", "a/b"][..],
            &["rm", "x y"],
            &["set-for", "../x", "N"],
            &["init", "extra"],
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.exit_code(), exit_code::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn secret_errors_map_to_exit_codes() {
        let cases = [
            (ms::Error::NotForThisKey, exit_code::DATA_ERR),
            (
                ms::Error::Damaged { detail: "x".into() },
                exit_code::DATA_ERR,
            ),
            (
                ms::Error::NotFound {
                    hash: "h".into(),
                    name: "n".into(),
                },
                exit_code::NOT_FOUND,
            ),
            (
                ms::Error::NoIdentity { path: "/k".into() },
                exit_code::CONFIG,
            ),
            (
                ms::Error::RotationPending { path: "/k".into() },
                exit_code::CONFIG,
            ),
            (
                ms::Error::Locked { path: "/k".into() },
                exit_code::TEMP_FAIL,
            ),
            (
                ms::Error::InSecret {
                    name: "n".into(),
                    cause: Box::new(ms::Error::NotArmored),
                },
                exit_code::DATA_ERR,
            ),
        ];
        for (e, code) in cases {
            let e = Error::Secret(e);
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
