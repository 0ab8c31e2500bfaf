/* log.h - one line per event on stderr: time, level, node name, message.
 *
 * Two formats: text (the default), "2026-01-02T03:04:05.678Z info  NAME: message",
 * and json, one object per line:
 *   {"ts":"2026-01-02T03:04:05.678Z","level":"info","node":"NAME","msg":"message"}
 * In json the node name and the message are escaped (quotes, backslashes and
 * control characters; bytes that are not valid UTF-8 become \ufffd), so every
 * line parses whatever was logged. The text format writes them as they are.
 *
 * The level, format and name are process-wide settings made once at start-up
 * (the binary is one node; library code never logs from leaf modules). */
#ifndef AM_LOG_H
#define AM_LOG_H

#include <stdio.h>

enum am_log_level { AM_LOG_ERROR, AM_LOG_WARN, AM_LOG_INFO, AM_LOG_DEBUG };
enum am_log_format { AM_LOG_TEXT, AM_LOG_JSON };

void am_log_setup(enum am_log_level level, const char *node_name);
/* Parses "error", "warn", "info" or "debug"; -1 if none of them. */
int am_log_parse_level(const char *s);
int am_log_enabled(enum am_log_level level);

/* Sets the line format (text until called). */
void am_log_set_format(enum am_log_format format);
/* Parses "text" or "json"; -1 if neither. */
int am_log_parse_format(const char *s);
/* Where lines go: stderr until called, and when given NULL (tests pass a
 * memory stream). Each line is one fwrite; the stream is flushed after it. */
void am_log_set_output(FILE *f);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void am_log(enum am_log_level level, const char *fmt, ...);

#define am_log_error(...) am_log(AM_LOG_ERROR, __VA_ARGS__)
#define am_log_warn(...) am_log(AM_LOG_WARN, __VA_ARGS__)
#define am_log_info(...) am_log(AM_LOG_INFO, __VA_ARGS__)
#define am_log_debug(...) am_log(AM_LOG_DEBUG, __VA_ARGS__)

#endif
