/* log.c - line logger (see log.h). Each line is written with one call
 * (fprintf for text, fwrite for json) so lines from the loop and the storage
 * writer thread do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum am_log_level log_level = AM_LOG_INFO;
static enum am_log_format log_format = AM_LOG_TEXT;
static FILE *log_out; /* NULL: stderr */
static char log_name[128] = "-";

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

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

void am_log_set_format(enum am_log_format format)
{
    log_format = format;
}

int am_log_parse_format(const char *s)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(s, format_names[i]) == 0)
            return i;
    return -1;
}

void am_log_set_output(FILE *f)
{
    log_out = f;
}

/* Length of the well-formed UTF-8 sequence at s (at most n bytes), or 0 if
 * it is not one; *prefix is then how many bytes begin a valid sequence (at
 * least 1), the "maximal subpart" replaced by one U+FFFD. */
static size_t utf8_len(const unsigned char *s, size_t n, size_t *prefix)
{
    unsigned char b = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
    if (b >= 0xC2 && b <= 0xDF)
        len = 2;
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0)
            lo = 0xA0; /* no overlong forms */
        else if (b == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        *prefix = 1;
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        unsigned char c = i < n ? s[i] : 0;
        if (i == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) {
            *prefix = i;
            return 0;
        }
    }
    return len;
}

/* Appends s to out as the inside of a JSON string; returns the new length.
 * out must hold 6 bytes per byte of s beyond len. */
static size_t json_escape(char *out, size_t len, const char *str)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        unsigned char b = s[i];
        if (b >= 0x80) {
            size_t prefix, l = utf8_len(s + i, n - i, &prefix);
            if (l) {
                memcpy(out + len, s + i, l);
                len += l;
                i += l;
            } else {
                memcpy(out + len, "\\ufffd", 6);
                len += 6;
                i += prefix;
            }
            continue;
        }
        i++;
        const char *short_form = NULL;
        switch (b) {
        case '"': short_form = "\\\""; break;
        case '\\': short_form = "\\\\"; break;
        case '\b': short_form = "\\b"; break;
        case '\f': short_form = "\\f"; break;
        case '\n': short_form = "\\n"; break;
        case '\r': short_form = "\\r"; break;
        case '\t': short_form = "\\t"; break;
        default: break;
        }
        if (short_form) {
            out[len++] = short_form[0];
            out[len++] = short_form[1];
        } else if (b < 0x20 || b == 0x7f) {
            memcpy(out + len, "\\u00", 4);
            out[len + 4] = hex[b >> 4];
            out[len + 5] = hex[b & 15];
            len += 6;
        } else {
            out[len++] = (char)b;
        }
    }
    return len;
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
    FILE *out = log_out ? log_out : stderr;
    if (log_format != AM_LOG_JSON) {
        fprintf(out, "%s.%03ldZ %-5s %s: %s\n", when, ts.tv_nsec / 1000000, level_names[level],
                log_name, msg);
        fflush(out);
        return;
    }
    /* Every byte of the name and the message takes at most 6 escaped. */
    char line[128 + 6 * (sizeof log_name + sizeof msg)];
    size_t len =
        (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"node\":\"",
                         when, ts.tv_nsec / 1000000, level_names[level]);
    len = json_escape(line, len, log_name);
    memcpy(line + len, "\",\"msg\":\"", 9);
    len = json_escape(line, len + 9, msg);
    memcpy(line + len, "\"}\n", 3);
    len += 3;
    fwrite(line, 1, len, out);
    fflush(out);
}
