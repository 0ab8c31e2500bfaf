/* test_seal.c - key files, sealed packets and encrypted streams (src/base/seal.h).
 *
 * Stream tests wire an initiator and an acceptor through two byte buffers,
 * one per direction, standing in for a TCP connection. */
#include "seal.h"

#include "buf.h"
#include "err.h"
#include "mem.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef AMESH_ASAN
#include <sanitizer/lsan_interface.h>
#define CHECK_LEAKS() cr_assert_eq(__lsan_do_recoverable_leak_check(), 0)
#else
#define CHECK_LEAKS() ((void)0)
#endif

static const uint8_t key1[AM_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const uint8_t key2[AM_KEY_BYTES] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

static void setup(void)
{
    cr_assert_eq(am_seal_init(), 0);
    cr_assert_eq(am_seal_init(), 0, "a second call is harmless");
}

/* ---- key files ---- */

static char dir[64];
static char path[128];

static void key_setup(void)
{
    setup();
    snprintf(dir, sizeof dir, "/tmp/amesh-seal-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/cluster.key", dir);
}

static void key_teardown(void)
{
    unlink(path);
    rmdir(dir);
}

static void write_file(const char *text, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    cr_assert_eq(chmod(path, mode), 0);
}

static const char hex64[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

Test(key, generate_then_load_round_trips, .init = key_setup, .fini = key_teardown)
{
    char err[256] = "";
    cr_assert_eq(am_key_generate(path, err, sizeof err), 0, "%s", err);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq(st.st_size, 65, "64 hex digits and a newline");

    char text[65];
    FILE *f = fopen(path, "r");
    cr_assert_eq(fread(text, 1, 65, f), 65);
    fclose(f);
    cr_assert_eq(text[64], '\n');
    for (int i = 0; i < 64; i++)
        cr_assert(strchr("0123456789abcdef", text[i]) && text[i], "lowercase hex at %d", i);

    uint8_t key[AM_KEY_BYTES], zero[AM_KEY_BYTES] = {0};
    cr_assert_eq(am_key_load(path, key, err, sizeof err), 0, "%s", err);
    cr_assert_neq(memcmp(key, zero, sizeof key), 0);
    for (int i = 0; i < AM_KEY_BYTES; i++) {
        unsigned v;
        cr_assert_eq(sscanf(text + 2 * i, "%2x", &v), 1);
        cr_assert_eq(key[i], v, "byte %d", i);
    }
}

Test(key, load_reads_a_known_file_with_trailing_whitespace, .init = key_setup, .fini = key_teardown)
{
    char text[80];
    snprintf(text, sizeof text, "%s \r\n\n", hex64);
    write_file(text, strlen(text), 0600);
    uint8_t key[AM_KEY_BYTES];
    char err[256] = "";
    cr_assert_eq(am_key_load(path, key, err, sizeof err), 0, "%s", err);
    for (int i = 0; i < AM_KEY_BYTES; i++)
        cr_assert_eq(key[i], i);
    write_file(hex64, 64, 0400);
    cr_assert_eq(am_key_load(path, key, NULL, 0), 0, "no newline, read-only, no err buffer");
}

Test(key, generate_refuses_an_existing_file, .init = key_setup, .fini = key_teardown)
{
    write_file("keep me", 7, 0600);
    char err[256] = "";
    cr_assert_eq(am_key_generate(path, err, sizeof err), -EEXIST);
    cr_assert_not_null(strstr(err, path), "%s", err);
    cr_assert_not_null(strstr(err, "exists"), "%s", err);
    char text[16] = "";
    FILE *f = fopen(path, "r");
    cr_assert_eq(fread(text, 1, sizeof text, f), 7);
    fclose(f);
    cr_assert_str_eq(text, "keep me");
}

static void expect_refused(const char *text, size_t len, int want, const char *what)
{
    write_file(text, len, 0600);
    uint8_t key[AM_KEY_BYTES];
    char err[256] = "";
    cr_assert_eq(am_key_load(path, key, err, sizeof err), want, "%s", what);
    cr_assert_not_null(strstr(err, path), "%s: %s", what, err);
    cr_assert_not_null(strstr(err, "hex digits"), "%s: %s", what, err);
}

Test(key, load_refuses_the_wrong_length, .init = key_setup, .fini = key_teardown)
{
    char text[300];
    expect_refused(hex64, 63, AM_EPROTO, "63 digits");
    snprintf(text, sizeof text, "%s0\n", hex64);
    expect_refused(text, strlen(text), AM_EPROTO, "65 digits");
    snprintf(text, sizeof text, "%s%s\n", hex64, hex64);
    expect_refused(text, strlen(text), AM_EPROTO, "128 digits");
    memset(text, ' ', sizeof text);
    memcpy(text, hex64, 64);
    expect_refused(text, sizeof text, AM_EPROTO, "a long tail of spaces");
    expect_refused("", 0, AM_EPROTO, "empty");
    expect_refused("\n", 1, AM_EPROTO, "a newline");
}

Test(key, load_refuses_non_hex, .init = key_setup, .fini = key_teardown)
{
    char text[80];
    for (size_t i = 0; i < 64; i += 21) {
        snprintf(text, sizeof text, "%s\n", hex64);
        text[i] = 'g';
        expect_refused(text, 65, AM_EPROTO, "a g");
    }
    snprintf(text, sizeof text, " %s\n", hex64);
    expect_refused(text, 66, AM_EPROTO, "leading space");
    snprintf(text, sizeof text, "%s\n", hex64);
    text[30] = '\0';
    expect_refused(text, 65, AM_EPROTO, "a NUL byte");
    snprintf(text, sizeof text, "%.32s %.32s", hex64, hex64 + 32);
    expect_refused(text, 65, AM_EPROTO, "a space inside");
}

Test(key, load_refuses_a_file_others_can_read, .init = key_setup, .fini = key_teardown)
{
    write_file(hex64, 64, 0640);
    uint8_t key[AM_KEY_BYTES];
    char err[256] = "";
    cr_assert_eq(am_key_load(path, key, err, sizeof err), -EACCES);
    cr_assert_not_null(strstr(err, path), "%s", err);
    cr_assert_not_null(strstr(err, "readable by others; chmod 600 it"), "%s", err);
    cr_assert_eq(chmod(path, 0604), 0);
    cr_assert_eq(am_key_load(path, key, err, sizeof err), -EACCES, "world-readable");
    cr_assert_eq(chmod(path, 0620), 0);
    cr_assert_eq(am_key_load(path, key, err, sizeof err), -EACCES, "group-writable");
    cr_assert_eq(chmod(path, 0600), 0);
    cr_assert_eq(am_key_load(path, key, err, sizeof err), 0, "%s", err);
}

Test(key, load_refuses_a_missing_file_or_a_directory, .init = key_setup, .fini = key_teardown)
{
    uint8_t key[AM_KEY_BYTES];
    char err[256] = "";
    cr_assert_eq(am_key_load(path, key, err, sizeof err), -ENOENT);
    cr_assert_not_null(strstr(err, path), "%s", err);
    cr_assert_eq(chmod(dir, 0700), 0);
    cr_assert_neq(am_key_load(dir, key, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, dir), "%s", err);
    cr_assert_eq(am_key_generate(dir, err, sizeof err), -EEXIST);
}

/* ---- packets ---- */

Test(packet, round_trips_empty_small_and_full_size, .init = setup)
{
    static const size_t sizes[] = {0, 1, 1360};
    uint8_t in[1360], sealed[1360 + AM_SEAL_PACKET_OVERHEAD], out[1360 + 1];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 7);
    for (size_t k = 0; k < 3; k++) {
        size_t n = sizes[k];
        cr_assert_eq(am_seal_packet(key1, in, n, sealed), n + AM_SEAL_PACKET_OVERHEAD);
        size_t outlen = 99;
        memset(out, 0xAA, sizeof out);
        cr_assert_eq(am_open_packet(key1, sealed, n + AM_SEAL_PACKET_OVERHEAD, out, &outlen), 0);
        cr_assert_eq(outlen, n);
        cr_assert(memcmp(out, in, n) == 0);
        cr_assert_eq(out[n], 0xAA, "nothing written past the plaintext");
        if (n)
            cr_assert(memcmp(sealed + 24, in, n) != 0, "the payload is not sent in clear");
    }
}

Test(packet, refuses_any_flipped_byte, .init = setup)
{
    uint8_t sealed[5 + AM_SEAL_PACKET_OVERHEAD];
    size_t n = am_seal_packet(key1, (const uint8_t *)"hello", 5, sealed);
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit++) {
            uint8_t out[5 + 16];
            memset(out, 0xAA, sizeof out);
            size_t outlen = 99;
            sealed[i] ^= (uint8_t)(1 << bit);
            cr_assert_eq(am_open_packet(key1, sealed, n, out, &outlen), AM_EPROTO,
                         "byte %zu bit %d", i, bit);
            sealed[i] ^= (uint8_t)(1 << bit);
            cr_assert_eq(outlen, 0);
            for (size_t j = 5; j < sizeof out; j++)
                cr_assert_eq(out[j], 0xAA, "nothing written past out's bound");
        }
    }
    uint8_t out[5];
    size_t outlen;
    cr_assert_eq(am_open_packet(key1, sealed, n, out, &outlen), 0, "restored, it opens");
}

