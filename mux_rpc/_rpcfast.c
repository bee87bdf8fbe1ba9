/* Optional accelerator for mux_rpc's dispatcher (built by
 * `python scripts/build_accelerators.py`; mux_rpc._dispatch falls back to pure
 * Python without it, or when MUX_RPC_PURE_PYTHON=1).
 *
 * Theory of operation
 * -------------------
 * mux_rpc._dispatch.Dispatcher is the reference: every rule (the envelope
 * checks, the error replies, BAD_RESULT, logging) is stated there, in Python.
 * This module only runs the hot case, and answers DEFER ("not mine") for
 * everything else *before calling anything*, so the Python path then handles
 * the message exactly as if C had never seen it:
 *
 *   Core(methods, notifications, fail_call, encode_response, packer, defer,
 *        slow_obj, slow_inline)
 *       bound per Dispatcher (the two spec dicts are the Dispatcher's own
 *       objects, looked up on every call: no stale tables).
 *
 *   Core.dispatch_inline(payload)      == Dispatcher.dispatch_inline
 *   Core.dispatch_many(payloads, start=0) -> (replies, stop)
 *                                      == Dispatcher.dispatch_many, minus the
 *                                         handled counter (Core.handled)
 *   Core.dispatch_obj(msg)             == Dispatcher.dispatch_obj: [0, id, str,
 *       list] / [2, str, list] for a sync handler with the right arity is
 *       called here; anything else goes to slow_obj(msg) (the Python method).
 *
 * The hot case: a msgpack array of 4 (request) or 3 (notification) whose kind
 * is the integer 0 / 2, msgid an integer in [0, 2**32), method a str naming a
 * sync handler, params an array whose length fits [min_args, max_args], the
 * whole payload one valid msgpack value with no trailing bytes.
 *
 *   decode   a subset of msgpack (nil, bool, ints, float32/64, str, bin,
 *            array, map), building what msgpack.unpackb(raw=False,
 *            strict_map_key=False) builds. A malformed envelope or payload ->
 *            DEFER, as in Python; params it cannot build (ext types, nesting
 *            deeper than MAX_DEPTH, ...) -> that one payload goes through
 *            slow_inline(payload), the Python method, which decides.
 *   call     func(*params) by vectorcall; an Exception becomes
 *            fail_call(spec, msgid, exc) (the handler ran: not deferred), any
 *            other BaseException propagates, as in Python.
 *   encode   [1, msgid, nil, result] byte-identical to
 *            msgpack.Packer(use_bin_type=True) for exact None, bool, int
 *            (-2**63 .. 2**64-1), float, str, bytes, bytearray, list, tuple,
 *            dict, nested up to MAX_DEPTH; any other value (or a str that is
 *            not encodable) -> encode_response(msgid, result, packer), the
 *            Python encoder with its BAD_RESULT rule.
 *
 * Spec fields (func, is_async, min_args, max_args) of the frozen MethodSpec
 * are cached per spec object, keyed by identity with a strong reference, and
 * method name strs by their wire bytes; the spec itself is looked up in the
 * dict on every message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>   /* T_OBJECT_EX: __slots__ members (the run engine) */
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64      /* deeper values: the Python path (msgpack's limits) */
#define STACK_ARGS 16     /* params decoded onto the C stack up to this count */
#define CACHE_SIZE 32     /* spec field cache entries (power of two) */
#define NAME_SLOTS 16     /* method name cache entries (power of two) */
#define NAME_LEN_MAX 40       /* longest name (UTF-8 bytes) kept there */

/* ---- output buffer ------------------------------------------------------------ */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Out;

static int
out_grow(Out *o, Py_ssize_t need)
{
    Py_ssize_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + need) {
        if (cap > PY_SSIZE_T_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = PyMem_Realloc(o->p, (size_t)cap);
    if (p == NULL)
        return -1;
    o->p = p;
    o->cap = cap;
    return 0;
}

#define RESERVE(o, n) do { if ((o)->len + (Py_ssize_t)(n) > (o)->cap && out_grow((o), (n)) < 0) return 1; } while (0)

/* A run's replies encoded one after the other into one buffer (the run
 * engine's joined replies, HostConfig.coalesce_replies): no bytes object per
 * reply. ends[i]: where reply i ends in buf. */
typedef struct {
    Out buf;
    Py_ssize_t *ends;
    Py_ssize_t n, cap;
} Collect;

/* one more reply ends at buf.len: 0, or -1 with MemoryError */
static int
collect_end(Collect *col)
{
    if (col->n == col->cap) {
        Py_ssize_t cap = col->cap ? col->cap * 2 : 64;
        Py_ssize_t *e = PyMem_Realloc(col->ends, (size_t)cap * sizeof(Py_ssize_t));
        if (e == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        col->ends = e;
        col->cap = cap;
    }
    col->ends[col->n++] = col->buf.len;
    return 0;
}

/* bytes (a reply made elsewhere: an error reply, msgpack's Packer) appended */
static int
collect_bytes(Collect *col, PyObject *b)
{
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    if (col->buf.len + n > col->buf.cap && out_grow(&col->buf, n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(col->buf.p + col->buf.len, PyBytes_AS_STRING(b), (size_t)n);
    col->buf.len += n;
    return collect_end(col);
}

/* empty again; memory beyond 1 MiB given back (a big run went by) */
static void
collect_reset(Collect *col)
{
    col->buf.len = 0;
    col->n = 0;
    if (col->buf.cap > (1 << 20)) {
        PyMem_Free(col->buf.p);
        col->buf.p = NULL;
        col->buf.cap = 0;
    }
    if (col->cap > 4096) {
        PyMem_Free(col->ends);
        col->ends = NULL;
        col->cap = 0;
    }
}

static inline void put1(Out *o, uint8_t b) { o->p[o->len++] = (char)b; }
static inline void put2(Out *o, uint16_t v) { put1(o, (uint8_t)(v >> 8)); put1(o, (uint8_t)v); }
static inline void put4(Out *o, uint32_t v) { put2(o, (uint16_t)(v >> 16)); put2(o, (uint16_t)v); }
static inline void put8(Out *o, uint64_t v) { put4(o, (uint32_t)(v >> 32)); put4(o, (uint32_t)v); }

/* msgpack's pack_template.h rules: the smallest form for the value. */
static inline void
enc_uint(Out *o, uint64_t u)   /* RESERVE(9) done by the caller */
{
    if (u < 0x80) put1(o, (uint8_t)u);
    else if (u < 0x100) { put1(o, 0xcc); put1(o, (uint8_t)u); }
    else if (u < 0x10000) { put1(o, 0xcd); put2(o, (uint16_t)u); }
    else if (u < 0x100000000ULL) { put1(o, 0xce); put4(o, (uint32_t)u); }
    else { put1(o, 0xcf); put8(o, u); }
}

static inline void
enc_int(Out *o, long long x)
{
    if (x >= 0) { enc_uint(o, (uint64_t)x); return; }
    if (x >= -32) put1(o, (uint8_t)(int8_t)x);
    else if (x >= -128) { put1(o, 0xd0); put1(o, (uint8_t)(int8_t)x); }
    else if (x >= -32768) { put1(o, 0xd1); put2(o, (uint16_t)(int16_t)x); }
    else if (x >= -2147483648LL) { put1(o, 0xd2); put4(o, (uint32_t)(int32_t)x); }
    else { put1(o, 0xd3); put8(o, (uint64_t)x); }
}

static inline void
enc_head(Out *o, Py_ssize_t n, uint8_t fix, Py_ssize_t fixmax, uint8_t b8, uint8_t b16)
{   /* b8 == 0: no 8-bit form (arrays, maps); b16 + 1 is the 32-bit form */
    if (n < fixmax) put1(o, (uint8_t)(fix | n));
    else if (b8 && n < 0x100) { put1(o, b8); put1(o, (uint8_t)n); }
    else if (n < 0x10000) { put1(o, b16); put2(o, (uint16_t)n); }
    else { put1(o, (uint8_t)(b16 + 1)); put4(o, (uint32_t)n); }
}

/* 0: encoded; 1: not encodable here (no exception left set; o->len is junk). */
static int
enc(Out *o, PyObject *v, int depth)
{
    PyTypeObject *t = Py_TYPE(v);
    RESERVE(o, 9);
    if (v == Py_None) { put1(o, 0xc0); return 0; }
    if (v == Py_True) { put1(o, 0xc3); return 0; }
    if (v == Py_False) { put1(o, 0xc2); return 0; }
    if (t == &PyLong_Type) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow == 0) {
            if (x == -1 && PyErr_Occurred()) { PyErr_Clear(); return 1; }
            enc_int(o, x);
            return 0;
        }
        if (overflow < 0)
            return 1;
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 1; }
        enc_uint(o, u);
        return 0;
    }
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        put1(o, 0xcb);
        put8(o, bits);
        return 0;
    }
    const char *s;
    Py_ssize_t n;
    if (t == &PyUnicode_Type) {
        s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) { PyErr_Clear(); return 1; }
        if (n > 0xFFFFFFFFLL) return 1;
        enc_head(o, n, 0xa0, 32, 0xd9, 0xda);
        goto raw;
    }
    if (t == &PyBytes_Type) {
        s = PyBytes_AS_STRING(v);
        n = PyBytes_GET_SIZE(v);
        goto bin;
    }
    if (t == &PyByteArray_Type) {
        s = PyByteArray_AS_STRING(v);
        n = PyByteArray_GET_SIZE(v);
        goto bin;
    }
    if (depth >= MAX_DEPTH)
        return 1;
    if (t == &PyList_Type || t == &PyTuple_Type) {
        PyObject **items = t == &PyList_Type ? ((PyListObject *)v)->ob_item
                                             : ((PyTupleObject *)v)->ob_item;
        n = Py_SIZE(v);
        if (n > 0xFFFFFFFFLL) return 1;
        enc_head(o, n, 0x90, 16, 0, 0xdc);
        for (Py_ssize_t i = 0; i < n; i++)   /* no Python code runs here: no mutation */
            if (enc(o, items[i], depth + 1))
                return 1;
        return 0;
    }
    if (t == &PyDict_Type) {
        n = PyDict_GET_SIZE(v);
        if (n > 0xFFFFFFFFLL) return 1;
        enc_head(o, n, 0x80, 16, 0, 0xde);
        Py_ssize_t pos = 0;
        PyObject *k, *val;
        while (PyDict_Next(v, &pos, &k, &val))
            if (enc(o, k, depth + 1) || enc(o, val, depth + 1))
                return 1;
        return 0;
    }
    return 1;
bin:
    if (n > 0xFFFFFFFFLL) return 1;
    enc_head(o, n, 0, 0, 0xc4, 0xc5);   /* fixmax 0: never the fix form */
