//! Backup schedules in Redis (`cluster/backup/schedules`, one hash each): when (systemd's
//! `OnCalendar=` syntax), which modules (ids, or `*`), to which repository, and how many snapshots
//! to keep. Each node turns them into one systemd timer per schedule (`Persistent=true`: a slot
//! missed while the node was down runs once when it is back), whose service queues a backup of
//! every module of that node the schedule covers — or, for a verifying schedule, verifies each
//! (`agentctl backup verify`: a restore into a scratch module).

use core_events::backup::{self, check_calendar, schedule, RepoName, ALL_MODULES};
use core_events::ModuleId;
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

use crate::{Error, Result};

/// How many snapshots of a module to keep (0: not that rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Keep {
    /// No rule: nothing is forgotten.
    pub fn is_none(&self) -> bool {
        *self == Keep::default()
    }

    /// `restic forget`'s options for it.
    pub fn forget_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, n) in [
            ("--keep-last", self.last),
            ("--keep-daily", self.daily),
            ("--keep-weekly", self.weekly),
            ("--keep-monthly", self.monthly),
        ] {
            if n > 0 {
                args.extend([flag.to_string(), n.to_string()]);
            }
        }
        args
    }
}

/// One schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub name: RepoName,
    pub calendar: String,
    /// `None`: every module.
    pub modules: Option<Vec<ModuleId>>,
    pub repository: Option<RepoName>,
    pub keep: Keep,
    /// Verifies the modules' latest snapshots instead of backing them up.
    pub verify: bool,
}

impl Schedule {
    /// Whether it backs up module `id`.
    pub fn covers(&self, id: &str) -> bool {
        self.modules
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x.as_str() == id))
    }

    /// `modules` as stored.
    pub fn modules_field(&self) -> String {
        match &self.modules {
            None => ALL_MODULES.to_string(),
            Some(m) => m.iter().map(ModuleId::as_str).collect::<Vec<_>>().join(" "),
        }
    }
}

/// Parses the `modules` field: `*`, or module ids separated by spaces.
pub fn parse_modules(s: &str) -> Result<Option<Vec<ModuleId>>> {
    if s.trim() == ALL_MODULES {
        return Ok(None);
    }
    let ids = s
        .split_whitespace()
        .map(|w| ModuleId::new(w).map_err(|e| Error::Invalid(format!("module {w:?}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Err(Error::Invalid(
            "a schedule names its modules, or * for all".into(),
        ));
    }
    Ok(Some(ids))
}

fn number(key: &str, field: &str, v: Option<&String>) -> Result<u32> {
    match v.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| Error::Invalid(format!("{key} {field}: {s:?} is not a count"))),
    }
}

/// Schedule `name` as stored (`None`: there is none).
pub async fn get<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    name: &RepoName,
) -> Result<Option<Schedule>> {
    let key = backup::schedule_key(name);
    let f: std::collections::HashMap<String, String> = conn.hgetall(&key).await?;
    if f.is_empty() {
        return Ok(None);
    }
    let calendar = f.get(schedule::CALENDAR).cloned().unwrap_or_default();
    check_calendar(&calendar).map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    let modules = parse_modules(f.get(schedule::MODULES).map_or("", String::as_str))
        .map_err(|e| Error::Invalid(format!("{key}: {e}")))?;
    let repository = match f.get(schedule::REPOSITORY).map(|s| s.trim()) {
        None | Some("") => None,
        Some(r) => Some(RepoName::new(r).map_err(|e| Error::Invalid(format!("{key}: {e}")))?),
    };
    let verify = match f.get(schedule::ACTION).map(|s| s.trim()) {
        None | Some("") | Some(schedule::ACTION_BACKUP) => false,
        Some(schedule::ACTION_VERIFY) => true,
        Some(other) => {
            return Err(Error::Invalid(format!(
                "{key} {}: {other:?} is neither {} nor {}",
                schedule::ACTION,
                schedule::ACTION_BACKUP,
                schedule::ACTION_VERIFY
            )))
        }
    };
    let keep = Keep {
        last: number(&key, schedule::KEEP_LAST, f.get(schedule::KEEP_LAST))?,
        daily: number(&key, schedule::KEEP_DAILY, f.get(schedule::KEEP_DAILY))?,
        weekly: number(&key, schedule::KEEP_WEEKLY, f.get(schedule::KEEP_WEEKLY))?,
        monthly: number(&key, schedule::KEEP_MONTHLY, f.get(schedule::KEEP_MONTHLY))?,
    };
    Ok(Some(Schedule {
        name: name.clone(),
        calendar,
        modules,
        repository,
        keep,
        verify,
    }))
}

