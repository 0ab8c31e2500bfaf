/* sim.c - the deterministic network simulator (see sim.h).
 *
 * Structures:
 *  - nodes[]: one per simulated node, fixed at sim_new; a node's core exists
 *    only while it is running, paused or leaving.
 *  - an open-addressing hash from name and address strings to node index
 *    (both kinds of key in one table; "n5" never looks like an address);
 *  - the event queue: a binary min-heap of (time, seq, event index), kept
 *    contiguous; events live in a pool with a free list and keep their data
 *    buffer when recycled, so steady state allocates nothing per packet.
 *    seq (insertion order) breaks ties, which makes the order total and the
 *    run a pure function of the seed;
 *  - views: an N x N byte matrix, view[o * N + t] = what o's core last said
 *    about t (0 unknown, 1 + enum am_member_state), plus a flag bit "o
 *    declared t dead since t last started". `wrong` (and `wrong_loose`,
 *    where suspect counts as alive) counts the cells that break the
 *    convergence rule; it is updated on every view change and every status
 *    change (O(N) for a kill or restart), so the convergence predicate is
 *    O(1) and can be checked after every event.
 *
 * The network: a packet's delay is a fixed base per link (1-3 ms by
 * default) plus 0-4 ms of jitter per packet. The jitter is wider than the
 * spread of bases on purpose: back-to-back packets on one link reorder
 * often, which a real LAN does rarely, so ordering bugs show up. Streams
 * take three base delays (handshake and data) plus jitter and 1 Gbit/s of
 * transfer; a stream to a killed node is refused after a round trip, one
 * into a partition or to a paused node fails after stream_timeout_ms.
 * Loss is drawn first for every packet, so the random sequence does not
 * depend on which packets a partition blocks.
 *
 * Invariants: a node has at most one live tick event (tick_at; older tick
 * events are recognised as stale by time or epoch and skipped); a node's
 * epoch grows at each kill and restart, and events addressed to a core
 * (ticks, stream errors) carry the epoch they were made for. */
#include "sim.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define NO_TICK UINT64_MAX
#define VIEW_MASK 0x0f
#define VIEW_DEAD_SEEN 0x10
#define VIEW_UNKNOWN 0
#define BIG_BUF 65536 /* recycled event buffers above this are freed */

enum ev_kind { EV_PACKET, EV_STREAM, EV_STREAM_ERR, EV_TICK };

struct ev {
    uint8_t kind;
    uint32_t src, dst; /* dst is the node whose core is called */
    uint32_t epoch;    /* ticks and stream errors: dst's epoch when made */
    uint8_t *data;
    uint32_t len, cap;
};

struct hent {
    uint64_t t, seq;
    uint32_t ev;
};

struct node {
    struct am_swim *core;
    char name[16];
    char addr[48];
    enum sim_status status;
    uint32_t epoch;
    uint16_t group;       /* partition group; 0 reaches everyone */
    uint64_t incarnation; /* of the current or last core */
    uint64_t tick_at;
    struct sim_counters cnt;
    uint64_t dead_decl_at;
};

struct link_loss {
    uint64_t key; /* (a << 32 | b) + 1; 0 is empty */
    double p;
};

struct sim {
    struct sim_config cfg;
    char profile[16];
    size_t n;
    struct node *nodes;
    uint8_t *view;
    size_t wrong, wrong_loose;

    /* name/address index */
    const char **hkeys;
    uint32_t *hvals;
    size_t hcap;

    /* event queue */
    struct hent *heap;
    size_t hlen, hcapacity;
    struct ev *evs;
    size_t nevs;
    uint32_t *freelist;
    size_t nfree;
    uint64_t seq;

    uint64_t now;
    uint64_t check_ms, next_check;
    uint64_t rng[4];
    uint64_t trace;

    struct link_loss *links;
    size_t links_cap, links_len;

    struct sim_false_death *fd;
    size_t nfd, fdcap;

    uint64_t counters_since;
    struct sim_totals tot;

    sim_event_hook hook;
    void *hook_ctx;
};

