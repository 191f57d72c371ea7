//! Who is calling (kernel-reported peer credentials) and who may mutate.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Request;
use tonic::transport::server::UdsConnectInfo;

use crate::config::AccessSettings;
use crate::model::Actor;

/// The peer of a call, as the kernel reports it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    /// User id of the calling process; policy decisions key on it.
    pub uid: Option<u32>,
    /// Primary group id.
    pub gid: Option<u32>,
    /// Process id, recorded in the audit trail to tell callers apart.
    pub pid: Option<u32>,
}

impl Caller {
    /// Reads the credentials tonic recorded for the connection.
    pub fn of<T>(request: &Request<T>) -> Self {
        match request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
        {
            Some(cred) => Self {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            },
            None => Self::default(),
        }
    }
}

/// Who may call mutating RPCs.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl AccessPolicy {
    /// From config; an unset uid list means the daemon's own uid and root.
    pub fn from_settings(settings: &AccessSettings) -> Self {
        let uids = settings.mutate_uids.clone().unwrap_or_else(|| {
            let mut v = vec![0];
            if let Some(own) = defenseclaw_common::paths::current_uid()
                && own != 0
            {
                v.push(own);
            }
            v
        });
        Self {
            uids,
            gids: settings.mutate_gids.clone(),
        }
    }

    /// Whether the caller may mutate. Unknown credentials never may. Groups
    /// are the caller's at call time: its process's effective and supplementary
    /// groups from `/proc`, else the password/group database (re-read at least
    /// every [`NSS_TTL`]).
    pub fn may_mutate(&self, caller: &Caller, names: &UserNames) -> bool {
        let Some(uid) = caller.uid else { return false };
        if self.uids.contains(&uid) {
            return true;
        }
        if self.gids.is_empty() {
            return false;
        }
        if caller.gid.is_some_and(|g| self.gids.contains(&g)) {
            return true;
        }
        let groups = caller
            .pid
            .and_then(|pid| process_groups(pid, uid))
            .unwrap_or_else(|| names.groups(uid, caller.gid));
        groups.iter().any(|g| self.gids.contains(g))
    }
}

/// Longest time a user name or group list from NSS is reused.
pub const NSS_TTL: Duration = Duration::from_secs(60);
/// Bound on cached uids; the cache is emptied when it is reached.
const MAX_CACHED_UIDS: usize = 4096;
/// Bound on what is read of `/proc/<pid>/status` (a few KiB in practice).
const MAX_STATUS_BYTES: u64 = 64 * 1024;

/// The groups of process `pid` now: the effective `Gid:` and the `Groups:`
/// list of `/proc/<pid>/status`. `None` when it cannot be read, or when the
/// process's effective uid is no longer `uid` (it exited and the pid was reused,
/// or it changed identity): the caller then falls back to NSS.
pub fn process_groups(pid: u32, uid: u32) -> Option<Vec<u32>> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/status"))
        .ok()?
        .take(MAX_STATUS_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    parse_status_groups(&text, uid)
}

fn parse_status_groups(status: &str, uid: u32) -> Option<Vec<u32>> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().map(str::parse::<u32>))
    };
    // Uid: real effective saved fs
    let effective_uid = field("Uid:")?.nth(1)?.ok()?;
    if effective_uid != uid {
        return None;
    }
    let effective_gid = field("Gid:")?.nth(1)?.ok()?;
    let mut groups = vec![effective_gid];
    for g in field("Groups:")? {
        groups.push(g.ok()?);
    }
    Some(groups)
}

/// uid → user name and supplementary groups from NSS, cached for at most
/// [`NSS_TTL`] (lookups can be slow; memberships change).
#[derive(Debug, Default)]
pub struct UserNames {
    cache: Mutex<HashMap<u32, NssEntry>>,
}

/// What NSS said about a uid, and when.
#[derive(Debug)]
struct NssEntry {
    fetched: Instant,
    name: String,
    groups: Vec<u32>,
}

impl UserNames {
    fn lookup(&self, uid: u32, gid: Option<u32>) -> (String, Vec<u32>) {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uid)
            && hit.fetched.elapsed() < NSS_TTL
        {
            return (hit.name.clone(), hit.groups.clone());
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map_or_else(|| format!("uid-{uid}"), |u| u.name.clone());
        let groups: Vec<u32> = user
            .as_ref()
            .and_then(|u| {
                let cname = std::ffi::CString::new(u.name.clone()).ok()?;
                let primary = nix::unistd::Gid::from_raw(gid.unwrap_or(u.gid.as_raw()));
                nix::unistd::getgrouplist(&cname, primary).ok()
            })
            .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_UIDS {
            cache.clear();
        }
        cache.insert(
            uid,
            NssEntry {
                fetched: Instant::now(),
                name: name.clone(),
                groups: groups.clone(),
            },
        );
        (name, groups)
    }

    /// The user name for a uid (or `uid-<n>`).
    pub fn name(&self, uid: u32) -> String {
        self.lookup(uid, None).0
    }

    fn groups(&self, uid: u32, gid: Option<u32>) -> Vec<u32> {
        self.lookup(uid, gid).1
    }

    /// The local actor for a caller.
    pub fn local_actor(&self, caller: &Caller) -> Actor {
        Actor {
            id: caller
                .uid
                .map_or_else(|| "uid:unknown".to_owned(), |u| format!("uid:{u}")),
            name: caller
                .uid
                .map_or_else(|| "unknown".to_owned(), |u| self.name(u)),
            auth_method: "local".into(),
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
            ..Actor::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status_groups;

    #[test]
    fn groups_come_from_the_process_status() {
        let status = "Name:\tsh\nUid:\t65534\t65534\t65534\t65534\nGid:\t100\t65534\t65534\t65534\nGroups:\t4242 7 \n";
        assert_eq!(
            parse_status_groups(status, 65534),
            Some(vec![65534, 4242, 7])
        );
        // Another identity (a reused pid): not trusted.
        assert_eq!(parse_status_groups(status, 1000), None);
        let none = "Uid:\t1\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\t\n";
        assert_eq!(parse_status_groups(none, 1), Some(vec![2]));
    }
}
