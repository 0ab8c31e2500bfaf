/* seal.c - cluster-key encryption of packets and streams (see seal.h for the
 * construction and the wire layouts).
 *
 * A stream is in one of three states: HANDSHAKE (collecting the peer's 36
 * bytes in s->peer; plaintext written meanwhile waits in s->queue), READY
 * (s->rec holds the bytes of at most one incomplete record, and its length
 * header has been checked as soon as it was complete) and FAILED (keys
 * wiped, buffers released; every call returns AM_EPROTO). */
#include "seal.h"

#include "err.h"
#include "mem.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(AM_SEAL_PACKET_OVERHEAD == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES +
                                              crypto_aead_xchacha20poly1305_ietf_ABYTES,
               "packet overhead is nonce + tag");
_Static_assert(AM_KEY_BYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "key size");

#define NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define HDR 4
#define REC_MIN (TAG + 1)
#define REC_MAX (TAG + AM_SEAL_RECORD_MAX)

enum { HANDSHAKE, READY, FAILED };

static const uint8_t packet_ad[4] = {'A', 'M', 'P', '1'};
static const uint8_t stream_magic[4] = {'A', 'M', 'S', '1'};

int am_seal_init(void)
{
    return sodium_init() < 0 ? -EIO : 0;
}

/* ---- key files ---- */

int am_key_generate(const char *path, char *err, size_t errlen)
{
    uint8_t key[AM_KEY_BYTES];
    char hex[2 * AM_KEY_BYTES + 2];
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST)
            return am_errf(err, errlen, -EEXIST, "key file %s already exists; not overwriting it",
                           path);
        return am_errf(err, errlen, -e, "cannot create key file %s: %s", path, strerror(e));
    }
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(hex, sizeof hex, key, sizeof key);
    hex[2 * AM_KEY_BYTES] = '\n';
    size_t done = 0, want = 2 * AM_KEY_BYTES + 1;
    int e = 0;
    while (done < want && !e) {
        ssize_t k = write(fd, hex + done, want - done);
        if (k > 0)
            done += (size_t)k;
        else if (k < 0 && errno != EINTR)
            e = errno;
    }
    if (!e && fsync(fd) < 0)
        e = errno;
    if (close(fd) < 0 && !e)
        e = errno;
    sodium_memzero(key, sizeof key);
    sodium_memzero(hex, sizeof hex);
    if (e) {
        unlink(path);
        return am_errf(err, errlen, -e, "cannot write key file %s: %s", path, strerror(e));
    }
    return 0;
}

int am_key_load(const char *path, uint8_t key[AM_KEY_BYTES], char *err, size_t errlen)
{
    /* 64 digits and a little trailing whitespace; a file that fills the
     * buffer is not a key. */
    char text[128];
    size_t len = 0;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return am_errf(err, errlen, -e, "cannot open key file %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        rc = am_errf(err, errlen, -e, "cannot stat key file %s: %s", path, strerror(e));
    } else if (!S_ISREG(st.st_mode)) {
        rc = am_errf(err, errlen, AM_EPROTO, "key file %s is not a regular file", path);
    } else if (st.st_mode & 077) {
        rc = am_errf(err, errlen, -EACCES,
                     "key file %s is readable by others; chmod 600 it (mode is %04o)", path,
                     (unsigned)(st.st_mode & 07777));
    }
    while (!rc && len < sizeof text) {
        ssize_t k = read(fd, text + len, sizeof text - len);
        if (k == 0)
            break;
        if (k > 0) {
            len += (size_t)k;
        } else if (errno != EINTR) {
            int e = errno;
            rc = am_errf(err, errlen, -e, "cannot read key file %s: %s", path, strerror(e));
        }
    }
    close(fd);
    if (len == sizeof text)
        len = 0; /* too long */
    while (!rc && len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    for (size_t i = 0; !rc && i < len; i++)
        if (!isxdigit((unsigned char)text[i]))
            len = 0; /* not a key */
    if (!rc && len != 2 * AM_KEY_BYTES)
        rc = am_errf(err, errlen, AM_EPROTO, "key file %s is not a key: expected %d hex digits",
                     path, 2 * AM_KEY_BYTES);
    if (!rc && sodium_hex2bin(key, AM_KEY_BYTES, text, len, NULL, NULL, NULL) != 0)
        rc = am_errf(err, errlen, AM_EPROTO, "key file %s is not a key", path);
    sodium_memzero(text, sizeof text);
    return rc;
}

/* ---- packets ---- */

size_t am_seal_packet(const uint8_t key[AM_KEY_BYTES], const uint8_t *in, size_t len, uint8_t *out)
{
    randombytes_buf(out, NONCE);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + NONCE, NULL, in, len, packet_ad,
                                               sizeof packet_ad, NULL, out, key);
    return len + AM_SEAL_PACKET_OVERHEAD;
}