/* ---- randomness: splitmix64 seeds xoshiro256** ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(struct sim *s)
{
    uint64_t *r = s->rng;
    uint64_t out = rotl(r[1] * 5, 7) * 9;
    uint64_t t = r[1] << 17;
    r[2] ^= r[0];
    r[3] ^= r[1];
    r[1] ^= r[2];
    r[0] ^= r[3];
    r[2] ^= t;
    r[3] = rotl(r[3], 45);
    return out;
}

/* Uniform in [0, 1). */
static double rng_unit(struct sim *s)
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* Uniform in [0, bound]; bound is small, so modulo bias is negligible. */
static uint64_t rng_upto(struct sim *s, uint64_t bound)
{
    return rng_next(s) % (bound + 1);
}

/* ---- name/address index ---- */

static uint64_t str_hash(const char *k)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *k; k++)
        h = (h ^ (uint8_t)*k) * 1099511628211ULL;
    return h;
}

static void index_put(struct sim *s, const char *key, uint32_t v)
{
    size_t m = s->hcap - 1;
    for (size_t i = str_hash(key) & m;; i = (i + 1) & m) {
        if (!s->hkeys[i]) {
            s->hkeys[i] = key;
            s->hvals[i] = v;
            return;
        }
    }
}

/* Node index of a name or address, or -1. */
static long index_get(const struct sim *s, const char *key)
{
    if (!key)
        return -1;
    size_t m = s->hcap - 1;
    for (size_t i = str_hash(key) & m; s->hkeys[i]; i = (i + 1) & m) {
        if (strcmp(s->hkeys[i], key) == 0)
            return s->hvals[i];
    }
    return -1;
}

/* ---- event pool and heap ---- */

static long ev_alloc(struct sim *s)
{
    if (s->nfree)
        return s->freelist[--s->nfree];
    if (s->nevs % 1024 == 0) {
        size_t cap = s->nevs + 1024;
        struct ev *e = realloc(s->evs, cap * sizeof *e);
        uint32_t *f = realloc(s->freelist, cap * sizeof *f);
        if (e)
            s->evs = e;
        if (f)
            s->freelist = f;
        if (!e || !f)
            return -ENOMEM;
    }
    memset(&s->evs[s->nevs], 0, sizeof s->evs[0]);
    return (long)s->nevs++;
}

static void ev_release(struct sim *s, uint32_t i)
{
    struct ev *e = &s->evs[i];
    if (e->cap > BIG_BUF) {
        free(e->data);
        e->data = NULL;
        e->cap = 0;
    }
    e->len = 0;
    s->freelist[s->nfree++] = i;
}

static int ev_set_data(struct ev *e, const uint8_t *p, size_t len)
{
    if (len > UINT32_MAX)
        return -EMSGSIZE;
    if (len > e->cap) {
        uint32_t cap = len < 2048 ? 2048 : (uint32_t)len;
        uint8_t *d = realloc(e->data, cap);
        if (!d)
            return -ENOMEM;
        e->data = d;
        e->cap = cap;
    }
    if (len)
        memcpy(e->data, p, len);
    e->len = (uint32_t)len;
    return 0;
}

