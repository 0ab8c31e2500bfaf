/* err.h - error codes shared by every module.
 *
 * Functions return 0 or a negative code: either a negated errno (-ENOMEM,
 * -EINVAL, ...) or one of the project codes below, which live in a reserved
 * range (-1001 .. -1099) so the two can never collide. am_strerror() names both.
 *
 * Each project code maps one-to-one onto a wire status (docs/protocol.md):
 * status = -(code) - 1000. Codes that are not project codes travel as
 * AM_ST_INTERNAL. */
#ifndef AM_ERR_H
#define AM_ERR_H

#include <stddef.h>

/* Wire statuses of a reply (docs/protocol.md, "Statuses"). Never renumber. */
enum am_status {
    AM_ST_OK = 0,
    AM_ST_BAD_REQUEST = 1,    /* malformed frame or message */
    AM_ST_TOO_LARGE = 2,      /* payload, state, reply or frame over its limit */
    AM_ST_UNKNOWN_TYPE = 3,   /* no actor type of that name */
    AM_ST_UNKNOWN_ACTION = 4, /* the type has no such action */
    AM_ST_INVALID_ARG = 5,    /* the payload does not suit the action */
    AM_ST_HANDLER = 6,        /* the handler reported an error; state unchanged */
    AM_ST_BUSY = 7,           /* mailbox full: retry later */
    AM_ST_OVERLOADED = 8,     /* too many active actors / requests: retry later */
    AM_ST_STORAGE = 9,        /* the state could not be read or committed */
    AM_ST_SHUTTING_DOWN = 10, /* node is stopping: retry on another node or later */
    AM_ST_INTERNAL = 11,      /* anything else; a bug or a system error */
    AM_ST_TIMEOUT = 12,       /* no reply in time (client, or a node from an actor's owner) */
    AM_ST_UNAVAILABLE = 13,   /* the actor's owner cannot be reached now: retry */
    AM_ST__COUNT
};

#define AM_ERR_BASE 1000
#define AM_E(st) (-(AM_ERR_BASE + (st)))

#define AM_EPROTO AM_E(AM_ST_BAD_REQUEST)
#define AM_ETOOBIG AM_E(AM_ST_TOO_LARGE)
#define AM_ENOTYPE AM_E(AM_ST_UNKNOWN_TYPE)
#define AM_ENOACTION AM_E(AM_ST_UNKNOWN_ACTION)
#define AM_EINVAL AM_E(AM_ST_INVALID_ARG)
#define AM_EHANDLER AM_E(AM_ST_HANDLER)
#define AM_EBUSY AM_E(AM_ST_BUSY)
#define AM_EOVERLOAD AM_E(AM_ST_OVERLOADED)
#define AM_ESTORAGE AM_E(AM_ST_STORAGE)
#define AM_ESHUTDOWN AM_E(AM_ST_SHUTTING_DOWN)
#define AM_EINTERNAL AM_E(AM_ST_INTERNAL)
#define AM_ETIMEOUT AM_E(AM_ST_TIMEOUT)
#define AM_EUNAVAIL AM_E(AM_ST_UNAVAILABLE)

/* Storage-specific codes, outside the wire range (they become AM_ST_STORAGE). */
#define AM_ECORRUPT (-(AM_ERR_BASE + 50)) /* a file or record failed its check */
#define AM_EFOREIGN (-(AM_ERR_BASE + 51)) /* not an amesh data directory */
#define AM_ENEWER (-(AM_ERR_BASE + 52))   /* data written by a newer format */

/* A short English description of any code (negated errno or project code).
 * Returns a static string. */
const char *am_strerror(int code);

/* The wire status for an error code (0 gives AM_ST_OK). */
enum am_status am_status_of(int code);

/* The stable lower-case name of a status, e.g. "busy"; "unknown" if out of range. */
const char *am_status_name(int status);

/* 1 if a caller may retry the same request later and expect it to succeed. */
int am_status_retryable(int status);

/* Writes a message into err (errlen bytes; err may be NULL when errlen is 0)
 * and returns code: `return am_errf(err, errlen, -EINVAL, "bad %s", x);`. */
__attribute__((format(printf, 4, 5))) int am_errf(char *err, size_t errlen, int code,
                                                  const char *fmt, ...);

#endif
