/* cluster.h - the nodes of a process test that runs several `amesh node`
 * processes, described once (struct cluster) for the helpers every such
 * test repeated: the fixture (.init and .fini: a temporary directory, a
 * SIGSTOPped node resumed, every node killed, the logs kept on a failure),
 * starting and stopping node i, STATUS and ACTORS queries (sealed when the
 * cluster has a key), waiting until the nodes agree on one ring and wait
 * for no handoff, and checking that every active actor lives on exactly one
 * node, its owner by the ring.
 *
 * Node i is named names[i] ("n<i>" unless the test named it first), listens
 * on NET.<i+1>:7946 and keeps its data in DIR/NAME and its log in
 * DIR/NAME.log. Unlike proc.h these helpers assert (Criterion): a node that
 * does not start, stop with 0 or agree in time fails the test. */
#ifndef AM_TEST_CLUSTER_H
#define AM_TEST_CLUSTER_H

#include "proc.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct am_ring;

#define CLUSTER_NAME_MAX 16

/* Points into the test's own state (its static `w`), so it can be a
 * static initialiser; CLUSTER_OF(w) fills in the fields every test has:
 *   static const struct cluster cluster = {CLUSTER_OF(w), .stopped = &w.stopped}; */
struct cluster {
    struct proc_node *nodes;         /* the test's node table, count entries */
    char (*names)[CLUSTER_NAME_MAX]; /* names[i]: node i's --name */
    int count;
    char *dir; /* the test's temporary directory (dir_len bytes) */
    size_t dir_len;
    const char *key_file; /* NULL or "": no cluster key; else a key file
                             that seals every query */
    int *stopped;         /* NULL, or where the test keeps the index of a
                             SIGSTOPped node (-1: none) */
};

/* The members of a struct cluster for a test state w with the arrays dir,
 * nodes and names (as many nodes as names). */
#define CLUSTER_OF(w)                                                                              \
    .nodes = (w).nodes, .names = (w).names, .count = (int)(sizeof(w).nodes / sizeof(w).nodes[0]),  \
    .dir = (w).dir, .dir_len = sizeof(w).dir

/* The usual .init, after the test zeroed its state: SIGPIPE ignored (a
 * node that closes a connection must not kill the test), no node stopped
 * (*c->stopped = -1), a fresh directory /tmp/amesh-proc-<tag>.XXXXXX into
 * c->dir. */
void cluster_setup(const struct cluster *c, const char *tag);

/* The usual .fini: the SIGSTOPped node (*c->stopped) resumed, every node
 * killed and reaped, c->dir (when made) removed. With keep_tag, the nodes'
 * logs (DIR/NAME.log) are first copied into a fresh
 * /tmp/amesh-proc-<keep_tag>.XXXXXX, whose path goes to stderr. */
void cluster_teardown(const struct cluster *c, const char *keep_tag);

/* Names node i (unless it has a name) and sets its address NET.<i+1>:7946,
 * data dir and log. Starts nothing. */
void cluster_node_init(const struct cluster *c, int i, const char *net);

/* Starts node i as `--name NAME [--join ADDR-OF-SEED] extra...` (seed -1:
 * no --join; extra NULL-terminated, may be NULL) and waits for its port. */
void cluster_node_start(const struct cluster *c, int i, int seed, const char *const *extra);

/* SIGTERM to node i, which must exit 0 (its log's end in the message). */
void cluster_node_stop_ok(const struct cluster *c, int i);

/* A request with no field (AM_MSG_STATUS, AM_MSG_MEMBERS, AM_MSG_RING,
 * AM_MSG_ACTORS) to node i, its reply as JSON (caller json_decref's it);
 * NULL when the node does not answer within timeout_ms. */
json_t *cluster_query(const struct cluster *c, int i, int kind, int timeout_ms);

/* STATUS of node i (5 s bound), as cluster_query. */
json_t *cluster_status(const struct cluster *c, int i);

/* st.map.key as an unsigned integer; 0 when absent (or st is NULL). */
uint64_t cluster_stat(json_t *st, const char *map, const char *key);

/* Waits (30 s at most) until each listed node has built the same ring of nn
 * members. Returns the ms waited. */
int64_t cluster_wait_one_ring(const struct cluster *c, const int *nodes, int nn);

/* Waits (15 s at most in all) until each listed node answers STATUS and
 * waits for no handoff. */
void cluster_wait_no_handoffs(const struct cluster *c, const int *nodes, int nn);

/* The ring built from the listed nodes' names (am_ring_free it). */
struct am_ring *cluster_ring(const struct cluster *c, const int *nodes, int nn);

/* Asks each listed node for its active actors; true (and *total set) when
 * none is active on two of them and each is on its owner by the ring of the
 * listed nodes. why says what was wrong otherwise. */
int cluster_actors_on_owners(const struct cluster *c, const int *nodes, int nn, size_t *total,
                             char *why, size_t whylen);

/* cluster_actors_on_owners, polled for up to 10 s (a ring change releases
 * the actors a node stopped owning within moments, not at once); when (may
 * be NULL) starts the failure message. Returns the actors active. */
size_t cluster_wait_actors_on_owners(const struct cluster *c, const char *when, const int *nodes,
                                     int nn);

#endif