Test(packet, refuses_another_key_and_truncation, .init = setup)
{
    uint8_t in[100], sealed[100 + AM_SEAL_PACKET_OVERHEAD], out[100];
    memset(in, 'x', sizeof in);
    size_t n = am_seal_packet(key1, in, sizeof in, sealed);
    size_t outlen = 99;
    cr_assert_eq(am_open_packet(key2, sealed, n, out, &outlen), AM_EPROTO);
    cr_assert_eq(outlen, 0);
    for (size_t len = 0; len < n; len++)
        cr_assert_eq(am_open_packet(key1, sealed, len, out, &outlen), AM_EPROTO, "%zu bytes", len);
    /* A packet sealed for a stream-like context does not open either: the
     * 40-byte minimum alone is not accepted without a valid tag. */
    uint8_t zeros[AM_SEAL_PACKET_OVERHEAD] = {0};
    cr_assert_eq(am_open_packet(key1, zeros, sizeof zeros, out, &outlen), AM_EPROTO);
    cr_assert_eq(am_open_packet(key1, sealed, n, out, &outlen), 0);
}

Test(packet, sealing_twice_gives_different_bytes, .init = setup)
{
    uint8_t a[8 + AM_SEAL_PACKET_OVERHEAD], b[8 + AM_SEAL_PACKET_OVERHEAD];
    am_seal_packet(key1, (const uint8_t *)"same msg", 8, a);
    am_seal_packet(key1, (const uint8_t *)"same msg", 8, b);
    cr_assert(memcmp(a, b, 24) != 0, "random nonces");
    cr_assert(memcmp(a + 24, b + 24, sizeof a - 24) != 0);
}

