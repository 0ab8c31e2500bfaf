/* registry.c - actor type registry and shared-library loading (see registry.h).
 *
 * A node hosts a handful of types, so the registry is a small array searched
 * linearly; lookups happen once per activation, not per message. */
#include "registry.h"

#include "err.h"
#include "mem.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* More types than this in one node is a configuration mistake, not a need. */
#define MAX_TYPES 256
#define MAX_LIBS 32

struct am_registry {
    const struct am_actor_type *types[MAX_TYPES];
    size_t ntypes;
    void *libs[MAX_LIBS];
    size_t nlibs;
};

int am_registry_new(struct am_registry **out)
{
    *out = am_calloc(1, sizeof **out);
    return *out ? 0 : -ENOMEM;
}

void am_registry_free(struct am_registry *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nlibs; i++)
        dlclose(r->libs[i]);
    am_free(r);
}

static int valid_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return 1;
}

int am_registry_add(struct am_registry *r, const struct am_actor_type *t, char *err,
                    size_t errlen)
{
    if (!t || !valid_name(t->name) || !t->handle) {
        snprintf(err, errlen, "actor type name '%s' is invalid (1 to 63 of a-z 0-9 _ . -)",
                 t && t->name ? t->name : "(null)");
        return -EINVAL;
    }
    if (am_registry_find(r, t->name, strlen(t->name))) {
        snprintf(err, errlen, "actor type '%s' is registered twice", t->name);
        return -EEXIST;
    }
    if (r->ntypes == MAX_TYPES) {
        snprintf(err, errlen, "more than %d actor types", MAX_TYPES);
        return -ENOSPC;
    }
    r->types[r->ntypes++] = t;
    return 0;
}

int am_registry_add_builtins(struct am_registry *r)
{
    char err[128];
    const struct am_actor_type *b[] = {&am_builtin_counter, &am_builtin_kv, &am_builtin_echo};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        int rc = am_registry_add(r, b[i], err, sizeof err);
        if (rc)
            return rc;
    }
    return 0;
}

int am_registry_load(struct am_registry *r, const char *path, char *err, size_t errlen)
{
    if (r->nlibs == MAX_LIBS) {
        snprintf(err, errlen, "%s: more than %d actor libraries", path, MAX_LIBS);
        return -ENOSPC;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "%s: cannot load: %s", path, dlerror());
        return -ENOENT;
    }
    const struct am_actor_module *m = dlsym(h, "amesh_actor_module");
    if (!m) {
        snprintf(err, errlen, "%s: exports no amesh_actor_module", path);
        dlclose(h);
        return -EINVAL;
    }
    if (m->abi != AM_ACTOR_ABI) {
        snprintf(err, errlen, "%s: built for actor ABI %u, this node speaks %d", path, m->abi,
                 AM_ACTOR_ABI);
        dlclose(h);
        return -EINVAL;
    }
    size_t before = r->ntypes;
    for (unsigned i = 0; i < m->ntypes; i++) {
        char why[160];
        int rc = am_registry_add(r, &m->types[i], why, sizeof why);
        if (rc) {
            snprintf(err, errlen, "%s: %s", path, why);
            r->ntypes = before;
            dlclose(h);
            return rc;
        }
    }
    r->libs[r->nlibs++] = h;
    return 0;
}

const struct am_actor_type *am_registry_find(const struct am_registry *r, const char *name,
                                             size_t len)
{
    for (size_t i = 0; i < r->ntypes; i++) {
        const char *n = r->types[i]->name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return r->types[i];
    }
    return NULL;
}

size_t am_registry_count(const struct am_registry *r)
{
    return r->ntypes;
}

const struct am_actor_type *am_registry_at(const struct am_registry *r, size_t i)
{
    return i < r->ntypes ? r->types[i] : NULL;
}
