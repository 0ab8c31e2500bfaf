/* log.c - line logger (see log.h). Each line is written with one fprintf so
 * lines from the loop and the storage writer thread do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum am_log_level log_level = AM_LOG_INFO;
static char log_name[128] = "-";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void am_log_setup(enum am_log_level level, const char *node_name)
{
    log_level = level;
    if (node_name)
        snprintf(log_name, sizeof log_name, "%s", node_name);
}

int am_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int am_log_enabled(enum am_log_level level)
{
    return level <= log_level;
}

void am_log(enum am_log_level level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %-5s %s: %s\n", when, ts.tv_nsec / 1000000, level_names[level],
            log_name, msg);
}