/// Every schedule, by name; a malformed one is an error that names it.
pub async fn all<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<Vec<Schedule>> {
    let mut names: Vec<String> = conn.smembers(backup::schedules_key()).await?;
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let name = RepoName::new(&n)
            .map_err(|e| Error::Invalid(format!("{} holds {n:?}: {e}", backup::schedules_key())))?;
        if let Some(s) = get(conn, &name).await? {
            out.push(s);
        }
    }
    Ok(out)
}

/// Stores (or replaces) a schedule.
pub async fn put<C: ConnectionLike + Send + Sync>(conn: &mut C, s: &Schedule) -> Result<()> {
    check_calendar(&s.calendar).map_err(|e| Error::Invalid(e.to_string()))?;
    if s.verify && !s.keep.is_none() {
        return Err(Error::Invalid(format!(
            "schedule {}: a verifying schedule keeps no snapshots (--keep-* belongs to a backup schedule)",
            s.name
        )));
    }
    let key = backup::schedule_key(&s.name);
    let fields = [
        (schedule::CALENDAR, s.calendar.clone()),
        (schedule::MODULES, s.modules_field()),
        (
            schedule::REPOSITORY,
            s.repository
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default(),
        ),
        (schedule::KEEP_LAST, s.keep.last.to_string()),
        (schedule::KEEP_DAILY, s.keep.daily.to_string()),
        (schedule::KEEP_WEEKLY, s.keep.weekly.to_string()),
        (schedule::KEEP_MONTHLY, s.keep.monthly.to_string()),
        (
            schedule::ACTION,
            if s.verify {
                schedule::ACTION_VERIFY
            } else {
                schedule::ACTION_BACKUP
            }
            .to_string(),
        ),
    ];
    crate::put_named(
        conn,
        &key,
        &fields,
        &backup::schedules_key(),
        s.name.as_str(),
    )
    .await
}

/// Removes a schedule; false when there was none.
pub async fn remove<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    name: &RepoName,
) -> Result<bool> {
    crate::remove_named(
        conn,
        &backup::schedule_key(name),
        &backup::schedules_key(),
        name.as_str(),
    )
    .await
}

/// The retention of module `id`: that of the first schedule (by name) that covers it and has one.
pub fn retention_of<'a>(schedules: &'a [Schedule], id: &str) -> Option<&'a Schedule> {
    schedules
        .iter()
        .find(|s| !s.verify && s.covers(id) && !s.keep.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(name: &str, modules: &str, keep: Keep) -> Schedule {
        Schedule {
            name: RepoName::new(name).unwrap(),
            calendar: "daily".into(),
            modules: parse_modules(modules).unwrap(),
            repository: None,
            keep,
            verify: false,
        }
    }

    #[test]
    fn modules_and_retention() {
        assert_eq!(parse_modules("*").unwrap(), None);
        assert_eq!(parse_modules("hello1  pair2").unwrap().unwrap().len(), 2);
        assert!(parse_modules("").is_err() && parse_modules("Hello").is_err());
        let keep = Keep {
            daily: 7,
            weekly: 4,
            ..Keep::default()
        };
        assert_eq!(
            keep.forget_args(),
            ["--keep-daily", "7", "--keep-weekly", "4"]
        );
        let all = [
            sched("a", "pair2", Keep::default()),
            sched("b", "*", keep.clone()),
        ];
        assert!(all[1].covers("hello1") && !all[0].covers("hello1"));
        assert_eq!(
            retention_of(&all, "pair2").map(|s| s.name.as_str()),
            Some("b")
        );
        assert!(retention_of(&all[..1], "pair2").is_none());
        // A verifying schedule has no retention, even if it says so.
        let verifying = [Schedule {
            verify: true,
            ..sched("c", "*", keep.clone())
        }];
        assert!(retention_of(&verifying, "pair2").is_none());
    }
}
