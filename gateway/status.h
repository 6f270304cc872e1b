/*
 * status.h - the admin's status page: the /metrics exposition turned into
 * JSON (/status.json), a short history of request totals for its chart, and
 * the page itself (/), which draws both and asks for nothing else.
 */
#ifndef FG_STATUS_H
#define FG_STATUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* 10 minutes of points, one every 5 s. */
#define STATUS_SAMPLE_MS 5000
#define STATUS_POINTS 120

/* The HTML of GET / (gateway/status_page.html, compiled in). */
extern const char status_page_html[];

/*
 * Every family of a Prometheus text exposition (format 0.0.4), by name:
 *
 *   {"flowgate_x": {"type": "counter", "help": "...",
 *                   "samples": [{"labels": {"route": "api"}, "value": 3}, ...]}}
 *
 * A histogram's _bucket, _sum and _count samples belong to its family and
 * carry their own "name"; a sample with no TYPE before it makes an "untyped"
 * family. Values are integers when whole, else reals; NaN and infinities are
 * null (JSON has neither). Lines that do not parse are skipped. NULL only
 * when out of memory.
 */
json_t *status_families(const char *text, size_t len);

/* One point of the history: request totals at a moment. */
struct status_point {
    double t;            /* seconds since the epoch */
    uint64_t requests;   /* finished requests, in all */
    uint64_t classes[5]; /* of them 1xx .. 5xx; valid when by_class */
    bool by_class;       /* the exposition had flowgate_requests_total{code} */
};

/* The last STATUS_POINTS points, oldest overwritten. */
struct status_history {
    struct status_point points[STATUS_POINTS];
    unsigned next;  /* where the next point goes */
    unsigned count; /* how many are held */
};

/* Add the totals of FAMILIES (status_families) at time T: from
 * flowgate_requests_total{code} when present, by status class, else from
 * flowgate_requests_finished_total. */
void status_history_add(struct status_history *h, json_t *families, double t);

/* The points, oldest first: [{"t": ..., "requests": ..., "classes":
 * {"1xx": ..., ..., "5xx": ...}}, ...] ("classes" only when known). NULL
 * when out of memory. */
json_t *status_history_json(const struct status_history *h);

#endif