raw:
    RESERVE(o, n);
    memcpy(o->p + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

/* ---- decoder -------------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} In;

static inline uint16_t ld2(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t ld4(const uint8_t *p) { return ((uint32_t)ld2(p) << 16) | ld2(p + 2); }
static inline uint64_t ld8(const uint8_t *p) { return ((uint64_t)ld4(p) << 32) | ld4(p + 4); }

#define NEED(in, n) ((in)->end - (in)->p >= (Py_ssize_t)(n))

/* Array header: 1 and *n set; 0 if the next value is not an array (or truncated). */
static int
read_array(In *in, Py_ssize_t *n)
{
    if (!NEED(in, 1)) return 0;
    uint8_t b = *in->p;
    if ((b & 0xf0) == 0x90) { *n = b & 0x0f; in->p += 1; return 1; }
    if (b == 0xdc && NEED(in, 3)) { *n = ld2(in->p + 1); in->p += 3; return 1; }
    if (b == 0xdd && NEED(in, 5)) { *n = ld4(in->p + 1); in->p += 5; return 1; }
    return 0;
}

/* Integer: 1 (value in *v), 2 (a uint64 above INT64_MAX), 0 not an integer. */
static int
read_int(In *in, long long *v)
{
    if (!NEED(in, 1)) return 0;
    const uint8_t *p = in->p;
    uint8_t b = p[0];
    if (b < 0x80) { *v = b; in->p += 1; return 1; }
    if (b >= 0xe0) { *v = (int8_t)b; in->p += 1; return 1; }
    static const uint8_t size[] = {1, 2, 4, 8, 1, 2, 4, 8};   /* cc..d3 */
    if (b < 0xcc || b > 0xd3 || !NEED(in, 1 + size[b - 0xcc])) return 0;
    in->p += 1 + size[b - 0xcc];
    switch (b) {
    case 0xcc: *v = p[1]; return 1;
    case 0xcd: *v = ld2(p + 1); return 1;
    case 0xce: *v = ld4(p + 1); return 1;
    case 0xcf: { uint64_t u = ld8(p + 1); if (u > INT64_MAX) return 2; *v = (long long)u; return 1; }
    case 0xd0: *v = (int8_t)p[1]; return 1;
    case 0xd1: *v = (int16_t)ld2(p + 1); return 1;
    case 0xd2: *v = (int32_t)ld4(p + 1); return 1;
    default:   *v = (long long)(int64_t)ld8(p + 1); return 1;
    }
}

/* A str value: 1 and (*s, *n) set; 0 when the next value is not a str (or truncated). */
static int
read_str(In *in, const char **s, Py_ssize_t *n)
{
    if (!NEED(in, 1)) return 0;
    const uint8_t *p = in->p;
    uint8_t b = p[0];
    Py_ssize_t h, len;
    if ((b & 0xe0) == 0xa0) { h = 1; len = b & 0x1f; }
    else if (b == 0xd9 && NEED(in, 2)) { h = 2; len = p[1]; }
    else if (b == 0xda && NEED(in, 3)) { h = 3; len = ld2(p + 1); }
    else if (b == 0xdb && NEED(in, 5)) { h = 5; len = ld4(p + 1); }
    else return 0;
    if (!NEED(in, h + len)) return 0;
    *s = (const char *)p + h;
    *n = len;
    in->p += h + len;
    return 1;
}

/* One msgpack value as msgpack.unpackb(raw=False, strict_map_key=False) builds
 * it; NULL when this decoder defers (a Python error may be set: callers clear). */
static PyObject *
dec(In *in, int depth)
{
    if (!NEED(in, 1)) return NULL;
    const uint8_t *p = in->p;
    uint8_t b = p[0];
    long long iv;
    if (b < 0x80 || b >= 0xe0 || (b >= 0xcc && b <= 0xd3)) {
        int r = read_int(in, &iv);
        if (r == 1) return PyLong_FromLongLong(iv);
        if (r == 2) return PyLong_FromUnsignedLongLong(ld8(p + 1));
        return NULL;
    }
    if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
        const char *s;
        Py_ssize_t n;
        if (!read_str(in, &s, &n)) return NULL;
        return PyUnicode_DecodeUTF8(s, n, NULL);
    }
    Py_ssize_t n, h;
    switch (b) {
    case 0xc0: in->p++; Py_RETURN_NONE;
    case 0xc2: in->p++; Py_RETURN_FALSE;
    case 0xc3: in->p++; Py_RETURN_TRUE;
    case 0xca: {
        if (!NEED(in, 5)) return NULL;
        uint32_t bits = ld4(p + 1);
        float f;
        memcpy(&f, &bits, 4);
        in->p += 5;
        return PyFloat_FromDouble((double)f);
    }
    case 0xcb: {
        if (!NEED(in, 9)) return NULL;
        uint64_t bits = ld8(p + 1);
        double d;
        memcpy(&d, &bits, 8);
        in->p += 9;
        return PyFloat_FromDouble(d);
    }
    case 0xc4: if (!NEED(in, 2)) return NULL; h = 2; n = p[1]; goto bin;
    case 0xc5: if (!NEED(in, 3)) return NULL; h = 3; n = ld2(p + 1); goto bin;
    case 0xc6: if (!NEED(in, 5)) return NULL; h = 5; n = ld4(p + 1); goto bin;
    default: break;
    }
    if (depth >= MAX_DEPTH) return NULL;
    if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd) {
        if (!read_array(in, &n)) return NULL;
        if (n > in->end - in->p) return NULL;   /* each item takes a byte at least */
        PyObject *list = PyList_New(n);
        if (list == NULL) return NULL;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = dec(in, depth + 1);
            if (item == NULL) { Py_DECREF(list); return NULL; }
            PyList_SET_ITEM(list, i, item);
        }
        return list;
    }
    if ((b & 0xf0) == 0x80) { h = 1; n = b & 0x0f; }
    else if (b == 0xde && NEED(in, 3)) { h = 3; n = ld2(p + 1); }
    else if (b == 0xdf && NEED(in, 5)) { h = 5; n = ld4(p + 1); }
    else return NULL;   /* c1, ext, fixext, truncated */
    in->p += h;
    if (n > (in->end - in->p) / 2) return NULL;
    PyObject *dict = PyDict_New();
    if (dict == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = dec(in, depth + 1);
        if (k == NULL) { Py_DECREF(dict); return NULL; }
        PyObject *v = dec(in, depth + 1);
        if (v == NULL) { Py_DECREF(k); Py_DECREF(dict); return NULL; }
        int r = PyDict_SetItem(dict, k, v);   /* unhashable key: error -> defer */
        Py_DECREF(k);
        Py_DECREF(v);
        if (r < 0) { Py_DECREF(dict); return NULL; }
    }
    return dict;
bin:
    if (!NEED(in, h + n)) return NULL;
    in->p += h + n;
    return PyBytes_FromStringAndSize((const char *)p + h, n);
}

/* ---- the per-Dispatcher object ----------------------------------------------------- */

typedef struct {
    PyObject *spec;       /* strong; NULL: empty slot */
    PyObject *func;       /* strong */
    Py_ssize_t min_args;
    Py_ssize_t max_args;  /* -1: no maximum */
    int is_async;
} SpecFields;

typedef struct {   /* wire bytes of a method name -> the str (its hash computed once) */
    PyObject *str;    /* strong; NULL: empty slot */
    Py_ssize_t len;
    char raw[NAME_LEN_MAX];
} NameSlot;

typedef struct {
    PyObject_HEAD
    PyObject *methods;          /* dict: name -> MethodSpec (the Dispatcher's own) */
    PyObject *notifications;    /* dict */
    PyObject *fail_call;        /* Dispatcher.fail_call(spec, msgid, exc) */
    PyObject *encode_response;  /* _dispatch.encode_response(msgid, result, packer) */
    PyObject *packer;           /* the Dispatcher's msgpack.Packer */
    PyObject *defer;            /* _dispatch.DEFER */
    PyObject *slow_obj;         /* the pure Dispatcher.dispatch_obj, bound */
    PyObject *slow_inline;      /* the pure Dispatcher.dispatch_inline, bound */
    unsigned long long handled; /* messages dispatch_many handled */
    Out out;
    SpecFields cache[CACHE_SIZE];
    NameSlot names[NAME_SLOTS];
} CoreObject;

static PyTypeObject Core_Type;
static PyObject *s_func, *s_is_async, *s_min_args, *s_max_args;

/* The spec's fields, cached by identity; NULL (error cleared) if they are not
 * what the fast path understands: the caller defers. */
static SpecFields *
spec_fields(CoreObject *c, PyObject *spec)
{
    SpecFields *e = &c->cache[((uintptr_t)spec >> 4) & (CACHE_SIZE - 1)];
    if (e->spec == spec)
        return e;
    PyObject *func = NULL, *is_async = NULL, *mn = NULL, *mx = NULL;
    SpecFields f = {0};
    func = PyObject_GetAttr(spec, s_func);
    if (func == NULL) goto fail;
    is_async = PyObject_GetAttr(spec, s_is_async);
    if (is_async == NULL || !PyBool_Check(is_async)) goto fail;
    mn = PyObject_GetAttr(spec, s_min_args);
    if (mn == NULL || !PyLong_CheckExact(mn)) goto fail;
    mx = PyObject_GetAttr(spec, s_max_args);
    if (mx == NULL || (mx != Py_None && !PyLong_CheckExact(mx))) goto fail;
    f.min_args = PyLong_AsSsize_t(mn);
    f.max_args = mx == Py_None ? -1 : PyLong_AsSsize_t(mx);
    if (f.min_args < 0 || (mx != Py_None && f.max_args < 0)) goto fail;
    f.is_async = is_async == Py_True;
    Py_DECREF(is_async);
    Py_DECREF(mn);
    Py_DECREF(mx);
    PyObject *old_spec = e->spec, *old_func = e->func;
    Py_INCREF(spec);
    f.spec = spec;
    f.func = func;
    *e = f;
    Py_XDECREF(old_spec);
    Py_XDECREF(old_func);
    return e;
fail:
    PyErr_Clear();
    Py_XDECREF(func);
    Py_XDECREF(is_async);
    Py_XDECREF(mn);
    Py_XDECREF(mx);
    return NULL;
}

/* The method name as a str (new reference), reusing the str decoded last time
 * the same bytes came by: only the string is cached, never what it names. */
static PyObject *
method_name(CoreObject *c, const char *s, Py_ssize_t n)
{
    if (n > NAME_LEN_MAX)
        return PyUnicode_DecodeUTF8(s, n, NULL);
    uint32_t h = (uint32_t)n * 2654435761u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    NameSlot *e = &c->names[(h >> 7) & (NAME_SLOTS - 1)];
    if (e->str != NULL && e->len == n && memcmp(e->raw, s, (size_t)n) == 0)
        return Py_NewRef(e->str);
    PyObject *str = PyUnicode_DecodeUTF8(s, n, NULL);
    if (str == NULL)
        return NULL;
    if (PyObject_Hash(str) == -1) {
        Py_DECREF(str);
        return NULL;
    }
    Py_XSETREF(e->str, Py_NewRef(str));
    e->len = n;
    memcpy(e->raw, s, (size_t)n);
    return str;
}

