//! The C ABI declared in `include/kv739.h`: the only module with unsafe code.
//!
//! Owns: the one global [`Client`] behind a mutex, reading the caller's C strings
//! (bounded: never more than the limit plus one byte), writing into the caller's
//! buffers (never more than `KV739_MAX_VALUE + 1` bytes), the return codes, and the
//! one-line messages on stderr. No panic crosses into C: each entry point catches it
//! and returns -1.
//! Knows nothing of: HTTP or failover (src/client.rs), the course's rules
//! (src/protocol.rs).
//!
//! The mutex is held for a whole call, network included, so concurrent calls from
//! several threads run one after the other. That keeps "the current server" and the
//! session token exact, and the course's tests use processes for concurrency.

use std::ffi::{c_char, c_int};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::client::{say, Client, Token};
use crate::protocol::{
    check_key, check_value, parse_servers, KeyError, MAX_KEY_BYTES, MAX_SERVER_BYTES,
    MAX_VALUE_BYTES,
};

/// Success; for a get, the key was found; for a put, the key had an old value.
const OK: c_int = 0;
/// For a get, the key is absent; for a put, the key was new.
const NOT_FOUND: c_int = 1;
/// Any failure; a message went to stderr.
const FAILED: c_int = -1;

/// A server list longer than this is taken for one that lacks its NULL terminator.
const MAX_SERVERS: usize = 1024;
/// The longest access token read from C, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;

/// The library's state between `kv739_init` and `kv739_shutdown`. A std mutex is
/// right here: calls are blocking by nature and there is no async runtime.
static STATE: Mutex<Option<Client>> = Mutex::new(None);

/// The state, even after a panic while it was held: its fields are each valid on
/// their own (a panic at worst loses an update of the current server or session).
fn state() -> MutexGuard<'static, Option<Client>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs an entry point's body, turning a panic into -1.
fn entry(function: &str, body: impl FnOnce() -> c_int) -> c_int {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        say(format_args!("{function}: internal error; returning -1"));
        FAILED
    })
}

/// Says why `function` fails, and fails.
fn fail(function: &str, why: impl fmt::Display) -> c_int {
    say(format_args!("{function}: {why}"));
    FAILED
}

/// The bytes of the NUL-terminated string at `text` if it is at most `max` bytes long,
/// else `None`. Reads at most `max + 1` bytes, so an over-long or unterminated string
/// is refused without reading past that.
///
/// # Safety
/// `text` is non-NULL and points to a NUL-terminated string (or to at least `max + 1`
/// readable bytes), unchanged during the call.
unsafe fn read_c_str(text: *const c_char, max: usize) -> Option<Vec<u8>> {
    let start = text.cast::<u8>();
    for length in 0..=max {
        // SAFETY: the caller guarantees that every byte up to the first NUL (or the
        // first max + 1 bytes) is readable; we stop at the first NUL and at max + 1.
        if unsafe { *start.add(length) } == 0 {
            // SAFETY: these `length` bytes were each just read above, so they are
            // readable; they are copied out before the call returns.
            return Some(unsafe { std::slice::from_raw_parts(start, length) }.to_vec());
        }
    }
    None
}

/// Copies `bytes` and a terminating NUL into `buffer`; refuses (false) anything that
/// would not fit `KV739_MAX_VALUE + 1` bytes or would be cut by a NUL.
///
/// # Safety
/// `buffer` is non-NULL and writable for `KV739_MAX_VALUE + 1` bytes (the header's
/// contract).
unsafe fn write_c_str(buffer: *mut c_char, bytes: &[u8]) -> bool {
    if check_value(bytes).is_err() {
        return false;
    }
    let out = buffer.cast::<u8>();
    // SAFETY: bytes.len() + 1 <= KV739_MAX_VALUE + 1 (checked just above), which the
    // caller guarantees is writable; `bytes` is our own memory, so they cannot overlap.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len());
        *out.add(bytes.len()) = 0;
    }
    true
}

/// Reads and checks a key argument.
///
/// # Safety
/// `key` is NULL or points to a NUL-terminated string.
unsafe fn read_key(key: *const c_char) -> Result<String, String> {
    if key.is_null() {
        return Err("the key is NULL".to_owned());
    }
    // SAFETY: non-NULL, and a NUL-terminated string by the caller's contract.
    let bytes = unsafe { read_c_str(key, MAX_KEY_BYTES) }.ok_or(KeyError::TooLong.to_string())?;
    check_key(&bytes)
        .map(str::to_owned)
        .map_err(|error| error.to_string())
}

