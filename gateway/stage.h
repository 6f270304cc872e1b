/*
 * stage.h - the request stages: policy outside the engine.
 *
 * After a request head is parsed and routed, the engine (req.c) runs the
 * ordered stage table (stage.c: CORS, route checks, JWT, rate limit,
 * previews). A stage's run() decides, and only decides:
 *
 *   STAGE_NEXT      go on to the next stage;
 *   STAGE_ANSWERED  answer with the error the stage set (stage_answer());
 *                   the engine writes the answer, logs and finishes;
 *   STAGE_WAIT      the stage waits for something asynchronous (Redis, DNS)
 *                   and calls RESUME(r, verdict) exactly once when it is done,
 *                   unless the engine called its cancel() first (the client
 *                   left, a timeout fired): after cancel(), nothing of the
 *                   pending call may reach the request again.
 *
 * A stage never writes a response, never touches the connection and never
 * frees the request: the engine owns every ending. Around the forwarded
 * exchange a stage shapes heads through hooks (all optional):
 *
 *   request_header   each client header on its way upstream: keep it, drop
 *                    it, or write a replacement (preview cookie stripping);
 *   response_header  each upstream response header on its way to the client:
 *                    keep it though flowgate sets its own, drop it, or no
 *                    opinion (preview framing and cookie rules, CORS);
 *   response_end     lines appended to every response head, upstream's or
 *                    flowgate's own (CORS Vary);
 *
 * and it keeps per-worker state (worker_*) and publishes metrics. Adding a
 * stage is a new file and one line in the table; the engine, the proxy, the
 * responder, the worker and the admin listener name no stage.
 */
#ifndef FG_STAGE_H
#define FG_STAGE_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>

#include "respond.h"

struct req;
struct wbuf;
struct worker;
struct fg_config;
struct h1_header;

enum stage_verdict {
    STAGE_NEXT = 0,     /* go on to the next stage */
    STAGE_ANSWERED = 1, /* the request gets the answer the stage set */
    STAGE_WAIT = 2,     /* the stage calls its resume function later */
};

/* A header's fate, as a hook decides it. */
enum stage_header {
    STAGE_HDR_DEFAULT = 0, /* no opinion: the engine's rules apply */
    STAGE_HDR_KEEP = 1,    /* pass it as it is (even one flowgate also sets) */
    STAGE_HDR_DROP = 2,    /* never let it through */
    STAGE_HDR_WRITTEN = 3, /* the hook wrote its own version instead */
};

/* The engine's continuation, handed to run(): call it once with the verdict. */
typedef void (*stage_resume_fn)(struct req *r, enum stage_verdict v);

struct stage {
    const char *name; /* for logs */
    enum stage_verdict (*run)(struct req *r, stage_resume_fn resume);
    /* The request ended while run() waited: detach the pending call. */
    void (*cancel)(struct req *r);
    enum stage_header (*request_header)(const struct req *r, const struct h1_header *h,
                                        struct wbuf *b);
    enum stage_header (*response_header)(const struct req *r, const struct h1_header *h);
    /* HS/N: the upstream's response headers (NULL/0 for flowgate's own). */
    void (*response_end)(const struct req *r, const struct h1_header *hs, size_t n,
                         struct wbuf *b);
    size_t response_end_room; /* most bytes response_end writes beyond HS */
    /* Does the stage look names up through the worker's resolver under CFG? */
    bool (*needs_resolver)(const struct fg_config *cfg);
    /* Per-worker state: made with the worker, kept or rebuilt on a reload,
     * stopped when the worker drains, freed after its connections. */
    int (*worker_init)(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen);
    int (*worker_reload)(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen);
    void (*worker_stop)(struct worker *w);
    void (*worker_free)(struct worker *w);
    /* Prometheus text for /metrics, summed over the N workers. */
    void (*metrics)(const struct fg_config *cfg, const struct worker *ws, unsigned n,
                    struct evbuffer *out);
    /* A dependency /readyz reports ("redis"), and its state ("up"). */
    const char *health_name;
    const char *(*health)(const struct fg_config *cfg, const struct worker *ws, unsigned n);
    /* More about it for /readyz: JSON members, each after a comma, into BUF
     * (room for LEN; cut short when there is no room). */
    void (*health_detail)(const struct fg_config *cfg, const struct worker *ws, unsigned n,
                          char *buf, size_t len);
};

/* The table, in order, NULL-terminated (stage.c): every worker runs it
 * (worker->stages). */
extern const struct stage *const stage_table[];

/* Answer R with error E: WHY (when not NULL) is the access log's error
 * field. The response carries the lines the stages added (req_add_header). */
enum stage_verdict stage_answer(struct req *r, enum fg_error e, const char *why);

/* A stage's per-worker state (NULL before its worker_init set one).
 * Published for the admin thread: set with release, read with acquire. */
void *stage_worker_data(const struct worker *w, const struct stage *s);
void stage_set_worker_data(struct worker *w, const struct stage *s, void *data);

/* The head hooks of every stage, in table order: the first opinion other
 * than STAGE_HDR_DEFAULT decides a header. */
enum stage_header stages_request_header(const struct req *r, const struct h1_header *h,
                                        struct wbuf *b);
enum stage_header stages_response_header(const struct req *r, const struct h1_header *h);
void stages_response_end(const struct req *r, const struct h1_header *hs, size_t n,
                         struct wbuf *b);
size_t stages_response_end_room(const struct req *r);

/* Does any stage of W's table need the resolver under CFG? */
bool stages_need_resolver(const struct worker *w, const struct fg_config *cfg);

/* Every stage's worker hook in turn; 0 or -1 with ERR. */
int stages_worker_init(struct worker *w, const struct fg_config *cfg, char *err, size_t errlen);
int stages_worker_reload(struct worker *w, const struct fg_config *cfg, char *err,
                         size_t errlen);
void stages_worker_stop(struct worker *w);
void stages_worker_free(struct worker *w);

#endif
