/* test_swim.c - the SWIM core driven by hand: 2-5 cores whose packets and
 * streams the test carries between them (a tiny network with per-link
 * blocking), plus single cores fed crafted packets from fake peers. */
#include "err.h"
#include "swim.h"
#include "swim_proto.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define LEAK_CHECK() ((void)0)
#endif

#define MAXN 6
#define MAXEV 512

struct ev {
    enum am_swim_event ev;
    char name[AM_SWIM_MAX_NAME + 1];
    char addr[AM_SWIM_MAX_ADDR + 1];
    enum am_member_state state;
    uint64_t inc;
};

struct node {
    struct am_swim *s;
    char name[32], addr[32];
    int down;
    struct ev evs[MAXEV];
    size_t nev;
    size_t max_packet_seen;
};

struct net {
    struct node n[MAXN];
    size_t count;
    int block[MAXN][MAXN]; /* block[i][j]: nothing from i reaches j */
    uint64_t now;
};

static struct am_swim_config config(const char *name, const char *addr, uint64_t seed)
{
    struct am_swim_config c;
    memset(&c, 0, sizeof c);
    cr_assert_eq(am_swim_profile(&c, "lan"), 0);
    c.name = name;
    c.addr = addr;
    c.seed = seed;
    return c;
}

static struct node *add_node_named(struct net *net, const char *name, const char *addr)
{
    struct node *n = &net->n[net->count];
    memset(n, 0, sizeof *n);
    snprintf(n->name, sizeof n->name, "%s", name);
    snprintf(n->addr, sizeof n->addr, "%s", addr);
    struct am_swim_config c = config(n->name, n->addr, 1000 + net->count);
    cr_assert_eq(am_swim_new(&n->s, &c, net->now), 0);
    net->count++;
    return n;
}

static struct node *add_node(struct net *net)
{
    char name[32], addr[32];
    snprintf(name, sizeof name, "node-%zu", net->count);
    snprintf(addr, sizeof addr, "127.0.0.%zu:7946", net->count + 1);
    return add_node_named(net, name, addr);
}

static int by_addr(struct net *net, const char *addr)
{
    for (size_t i = 0; i < net->count; i++)
        if (strcmp(net->n[i].addr, addr) == 0)
            return (int)i;
    return -1;
}

static void free_net(struct net *net)
{
    for (size_t i = 0; i < net->count; i++)
        am_swim_free(net->n[i].s);
}

/* Delivers every pending action until the network is quiet. */
static void pump(struct net *net)
{
    for (int busy = 1, rounds = 0; busy; rounds++) {
        cr_assert_lt(rounds, 1000, "the network never went quiet");
        busy = 0;
        for (size_t i = 0; i < net->count; i++) {
            struct node *from = &net->n[i];
            const struct am_swim_action *a;
            size_t k = am_swim_actions(from->s, &a);
            for (size_t j = 0; j < k; j++) {
                if (a[j].kind == AM_SWIM_ACT_EVENT) {
                    if (from->nev < MAXEV) {
                        struct ev *e = &from->evs[from->nev++];
                        e->ev = a[j].event;
                        snprintf(e->name, sizeof e->name, "%s", a[j].name);
                        snprintf(e->addr, sizeof e->addr, "%s", a[j].addr);
                        e->state = a[j].state;
                        e->inc = a[j].incarnation;
                    }
                    continue;
                }
                busy = 1;
                if (a[j].kind == AM_SWIM_ACT_PACKET) {
                    cr_assert_leq(a[j].len, 1400);
                    cr_assert_eq(am_swim_packet_check(a[j].data, a[j].len), 0);
                    if (a[j].len > from->max_packet_seen)
                        from->max_packet_seen = a[j].len;
                }
                int t = by_addr(net, a[j].addr);
                if (from->down || t < 0 || net->n[t].down || net->block[i][t])
                    continue;
                if (a[j].kind == AM_SWIM_ACT_PACKET)
                    cr_assert_eq(
                        am_swim_on_packet(net->n[t].s, from->addr, a[j].data, a[j].len, net->now),
                        0);
                else
                    cr_assert_eq(
                        am_swim_on_stream(net->n[t].s, from->addr, a[j].data, a[j].len, net->now),
                        0);
            }
        }
    }
}

/* Advances time to `until`, ticking each live core at its deadlines. */
static void run(struct net *net, uint64_t until)
{
    pump(net);
    for (;;) {
        uint64_t next = until;
        for (size_t i = 0; i < net->count; i++)
            if (!net->n[i].down) {
                uint64_t d = am_swim_next_deadline(net->n[i].s);
                if (d < next)
                    next = d;
            }
        if (next < net->now)
            next = net->now;
        net->now = next;
        for (size_t i = 0; i < net->count; i++)
            if (!net->n[i].down && am_swim_next_deadline(net->n[i].s) <= net->now)
                am_swim_tick(net->n[i].s, net->now);
        pump(net);
        if (net->now >= until)
            break;
    }
}

static enum am_member_state state_of(struct node *n, const char *name)
{
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(n->s, name, &m), 0, "%s does not know %s", n->name, name);
    return m.state;
}

static uint64_t inc_of(struct node *n, const char *name)
{
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(n->s, name, &m), 0);
    return m.incarnation;
}

static void join(struct net *net, struct node *n, const char *seed)
{
    cr_assert_eq(am_swim_join(n->s, &seed, 1, net->now), 0);
    pump(net);
}

static size_t count_events(struct node *n, enum am_swim_event ev, const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < n->nev; i++)
        if (n->evs[i].ev == ev && (!name || strcmp(n->evs[i].name, name) == 0))
            k++;
    return k;
}

/* A cluster of k cores, all joined through the first and converged. */
static void cluster(struct net *net, size_t k)
{
    memset(net, 0, sizeof *net);
    net->now = 1000;
    for (size_t i = 0; i < k; i++)
        add_node(net);
    for (size_t i = 1; i < k; i++)
        join(net, &net->n[i], net->n[0].addr);
    run(net, net->now + 5000);
    for (size_t i = 0; i < k; i++) {
        cr_assert_eq(am_swim_count(net->n[i].s), k);
        for (size_t j = 0; j < k; j++)
            cr_assert_eq(state_of(&net->n[i], net->n[j].name), AM_MEMBER_ALIVE);
    }
}

Test(swim, profiles_fill_memberlists_timings)
{
    struct am_swim_config c;
    memset(&c, 0, sizeof c);
    cr_assert_eq(am_swim_profile(&c, "lan"), 0);
    cr_assert(c.probe_interval_ms == 1000 && c.probe_timeout_ms == 500 && c.indirect_checks == 3 &&
              c.gossip_interval_ms == 200 && c.gossip_nodes == 3 && c.suspicion_mult == 4 &&
              c.suspicion_max_mult == 6 && c.max_packet == 1400);
    cr_assert_eq(am_swim_profile(&c, "wan"), 0);
    cr_assert(c.probe_interval_ms == 5000 && c.probe_timeout_ms == 3000 && c.gossip_nodes == 4);
    cr_assert_eq(am_swim_profile(&c, "local"), 0);
    cr_assert(c.probe_timeout_ms == 200 && c.gossip_interval_ms == 100 && c.indirect_checks == 1);
    cr_assert_eq(am_swim_profile(&c, "moon"), -EINVAL);
    cr_assert_str_eq(am_member_state_name(AM_MEMBER_SUSPECT), "suspect");
}

