/* builtins.c - the actor types every node hosts.
 *
 *   counter  state: an int64.        add N (default 1) -> new value; get -> value
 *   kv       state: one value.       put V -> true; get -> V or nil;
 *                                    del -> true if there was a value, else false
 *   echo     no state.               echo P -> P
 *
 * They decode with the bounded reader of mp.h: payloads come from the network. */
#include "registry.h"

#include "err.h"
#include "mp.h"

#include <stdint.h>

static const uint8_t mp_nil = 0xc0, mp_true = 0xc3, mp_false = 0xc2;

static int unknown_action(struct am_out *out, const struct am_msg *m)
{
    return am_out_error(out, AM_ERR_NO_ACTION, "%.*s has no action '%.*s'", (int)m->type_len,
                        m->type, (int)m->action_len, m->action);
}

static int read_int(const uint8_t *p, size_t len, int64_t *v)
{
    const uint8_t *end = p + len;
    return am_mp_read_int(&p, end, v) == 0 && p == end ? 0 : -1;
}

static int counter_handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    int64_t value = 0, n = 1;
    uint8_t enc[9];
    struct am_buf b = {enc, 0, sizeof enc}; /* fixed buffer: an int64 packs in <= 9 bytes */
    msgpack_packer pk;
    if (m->state_len && read_int(m->state, m->state_len, &value))
        return am_out_error(out, AM_ERR_HANDLER, "stored counter value is not an integer");
    if (am_msg_action_is(m, "add")) {
        if (!(m->payload_len == 1 && m->payload[0] == mp_nil) &&
            read_int(m->payload, m->payload_len, &n))
            return am_out_error(out, AM_ERR_INVALID, "add takes an integer (or nothing for 1)");
        if ((n > 0 && value > INT64_MAX - n) || (n < 0 && value < INT64_MIN - n))
            return am_out_error(out, AM_ERR_INVALID, "counter would overflow");
        value += n;
        am_mp_packer_init(&pk, &b);
        msgpack_pack_int64(&pk, value);
        int rc = am_out_state(out, b.data, b.len);
        return rc ? rc : am_out_reply(out, b.data, b.len);
    }
    if (am_msg_action_is(m, "get")) {
        am_mp_packer_init(&pk, &b);
        msgpack_pack_int64(&pk, value);
        return am_out_reply(out, b.data, b.len);
    }
    return unknown_action(out, m);
}

static int kv_handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    if (am_msg_action_is(m, "put")) {
        int rc = am_out_state(out, m->payload, m->payload_len);
        return rc ? rc : am_out_reply(out, &mp_true, 1);
    }
    if (am_msg_action_is(m, "get")) {
        if (m->state_len == 0)
            return am_out_reply(out, &mp_nil, 1);
        return am_out_reply(out, m->state, m->state_len);
    }
    if (am_msg_action_is(m, "del")) {
        if (m->state_len == 0)
            return am_out_reply(out, &mp_false, 1);
        int rc = am_out_state(out, NULL, 0);
        return rc ? rc : am_out_reply(out, &mp_true, 1);
    }
    return unknown_action(out, m);
}

static int echo_handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    if (am_msg_action_is(m, "echo"))
        return am_out_reply(out, m->payload, m->payload_len);
    return unknown_action(out, m);
}

const struct am_actor_type am_builtin_counter = {"counter", counter_handle, NULL};
const struct am_actor_type am_builtin_kv = {"kv", kv_handle, NULL};
const struct am_actor_type am_builtin_echo = {"echo", echo_handle, NULL};
