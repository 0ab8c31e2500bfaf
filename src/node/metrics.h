/* metrics.h - the node's counters in the Prometheus text exposition format
 * (version 0.0.4), for GET /metrics (http.h).
 *
 * Everything but the HTTP counters is read from the node's STATUS map
 * (docs/protocol.md, "STATUS"), through a fixed table of metric names, types
 * and help texts: every name starts with amesh_, counters end in _total,
 * and each family has its # HELP and # TYPE lines. A STATUS key the table
 * does not know is not exported; a key the table knows and STATUS lacks is
 * left out too. */
#ifndef AM_METRICS_H
#define AM_METRICS_H

#include "buf.h"
#include "http.h"

#include <stddef.h>
#include <stdint.h>

#define AM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Appends the exposition of status (one msgpack map as STATUS packs it, or
 * NULL) and of the HTTP stats (or NULL) to out. Returns 0 or -ENOMEM; a
 * status that is not a well-formed map is skipped (AM_EPROTO is not an
 * error here: the HTTP part is still written). */
int am_metrics_render(struct am_buf *out, const uint8_t *status, size_t status_len,
                      const struct am_http_stats *http);

#endif
