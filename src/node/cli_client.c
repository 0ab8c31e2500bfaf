/* cli_client.c - the "call", "cast", "status", "members", "leave" and
 * "keygen" subcommands.
 *
 * Each is parse -> build the request -> one round trip with am_client ->
 * print. Everything the user can get wrong (flags, names, JSON) is checked
 * before a connection is opened, so a usage error never depends on a node
 * being up, and each failure maps onto exactly one exit status of
 * commands.h:
 *
 *   usage, bad JSON, unreadable payload file    AM_EXIT_USAGE (2)
 *   connect failed                               AM_EXIT_UNAVAILABLE (69)
 *   retryable error reply, timeout, connection
 *   lost after the request was sent              AM_EXIT_TEMPFAIL (75)
 *   other error reply, malformed reply           AM_EXIT_ERROR (1)
 *
 * A connection lost mid-request counts as retryable: the request may or may
 * not have taken effect, which is what "retry later" already has to allow
 * for (DESIGN.md, guarantee 4).
 *
 * Flags are parsed by hand rather than with getopt_long: GNU getopt keeps
 * its state in globals (optind) and would read a payload such as -5 as an
 * unknown flag. The parser is one loop over a four-entry table. */
#include "cli_client.h"

#include "addr.h"
#include "client.h"
#include "commands.h"
#include "err.h"
#include "json.h"
#include "mp.h"
#include "proto.h"
#include "seal.h"

#include <errno.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CALL_USAGE                                                                                 \
    "usage: amesh call [--node HOST:PORT] [--timeout MS] [--key-file FILE] TYPE ID ACTION "        \
    "[JSON]\n"                                                                                     \
    "       amesh cast [--node HOST:PORT] [--timeout MS] [--key-file FILE] TYPE ID ACTION "        \
    "[JSON]\n"

#define CALL_HELP                                                                                  \
    CALL_USAGE                                                                                     \
    "\n"                                                                                           \
    "Sends ACTION with a JSON payload to the actor TYPE/ID through a node. call\n"                 \
    "prints the reply as JSON; cast prints nothing once the node accepted it.\n"                   \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to ask (default " AM_CLI_DEFAULT_NODE ")\n"                      \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"                                                        \
    "\n"                                                                                           \
    "JSON is any JSON value; without it the payload is null. \"-\" reads it from\n"                \
    "standard input and \"@FILE\" from FILE (one argument holds at most 128 KiB).\n"               \
    "A negative number needs nothing special: amesh call counter c1 add -5.\n"                     \
    "After \"--\" every argument is positional.\n"                                                 \
    "\n"                                                                                           \
    "Exit status: 0 done, 1 error reply, 2 usage error, 69 node unreachable,\n"                    \
    "75 retryable error (busy, overloaded, shutting down, timeout).\n"

#define STATUS_USAGE                                                                               \
    "usage: amesh status [--node HOST:PORT] [--timeout MS] [--key-file FILE] [--json]\n"

#define STATUS_HELP                                                                                \
    STATUS_USAGE                                                                                   \
    "\n"                                                                                           \
    "Prints a node's status: one \"key: value\" line per value, nested keys\n"                     \
    "joined with dots, or the whole status as one JSON object with --json.\n"                      \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to ask (default " AM_CLI_DEFAULT_NODE ")\n"                      \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --json            print JSON\n"                                                             \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"

#define MEMBERS_USAGE                                                                              \
    "usage: amesh members [--node HOST:PORT] [--timeout MS] [--key-file FILE] [--json]\n"

#define MEMBERS_HELP                                                                               \
    MEMBERS_USAGE                                                                                  \
    "\n"                                                                                           \
    "Prints the cluster's members as one node sees them: name, address, state\n"                   \
    "(alive, suspect, dead, left) and incarnation, one per line, or with --json\n"                 \
    "{\"members\":[{\"name\",\"addr\",\"state\",\"incarnation\"}...]}.\n"                          \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to ask (default " AM_CLI_DEFAULT_NODE ")\n"                      \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --json            print JSON\n"                                                             \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"

#define RING_USAGE                                                                                 \
    "usage: amesh ring [--node HOST:PORT] [--timeout MS] [--key-file FILE] [--json]\n"

#define RING_HELP                                                                                  \
    RING_USAGE                                                                                     \
    "\n"                                                                                           \
    "Prints the placement ring a node built from its view: its version, the\n"                     \
    "points per member, and each alive or suspect member with its share of the\n"                  \
    "key space, or with --json {\"version\",\"vnodes\",\"members\":[{\"name\",\"share\"}]}.\n"     \
    "Nodes with the same view print the same version.\n"                                           \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to ask (default " AM_CLI_DEFAULT_NODE ")\n"                      \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --json            print JSON\n"                                                             \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"

