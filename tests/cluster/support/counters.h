/* counters.h - many counter actors driven through raw connections
 * (rconn.h): adds to counters chosen at random, and reads of every counter,
 * each request through one of the listed nodes chosen at random, in
 * pipelined batches over one client connection per node. The ids are
 * PREFIX0 .. PREFIX(count-1). rand() makes every choice: srand first for a
 * repeatable run. These helpers assert (Criterion). */
#ifndef AM_TEST_COUNTERS_H
#define AM_TEST_COUNTERS_H

#include "cluster.h"

#include <stdint.h>

/* The most nodes one call can spread its requests over. */
#define COUNTERS_MAX_NODES 32

struct counters {
    const char *prefix; /* "c": c0, c1, ... */
    int count;          /* how many counters */
    int batch;          /* requests per pipelined batch, over all nodes */
    const char *label;  /* "" or a word and a space ("base "), said before
                           "adds" and "counters" in messages */
};

/* Adds 1, `adds` times, to counters chosen at random; acked[k] counts the
 * acknowledged adds of counter k. Every error must be retryable (the count
 * of each is logged); returns how many adds failed. */
uint64_t counters_add_random(const struct counters *k, const struct cluster *c, const int *nodes,
                             int nn, int adds, uint32_t *acked);

/* Reads every counter into value[0 .. k->count). With retry_ms > 0 a get
 * answered with a retryable error is asked again, until retry_ms have
 * passed; with 0 every get must be answered OK. when (may be NULL) starts
 * the failure messages. Returns how many gets were asked again. */
int counters_read(const struct counters *k, const struct cluster *c, const int *nodes, int nn,
                  int64_t *value, int retry_ms, const char *when);

#endif
