/* account.c - an example actor type loaded with `amesh node --actors account.so`.
 *
 * A bank account whose state is its balance (a msgpack integer, in cents):
 *
 *   deposit  N   adds N > 0, replies the new balance
 *   withdraw N   subtracts N > 0, replies the new balance; refuses to go
 *                below zero with a handler error, leaving the balance as it was
 *   balance      replies the balance (0 for a new account)
 *
 * It shows the whole plug-in contract: the exported amesh_actor_module, state
 * decoded and encoded with msgpack-c, replies, and errors that leave state
 * unchanged. */
#include <amesh/actor.h>

#include <msgpack.h>
#include <stdint.h>

/* Decodes one msgpack integer from [p, p+len); 0 on success. */
static int read_int(const uint8_t *p, size_t len, int64_t *v)
{
    msgpack_unpacked u;
    size_t off = 0;
    int ok = 0;
    msgpack_unpacked_init(&u);
    /* A state or payload is at most a few bytes here; anything else is refused
     * before msgpack-c could allocate for it (the node already checked that
     * it is one well-formed object). */
    if (len <= 16 && msgpack_unpack_next(&u, (const char *)p, len, &off) == MSGPACK_UNPACK_SUCCESS) {
        if (u.data.type == MSGPACK_OBJECT_POSITIVE_INTEGER && u.data.via.u64 <= INT64_MAX) {
            *v = (int64_t)u.data.via.u64;
            ok = 1;
        } else if (u.data.type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            *v = u.data.via.i64;
            ok = 1;
        }
    }
    msgpack_unpacked_destroy(&u);
    return ok ? 0 : -1;
}

static int reply_int(struct am_out *out, int64_t v, int set_state)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int rc = 0;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (msgpack_pack_int64(&pk, v))
        rc = am_out_error(out, AM_ERR_HANDLER, "out of memory");
    if (rc == 0 && set_state)
        rc = am_out_state(out, sb.data, sb.size);
    if (rc == 0)
        rc = am_out_reply(out, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static int handle(void *data, const struct am_msg *m, struct am_out *out)
{
    (void)data;
    int64_t balance = 0, amount;
    if (m->state_len && read_int(m->state, m->state_len, &balance))
        return am_out_error(out, AM_ERR_HANDLER, "stored balance is not an integer");
    if (am_msg_action_is(m, "balance"))
        return reply_int(out, balance, 0);
    int deposit = am_msg_action_is(m, "deposit");
    if (!deposit && !am_msg_action_is(m, "withdraw"))
        return am_out_error(out, AM_ERR_NO_ACTION, "account has no action '%.*s'",
                            (int)m->action_len, m->action);
    if (read_int(m->payload, m->payload_len, &amount) || amount <= 0)
        return am_out_error(out, AM_ERR_INVALID, "amount must be a positive integer");
    if (deposit) {
        if (balance > INT64_MAX - amount)
            return am_out_error(out, AM_ERR_INVALID, "balance would overflow");
        return reply_int(out, balance + amount, 1);
    }
    if (amount > balance)
        return am_out_error(out, AM_ERR_HANDLER, "insufficient funds: balance %lld, asked %lld",
                            (long long)balance, (long long)amount);
    return reply_int(out, balance - amount, 1);
}

static const struct am_actor_type types[] = {
    {.name = "account", .handle = handle, .data = NULL},
};

/* The symbol the node looks up in the library. */
extern const struct am_actor_module amesh_actor_module;
const struct am_actor_module amesh_actor_module = {
    .abi = AM_ACTOR_ABI,
    .ntypes = sizeof types / sizeof types[0],
    .types = types,
};