/// `int kv739_init(char **servers)`: starts the library with a NULL-terminated list of
/// `"host:port"` strings. Unparseable entries are skipped (with a message); 0 if at
/// least one parses, -1 if none does, the list is NULL, or the library is already
/// initialised. `MESHKV_TOKEN`, if set, is read here.
///
/// # Safety
/// `servers` is NULL or a NULL-terminated array of NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn kv739_init(servers: *const *const c_char) -> c_int {
    const NAME: &str = "kv739_init";
    entry(NAME, || {
        if servers.is_null() {
            return fail(NAME, "the server list is NULL");
        }
        let mut entries: Vec<Vec<u8>> = Vec::new();
        for index in 0..=MAX_SERVERS {
            if index == MAX_SERVERS {
                return fail(
                    NAME,
                    format_args!("the server list has more than {MAX_SERVERS} entries; is it NULL-terminated?"),
                );
            }
            // SAFETY: `servers` is a NULL-terminated array and no earlier element was
            // NULL, so element `index` is within it.
            let server = unsafe { *servers.add(index) };
            if server.is_null() {
                break;
            }
            // SAFETY: a non-NULL element is a NUL-terminated string by the contract.
            match unsafe { read_c_str(server, MAX_SERVER_BYTES) } {
                Some(bytes) => entries.push(bytes),
                None => say(format_args!(
                    "{NAME}: skipping server entry {index}: longer than {MAX_SERVER_BYTES} bytes"
                )),
            }
        }
        let (servers, skipped) = parse_servers(entries.iter().map(Vec::as_slice));
        for complaint in skipped {
            say(format_args!("{NAME}: skipping {complaint}"));
        }
        if servers.is_empty() {
            return fail(
                NAME,
                "no usable server in the list (expected \"host:port\")",
            );
        }
        let token = match Token::from_env() {
            Ok(token) => token,
            Err(error) => return fail(NAME, format_args!("MESHKV_TOKEN: {error}")),
        };
        let mut state = state();
        if state.is_some() {
            return fail(NAME, "already initialised; call kv739_shutdown first");
        }
        *state = Some(Client::new(servers, token));
        OK
    })
}

/// `int kv739_shutdown(void)`: frees the library's state. 0, or -1 if it was not
/// initialised. `kv739_init` may be called again afterwards.
#[no_mangle]
pub extern "C" fn kv739_shutdown() -> c_int {
    const NAME: &str = "kv739_shutdown";
    entry(NAME, || match state().take() {
        Some(_) => OK,
        None => fail(NAME, "not initialised"),
    })
}

/// `int kv739_get(char *key, char *value)`: 0 and the value copied into `value`
/// (NUL-terminated) if the key exists; 1 and `value` set to "" if it is absent; -1 on
/// failure (`value` unchanged).
///
/// # Safety
/// `key` is NULL or a NUL-terminated string; `value` is NULL or writable for
/// `KV739_MAX_VALUE + 1` bytes.
#[no_mangle]
pub unsafe extern "C" fn kv739_get(key: *const c_char, value: *mut c_char) -> c_int {
    const NAME: &str = "kv739_get";
    entry(NAME, || {
        // SAFETY: `key` is NULL or a NUL-terminated string by the contract.
        let key = match unsafe { read_key(key) } {
            Ok(key) => key,
            Err(why) => return fail(NAME, why),
        };
        if value.is_null() {
            return fail(NAME, "the value buffer is NULL");
        }
        let mut state = state();
        let Some(client) = state.as_mut() else {
            return fail(NAME, "not initialised; call kv739_init first");
        };
        let (found, bytes) = match client.get(&key) {
            Ok(Some(bytes)) => (OK, bytes),
            Ok(None) => (NOT_FOUND, Vec::new()),
            Err(error) => return fail(NAME, format_args!("key {key:?}: {error}")),
        };
        // SAFETY: `value` is non-NULL (checked) and holds KV739_MAX_VALUE + 1 bytes by
        // the contract; write_c_str refuses anything longer.
        if unsafe { write_c_str(value, &bytes) } {
            found
        } else {
            fail(NAME, "the value does not fit the buffer")
        }
    })
}

