/* addr.c - HOST:PORT parsing (see addr.h). */
#include "addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int am_addr_parse(const char *s, int default_port, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    size_t hl = colon ? (size_t)(colon - s) : strlen(s);
    long port = default_port;
    if (hl == 0 || hl >= sizeof host)
        return -EINVAL;
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (colon) {
        /* Digits only: strtol alone would also take "+80" and " 80". */
        char *end;
        if (!isdigit((unsigned char)colon[1]))
            return -EINVAL;
        errno = 0;
        port = strtol(colon + 1, &end, 10);
        if (errno || *end)
            return -EINVAL;
    }
    /* A default port out of range would wrap in htons (65536 becomes 0). */
    if (port < 1 || port > 65535)
        return -EINVAL;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        return inet_pton(AF_INET, "127.0.0.1", &sa->sin_addr) == 1 ? 0 : -EINVAL;
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

void am_addr_format(const struct sockaddr_in *sa, char *out, size_t len)
{
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    snprintf(out, len, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}
