/*
 * kv739_test: checks libkv739 against a live meshkv cluster, through a node kill.
 *
 *     kv739_test PUTS KILL_AFTER KILL_COMMAND HOST:PORT...
 *
 * Writes PUTS values over a few keys through the first server, each put followed by
 * a get of the same key. After KILL_AFTER puts it runs KILL_COMMAND with system(); the
 * command must kill the first server (the one the library is talking to). Checks:
 *   - every put and get succeeds, across the kill (failover to the next server);
 *   - every get returns the latest value written; after the kill, every key reads
 *     back its latest value from the surviving nodes;
 *   - put returns 1 for a new key and 0 with the previous value in old_value after;
 *   - absent keys give 1; bad keys (NULL, empty, too long, '[' ']') and too-long
 *     values give -1; the longest key and value round-trip;
 *   - init/shutdown misuse gives -1; init works again after shutdown;
 *   - kv739_set_token accepts and clears a token and refuses a malformed one.
 * Prints one line per failed check and a summary; exits 1 if any check failed, 2 on
 * bad arguments. Run by scripts/c-client-test.sh.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kv739.h"

#define KEYS 8

static int checks;
static int failed;

#define CHECK(ok, ...) check((ok), __LINE__, __VA_ARGS__)

static void check(int ok, int line, const char *format, ...)
{
    va_list args;

    checks++;
    if (ok)
        return;
    failed++;
    fprintf(stderr, "kv739_test: FAILED (line %d): ", line);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* The current server, or "?" if the library cannot say. */
static const char *current(void)
{
    static char server[256];

    if (kv739_current_server(server, sizeof server) != 0)
        strcpy(server, "?");
    return server;
}

/* Checks that key reads back as expected. */
static void check_get(const char *key, const char *expected)
{
    char value[KV739_MAX_VALUE + 1];
    int rc = kv739_get(key, value);

    CHECK(rc == 0, "get %s returned %d, expected 0", key, rc);
    if (rc == 0)
        CHECK(strcmp(value, expected) == 0, "get %s returned \"%.60s\", expected \"%.60s\"",
              key, value, expected);
}

/* Misuse before init, bad server lists, bad keys and values, the longest ones. */
static void check_edges(char **servers, const char *prefix)
{
    char value[KV739_MAX_VALUE + 1];
    char old[KV739_MAX_VALUE + 1];
    char key[KV739_MAX_KEY + 2];
    char *nonsense[] = {"not a server", NULL};
    char *empty[] = {NULL};
    int rc;

    CHECK(kv739_shutdown() == -1, "shutdown before init must fail");
    CHECK(kv739_get("k", value) == -1, "get before init must fail");
    CHECK(kv739_init(NULL) == -1, "init(NULL) must fail");
    CHECK(kv739_init(empty) == -1, "init with an empty list must fail");
    CHECK(kv739_init(nonsense) == -1, "init with no parseable server must fail");

    CHECK(kv739_init(servers) == 0, "init with the cluster's servers");
    CHECK(kv739_init(servers) == -1, "a second init without shutdown must fail");
    CHECK(strcmp(current(), servers[0]) == 0, "the first server is current, not %s", current());

    /* Bad keys. */
    memset(key, 'k', KV739_MAX_KEY + 1);
    key[KV739_MAX_KEY + 1] = '\0';
    CHECK(kv739_get(key, value) == -1, "get with a %d-byte key must fail", KV739_MAX_KEY + 1);
    CHECK(kv739_put(key, "v", old) == -1, "put with a %d-byte key must fail", KV739_MAX_KEY + 1);
    CHECK(kv739_get("", value) == -1, "get with an empty key must fail");
    CHECK(kv739_get(NULL, value) == -1, "get with a NULL key must fail");
    CHECK(kv739_put("a[1]", "v", old) == -1, "put with '[' in the key must fail");
    CHECK(kv739_get("a]", value) == -1, "get with ']' in the key must fail");

    /* An absent key, with characters that must be escaped in the URL. */
    snprintf(key, sizeof key, "%s/absent key?#%%&+", prefix);
    strcpy(value, "unchanged");
    rc = kv739_get(key, value);
    CHECK(rc == 1, "get of an absent key returned %d, expected 1", rc);
    CHECK(value[0] == '\0', "an absent key leaves value empty, not \"%s\"", value);

    /* The longest key and value round-trip; one byte more is refused. */
    memset(key, 'K', KV739_MAX_KEY);
    memcpy(key, prefix, strlen(prefix));
    key[KV739_MAX_KEY] = '\0';
    memset(value, 'x', KV739_MAX_VALUE);
    value[KV739_MAX_VALUE] = '\0';
    rc = kv739_put(key, value, old);
    CHECK(rc == 1, "put of the longest key and value returned %d, expected 1", rc);
    check_get(key, value);
    value[0] = 'y';
    rc = kv739_put(key, value, old);
    CHECK(rc == 0, "second put of the longest value returned %d, expected 0", rc);
    CHECK(rc != 0 || (strlen(old) == KV739_MAX_VALUE && old[0] == 'x'),
          "old_value of the longest value came back wrong (%zu bytes)", strlen(old));
    {
        static char too_long[KV739_MAX_VALUE + 2];

        memset(too_long, 'z', KV739_MAX_VALUE + 1);
        too_long[KV739_MAX_VALUE + 1] = '\0';
        CHECK(kv739_put(key, too_long, old) == -1, "put of a %d-byte value must fail",
              KV739_MAX_VALUE + 1);
    }
    check_get(key, value);
}