/// `int kv739_put(char *key, char *value, char *old_value)`: stores `value` (at most
/// KV739_MAX_VALUE bytes) under `key`. 0 and the previous value copied into
/// `old_value` if the key had one; 1 and `old_value` set to "" if it was new; -1 on
/// failure (`old_value` unchanged; the write may or may not have been applied).
///
/// # Safety
/// `key` and `value` are NULL or NUL-terminated strings; `old_value` is NULL or
/// writable for `KV739_MAX_VALUE + 1` bytes (it may be the same buffer as `value`).
#[no_mangle]
pub unsafe extern "C" fn kv739_put(
    key: *const c_char,
    value: *const c_char,
    old_value: *mut c_char,
) -> c_int {
    const NAME: &str = "kv739_put";
    entry(NAME, || {
        // SAFETY: `key` is NULL or a NUL-terminated string by the contract.
        let key = match unsafe { read_key(key) } {
            Ok(key) => key,
            Err(why) => return fail(NAME, why),
        };
        if value.is_null() {
            return fail(NAME, "the value is NULL");
        }
        if old_value.is_null() {
            return fail(NAME, "the old_value buffer is NULL");
        }
        // SAFETY: `value` is non-NULL (checked) and a NUL-terminated string by the
        // contract. It is copied out here, so `old_value` may alias it.
        let Some(new_value) = (unsafe { read_c_str(value, MAX_VALUE_BYTES) }) else {
            return fail(
                NAME,
                format_args!("the value is longer than KV739_MAX_VALUE ({MAX_VALUE_BYTES} bytes)"),
            );
        };
        let mut state = state();
        let Some(client) = state.as_mut() else {
            return fail(NAME, "not initialised; call kv739_init first");
        };
        let (had_value, old) = match client.put(&key, &new_value) {
            Ok(Some(old)) => (OK, old),
            Ok(None) => (NOT_FOUND, Vec::new()),
            Err(error) => return fail(NAME, format_args!("key {key:?}: {error}")),
        };
        // SAFETY: `old_value` is non-NULL (checked) and holds KV739_MAX_VALUE + 1 bytes
        // by the contract; write_c_str refuses anything longer.
        if unsafe { write_c_str(old_value, &old) } {
            had_value
        } else {
            fail(NAME, "the old value does not fit the buffer")
        }
    })
}

/// `int kv739_set_token(const char *token)`: sets the access token sent as
/// `Authorization: Bearer <token>` (replacing `MESHKV_TOKEN`'s); NULL clears it. 0, or
/// -1 if not initialised or the token is not 1 to 4096 visible ASCII characters.
///
/// # Safety
/// `token` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn kv739_set_token(token: *const c_char) -> c_int {
    const NAME: &str = "kv739_set_token";
    entry(NAME, || {
        let token = if token.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and a NUL-terminated string by the contract.
            let bytes = unsafe { read_c_str(token, MAX_TOKEN_BYTES) };
            match bytes.as_deref().map(Token::new) {
                Some(Ok(token)) => Some(token),
                Some(Err(error)) => return fail(NAME, error),
                None => {
                    return fail(
                        NAME,
                        format_args!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
                    )
                }
            }
        };
        let mut state = state();
        let Some(client) = state.as_mut() else {
            return fail(NAME, "not initialised; call kv739_init first");
        };
        client.set_token(token);
        OK
    })
}

