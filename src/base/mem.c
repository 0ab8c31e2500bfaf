/* mem.c - the allocation hook (see mem.h). */
#include "mem.h"

#include <stdlib.h>
#include <string.h>

static const struct am_allocator libc_allocator = {malloc, calloc, realloc, free};
static const struct am_allocator *allocator = &libc_allocator;

void am_mem_set(const struct am_allocator *a)
{
    allocator = a ? a : &libc_allocator;
}

void *am_malloc(size_t size)
{
    return allocator->malloc_fn(size);
}

void *am_calloc(size_t n, size_t size)
{
    return allocator->calloc_fn(n, size);
}

void *am_realloc(void *p, size_t size)
{
    return allocator->realloc_fn(p, size);
}

void am_free(void *p)
{
    if (p)
        allocator->free_fn(p);
}

char *am_strndup(const char *s, size_t len)
{
    char *p = am_malloc(len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
