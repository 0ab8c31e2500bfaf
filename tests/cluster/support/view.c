/* view.c - see view.h. */
#include "view.h"

#include "buf.h"
#include "client.h"
#include "err.h"
#include "json.h"

json_t *view_query(const char *addr, int kind, const uint8_t *key, int timeout_ms)
{
    struct am_client *c = NULL;
    if (am_client_open(&c, addr, timeout_ms, NULL, 0))
        return NULL;
    if (key && am_client_set_key(c, key)) {
        am_client_close(c);
        return NULL;
    }
    struct am_buf reply, text;
    int status = -1;
    json_t *j = NULL;
    am_buf_init(&reply);
    am_buf_init(&text);
    if (am_client_simple(c, kind, &reply, &status) == 0 && status == AM_ST_OK &&
        am_msgpack_to_json(reply.data, reply.len, &text) == 0)
        j = json_loadb((const char *)text.data, text.len, 0, NULL);
    am_buf_close(&reply);
    am_buf_close(&text);
    am_client_close(c);
    return j;
}