Test(swim, new_refuses_a_bad_config)
{
    struct am_swim *s;
    struct am_swim_config c = config("a", "127.0.0.1:1", 1);
    c.name = "";
    cr_assert_eq(am_swim_new(&s, &c, 0), -EINVAL);
    c = config("a", "127.0.0.1:1", 1);
    c.max_packet = 100;
    cr_assert_eq(am_swim_new(&s, &c, 0), -EINVAL);
    c = config("a", NULL, 1);
    cr_assert_eq(am_swim_new(&s, &c, 0), -EINVAL);
    am_swim_free(NULL);
}

Test(swim, join_via_push_pull_makes_both_see_each_other_alive)
{
    struct net net;
    memset(&net, 0, sizeof net);
    struct node *a = add_node(&net), *b = add_node(&net);
    cr_assert_eq(am_swim_count(a->s), 1);
    join(&net, b, a->addr);
    cr_assert_eq(am_swim_count(a->s), 2);
    cr_assert_eq(am_swim_count(b->s), 2);
    cr_assert_eq(state_of(a, "node-1"), AM_MEMBER_ALIVE);
    cr_assert_eq(state_of(b, "node-0"), AM_MEMBER_ALIVE);
    cr_assert_eq(count_events(a, AM_SWIM_EV_JOINED, "node-1"), 1);
    cr_assert_eq(count_events(b, AM_SWIM_EV_JOINED, "node-0"), 1);
    struct am_swim_member m;
    am_swim_member_at(a->s, 0, &m);
    cr_assert_str_eq(m.name, "node-0");
    cr_assert_str_eq(m.addr, "127.0.0.1:7946");
    free_net(&net);
    LEAK_CHECK();
}

Test(swim, join_is_retried_with_backoff_until_a_seed_answers)
{
    struct net net;
    memset(&net, 0, sizeof net);
    struct node *a = add_node(&net), *b = add_node(&net);
    a->down = 1;
    join(&net, b, a->addr);
    run(&net, 2500); /* retries at 1 s and 3 s: the first one is lost */
    cr_assert_eq(am_swim_count(b->s), 1);
    a->down = 0;
    run(&net, 4000);
    cr_assert_eq(am_swim_count(b->s), 2);
    cr_assert_eq(am_swim_count(a->s), 2);
    free_net(&net);
}

Test(swim, three_nodes_converge_through_one_seed)
{
    struct net net;
    cluster(&net, 3);
    free_net(&net);
    LEAK_CHECK();
}

Test(swim, a_ping_gets_an_ack)
{
    struct net net;
    memset(&net, 0, sizeof net);
    struct node *a = add_node(&net), *b = add_node(&net);
    join(&net, b, a->addr);
    run(&net, 3000);
    struct am_swim_stats st;
    am_swim_get_stats(a->s, &st);
    cr_assert_geq(st.probes, 2);
    cr_assert_eq(st.acks, st.probes);
    cr_assert_eq(st.suspicions, 0);
    cr_assert_eq(st.health, 0);
    cr_assert_gt(st.packets_out, 0);
    cr_assert_gt(st.bytes_in, 0);
    free_net(&net);
}

Test(swim, a_silent_member_becomes_suspect_then_dead)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0], *b = &net.n[1], *c = &net.n[2];
    uint64_t t0 = net.now;
    c->down = 1;
    /* Suspected within a pass over 2 members (2 probe intervals, scaled
     * by at most 2 once health has grown), plus the probe interval. */
    uint64_t t = t0;
    while (state_of(a, "node-2") == AM_MEMBER_ALIVE && t < t0 + 8000)
        run(&net, t += 100);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_SUSPECT);
    uint64_t suspected = net.now;
    /* N = 3: min 4 s, k = 0 so the timeout is the minimum. */
    run(&net, suspected + 3800);
    cr_assert_neq(state_of(a, "node-2"), AM_MEMBER_DEAD);
    run(&net, suspected + 4200);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_DEAD);
    run(&net, net.now + 1000);
    cr_assert_eq(state_of(b, "node-2"), AM_MEMBER_DEAD);
    cr_assert_eq(state_of(b, "node-0"), AM_MEMBER_ALIVE);
    struct am_swim_stats st;
    am_swim_get_stats(a->s, &st);
    cr_assert_geq(st.suspicions, 1);
    free_net(&net);
    LEAK_CHECK();
}

/* ---- a single core and fake peers ---- */

struct fake {
    struct am_swim *s;
    uint64_t now;
    struct am_buf b;
};

static void fake_init(struct fake *f, const char *name, const char *addr)
{
    struct am_swim_config c = config(name, addr, 7);
    f->now = 10000;
    cr_assert_eq(am_swim_new(&f->s, &c, f->now), 0);
    am_buf_init(&f->b);
}

static void fake_close(struct fake *f)
{
    am_swim_free(f->s);
    am_buf_close(&f->b);
}

static struct am_swim_str S(const char *p) {
    struct am_swim_str s = {p, (uint32_t)strlen(p)};
    return s;
}

/* Sends one message from (name, addr) to the core. */
static int
fake_send(struct fake *f, const char *name, const char *addr, const struct am_swim_msg *m)
{
    struct am_swim_packet_writer w;
    am_buf_set(&f->b, NULL, 0);
    cr_assert_eq(am_swim_packet_begin(&w, &f->b, name, strlen(name), 1400), 0);
    cr_assert_eq(am_swim_packet_add(&w, m), 0);
    am_swim_packet_end(&w);
    return am_swim_on_packet(f->s, addr, f->b.data, f->b.len, f->now);
}

static void fake_update(struct fake *f, enum am_swim_msg_type type, const char *name,
                        const char *addr, uint64_t inc, const char *from)
{
    struct am_swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = type;
    m.name = S(name);
    m.addr = S(addr);
    m.incarnation = inc;
    m.from = S(from ? from : name);
    cr_assert_eq(fake_send(f, from ? from : "peer", "10.9.9.9:1", &m), 0);
}

#define NFAKE 12
static char fake_names[NFAKE][16] = {"p1", "p2", "p3", "p4",  "p5",  "p6",
                                     "p7", "p8", "p9", "p10", "p11", "p12"};
