/* antientropy.c - digests of replica sets compared (see antientropy.h). */
#include "antientropy.h"

#include "placement.h"

#include "buf.h"
#include "err.h"
#include "log.h"
#include "mem.h"
#include "mp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Entries of one VERSIONS frame at most (about 40 bytes each with the
 * common key sizes: some 160 KB, far under any peer frame limit). */
#define MAX_ENTRIES 4096

/* A DIGEST or VERSIONS in flight: the peer layer holds it until the answer
 * comes. */
struct req {
    struct req *next, **prev;
    struct am_ae *ae; /* NULL once the node stopped */
    int kind;
    uint64_t ring_version;
    char member[AM_MAX_PEER_NAME + 1];
    struct am_buf entries; /* VERSIONS: what was sent */
    size_t count;
};

struct am_ae {
    uv_loop_t *loop;
    struct am_replication *rp;
    uint64_t interval_ms;
    am_ae_settled_fn settled;
    void *arg;
    uv_timer_t timer;
    uint64_t rng;
    size_t next;       /* the member of the ring asked next */
    struct req *reqs;  /* in flight: a round runs until none is */
    struct am_ae_stats st;
};

/* splitmix64's finaliser: a key's version changes its element entirely. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t element(uint64_t h, uint64_t epoch, uint64_t seq)
{
    return mix(h ^ mix(epoch + 0x9e3779b97f4a7c15ULL) ^ mix(seq ^ 0x632be59bd9b4e019ULL));
}

static unsigned bucket_of(uint64_t h)
{
    return (unsigned)(h >> 58); /* 64 buckets */
}

/* 1 when replica (a member index) keeps copies of the key h that owner
 * owns, by ring and R copies. */
static int replicates(const struct am_ring *ring, int owner, int replica, uint64_t h,
                      unsigned copies)
{
    int t[AM_PLACEMENT_MAX_COPIES];
    size_t n = am_placement_targets(ring, owner, h, copies, t);
    for (size_t i = 0; i < n; i++)
        if (t[i] == replica)
            return 1;
    return 0;
}

/* A walk over the store: the keys owned by `owner` that `replica`
 * replicates, folded into dig, or (list) those of the buckets in mask
 * appended to `out` as VERSIONS entries. */
struct fold {
    struct am_ae *ae;
    const struct am_ring *ring;
    int owner, replica;
    uint64_t dig[AM_AE_BUCKETS];
    uint64_t mask;
    struct am_buf *out; /* list: entries, back to back */
    size_t keys;
};

static int fold_one(void *arg, const char *key, size_t len, uint64_t epoch, uint64_t seq)
{
    struct fold *f = arg;
    uint64_t h = am_ring_key_of(key, len);
    if (am_ring_owner(f->ring, h) != f->owner ||
        !replicates(f->ring, f->owner, f->replica, h, f->ae->rp->copies))
        return 0;
    unsigned b = bucket_of(h);
    if (!f->out) {
        f->dig[b] ^= element(h, epoch, seq);
        f->keys++;
        return 0;
    }
    if (!(f->mask >> b & 1))
        return 0;
    /* u16 key length, key, u64 epoch, u64 seq; all big-endian. */
    uint8_t n[2] = {(uint8_t)(len >> 8), (uint8_t)len}, v[16];
    am_be64_put(v, epoch);
    am_be64_put(v + 8, seq);
    if (am_buf_append(f->out, n, 2) || am_buf_append(f->out, key, len) ||
        am_buf_append(f->out, v, 16))
        return -ENOMEM;
    f->keys++;
    return 0;
}

static int fold(struct am_ae *ae, struct fold *f)
{
    return am_store_each_version(ae->rp->store, fold_one, f);
}

