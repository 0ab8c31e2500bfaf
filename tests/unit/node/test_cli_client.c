/* test_cli_client.c - the call/cast/status subcommands (src/node/cli_client.c):
 * argument parsing, payload arguments, the text form of a status reply, and
 * whole commands against a scripted fake node, checking what they print and
 * the exit status. */
#include "cli_client.h"
#include "client.h"
#include "commands.h"
#include "err.h"
#include "fake_node.h"
#include "json.h"
#include "mp.h"

#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define ASSERT_NO_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define ASSERT_NO_LEAKS() ((void)0)
#endif

#define ARGC(v) ((int)(sizeof(v) / sizeof(v)[0]))

/* ---- call/cast arguments ------------------------------------------------- */

Test(call_args, reads_type_id_action_and_payload)
{
    char *argv[] = {"call", "--node", "127.0.0.2:8000", "counter", "user-42", "add", "5"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.kind, AM_MSG_CALL);
    cr_assert_not(a.help);
    cr_assert_str_eq(a.node, "127.0.0.2:8000");
    cr_assert_eq(a.timeout_ms, AM_CLI_DEFAULT_TIMEOUT_MS);
    cr_assert_str_eq(a.type, "counter");
    cr_assert_str_eq(a.id, "user-42");
    cr_assert_str_eq(a.action, "add");
    cr_assert_str_eq(a.payload, "5");
}