int am_open_packet(const uint8_t key[AM_KEY_BYTES], const uint8_t *in, size_t len, uint8_t *out,
                   size_t *outlen)
{
    *outlen = 0;
    if (len < AM_SEAL_PACKET_OVERHEAD)
        return AM_EPROTO;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, NULL, NULL, in + NONCE, len - NONCE,
                                                   packet_ad, sizeof packet_ad, in, key) != 0)
        return AM_EPROTO;
    *outlen = len - AM_SEAL_PACKET_OVERHEAD;
    return 0;
}

/* ---- streams ---- */

void am_secure_init(struct am_secure *s, const uint8_t key[AM_KEY_BYTES], int initiator)
{
    memset(s, 0, sizeof *s);
    memcpy(s->key, key, AM_KEY_BYTES);
    randombytes_buf(s->nonce, sizeof s->nonce);
    am_buf_init(&s->rec);
    am_buf_init(&s->queue);
    s->initiator = initiator;
    s->state = HANDSHAKE;
}

void am_secure_free(struct am_secure *s)
{
    sodium_memzero(s->key, sizeof s->key);
    sodium_memzero(s->k_out, sizeof s->k_out);
    sodium_memzero(s->k_in, sizeof s->k_in);
    /* Both buffers may hold plaintext. */
    if (s->rec.data)
        sodium_memzero(s->rec.data, s->rec.cap);
    if (s->queue.data)
        sodium_memzero(s->queue.data, s->queue.cap);
    am_buf_close(&s->rec);
    am_buf_close(&s->queue);
}

static int fail_stream(struct am_secure *s, int code)
{
    am_secure_free(s);
    s->state = FAILED;
    return code;
}

int am_secure_start(struct am_secure *s, struct am_buf *out)
{
    int rc = am_buf_reserve(out, AM_SEAL_HANDSHAKE_BYTES);
    if (rc)
        return rc;
    am_buf_append(out, stream_magic, sizeof stream_magic);
    am_buf_append(out, s->nonce, sizeof s->nonce);
    return 0;
}

static void derive(uint8_t out[AM_KEY_BYTES], const char *label, const uint8_t *nonce_c,
                   const uint8_t *nonce_s, const uint8_t key[AM_KEY_BYTES])
{
    uint8_t in[9 + 32 + 32];
    memcpy(in, label, 9);
    memcpy(in + 9, nonce_c, 32);
    memcpy(in + 9 + 32, nonce_s, 32);
    crypto_generichash(out, AM_KEY_BYTES, in, sizeof in, key, AM_KEY_BYTES);
}

static void finish_handshake(struct am_secure *s)
{
    const uint8_t *theirs = s->peer + sizeof stream_magic;
    const uint8_t *c = s->initiator ? s->nonce : theirs;
    const uint8_t *sv = s->initiator ? theirs : s->nonce;
    derive(s->initiator ? s->k_out : s->k_in, "amesh c2s", c, sv, s->key);
    derive(s->initiator ? s->k_in : s->k_out, "amesh s2c", c, sv, s->key);
    sodium_memzero(s->key, sizeof s->key);
    s->state = READY;
}

static void record_nonce(uint8_t nonce[NONCE], uint64_t counter)
{
    memset(nonce, 0, NONCE);
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(counter >> (8 * i));
}

/* Opens one complete record (header at rec, L bytes after it) into plain. */
static int open_record(struct am_secure *s, const uint8_t *rec, size_t L, struct am_buf *plain)
{
    uint8_t nonce[NONCE];
    int rc = am_buf_reserve(plain, L - TAG);
    if (rc)
        return rc;
    record_nonce(nonce, s->n_in);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(plain->data + plain->len, NULL, NULL, rec + HDR,
                                                   L, rec, HDR, nonce, s->k_in) != 0)
        return AM_EPROTO;
    s->n_in++;
    plain->len += L - TAG;
    return 0;
}

