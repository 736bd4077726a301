//! Client tokens (API.md §3.6): the roles, the tokens file's format, and the
//! constant-time lookup of a presented token.
//!
//! Owns: [`Role`] (`read` < `write` < `admin`, each including the one before),
//! [`ClientTokens`] (the parsed file: a SHA-256 digest and a role per token, never the
//! token itself) and [`TokensFileError`] (a line number and a reason, never a word of
//! the file: a token misplaced where a role belongs must not reach a log).
//! Knows nothing of: HTTP, routes or files. The API decides which role a route needs
//! (`api`), the cluster file says where the file is and reads it (`config`).
//!
//! A presented token is hashed once, and its digest is compared with every configured
//! digest in constant time (`subtle`), without stopping at a match: how long a lookup
//! takes depends on the number of configured tokens and the presented token's length,
//! which an attacker knows anyway, never on how much of a real token it matches.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: `GET` of a key, listings, watches, convergence.
    Read = 1,
    /// Also writes: `PUT` and `DELETE`.
    Write = 2,
    /// Also the operator's routes: `/v1/cluster`, `/v1/conflicts`, `/metrics`.
    Admin = 3,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    /// The role's name in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// The role named `name` in the tokens file.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Whether this role includes `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    fn from_bits(bits: u8) -> Option<Role> {
        match bits {
            1 => Some(Role::Read),
            2 => Some(Role::Write),
            3 => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest token accepted: shorter ones could be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;
/// The longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Whether `token` is 16 to 4096 bytes of visible ASCII (`!` to `~`): what an HTTP
/// header can carry after `Bearer `, with nothing a shell or a log could mangle.
pub fn well_formed(token: &[u8]) -> bool {
    (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&token.len())
        && token.iter().all(|byte| (b'!'..=b'~').contains(byte))
}

/// Why a tokens file cannot be used: a line and a reason, never the line's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokensFileError {
    /// One line is wrong.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file lists no token at all.
    #[error("it lists no token (one `ROLE TOKEN` per line)")]
    Empty,
}

/// One configured token: its digest (as four words, compared a word at a time) and
/// role.
struct Entry {
    digest: [u64; 4],
    role: Role,
}

/// The tokens of a tokens file. Its `Debug` shows how many tokens of each role there
/// are, never a token or a digest.
pub struct ClientTokens {
    entries: Vec<Entry>,
}

fn digest(token: &[u8]) -> [u64; 4] {
    let bytes: [u8; 32] = Sha256::digest(token).into();
    std::array::from_fn(|i| {
        let word: [u8; 8] = bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        u64::from_le_bytes(word)
    })
}

impl ClientTokens {
    /// Parses a tokens file: one `ROLE TOKEN` per line (two words separated by spaces
    /// or tabs), lines whose first non-blank character is `#` are comments, blank lines
    /// are ignored. A duplicate token, an unknown role or a malformed token is an error
    /// naming the line.
    pub fn parse(text: &str) -> Result<Self, TokensFileError> {
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let error = |reason: String| TokensFileError::Line {
                line: number,
                reason,
            };
            let content = line.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = content.split_ascii_whitespace().collect();
            let [role, token] = words[..] else {
                return Err(error(format!(
                    "expected `ROLE TOKEN` (two words), found {} words",
                    words.len()
                )));
            };
            let role = Role::parse(role).ok_or_else(|| {
                error("the first word is not a role (read, write or admin)".to_owned())
            })?;
            if !well_formed(token.as_bytes()) {
                return Err(error(format!(
                    "the token must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES} visible ASCII characters"
                )));
            }
            let digest = digest(token.as_bytes());
            if let Some((first, _)) = entries.iter().find(|(_, entry)| entry.digest == digest) {
                return Err(error(format!("the same token is already on line {first}")));
            }
            entries.push((number, Entry { digest, role }));
        }
        if entries.is_empty() {
            return Err(TokensFileError::Empty);
        }
        Ok(Self {
            entries: entries.into_iter().map(|(_, entry)| entry).collect(),
        })
    }

    /// The role of `presented`, if it is a configured token. Hashes it once and
    /// compares the digest with every configured one in constant time; no allocation.
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let presented = digest(presented);
        let mut bits = 0u8;
        for entry in &self.entries {
            let matches = entry.digest[0].ct_eq(&presented[0])
                & entry.digest[1].ct_eq(&presented[1])
                & entry.digest[2].ct_eq(&presented[2])
                & entry.digest[3].ct_eq(&presented[3]);
            bits = u8::conditional_select(&bits, &(entry.role as u8), matches);
        }
        Role::from_bits(bits)
    }

    /// How many tokens of `role` the file lists.
    pub fn count(&self, role: Role) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.role == role)
            .count()
    }
}