int am_ae_next_entry(const uint8_t **p, const uint8_t *end, const char **key, size_t *len,
                      uint64_t *epoch, uint64_t *seq)
{
    if (end - *p < 2)
        return -1;
    size_t n = (size_t)(*p)[0] << 8 | (*p)[1];
    if (n == 0 || n > AM_MAX_TYPE + 1 + AM_MAX_ID || (size_t)(end - *p) < 2 + n + 16)
        return -1;
    *key = (const char *)*p + 2;
    *len = n;
    *epoch = am_be64_get(*p + 2 + n);
    *seq = am_be64_get(*p + 2 + n + 8);
    *p += 2 + n + 16;
    return 0;
}

static void on_timer(uv_timer_t *h);

static void schedule(struct am_ae *ae)
{
    /* xorshift64: the rounds of nodes started together drift apart. */
    ae->rng ^= ae->rng << 13;
    ae->rng ^= ae->rng >> 7;
    ae->rng ^= ae->rng << 17;
    uint64_t t = ae->interval_ms / 2 + ae->rng % (ae->interval_ms + 1);
    uv_timer_start(&ae->timer, on_timer, t ? t : 1, 0);
}

static void req_free(struct req *q)
{
    if (q->prev) {
        *q->prev = q->next;
        if (q->next)
            q->next->prev = q->prev;
    }
    am_buf_close(&q->entries);
    am_free(q);
}

static void on_answer(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len);

/* Sends a DIGEST or VERSIONS (body) to member m of the ring. */
static int send_req(struct am_ae *ae, int m, int kind, const uint8_t *body, size_t len,
                    struct am_buf *entries, size_t count)
{
    struct am_replication *rp = ae->rp;
    struct am_peer *peer = rp->ring_peers ? rp->ring_peers[m] : NULL;
    struct req *q = am_calloc(1, sizeof *q);
    if (!peer || !q) {
        am_free(q);
        return -1;
    }
    q->ae = ae;
    q->kind = kind;
    q->ring_version = am_ring_version(rp->ring);
    snprintf(q->member, sizeof q->member, "%s", am_ring_member(rp->ring, m));
    am_buf_init(&q->entries);
    if (entries) { /* takes the buffer */
        q->entries = *entries;
        am_buf_init(entries);
    }
    q->count = count;
    struct am_request r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    r.ring_version = q->ring_version;
    r.payload = body;
    r.payload_len = (uint32_t)len;
    char err[300];
    if (am_peer_forward(peer, &r, 0, 0, 0, on_answer, q, err, sizeof err)) {
        am_buf_close(&q->entries);
        am_free(q);
        return -1;
    }
    q->prev = &ae->reqs;
    q->next = ae->reqs;
    if (ae->reqs)
        ae->reqs->prev = &q->next;
    ae->reqs = q;
    return 0;
}

/* The member found buckets different: their keys and versions go to it,
 * in VERSIONS frames of at most MAX_ENTRIES entries. */
static void send_versions(struct am_ae *ae, struct req *d, uint64_t mask)
{
    struct am_replication *rp = ae->rp;
    int m = am_ring_find(rp->ring, d->member);
    if (m < 0)
        return;
    struct am_buf all;
    am_buf_init(&all);
    struct fold f = {.ae = ae, .ring = rp->ring, .owner = rp->self_idx, .replica = m,
                     .mask = mask, .out = &all};
    if (fold(ae, &f) == 0) {
        const uint8_t *p = all.data, *end = all.data + all.len;
        while (p < end) {
            const uint8_t *from = p;
            size_t count = 0;
            const char *key;
            size_t len;
            uint64_t e, q;
            while (p < end && count < MAX_ENTRIES && am_ae_next_entry(&p, end, &key, &len, &e, &q) == 0)
                count++;
            struct am_buf part;
            am_buf_init(&part);
            if (am_buf_append(&part, from, (size_t)(p - from)) ||
                send_req(ae, m, AM_MSG_VERSIONS, part.data, part.len, &part, count))
                am_buf_close(&part);
        }
    }
    am_buf_close(&all);
}

