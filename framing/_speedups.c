/* Optional accelerator for framing (built by `python scripts/build_accelerators.py`).
 *
 * Two things only; all parsing and every spec check stay in Python:
 *
 *   Maker(cls, names)  a callable building an instance of the frozen, slotted
 *                      dataclass `cls` from positional values, one per slot
 *                      named in `names` (every slot of the class). Same result
 *                      as object.__new__(cls) + each slot descriptor's __set__
 *                      (framing._messages._py_maker), in one C call.
 *
 *   rpc_batch(objs, ends, data, start, prev, i, out, req, resp, notif)
 *                      the msgpack-rpc fast path over values decoded from one
 *                      chunk: see framing._msgpack_rpc._py_rpc_batch, which is
 *                      the reference (and the fallback) and has the same
 *                      semantics; the tests compare the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#define MAX_FIELDS 8

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t offs[MAX_FIELDS];
    vectorcallfunc vectorcall;
} MakerObject;

static PyTypeObject Maker_Type;

static inline PyObject *
maker_build(MakerObject *m, PyObject *const *args)
{
    PyObject *obj = m->cls->tp_alloc(m->cls, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < m->n; i++) {
        Py_INCREF(args[i]);
        *(PyObject **)((char *)obj + m->offs[i]) = args[i];
    }
    return obj;
}

static PyObject *
maker_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    MakerObject *m = (MakerObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != m->n || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_Format(PyExc_TypeError, "%s maker takes exactly %zd positional arguments",
                     m->cls->tp_name, m->n);
        return NULL;
    }
    return maker_build(m, args);
}

static PyObject *
maker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *cls, *names;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Maker() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!O!:Maker", &PyType_Type, &cls, &PyTuple_Type, &names))
        return NULL;
    PyTypeObject *tp = (PyTypeObject *)cls;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n < 1 || n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "Maker: 1 to 8 slot names");
        return NULL;
    }
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) || tp->tp_alloc != PyType_GenericAlloc
        || tp->tp_itemsize != 0) {
        PyErr_SetString(PyExc_TypeError, "Maker: a plain heap class with __slots__ is needed");
        return NULL;
    }
    MakerObject *m = (MakerObject *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *d = PyUnicode_Check(name) ? PyDict_GetItemWithError(tp->tp_dict, name) : NULL;
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyDescrObject *)d)->d_type != tp) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "Maker: %R is not a slot of %s", name, tp->tp_name);
            Py_DECREF(m);
            return NULL;
        }
        PyMemberDef *def = ((PyMemberDescrObject *)d)->d_member;
        if (def->type != T_OBJECT_EX || (def->flags & READONLY) || def->offset <= 0
            || def->offset + (Py_ssize_t)sizeof(PyObject *) > tp->tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "Maker: %R is not a writable object slot", name);
            Py_DECREF(m);
            return NULL;
        }
        m->offs[i] = def->offset;
    }
    Py_INCREF(tp);
    m->cls = tp;
    m->n = n;
    m->vectorcall = maker_vectorcall;
    return (PyObject *)m;
}

static void
maker_dealloc(MakerObject *m)
{
    Py_XDECREF(m->cls);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *
maker_repr(MakerObject *m)
{
    return PyUnicode_FromFormat("<framing._speedups.Maker of %s>", m->cls->tp_name);
}

static PyTypeObject Maker_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "framing._speedups.Maker",
    .tp_basicsize = sizeof(MakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(MakerObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = maker_new,
    .tp_dealloc = (destructor)maker_dealloc,
    .tp_repr = (reprfunc)maker_repr,
    .tp_doc = "Maker(cls, names): build instances of a slotted class from positional values.",
};


/* Value end offsets: a list of ints, or (from mp_scan) a bytes object of
 * native Py_ssize_t values, which spares one int object per value. */
typedef struct {
    PyObject *list;
    const char *arr;
    Py_ssize_t n;
} Ends;

static int
ends_init(Ends *e, PyObject *o)
{
    if (PyList_CheckExact(o)) {
        e->list = o;
        e->arr = NULL;
        e->n = PyList_GET_SIZE(o);
        return 1;
    }
    if (PyBytes_CheckExact(o) && PyBytes_GET_SIZE(o) % (Py_ssize_t)sizeof(Py_ssize_t) == 0) {
        e->list = NULL;
        e->arr = PyBytes_AS_STRING(o);
        e->n = PyBytes_GET_SIZE(o) / (Py_ssize_t)sizeof(Py_ssize_t);
        return 1;
    }
    PyErr_SetString(PyExc_TypeError, "ends: a list of ints or packed offsets");
    return 0;
}