static PyObject *
msgid_obj(long long msgid)
{
    if (msgid < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(msgid);
}

/* Call the handler (its fields f, of spec) with args; the reply as
 * dispatch_inline returns it: bytes, or None (notification, msgid < 0).
 * NULL: an exception that is not an Exception (it propagates). */
#define COLLECTED ((PyObject *)3)   /* call_and_reply: the reply went into the Collect */

static PyObject *
call_and_reply(CoreObject *c, PyObject *spec, SpecFields *f, PyObject *const *args,
               Py_ssize_t nargs, long long msgid, Collect *col)
{
    PyObject *func = f->func;   /* the caller holds spec; f is its own copy */
    Py_INCREF(func);
    PyObject *result = PyObject_Vectorcall(func, args, (size_t)nargs, NULL);
    Py_DECREF(func);
    if (result == NULL) {
        PyObject *reply = NULL;
        if (PyErr_ExceptionMatches(PyExc_Exception)) {
            PyObject *type, *exc, *tb;
            PyErr_Fetch(&type, &exc, &tb);
            PyErr_NormalizeException(&type, &exc, &tb);
            if (tb != NULL)
                PyException_SetTraceback(exc, tb);
            PyObject *mid = msgid_obj(msgid);
            if (mid != NULL) {
                reply = PyObject_CallFunctionObjArgs(c->fail_call, spec, mid, exc, NULL);
                Py_DECREF(mid);
            }
            Py_XDECREF(type);
            Py_XDECREF(exc);
            Py_XDECREF(tb);
        }
        return reply;
    }
    if (msgid < 0) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    /* encoded into c->out and copied out as bytes, or (col) straight into
     * the run's buffer after the replies before it */
    Out *o = col != NULL ? &col->buf : &c->out;
    Py_ssize_t start = col != NULL ? o->len : 0;
    o->len = start;
    PyObject *reply = NULL;
    if (o->len + 16 <= o->cap || out_grow(o, 16) == 0) {
        put1(o, 0x94);
        put1(o, 0x01);
        enc_uint(o, (uint64_t)msgid);
        put1(o, 0xc0);
        if (enc(o, result, 1) == 0) {
            if (col == NULL)
                reply = PyBytes_FromStringAndSize(o->p, o->len);
            else if (collect_end(col) == 0)
                reply = COLLECTED;
        }
    }
    if (col != NULL && reply == NULL)
        o->len = start;   /* what the encoder wrote of it */
    if (col == NULL && o->cap > (1 << 20)) {   /* a big reply went by: give the memory back */
        PyMem_Free(o->p);
        o->p = NULL;
        o->cap = 0;
    }
    if (reply == NULL) {   /* not encodable here: msgpack's Packer (BAD_RESULT) decides */
        PyErr_Clear();
        PyObject *mid = msgid_obj(msgid);
        if (mid != NULL) {
            PyObject *argv[3] = {mid, result, c->packer};
            reply = PyObject_Vectorcall(c->encode_response, argv, 3, NULL);
            Py_DECREF(mid);
        }
    }
    Py_DECREF(result);
    return reply;   /* bytes, COLLECTED, or NULL */
}

static int
core_alive(CoreObject *c)
{
    if (c->methods == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "mux_rpc._rpcfast.Core was cleared");
        return 0;
    }
    return 1;
}

#define DEFERRED ((PyObject *)1)   /* inline_bytes: Python would DEFER it too */
#define UNSURE ((PyObject *)2)     /* inline_bytes: params this decoder leaves to msgpack */

/* dispatch_inline over raw bytes: bytes / None (new refs), DEFERRED, UNSURE
 * (nothing called for either), or NULL (an exception propagates).
 *
 * DEFERRED is only answered when the Python rules defer whatever the rest of
 * the payload holds: the envelope (as far as read) already fails them, or the
 * payload is not one valid msgpack value. A sync call whose params this
 * decoder cannot build (ext types, deep nesting, ...) is UNSURE: the pure
 * dispatch_inline decides, so the stop index of dispatch_many never moves. */
static PyObject *
inline_bytes(CoreObject *c, const uint8_t *data, Py_ssize_t len, Collect *col)
{
    In in = {data, data + len};
    Py_ssize_t n, np;
    long long kind, msgid = -1;
    PyObject *table;
    if (!read_array(&in, &n) || read_int(&in, &kind) != 1)
        return DEFERRED;
    if (n == 4 && kind == 0) {
        if (read_int(&in, &msgid) != 1 || msgid < 0 || msgid > 0xFFFFFFFFLL)
            return DEFERRED;
        table = c->methods;
    }
    else if (n == 3 && kind == 2)
        table = c->notifications;
    else
        return DEFERRED;
    const char *s;
    Py_ssize_t slen;
    if (!read_str(&in, &s, &slen))
        return DEFERRED;
    PyObject *name = method_name(c, s, slen);
    if (name == NULL) { PyErr_Clear(); return DEFERRED; }
    PyObject *spec = PyDict_GetItemWithError(table, name);
    Py_DECREF(name);
    if (spec == NULL) { PyErr_Clear(); return DEFERRED; }
    Py_INCREF(spec);   /* held until the end: the handler may change the tables */
    SpecFields *f = spec_fields(c, spec);
    if (f == NULL) {   /* not a MethodSpec as the fast path knows it */
        Py_DECREF(spec);
        return UNSURE;
    }
    if (f->is_async || !read_array(&in, &np)
        || np < f->min_args || (f->max_args >= 0 && np > f->max_args)
        || np > in.end - in.p) {
        Py_DECREF(spec);
        return DEFERRED;
    }
    SpecFields fc = *f;   /* the cache slot may change during the call: use a copy */
    PyObject *stack[STACK_ARGS];
    PyObject *list = NULL;
    PyObject **args = stack;
    if (np > STACK_ARGS) {
        list = PyList_New(np);
        if (list == NULL) { PyErr_Clear(); Py_DECREF(spec); return DEFERRED; }
        args = ((PyListObject *)list)->ob_item;
    }
    Py_ssize_t i;
    for (i = 0; i < np; i++) {
        PyObject *v = dec(&in, 2);
        if (v == NULL) break;
        args[i] = v;
    }
    PyObject *reply;
    if (i < np) {
        PyErr_Clear();
        reply = UNSURE;
    }
    else if (in.p != in.end)   /* trailing bytes: unpackb raises ExtraData */
        reply = DEFERRED;
    else
        reply = call_and_reply(c, spec, &fc, args, np, msgid, col);
    Py_DECREF(spec);
    if (list != NULL) {
        for (Py_ssize_t j = i; j < np; j++)   /* undecoded tail: NULL for the list dealloc */
            args[j] = NULL;
        Py_DECREF(list);
    }
    else {
        for (Py_ssize_t j = 0; j < i; j++)
            Py_DECREF(args[j]);
    }
    return reply;
}

static PyObject *
inline_obj(CoreObject *c, PyObject *payload, Collect *col)
{
    if (PyBytes_CheckExact(payload))
        return inline_bytes(c, (const uint8_t *)PyBytes_AS_STRING(payload),
                            PyBytes_GET_SIZE(payload), col);
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();   /* not a plain buffer: whatever unpackb makes of it decides */
        return UNSURE;
    }
    /* decoded before any call: a bytearray the handler changes is not read again */
    PyObject *r = inline_bytes(c, view.buf, view.len, col);
    PyBuffer_Release(&view);
    return r;
}

/* inline_obj, with UNSURE settled by the Python method: bytes / None / DEFERRED /
 * NULL, or (col given) COLLECTED for a reply that went into col */
static PyObject *
inline_any(CoreObject *c, PyObject *payload, Collect *col)
{
    PyObject *r = inline_obj(c, payload, col);
    if (r != UNSURE)
        return r;
    r = PyObject_CallOneArg(c->slow_inline, payload);
    if (r == c->defer) {
        Py_DECREF(r);
        return DEFERRED;
    }
    return r;
}

static PyObject *
Core_dispatch_inline(CoreObject *c, PyObject *payload)
{
    if (!core_alive(c)) return NULL;
    PyObject *r = inline_any(c, payload, NULL);
    if (r == DEFERRED) {
        Py_INCREF(c->defer);
        return c->defer;
    }
    return r;
}

static Py_ssize_t dispatch_range(CoreObject *c, PyObject *payloads, int fast, Py_ssize_t start,
                                 Py_ssize_t n, PyObject *replies, Collect *col);

static PyObject *
Core_dispatch_many(CoreObject *c, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *payloads, *start_obj = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw < 1 || nargs + nkw > 2 || nargs < 1) goto usage;
    payloads = args[0];
    if (nargs == 2) start_obj = args[1];
    if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0))
            || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "start") != 0
            || start_obj)
            goto usage;
        start_obj = args[1];
    }
    if (!core_alive(c)) return NULL;
    Py_ssize_t start = 0;
    if (start_obj != NULL) {
        start = PyNumber_AsSsize_t(start_obj, PyExc_OverflowError);
        if (start == -1 && PyErr_Occurred()) return NULL;
    }
    Py_ssize_t n = PyObject_Length(payloads);
    if (n < 0) return NULL;
    if (start < 0 || start > n) {
        PyErr_Format(PyExc_ValueError, "start %zd is not in [0, %zd]", start, n);
        return NULL;
    }
    PyObject *replies = PyList_New(0);
    if (replies == NULL) return NULL;
    int fast = PyList_CheckExact(payloads) || PyTuple_CheckExact(payloads);
    Py_ssize_t i = dispatch_range(c, payloads, fast, start, n, replies, NULL);
    if (i < 0) goto error;
    PyObject *stop = PyLong_FromSsize_t(i);
    if (stop == NULL) goto error;
    PyObject *t = PyTuple_New(2);
    if (t == NULL) { Py_DECREF(stop); goto error; }
    PyTuple_SET_ITEM(t, 0, replies);
    PyTuple_SET_ITEM(t, 1, stop);
    return t;
error:
    Py_DECREF(replies);
    return NULL;
usage:
    PyErr_SetString(PyExc_TypeError, "dispatch_many(payloads, start=0)");
    return NULL;
}

/* The loop of dispatch_many over payloads[start:n]: replies appended (to
 * replies, or with col to col, encoded one after the other), the stop index
 * returned (Core.handled counts the messages handled); -1 on an error. */
static Py_ssize_t
dispatch_range(CoreObject *c, PyObject *payloads, int fast, Py_ssize_t start, Py_ssize_t n,
               PyObject *replies, Collect *col)
{
    Py_ssize_t i;
    for (i = start; i < n; i++) {
        PyObject *p;
        if (fast) {
            if (i >= Py_SIZE(payloads)) {   /* a handler shortened the list */
                PyErr_SetString(PyExc_IndexError, "list index out of range");
                goto error;
            }
            p = PySequence_Fast_ITEMS(payloads)[i];
            Py_INCREF(p);
        }
        else if ((p = PySequence_GetItem(payloads, i)) == NULL)
            goto error;
        PyObject *r = inline_any(c, p, col);
        Py_DECREF(p);
        if (r == DEFERRED) break;
        if (r == NULL) goto error;
        if (r == COLLECTED) continue;
        if (r != Py_None) {
            int rc;
            if (col == NULL)
                rc = PyList_Append(replies, r);
            else if (PyBytes_CheckExact(r))
                rc = collect_bytes(col, r);
            else {
                PyErr_Format(PyExc_TypeError, "a reply is %.100s, not bytes", Py_TYPE(r)->tp_name);
                rc = -1;
            }
            if (rc < 0) {
                Py_DECREF(r);
                goto error;
            }
        }
        Py_DECREF(r);
    }
    c->handled += (unsigned long long)(i - start);
    return i;
error:   /* as the Python method: an exception leaves the counter alone */
    return -1;
}

