/* config.c - node settings from flags and the environment (see config.h).
 *
 * Each option is one row of a table: its flag, what it sets, how it parses.
 * The environment is read first, then the flags overwrite, which gives the
 * documented precedence with one code path. */
#include "config.h"

#include "addr.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_STR, K_ADDR, K_SIZE, K_UINT, K_SYNC, K_LEVEL, K_LIB, K_JOIN, K_PROFILE };

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
    {"name", K_STR, F(name), 0, "NAME      unique node name (default: the advertise address)"},
    {"bind", K_ADDR, F(bind), 0, "HOST:PORT TCP and UDP address: clients, peers, gossip (127.0.0.1:7946)"},
    {"advertise", K_ADDR, F(advertise), 0, "HOST:PORT address peers use (default: --bind)"},
    {"data", K_STR, F(data), 0, "DIR       data directory (./data)"},
    {"sync", K_SYNC, F(sync_interval_ms), 0, "MODE      durable | interval:MS (durable)"},
    {"log-level", K_LEVEL, F(log_level), 0, "LEVEL     error | warn | info | debug (info)"},
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
        if (am_config_parse_size(v, r->max, &n) || n == 0 ||
            (r->kind == K_UINT && strpbrk(v, "kKmMgG"))) {
            snprintf(err, errlen, "%s: '%s' is not a number from 1 to %" PRIu64 "%s", from, v,
                     r->max, r->kind == K_SIZE ? " (k, m, g suffixes allowed)" : "");
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

int am_config_parse(struct am_config *c, int argc, char **argv, char *err, size_t errlen)
{
    _Static_assert(sizeof(size_t) == sizeof(uint64_t), "sizes are 64-bit");
    memset(c, 0, sizeof *c);
    snprintf(c->bind, sizeof c->bind, "127.0.0.1:7946");
    snprintf(c->data, sizeof c->data, "./data");
    c->log_level = AM_LOG_INFO;
    snprintf(c->profile, sizeof c->profile, "lan");
    c->max_payload = 2u << 20;
    c->max_state = 4u << 20;
    c->mailbox = 1024;
    c->max_actors = 1000000;
    c->idle_ms = 60000;
    c->max_connections = 10000;
    c->max_inflight = 4096;
    c->forward_timeout_ms = 5000;
    c->replicas = 2;

    for (size_t i = 0; i < NROWS; i++) {
        char name[64];
        env_name(rows[i].flag, name, sizeof name);
        const char *v = getenv(name);
        if (v && set(c, &rows[i], v, name, err, errlen))
            return -EINVAL;
    }
    int libs_from_env = c->nactor_libs, joins_from_env = c->njoins;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            am_config_usage();
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s'", a);
            return -EINVAL;
        }
        const char *eq = strchr(a + 2, '=');
        size_t flen = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        const struct option_row *r = NULL;
        for (size_t k = 0; k < NROWS; k++)
            if (strlen(rows[k].flag) == flen && strncmp(rows[k].flag, a + 2, flen) == 0)
                r = &rows[k];
        if (!r) {
            snprintf(err, errlen, "unknown option '%.*s' (see amesh node --help)", (int)flen + 2, a);
            return -EINVAL;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            snprintf(err, errlen, "--%s needs a value", r->flag);
            return -EINVAL;
        }
        if (r->kind == K_LIB && libs_from_env) {
            c->nactor_libs = 0; /* flags replace the environment's list */
            libs_from_env = 0;
        }
        if (r->kind == K_JOIN && joins_from_env) {
            c->njoins = 0;
            joins_from_env = 0;
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
