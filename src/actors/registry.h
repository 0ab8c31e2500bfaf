/* registry.h - the actor types a node can host.
 *
 * Types come from the built-ins (counter, kv, echo) and from shared libraries
 * given with --actors. The registry owns the dlopen handles and keeps them
 * open until it is freed, so type names and handlers stay valid. */
#ifndef AM_REGISTRY_H
#define AM_REGISTRY_H

#include <amesh/actor.h>
#include <stddef.h>

struct am_registry;

int am_registry_new(struct am_registry **out);
void am_registry_free(struct am_registry *r); /* NULL is a no-op */

/* Adds a type (borrowed: must outlive the registry). Refuses a bad name
 * (1..63 bytes of [a-z0-9_.-]) or a name already registered: -EINVAL /
 * -EEXIST with a message in err. */
int am_registry_add(struct am_registry *r, const struct am_actor_type *t, char *err,
                    size_t errlen);

/* Adds counter, kv and echo. */
int am_registry_add_builtins(struct am_registry *r);

/* Loads every type of the shared library at path (its exported
 * amesh_actor_module). Errors name the file and the problem. */
int am_registry_load(struct am_registry *r, const char *path, char *err, size_t errlen);

/* The type of that name, or NULL. */
const struct am_actor_type *am_registry_find(const struct am_registry *r, const char *name,
                                             size_t len);

/* Number of registered types and the i-th one, for listing. */
size_t am_registry_count(const struct am_registry *r);
const struct am_actor_type *am_registry_at(const struct am_registry *r, size_t i);

/* The built-in types (builtins.c). */
extern const struct am_actor_type am_builtin_counter, am_builtin_kv, am_builtin_echo;

#endif
