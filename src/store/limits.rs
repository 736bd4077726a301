//! What a key and a value may be (API.md §3), checked before anything is stamped.
//!
//! Owns: [`Limits`] and the typed reasons an input is refused.
//! Knows nothing of: HTTP status codes (the API layer maps these errors to them).

/// The largest key accepted by default, in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// The largest value accepted by default, in bytes.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Size limits for keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes of UTF-8.
    pub max_key_bytes: usize,
    /// Longest value, in bytes (values are arbitrary bytes).
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// Why a key or value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The key is the empty string.
    #[error("the key is empty")]
    EmptyKey,
    /// The key is longer than `max_key_bytes`.
    #[error("the key is {len} bytes long; the limit is {max} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The key contains a control character.
    #[error("the key contains a control character")]
    KeyControlCharacter,
    /// The key is not valid UTF-8.
    #[error("the key is not valid UTF-8")]
    KeyNotUtf8,
    /// The value is longer than `max_value_bytes`.
    #[error("the value is {len} bytes long; the limit is {max} bytes")]
    ValueTooLarge {
        /// The value's length (or a lower bound when the body was cut off).
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

impl Limits {
    /// Checks a key: 1 to `max_key_bytes` bytes, no control characters.
    pub fn check_key(&self, key: &str) -> Result<(), InputError> {
        if key.is_empty() {
            return Err(InputError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(InputError::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        if key.chars().any(char::is_control) {
            return Err(InputError::KeyControlCharacter);
        }
        Ok(())
    }

    /// Checks a value's size: at most `max_value_bytes` bytes. Any bytes are allowed.
    pub fn check_value(&self, bytes: &[u8]) -> Result<(), InputError> {
        if bytes.len() > self.max_value_bytes {
            return Err(InputError::ValueTooLarge {
                len: bytes.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 4,
        };
        assert_eq!(limits.check_key(""), Err(InputError::EmptyKey));
        assert!(limits.check_key("a/b").is_ok());
        assert!(limits.check_key("ü").is_ok());
        assert!(matches!(
            limits.check_key("abcde"),
            Err(InputError::KeyTooLong { len: 5, max: 4 })
        ));
        assert_eq!(
            limits.check_key("a\nb"),
            Err(InputError::KeyControlCharacter)
        );
        assert_eq!(
            limits.check_key("\u{7f}"),
            Err(InputError::KeyControlCharacter)
        );
    }

    #[test]
    fn values_are_checked() {
        let limits = Limits {
            max_key_bytes: 4,
            max_value_bytes: 4,
        };
        assert_eq!(limits.check_value(b""), Ok(()));
        assert_eq!(limits.check_value(b"abcd"), Ok(()));
        assert_eq!(
            limits.check_value(&[0xff, 0, 0xfe]),
            Ok(()),
            "values are bytes"
        );
        assert!(matches!(
            limits.check_value(b"abcde"),
            Err(InputError::ValueTooLarge { .. })
        ));
    }
}
