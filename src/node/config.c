/* config.c - node settings from flags, the environment and a file (see config.h).
 *
 * Each option is one row of a table: its flag, what it sets, how it parses.
 * The file is read first, then the environment, then the flags, each
 * overwriting the one before, which gives the documented precedence with one
 * code path (set()) and one set of messages.
 *
 * The file is INI, parsed by libinih (Debian's libinih-dev): every key of its
 * [node] section is a flag without the leading dashes. inih is driven through
 * ini_parse_stream with a reader that counts lines, because Debian builds it
 * without INI_HANDLER_LINENO (the handler is not told the line) and with a
 * 200-byte line buffer whose overflow it silently cuts off: the reader knows
 * the line of every key it hands out, and refuses a longer line instead.
 * It also drops indentation, so an indented key is a key, never the
 * continuation of the value above (inih's multi-line values). */
#include "config.h"

#include "addr.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind {
    K_STR, K_ADDR, K_SIZE, K_UINT, K_UINT0, K_SYNC, K_LEVEL, K_FORMAT, K_LIB, K_JOIN, K_PROFILE, K_CONFIG,
    K_HTTP_AUTH
};

struct option_row {
    const char *flag; /* without the leading "--" */
    enum kind kind;
    size_t off;       /* offset of the field in struct am_config */
    size_t width;     /* char array size for strings, integer width for numbers */
    uint64_t max;     /* for numbers */
    const char *help;
};

#define F(field) offsetof(struct am_config, field), sizeof(((struct am_config *)0)->field)

static const struct option_row rows[] = {
    {"config", K_CONFIG, F(config), 0, "FILE      read options from an INI file: keys without the dashes in\n                               its [node] section; AMESH_ variables and flags win"},
    {"name", K_STR, F(name), 0, "NAME      unique node name (default: the advertise address)"},
    {"bind", K_ADDR, F(bind), 0, "HOST:PORT TCP and UDP address: clients, peers, gossip (127.0.0.1:7946)"},
    {"advertise", K_ADDR, F(advertise), 0, "HOST:PORT address peers use (default: --bind)"},
    {"data", K_STR, F(data), 0, "DIR       data directory (./data)"},
    {"sync", K_SYNC, F(sync_interval_ms), 0, "MODE      durable | interval:MS (durable)"},
    {"log-level", K_LEVEL, F(log_level), 0, "LEVEL     error | warn | info | debug (info)"},
    {"log-format", K_FORMAT, F(log_format), 0, "FORMAT    text | json: one JSON object per line (text)"},
    {"join", K_JOIN, 0, 0, 0, "HOST:PORT join the cluster through this member (repeatable;\n                               AMESH_JOIN takes a comma-separated list)"},
    {"profile", K_PROFILE, F(profile), 0, "NAME      membership timings: lan | local | wan (lan)"},
    {"key-file", K_STR, F(key_file), 0, "FILE      cluster key (amesh keygen): authenticate and encrypt\n                               every packet and connection"},
    {"actors", K_LIB, 0, 0, 0, "LIB.so    load actor types from a shared library (repeatable;\n                               AMESH_ACTORS takes one)"},
    {"max-payload", K_SIZE, F(max_payload), 64u << 20, "BYTES     largest message payload (2M)"},
    {"max-state", K_SIZE, F(max_state), 256u << 20, "BYTES     largest actor state (4M)"},
    {"mailbox", K_UINT, F(mailbox), 1u << 20, "N         messages accepted, not yet answered, per actor (1024)"},
    {"max-actors", K_UINT, F(max_actors), 1u << 30, "N         active actors in memory (1000000)"},
    {"idle-timeout", K_UINT, F(idle_ms), 86400000, "MS        deactivate idle actors after (60000)"},
    {"max-connections", K_UINT, F(max_connections), 1u << 20, "N         client connections (10000)"},
    {"max-inflight", K_UINT, F(max_inflight), 1u << 20, "N         calls in flight per connection (4096)"},
    {"replicas", K_UINT, F(replicas), AM_MAX_REPLICAS, "N         copies of each actor's state, on distinct nodes (2)"},
    {"forward-timeout", K_UINT, F(forward_timeout_ms), 3600000, "MS        a call forwarded to its owner fails (retryable)\n                               without a reply after (5000)"},
    {"anti-entropy", K_UINT0, F(anti_entropy_ms), 86400000, "MS        compare digests with each replica about every MS\n                               (30000; 0: never)"},
    {"http", K_ADDR, F(http), 0, "HOST:PORT serve the HTTP API here (default: off)"},
    {"http-token-file", K_STR, F(http_token_file), 0, "FILE      the HTTP API's bearer token (default: derived from the\n                               cluster key; none without a key)"},
    {"http-auth", K_HTTP_AUTH, F(http_auth_all), 0, "WHAT      what needs the token: api (/v1/*, the default) | all\n                               (/metrics too); /health/* stays open"},
    {"http-timeout", K_UINT, F(http_timeout_ms), 3600000, "MS        close an HTTP connection without a request for (10000)"},
};

