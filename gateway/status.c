/*
 * status.c - the exposition as JSON, the history of request totals, and the
 * status page's HTML.
 *
 * /status.json is made from the /metrics text itself rather than from the
 * counters: every family the exposition has, now or later, is in the JSON
 * with no second list to keep in step, and the page shows what it knows by
 * name. The parser reads the subset of the text format flowgate writes
 * (https://prometheus.io/docs/instrumenting/exposition_formats/), and skips
 * any line it cannot read rather than failing the whole page.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"

const char status_page_html[] =
#include "status_page.h"
    ;

/* A line of the exposition: [p, end), and scratch room for its parts (at
 * least as long as the line, plus one). */
struct expo_line {
    const char *p;
    const char *end;
    char *scratch;
};

static void skip_blanks(struct expo_line *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t'))
        l->p++;
}

/* A metric or label name at l->p, copied NUL-terminated into OUT (room for
 * the rest of the line). Its length; 0 when there is none. */
static size_t take_name(struct expo_line *l, char *out)
{
    size_t n = 0;

    while (l->p < l->end && (isalnum((unsigned char)*l->p) || *l->p == '_' || *l->p == ':'))
        out[n++] = *l->p++;
    out[n] = '\0';
    return n;
}

/* The rest of the word at l->p (up to a blank), NUL-terminated into OUT. */
static size_t take_word(struct expo_line *l, char *out)
{
    size_t n = 0;

    while (l->p < l->end && *l->p != ' ' && *l->p != '\t')
        out[n++] = *l->p++;
    out[n] = '\0';
    return n;
}

/* A whole number as an integer, so that counters read as counters; JSON has
 * no NaN nor infinities: they are null. */
static json_t *number(double v)
{
    if (!isfinite(v))
        return json_null();
    if (v == trunc(v) && fabs(v) < 9007199254740992.0) /* 2^53: exact in a double */
        return json_integer((json_int_t)v);
    return json_real(v);
}

/* The family NAME, made untyped with no help and no samples when new. */
static json_t *family_get(json_t *fams, const char *name)
{
    json_t *f = json_object_get(fams, name);

    if (f == NULL) {
        f = json_pack("{s:s, s:s, s:[]}", "type", "untyped", "help", "", "samples");
        if (f == NULL || json_object_set_new(fams, name, f) < 0)
            return NULL;
    }
    return f;
}

/* HELP text unescaped in place: "\\" and "\n" are the only escapes. */
static void unescape_help(char *s)
{
    char *out = s;

    for (; *s; s++) {
        if (*s == '\\' && (s[1] == '\\' || s[1] == 'n')) {
            s++;
            *out++ = *s == 'n' ? '\n' : '\\';
        } else {
            *out++ = *s;
        }
    }
    *out = '\0';
}

/* "# HELP name text" or "# TYPE name type"; any other comment is ignored,
 * and so is text that is not UTF-8. 0, or -1 when out of memory. */
static int parse_comment(json_t *fams, struct expo_line *l)
{
    char *name = l->scratch, *rest;
    bool help;

    l->p++;
    skip_blanks(l);
    if (l->end - l->p >= 4 && memcmp(l->p, "HELP", 4) == 0)
        help = true;
    else if (l->end - l->p >= 4 && memcmp(l->p, "TYPE", 4) == 0)
        help = false;
    else
        return 0;
    l->p += 4;
    skip_blanks(l);
    size_t n = take_name(l, name);
    if (n == 0)
        return 0;
    skip_blanks(l);
    rest = name + n + 1;
    memcpy(rest, l->p, (size_t)(l->end - l->p));
    rest[l->end - l->p] = '\0';
    json_t *f = family_get(fams, name);
    if (f == NULL)
        return -1;
    if (help)
        unescape_help(rest);
    else
        rest[strcspn(rest, " \t")] = '\0';
    json_t *text = json_string(rest);
    return text ? json_object_set_new(f, help ? "help" : "type", text) : 0;
}

/* The label set after '{': name="value" pairs, comma-separated, with the
 * value's escapes \\, \" and \n. 0, or -1 when it does not parse. */
static int parse_labels(struct expo_line *l, json_t *labels)
{
    char *key = l->scratch;

    for (;;) {
        skip_blanks(l);
        if (l->p < l->end && *l->p == '}') {
            l->p++;
            return 0;
        }
        size_t klen = take_name(l, key);
        skip_blanks(l);
        if (klen == 0 || l->end - l->p < 2 || l->p[0] != '=' || l->p[1] != '"')
            return -1;
        l->p += 2;
        char *val = key + klen + 1;
        size_t n = 0;
        for (; l->p < l->end && *l->p != '"'; l->p++) {
            if (*l->p == '\\' && l->p + 1 < l->end) {
                l->p++;
                val[n++] = *l->p == 'n' ? '\n' : *l->p;
            } else {
                val[n++] = *l->p;
            }
        }
        if (l->p == l->end || json_object_set_new(labels, key, json_stringn(val, n)) < 0)
            return -1;
        l->p++;
        skip_blanks(l);
        if (l->p < l->end && *l->p == ',')
            l->p++;
    }
}

