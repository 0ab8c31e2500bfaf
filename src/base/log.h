/* log.h - one line per event on stderr: time, level, node name, message.
 *
 * The level and name are process-wide settings made once at start-up (the
 * binary is one node; library code never logs from leaf modules). */
#ifndef AM_LOG_H
#define AM_LOG_H

enum am_log_level { AM_LOG_ERROR, AM_LOG_WARN, AM_LOG_INFO, AM_LOG_DEBUG };

void am_log_setup(enum am_log_level level, const char *node_name);
/* Parses "error", "warn", "info" or "debug"; -1 if none of them. */
int am_log_parse_level(const char *s);
int am_log_enabled(enum am_log_level level);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void am_log(enum am_log_level level, const char *fmt, ...);

#define am_log_error(...) am_log(AM_LOG_ERROR, __VA_ARGS__)
#define am_log_warn(...) am_log(AM_LOG_WARN, __VA_ARGS__)
#define am_log_info(...) am_log(AM_LOG_INFO, __VA_ARGS__)
#define am_log_debug(...) am_log(AM_LOG_DEBUG, __VA_ARGS__)

#endif
