/* Give the pages of pymalloc's empty pools back to the kernel.
 *
 * pymalloc (Objects/obmalloc.c) carves 1 MiB arenas into 16 KiB pools of
 * one size class each. A pool whose last object is freed goes on its
 * arena's free list, but its pages stay resident; only an arena whose
 * every pool is empty is unmapped. After `rm -rf` of a big tree a few
 * long-lived objects keep most arenas: the stdlib with site-packages left
 * 45 arenas (47 MB) holding 8.4 MB of objects and 32 MB of empty pools
 * (docs/memory.md, stop 25 and 27).
 *
 * This module knows the arenas because it is pymalloc's arena allocator
 * (PyObject_SetArenaAllocator, public API): it wraps the one installed
 * before it and records each arena it hands out. trim() looks at the
 * header of every pool of those arenas and, for each empty one, marks it
 * uninitialised (szidx = DUMMY_SIZE_IDX, as pymalloc marks a pool it
 * carves) and gives back every page of it but the first, which keeps the
 * header and the free-list link. When pymalloc takes the pool again it
 * sees the mark and initialises it from scratch, writing each block before
 * it hands it out; no state of an empty pool lives past its first page
 * (POOL_OVERHEAD plus the first two blocks).
 *
 * Every pymalloc call and every call of the arena allocator happens with
 * the GIL held, and so does all of trim(): it never releases the GIL and
 * never calls into Python, so no pool changes state while it looks at it,
 * and no arena is unmapped under it.
 *
 * The pool header is CPython's private layout (3.10 to 3.13, 64-bit, with
 * the radix tree and so 16 KiB pools). A pool is touched only if its
 * header is self-consistent for that layout (see pool_is_empty); with any
 * other layout nothing matches and trim() does nothing. install() refuses
 * other Pythons; pools.py installs only when pymalloc serves the objects.
 * The layout was checked against CPython's Include/internal/pycore_obmalloc.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

/* Objects/obmalloc.c, struct pool_header. */
struct pool_header {
    union { void *_padding; unsigned int count; } ref;  /* live blocks */
    void *freeblock;                    /* first free block */
    struct pool_header *nextpool;       /* next pool of the list it is on */
    struct pool_header *prevpool;
    unsigned int arenaindex;            /* the arena_object of its arena */
    unsigned int szidx;                 /* size class: blocks of (szidx + 1) * 16 bytes */
    unsigned int nextoffset;            /* first never-used block */
    unsigned int maxnextoffset;         /* POOL_SIZE - block size */
};

#define POOL_SIZE ((uintptr_t)16384)          /* POOL_BITS 14 (USE_LARGE_POOLS) */
#define POOL_OVERHEAD ((unsigned int)48)      /* the header, rounded to ALIGNMENT */
#define ALIGNMENT_SHIFT 4                     /* 16-byte blocks steps */
#define NB_SMALL_SIZE_CLASSES 32              /* SMALL_REQUEST_THRESHOLD 512 / 16 */
#define DUMMY_SIZE_IDX 0xffffu                /* "header not initialised" */

typedef struct {
    uintptr_t start;
    size_t size;
} arena_t;

static PyObjectArenaAllocator wrapped;   /* the allocator installed before ours */
static int installed;
static arena_t *arenas;                  /* the arenas handed out since install() */
static size_t n_arenas, cap_arenas;
static long page_size;

static void *
arena_alloc(void *ctx, size_t size)
{
    void *p = wrapped.alloc(wrapped.ctx, size);
    if (p == NULL)
        return NULL;
    if (n_arenas == cap_arenas) {
        size_t cap = cap_arenas ? 2 * cap_arenas : 64;
        /* The raw domain is malloc: never pymalloc, so no recursion. */
        arena_t *grown = PyMem_RawRealloc(arenas, cap * sizeof(arena_t));
        if (grown == NULL)
            return p;        /* not recorded: that arena is never trimmed */
        arenas = grown;
        cap_arenas = cap;
    }
    arenas[n_arenas].start = (uintptr_t)p;
    arenas[n_arenas].size = size;
    n_arenas++;
    return p;
}

