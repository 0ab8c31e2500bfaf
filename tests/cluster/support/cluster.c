/* cluster.c - see cluster.h. */
#define _GNU_SOURCE /* program_invocation_short_name */
#include "cluster.h"

#include "err.h"
#include "proto.h"
#include "ring.h"
#include "seal.h"
#include "view.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixture ----------------------------------------------------------------- */

void cluster_setup(const struct cluster *c, const char *tag)
{
    signal(SIGPIPE, SIG_IGN);
    if (c->stopped)
        *c->stopped = -1;
    int rc = proc_tmpdir(c->dir, c->dir_len, tag);
    cr_assert_eq(rc, 0, "mkdtemp: %s", strerror(-rc));
}

/* Copies every *.log of c->dir into a fresh /tmp/amesh-proc-<tag>.XXXXXX
 * and says where on stderr. */
static void keep_logs(const struct cluster *c, const char *tag)
{
    char keep[256];
    if (proc_tmpdir(keep, sizeof keep, tag))
        return;
    DIR *d = opendir(c->dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".log") != 0)
            continue;
        char from[600], to[600];
        snprintf(from, sizeof from, "%s/%s", c->dir, e->d_name);
        snprintf(to, sizeof to, "%s/%s", keep, e->d_name);
        size_t n = 0;
        char *text = proc_read_file(from, &n);
        if (!text)
            continue;
        FILE *f = fopen(to, "w");
        if (f) {
            fwrite(text, 1, n, f);
            fclose(f);
        }
        free(text);
    }
    closedir(d);
    fprintf(stderr, "%s: the nodes' logs are kept in %s\n", program_invocation_short_name, keep);
}

void cluster_teardown(const struct cluster *c, const char *keep_tag)
{
    if (c->stopped && *c->stopped >= 0 && c->nodes[*c->stopped].pid > 0)
        kill(c->nodes[*c->stopped].pid, SIGCONT);
    if (c->stopped)
        *c->stopped = -1;
    for (int i = 0; i < c->count; i++)
        proc_node_cleanup(&c->nodes[i]);
    if (!c->dir[0])
        return;
    if (keep_tag)
        keep_logs(c, keep_tag);
    proc_rmtree(c->dir);
}

/* ---- nodes ------------------------------------------------------------------- */

void cluster_node_init(const struct cluster *c, int i, const char *net)
{
    char addr[32], data[512], log[512];
    if (!c->names[i][0])
        snprintf(c->names[i], CLUSTER_NAME_MAX, "n%d", i);
    snprintf(addr, sizeof addr, "%s.%d:7946", net, i + 1);
    snprintf(data, sizeof data, "%s/%s", c->dir, c->names[i]);
    snprintf(log, sizeof log, "%s/%s.log", c->dir, c->names[i]);
    proc_node_init(&c->nodes[i], addr, data, log);
}

void cluster_node_start(const struct cluster *c, int i, int seed, const char *const *extra)
{
    const char *args[48];
    size_t k = 0;
    args[k++] = "--name";
    args[k++] = c->names[i];
    if (seed >= 0) {
        args[k++] = "--join";
        args[k++] = c->nodes[seed].addr;
    }
    for (; extra && *extra; extra++) {
        cr_assert(k < sizeof args / sizeof args[0] - 1, "too many flags for %s", c->names[i]);
        args[k++] = *extra;
    }
    args[k] = NULL;
    char why[1600];
    int rc = proc_node_start(&c->nodes[i], args, why, sizeof why);
    cr_assert_eq(rc, 0, "%s: %s", c->names[i], why);
}

void cluster_node_stop_ok(const struct cluster *c, int i)
{
    char tail[1024] = "";
    int code = proc_node_stop(&c->nodes[i], 20000);
    if (code != 0)
        proc_log_tail(c->nodes[i].log, tail, sizeof tail);
    cr_assert_eq(code, 0, "%s exited with %d after SIGTERM; log ends:\n%s", c->names[i], code,
                 tail);
}

/* ---- queries ----------------------------------------------------------------- */

json_t *cluster_query(const struct cluster *c, int i, int kind, int timeout_ms)
{
    uint8_t key[AM_KEY_BYTES];
    char err[1200];
    int keyed = c->key_file && c->key_file[0];
    if (keyed)
        cr_assert_eq(am_key_load(c->key_file, key, err, sizeof err), 0, "%s", err);
    return view_query(c->nodes[i].addr, kind, keyed ? key : NULL, timeout_ms);
}

json_t *cluster_status(const struct cluster *c, int i)
{
    return cluster_query(c, i, AM_MSG_STATUS, 5000);
}

uint64_t cluster_stat(json_t *st, const char *map, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(json_object_get(st, map), key));
}

/* ---- waits ------------------------------------------------------------------- */

