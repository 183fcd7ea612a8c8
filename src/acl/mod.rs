//! Access control: ACL users (hashed passwords, command and key permissions), the per-command
//! permission check, and protected mode. `requirepass` is the `default` user's password.
//!
//! Secrets never reach the logs: passwords are hashed on arrival, errors name users and
//! reasons but never rule text, and nothing here logs command arguments.

pub mod categories;
pub mod commands;
pub mod protected;
pub mod user;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

pub use protected::{is_loopback, protected_mode_denies, refuses, DENIED};
pub use user::{hash_password, RuleError, User, UserState};

use crate::commands::{CommandSpec, Keys};
use crate::config::Config;
use crate::protocol::Reply;
use crate::server::{ClientState, Server};

/// Most users a node holds: a bound on what clients can make it store.
pub const MAX_USERS: usize = 10_000;

/// A bad `acl` entry in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("user '{user}': {reason}")]
pub struct AclConfigError {
    /// The user the entry is for.
    pub user: String,
    /// What is wrong (never the rule text, which may hold a password).
    pub reason: String,
}

/// All users of the node.
pub struct Acl {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    /// Never replaced (only changed in place), so the dispatcher reads its flag lock-free.
    default: Arc<User>,
}

/// The state of the `default` user before configuration: on, no password, everything allowed.
fn default_state() -> UserState {
    UserState {
        enabled: true,
        nopass: true,
        all_commands: true,
        all_keys: true,
        all_channels: true,
        ..Default::default()
    }
}

impl Acl {
    /// Users from `config`: `default` (with `requirepass`), then every `acl` entry.
    pub fn from_config(config: &Config) -> Result<Acl, AclConfigError> {
        let mut state = default_state();
        if let Some(p) = &config.requirepass {
            state.nopass = false;
            state.passwords = vec![hash_password(p.as_bytes())];
        }
        let acl = Acl::with_default(state);
        for line in &config.acl {
            let mut words = line.split_whitespace();
            let mut name = words.next().unwrap_or_default();
            if name == "user" {
                name = words.next().unwrap_or_default();
            }
            if name.is_empty() {
                return Err(AclConfigError { user: String::new(), reason: "empty acl entry".into() });
            }
            let rules: Vec<Bytes> = words.map(|w| Bytes::copy_from_slice(w.as_bytes())).collect();
            acl.set_user(name, &rules)
                .map_err(|(_, e)| AclConfigError { user: name.to_string(), reason: e.to_string() })?;
        }
        Ok(acl)
    }

    /// A node whose `default` user has `state` and no other user.
    pub fn with_default(state: UserState) -> Acl {
        let default = Arc::new(User::new("default", state));
        let users = BTreeMap::from([("default".to_string(), default.clone())]);
        Acl { users: RwLock::new(users), default }
    }

    /// Fail closed: the `default` user is off, so nobody gets in (used when the ACL
    /// configuration cannot be applied).
    pub fn locked() -> Acl {
        Acl::with_default(UserState { enabled: false, ..Default::default() })
    }

    /// The `default` user.
    pub fn default_user(&self) -> Arc<User> {
        self.default.clone()
    }

    /// A user by name.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    /// Whether new connections must authenticate (the `default` user is off or has passwords).
    pub fn default_needs_auth(&self) -> bool {
        let st = self.default.state();
        !(st.enabled && st.nopass)
    }

    /// Whether the `default` user has the `nopass` flag (protected mode's condition).
    pub fn default_is_nopass(&self) -> bool {
        self.default.state().nopass
    }

    /// The user `name` if `pass` is one of its passwords and it is on.
    pub fn authenticate(&self, name: &[u8], pass: &[u8]) -> Option<Arc<User>> {
        let user = self.get(std::str::from_utf8(name).ok()?)?;
        let ok = user.state().check_password(pass);
        ok.then_some(user)
    }

    /// `CONFIG SET requirepass`: the `default` user's only password, or `nopass` when empty.
    pub fn set_requirepass(&self, pass: Option<&str>) {
        let _ = self.default.update(|st| {
            st.passwords.clear();
            st.nopass = pass.is_none();
            if let Some(p) = pass {
                st.passwords.push(hash_password(p.as_bytes()));
            }
            Ok(())
        });
    }

    /// `ACL SETUSER`: creates the user if needed and applies every rule, or none of them.
    /// On error, returns the index of the refused rule.
    pub fn set_user(&self, name: &str, rules: &[Bytes]) -> Result<(), (usize, RuleError)> {
        let apply = |st: &mut UserState, rules: &[Bytes]| -> Result<(), (usize, RuleError)> {
            for (i, r) in rules.iter().enumerate() {
                if r.is_empty() {
                    return Err((i, RuleError::Syntax));
                }
                st.apply(r).map_err(|e| (i, e))?;
            }
            Ok(())
        };
        let mut users = self.users.write();
        if let Some(user) = users.get(name) {
            let mut failed = None;
            let _ = user.update(|st| {
                apply(st, rules).map_err(|e| {
                    let kind = e.1.clone();
                    failed = Some(e);
                    kind
                })
            });
            return failed.map_or(Ok(()), Err);
        }
        if users.len() >= MAX_USERS {
            return Err((0, RuleError::TooManyUsers));
        }
        let mut st = UserState::default();
        apply(&mut st, rules)?;
        users.insert(name.to_string(), Arc::new(User::new(name, st)));
        Ok(())
    }