/* ---- streams ---- */

/* An initiator c and an acceptor s; wire_cs carries c -> s, wire_sc s -> c;
 * plain_c and plain_s collect what each side decrypted. */
struct pair {
    struct am_secure c, s;
    struct am_buf wire_cs, wire_sc, plain_c, plain_s;
};

/* On the heap, so that LeakSanitizer sees a buffer am_secure_free forgot:
 * a pointer left in a live stack frame would keep it reachable. */
static struct pair *pair_new(const uint8_t *kc, const uint8_t *ks)
{
    struct pair *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    am_secure_init(&p->c, kc, 1);
    am_secure_init(&p->s, ks, 0);
    am_buf_init(&p->wire_cs);
    am_buf_init(&p->wire_sc);
    am_buf_init(&p->plain_c);
    am_buf_init(&p->plain_s);
    cr_assert_eq(am_secure_start(&p->c, &p->wire_cs), 0);
    cr_assert_eq(am_secure_start(&p->s, &p->wire_sc), 0);
    cr_assert_eq(p->wire_cs.len, AM_SEAL_HANDSHAKE_BYTES);
    cr_assert(memcmp(p->wire_cs.data, "AMS1", 4) == 0);
    return p;
}

static void pair_free(struct pair *p)
{
    am_secure_free(&p->c);
    am_secure_free(&p->s);
    am_buf_close(&p->wire_cs);
    am_buf_close(&p->wire_sc);
    am_buf_close(&p->plain_c);
    am_buf_close(&p->plain_s);
    free(p);
}