static inline Py_ssize_t
ends_get(Ends *e, Py_ssize_t i)
{
    if (e->list)
        return PyLong_AsSsize_t(PyList_GET_ITEM(e->list, i));
    Py_ssize_t v;
    memcpy(&v, e->arr + i * (Py_ssize_t)sizeof(Py_ssize_t), sizeof v);
    return v;
}

/* msgid: an int (not bool) in 0..2**32-1. Returns 1/0, never raises. */
static inline int
is_msgid(PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        return 0;
    }
    if (x == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return x >= 0 && x <= 0xFFFFFFFFLL;
}

/* v[0..count) = the ints args[0..count); 0 with the error set if one is not. */
static int
ssize_args(PyObject *const *args, Py_ssize_t *v, int count)
{
    for (int k = 0; k < count; k++) {
        v[k] = PyLong_AsSsize_t(args[k]);
        if (v[k] == -1 && PyErr_Occurred())
            return 0;
    }
    return 1;
}

static int
maker_arg(PyObject *m, Py_ssize_t n, const char *who)
{
    if (!Py_IS_TYPE(m, &Maker_Type) || ((MakerObject *)m)->n != n) {
        PyErr_Format(PyExc_TypeError, "%s: a Maker of %zd fields expected", who, n);
        return 0;
    }
    return 1;
}

/* The Maker for a msgpack-rpc envelope: [0, msgid, method, params] -> req,
 * [1, msgid, error, result] -> resp, [2, method, params] -> notif, with its
 * fields (borrowed from obj) in fields[0 .. n-2]; the last, raw, is the caller's.
 * NULL (no error set) for anything else: Python decides and reports it. */
static inline MakerObject *
rpc_envelope(PyObject *obj, MakerObject *req, MakerObject *resp, MakerObject *notif,
             PyObject **fields)
{
    if (!PyList_CheckExact(obj) || PyList_GET_SIZE(obj) < 3)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(obj);
    PyObject **it = ((PyListObject *)obj)->ob_item;
    if (!PyLong_CheckExact(it[0]))
        return NULL;
    int overflow;
    long kind = PyLong_AsLongAndOverflow(it[0], &overflow);
    if (overflow || (kind == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return NULL;
    }
    if (kind == 0 && n == 4) {
        if (!is_msgid(it[1]) || !PyUnicode_CheckExact(it[2]) || !PyList_CheckExact(it[3]))
            return NULL;
        fields[0] = it[1]; fields[1] = it[2]; fields[2] = it[3];
        return req;
    }
    if (kind == 1 && n == 4) {
        if (!is_msgid(it[1]))
            return NULL;
        fields[0] = it[1]; fields[1] = it[2]; fields[2] = it[3];
        return resp;
    }
    if (kind == 2 && n == 3) {
        if (!PyUnicode_CheckExact(it[1]) || !PyList_CheckExact(it[2]))
            return NULL;
        fields[0] = it[1]; fields[1] = it[2];
        return notif;
    }
    return NULL;
}

static PyObject *
rpc_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "rpc_batch takes 10 arguments");
        return NULL;
    }
    PyObject *objs = args[0], *ends = args[1], *data = args[2], *out = args[6];
    Ends ev;
    if (!ends_init(&ev, ends))
        return NULL;
    if (!PyList_CheckExact(objs) || !PyBytes_CheckExact(data)
        || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "rpc_batch(list, list, bytes, int, int, int, list, ...)");
        return NULL;
    }
    if (!maker_arg(args[7], 4, "rpc_batch") || !maker_arg(args[8], 4, "rpc_batch")
        || !maker_arg(args[9], 3, "rpc_batch"))
        return NULL;
    MakerObject *req = (MakerObject *)args[7], *resp = (MakerObject *)args[8],
                *notif = (MakerObject *)args[9];
    Py_ssize_t v[3];
    if (!ssize_args(args + 3, v, 3))
        return NULL;
    Py_ssize_t start = v[0], prev = v[1], i = v[2];
    Py_ssize_t count = PyList_GET_SIZE(objs);
    if (ev.n < count || i < 0) {
        PyErr_SetString(PyExc_ValueError, "rpc_batch: fewer ends than objs");
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    for (; i < count; i++) {
        PyObject *fields[4];
        MakerObject *mk = rpc_envelope(PyList_GET_ITEM(objs, i), req, resp, notif, fields);
        if (mk == NULL)
            break;
        Py_ssize_t end = ends_get(&ev, i);
        if (end == -1 && PyErr_Occurred())
            return NULL;
        end -= start; /* stream offset -> offset in data */
        if (prev - start < 0 || end < prev - start || end > size) {
            PyErr_SetString(PyExc_ValueError, "rpc_batch: offsets outside data");
            return NULL;
        }
        PyObject *raw = PyBytes_FromStringAndSize(buf + (prev - start), end - (prev - start));
        if (raw == NULL)
            return NULL;
        fields[mk->n - 1] = raw;
        PyObject *msg = maker_build(mk, fields);
        Py_DECREF(raw);
        if (msg == NULL)
            return NULL;
        int rc = PyList_Append(out, msg);
        Py_DECREF(msg);
        if (rc < 0)
            return NULL;
        prev = end + start;
    }
    return PyLong_FromSsize_t(i);
}

