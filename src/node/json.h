/* json.h - JSON <-> msgpack for the command line (and later the HTTP surface).
 *
 * JSON is parsed and printed with jansson. msgpack is read only with the
 * bounded am_mp_* cursor functions, because what is printed comes from the
 * network.
 *
 *   JSON             msgpack                msgpack             JSON
 *   integer      ->  int (smallest form)    int, uint <= 2^63-1 integer
 *   real         ->  float64                uint > 2^63-1       real
 *   string       ->  str                    float32/float64     real (NaN/inf: null)
 *   array        ->  array                  str                 string (bad UTF-8 -> U+FFFD)
 *   object       ->  map, str keys          bin                 string, base64 with padding
 *   true/false   ->  bool                   ext                 null
 *   null         ->  nil                    map, any key        object; a non-str key
 *                                                               becomes its JSON text;
 *                                                               on a repeated key the
 *                                                               later value wins
 *
 * Both directions refuse more than AM_MP_MAX_DEPTH nested containers (arrays
 * and objects, an empty innermost one included), counted as am_mp_skip counts
 * them, so whatever am_json_to_msgpack produces passes am_mp_check_one and
 * the node's request decoder. */
#ifndef AM_JSON_H
#define AM_JSON_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

/* Converts one JSON text of len bytes (any value, not only objects; "\u0000"
 * allowed in strings; a repeated object key is an error) into exactly one
 * msgpack object. out's previous contents are replaced; on error out is
 * empty. Returns 0, AM_EINVAL for invalid JSON, AM_ETOOBIG for nesting deeper
 * than AM_MP_MAX_DEPTH, or -ENOMEM; on error a one-line message, such as
 * "line 1 column 5: unexpected token near '}'", goes into err (errlen bytes,
 * may be 0). Integers outside int64 are invalid JSON here (jansson's "too big
 * integer"). */
int am_json_to_msgpack(const char *json, size_t len, struct am_buf *out, char *err, size_t errlen);

/* Converts exactly one msgpack object [p, p+len) into compact JSON text.
 * out's previous contents are replaced by the text and a terminating NUL,
 * which out->len does not count; on error out is empty. Returns 0, AM_EPROTO
 * for bytes that are not exactly one well-formed object (lying lengths,
 * trailing bytes, nesting deeper than AM_MP_MAX_DEPTH) or -ENOMEM. */
int am_msgpack_to_json(const uint8_t *p, size_t len, struct am_buf *out);

#endif
