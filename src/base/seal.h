/* seal.h - the cluster key: authenticated encryption of UDP packets and TCP
 * streams between nodes (libsodium, XChaCha20-Poly1305 and BLAKE2b).
 *
 * Every node of a cluster holds the same 32-byte key. Nothing from a host
 * without the key is accepted, and nothing it records can be read.
 *
 * Packets carry a random 192-bit nonce: at that size random nonces never
 * repeat in practice (2^96 packets before a collision is likely), so a sender
 * needs no counter and no state shared with anyone.
 *
 *   packet:  | nonce (24, random) | ciphertext (len) | tag (16) |
 *            associated data "AMP1"
 *
 * Streams first exchange a handshake, then records. Each side's nonce enters
 * both per-connection keys, so a recorded stream replayed to a node meets a
 * new nonce and fails on its first record; because the keys are unique to
 * the connection, a record counter is a safe nonce and costs no bytes on the
 * wire. The two directions have distinct keys, so records reflected back to
 * their sender fail too.
 *
 *   handshake (each side):  | "AMS1" | nonce (32, random) |
 *   k_c2s = BLAKE2b-256(key = cluster key, "amesh c2s" || nonce_c || nonce_s)
 *   k_s2c = BLAKE2b-256(key = cluster key, "amesh s2c" || nonce_c || nonce_s)
 *           (c: the side that connected, s: the side that accepted)
 *
 *   record:  | L (4, BE) | ciphertext (L - 16) | tag (16) |
 *            17 <= L <= 16 + AM_SEAL_RECORD_MAX; nonce = record counter
 *            (64-bit LE) in bytes 0..7, zeros after; associated data = the
 *            4 length bytes
 *
 * What this does not protect:
 * - A UDP packet recorded inside the cluster can be replayed (the receiver
 *   keeps no state to notice), as with memberlist's encryption; the
 *   membership protocol already tolerates duplicate and stale messages.
 * - Traffic analysis: sizes, timing and endpoints are visible.
 * - A peer without the key completes the handshake (it is just two
 *   nonces); it is refused at its first record, and can read nothing.
 *
 * am_seal_init must succeed once before any other call. */
#ifndef AM_SEAL_H
#define AM_SEAL_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define AM_KEY_BYTES 32
#define AM_SEAL_PACKET_OVERHEAD 40 /* 24-byte random nonce + 16-byte tag */
#define AM_SEAL_HANDSHAKE_BYTES 36 /* "AMS1" + 32-byte nonce */
/* 64 KiB records: the 20 bytes each adds are 0.03% of a full one, and a
 * receiver buffers at most one record. */
#define AM_SEAL_RECORD_MAX 65536
/* Plaintext written before the handshake completes is queued up to this. */
#define AM_SEAL_QUEUE_MAX (8u << 20)

/* Initialises libsodium. 0 or -EIO; safe to call many times. */
int am_seal_init(void);

/* Key files hold the 32 key bytes as 64 hex digits and a newline.
 *
 * am_key_generate creates path with mode 0600 and a fresh random key; it never
 * overwrites: an existing path gives -EEXIST. am_key_load reads path into key,
 * refusing anything but 64 hex digits (trailing whitespace allowed), a file
 * that group or others may access (-EACCES: "... is readable by others;
 * chmod 600 it") and a file it cannot read. Both return 0 or a negative
 * errno (AM_EPROTO for a malformed file) and, on error, write a one-line
 * message naming the file into err (errlen bytes; err may be NULL). */
int am_key_generate(const char *path, char *err, size_t errlen);
int am_key_load(const char *path, uint8_t key[AM_KEY_BYTES], char *err, size_t errlen);

/* Seals len bytes of in into out, which must hold len + AM_SEAL_PACKET_OVERHEAD
 * bytes and not overlap in. Returns the bytes written (len + 40). */
size_t am_seal_packet(const uint8_t key[AM_KEY_BYTES], const uint8_t *in, size_t len, uint8_t *out);

/* Opens a sealed packet of len bytes into out, which must hold
 * len - AM_SEAL_PACKET_OVERHEAD bytes (no more is ever written) and not
 * overlap in. Returns 0 and sets *outlen, or AM_EPROTO when the packet is
 * shorter than the overhead or not authentic under key (*outlen is then 0). */
int am_open_packet(const uint8_t key[AM_KEY_BYTES], const uint8_t *in, size_t len, uint8_t *out,
                   size_t *outlen);

/* One side of an encrypted stream. Caller-allocated; the fields are private. */
struct am_secure {
    uint8_t key[AM_KEY_BYTES]; /* the cluster key, wiped once the handshake is done */
    uint8_t k_out[AM_KEY_BYTES], k_in[AM_KEY_BYTES];
    uint8_t nonce[32];                     /* ours */
    uint8_t peer[AM_SEAL_HANDSHAKE_BYTES]; /* the peer's handshake, as it arrives */
    size_t peer_len;
    uint64_t n_out, n_in; /* record counters */
    struct am_buf rec;    /* a partial incoming record (at most one) */
    struct am_buf queue;  /* plaintext written before the handshake completed */
    int initiator;
    int state;
};

/* Sets up s for one connection: initiator is 1 on the side that connected,
 * 0 on the side that accepted. key is copied. Draws this side's nonce. */
void am_secure_init(struct am_secure *s, const uint8_t key[AM_KEY_BYTES], int initiator);

/* Releases s's buffers and wipes its keys. s may be initialised again. */
void am_secure_free(struct am_secure *s);

/* Appends this side's AM_SEAL_HANDSHAKE_BYTES handshake bytes to out. Call
 * once, before sending anything else. 0 or -ENOMEM. */
int am_secure_start(struct am_secure *s, struct am_buf *out);

/* Feeds n bytes received from the peer, split anywhere. Appends the plaintext
 * of every complete record to plain; a partial record is kept inside s.
 * Returns 0, or 1 when this call completed the handshake (the caller then
 * calls am_secure_out(s, NULL, 0, out) to send what was queued). AM_EPROTO
 * when the peer sent a bad magic, a bad record length or a record that fails
 * authentication (wrong key, tampering, replay), -ENOMEM. After an error s is
 * failed: every later call returns AM_EPROTO; close the connection. (Records
 * that opened before the error in the same call are already in plain.) */
int am_secure_in(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *plain);

/* Encrypts n plaintext bytes into records (AM_SEAL_RECORD_MAX bytes each at
 * most) appended to out. Before the handshake completes, the bytes are queued
 * inside s and nothing is appended; after it, any queued bytes go first, so
 * am_secure_out(s, NULL, 0, out) flushes the queue. Returns 0; -ENOBUFS
 * when the queue would exceed AM_SEAL_QUEUE_MAX, -ENOMEM (for both, nothing
 * was queued or appended and s is unchanged); AM_EPROTO if s has failed. */
int am_secure_out(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *out);

/* The read side of a stream in one step: am_secure_in of the n bytes at p
 * into plain and, when that completes the handshake, am_secure_out(s, NULL,
 * 0, out) to release what was written meanwhile. Returns 1 when out may have
 * gained bytes to send, 0, or a negative code (close the connection). */
int am_secure_read(struct am_secure *s, const uint8_t *p, size_t n, struct am_buf *plain,
                   struct am_buf *out);

/* 1 once the handshake completed (and s has not failed), else 0. This does
 * not yet prove the peer holds the key: its first record does. */
int am_secure_ready(const struct am_secure *s);

#endif