/* Delivers everything pending on a wire to its receiver in one call. */
static int deliver(struct am_secure *to, struct am_buf *wire, struct am_buf *plain)
{
    int rc = am_secure_in(to, wire->data, wire->len, plain);
    wire->len = 0;
    return rc;
}

/* Completes the handshake in both directions, flushing queued plaintext. */
static void pair_connect(struct pair *p)
{
    cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 1);
    cr_assert_eq(am_secure_out(&p->c, NULL, 0, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 1);
    cr_assert_eq(am_secure_out(&p->s, NULL, 0, &p->wire_sc), 0);
    cr_assert(am_secure_ready(&p->c) && am_secure_ready(&p->s));
}

/* am_secure_read: the read that completes the handshake also releases what
 * was written before it; later reads return 0; a bad record is an error. */
Test(stream, read_releases_the_queue_once_the_handshake_completes, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"early", 5, &p->wire_cs), 0);
    cr_assert_eq(p->wire_cs.len, AM_SEAL_HANDSHAKE_BYTES, "queued, not sent");
    cr_assert_eq(am_secure_read(&p->c, p->wire_sc.data, p->wire_sc.len, &p->plain_c, &p->wire_cs),
                 1);
    p->wire_sc.len = 0;
    cr_assert_eq(p->wire_cs.len, AM_SEAL_HANDSHAKE_BYTES + 4 + 5 + 16, "the queue followed");
    cr_assert_eq(am_secure_read(&p->s, p->wire_cs.data, p->wire_cs.len, &p->plain_s, &p->wire_sc),
                 1);
    cr_assert_eq(p->plain_s.len, 5);
    cr_assert(memcmp(p->plain_s.data, "early", 5) == 0);
    p->wire_cs.len = 0;
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"x", 1, &p->wire_cs), 0);
    cr_assert_eq(am_secure_read(&p->s, p->wire_cs.data, p->wire_cs.len, &p->plain_s, &p->wire_sc),
                 0);
    static const uint8_t bad[4 + 17] = {0, 0, 0, 17, 1, 2, 3}; /* a whole record, forged */
    cr_assert_lt(am_secure_read(&p->s, bad, sizeof bad, &p->plain_s, &p->wire_sc), 0);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, carries_data_both_ways, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    cr_assert_not(am_secure_ready(&p->c));
    pair_connect(p);
    cr_assert_eq(p->wire_cs.len + p->wire_sc.len, 0, "nothing was queued");

    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"ping", 4, &p->wire_cs), 0);
    cr_assert_eq(p->wire_cs.len, 4 + 4 + 16);
    cr_assert_eq(am_be32_get(p->wire_cs.data), 4 + 16);
    for (size_t i = 0; i + 4 <= p->wire_cs.len; i++)
        cr_assert(memcmp(p->wire_cs.data + i, "ping", 4) != 0, "not in clear");
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0);
    cr_assert_eq(p->plain_s.len, 4);
    cr_assert(memcmp(p->plain_s.data, "ping", 4) == 0);

    cr_assert_eq(am_secure_out(&p->s, (const uint8_t *)"pong!", 5, &p->wire_sc), 0);
    cr_assert_eq(am_secure_out(&p->s, (const uint8_t *)"again", 5, &p->wire_sc), 0);
    cr_assert_eq(am_secure_out(&p->s, NULL, 0, &p->wire_sc), 0);
    cr_assert_eq(p->wire_sc.len, 2 * (5 + 20), "two records, none for the empty write");
    cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 0);
    cr_assert_eq(p->plain_c.len, 10);
    cr_assert(memcmp(p->plain_c.data, "pong!again", 10) == 0);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, works_fed_byte_by_byte, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    int completed = 0;
    for (size_t i = 0; i < p->wire_sc.len; i++) {
        int rc = am_secure_in(&p->c, p->wire_sc.data + i, 1, &p->plain_c);
        cr_assert_eq(rc, i == AM_SEAL_HANDSHAKE_BYTES - 1, "byte %zu", i);
        completed += rc;
    }
    cr_assert_eq(completed, 1);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 1);
    uint8_t msg[300];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)i;
    for (size_t k = 1; k <= 3; k++)
        cr_assert_eq(am_secure_out(&p->c, msg, k * 100, &p->wire_cs), 0);
    for (size_t i = 0; i < p->wire_cs.len; i++)
        cr_assert_eq(am_secure_in(&p->s, p->wire_cs.data + i, 1, &p->plain_s), 0, "byte %zu", i);
    cr_assert_eq(p->plain_s.len, 600);
    cr_assert(memcmp(p->plain_s.data, msg, 100) == 0);
    cr_assert(memcmp(p->plain_s.data + 100, msg, 200) == 0);
    cr_assert(memcmp(p->plain_s.data + 300, msg, 300) == 0);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, works_split_at_every_point, .init = setup)
{
    /* Handshake and two records in one wire, cut in two at every offset. */
    for (size_t cut = 0;; cut++) {
        struct pair *p = pair_new(key1, key1);
        cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 1);
        cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"first", 5, &p->wire_cs), 0);
        cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"second", 6, &p->wire_cs), 0);
        size_t len = p->wire_cs.len;
        cr_assert_eq(len, 36 + 25 + 26);
        int a = am_secure_in(&p->s, p->wire_cs.data, cut, &p->plain_s);
        int b = am_secure_in(&p->s, p->wire_cs.data + cut, len - cut, &p->plain_s);
        cr_assert_eq(a, cut >= 36, "cut %zu", cut);
        cr_assert_eq(b, cut < 36, "cut %zu", cut);
        cr_assert_eq(p->plain_s.len, 11, "cut %zu", cut);
        cr_assert(memcmp(p->plain_s.data, "firstsecond", 11) == 0);
        pair_free(p);
        if (cut == len)
            break;
    }
    CHECK_LEAKS();
}