static PyObject *
Core_dispatch_obj(CoreObject *c, PyObject *msg)
{
    if (!core_alive(c)) return NULL;
    if (!PyList_CheckExact(msg)) goto slow;
    Py_ssize_t n = PyList_GET_SIZE(msg);
    PyObject *kind = n ? PyList_GET_ITEM(msg, 0) : NULL;
    if (kind == NULL || !PyLong_CheckExact(kind)) goto slow;
    int overflow;
    long long k = PyLong_AsLongLongAndOverflow(kind, &overflow), msgid = -1;
    PyObject *table, *method, *params;
    if (n == 4 && k == 0 && !overflow) {
        PyObject *id = PyList_GET_ITEM(msg, 1);
        if (!PyLong_CheckExact(id)) goto slow;
        msgid = PyLong_AsLongLongAndOverflow(id, &overflow);
        if (overflow || msgid < 0 || msgid > 0xFFFFFFFFLL) goto slow;
        table = c->methods;
        method = PyList_GET_ITEM(msg, 2);
        params = PyList_GET_ITEM(msg, 3);
    }
    else if (n == 3 && k == 2 && !overflow) {
        table = c->notifications;
        method = PyList_GET_ITEM(msg, 1);
        params = PyList_GET_ITEM(msg, 2);
    }
    else goto slow;
    if (!PyUnicode_CheckExact(method) || !PyList_CheckExact(params)) goto slow;
    PyObject *spec = PyDict_GetItemWithError(table, method);
    if (spec == NULL) { if (PyErr_Occurred()) return NULL; goto slow; }
    Py_INCREF(spec);
    SpecFields *f = spec_fields(c, spec);
    Py_ssize_t np = PyList_GET_SIZE(params);
    if (f == NULL || f->is_async || np < f->min_args || (f->max_args >= 0 && np > f->max_args)) {
        Py_DECREF(spec);
        goto slow;
    }
    SpecFields fc = *f;
    /* the caller owns the list: call with a copy, as func(*params) does */
    PyObject *stack[STACK_ARGS], *tuple = NULL, **args = stack;
    if (np > STACK_ARGS) {
        tuple = PyList_AsTuple(params);
        if (tuple == NULL) { Py_DECREF(spec); return NULL; }
        args = ((PyTupleObject *)tuple)->ob_item;
    }
    else
        for (Py_ssize_t i = 0; i < np; i++) {
            args[i] = PyList_GET_ITEM(params, i);
            Py_INCREF(args[i]);
        }
    PyObject *reply = call_and_reply(c, spec, &fc, args, np, msgid, NULL);
    Py_DECREF(spec);
    if (tuple != NULL)
        Py_DECREF(tuple);
    else
        for (Py_ssize_t i = 0; i < np; i++)
            Py_DECREF(args[i]);
    return reply;
slow:
    return PyObject_CallOneArg(c->slow_obj, msg);
}

static PyObject *
Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *methods, *notifications, *fail_call, *encode_response, *packer, *defer;
    PyObject *slow_obj, *slow_inline;
    static char *kwlist[] = {"methods", "notifications", "fail_call", "encode_response",
                             "packer", "defer", "slow_obj", "slow_inline", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOOOO:Core", kwlist,
                                     &PyDict_Type, &methods, &PyDict_Type, &notifications,
                                     &fail_call, &encode_response, &packer, &defer, &slow_obj,
                                     &slow_inline))
        return NULL;
    CoreObject *c = PyObject_GC_New(CoreObject, type);
    if (c == NULL) return NULL;
    c->handled = 0;
    c->out.p = NULL;
    c->out.len = c->out.cap = 0;
    memset(c->cache, 0, sizeof(c->cache));
    memset(c->names, 0, sizeof(c->names));
#define SETREF(field) do { Py_INCREF(field); c->field = field; } while (0)
    SETREF(methods);
    SETREF(notifications);
    SETREF(fail_call);
    SETREF(encode_response);
    SETREF(packer);
    SETREF(defer);
    SETREF(slow_obj);
    SETREF(slow_inline);
#undef SETREF
    PyObject_GC_Track(c);
    return (PyObject *)c;
}

static int
Core_traverse(CoreObject *c, visitproc visit, void *arg)
{
    Py_VISIT(c->methods);
    Py_VISIT(c->notifications);
    Py_VISIT(c->fail_call);
    Py_VISIT(c->encode_response);
    Py_VISIT(c->packer);
    Py_VISIT(c->defer);
    Py_VISIT(c->slow_obj);
    Py_VISIT(c->slow_inline);
    for (int i = 0; i < CACHE_SIZE; i++) {
        Py_VISIT(c->cache[i].spec);
        Py_VISIT(c->cache[i].func);
    }
    return 0;
}

static int
Core_clear(CoreObject *c)
{
    Py_CLEAR(c->methods);
    Py_CLEAR(c->notifications);
    Py_CLEAR(c->fail_call);
    Py_CLEAR(c->encode_response);
    Py_CLEAR(c->packer);
    Py_CLEAR(c->defer);
    Py_CLEAR(c->slow_obj);
    Py_CLEAR(c->slow_inline);
    for (int i = 0; i < CACHE_SIZE; i++) {
        Py_CLEAR(c->cache[i].spec);
        Py_CLEAR(c->cache[i].func);
    }
    for (int i = 0; i < NAME_SLOTS; i++)
        Py_CLEAR(c->names[i].str);
    return 0;
}

static void
Core_dealloc(CoreObject *c)
{
    PyObject_GC_UnTrack(c);
    Core_clear(c);
    PyMem_Free(c->out.p);
    PyObject_GC_Del(c);
}

static PyObject *
Core_get_handled(CoreObject *c, void *closure)
{
    return PyLong_FromUnsignedLongLong(c->handled);
}