static void
arena_free(void *ctx, void *ptr, size_t size)
{
    for (size_t i = 0; i < n_arenas; i++) {
        if (arenas[i].start == (uintptr_t)ptr) {
            arenas[i] = arenas[--n_arenas];
            break;
        }
    }
    wrapped.free(wrapped.ctx, ptr, size);
}

/* An empty pool that pymalloc has used: its header says so in every field
 * that the layout fixes. A full or partly used pool, a pool never carved
 * (zero pages) and one trimmed before (DUMMY_SIZE_IDX) are all refused. */
static int
pool_is_empty(const struct pool_header *pool)
{
    if (pool->ref.count != 0 || pool->szidx >= NB_SMALL_SIZE_CLASSES)
        return 0;
    unsigned int size = (pool->szidx + 1) << ALIGNMENT_SHIFT;
    if (pool->maxnextoffset != POOL_SIZE - size)
        return 0;
    if (pool->nextoffset < POOL_OVERHEAD + size || pool->nextoffset > POOL_SIZE
        || (pool->nextoffset - POOL_OVERHEAD) % size != 0)
        return 0;
    uintptr_t base = (uintptr_t)pool;
    uintptr_t free = (uintptr_t)pool->freeblock;
    if (free < base + POOL_OVERHEAD || free >= base + pool->nextoffset
        || (free - base - POOL_OVERHEAD) % size != 0)
        return 0;
    if ((uintptr_t)pool->nextpool % POOL_SIZE != 0)
        return 0;
    return 1;
}

static PyObject *
pools_install(PyObject *self, PyObject *unused)
{
#if PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x030E0000 || SIZEOF_VOID_P != 8 \
    || defined(Py_GIL_DISABLED)
    PyErr_SetString(PyExc_NotImplementedError,
                    "pool headers are known for 64-bit CPython 3.10-3.13 with the GIL only");
    return NULL;
#endif
    if (!installed) {
        page_size = sysconf(_SC_PAGESIZE);
        if (page_size <= 0 || POOL_SIZE % (uintptr_t)page_size != 0) {
            PyErr_SetString(PyExc_OSError, "page size does not divide the pool size");
            return NULL;
        }
        PyObjectArenaAllocator mine = {NULL, arena_alloc, arena_free};
        PyObject_GetArenaAllocator(&wrapped);
        PyObject_SetArenaAllocator(&mine);
        installed = 1;
    }
    Py_RETURN_NONE;
}

/* The empty pools not given back yet, in the arenas known. */
static size_t
count_empty(void)
{
    size_t n = 0;
    for (size_t i = 0; i < n_arenas; i++) {
        uintptr_t end = arenas[i].start + arenas[i].size;
        uintptr_t p = (arenas[i].start + POOL_SIZE - 1) & ~(POOL_SIZE - 1);
        for (; p + POOL_SIZE <= end; p += POOL_SIZE)
            n += pool_is_empty((const struct pool_header *)p);
    }
    return n;
}

/* trim(limit, minimum) -> (empty pools given back now, bytes given back,
 * empty pools seen that were given back before, arenas known, madvise
 * failures). Gives back nothing unless at least `minimum` empty pools wait,
 * and at most `limit`: each is a madvise call (2.4 us here), and the GIL is
 * held throughout (see the top of this file). */