Test(stream, carries_a_mebibyte_in_several_records, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    pair_connect(p);
    size_t n = (1u << 20) + 1;
    uint8_t *msg = malloc(n);
    for (size_t i = 0; i < n; i++)
        msg[i] = (uint8_t)(i * 31 + (i >> 9));
    cr_assert_eq(am_secure_out(&p->c, msg, n, &p->wire_cs), 0);
    size_t records = 17; /* 16 full records and one of 1 byte */
    cr_assert_eq(p->wire_cs.len, n + records * 20);
    cr_assert_eq(am_be32_get(p->wire_cs.data), 16 + AM_SEAL_RECORD_MAX);
    /* Fed in uneven chunks that straddle record boundaries. */
    size_t off = 0, step = 1;
    while (off < p->wire_cs.len) {
        size_t k = step < p->wire_cs.len - off ? step : p->wire_cs.len - off;
        cr_assert_eq(am_secure_in(&p->s, p->wire_cs.data + off, k, &p->plain_s), 0);
        off += k;
        step = step * 3 + 7;
        if (step > 200000)
            step = 5;
    }
    cr_assert_eq(p->plain_s.len, n);
    cr_assert(memcmp(p->plain_s.data, msg, n) == 0);
    free(msg);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, splits_writes_at_the_record_maximum, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    pair_connect(p);
    uint8_t *msg = calloc(1, AM_SEAL_RECORD_MAX + 1);
    cr_assert_eq(am_secure_out(&p->c, msg, AM_SEAL_RECORD_MAX, &p->wire_cs), 0);
    cr_assert_eq(p->wire_cs.len, AM_SEAL_RECORD_MAX + 20, "one record");
    p->wire_cs.len = 0;
    cr_assert_eq(am_secure_out(&p->c, msg, AM_SEAL_RECORD_MAX + 1, &p->wire_cs), 0);
    cr_assert_eq(p->wire_cs.len, AM_SEAL_RECORD_MAX + 1 + 40, "two records");
    free(msg);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, flushes_data_written_before_the_handshake, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"early ", 6, &p->wire_cs), 0);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"bird", 4, &p->wire_cs), 0);
    cr_assert_eq(am_secure_out(&p->s, (const uint8_t *)"welcome", 7, &p->wire_sc), 0);
    cr_assert_eq(p->wire_cs.len, AM_SEAL_HANDSHAKE_BYTES, "queued, not sent");
    cr_assert_eq(p->wire_sc.len, AM_SEAL_HANDSHAKE_BYTES);
    pair_connect(p);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"!", 1, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0);
    cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 0);
    cr_assert_eq(p->plain_s.len, 11);
    cr_assert(memcmp(p->plain_s.data, "early bird!", 11) == 0);
    cr_assert_eq(p->plain_c.len, 7);
    cr_assert(memcmp(p->plain_c.data, "welcome", 7) == 0);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, bounds_the_queue_before_the_handshake, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    uint8_t *big = calloc(1, AM_SEAL_QUEUE_MAX);
    cr_assert_eq(am_secure_out(&p->c, big, AM_SEAL_QUEUE_MAX - 1, &p->wire_cs), 0);
    cr_assert_eq(am_secure_out(&p->c, big, 2, &p->wire_cs), -ENOBUFS);
    cr_assert_eq(am_secure_out(&p->c, big, 1, &p->wire_cs), 0, "exactly the maximum fits");
    cr_assert_eq(am_secure_out(&p->c, big, 1, &p->wire_cs), -ENOBUFS);
    free(big);
    pair_connect(p);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0);
    cr_assert_eq(p->plain_s.len, AM_SEAL_QUEUE_MAX);
    pair_free(p);
    CHECK_LEAKS();
}