impl fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTokens")
            .field("read", &self.count(Role::Read))
            .field("write", &self.count(Role::Write))
            .field("admin", &self.count(Role::Admin))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: &str = "r-0123456789abcdef";
    const WRITE: &str = "w-0123456789abcdef";
    const ADMIN: &str = "a-0123456789abcdef";

    #[test]
    fn roles_include_the_ones_before() {
        assert!(Role::Admin.allows(Role::Write) && Role::Admin.allows(Role::Read));
        assert!(Role::Write.allows(Role::Read) && Role::Write.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
        assert!(!Role::Read.allows(Role::Write));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(Role::from_bits(role as u8), Some(role));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::from_bits(0), None);
    }

    #[test]
    fn parses_roles_comments_and_blank_lines() {
        let text = format!(
            "# who may do what\n\nread {READ}\n  write\t{WRITE}  \n   # indented comment\nadmin {ADMIN}\n"
        );
        let tokens = ClientTokens::parse(&text).unwrap();
        assert_eq!(tokens.role_of(READ.as_bytes()), Some(Role::Read));
        assert_eq!(tokens.role_of(WRITE.as_bytes()), Some(Role::Write));
        assert_eq!(tokens.role_of(ADMIN.as_bytes()), Some(Role::Admin));
        assert_eq!(tokens.role_of(b"x-0123456789abcdef"), None);
        assert_eq!(tokens.role_of(b""), None);
        // A prefix or an extension of a token is not the token.
        assert_eq!(tokens.role_of(&READ.as_bytes()[..17]), None);
        assert_eq!(tokens.role_of(format!("{READ}x").as_bytes()), None);
        assert_eq!(
            format!("{tokens:?}"),
            "ClientTokens { read: 1, write: 1, admin: 1, .. }"
        );
    }

    #[test]
    fn bad_files_name_the_line_and_never_a_token() {
        let secret = "s3cr3t-s3cr3t-s3cr3t";
        let cases = [
            (
                format!("read {READ}\nread {secret}\nwrite {secret}"),
                3,
                "already on line 2",
            ),
            (format!("superuser {secret}"), 1, "not a role"),
            (format!("{secret} read"), 1, "not a role"),
            ("read\n".to_owned(), 1, "found 1 words"),
            (format!("read {secret} extra"), 1, "found 3 words"),
            ("read short".to_owned(), 1, "16 to 4096 visible ASCII"),
            (format!("read {secret}\u{e9}"), 1, "visible ASCII"),
            (format!("read {secret}\u{7f}"), 1, "visible ASCII"),
            (format!("read {}", "x".repeat(4097)), 1, "visible ASCII"),
            (
                format!("# only\n\nread {secret}\nwrite s3cr3t-\"quoted\"-and-\u{1}"),
                4,
                "visible ASCII",
            ),
        ];
        for (text, line, expected) in cases {
            let error = ClientTokens::parse(&text).unwrap_err();
            let shown = error.to_string();
            assert!(
                shown.starts_with(&format!("line {line}: ")) && shown.contains(expected),
                "{text:?} gave {shown:?}"
            );
            assert!(!shown.contains("s3cr3t"), "{shown:?} shows a token");
            assert!(!format!("{error:?}").contains("s3cr3t"));
        }
        for text in ["", "\n# nothing\n\n"] {
            assert_eq!(
                ClientTokens::parse(text).unwrap_err(),
                TokensFileError::Empty
            );
        }
    }

    #[test]
    fn well_formed_tokens_are_visible_ascii_of_a_guess_proof_length() {
        assert!(well_formed(b"0123456789abcdef"));
        assert!(well_formed(b"!\"#$%&'()*+,-./~"));
        assert!(!well_formed(b"0123456789abcde"));
        assert!(!well_formed(b"0123456789 abcdef"));
        assert!(!well_formed(b"0123456789abcdef\n"));
        assert!(!well_formed(&[b'a'; MAX_TOKEN_BYTES + 1]));
        assert!(well_formed(&[b'a'; MAX_TOKEN_BYTES]));
    }
}
