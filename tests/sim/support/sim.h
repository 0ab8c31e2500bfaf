/* sim.h - a deterministic network simulator for the membership core
 * (src/cluster/swim.h): N cores in one process, a virtual clock in ms, and
 * an event queue of packet deliveries, stream deliveries and core deadlines.
 *
 * Node i is named "n<i>" and advertises "10.0.<i/250>.<i%250+1>:7946"; the
 * addresses are only strings, nothing touches a real network. The network
 * gives every packet a per-link delay (a fixed base per link plus jitter per
 * packet, so packets reorder), drops it with the link's loss probability or
 * when a partition separates the ends, and loses it when the destination is
 * not running. Streams (push-pull) are reliable: delivered after a delay, or
 * failed back to the sender (am_swim_on_stream_error) when the destination
 * is dead, paused or partitioned away.
 *
 * Faults: kill (the core is freed: no deliveries, no ticks), restart (a new
 * core with the same name and a higher incarnation, joining through a seed),
 * pause/resume, loss (global or per directed link), partition/heal, leave.
 *
 * All randomness comes from one seed (xoshiro256** seeded by splitmix64); the
 * same seed gives the same sequence of delivered events, which the simulator
 * hashes (sim_trace_hash) so a test can compare two runs.
 *
 * What the simulator watches, from the cores' AM_SWIM_ACT_EVENT actions:
 *  - a view per node: what node o last said about node t (unknown, alive,
 *    suspect, dead, left), kept incrementally so "converged" costs O(1);
 *  - false deaths: every transition to dead, by anyone, of a node that was
 *    not killed (nor left) at that moment, with the time and the observer;
 *  - for each node, how many running nodes declared it dead since it was
 *    last killed;
 *  - per-node counters of packets and bytes sent since the last reset.
 *
 * Ownership: the simulator owns the cores; struct sim_false_death arrays
 * returned by the getters stay valid until the next call that runs events. */
#ifndef AM_SIM_H
#define AM_SIM_H

#include "swim.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sim;

struct sim_config {
    size_t nodes;        /* capacity; nodes are started one by one */
    uint64_t seed;       /* every random choice of the run */
    const char *profile; /* am_swim_profile name; "lan" by default */
    /* Links: a fixed base delay per (unordered) link drawn from
     * [delay_min_ms, delay_max_ms], plus a jitter in [0, jitter_ms] per packet. */
    uint32_t delay_min_ms;
    uint32_t delay_max_ms;
    uint32_t jitter_ms;
    double loss;                /* global packet loss probability, 0..1 */
    uint64_t stream_timeout_ms; /* a stream into a partition fails after this */
    /* Called for each core before am_swim_new, to change timings. */
    void (*tune)(struct am_swim_config *c, size_t node, void *ctx);
    void *tune_ctx;
};

/* LAN defaults: 1-3 ms per link, 0-4 ms jitter (wider than the spread of
 * bases, so packets on one link reorder often), no loss, 10 s stream
 * timeout (memberlist's LAN TCP timeout), profile "lan". */
void sim_config_default(struct sim_config *c, size_t nodes, uint64_t seed);

int sim_new(struct sim **out, const struct sim_config *c);
void sim_free(struct sim *s); /* NULL is a no-op */

/* ---- nodes ---- */

enum sim_status { SIM_IDLE, SIM_RUNNING, SIM_PAUSED, SIM_LEAVING, SIM_KILLED, SIM_LEFT };

/* Creates node i's core and, with nseeds > 0 (at most 16 are used), joins
 * it through those nodes. Negative errno from the core. */
int sim_start(struct sim *s, size_t i, const size_t *seeds, size_t nseeds);
/* Stops node i at once: its core is freed, packets to it vanish, streams to
 * it fail. */
void sim_kill(struct sim *s, size_t i);
/* A new core for a killed (or left) node i: same name and address, the
 * incarnation it last had + 1, joining through node seed. */
int sim_restart(struct sim *s, size_t i, size_t seed);
/* A paused node gets nothing (packets to it are dropped, streams to it time
 * out) and runs no deadline until resumed. */
void sim_pause(struct sim *s, size_t i);
void sim_resume(struct sim *s, size_t i);
/* Graceful leave: the core keeps running until am_swim_leave_done. */
int sim_leave(struct sim *s, size_t i);

enum sim_status sim_status(const struct sim *s, size_t i);
const char *sim_name(const struct sim *s, size_t i);
const char *sim_addr(const struct sim *s, size_t i);
struct am_swim *sim_core(struct sim *s, size_t i); /* NULL unless running */
size_t sim_nodes(const struct sim *s);
size_t sim_live(const struct sim *s); /* running, paused or leaving */

