/* placement.c - copies of a state and what moves on a ring change (see
 * placement.h). */
#include "placement.h"

#include <string.h>

size_t am_placement_targets(const struct am_ring *ring, int self_idx, uint64_t key_hash,
                            unsigned copies, int *out)
{
    int list[AM_PLACEMENT_MAX_COPIES];
    size_t want = copies > 1 ? copies - 1 : 0, k = 0;
    if (!ring || want == 0 || am_ring_count(ring) == 0)
        return 0;
    if (want > AM_PLACEMENT_MAX_COPIES - 1)
        want = AM_PLACEMENT_MAX_COPIES - 1;
    list[0] = am_ring_owner(ring, key_hash);
    size_t n = 1 + am_ring_successors(ring, key_hash, list + 1, want);
    for (size_t i = 0; i < n && k < want; i++)
        if (list[i] != self_idx)
            out[k++] = list[i];
    return k;
}

size_t am_placement_plan(const struct am_ring *from, int from_self, const struct am_ring *to,
                         int to_self, uint64_t key_hash, unsigned copies,
                         struct am_placement_send *out)
{
    int owned = from && from_self >= 0 && am_ring_owner(from, key_hash) == from_self;
    int owns = to && to_self >= 0 && am_ring_owner(to, key_hash) == to_self;
    size_t n = 0;
    if (owned && !owns) {
        int owner = to ? am_ring_owner(to, key_hash) : -1;
        if (owner >= 0)
            out[n++] = (struct am_placement_send){owner, AM_PLACE_HANDOFF};
        return n;
    }
    if (!owns || copies < 2)
        return 0;
    int now[AM_PLACEMENT_MAX_COPIES], before[AM_PLACEMENT_MAX_COPIES];
    size_t k = am_placement_targets(to, to_self, key_hash, copies, now);
    size_t b = owned ? am_placement_targets(from, from_self, key_hash, copies, before) : 0;
    for (size_t i = 0; i < k; i++) {
        const char *name = am_ring_member(to, now[i]);
        size_t j = 0;
        while (j < b && strcmp(am_ring_member(from, before[j]), name) != 0)
            j++;
        if (j == b)
            out[n++] = (struct am_placement_send){now[i], AM_PLACE_REPLICATE};
    }
    return n;
}
