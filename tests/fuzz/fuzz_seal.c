/* fuzz_seal.c - libFuzzer target for the packet opener and the stream reader.
 *
 * The whole input goes to am_open_packet under a fixed key. Then an acceptor
 * with the same key, after its start, is fed the input cut into chunks: the
 * first input byte seeds the chunk sizes (1..64 bytes, or the rest at once),
 * so the same bytes arrive split many ways. The reader must never crash,
 * leak, or report plaintext before the handshake; once it fails it must keep
 * failing.
 *
 * The acceptor's nonce is overwritten with a fixed one (reaching into the
 * private fields): a random nonce would make every run differ, and with it
 * the seeds open, so the path past a good record is covered too. The seeds
 * in tests/fuzz/corpus/fuzz_seal/ were written by an initiator with this key
 * and its nonce set to 32 'c' bytes: "handshake" is its 36 bytes alone,
 * "handshake_records" adds a record of "hello" and one of 300 bytes,
 * "packet" is "hello" sealed as a packet, and "garbage" is 64 bytes of
 * noise. */
#include "err.h"
#include "seal.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[AM_KEY_BYTES] = {'a', 'm', 'e', 's', 'h', ' ', 'f', 'u', 'z', 'z'};

static void open_packet(const uint8_t *data, size_t size)
{
    size_t cap = size > AM_SEAL_PACKET_OVERHEAD ? size - AM_SEAL_PACKET_OVERHEAD : 0;
    /* Exactly the room the API promises to stay within, so ASan sees any overrun. */
    uint8_t *out = malloc(cap ? cap : 1);
    size_t outlen = 1;
    int rc = am_open_packet(key, data, size, out, &outlen);
    CHECK(rc == AM_EPROTO || (rc == 0 && outlen == cap));
    CHECK(rc == 0 || outlen == 0);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CHECK(am_seal_init() == 0);
    open_packet(data, size);

    struct am_secure s;
    struct am_buf out, plain;
    am_buf_init(&out);
    am_buf_init(&plain);
    am_secure_init(&s, key, 0);
    memset(s.nonce, 's', sizeof s.nonce);
    CHECK(am_secure_start(&s, &out) == 0);
    CHECK(am_secure_out(&s, (const uint8_t *)"queued", 6, &out) == 0);

    uint32_t seed = size ? data[0] : 0;
    size_t off = 0;
    int failed = 0, completed = 0;
    while (off < size) {
        seed = seed * 1103515245u + 12345u;
        size_t k = (seed >> 16) % 65;
        if (k == 0 || k > size - off)
            k = size - off;
        int rc = am_secure_in(&s, data + off, k, &plain);
        off += k;
        CHECK(rc == 0 || rc == 1 || rc == AM_EPROTO);
        if (failed)
            CHECK(rc == AM_EPROTO);
        if (rc == 1) {
            CHECK(!completed);
            completed = 1;
            CHECK(am_secure_out(&s, NULL, 0, &out) == 0);
        }
        failed |= rc == AM_EPROTO;
        CHECK(am_secure_ready(&s) == (completed && !failed));
        if (rc == 0 && !completed)
            CHECK(plain.len == 0);
    }
    if (failed)
        CHECK(am_secure_out(&s, (const uint8_t *)"x", 1, &out) == AM_EPROTO);
    am_secure_free(&s);
    am_buf_close(&out);
    am_buf_close(&plain);
    return 0;
}