/* ---- msgpack value boundaries ------------------------------------------------
 * mp_scan(data, pos, maxlen) -> (ends, stop, status, need)
 * Walks whole msgpack values from data[pos:] without decoding them: one
 * counter of items still to skip, no recursion. `ends` are the offsets after
 * each complete value (packed native Py_ssize_t, see Ends); scanning stops at `stop` with status
 *   0  end of data at a value boundary
 *   1  incomplete value at stop; `need` is a lower bound of its length
 *   2  byte 0xc1 (never used in msgpack) inside the value at stop
 *   3  value at stop longer than maxlen (or announcing more): `need` as 1
 */
static inline unsigned long long
be(const unsigned char *p, int n)
{
    unsigned long long v = 0;
    for (int k = 0; k < n; k++)
        v = (v << 8) | p[k];
    return v;
}

static PyObject *
mp_scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "mp_scan(bytes, int, int)");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t v[2];
    if (!ssize_args(args + 1, v, 2))
        return NULL;
    Py_ssize_t pos = v[0], maxlen = v[1];
    if (pos < 0 || pos > n || maxlen < 1) {
        PyErr_SetString(PyExc_ValueError, "mp_scan: bad position or limit");
        return NULL;
    }
    Py_ssize_t *ends = NULL, nends = 0, cap = 0;
    int status = 0;
    unsigned long long need = 0;
    Py_ssize_t p = pos;
    while (p < n) {
        Py_ssize_t start = p;
        unsigned long long remaining = 1;
        /* The next header's address depends on this value's length: without
         * a hint each value of a few hundred bytes costs a full cache miss.
         * Ask for the lines ahead (the chunk is read in order anyway). */
        for (int k = 1; k <= 8; k++)
            __builtin_prefetch(d + p + 128 * k);
        while (remaining) {
            if (p >= n) {
                status = 1;
                need = (unsigned long long)(p - start) + remaining;
                break;
            }
            unsigned char b = d[p];
            unsigned long long hdr = 1, payload = 0, items = 0;
            int lenbytes = 0; /* big-endian length field after the type byte */
            int kind = 0;     /* 0 scalar/raw, 1 array, 2 map */
            if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            }
            else if (b <= 0x8f) { items = 2ULL * (b & 0x0f); }
            else if (b <= 0x9f) { items = b & 0x0f; }
            else if (b <= 0xbf) { payload = b & 0x1f; }
            else switch (b) {
            case 0xc1: status = 2; break;
            case 0xc4: case 0xd9: lenbytes = 1; break;
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xc7: lenbytes = 1; hdr = 3; break; /* + ext type byte */
            case 0xc8: lenbytes = 2; hdr = 4; break;
            case 0xc9: lenbytes = 4; hdr = 6; break;
            case 0xca: hdr = 5; break;
            case 0xcb: hdr = 9; break;
            case 0xcc: case 0xd0: hdr = 2; break;
            case 0xcd: case 0xd1: hdr = 3; break;
            case 0xce: case 0xd2: hdr = 5; break;
            case 0xcf: case 0xd3: hdr = 9; break;
            case 0xd4: hdr = 3; break;
            case 0xd5: hdr = 4; break;
            case 0xd6: hdr = 6; break;
            case 0xd7: hdr = 10; break;
            case 0xd8: hdr = 18; break;
            case 0xdc: lenbytes = 2; kind = 1; break;
            case 0xdd: lenbytes = 4; kind = 1; break;
            case 0xde: lenbytes = 2; kind = 2; break;
            case 0xdf: lenbytes = 4; kind = 2; break;
            }
            if (status == 2)
                break;
            if (lenbytes) {
                if (hdr == 1)
                    hdr = 1 + (unsigned long long)lenbytes;
                if (n - p < 1 + lenbytes) {
                    status = 1;
                    need = (unsigned long long)(p - start) + hdr + remaining - 1;
                    break;
                }
                unsigned long long v = be(d + p + 1, lenbytes);
                if (kind == 1)
                    items = v;
                else if (kind == 2)
                    items = 2 * v;
                else
                    payload = v;
            }
            unsigned long long size = hdr + payload;
            remaining = remaining - 1 + items;
            if ((unsigned long long)(p - start) + size + remaining > (unsigned long long)maxlen) {
                status = 3;
                need = (unsigned long long)(p - start) + size + remaining;
                break;
            }
            if (size > (unsigned long long)(n - p)) {
                status = 1;
                need = (unsigned long long)(p - start) + size + remaining;
                break;
            }
            p += (Py_ssize_t)size;
        }
        if (status) {
            p = start;
            break;
        }
        if (nends == cap) {
            cap = cap ? 2 * cap : 256;
            Py_ssize_t *grown = PyMem_Realloc(ends, (size_t)cap * sizeof *ends);
            if (grown == NULL) {
                PyMem_Free(ends);
                return PyErr_NoMemory();
            }
            ends = grown;
        }
        ends[nends++] = p;
    }
    PyObject *packed = PyBytes_FromStringAndSize((const char *)ends, nends * (Py_ssize_t)sizeof *ends);
    PyMem_Free(ends);
    if (packed == NULL)
        return NULL;
    return Py_BuildValue("(NniK)", packed, p, status, need);
}