int64_t cluster_wait_one_ring(const struct cluster *c, const int *nodes, int nn)
{
    int64_t t0 = proc_now_ms(), deadline = t0 + 30000;
    for (;;) {
        char first[32] = "";
        int agree = 1;
        for (int k = 0; k < nn && agree; k++) {
            json_t *st = cluster_status(c, nodes[k]);
            json_t *ring = json_object_get(st, "ring");
            const char *v = json_string_value(json_object_get(ring, "version"));
            agree = v && json_integer_value(json_object_get(ring, "members")) == nn &&
                    (k == 0 || strcmp(first, v) == 0);
            if (v && k == 0)
                snprintf(first, sizeof first, "%s", v);
            json_decref(st);
        }
        if (agree)
            return proc_now_ms() - t0;
        cr_assert(proc_now_ms() < deadline, "the %d nodes did not build one ring in 30 s", nn);
        proc_sleep_ms(100);
    }
}

void cluster_wait_no_handoffs(const struct cluster *c, const int *nodes, int nn)
{
    int64_t deadline = proc_now_ms() + 15000;
    for (int k = 0; k < nn; k++) {
        for (;;) {
            json_t *st = cluster_status(c, nodes[k]);
            int answered = st != NULL;
            uint64_t waiting = cluster_stat(st, "handoff", "waiting");
            json_decref(st);
            if (answered && waiting == 0)
                break;
            cr_assert(proc_now_ms() < deadline, "%s still waits for handoffs", c->names[nodes[k]]);
            proc_sleep_ms(100);
        }
    }
}

/* ---- actors and their owners ------------------------------------------------- */

struct am_ring *cluster_ring(const struct cluster *c, const int *nodes, int nn)
{
    const char **names = calloc((size_t)nn + 1, sizeof *names);
    cr_assert_not_null(names);
    for (int k = 0; k < nn; k++)
        names[k] = c->names[nodes[k]];
    struct am_ring *r;
    cr_assert_eq(am_ring_build(&r, names, (size_t)nn, AM_RING_VNODES), 0);
    free(names);
    return r;
}

struct placed {
    char key[320];
    int node;
};

static int cmp_placed(const void *a, const void *b)
{
    return strcmp(((const struct placed *)a)->key, ((const struct placed *)b)->key);
}

int cluster_actors_on_owners(const struct cluster *c, const int *nodes, int nn, size_t *total,
                             char *why, size_t whylen)
{
    struct am_ring *ring = cluster_ring(c, nodes, nn);
    size_t n = 0, cap = 1024;
    struct placed *all = malloc(cap * sizeof *all);
    cr_assert_not_null(all);
    int ok = 1;
    for (int k = 0; k < nn && ok; k++) {
        const char *name = c->names[nodes[k]];
        json_t *a = cluster_query(c, nodes[k], AM_MSG_ACTORS, 10000);
        cr_assert_not_null(a, "ACTORS from %s", name);
        cr_assert(json_is_false(json_object_get(a, "truncated")));
        json_t *keys = json_object_get(a, "keys"), *v;
        size_t idx;
        json_array_foreach(keys, idx, v)
        {
            const char *key = json_string_value(v);
            cr_assert(key && strlen(key) < sizeof all->key);
            const char *owner =
                am_ring_member(ring, am_ring_owner(ring, am_ring_key_of(key, strlen(key))));
            if (ok && strcmp(owner, name) != 0) {
                snprintf(why, whylen, "%s is active on %s, its owner is %s", key, name, owner);
                ok = 0;
            }
            if (n == cap) {
                cap *= 2;
                all = realloc(all, cap * sizeof *all);
                cr_assert_not_null(all);
            }
            snprintf(all[n].key, sizeof all[n].key, "%s", key);
            all[n++].node = nodes[k];
        }
        json_decref(a);
    }
    qsort(all, n, sizeof *all, cmp_placed);
    for (size_t i = 1; ok && i < n; i++) {
        if (strcmp(all[i - 1].key, all[i].key) == 0) {
            snprintf(why, whylen, "%s is active on %s and %s", all[i].key,
                     c->names[all[i - 1].node], c->names[all[i].node]);
            ok = 0;
        }
    }
    *total = n;
    free(all);
    am_ring_free(ring);
    return ok;
}

size_t cluster_wait_actors_on_owners(const struct cluster *c, const char *when, const int *nodes,
                                     int nn)
{
    char why[512] = "";
    size_t total = 0;
    int64_t deadline = proc_now_ms() + 10000;
    while (!cluster_actors_on_owners(c, nodes, nn, &total, why, sizeof why)) {
        cr_assert(proc_now_ms() < deadline, "%s%safter 10 s: %s", when ? when : "",
                  when ? ", " : "", why);
        proc_sleep_ms(200);
    }
    return total;
}