static int refuse_alloc;
static void *f_malloc(size_t n)
{
    return refuse_alloc ? NULL : malloc(n);
}
static void *f_calloc(size_t n, size_t m)
{
    return refuse_alloc ? NULL : calloc(n, m);
}
static void *f_realloc(void *q, size_t n)
{
    return refuse_alloc ? NULL : realloc(q, n);
}
static const struct am_allocator failing = {f_malloc, f_calloc, f_realloc, free};

Test(stream, a_failed_allocation_on_output_changes_nothing, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"queued", 6, &p->wire_cs), 0);
    pair_connect(p);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0);
    uint8_t *msg = calloc(1, 100000);
    size_t before = p->wire_cs.len;
    refuse_alloc = 1;
    am_mem_set(&failing);
    cr_assert_eq(am_secure_out(&p->c, msg, 100000, &p->wire_cs), -ENOMEM);
    am_mem_set(NULL);
    cr_assert_eq(p->wire_cs.len, before);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"after", 5, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0, "the counter did not move");
    cr_assert_eq(p->plain_s.len, 11);
    cr_assert(memcmp(p->plain_s.data, "queuedafter", 11) == 0);
    free(msg);
    pair_free(p);
    CHECK_LEAKS();
}

/* The state after an error refuses everything. */
static void expect_failed(struct am_secure *x)
{
    struct am_buf b;
    am_buf_init(&b);
    cr_assert_not(am_secure_ready(x));
    cr_assert_eq(am_secure_in(x, (const uint8_t *)"x", 1, &b), AM_EPROTO);
    cr_assert_eq(am_secure_in(x, NULL, 0, &b), AM_EPROTO);
    cr_assert_eq(am_secure_out(x, (const uint8_t *)"x", 1, &b), AM_EPROTO);
    cr_assert_eq(am_secure_out(x, NULL, 0, &b), AM_EPROTO);
    cr_assert_eq(b.len, 0);
    am_buf_close(&b);
}

Test(stream, refuses_a_peer_with_another_key, .init = setup)
{
    struct pair *p = pair_new(key1, key2);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"hi", 2, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 1,
                 "the handshake itself proves nothing");
    cr_assert_eq(am_secure_out(&p->c, NULL, 0, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), AM_EPROTO, "the first record does");
    cr_assert_eq(p->plain_s.len, 0);
    expect_failed(&p->s);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, refuses_a_tampered_record_and_stays_failed, .init = setup)
{
    /* Every byte after the length header, and the header shrunk by one. */
    for (size_t i = 3; i < 4 + 3 + 16; i++) {
        struct pair *p = pair_new(key1, key1);
        pair_connect(p);
        cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"abc", 3, &p->wire_cs), 0);
        cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"def", 3, &p->wire_cs), 0);
        if (i == 3)
            p->wire_cs.data[3] ^= 1; /* L = 19 -> 18 */
        else
            p->wire_cs.data[i] ^= 0x40;
        cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), AM_EPROTO, "byte %zu", i);
        cr_assert_eq(p->plain_s.len, 0);
        expect_failed(&p->s);
        pair_free(p);
    }
    CHECK_LEAKS();
}