/* ---- a msgpack decoder for the common types ----------------------------------
 * mp_obj decodes one value of d[*pp:end] as msgpack.unpackb(raw=False,
 * use_list=True) would: nil, bool, int, float, str (strict UTF-8), bin, array
 * (list), map (dict; str keys interned, like msgpack). Anything else (ext
 * types, byte 0xc1, invalid UTF-8, unhashable or non-str/bytes keys under
 * strict_map_key, nesting deeper than MP_MAX_DEPTH, short data) returns NULL
 * with no exception: the caller then lets msgpack.unpackb decode the value, so
 * msgpack decides every unusual case (and its error). The tests compare the two
 * on random values. */
#define MP_MAX_DEPTH 32

/* Short strings (method names, map keys) repeat in an RPC stream: a small
 * direct-mapped cache of decoded str objects, keyed by their UTF-8 bytes,
 * spares decoding them again (str is immutable: sharing one is safe). */
#define STR_CACHE_SIZE 256
#define STR_CACHE_MAXLEN 24
static struct {
    Py_ssize_t len;
    PyObject *str;
    char bytes[STR_CACHE_MAXLEN];
} str_cache[STR_CACHE_SIZE];

static PyObject *
mp_str(const char *p, Py_ssize_t len)
{
    if (len > STR_CACHE_MAXLEN)
        return PyUnicode_DecodeUTF8(p, len, NULL);
    uint32_t h = 2166136261u ^ (uint32_t)len;
    for (Py_ssize_t k = 0; k < len; k++)
        h = (h ^ (unsigned char)p[k]) * 16777619u;
    unsigned idx = (h ^ (h >> 16)) & (STR_CACHE_SIZE - 1);
    if (str_cache[idx].str != NULL && str_cache[idx].len == len
        && memcmp(str_cache[idx].bytes, p, (size_t)len) == 0) {
        Py_INCREF(str_cache[idx].str);
        return str_cache[idx].str;
    }
    PyObject *s = PyUnicode_DecodeUTF8(p, len, NULL);
    if (s != NULL) {
        Py_INCREF(s);
        Py_XSETREF(str_cache[idx].str, s);
        str_cache[idx].len = len;
        memcpy(str_cache[idx].bytes, p, (size_t)len);
    }
    return s;
}

static PyObject *mp_obj(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pp, int depth,
                        int strict);

static PyObject *
mp_fail(PyObject *o)
{
    Py_XDECREF(o);
    if (PyErr_Occurred())
        PyErr_Clear();
    return NULL;
}

static PyObject *
mp_array(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pp, Py_ssize_t len, int depth,
         int strict)
{
    if (len > end - *pp) /* every item takes at least one byte */
        return NULL;
    PyObject *list = PyList_New(len);
    if (list == NULL)
        return mp_fail(NULL);
    for (Py_ssize_t k = 0; k < len; k++) {
        PyObject *item = mp_obj(d, end, pp, depth + 1, strict);
        if (item == NULL)
            return mp_fail(list);
        PyList_SET_ITEM(list, k, item);
    }
    return list;
}

