/* fuzz_json.c - libFuzzer target for the command line's conversions: a
 * node's reply (untrusted msgpack) to JSON, and a user's JSON to msgpack.
 *
 * Invariants: am_msgpack_to_json accepts only what am_mp_check_one accepts
 * (one well-formed object, nesting within the limit), in bounded time and
 * memory, and always produces JSON that jansson can parse back;
 * am_json_to_msgpack produces one well-formed msgpack object whenever it
 * succeeds. */
#include "buf.h"
#include "json.h"
#include "mp.h"

#include <jansson.h>
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct am_buf out;
    am_buf_init(&out);
    int rc = am_msgpack_to_json(data, size, &out);
    /* It accepts no more than one well-formed object (it may refuse some of
     * those: a non-string map key whose text exceeds 4 KiB). */
    if (rc == 0)
        CHECK(am_mp_check_one(data, size) == 0);
    if (rc == 0) {
        json_error_t e;
        json_t *j = json_loadb((const char *)out.data, out.len, JSON_DECODE_ANY | JSON_ALLOW_NUL,
                               &e);
        /* Valid JSON always; jansson alone refuses \u0000 inside object keys. */
        CHECK(j != NULL || strstr(e.text, "NUL") != NULL);
        json_decref(j);
    }
    am_buf_close(&out);

    char err[256];
    am_buf_init(&out);
    if (am_json_to_msgpack((const char *)data, size, &out, err, sizeof err) == 0)
        CHECK(am_mp_check_one(out.data, out.len) == 0);
    am_buf_close(&out);
    return 0;
}
