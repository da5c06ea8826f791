//! The cluster's backup repositories in Redis: `cluster/backup/repositories` (the names) and one
//! hash per repository (`cluster/backup/repository/<name>`: its address, its restic password and
//! its server's credentials, both age-encrypted to the cluster's backup key). Only the admin writes
//! them (`agentctl backup repo`); every node reads them.

use std::path::{Path, PathBuf};

use core_events::backup::{self, repository, settings, RepoName, RepoUrl, CREDENTIAL_NAMES};
use module_secrets::{ClusterKey, Identity, Secret};
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::{Error, Result};

/// A repository as a node uses it: its name, its address, and what opens it.
pub struct Repository {
    pub name: RepoName,
    pub url: RepoUrl,
    pub password: Secret,
    /// `NAME=VALUE` pairs for restic's environment (names from [`CREDENTIAL_NAMES`]).
    pub credentials: Vec<(String, Secret)>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({} {})", self.name, self.url)
    }
}

/// The backup identity's file: [`backup::IDENTITY_VAR`], else [`backup::DEFAULT_IDENTITY_FILE`].
pub fn identity_path() -> PathBuf {
    std::env::var_os(backup::IDENTITY_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(backup::DEFAULT_IDENTITY_FILE))
}

/// The cluster's backup key: its recipient in `cluster/backup`, field `recipient`.
fn backup_key(settings_key: &str) -> ClusterKey<'_> {
    ClusterKey {
        settings_key,
        field: settings::RECIPIENT,
        what: "backup",
    }
}

/// The cluster's backup identity, made (and published) when the cluster has none.
pub async fn ensure_identity<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    path: &Path,
) -> Result<Identity> {
    let settings_key = backup::settings_key();
    Ok(backup_key(&settings_key).ensure(conn, path).await?)
}

/// The cluster's backup identity on this node; an error that says where it comes from if absent.
pub fn load_identity(path: &Path) -> Result<Identity> {
    let settings_key = backup::settings_key();
    backup_key(&settings_key).load(path)?.ok_or_else(|| {
        Error::NotFound(format!(
            "the cluster's backup key {} is not on this node: it is made by the first \
             `agentctl backup repo add`, and a node that joins the cluster receives it; copy it \
             from a node that has it (0600, root's)",
            path.display()
        ))
    })
}

/// Parses `NAME=VALUE` lines of repository credentials (empty lines and `#` comments skipped).
pub fn parse_credentials(text: &str) -> Result<Vec<(String, Secret)>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::Invalid(
                "credentials are NAME=VALUE lines (RESTIC_REST_USERNAME, RESTIC_REST_PASSWORD)"
                    .into(),
            ));
        };
        if !CREDENTIAL_NAMES.contains(&name) {
            return Err(Error::Invalid(format!(
                "credential {name:?}: only {} may be set",
                CREDENTIAL_NAMES.join(", ")
            )));
        }
        out.push((name.to_string(), Secret::from(value)));
    }
    Ok(out)
}

/// A new random restic password (32 bytes, hex).
pub fn random_password() -> Secret {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).expect("the kernel's random source");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Secret::from(hex)
}

/// Stores (or replaces) repository `repo`, its secrets encrypted to `identity`'s recipient.
pub async fn put<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    identity: &Identity,
    repo: &Repository,
) -> Result<()> {
    let to = identity.recipient();
    let password = module_secrets::encrypt(repo.password.expose(), &to)?;
    let mut lines = String::new();
    for (name, value) in &repo.credentials {
        lines.push_str(name);
        lines.push('=');
        lines.push_str(value.expose_str().unwrap_or_default());
        lines.push('\n');
    }
    let lines = Secret::from(lines);
    let credentials = module_secrets::encrypt(lines.expose(), &to)?;
    let key = backup::repository_key(&repo.name);
    let fields = [
        (repository::URL, repo.url.as_str().to_string()),
        (repository::PASSWORD, password),
        (repository::CREDENTIALS, credentials),
        (repository::CREATED, crate::now()),
    ];
    crate::put_named(
        conn,
        &key,
        &fields,
        &backup::repositories_key(),
        repo.name.as_str(),
    )
    .await
}

/// The names of the cluster's repositories, sorted.
pub async fn names<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<String>> {
    let mut names: Vec<String> = conn.smembers(backup::repositories_key()).await?;
    names.sort();
    Ok(names)
}