static PyObject *
mp_map(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pp, Py_ssize_t len, int depth,
       int strict)
{
    if (len > (end - *pp) / 2)
        return NULL;
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return mp_fail(NULL);
    for (Py_ssize_t k = 0; k < len; k++) {
        PyObject *key = mp_obj(d, end, pp, depth + 1, strict);
        if (key == NULL)
            return mp_fail(dict);
        if (PyUnicode_CheckExact(key))
            PyUnicode_InternInPlace(&key);
        else if (strict && !PyBytes_CheckExact(key)) {
            Py_DECREF(key);
            return mp_fail(dict);
        }
        PyObject *val = mp_obj(d, end, pp, depth + 1, strict);
        if (val == NULL) {
            Py_DECREF(key);
            return mp_fail(dict);
        }
        int rc = PyDict_SetItem(dict, key, val);
        Py_DECREF(key);
        Py_DECREF(val);
        if (rc < 0)
            return mp_fail(dict);
    }
    return dict;
}

static PyObject *
mp_obj(const unsigned char *d, Py_ssize_t end, Py_ssize_t *pp, int depth, int strict)
{
    Py_ssize_t p = *pp;
    if (p >= end || depth > MP_MAX_DEPTH)
        return NULL;
    unsigned char b = d[p++];
    PyObject *o;
    Py_ssize_t len = 0;
    int kind; /* 0 done, 1 str, 2 bin, 3 array, 4 map */
    if (b <= 0x7f) {
        o = PyLong_FromLong(b);
        kind = 0;
    }
    else if (b >= 0xe0) {
        o = PyLong_FromLong((long)(signed char)b);
        kind = 0;
    }
    else if (b <= 0x8f) {
        len = b & 0x0f;
        kind = 4;
    }
    else if (b <= 0x9f) {
        len = b & 0x0f;
        kind = 3;
    }
    else if (b <= 0xbf) {
        len = b & 0x1f;
        kind = 1;
    }
    else {
        int w = 0; /* width of the big-endian field after the type byte */
        switch (b) {
        case 0xc0: Py_INCREF(Py_None); o = Py_None; kind = 0; break;
        case 0xc2: Py_INCREF(Py_False); o = Py_False; kind = 0; break;
        case 0xc3: Py_INCREF(Py_True); o = Py_True; kind = 0; break;
        case 0xc4: w = 1; kind = 2; break;
        case 0xc5: w = 2; kind = 2; break;
        case 0xc6: w = 4; kind = 2; break;
        case 0xd9: w = 1; kind = 1; break;
        case 0xda: w = 2; kind = 1; break;
        case 0xdb: w = 4; kind = 1; break;
        case 0xdc: w = 2; kind = 3; break;
        case 0xdd: w = 4; kind = 3; break;
        case 0xde: w = 2; kind = 4; break;
        case 0xdf: w = 4; kind = 4; break;
        case 0xca: case 0xcb: case 0xcc: case 0xcd: case 0xce: case 0xcf:
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            static const int widths[] = {4, 8, 1, 2, 4, 8, 1, 2, 4, 8};
            int n = widths[b - 0xca];
            if (end - p < n)
                return NULL;
            unsigned long long u = be(d + p, n);
            p += n;
            if (b == 0xca) {
                uint32_t i = (uint32_t)u;
                float f;
                memcpy(&f, &i, 4);
                o = PyFloat_FromDouble((double)f);
            }
            else if (b == 0xcb) {
                double f;
                memcpy(&f, &u, 8);
                o = PyFloat_FromDouble(f);
            }
            else if (b <= 0xcf)
                o = PyLong_FromUnsignedLongLong(u);
            else if (n == 1)
                o = PyLong_FromLong((long)(int8_t)u);
            else if (n == 2)
                o = PyLong_FromLong((long)(int16_t)u);
            else if (n == 4)
                o = PyLong_FromLong((long)(int32_t)u);
            else
                o = PyLong_FromLongLong((long long)(int64_t)u);
            kind = 0;
            break;
        }
        default:
            return NULL; /* ext types, 0xc1: msgpack decides */
        }
        if (w) {
            if (end - p < w)
                return NULL;
            len = (Py_ssize_t)be(d + p, w);
            p += w;
        }
    }
    if (kind == 1 || kind == 2) {
        if (len > end - p)
            return NULL;
        o = kind == 1 ? mp_str((const char *)d + p, len)
                      : PyBytes_FromStringAndSize((const char *)d + p, len);
        p += len;
    }
    else if (kind == 3 || kind == 4) {
        *pp = p;
        return kind == 3 ? mp_array(d, end, pp, len, depth, strict)
                         : mp_map(d, end, pp, len, depth, strict);
    }
    if (o == NULL)
        return mp_fail(NULL);
    *pp = p;
    return o;
}