Test(call_args, defaults_node_and_timeout_and_sends_nil_without_payload)
{
    char *argv[] = {"cast", "counter", "c", "get"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(a.kind, AM_MSG_CAST);
    cr_assert_str_eq(a.node, AM_CLI_DEFAULT_NODE);
    cr_assert_eq(a.timeout_ms, 10000);
    cr_assert_null(a.payload);
}

Test(call_args, accepts_flags_before_between_and_after_positionals)
{
    char *argv[] = {"call", "--timeout", "250",       "kv",           "--node=localhost:7000",
                    "k1",   "put",       "{\"a\":1}", "--timeout=300"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(a.node, "localhost:7000");
    cr_assert_eq(a.timeout_ms, 300, "the last --timeout wins");
    cr_assert_str_eq(a.type, "kv");
    cr_assert_str_eq(a.id, "k1");
    cr_assert_str_eq(a.action, "put");
    cr_assert_str_eq(a.payload, "{\"a\":1}");
}

Test(call_args, takes_a_negative_number_payload_as_is)
{
    char *argv[] = {"call", "counter", "c", "add", "-5", "--node", "127.0.0.1:7946"};
    char *real[] = {"call", "counter", "c", "add", "-0.5e3"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(a.payload, "-5");
    cr_assert_eq(am_call_args_parse(&a, ARGC(real), real, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(a.payload, "-0.5e3");
}

Test(call_args, reads_everything_after_double_dash_as_positionals)
{
    char *argv[] = {"call", "--", "echo", "-e", "--echo", "--help"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert_not(a.help);
    cr_assert_str_eq(a.type, "echo");
    cr_assert_str_eq(a.id, "-e");
    cr_assert_str_eq(a.action, "--echo");
    cr_assert_str_eq(a.payload, "--help");
}

Test(call_args, takes_dash_and_at_file_payloads)
{
    char *dash[] = {"call", "echo", "e", "echo", "-"};
    char *file[] = {"call", "echo", "e", "echo", "@/tmp/p.json"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(dash), dash, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(a.payload, "-");
    cr_assert_eq(am_call_args_parse(&a, ARGC(file), file, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(a.payload, "@/tmp/p.json");
}

Test(call_args, stops_at_help)
{
    char *argv[] = {"call", "kv", "--help", "--bogus"};
    char *shrt[] = {"cast", "-h"};
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert(a.help);
    cr_assert_eq(am_call_args_parse(&a, ARGC(shrt), shrt, err, sizeof err), 0, "%s", err);
    cr_assert(a.help);
}

Test(call_args, leaves_argv_as_it_was)
{
    char *argv[] = {"call", "--node", "127.0.0.1:1", "kv", "k", "get", "--timeout", "5"};
    char *copy[ARGC(argv)];
    struct am_call_args a;
    char err[256];
    memcpy(copy, argv, sizeof argv);
    cr_assert_eq(am_call_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0);
    cr_assert_arr_eq(copy, argv, sizeof argv);
}

/* Parses argv and expects a usage error with exactly the message want. */
static void call_usage_error(int argc, char **argv, const char *want)
{
    struct am_call_args a;
    char err[256] = "";
    cr_assert_eq(am_call_args_parse(&a, argc, argv, err, sizeof err), -EINVAL, "accepted: %s",
                 want);
    cr_assert_str_eq(err, want);
}

Test(call_args, rejects_unknown_flags_by_name)
{
    char *a1[] = {"call", "--nod", "x", "kv", "k", "get"};
    char *a2[] = {"call", "kv", "k", "get", "-x"};
    char *a3[] = {"call", "kv", "k", "get", "--json"};
    char *a4[] = {"call", "kv", "k", "get", "--node-addr=1"};
    call_usage_error(ARGC(a1), a1, "unknown option '--nod'");
    call_usage_error(ARGC(a2), a2, "unknown option '-x'");
    call_usage_error(ARGC(a3), a3, "unknown option '--json'");
    call_usage_error(ARGC(a4), a4, "unknown option '--node-addr'");
}

Test(call_args, rejects_a_flag_without_its_value)
{
    char *a1[] = {"call", "kv", "k", "get", "--node"};
    char *a2[] = {"call", "kv", "k", "get", "--timeout"};
    call_usage_error(ARGC(a1), a1, "option '--node' needs a value");
    call_usage_error(ARGC(a2), a2, "option '--timeout' needs a value");
}

Test(call_args, rejects_missing_and_extra_positionals)
{
    char *a0[] = {"call"};
    char *a1[] = {"call", "kv"};
    char *a2[] = {"call", "kv", "k"};
    char *a5[] = {"call", "kv", "k", "put", "1", "2"};
    call_usage_error(ARGC(a0), a0, "missing TYPE ID ACTION");
    call_usage_error(ARGC(a1), a1, "missing ID ACTION");
    call_usage_error(ARGC(a2), a2, "missing ACTION");
    call_usage_error(ARGC(a5), a5, "unexpected argument '2'");
}

Test(call_args, rejects_a_bad_timeout)
{
    char *a1[] = {"call", "--timeout", "0", "kv", "k", "get"};
    char *a2[] = {"call", "--timeout=10ms", "kv", "k", "get"};
    char *a3[] = {"call", "--timeout", "-5", "kv", "k", "get"};
    char *a4[] = {"call", "--timeout=99999999999", "kv", "k", "get"};
    char *a5[] = {"call", "--timeout=", "kv", "k", "get"};
    call_usage_error(ARGC(a1), a1, "invalid --timeout '0' (expected milliseconds, at least 1)");
    call_usage_error(ARGC(a2), a2, "invalid --timeout '10ms' (expected milliseconds, at least 1)");
    call_usage_error(ARGC(a3), a3, "invalid --timeout '-5' (expected milliseconds, at least 1)");
    call_usage_error(ARGC(a4), a4,
                     "invalid --timeout '99999999999' (expected milliseconds, at least 1)");
    call_usage_error(ARGC(a5), a5, "invalid --timeout '' (expected milliseconds, at least 1)");
}

Test(call_args, rejects_a_bad_node_address)
{
    char *a1[] = {"call", "--node", "example.com:7946", "kv", "k", "get"};
    char *a2[] = {"call", "--node=127.0.0.1:0", "kv", "k", "get"};
    call_usage_error(ARGC(a1), a1,
                     "invalid --node 'example.com:7946' (expected HOST:PORT, e.g. 127.0.0.1:7946)");
    call_usage_error(ARGC(a2), a2,
                     "invalid --node '127.0.0.1:0' (expected HOST:PORT, e.g. 127.0.0.1:7946)");
}

Test(call_args, rejects_names_outside_the_protocol_limits)
{
    char type64[65], id256[257], id255[256];
    memset(type64, 't', 64);
    type64[64] = '\0';
    memset(id256, 'i', 256);
    id256[256] = '\0';
    memset(id255, 'i', 255);
    id255[255] = '\0';
    char *a1[] = {"call", "a/b", "k", "get"};
    char *a2[] = {"call", type64, "k", "get"};
    char *a3[] = {"call", "kv", id256, "get"};
    char *a4[] = {"call", "kv", "k", ""};
    char *a5[] = {"call", "kv", "", "get"};
    char *ok[] = {"call", "kv", id255, "get"};
    call_usage_error(ARGC(a1), a1, "TYPE must be 1 to 63 bytes without '/', got 'a/b'");
    call_usage_error(ARGC(a2), a2,
                     "TYPE must be 1 to 63 bytes without '/', got "
                     "'tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt'");
    call_usage_error(ARGC(a4), a4, "ACTION must be 1 to 63 bytes, got ''");
    call_usage_error(ARGC(a5), a5, "ID must be 1 to 255 bytes, got ''");
    struct am_call_args a;
    char err[256];
    cr_assert_eq(am_call_args_parse(&a, ARGC(a3), a3, err, sizeof err), -EINVAL);
    cr_assert(strncmp(err, "ID must be 1 to 255 bytes, got 'iii", 35) == 0, "%s", err);
    cr_assert_eq(am_call_args_parse(&a, ARGC(ok), ok, err, sizeof err), 0, "an ID of 255 bytes");
}

/* ---- status arguments ---------------------------------------------------- */

Test(status_args, reads_json_node_and_timeout)
{
    char *argv[] = {"status", "--json", "--node", "127.0.0.3:9000", "--timeout=50"};
    struct am_status_args a;
    char err[256] = "";
    cr_assert_eq(am_status_args_parse(&a, ARGC(argv), argv, err, sizeof err), 0, "%s", err);
    cr_assert(a.json);
    cr_assert_str_eq(a.node, "127.0.0.3:9000");
    cr_assert_eq(a.timeout_ms, 50);
    char *plain[] = {"status"};
    cr_assert_eq(am_status_args_parse(&a, ARGC(plain), plain, err, sizeof err), 0);
    cr_assert_not(a.json);
    cr_assert_str_eq(a.node, AM_CLI_DEFAULT_NODE);
}

Test(status_args, rejects_positionals_and_a_value_for_json)
{
    char *a1[] = {"status", "extra"};
    char *a2[] = {"status", "--json=yes"};
    char *a3[] = {"status", "--verbose"};
    struct am_status_args a;
    char err[256];
    cr_assert_eq(am_status_args_parse(&a, ARGC(a1), a1, err, sizeof err), -EINVAL);
    cr_assert_str_eq(err, "unexpected argument 'extra'");
    cr_assert_eq(am_status_args_parse(&a, ARGC(a2), a2, err, sizeof err), -EINVAL);
    cr_assert_str_eq(err, "option '--json' takes no value");
    cr_assert_eq(am_status_args_parse(&a, ARGC(a3), a3, err, sizeof err), -EINVAL);
    cr_assert_str_eq(err, "unknown option '--verbose'");
}

/* ---- payload arguments ----------------------------------------------------- */

/* A temporary file holding n bytes of JSON: a string of n - 2 letters. */
static void write_json_file(char *path, size_t pathlen, size_t n)
{
    snprintf(path, pathlen, "/tmp/amesh-payload-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    char *s = malloc(n);
    cr_assert_not_null(s);
    memset(s, 'q', n);
    s[0] = '"';
    s[n - 1] = '"';
    cr_assert_eq(write(fd, s, n), (ssize_t)n);
    close(fd);
    free(s);
}

Test(payload, takes_other_arguments_as_the_json_text)
{
    struct am_buf b;
    char err[256];
    am_buf_init(&b);
    cr_assert_eq(am_cli_payload_read("{\"a\":[1]}", &b, err, sizeof err), 0);
    cr_assert_eq(b.len, 9);
    cr_assert_eq(memcmp(b.data, "{\"a\":[1]}", 9), 0);
    am_buf_close(&b);
}

Test(payload, reads_a_one_mebibyte_file_after_the_at_sign)
{
    char path[64], arg[80], err[256] = "";
    size_t n = (1u << 20) + 2;
    write_json_file(path, sizeof path, n);
    snprintf(arg, sizeof arg, "@%s", path);
    struct am_buf b, mp;
    am_buf_init(&b);
    am_buf_init(&mp);
    cr_assert_eq(am_cli_payload_read(arg, &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b.len, n);
    cr_assert_eq(am_json_to_msgpack((const char *)b.data, b.len, &mp, err, sizeof err), 0);
    cr_assert_eq(mp.len, 5 + (1u << 20), "a str32 of 1 MiB");
    unlink(path);
    am_buf_close(&b);
    am_buf_close(&mp);
    ASSERT_NO_LEAKS();
}

Test(payload, reads_standard_input_for_a_dash)
{
    char path[64], err[256] = "";
    size_t n = 200000; /* over what one argument may hold */
    write_json_file(path, sizeof path, n);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(dup2(fd, STDIN_FILENO), STDIN_FILENO);
    close(fd);
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_eq(am_cli_payload_read("-", &b, err, sizeof err), 0, "%s", err);
    cr_assert_eq(b.len, n);
    cr_assert_eq(b.data[0], '"');
    unlink(path);
    am_buf_close(&b);
}

Test(payload, reports_a_file_that_cannot_be_read)
{
    struct am_buf b;
    char err[256];
    am_buf_init(&b);
    cr_assert_eq(am_cli_payload_read("@/nonexistent/amesh.json", &b, err, sizeof err), -ENOENT);
    cr_assert_str_eq(err, "cannot read payload from /nonexistent/amesh.json: "
                          "No such file or directory");
    cr_assert_eq(am_cli_payload_read("@", &b, err, sizeof err), -EINVAL);
    cr_assert_str_eq(err, "missing file name after '@'");
    cr_assert_eq(am_cli_payload_read("@/tmp", &b, err, sizeof err), -EISDIR);
    cr_assert_eq(b.len, 0);
    am_buf_close(&b);
}

/* ---- status text -------------------------------------------------------------- */

static void status_text_is(const void *p, size_t n, const char *want)
{
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_status_text(p, n, &out), 0);
    cr_assert_eq(am_buf_append(&out, "", 1), 0);
    cr_assert_str_eq((const char *)out.data, want);
    am_buf_close(&out);
}

Test(status_text, prints_one_line_per_leaf_with_dotted_keys_in_order)
{
    /* {"name":"n1","store":{"commits":12,"disk":{"bytes":4096}},"members":[1,2],
     *  "empty":{},"up":true,"load":0.5} */
    static const uint8_t v[] = {0x86, 0xa4, 'n',  'a',  'm',  'e',  0xa2, 'n',  '1',  0xa5, 's',
                                't',  'o',  'r',  'e',  0x82, 0xa7, 'c',  'o',  'm',  'm',  'i',
                                't',  's',  0x0c, 0xa4, 'd',  'i',  's',  'k',  0x81, 0xa5, 'b',
                                'y',  't',  'e',  's',  0xcd, 0x10, 0x00, 0xa7, 'm',  'e',  'm',
                                'b',  'e',  'r',  's',  0x92, 0x01, 0x02, 0xa5, 'e',  'm',  'p',
                                't',  'y',  0x80, 0xa2, 'u',  'p',  0xc3, 0xa4, 'l',  'o',  'a',
                                'd',  0xcb, 0x3f, 0xe0, 0,    0,    0,    0,    0,    0};
    status_text_is(v, sizeof v,
                   "name: n1\n"
                   "store.commits: 12\n"
                   "store.disk.bytes: 4096\n"
                   "members: [1,2]\n"
                   "empty: {}\n"
                   "up: true\n"
                   "load: 0.5\n");
    ASSERT_NO_LEAKS();
}

Test(status_text, prints_non_string_keys_as_json_and_hides_control_characters)
{
    static const uint8_t v[] = {0x82, 0x07, 0xa3, 'a', 0x1b, 'b', 0xa2, 'k', '\n', 0xc0};
    status_text_is(v, sizeof v, "7: a?b\nk : null\n");
}

Test(status_text, prints_a_reply_that_is_not_a_map_as_json)
{
    static const uint8_t v[] = {0x92, 0x01, 0xa1, 'x'};
    status_text_is(v, sizeof v, "[1,\"x\"]\n");
}

Test(status_text, refuses_malformed_bytes_and_leaves_out_as_it_was)
{
    static const uint8_t lying[] = {0x82, 0xa1, 'a', 0x01};
    struct am_buf out;
    am_buf_init(&out);
    cr_assert_eq(am_buf_append(&out, "keep", 4), 0);
    cr_assert_eq(am_status_text(lying, sizeof lying, &out), AM_EPROTO);
    cr_assert_eq(am_status_text(lying, 0, &out), AM_EPROTO);
    cr_assert_eq(out.len, 4);
    am_buf_close(&out);
}

static void pack_member(msgpack_packer *pk, const char *name, const char *addr, const char *state,
                        uint64_t inc)
{
    msgpack_pack_map(pk, 4);
    am_mp_pack_str(pk, "name", 4);
    am_mp_pack_str(pk, name, strlen(name));
    am_mp_pack_str(pk, "addr", 4);
    am_mp_pack_str(pk, addr, strlen(addr));
    am_mp_pack_str(pk, "state", 5);
    am_mp_pack_str(pk, state, strlen(state));
    am_mp_pack_str(pk, "incarnation", 11);
    msgpack_pack_uint64(pk, inc);
}

Test(members_text, prints_a_header_and_one_aligned_line_per_member)
{
    struct am_buf in, out;
    msgpack_packer pk;
    am_buf_init(&in);
    am_buf_init(&out);
    am_mp_packer_init(&pk, &in);
    msgpack_pack_map(&pk, 1);
    am_mp_pack_str(&pk, "members", 7);
    msgpack_pack_array(&pk, 2);
    pack_member(&pk, "n1", "127.0.0.2:7946", "alive", 3);
    pack_member(&pk, "evil\x1b[2J", "127.0.0.3:7946", "dead", 18446744073709551615ull);
    cr_assert_eq(am_members_text(in.data, in.len, &out), 0);
    cr_assert_eq(am_buf_append(&out, "", 1), 0);
    cr_assert_str_eq((const char *)out.data,
                     "NAME                     ADDR                   STATE    INCARNATION\n"
                     "n1                       127.0.0.2:7946         alive    3\n"
                     "evil?[2J                 127.0.0.3:7946         dead     "
                     "18446744073709551615\n");
    /* Another shape (a status map) is refused and nothing is printed. */
    out.len = 0;
    static const uint8_t status[] = {0x81, 0xa4, 'n', 'o', 'd', 'e', 0xa2, 'n', '1'};
    cr_assert_eq(am_members_text(status, sizeof status, &out), AM_EPROTO);
    /* A truncated list too. */
    cr_assert_eq(am_members_text(in.data, in.len - 3, &out), AM_EPROTO);
    cr_assert_eq(out.len, 0);
    am_buf_close(&in);
    am_buf_close(&out);
}

Test(ring_text, prints_the_version_and_one_share_per_member)
{
    struct am_buf in, out;
    msgpack_packer pk;
    am_buf_init(&in);
    am_buf_init(&out);
    am_mp_packer_init(&pk, &in);
    msgpack_pack_map(&pk, 3);
    am_mp_pack_str(&pk, "version", 7);
    am_mp_pack_str(&pk, "00ff00ff00ff00ff", 16);
    am_mp_pack_str(&pk, "vnodes", 6);
    msgpack_pack_uint64(&pk, 2048);
    am_mp_pack_str(&pk, "members", 7);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 2);
    am_mp_pack_str(&pk, "name", 4);
    am_mp_pack_str(&pk, "n1", 2);
    am_mp_pack_str(&pk, "share", 5);
    msgpack_pack_double(&pk, 0.25);
    msgpack_pack_map(&pk, 2);
    am_mp_pack_str(&pk, "name", 4);
    am_mp_pack_str(&pk, "127.0.0.2:7946", 14);
    am_mp_pack_str(&pk, "share", 5);
    msgpack_pack_double(&pk, 0.75);
    cr_assert_eq(am_ring_text(in.data, in.len, &out), 0);
    cr_assert_eq(am_buf_append(&out, "", 1), 0);
    cr_assert_str_eq((const char *)out.data,
                     "ring 00ff00ff00ff00ff, 2048 points per member, 2 members\n"
                     "n1                       25.00%\n"
                     "127.0.0.2:7946           75.00%\n");
    out.len = 0;
    cr_assert_eq(am_ring_text(in.data, in.len - 4, &out), AM_EPROTO);
    static const uint8_t members[] = {0x81, 0xa7, 'm', 'e', 'm', 'b', 'e', 'r', 's', 0x90};
    cr_assert_eq(am_ring_text(members, sizeof members, &out), 0, "an empty ring is a ring");
    out.len = 0;
    static const uint8_t other[] = {0x81, 0xa4, 'n', 'o', 'd', 'e', 0xa2, 'n', '1'};
    cr_assert_eq(am_ring_text(other, sizeof other, &out), AM_EPROTO);
    cr_assert_eq(out.len, 0);
    am_buf_close(&in);
    am_buf_close(&out);
}

/* ---- whole commands against a fake node --------------------------------------- */

static void redirect_all(void)
{
    cr_redirect_stdout();
    cr_redirect_stderr();
}

/* Answers the first request: echoes a CALL/CAST payload, or replies the
 * canned reply in f->arg (a struct canned) whatever the request. */
struct canned {
    int status;
    const uint8_t *body;
    size_t len;
    const char *error; /* for a non-zero status */
};

static void answer_script(struct fake_node *f, int fd)
{
    if (fake_read_request(f, fd)) {
        fake_fail(f, "no request, or a malformed one");
        return;
    }
    const struct canned *k = f->arg;
    if (!k)
        fake_reply(fd, f->req.id, AM_ST_OK, f->req.payload, f->req.payload_len);
    else if (k->error)
        fake_error(fd, f->req.id, k->status, k->error);
    else
        fake_reply(fd, f->req.id, k->status, k->body, k->len);
    fake_wait_close(fd);
}

static void silent_script(struct fake_node *f, int fd)
{
    (void)fake_read_request(f, fd);
    fake_wait_close(fd);
}

Test(cmd_call, prints_the_reply_as_compact_json, .init = redirect_all)
{
    struct fake_node f;
    fake_node_start(&f, answer_script, NULL);
    char *argv[] = {"call", "--node", f.addr, "echo", "e1", "echo", "{ \"a\" : [1, 2.5, null] }"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_OK);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("{\"a\":[1,2.5,null]}\n");
}

Test(cmd_call, sends_a_negative_number_and_nil_by_default, .init = redirect_all)
{
    struct fake_node f;
    fake_node_start(&f, answer_script, NULL);
    char *argv[] = {"call", "echo", "e1", "echo", "-5", "--node", f.addr};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_OK);
    fake_node_join(&f);
    fake_node_start(&f, answer_script, NULL);
    char *nil[] = {"call", "echo", "e1", "echo", "--node", f.addr};
    cr_assert_eq(am_cmd_call(ARGC(nil), nil), AM_EXIT_OK);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("-5\nnull\n");
}

Test(cmd_call, prints_nothing_for_an_accepted_cast, .init = redirect_all)
{
    static const uint8_t nil[] = {0xc0};
    struct canned k = {AM_ST_OK, nil, 1, NULL};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"cast", "--node", f.addr, "counter", "c", "add", "3"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_OK);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("");
    cr_assert_stderr_eq_str("");
}

Test(cmd_call, reports_a_retryable_error_with_exit_75, .init = redirect_all)
{
    struct canned k = {AM_ST_BUSY, NULL, 0, "mailbox of counter/c is full\n(64 messages)"};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"call", "--node", f.addr, "counter", "c", "get"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_TEMPFAIL);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("");
    cr_assert_stderr_eq_str("amesh: busy: mailbox of counter/c is full (64 messages)\n");
}

Test(cmd_call, reports_a_final_error_with_exit_1, .init = redirect_all)
{
    struct canned k = {AM_ST_UNKNOWN_ACTION, NULL, 0, "counter has no action 'mul'"};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"call", "--node", f.addr, "counter", "c", "mul", "2"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_ERROR);
    fake_node_join(&f);
    cr_assert_stderr_eq_str("amesh: unknown_action: counter has no action 'mul'\n");
}

Test(cmd_call, reports_a_timeout_with_exit_75, .init = redirect_all)
{
    struct fake_node f;
    fake_node_start(&f, silent_script, NULL);
    char *argv[] = {"call", "--node", f.addr, "--timeout", "100", "counter", "c", "get"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_TEMPFAIL);
    fake_node_join(&f);
    char want[128];
    snprintf(want, sizeof want, "amesh: timeout: no reply from %s within 100 ms\n", f.addr);
    cr_assert_stderr_eq_str(want);
}

Test(cmd_call, reports_an_unreachable_node_with_exit_69, .init = redirect_all)
{
    char addr[32], want[128];
    fake_dead_address(addr, sizeof addr);
    char *argv[] = {"call", "--node", addr, "counter", "c", "get"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_UNAVAILABLE);
    snprintf(want, sizeof want, "amesh: cannot reach %s: Connection refused\n", addr);
    cr_assert_stderr_eq_str(want);
}

Test(cmd_call, reports_invalid_json_as_a_usage_error_without_connecting, .init = redirect_all)
{
    char addr[32];
    fake_dead_address(addr, sizeof addr);
    char *argv[] = {"call", "--node", addr, "kv", "k", "put", "{\"a\":}"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_USAGE);
    cr_assert_stderr_eq_str(
        "amesh: invalid JSON payload: line 1 column 6: unexpected token near '}'\n");
}

Test(cmd_call, prints_usage_on_stderr_for_a_usage_error, .init = redirect_all)
{
    char *argv[] = {"call", "kv", "--frobnicate"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_USAGE);
    cr_assert_stdout_eq_str("");
    cr_assert_stderr_eq_str(
        "amesh: unknown option '--frobnicate'\n"
        "usage: amesh call [--node HOST:PORT] [--timeout MS] [--key-file FILE] TYPE ID ACTION [JSON]\n"
        "       amesh cast [--node HOST:PORT] [--timeout MS] [--key-file FILE] TYPE ID ACTION [JSON]\n"
        "Try 'amesh call --help'.\n");
}

Test(cmd_call, prints_help_on_stdout_and_exits_0, .init = redirect_all)
{
    char *argv[] = {"cast", "--help"};
    cr_assert_eq(am_cmd_call(ARGC(argv), argv), AM_EXIT_OK);
    fflush(stdout);
    FILE *out = cr_get_redirected_stdout();
    char line[256] = "";
    cr_assert_not_null(fgets(line, sizeof line, out));
    cr_assert_str_eq(line,
                     "usage: amesh call [--node HOST:PORT] [--timeout MS] [--key-file FILE] TYPE ID "
                     "ACTION [JSON]\n");
    cr_assert_stderr_eq_str("");
}

Test(cmd_status, prints_key_value_lines, .init = redirect_all)
{
    static const uint8_t map[] = {0x82, 0xa4, 'n', 'a', 'm', 'e', 0xa2, 'n',  '1',
                                  0xa5, 's',  't', 'o', 'r', 'e', 0x81, 0xa7, 'c',
                                  'o',  'm',  'm', 'i', 't', 's', 0x0c};
    struct canned k = {AM_ST_OK, map, sizeof map, NULL};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"status", "--node", f.addr};
    cr_assert_eq(am_cmd_status(ARGC(argv), argv), AM_EXIT_OK);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("name: n1\nstore.commits: 12\n");
}

Test(cmd_status, prints_json_with_the_json_flag, .init = redirect_all)
{
    static const uint8_t map[] = {0x82, 0xa4, 'n', 'a', 'm', 'e', 0xa2, 'n',  '1',
                                  0xa5, 's',  't', 'o', 'r', 'e', 0x81, 0xa7, 'c',
                                  'o',  'm',  'm', 'i', 't', 's', 0x0c};
    struct canned k = {AM_ST_OK, map, sizeof map, NULL};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"status", "--json", "--node", f.addr};
    cr_assert_eq(am_cmd_status(ARGC(argv), argv), AM_EXIT_OK);
    fake_node_join(&f);
    cr_assert_stdout_eq_str("{\"name\":\"n1\",\"store\":{\"commits\":12}}\n");
}

Test(cmd_status, reports_an_error_reply, .init = redirect_all)
{
    struct canned k = {AM_ST_SHUTTING_DOWN, NULL, 0, "node is stopping"};
    struct fake_node f;
    fake_node_start(&f, answer_script, &k);
    char *argv[] = {"status", "--node", f.addr};
    cr_assert_eq(am_cmd_status(ARGC(argv), argv), AM_EXIT_TEMPFAIL);
    fake_node_join(&f);
    cr_assert_stderr_eq_str("amesh: shutting_down: node is stopping\n");
}