#define ACTORS_USAGE                                                                               \
    "usage: amesh actors [--node HOST:PORT] [--timeout MS] [--key-file FILE] [--json]\n"

#define ACTORS_HELP                                                                                \
    ACTORS_USAGE                                                                                   \
    "\n"                                                                                           \
    "Prints the keys (type/id) of the actors active on one node, one per line,\n"                  \
    "or with --json {\"active\",\"keys\":[...],\"truncated\"}: at most 100000 keys\n"              \
    "are listed; active counts them all.\n"                                                        \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to ask (default " AM_CLI_DEFAULT_NODE ")\n"                      \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --json            print JSON\n"                                                             \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"

#define LEAVE_USAGE "usage: amesh leave [--node HOST:PORT] [--timeout MS] [--key-file FILE]\n"

#define LEAVE_HELP                                                                                 \
    LEAVE_USAGE                                                                                    \
    "\n"                                                                                           \
    "Asks a node to leave the cluster and stop, as SIGTERM does: its `left`\n"                     \
    "state spreads to every member, it finishes what is in flight, writes\n"                       \
    "every actor's state and exits 0. Returns once the node accepted.\n"                           \
    "\n"                                                                                           \
    "  --node HOST:PORT  the node to stop (default " AM_CLI_DEFAULT_NODE ")\n"                     \
    "  --timeout MS      give up after MS milliseconds (default 10000)\n"                          \
    "  --key-file FILE   the cluster key, when the node has one (or AMESH_KEY_FILE)\n"             \
    "  -h, --help        print this help\n"

#define KEYGEN_USAGE "usage: amesh keygen FILE\n"

#define KEYGEN_HELP                                                                                \
    KEYGEN_USAGE                                                                                   \
    "\n"                                                                                           \
    "Writes a new random 32-byte cluster key to FILE (64 hex digits, mode 0600;\n"                 \
    "an existing FILE is never overwritten). Give the same file to every node\n"                   \
    "(amesh node --key-file FILE) and every client (--key-file or AMESH_KEY_FILE).\n"

/* ---- arguments ------------------------------------------------------------ */

enum opt_id { OPT_NODE, OPT_TIMEOUT, OPT_JSON, OPT_KEY_FILE };

static const struct {
    const char *name;
    int takes_value;
} options[] = {
    [OPT_NODE] = {"node", 1},
    [OPT_TIMEOUT] = {"timeout", 1},
    [OPT_JSON] = {"json", 0},
    [OPT_KEY_FILE] = {"key-file", 1},
};

/* The key file of this invocation (one per process), set by
 * check_node_timeout and used by connect_node. */
static const char *cli_key_file;

/* The most positionals any subcommand takes (call: TYPE ID ACTION JSON). */
#define MAX_POS 4

struct parsed {
    int help;
    int json;
    const char *node;
    const char *timeout;
    const char *key_file;
    const char *pos[MAX_POS];
    int npos;
};

/* Splits argv[1..] into flags and positionals. allow_json says whether
 * --json belongs to this subcommand; max_pos how many positionals it takes. */
static int parse_common(struct parsed *p, int argc, char **argv, int allow_json, int max_pos,
                        char *err, size_t errlen)
{
    int flags_done = 0;
    memset(p, 0, sizeof *p);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int is_flag = !flags_done && a[0] == '-' && a[1] != '\0' && !(a[1] >= '0' && a[1] <= '9');
        if (!is_flag) {
            if (p->npos == max_pos) {
                snprintf(err, errlen, "unexpected argument '%s'", a);
                return -EINVAL;
            }
            p->pos[p->npos++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            flags_done = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            p->help = 1;
            return 0;
        }
        if (a[1] != '-') {
            snprintf(err, errlen, "unknown option '%s'", a);
            return -EINVAL;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        int id = -1;
        for (int k = 0; k < (int)(sizeof options / sizeof options[0]); k++)
            if (strlen(options[k].name) == name_len && memcmp(options[k].name, name, name_len) == 0)
                id = k;
        if (id < 0 || (id == OPT_JSON && !allow_json)) {
            snprintf(err, errlen, "unknown option '--%.*s'", (int)name_len, name);
            return -EINVAL;
        }
        const char *value = NULL;
        if (options[id].takes_value) {
            if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                snprintf(err, errlen, "option '--%s' needs a value", options[id].name);
                return -EINVAL;
            }
        } else if (eq) {
            snprintf(err, errlen, "option '--%s' takes no value", options[id].name);
            return -EINVAL;
        }
        switch (id) {
        case OPT_NODE:
            p->node = value;
            break;
        case OPT_TIMEOUT:
            p->timeout = value;
            break;
        case OPT_KEY_FILE:
            p->key_file = value;
            break;
        default:
            p->json = 1;
            break;
        }
    }
    return 0;
}