/* mp_batch(data, ends, i, prev, unpackb, kwvalue, kwnames, out, req, resp, notif) -> int
 * For each value data[prev:ends[i]] (prev = the previous end): raw = those
 * bytes, obj = unpackb(raw, **kw); a well-formed request/response/notification
 * is appended to out as a message; stop (return i) at the first that is not.
 * Exceptions of unpackb propagate (values before it are already in out). */
static PyObject *
mp_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyBytes_CheckExact(args[0])
        || !PyTuple_CheckExact(args[6]) || !PyList_CheckExact(args[7])) {
        PyErr_SetString(PyExc_TypeError, "mp_batch: bad arguments");
        return NULL;
    }
    if (!maker_arg(args[8], 4, "mp_batch") || !maker_arg(args[9], 4, "mp_batch")
        || !maker_arg(args[10], 3, "mp_batch"))
        return NULL;
    PyObject *data = args[0], *ends = args[1], *unpackb = args[4], *kwnames = args[6],
             *out = args[7];
    MakerObject *req = (MakerObject *)args[8], *resp = (MakerObject *)args[9],
                *notif = (MakerObject *)args[10];
    if (PyTuple_GET_SIZE(kwnames) != 1) {
        PyErr_SetString(PyExc_TypeError, "mp_batch: one keyword name");
        return NULL;
    }
    Py_ssize_t v[2];
    if (!ssize_args(args + 2, v, 2))
        return NULL;
    Py_ssize_t i = v[0], prev = v[1];
    const char *buf = PyBytes_AS_STRING(data);
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    int strict = PyObject_IsTrue(args[5]);
    if (strict < 0)
        return NULL;
    Ends ev;
    if (!ends_init(&ev, ends))
        return NULL;
    Py_ssize_t count = ev.n;
    if (i < 0)
        i = count;
    for (; i < count; i++) {
        Py_ssize_t end = ends_get(&ev, i);
        if (end == -1 && PyErr_Occurred())
            return NULL;
        if (prev < 0 || end < prev || end > size) {
            PyErr_SetString(PyExc_ValueError, "mp_batch: offsets outside data");
            return NULL;
        }
        PyObject *raw;
        if (prev == 0 && end == size) { /* the value is all of data: no copy */
            Py_INCREF(data);
            raw = data;
        }
        else if ((raw = PyBytes_FromStringAndSize(buf + prev, end - prev)) == NULL)
            return NULL;
        Py_ssize_t q = prev;
        PyObject *obj = mp_obj((const unsigned char *)buf, end, &q, 0, strict);
        if (obj != NULL && q != end) { /* cannot happen for a scanned value */
            Py_DECREF(obj);
            obj = NULL;
        }
        if (obj == NULL) { /* anything unusual: msgpack decides */
            PyObject *cargs[2] = {raw, args[5]};
            obj = PyObject_Vectorcall(unpackb, cargs, 1, kwnames);
            if (obj == NULL) {
                Py_DECREF(raw);
                return NULL;
            }
        }
        PyObject *fields[4];
        MakerObject *mk = rpc_envelope(obj, req, resp, notif, fields);
        if (mk != NULL)
            fields[mk->n - 1] = raw;
        PyObject *msg = mk ? maker_build(mk, fields) : NULL;
        Py_DECREF(obj);
        Py_DECREF(raw);
        if (mk == NULL)
            break;
        if (msg == NULL)
            return NULL;
        int rc = PyList_Append(out, msg);
        Py_DECREF(msg);
        if (rc < 0)
            return NULL;
        prev = end;
    }
    return PyLong_FromSsize_t(i);
}

/* ---- fixed-header framers: the common case of their _parse loops -----------
 * Each returns to Python (which handles everything else, with the spec checks
 * and error messages) at the first message it does not take. */

static inline int
append_new(PyObject *out, MakerObject *mk, PyObject **fields)
{
    PyObject *msg = maker_build(mk, fields);
    if (msg == NULL)
        return -1;
    int rc = PyList_Append(out, msg);
    Py_DECREF(msg);
    return rc;
}