static char fake_addrs[NFAKE][16] = {"10.0.0.1:1", "10.0.0.2:1",  "10.0.0.3:1",  "10.0.0.4:1",
                                     "10.0.0.5:1", "10.0.0.6:1",  "10.0.0.7:1",  "10.0.0.8:1",
                                     "10.0.0.9:1", "10.0.0.10:1", "10.0.0.11:1", "10.0.0.12:1"};

/* Makes the core know k fake peers, alive at incarnation 0. */
static void fake_peers(struct fake *f, size_t k)
{
    am_buf_set(&f->b, NULL, 0);
    cr_assert_eq(am_swim_pp_encode_hdr(&f->b, AM_SWIM_PP_REPLY, "p1", 2, (uint32_t)k), 0);
    for (size_t i = 0; i < k; i++) {
        struct am_swim_pp_member m = {S(fake_names[i]), S(fake_addrs[i]), AM_MEMBER_ALIVE, 0};
        cr_assert_eq(am_swim_pp_encode_member(&f->b, &m), 0);
    }
    cr_assert_eq(am_swim_on_stream(f->s, fake_addrs[0], f->b.data, f->b.len, f->now), 0);
}

/* Counts of updates seen by fake_run, by type and member name. */
#define TALLY_MAX 1100
struct tally {
    char name[AM_SWIM_MAX_NAME + 1];
    unsigned n[9];
};
static struct tally tallies[TALLY_MAX];
static size_t ntallies;

static void tally(const struct am_swim_msg *m)
{
    if (m->type < AM_SWIM_MSG_ALIVE)
        return;
    for (size_t i = 0; i < ntallies; i++)
        if (strlen(tallies[i].name) == m->name.len &&
            memcmp(tallies[i].name, m->name.p, m->name.len) == 0) {
            tallies[i].n[m->type]++;
            return;
        }
    cr_assert_lt(ntallies, TALLY_MAX);
    memcpy(tallies[ntallies].name, m->name.p, m->name.len);
    tallies[ntallies].name[m->name.len] = 0;
    memset(tallies[ntallies].n, 0, sizeof tallies[ntallies].n);
    tallies[ntallies].n[m->type]++;
    ntallies++;
}

static unsigned tally_of(const char *name, enum am_swim_msg_type type)
{
    for (size_t i = 0; i < ntallies; i++)
        if (strcmp(tallies[i].name, name) == 0)
            return tallies[i].n[type];
    return 0;
}

/* Pings carrying a suspicion (buddy system) seen by fake_run. */
static struct {
    char to[AM_SWIM_MAX_ADDR + 1];
    uint64_t at;
} buddy[16], pushes[16];
static size_t nbuddy, npushes;

/* Ticks the core to `until`; with answer, every ping it sends is acked by
 * its target, so no fake peer is suspected by the core's own probes.
 * Returns the number of packets seen. */
static size_t fake_run(struct fake *f, uint64_t until, int answer)
{
    size_t packets = 0;
    while (f->now < until) {
        uint64_t d = am_swim_next_deadline(f->s);
        f->now = d > until ? until : (d < f->now ? f->now : d);
        am_swim_tick(f->s, f->now);
        const struct am_swim_action *a;
        size_t k = am_swim_actions(f->s, &a);
        uint64_t acks[64];
        char to[64][AM_SWIM_MAX_ADDR + 1];
        size_t nacks = 0;
        for (size_t i = 0; i < k; i++) {
            if (a[i].kind == AM_SWIM_ACT_STREAM && npushes < 16) {
                snprintf(pushes[npushes].to, sizeof pushes[npushes].to, "%s", a[i].addr);
                pushes[npushes++].at = f->now;
            }
            if (a[i].kind != AM_SWIM_ACT_PACKET)
                continue;
            packets++;
            cr_assert_leq(a[i].len, 1400);
            const uint8_t *pos = a[i].data, *end = a[i].data + a[i].len;
            struct am_swim_packet_hdr h;
            cr_assert_eq(am_swim_packet_decode_hdr(&h, &pos, end), 0);
            for (uint32_t j = 0; j < h.count; j++) {
                struct am_swim_msg m;
                cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
                tally(&m);
                if (m.type == AM_SWIM_MSG_PING && m.has_suspicion && nbuddy < 16) {
                    snprintf(buddy[nbuddy].to, sizeof buddy[nbuddy].to, "%s", a[i].addr);
                    buddy[nbuddy++].at = f->now;
                }
                if (answer && m.type == AM_SWIM_MSG_PING && nacks < 64) {
                    snprintf(to[nacks], sizeof to[nacks], "%s", a[i].addr);
                    acks[nacks++] = m.seq;
                }
            }
        }
        for (size_t i = 0; i < nacks; i++) {
            struct am_swim_msg m;
            memset(&m, 0, sizeof m);
            m.type = AM_SWIM_MSG_ACK;
            m.seq = acks[i];
            fake_send(f, "p1", to[i], &m);
        }
    }
    return packets;
}

Test(swim, a_suspect_that_hears_it_refutes_with_a_higher_incarnation)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "me", "10.0.0.100:1", 0, "p1");
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(f.s, "me", &m), 0);
    cr_assert_eq(m.incarnation, 1);
    cr_assert_eq(m.state, AM_MEMBER_ALIVE);
    /* The refutation goes out on the next packets. */
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    am_swim_tick(f.s, f.now + 1000);
    size_t k = am_swim_actions(f.s, &a);
    int seen = 0;
    for (size_t i = 0; i < k; i++) {
        if (a[i].kind != AM_SWIM_ACT_PACKET)
            continue;
        const uint8_t *pos = a[i].data, *end = a[i].data + a[i].len;
        struct am_swim_packet_hdr h;
        am_swim_packet_decode_hdr(&h, &pos, end);
        for (uint32_t j = 0; j < h.count; j++) {
            struct am_swim_msg msg;
            am_swim_msg_decode(&msg, &pos, end);
            if (msg.type == AM_SWIM_MSG_ALIVE && msg.name.len == 2 &&
                memcmp(msg.name.p, "me", 2) == 0 && msg.incarnation == 1)
                seen = 1;
        }
    }
    cr_assert(seen, "alive(me, 1) was not sent");
    /* An old suspicion is ignored; a dead claim is refuted too; the buddy
     * system's ping carries one and is refuted at once. */
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "me", "10.0.0.100:1", 0, "p2");
    cr_assert_eq(am_swim_find(f.s, "me", &m), 0);
    cr_assert_eq(m.incarnation, 1);
    fake_update(&f, AM_SWIM_MSG_DEAD, "me", "10.0.0.100:1", 1, "p2");
    cr_assert_eq(am_swim_find(f.s, "me", &m), 0);
    cr_assert_eq(m.incarnation, 2);
    struct am_swim_msg ping;
    memset(&ping, 0, sizeof ping);
    ping.type = AM_SWIM_MSG_PING;
    ping.seq = 99;
    ping.name = S("me");
    ping.has_suspicion = 1;
    ping.incarnation = 2;
    cr_assert_eq(fake_send(&f, "p1", fake_addrs[0], &ping), 0);
    cr_assert_eq(am_swim_find(f.s, "me", &m), 0);
    cr_assert_eq(m.incarnation, 3);
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.refutations, 3);
    cr_assert_gt(st.health, 0, "refuting costs health");
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, refutation_in_a_real_cluster_keeps_the_member_alive)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0], *c = &net.n[2];
    /* C cannot hear A for a while: A suspects it, then the link heals and
     * the buddy ping (or gossip) lets C refute before the timeout. */
    net.block[0][2] = 1;
    net.block[1][2] = 1;
    uint64_t t0 = net.now, t = t0;
    while (state_of(a, "node-2") == AM_MEMBER_ALIVE && t < t0 + 10000)
        run(&net, t += 100);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_SUSPECT);
    net.block[0][2] = 0;
    net.block[1][2] = 0;
    run(&net, net.now + 3000);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_ALIVE);
    cr_assert_geq(inc_of(a, "node-2"), 1);
    cr_assert_eq(inc_of(c, "node-2"), inc_of(a, "node-2"));
    free_net(&net);
}

