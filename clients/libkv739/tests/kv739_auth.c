/*
 * kv739_auth: checks libkv739's client tokens against a live meshkv cluster whose
 * cluster file has client_tokens_file (docs/API.md §3.6).
 *
 *     KV739_READ_TOKEN=... KV739_WRITE_TOKEN=... kv739_auth HOST:PORT...
 *
 * The tokens come from the environment, never from the arguments (they would show in
 * process listings). Checks, on a key of its own (named after the process id):
 *   - without a token, get and put fail (401) and the key stays absent;
 *   - with a read token (kv739_set_token), put fails (403) and the key stays absent,
 *     and get of the absent key answers 1;
 *   - with a write token, put writes (1: a new key); with the read token, get reads it;
 *   - a token from MESHKV_TOKEN at kv739_init is sent too (a second put, 0: the key
 *     had a value), and a malformed MESHKV_TOKEN makes kv739_init fail.
 * Prints one line per failed check and a summary; exits 1 if any check failed, 2 on
 * bad arguments. Run by scripts/c-client-test.sh.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv739.h"

static int checks;
static int failed;

#define CHECK(ok, ...)                                                         \
    do {                                                                       \
        checks++;                                                              \
        if (!(ok)) {                                                           \
            failed++;                                                          \
            fprintf(stderr, "kv739_auth: FAILED (line %d): ", __LINE__);       \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

int main(int argc, char **argv)
{
    const char *read_token = getenv("KV739_READ_TOKEN");
    const char *write_token = getenv("KV739_WRITE_TOKEN");
    char key[64];
    char value[KV739_MAX_VALUE + 1];
    char old[KV739_MAX_VALUE + 1];
    int rc;

    if (argc < 2 || !read_token || !write_token) {
        fprintf(stderr, "usage: KV739_READ_TOKEN=... KV739_WRITE_TOKEN=... %s HOST:PORT...\n",
                argv[0]);
        return 2;
    }
    snprintf(key, sizeof key, "kv739-auth/%ld", (long)getpid());
    unsetenv("MESHKV_TOKEN");

    /* No token: refused, nothing written. */
    CHECK(kv739_init(argv + 1) == 0, "init");
    rc = kv739_put(key, "v1", old);
    CHECK(rc == -1, "put without a token returned %d, expected -1 (401)", rc);
    rc = kv739_get(key, value);
    CHECK(rc == -1, "get without a token returned %d, expected -1 (401)", rc);

    /* A read token: put refused, the key still absent. */
    CHECK(kv739_set_token(read_token) == 0, "set the read token");
    rc = kv739_put(key, "v1", old);
    CHECK(rc == -1, "put with a read token returned %d, expected -1 (403)", rc);
    rc = kv739_get(key, value);
    CHECK(rc == 1, "get with a read token returned %d, expected 1 (absent)", rc);

    /* A write token writes; the read token reads it. */
    CHECK(kv739_set_token(write_token) == 0, "set the write token");
    rc = kv739_put(key, "v1", old);
    CHECK(rc == 1, "put with a write token returned %d, expected 1 (a new key)", rc);
    CHECK(kv739_set_token(read_token) == 0, "set the read token again");
    rc = kv739_get(key, value);
    CHECK(rc == 0 && strcmp(value, "v1") == 0, "get with a read token returned %d, \"%s\"", rc,
          rc == 0 ? value : "");
    CHECK(kv739_set_token(NULL) == 0, "clear the token");
    rc = kv739_get(key, value);
    CHECK(rc == -1, "get after clearing the token returned %d, expected -1", rc);
    CHECK(kv739_shutdown() == 0, "shutdown");

    /* The token of MESHKV_TOKEN, read by kv739_init. */
    setenv("MESHKV_TOKEN", write_token, 1);
    CHECK(kv739_init(argv + 1) == 0, "init with MESHKV_TOKEN");
    rc = kv739_put(key, "v2", old);
    CHECK(rc == 0 && strcmp(old, "v1") == 0, "put with MESHKV_TOKEN returned %d, old \"%s\"", rc,
          rc == 0 ? old : "");
    CHECK(kv739_shutdown() == 0, "shutdown");
    setenv("MESHKV_TOKEN", "two words", 1);
    CHECK(kv739_init(argv + 1) == -1, "init with a malformed MESHKV_TOKEN must fail");
    unsetenv("MESHKV_TOKEN");

    printf("kv739_auth: %d checks, %d failed\n", checks, failed);
    return failed ? 1 : 0;
}