#define NROWS (sizeof rows / sizeof rows[0])

void am_config_usage(void)
{
    printf("usage: amesh node [options]\n\noptions (each also read from AMESH_<NAME>, "
           "e.g. AMESH_SYNC=interval:100):\n");
    for (size_t i = 0; i < NROWS; i++)
        printf("  --%-16s %s\n", rows[i].flag, rows[i].help);
    printf("  --%-16s %s\n", "help", "          print this help");
}

int am_config_parse_size(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s))
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end || v > (max >> shift))
        return -EINVAL;
    *out = (uint64_t)v << shift;
    return 0;
}

int am_config_parse_sync(const char *s, uint64_t *interval_ms)
{
    if (strcmp(s, "durable") == 0) {
        *interval_ms = 0;
        return 0;
    }
    if (strncmp(s, "interval:", 9) == 0) {
        uint64_t ms;
        if (am_config_parse_size(s + 9, 3600000, &ms) == 0 && ms >= 1 &&
            strpbrk(s + 9, "kKmMgG") == NULL) {
            *interval_ms = ms;
            return 0;
        }
    }
    return -EINVAL;
}

static int set(struct am_config *c, const struct option_row *r, const char *v, const char *from,
               char *err, size_t errlen)
{
    char *field = (char *)c + r->off;
    uint64_t n = 0;
    struct sockaddr_in sa;
    int lvl;
    switch (r->kind) {
    case K_ADDR:
    case K_STR:
    case K_CONFIG:
        if (r->kind == K_ADDR && am_addr_parse(v, 0, &sa)) {
            snprintf(err, errlen, "%s: '%s' is not HOST:PORT with an IPv4 host", from, v);
            return -EINVAL;
        }
        if (*v == '\0' || strlen(v) >= r->width) {
            snprintf(err, errlen, "%s: must be 1 to %zu characters", from, r->width - 1);
            return -EINVAL;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case K_SIZE:
    case K_UINT:
    case K_UINT0: /* 0 allowed: "never" */
        if (am_config_parse_size(v, r->max, &n) || (n == 0 && r->kind != K_UINT0) ||
            (r->kind != K_SIZE && strpbrk(v, "kKmMgG"))) {
            snprintf(err, errlen, "%s: '%s' is not a number from %d to %" PRIu64 "%s", from, v,
                     r->kind == K_UINT0 ? 0 : 1, r->max,
                     r->kind == K_SIZE ? " (k, m, g suffixes allowed)" : "");
            return -EINVAL;
        }
        break;
    case K_SYNC:
        if (am_config_parse_sync(v, &n)) {
            snprintf(err, errlen, "%s: '%s' is neither 'durable' nor 'interval:MS'", from, v);
            return -EINVAL;
        }
        break;
    case K_LEVEL:
        lvl = am_log_parse_level(v);
        if (lvl < 0) {
            snprintf(err, errlen, "%s: '%s' is not error, warn, info or debug", from, v);
            return -EINVAL;
        }
        c->log_level = lvl;
        return 0;
    case K_FORMAT:
        lvl = am_log_parse_format(v);
        if (lvl < 0) {
            snprintf(err, errlen, "%s: '%s' is neither text nor json", from, v);
            return -EINVAL;
        }
        c->log_format = lvl;
        return 0;
    case K_HTTP_AUTH:
        if (strcmp(v, "api") && strcmp(v, "all")) {
            snprintf(err, errlen, "%s: '%s' is neither api nor all", from, v);
            return -EINVAL;
        }
        c->http_auth_all = strcmp(v, "all") == 0;
        return 0;
    case K_PROFILE:
        if (strcmp(v, "lan") && strcmp(v, "local") && strcmp(v, "wan")) {
            snprintf(err, errlen, "%s: '%s' is not lan, local or wan", from, v);
            return -EINVAL;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case K_JOIN:
        /* One seed per flag; the environment may list several, comma-separated. */
        for (const char *p = v; *p;) {
            size_t len = strcspn(p, ",");
            char one[64];
            if (len == 0 || len >= sizeof one) {
                snprintf(err, errlen, "%s: '%s' is not a list of HOST:PORT", from, v);
                return -EINVAL;
            }
            memcpy(one, p, len);
            one[len] = '\0';
            if (am_addr_parse(one, 0, &sa)) {
                snprintf(err, errlen, "%s: '%s' is not HOST:PORT with an IPv4 host", from, one);
                return -EINVAL;
            }
            if (c->njoins == AM_MAX_SEEDS) {
                snprintf(err, errlen, "%s: at most %d seeds", from, AM_MAX_SEEDS);
                return -EINVAL;
            }
            memcpy(c->joins[c->njoins++], one, len + 1);
            p += len + (p[len] == ',');
        }
        return 0;
    case K_LIB:
        if (c->nactor_libs == AM_MAX_ACTOR_LIBS) {
            snprintf(err, errlen, "%s: at most %d libraries", from, AM_MAX_ACTOR_LIBS);
            return -EINVAL;
        }
        c->actor_libs[c->nactor_libs++] = v;
        return 0;
    }
    if (r->width == sizeof(uint64_t))
        memcpy(field, &n, sizeof n);
    else if (r->width == sizeof(unsigned)) {
        unsigned u = (unsigned)n;
        memcpy(field, &u, sizeof u);
    }
    return 0;
}

static void env_name(const char *flag, char *out, size_t len)
{
    size_t i = 0;
    int n = snprintf(out, len, "AMESH_");
    for (i = 0; flag[i] && (size_t)n + i + 1 < len; i++)
        out[n + i] = flag[i] == '-' ? '_' : (char)toupper((unsigned char)flag[i]);
    out[n + i] = '\0';
}

static const struct option_row *find_row(const char *name, size_t len)
{
    for (size_t k = 0; k < NROWS; k++)
        if (strlen(rows[k].flag) == len && strncmp(rows[k].flag, name, len) == 0)
            return &rows[k];
    return NULL;
}

/* The option a misspelt key most likely means: leading dashes dropped,
 * lower-cased, '_' as '-' ("--Max_Payload" -> max-payload); NULL if none. */
static const struct option_row *near_row(const char *name)
{
    char norm[64];
    size_t n = 0;
    while (*name == '-')
        name++;
    for (; *name && n + 1 < sizeof norm; name++)
        norm[n++] = *name == '_' ? '-' : (char)tolower((unsigned char)*name);
    norm[n] = '\0';
    return find_row(norm, n);
}

/* ---- the configuration file ------------------------------------------------ */

#define SECTION "node"

struct file_ctx {
    struct am_config *c;
    FILE *f;
    const char *path;
    int line;          /* of the line last handed to inih */
    int section_line;  /* of the last line that opens a section */
    int set_on[NROWS]; /* the line each non-repeatable key was set on */
    int err_line;      /* of the first error found here (0: none); err holds it */
    int read_errno;
    char *err;
    size_t errlen;
};

/* inih's fgets: counts lines, notes where sections open, and stops at the
 * first error (inih itself would go on) or at a line too long for inih's
 * buffer, which it would otherwise cut silently. */
static char *read_line(char *str, int num, void *stream)
{
    struct file_ctx *x = stream;
    if (x->err_line)
        return NULL;
    errno = 0;
    if (!fgets(str, num, x->f)) {
        if (ferror(x->f))
            x->read_errno = errno ? errno : EIO;
        return NULL;
    }
    x->line++;
    size_t len = strlen(str);
    if (len == 0 || str[len - 1] != '\n') {
        int ch = getc(x->f);
        if (ch == EOF && ferror(x->f)) {
            x->read_errno = errno ? errno : EIO;
            return NULL;
        }
        if (ch != EOF) { /* neither the end of the line nor of the file */
            if (len + 1 < (size_t)num)
                snprintf(x->err, x->errlen, "%s:%d: a NUL byte in the line", x->path, x->line);
            else
                snprintf(x->err, x->errlen,
                         "%s:%d: line longer than %d characters; give this value as a flag "
                         "or an AMESH_ variable",
                         x->path, x->line, num - 2);
            x->err_line = x->line;
            return NULL;
        }
    }
    /* Indentation is dropped: inih would take an indented line for the
     * continuation of the value above it; here every value is one line. */
    size_t lead = strspn(str, " \t\v\f");
    memmove(str, str + lead, len - lead + 1);
    if (str[x->line == 1 && strncmp(str, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0] == '[')
        x->section_line = x->line; /* (after the byte-order mark inih skips) */
    return str;
}

static int fail_at(struct file_ctx *x, int line)
{
    x->err_line = line;
    return 0;
}

/* inih's handler: one key = value of the file. */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct file_ctx *x = user;
    if (x->err_line)
        return 0;
    if (strcmp(section, SECTION) != 0) {
        if (*section == '\0') {
            snprintf(x->err, x->errlen, "%s:%d: '%s' is outside a section; put it under [%s]",
                     x->path, x->line, name, SECTION);
            return fail_at(x, x->line);
        }
        int line = x->section_line ? x->section_line : x->line;
        snprintf(x->err, x->errlen, "%s:%d: unknown section [%s] (amesh reads [%s] only)", x->path,
                 line, section, SECTION);
        return fail_at(x, line);
    }
    const struct option_row *r = find_row(name, strlen(name));
    if (!r) {
        const struct option_row *near = near_row(name);
        if (*name == '\0')
            snprintf(x->err, x->errlen, "%s:%d: a value without a key", x->path, x->line);
        else if (near && near->kind != K_CONFIG)
            snprintf(x->err, x->errlen, "%s:%d: unknown key '%s' (did you mean '%s'?)", x->path,
                     x->line, name, near->flag);
        else
            snprintf(x->err, x->errlen, "%s:%d: unknown key '%s' (see amesh node --help)",
                     x->path, x->line, name);
        return fail_at(x, x->line);
    }
    size_t k = (size_t)(r - rows);
    if (r->kind == K_CONFIG) {
        snprintf(x->err, x->errlen,
                 "%s:%d: 'config' cannot be set in a configuration file (give --config or "
                 "AMESH_CONFIG)",
                 x->path, x->line);
        return fail_at(x, x->line);
    }
    if (r->kind != K_JOIN && r->kind != K_LIB && x->set_on[k]) {
        snprintf(x->err, x->errlen, "%s:%d: '%s' is already set on line %d", x->path, x->line,
                 name, x->set_on[k]);
        return fail_at(x, x->line);
    }
    struct am_config *c = x->c;
    /* A value in double quotes ("a b") stands for what is between them. */
    char unq[1100];
    size_t vlen = strlen(value);
    if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
        if (vlen - 2 >= sizeof unq) {
            snprintf(x->err, x->errlen, "%s:%d: %s: value too long", x->path, x->line, name);
            return fail_at(x, x->line);
        }
        memcpy(unq, value + 1, vlen - 2);
        unq[vlen - 2] = '\0';
        value = unq;
    }
    if (r->kind == K_LIB && c->nactor_libs < AM_MAX_ACTOR_LIBS) {
        /* inih's value lives for this call only: keep a copy. */
        char *copy = c->lib_paths[c->nactor_libs];
        if (strlen(value) >= sizeof c->lib_paths[0]) {
            snprintf(x->err, x->errlen, "%s:%d: %s: at most %zu characters", x->path, x->line,
                     name, sizeof c->lib_paths[0] - 1);
            return fail_at(x, x->line);
        }
        memcpy(copy, value, strlen(value) + 1);
        value = copy;
    }
    char from[1100];
    snprintf(from, sizeof from, "%s:%d: %s", x->path, x->line, name);
    if (set(c, r, value, from, x->err, x->errlen))
        return fail_at(x, x->line);
    x->set_on[k] = x->line;
    return 1;
}

static int read_file(struct am_config *c, const char *path, char *err, size_t errlen)
{
    struct file_ctx x = {.c = c, .path = path, .err = err, .errlen = errlen};
    x.f = fopen(path, "r");
    if (!x.f) {
        snprintf(err, errlen, "cannot read the configuration file '%s': %s", path,
                 strerror(errno));
        return -EINVAL;
    }
    int rc = ini_parse_stream(read_line, &x, on_key, &x);
    fclose(x.f);
    if (x.read_errno) {
        snprintf(err, errlen, "cannot read the configuration file '%s': %s", path,
                 strerror(x.read_errno));
        return -EINVAL;
    }
    /* inih reports the first line it could not parse, which may come before
     * the first key refused here. */
    if (rc > 0 && (!x.err_line || rc < x.err_line)) {
        snprintf(err, errlen, "%s:%d: expected 'key = value', a [section] or a comment", path, rc);
        return -EINVAL;
    }
    if (x.err_line)
        return -EINVAL;
    if (rc < 0) {
        snprintf(err, errlen, "cannot read the configuration file '%s': out of memory", path);
        return -EINVAL;
    }
    return 0;
}

/* ---- flags ------------------------------------------------------------------ */

/* The option argv[*i] names, and its value (*i moves past it); NULL with a
 * message in err for a stray argument, an unknown flag or a missing value. */
static const struct option_row *flag_at(int argc, char **argv, int *i, const char **value,
                                        char *err, size_t errlen)
{
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0) {
        snprintf(err, errlen, "unexpected argument '%s'", a);
        return NULL;
    }
    const char *eq = strchr(a + 2, '=');
    size_t flen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    const struct option_row *r = find_row(a + 2, flen);
    if (!r) {
        snprintf(err, errlen, "unknown option '%.*s' (see amesh node --help)", (int)flen + 2, a);
        return NULL;
    }
    const char *v = eq ? eq + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
    if (!v) {
        snprintf(err, errlen, "--%s needs a value", r->flag);
        return NULL;
    }
    *value = v;
    return r;
}

