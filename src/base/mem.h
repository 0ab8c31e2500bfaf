/* mem.h - the one allocation hook.
 *
 * All project code allocates through am_malloc/am_calloc/am_realloc/am_free so
 * that tests can install a failing allocator (am_mem_set) and check that every
 * caller handles -ENOMEM. Like uv_replace_allocator this is process-wide, and
 * is set once before any other call. */
#ifndef AM_MEM_H
#define AM_MEM_H

#include <stddef.h>

struct am_allocator {
    void *(*malloc_fn)(size_t size);
    void *(*calloc_fn)(size_t n, size_t size);
    void *(*realloc_fn)(void *p, size_t size);
    void (*free_fn)(void *p);
};

/* Replaces the allocator (borrowed: must outlive every allocation). NULL
 * restores the C library's. */
void am_mem_set(const struct am_allocator *a);

void *am_malloc(size_t size);
void *am_calloc(size_t n, size_t size);
void *am_realloc(void *p, size_t size);
void am_free(void *p);

/* Returns an owned copy of len bytes plus a terminating NUL, or NULL. */
char *am_strndup(const char *s, size_t len);

#endif