/* split_length(data, pos, loff, size, big, add, lo, maxlen, strip, out, maker)
 *   -> (pos, flen, ok)
 * Length-prefixed frames from data[pos:]: field of `size` (1, 2, 3, 4, 8) bytes
 * at `loff`, frame length = field + add, accepted when lo <= flen <= maxlen,
 * payload = frame[strip:]. Stops at: not enough bytes for the field (flen = -1,
 * ok = 1), an incomplete frame (flen = its length, ok = 1), or a length outside
 * the range (ok = 0: Python reports it). */
static PyObject *
split_length(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[9])
        || !maker_arg(args[10], 1, "split_length"))
        return nargs == 11 ? NULL : (PyErr_SetString(PyExc_TypeError, "split_length: 11 args"), NULL);
    Py_ssize_t v[8];
    if (!ssize_args(args + 1, v, 8))
        return NULL;
    Py_ssize_t pos = v[0], loff = v[1], size = v[2], big = v[3], add = v[4], lo = v[5],
               maxlen = v[6], strip = v[7];
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *out = args[9];
    MakerObject *mk = (MakerObject *)args[10];
    Py_ssize_t end_off = loff + size;
    if (pos < 0 || loff < 0 || !(size == 1 || size == 2 || size == 3 || size == 4 || size == 8)
        || strip < 0 || lo < end_off || lo < strip || maxlen < lo
        || add > PY_SSIZE_T_MAX / 4 || add < -(PY_SSIZE_T_MAX / 4)) {
        PyErr_SetString(PyExc_ValueError, "split_length: bad configuration");
        return NULL;
    }
    Py_ssize_t flen = -1;
    int ok = 1;
    while (n - pos >= end_off) {
        const unsigned char *f = d + pos + loff;
        unsigned long long raw = 0;
        if (big)
            for (Py_ssize_t k = 0; k < size; k++) raw = (raw << 8) | f[k];
        else
            for (Py_ssize_t k = size; k > 0; k--) raw = (raw << 8) | f[k - 1];
        if (raw > (unsigned long long)(PY_SSIZE_T_MAX / 4)) {
            ok = 0;
            break;
        }
        flen = (Py_ssize_t)raw + add;
        if (flen > maxlen || flen < lo) {
            ok = 0;
            break;
        }
        if (flen > n - pos)
            break;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)d + pos + strip, flen - strip);
        if (payload == NULL)
            return NULL;
        int rc = append_new(out, mk, &payload);
        Py_DECREF(payload);
        if (rc < 0)
            return NULL;
        pos += flen;
        flen = -1;
    }
    return Py_BuildValue("(nni)", pos, flen, ok);
}

/* split_onc(data, pos, maxlen, out, maker) -> pos
 * Single-fragment ONC RPC records (last-fragment bit set, length <= maxlen)
 * from data[pos:]; stops at anything else or an incomplete record. */
static PyObject *
split_onc(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "split_onc(bytes, int, int, list, Maker)");
        return NULL;
    }
    if (!maker_arg(args[4], 1, "split_onc"))
        return NULL;
    Py_ssize_t v[2];
    if (!ssize_args(args + 1, v, 2))
        return NULL;
    Py_ssize_t pos = v[0], maxlen = v[1];
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "split_onc: negative position");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *out = args[3];
    MakerObject *mk = (MakerObject *)args[4];
    while (n - pos >= 4) {
        unsigned long word = ((unsigned long)d[pos] << 24) | ((unsigned long)d[pos + 1] << 16)
                             | ((unsigned long)d[pos + 2] << 8) | d[pos + 3];
        if (!(word & 0x80000000UL))
            break;
        Py_ssize_t flen = (Py_ssize_t)(word & 0x7FFFFFFFUL);
        if (flen > maxlen || flen > n - pos - 4)
            break;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)d + pos + 4, flen);
        if (payload == NULL)
            return NULL;
        int rc = append_new(out, mk, &payload);
        Py_DECREF(payload);
        if (rc < 0)
            return NULL;
        pos += 4 + flen;
    }
    return PyLong_FromSsize_t(pos);
}

/* split_nvme(data, pos, cache, out, maker) -> pos
 * NVMe/TCP PDUs from data[pos:] whose first 4 common-header bytes are already
 * classified in `cache` (key -> (min_plen, max_plen, data_start, hd, dd, hlen,
 * type, pdo)) without digests and not ICReq/ICResp; PLEN in range; whole.
 * Stops at anything else (Python classifies, verifies digests, learns, reports). */