static PyMethodDef Core_methods[] = {
    {"dispatch_inline", (PyCFunction)Core_dispatch_inline, METH_O,
     "dispatch_inline(payload) -> bytes | None | DEFER (see Dispatcher.dispatch_inline)"},
    {"dispatch_many", (PyCFunction)(void (*)(void))Core_dispatch_many,
     METH_FASTCALL | METH_KEYWORDS,
     "dispatch_many(payloads, start=0) -> (replies, stop) (see Dispatcher.dispatch_many)"},
    {"dispatch_obj", (PyCFunction)Core_dispatch_obj, METH_O,
     "dispatch_obj(msg): the hot case here, anything else through slow_obj(msg)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Core_getset[] = {
    {"handled", (getter)Core_get_handled, NULL, "messages dispatch_many handled", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Core_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mux_rpc._rpcfast.Core",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Core_new,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
    .tp_doc = "Core(methods, notifications, fail_call, encode_response, packer, defer, "
              "slow_obj, slow_inline): one Dispatcher's C fast path.",
};

/* ---- the run engine ------------------------------------------------------------------
 *
 * RunEngine(host, senders, open_state, credit_type, conn_types, inert_types).run(q, msgs)
 *     -> left
 *
 * One call per batch received on queue q (mux_rpc._offload.Host._on_batch). The
 * Python chain it stands for, per run (conn_id, [payloads]) of an OPEN
 * connection, is OffloadConnection._deliver_run -> the Server's batch hook
 * (_server.Server._batch_hook) -> send_many_nowait / _consumed_inline. That
 * chain stays the reference (MUX_RPC_PURE_PYTHON=1 runs it alone); here:
 *
 *   fast path    every check of the chain that can fail *before* the dispatch
 *                passes: the connection is OPEN, its server installed a RunSpec
 *                (conn._fast: the Dispatcher's Core, the InflightLimits, the
 *                limits key, the ServerStats, the tail), the receive window
 *                takes the whole run, recv() is parked with nothing queued,
 *                the limits have room for the run, the host's outbox for q is
 *                empty. Then, in C: the window update and host stats of
 *                _deliver_run, the dispatch (dispatch_range, no Python call
 *                but the handlers), and - when every message ran inline and
 *                the agent's window takes every reply - the server stats, the
 *                send-window update and stats of send_many_nowait and the
 *                credit rule of _consumed_inline (inline_grant_rule) /
 *                _grant_pending.
 *   tail         anything that can only fail after the dispatch (a message
 *                needs the task path, the send window, sizes, the send lock,
 *                a connection no longer OPEN): the run is finished by
 *                conn._run_tail(finish, payloads, nbytes, replies, stop), the Python
 *                code both paths share, after this call's output so far went
 *                to the link (so it keeps its place).
 *   CREDIT       from the agent, for an OPEN connection: conn._add_credit(msg)
 *                (what the chain calls for it; it sends nothing), done in C
 *                when no sender waits and the grant is well formed
 *                (credit_inline).
 *   left         everything else (runs off the fast path, other messages)
 *                is returned, in order, for Host._on_batch's Python loop. Once
 *                an item of a connection is left, all later items of that
 *                connection are too (its order is kept); a message of no
 *                single connection (HELLO, ...) leaves everything after it,
 *                and so does an item of an OPEN connection with hooks (when
 *                Python delivers it, its calls take shared slots - the
 *                server's limits - that later runs of other connections
 *                must see as the chain would).
 *
 * Output: replies as (conn_id, replies) runs and CREDITs as (conn_id, messages,
 * bytes), handed to the link once, at the end (or before a tail), with
 * AsyncLink.try_send_runs; when the link pushes back, host._outbox_runs(q,
 * runs, credits) queues the same messages in the outbox, in order. A
 * connection whose credit is held back is added to host._credit_dirty; the
 * caller starts the sweep timer. An Exception while handling a run goes to
 * host._data_failed(conn_id) (host._message_failed(msg) for a CREDIT), as the
 * Python loop's excepts do, and the batch goes on. Any other exception stops
 * the batch: the output so far is sent and run() returns (left, exc) instead
 * - the items left before it - for Python to finish and then raise exc.
 */

static PyObject *s_conns, *s_stats, *s_outboxes, *s_items, *s_credit_dirty, *s_state, *s_fast,
    *s_rx_waiter, *s_locked, *s_conn_id,
    *s_outstanding_messages, *s_outstanding_bytes, *s_buffered_messages, *s_buffered_bytes,
    *s_pending_messages, *s_pending_bytes, *s_window_messages, *s_window_bytes,
    *s_max_message_size, *s_messages, *s_bytes, *s_messages_in, *s_bytes_in, *s_messages_out,
    *s_bytes_out, *s_credits_sent, *s_max_send_size, *s_ltotal,
    *s_run_tail, *s_data_failed, *s_outbox_runs,
    *s_add_credit, *s_message_failed, *s_hook, *s_batch_hook,
    *s_send_waiter, *s_swin, *s_max_window, *s_credits_received,
    *s_closed, *s_clock, *s_last_rx, *s_credit_timer, *s_start_credit_timer, *s_on_batch_left;

typedef struct {
    PyObject_HEAD
    PyObject *host;
    PyObject *senders;      /* list: queue -> AsyncLink.try_send_runs */
    PyObject *open_state;   /* ConnState.OPEN */
    PyObject *credit_type;  /* xport's Credit */
    PyObject *conn_types;   /* tuple: message classes with a conn_id (that connection waits) */
    PyObject *inert_types;  /* tuple: message classes that change nothing (KEEPALIVE) */
    Collect col;            /* a joining run's replies (one run at a time) */
    int col_busy;           /* col in use: a run inside a run takes its own */
} EngineObject;

typedef struct {   /* one run() call */
    PyObject *host, *hstats, *obitems, *sender;   /* borrowed / held by the caller */
    Py_ssize_t q;
    PyObject *runs, *credits;   /* output so far; NULL until the first */
    long long out_bytes;
    PyObject *tainted;          /* set of conn_ids left for Python; NULL: none */
    long long max_send;         /* host.max_send_size, read once (-1: not yet) */
    /* host stats of the runs served so far, added to host.stats once (flush_stats) */
    long long msgs_in, bytes_in, msgs_out, bytes_out, credits_sent;
} Batch;

/* Where a __slots__ attribute lives, per (interned name, exact type): the
 * windows and stats objects the engine updates are slotted classes, so their
 * int fields are read and written in place, as their member descriptors do
 * (a strong reference to the type keeps the address from being reused).
 * Anything else - no entry yet, another type, not a plain slot - goes through
 * PyObject_GetAttr / PyObject_SetAttr. */
#define SLOT_CACHE 256   /* power of two; about 30 (name, type) pairs are in use */
static struct {
    PyObject *name;        /* borrowed: an interned, immortal-for-us name */
    PyTypeObject *type;    /* strong */
    Py_ssize_t offset;     /* -1: not a plain slot of that type */
} slot_cache[SLOT_CACHE];

static PyObject **
slot_of(PyObject *obj, PyObject *name)
{
    PyTypeObject *tp = Py_TYPE(obj);
    uint64_t x = ((uint64_t)(uintptr_t)name ^ ((uint64_t)(uintptr_t)tp << 17)) * 0x9E3779B97F4A7C15ULL;
    size_t h = (size_t)(x >> 56) & (SLOT_CACHE - 1);
    if (slot_cache[h].name != name || slot_cache[h].type != tp) {
        Py_ssize_t off = -1;
        PyObject *d = _PyType_Lookup(tp, name);   /* borrowed */
        if (d != NULL && Py_TYPE(d) == &PyMemberDescr_Type) {
            PyMemberDef *md = ((PyMemberDescrObject *)d)->d_member;
            if (md->type == T_OBJECT_EX && !(md->flags & READONLY))
                off = md->offset;
        }
        Py_INCREF(tp);
        Py_XSETREF(slot_cache[h].type, tp);
        slot_cache[h].name = name;
        slot_cache[h].offset = off;
    }
    if (slot_cache[h].offset < 0)
        return NULL;
    return (PyObject **)((char *)obj + slot_cache[h].offset);
}

/* obj.name, an int, as a long long: 0, or -1 with an exception set */
static int
geti(PyObject *obj, PyObject *name, long long *v)
{
    PyObject **slot = slot_of(obj, name);
    if (slot != NULL && *slot != NULL && PyLong_CheckExact(*slot)) {
        *v = PyLong_AsLongLong(*slot);
        return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
    }
    PyObject *x = PyObject_GetAttr(obj, name);
    if (x == NULL) return -1;
    if (!PyLong_Check(x)) {
        PyErr_Format(PyExc_TypeError, "%R.%U is not an int", Py_TYPE(obj), name);
        Py_DECREF(x);
        return -1;
    }
    *v = PyLong_AsLongLong(x);
    Py_DECREF(x);
    return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* obj.name (a new reference; NULL: an exception), in place when it is a plain slot */
static PyObject *
geto(PyObject *obj, PyObject *name)
{
    PyObject **slot = slot_of(obj, name);
    if (slot != NULL && *slot != NULL)
        return Py_NewRef(*slot);
    return PyObject_GetAttr(obj, name);   /* not a slot, or unset: its AttributeError */
}

static int
seti(PyObject *obj, PyObject *name, long long v)
{
    PyObject *x = PyLong_FromLongLong(v);
    if (x == NULL) return -1;
    PyObject **slot = slot_of(obj, name);
    if (slot != NULL) {
        Py_XSETREF(*slot, x);
        return 0;
    }
    int r = PyObject_SetAttr(obj, name, x);
    Py_DECREF(x);
    return r;
}

static int
addi(PyObject *obj, PyObject *name, long long delta)
{
    long long v;
    return geti(obj, name, &v) < 0 ? -1 : seti(obj, name, v + delta);
}

/* argv[0].name(*argv[1:n]), the result dropped: 0, or -1 with an exception set */
static int
call_method(PyObject *name, PyObject *const *argv, size_t n)
{
    PyObject *x = PyObject_VectorcallMethod(name, argv, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (x == NULL) return -1;
    Py_DECREF(x);
    return 0;
}

/* list.append(item), item a new reference (or NULL: an exception) taken */
static int
append_new(PyObject *list, PyObject *item)
{
    if (item == NULL) return -1;
    int r = PyList_Append(list, item);
    Py_DECREF(item);
    return r;
}

/* The exception being raised, normalized, its traceback attached; the error
 * indicator is cleared. A new reference (NULL: none was set). */
static PyObject *
fetch_exc(void)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL && exc != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
}

static int
out_ready(Batch *b)
{
    if (b->runs != NULL) return 0;
    b->runs = PyList_New(0);
    b->credits = PyList_New(0);
    if (b->runs == NULL || b->credits == NULL) {
        Py_CLEAR(b->runs);
        Py_CLEAR(b->credits);
        return -1;
    }
    b->out_bytes = 0;
    return 0;
}

/* The counters the runs served so far owe host.stats, added in one go: at
 * the end of the batch, and before Python code that may look at them (a
 * run's tail). */
static int
flush_stats(Batch *b)
{
    int r = 0;
    if (b->msgs_in && (r = addi(b->hstats, s_messages_in, b->msgs_in)) == 0)
        b->msgs_in = 0;
    if (!r && b->bytes_in && (r = addi(b->hstats, s_bytes_in, b->bytes_in)) == 0)
        b->bytes_in = 0;
    if (!r && b->msgs_out && (r = addi(b->hstats, s_messages_out, b->msgs_out)) == 0)
        b->msgs_out = 0;
    if (!r && b->bytes_out && (r = addi(b->hstats, s_bytes_out, b->bytes_out)) == 0)
        b->bytes_out = 0;
    if (!r && b->credits_sent && (r = addi(b->hstats, s_credits_sent, b->credits_sent)) == 0)
        b->credits_sent = 0;
    return r;
}

/* The output so far to the link in one call (or, pushed back, to the outbox). */
static int
flush_out(Batch *b)
{
    if (b->runs == NULL) return 0;
    PyObject *runs = b->runs, *credits = b->credits;
    b->runs = b->credits = NULL;
    int rc = -1;
    PyObject *nbo = PyLong_FromLongLong(b->out_bytes), *r = NULL;
    if (nbo == NULL) goto done;
    PyObject *argv[3] = {runs, credits, nbo};
    r = PyObject_Vectorcall(b->sender, argv, 3, NULL);
    if (r == NULL) goto done;
    int ok = PyObject_IsTrue(r);
    if (ok < 0) goto done;
    if (ok) { rc = 0; goto done; }
    PyObject *qo = PyLong_FromSsize_t(b->q);
    if (qo == NULL) goto done;
    PyObject *margv[4] = {b->host, qo, runs, credits};
    rc = call_method(s_outbox_runs, margv, 4);
    Py_DECREF(qo);
done:
    Py_XDECREF(r);
    Py_XDECREF(nbo);
    Py_DECREF(runs);
    Py_DECREF(credits);
    return rc;
}

/* Whether an item of conn left for Python must hold back everything after it
 * (2) or only that connection's (0): an OPEN connection with hooks runs calls
 * when Python delivers it, which take the server's shared slots (limits) the
 * later runs of other connections would see; -1: an exception. */
static int
barrier_conn(EngineObject *e, PyObject *conn)
{
    PyObject *x = geto(conn, s_state);
    if (x == NULL) return -1;
    int open = x == e->open_state;
    Py_DECREF(x);
    if (!open) return 0;
    PyObject *hooks[2] = {s_hook, s_batch_hook};
    for (int i = 0; i < 2; i++) {
        if ((x = geto(conn, hooks[i])) == NULL) return -1;
        int set = x != Py_None;
        Py_DECREF(x);
        if (set) return 2;
    }
    return 0;
}

/* The payloads a join is made of: the bytes of a list, or replies laid end
 * to end in a Collect (ends[i]: where reply i ends). */
typedef struct {
    PyObject *list;
    const Py_ssize_t *ends;
} Items;

static inline Py_ssize_t
item_size(const Items *it, Py_ssize_t i)
{
    if (it->list != NULL)
        return PyBytes_GET_SIZE(PyList_GET_ITEM(it->list, i));
    return it->ends[i] - (i ? it->ends[i - 1] : 0);
}

/* The end of the message that starts at item i: it takes the next items
 * while their total stays within limit, at least one; *size: its length.
 * The one rule of every join (mux_rpc._offload.coalesce in Python). */
static Py_ssize_t
chunk_end(const Items *it, Py_ssize_t i, Py_ssize_t n, Py_ssize_t limit, Py_ssize_t *size)
{
    Py_ssize_t total = item_size(it, i);
    for (i++; i < n; i++) {
        Py_ssize_t k = item_size(it, i);
        if (limit <= 0 || total + k > limit)
            break;
        total += k;
    }
    *size = total;
    return i;
}

/* How many messages chunk_end makes of n items; *longest: the longest */
static Py_ssize_t
chunk_count(const Items *it, Py_ssize_t n, Py_ssize_t limit, Py_ssize_t *longest)
{
    Py_ssize_t chunks = 0, size, mx = 0;
    for (Py_ssize_t i = 0; i < n; chunks++) {
        i = chunk_end(it, i, n, limit, &size);
        if (size > mx) mx = size;
    }
    *longest = mx;
    return chunks;
}

/* The replies in col joined, in order, into as few messages of at most
 * limit bytes as chunk_end makes (one longer than limit alone; limit <= 0:
 * none joined): a list of bytes, each message one slice of the buffer (the
 * replies lie end to end); *longest: the longest message. */
static PyObject *
collect_chunks(Collect *col, Py_ssize_t limit, Py_ssize_t *longest)
{
    Items it = {NULL, col->ends};
    Py_ssize_t n = col->n, size;
    Py_ssize_t chunks = chunk_count(&it, n, limit, longest);
    PyObject *out = PyList_New(chunks);
    if (out == NULL) return NULL;
    Py_ssize_t i = 0;
    for (Py_ssize_t c = 0; c < chunks; c++) {
        Py_ssize_t j = chunk_end(&it, i, n, limit, &size);
        Py_ssize_t from = i ? col->ends[i - 1] : 0;
        PyObject *m = PyBytes_FromStringAndSize(col->buf.p + from, size);
        if (m == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, c, m);
        i = j;
    }
    return out;
}

/* mux_rpc._offload.coalesce over a list of bytes, the engine's way (the list
 * laid end to end in a Collect, then collect_chunks): a new list, or list
 * itself (a new reference) when nothing joins. NULL: an exception (an item
 * that is not bytes). */
static PyObject *
coalesce_list(PyObject *list, Py_ssize_t limit)
{
    Py_ssize_t n = PyList_GET_SIZE(list), longest;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(list, i);
        if (!PyBytes_CheckExact(p)) {
            PyErr_Format(PyExc_TypeError, "coalesce: payload %zd is %.100s, not bytes", i,
                         Py_TYPE(p)->tp_name);
            return NULL;
        }
    }
    Items it = {list, NULL};
    if (chunk_count(&it, n, limit, &longest) == n)
        return Py_NewRef(list);
    Collect col = {{NULL, 0, 0}, NULL, 0, 0};
    PyObject *out = NULL;
    Py_ssize_t i = 0;
    while (i < n && collect_bytes(&col, PyList_GET_ITEM(list, i)) == 0)
        i++;
    if (i == n)
        out = collect_chunks(&col, limit, &longest);
    PyMem_Free(col.buf.p);
    PyMem_Free(col.ends);
    return out;
}

/* _deliver_run's window update of a run of k messages (nb bytes), from the
 * outstanding counts read before it (om, ob), if *owed; then not owed. */
static int
deliver_window(PyObject *rwin, int *owed, long long om, long long ob, Py_ssize_t k,
               long long nb)
{
    if (!*owed) return 0;
    *owed = 0;
    if (seti(rwin, s_outstanding_messages, om - k) < 0 || seti(rwin, s_outstanding_bytes, ob - nb) < 0
        || addi(rwin, s_buffered_messages, k) < 0 || addi(rwin, s_buffered_bytes, nb) < 0)
        return -1;
    return 0;
}

/* One run: 1 handled (in C, or finished by the tail), 0 left for Python
 * (nothing changed), 2 left and everything after it too (barrier_conn), -1
 * an exception (the run got as far as the Python chain would have before
 * raising it). */
static int
engine_run(EngineObject *e, Batch *b, PyObject *conns, PyObject *cid, PyObject *run)
{
    int rc = 0, delivered = 0;   /* delivered: the run's window update is still owed */
    PyObject *conn = NULL, *tmp = NULL, *fast = NULL, *replies = NULL, *rwin = NULL;
    long long om = 0, ob = 0, mms = 0, nb = 0;
    Py_ssize_t k = 0, stop = 0;
    if (!PyList_CheckExact(run) || PyList_GET_SIZE(run) == 0) return 0;
    conn = PyDict_GetItemWithError(conns, cid);
    if (conn == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(conn);
#define GET(var, obj, name) do { Py_XSETREF(var, geto((obj), (name))); \
                                 if ((var) == NULL) goto error; } while (0)
    GET(tmp, conn, s_state);
    if (tmp != e->open_state) goto leave;
    GET(fast, conn, s_fast);
    /* conn._fast: the RunSpec's (core, limits, key, stats, finish), then the
     * connection's rwin, swin, rx, send_lock, the limits' waiters, by_conn,
     * total, per_connection, and its coalesce limit (objects that never
     * change; see set_batch_hook) */
    if (!PyTuple_CheckExact(fast) || PyTuple_GET_SIZE(fast) != 14) goto leave;   /* None */
    CoreObject *core = (CoreObject *)PyTuple_GET_ITEM(fast, 0);
    PyObject *limits = PyTuple_GET_ITEM(fast, 1), *key = PyTuple_GET_ITEM(fast, 2);
    PyObject *sstats = PyTuple_GET_ITEM(fast, 3), *rx = PyTuple_GET_ITEM(fast, 7);
    PyObject *waiters = PyTuple_GET_ITEM(fast, 9), *by_conn = PyTuple_GET_ITEM(fast, 10);
    rwin = PyTuple_GET_ITEM(fast, 5);   /* all borrowed: fast is held to the end */
    if (Py_TYPE(core) != &Core_Type || core->methods == NULL || !PyDict_Check(by_conn)
        || !PyLong_CheckExact(PyTuple_GET_ITEM(fast, 11))
        || !PyLong_CheckExact(PyTuple_GET_ITEM(fast, 12))
        || !PyLong_CheckExact(PyTuple_GET_ITEM(fast, 13)))
        goto leave;
    k = PyList_GET_SIZE(run);
    long long mx = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *p = PyList_GET_ITEM(run, i);
        if (!PyBytes_CheckExact(p)) goto leave;
        Py_ssize_t n = PyBytes_GET_SIZE(p);
        nb += n;
        if (n > mx) mx = n;
    }
    /* _deliver_run: the receive window takes the whole run (else message by message) */
    if (geti(rwin, s_outstanding_messages, &om) < 0 || geti(rwin, s_outstanding_bytes, &ob) < 0
        || geti(rwin, s_max_message_size, &mms) < 0)
        goto error;
    if (k > om || nb > ob || mx > mms) goto leave;
    /* ... and the hook only while recv() is parked with nothing queued */
    GET(tmp, conn, s_rx_waiter);
    if (tmp == Py_None) goto leave;
    Py_ssize_t len = PyObject_Length(rx);
    if (len < 0) goto error;
    if (len) goto leave;
    /* the batch hook's limits check: room for every message of the run */
    if ((len = PyObject_Length(waiters)) < 0) goto error;
    if (len) goto leave;
    long long lt, bc = 0;
    long long ltot = PyLong_AsLongLong(PyTuple_GET_ITEM(fast, 11));
    long long per = PyLong_AsLongLong(PyTuple_GET_ITEM(fast, 12));
    if ((ltot == -1 || per == -1) && PyErr_Occurred()) goto error;
    if (geti(limits, s_ltotal, &lt) < 0) goto error;
    PyObject *bco = PyDict_GetItemWithError(by_conn, key);
    if (bco == NULL && PyErr_Occurred()) goto error;
    if (bco != NULL && (bc = PyLong_AsLongLong(bco)) == -1 && PyErr_Occurred()) goto error;
    if (lt + k > ltot || bc + k > per) goto leave;
    /* replies keep their place behind what waits in the outbox */
    if ((len = PyObject_Length(b->obitems)) < 0) goto error;
    if (len) goto leave;

    /* _deliver_run: its window update (outstanding down, buffered up) is
     * written only where it can be seen - before the tail, on an exception -
     * since a run served whole takes its buffered count back at once; the host
     * stats go per batch (flush_stats) */
    b->msgs_in += k;
    b->bytes_in += nb;
    delivered = 1;
    rc = 1;
    /* the batch hook: Dispatcher.dispatch_many; on a connection whose replies
     * are joined (OffloadConnection.coalesce_replies) they are encoded end to
     * end into one buffer and cut into the joined messages right away */
    long long climit = PyLong_AsLongLong(PyTuple_GET_ITEM(fast, 13));
    if (climit == -1 && PyErr_Occurred()) goto error;
    if (climit > 0 && b->max_send < 0 && geti(b->host, s_max_send_size, &b->max_send) < 0)
        goto error;
    if (climit > 0) {
        /* the engine's buffer; a run inside a run (a handler that got here
         * again) takes one of its own */
        Collect nested = {{NULL, 0, 0}, NULL, 0, 0};
        Collect *col = e->col_busy ? &nested : &e->col;
        int outer = !e->col_busy;
        e->col_busy = 1;
        stop = dispatch_range(core, run, 1, 0, k, NULL, col);
        if (stop >= 0) {
            long long lim = climit < b->max_send ? climit : b->max_send;
            Py_ssize_t longest;
            replies = collect_chunks(col, (Py_ssize_t)lim, &longest);
            if (replies == NULL) stop = -1;
        }
        collect_reset(col);
        PyMem_Free(nested.buf.p);
        PyMem_Free(nested.ends);
        if (outer) e->col_busy = 0;
    }
    else {
        if ((replies = PyList_New(0)) == NULL) goto error;
        stop = dispatch_range(core, run, 1, 0, k, replies, NULL);
    }
    if (stop < 0) goto error;
    if (k == 1)   /* the chain serves a run of one with dispatch_inline: not counted */
        core->handled -= (unsigned long long)stop;
    if (stop < k) goto tail;
    Py_ssize_t kr = PyList_GET_SIZE(replies);
    if (kr) {
        /* send_many_nowait, when the agent's window takes every reply */
        long long nbr = 0, mxr = 0, sm, sb, msx;
        for (Py_ssize_t i = 0; i < kr; i++) {
            PyObject *r = PyList_GET_ITEM(replies, i);
            if (!PyBytes_CheckExact(r)) goto tail;
            Py_ssize_t n = PyBytes_GET_SIZE(r);
            nbr += n;
            if (n > mxr) mxr = n;
        }
        if (b->max_send < 0 && geti(b->host, s_max_send_size, &b->max_send) < 0)
            goto error;
        msx = b->max_send;
        GET(tmp, conn, s_state);
        if (tmp != e->open_state) goto tail;
        Py_XSETREF(tmp, PyObject_GetAttr(PyTuple_GET_ITEM(fast, 8), s_locked));   /* Lock.locked() */
        if (tmp == NULL) goto error;
        int locked = PyObject_IsTrue(tmp);
        if (locked < 0) goto error;
        if (locked) goto tail;
        PyObject *swin = PyTuple_GET_ITEM(fast, 6);
        if (geti(swin, s_messages, &sm) < 0 || geti(swin, s_bytes, &sb) < 0)
            goto error;
        if (kr > sm || nbr > sb || mxr > msx) goto tail;
        if (seti(swin, s_messages, sm - kr) < 0 || seti(swin, s_bytes, sb - nbr) < 0
            || out_ready(b) < 0)
            goto error;
        b->msgs_out += kr;
        b->bytes_out += nbr;
        if (append_new(b->runs, PyTuple_Pack(2, cid, replies)) < 0) goto error;
        b->out_bytes += nbr;
    }
    if (addi(sstats, s_messages, k) < 0) goto error;
    /* _consumed_inline(nb, k), by inline_grant_rule: now at half a window
     * pending or the agent out of message credit (_grant_pending); later (the
     * sweep) while its byte credit is below one largest message; else held.
     * buffered is back where it was: only outstanding and pending change */
    delivered = 0;
    long long pm, pb, wm, wb;
    if (geti(rwin, s_pending_messages, &pm) < 0 || geti(rwin, s_pending_bytes, &pb) < 0
        || geti(rwin, s_window_messages, &wm) < 0 || geti(rwin, s_window_bytes, &wb) < 0)
        goto error;
    om -= k;
    ob -= nb;
    pm += k;
    pb += nb;
    if (pm * 2 >= wm || pb * 2 >= wb || om < 1) {
        if (seti(rwin, s_pending_messages, 0) < 0 || seti(rwin, s_pending_bytes, 0) < 0
            || seti(rwin, s_outstanding_messages, om + pm) < 0
            || seti(rwin, s_outstanding_bytes, ob + pb) < 0 || out_ready(b) < 0)
            goto error;
        b->credits_sent += 1;
        if (append_new(b->credits, Py_BuildValue("(OLL)", cid, pm, pb)) < 0) goto error;
    }
    else {
        if (seti(rwin, s_outstanding_messages, om) < 0 || seti(rwin, s_outstanding_bytes, ob) < 0
            || seti(rwin, s_pending_messages, pm) < 0 || seti(rwin, s_pending_bytes, pb) < 0)
            goto error;
        if (ob < mms) {
            GET(tmp, b->host, s_credit_dirty);
            if (PySet_Add(tmp, conn) < 0) goto error;
        }
    }
    goto done;
tail:
    if (deliver_window(rwin, &delivered, om, ob, k, nb) < 0 || flush_stats(b) < 0
        || flush_out(b) < 0)
        goto error;
    {
        PyObject *nbo = PyLong_FromLongLong(nb), *so = PyLong_FromSsize_t(stop);
        if (nbo == NULL || so == NULL) {
            Py_XDECREF(nbo);
            Py_XDECREF(so);
            goto error;
        }
        PyObject *argv[6] = {conn, PyTuple_GET_ITEM(fast, 4), run, nbo, replies, so};
        int r = call_method(s_run_tail, argv, 6);
        Py_DECREF(nbo);
        Py_DECREF(so);
        if (r < 0) goto error;
    }
    goto done;
leave:
    rc = barrier_conn(e, conn);
    goto done;
error:
    rc = -1;
    if (delivered) {
        /* the chain had delivered the run when this was raised */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        if (deliver_window(rwin, &delivered, om, ob, k, nb) < 0)
            PyErr_WriteUnraisable(conn);
        PyErr_Restore(et, ev, etb);
    }
done:
#undef GET
    Py_XDECREF(replies);
    Py_XDECREF(fast);
    Py_XDECREF(tmp);
    Py_DECREF(conn);
    return rc;
}

/* An Exception while handling an item: log it as the Python loop does
 * (host.<how>(arg) inside the except, so log.exception sees it). */
static int
report_failed(PyObject *host, PyObject *how, PyObject *arg)
{
    PyObject *exc = fetch_exc();
    PyObject *prev = PyErr_GetHandledException();
    PyErr_SetHandledException(exc);
    PyObject *argv[2] = {host, arg};
    int r = call_method(how, argv, 2);
    PyErr_SetHandledException(prev);
    Py_XDECREF(prev);
    Py_XDECREF(exc);
    return r;
}

static int
type_in(PyObject *tp, PyObject *types)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(types); i++)
        if (PyTuple_GET_ITEM(types, i) == tp) return 1;
    return 0;
}

