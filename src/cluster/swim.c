/* swim.c - the SWIM + Lifeguard membership core (contract in swim.h, wire
 * formats in swim_proto.h).
 *
 * Structures, all owned by struct am_swim:
 *  - members: an array, self always at index 0 (self is never reaped, and
 *    removal swaps the last member into the hole, so index 0 never moves),
 *    plus an open-addressing hash index name -> array index (FNV-1a 64,
 *    linear probing, load <= 1/2, rebuilt after a reap). A 32-bit slot
 *    holds the index and 15 bits of the hash, so a probe past another name
 *    almost never reads its member; a member's name and address share one
 *    allocation (name, NUL, address, NUL) and their lengths are kept, so a
 *    lookup and the update that follows it (which compares the address)
 *    touch three cache lines, not four or more, and call no strlen;
 *  - the suspects: their member indices in an unordered array (member.spos
 *    is the position), so the next deadline, whether a death is due and the
 *    overdue suspicions cost O(suspects), not O(members); a count of the
 *    live members likewise replaces walks of the array;
 *  - the probe order: a shuffled list of member indices walked in order and
 *    reshuffled (and rebuilt from the member array) at the end of each pass
 *    and after a reap; a new member is inserted at a random position;
 *  - the broadcast queue: at most one entry per member (member.bq points to
 *    it), carrying the member's current state and a transmit count; a
 *    newer update replaces the entry and resets its count. Entries sit in
 *    one linked list per transmit count (newest at the head), so a packet
 *    takes the least-sent entries first in O(what fits), not by sorting the
 *    queue; an entry is dropped after retransmit_mult x ceil(log10(n + 1))
 *    transmissions;
 *  - one outstanding probe of our own (memberlist probes one member per
 *    interval), relays (ping-reqs we serve for others, <= MAX_RELAYS) and
 *    heal pings to dead members (<= MAX_HEALS);
 *  - suspicion state inside each suspect member: start, deadline, distinct
 *    accusers (as name hashes) and the timeout bounds.
 *
 * Where it departs from memberlist (each defended where it is coded):
 *  - suspicion max timeout = suspicion_max_mult x the base, as swim.h says
 *    (memberlist: suspicion_max_mult x the minimum);
 *  - the Lifeguard curve goes on past k confirmations, down to a floor one
 *    multiplier below the minimum ((suspicion_mult - 1) x the base), which
 *    it reaches at about 2k independent accusers (see suspicion_timeout);
 *  - a live name claimed at a second address is a conflict whatever the
 *    incarnation (memberlist too), and a conflict about our own name is
 *    refuted only if the claim is not already below our incarnation;
 *  - relays nack at 80% of the requester's indirect window, so the nack
 *    arrives before the requester gives up (see relay_timeout);
 *  - suspicions that outlive their refutation get buddy pings and then a
 *    push-pull (see check_suspects), a buddy ping below our incarnation
 *    repeats our alive, and a packet from an unknown sender brings a
 *    push-pull with it; dead members are pinged now and then and seeds we
 *    do not see alive are push-pulled, so partitions heal after a reap.
 *
 * Invariants: nsuspects == number of members in state SUSPECT, and slist
 * holds exactly their indices (slist[m.spos] == the member's index); nlive
 * == number of members alive or suspect, self included; a member's bq is
 * NONE or the index of the queue entry whose member is that index; every
 * member except self appears in the probe list at most once.
 *
 * Time comes from the caller and randomness from a splitmix64 generator
 * seeded by config.seed, so a run is a pure function of its inputs. No
 * clocks, no globals, no libm (ln() is computed here: see ln_()).
 *
 * Actions accumulate in an arena (one am_buf for all bytes and strings, an
 * array of offsets) until the driver reads them with am_swim_actions; the
 * next event call after that clears the arena. */
#include "swim.h"

#include "buf.h"
#include "err.h"
#include "mem.h"
#include "swim_proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX
/* Distinct accusers remembered per suspicion: the first and up to 2k
 * confirmations. k = suspicion_mult - 2 is 2 for lan, 4 for wan; 16 leaves
 * room for any sane configuration (k is capped at 7). */
#define MAX_CONFIRM 16
/* Fan-outs (indirect checks, gossip nodes) are capped: beyond a handful
 * they only add traffic (SWIM's analysis needs k of 3 or so). */
#define MAX_FANOUT 16
/* Ping-reqs served for others at once: a requester sends at most
 * indirect_checks per probe interval, so 64 covers 20 busy requesters in
 * one probe timeout; more are dropped (bounded memory under a flood). */
#define MAX_RELAYS 64
#define MAX_HEALS 4
/* Every HEAL_EVERY-th probe round also pings one dead member (with its
 * suspicion attached, so a live one refutes at once), which is how two
 * halves of a healed partition find each other again: 1 ping per 4 s on
 * lan is negligible traffic. */
#define HEAL_EVERY 4
/* memberlist's pushPullScaleThreshold: above 32 members the push-pull
 * interval grows with log2(n / 32) to keep the TCP load per node flat. */
#define PP_SCALE_THRESHOLD 32
/* Broadcast queue buckets, one per transmit count. The retransmit limit
 * is retransmit_mult x ceil(log10(n + 1)): 24 for lan (4) at 100,000
 * members, so 64 is never the binding cap in practice. */
#define MAX_BUCKETS 64
/* Bytes a packet still needs for the smallest update; below it, stop. */
#define MIN_UPDATE_BYTES 12

struct member {
    char *name; /* owned: name, NUL, addr, NUL in one block */
    char *addr; /* points into the name's block */
    uint64_t incarnation;
    uint64_t state_change;  /* when state last changed */
    uint64_t susp_deadline; /* while state == SUSPECT */
    struct suspicion *susp; /* while state == SUSPECT; owned; NULL if it could
                               not be allocated (then: min timeout, no confirmations) */
    enum am_member_state state;
    uint32_t bq;      /* broadcast queue entry or NONE */
    uint32_t spos;    /* position in slist while state == SUSPECT */
    uint8_t name_len; /* strlen(name) <= AM_SWIM_MAX_NAME */
    uint8_t addr_len; /* strlen(addr) <= AM_SWIM_MAX_ADDR */
};

/* Kept apart from struct member, which a 1,000-node simulation holds a
 * million of, and allocated only while the member is suspect. */
struct suspicion {
    uint64_t start, min, max, floor;
    unsigned k, n, nseen;
    unsigned checks;            /* buddy probes we spent on it */
    uint64_t seen[MAX_CONFIRM]; /* accusers, as name hashes */
};

struct bcast {
    uint32_t member;
    unsigned transmits; /* also the bucket it is linked in */
    uint32_t prev, next;
    char *accuser; /* suspect/dead: who accused; owned; NULL otherwise */
};

struct probe {
    int active;
    uint64_t seq;
    char target[AM_SWIM_MAX_NAME + 1];
    uint64_t target_inc;
    uint64_t timeout_at, end_at;
    int indirect_sent;
    unsigned expected_nacks, nacks;
};

struct relay {
    uint64_t seq, orig_seq, deadline;
    char addr[AM_SWIM_MAX_ADDR + 1];
};

struct heal {
    uint64_t seq, deadline;
    char name[AM_SWIM_MAX_NAME + 1];
};

struct act {
    enum am_swim_action_kind kind;
    size_t addr_off, data_off, len, name_off;
    enum am_swim_event event;
    enum am_member_state state;
    uint64_t incarnation;
};

struct am_swim {
    struct am_swim_config cfg; /* name and addr point to members[0] */
    uint64_t rng;

    struct member *m;
    size_t n, cap;
    uint32_t *idx; /* slot: see IDX_BITS; 0 = empty */
    size_t idx_cap;
    uint32_t *plist; /* probe order */
    size_t plen, ppos;
    uint32_t *slist; /* the suspects' member indices, unordered (cap entries) */
    size_t nlive;    /* members alive or suspect, self included */

    struct bcast *bq;
    size_t nbq, bq_cap;
    uint32_t bhead[MAX_BUCKETS]; /* per transmit count, newest first */

    struct probe probe;
    struct relay relays[MAX_RELAYS];
    size_t nrelays;
    struct heal heals[MAX_HEALS];
    size_t nheals;
    uint64_t seq;
    unsigned health;
    size_t nsuspects;

    uint64_t next_probe, next_gossip, next_pp;
    uint64_t next_stranger_pp; /* rate limit of push-pulls with unknown senders */
    uint64_t next_check;       /* the next round of suspect checks (check_suspects) */
    uint64_t next_correction;  /* rate limit of correct_accuser */
    uint64_t rounds;

    char **seeds;
    size_t nseeds, seed_rr;
    int joining;
    uint64_t next_join, join_backoff;

    int leaving;
    uint64_t leave_at;
    /* Death rumours about this node at an incarnation below this one were
     * counted already (st.declared_dead); 0 until the first one. */
    uint64_t dead_floor;

    struct am_buf out;
    struct act *acts;
    size_t nacts, acts_cap;
    struct am_swim_action *pub;
    size_t pub_cap;
    int consumed;

    struct am_swim_stats st;
};

/* ---- small helpers ---- */