/// The address of repository `name` (no secret opened).
pub async fn url<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    name: &RepoName,
) -> Result<RepoUrl> {
    let url: Option<String> = conn
        .hget(backup::repository_key(name), repository::URL)
        .await?;
    let url = url.ok_or_else(|| no_such(name))?;
    RepoUrl::new(&url).map_err(|e| Error::Invalid(format!("{}: {e}", backup::repository_key(name))))
}

fn no_such(name: &RepoName) -> Error {
    Error::NotFound(format!(
        "no backup repository {name} (`agentctl backup repo list` shows them; `agentctl backup repo add` adds one)"
    ))
}

/// Repository `name`, opened with the cluster's backup identity.
pub async fn get<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    identity: &Identity,
    name: &RepoName,
) -> Result<Repository> {
    let key = backup::repository_key(name);
    let (url, password, credentials): (Option<String>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(&key)
            .arg(repository::URL)
            .arg(repository::PASSWORD)
            .arg(repository::CREDENTIALS)
            .query_async(conn)
            .await?;
    let (Some(url), Some(password)) = (url, password) else {
        return Err(no_such(name));
    };
    let url = RepoUrl::new(&url).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    let password = module_secrets::decrypt(password.as_bytes(), identity)
        .map_err(|e| Error::Invalid(format!("{key} {}: {e}", repository::PASSWORD)))?;
    let credentials = match credentials {
        Some(c) if !c.is_empty() => {
            let text = module_secrets::decrypt(c.as_bytes(), identity)
                .map_err(|e| Error::Invalid(format!("{key} {}: {e}", repository::CREDENTIALS)))?;
            parse_credentials(text.expose_str().unwrap_or_default())?
        }
        _ => Vec::new(),
    };
    Ok(Repository {
        name: name.clone(),
        url,
        password,
        credentials,
    })
}

/// The repository `named` (else the default, else the only one), opened with this node's copy of
/// the cluster's backup key.
pub async fn open<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    named: Option<&RepoName>,
) -> Result<Repository> {
    let name = resolve(conn, named).await?;
    let identity = load_identity(&identity_path())?;
    get(conn, &identity, &name).await
}

/// The repository a backup of no named repository goes to: the default, else the only one.
pub async fn resolve<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    named: Option<&RepoName>,
) -> Result<RepoName> {
    if let Some(n) = named {
        return Ok(n.clone());
    }
    let default: Option<String> = conn
        .hget(backup::settings_key(), settings::DEFAULT_REPOSITORY)
        .await?;
    if let Some(d) = default.filter(|d| !d.is_empty()) {
        return RepoName::new(&d).map_err(|e| {
            Error::Invalid(format!(
                "{} {}: {d:?}: {e}",
                backup::settings_key(),
                settings::DEFAULT_REPOSITORY
            ))
        });
    }
    let names = names(conn).await?;
    match names.as_slice() {
        [only] => RepoName::new(only).map_err(|e| Error::Invalid(format!("{only:?}: {e}"))),
        [] => Err(Error::NotFound(
            "no backup repository: add one with `agentctl backup repo add NAME URL`".into(),
        )),
        _ => Err(Error::Invalid(format!(
            "{} repositories and no default: name one (--repo), or set the default with `agentctl backup repo default NAME`",
            names.len()
        ))),
    }
}

/// Makes `name` the default repository.
pub async fn set_default<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    name: &RepoName,
) -> Result<()> {
    url(conn, name).await?;
    let _: () = conn
        .hset(
            backup::settings_key(),
            settings::DEFAULT_REPOSITORY,
            name.as_str(),
        )
        .await?;
    Ok(())
}

/// Forgets repository `name` (its data stays where it is). False when there was none.
pub async fn remove<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    name: &RepoName,
) -> Result<bool> {
    crate::remove_named(
        conn,
        &backup::repository_key(name),
        &backup::repositories_key(),
        name.as_str(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_only_restic_names() {
        let c = parse_credentials(
            "# rest server\nRESTIC_REST_USERNAME=u\n\nRESTIC_REST_PASSWORD=p=q\n",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].1.expose_str(), Some("p=q"));
        for bad in ["LD_PRELOAD=/x.so", "RESTIC_PASSWORD=x", "novalue"] {
            assert!(parse_credentials(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_passwords_differ() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 64);
        assert_ne!(a.expose(), b.expose());
    }
}