/* Checks --node and --timeout (or fills in their defaults); the key file
 * is --key-file, else AMESH_KEY_FILE (as for the node), else none. */
static int check_node_timeout(const struct parsed *p, const char **node, int *timeout_ms, char *err,
                              size_t errlen)
{
    struct sockaddr_in sa;
    const char *env = getenv("AMESH_KEY_FILE");
    cli_key_file = p->key_file ? p->key_file : env && *env ? env : NULL;
    *node = p->node ? p->node : AM_CLI_DEFAULT_NODE;
    if (am_addr_parse(*node, AM_CLIENT_DEFAULT_PORT, &sa)) {
        snprintf(err, errlen, "invalid --node '%s' (expected HOST:PORT, e.g. %s)", *node,
                 AM_CLI_DEFAULT_NODE);
        return -EINVAL;
    }
    *timeout_ms = AM_CLI_DEFAULT_TIMEOUT_MS;
    if (p->timeout) {
        char *end;
        errno = 0;
        long v = strtol(p->timeout, &end, 10);
        if (errno || end == p->timeout || *end || v < 1 || v > INT_MAX) {
            snprintf(err, errlen, "invalid --timeout '%s' (expected milliseconds, at least 1)",
                     p->timeout);
            return -EINVAL;
        }
        *timeout_ms = (int)v;
    }
    return 0;
}

static int check_name(const char *what, const char *s, size_t max, int no_slash, char *err,
                      size_t errlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > max || (no_slash && strchr(s, '/'))) {
        snprintf(err, errlen, "%s must be 1 to %zu bytes%s, got '%.64s%s'", what, max,
                 no_slash ? " without '/'" : "", s, n > 64 ? "..." : "");
        return -EINVAL;
    }
    return 0;
}

int am_call_args_parse(struct am_call_args *a, int argc, char **argv, char *err, size_t errlen)
{
    static const char *const names[] = {"TYPE", "ID", "ACTION"};
    struct parsed p;
    memset(a, 0, sizeof *a);
    a->kind = argc > 0 && strcmp(argv[0], "cast") == 0 ? AM_MSG_CAST : AM_MSG_CALL;
    int rc = parse_common(&p, argc, argv, 0, MAX_POS, err, errlen);
    if (rc)
        return rc;
    if (p.help) {
        a->help = 1;
        return 0;
    }
    if (p.npos < 3) {
        snprintf(err, errlen, "missing %s",
                 p.npos == 0   ? "TYPE ID ACTION"
                 : p.npos == 1 ? "ID ACTION"
                               : names[2]);
        return -EINVAL;
    }
    rc = check_node_timeout(&p, &a->node, &a->timeout_ms, err, errlen);
    if (!rc)
        rc = check_name(names[0], p.pos[0], AM_MAX_TYPE, 1, err, errlen);
    if (!rc)
        rc = check_name(names[1], p.pos[1], AM_MAX_ID, 0, err, errlen);
    if (!rc)
        rc = check_name(names[2], p.pos[2], AM_MAX_ACTION, 0, err, errlen);
    if (rc)
        return rc;
    a->type = p.pos[0];
    a->id = p.pos[1];
    a->action = p.pos[2];
    a->payload = p.npos > 3 ? p.pos[3] : NULL;
    return 0;
}

int am_status_args_parse(struct am_status_args *a, int argc, char **argv, char *err, size_t errlen)
{
    struct parsed p;
    memset(a, 0, sizeof *a);
    int rc = parse_common(&p, argc, argv, 1, 0, err, errlen);
    if (rc)
        return rc;
    if (p.help) {
        a->help = 1;
        return 0;
    }
    a->json = p.json;
    return check_node_timeout(&p, &a->node, &a->timeout_ms, err, errlen);
}

/* ---- payload -------------------------------------------------------------- */

static int read_stream(FILE *f, struct am_buf *out)
{
    for (;;) {
        if (am_buf_reserve(out, 64u << 10))
            return -ENOMEM;
        size_t n = fread(out->data + out->len, 1, out->cap - out->len, f);
        out->len += n;
        if (out->len > AM_CLI_MAX_PAYLOAD)
            return AM_ETOOBIG;
        if (n == 0)
            return ferror(f) ? -EIO : 0;
    }
}