static void on_answer(void *ctx, uint64_t id, int status, const uint8_t *body, size_t len)
{
    (void)id;
    struct req *q = ctx;
    struct am_ae *ae = q->ae;
    struct am_replication *rp = ae ? ae->rp : NULL;
    /* Only against the ring the request was made with. */
    if (!ae || status != AM_ST_OK || !len || body[0] == 0xc0 || !rp->ring ||
        am_ring_version(rp->ring) != q->ring_version || rp->self_idx < 0) {
        req_free(q);
        return;
    }
    const uint8_t *p = body;
    if (q->kind == AM_MSG_DIGEST) {
        uint64_t mask;
        if (am_mp_read_uint(&p, body + len, &mask) == 0 && mask) {
            ae->st.differ += (uint64_t)__builtin_popcountll(mask);
            send_versions(ae, q, mask);
        }
        req_free(q);
        return;
    }
    const uint8_t *bits;
    uint32_t nbits;
    if (am_mp_read_bin(&p, body + len, &bits, &nbits) == 0 && nbits == (q->count + 7) / 8) {
        const uint8_t *e = q->entries.data, *end = q->entries.data + q->entries.len;
        size_t queued = 0;
        for (size_t i = 0; i < q->count; i++) {
            const char *key;
            size_t klen;
            uint64_t ep, sq;
            if (am_ae_next_entry(&e, end, &key, &klen, &ep, &sq))
                break;
            if (bits[i / 8] >> (i % 8) & 1) {
                am_replication_queue(rp, key, klen);
                queued++;
            }
        }
        ae->st.queued += queued;
        if (queued)
            am_log_info("anti-entropy: %s lacks %zu of the %zu states of differing ranges it was "
                        "shown; queued to be sent again",
                        q->member, queued, q->count);
    }
    req_free(q);
}

static void on_timer(uv_timer_t *h)
{
    struct am_ae *ae = h->data;
    struct am_replication *rp = ae->rp;
    schedule(ae);
    if (ae->reqs || !rp->ring || !rp->ring_peers || rp->self_idx < 0 || rp->copies < 2 ||
        am_ring_count(rp->ring) < 2 || !ae->settled(ae->arg))
        return;
    size_t count = am_ring_count(rp->ring);
    int m = (int)(ae->next++ % count);
    if (m == rp->self_idx)
        m = (int)(ae->next++ % count);
    if (m == rp->self_idx)
        return;
    struct fold f = {.ae = ae, .ring = rp->ring, .owner = rp->self_idx, .replica = m};
    uint64_t t0 = uv_hrtime();
    int rc = fold(ae, &f);
    am_log_debug("anti-entropy: digests of %zu states %s replicates in %.1f ms", f.keys,
                 am_ring_member(rp->ring, m), (double)(uv_hrtime() - t0) / 1e6);
    if (rc || f.keys == 0)
        return;
    uint8_t dig[AM_AE_BUCKETS * 8];
    for (unsigned b = 0; b < AM_AE_BUCKETS; b++)
        am_be64_put(dig + 8 * b, f.dig[b]);
    if (send_req(ae, m, AM_MSG_DIGEST, dig, sizeof dig, NULL, 0) == 0)
        ae->st.rounds++;
}

int am_ae_new(struct am_ae **out, uv_loop_t *loop, struct am_replication *rp,
              uint64_t interval_ms, am_ae_settled_fn settled, void *arg)
{
    struct am_ae *ae = am_calloc(1, sizeof *ae);
    if (!ae)
        return -ENOMEM;
    ae->loop = loop;
    ae->rp = rp;
    ae->interval_ms = interval_ms;
    ae->settled = settled;
    ae->arg = arg;
    ae->rng = uv_hrtime() | 1;
    uv_timer_init(loop, &ae->timer);
    ae->timer.data = ae;
    if (interval_ms)
        schedule(ae);
    *out = ae;
    return 0;
}

/* VERSIONS: bit i of the answer set when entry i is newer than the copy
 * held here, or none is. */
