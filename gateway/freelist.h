/*
 * freelist.h - the one free list: idle records kept for reuse, up to a limit.
 *
 * A record that is done goes on its owner's list instead of back to malloc,
 * so a steady load allocates nothing; at most KEEP are kept, so a burst does
 * not pin its peak for good. The list is intrusive: records are linked
 * through their own next pointer, which is free for other lists while the
 * record is out. One owner, one thread: no locking.
 */
#ifndef FG_FREELIST_H
#define FG_FREELIST_H

#include <stdbool.h>
#include <stddef.h>

struct freelist {
    void *head; /* the record put last, or NULL */
    unsigned n; /* records on the list; a zeroed list is empty */
};

/*
 * Defines, for records of TYPE linked through their MEMBER pointer:
 *   TYPE *NAME_get(struct freelist *fl): the record put last, off the list
 *     (MEMBER set to NULL), or NULL when the list is empty;
 *   bool NAME_put(struct freelist *fl, TYPE *it): IT kept for reuse, or
 *     false when KEEP are kept already (the caller frees IT).
 */
#define FREELIST_DEFINE(name, type, member, keep)                                                  \
    static inline type *name##_get(struct freelist *fl)                                            \
    {                                                                                              \
        type *it = fl->head;                                                                       \
        if (it != NULL) {                                                                          \
            fl->head = it->member;                                                                 \
            fl->n--;                                                                               \
            it->member = NULL;                                                                     \
        }                                                                                          \
        return it;                                                                                 \
    }                                                                                              \
    static inline bool name##_put(struct freelist *fl, type *it)                                   \
    {                                                                                              \
        if (fl->n >= (keep))                                                                       \
            return false;                                                                          \
        it->member = fl->head;                                                                     \
        fl->head = it;                                                                             \
        fl->n++;                                                                                   \
        return true;                                                                               \
    }

#endif
