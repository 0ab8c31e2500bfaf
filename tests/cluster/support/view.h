/* view.h - asking a running node for its STATUS or MEMBERS as JSON, for
 * the process tests that watch membership views. */
#ifndef AM_TEST_VIEW_H
#define AM_TEST_VIEW_H

#include <jansson.h>
#include <stdint.h>

/* One request with no field (AM_MSG_STATUS or AM_MSG_MEMBERS) to the node
 * at addr, its reply as JSON (caller json_decref's it); NULL when the node
 * does not answer within timeout_ms or answers an error. With key (32
 * bytes) the connection is sealed with it. */
json_t *view_query(const char *addr, int kind, const uint8_t *key, int timeout_ms);

#endif