int am_cli_payload_read(const char *arg, struct am_buf *out, char *err, size_t errlen)
{
    out->len = 0;
    if (strcmp(arg, "-") != 0 && arg[0] != '@') {
        if (am_buf_set(out, arg, strlen(arg)) == 0)
            return 0;
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    const char *what = arg[0] == '@' ? arg + 1 : "standard input";
    if (arg[0] == '@' && arg[1] == '\0') {
        snprintf(err, errlen, "missing file name after '@'");
        return -EINVAL;
    }
    FILE *f = arg[0] == '@' ? fopen(arg + 1, "rb") : stdin;
    int rc;
    if (!f) {
        rc = -errno;
    } else {
        errno = 0;
        rc = read_stream(f, out);
        if (rc == -EIO && errno)
            rc = -errno;
        if (f != stdin)
            fclose(f);
    }
    if (rc == AM_ETOOBIG)
        snprintf(err, errlen, "payload in %s is larger than %u MiB", what,
                 AM_CLI_MAX_PAYLOAD >> 20);
    else if (rc)
        snprintf(err, errlen, "cannot read payload from %s: %s", what, strerror(-rc));
    if (rc)
        out->len = 0;
    return rc;
}

/* ---- printing ------------------------------------------------------------- */

/* Appends s with control characters replaced: whatever a node sends must not
 * move the cursor or recolour the operator's terminal, nor break a line. */
static int append_printable(struct am_buf *out, const char *s, size_t n)
{
    if (am_buf_reserve(out, n))
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '\r' || c == '\t')
            c = ' ';
        else if (c < 0x20 || c == 0x7f)
            c = '?';
        out->data[out->len++] = c;
    }
    return 0;
}

/* Appends one object's text: a str as is, anything else as compact JSON. */
static int append_value(struct am_buf *out, const uint8_t *p, size_t len)
{
    const uint8_t *pos = p;
    const char *s;
    uint32_t n;
    if (am_mp_read_str(&pos, p + len, &s, &n) == 0 && pos == p + len)
        return append_printable(out, s, n);
    struct am_buf json;
    am_buf_init(&json);
    int rc = am_msgpack_to_json(p, len, &json);
    if (!rc)
        rc = append_printable(out, (const char *)json.data, json.len);
    am_buf_close(&json);
    return rc;
}

/* Prints the entries of the map at *pos under prefix. The whole reply was
 * checked by am_mp_check_one, so reads here fail only on depth or memory. */
static int status_walk(const uint8_t **pos, const uint8_t *end, struct am_buf *prefix, int depth,
                       struct am_buf *out)
{
    uint32_t n;
    if (depth >= AM_MP_MAX_DEPTH || am_mp_read_map(pos, end, &n))
        return AM_EPROTO;
    size_t plen = prefix->len;
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        const uint8_t *start = *pos;
        prefix->len = plen;
        if (plen)
            rc = am_buf_append(prefix, ".", 1);
        if (!rc)
            rc = am_mp_skip(pos, end);
        if (!rc)
            rc = append_value(prefix, start, (size_t)(*pos - start));
        if (rc)
            break;
        /* A non-empty map is a branch; everything else, {} included, a leaf. */
        const uint8_t *q = *pos;
        uint32_t m;
        if (am_mp_read_map(&q, end, &m) == 0 && m > 0) {
            rc = status_walk(pos, end, prefix, depth + 1, out);
            continue;
        }
        start = *pos;
        rc = am_mp_skip(pos, end);
        if (!rc)
            rc = am_buf_append(out, prefix->data, prefix->len);
        if (!rc)
            rc = am_buf_append(out, ": ", 2);
        if (!rc)
            rc = append_value(out, start, (size_t)(*pos - start));
        if (!rc)
            rc = am_buf_append(out, "\n", 1);
    }
    prefix->len = plen;
    return rc;
}

int am_status_text(const uint8_t *p, size_t len, struct am_buf *out)
{
    if (!p || am_mp_check_one(p, len))
        return AM_EPROTO;
    size_t at = out->len;
    int rc;
    if (am_mp_peek(p, p + len) != AM_MP_MAP) {
        rc = append_value(out, p, len);
        if (!rc)
            rc = am_buf_append(out, "\n", 1);
    } else {
        struct am_buf prefix;
        const uint8_t *pos = p;
        am_buf_init(&prefix);
        rc = status_walk(&pos, p + len, &prefix, 0, out);
        am_buf_close(&prefix);
    }
    if (rc)
        out->len = at;
    return rc;
}

/* Writes the whole of b to stdout; a full disk or a closed pipe is an error,
 * not a silent success. */
