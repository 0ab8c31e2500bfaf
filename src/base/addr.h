/* addr.h - parsing HOST:PORT for IPv4 literals and "localhost". */
#ifndef AM_ADDR_H
#define AM_ADDR_H

#include <netinet/in.h>

/* Parses "A.B.C.D:PORT" (or "localhost:PORT") into sa. Returns 0 or -EINVAL.
 * A missing ":PORT" uses default_port when it is non-zero. */
int am_addr_parse(const char *s, int default_port, struct sockaddr_in *sa);

/* Writes "A.B.C.D:PORT" into out (at least 22 bytes). */
void am_addr_format(const struct sockaddr_in *sa, char *out, size_t len);

#endif
