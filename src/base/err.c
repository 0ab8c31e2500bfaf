/* err.c - names and wire statuses for error codes (see err.h). */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[AM_ST__COUNT] = {
    [AM_ST_OK] = "ok",
    [AM_ST_BAD_REQUEST] = "bad_request",
    [AM_ST_TOO_LARGE] = "too_large",
    [AM_ST_UNKNOWN_TYPE] = "unknown_type",
    [AM_ST_UNKNOWN_ACTION] = "unknown_action",
    [AM_ST_INVALID_ARG] = "invalid_argument",
    [AM_ST_HANDLER] = "handler_error",
    [AM_ST_BUSY] = "busy",
    [AM_ST_OVERLOADED] = "overloaded",
    [AM_ST_STORAGE] = "storage",
    [AM_ST_SHUTTING_DOWN] = "shutting_down",
    [AM_ST_INTERNAL] = "internal",
    [AM_ST_TIMEOUT] = "timeout",
    [AM_ST_UNAVAILABLE] = "unavailable",
};

static const char *const status_text[AM_ST__COUNT] = {
    [AM_ST_OK] = "success",
    [AM_ST_BAD_REQUEST] = "malformed request",
    [AM_ST_TOO_LARGE] = "over the size limit",
    [AM_ST_UNKNOWN_TYPE] = "unknown actor type",
    [AM_ST_UNKNOWN_ACTION] = "unknown action",
    [AM_ST_INVALID_ARG] = "invalid argument for the action",
    [AM_ST_HANDLER] = "the actor's handler failed",
    [AM_ST_BUSY] = "actor mailbox full, retry later",
    [AM_ST_OVERLOADED] = "node overloaded, retry later",
    [AM_ST_STORAGE] = "storage error",
    [AM_ST_SHUTTING_DOWN] = "node shutting down",
    [AM_ST_INTERNAL] = "internal error",
    [AM_ST_TIMEOUT] = "timed out",
    [AM_ST_UNAVAILABLE] = "the actor's owner is unavailable, retry later",
};

const char *am_strerror(int code)
{
    if (code == 0)
        return "success";
    if (code == AM_ECORRUPT)
        return "corrupt data";
    if (code == AM_EFOREIGN)
        return "not an amesh data directory";
    if (code == AM_ENEWER)
        return "written by a newer amesh format";
    if (code < -AM_ERR_BASE && code > -(AM_ERR_BASE + AM_ST__COUNT))
        return status_text[-code - AM_ERR_BASE];
    if (code < 0 && code > -AM_ERR_BASE)
        return strerror(-code);
    return "unknown error";
}

enum am_status am_status_of(int code)
{
    if (code == 0)
        return AM_ST_OK;
    /* Strictly below -AM_ERR_BASE: -1000 would be AM_E(AM_ST_OK), which is
     * no project code, and an error must never travel as success. */
    if (code < -AM_ERR_BASE && code > -(AM_ERR_BASE + AM_ST__COUNT))
        return (enum am_status)(-code - AM_ERR_BASE);
    if (code == AM_ECORRUPT || code == AM_EFOREIGN || code == AM_ENEWER)
        return AM_ST_STORAGE;
    return AM_ST_INTERNAL;
}

const char *am_status_name(int status)
{
    if (status < 0 || status >= AM_ST__COUNT)
        return "unknown";
    return status_names[status];
}

int am_status_retryable(int status)
{
    return status == AM_ST_BUSY || status == AM_ST_OVERLOADED || status == AM_ST_SHUTTING_DOWN ||
           status == AM_ST_TIMEOUT || status == AM_ST_UNAVAILABLE;
}

int am_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