static int write_stdout(const struct am_buf *b)
{
    if (b->len && fwrite(b->data, 1, b->len, stdout) != b->len)
        return -EIO;
    return fflush(stdout) ? -EIO : 0;
}

static int usage_error(const char *err, const char *usage, const char *cmd)
{
    fprintf(stderr, "amesh: %s\n%sTry 'amesh %s --help'.\n", err, usage, cmd);
    return AM_EXIT_USAGE;
}

/* One line on stderr for an error reply; the exit status it calls for. */
static int report_error_reply(int status, const uint8_t *body, size_t len)
{
    struct am_buf msg;
    am_buf_init(&msg);
    if (append_value(&msg, body, len))
        msg.len = 0;
    if (status > AM_ST_OK && status < AM_ST__COUNT)
        fprintf(stderr, "amesh: %s: %.*s\n", am_status_name(status), (int)msg.len,
                msg.len ? (const char *)msg.data : "");
    else
        fprintf(stderr, "amesh: status %d: %.*s\n", status, (int)msg.len,
                msg.len ? (const char *)msg.data : "");
    am_buf_close(&msg);
    return am_status_retryable(status) ? AM_EXIT_TEMPFAIL : AM_EXIT_ERROR;
}

/* The exit status for a round trip that produced no reply. */
static int report_failure(int rc, const char *node, int timeout_ms)
{
    if (rc == AM_ETIMEOUT) {
        fprintf(stderr, "amesh: %s: no reply from %s within %d ms\n", am_status_name(AM_ST_TIMEOUT),
                node, timeout_ms);
        return AM_EXIT_TEMPFAIL;
    }
    if (rc == AM_EPROTO) {
        fprintf(stderr, "amesh: malformed reply from %s\n", node);
        return AM_EXIT_ERROR;
    }
    if (rc == -ENOMEM) {
        fprintf(stderr, "amesh: out of memory\n");
        return AM_EXIT_ERROR;
    }
    if (rc == -EACCES) {
        fprintf(stderr, "amesh: %s does not hold this cluster key\n", node);
        return AM_EXIT_ERROR;
    }
    if (rc == -ENOKEY) {
        fprintf(stderr, "amesh: %s requires the cluster key (--key-file or AMESH_KEY_FILE)\n",
                node);
        return AM_EXIT_ERROR;
    }
    if (rc == -ECONNRESET && !cli_key_file) {
        fprintf(stderr,
                "amesh: connection to %s lost: %s (a node started with --key-file closes "
                "connections without its key)\n",
                node, am_strerror(rc));
        return AM_EXIT_TEMPFAIL;
    }
    fprintf(stderr, "amesh: connection to %s lost: %s\n", node, am_strerror(rc));
    return AM_EXIT_TEMPFAIL;
}

static struct am_client *connect_node(const char *node, int timeout_ms)
{
    struct am_client *c;
    char err[1200];
    uint8_t key[AM_KEY_BYTES];
    if (cli_key_file && (am_seal_init() || am_key_load(cli_key_file, key, err, sizeof err))) {
        fprintf(stderr, "amesh: %s\n", err);
        return NULL;
    }
    if (am_client_open(&c, node, timeout_ms, err, sizeof err)) {
        fprintf(stderr, "amesh: cannot reach %s: %s\n", node, err);
        return NULL;
    }
    if (cli_key_file) {
        int rc = am_client_set_key(c, key);
        sodium_memzero(key, sizeof key);
        if (rc) {
            fprintf(stderr, "amesh: cannot reach %s: %s\n", node, am_strerror(rc));
            am_client_close(c);
            return NULL;
        }
    }
    return c;
}

/* Prints a successful reply as JSON and a newline. */
static int print_json_reply(const struct am_buf *reply)
{
    struct am_buf json;
    am_buf_init(&json);
    int rc = am_msgpack_to_json(reply->data, reply->len, &json);
    if (rc) {
        fprintf(stderr, "amesh: cannot print the reply: %s\n", am_strerror(rc));
        am_buf_close(&json);
        return AM_EXIT_ERROR;
    }
    json.data[json.len++] = '\n'; /* over the NUL am_msgpack_to_json leaves */
    rc = write_stdout(&json);
    am_buf_close(&json);
    if (rc) {
        fprintf(stderr, "amesh: cannot write the reply: %s\n", strerror(errno ? errno : EIO));
        return AM_EXIT_ERROR;
    }
    return AM_EXIT_OK;
}

/* ---- subcommands ---------------------------------------------------------- */