/// `int kv739_current_server(char *buffer, size_t size)`: copies the `host:port` the
/// next call will try first (the last one that answered) into `buffer`. 0, or -1 if
/// not initialised, `buffer` is NULL or `size` is too small.
///
/// # Safety
/// `buffer` is NULL or writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn kv739_current_server(buffer: *mut c_char, size: usize) -> c_int {
    const NAME: &str = "kv739_current_server";
    entry(NAME, || {
        if buffer.is_null() {
            return fail(NAME, "the buffer is NULL");
        }
        let state = state();
        let Some(client) = state.as_ref() else {
            return fail(NAME, "not initialised; call kv739_init first");
        };
        let server = client.current_server().to_string();
        if server.len() >= size {
            return fail(
                NAME,
                format_args!("the buffer needs {} bytes", server.len() + 1),
            );
        }
        let out = buffer.cast::<u8>();
        // SAFETY: server.len() + 1 <= size (checked), and `buffer` is writable for
        // `size` bytes by the contract; `server` is our own memory.
        unsafe {
            ptr::copy_nonoverlapping(server.as_ptr(), out, server.len());
            *out.add(server.len()) = 0;
        }
        OK
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    fn c(text: &str) -> CString {
        CString::new(text).expect("no NUL")
    }

    /// One test for the whole C surface, because it shares one global state.
    #[test]
    fn the_c_api_checks_its_arguments_and_its_state() {
        let mut buffer = [0x55 as c_char; MAX_VALUE_BYTES + 1];
        let key = c("k");
        let long_key = c(&"k".repeat(MAX_KEY_BYTES + 1));
        let bracket_key = c("a[0]");
        let long_value = c(&"v".repeat(MAX_VALUE_BYTES + 1));
        let junk = c("not a server");
        // Port 1 on loopback: nothing listens, so every request fails fast.
        let dead = c("127.0.0.1:1");
        let no_servers = [ptr::null()];
        let only_junk = [junk.as_ptr(), ptr::null()];
        let one_dead = [junk.as_ptr(), dead.as_ptr(), ptr::null()];

        // SAFETY: every pointer below is NULL, a CString that outlives the call, a
        // NULL-terminated array of them, or `buffer` (KV739_MAX_VALUE + 1 bytes).
        unsafe {
            assert_eq!(kv739_shutdown(), FAILED, "not initialised yet");
            assert_eq!(kv739_get(key.as_ptr(), buffer.as_mut_ptr()), FAILED);
            assert_eq!(kv739_set_token(ptr::null()), FAILED);
            assert_eq!(kv739_init(ptr::null()), FAILED);
            assert_eq!(kv739_init(no_servers.as_ptr()), FAILED);
            assert_eq!(kv739_init(only_junk.as_ptr()), FAILED);

            assert_eq!(kv739_init(one_dead.as_ptr()), OK, "junk is skipped");
            assert_eq!(kv739_init(one_dead.as_ptr()), FAILED, "already initialised");
            assert_eq!(kv739_current_server(buffer.as_mut_ptr(), buffer.len()), OK);
            let current = std::ffi::CStr::from_ptr(buffer.as_ptr());
            assert_eq!(current.to_str(), Ok("127.0.0.1:1"));
            assert_eq!(kv739_current_server(buffer.as_mut_ptr(), 11), FAILED);

            buffer.fill(0x55);
            let out = buffer.as_mut_ptr();
            for bad in [ptr::null(), long_key.as_ptr(), bracket_key.as_ptr()] {
                assert_eq!(kv739_get(bad, out), FAILED);
                assert_eq!(kv739_put(bad, key.as_ptr(), out), FAILED);
            }
            assert_eq!(kv739_get(key.as_ptr(), ptr::null_mut()), FAILED);
            assert_eq!(kv739_put(key.as_ptr(), ptr::null(), out), FAILED);
            assert_eq!(
                kv739_put(key.as_ptr(), key.as_ptr(), ptr::null_mut()),
                FAILED
            );
            assert_eq!(kv739_put(key.as_ptr(), long_value.as_ptr(), out), FAILED);
            // A well-formed call fails only because no server answers.
            assert_eq!(kv739_get(key.as_ptr(), out), FAILED);
            assert_eq!(buffer[0], 0x55, "a failed call leaves the buffer alone");

            assert_eq!(kv739_set_token(c("t0ken").as_ptr()), OK);
            assert_eq!(kv739_set_token(c("two words").as_ptr()), FAILED);
            assert_eq!(kv739_set_token(ptr::null()), OK);

            assert_eq!(kv739_shutdown(), OK);
            assert_eq!(kv739_shutdown(), FAILED, "already shut down");
            assert_eq!(kv739_init(one_dead.as_ptr()), OK, "init works again");
            assert_eq!(kv739_shutdown(), OK);
        }
    }

    #[test]
    fn c_strings_are_read_within_their_bound_and_written_whole() {
        let short = c("abc");
        let exact = c("abcd");
        // SAFETY: CStrings are NUL-terminated and outlive the calls.
        unsafe {
            assert_eq!(read_c_str(short.as_ptr(), 4), Some(b"abc".to_vec()));
            assert_eq!(read_c_str(exact.as_ptr(), 4), Some(b"abcd".to_vec()));
            assert_eq!(read_c_str(exact.as_ptr(), 3), None);
        }
        let mut buffer = [0x55 as c_char; MAX_VALUE_BYTES + 1];
        // SAFETY: `buffer` holds KV739_MAX_VALUE + 1 bytes.
        unsafe {
            assert!(write_c_str(buffer.as_mut_ptr(), b"xy"));
            assert_eq!(&buffer[..3], &[b'x' as c_char, b'y' as c_char, 0]);
            assert!(!write_c_str(buffer.as_mut_ptr(), b"a\0b"));
            assert!(!write_c_str(
                buffer.as_mut_ptr(),
                &[b'v'; MAX_VALUE_BYTES + 1]
            ));
            assert!(write_c_str(buffer.as_mut_ptr(), &[b'v'; MAX_VALUE_BYTES]));
            assert_eq!(buffer[MAX_VALUE_BYTES], 0);
        }
    }
}