static int
taint(Batch *b, PyObject *cid)
{
    if (b->tainted == NULL && (b->tainted = PySet_New(NULL)) == NULL) return -1;
    return PySet_Add(b->tainted, cid);
}

/* conn._add_credit(m) in place when nothing else is to be done: no sender
 * waits for credit (conn._send_waiter is None) and the grant is well formed
 * (SendWindow.grant would not raise). 1 done, 0 for Python, -1 an exception. */
static int
credit_inline(Batch *b, PyObject *conn, PyObject *m)
{
    PyObject *waiter = geto(conn, s_send_waiter), *swin = NULL;
    int rc = -1;
    if (waiter == NULL) return -1;
    if (waiter != Py_None) { rc = 0; goto done; }
    if ((swin = geto(conn, s_swin)) == NULL) goto done;
    long long gm, gb, sm, sb, mw;
    if (geti(m, s_messages, &gm) < 0 || geti(m, s_bytes, &gb) < 0
        || geti(swin, s_messages, &sm) < 0 || geti(swin, s_bytes, &sb) < 0
        || geti(swin, s_max_window, &mw) < 0)
        goto done;
    if (gm < 0 || gb < 0 || sm + gm > mw || sb + gb > mw) { rc = 0; goto done; }
    if (seti(swin, s_messages, sm + gm) < 0 || seti(swin, s_bytes, sb + gb) < 0
        || addi(b->hstats, s_credits_received, 1) < 0)
        goto done;
    rc = 1;
done:
    Py_XDECREF(swin);
    Py_DECREF(waiter);
    return rc;
}

