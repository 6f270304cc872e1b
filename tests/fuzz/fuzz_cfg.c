/*
 * fuzz_cfg.c - libFuzzer target for the configuration loader.
 *
 * The input is a configuration text. Whatever it holds, the loader must not
 * crash, leak or over-read; a refusal must leave a terminated, non-empty
 * message; an accepted snapshot must satisfy the invariants requests rely on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static void check_snapshot(const struct fg_config *cfg)
{
    CHECK(cfg->refcount == 1);
    CHECK(cfg->workers > 0);
    CHECK(cfg->nhttps + cfg->nhttp > 0);
    CHECK(cfg->nhttps == 0 || cfg->tls.ncerts > 0);
    CHECK(strlen(cfg->headers.block_https) == cfg->headers.block_https_len);
    CHECK(strlen(cfg->headers.block_http) == cfg->headers.block_http_len);
    CHECK(strstr(cfg->headers.block_http, "Strict-Transport-Security") == NULL);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct fg_route *r = &cfg->routes[i];

        CHECK(r->path[0] == '/' && strlen(r->path) == r->path_len);
        CHECK(r->upstream != NULL && r->upstream->nservers > 0);
        CHECK((r->methods == 0) == (r->allow == NULL));
        CHECK(i == 0 || cfg->routes[i - 1].path_len >= r->path_len);
        CHECK(r->auth == 0 || cfg->jwt.nkeys > 0);
    }
    for (size_t i = 0; i < cfg->jwt.nkeys; i++)
        CHECK(cfg->jwt.keys[i].secret_len >= 32);
    CHECK(!(cfg->cors.any_origin && cfg->cors.credentials));
    CHECK(!cfg->previews.enabled || cfg->previews.host_suffix[0] != '\0');
}

/* libconfig 1.5 loses its string buffer when a syntax error interrupts a
 * string literal; that leak is in the library, not in the loader. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libconfig.so\n";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fg_config *cfg;
    char err[1024];
    char *text;

    /* @include reads other files: that is libconfig's business, not ours,
     * and "/dev/stdin" would stall the run. */
    if (memmem(data, size, "@include", 8) != NULL)
        return 0;
    if ((text = malloc(size + 1)) == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    cfg = cfg_load_string(text, "fuzz.conf", err, sizeof(err));
    if (cfg == NULL) {
        CHECK(memchr(err, '\0', sizeof(err)) != NULL);
        CHECK(strncmp(err, "fuzz.conf:", 10) == 0);
    } else {
        check_snapshot(cfg);
        cfg_unref(cfg);
    }
    free(text);
    return 0;
}
