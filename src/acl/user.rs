//! One ACL user: on/off, hashed passwords, command rules and key patterns, and the rule
//! language of `ACL SETUSER` that changes them.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use super::categories;
use crate::commands::CommandSpec;

/// A SHA-256 password hash, as Redis stores passwords (never the password itself).
pub type PasswordHash = [u8; 32];

/// Hashes a password the way Redis does (SHA-256), so hashes are interchangeable with Redis's.
pub fn hash_password(pass: &[u8]) -> PasswordHash {
    Sha256::digest(pass).into()
}

/// Lower-case hex of a hash, as `ACL GETUSER` and `ACL LIST` show it.
pub fn hex(hash: &PasswordHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(s: &[u8]) -> Option<PasswordHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let txt = std::str::from_utf8(pair).ok()?;
        if !txt.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        out[i] = u8::from_str_radix(txt, 16).ok()?;
    }
    Some(out)
}

/// Most passwords, key patterns and command rules one user may hold: bounds on what a client
/// can make the node store (Redis has none; real users need a handful).
pub const MAX_PER_LIST: usize = 1024;

/// One `+`/`-` command rule after the `+@all`/`-@all` base, kept in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandRule {
    /// `+@cat` / `-@cat`.
    Category(&'static str),
    /// `+cmd` / `-cmd` / `+cmd|sub` (lower-case).
    Command(String),
}

/// Everything `ACL SETUSER` can change on a user.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    /// `on` / `off`: an off user cannot authenticate.
    pub enabled: bool,
    /// Any password is accepted.
    pub nopass: bool,
    /// Accepted password hashes.
    pub passwords: Vec<PasswordHash>,
    /// Base of the command rules: `+@all` or `-@all`.
    pub all_commands: bool,
    /// Rules after the base, in order; the last one matching a command decides.
    pub rules: Vec<(bool, CommandRule)>,
    /// `~*` / `allkeys`.
    pub all_keys: bool,
    /// Key glob patterns.
    pub patterns: Vec<Vec<u8>>,
    /// `&*` / `allchannels`: kept for compatibility only, cachegrid has no Pub/Sub yet.
    pub all_channels: bool,
}

/// Why a rule was refused; the text is Redis's reason for `ACL SETUSER`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Unknown keyword.
    #[error("Syntax error")]
    Syntax,
    /// `+@nosuchcategory`.
    #[error("Unknown command or category name in ACL")]
    UnknownName,
    /// `#` / `!` with something that is not 64 hex digits.
    #[error(
        "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters"
    )]
    BadHash,
    /// `<pass` for a password the user does not have.
    #[error("The password you are trying to remove from the user does not exist")]
    NoSuchPassword,
    /// More than [`MAX_PER_LIST`] passwords, patterns or rules.
    #[error("Too many passwords, key patterns or command rules for one user (at most 1024 each)")]
    TooMany,
    /// [`super::MAX_USERS`] users exist already.
    #[error("Too many ACL users (at most 10000)")]
    TooManyUsers,
    /// A key pattern given to a user that already has `allkeys`.
    #[error("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns")]
    PatternAfterAll,
}

impl UserState {
    /// Applies one `ACL SETUSER` rule.
    pub fn apply(&mut self, rule: &[u8]) -> Result<(), RuleError> {
        let lower = rule.to_ascii_lowercase();
        match lower.as_slice() {
            b"on" => self.enabled = true,
            b"off" => self.enabled = false,
            b"nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            b"resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            b"allkeys" | b"~*" => {
                self.all_keys = true;
                self.patterns.clear();
            }
            b"resetkeys" => {
                self.all_keys = false;
                self.patterns.clear();
            }
            b"allchannels" | b"&*" => self.all_channels = true,
            b"resetchannels" => self.all_channels = false,
            b"allcommands" | b"+@all" => {
                self.all_commands = true;
                self.rules.clear();
            }
            b"nocommands" | b"-@all" => {
                self.all_commands = false;
                self.rules.clear();
            }
            b"reset" => *self = UserState::default(),
            _ => self.apply_prefixed(rule, &lower)?,
        }
        if self.passwords.len().max(self.patterns.len()).max(self.rules.len()) > MAX_PER_LIST {
            return Err(RuleError::TooMany);
        }
        Ok(())
    }