static int is_help(const char *a)
{
    return strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0;
}

int am_config_parse(struct am_config *c, int argc, char **argv, char *err, size_t errlen)
{
    _Static_assert(sizeof(size_t) == sizeof(uint64_t), "sizes are 64-bit");
    memset(c, 0, sizeof *c);
    snprintf(c->bind, sizeof c->bind, "127.0.0.1:7946");
    snprintf(c->data, sizeof c->data, "./data");
    c->log_level = AM_LOG_INFO;
    c->log_format = AM_LOG_TEXT;
    snprintf(c->profile, sizeof c->profile, "lan");
    c->max_payload = 2u << 20;
    c->max_state = 4u << 20;
    c->mailbox = 1024;
    c->max_actors = 1000000;
    c->idle_ms = 60000;
    c->max_connections = 10000;
    c->max_inflight = 4096;
    c->forward_timeout_ms = 5000;
    c->anti_entropy_ms = 30000;
    c->replicas = 2;
    c->http_timeout_ms = 10000;

    /* The flags' shape first, --help, and which file to read. */
    const struct option_row *config_row = find_row("config", 6);
    const char *path = NULL, *path_from = "AMESH_CONFIG";
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (is_help(argv[i])) {
            am_config_usage();
            return 1;
        }
        const struct option_row *r = flag_at(argc, argv, &i, &v, err, errlen);
        if (!r)
            return -EINVAL;
        if (r == config_row) {
            path = v;
            path_from = "--config";
        }
    }
    if (!path)
        path = getenv("AMESH_CONFIG");
    if (path) {
        if (set(c, config_row, path, path_from, err, errlen) || read_file(c, path, err, errlen))
            return -EINVAL;
    }

    /* The environment over the file; a list replaces the file's. */
    for (size_t i = 0; i < NROWS; i++) {
        if (rows[i].kind == K_CONFIG)
            continue;
        char name[64];
        env_name(rows[i].flag, name, sizeof name);
        const char *v = getenv(name);
        if (!v)
            continue;
        if (rows[i].kind == K_LIB)
            c->nactor_libs = 0;
        if (rows[i].kind == K_JOIN)
            c->njoins = 0;
        if (set(c, &rows[i], v, name, err, errlen))
            return -EINVAL;
    }

    /* The flags over both; the first --join or --actors replaces the list. */
    int libs_before = c->nactor_libs, joins_before = c->njoins;
    for (int i = 1; i < argc; i++) {
        const char *v;
        const struct option_row *r = flag_at(argc, argv, &i, &v, err, errlen);
        if (!r)
            return -EINVAL;
        if (r->kind == K_CONFIG)
            continue;
        if (r->kind == K_LIB && libs_before) {
            c->nactor_libs = 0;
            libs_before = 0;
        }
        if (r->kind == K_JOIN && joins_before) {
            c->njoins = 0;
            joins_before = 0;
        }
        char from[80];
        snprintf(from, sizeof from, "--%s", r->flag);
        if (set(c, r, v, from, err, errlen))
            return -EINVAL;
    }
    if (!c->advertise[0])
        memcpy(c->advertise, c->bind, sizeof c->bind);
    if (strncmp(c->advertise, "0.0.0.0:", 8) == 0) {
        snprintf(err, errlen, "binding 0.0.0.0 needs --advertise with a reachable address");
        return -EINVAL;
    }
    if (!c->name[0])
        snprintf(c->name, sizeof c->name, "%s", c->advertise);
    if (strlen(c->name) > AM_MAX_NODE_NAME) {
        snprintf(err, errlen, "--name: at most %d characters", AM_MAX_NODE_NAME);
        return -EINVAL;
    }
    return 0;
}