/* The time node p1 dies in the core's view, after suspicions from the
 * given accusers at f->now. */
static uint64_t death_time(const char *const *accusers, size_t n)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 4); /* N = 5: log10 5 < 1, so min 4 s, max 6 s, k = 2 */
    uint64_t t0 = f.now;
    for (size_t i = 0; i < n; i++)
        fake_update(&f, AM_SWIM_MSG_SUSPECT, "p1", fake_addrs[0], 0, accusers[i]);
    cr_assert_eq(am_swim_find(f.s, "p1", NULL), 0);
    struct am_swim_member m;
    uint64_t t = t0;
    for (;;) {
        am_swim_find(f.s, "p1", &m);
        if (m.state == AM_MEMBER_DEAD)
            break;
        cr_assert_eq(m.state, AM_MEMBER_SUSPECT);
        cr_assert_lt(t, t0 + 20000);
        fake_run(&f, ++t, 1);
    }
    fake_close(&f);
    return t - t0;
}

Test(swim, independent_suspicions_shorten_the_timeout)
{
    const char *acc[] = {"p2", "p3", "p4", "p3"};
    /* memberlist: timeout = max - (max - min) log(n + 1) / log(k + 1). */
    cr_assert_eq(death_time(acc, 1), 6000);
    cr_assert_eq(death_time(acc, 2), 4738); /* 6000 - 2000 ln 2 / ln 3 = 4738.1 */
    cr_assert_eq(death_time(acc, 3), 4000);
    const char *same[] = {"p2", "p2", "p2"};
    cr_assert_eq(death_time(same, 3), 6000, "one accuser counts once");
    const char *again[] = {"p2", "p3", "p3"};
    cr_assert_eq(death_time(again, 3), 4738);
}

Test(swim, a_nack_comes_back_when_the_intermediary_cannot_reach_the_target)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0], *b = &net.n[1];
    net.n[2].down = 1;
    uint64_t t0 = net.now;
    struct am_swim_stats st;
    do {
        run(&net, net.now + 100);
        am_swim_get_stats(a->s, &st);
    } while (st.nacks == 0 && net.now < t0 + 8000);
    cr_assert_eq(st.nacks, 1);
    cr_assert_geq(st.indirect_probes, 1);
    /* B nacked, so the failed probe does not count against A's health. */
    cr_assert_eq(st.health, 0);
    /* B serves A's ping-req and probes C itself, with A's help. */
    am_swim_get_stats(b->s, &st);
    cr_assert_eq(st.health, 0);
    free_net(&net);
}

Test(swim, health_grows_on_missed_acks_and_shrinks_on_acks)
{
    struct net net;
    memset(&net, 0, sizeof net);
    struct node *a = add_node(&net), *b = add_node(&net);
    join(&net, b, a->addr);
    run(&net, 3000);
    struct am_swim_stats st;
    b->down = 1;
    run(&net, 5000);
    am_swim_get_stats(a->s, &st);
    unsigned grown = st.health;
    cr_assert_geq(grown, 1, "no helper to nack: a missed ack costs health");
    run(&net, 9000);
    am_swim_get_stats(a->s, &st);
    cr_assert_geq(st.health, grown);
    b->down = 0;
    /* B refutes through the buddy ping and answers: each ack gives back one. */
    run(&net, 40000);
    am_swim_get_stats(a->s, &st);
    cr_assert_eq(st.health, 0);
    cr_assert_eq(state_of(a, "node-1"), AM_MEMBER_ALIVE);
    free_net(&net);
}

Test(swim, leave_spreads_left_and_members_are_reaped_later)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0], *b = &net.n[1], *c = &net.n[2];
    cr_assert_eq(am_swim_leave(c->s, net.now), 0);
    cr_assert_eq(am_swim_leave_done(c->s, net.now), 0);
    uint64_t t0 = net.now;
    while (!am_swim_leave_done(c->s, net.now))
        run(&net, net.now + 50);
    cr_assert_leq(net.now - t0, 2000);
    c->down = 1;
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_LEFT);
    cr_assert_eq(state_of(b, "node-2"), AM_MEMBER_LEFT);
    cr_assert_eq(count_events(a, AM_SWIM_EV_UPDATED, "node-2"), 1);
    run(&net, t0 + 20000);
    cr_assert_eq(am_swim_find(a->s, "node-2", NULL), 0);
    /* reap_ms is 30 s on lan (and at least 4 suspicion timeouts). */
    run(&net, t0 + 33000);
    cr_assert_eq(am_swim_find(a->s, "node-2", NULL), -ENOENT);
    cr_assert_eq(am_swim_find(b->s, "node-2", NULL), -ENOENT);
    cr_assert_eq(count_events(a, AM_SWIM_EV_REAPED, "node-2"), 1);
    cr_assert_eq(am_swim_count(a->s), 2);
    cr_assert_eq(state_of(a, "node-1"), AM_MEMBER_ALIVE);
    /* The survivors keep working after the reap moved members around. */
    run(&net, net.now + 5000);
    cr_assert_eq(state_of(b, "node-0"), AM_MEMBER_ALIVE);
    free_net(&net);
    LEAK_CHECK();
}

Test(swim, a_restart_with_the_same_name_is_alive_again_with_a_higher_incarnation)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0], *c = &net.n[2];
    c->down = 1;
    run(&net, net.now + 15000);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_DEAD);
    uint64_t dead_inc = inc_of(a, "node-2");
    /* The restarted process starts from its stored incarnation (here the
     * same), learns it is dead and refutes. */
    am_swim_free(c->s);
    struct am_swim_config cfg = config(c->name, c->addr, 99);
    cfg.incarnation = dead_inc;
    cr_assert_eq(am_swim_new(&c->s, &cfg, net.now), 0);
    c->down = 0;
    join(&net, c, a->addr);
    run(&net, net.now + 3000);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(state_of(&net.n[i], "node-2"), AM_MEMBER_ALIVE);
        cr_assert_gt(inc_of(&net.n[i], "node-2"), dead_inc);
    }
    free_net(&net);
}