int main(int argc, char **argv)
{
    char keys[KEYS][KV739_MAX_KEY + 1];
    char latest[KEYS][KV739_MAX_VALUE + 1];
    char value[KV739_MAX_VALUE + 1];
    char old[KV739_MAX_VALUE + 1];
    char prefix[64];
    char killed[256] = "";
    char survivor[256] = "";
    double failover_ms = -1;
    long total_puts, kill_after, i;
    int gets = 0, rc, k;
    char **servers;

    if (argc < 5) {
        fprintf(stderr, "usage: %s PUTS KILL_AFTER KILL_COMMAND HOST:PORT...\n", argv[0]);
        return 2;
    }
    total_puts = strtol(argv[1], NULL, 10);
    kill_after = strtol(argv[2], NULL, 10);
    if (total_puts < 1 || kill_after < 1 || kill_after >= total_puts) {
        fprintf(stderr, "%s: expected 0 < KILL_AFTER < PUTS\n", argv[0]);
        return 2;
    }
    servers = &argv[4]; /* argv is NULL-terminated, like the list kv739_init takes */
    snprintf(prefix, sizeof prefix, "kv739-test-%ld-%ld", (long)getpid(), (long)time(NULL));

    printf("kv739_test: misuse and bad arguments (the library explains each -1 on stderr)\n");
    fflush(stdout);
    check_edges(servers, prefix);

    for (k = 0; k < KEYS; k++) {
        snprintf(keys[k], sizeof keys[k], "%s/key %d", prefix, k);
        latest[k][0] = '\0';
    }
    for (i = 0; i < total_puts; i++) {
        double started = now_ms();

        k = (int)(i % KEYS);
        /* Quotes and backslashes test the JSON of the PUT reply. */
        snprintf(value, sizeof value, "value %ld of \"%s\" \\ %s", i, keys[k], prefix);
        rc = kv739_put(keys[k], value, old);
        if (latest[k][0] == '\0') {
            CHECK(rc == 1, "put #%ld (new key %s) returned %d, expected 1", i, keys[k], rc);
        } else {
            CHECK(rc == 0, "put #%ld (%s) returned %d, expected 0", i, keys[k], rc);
            if (rc == 0)
                CHECK(strcmp(old, latest[k]) == 0,
                      "put #%ld (%s): old_value \"%.60s\", expected \"%.60s\"", i, keys[k], old,
                      latest[k]);
        }
        if (rc >= 0)
            strcpy(latest[k], value);
        check_get(keys[k], latest[k]);
        gets++;
        if (i == kill_after) {
            failover_ms = now_ms() - started;
            strcpy(survivor, current());
            CHECK(strcmp(survivor, killed) != 0, "still talking to %s after it was killed",
                  killed);
            /* Every key reads back its latest value from the surviving nodes. */
            for (k = 0; k < KEYS; k++, gets++)
                if (latest[k][0] != '\0')
                    check_get(keys[k], latest[k]);
        }
        if (i + 1 == kill_after) {
            strcpy(killed, current());
            CHECK(strcmp(killed, servers[0]) == 0, "expected to talk to %s before the kill, not %s",
                  servers[0], killed);
            printf("kv739_test: %ld puts done through %s; running: %s\n", kill_after, killed,
                   argv[3]);
            fflush(stdout);
            rc = system(argv[3]);
            CHECK(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0,
                  "the kill command failed (status %d)", rc);
        }
    }

    /* Shutdown, misuse, and a second life that starts again from the dead server. */
    CHECK(kv739_shutdown() == 0, "shutdown");
    CHECK(kv739_shutdown() == -1, "a second shutdown must fail");
    CHECK(kv739_init(servers) == 0, "init after shutdown");
    for (k = 0; k < KEYS; k++, gets++)
        check_get(keys[k], latest[k]);
    CHECK(strcmp(current(), servers[0]) != 0, "after a new init, still on the dead %s",
          servers[0]);

    /* The access token: set, used, cleared; a malformed one is refused. */
    CHECK(kv739_set_token("example-token") == 0, "set_token");
    check_get(keys[0], latest[0]);
    CHECK(kv739_set_token("two words") == -1, "set_token with a space must fail");
    CHECK(kv739_set_token(NULL) == 0, "set_token(NULL) clears the token");
    gets++;
    CHECK(kv739_shutdown() == 0, "final shutdown");

    printf("kv739_test: %ld puts and %d gets over %d keys; killed %s after %ld puts, "
           "failed over to %s (first put+get after the kill: %.1f ms)\n",
           total_puts, gets, KEYS, killed, kill_after, survivor, failover_ms);
    printf("kv739_test: %d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
