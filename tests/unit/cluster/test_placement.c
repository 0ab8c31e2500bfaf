/* test_placement.c - where copies of a state live, and what a node sends of
 * them when its ring changes (placement.h). */
#include "placement.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static struct am_ring *ring_of(size_t n)
{
    static char names[16][24];
    const char *p[16];
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "n%u", (unsigned)i);
        p[i] = names[i];
    }
    struct am_ring *r = NULL;
    cr_assert_eq(am_ring_build(&r, p, n, AM_RING_VNODES), 0);
    return r;
}

/* The owner's replicas are the members after it on the ring, distinct. */
Test(placement, an_owner_replicates_to_the_next_members)
{
    struct am_ring *r = ring_of(5);
    for (int k = 0; k < 200; k++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", k);
        uint64_t h = am_ring_key("counter", 7, id, strlen(id));
        int owner = am_ring_owner(r, h), succ[4], out[6];
        size_t ns = am_ring_successors(r, h, succ, 2);
        cr_assert_eq(ns, 2);
        cr_assert_eq(am_placement_targets(r, owner, h, 3, out), 2);
        cr_assert_eq(out[0], succ[0]);
        cr_assert_eq(out[1], succ[1]);
        cr_assert_neq(out[0], owner);
        cr_assert_neq(out[0], out[1]);
        cr_assert_eq(am_placement_targets(r, owner, h, 1, out), 0, "R=1 keeps no replica");
        cr_assert_eq(am_placement_targets(r, owner, h, 7, out), 4, "at most the other members");
    }
    am_ring_free(r);
}

/* A node that writes an actor it does not own (it is releasing it after a
 * ring change) sends the state to the owner first, then to the replicas,
 * never to itself. */
Test(placement, a_non_owner_sends_to_the_owner_first_and_never_to_itself)
{
    struct am_ring *r = ring_of(4);
    int checked = 0;
    for (int k = 0; k < 200; k++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", k);
        uint64_t h = am_ring_key("counter", 7, id, strlen(id));
        int owner = am_ring_owner(r, h), succ[3], out[6];
        am_ring_successors(r, h, succ, 3);
        /* self is the first replica: owner, then the second replica */
        cr_assert_eq(am_placement_targets(r, succ[0], h, 3, out), 2);
        cr_assert_eq(out[0], owner);
        cr_assert_eq(out[1], succ[1]);
        /* self is not in the set at all: owner and the first replica */
        cr_assert_eq(am_placement_targets(r, succ[2], h, 2, out), 1);
        cr_assert_eq(out[0], owner);
        checked++;
    }
    cr_assert_eq(checked, 200);
    am_ring_free(r);
}

Test(placement, a_node_alone_or_an_empty_ring_has_no_targets)
{
    int out[6];
    cr_assert_eq(am_placement_targets(NULL, -1, 1, 2, out), 0);
    struct am_ring *r = ring_of(1);
    cr_assert_eq(am_placement_targets(r, 0, 12345, 2, out), 0);
    am_ring_free(r);
}

/* A ring of the members of r but one. */
static struct am_ring *ring_without(size_t n, size_t skip)
{
    static char names[16][24];
    const char *p[16];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "n%u", (unsigned)i);
        if (i != skip)
            p[k++] = names[i];
    }
    struct am_ring *r = NULL;
    cr_assert_eq(am_ring_build(&r, p, k, AM_RING_VNODES), 0);
    return r;
}

static uint64_t key_hash(int k)
{
    char id[16];
    snprintf(id, sizeof id, "c%d", k);
    return am_ring_key("counter", 7, id, strlen(id));
}

/* Over many keys and every node, a ring change from 4 members to 5 (n4
 * joins) plans: a HANDOFF from the old owner to n4 for each key n4 now
 * owns, nothing else for those keys from the old owner, and REPLICATEs from
 * each owner to exactly the replicas it gained, which together with the
 * replicas it kept make up its replica set by the new ring. */
Test(placement, a_join_hands_off_what_moved_and_sends_replicas_what_they_gained)
{
    struct am_ring *from = ring_without(5, 4), *to = ring_of(5);
    unsigned copies = 3;
    for (int k = 0; k < 500; k++) {
        uint64_t h = key_hash(k);
        int old_owner = am_ring_owner(from, h), new_owner = am_ring_owner(to, h);
        int handoffs = 0;
        for (int self = 0; self < 4; self++) {
            const char *name = am_ring_member(from, self);
            int to_self = am_ring_find(to, name);
            struct am_placement_send out[AM_PLACEMENT_MAX_COPIES];
            size_t n = am_placement_plan(from, self, to, to_self, h, copies, out);
            if (self == old_owner && new_owner != to_self) {
                cr_assert_eq(n, 1);
                cr_assert_eq(out[0].kind, AM_PLACE_HANDOFF);
                cr_assert_eq(out[0].to, new_owner);
                handoffs++;
            } else if (to_self == new_owner) {
                /* still the owner: sends to new replicas only */
                int was[AM_PLACEMENT_MAX_COPIES], now[AM_PLACEMENT_MAX_COPIES];
                size_t b = am_placement_targets(from, self, h, copies, was);
                size_t a = am_placement_targets(to, to_self, h, copies, now);
                size_t kept = 0;
                for (size_t i = 0; i < a; i++)
                    for (size_t j = 0; j < b; j++)
                        kept += strcmp(am_ring_member(to, now[i]), am_ring_member(from, was[j])) == 0;
                cr_assert_eq(n + kept, a, "replicas sent %zu + kept %zu != %zu", n, kept, a);
                for (size_t i = 0; i < n; i++)
                    cr_assert_eq(out[i].kind, AM_PLACE_REPLICATE);
            } else {
                cr_assert_eq(n, 0, "a node that neither owned nor owns the key sends nothing");
            }
        }
        cr_assert_eq(handoffs, new_owner == am_ring_find(to, "n4") ? 1 : 0);
    }
    am_ring_free(from);
    am_ring_free(to);
}

/* n2 of five dies: for each key it owned, its first replica owns it now and
 * sends it to every replica by the new ring; a leaving node (to_self -1)
 * hands off what it owned and sends no replica. */
Test(placement, the_next_owner_after_a_death_sends_to_all_its_replicas)
{
    struct am_ring *from = ring_of(5), *to = ring_without(5, 2);
    for (int k = 0; k < 500; k++) {
        uint64_t h = key_hash(k);
        if (am_ring_owner(from, h) != 2)
            continue;
        int succ;
        am_ring_successors(from, h, &succ, 1);
        int heir = am_ring_find(to, am_ring_member(from, succ));
        cr_assert_eq(am_ring_owner(to, h), heir, "the first replica is the next owner");
        struct am_placement_send out[AM_PLACEMENT_MAX_COPIES];
        size_t n = am_placement_plan(from, succ, to, heir, h, 2, out);
        cr_assert_eq(n, 1);
        cr_assert_eq(out[0].kind, AM_PLACE_REPLICATE);
        int want;
        am_ring_successors(to, h, &want, 1);
        cr_assert_eq(out[0].to, want);
        /* the leaving case: n2 hands it to the heir */
        n = am_placement_plan(from, 2, to, -1, h, 2, out);
        cr_assert_eq(n, 1);
        cr_assert_eq(out[0].kind, AM_PLACE_HANDOFF);
        cr_assert_eq(out[0].to, heir);
    }
    am_ring_free(from);
    am_ring_free(to);
}
