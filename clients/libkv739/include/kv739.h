/*
 * kv739.h - the CS739 key-value client library, for meshkv.
 *
 * The course's interface (keys of at most 128 printable characters without '[' or
 * ']', values of at most 2048 printable characters), implemented by libkv739.so on
 * top of meshkv's HTTP API. Build and link:
 *
 *     cargo build --release -p kv739
 *     cc prog.c -I clients/libkv739/include -L target/release -lkv739 \
 *        -Wl,-rpath,"$PWD/target/release" -o prog
 *
 * Servers: a call talks to the current server; on a connection error, a timeout
 * (connect 1 s, whole request 3 s), a 408 or a 5xx (503 included: a node starting,
 * fenced, or unable to meet the consistency level), it moves on to the next server of
 * the list, round-robin, trying each at most once per call. The server that answered
 * stays current. A put that failed over may have been applied by the server that
 * failed too; old_value then comes from the server that answered.
 *
 * Tokens: a session token a server sends (header Meshkv-Session) is sent back on
 * every later request (dropped, with a line on stderr, when no server can catch up
 * with it: a node whose recent writes it covers is down). If the environment variable MESHKV_TOKEN is set when
 * kv739_init runs, every request carries "Authorization: Bearer <token>"; see also
 * kv739_set_token. The token is never printed.
 *
 * Errors: every -1 comes with one line on stderr, starting "kv739: ".
 *
 * Threads: every function is thread-safe; calls run one at a time (one mutex held
 * for the whole call, network included). Processes: a child of fork() must not use
 * the parent's state (it would share its pooled connections): fork before
 * kv739_init, or call kv739_shutdown and then kv739_init in the child.
 *
 * Strings: every char * argument is NULL or a NUL-terminated string. The library
 * never reads more than the limit plus one byte of a key or value, and never writes
 * more than KV739_MAX_VALUE + 1 bytes into a value buffer.
 */
#ifndef KV739_H
#define KV739_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The longest key, in bytes (not counting the terminating NUL). */
#define KV739_MAX_KEY 128
/* The longest value, in bytes (not counting the terminating NUL). Every value buffer
 * passed to kv739_get and kv739_put holds at least KV739_MAX_VALUE + 1 bytes. */
#define KV739_MAX_VALUE 2048

/*
 * Starts the library with a NULL-terminated list of "host:port" strings (an
 * "http://" prefix is tolerated; IPv6 as "[::1]:7001"), e.g.
 *     char *servers[] = {"127.0.0.11:7001", "127.0.0.12:7002", NULL};
 * The first server is the current one. Servers need not be up. Entries that do not
 * parse are skipped with a message.
 * Returns 0, or -1 if the list is NULL, no entry parses, MESHKV_TOKEN is malformed,
 * or the library is already initialised (call kv739_shutdown first).
 */
int kv739_init(char **servers);

/*
 * Frees the library's state; kv739_init may be called again afterwards.
 * Returns 0, or -1 if the library was not initialised.
 */
int kv739_shutdown(void);

/*
 * Reads key. value holds at least KV739_MAX_VALUE + 1 bytes.
 * Returns 0: found, its value copied into value (NUL-terminated);
 *         1: absent, value set to "";
 *        -1: failure (bad key, not initialised, no server could answer, or a stored
 *            value longer than KV739_MAX_VALUE or containing a NUL byte); value is
 *            left unchanged.
 * A bad key is NULL, empty, longer than KV739_MAX_KEY, or contains '[', ']', a
 * control character or invalid UTF-8.
 */
int kv739_get(const char *key, char *value);

/*
 * Writes value (at most KV739_MAX_VALUE bytes) under key. old_value holds at least
 * KV739_MAX_VALUE + 1 bytes; it may be the same buffer as value.
 * Returns 0: the key had a value, copied into old_value (NUL-terminated);
 *         1: the key was new, old_value set to "";
 *        -1: failure (bad key or value, not initialised, no server could answer, or
 *            the old value cannot be returned: longer than KV739_MAX_VALUE or with a
 *            NUL byte, in which case the write was applied); old_value is left
 *            unchanged.
 */
int kv739_put(const char *key, const char *value, char *old_value);

/*
 * Extra: sets the access token sent as "Authorization: Bearer <token>" on every
 * request, replacing the one from MESHKV_TOKEN; NULL clears it. Call after
 * kv739_init; kv739_shutdown forgets it.
 * Returns 0, or -1 if not initialised or the token is not 1 to 4096 visible ASCII
 * characters.
 */
int kv739_set_token(const char *token);

/*
 * Extra: copies the "host:port" of the current server (the one the next call tries
 * first: the last one that answered) into buffer, NUL-terminated.
 * Returns 0, or -1 if not initialised, buffer is NULL or size is too small.
 */
int kv739_current_server(char *buffer, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* KV739_H */