static uint64_t rnd(struct am_swim *s)
{
    uint64_t z = (s->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rnd_below(struct am_swim *s, uint64_t n)
{
    return n ? rnd(s) % n : 0;
}

static uint64_t hash_name(const char *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static const double LN2 = 0.69314718055994530942;
static const double LN10 = 2.30258509299404568402;

/* Natural logarithm for x > 0 without libm (am_cluster links only
 * am_base): x = m * 2^e with m in [1, 2), ln m = 2 atanh((m-1)/(m+1)),
 * whose series in z <= 1/3 gains a factor 9 per term; 30 terms are exact to
 * double precision. */
static double ln_(double x)
{
    int e = 0;
    if (x <= 0)
        return 0;
    while (x >= 2.0) {
        x /= 2.0;
        e++;
    }
    while (x < 1.0) {
        x *= 2.0;
        e--;
    }
    double z = (x - 1.0) / (x + 1.0), z2 = z * z, term = z, sum = 0;
    for (int i = 1; i < 60; i += 2) {
        sum += term / i;
        term *= z2;
    }
    return 2.0 * sum + e * LN2;
}

static uint64_t u64_max(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static uint64_t u64_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* a (alen bytes) equals b. */
static int str_eq(const char *a, size_t alen, const struct am_swim_str *b)
{
    return alen == b->len && memcmp(a, b->p, b->len) == 0;
}

static int is_live(enum am_member_state st)
{
    return st == AM_MEMBER_ALIVE || st == AM_MEMBER_SUSPECT;
}

static int valid_cstr(const char *p, size_t max)
{
    if (!p)
        return 0;
    size_t len = strnlen(p, max + 1);
    return len >= 1 && len <= max;
}

static struct member *self(struct am_swim *s)
{
    return &s->m[0];
}

/* ---- the action arena ---- */

static void begin(struct am_swim *s)
{
    if (s->consumed) {
        s->out.len = 0;
        s->nacts = 0;
        s->consumed = 0;
    }
}

static int arena_str(struct am_swim *s, const char *p, size_t len, size_t *off)
{
    static const char nul = 0;
    *off = s->out.len;
    if (am_buf_append(&s->out, p, len) || am_buf_append(&s->out, &nul, 1)) {
        s->out.len = *off;
        return -ENOMEM;
    }
    return 0;
}

static struct act *new_act(struct am_swim *s)
{
    if (s->nacts == s->acts_cap) {
        size_t cap = s->acts_cap ? s->acts_cap * 2 : 16;
        struct act *a = am_realloc(s->acts, cap * sizeof *a);
        if (!a)
            return NULL;
        s->acts = a;
        s->acts_cap = cap;
    }
    struct act *a = &s->acts[s->nacts];
    memset(a, 0, sizeof *a);
    return a;
}

static void emit_event(struct am_swim *s, enum am_swim_event ev, const char *name, size_t name_len,
                       const char *addr, size_t addr_len, enum am_member_state state, uint64_t inc)
{
    size_t mark = s->out.len, noff, aoff;
    struct act *a = new_act(s);
    if (!a || arena_str(s, name, name_len, &noff) || arena_str(s, addr, addr_len, &aoff)) {
        s->out.len = mark;
        return;
    }
    a->kind = AM_SWIM_ACT_EVENT;
    a->event = ev;
    a->name_off = noff;
    a->addr_off = aoff;
    a->state = state;
    a->incarnation = inc;
    s->nacts++;
}

static void member_event(struct am_swim *s, enum am_swim_event ev, uint32_t i)
{
    struct member *m = &s->m[i];
    emit_event(s, ev, m->name, m->name_len, m->addr, m->addr_len, m->state, m->incarnation);
}

/* ---- the member index ---- */

/* Gives m the name and addr, in one new block (name, NUL, addr, NUL),
 * freeing its old block. The lengths are those of the strings as C
 * strings, as strlen would give them. -ENOMEM leaves m unchanged. */
static int member_set_strings(struct member *m, const char *name, size_t name_len, const char *addr,
                              size_t addr_len)
{
    char *p = am_malloc(name_len + addr_len + 2);
    if (!p)
        return -ENOMEM;
    memcpy(p, name, name_len);
    p[name_len] = 0;
    memcpy(p + name_len + 1, addr, addr_len);
    p[name_len + 1 + addr_len] = 0;
    am_free(m->name);
    m->name = p;
    m->name_len = (uint8_t)strlen(p);
    m->addr = p + name_len + 1;
    m->addr_len = (uint8_t)strlen(m->addr);
    return 0;
}

/* The member lengths fit their uint8_t fields. */
_Static_assert(AM_SWIM_MAX_NAME <= UINT8_MAX && AM_SWIM_MAX_ADDR <= UINT8_MAX,
               "member name and address lengths are kept in 8 bits");

/* An index slot is 32 bits: the member index + 1 in the low IDX_BITS, the
 * top bits of the name's hash above them, so a probe that passes another
 * name almost never reads its member. */
#define IDX_BITS 17
#define IDX_MASK ((UINT32_C(1) << IDX_BITS) - 1)
_Static_assert(AM_SWIM_MAX_PP < (1 << IDX_BITS), "a member index + 1 fits IDX_BITS");

static uint32_t idx_tag(uint64_t h)
{
    return (uint32_t)(h >> (64 - (32 - IDX_BITS))) << IDX_BITS;
}

static uint32_t find(const struct am_swim *s, const char *name, size_t len)
{
    uint64_t h = hash_name(name, len);
    uint32_t tag = idx_tag(h);
    size_t mask = s->idx_cap - 1;
    for (size_t j = (size_t)h & mask;; j = (j + 1) & mask) {
        uint32_t v = s->idx[j];
        if (v == 0)
            return NONE;
        if ((v & ~IDX_MASK) != tag)
            continue;
        uint32_t i = (v & IDX_MASK) - 1;
        const struct member *m = &s->m[i];
        if (m->name_len == len && memcmp(m->name, name, len) == 0)
            return i;
    }
}

static void idx_put(uint32_t *idx, size_t cap, const struct member *m, uint32_t i)
{
    uint64_t h = hash_name(m->name, m->name_len);
    size_t mask = cap - 1;
    size_t j = (size_t)h & mask;
    while (idx[j])
        j = (j + 1) & mask;
    idx[j] = idx_tag(h) | (i + 1);
}

/* Rebuilds the index for the current members, growing it when needed.
 * Never fails when the capacity suffices (after a reap). */
static int idx_rebuild(struct am_swim *s)
{
    size_t cap = s->idx_cap ? s->idx_cap : 16;
    while (cap < 2 * (s->n + 1))
        cap *= 2;
    if (cap != s->idx_cap) {
        uint32_t *idx = am_calloc(cap, sizeof *idx);
        if (!idx)
            return -ENOMEM;
        am_free(s->idx);
        s->idx = idx;
        s->idx_cap = cap;
    } else {
        memset(s->idx, 0, cap * sizeof *s->idx);
    }
    for (size_t i = 0; i < s->n; i++)
        idx_put(s->idx, s->idx_cap, &s->m[i], (uint32_t)i);
    return 0;
}

/* ---- the probe order ---- */

static void shuffle_probes(struct am_swim *s)
{
    s->plen = 0;
    for (size_t i = 1; i < s->n; i++)
        s->plist[s->plen++] = (uint32_t)i;
    for (size_t i = s->plen; i > 1; i--) {
        size_t j = (size_t)rnd_below(s, i);
        uint32_t t = s->plist[i - 1];
        s->plist[i - 1] = s->plist[j];
        s->plist[j] = t;
    }
    s->ppos = 0;
}

/* ---- members ---- */

static uint32_t add_member(struct am_swim *s, const char *name, size_t name_len, const char *addr,
                           size_t addr_len, enum am_member_state state, uint64_t inc, uint64_t now)
{
    /* Bounded like everything else: a push-pull must be able to carry the
     * whole view, and a flood of invented names must not grow it forever. */
    if (s->n >= AM_SWIM_MAX_PP)
        return NONE;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct member *m = am_realloc(s->m, cap * sizeof *m);
        if (!m)
            return NONE;
        s->m = m;
        uint32_t *pl = am_realloc(s->plist, cap * sizeof *pl);
        if (!pl)
            return NONE;
        s->plist = pl;
        /* Room for every member as a suspect, so set_state never allocates. */
        uint32_t *sl = am_realloc(s->slist, cap * sizeof *sl);
        if (!sl)
            return NONE;
        s->slist = sl;
        s->cap = cap;
    }
    if (2 * (s->n + 1) > s->idx_cap) {
        /* Grow first so the insertion below cannot fail half-way. */
        size_t cap = s->idx_cap ? s->idx_cap * 2 : 16;
        uint32_t *idx = am_calloc(cap, sizeof *idx);
        if (!idx)
            return NONE;
        am_free(s->idx);
        s->idx = idx;
        s->idx_cap = cap;
        for (size_t i = 0; i < s->n; i++)
            idx_put(s->idx, s->idx_cap, &s->m[i], (uint32_t)i);
    }
    struct member *m = &s->m[s->n];
    memset(m, 0, sizeof *m);
    if (member_set_strings(m, name, name_len, addr, addr_len))
        return NONE;
    m->state = state;
    m->incarnation = inc;
    m->state_change = now;
    m->bq = NONE;
    if (is_live(state))
        s->nlive++;
    if (state == AM_MEMBER_SUSPECT) {
        /* Not reached (members arrive alive), but keeps slist exact. */
        m->spos = (uint32_t)s->nsuspects;
        s->slist[s->nsuspects++] = (uint32_t)s->n;
    }
    uint32_t i = (uint32_t)s->n++;
    idx_put(s->idx, s->idx_cap, m, i);
    if (i > 0) {
        /* A random place in the probe order, as memberlist does, so a new
         * member is probed within one pass. */
        size_t at = (size_t)rnd_below(s, s->plen + 1);
        memmove(&s->plist[at + 1], &s->plist[at], (s->plen - at) * sizeof *s->plist);
        s->plist[at] = i;
        s->plen++;
        if (at < s->ppos)
            s->ppos++;
    }
    return i;
}

static size_t live_count(const struct am_swim *s)
{
    return s->nlive;
}

/* ---- the broadcast queue ---- */

static void bq_unlink(struct am_swim *s, uint32_t qi)
{
    struct bcast *b = &s->bq[qi];
    if (b->prev != NONE)
        s->bq[b->prev].next = b->next;
    else
        s->bhead[b->transmits] = b->next;
    if (b->next != NONE)
        s->bq[b->next].prev = b->prev;
}

static void bq_link(struct am_swim *s, uint32_t qi, unsigned transmits)
{
    struct bcast *b = &s->bq[qi];
    b->transmits = transmits;
    b->prev = NONE;
    b->next = s->bhead[transmits];
    if (b->next != NONE)
        s->bq[b->next].prev = qi;
    s->bhead[transmits] = qi;
}

static void bq_remove(struct am_swim *s, uint32_t qi)
{
    struct bcast *b = &s->bq[qi];
    bq_unlink(s, qi);
    s->m[b->member].bq = NONE;
    am_free(b->accuser);
    s->nbq--;
    if (qi != s->nbq) {
        /* Move the last entry into the hole and repoint its neighbours. */
        s->bq[qi] = s->bq[s->nbq];
        b = &s->bq[qi];
        if (b->prev != NONE)
            s->bq[b->prev].next = qi;
        else
            s->bhead[b->transmits] = qi;
        if (b->next != NONE)
            s->bq[b->next].prev = qi;
        s->m[b->member].bq = qi;
    }
}

/* Queues the current state of member i, replacing an older entry. */
static void bq_put(struct am_swim *s, uint32_t i, const char *accuser)
{
    struct member *m = &s->m[i];
    char *acc = NULL;
    if (accuser && (m->state == AM_MEMBER_SUSPECT || m->state == AM_MEMBER_DEAD)) {
        acc = am_strndup(accuser, strlen(accuser));
        if (!acc)
            return;
    }
    if (m->bq == NONE) {
        if (s->nbq == s->bq_cap) {
            size_t cap = s->bq_cap ? s->bq_cap * 2 : 16;
            struct bcast *q = am_realloc(s->bq, cap * sizeof *q);
            if (!q) {
                am_free(acc);
                return;
            }
            s->bq = q;
            s->bq_cap = cap;
        }
        m->bq = (uint32_t)s->nbq++;
        s->bq[m->bq].accuser = NULL;
    } else {
        bq_unlink(s, m->bq);
    }
    struct bcast *b = &s->bq[m->bq];
    am_free(b->accuser);
    b->member = i;
    b->accuser = acc;
    bq_link(s, m->bq, 0);
}

static unsigned retransmit_limit(const struct am_swim *s)
{
    /* ceil(log10(n + 1)) in integers: the digits needed to reach n + 1. */
    unsigned d = 0;
    uint64_t p = 1;
    while (p < (uint64_t)s->n + 1) {
        p *= 10;
        d++;
    }
    if (d == 0)
        d = 1;
    uint64_t limit = (uint64_t)s->cfg.retransmit_mult * d;
    return limit < MAX_BUCKETS ? (unsigned)limit : MAX_BUCKETS;
}

static void update_msg(const struct am_swim *s, uint32_t i, const char *accuser,
                       struct am_swim_msg *msg)
{
    const struct member *m = &s->m[i];
    memset(msg, 0, sizeof *msg);
    switch (m->state) {
    case AM_MEMBER_ALIVE:
        msg->type = AM_SWIM_MSG_ALIVE;
        break;
    case AM_MEMBER_SUSPECT:
        msg->type = AM_SWIM_MSG_SUSPECT;
        break;
    case AM_MEMBER_DEAD:
        msg->type = AM_SWIM_MSG_DEAD;
        break;
    case AM_MEMBER_LEFT:
        msg->type = AM_SWIM_MSG_LEFT;
        break;
    }
    msg->name.p = m->name;
    msg->name.len = m->name_len;
    msg->addr.p = m->addr;
    msg->addr.len = m->addr_len;
    msg->incarnation = m->incarnation;
    if (accuser) {
        msg->from.p = accuser;
        msg->from.len = (uint32_t)strlen(accuser);
    } else {
        msg->from.p = s->m[0].name;
        msg->from.len = s->m[0].name_len;
    }
}

/* Fills the rest of a packet with queued updates, least-sent first. */
static void piggyback(struct am_swim *s, struct am_swim_packet_writer *w)
{
    uint32_t used[AM_SWIM_MAX_MSGS];
    size_t nused = 0;
    unsigned limit = retransmit_limit(s);
    int misses = 0, full = 0;
    /* The limit shrinks when members are reaped: drop what is now over. */
    for (unsigned t = limit; t < MAX_BUCKETS; t++)
        while (s->bhead[t] != NONE)
            bq_remove(s, s->bhead[t]);
    for (unsigned t = 0; t < limit && !full; t++) {
        for (uint32_t qi = s->bhead[t]; qi != NONE; qi = s->bq[qi].next) {
            struct am_swim_msg msg;
            if (w->b->len - w->start + MIN_UPDATE_BYTES > w->max || w->count >= AM_SWIM_MAX_MSGS ||
                nused == AM_SWIM_MAX_MSGS) {
                full = 1;
                break;
            }
            update_msg(s, s->bq[qi].member, s->bq[qi].accuser, &msg);
            int rc = am_swim_packet_add(w, &msg);
            if (rc == AM_ETOOBIG) {
                /* Updates differ in size by their strings: a few more may fit. */
                if (++misses >= 8) {
                    full = 1;
                    break;
                }
                continue;
            }
            if (rc) {
                full = 1;
                break;
            }
            used[nused++] = qi;
        }
    }
    /* Move what was sent one bucket up (after the walk, so nothing is sent
     * twice in one packet); in reverse, so the bucket keeps their order.
     * Entries at the limit are dropped last, by member, because removal
     * moves queue entries. */
    uint32_t done[AM_SWIM_MAX_MSGS];
    size_t ndone = 0;
    for (size_t k = nused; k-- > 0;) {
        uint32_t qi = used[k];
        unsigned t = s->bq[qi].transmits + 1;
        bq_unlink(s, qi);
        if (t >= limit) {
            bq_link(s, qi, limit - 1 < MAX_BUCKETS ? limit - 1 : 0);
            done[ndone++] = s->bq[qi].member;
        } else {
            bq_link(s, qi, t);
        }
    }
    for (size_t k = 0; k < ndone; k++)
        bq_remove(s, s->m[done[k]].bq);
}

/* ---- sending ---- */

/* One packet to addr: msgs first, then as many updates as fit. With no
 * msgs and nothing to piggyback, nothing is sent. */
static void send_packet(struct am_swim *s, const char *addr, const struct am_swim_msg *msgs,
                        size_t nmsgs)
{
    struct am_swim_packet_writer w;
    size_t mark = s->out.len, aoff;
    struct act *a = new_act(s);
    struct member *me = self(s);
    if (!a || arena_str(s, addr, strlen(addr), &aoff))
        return;
    if (am_swim_packet_begin(&w, &s->out, me->name, me->name_len, s->cfg.max_packet))
        goto fail;
    for (size_t i = 0; i < nmsgs; i++)
        if (am_swim_packet_add(&w, &msgs[i]))
            goto fail;
    piggyback(s, &w);
    if (w.count == 0)
        goto fail;
    am_swim_packet_end(&w);
    a->kind = AM_SWIM_ACT_PACKET;
    a->addr_off = aoff;
    a->data_off = w.start;
    a->len = s->out.len - w.start;
    s->nacts++;
    s->st.packets_out++;
    s->st.bytes_out += a->len;
    return;
fail:
    s->out.len = mark;
}

static void send_one(struct am_swim *s, const char *addr, enum am_swim_msg_type type, uint64_t seq)
{
    struct am_swim_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.type = type;
    msg.seq = seq;
    send_packet(s, addr, &msg, 1);
}

static void send_ping(struct am_swim *s, uint32_t i, uint64_t seq, int buddy)
{
    struct member *m = &s->m[i];
    struct am_swim_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.type = AM_SWIM_MSG_PING;
    msg.seq = seq;
    msg.name.p = m->name;
    msg.name.len = m->name_len;
    if (buddy) {
        msg.has_suspicion = 1;
        msg.incarnation = m->incarnation;
    }
    send_packet(s, m->addr, &msg, 1);
}

/* The whole member list as one push-pull stream message. */
static void send_push_pull(struct am_swim *s, const char *addr, unsigned flags)
{
    size_t mark = s->out.len, aoff, doff;
    struct act *a = new_act(s);
    struct member *me = self(s);
    if (!a || arena_str(s, addr, strlen(addr), &aoff))
        return;
    doff = s->out.len;
    if (am_swim_pp_encode_hdr(&s->out, flags, me->name, me->name_len, (uint32_t)s->n))
        goto fail;
    for (size_t i = 0; i < s->n; i++) {
        struct am_swim_pp_member pm;
        pm.name.p = s->m[i].name;
        pm.name.len = s->m[i].name_len;
        pm.addr.p = s->m[i].addr;
        pm.addr.len = s->m[i].addr_len;
        pm.state = s->m[i].state;
        pm.incarnation = s->m[i].incarnation;
        if (am_swim_pp_encode_member(&s->out, &pm))
            goto fail;
    }
    a->kind = AM_SWIM_ACT_STREAM;
    a->addr_off = aoff;
    a->data_off = doff;
    a->len = s->out.len - doff;
    s->nacts++;
    s->st.bytes_out += a->len;
    return;
fail:
    s->out.len = mark;
}

/* ---- Lifeguard: local health and suspicion timeouts ---- */

static void health_add(struct am_swim *s, int delta)
{
    /* memberlist's awareness: the score stays in [0, awareness_max - 1] so
     * timeouts are scaled by at most awareness_max. */
    int h = (int)s->health + delta;
    int hi = s->cfg.awareness_max > 0 ? (int)s->cfg.awareness_max - 1 : 0;
    if (h < 0)
        h = 0;
    if (h > hi)
        h = hi;
    s->health = (unsigned)h;
}

static uint64_t scaled(const struct am_swim *s, uint64_t t)
{
    return t * (s->health + 1);
}

/* min = suspicion_mult x max(1, log10(N)) x probe_interval and max the
 * same with suspicion_max_mult, where N counts the live members (alive or
 * suspect, self included). Like memberlist, the scale is kept to three
 * decimals in integer arithmetic. */
static void suspicion_bounds(const struct am_swim *s, size_t live, uint64_t *min, uint64_t *max)
{
    double l = live > 1 ? ln_((double)live) / LN10 : 0.0;
    uint64_t scale = (uint64_t)((l > 1.0 ? l : 1.0) * 1000.0);
    *min = s->cfg.suspicion_mult * scale * s->cfg.probe_interval_ms / 1000;
    *max = s->cfg.suspicion_max_mult * scale * s->cfg.probe_interval_ms / 1000;
    if (*max < *min)
        *max = *min;
}

/* memberlist's remainingSuspicionTime without the elapsed part: the
 * timeout after n confirmations, from max down on a log curve that reaches
 * min at the k expected ones, so the first confirmations count most.
 *
 * memberlist stops at min. Here the same curve goes on to a floor of
 * (suspicion_mult - 1) x the base (x->floor), reached at about 2k
 * confirmations (lan, 20 members: 5.2 s at 2, 4.5 s at 3, 4.0 s at 4, the
 * floor of 3.9 s from 5). Each confirmation is an independent failed probe
 * by another member, and each of those probes told the suspect it is
 * suspected (buddy system), so a live suspect has long refuted before that
 * many accusers pile up; a dead one is declared a second or more sooner.
 * Small clusters cannot gather 2k accusers and keep memberlist's bound. In
 * the simulator (300 nodes, 10% loss on every link, 30 seeds) this made no
 * false death. */
static uint64_t suspicion_timeout(const struct suspicion *x)
{
    if (x->k == 0)
        return x->min;
    double frac = ln_((double)x->n + 1.0) / ln_((double)x->k + 1.0);
    double raw = (double)x->max - frac * (double)(x->max - x->min);
    uint64_t t = raw > 0 ? (uint64_t)raw : 0;
    return t < x->floor ? x->floor : t;
}

static void start_suspicion(struct am_swim *s, uint32_t i, const char *accuser, uint64_t now)
{
    struct member *m = &s->m[i];
    size_t live = live_count(s);
    /* memberlist: k such that the nominal timeout is reached two probe
     * intervals out; none expected when the cluster is too small to give
     * them (N minus ourselves and the suspect). */
    unsigned k = s->cfg.suspicion_mult > 2 ? s->cfg.suspicion_mult - 2 : 0;
    if (live < 2 || live - 2 < k)
        k = 0;
    if (k > (MAX_CONFIRM - 1) / 2) /* the first accuser and 2k confirmations fit */
        k = (MAX_CONFIRM - 1) / 2;
    uint64_t min, max;
    suspicion_bounds(s, live, &min, &max);
    struct suspicion *x = m->susp ? m->susp : am_malloc(sizeof *x);
    if (!x) {
        m->susp_deadline = now + min;
        return;
    }
    m->susp = x;
    x->min = min;
    x->max = max;
    x->floor = s->cfg.suspicion_mult > 1 ? min / s->cfg.suspicion_mult * (s->cfg.suspicion_mult - 1)
                                         : min;
    x->k = k;
    x->n = 0;
    x->nseen = 1;
    x->checks = 0;
    x->seen[0] = hash_name(accuser, strlen(accuser));
    x->start = now;
    m->susp_deadline = now + suspicion_timeout(x);
}

/* 1 if accuser is a new independent confirmation (the deadline moved). */
static int confirm_suspicion(struct am_swim *s, uint32_t i, const char *accuser, size_t len)
{
    struct member *m = &s->m[i];
    struct suspicion *x = m->susp;
    uint64_t h = hash_name(accuser, len);
    /* Up to 2k: where the curve meets its floor (suspicion_timeout). */
    if (!x || x->n >= 2 * x->k)
        return 0;
    for (unsigned j = 0; j < x->nseen; j++)
        if (x->seen[j] == h)
            return 0;
    if (x->nseen < MAX_CONFIRM)
        x->seen[x->nseen++] = h;
    x->n++;
    m->susp_deadline = x->start + suspicion_timeout(x);
    return 1;
}

static void set_state(struct am_swim *s, uint32_t i, enum am_member_state st, uint64_t now)
{
    struct member *m = &s->m[i];
    if (m->state == st)
        return;
    if (m->state == AM_MEMBER_SUSPECT) {
        /* Out of the suspect list: the last one takes its place. */
        uint32_t last = s->slist[--s->nsuspects];
        s->slist[m->spos] = last;
        s->m[last].spos = m->spos;
        am_free(m->susp);
        m->susp = NULL;
    }
    if (st == AM_MEMBER_SUSPECT) {
        m->spos = (uint32_t)s->nsuspects;
        s->slist[s->nsuspects++] = i;
    }
    if (is_live(m->state) && !is_live(st))
        s->nlive--;
    else if (!is_live(m->state) && is_live(st))
        s->nlive++;
    m->state = st;
    m->state_change = now;
}

/* The earliest suspicion deadline, UINT64_MAX with no suspect. */
static uint64_t suspicion_due(const struct am_swim *s)
{
    uint64_t t = UINT64_MAX;
    for (size_t k = 0; k < s->nsuspects; k++)
        t = u64_min(t, s->m[s->slist[k]].susp_deadline);
    return t;
}

/* ---- applying updates ---- */

static void refute(struct am_swim *s, uint64_t claimed)
{
    struct member *me = self(s);
    me->incarnation = u64_max(me->incarnation, claimed) + 1;
    bq_put(s, 0, NULL);
    health_add(s, 1);
    s->st.refutations++;
    member_event(s, AM_SWIM_EV_UPDATED, 0);
}

/* Tells member i, straight, that it was declared dead at incarnation inc:
 * one datagram, that death leading. A member learns it was declared dead
 * only from a death message about itself (note_declared_dead), and the
 * news that reaches it after a partition heals is often just a suspicion
 * (a merged remote death is a suspicion, below): it refutes and never
 * learns that the others may have served its actors meanwhile. A process
 * test partitioning five nodes saw such a member keep its old copies after
 * the heal, and the majority's writes of the cut were lost. */
static void tell_dead(struct am_swim *s, uint32_t i, uint64_t inc)
{
    if (i == 0 || i == NONE)
        return;
    const struct member *m = &s->m[i];
    struct am_swim_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.type = AM_SWIM_MSG_DEAD;
    msg.name.p = m->name;
    msg.name.len = m->name_len;
    msg.addr.p = m->addr;
    msg.addr.len = m->addr_len;
    msg.incarnation = inc;
    msg.from.p = s->m[0].name;
    msg.from.len = s->m[0].name_len;
    char addr[AM_SWIM_MAX_ADDR + 1];
    memcpy(addr, m->addr, (size_t)m->addr_len + 1);
    send_packet(s, addr, &msg, 1);
    s->st.deaths_told++;
}

static void on_alive(struct am_swim *s, const struct am_swim_str *name,
                     const struct am_swim_str *addr, uint64_t inc, uint64_t now)
{
    uint32_t i = find(s, name->p, name->len);
    if (i == 0) {
        struct member *me = self(s);
        if (s->leaving)
            return;
        if (!str_eq(me->addr, me->addr_len, addr)) {
            /* Another node claims our name: never apply it. Refute only if
             * its claim is not already below ours, so two claimants do not
             * race their incarnations upward for ever. */
            emit_event(s, AM_SWIM_EV_CONFLICT, name->p, name->len, addr->p, addr->len,
                       AM_MEMBER_ALIVE, inc);
            if (inc >= me->incarnation)
                refute(s, inc);
            return;
        }
        if (inc > me->incarnation)
            refute(s, inc);
        return;
    }
    if (i == NONE) {
        i = add_member(s, name->p, name->len, addr->p, addr->len, AM_MEMBER_ALIVE, inc, now);
        if (i == NONE)
            return;
        bq_put(s, i, NULL);
        member_event(s, AM_SWIM_EV_JOINED, i);
        return;
    }
    struct member *m = &s->m[i];
    int moved = !str_eq(m->addr, m->addr_len, addr);
    if (moved && (m->state == AM_MEMBER_ALIVE || m->state == AM_MEMBER_SUSPECT)) {
        /* A live name at a second address: keep the first (memberlist
         * does the same whatever the incarnation; accepting a higher one
         * would let two claimants take the name from each other forever). */
        emit_event(s, AM_SWIM_EV_CONFLICT, name->p, name->len, addr->p, addr->len, AM_MEMBER_ALIVE,
                   inc);
        return;
    }
    if (inc <= m->incarnation)
        return;
    if (moved && member_set_strings(m, m->name, m->name_len, addr->p, addr->len))
        return;
    enum am_member_state was = m->state;
    uint64_t was_inc = m->incarnation;
    m->incarnation = inc;
    set_state(s, i, AM_MEMBER_ALIVE, now);
    bq_put(s, i, NULL);
    if (was == AM_MEMBER_DEAD)
        tell_dead(s, i, was_inc); /* back from dead here: it hears it was */
    member_event(
        s, was == AM_MEMBER_DEAD || was == AM_MEMBER_LEFT ? AM_SWIM_EV_JOINED : AM_SWIM_EV_UPDATED,
        i);
}

/* The member a suspect or dead message is about, or NONE when there is
 * nothing to apply: unknown, or this node itself, which refutes instead
 * (unless it is leaving, when being declared gone is the point). */
/* An accusation of this node at an incarnation it has refuted already.
 * The accuser holds a suspicion whose refutation it missed (every gossiped
 * copy of it was lost on the way, or went elsewhere: with few members a
 * refutation is sent only a handful of times), and would wait out its
 * timeout and declare this live node dead. Tell it directly: one packet
 * led by our alive, at most one per gossip interval. Seen in a 5-node
 * cluster under 20% loss: three members took the refutation within 50 ms,
 * the fourth heard nothing of it for 6 s and declared the node dead. */
static void correct_accuser(struct am_swim *s, const char *accuser, size_t len, uint64_t now)
{
    if (now < s->next_correction || !accuser)
        return;
    uint32_t i = find(s, accuser, len);
    if (i == NONE || i == 0 || !is_live(s->m[i].state))
        return;
    s->next_correction = now + s->cfg.gossip_interval_ms;
    /* Queued afresh (the others may have missed it too), it is the first
     * update of the next packet: this one. */
    bq_put(s, 0, NULL);
    send_packet(s, s->m[i].addr, NULL, 0);
    s->st.corrections++;
}

static uint32_t accused(struct am_swim *s, const struct am_swim_str *name, uint64_t inc,
                        const char *accuser, size_t accuser_len, uint64_t now)
{
    uint32_t i = find(s, name->p, name->len);
    if (i == 0) {
        if (s->leaving)
            return NONE;
        if (inc >= self(s)->incarnation)
            refute(s, inc);
        else
            correct_accuser(s, accuser, accuser_len, now);
        return NONE;
    }
    return i;
}

static void on_suspect(struct am_swim *s, const struct am_swim_str *name, uint64_t inc,
                       const char *accuser, size_t accuser_len, uint64_t now)
{
    uint32_t i = accused(s, name, inc, accuser, accuser_len, now);
    if (i == NONE)
        return;
    struct member *m = &s->m[i];
    if (inc < m->incarnation)
        return;
    char acc[AM_SWIM_MAX_NAME + 1];
    size_t alen = accuser_len > AM_SWIM_MAX_NAME ? AM_SWIM_MAX_NAME : accuser_len;
    memcpy(acc, accuser, alen);
    acc[alen] = 0;
    if (m->state == AM_MEMBER_SUSPECT) {
        /* Lifeguard: an independent accuser shortens the timeout; only
         * news is passed on, so confirmations do not echo for ever. */
        if (confirm_suspicion(s, i, acc, alen))
            bq_put(s, i, acc);
        return;
    }
    if (m->state != AM_MEMBER_ALIVE)
        return;
    m->incarnation = inc;
    set_state(s, i, AM_MEMBER_SUSPECT, now);
    start_suspicion(s, i, acc, now);
    bq_put(s, i, acc);
    s->st.suspicions++;
    member_event(s, AM_SWIM_EV_UPDATED, i);
}

/* Others declared this node dead (it was paused, or cut off): counted, so
 * the node can tell that its actors were placed elsewhere meanwhile. */
static void note_declared_dead(struct am_swim *s, const struct am_swim_str *name, uint64_t inc)
{
    struct member *me = self(s);
    /* Whatever its incarnation (a suspicion may have made this node refute
     * before the death rumour reached it), once per incarnation declared
     * dead. */
    if (s->leaving || inc < s->dead_floor || !str_eq(me->name, me->name_len, name))
        return;
    s->dead_floor = inc + 1;
    s->st.declared_dead++;
    /* An event about this node, so the driver looks at the count now: a
     * death below our incarnation changes nothing else here. */
    member_event(s, AM_SWIM_EV_UPDATED, 0);
}

static void on_dead(struct am_swim *s, const struct am_swim_str *name, uint64_t inc,
                    const char *accuser, int left, uint64_t now)
{
    if (!left)
        note_declared_dead(s, name, inc);
    uint32_t i = accused(s, name, inc, accuser, accuser ? strlen(accuser) : 0, now);
    if (i == NONE)
        return;
    struct member *m = &s->m[i];
    if (inc < m->incarnation || m->state == AM_MEMBER_DEAD || m->state == AM_MEMBER_LEFT)
        return;
    m->incarnation = inc;
    set_state(s, i, left ? AM_MEMBER_LEFT : AM_MEMBER_DEAD, now);
    bq_put(s, i, accuser);
    member_event(s, AM_SWIM_EV_UPDATED, i);
}

/* ---- probing ---- */

static int can_help(const struct am_swim *s, uint32_t i, const char *target)
{
    const struct member *m = &s->m[i];
    return i != 0 && m->state == AM_MEMBER_ALIVE && strcmp(m->name, target) != 0;
}

static int can_gossip(const struct am_swim *s, uint32_t i, uint64_t now)
{
    const struct member *m = &s->m[i];
    if (i == 0)
        return 0;
    if (m->state == AM_MEMBER_ALIVE || m->state == AM_MEMBER_SUSPECT)
        return 1;
    /* memberlist's gossip to the dead: a member recently declared dead
     * hears it and can refute if it is in fact alive. */
    return m->state == AM_MEMBER_DEAD && now - m->state_change < s->cfg.reap_ms;
}

/* Reservoir sample of up to k members passing the filter. */
static size_t sample(struct am_swim *s, uint32_t *out, size_t k, const char *target, uint64_t now)
{
    size_t got = 0, seen = 0;
    if (k > MAX_FANOUT)
        k = MAX_FANOUT;
    for (uint32_t i = 1; i < s->n; i++) {
        int ok = target ? can_help(s, i, target) : can_gossip(s, i, now);
        if (!ok)
            continue;
        seen++;
        if (got < k) {
            out[got++] = i;
        } else {
            uint64_t j = rnd_below(s, seen);
            if (j < k)
                out[j] = i;
        }
    }
    return got;
}

/* How long a relay waits for the target before it nacks. The requester
 * sends its ping-req at probe_timeout and gives up at probe_interval, so a
 * nack must arrive inside that window or it proves nothing: wait 80% of the
 * window (capped at one probe timeout), leaving a fifth for the trip back.
 * lan: min(500, 1000 - 500) x 0.8 = 400 ms. */
static uint64_t relay_timeout(const struct am_swim *s)
{
    uint64_t w =
        u64_min(s->cfg.probe_timeout_ms, s->cfg.probe_interval_ms - s->cfg.probe_timeout_ms);
    w = w * 4 / 5;
    return w ? w : 1;
}

static void probe_done_ok(struct am_swim *s)
{
    s->probe.active = 0;
    s->st.acks++;
    health_add(s, -1);
}

static void probe_failed(struct am_swim *s, uint64_t now)
{
    struct probe *p = &s->probe;
    int delta = 1;
    p->active = 0;
    /* Lifeguard: nacks prove the helpers could talk to us, so the missing
     * ones are what counts against our own health; with no helpers any
     * failed probe does. */
    if (p->expected_nacks > 0)
        delta = (int)(p->expected_nacks -
                      (p->nacks < p->expected_nacks ? p->nacks : p->expected_nacks));
    health_add(s, delta);
    struct am_swim_str name = {p->target, (uint32_t)strlen(p->target)};
    struct member *me = self(s);
    on_suspect(s, &name, p->target_inc, me->name, me->name_len, now);
}

static void send_indirect(struct am_swim *s)
{
    struct probe *p = &s->probe;
    uint32_t helpers[MAX_FANOUT];
    uint32_t t = find(s, p->target, strlen(p->target));
    p->indirect_sent = 1;
    if (t == NONE)
        return;
    size_t k = sample(s, helpers, s->cfg.indirect_checks, p->target, 0);
    struct am_swim_msg msg;
    memset(&msg, 0, sizeof msg);
    msg.type = AM_SWIM_MSG_PING_REQ;
    msg.seq = p->seq;
    msg.name.p = s->m[t].name;
    msg.name.len = s->m[t].name_len;
    msg.addr.p = s->m[t].addr;
    msg.addr.len = s->m[t].addr_len;
    for (size_t j = 0; j < k; j++) {
        send_packet(s, s->m[helpers[j]].addr, &msg, 1);
        s->st.indirect_probes++;
    }
    p->expected_nacks = (unsigned)k;
}

static int only_dead_peers(const struct am_swim *s)
{
    return s->nlive == (size_t)is_live(s->m[0].state);
}

static int seed_is_self(const struct am_swim *s, const char *seed)
{
    return strcmp(seed, s->m[0].addr) == 0;
}

/* The next seed that is not our own address, round robin; NULL if none. */
static const char *next_seed(struct am_swim *s, int skip_live)
{
    for (size_t t = 0; t < s->nseeds; t++) {
        const char *seed = s->seeds[s->seed_rr++ % s->nseeds];
        if (seed_is_self(s, seed))
            continue;
        if (skip_live) {
            int live = 0;
            for (size_t i = 1; i < s->n && !live; i++)
                live = s->m[i].state == AM_MEMBER_ALIVE && strcmp(s->m[i].addr, seed) == 0;
            if (live)
                continue;
        }
        return seed;
    }
    return NULL;
}

static void heal_ping(struct am_swim *s, uint64_t now)
{
    size_t seen = 0;
    uint32_t pick = NONE;
    if (s->nheals == MAX_HEALS)
        return;
    for (uint32_t i = 1; i < s->n; i++) {
        if (s->m[i].state != AM_MEMBER_DEAD)
            continue;
        seen++;
        if (rnd_below(s, seen) == 0)
            pick = i;
    }
    if (pick == NONE)
        return;
    struct heal *h = &s->heals[s->nheals++];
    h->seq = ++s->seq;
    h->deadline = now + s->cfg.probe_interval_ms;
    memcpy(h->name, s->m[pick].name, (size_t)s->m[pick].name_len + 1);
    send_ping(s, pick, h->seq, 1);
}

/* A suspect we still hold long after the suspicion spread. A refutation
 * is gossiped for under a second (retransmit limit x gossip interval), so
 * a node that missed every copy of it would wait out the timeout and
 * declare a live member dead; round-robin probing reaches the suspect only
 * once per pass (N probe intervals). So a suspicion still standing after
 * 1 and 3 probe intervals earns an extra ping carrying the suspicion
 * (buddy system), which the suspect answers with its current incarnation
 * on the ack; after 2, a push-pull with it, which a lost datagram cannot
 * defeat (the suspect sees the suspicion in our state, refutes, and its
 * reply carries the new incarnation).
 *
 * The checks run on their own clock, every half probe interval, not in
 * the probe rounds: Lifeguard's local health stretches those (up to 8x),
 * and a node under loss is exactly the one whose health is poor. With the
 * checks in the probe rounds a 5-node cluster under 20% loss on a loaded
 * machine saw a single check in the 6 s timeout, the push-pull never, and
 * declared a live member dead. Checks help a suspect refute, they accuse
 * no one, so running them at full speed on a slow node is safe; the
 * push-pull lands 2 to 2.5 intervals in, inside the shortest suspicion
 * timeout (3 intervals, the Lifeguard floor). At most CHECKS_PER_ROUND
 * checks per half interval and one push-pull, and nothing while
 * refutations get through. Measured in the simulator: 300 nodes under 10%
 * loss gave a false death or two per 180 s run with one ping per probe
 * round and none with these checks. */
#define SUSPECT_CHECKS 3
#define PUSH_PULL_CHECK 2
#define CHECKS_PER_ROUND 2

/* The overdue suspect with the earliest deadline, the lowest index among
 * equal deadlines (as a walk of the member array in order would pick). */
static uint32_t overdue_suspect(struct am_swim *s, uint64_t now, uint32_t skip)
{
    uint32_t pick = NONE;
    for (size_t k = 0; k < s->nsuspects; k++) {
        uint32_t i = s->slist[k];
        struct member *m = &s->m[i];
        if (i == skip || !m->susp || m->susp->checks >= SUSPECT_CHECKS ||
            now < m->susp->start + s->cfg.probe_interval_ms * (m->susp->checks + 1))
            continue;
        if (pick == NONE || m->susp_deadline < s->m[pick].susp_deadline ||
            (m->susp_deadline == s->m[pick].susp_deadline && i < pick))
            pick = i;
    }
    return pick;
}

static uint64_t check_every(const struct am_swim *s)
{
    return s->cfg.probe_interval_ms / 2 ? s->cfg.probe_interval_ms / 2 : 1;
}

static void check_suspects(struct am_swim *s, uint64_t now, uint32_t probed)
{
    int pushed = 0;
    for (int k = 0; k < CHECKS_PER_ROUND; k++) {
        uint32_t i = overdue_suspect(s, now, probed);
        if (i == NONE)
            return;
        struct member *m = &s->m[i];
        if (++m->susp->checks == PUSH_PULL_CHECK && !pushed) {
            pushed = 1;
            send_push_pull(s, m->addr, 0);
        } else {
            send_ping(s, i, ++s->seq, 1);
        }
    }
}

static void probe_round(struct am_swim *s, uint64_t now)
{
    s->rounds++;
    if (only_dead_peers(s)) {
        const char *seed = next_seed(s, 0);
        if (seed)
            send_push_pull(s, seed, 0);
    }
    if (s->rounds % HEAL_EVERY == 0)
        heal_ping(s, now);

    uint32_t target = NONE;
    for (size_t tries = 0; tries <= s->plen && target == NONE; tries++) {
        if (s->ppos >= s->plen) {
            shuffle_probes(s);
            if (s->plen == 0)
                break;
        }
        uint32_t i = s->plist[s->ppos++];
        if (s->m[i].state == AM_MEMBER_ALIVE || s->m[i].state == AM_MEMBER_SUSPECT)
            target = i;
    }
    if (target == NONE)
        return;
    struct probe *p = &s->probe;
    struct member *m = &s->m[target];
    memset(p, 0, sizeof *p);
    p->active = 1;
    p->seq = ++s->seq;
    memcpy(p->target, m->name, (size_t)m->name_len + 1);
    p->target_inc = m->incarnation;
    p->timeout_at = now + scaled(s, s->cfg.probe_timeout_ms);
    p->end_at = now + scaled(s, s->cfg.probe_interval_ms);
    s->st.probes++;
    /* The buddy system: a suspect hears of its suspicion in the ping. */
    send_ping(s, target, p->seq, m->state == AM_MEMBER_SUSPECT);
}

static uint64_t reap_after(const struct am_swim *s)
{
    uint64_t min, max;
    suspicion_bounds(s, live_count(s), &min, &max);
    return u64_max(s->cfg.reap_ms, 4 * max);
}

static void reap(struct am_swim *s, uint64_t now)
{
    uint64_t after = reap_after(s);
    int removed = 0;
    for (size_t i = s->n; i-- > 1;) {
        struct member *m = &s->m[i];
        if (!(m->state == AM_MEMBER_DEAD || m->state == AM_MEMBER_LEFT) ||
            now - m->state_change < after)
            continue;
        member_event(s, AM_SWIM_EV_REAPED, (uint32_t)i);
        if (m->bq != NONE)
            bq_remove(s, m->bq);
        am_free(m->susp);
        am_free(m->name);
        s->n--;
        if (i != s->n) {
            s->m[i] = s->m[s->n];
            if (s->m[i].bq != NONE)
                s->bq[s->m[i].bq].member = (uint32_t)i;
            if (s->m[i].state == AM_MEMBER_SUSPECT)
                s->slist[s->m[i].spos] = (uint32_t)i;
        }
        removed = 1;
    }
    if (removed) {
        idx_rebuild(s); /* same or smaller need: reuses the table */
        shuffle_probes(s);
    }
}

static uint64_t push_pull_interval(const struct am_swim *s)
{
    uint64_t mult = 1, t = PP_SCALE_THRESHOLD;
    while (t < s->n) {
        t *= 2;
        mult++;
    }
    return s->cfg.push_pull_interval_ms * mult;
}

static void push_pull_round(struct am_swim *s)
{
    size_t seen = 0;
    uint32_t pick = NONE;
    for (uint32_t i = 1; i < s->n; i++) {
        if (s->m[i].state != AM_MEMBER_ALIVE)
            continue;
        seen++;
        if (rnd_below(s, seen) == 0)
            pick = i;
    }
    if (pick != NONE)
        send_push_pull(s, s->m[pick].addr, 0);
    /* A seed we do not see alive may be on the other side of a partition
     * we have since forgotten (reaped): keep asking it. */
    const char *seed = next_seed(s, 1);
    if (seed && (pick == NONE || strcmp(seed, s->m[pick].addr) != 0))
        send_push_pull(s, seed, 0);
}

static void gossip(struct am_swim *s, uint64_t now)
{
    uint32_t to[MAX_FANOUT];
    if (s->nbq == 0)
        return;
    size_t k = sample(s, to, s->cfg.gossip_nodes, NULL, now);
    for (size_t j = 0; j < k && s->nbq > 0; j++)
        send_packet(s, s->m[to[j]].addr, NULL, 0);
}

/* ---- public API ---- */

const char *am_member_state_name(enum am_member_state st)
{
    switch (st) {
    case AM_MEMBER_ALIVE:
        return "alive";
    case AM_MEMBER_SUSPECT:
        return "suspect";
    case AM_MEMBER_DEAD:
        return "dead";
    case AM_MEMBER_LEFT:
        return "left";
    }
    return "unknown";
}

int am_swim_profile(struct am_swim_config *c, const char *profile)
{
    if (!c || !profile)
        return -EINVAL;
    /* memberlist's DefaultLANConfig, DefaultLocalConfig, DefaultWANConfig;
     * reap_ms is their GossipToTheDeadTime. */
    c->probe_interval_ms = 1000;
    c->probe_timeout_ms = 500;
    c->indirect_checks = 3;
    c->gossip_interval_ms = 200;
    c->gossip_nodes = 3;
    c->retransmit_mult = 4;
    c->suspicion_mult = 4;
    c->suspicion_max_mult = 6;
    c->awareness_max = 8;
    c->push_pull_interval_ms = 30000;
    c->reap_ms = 30000;
    c->max_packet = 1400;
    if (strcmp(profile, "lan") == 0)
        return 0;
    if (strcmp(profile, "local") == 0) {
        c->indirect_checks = 1;
        c->retransmit_mult = 2;
        c->suspicion_mult = 3;
        c->push_pull_interval_ms = 15000;
        c->probe_timeout_ms = 200;
        c->gossip_interval_ms = 100;
        c->reap_ms = 15000;
        return 0;
    }
    if (strcmp(profile, "wan") == 0) {
        c->suspicion_mult = 6;
        c->push_pull_interval_ms = 60000;
        c->probe_timeout_ms = 3000;
        c->probe_interval_ms = 5000;
        c->gossip_nodes = 4;
        c->gossip_interval_ms = 500;
        c->reap_ms = 60000;
        return 0;
    }
    return -EINVAL;
}

int am_swim_new(struct am_swim **out, const struct am_swim_config *c, uint64_t now)
{
    *out = NULL;
    if (!c || !valid_cstr(c->name, AM_SWIM_MAX_NAME) || !valid_cstr(c->addr, AM_SWIM_MAX_ADDR) ||
        c->probe_interval_ms == 0 || c->probe_timeout_ms == 0 ||
        c->probe_timeout_ms > c->probe_interval_ms || c->gossip_interval_ms == 0 ||
        c->push_pull_interval_ms == 0 || c->retransmit_mult == 0 || c->suspicion_mult == 0 ||
        c->max_packet < AM_SWIM_MIN_PACKET || c->max_packet > 65507)
        return -EINVAL;
    struct am_swim *s = am_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->cfg = *c;
    s->rng = c->seed;
    for (size_t t = 0; t < MAX_BUCKETS; t++)
        s->bhead[t] = NONE;
    am_buf_init(&s->out);
    if (idx_rebuild(s) || add_member(s, c->name, strlen(c->name), c->addr, strlen(c->addr),
                                     AM_MEMBER_ALIVE, c->incarnation, now) == NONE) {
        am_swim_free(s);
        return -ENOMEM;
    }
    s->cfg.name = s->m[0].name;
    s->cfg.addr = s->m[0].addr;
    /* Random phases, so nodes started together do not probe in lockstep. */
    s->next_probe = now + rnd_below(s, c->probe_interval_ms) + 1;
    s->next_gossip = now + rnd_below(s, c->gossip_interval_ms) + 1;
    s->next_check = now + check_every(s);
    s->next_pp = now + c->push_pull_interval_ms + rnd_below(s, c->push_pull_interval_ms);
    *out = s;
    return 0;
}

static void free_seeds(struct am_swim *s)
{
    for (size_t i = 0; i < s->nseeds; i++)
        am_free(s->seeds[i]);
    am_free(s->seeds);
    s->seeds = NULL;
    s->nseeds = 0;
}

void am_swim_free(struct am_swim *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        am_free(s->m[i].name);
        am_free(s->m[i].susp);
    }
    for (size_t q = 0; q < s->nbq; q++)
        am_free(s->bq[q].accuser);
    free_seeds(s);
    am_free(s->m);
    am_free(s->idx);
    am_free(s->plist);
    am_free(s->slist);
    am_free(s->bq);
    am_free(s->acts);
    am_free(s->pub);
    am_buf_close(&s->out);
    am_free(s);
}

int am_swim_join(struct am_swim *s, const char *const *seeds, size_t nseeds, uint64_t now)
{
    begin(s);
    if (!seeds && nseeds)
        return -EINVAL;
    for (size_t i = 0; i < nseeds; i++)
        if (!valid_cstr(seeds[i], AM_SWIM_MAX_ADDR))
            return -EINVAL;
    char **copy = nseeds ? am_calloc(nseeds, sizeof *copy) : NULL;
    if (nseeds && !copy)
        return -ENOMEM;
    for (size_t i = 0; i < nseeds; i++) {
        copy[i] = am_strndup(seeds[i], strlen(seeds[i]));
        if (!copy[i]) {
            for (size_t j = 0; j < i; j++)
                am_free(copy[j]);
            am_free(copy);
            return -ENOMEM;
        }
    }
    free_seeds(s);
    s->seeds = copy;
    s->nseeds = nseeds;
    s->joining = 0;
    for (size_t i = 0; i < nseeds; i++) {
        if (seed_is_self(s, seeds[i]))
            continue;
        send_push_pull(s, seeds[i], AM_SWIM_PP_JOIN);
        s->joining = 1;
    }
    s->join_backoff = s->cfg.probe_interval_ms;
    s->next_join = now + s->join_backoff;
    return 0;
}

int am_swim_on_packet(struct am_swim *s, const char *from_addr, const uint8_t *p, size_t len,
                      uint64_t now)
{
    begin(s);
    s->st.packets_in++;
    s->st.bytes_in += len;
    if (!valid_cstr(from_addr, AM_SWIM_MAX_ADDR) || (!p && len)) {
        s->st.bad_packets++;
        return -EINVAL;
    }
    if (!p || am_swim_packet_check(p, len)) {
        s->st.bad_packets++;
        return AM_EPROTO;
    }
    const uint8_t *pos = p, *end = p + len;
    struct am_swim_packet_hdr h;
    am_swim_packet_decode_hdr(&h, &pos, end);
    /* A sender we do not know knows us (it pinged or gossiped to us): we
     * missed the gossip that announced it, or forgot it during a partition
     * it outlived. Its name alone carries no incarnation, so ask it for the
     * full state instead of waiting for anti-entropy (2 x 30 s x the scale
     * on lan). At most one such push-pull per probe interval. */
    if (!s->leaving && now >= s->next_stranger_pp && find(s, h.sender.p, h.sender.len) == NONE) {
        s->next_stranger_pp = now + s->cfg.probe_interval_ms;
        send_push_pull(s, from_addr, 0);
    }
    for (uint32_t k = 0; k < h.count; k++) {
        struct am_swim_msg m;
        am_swim_msg_decode(&m, &pos, end);
        switch (m.type) {
        case AM_SWIM_MSG_PING:
            if (!str_eq(self(s)->name, self(s)->name_len, &m.name))
                break; /* meant for a previous owner of this address */
            if (m.has_suspicion && !s->leaving) {
                /* An old suspicion was refuted already, but the news
                 * missed this prober: repeat it on the ack. */
                if (m.incarnation >= self(s)->incarnation)
                    refute(s, m.incarnation);
                else
                    bq_put(s, 0, NULL);
            }
            send_one(s, from_addr, AM_SWIM_MSG_ACK, m.seq);
            break;
        case AM_SWIM_MSG_ACK:
            if (s->probe.active && m.seq == s->probe.seq) {
                probe_done_ok(s);
                break;
            }
            for (size_t r = 0; r < s->nrelays; r++) {
                if (s->relays[r].seq != m.seq)
                    continue;
                struct relay rl = s->relays[r];
                s->relays[r] = s->relays[--s->nrelays];
                send_one(s, rl.addr, AM_SWIM_MSG_ACK, rl.orig_seq);
                break;
            }
            for (size_t r = 0; r < s->nheals; r++) {
                if (s->heals[r].seq != m.seq)
                    continue;
                uint32_t i = find(s, s->heals[r].name, strlen(s->heals[r].name));
                s->heals[r] = s->heals[--s->nheals];
                /* A member we had as dead answers: merge whole views. */
                if (i != NONE)
                    send_push_pull(s, s->m[i].addr, 0);
                break;
            }
            break;
        case AM_SWIM_MSG_NACK:
            if (s->probe.active && m.seq == s->probe.seq) {
                s->probe.nacks++;
                s->st.nacks++;
            }
            break;
        case AM_SWIM_MSG_PING_REQ: {
            if (s->nrelays == MAX_RELAYS)
                break;
            struct relay *rl = &s->relays[s->nrelays++];
            rl->seq = ++s->seq;
            rl->orig_seq = m.seq;
            rl->deadline = now + relay_timeout(s);
            memcpy(rl->addr, from_addr, strlen(from_addr) + 1);
            char addr[AM_SWIM_MAX_ADDR + 1];
            memcpy(addr, m.addr.p, m.addr.len);
            addr[m.addr.len] = 0;
            struct am_swim_msg ping;
            memset(&ping, 0, sizeof ping);
            ping.type = AM_SWIM_MSG_PING;
            ping.seq = rl->seq;
            ping.name = m.name;
            send_packet(s, addr, &ping, 1);
            break;
        }
        case AM_SWIM_MSG_ALIVE:
            on_alive(s, &m.name, &m.addr, m.incarnation, now);
            break;
        case AM_SWIM_MSG_SUSPECT:
            on_suspect(s, &m.name, m.incarnation, m.from.p, m.from.len, now);
            break;
        case AM_SWIM_MSG_DEAD:
        case AM_SWIM_MSG_LEFT: {
            char acc[AM_SWIM_MAX_NAME + 1];
            const struct am_swim_str *a = m.type == AM_SWIM_MSG_DEAD ? &m.from : &m.name;
            memcpy(acc, a->p, a->len);
            acc[a->len] = 0;
            on_dead(s, &m.name, m.incarnation, acc, m.type == AM_SWIM_MSG_LEFT, now);
            break;
        }
        }
    }
    return 0;
}

/* A node that has just joined tells members of itself directly, one
 * packet each that its alive leads, instead of leaving the news to gossip
 * (a few gossip intervals, more with many members). Members that learn of
 * a newcomer sooner route to it and hand it its actors sooner: seen with 4
 * nodes on loopback, two members learned of the newcomer 106 ms after the
 * seed, and the calls the seed sent the newcomer meanwhile waited for their
 * handoffs. At most ANNOUNCE_MAX members, drawn at random; gossip reaches
 * the rest. */
#define ANNOUNCE_MAX MAX_FANOUT

static void announce(struct am_swim *s, const char *seed_addr, uint64_t now)
{
    uint32_t to[ANNOUNCE_MAX];
    size_t k = sample(s, to, ANNOUNCE_MAX, NULL, now);
    bq_put(s, 0, NULL);
    for (size_t j = 0; j < k; j++) {
        const struct member *m = &s->m[to[j]];
        if (m->state != AM_MEMBER_ALIVE || strcmp(m->addr, seed_addr) == 0)
            continue; /* the seed knows */
        send_packet(s, m->addr, NULL, 0);
        s->st.announces++;
    }
}

int am_swim_on_stream(struct am_swim *s, const char *from_addr, const uint8_t *p, size_t len,
                      uint64_t now)
{
    begin(s);
    s->st.bytes_in += len;
    if (!valid_cstr(from_addr, AM_SWIM_MAX_ADDR) || (!p && len)) {
        s->st.bad_packets++;
        return -EINVAL;
    }
    if (!p || am_swim_pp_check(p, len)) {
        s->st.bad_packets++;
        return AM_EPROTO;
    }
    const uint8_t *pos = p, *end = p + len;
    struct am_swim_pp_hdr h;
    struct member *me = self(s);
    /* A copy: adding members below may move the member array. */
    char mine[AM_SWIM_MAX_NAME + 1];
    size_t mine_len = me->name_len;
    memcpy(mine, me->name, mine_len + 1);
    am_swim_pp_decode_hdr(&h, &pos, end);
    for (uint32_t k = 0; k < h.count; k++) {
        struct am_swim_pp_member pm;
        am_swim_pp_decode_member(&pm, &pos, end);
        switch (pm.state) {
        case AM_MEMBER_ALIVE:
            on_alive(s, &pm.name, &pm.addr, pm.incarnation, now);
            break;
        case AM_MEMBER_DEAD:
        case AM_MEMBER_SUSPECT:
            if (pm.state == AM_MEMBER_DEAD) {
                note_declared_dead(s, &pm.name, pm.incarnation);
                /* Dead in the other's view, alive here: it hears it. */
                uint32_t d = find(s, pm.name.p, pm.name.len);
                if (d != NONE && d != 0 && is_live(s->m[d].state) &&
                    pm.incarnation >= s->m[d].incarnation)
                    tell_dead(s, d, pm.incarnation);
            }
            /* memberlist's mergeState: a remote death is only a suspicion
             * here (accused by us), so a live member gets its chance to
             * refute; this is what merges two views after a partition. */
            on_suspect(s, &pm.name, pm.incarnation, mine, mine_len, now);
            break;
        case AM_MEMBER_LEFT:
            on_dead(s, &pm.name, pm.incarnation, mine, 1, now);
            break;
        }
    }
    if (h.flags & AM_SWIM_PP_REPLY) {
        if ((h.flags & AM_SWIM_PP_JOIN) && s->joining)
            announce(s, from_addr, now);
        s->joining = 0;
    } else
        send_push_pull(s, from_addr, AM_SWIM_PP_REPLY | (h.flags & AM_SWIM_PP_JOIN));
    return 0;
}

void am_swim_on_stream_error(struct am_swim *s, const char *to_addr, uint64_t now)
{
    (void)to_addr;
    (void)now;
    begin(s);
    /* Nothing to undo: a join is retried with backoff at next_join, a heal
     * or anti-entropy push-pull at the next round. */
}

void am_swim_tick(struct am_swim *s, uint64_t now)
{
    begin(s);
    for (size_t r = s->nrelays; r-- > 0;) {
        if (now < s->relays[r].deadline)
            continue;
        struct relay rl = s->relays[r];
        s->relays[r] = s->relays[--s->nrelays];
        send_one(s, rl.addr, AM_SWIM_MSG_NACK, rl.orig_seq);
    }
    for (size_t r = s->nheals; r-- > 0;)
        if (now >= s->heals[r].deadline)
            s->heals[r] = s->heals[--s->nheals];

    if (s->probe.active && !s->probe.indirect_sent && now >= s->probe.timeout_at)
        send_indirect(s);
    if (s->probe.active && now >= s->probe.end_at)
        probe_failed(s, now);

    if (suspicion_due(s) <= now) {
        /* Rare (a death), so walk the members in index order, the order
         * the deaths are queued and reported in. */
        struct member *me = self(s);
        for (uint32_t i = 1; i < s->n; i++) {
            struct member *m = &s->m[i];
            if (m->state != AM_MEMBER_SUSPECT || now < m->susp_deadline)
                continue;
            set_state(s, i, AM_MEMBER_DEAD, now);
            bq_put(s, i, me->name);
            s->st.deaths_declared++;
            member_event(s, AM_SWIM_EV_UPDATED, i);
        }
    }

    if (!s->leaving && now >= s->next_probe) {
        probe_round(s, now);
        reap(s, now);
        s->next_probe = now + scaled(s, s->cfg.probe_interval_ms);
    }
    if (!s->leaving && now >= s->next_check) {
        /* The suspect being probed has a ping on its way already. */
        check_suspects(s, now, s->probe.active ? find(s, s->probe.target, strlen(s->probe.target))
                                               : NONE);
        s->next_check = now + check_every(s);
    }
    if (now >= s->next_gossip) {
        gossip(s, now);
        s->next_gossip = now + s->cfg.gossip_interval_ms;
    }
    if (!s->leaving && now >= s->next_pp) {
        push_pull_round(s);
        /* Jittered (0.5 to 1.5 times the interval, the same mean) so the
         * members' rounds do not stay in phase: the phases drawn at start
         * spread over one unscaled interval only, and anti-entropy is what
         * repairs the views gossip missed. */
        uint64_t pp = push_pull_interval(s);
        s->next_pp = now + pp / 2 + rnd_below(s, pp + 1);
    }
    if (s->joining && !s->leaving && now >= s->next_join) {
        for (size_t i = 0; i < s->nseeds; i++)
            if (!seed_is_self(s, s->seeds[i]))
                send_push_pull(s, s->seeds[i], AM_SWIM_PP_JOIN);
        s->join_backoff = u64_min(s->join_backoff * 2, s->cfg.push_pull_interval_ms);
        s->next_join = now + s->join_backoff;
    }
}

uint64_t am_swim_next_deadline(const struct am_swim *s)
{
    uint64_t t = s->next_gossip;
    if (!s->leaving) {
        t = u64_min(t, s->next_probe);
        t = u64_min(t, s->next_pp);
        if (s->nsuspects)
            t = u64_min(t, s->next_check);
        if (s->joining)
            t = u64_min(t, s->next_join);
    }
    if (s->probe.active) {
        if (!s->probe.indirect_sent)
            t = u64_min(t, s->probe.timeout_at);
        t = u64_min(t, s->probe.end_at);
    }
    for (size_t r = 0; r < s->nrelays; r++)
        t = u64_min(t, s->relays[r].deadline);
    return u64_min(t, suspicion_due(s));
}

int am_swim_leave(struct am_swim *s, uint64_t now)
{
    begin(s);
    if (s->leaving)
        return 0;
    s->leaving = 1;
    s->leave_at = now;
    s->probe.active = 0;
    s->joining = 0;
    /* One above the last incarnation we were alive at: a left at the same
     * incarnation would lose to a late alive of ours. */
    struct member *me = self(s);
    me->incarnation++;
    s->nlive -= (size_t)is_live(me->state);
    me->state = AM_MEMBER_LEFT;
    me->state_change = now;
    bq_put(s, 0, NULL);
    member_event(s, AM_SWIM_EV_UPDATED, 0);
    s->next_gossip = now; /* spread it at the next tick */
    return 0;
}

int am_swim_leave_done(const struct am_swim *s, uint64_t now)
{
    if (!s->leaving)
        return 0;
    if (s->m[0].bq == NONE || only_dead_peers(s))
        return 1;
    /* Lost packets can keep the update queued; stop anyway after two probe
     * intervals (the others then find us dead instead of left). */
    return now >= s->leave_at + 2 * s->cfg.probe_interval_ms;
}

size_t am_swim_actions(struct am_swim *s, const struct am_swim_action **out)
{
    if (s->consumed) {
        /* Already handed out: nothing new since. */
        *out = s->pub;
        return 0;
    }
    if (s->pub_cap < s->nacts) {
        struct am_swim_action *p = am_realloc(s->pub, s->nacts * sizeof *p);
        if (!p) {
            *out = NULL;
            return 0;
        }
        s->pub = p;
        s->pub_cap = s->nacts;
    }
    for (size_t i = 0; i < s->nacts; i++) {
        const struct act *a = &s->acts[i];
        struct am_swim_action *p = &s->pub[i];
        memset(p, 0, sizeof *p);
        p->kind = a->kind;
        p->addr = (const char *)s->out.data + a->addr_off;
        if (a->kind == AM_SWIM_ACT_EVENT) {
            p->event = a->event;
            p->name = (const char *)s->out.data + a->name_off;
            p->state = a->state;
            p->incarnation = a->incarnation;
        } else {
            p->data = s->out.data + a->data_off;
            p->len = a->len;
        }
    }
    s->consumed = 1;
    *out = s->pub;
    return s->nacts;
}

size_t am_swim_count(const struct am_swim *s)
{
    return s->n;
}

void am_swim_member_at(const struct am_swim *s, size_t i, struct am_swim_member *m)
{
    const struct member *x = &s->m[i < s->n ? i : 0];
    m->name = x->name;
    m->addr = x->addr;
    m->state = x->state;
    m->incarnation = x->incarnation;
}

int am_swim_find(const struct am_swim *s, const char *name, struct am_swim_member *m)
{
    if (!name)
        return -EINVAL;
    uint32_t i = find(s, name, strnlen(name, AM_SWIM_MAX_NAME + 1));
    if (i == NONE)
        return -ENOENT;
    if (m)
        am_swim_member_at(s, i, m);
    return 0;
}

void am_swim_get_stats(const struct am_swim *s, struct am_swim_stats *st)
{
    *st = s->st;
    st->health = s->health;
}