    /// `ACL DELUSER`: removes users (never `default`); their connections close at their next
    /// command. Returns how many existed.
    pub fn delete(&self, names: &[&str]) -> usize {
        let mut users = self.users.write();
        names.iter().filter_map(|n| users.remove(*n)).map(|u| u.mark_deleted()).count()
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<Arc<User>> {
        self.users.read().values().cloned().collect()
    }
}

/// Why the ACL refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The command rules do not allow it.
    Command,
    /// A key argument matches none of the user's patterns.
    Key,
    /// The connection's user was deleted.
    UserDeleted,
}

/// The ACL check of every command, run by the dispatcher after authentication: a flag test
/// for unrestricted users, the command rules and key patterns otherwise. Errors are Redis's.
#[inline]
pub fn check(
    server: &Server,
    client: &mut ClientState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<(), Reply> {
    decide(server, client, spec, args).map_err(|d| match d {
        Denied::Command => {
            Reply::error(format!("NOPERM this user has no permissions to run the '{}' command", spec.name))
        }
        Denied::Key => {
            Reply::error("NOPERM this user has no permissions to access one of the keys used as arguments")
        }
        Denied::UserDeleted => Reply::error("ERR the user of this connection was deleted"),
    })
}

/// The check again at EXEC for a queued command, in case the rules changed since it was
/// queued (Redis 7 does the same, with these texts).
pub fn check_queued(
    server: &Server,
    client: &mut ClientState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<(), Reply> {
    const PREFIX: &str = "NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC call. This command is no longer allowed for the following reason: ";
    decide(server, client, spec, args).map_err(|d| match d {
        Denied::Command => {
            Reply::error(format!("{PREFIX}no permission to execute the command or subcommand"))
        }
        Denied::Key => Reply::error(format!("{PREFIX}no permission to touch the specified keys")),
        Denied::UserDeleted => Reply::error("ERR the user of this connection was deleted"),
    })
}

#[inline]
fn decide(
    server: &Server,
    client: &mut ClientState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<(), Denied> {
    match &client.user {
        // The default user: one relaxed atomic load when it may do everything.
        None if server.acl.default.is_unrestricted() => Ok(()),
        None => {
            let user = server.acl.default.clone();
            decide_slow(&user, client, spec, args)
        }
        Some(user) if user.is_unrestricted() => Ok(()),
        Some(user) => {
            let user = user.clone();
            decide_slow(&user, client, spec, args)
        }
    }
}

fn decide_slow(
    user: &User,
    client: &mut ClientState,
    spec: &CommandSpec,
    args: &[Bytes],
) -> Result<(), Denied> {
    if user.is_deleted() {
        client.close_after_reply = true;
        return Err(Denied::UserDeleted);
    }
    let st = user.state();
    // AUTH, HELLO, QUIT and RESET stay allowed, as in Redis.
    if !spec.flags.contains(&"no-auth") && !st.may_run(spec) {
        return Err(Denied::Command);
    }
    if let k @ Keys::Range { .. } = spec.keys {
        if !k.positions(args.len()).all(|i| st.may_access(&args[i])) {
            return Err(Denied::Key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirepass_is_the_default_users_password() {
        let config = Config { requirepass: Some("pw".into()), ..Default::default() };
        let acl = Acl::from_config(&config).unwrap();
        assert!(acl.default_needs_auth());
        assert!(acl.authenticate(b"default", b"pw").is_some());
        assert!(acl.authenticate(b"default", b"nope").is_none());
        acl.set_requirepass(None);
        assert!(!acl.default_needs_auth());
    }

    #[test]
    fn users_come_from_config() {
        let config = Config { acl: vec!["user alice on >a1 ~s:* +@read".into()], ..Default::default() };
        let acl = Acl::from_config(&config).unwrap();
        let alice = acl.authenticate(b"alice", b"a1").unwrap();
        assert_eq!(
            alice.state().describe(),
            format!("on #{} ~s:* resetchannels -@all +@read", user::hex(&hash_password(b"a1")))
        );
        let bad = Config { acl: vec!["bob on >secretpw +@nosuch".into()], ..Default::default() };
        let err = Acl::from_config(&bad).err().unwrap().to_string();
        assert!(err.contains("bob") && !err.contains("secretpw"), "{err}");
    }

    #[test]
    fn a_failed_setuser_changes_nothing() {
        let acl = Acl::from_config(&Config::default()).unwrap();
        acl.set_user("u", &[Bytes::from("on"), Bytes::from(">x")]).unwrap();
        let err = acl.set_user("u", &[Bytes::from("off"), Bytes::from("+@nosuch")]).unwrap_err();
        assert_eq!(err, (1, RuleError::UnknownName));
        assert!(acl.get("u").unwrap().state().enabled);
    }
}