int am_cmd_call(int argc, char **argv)
{
    struct am_call_args a;
    char err[512];
    const char *cmd = argc > 0 && strcmp(argv[0], "cast") == 0 ? "cast" : "call";
    if (am_call_args_parse(&a, argc, argv, err, sizeof err))
        return usage_error(err, CALL_USAGE, cmd);
    if (a.help) {
        fputs(CALL_HELP, stdout);
        return AM_EXIT_OK;
    }
    struct am_buf text, payload, reply;
    struct am_client *c = NULL;
    int status = 0, ex;
    am_buf_init(&text);
    am_buf_init(&payload);
    am_buf_init(&reply);
    if (a.payload) {
        if (am_cli_payload_read(a.payload, &text, err, sizeof err)) {
            fprintf(stderr, "amesh: %s\n", err);
            ex = AM_EXIT_USAGE;
            goto out;
        }
        if (am_json_to_msgpack((const char *)text.data, text.len, &payload, err, sizeof err)) {
            fprintf(stderr, "amesh: invalid JSON payload: %s\n", err);
            ex = AM_EXIT_USAGE;
            goto out;
        }
        am_buf_close(&text); /* a 1 MiB payload need not be held twice */
    }
    c = connect_node(a.node, a.timeout_ms);
    if (!c) {
        ex = AM_EXIT_UNAVAILABLE;
        goto out;
    }
    int rc = am_client_call(c, a.kind, a.type, a.id, a.action, payload.data, payload.len, &reply,
                            &status);
    if (rc)
        ex = report_failure(rc, a.node, a.timeout_ms);
    else if (status != AM_ST_OK)
        ex = report_error_reply(status, reply.data, reply.len);
    else if (a.kind == AM_MSG_CAST)
        ex = AM_EXIT_OK;
    else
        ex = print_json_reply(&reply);
out:
    am_client_close(c);
    am_buf_close(&text);
    am_buf_close(&payload);
    am_buf_close(&reply);
    return ex;
}

/* One member map {name, addr, state, incarnation} as a line of the table. */
static int member_line(const uint8_t **pos, const uint8_t *end, struct am_buf *out)
{
    uint32_t n;
    const char *f[3] = {"", "", ""};
    uint32_t flen[3] = {0, 0, 0};
    uint64_t inc = 0;
    if (am_mp_read_map(pos, end, &n))
        return AM_EPROTO;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t klen;
        if (am_mp_read_str(pos, end, &k, &klen))
            return AM_EPROTO;
        int slot = klen == 4 && !memcmp(k, "name", 4)    ? 0
                   : klen == 4 && !memcmp(k, "addr", 4)  ? 1
                   : klen == 5 && !memcmp(k, "state", 5) ? 2
                                                         : -1;
        if (slot >= 0) {
            if (am_mp_read_str(pos, end, &f[slot], &flen[slot]))
                return AM_EPROTO;
        } else if (klen == 11 && !memcmp(k, "incarnation", 11)) {
            if (am_mp_read_uint(pos, end, &inc))
                return AM_EPROTO;
        } else if (am_mp_skip(pos, end)) {
            return AM_EPROTO;
        }
    }
    char num[24];
    int rc = 0;
    for (int k = 0; k < 3 && !rc; k++) {
        size_t width = k == 0 ? 24 : k == 1 ? 22 : 8;
        rc = append_printable(out, f[k], flen[k]);
        for (size_t pad = flen[k]; !rc && pad < width; pad++)
            rc = am_buf_append(out, " ", 1);
        if (!rc)
            rc = am_buf_append(out, " ", 1);
    }
    snprintf(num, sizeof num, "%llu\n", (unsigned long long)inc);
    return rc ? rc : am_buf_append(out, num, strlen(num));
}

int am_members_text(const uint8_t *p, size_t len, struct am_buf *out)
{
    const uint8_t *pos = p, *end = p + len;
    uint32_t n, count;
    const char *k;
    uint32_t klen;
    static const char head[] =
        "NAME                     ADDR                   STATE    INCARNATION\n";
    if (!len || am_mp_read_map(&pos, end, &n) || n != 1 || am_mp_read_str(&pos, end, &k, &klen) ||
        klen != 7 || memcmp(k, "members", 7) || am_mp_read_array(&pos, end, &count))
        return AM_EPROTO;
    size_t at = out->len;
    int rc = am_buf_append(out, head, sizeof head - 1);
    for (uint32_t i = 0; i < count && !rc; i++)
        rc = member_line(&pos, end, out);
    if (!rc && pos != end)
        rc = AM_EPROTO;
    if (rc)
        out->len = at; /* nothing half-printed */
    return rc;
}

