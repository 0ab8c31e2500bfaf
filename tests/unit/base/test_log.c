/* test_log.c - the log line formats: text as it always was, json one object
 * per line that parses whatever the message holds. */
#include "log.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

static char *out_buf;
static size_t out_len;
static FILE *out;

static void setup(void)
{
    out = open_memstream(&out_buf, &out_len);
    cr_assert(out);
    am_log_set_output(out);
    am_log_set_format(AM_LOG_TEXT);
    am_log_setup(AM_LOG_INFO, "n1");
}

static void teardown(void)
{
    am_log_set_output(NULL);
    fclose(out);
    free(out_buf);
}

TestSuite(log, .init = setup, .fini = teardown);

/* What was logged so far (the stream is flushed after every line). */
static const char *logged(void)
{
    fflush(out);
    return out_buf;
}

static int matches(const char *re, const char *s)
{
    regex_t r;
    cr_assert_eq(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
    int ok = regexec(&r, s, 0, NULL, 0) == 0;
    regfree(&r);
    return ok;
}

#define TS_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

/* Parses one line as a JSON object with exactly ts, level, node and msg. */
static json_t *parse_line(const char *line, size_t len)
{
    json_error_t e;
    json_t *o = json_loadb(line, len, 0, &e);
    cr_assert(o, "not JSON: %s (%.*s)", e.text, (int)len, line);
    cr_assert(json_is_object(o));
    cr_assert_eq(json_object_size(o), 4, "%.*s", (int)len, line);
    const char *ts = json_string_value(json_object_get(o, "ts"));
    cr_assert(ts && matches("^" TS_RE "$", ts), "ts: %s", ts ? ts : "(none)");
    cr_assert(json_is_string(json_object_get(o, "level")));
    cr_assert(json_is_string(json_object_get(o, "node")));
    cr_assert(json_is_string(json_object_get(o, "msg")));
    return o;
}

/* The single line logged: it ends with one newline and holds no other. */
static json_t *only_line(void)
{
    const char *s = logged();
    size_t n = strlen(s);
    cr_assert(n > 0 && s[n - 1] == '\n', "not one line: '%s'", s);
    cr_assert_eq(strchr(s, '\n'), s + n - 1, "more than one line: '%s'", s);
    return parse_line(s, n - 1);
}

Test(log, text_lines_keep_their_format)
{
    am_log_info("hello %d", 42);
    am_log_warn("careful");
    am_log_debug("not shown at info");
    const char *s = logged();
    cr_assert(matches("^" TS_RE " info  n1: hello 42\n" TS_RE " warn  n1: careful\n$", s), "'%s'",
              s);
}

Test(log, text_lines_write_the_message_as_it_is)
{
    am_log_error("a \"quote\"\\ and\ta tab");
    cr_assert(matches("^" TS_RE " error n1: a \"quote\"\\\\ and\ta tab\n$", logged()), "'%s'",
              logged());
}

Test(log, json_escapes_quotes_newlines_backslashes_and_control_bytes)
{
    am_log_setup(AM_LOG_DEBUG, "node \"a\"\\1");
    am_log_set_format(AM_LOG_JSON);
    const char *msg = "say \"hi\"\nthen C:\\dir\\ \x01 end\r\x1f\x7f \xc3\xa9t\xc3\xa9";
    am_log_debug("%s", msg);
    const char *raw = logged();
    cr_assert_null(strchr(raw, '\x01'), "a raw control byte in '%s'", raw);
    json_t *o = only_line();
    cr_assert_str_eq(json_string_value(json_object_get(o, "level")), "debug");
    cr_assert_str_eq(json_string_value(json_object_get(o, "node")), "node \"a\"\\1");
    cr_assert_str_eq(json_string_value(json_object_get(o, "msg")), msg);
    json_decref(o);
    ASSERT_NO_LEAKS();
}

Test(log, json_replaces_bytes_that_are_not_utf8)
{
    am_log_set_format(AM_LOG_JSON);
    /* A lone continuation byte, a truncated sequence, an overlong '/', a
     * surrogate, a code point above U+10FFFF and a stray 0xff. */
    am_log_info("a\x80 b\xe2\x82 c\xc0\xaf d\xed\xa0\x80 e\xf4\x90\x80\x80 f\xff g\xe2\x82\xac");
    json_t *o = only_line();
    const char *m = json_string_value(json_object_get(o, "msg"));
    /* jansson only loads valid UTF-8, so parsing proved the escaping; the
     * valid euro sign at the end is kept as it is. */
    cr_assert(strstr(m, "a\xef\xbf\xbd b\xef\xbf\xbd c"), "%s", m);
    cr_assert(strstr(m, " g\xe2\x82\xac"), "%s", m);
    cr_assert_null(strstr(m, "\xff"));
    json_decref(o);
    ASSERT_NO_LEAKS();
}

Test(log, json_writes_one_object_per_line_with_level_node_and_time)
{
    am_log_set_format(AM_LOG_JSON);
    time_t before = time(NULL);
    am_log_error("first");
    am_log_info("second\nstill second");
    am_log_debug("filtered out at info");
    time_t after = time(NULL);
    const char *s = logged();
    const char *nl = strchr(s, '\n');
    cr_assert(nl);
    json_t *a = parse_line(s, (size_t)(nl - s));
    const char *s2 = nl + 1;
    const char *nl2 = strchr(s2, '\n');
    cr_assert(nl2);
    cr_assert_str_eq(nl2 + 1, "", "a third line: '%s'", nl2 + 1);
    json_t *b = parse_line(s2, (size_t)(nl2 - s2));
    cr_assert_str_eq(json_string_value(json_object_get(a, "level")), "error");
    cr_assert_str_eq(json_string_value(json_object_get(a, "msg")), "first");
    cr_assert_str_eq(json_string_value(json_object_get(a, "node")), "n1");
    cr_assert_str_eq(json_string_value(json_object_get(b, "level")), "info");
    cr_assert_str_eq(json_string_value(json_object_get(b, "msg")), "second\nstill second");

    /* The time is now, in UTC. */
    struct tm tm = {0};
    const char *ts = json_string_value(json_object_get(a, "ts"));
    cr_assert_eq(sscanf(ts, "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                        &tm.tm_hour, &tm.tm_min, &tm.tm_sec),
                 6, "%s", ts);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    cr_assert(t >= before && t <= after, "ts %s is not between %lld and %lld", ts,
              (long long)before, (long long)after);
    json_decref(a);
    json_decref(b);
    ASSERT_NO_LEAKS();
}

Test(log, json_stays_valid_when_a_long_message_is_cut_inside_a_character)
{
    am_log_set_format(AM_LOG_JSON);
    char big[1400];
    for (size_t i = 0; i + 1 < sizeof big; i += 2) {
        big[i] = '\xc3';
        big[i + 1] = '\xa9';
    }
    big[sizeof big - 2] = '\0';
    am_log_info("xy%s", big); /* cut at 1023 bytes: xy, 510 e-acutes and half of one */
    json_t *o = only_line();
    const char *m = json_string_value(json_object_get(o, "msg"));
    cr_assert_eq(strlen(m), 2 + 1020 + 3, "%zu", strlen(m));
    cr_assert_str_eq(m + 1022, "\xef\xbf\xbd");
    json_decref(o);
    ASSERT_NO_LEAKS();
}

Test(log, json_holds_a_long_message_of_control_bytes)
{
    am_log_set_format(AM_LOG_JSON);
    char big[2000];
    memset(big, '\x01', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    am_log_warn("%s", big); /* 1023 bytes kept, each escaped as \u0001 */
    json_t *o = only_line();
    const char *m = json_string_value(json_object_get(o, "msg"));
    cr_assert_eq(strlen(m), 1023);
    cr_assert_eq(strspn(m, "\x01"), 1023);
    json_decref(o);
    ASSERT_NO_LEAKS();
}

Test(log, parses_the_format_names)
{
    cr_assert_eq(am_log_parse_format("text"), AM_LOG_TEXT);
    cr_assert_eq(am_log_parse_format("json"), AM_LOG_JSON);
    cr_assert_eq(am_log_parse_format("JSON"), -1);
    cr_assert_eq(am_log_parse_format(""), -1);
}