Test(stream, refuses_records_out_of_order, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    pair_connect(p);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"one", 3, &p->wire_cs), 0);
    struct am_buf first;
    am_buf_init(&first);
    am_buf_append(&first, p->wire_cs.data, p->wire_cs.len);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 0);
    cr_assert_eq(deliver(&p->s, &first, &p->plain_s), AM_EPROTO, "a record replayed in-stream");
    am_buf_close(&first);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, refuses_a_recorded_stream_replayed_to_a_new_acceptor, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    struct am_buf recorded;
    am_buf_init(&recorded);
    cr_assert_eq(deliver(&p->c, &p->wire_sc, &p->plain_c), 1);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"transfer 100", 12, &p->wire_cs), 0);
    am_buf_append(&recorded, p->wire_cs.data, p->wire_cs.len);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 1, "the original is accepted");
    cr_assert_eq(p->plain_s.len, 12);

    struct am_secure again;
    struct am_buf out, plain;
    am_buf_init(&out);
    am_buf_init(&plain);
    am_secure_init(&again, key1, 0);
    cr_assert_eq(am_secure_start(&again, &out), 0);
    cr_assert_eq(am_secure_in(&again, recorded.data, recorded.len, &plain), AM_EPROTO);
    cr_assert_eq(plain.len, 0);
    expect_failed(&again);
    am_secure_free(&again);
    am_buf_close(&out);
    am_buf_close(&plain);
    am_buf_close(&recorded);
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, refuses_a_bad_magic, .init = setup)
{
    static const char *const bad[] = {"XMS1", "AXS1", "AMX1", "AMS2", "AMP1", "GET "};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        struct am_secure x;
        struct am_buf plain;
        am_buf_init(&plain);
        am_secure_init(&x, key1, k % 2);
        for (size_t i = 0; i < 4; i++) {
            int first_bad = bad[k][i] != "AMS1"[i];
            int rc = am_secure_in(&x, (const uint8_t *)bad[k] + i, 1, &plain);
            if (first_bad) {
                cr_assert_eq(rc, AM_EPROTO, "%s byte %zu", bad[k], i);
                break;
            }
            cr_assert_eq(rc, 0);
        }
        expect_failed(&x);
        am_secure_free(&x);
        am_buf_close(&plain);
    }
    CHECK_LEAKS();
}

/* After a handshake, feeds a bare length header to the acceptor. */
static int feed_length(uint32_t len)
{
    struct pair *p = pair_new(key1, key1);
    pair_connect(p);
    uint8_t hdr[4];
    am_be32_put(hdr, len);
    int rc = am_secure_in(&p->s, hdr, 4, &p->plain_s);
    if (rc == AM_EPROTO)
        expect_failed(&p->s);
    pair_free(p);
    return rc;
}

Test(stream, refuses_bad_record_lengths, .init = setup)
{
    cr_assert_eq(feed_length(0), AM_EPROTO, "an empty record with no tag");
    cr_assert_eq(feed_length(16), AM_EPROTO, "an empty record");
    cr_assert_eq(feed_length(16 + AM_SEAL_RECORD_MAX + 1), AM_EPROTO, "one byte too long");
    cr_assert_eq(feed_length(UINT32_MAX), AM_EPROTO);
    cr_assert_eq(feed_length(17), 0, "the smallest record waits for its bytes");
    cr_assert_eq(feed_length(16 + AM_SEAL_RECORD_MAX), 0, "the largest too");
    CHECK_LEAKS();
}

Test(stream, refuses_its_own_records_reflected_back, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    pair_connect(p);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"mine", 4, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->c, &p->wire_cs, &p->plain_c), AM_EPROTO, "directions have own keys");
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, free_releases_queued_and_partial_bytes, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"queued", 6, &p->wire_cs), 0);
    cr_assert_eq(deliver(&p->s, &p->wire_cs, &p->plain_s), 1);
    cr_assert_eq(am_secure_out(&p->s, (const uint8_t *)"partial", 7, &p->wire_sc), 0);
    cr_assert_eq(am_secure_in(&p->c, p->wire_sc.data, p->wire_sc.len - 3, &p->plain_c), 1);
    cr_assert_eq(p->plain_c.len, 0, "the record is incomplete");
    pair_free(p);
    CHECK_LEAKS();
}

