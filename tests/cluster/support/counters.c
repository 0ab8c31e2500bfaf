/* counters.c - see counters.h. */
#include "counters.h"

#include "err.h"
#include "rconn.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <stdio.h>
#include <stdlib.h>

/* One client connection and one outgoing batch per listed node. */
struct lanes {
    const struct cluster *c;
    const int *nodes;
    int nn;
    struct rconn conns[COUNTERS_MAX_NODES];
    struct am_buf out[COUNTERS_MAX_NODES];
};

static void lanes_open(struct lanes *l, const struct cluster *c, const int *nodes, int nn)
{
    cr_assert(nn > 0 && nn <= COUNTERS_MAX_NODES, "%d nodes", nn);
    l->c = c;
    l->nodes = nodes;
    l->nn = nn;
    rconn_open_all(l->conns, c->nodes, nodes, nn);
    for (int i = 0; i < nn; i++)
        am_buf_init(&l->out[i]);
}

static void lanes_close(struct lanes *l)
{
    for (int i = 0; i < l->nn; i++)
        am_buf_close(&l->out[i]);
    rconn_close_all(l->conns, l->nn);
}

/* Requests 0 .. n-1 in batches: each to a node chosen at random, appended
 * by encode; once a batch is sent, each of its replies goes to got with the
 * index (into the listed nodes) of the node that answered. what names a
 * request in the message of a missing reply ("an add"). */
static void lanes_run(struct lanes *l, int n, int batch, const char *pre, const char *what,
                      void (*encode)(void *arg, struct am_buf *out, int k),
                      void (*got)(void *arg, int i, const struct am_reply *r), void *arg)
{
    for (int base = 0; base < n; base += batch) {
        int sent[COUNTERS_MAX_NODES] = {0};
        for (int k = base; k < base + batch && k < n; k++) {
            int node = rand() % l->nn;
            encode(arg, &l->out[node], k);
            sent[node]++;
        }
        for (int i = 0; i < l->nn; i++)
            cr_assert_eq(rconn_send(&l->conns[i], &l->out[i]), 0);
        for (int i = 0; i < l->nn; i++) {
            for (int j = 0; j < sent[i]; j++) {
                struct am_reply r;
                cr_assert_eq(rconn_reply(&l->conns[i], &r, RCONN_IO_MS), 0,
                             "%sno reply from %s to %s", pre, l->c->names[l->nodes[i]], what);
                got(arg, i, &r);
            }
        }
    }
}

/* ---- adds -------------------------------------------------------------------- */

struct adding {
    const struct counters *k;
    int adds;
    uint32_t *which; /* which[i]: the counter of add i (its request id) */
    uint32_t *acked;
    uint64_t errors[AM_ST__COUNT];
};

static void add_encode(void *arg, struct am_buf *out, int i)
{
    struct adding *a = arg;
    char id[32];
    a->which[i] = (uint32_t)(rand() % a->k->count);
    snprintf(id, sizeof id, "%s%u", a->k->prefix, a->which[i]);
    rconn_encode_counter(out, (uint64_t)i, id, "add", 1);
}

static void add_got(void *arg, int node, const struct am_reply *r)
{
    struct adding *a = arg;
    (void)node;
    cr_assert(r->id < (uint64_t)a->adds);
    if (r->status == AM_ST_OK)
        a->acked[a->which[r->id]]++;
    else
        a->errors[r->status < AM_ST__COUNT ? r->status : 0]++;
}

uint64_t counters_add_random(const struct counters *k, const struct cluster *c, const int *nodes,
                             int nn, int adds, uint32_t *acked)
{
    struct adding a = {.k = k, .adds = adds, .acked = acked};
    struct lanes l;
    uint64_t failed = 0;
    a.which = calloc((size_t)adds, sizeof *a.which);
    cr_assert_not_null(a.which);
    lanes_open(&l, c, nodes, nn);
    lanes_run(&l, adds, k->batch, "", "an add", add_encode, add_got, &a);
    for (int st = 0; st < AM_ST__COUNT; st++) {
        failed += a.errors[st];
        if (a.errors[st])
            cr_log_info("%sadds answered %s: %llu", k->label, am_status_name(st),
                        (unsigned long long)a.errors[st]);
        cr_assert(a.errors[st] == 0 || am_status_retryable(st), "%sadds failed with %s", k->label,
                  am_status_name(st));
    }
    lanes_close(&l);
    free(a.which);
    return failed;
}

/* ---- reads ------------------------------------------------------------------- */

struct reading {
    const struct counters *k;
    const struct cluster *c;
    const int *nodes;
    const char *pre;
    int retry;
    int *todo; /* the counters of this pass; then those to ask again */
    int again;
    int64_t *value;
    char last_err[64];
};

static void get_encode(void *arg, struct am_buf *out, int i)
{
    struct reading *g = arg;
    char id[32];
    snprintf(id, sizeof id, "%s%d", g->k->prefix, g->todo[i]);
    rconn_encode_counter(out, (uint64_t)g->todo[i], id, "get", 0);
}

static void get_got(void *arg, int node, const struct am_reply *r)
{
    struct reading *g = arg;
    cr_assert(r->id < (uint64_t)g->k->count);
    if (r->status == AM_ST_OK) {
        g->value[r->id] = rconn_reply_int(r);
        return;
    }
    cr_assert(g->retry && am_status_retryable(r->status), "%sget %s%llu through %s: %s", g->pre,
              g->k->prefix, (unsigned long long)r->id, g->c->names[g->nodes[node]],
              am_status_name(r->status));
    snprintf(g->last_err, sizeof g->last_err, "%s", am_status_name(r->status));
    g->todo[g->again++] = (int)r->id; /* again <= the index being read */
}

int counters_read(const struct counters *k, const struct cluster *c, const int *nodes, int nn,
                  int64_t *value, int retry_ms, const char *when)
{
    char pre[128];
    snprintf(pre, sizeof pre, "%s%s", when ? when : "", when ? ": " : "");
    struct reading g = {
        .k = k, .c = c, .nodes = nodes, .pre = pre, .retry = retry_ms > 0, .value = value};
    g.todo = calloc((size_t)k->count, sizeof *g.todo);
    cr_assert_not_null(g.todo);
    int ntodo = k->count, retried = 0;
    for (int i = 0; i < ntodo; i++)
        g.todo[i] = i;
    struct lanes l;
    lanes_open(&l, c, nodes, nn);
    int64_t deadline = proc_now_ms() + retry_ms;
    while (ntodo > 0) {
        g.again = 0;
        lanes_run(&l, ntodo, k->batch, pre, "a get", get_encode, get_got, &g);
        ntodo = g.again;
        retried += g.again;
        if (ntodo) {
            cr_assert(proc_now_ms() < deadline, "%s%d %scounters still answer %s after %d s", pre,
                      ntodo, k->label, g.last_err, retry_ms / 1000);
            proc_sleep_ms(200);
        }
    }
    lanes_close(&l);
    free(g.todo);
    return retried;
}