Test(swim, a_name_conflict_is_detected_on_both_sides)
{
    struct net net;
    cluster(&net, 2);
    struct node *a = &net.n[0], *b = &net.n[1];
    struct node *x = add_node_named(&net, "node-0", "127.0.0.9:7946");
    join(&net, x, b->addr);
    run(&net, net.now + 3000);
    cr_assert_geq(count_events(b, AM_SWIM_EV_CONFLICT, "node-0"), 1);
    cr_assert_geq(count_events(x, AM_SWIM_EV_CONFLICT, "node-0"), 1);
    /* The first holder of the name keeps it everywhere. */
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(b->s, "node-0", &m), 0);
    cr_assert_str_eq(m.addr, "127.0.0.1:7946");
    cr_assert_eq(m.state, AM_MEMBER_ALIVE);
    cr_assert_eq(am_swim_find(a->s, "node-0", &m), 0);
    cr_assert_str_eq(m.addr, "127.0.0.1:7946");
    free_net(&net);
}

Test(swim, an_alive_for_our_own_name_elsewhere_is_refused_and_refuted)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    fake_update(&f, AM_SWIM_MSG_ALIVE, "me", "10.6.6.6:1", 5, "p2");
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(f.s, "me", &m), 0);
    cr_assert_str_eq(m.addr, "10.0.0.100:1");
    cr_assert_eq(m.incarnation, 6);
    size_t k = am_swim_actions(f.s, &a);
    int conflict = 0;
    for (size_t i = 0; i < k; i++)
        if (a[i].kind == AM_SWIM_ACT_EVENT && a[i].event == AM_SWIM_EV_CONFLICT) {
            conflict = 1;
            cr_assert_str_eq(a[i].name, "me");
            cr_assert_str_eq(a[i].addr, "10.6.6.6:1");
        }
    cr_assert(conflict);
    /* Another known-alive name at a second address, equal incarnation. */
    fake_update(&f, AM_SWIM_MSG_ALIVE, "p2", "10.7.7.7:1", 0, "p1");
    cr_assert_eq(am_swim_find(f.s, "p2", &m), 0);
    cr_assert_str_eq(m.addr, fake_addrs[1]);
    k = am_swim_actions(f.s, &a);
    cr_assert_eq(k, 1);
    cr_assert_eq(a[0].event, AM_SWIM_EV_CONFLICT);
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, packets_never_exceed_max_packet_even_with_1000_queued_updates)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    am_buf_set(&f.b, NULL, 0);
    cr_assert_eq(am_swim_pp_encode_hdr(&f.b, AM_SWIM_PP_REPLY, "p1", 2, 1000), 0);
    for (int i = 0; i < 1000; i++) {
        char name[AM_SWIM_MAX_NAME + 1], addr[AM_SWIM_MAX_ADDR + 1];
        /* Names of every length up to the maximum. */
        int len = snprintf(name, sizeof name, "member-%04d-", i);
        while (len < 12 + i % (AM_SWIM_MAX_NAME - 12))
            name[len++] = 'x';
        name[len] = 0;
        snprintf(addr, sizeof addr, "10.%d.%d.%d:7946", i / 65536, (i / 256) % 256, i % 256);
        struct am_swim_pp_member m = {S(name), S(addr), AM_MEMBER_ALIVE, (uint64_t)i};
        cr_assert_eq(am_swim_pp_encode_member(&f.b, &m), 0);
    }
    cr_assert_eq(am_swim_on_stream(f.s, "10.0.0.1:1", f.b.data, f.b.len, f.now), 0);
    cr_assert_eq(am_swim_count(f.s), 1001);
    ntallies = 0;
    size_t packets = fake_run(&f, f.now + 20000, 1);
    cr_assert_gt(packets, 100);
    /* Least-sent first: the counts never drift more than one apart. */
    unsigned lo = UINT32_MAX, hi = 0, total = 0;
    for (size_t i = 0; i < ntallies; i++) {
        unsigned n = tallies[i].n[AM_SWIM_MSG_ALIVE];
        lo = n < lo ? n : lo;
        hi = n > hi ? n : hi;
        total += n;
    }
    cr_assert_eq(ntallies, 1000);
    cr_assert_geq(lo, 1);
    cr_assert_leq(hi - lo, 1, "sent between %u and %u times", lo, hi);
    cr_assert_gt(total, 2000);
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, malformed_packets_are_counted_and_change_nothing)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    uint8_t junk[] = {1, 0xa1, 'a', 0x92, 0x94, 5};
    cr_assert_eq(am_swim_on_packet(f.s, "10.0.0.1:1", junk, sizeof junk, f.now), AM_EPROTO);
    cr_assert_eq(am_swim_on_stream(f.s, "10.0.0.1:1", junk, sizeof junk, f.now), AM_EPROTO);
    cr_assert_eq(am_swim_on_packet(f.s, "10.0.0.1:1", NULL, 0, f.now), AM_EPROTO);
    /* A valid alive followed by garbage: the alive is not applied either. */
    struct am_swim_packet_writer w;
    struct am_swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_ALIVE;
    m.name = S("newcomer");
    m.addr = S("10.1.1.1:1");
    am_buf_set(&f.b, NULL, 0);
    am_swim_packet_begin(&w, &f.b, "p1", 2, 1400);
    am_swim_packet_add(&w, &m);
    am_swim_packet_end(&w);
    f.b.data[5] = 2; /* claims two messages */
    cr_assert_eq(am_swim_on_packet(f.s, "10.0.0.1:1", f.b.data, f.b.len, f.now), AM_EPROTO);
    cr_assert_eq(am_swim_find(f.s, "newcomer", NULL), -ENOENT);
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.bad_packets, 4);
    cr_assert_eq(am_swim_count(f.s), 3);
    fake_close(&f);
}

Test(swim, a_healed_partition_merges_into_one_view)
{
    struct net net;
    cluster(&net, 4);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            net.block[i][j] = (i < 2) != (j < 2);
    run(&net, net.now + 20000);
    cr_assert_eq(state_of(&net.n[0], "node-3"), AM_MEMBER_DEAD);
    cr_assert_eq(state_of(&net.n[3], "node-0"), AM_MEMBER_DEAD);
    memset(net.block, 0, sizeof net.block);
    run(&net, net.now + 20000);
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            cr_assert_eq(state_of(&net.n[i], net.n[j].name), AM_MEMBER_ALIVE, "%zu sees %zu", i, j);
    free_net(&net);
}