int am_ring_text(const uint8_t *p, size_t len, struct am_buf *out)
{
    const uint8_t *pos = p, *end = p + len;
    uint32_t n, count = 0;
    uint64_t vnodes = 0;
    const char *version = "";
    uint32_t vlen = 0;
    const uint8_t *list = NULL;
    size_t at = out->len;
    if (!len || am_mp_read_map(&pos, end, &n))
        return AM_EPROTO;
    for (uint32_t i = 0; i < n; i++) {
        const char *k;
        uint32_t klen;
        int rc = am_mp_read_str(&pos, end, &k, &klen);
        if (!rc && klen == 7 && !memcmp(k, "version", 7))
            rc = am_mp_read_str(&pos, end, &version, &vlen);
        else if (!rc && klen == 6 && !memcmp(k, "vnodes", 6))
            rc = am_mp_read_uint(&pos, end, &vnodes);
        else if (!rc && klen == 7 && !memcmp(k, "members", 7)) {
            rc = am_mp_read_array(&pos, end, &count);
            list = pos;
            for (uint32_t j = 0; !rc && j < count; j++)
                rc = am_mp_skip(&pos, end);
        } else if (!rc)
            rc = am_mp_skip(&pos, end);
        if (rc)
            return AM_EPROTO;
    }
    if (pos != end || !list)
        return AM_EPROTO;
    char line[96];
    snprintf(line, sizeof line, ", %llu points per member, %u members\n",
             (unsigned long long)vnodes, count);
    int rc = am_buf_append(out, "ring ", 5);
    if (!rc)
        rc = append_printable(out, version, vlen);
    if (!rc)
        rc = am_buf_append(out, line, strlen(line));
    for (uint32_t j = 0; !rc && j < count; j++) {
        const char *name = "";
        uint32_t nlen = 0, m;
        double share = 0;
        if (am_mp_read_map(&list, end, &m)) {
            rc = AM_EPROTO;
            break;
        }
        for (uint32_t i = 0; !rc && i < m; i++) {
            const char *k;
            uint32_t klen;
            rc = am_mp_read_str(&list, end, &k, &klen);
            if (!rc && klen == 4 && !memcmp(k, "name", 4))
                rc = am_mp_read_str(&list, end, &name, &nlen);
            else if (!rc && klen == 5 && !memcmp(k, "share", 5) && list < end && *list == 0xcb &&
                     end - list >= 9) {
                uint64_t bits = 0;
                for (int b = 1; b <= 8; b++)
                    bits = bits << 8 | list[b];
                memcpy(&share, &bits, sizeof share);
                list += 9;
            } else if (!rc) {
                rc = am_mp_skip(&list, end);
            }
        }
        if (!rc)
            rc = append_printable(out, name, nlen);
        snprintf(line, sizeof line, "%*s%6.2f%%\n", nlen < 24 ? (int)(24 - nlen) : 1, "",
                 share * 100.0);
        if (!rc)
            rc = am_buf_append(out, line, strlen(line));
    }
    if (rc)
        out->len = at;
    return rc;
}

int am_actors_text(const uint8_t *p, size_t len, struct am_buf *out)
{
    const uint8_t *pos = p, *end = p + len;
    uint32_t n, count = 0;
    uint64_t active = 0;
    int truncated = 0, have_keys = 0;
    size_t at = out->len;
    if (!len || am_mp_read_map(&pos, end, &n))
        return AM_EPROTO;
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        const char *k;
        uint32_t klen;
        rc = am_mp_read_str(&pos, end, &k, &klen);
        if (!rc && klen == 6 && !memcmp(k, "active", 6)) {
            rc = am_mp_read_uint(&pos, end, &active);
        } else if (!rc && klen == 9 && !memcmp(k, "truncated", 9)) {
            rc = am_mp_read_bool(&pos, end, &truncated);
        } else if (!rc && klen == 4 && !memcmp(k, "keys", 4)) {
            rc = am_mp_read_array(&pos, end, &count);
            have_keys = 1;
            for (uint32_t j = 0; !rc && j < count; j++) {
                const char *key;
                uint32_t kl;
                rc = am_mp_read_str(&pos, end, &key, &kl);
                if (!rc)
                    rc = append_printable(out, key, kl);
                if (!rc)
                    rc = am_buf_append(out, "\n", 1);
            }
        } else if (!rc) {
            rc = am_mp_skip(&pos, end);
        }
    }
    if (!rc && (pos != end || !have_keys))
        rc = AM_EPROTO;
    if (!rc && truncated) {
        char line[96];
        snprintf(line, sizeof line, "(%llu active, the first %u listed)\n",
                 (unsigned long long)active, count);
        rc = am_buf_append(out, line, strlen(line));
    }
    if (rc) {
        out->len = at;
        return AM_EPROTO;
    }
    return 0;
}

