//! The AGENT argument: `node/NAME`, `module/NAME` or a bare `NAME`, and how a bare name is resolved.

use std::fmt;

use anyhow::{Context, Result};
use core_events::{keys, AgentKind, AgentName, Prefix};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::fail::{fail, invalid};

/// An agent as written on the command line; `kind` is `None` for a bare name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    pub kind: Option<AgentKind>,
    pub name: AgentName,
}

impl AgentRef {
    /// Parses `node/NAME`, `module/NAME` or `NAME`. An invalid name exits with 65.
    pub fn parse(input: &str) -> Result<Self> {
        let (kind, name) = match input.split_once('/') {
            Some((kind, name)) => {
                let kind = [AgentKind::Node, AgentKind::Module]
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(|| {
                        invalid(format!(
                            "agent {input:?}: unknown kind {kind:?}; write node/NAME, module/NAME or NAME"
                        ))
                    })?;
                (Some(kind), name)
            }
            None => (None, input),
        };
        let name = AgentName::new(name).map_err(|e| invalid(format!("agent {input:?}: {e}")))?;
        Ok(AgentRef { kind, name })
    }

    pub fn prefix(&self) -> Option<Prefix> {
        self.kind.map(|k| Prefix::new(k, self.name.clone()))
    }
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(k) => write!(f, "{}/{}", k.as_str(), self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// The kind the agent name registry (`keys::agent_registry`) has for `name`, `None` when it has
/// none (or something that is no kind).
pub async fn registered_kind<C: redis::aio::ConnectionLike + Send + Sync>(
    con: &mut C,
    name: &AgentName,
) -> redis::RedisResult<Option<AgentKind>> {
    let kind: Option<String> = con.hget(keys::agent_registry(), name.as_str()).await?;
    Ok(kind.as_deref().and_then(AgentKind::parse))
}

/// The key prefix of `agent`; a bare name is looked up in the agent name registry
/// (`keys::agent_registry`), which every agent writes at its start and `agentctl module add` when
/// it adds a module.
pub async fn resolve(con: &mut ConnectionManager, agent: &AgentRef) -> Result<Prefix> {
    if let Some(p) = agent.prefix() {
        return Ok(p);
    }
    let registry = keys::agent_registry();
    let kind = registered_kind(con, &agent.name)
        .await
        .with_context(|| format!("cannot look up agent {} in {registry}", agent.name))?;
    match kind {
        Some(kind) => Ok(Prefix::new(kind, agent.name.clone())),
        None => Err(fail(
            1,
            format!(
                "cannot tell whether {0} is a node or a module: it is not in the agent registry \
                 {registry} (an agent adds its name when it first starts); write node/{0} or \
                 module/{0}",
                agent.name
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fail::code_of;

    #[test]
    fn parses_the_three_forms() {
        let a = AgentRef::parse("node/node1").unwrap();
        assert_eq!(a.kind, Some(AgentKind::Node));
        assert_eq!(a.prefix().unwrap().as_str(), "node/node1");
        let a = AgentRef::parse("module/traefik0").unwrap();
        assert_eq!(a.kind, Some(AgentKind::Module));
        assert_eq!(a.to_string(), "module/traefik0");
        let a = AgentRef::parse("traefik0").unwrap();
        assert_eq!(a.kind, None);
        assert!(a.prefix().is_none());
        assert_eq!(a.to_string(), "traefik0");
    }

    #[test]
    fn refuses_bad_agents() {
        for bad in [
            "",
            "host/x",
            "node/",
            "module/a/b",
            "a b",
            "-x",
            "node/../x",
            "x:y",
        ] {
            let e = AgentRef::parse(bad).unwrap_err();
            assert_eq!(code_of(&e), 65, "{bad:?}: {e}");
        }
        let e = AgentRef::parse("pod/x").unwrap_err().to_string();
        assert!(e.contains("node/NAME"), "{e}");
    }
}