Test(swim, a_partition_longer_than_the_reap_time_heals_through_the_seed)
{
    struct net net;
    cluster(&net, 4);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            net.block[i][j] = (i < 2) != (j < 2);
    run(&net, net.now + 60000);
    cr_assert_eq(am_swim_find(net.n[3].s, "node-0", NULL), -ENOENT);
    cr_assert_eq(am_swim_count(net.n[0].s), 2);
    memset(net.block, 0, sizeof net.block);
    /* node-2 and node-3 joined through node-0 and keep asking it. */
    run(&net, net.now + 70000);
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++)
            cr_assert_eq(state_of(&net.n[i], net.n[j].name), AM_MEMBER_ALIVE);
    free_net(&net);
}

Test(swim, a_run_is_a_pure_function_of_its_seed)
{
    uint64_t sig[2];
    for (int r = 0; r < 2; r++) {
        struct net net;
        cluster(&net, 4);
        net.n[3].down = 1;
        run(&net, net.now + 15000);
        uint64_t h = 0;
        for (size_t i = 0; i < 3; i++) {
            struct am_swim_stats st;
            am_swim_get_stats(net.n[i].s, &st);
            h = h * 31 + st.bytes_out + st.probes * 7 + st.packets_in * 13;
        }
        sig[r] = h;
        free_net(&net);
    }
    cr_assert_eq(sig[0], sig[1]);
}

Test(swim, a_newer_update_supersedes_the_queued_one_and_each_is_sent_a_limited_number_of_times)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 4);
    /* Before anything was sent: p2's alive is replaced by its suspicion. */
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "p2", fake_addrs[1], 0, "p3");
    ntallies = 0;
    fake_run(&f, f.now + 3000, 1);
    cr_assert_eq(tally_of("p2", AM_SWIM_MSG_ALIVE), 0);
    /* retransmit_mult x ceil(log10(5 + 1)) = 4 x 1 transmissions. */
    cr_assert_eq(tally_of("p2", AM_SWIM_MSG_SUSPECT), 4);
    cr_assert_eq(tally_of("p3", AM_SWIM_MSG_ALIVE), 4);
    /* Nothing more once the queue is empty. */
    fake_run(&f, f.now + 3000, 1);
    cr_assert_eq(tally_of("p2", AM_SWIM_MSG_SUSPECT), 4);
    fake_close(&f);
    LEAK_CHECK();
}

/* The suspect checks since t0 (nbuddy, npushes): a ping in [1, 1.5) s
 * after the start, a push-pull in [2, 2.5) s, a ping in [3, 3.5) s, all
 * to p2; more pings only from the regular probe order (one pass). */
static void check_schedule(uint64_t t0)
{
    int early = 0, late = 0;
    for (size_t i = 0; i < nbuddy; i++) {
        cr_assert_str_eq(buddy[i].to, fake_addrs[1]);
        uint64_t dt = buddy[i].at - t0;
        early += dt >= 1000 && dt < 1500;
        late += dt >= 3000 && dt < 3500;
    }
    cr_assert(early >= 1 && late >= 1, "pings: %d in [1, 1.5) s, %d in [3, 3.5) s", early, late);
    cr_assert_leq(nbuddy, 3);
    cr_assert_eq(npushes, 1);
    cr_assert_str_eq(pushes[0].to, fake_addrs[1]);
    cr_assert(pushes[0].at >= t0 + 2000 && pushes[0].at < t0 + 2500, "push-pull at %llu ms",
              (unsigned long long)(pushes[0].at - t0));
}

Test(swim, a_suspicion_that_outlives_its_refutation_gets_a_buddy_probe)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    /* 12 peers: a round-robin pass takes 12 s, so the regular probe order
     * reaches p2 at most once in the suspicion's lifetime. N = 13: min
     * 4 x 1.113 s = 4452 ms, max 6678 ms, and a single accuser. */
    fake_peers(&f, NFAKE);
    fake_run(&f, f.now + 3000, 1); /* let the join gossip settle */
    uint64_t t0 = f.now;
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "p2", fake_addrs[1], 0, "p3");
    nbuddy = 0;
    npushes = 0;
    /* Every probe is acked (health stays 0), but nobody refutes. */
    fake_run(&f, t0 + 6677, 1);
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(f.s, "p2", &m), 0);
    cr_assert_eq(m.state, AM_MEMBER_SUSPECT, "state %d inc %llu", m.state,
                 (unsigned long long)m.incarnation);
    check_schedule(t0);
    fake_run(&f, t0 + 6678, 1);
    cr_assert_eq(am_swim_find(f.s, "p2", &m), 0);
    cr_assert_eq(m.state, AM_MEMBER_DEAD);
    fake_close(&f);
    LEAK_CHECK();
}

/* Lifeguard stretches probe rounds by the local health (up to 8x); the
 * suspect checks keep their own clock, or a node under loss, whose health
 * is poor, would check a suspect once or never before its timeout. */
Test(swim, suspect_checks_keep_their_schedule_when_health_is_poor)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, NFAKE);
    fake_run(&f, f.now + 3000, 1);
    /* Seven refutations: health 7, probe rounds 8 s apart. */
    for (uint64_t inc = 0; inc < 7; inc++) {
        char from[4];
        snprintf(from, sizeof from, "p%llu", (unsigned long long)inc + 3);
        fake_update(&f, AM_SWIM_MSG_SUSPECT, "me", "10.0.0.100:1", inc, from);
    }
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.health, 7);
    uint64_t t0 = f.now;
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "p2", fake_addrs[1], 0, "p3");
    nbuddy = 0;
    npushes = 0;
    fake_run(&f, t0 + 4000, 1);
    check_schedule(t0);
    fake_close(&f);
    LEAK_CHECK();
}

/* Updates about `about` at inc of the given type in the packets to addr
 * among the k actions at a. */
static size_t packets_in(const struct am_swim_action *a, size_t k, const char *addr,
                         const char *about, uint64_t inc, enum am_swim_msg_type type)
{
    size_t n = 0;
    for (size_t i = 0; i < k; i++) {
        if (a[i].kind != AM_SWIM_ACT_PACKET || strcmp(a[i].addr, addr) != 0)
            continue;
        const uint8_t *pos = a[i].data, *end = a[i].data + a[i].len;
        struct am_swim_packet_hdr h;
        cr_assert_eq(am_swim_packet_decode_hdr(&h, &pos, end), 0);
        for (uint32_t j = 0; j < h.count; j++) {
            struct am_swim_msg m;
            cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
            n += m.type == type && m.name.len == strlen(about) &&
                 memcmp(m.name.p, about, m.name.len) == 0 && m.incarnation == inc;
        }
    }
    return n;
}

/* The same in the actions taken since the last call (which takes them). */
static size_t packets_to(struct am_swim *s, const char *addr, const char *about, uint64_t inc,
                         enum am_swim_msg_type type)
{
    const struct am_swim_action *a;
    size_t k = am_swim_actions(s, &a);
    return packets_in(a, k, addr, about, inc, type);
}