/* A CREDIT: 1 added (conn._add_credit), 0 left for Python (its connection
 * waits from now on), -1 an exception that propagates. */
static int
engine_credit(EngineObject *e, Batch *b, PyObject *conns, PyObject *m)
{
    PyObject *cid = geto(m, s_conn_id), *conn = NULL, *state = NULL;
    int rc = -1;
    if (cid == NULL) return -1;
    int t = b->tainted == NULL ? 0 : PySet_Contains(b->tainted, cid);
    if (t < 0) goto done;
    if (!t) {
        conn = Py_XNewRef(PyDict_GetItemWithError(conns, cid));
        if (conn == NULL && PyErr_Occurred()) goto done;
        if (conn != NULL) {
            if ((state = geto(conn, s_state)) == NULL) goto done;
            if (state == e->open_state) {
                /* Host._on_message's hot path for CREDIT: in place, or the
                 * method when a sender waits or the grant is bad */
                int r = credit_inline(b, conn, m);
                if (r == 0) {
                    PyObject *argv[2] = {conn, m};
                    r = call_method(s_add_credit, argv, 2) < 0 ? -1 : 1;
                }
                if (r < 0 && (!PyErr_ExceptionMatches(PyExc_Exception)
                              || report_failed(e->host, s_message_failed, m) < 0))
                    goto done;
                rc = 1;
                goto done;
            }
        }
    }
    rc = taint(b, cid) < 0 ? -1 : 0;
done:
    Py_XDECREF(state);
    Py_XDECREF(conn);
    Py_DECREF(cid);
    return rc;
}

static PyObject *
Engine_run(EngineObject *e, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run(q, msgs)");
        return NULL;
    }
    if (e->host == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "mux_rpc._rpcfast.RunEngine was cleared");
        return NULL;
    }
    Py_ssize_t q = PyLong_AsSsize_t(args[0]);
    if (q == -1 && PyErr_Occurred()) return NULL;
    PyObject *msgs = args[1];
    if (q < 0 || q >= PyList_GET_SIZE(e->senders)) {
        PyErr_Format(PyExc_ValueError, "no queue %zd", q);
        return NULL;
    }
    if (!PyList_CheckExact(msgs))
        return PySequence_List(msgs);   /* all of it for Python */
    Batch b = {0};
    b.max_send = -1;
    b.host = e->host;
    b.q = q;
    b.sender = PyList_GET_ITEM(e->senders, q);
    PyObject *conns = NULL, *outboxes = NULL, *ob = NULL, *left = NULL;
    Py_INCREF(b.sender);
    if ((conns = PyObject_GetAttr(e->host, s_conns)) == NULL
        || (b.hstats = PyObject_GetAttr(e->host, s_stats)) == NULL
        || (outboxes = PyObject_GetAttr(e->host, s_outboxes)) == NULL
        || (ob = PySequence_GetItem(outboxes, q)) == NULL
        || (b.obitems = PyObject_GetAttr(ob, s_items)) == NULL
        || (left = PyList_New(0)) == NULL)
        goto fail;
    if (!PyDict_Check(conns)) {
        PyErr_SetString(PyExc_TypeError, "host._conns is not a dict");
        goto fail;
    }
    int barrier = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(msgs); i++) {
        PyObject *m = PyList_GET_ITEM(msgs, i);
        Py_INCREF(m);
        int r = 0;
        if (!barrier && PyTuple_CheckExact(m) && PyTuple_GET_SIZE(m) == 2) {
            PyObject *cid = PyTuple_GET_ITEM(m, 0), *run = PyTuple_GET_ITEM(m, 1);
            int t = b.tainted == NULL ? 0 : PySet_Contains(b.tainted, cid);
            if (t < 0) goto fail_m;
            if (!t) {
                r = engine_run(e, &b, conns, cid, run);
                if (r < 0) {
                    if (!PyErr_ExceptionMatches(PyExc_Exception)
                        || report_failed(e->host, s_data_failed, cid) < 0)
                        goto fail_m;
                    r = 1;   /* done with, as far as it went */
                }
                else if (r == 2) {
                    barrier = 1;
                    r = 0;
                }
            }
            if (!r && taint(&b, cid) < 0) goto fail_m;
        }
        else if (!barrier && (PyObject *)Py_TYPE(m) == e->credit_type) {
            if ((r = engine_credit(e, &b, conns, m)) < 0) goto fail_m;
        }
        else if (!barrier && !type_in((PyObject *)Py_TYPE(m), e->inert_types)) {
            if (type_in((PyObject *)Py_TYPE(m), e->conn_types)) {
                PyObject *cid = PyObject_GetAttr(m, s_conn_id);
                if (cid == NULL) goto fail_m;
                int t = taint(&b, cid);
                PyObject *conn = t < 0 ? NULL : PyDict_GetItemWithError(conns, cid);
                Py_DECREF(cid);
                if (t < 0 || (conn == NULL && PyErr_Occurred())) goto fail_m;
                if (conn != NULL && (Py_INCREF(conn), t = barrier_conn(e, conn),
                                     Py_DECREF(conn), t) != 0) {
                    if (t < 0) goto fail_m;
                    barrier = 1;   /* a DATA object may run a call (the message hook) */
                }
            }
            else
                barrier = 1;   /* concerns more than one connection: all after it wait */
        }
        if (!r && PyList_Append(left, m) < 0) goto fail_m;
        Py_DECREF(m);
        continue;
fail_m:
        Py_DECREF(m);
        goto fail;
    }
    if (flush_stats(&b) < 0 || flush_out(&b) < 0) goto fail;
    goto done;
fail:
    /* stopped by an exception that is not an Exception (the chain's excepts
     * let it through): what was handled goes out, as the chain sent it, and
     * the caller gets (left, exc): the items left before it, then it raises */
    if (left != NULL) {
        PyObject *exc = fetch_exc();
        if (flush_stats(&b) < 0 || flush_out(&b) < 0)
            PyErr_WriteUnraisable(e->host);
        PyObject *t = exc == NULL ? NULL : PyTuple_Pack(2, left, exc);
        Py_XDECREF(exc);
        Py_SETREF(left, t);
    }
done:
    Py_XDECREF(b.runs);
    Py_XDECREF(b.credits);
    Py_XDECREF(b.tainted);
    Py_XDECREF(b.obitems);
    Py_XDECREF(b.hstats);
    Py_DECREF(b.sender);
    Py_XDECREF(ob);
    Py_XDECREF(outboxes);
    Py_XDECREF(conns);
    return left;
}

static PyObject *
Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *host, *senders, *open_state, *credit_type, *conn_types, *inert_types;
    static char *kwlist[] = {"host", "senders", "open_state", "credit_type", "conn_types",
                             "inert_types", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!OOO!O!:RunEngine", kwlist, &host,
                                     &PyList_Type, &senders, &open_state, &credit_type,
                                     &PyTuple_Type, &conn_types, &PyTuple_Type, &inert_types))
        return NULL;
    EngineObject *e = PyObject_GC_New(EngineObject, type);
    if (e == NULL) return NULL;
    memset(&e->col, 0, sizeof e->col);
    e->col_busy = 0;
    e->host = Py_NewRef(host);
    e->senders = PyList_GetSlice(senders, 0, PyList_GET_SIZE(senders));   /* a copy */
    e->open_state = Py_NewRef(open_state);
    e->credit_type = Py_NewRef(credit_type);
    e->conn_types = Py_NewRef(conn_types);
    e->inert_types = Py_NewRef(inert_types);
    if (e->senders == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    PyObject_GC_Track(e);
    return (PyObject *)e;
}