/* ---- network ---- */

void sim_set_loss(struct sim *s, double p);
/* Loss of packets from a to b only; p < 0 removes the override. */
void sim_set_link_loss(struct sim *s, size_t a, size_t b, double p);
/* Nodes of a and nodes of b cannot reach each other (both directions); other
 * nodes reach both. A later partition call adds to the earlier ones. */
void sim_partition(struct sim *s, const size_t *a, size_t na, const size_t *b, size_t nb);
void sim_heal(struct sim *s);

/* ---- running ---- */

uint64_t sim_now(const struct sim *s);
/* Runs one event; false when the queue is empty. */
bool sim_step(struct sim *s);
typedef bool (*sim_pred)(struct sim *s, void *ctx);
/* Runs events up to virtual time `until` (inclusive), stopping early when
 * pred holds (checked before the first event and then at most once per
 * check interval of virtual time, 1 ms by default). Returns whether pred
 * held; without pred runs to `until` and returns true. The clock ends at
 * `until` unless pred stopped it earlier. */
bool sim_run_until(struct sim *s, uint64_t until, sim_pred pred, void *ctx);
void sim_run_for(struct sim *s, uint64_t ms);
void sim_set_check_interval(struct sim *s, uint64_t ms);

/* ---- what happened ---- */

/* Every running node sees every other running (or paused, leaving) node
 * alive, and no killed or left node alive or suspect (dead, left or
 * forgotten are fine). */
bool sim_converged(const struct sim *s);
bool sim_pred_converged(struct sim *s, void *ctx); /* for sim_run_until */
/* The same, but a live node seen as suspect is fine: under packet loss some
 * member is nearly always suspected by someone for a moment. */
bool sim_converged_loose(const struct sim *s);
bool sim_pred_converged_loose(struct sim *s, void *ctx);
/* How many (observer, target) pairs break the rule above. */
size_t sim_wrong_views(const struct sim *s);
/* The first pair that breaks it (for messages); false if none. */
bool sim_first_wrong_view(const struct sim *s, size_t *obs, size_t *tgt);

/* What observer last said of target: -1 unknown (never heard or reaped),
 * else an enum am_member_state. */
int sim_view(const struct sim *s, size_t obs, size_t tgt);

struct sim_false_death {
    uint64_t at;          /* virtual ms */
    size_t observer;      /* who declared it */
    size_t target;        /* the running node declared dead */
    uint64_t incarnation; /* as given in the event */
};
size_t sim_false_deaths(const struct sim *s, const struct sim_false_death **out);

/* Running nodes that declared target dead since target was last killed. */
size_t sim_dead_declarations(const struct sim *s, size_t target);
/* Virtual time of the latest declaration counted above. */
uint64_t sim_last_dead_declaration(const struct sim *s, size_t target);

/* Compares each running core's member list (am_swim_member_at) with the view
 * built from its events; returns the number of disagreements and describes
 * the first in why. */
size_t sim_check_core_views(const struct sim *s, char *why, size_t whylen);

/* Called with every member event (AM_SWIM_ACT_EVENT) a core produces, before
 * the simulator records it; for tracing a failure. a is valid during the
 * call only. */
typedef void (*sim_event_hook)(struct sim *s, size_t observer, const struct am_swim_action *a,
                               void *ctx);
void sim_set_event_hook(struct sim *s, sim_event_hook hook, void *ctx);

struct sim_counters {
    uint64_t packets_sent, bytes_sent;   /* UDP, before loss */
    uint64_t streams_sent, stream_bytes; /* push-pull */
    uint64_t packets_received;
};
/* Counters since sim_reset_counters (or the start), per node. */
void sim_reset_counters(struct sim *s);
uint64_t sim_counters_since(const struct sim *s);
void sim_node_counters(const struct sim *s, size_t i, struct sim_counters *out);

struct sim_totals {
    uint64_t delivered; /* events run: packets, streams, stream errors, ticks */
    uint64_t packets_sent, packets_lost, packets_partitioned, packets_to_nowhere;
    uint64_t streams_sent, streams_failed;
    uint64_t conflicts;    /* AM_SWIM_EV_CONFLICT events seen */
    size_t max_packet_len; /* the largest datagram any core sent */
};
void sim_totals(const struct sim *s, struct sim_totals *out);

/* How many seeds a test runs: AMESH_SIM_SEEDS (1 to 9999) when set, else
 * dflt (CI's fixed set). */
size_t sim_seed_count(size_t dflt);

/* A hash of every delivered event (time, kind, nodes, bytes) in order. */
uint64_t sim_trace_hash(const struct sim *s);

#endif