/* A member that missed our refutation accuses us again at the old
 * incarnation: it hears our alive straight from us, at most once per
 * gossip interval, whoever forwarded the accusation. */
Test(swim, a_stale_accusation_is_answered_to_the_accuser)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 4);
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "me", "10.0.0.100:1", 0, "p1");
    struct am_swim_member me;
    cr_assert_eq(am_swim_find(f.s, "me", &me), 0);
    cr_assert_eq(me.incarnation, 1);
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);

    /* p2's old suspicion, relayed by p4 (fake_update sends from 10.9.9.9). */
    struct am_swim_msg m;
    memset(&m, 0, sizeof m);
    m.type = AM_SWIM_MSG_SUSPECT;
    m.name = S("me");
    m.addr = S("10.0.0.100:1");
    m.incarnation = 0;
    m.from = S("p2");
    cr_assert_eq(fake_send(&f, "p4", fake_addrs[3], &m), 0);
    size_t told = packets_to(f.s, fake_addrs[1], "me", 1, AM_SWIM_MSG_ALIVE);
    cr_assert_eq(told, 1, "%zu", told);
    /* Within the gossip interval: nothing more, to anyone. */
    m.from = S("p3");
    cr_assert_eq(fake_send(&f, "p4", fake_addrs[3], &m), 0);
    cr_assert_eq(packets_to(f.s, fake_addrs[2], "me", 1, AM_SWIM_MSG_ALIVE), 0);
    /* Later, a stale death from p3: p3 hears it. */
    f.now += 200;
    m.type = AM_SWIM_MSG_DEAD;
    cr_assert_eq(fake_send(&f, "p4", fake_addrs[3], &m), 0);
    cr_assert_eq(packets_to(f.s, fake_addrs[2], "me", 1, AM_SWIM_MSG_ALIVE), 1);
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.corrections, 2);
    cr_assert_eq(st.refutations, 1, "an old accusation raises no incarnation");
    cr_assert_eq(am_swim_find(f.s, "me", &me), 0);
    cr_assert_eq(me.incarnation, 1);
    /* An accuser we do not know, or ourselves: nothing to send. */
    f.now += 200;
    m.from = S("stranger");
    cr_assert_eq(fake_send(&f, "p4", fake_addrs[3], &m), 0);
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.corrections, 2);
    fake_close(&f);
    LEAK_CHECK();
}

/* A node whose join is answered tells the members the seed listed of
 * itself at once, one packet each that its alive leads; the seed knows
 * already. Later push-pull replies announce nothing. */
static enum am_member_state state_of_core(const struct am_swim *s, const char *name)
{
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(s, name, &m), 0, "%s unknown", name);
    return m.state;
}

/* The seed's answer to a push-pull: p1..p4 alive, p5 dead. */
static void seed_list(struct fake *f, unsigned flags)
{
    am_buf_set(&f->b, NULL, 0);
    cr_assert_eq(am_swim_pp_encode_hdr(&f->b, flags, "p1", 2, 5), 0);
    for (size_t i = 0; i < 5; i++) {
        struct am_swim_pp_member m = {S(fake_names[i]), S(fake_addrs[i]),
                                      i == 4 ? AM_MEMBER_DEAD : AM_MEMBER_ALIVE, 0};
        cr_assert_eq(am_swim_pp_encode_member(&f->b, &m), 0);
    }
    cr_assert_eq(am_swim_on_stream(f->s, fake_addrs[0], f->b.data, f->b.len, f->now), 0);
}

Test(swim, a_joined_node_announces_itself_to_the_members_it_learned)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    const char *seeds[] = {fake_addrs[0]};
    cr_assert_eq(am_swim_join(f.s, seeds, 1, f.now), 0);
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    seed_list(&f, AM_SWIM_PP_REPLY | AM_SWIM_PP_JOIN);
    struct am_swim_member me;
    cr_assert_eq(am_swim_find(f.s, "me", &me), 0);
    size_t k = am_swim_actions(f.s, &a);
    for (size_t i = 1; i < 4; i++)
        cr_assert_eq(packets_in(a, k, fake_addrs[i], "me", me.incarnation, AM_SWIM_MSG_ALIVE), 1,
                     "p%zu", i + 1);
    cr_assert_eq(packets_in(a, k, fake_addrs[0], "me", me.incarnation, AM_SWIM_MSG_ALIVE), 0,
                 "the seed");
    cr_assert_eq(packets_in(a, k, fake_addrs[4], "me", me.incarnation, AM_SWIM_MSG_ALIVE), 0,
                 "a dead one");
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.announces, 3);
    /* Later replies, to a join retry or to a periodic push-pull: nothing. */
    f.now += 5000;
    am_swim_actions(f.s, &a);
    seed_list(&f, AM_SWIM_PP_REPLY | AM_SWIM_PP_JOIN);
    seed_list(&f, AM_SWIM_PP_REPLY);
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.announces, 3);
    fake_close(&f);
    LEAK_CHECK();
}

/* A member learns it was declared dead only from a death about itself.
 * One that comes back from dead here, and one alive here that a merged
 * push-pull lists dead (the other side of a healed partition), each get
 * that death straight from this node. */