static PyObject *
split_nvme(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_CheckExact(args[0]) || !PyDict_CheckExact(args[2])
        || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "split_nvme(bytes, int, dict, list, Maker)");
        return NULL;
    }
    if (!maker_arg(args[4], 3, "split_nvme"))
        return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "split_nvme: negative position");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    PyObject *cache = args[2], *out = args[3];
    MakerObject *mk = (MakerObject *)args[4];
    unsigned long last_key = 0xFFFFFFFFUL + 0; /* impossible until set */
    int have_last = 0;
    Py_ssize_t minp = 0, maxp = 0, ds = 0, hlen = 0;
    PyObject *ptype = NULL;
    while (n - pos >= 8) {
        const unsigned char *c = d + pos;
        unsigned long key = (unsigned long)c[0] | ((unsigned long)c[1] << 8)
                            | ((unsigned long)c[2] << 16) | ((unsigned long)c[3] << 24);
        Py_ssize_t plen = (Py_ssize_t)((unsigned long)c[4] | ((unsigned long)c[5] << 8)
                                       | ((unsigned long)c[6] << 16) | ((unsigned long)c[7] << 24));
        if (!have_last || key != last_key) {
            PyObject *k = PyLong_FromUnsignedLong(key);
            if (k == NULL)
                return NULL;
            PyObject *ent = PyDict_GetItemWithError(cache, k);
            Py_DECREF(k);
            if (ent == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                break;
            }
            if (!PyTuple_CheckExact(ent) || PyTuple_GET_SIZE(ent) != 8)
                break;
            Py_ssize_t e[8];
            for (int j = 0; j < 7; j++) {
                e[j] = PyLong_AsSsize_t(PyTuple_GET_ITEM(ent, j));
                if (e[j] == -1 && PyErr_Occurred())
                    return NULL;
            }
            /* e: min_plen, max_plen, data_start, hd, dd, hlen, type */
            if (e[3] || e[4] || e[6] <= 1 || e[5] < 8 || e[2] < e[5] || e[0] < e[2])
                break; /* digests, ICReq/ICResp: Python */
            minp = e[0]; maxp = e[1]; ds = e[2]; hlen = e[5];
            ptype = PyTuple_GET_ITEM(ent, 6);
            last_key = key;
            have_last = 1;
        }
        if (plen < minp || plen > maxp || plen > n - pos)
            break;
        PyObject *fields[3];
        fields[0] = PyBytes_FromStringAndSize((const char *)c, hlen);
        if (fields[0] == NULL)
            return NULL;
        fields[1] = PyBytes_FromStringAndSize((const char *)c + ds, plen - ds);
        if (fields[1] == NULL) {
            Py_DECREF(fields[0]);
            return NULL;
        }
        fields[2] = ptype;
        int rc = append_new(out, mk, fields);
        Py_DECREF(fields[0]);
        Py_DECREF(fields[1]);
        if (rc < 0)
            return NULL;
        pos += plen;
    }
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef methods[] = {
    {"split_length", (PyCFunction)(void (*)(void))split_length, METH_FASTCALL,
     "split_length(data, pos, loff, size, big, add, lo, maxlen, strip, out, maker) "
     "-> (pos, flen, ok)."},
    {"split_onc", (PyCFunction)(void (*)(void))split_onc, METH_FASTCALL,
     "split_onc(data, pos, maxlen, out, maker) -> pos."},
    {"split_nvme", (PyCFunction)(void (*)(void))split_nvme, METH_FASTCALL,
     "split_nvme(data, pos, cache, out, maker) -> pos."},
    {"mp_scan", (PyCFunction)(void (*)(void))mp_scan, METH_FASTCALL,
     "mp_scan(data, pos, maxlen) -> (ends, stop, status, need): msgpack value boundaries."},
    {"mp_batch", (PyCFunction)(void (*)(void))mp_batch, METH_FASTCALL,
     "mp_batch(data, ends, i, prev, unpackb, kwvalue, kwnames, out, req, resp, notif) -> int."},
    {"rpc_batch", (PyCFunction)(void (*)(void))rpc_batch, METH_FASTCALL,
     "rpc_batch(objs, ends, data, start, prev, i, out, req, resp, notif) -> index of the first "
     "value not taken (see framing._msgpack_rpc._py_rpc_batch)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "framing._speedups",
    .m_doc = "Optional accelerator for framing.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&Maker_Type) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod == NULL)
        return NULL;
    Py_INCREF(&Maker_Type);
    if (PyModule_AddObject(mod, "Maker", (PyObject *)&Maker_Type) < 0) {
        Py_DECREF(&Maker_Type);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