static int
Engine_traverse(EngineObject *e, visitproc visit, void *arg)
{
    Py_VISIT(e->host);
    Py_VISIT(e->senders);
    Py_VISIT(e->open_state);
    Py_VISIT(e->credit_type);
    Py_VISIT(e->conn_types);
    Py_VISIT(e->inert_types);
    return 0;
}

static int
Engine_clear(EngineObject *e)
{
    Py_CLEAR(e->host);
    Py_CLEAR(e->senders);
    Py_CLEAR(e->open_state);
    Py_CLEAR(e->credit_type);
    Py_CLEAR(e->conn_types);
    Py_CLEAR(e->inert_types);
    return 0;
}

static void
Engine_dealloc(EngineObject *e)
{
    PyObject_GC_UnTrack(e);
    Engine_clear(e);
    PyMem_Free(e->col.buf.p);
    PyMem_Free(e->col.ends);
    PyObject_GC_Del(e);
}

/* ---- the receiver: Host._on_batch(q, msgs) with the engine, in C --------------------
 *
 * The link's read callback hands each batch to receiver(msgs). This is what
 * Host._on_batch does when its engine is this one's run - the closed check,
 * _last_rx from the host's clock, the engine, the credit timer the engine may
 * need, and what it left to Host._on_batch_left - without a Python frame on
 * the way (one per wake-up). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    EngineObject *engine;   /* strong */
    PyObject *q;            /* the queue, an int */
} ReceiverObject;

static PyTypeObject Receiver_Type;

static PyObject *
receiver_call(ReceiverObject *r, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "receiver(msgs)");
        return NULL;
    }
    PyObject *host = r->engine == NULL ? NULL : r->engine->host, *x = NULL, *left = NULL,
             *res = NULL;
    if (host == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "mux_rpc._rpcfast.RunEngine was cleared");
        return NULL;
    }
    Py_INCREF(host);
    /* if self._closed: return */
    if ((x = PyObject_GetAttr(host, s_closed)) == NULL) goto done;
    int closed = PyObject_IsTrue(x);
    Py_CLEAR(x);
    if (closed < 0) goto done;
    if (closed) { res = Py_NewRef(Py_None); goto done; }
    /* self._last_rx = self._clock() */
    if ((x = PyObject_GetAttr(host, s_clock)) == NULL) goto done;
    Py_SETREF(x, PyObject_CallNoArgs(x));
    if (x == NULL || PyObject_SetAttr(host, s_last_rx, x) < 0) goto done;
    Py_CLEAR(x);
    /* left = engine(q, msgs) */
    PyObject *argv[2] = {r->q, args[0]};
    if ((left = Engine_run(r->engine, argv, 2)) == NULL) goto done;
    /* if self._credit_dirty and self._credit_timer is None: self._start_credit_timer() */
    if ((x = PyObject_GetAttr(host, s_credit_dirty)) == NULL) goto done;
    int dirty = PyObject_IsTrue(x);
    Py_CLEAR(x);
    if (dirty < 0) goto done;
    if (dirty) {
        if ((x = PyObject_GetAttr(host, s_credit_timer)) == NULL) goto done;
        int none = x == Py_None;
        Py_CLEAR(x);
        if (none && call_method(s_start_credit_timer, &host, 1) < 0) goto done;
    }
    /* if left.__class__ is tuple or left: self._on_batch_left(q, left) */
    int any = PyTuple_CheckExact(left) ? 1 : PyObject_IsTrue(left);
    if (any < 0) goto done;
    if (any) {
        PyObject *margv[3] = {host, r->q, left};
        if (call_method(s_on_batch_left, margv, 3) < 0) goto done;
    }
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(x);
    Py_XDECREF(left);
    Py_DECREF(host);
    return res;
}

static PyObject *
Engine_receiver(EngineObject *e, PyObject *q)
{
    if (!PyLong_CheckExact(q)) {
        PyErr_SetString(PyExc_TypeError, "receiver(q): q is an int");
        return NULL;
    }
    ReceiverObject *r = PyObject_GC_New(ReceiverObject, &Receiver_Type);
    if (r == NULL) return NULL;
    r->vectorcall = (vectorcallfunc)receiver_call;
    r->engine = (EngineObject *)Py_NewRef((PyObject *)e);
    r->q = Py_NewRef(q);
    PyObject_GC_Track(r);
    return (PyObject *)r;
}

static int
Receiver_traverse(ReceiverObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->engine);
    Py_VISIT(r->q);
    return 0;
}

static int
Receiver_clear(ReceiverObject *r)
{
    Py_CLEAR(r->engine);
    Py_CLEAR(r->q);
    return 0;
}

static void
Receiver_dealloc(ReceiverObject *r)
{
    PyObject_GC_UnTrack(r);
    Receiver_clear(r);
    PyObject_GC_Del(r);
}

static PyTypeObject Receiver_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mux_rpc._rpcfast.Receiver",
    .tp_basicsize = sizeof(ReceiverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(ReceiverObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)Receiver_dealloc,
    .tp_traverse = (traverseproc)Receiver_traverse,
    .tp_clear = (inquiry)Receiver_clear,
    .tp_doc = "receiver(msgs): Host._on_batch(q, msgs) with this engine (RunEngine.receiver(q)).",
};

static PyMethodDef Engine_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Engine_run, METH_FASTCALL,
     "run(q, msgs) -> left: one received batch of queue q; what it did not handle, in "
     "order, for the Python loop (see the comment atop the run engine in _rpcfast.c)"},
    {"receiver", (PyCFunction)Engine_receiver, METH_O,
     "receiver(q) -> callable: receiver(msgs) does Host._on_batch(q, msgs) in C when "
     "the host's engine is this one's run (see the comment above Receiver)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Engine_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mux_rpc._rpcfast.RunEngine",
    .tp_basicsize = sizeof(EngineObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Engine_new,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_traverse = (traverseproc)Engine_traverse,
    .tp_clear = (inquiry)Engine_clear,
    .tp_methods = Engine_methods,
    .tp_doc = "RunEngine(host, senders, open_state, credit_type, conn_types, inert_types): a Host's "
              "receive batches, fast path in C (see mux_rpc/_rpcfast.c).",
};

/* ---- module functions (the tests compare them with msgpack) ------------------------ */

static PyObject *
mod_packb(PyObject *mod, PyObject *obj)
{
    Out o = {NULL, 0, 0};
    PyObject *r = NULL;
    if (enc(&o, obj, 0) == 0)
        r = PyBytes_FromStringAndSize(o.p ? o.p : "", o.len);
    else
        r = Py_NewRef(Py_None);
    PyMem_Free(o.p);
    return r;
}

static PyObject *
mod_unpackb(PyObject *mod, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    In in = {view.buf, (const uint8_t *)view.buf + view.len};
    PyObject *r = dec(&in, 0);
    if (r != NULL && in.p != in.end)
        Py_CLEAR(r);
    PyBuffer_Release(&view);
    if (r == NULL) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "deferred");
    }
    return r;
}

static PyObject *
mod_coalesce(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "coalesce(payloads: list[bytes], limit: int)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    return coalesce_list(args[0], limit);
}

static PyMethodDef module_methods[] = {
    {"coalesce", (PyCFunction)(void (*)(void))mod_coalesce, METH_FASTCALL,
     "coalesce(payloads, limit) -> list: mux_rpc._offload.coalesce as the run engine "
     "does it (payloads: a list of bytes)."},
    {"packb", mod_packb, METH_O,
     "packb(obj) -> bytes, as msgpack.packb(obj, use_bin_type=True); None when this "
     "encoder leaves obj to msgpack."},
    {"unpackb", mod_unpackb, METH_O,
     "unpackb(data) -> obj, as msgpack.unpackb(data, raw=False, strict_map_key=False); "
     "ValueError('deferred') when this decoder leaves data to msgpack."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mux_rpc._rpcfast",
    .m_doc = "C fast path of mux_rpc's dispatcher (see mux_rpc/_rpcfast.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__rpcfast(void)
{
    if (PyType_Ready(&Core_Type) < 0 || PyType_Ready(&Engine_Type) < 0
        || PyType_Ready(&Receiver_Type) < 0)
        return NULL;
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return NULL
    INTERN(s_conns, "_conns"); INTERN(s_stats, "stats"); INTERN(s_outboxes, "_outboxes");
    INTERN(s_items, "items"); INTERN(s_credit_dirty, "_credit_dirty"); INTERN(s_state, "_state");
    INTERN(s_fast, "_fast"); INTERN(s_rx_waiter, "_rx_waiter");
    INTERN(s_send_waiter, "_send_waiter"); INTERN(s_swin, "_swin");
    INTERN(s_max_window, "max_window"); INTERN(s_credits_received, "credits_received");
    INTERN(s_locked, "_locked"); INTERN(s_conn_id, "conn_id");
    INTERN(s_outstanding_messages, "outstanding_messages");
    INTERN(s_outstanding_bytes, "outstanding_bytes");
    INTERN(s_buffered_messages, "buffered_messages"); INTERN(s_buffered_bytes, "buffered_bytes");
    INTERN(s_pending_messages, "pending_messages"); INTERN(s_pending_bytes, "pending_bytes");
    INTERN(s_window_messages, "window_messages"); INTERN(s_window_bytes, "window_bytes");
    INTERN(s_max_message_size, "max_message_size"); INTERN(s_messages, "messages");
    INTERN(s_bytes, "bytes"); INTERN(s_messages_in, "messages_in"); INTERN(s_bytes_in, "bytes_in");
    INTERN(s_messages_out, "messages_out"); INTERN(s_bytes_out, "bytes_out");
    INTERN(s_credits_sent, "credits_sent"); INTERN(s_max_send_size, "max_send_size");
    INTERN(s_ltotal, "_total");
    INTERN(s_run_tail, "_run_tail"); INTERN(s_data_failed, "_data_failed");
    INTERN(s_outbox_runs, "_outbox_runs"); INTERN(s_add_credit, "_add_credit");
    INTERN(s_message_failed, "_message_failed"); INTERN(s_hook, "_hook");
    INTERN(s_batch_hook, "_batch_hook");
    INTERN(s_closed, "_closed"); INTERN(s_clock, "_clock"); INTERN(s_last_rx, "_last_rx");
    INTERN(s_credit_timer, "_credit_timer"); INTERN(s_start_credit_timer, "_start_credit_timer");
    INTERN(s_on_batch_left, "_on_batch_left");
#undef INTERN
    if (!(s_func = PyUnicode_InternFromString("func"))
        || !(s_is_async = PyUnicode_InternFromString("is_async"))
        || !(s_min_args = PyUnicode_InternFromString("min_args"))
        || !(s_max_args = PyUnicode_InternFromString("max_args")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&Core_Type);
    if (PyModule_AddObject(m, "Core", (PyObject *)&Core_Type) < 0) {
        Py_DECREF(&Core_Type);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&Engine_Type);
    if (PyModule_AddObject(m, "RunEngine", (PyObject *)&Engine_Type) < 0) {
        Py_DECREF(&Engine_Type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
