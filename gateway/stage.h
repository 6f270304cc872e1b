/*
 * stage.h - the request stages: policy outside the engine.
 *
 * After a request head is parsed, routed and checked, the engine runs an
 * ordered list of stages (CORS, JWT, rate limit, ...). Each stage decides:
 * go on, answer the request itself (respond_error and friends), or wait for
 * something asynchronous (Redis) and call stage_resume() when it is done.
 * The engine knows nothing of what a stage does. A stage that waits must
 * register a cancel function, so that a request that dies while waiting
 * (client gone, timeout) detaches the pending call: a late reply then finds
 * nothing to touch.
 */
#ifndef FG_STAGE_H
#define FG_STAGE_H

struct req;

enum stage_verdict {
    STAGE_NEXT = 0,     /* go on to the next stage */
    STAGE_ANSWERED = 1, /* the stage responded; stop */
    STAGE_WAIT = 2,     /* the stage will call stage_resume() later */
};

struct stage {
    const char *name;                     /* for logs */
    enum stage_verdict (*run)(struct req *r);
};

/* Resume a request that a stage left waiting, with that stage's verdict.
 * With STAGE_ANSWERED the request is already finished (its memory may be
 * gone): R is not touched, and the caller must not touch it either. */
void stage_resume(struct req *r, enum stage_verdict verdict);

/* While a stage waits, CANCEL(ARG) is called if the request ends first. */
void stage_set_cancel(struct req *r, void (*cancel)(void *arg), void *arg);

#endif