Test(stream, free_is_safe_after_failure_and_twice, .init = setup)
{
    struct am_secure *x = malloc(sizeof *x);
    struct am_buf b;
    am_buf_init(&b);
    am_secure_init(x, key1, 1);
    cr_assert_eq(am_secure_out(x, (const uint8_t *)"q", 1, &b), 0);
    cr_assert_eq(am_secure_in(x, (const uint8_t *)"AMS", 3, &b), 0);
    cr_assert_eq(am_secure_in(x, (const uint8_t *)"B", 1, &b), AM_EPROTO);
    am_secure_free(x);
    am_secure_free(x);
    free(x);
    am_buf_close(&b);
    CHECK_LEAKS();
}

/* ---- the wire format, rebuilt from seal.h's description with libsodium ---- */

Test(wire, a_packet_is_nonce_then_xchacha20poly1305_with_ad_AMP1, .init = setup)
{
    uint8_t pkt[24 + 5 + 16], out[5];
    size_t outlen;
    randombytes_buf(pkt, 24);
    crypto_aead_xchacha20poly1305_ietf_encrypt(pkt + 24, NULL, (const uint8_t *)"hello", 5,
                                               (const uint8_t *)"AMP1", 4, NULL, pkt, key1);
    cr_assert_eq(am_open_packet(key1, pkt, sizeof pkt, out, &outlen), 0);
    cr_assert(outlen == 5 && memcmp(out, "hello", 5) == 0);
    crypto_aead_xchacha20poly1305_ietf_encrypt(pkt + 24, NULL, (const uint8_t *)"hello", 5,
                                               (const uint8_t *)"AMS1", 4, NULL, pkt, key1);
    cr_assert_eq(am_open_packet(key1, pkt, sizeof pkt, out, &outlen), AM_EPROTO, "other AD");
}

static void derive(uint8_t out[32], const char *label, const uint8_t *nc, const uint8_t *ns)
{
    uint8_t in[9 + 64];
    memcpy(in, label, 9);
    memcpy(in + 9, nc, 32);
    memcpy(in + 41, ns, 32);
    crypto_generichash(out, 32, in, sizeof in, key1, sizeof key1);
}

Test(wire, records_use_derived_keys_counters_and_the_length_as_ad, .init = setup)
{
    struct pair *p = pair_new(key1, key1);
    uint8_t nc[32], ns[32], k_c2s[32], k_s2c[32];
    memcpy(nc, p->wire_cs.data + 4, 32);
    memcpy(ns, p->wire_sc.data + 4, 32);
    pair_connect(p);
    derive(k_c2s, "amesh c2s", nc, ns);
    derive(k_s2c, "amesh s2c", nc, ns);

    /* The initiator's second record, opened by hand with counter 1. */
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"zero", 4, &p->wire_cs), 0);
    cr_assert_eq(am_secure_out(&p->c, (const uint8_t *)"one!", 4, &p->wire_cs), 0);
    const uint8_t *rec = p->wire_cs.data + 24;
    uint8_t nonce[24] = {1}, plain[4];
    cr_assert_eq(am_be32_get(rec), 20);
    cr_assert_eq(crypto_aead_xchacha20poly1305_ietf_decrypt(plain, NULL, NULL, rec + 4, 20, rec, 4,
                                                            nonce, k_c2s),
                 0);
    cr_assert(memcmp(plain, "one!", 4) == 0);

    /* A record built by hand as the acceptor's first, counter 0. */
    uint8_t mine[4 + 6 + 16] = {0, 0, 0, 22};
    nonce[0] = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(mine + 4, NULL, (const uint8_t *)"by hand", 6, mine,
                                               4, NULL, nonce, k_s2c);
    cr_assert_eq(am_secure_in(&p->c, mine, sizeof mine, &p->plain_c), 0);
    cr_assert(p->plain_c.len == 6 && memcmp(p->plain_c.data, "by han", 6) == 0);
    pair_free(p);
    CHECK_LEAKS();
}