Test(swim, a_member_back_from_dead_or_dead_elsewhere_is_told_so)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 4);
    const struct am_swim_action *a;
    fake_update(&f, AM_SWIM_MSG_DEAD, "p2", fake_addrs[1], 0, "p3");
    cr_assert_eq(state_of_core(f.s, "p2"), AM_MEMBER_DEAD);
    am_swim_actions(f.s, &a);
    fake_update(&f, AM_SWIM_MSG_ALIVE, "p2", fake_addrs[1], 1, NULL);
    cr_assert_eq(state_of_core(f.s, "p2"), AM_MEMBER_ALIVE);
    cr_assert_eq(packets_to(f.s, fake_addrs[1], "p2", 0, AM_SWIM_MSG_DEAD), 1);
    /* p1's push-pull has p3 dead at the incarnation p3 is alive at here. */
    am_buf_set(&f.b, NULL, 0);
    cr_assert_eq(am_swim_pp_encode_hdr(&f.b, 0, "p1", 2, 2), 0);
    struct am_swim_pp_member m1 = {S("p1"), S(fake_addrs[0]), AM_MEMBER_ALIVE, 0};
    struct am_swim_pp_member m3 = {S("p3"), S(fake_addrs[2]), AM_MEMBER_DEAD, 0};
    cr_assert_eq(am_swim_pp_encode_member(&f.b, &m1), 0);
    cr_assert_eq(am_swim_pp_encode_member(&f.b, &m3), 0);
    cr_assert_eq(am_swim_on_stream(f.s, fake_addrs[0], f.b.data, f.b.len, f.now), 0);
    cr_assert_eq(packets_to(f.s, fake_addrs[2], "p3", 0, AM_SWIM_MSG_DEAD), 1);
    /* A death older than what this node knows of p4: nothing. */
    fake_update(&f, AM_SWIM_MSG_ALIVE, "p4", fake_addrs[3], 3, NULL);
    am_swim_actions(f.s, &a);
    am_buf_set(&f.b, NULL, 0);
    cr_assert_eq(am_swim_pp_encode_hdr(&f.b, 0, "p1", 2, 1), 0);
    struct am_swim_pp_member m4 = {S("p4"), S(fake_addrs[3]), AM_MEMBER_DEAD, 2};
    cr_assert_eq(am_swim_pp_encode_member(&f.b, &m4), 0);
    cr_assert_eq(am_swim_on_stream(f.s, fake_addrs[0], f.b.data, f.b.len, f.now), 0);
    cr_assert_eq(packets_to(f.s, fake_addrs[3], "p4", 2, AM_SWIM_MSG_DEAD), 0);
    struct am_swim_stats st;
    am_swim_get_stats(f.s, &st);
    cr_assert_eq(st.deaths_told, 2);
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, a_buddy_ping_below_our_incarnation_is_answered_with_our_current_one)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    fake_update(&f, AM_SWIM_MSG_SUSPECT, "me", "10.0.0.100:1", 0, "p1");
    ntallies = 0;
    fake_run(&f, f.now + 5000, 1); /* the refutation is sent and retired */
    unsigned sent = tally_of("me", AM_SWIM_MSG_ALIVE);
    cr_assert_gt(sent, 0);
    fake_run(&f, f.now + 2000, 1);
    cr_assert_eq(tally_of("me", AM_SWIM_MSG_ALIVE), sent, "the queue is empty");
    /* A prober that missed it: the ack carries alive(me, 1) again. */
    struct am_swim_msg ping;
    memset(&ping, 0, sizeof ping);
    ping.type = AM_SWIM_MSG_PING;
    ping.seq = 5;
    ping.name = S("me");
    ping.has_suspicion = 1;
    ping.incarnation = 0;
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    cr_assert_eq(fake_send(&f, "p2", fake_addrs[1], &ping), 0);
    size_t k = am_swim_actions(f.s, &a);
    cr_assert_eq(k, 1);
    cr_assert_str_eq(a[0].addr, fake_addrs[1]);
    const uint8_t *pos = a[0].data, *end = a[0].data + a[0].len;
    struct am_swim_packet_hdr h;
    struct am_swim_msg m;
    cr_assert_eq(am_swim_packet_decode_hdr(&h, &pos, end), 0);
    cr_assert_eq(h.count, 2);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_ACK && m.seq == 5);
    cr_assert_eq(am_swim_msg_decode(&m, &pos, end), 0);
    cr_assert(m.type == AM_SWIM_MSG_ALIVE && m.incarnation == 1);
    struct am_swim_member me;
    cr_assert_eq(am_swim_find(f.s, "me", &me), 0);
    cr_assert_eq(me.incarnation, 1, "no new incarnation for an old suspicion");
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, an_indirect_probe_through_a_helper_saves_a_member_we_cannot_reach_directly)
{
    struct net net;
    cluster(&net, 3);
    struct node *a = &net.n[0];
    net.block[0][2] = 1; /* A's packets never reach C; B's do */
    run(&net, net.now + 20000);
    struct am_swim_stats st;
    am_swim_get_stats(a->s, &st);
    cr_assert_gt(st.indirect_probes, 0);
    cr_assert_eq(state_of(a, "node-2"), AM_MEMBER_ALIVE);
    cr_assert_eq(st.deaths_declared, 0);
    free_net(&net);
}

Test(swim, a_ping_for_another_name_is_not_acked)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    struct am_swim_msg ping;
    memset(&ping, 0, sizeof ping);
    ping.type = AM_SWIM_MSG_PING;
    ping.seq = 1;
    ping.name = S("somebody-else");
    cr_assert_eq(fake_send(&f, "p1", fake_addrs[0], &ping), 0);
    cr_assert_eq(am_swim_actions(f.s, &a), 0);
    fake_close(&f);
}

Test(swim, a_packet_from_an_unknown_sender_brings_a_push_pull_at_most_once_per_interval)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 2);
    const struct am_swim_action *a;
    am_swim_actions(f.s, &a);
    struct am_swim_msg ping;
    memset(&ping, 0, sizeof ping);
    ping.type = AM_SWIM_MSG_PING;
    ping.seq = 1;
    ping.name = S("me");
    cr_assert_eq(fake_send(&f, "stranger", "10.5.5.5:1", &ping), 0);
    size_t k = am_swim_actions(f.s, &a);
    int streams = 0, acks = 0;
    for (size_t i = 0; i < k; i++) {
        cr_assert_str_eq(a[i].addr, "10.5.5.5:1");
        streams += a[i].kind == AM_SWIM_ACT_STREAM;
        acks += a[i].kind == AM_SWIM_ACT_PACKET;
        if (a[i].kind == AM_SWIM_ACT_STREAM)
            cr_assert_eq(am_swim_pp_check(a[i].data, a[i].len), 0);
    }
    cr_assert(streams == 1 && acks == 1);
    cr_assert_eq(fake_send(&f, "stranger", "10.5.5.5:1", &ping), 0);
    k = am_swim_actions(f.s, &a);
    cr_assert_eq(k, 1, "no second push-pull within the interval");
    cr_assert_eq(a[0].kind, AM_SWIM_ACT_PACKET);
    /* Known senders never cause one. */
    f.now += 5000;
    cr_assert_eq(fake_send(&f, "p2", fake_addrs[1], &ping), 0);
    k = am_swim_actions(f.s, &a);
    cr_assert_eq(k, 1);
    fake_close(&f);
    LEAK_CHECK();
}

Test(swim, a_dead_member_is_pinged_now_and_then_and_comes_back_when_it_answers)
{
    struct fake f;
    fake_init(&f, "me", "10.0.0.100:1");
    fake_peers(&f, 3);
    fake_update(&f, AM_SWIM_MSG_DEAD, "p3", fake_addrs[2], 0, "p1");
    nbuddy = 0;
    fake_run(&f, f.now + 9000, 1);
    /* Every 4th probe round: about two in 9 s, with p3's death attached. */
    size_t to_p3 = 0;
    for (size_t i = 0; i < nbuddy; i++)
        to_p3 += strcmp(buddy[i].to, fake_addrs[2]) == 0;
    cr_assert_geq(to_p3, 2);
    /* p3 refutes on the ack: alive again. */
    fake_update(&f, AM_SWIM_MSG_ALIVE, "p3", fake_addrs[2], 1, "p3");
    struct am_swim_member m;
    cr_assert_eq(am_swim_find(f.s, "p3", &m), 0);
    cr_assert_eq(m.state, AM_MEMBER_ALIVE);
    fake_close(&f);
}