/* The family a sample NAME belongs to: its own, or for NAME_bucket,
 * NAME_sum and NAME_count that of a histogram or summary NAME. */
static json_t *family_of_sample(json_t *fams, const char *name, char *base)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    json_t *f = json_object_get(fams, name);
    size_t len = strlen(name);

    for (size_t i = 0; f == NULL && i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        size_t slen = strlen(suffixes[i]);
        if (len <= slen || strcmp(name + len - slen, suffixes[i]) != 0)
            continue;
        memcpy(base, name, len - slen);
        base[len - slen] = '\0';
        const char *type = json_string_value(json_object_get(json_object_get(fams, base), "type"));
        if (type && (strcmp(type, "histogram") == 0 || strcmp(type, "summary") == 0))
            f = json_object_get(fams, base);
    }
    return f ? f : family_get(fams, name);
}

/* "name{labels} value [timestamp]", appended to its family's samples.
 * 0 (a line that does not parse is skipped), or -1 when out of memory. */
static int parse_sample(json_t *fams, struct expo_line *l)
{
    char *name = l->scratch, *word, *wend;
    size_t n = take_name(l, name);
    json_t *f, *sample = NULL, *labels = json_object();
    double v;
    int rc = 0;

    l->scratch = name + n + 1;
    if (labels == NULL)
        return -1;
    if (n == 0)
        goto out;
    if (l->p < l->end && *l->p == '{') {
        l->p++;
        if (parse_labels(l, labels) < 0)
            goto out;
    }
    skip_blanks(l);
    word = l->scratch;
    if (take_word(l, word) == 0 || (v = strtod(word, &wend), *wend != '\0'))
        goto out;
    rc = -1;
    if ((f = family_of_sample(fams, name, word)) == NULL ||
        (sample = json_pack("{s:O, s:o}", "labels", labels, "value", number(v))) == NULL)
        goto out;
    if (json_object_get(fams, name) != f &&
        json_object_set_new(sample, "name", json_string(name)) < 0)
        goto out;
    rc = json_array_append(json_object_get(f, "samples"), sample);
out:
    json_decref(sample);
    json_decref(labels);
    return rc;
}

json_t *status_families(const char *text, size_t len)
{
    json_t *fams = json_object();
    char *scratch = malloc(2 * len + 4); /* a name, then its labels or value */
    const char *end = text + len;

    if (fams == NULL || scratch == NULL)
        goto fail;
    for (const char *p = text; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        struct expo_line l = {p, eol ? eol : end, scratch};
        skip_blanks(&l);
        if (l.p < l.end && (*l.p == '#' ? parse_comment(fams, &l) : parse_sample(fams, &l)) < 0)
            goto fail;
        p = eol ? eol + 1 : end;
    }
    free(scratch);
    return fams;
fail:
    free(scratch);
    json_decref(fams);
    return NULL;
}

/* The sum of FAMILY's samples; by status class too when they carry a code. */
static void add_totals(json_t *family, struct status_point *pt)
{
    size_t i;
    json_t *s;

    json_array_foreach(json_object_get(family, "samples"), i, s)
    {
        uint64_t v = (uint64_t)json_number_value(json_object_get(s, "value"));
        const char *code = json_string_value(json_object_get(json_object_get(s, "labels"), "code"));
        pt->requests += v;
        if (code && code[0] >= '1' && code[0] <= '5')
            pt->classes[code[0] - '1'] += v;
    }
}

void status_history_add(struct status_history *h, json_t *families, double t)
{
    struct status_point *pt = &h->points[h->next];
    json_t *by_code = json_object_get(families, "flowgate_requests_total");

    memset(pt, 0, sizeof(*pt));
    pt->t = t;
    pt->by_class = by_code != NULL;
    add_totals(by_code ? by_code : json_object_get(families, "flowgate_requests_finished_total"),
               pt);
    h->next = (h->next + 1) % STATUS_POINTS;
    if (h->count < STATUS_POINTS)
        h->count++;
}

json_t *status_history_json(const struct status_history *h)
{
    json_t *points = json_array();

    for (unsigned i = 0; points != NULL && i < h->count; i++) {
        const struct status_point *pt =
            &h->points[(h->next + STATUS_POINTS - h->count + i) % STATUS_POINTS];
        json_t *o = json_pack("{s:f, s:I}", "t", pt->t, "requests", (json_int_t)pt->requests);
        const uint64_t *c = pt->classes;
        if (o != NULL && pt->by_class &&
            json_object_set_new(o, "classes",
                                json_pack("{s:I, s:I, s:I, s:I, s:I}", "1xx", (json_int_t)c[0],
                                          "2xx", (json_int_t)c[1], "3xx", (json_int_t)c[2], "4xx",
                                          (json_int_t)c[3], "5xx", (json_int_t)c[4])) < 0) {
            json_decref(o);
            o = NULL;
        }
        if (o == NULL || json_array_append_new(points, o) < 0) {
            json_decref(points);
            points = NULL;
        }
    }
    return points;
}