/* The read-only commands: each asks one message and prints its reply. */
static const struct query_cmd {
    int kind;
    const char *name, *usage, *help;
    int (*text)(const uint8_t *p, size_t len, struct am_buf *out);
} queries[] = {
    {AM_MSG_STATUS, "status", STATUS_USAGE, STATUS_HELP, am_status_text},
    {AM_MSG_MEMBERS, "members", MEMBERS_USAGE, MEMBERS_HELP, am_members_text},
    {AM_MSG_RING, "ring", RING_USAGE, RING_HELP, am_ring_text},
    {AM_MSG_ACTORS, "actors", ACTORS_USAGE, ACTORS_HELP, am_actors_text},
};

/* Asks, then prints text or JSON. */
static int query(int argc, char **argv, int kind)
{
    struct am_status_args a;
    char err[512];
    const struct query_cmd *q = queries;
    while (q->kind != kind)
        q++;
    const char *name = q->name;
    if (am_status_args_parse(&a, argc, argv, err, sizeof err))
        return usage_error(err, q->usage, name);
    if (a.help) {
        fputs(q->help, stdout);
        return AM_EXIT_OK;
    }
    struct am_client *c = connect_node(a.node, a.timeout_ms);
    if (!c)
        return AM_EXIT_UNAVAILABLE;
    struct am_buf reply, text;
    int status = 0, ex;
    am_buf_init(&reply);
    am_buf_init(&text);
    int rc = am_client_simple(c, kind, &reply, &status);
    if (rc) {
        ex = report_failure(rc, a.node, a.timeout_ms);
    } else if (status != AM_ST_OK) {
        ex = report_error_reply(status, reply.data, reply.len);
    } else if (a.json) {
        ex = print_json_reply(&reply);
    } else {
        rc = q->text(reply.data, reply.len, &text);
        if (rc) {
            fprintf(stderr, "amesh: cannot print the %s: %s\n", name, am_strerror(rc));
            ex = AM_EXIT_ERROR;
        } else if (write_stdout(&text)) {
            fprintf(stderr, "amesh: cannot write the %s: %s\n", name,
                    strerror(errno ? errno : EIO));
            ex = AM_EXIT_ERROR;
        } else {
            ex = AM_EXIT_OK;
        }
    }
    am_client_close(c);
    am_buf_close(&reply);
    am_buf_close(&text);
    return ex;
}

int am_cmd_status(int argc, char **argv)
{
    return query(argc, argv, AM_MSG_STATUS);
}

int am_cmd_members(int argc, char **argv)
{
    return query(argc, argv, AM_MSG_MEMBERS);
}

int am_cmd_ring(int argc, char **argv)
{
    return query(argc, argv, AM_MSG_RING);
}

int am_cmd_actors(int argc, char **argv)
{
    return query(argc, argv, AM_MSG_ACTORS);
}

int am_cmd_leave(int argc, char **argv)
{
    struct parsed p;
    char err[512];
    const char *node;
    int timeout_ms;
    if (parse_common(&p, argc, argv, 0, 0, err, sizeof err) ||
        (!p.help && check_node_timeout(&p, &node, &timeout_ms, err, sizeof err)))
        return usage_error(err, LEAVE_USAGE, "leave");
    if (p.help) {
        fputs(LEAVE_HELP, stdout);
        return AM_EXIT_OK;
    }
    struct am_client *c = connect_node(node, timeout_ms);
    if (!c)
        return AM_EXIT_UNAVAILABLE;
    struct am_buf reply;
    int status = 0, ex = AM_EXIT_OK;
    am_buf_init(&reply);
    int rc = am_client_simple(c, AM_MSG_LEAVE, &reply, &status);
    if (rc)
        ex = report_failure(rc, node, timeout_ms);
    else if (status != AM_ST_OK)
        ex = report_error_reply(status, reply.data, reply.len);
    am_client_close(c);
    am_buf_close(&reply);
    return ex;
}

int am_cmd_keygen(int argc, char **argv)
{
    char err[1200];
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(KEYGEN_HELP, stdout);
        return AM_EXIT_OK;
    }
    if (argc != 2 || argv[1][0] == '-')
        return usage_error(argc < 2 ? "missing FILE" : "expected exactly one FILE", KEYGEN_USAGE,
                           "keygen");
    if (am_seal_init() || am_key_generate(argv[1], err, sizeof err)) {
        fprintf(stderr, "amesh: %s\n", am_seal_init() ? "cannot initialise libsodium" : err);
        return AM_EXIT_ERROR;
    }
    return AM_EXIT_OK;
}
