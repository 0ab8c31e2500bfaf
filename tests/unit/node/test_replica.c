/* test_replica.c - where a state is replicated (am_replica_targets). */
#include "replica.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

static struct am_ring *ring_of(size_t n)
{
    static char names[16][8];
    const char *p[16];
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "n%zu", i);
        p[i] = names[i];
    }
    struct am_ring *r = NULL;
    cr_assert_eq(am_ring_build(&r, p, n, AM_RING_VNODES), 0);
    return r;
}

/* The owner's replicas are the members after it on the ring, distinct. */
Test(replica, an_owner_replicates_to_the_next_members)
{
    struct am_ring *r = ring_of(5);
    for (int k = 0; k < 200; k++) {
        char id[16];
        snprintf(id, sizeof id, "c%d", k);
        uint64_t h = am_ring_key("counter", 7, id, strlen(id));
        int owner = am_ring_owner(r, h), succ[4], out[6];
        size_t ns = am_ring_successors(r, h, succ, 2);
        cr_assert_eq(ns, 2);
        cr_assert_eq(am_replica_targets(r, owner, h, 3, out), 2);
        cr_assert_eq(out[0], succ[0]);
        cr_assert_eq(out[1], succ[1]);
        cr_assert_neq(out[0], owner);
        cr_assert_neq(out[0], out[1]);
        cr_assert_eq(am_replica_targets(r, owner, h, 1, out), 0, "R=1 keeps no replica");
        cr_assert_eq(am_replica_targets(r, owner, h, 7, out), 4, "at most the other members");
    }
    am_ring_free(r);
}

/* A node that writes an actor it does not own (it is releasing it after a
 * ring change) sends the state to the owner first, then to the replicas,
 * never to itself. */
Test(replica, a_non_owner_sends_to_the_owner_first_and_never_to_itself)
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
        cr_assert_eq(am_replica_targets(r, succ[0], h, 3, out), 2);
        cr_assert_eq(out[0], owner);
        cr_assert_eq(out[1], succ[1]);
        /* self is not in the set at all: owner and the first replica */
        cr_assert_eq(am_replica_targets(r, succ[2], h, 2, out), 1);
        cr_assert_eq(out[0], owner);
        checked++;
    }
    cr_assert_eq(checked, 200);
    am_ring_free(r);
}

Test(replica, a_node_alone_or_an_empty_ring_has_no_targets)
{
    int out[6];
    cr_assert_eq(am_replica_targets(NULL, -1, 1, 2, out), 0);
    struct am_ring *r = ring_of(1);
    cr_assert_eq(am_replica_targets(r, 0, 12345, 2, out), 0);
    am_ring_free(r);
}