static void answer_versions(struct am_ae *ae, const struct am_request *r, am_reply_fn cb,
                            void *ctx)
{
    const uint8_t *p = r->payload, *end = r->payload + r->payload_len;
    size_t n = 0;
    const char *key = NULL;
    size_t len = 0;
    uint64_t e = 0, q = 0;
    while (p < end && am_ae_next_entry(&p, end, &key, &len, &e, &q) == 0)
        n++;
    if (p != end || n == 0 || n > MAX_ENTRIES) {
        static const char msg[] = "\xb2" "malformed VERSIONS";
        cb(ctx, r->id, AM_ST_BAD_REQUEST, (const uint8_t *)msg, sizeof msg - 1);
        return;
    }
    struct am_buf out;
    am_buf_init(&out);
    msgpack_packer pk;
    am_mp_packer_init(&pk, &out);
    size_t nbytes = (n + 7) / 8;
    uint8_t *bits = am_calloc(nbytes, 1);
    if (!bits || msgpack_pack_bin(&pk, nbytes)) {
        am_free(bits);
        am_buf_close(&out);
        static const char msg[] = "\xad" "out of memory";
        cb(ctx, r->id, AM_ST_OVERLOADED, (const uint8_t *)msg, sizeof msg - 1);
        return;
    }
    p = r->payload;
    for (size_t i = 0; i < n; i++) {
        if (am_ae_next_entry(&p, end, &key, &len, &e, &q))
            break; /* cannot happen: the same bytes parsed above */
        uint64_t he = 0, hq = 0;
        int rc = am_store_get(ae->rp->store, key, len, NULL, &he, &hq);
        if (rc == -ENOENT || (rc == 0 && (he < e || (he == e && hq < q))))
            bits[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    if (msgpack_pack_bin_body(&pk, bits, nbytes) == 0)
        cb(ctx, r->id, AM_ST_OK, out.data, out.len);
    else
        cb(ctx, r->id, AM_ST_OVERLOADED, (const uint8_t *)"\xa0", 1);
    am_free(bits);
    am_buf_close(&out);
}

void am_ae_answer(struct am_ae *ae, const char *peer, const struct am_request *r, am_reply_fn cb,
                  void *ctx)
{
    struct am_replication *rp = ae->rp;
    ae->st.answered++;
    if (r->kind == AM_MSG_VERSIONS) {
        answer_versions(ae, r, cb, ctx);
        return;
    }
    if (r->payload_len != AM_AE_BUCKETS * 8) {
        static const char msg[] = "\xb4" "digests of 512 bytes";
        cb(ctx, r->id, AM_ST_BAD_REQUEST, (const uint8_t *)msg, sizeof msg - 1);
        return;
    }
    int owner = rp->ring ? am_ring_find(rp->ring, peer) : -1;
    struct fold f = {.ae = ae, .ring = rp->ring, .owner = owner, .replica = rp->self_idx};
    uint64_t mask = 0;
    if (owner < 0 || rp->self_idx < 0 || am_ring_version(rp->ring) != r->ring_version ||
        fold(ae, &f)) {
        cb(ctx, r->id, AM_ST_OK, (const uint8_t *)"\xc0", 1); /* not comparable now */
        return;
    }
    for (unsigned b = 0; b < AM_AE_BUCKETS; b++)
        if (am_be64_get(r->payload + 8 * b) != f.dig[b])
            mask |= 1ULL << b;
    uint8_t body[9] = {0xcf};
    am_be64_put(body + 1, mask);
    cb(ctx, r->id, AM_ST_OK, body, sizeof body);
}

void am_ae_get_stats(const struct am_ae *ae, struct am_ae_stats *st)
{
    if (ae)
        *st = ae->st;
    else
        memset(st, 0, sizeof *st);
}

static void on_closed(uv_handle_t *h)
{
    am_free(h->data);
}

void am_ae_free(struct am_ae *ae)
{
    if (!ae)
        return;
    /* Their answers come later, or never: each frees itself, off the list. */
    for (struct req *q = ae->reqs, *next; q; q = next) {
        next = q->next;
        q->ae = NULL;
        q->prev = NULL;
        q->next = NULL;
    }
    uv_close((uv_handle_t *)&ae->timer, on_closed);
}
