/* cli_client.h - the client subcommands' parts that tests call directly:
 * argument parsing, payload reading and the text form of a status reply.
 * The subcommands themselves (am_cmd_call, am_cmd_status) are in commands.h.
 *
 * Arguments: flags may come before, between or after the positionals, as
 * "--flag VALUE" or "--flag=VALUE"; "--" ends the flags. An argument that
 * starts with "-" followed by a digit, and "-" alone, are positionals, so a
 * negative number payload needs no "--" (no flag starts with a digit). */
#ifndef AM_CLI_CLIENT_H
#define AM_CLI_CLIENT_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define AM_CLI_DEFAULT_NODE "127.0.0.1:7946"
#define AM_CLI_DEFAULT_TIMEOUT_MS 10000

/* Largest payload read from stdin or a file. The node's frame limit is the
 * real bound; this one only keeps a mistaken "@/dev/zero" from eating memory. */
#define AM_CLI_MAX_PAYLOAD (64u << 20)

/* Every pointer borrows from the argv given to the parser. */
struct am_call_args {
    int kind;         /* AM_MSG_CALL or AM_MSG_CAST, from argv[0] */
    int help;         /* -h/--help: print the help; nothing else is filled */
    const char *node; /* HOST:PORT, already checked by am_addr_parse */
    int timeout_ms;   /* >= 1 */
    const char *type, *id, *action;
    const char *payload; /* JSON text, "-" (stdin), "@FILE", or NULL: send nil */
};
/* --key-file (or AMESH_KEY_FILE) is kept by the parser for the connection
 * the subcommand opens next; it is not part of these structs. */

struct am_status_args {
    int help;
    int json;
    const char *node;
    int timeout_ms;
};

/* Parse the arguments of "call"/"cast" and "status" (argv[0] is the
 * subcommand name; argv is not modified). Return 0, or -EINVAL with a
 * one-line message in err (errlen bytes) for a usage error: unknown flag,
 * missing or extra positional, missing flag value, bad address or timeout,
 * a TYPE/ID/ACTION outside the protocol's limits. */
int am_call_args_parse(struct am_call_args *a, int argc, char **argv, char *err, size_t errlen);
int am_status_args_parse(struct am_status_args *a, int argc, char **argv, char *err, size_t errlen);

/* The JSON text a payload argument stands for, into out (replaced): the
 * standard input for "-", the contents of FILE for "@FILE", else arg itself.
 * Returns 0, -ENOMEM, AM_ETOOBIG over AM_CLI_MAX_PAYLOAD, or a negated errno
 * when the file cannot be read, with a one-line message in err. */
int am_cli_payload_read(const char *arg, struct am_buf *out, char *err, size_t errlen);

/* The text form of a status reply (exactly one msgpack object [p, p+len)):
 * one "key: value" line per leaf of the map, in the order received, nested
 * map keys joined with dots ("store.commits: 12"). A str value prints as is,
 * any other value (array, empty map, ...) as compact JSON; a non-str key as
 * its JSON text. Control characters print as '?', so a node cannot send
 * terminal escapes. A reply that is not a map prints as one line of JSON.
 * Appends to out (not NUL-terminated). Returns 0, AM_EPROTO or -ENOMEM. */
int am_status_text(const uint8_t *p, size_t len, struct am_buf *out);

/* The text form of a MEMBERS reply: a header line, then one line per member
 * (name, address, state, incarnation in aligned columns), control
 * characters printed as '?'. Appends to out. Returns 0, AM_EPROTO for a
 * reply of another shape, or -ENOMEM; on error out is left as it was. */
int am_members_text(const uint8_t *p, size_t len, struct am_buf *out);

/* The text form of a RING reply: a line with the version, the points per
 * member and the member count, then one line per member with its share of
 * the key space in percent. Appends to out; on error (AM_EPROTO, -ENOMEM)
 * out is left as it was. */
int am_ring_text(const uint8_t *p, size_t len, struct am_buf *out);

/* The text form of an ACTORS reply: one key per line, then a note when the
 * list was cut. AM_EPROTO for a reply not of that shape. */
int am_actors_text(const uint8_t *p, size_t len, struct am_buf *out);

#endif