int am_secure_read(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *plain,
                   struct am_buf *out)
{
    int rc = am_secure_in(s, p, n, plain);
    if (rc == 1 && (rc = am_secure_out(s, NULL, 0, out)) == 0)
        rc = 1;
    return rc;
}

int am_secure_in(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *plain)
{
    if (s->state == FAILED)
        return AM_EPROTO;
    int done = 0;
    if (s->state == HANDSHAKE) {
        while (n > 0 && s->peer_len < AM_SEAL_HANDSHAKE_BYTES) {
            if (s->peer_len < sizeof stream_magic && *p != stream_magic[s->peer_len])
                return fail_stream(s, AM_EPROTO);
            s->peer[s->peer_len++] = *p++;
            n--;
        }
        if (s->peer_len < AM_SEAL_HANDSHAKE_BYTES)
            return 0;
        finish_handshake(s);
        done = 1;
    }
    while (n > 0) {
        /* Whole records straight from the input; the rest through s->rec. */
        if (s->rec.len == 0 && n >= HDR) {
            size_t L = am_be32_get(p);
            if (L < REC_MIN || L > REC_MAX)
                return fail_stream(s, AM_EPROTO);
            if (n >= HDR + L) {
                int rc = open_record(s, p, L, plain);
                if (rc)
                    return fail_stream(s, rc);
                p += HDR + L;
                n -= HDR + L;
                continue;
            }
        }
        size_t want = HDR;
        if (s->rec.len >= HDR)
            want = HDR + am_be32_get(s->rec.data);
        size_t k = want - s->rec.len < n ? want - s->rec.len : n;
        if (am_buf_append(&s->rec, p, k))
            return fail_stream(s, -ENOMEM);
        p += k;
        n -= k;
        if (s->rec.len == HDR) {
            size_t L = am_be32_get(s->rec.data);
            if (L < REC_MIN || L > REC_MAX)
                return fail_stream(s, AM_EPROTO);
        } else if (s->rec.len == want) {
            int rc = open_record(s, s->rec.data, want - HDR, plain);
            if (rc)
                return fail_stream(s, rc);
            s->rec.len = 0;
        }
    }
    return done;
}

/* Appends n bytes as records; reserves everything first, so it either
 * succeeds whole or leaves out and s untouched. */
static int seal_records(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *out)
{
    size_t records = (n + AM_SEAL_RECORD_MAX - 1) / AM_SEAL_RECORD_MAX;
    if (records > (SIZE_MAX - n) / (HDR + TAG))
        return -ENOMEM;
    int rc = am_buf_reserve(out, n + records * (HDR + TAG));
    if (rc)
        return rc;
    while (n > 0) {
        size_t k = n < AM_SEAL_RECORD_MAX ? n : AM_SEAL_RECORD_MAX;
        uint8_t *hdr = out->data + out->len;
        uint8_t nonce[NONCE];
        am_be32_put(hdr, (uint32_t)(k + TAG));
        record_nonce(nonce, s->n_out++);
        crypto_aead_xchacha20poly1305_ietf_encrypt(hdr + HDR, NULL, p, k, hdr, HDR, NULL, nonce,
                                                   s->k_out);
        out->len += HDR + k + TAG;
        p += k;
        n -= k;
    }
    return 0;
}

int am_secure_out(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *out)
{
    if (s->state == FAILED)
        return AM_EPROTO;
    if (s->state == HANDSHAKE) {
        if (n > AM_SEAL_QUEUE_MAX - s->queue.len)
            return -ENOBUFS;
        return am_buf_append(&s->queue, p, n);
    }
    if (s->queue.len) {
        /* One reservation for queue and new bytes keeps the call all-or-nothing. */
        size_t q = s->queue.len;
        if (n > SIZE_MAX - q || am_buf_reserve(&s->queue, n))
            return -ENOMEM;
        if (n)
            memcpy(s->queue.data + q, p, n);
        int rc = seal_records(s, s->queue.data, q + n, out);
        if (rc)
            return rc;
        sodium_memzero(s->queue.data, s->queue.cap);
        am_buf_close(&s->queue);
        return 0;
    }
    return seal_records(s, p, n, out);
}

int am_secure_ready(const struct am_secure *s)
{
    return s->state == READY;
}