static bool hent_less(const struct hent *a, const struct hent *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static int heap_push(struct sim *s, uint64_t t, uint32_t ev)
{
    if (s->hlen == s->hcapacity) {
        size_t cap = s->hcapacity ? s->hcapacity * 2 : 4096;
        struct hent *h = realloc(s->heap, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        s->heap = h;
        s->hcapacity = cap;
    }
    struct hent x = {t, s->seq++, ev};
    size_t i = s->hlen++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hent_less(&x, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = x;
    return 0;
}

static struct hent heap_pop(struct sim *s)
{
    struct hent top = s->heap[0];
    struct hent x = s->heap[--s->hlen];
    size_t i = 0, n = s->hlen;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && hent_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!hent_less(&s->heap[c], &x))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n)
        s->heap[i] = x;
    return top;
}

/* Schedules an event; allocation failure aborts the run, since a silently
 * lost event would make the simulation lie. */
static struct ev *schedule(struct sim *s, uint64_t t, enum ev_kind kind, uint32_t src, uint32_t dst,
                           const uint8_t *data, size_t len)
{
    long i = ev_alloc(s);
    if (i < 0 || ev_set_data(&s->evs[i], data, len) < 0 || heap_push(s, t, (uint32_t)i) < 0) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    struct ev *e = &s->evs[i];
    e->kind = (uint8_t)kind;
    e->src = src;
    e->dst = dst;
    e->epoch = s->nodes[dst].epoch;
    return e;
}

/* ---- views ---- */

static bool is_live(enum sim_status st)
{
    return st == SIM_RUNNING || st == SIM_PAUSED || st == SIM_LEAVING;
}

static bool is_gone(enum sim_status st)
{
    return st == SIM_KILLED || st == SIM_LEFT;
}

/* Which convergence rules cell (o, t) breaks: bit 0 the strict one (live
 * targets alive), bit 1 the loose one (live targets alive or suspect). */
static unsigned cell_wrong(const struct sim *s, size_t o, size_t t)
{
    if (o == t || s->nodes[o].status != SIM_RUNNING)
        return 0;
    int v = s->view[o * s->n + t] & VIEW_MASK;
    enum sim_status ts = s->nodes[t].status;
    if (is_live(ts)) {
        if (v == 1 + AM_MEMBER_ALIVE)
            return 0;
        return v == 1 + AM_MEMBER_SUSPECT ? 1u : 3u;
    }
    if (is_gone(ts))
        return v == 1 + AM_MEMBER_ALIVE || v == 1 + AM_MEMBER_SUSPECT ? 3u : 0u;
    return 0;
}

static void wrong_add(struct sim *s, unsigned w, int sign)
{
    if (w & 1)
        s->wrong += (size_t)(long)sign;
    if (w & 2)
        s->wrong_loose += (size_t)(long)sign;
}

static void view_set(struct sim *s, size_t o, size_t t, uint8_t v)
{
    wrong_add(s, cell_wrong(s, o, t), -1);
    s->view[o * s->n + t] = v;
    wrong_add(s, cell_wrong(s, o, t), 1);
}

/* Node k's status is about to change: take its row and column out of
 * `wrong`, and put them back after (view_status_after). */
static void view_status_add(struct sim *s, size_t k, int sign)
{
    for (size_t j = 0; j < s->n; j++) {
        wrong_add(s, cell_wrong(s, k, j), sign);
        if (j != k)
            wrong_add(s, cell_wrong(s, j, k), sign);
    }
}

static void view_status_before(struct sim *s, size_t k)
{
    view_status_add(s, k, -1);
}

static void view_status_after(struct sim *s, size_t k)
{
    view_status_add(s, k, 1);
}

static void set_status(struct sim *s, size_t k, enum sim_status st)
{
    view_status_before(s, k);
    s->nodes[k].status = st;
    view_status_after(s, k);
}

static void on_member_event(struct sim *s, size_t o, const struct am_swim_action *a)
{
    if (s->hook)
        s->hook(s, o, a, s->hook_ctx);
    if (a->event == AM_SWIM_EV_CONFLICT) {
        s->tot.conflicts++;
        return;
    }
    long t = index_get(s, a->name);
    if (t < 0 || (size_t)t == o)
        return;
    uint8_t old = s->view[o * s->n + (size_t)t];
    uint8_t flag = old & VIEW_DEAD_SEEN;
    uint8_t v = a->event == AM_SWIM_EV_REAPED ? VIEW_UNKNOWN : (uint8_t)(1 + a->state);
    struct node *tn = &s->nodes[t];
    if (a->event != AM_SWIM_EV_REAPED && a->state == AM_MEMBER_DEAD &&
        (old & VIEW_MASK) != 1 + AM_MEMBER_DEAD) {
        if (!flag) {
            flag = VIEW_DEAD_SEEN;
            tn->dead_decl_at = s->now;
        }
        if (!is_gone(tn->status) && a->incarnation >= tn->incarnation) {
            if (s->nfd == s->fdcap) {
                size_t cap = s->fdcap ? s->fdcap * 2 : 64;
                struct sim_false_death *f = realloc(s->fd, cap * sizeof *f);
                if (!f)
                    abort();
                s->fd = f;
                s->fdcap = cap;
            }
            s->fd[s->nfd++] = (struct sim_false_death){s->now, o, (size_t)t, a->incarnation};
        }
    }
    view_set(s, o, (size_t)t, v | flag);
}

/* ---- the network ---- */

static double link_loss(const struct sim *s, size_t a, size_t b)
{
    if (s->links_len) {
        uint64_t key = ((uint64_t)a << 32 | b) + 1;
        size_t m = s->links_cap - 1;
        for (size_t i = (size_t)(key * 0x9e3779b97f4a7c15ULL >> 20) & m; s->links[i].key;
             i = (i + 1) & m) {
            if (s->links[i].key == key)
                return s->links[i].p < 0 ? s->cfg.loss : s->links[i].p;
        }
    }
    return s->cfg.loss;
}

static bool blocked(const struct sim *s, size_t a, size_t b)
{
    uint16_t ga = s->nodes[a].group, gb = s->nodes[b].group;
    return ga && gb && ga != gb;
}

/* The fixed part of a link's delay, the same both ways. */
static uint64_t link_base(const struct sim *s, size_t a, size_t b)
{
    uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
    uint64_t x = s->cfg.seed ^ (lo << 32 | hi);
    uint64_t span = s->cfg.delay_max_ms - s->cfg.delay_min_ms;
    return s->cfg.delay_min_ms + splitmix64(&x) % (span + 1);
}

static uint64_t packet_delay(struct sim *s, size_t a, size_t b)
{
    return link_base(s, a, b) + rng_upto(s, s->cfg.jitter_ms);
}

/* Connection setup and transfer at 1 Gbit/s (125 bytes per us). */
static uint64_t stream_delay(struct sim *s, size_t a, size_t b, size_t len)
{
    return 3 * link_base(s, a, b) + rng_upto(s, s->cfg.jitter_ms) + len / 125000;
}

static void stream_fail(struct sim *s, size_t src, size_t dst, uint64_t after)
{
    s->tot.streams_failed++;
    schedule(s, s->now + after, EV_STREAM_ERR, (uint32_t)dst, (uint32_t)src, NULL, 0);
}

static void send_packet(struct sim *s, size_t src, const struct am_swim_action *a)
{
    struct node *sn = &s->nodes[src];
    sn->cnt.packets_sent++;
    sn->cnt.bytes_sent += a->len;
    s->tot.packets_sent++;
    if (a->len > s->tot.max_packet_len)
        s->tot.max_packet_len = a->len;
    long dst = index_get(s, a->addr);
    if (dst < 0) {
        s->tot.packets_to_nowhere++;
        return;
    }
    /* Draw the loss before anything else so the random sequence does not
     * depend on partitions. */
    double p = link_loss(s, src, (size_t)dst);
    bool lost = p > 0 && rng_unit(s) < p;
    if (lost) {
        s->tot.packets_lost++;
        return;
    }
    if (blocked(s, src, (size_t)dst)) {
        s->tot.packets_partitioned++;
        return;
    }
    schedule(s, s->now + packet_delay(s, src, (size_t)dst), EV_PACKET, (uint32_t)src, (uint32_t)dst,
             a->data, a->len);
}

static void send_stream(struct sim *s, size_t src, const struct am_swim_action *a)
{
    struct node *sn = &s->nodes[src];
    sn->cnt.streams_sent++;
    sn->cnt.stream_bytes += a->len;
    s->tot.streams_sent++;
    long dst = index_get(s, a->addr);
    if (dst < 0) {
        /* No node has that address: the error could not name it to the
         * core, and the tests never use one, so it only counts. */
        s->tot.streams_failed++;
        return;
    }
    if (is_gone(s->nodes[dst].status) || s->nodes[dst].status == SIM_IDLE) {
        /* Refused: fails after a round trip. */
        stream_fail(s, src, (size_t)dst, 2 * link_base(s, src, (size_t)dst));
        return;
    }
    if (blocked(s, src, (size_t)dst) || s->nodes[dst].status == SIM_PAUSED) {
        stream_fail(s, src, (size_t)dst, s->cfg.stream_timeout_ms);
        return;
    }
    schedule(s, s->now + stream_delay(s, src, (size_t)dst, a->len), EV_STREAM, (uint32_t)src,
             (uint32_t)dst, a->data, a->len);
}

static void schedule_tick(struct sim *s, size_t i, bool just_ticked)
{
    struct node *n = &s->nodes[i];
    if (!n->core || n->status == SIM_PAUSED)
        return;
    uint64_t d = am_swim_next_deadline(n->core);
    if (d == UINT64_MAX)
        return;
    /* A deadline in the past is due now; after a tick, not before the next
     * ms, so a core that keeps saying "now" cannot stop the clock. */
    uint64_t floor = s->now + (just_ticked ? 1 : 0);
    if (d < floor)
        d = floor;
    if (n->tick_at != NO_TICK && n->tick_at >= s->now && n->tick_at <= d)
        return;
    n->tick_at = d;
    schedule(s, d, EV_TICK, (uint32_t)i, (uint32_t)i, NULL, 0);
}

static void finish_leave(struct sim *s, size_t i);

/* Takes the actions of node i's core after a call into it. */
static void collect(struct sim *s, size_t i, bool just_ticked)
{
    struct node *n = &s->nodes[i];
    const struct am_swim_action *acts;
    size_t na = am_swim_actions(n->core, &acts);
    for (size_t k = 0; k < na; k++) {
        const struct am_swim_action *a = &acts[k];
        switch (a->kind) {
        case AM_SWIM_ACT_PACKET:
            send_packet(s, i, a);
            break;
        case AM_SWIM_ACT_STREAM:
            send_stream(s, i, a);
            break;
        case AM_SWIM_ACT_EVENT:
            on_member_event(s, i, a);
            break;
        }
    }
    if (n->status == SIM_LEAVING && am_swim_leave_done(n->core, s->now)) {
        finish_leave(s, i);
        return;
    }
    schedule_tick(s, i, just_ticked);
}

/* ---- lifecycle ---- */

void sim_config_default(struct sim_config *c, size_t nodes, uint64_t seed)
{
    memset(c, 0, sizeof *c);
    c->nodes = nodes;
    c->seed = seed;
    c->profile = "lan";
    c->delay_min_ms = 1;
    c->delay_max_ms = 3;
    c->jitter_ms = 4;
    c->stream_timeout_ms = 10000;
}

int sim_new(struct sim **out, const struct sim_config *c)
{
    *out = NULL;
    if (c->nodes == 0 || c->nodes > 60000 || c->delay_max_ms < c->delay_min_ms)
        return -EINVAL;
    struct sim *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->cfg = *c;
    snprintf(s->profile, sizeof s->profile, "%s", c->profile ? c->profile : "lan");
    s->cfg.profile = s->profile;
    s->n = c->nodes;
    s->check_ms = 1;
    uint64_t x = c->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    s->trace = c->seed;
    s->hcap = 16;
    while (s->hcap < 4 * s->n)
        s->hcap *= 2;
    s->nodes = calloc(s->n, sizeof *s->nodes);
    s->view = calloc(s->n * s->n, 1);
    s->hkeys = calloc(s->hcap, sizeof *s->hkeys);
    s->hvals = calloc(s->hcap, sizeof *s->hvals);
    if (!s->nodes || !s->view || !s->hkeys || !s->hvals) {
        sim_free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->n; i++) {
        struct node *n = &s->nodes[i];
        snprintf(n->name, sizeof n->name, "n%u", (unsigned)i);
        snprintf(n->addr, sizeof n->addr, "10.0.%u.%u:7946", (unsigned)(i / 250),
                 (unsigned)(i % 250 + 1));
        n->status = SIM_IDLE;
        n->tick_at = NO_TICK;
        n->incarnation = 0;
        index_put(s, n->name, (uint32_t)i);
        index_put(s, n->addr, (uint32_t)i);
    }
    *out = s;
    return 0;
}

void sim_free(struct sim *s)
{
    if (!s)
        return;
    for (size_t i = 0; s->nodes && i < s->n; i++)
        am_swim_free(s->nodes[i].core);
    for (size_t i = 0; i < s->nevs; i++)
        free(s->evs[i].data);
    free(s->evs);
    free(s->freelist);
    free(s->heap);
    free(s->nodes);
    free(s->view);
    free(s->hkeys);
    free(s->hvals);
    free(s->links);
    free(s->fd);
    free(s);
}

static int make_core(struct sim *s, size_t i, const size_t *seeds, size_t nseeds)
{
    struct node *n = &s->nodes[i];
    struct am_swim_config c;
    memset(&c, 0, sizeof c);
    int rc = am_swim_profile(&c, s->profile);
    if (rc < 0)
        return rc;
    c.name = n->name;
    c.addr = n->addr;
    c.seed = rng_next(s);
    c.incarnation = n->incarnation;
    if (s->cfg.tune)
        s->cfg.tune(&c, i, s->cfg.tune_ctx);
    rc = am_swim_new(&n->core, &c, s->now);
    if (rc < 0)
        return rc;
    n->epoch++;
    n->tick_at = NO_TICK;
    /* A new core knows nothing: its row starts empty, and everyone's flag
     * "declared dead since it started" starts over. */
    view_status_before(s, i);
    memset(&s->view[i * s->n], 0, s->n);
    for (size_t o = 0; o < s->n; o++)
        s->view[o * s->n + i] &= (uint8_t)~VIEW_DEAD_SEEN;
    n->dead_decl_at = 0;
    n->status = SIM_RUNNING;
    view_status_after(s, i);
    collect(s, i, false);
    if (nseeds) {
        const char *addrs[16];
        size_t k = nseeds < 16 ? nseeds : 16;
        for (size_t j = 0; j < k; j++)
            addrs[j] = s->nodes[seeds[j] < s->n ? seeds[j] : 0].addr;
        rc = am_swim_join(n->core, addrs, k, s->now);
        collect(s, i, false);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int sim_start(struct sim *s, size_t i, const size_t *seeds, size_t nseeds)
{
    if (i >= s->n || s->nodes[i].status != SIM_IDLE)
        return -EINVAL;
    return make_core(s, i, seeds, nseeds);
}

static void stop_core(struct sim *s, size_t i, enum sim_status st)
{
    struct node *n = &s->nodes[i];
    struct am_swim_member m;
    if (n->core && am_swim_find(n->core, n->name, &m) == 0 && m.incarnation > n->incarnation)
        n->incarnation = m.incarnation;
    am_swim_free(n->core);
    n->core = NULL;
    n->epoch++;
    n->tick_at = NO_TICK;
    set_status(s, i, st);
}

void sim_kill(struct sim *s, size_t i)
{
    if (i < s->n && is_live(s->nodes[i].status))
        stop_core(s, i, SIM_KILLED);
}

static void finish_leave(struct sim *s, size_t i)
{
    stop_core(s, i, SIM_LEFT);
}

int sim_restart(struct sim *s, size_t i, size_t seed)
{
    if (i >= s->n || !is_gone(s->nodes[i].status))
        return -EINVAL;
    s->nodes[i].incarnation++;
    return make_core(s, i, &seed, 1);
}

void sim_pause(struct sim *s, size_t i)
{
    if (i < s->n && s->nodes[i].status == SIM_RUNNING) {
        set_status(s, i, SIM_PAUSED);
        s->nodes[i].tick_at = NO_TICK;
    }
}

void sim_resume(struct sim *s, size_t i)
{
    if (i < s->n && s->nodes[i].status == SIM_PAUSED) {
        set_status(s, i, SIM_RUNNING);
        s->nodes[i].tick_at = NO_TICK;
        schedule_tick(s, i, false);
    }
}

int sim_leave(struct sim *s, size_t i)
{
    if (i >= s->n || s->nodes[i].status != SIM_RUNNING)
        return -EINVAL;
    int rc = am_swim_leave(s->nodes[i].core, s->now);
    set_status(s, i, SIM_LEAVING);
    collect(s, i, false);
    return rc;
}

enum sim_status sim_status(const struct sim *s, size_t i)
{
    return s->nodes[i].status;
}

const char *sim_name(const struct sim *s, size_t i)
{
    return s->nodes[i].name;
}

const char *sim_addr(const struct sim *s, size_t i)
{
    return s->nodes[i].addr;
}

struct am_swim *sim_core(struct sim *s, size_t i)
{
    return s->nodes[i].core;
}

size_t sim_nodes(const struct sim *s)
{
    return s->n;
}

size_t sim_live(const struct sim *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        k += is_live(s->nodes[i].status);
    return k;
}

/* ---- network faults ---- */

void sim_set_loss(struct sim *s, double p)
{
    s->cfg.loss = p;
}

void sim_set_link_loss(struct sim *s, size_t a, size_t b, double p)
{
    if (s->links_len * 2 >= s->links_cap) {
        size_t cap = s->links_cap ? s->links_cap * 2 : 64;
        struct link_loss *old = s->links;
        size_t oldcap = s->links_cap;
        s->links = calloc(cap, sizeof *s->links);
        if (!s->links)
            abort();
        s->links_cap = cap;
        s->links_len = 0;
        for (size_t i = 0; i < oldcap; i++) {
            if (old[i].key)
                sim_set_link_loss(s, (size_t)((old[i].key - 1) >> 32),
                                  (size_t)((old[i].key - 1) & 0xffffffffu), old[i].p);
        }
        free(old);
    }
    uint64_t key = ((uint64_t)a << 32 | b) + 1;
    size_t m = s->links_cap - 1;
    size_t i = (size_t)(key * 0x9e3779b97f4a7c15ULL >> 20) & m;
    for (; s->links[i].key && s->links[i].key != key; i = (i + 1) & m)
        ;
    if (!s->links[i].key)
        s->links_len++;
    s->links[i].key = key;
    /* A removed override (p < 0) keeps its slot, meaning "the global
     * loss", so probe chains stay intact. */
    s->links[i].p = p;
}

void sim_partition(struct sim *s, const size_t *a, size_t na, const size_t *b, size_t nb)
{
    uint16_t top = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->nodes[i].group > top)
            top = s->nodes[i].group;
    for (size_t i = 0; i < na; i++)
        s->nodes[a[i]].group = (uint16_t)(top + 1);
    for (size_t i = 0; i < nb; i++)
        s->nodes[b[i]].group = (uint16_t)(top + 2);
}

void sim_heal(struct sim *s)
{
    for (size_t i = 0; i < s->n; i++)
        s->nodes[i].group = 0;
}

/* ---- running ---- */

uint64_t sim_now(const struct sim *s)
{
    return s->now;
}

void sim_set_check_interval(struct sim *s, uint64_t ms)
{
    s->check_ms = ms ? ms : 1;
}

static void trace_add(struct sim *s, const struct ev *e)
{
    uint64_t w[4] = {s->now, e->kind, (uint64_t)e->src << 32 | e->dst, e->len};
    s->trace = XXH3_64bits_withSeed(w, sizeof w, s->trace);
    if (e->len)
        s->trace = XXH3_64bits_withSeed(e->data, e->len, s->trace);
}

static void deliver(struct sim *s, struct ev *e)
{
    struct node *d = &s->nodes[e->dst];
    switch ((enum ev_kind)e->kind) {
    case EV_TICK:
        if (e->epoch != d->epoch || d->tick_at != s->now || !d->core || d->status == SIM_PAUSED)
            return; /* stale */
        d->tick_at = NO_TICK;
        if (am_swim_next_deadline(d->core) > s->now) {
            schedule_tick(s, e->dst, false);
            return;
        }
        s->tot.delivered++;
        trace_add(s, e);
        am_swim_tick(d->core, s->now);
        collect(s, e->dst, true);
        return;
    case EV_PACKET:
        if (!d->core || d->status == SIM_PAUSED || blocked(s, e->src, e->dst))
            return;
        s->tot.delivered++;
        trace_add(s, e);
        d->cnt.packets_received++;
        am_swim_on_packet(d->core, s->nodes[e->src].addr, e->data, e->len, s->now);
        collect(s, e->dst, false);
        return;
    case EV_STREAM:
        if (!d->core || d->status == SIM_PAUSED || blocked(s, e->src, e->dst)) {
            bool refused = !d->core;
            stream_fail(s, e->src, e->dst,
                        refused ? 2 * link_base(s, e->src, e->dst) : s->cfg.stream_timeout_ms);
            return;
        }
        s->tot.delivered++;
        trace_add(s, e);
        am_swim_on_stream(d->core, s->nodes[e->src].addr, e->data, e->len, s->now);
        collect(s, e->dst, false);
        return;
    case EV_STREAM_ERR:
        if (e->epoch != d->epoch || !d->core || d->status == SIM_PAUSED)
            return;
        s->tot.delivered++;
        trace_add(s, e);
        am_swim_on_stream_error(d->core, s->nodes[e->src].addr, s->now);
        collect(s, e->dst, false);
        return;
    }
}

bool sim_step(struct sim *s)
{
    if (!s->hlen)
        return false;
    struct hent h = heap_pop(s);
    if (h.t > s->now)
        s->now = h.t;
    deliver(s, &s->evs[h.ev]);
    ev_release(s, h.ev);
    return true;
}

bool sim_run_until(struct sim *s, uint64_t until, sim_pred pred, void *ctx)
{
    if (pred && pred(s, ctx))
        return true;
    s->next_check = s->now + s->check_ms;
    while (s->hlen && s->heap[0].t <= until) {
        sim_step(s);
        if (pred && s->now >= s->next_check && (!s->hlen || s->heap[0].t > s->now)) {
            s->next_check = s->now + s->check_ms;
            if (pred(s, ctx))
                return true;
        }
    }
    if (until > s->now)
        s->now = until;
    return pred ? pred(s, ctx) : true;
}

void sim_run_for(struct sim *s, uint64_t ms)
{
    sim_run_until(s, s->now + ms, NULL, NULL);
}

/* ---- what happened ---- */

bool sim_converged(const struct sim *s)
{
    return s->wrong == 0;
}

bool sim_pred_converged(struct sim *s, void *ctx)
{
    (void)ctx;
    return s->wrong == 0;
}

bool sim_converged_loose(const struct sim *s)
{
    return s->wrong_loose == 0;
}

bool sim_pred_converged_loose(struct sim *s, void *ctx)
{
    (void)ctx;
    return s->wrong_loose == 0;
}

size_t sim_wrong_views(const struct sim *s)
{
    return s->wrong;
}

bool sim_first_wrong_view(const struct sim *s, size_t *obs, size_t *tgt)
{
    for (size_t o = 0; o < s->n; o++)
        for (size_t t = 0; t < s->n; t++)
            if (cell_wrong(s, o, t) & 1) {
                *obs = o;
                *tgt = t;
                return true;
            }
    return false;
}

int sim_view(const struct sim *s, size_t obs, size_t tgt)
{
    int v = s->view[obs * s->n + tgt] & VIEW_MASK;
    return v == VIEW_UNKNOWN ? -1 : v - 1;
}

size_t sim_false_deaths(const struct sim *s, const struct sim_false_death **out)
{
    *out = s->fd;
    return s->nfd;
}

size_t sim_dead_declarations(const struct sim *s, size_t target)
{
    /* Only running observers count; recount rather than track kills of
     * observers. */
    size_t k = 0;
    for (size_t o = 0; o < s->n; o++)
        if (s->nodes[o].status == SIM_RUNNING && o != target &&
            (s->view[o * s->n + target] & VIEW_DEAD_SEEN))
            k++;
    return k;
}

uint64_t sim_last_dead_declaration(const struct sim *s, size_t target)
{
    return s->nodes[target].dead_decl_at;
}

size_t sim_check_core_views(const struct sim *s, char *why, size_t whylen)
{
    size_t bad = 0;
    if (whylen)
        why[0] = 0;
    uint8_t *seen = calloc(s->n, 1);
    if (!seen)
        abort();
    for (size_t o = 0; o < s->n; o++) {
        struct node *n = &s->nodes[o];
        if (!n->core)
            continue;
        memset(seen, 0, s->n);
        size_t cnt = am_swim_count(n->core);
        for (size_t k = 0; k < cnt; k++) {
            struct am_swim_member m;
            am_swim_member_at(n->core, k, &m);
            long t = index_get(s, m.name);
            if (t < 0 || (size_t)t == o)
                continue;
            seen[t] = 1;
            int v = sim_view(s, o, (size_t)t);
            if (v != (int)m.state) {
                if (!bad && whylen)
                    snprintf(why, whylen, "%s lists %s as %s, its events said %s", n->name, m.name,
                             am_member_state_name(m.state),
                             v < 0 ? "nothing" : am_member_state_name((enum am_member_state)v));
                bad++;
            }
        }
        for (size_t t = 0; t < s->n; t++) {
            if (t == o || seen[t] || sim_view(s, o, t) < 0)
                continue;
            if (!bad && whylen)
                snprintf(why, whylen, "%s does not list %s, its events said %s", n->name,
                         s->nodes[t].name,
                         am_member_state_name((enum am_member_state)sim_view(s, o, t)));
            bad++;
        }
    }
    free(seen);
    return bad;
}

void sim_set_event_hook(struct sim *s, sim_event_hook hook, void *ctx)
{
    s->hook = hook;
    s->hook_ctx = ctx;
}

void sim_reset_counters(struct sim *s)
{
    for (size_t i = 0; i < s->n; i++)
        memset(&s->nodes[i].cnt, 0, sizeof s->nodes[i].cnt);
    s->counters_since = s->now;
}

uint64_t sim_counters_since(const struct sim *s)
{
    return s->counters_since;
}

void sim_node_counters(const struct sim *s, size_t i, struct sim_counters *out)
{
    *out = s->nodes[i].cnt;
}

void sim_totals(const struct sim *s, struct sim_totals *out)
{
    *out = s->tot;
}

uint64_t sim_trace_hash(const struct sim *s)
{
    return s->trace;
}

size_t sim_seed_count(size_t dflt)
{
    const char *e = getenv("AMESH_SIM_SEEDS");
    if (e && *e) {
        char *end;
        unsigned long v = strtoul(e, &end, 10);
        if (*end == 0 && v > 0 && v < 10000)
            return v;
    }
    return dflt;
}
