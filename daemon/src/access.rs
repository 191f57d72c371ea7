//! Who is calling (kernel-reported peer credentials) and who may mutate.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tonic::Request;
use tonic::transport::server::UdsConnectInfo;

use crate::config::AccessSettings;
use crate::model::Actor;

/// The peer of a call, as the kernel reports it (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: Option<u32>,
    /// Primary group id.
    pub gid: Option<u32>,
    /// Process id.
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
            if let Some(own) = defenseclaw_proto::paths::current_uid()
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

    /// Whether the caller may mutate. Unknown credentials never may.
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
        names
            .groups(uid, caller.gid)
            .iter()
            .any(|g| self.gids.contains(g))
    }
}

/// uid → user name and supplementary groups, cached (NSS lookups can be slow).
#[derive(Debug, Default)]
pub struct UserNames {
    cache: Mutex<HashMap<u32, (String, Vec<u32>)>>,
}

impl UserNames {
    fn lookup(&self, uid: u32, gid: Option<u32>) -> (String, Vec<u32>) {
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uid)
        {
            return hit.clone();
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map_or_else(|| format!("uid-{uid}"), |u| u.name.clone());
        let groups = user
            .as_ref()
            .and_then(|u| {
                let cname = std::ffi::CString::new(u.name.clone()).ok()?;
                let primary = nix::unistd::Gid::from_raw(gid.unwrap_or(u.gid.as_raw()));
                nix::unistd::getgrouplist(&cname, primary).ok()
            })
            .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        let value = (name, groups);
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uid, value.clone());
        value
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