    fn apply_prefixed(&mut self, rule: &[u8], lower: &[u8]) -> Result<(), RuleError> {
        let (first, rest) = (rule[0], &rule[1..]);
        match first {
            b'>' => {
                let h = hash_password(rest);
                if !self.passwords.contains(&h) {
                    self.passwords.push(h);
                }
                self.nopass = false;
            }
            b'#' => {
                let h = parse_hex(rest).ok_or(RuleError::BadHash)?;
                if !self.passwords.contains(&h) {
                    self.passwords.push(h);
                }
                self.nopass = false;
            }
            b'<' | b'!' => {
                let h = if first == b'<' {
                    hash_password(rest)
                } else {
                    parse_hex(rest).ok_or(RuleError::BadHash)?
                };
                let before = self.passwords.len();
                self.passwords.retain(|p| *p != h);
                if self.passwords.len() == before {
                    return Err(RuleError::NoSuchPassword);
                }
            }
            b'~' => {
                if self.all_keys {
                    return Err(RuleError::PatternAfterAll);
                }
                if !self.patterns.iter().any(|p| p == rest) {
                    self.patterns.push(rest.to_vec());
                }
            }
            b'&' => {} // channel patterns: no Pub/Sub yet, accepted for compatibility
            b'+' | b'-' => {
                let allow = first == b'+';
                let name = std::str::from_utf8(&lower[1..]).map_err(|_| RuleError::UnknownName)?;
                let rule = if let Some(cat) = name.strip_prefix('@') {
                    CommandRule::Category(categories::canonical(cat).ok_or(RuleError::UnknownName)?)
                } else {
                    if !categories::command_exists(name) {
                        return Err(RuleError::UnknownName);
                    }
                    CommandRule::Command(name.to_string())
                };
                // The same rule given again moves to the end instead of piling up.
                self.rules.retain(|(_, r)| *r != rule);
                self.rules.push((allow, rule));
            }
            _ => return Err(RuleError::Syntax),
        }
        Ok(())
    }

    /// Whether the user may run `spec`: the base, then the last rule that matches decides.
    pub fn may_run(&self, spec: &CommandSpec) -> bool {
        let mut allowed = self.all_commands;
        let parent = spec.name.split_once('|').map(|(p, _)| p);
        for (allow, rule) in &self.rules {
            let hit = match rule {
                CommandRule::Category(c) => categories::of(spec).contains(c),
                CommandRule::Command(n) => n == spec.name || Some(n.as_str()) == parent,
            };
            if hit {
                allowed = *allow;
            }
        }
        allowed
    }

    /// Whether the user may touch `key`.
    pub fn may_access(&self, key: &[u8]) -> bool {
        self.all_keys || self.patterns.iter().any(|p| crate::store::glob::glob_match(p, key, false))
    }

    /// Whether `pass` authenticates this user (an off user never authenticates).
    pub fn check_password(&self, pass: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let h = hash_password(pass);
        // Compare every stored hash fully: no early exit that would time the match.
        self.passwords
            .iter()
            .fold(false, |ok, p| ok | (p.iter().zip(&h).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0))
    }

    /// Whether nothing is restricted: the dispatcher then skips the checks entirely.
    pub fn unrestricted(&self) -> bool {
        self.all_commands && self.rules.is_empty() && self.all_keys
    }

    /// The command rules as Redis writes them (`+@all`, `-@all +get -@hash`).
    pub fn describe_commands(&self) -> String {
        let mut out = String::from(if self.all_commands { "+@all" } else { "-@all" });
        for (allow, rule) in &self.rules {
            out.push(' ');
            out.push(if *allow { '+' } else { '-' });
            match rule {
                CommandRule::Category(c) => {
                    out.push('@');
                    out.push_str(c);
                }
                CommandRule::Command(n) => out.push_str(n),
            }
        }
        out
    }

    /// The key patterns as Redis writes them (`~*`, `~a:* ~b`), empty for none.
    pub fn describe_keys(&self) -> String {
        if self.all_keys {
            return "~*".into();
        }
        let pats: Vec<String> =
            self.patterns.iter().map(|p| format!("~{}", String::from_utf8_lossy(p))).collect();
        pats.join(" ")
    }

