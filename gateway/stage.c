/*
 * stage.c - the stage table and what the engine offers stages.
 */
#include <string.h>

#include "cors.h"
#include "jwtauth.h"
#include "preview.h"
#include "ratelimit.h"
#include "req.h"
#include "route.h"
#include "stage.h"
#include "worker.h"

_Static_assert(6 <= WORKER_STAGES_MAX, "worker stage slots");

/*
 * CORS comes first, before the route's own checks: a preflight is answered
 * before a method list, a token or a limit is looked at, and flowgate's 404
 * and 405 carry the CORS headers like every other response. The preview
 * stage comes last: a request refused by a token or a limit never costs a
 * DNS query (random preview names cannot flood the resolver past the rate
 * limit).
 */
const struct stage *const stage_table[] = {&cors_stage,      &route_stage,   &jwtauth_stage,
                                          &ratelimit_stage, &preview_stage, NULL};

enum stage_verdict stage_answer(struct req *r, enum fg_error e, const char *why)
{
    r->answer = e;
    if (why != NULL && r->error_code == NULL)
        r->error_code = why;
    return STAGE_ANSWERED;
}

enum stage_header stages_request_header(const struct req *r, const struct h1_header *h,
                                        struct wbuf *b)
{
    for (const struct stage *const *s = r->w->stages; *s; s++) {
        if ((*s)->request_header == NULL)
            continue;
        enum stage_header v = (*s)->request_header(r, h, b);
        if (v != STAGE_HDR_DEFAULT)
            return v;
    }
    return STAGE_HDR_DEFAULT;
}

enum stage_header stages_response_header(const struct req *r, const struct h1_header *h)
{
    for (const struct stage *const *s = r->w->stages; *s; s++) {
        if ((*s)->response_header == NULL)
            continue;
        enum stage_header v = (*s)->response_header(r, h);
        if (v != STAGE_HDR_DEFAULT)
            return v;
    }
    return STAGE_HDR_DEFAULT;
}

void stages_response_end(const struct req *r, const struct h1_header *hs, size_t n,
                         struct wbuf *b)
{
    for (const struct stage *const *s = r->w->stages; *s; s++)
        if ((*s)->response_end)
            (*s)->response_end(r, hs, n, b);
}

size_t stages_response_end_room(const struct req *r)
{
    size_t room = 0;

    for (const struct stage *const *s = r->w->stages; *s; s++)
        room += (*s)->response_end_room;
    return room;
}

/* S's place in W's table, which holds it (a stage only asks for its own). */
static size_t slot(const struct worker *w, const struct stage *s)
{
    size_t i = 0;

    while (w->stages[i] != s)
        i++;
    return i;
}

void *stage_worker_data(const struct worker *w, const struct stage *s)
{
    return __atomic_load_n(&w->stage_data[slot(w, s)], __ATOMIC_ACQUIRE);
}

void stage_set_worker_data(struct worker *w, const struct stage *s, void *data)
{
    __atomic_store_n(&w->stage_data[slot(w, s)], data, __ATOMIC_RELEASE);
}

bool stages_need_resolver(const struct worker *w, const struct fg_config *cfg)
{
    for (const struct stage *const *s = w->stages; *s; s++)
        if ((*s)->needs_resolver && (*s)->needs_resolver(cfg))
            return true;
    return false;
}

int stages_worker_init(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen)
{
    for (const struct stage *const *s = w->stages; *s; s++)
        if ((*s)->worker_init && (*s)->worker_init(w, cfg, err, errlen) < 0)
            return -1;
    return 0;
}

int stages_worker_reload(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen)
{
    for (const struct stage *const *s = w->stages; *s; s++)
        if ((*s)->worker_reload && (*s)->worker_reload(w, cfg, err, errlen) < 0)
            return -1;
    return 0;
}

void stages_worker_stop(struct worker *w)
{
    for (const struct stage *const *s = w->stages; *s; s++)
        if ((*s)->worker_stop)
            (*s)->worker_stop(w);
}

void stages_worker_free(struct worker *w)
{
    for (const struct stage *const *s = w->stages; *s; s++)
        if ((*s)->worker_free)
            (*s)->worker_free(w);
}