static PyObject *
pools_trim(PyObject *self, PyObject *args)
{
    Py_ssize_t limit, minimum;
    if (!PyArg_ParseTuple(args, "nn", &limit, &minimum))
        return NULL;
    size_t trimmed = 0, bytes = 0, before = 0, failed = 0;
    uintptr_t tail = POOL_SIZE - (uintptr_t)page_size;
    if ((Py_ssize_t)count_empty() < minimum)
        limit = 0;
    for (size_t i = 0; i < n_arenas; i++) {
        uintptr_t end = arenas[i].start + arenas[i].size;
        uintptr_t p = (arenas[i].start + POOL_SIZE - 1) & ~(POOL_SIZE - 1);
        for (; p + POOL_SIZE <= end; p += POOL_SIZE) {
            struct pool_header *pool = (struct pool_header *)p;
            if (pool->ref.count == 0 && pool->szidx == DUMMY_SIZE_IDX) {
                before++;
                continue;
            }
            if (!pool_is_empty(pool) || (Py_ssize_t)(trimmed + failed) >= limit)
                continue;
            /* Mark first: if the madvise fails, pymalloc still reinitialises
             * the pool, which is always correct. */
            pool->szidx = DUMMY_SIZE_IDX;
            if (madvise((void *)(p + (uintptr_t)page_size), tail, MADV_DONTNEED) == 0) {
                trimmed++;
                bytes += tail;
            } else {
                failed++;
            }
        }
    }
    return Py_BuildValue("(nnnnn)", (Py_ssize_t)trimmed, (Py_ssize_t)bytes,
                         (Py_ssize_t)before, (Py_ssize_t)n_arenas, (Py_ssize_t)failed);
}

/* A pool in use: its header is consistent with the layout, and it holds
 * between 1 and its capacity of blocks. */
static unsigned int
pool_free_blocks(const struct pool_header *pool, unsigned int *size_out)
{
    if (pool->ref.count == 0 || pool->szidx >= NB_SMALL_SIZE_CLASSES)
        return 0;
    unsigned int size = (pool->szidx + 1) << ALIGNMENT_SHIFT;
    unsigned int capacity = (unsigned int)((POOL_SIZE - POOL_OVERHEAD) / size);
    if (pool->maxnextoffset != POOL_SIZE - size || pool->ref.count > capacity
        || pool->nextoffset > POOL_SIZE)
        return 0;
    *size_out = size;
    return capacity - pool->ref.count;
}

/* room() -> (free bytes in pools in use, empty pools still resident,
 * empty pools given back, arena bytes known): where pymalloc's arenas hold
 * no object. Free blocks of a pool in use are reused by objects of their
 * size class only; an empty pool still resident (not trimmed yet) is
 * 16 KiB; one given back keeps its first page. Holds the GIL, as trim(). */
static PyObject *
pools_room(PyObject *self, PyObject *unused)
{
    size_t free_bytes = 0, empty = 0, trimmed = 0, arena_bytes = 0;
    for (size_t i = 0; i < n_arenas; i++) {
        uintptr_t end = arenas[i].start + arenas[i].size;
        uintptr_t p = (arenas[i].start + POOL_SIZE - 1) & ~(POOL_SIZE - 1);
        arena_bytes += arenas[i].size;
        for (; p + POOL_SIZE <= end; p += POOL_SIZE) {
            const struct pool_header *pool = (const struct pool_header *)p;
            unsigned int size = 0;
            if (pool->ref.count == 0 && pool->szidx == DUMMY_SIZE_IDX)
                trimmed++;
            else if (pool_is_empty(pool))
                empty++;
            else
                free_bytes += (size_t)pool_free_blocks(pool, &size) * size;
        }
    }
    return Py_BuildValue("(nnnn)", (Py_ssize_t)free_bytes, (Py_ssize_t)empty,
                         (Py_ssize_t)trimmed, (Py_ssize_t)arena_bytes);
}

static PyMethodDef methods[] = {
    {"room", pools_room, METH_NOARGS,
     "room(): (free bytes in pools in use, empty pools resident, empty pools "
     "given back, arena bytes), over the arenas made since install()."},
    {"install", pools_install, METH_NOARGS,
     "Become pymalloc's arena allocator (once), to know the arenas."},
    {"trim", pools_trim, METH_VARARGS,
     "trim(limit, minimum): give back all pages but the first of up to limit "
     "empty pools, if at least minimum wait. "
     "Returns (pools, bytes, pools trimmed before, arenas, madvise failures)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pools",
    "pymalloc's empty pools given back to the kernel (pools.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__pools(void)
{
    return PyModule_Create(&module);
}