    /// The user as one `ACL LIST` line (without the name): passwords appear only as hashes.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.enabled { "on".to_string() } else { "off".to_string() }];
        if self.nopass {
            parts.push("nopass".into());
        }
        parts.extend(self.passwords.iter().map(|h| format!("#{}", hex(h))));
        let keys = self.describe_keys();
        if !keys.is_empty() {
            parts.push(keys);
        }
        parts.push(if self.all_channels { "&*".into() } else { "resetchannels".into() });
        parts.push(self.describe_commands());
        parts.join(" ")
    }
}

/// A user shared by every connection authenticated as it: changes apply at once.
pub struct User {
    /// The user name.
    pub name: String,
    state: RwLock<UserState>,
    unrestricted: AtomicBool,
    deleted: AtomicBool,
}

impl User {
    /// A user with `state`.
    pub fn new(name: &str, state: UserState) -> User {
        let unrestricted = AtomicBool::new(state.unrestricted());
        User {
            name: name.to_string(),
            state: RwLock::new(state),
            unrestricted,
            deleted: AtomicBool::new(false),
        }
    }

    /// The fast path of every command: true when the user may run anything on any key.
    #[inline]
    pub fn is_unrestricted(&self) -> bool {
        self.unrestricted.load(Ordering::Relaxed)
    }

    /// Reads the state.
    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, UserState> {
        self.state.read()
    }

    /// Changes the state atomically (all rules or none) and refreshes the fast-path flag.
    pub fn update(&self, f: impl FnOnce(&mut UserState) -> Result<(), RuleError>) -> Result<(), RuleError> {
        let mut st = self.state.write();
        let mut next = st.clone();
        f(&mut next)?;
        self.unrestricted.store(next.unrestricted(), Ordering::Relaxed);
        *st = next;
        Ok(())
    }

    /// Marks the user deleted: its connections are closed at their next command.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Relaxed);
        self.unrestricted.store(false, Ordering::Relaxed);
    }

    /// Whether ACL DELUSER removed it.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rules: &[&str]) -> Result<UserState, RuleError> {
        let mut u = UserState::default();
        for r in rules {
            u.apply(r.as_bytes())?;
        }
        Ok(u)
    }

    #[test]
    fn passwords_are_stored_as_sha256_only() {
        let u = user(&["on", ">secret"]).unwrap();
        assert_eq!(hex(&u.passwords[0]), "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b");
        assert!(u.check_password(b"secret"));
        assert!(!u.check_password(b"Secret"));
        assert!(!u.describe().contains("secret"));
    }

    #[test]
    fn an_off_user_never_authenticates() {
        assert!(!user(&["off", "nopass"]).unwrap().check_password(b"x"));
        assert!(user(&["on", "nopass"]).unwrap().check_password(b"x"));
    }

    #[test]
    fn removing_an_unknown_password_is_an_error() {
        assert_eq!(user(&[">a", "<b"]).unwrap_err(), RuleError::NoSuchPassword);
        assert!(user(&[">a", "<a"]).unwrap().passwords.is_empty());
    }

    #[test]
    fn bad_rules_are_refused() {
        assert_eq!(user(&["+@nosuch"]).unwrap_err(), RuleError::UnknownName);
        assert_eq!(user(&["+nosuchcmd"]).unwrap_err(), RuleError::UnknownName);
        assert_eq!(user(&["bogus"]).unwrap_err(), RuleError::Syntax);
        assert_eq!(user(&["#abc"]).unwrap_err(), RuleError::BadHash);
        assert_eq!(user(&["allkeys", "~a*"]).unwrap_err(), RuleError::PatternAfterAll);
        let many: Vec<String> = (0..=MAX_PER_LIST).map(|i| format!("~k{i}")).collect();
        assert_eq!(
            user(&many.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err(),
            RuleError::TooMany
        );
    }

    #[test]
    fn the_last_matching_rule_decides() {
        let get = crate::commands::lookup(b"get").unwrap();
        let set = crate::commands::lookup(b"set").unwrap();
        let u = user(&["+@string", "-set"]).unwrap();
        assert!(u.may_run(get));
        assert!(!u.may_run(set));
        assert_eq!(u.describe_commands(), "-@all +@string -set");
        assert!(user(&["allcommands"]).unwrap().may_run(set));
    }

    #[test]
    fn key_patterns_are_globs() {
        let u = user(&["~session:*"]).unwrap();
        assert!(u.may_access(b"session:1"));
        assert!(!u.may_access(b"cache:1"));
        assert!(user(&["allkeys"]).unwrap().may_access(b"anything"));
    }
}
