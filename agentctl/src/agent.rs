//! The AGENT argument: `node/NAME`, `module/NAME` or a bare `NAME`, and how a bare name is resolved.

use std::fmt;

use anyhow::{Context, Result};
use core_events::{AgentKind, AgentName, Prefix};
use redis::aio::ConnectionManager;

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

/// Which keys exist for a bare name, in the order they decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence {
    pub module_heartbeat: bool,
    pub node_heartbeat: bool,
    pub module_queue: bool,
    pub node_queue: bool,
}

impl Evidence {
    /// A running agent (heartbeat) decides first, modules before nodes; then a queue that exists.
    pub fn kind(self) -> Option<AgentKind> {
        if self.module_heartbeat {
            Some(AgentKind::Module)
        } else if self.node_heartbeat {
            Some(AgentKind::Node)
        } else if self.module_queue {
            Some(AgentKind::Module)
        } else if self.node_queue {
            Some(AgentKind::Node)
        } else {
            None
        }
    }
}

/// The key prefix of `agent`; a bare name is looked up in Redis (see [`Evidence::kind`]).
pub async fn resolve(con: &mut ConnectionManager, agent: &AgentRef) -> Result<Prefix> {
    if let Some(p) = agent.prefix() {
        return Ok(p);
    }
    let module = Prefix::module(agent.name.clone());
    let node = Prefix::node(agent.name.clone());
    let (module_heartbeat, node_heartbeat, module_queue, node_queue): (bool, bool, bool, bool) =
        redis::pipe()
            .exists(module.heartbeat())
            .exists(node.heartbeat())
            .exists(module.queue())
            .exists(node.queue())
            .query_async(con)
            .await
            .with_context(|| format!("cannot look up agent {}", agent.name))?;
    let evidence = Evidence {
        module_heartbeat,
        node_heartbeat,
        module_queue,
        node_queue,
    };
    match evidence.kind() {
        Some(AgentKind::Module) => Ok(module),
        Some(AgentKind::Node) => Ok(node),
        None => Err(fail(
            1,
            format!(
                "cannot tell whether {0} is a node or a module: write node/{0} or module/{0}",
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

    #[test]
    fn evidence_order() {
        let none = Evidence::default();
        assert_eq!(none.kind(), None);
        let e = Evidence {
            node_heartbeat: true,
            module_queue: true,
            ..none
        };
        assert_eq!(e.kind(), Some(AgentKind::Node), "a heartbeat beats a queue");
        let e = Evidence {
            module_heartbeat: true,
            node_heartbeat: true,
            ..none
        };
        assert_eq!(e.kind(), Some(AgentKind::Module));
        let e = Evidence {
            module_queue: true,
            node_queue: true,
            ..none
        };
        assert_eq!(e.kind(), Some(AgentKind::Module));
        let e = Evidence {
            node_queue: true,
            ..none
        };
        assert_eq!(e.kind(), Some(AgentKind::Node));
    }
}
