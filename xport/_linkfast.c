/* Optional accelerator for the link's per-message loops (xport._link.Link).
 * Built in place by `python scripts/build_accelerators.py`; without it (or with
 * XPORT_PURE_PYTHON=1) the link runs its pure-Python loops, which are the
 * reference: tests/xport/test_linkfast.py compares the two.
 *
 * Functions called once per receive batch or flush (rx_frames, pack_frames;
 * queue_runs once per AsyncLink.try_send_runs; documented where they are
 * defined) or once per frame, never once per message. Three small callable
 * types stand for the AF_XDP backend's per-wake-up Python methods, calling
 * the cffi module's burst helpers through their addresses (StrideTx: the
 * flush's TX, CounterReader: rx_buffers_posted, RxCopies: recv_copies;
 * tests/xport/test_link_fast_tx.py compares each with its method), and two
 * more are Link.flush and Link.poll over them (Flusher, Poller;
 * tests/xport/test_link_flush_c.py and test_link_poll_c.py), and one is
 * AsyncLink._on_readable over those two (Waker; tests/xport/test_waker.py).
 * All do only the hot, common case and stop at anything else,
 * leaving it to the Python loop of the rare path in xport/_link.py:
 *
 *   rx_whole(data, off, end, left, raw, out) -> (off, left, merged)
 *       Walk the messages of one received frame from `off` (a message header)
 *       while they are whole version-1 DATA (aux <= length) or whole 8-byte
 *       CREDIT, appending to `out` exactly what Link.poll appends for them:
 *       for DATA with aux == 0, `(conn_id, payload)` when `raw` is 1, and
 *       when `raw` is 2 the payload joins the run `(conn_id, [payloads])`
 *       that ends `out` if it is this connection's (else a new run starts);
 *       else a Data; a Credit. Stops, without consuming it, at the first
 *       message that is anything else (truncated, other version, fragment,
 *       control type, bad aux): returns the offset of that message, the
 *       messages still left and how many payloads joined a run already in
 *       `out` (so `out` holds `left_before - left - merged` more entries).
 *
 *   pack_whole(queue, buf, off, count, frame_size) -> (off, n, nbytes)
 *       Pop whole messages `(mtype, conn_id, aux, payload)` from the deque
 *       `queue` and write COMMON_HEADER + payload at `off` in the bytearray
 *       `buf` while they fit in `frame_size` bytes and the frame holds fewer
 *       than 0xFFFF messages (`count` already in it). Stops, leaving the entry
 *       queued, at one that does not fit (Python fragments it or closes the
 *       frame) or that it cannot pack bit-identically (odd payload types,
 *       fields out of range: Python packs them, or raises as before).
 *       Returns the new offset, the messages packed and their payload bytes.
 *
 *   init(Data, Credit) stores the message classes (once, at import).
 *
 * Data and Credit are frozen slotted dataclasses: they are built as
 * object.__new__ + the slot descriptors' __set__ would build them (what the
 * Python loop does), by writing the three slots at their member offsets,
 * found and checked once in init(). Wire layout: docs/protocol.md §2.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* docs/protocol.md §2 and §3; xport._link checks them against _protocol.py */
#define PROTOCOL_VERSION 1
#define HEADER_SIZE 16
#define TYPE_DATA 8
#define TYPE_CREDIT 11
#define FLAGS_WHOLE 0x03 /* FIRST | LAST */
#define CREDIT_BODY 8    /* §3.11: messages u32, bytes u32 */
#define MAX_COUNT 0xFFFF /* msg_count is a u16 (§1) */

/* A slotted class and the offsets of its three object slots, in field order. */
typedef struct {
    PyTypeObject *cls;
    Py_ssize_t off[3];
} SlotClass;

static SlotClass data_cls;   /* Data(conn_id, payload, header_length) */
static SlotClass credit_cls; /* Credit(conn_id, messages, bytes) */

static int
slot_class_init(SlotClass *sc, PyObject *cls, const char *const names[3])
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "init: a class expected");
        return -1;
    }
    PyTypeObject *tp = (PyTypeObject *)cls;
    /* instances must be plain heap objects that tp_alloc fully sets up */
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE) || tp->tp_alloc != PyType_GenericAlloc
        || tp->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "init: %s is not a plain slotted class", tp->tp_name);
        return -1;
    }
    Py_ssize_t off[3];
    for (int i = 0; i < 3; i++) {
        PyObject *d = PyDict_GetItemString(tp->tp_dict, names[i]); /* borrowed */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyDescrObject *)d)->d_type != tp) {
            PyErr_Format(PyExc_TypeError, "init: %s has no slot %s", tp->tp_name, names[i]);
            return -1;
        }
        PyMemberDef *def = ((PyMemberDescrObject *)d)->d_member;
        if (def->type != T_OBJECT_EX || (def->flags & READONLY) || def->offset <= 0
            || def->offset + (Py_ssize_t)sizeof(PyObject *) > tp->tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "init: %s.%s is not an object slot", tp->tp_name,
                         names[i]);
            return -1;
        }
        off[i] = def->offset;
    }
    Py_INCREF(tp);
    Py_XSETREF(sc->cls, tp);
    memcpy(sc->off, off, sizeof off);
    return 0;
}

/* A new instance of sc->cls with its slots set to a, b, c (references stolen;
 * any of them NULL means an earlier allocation failed: clean up, return NULL). */
static PyObject *
slot_class_new(SlotClass *sc, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *obj = NULL;
    if (a != NULL && b != NULL && c != NULL)
        obj = sc->cls->tp_alloc(sc->cls, 0);
    if (obj == NULL) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return NULL;
    }
    /* tp_alloc zeroed the slots: nothing to release before writing them */
    *(PyObject **)((char *)obj + sc->off[0]) = a;
    *(PyObject **)((char *)obj + sc->off[1]) = b;
    *(PyObject **)((char *)obj + sc->off[2]) = c;
    return obj;
}

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline unsigned
be16(const unsigned char *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

static inline void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void
put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

/* The message at p (HEADER_SIZE + length bytes, all in bounds) as Link.poll
 * builds it; NULL with an exception set on failure. */
static PyObject *
rx_message(const unsigned char *p, unsigned mtype, unsigned length, unsigned aux, int raw)
{
    const unsigned char *body = p + HEADER_SIZE;
    PyObject *conn = PyLong_FromUnsignedLong(be32(p + 4));
    if (conn == NULL)
        return NULL;
    if (mtype == TYPE_CREDIT) {
        PyObject *msgs = PyLong_FromUnsignedLong(be32(body));
        PyObject *nbytes = msgs ? PyLong_FromUnsignedLong(be32(body + 4)) : NULL;
        return slot_class_new(&credit_cls, conn, msgs, nbytes);
    }
    /* data[off:mend] */
    PyObject *payload = PyBytes_FromStringAndSize((const char *)body, length);
    if (payload == NULL || !raw || aux != 0) {
        PyObject *hlen = payload ? PyLong_FromLong((long)aux) : NULL;
        return slot_class_new(&data_cls, conn, payload, hlen);
    }
    PyObject *t = PyTuple_New(2); /* Link.raw_data: (conn_id, payload) */
    if (t == NULL) {
        Py_DECREF(conn);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, conn);
    PyTuple_SET_ITEM(t, 1, payload);
    return t;
}

/* raw == 2: append the payload at p to the run ending `out` if it is
 * connection `conn`'s, else start a run. 1 if it joined a run, 0 if it
 * started one, -1 with an exception set. */
static int
rx_run(PyObject *out, const unsigned char *p, unsigned length, uint32_t conn)
{
    Py_ssize_t n = PyList_GET_SIZE(out);
    PyObject *run = NULL; /* borrowed: the list of the run to join */
    if (n > 0) {
        PyObject *last = PyList_GET_ITEM(out, n - 1);
        if (PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 2
            && PyList_CheckExact(PyTuple_GET_ITEM(last, 1))
            && PyLong_CheckExact(PyTuple_GET_ITEM(last, 0))) {
            unsigned long c = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(last, 0));
            if (c == (unsigned long)-1 && PyErr_Occurred())
                PyErr_Clear(); /* not a conn_id: not a run of ours */
            else if (c == conn)
                run = PyTuple_GET_ITEM(last, 1);
        }
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)p + HEADER_SIZE, length);
    if (payload == NULL)
        return -1;
    if (run != NULL) {
        int rc = PyList_Append(run, payload);
        Py_DECREF(payload);
        return rc < 0 ? -1 : 1;
    }
    PyObject *list = PyList_New(1);
    if (list == NULL) {
        Py_DECREF(payload);
        return -1;
    }
    PyList_SET_ITEM(list, 0, payload); /* stolen */
    PyObject *conn_obj = PyLong_FromUnsignedLong(conn);
    if (conn_obj == NULL) {
        Py_DECREF(list);
        return -1;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(conn_obj);
        Py_DECREF(list);
        return -1;
    }
    PyTuple_SET_ITEM(t, 0, conn_obj);
    PyTuple_SET_ITEM(t, 1, list);
    int rc = PyList_Append(out, t);
    Py_DECREF(t);
    return rc < 0 ? -1 : 0;
}

/* A Py_ssize_t argument; -1 with an exception set if it is not one. */
static int
ssize_arg(PyObject *v, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* The receive calls' common arguments: init() done, and `raw` (0: Data
 * objects, 1: (conn_id, payload), 2: runs; bools are 0 and 1) in range;
 * -1 with an exception set naming `fn`. */
static int
rx_ready(const char *fn, PyObject *v, long *raw)
{
    if (data_cls.cls == NULL || credit_cls.cls == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: init(Data, Credit) not called", fn);
        return -1;
    }
    *raw = PyLong_AsLong(v);
    if (*raw == -1 && PyErr_Occurred())
        return -1;
    if (*raw < 0 || *raw > 2) {
        PyErr_Format(PyExc_ValueError, "%s: raw must be 0, 1 or 2", fn);
        return -1;
    }
    return 0;
}

/* rx_whole's loop: the whole DATA/CREDIT messages of a frame from *off;
 * *off, *left and *merged advanced; -1 with an exception set. */
static int
rx_msgs(const unsigned char *data, Py_ssize_t *offp, Py_ssize_t end, Py_ssize_t *leftp,
        long raw, PyObject *out, Py_ssize_t *mergedp)
{
    Py_ssize_t off = *offp, left = *leftp, merged = *mergedp;
    int rc = 0;
    while (left > 0) {
        /* §2: bounds check before reading each message header */
        if (off > end - HEADER_SIZE)
            break;
        const unsigned char *p = data + off;
        unsigned mtype = p[1];
        unsigned length = be16(p + 8);
        unsigned aux = be16(p + 10);
        Py_ssize_t mend = off + HEADER_SIZE + (Py_ssize_t)length;
        if (mend > end || p[0] != PROTOCOL_VERSION)
            break; /* truncated or another version: Python counts and drops */
        /* whole (§2: FIRST|LAST, length == total) and one of the hot types */
        if ((p[2] & FLAGS_WHOLE) != FLAGS_WHOLE || be32(p + 12) != length)
            break;
        if (!(mtype == TYPE_DATA && aux <= length)
            && !(mtype == TYPE_CREDIT && length == CREDIT_BODY))
            break;
        if (raw == 2 && mtype == TYPE_DATA && aux == 0) {
            int joined = rx_run(out, p, length, be32(p + 4));
            if (joined < 0) {
                rc = -1;
                break;
            }
            merged += joined;
            off = mend;
            left--;
            continue;
        }
        PyObject *msg = rx_message(p, mtype, length, aux, raw != 0);
        if (msg == NULL) {
            rc = -1;
            break;
        }
        rc = PyList_Append(out, msg);
        Py_DECREF(msg);
        if (rc < 0)
            break;
        off = mend;
        left--;
    }
    *offp = off;
    *leftp = left;
    *mergedp = merged;
    return rc;
}

static PyObject *
rx_whole(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "rx_whole(data: bytes, off, end, left, raw, out: list)");
        return NULL;
    }
    long raw;
    if (rx_ready("rx_whole", args[4], &raw) < 0)
        return NULL;
    Py_ssize_t off, end, left;
    if (ssize_arg(args[1], &off) < 0 || ssize_arg(args[2], &end) < 0
        || ssize_arg(args[3], &left) < 0)
        return NULL;
    Py_ssize_t merged = 0;
    PyObject *out = args[5];
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    /* the caller checked end against the frame; never trust it for memory safety */
    if (off < 0 || end > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "rx_whole: off/end outside data");
        return NULL;
    }
    if (rx_msgs(data, &off, end, &left, raw, out, &merged) < 0)
        return NULL;
    return Py_BuildValue("(nnn)", off, left, merged);
}

/* An unsigned int field of a queue entry in [0, max], or -1 (no exception). */
static long long
entry_uint(PyObject *v, unsigned long max)
{
    if (!PyLong_Check(v))
        return -1;
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (x == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return x <= max ? (long long)x : -1;
}

/* "extend", and the ints DATA, CREDIT and 0 (set at module init): the queue
 * entries' fields, compared by identity first (small ints are shared) */
static PyObject *s_extend, *o_data, *o_credit, *o_zero;

/* What pack_head did with the queue's head entry. */
enum { HEAD_PACKED = 1, HEAD_PYTHON = 0, HEAD_NO_ROOM = 2, HEAD_EMPTY = 3, HEAD_ERROR = -1 };

/* Pack the head entry `(mtype, conn_id, aux, payload)` of `queue` whole at
 * buf[*off], the frame ending at buf[frame_end], and pop it: HEAD_PACKED
 * (*off and *nbytes advanced). HEAD_NO_ROOM: it is packable but does not fit
 * (*total: its payload length). HEAD_EMPTY: the queue is empty. HEAD_PYTHON:
 * the entry is one Python packs (odd payload types, fields out of range: Python packs
 * them, or raises as before). HEAD_ERROR: an exception is set. */
static int
pack_head(PyObject *queue, PyObject *popleft, PyObject *buf, Py_ssize_t *off,
          Py_ssize_t frame_end, Py_ssize_t *nbytes, Py_ssize_t *total_out)
{
    Py_ssize_t qlen = PySequence_Size(queue);
    if (qlen < 0)
        return HEAD_ERROR;
    if (qlen == 0)
        return HEAD_EMPTY;
    PyObject *entry = PySequence_GetItem(queue, 0); /* peek; popped once packed */
    if (entry == NULL)
        return HEAD_ERROR;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
        Py_DECREF(entry);
        return HEAD_PYTHON;
    }
    PyObject *mo = PyTuple_GET_ITEM(entry, 0), *ao = PyTuple_GET_ITEM(entry, 2);
    long long mtype = mo == o_data ? TYPE_DATA : entry_uint(mo, 0xFF);
    long long conn = entry_uint(PyTuple_GET_ITEM(entry, 1), 0xFFFFFFFFUL);
    long long aux = ao == o_zero ? 0 : entry_uint(ao, 0xFFFF);
    PyObject *payload = PyTuple_GET_ITEM(entry, 3);
    if (mtype < 0 || conn < 0 || aux < 0) {
        Py_DECREF(entry);
        return HEAD_PYTHON; /* Python's struct.pack_into raises for these, as before */
    }
    /* the payload's bytes; anything but 1-byte contiguous items goes to Python */
    Py_buffer view;
    view.obj = NULL; /* no view held (bytes: read in place) */
    const char *src;
    Py_ssize_t total;
    if (PyBytes_CheckExact(payload)) {
        src = PyBytes_AS_STRING(payload);
        total = PyBytes_GET_SIZE(payload);
    }
    else {
        if (!(PyByteArray_CheckExact(payload) || PyMemoryView_Check(payload))) {
            Py_DECREF(entry);
            return HEAD_PYTHON;
        }
        if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            Py_DECREF(entry);
            return HEAD_PYTHON;
        }
        src = (const char *)view.buf;
        total = view.len;
        if (PyMemoryView_Check(payload) && PyObject_Size(payload) != total) {
            PyErr_Clear();
            PyBuffer_Release(&view);
            Py_DECREF(entry);
            return HEAD_PYTHON;
        }
    }
    if (total > 0xFFFF || *off + HEADER_SIZE + total > frame_end) {
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        Py_DECREF(entry);
        *total_out = total;
        return HEAD_NO_ROOM; /* needs fragments (§2.2) or the next frame */
    }
    unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(buf) + *off;
    p[0] = PROTOCOL_VERSION;
    p[1] = (unsigned char)mtype;
    p[2] = FLAGS_WHOLE;
    p[3] = 0;
    put32(p + 4, (uint32_t)conn);
    put16(p + 8, (unsigned)total);
    put16(p + 10, (unsigned)aux);
    put32(p + 12, (uint32_t)total);
    memcpy(p + HEADER_SIZE, src, (size_t)total);
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    Py_DECREF(entry);
    PyObject *popped = PyObject_CallNoArgs(popleft);
    if (popped == NULL)
        return HEAD_ERROR;
    Py_DECREF(popped);
    *off += HEADER_SIZE + total;
    *nbytes += total;
    return HEAD_PACKED;
}

static PyObject *
pack_whole(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyByteArray_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_whole(queue: deque, buf: bytearray, off, count, frame_size)");
        return NULL;
    }
    PyObject *queue = args[0], *buf = args[1];
    Py_ssize_t off, count, frame_size;
    if (ssize_arg(args[2], &off) < 0 || ssize_arg(args[3], &count) < 0
        || ssize_arg(args[4], &frame_size) < 0)
        return NULL;
    /* room is tested against frame_size; the buffer must really be that large */
    if (off < 0 || frame_size > PyByteArray_GET_SIZE(buf)) {
        PyErr_SetString(PyExc_ValueError, "pack_whole: frame_size exceeds the buffer");
        return NULL;
    }
    PyObject *popleft = PyObject_GetAttrString(queue, "popleft");
    if (popleft == NULL)
        return NULL;
    Py_ssize_t n = 0, nbytes = 0, total = 0;
    while (count + n < MAX_COUNT) {
        int rc = pack_head(queue, popleft, buf, &off, frame_size, &nbytes, &total);
        if (rc == HEAD_ERROR) {
            Py_DECREF(popleft);
            return NULL;
        }
        if (rc != HEAD_PACKED)
            break;
        n++;
    }
    Py_DECREF(popleft);
    return Py_BuildValue("(nnn)", off, n, nbytes);
}

/* docs/protocol.md §1: Ethernet (14) + link header (20) */
#define ETH_HEADER_SIZE 14
#define FRAME_HEADER_SIZE 34
#define LINK_VERSION 1

/* pack_frames' loop (see there), frames from slot 0 while fewer than
 * `nframes`: -1 with an exception set, else 0 with *nf frames closed, the
 * open frame's absolute *off and *count (0 and 0: none) and the messages
 * and payload bytes packed in *msgs and *nbytes. hv: seq, credit, ack. */
static int
pack_loop(PyObject *queue, PyObject *popleft, PyObject *buf, Py_ssize_t frame_size,
          Py_ssize_t nframes, const uint32_t hv[3], uint32_t *lenp, Py_ssize_t *nf_out,
          Py_ssize_t *off_out, Py_ssize_t *count_out, Py_ssize_t *msgs_out, Py_ssize_t *nbytes_out)
{
    Py_ssize_t nf = 0, msgs = 0, nbytes = 0, off = 0, count = 0, total = 0;
    int rc = HEAD_PYTHON;
    while (nf < nframes) {
        Py_ssize_t base = nf * frame_size;
        off = base + FRAME_HEADER_SIZE;
        count = 0;
        for (;;) {
            rc = pack_head(queue, popleft, buf, &off, base + frame_size, &nbytes, &total);
            if (rc != HEAD_PACKED)
                break;
            msgs++;
            if (++count == MAX_COUNT)
                break;
        }
        if (rc == HEAD_ERROR)
            return -1;
        /* nothing packed, an entry for Python (the frame stays open), or
         * HEAD_NO_ROOM for what fits in no frame (Python fragments it, §2.2) */
        if (count == 0 || rc == HEAD_PYTHON
            || (rc == HEAD_NO_ROOM && total > frame_size - FRAME_HEADER_SIZE - HEADER_SIZE))
            break;
        unsigned char *h = (unsigned char *)PyByteArray_AS_STRING(buf) + base + ETH_HEADER_SIZE;
        h[0] = LINK_VERSION;
        h[1] = 0;
        put16(h + 2, (unsigned)count);
        put32(h + 4, hv[0] + (uint32_t)nf);
        put32(h + 8, hv[1]);
        put32(h + 12, hv[2]);
        put16(h + 16, (unsigned)(off - base - FRAME_HEADER_SIZE));
        put16(h + 18, 0);
        lenp[nf] = (uint32_t)(off - base);
        nf++;
        off = 0;
        count = 0;
        if (rc == HEAD_EMPTY)
            break;
    }
    *nf_out = nf;
    *off_out = count ? off : 0;
    *count_out = count;
    *msgs_out = msgs;
    *nbytes_out = nbytes;
    return 0;
}

/* pack_frames(queue, buf, frame_size, nframes, seq, credit, ack, lens)
 *     -> (frames, off, count, msgs, nbytes)
 * Link._send_data_frames's common case, all frames of a flush in one call:
 * frame i is built in the slot buf[i * frame_size:(i + 1) * frame_size]
 * (its Ethernet header written there already) from whole queued messages,
 * as pack_whole packs them; a message that does not fit closes the frame
 * and goes first in the next one when it fits in an empty frame. A closed
 * frame gets its link header (§1: version 1, flags 0, msg_count, seq + i,
 * credit, ack, payload_length) and lens[i] = its length. Stops after
 * `nframes` frames, when the queue is empty (the last frame closed), or at
 * an entry it leaves to Python (one to fragment, §2.2, or that pack_whole
 * would not pack): then frame `frames` stays open, `off` (absolute in buf)
 * and `count` saying how far it is filled (count 0: not started). `msgs`
 * and `nbytes`: messages and payload bytes packed. */
static PyObject *
pack_frames(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyByteArray_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "pack_frames(queue: deque, buf: bytearray, frame_size, "
                                         "nframes, seq, credit, ack, lens: array)");
        return NULL;
    }
    PyObject *queue = args[0], *buf = args[1];
    Py_ssize_t frame_size, nframes;
    if (ssize_arg(args[2], &frame_size) < 0 || ssize_arg(args[3], &nframes) < 0)
        return NULL;
    unsigned long hv[3];
    for (int i = 0; i < 3; i++) {
        hv[i] = PyLong_AsUnsignedLong(args[4 + i]);
        if (hv[i] == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (hv[i] > 0xFFFFFFFFUL) {
            PyErr_SetString(PyExc_ValueError, "pack_frames: seq, credit, ack must be u32");
            return NULL;
        }
    }
    Py_buffer lens;
    if (PyObject_GetBuffer(args[7], &lens, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    if (lens.itemsize != 4 || lens.format == NULL || strcmp(lens.format, "I") != 0
        || frame_size < FRAME_HEADER_SIZE + HEADER_SIZE || nframes < 0
        || lens.len / 4 < nframes || nframes > PyByteArray_GET_SIZE(buf) / frame_size) {
        PyBuffer_Release(&lens);
        PyErr_SetString(PyExc_ValueError,
                        "pack_frames: lens must be array('I') and buf hold nframes slots");
        return NULL;
    }
    PyObject *popleft = PyObject_GetAttrString(queue, "popleft");
    if (popleft == NULL) {
        PyBuffer_Release(&lens);
        return NULL;
    }
    uint32_t hv32[3] = {(uint32_t)hv[0], (uint32_t)hv[1], (uint32_t)hv[2]};
    Py_ssize_t nf = 0, msgs = 0, nbytes = 0, off = 0, count = 0;
    int rc = pack_loop(queue, popleft, buf, frame_size, nframes, hv32, (uint32_t *)lens.buf, &nf,
                       &off, &count, &msgs, &nbytes);
    Py_DECREF(popleft);
    PyBuffer_Release(&lens);
    if (rc < 0)
        return NULL;
    return Py_BuildValue("(nnnnn)", nf, off, count, msgs, nbytes);
}

/* queue_runs(queue, runs, credits) -> bool
 * AsyncLink.try_send_runs's queueing, in one call: for each run
 * `(conn_id, payloads)` of `runs` the entries `(DATA, conn_id, 0, payload)`,
 * in order, then for each `(conn_id, messages, bytes)` of `credits` the entry
 * `(CREDIT, conn_id, 0, messages and bytes as two big-endian u32)`, appended
 * to the deque `queue` with one extend: the entries the Python loop builds
 * (the same conn_id and payload objects). False, with nothing queued, when an
 * input is not of the shapes taken here (runs and credits lists or tuples,
 * a run a 2-tuple whose payloads are a list or tuple, a credit a 3-tuple of
 * ints with messages and bytes in u32): Python's loop then queues them, or
 * raises as before. */

static PyObject *
queue_runs(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "queue_runs(queue: deque, runs, credits)");
        return NULL;
    }
    PyObject *queue = args[0], *runs = args[1], *credits = args[2];
    if (!(PyList_CheckExact(runs) || PyTuple_CheckExact(runs))
        || !(PyList_CheckExact(credits) || PyTuple_CheckExact(credits)))
        Py_RETURN_FALSE;
    Py_ssize_t nr = PySequence_Fast_GET_SIZE(runs), nc = PySequence_Fast_GET_SIZE(credits);
    Py_ssize_t total = nc;
    /* check everything first: all or nothing */
    for (Py_ssize_t i = 0; i < nr; i++) {
        PyObject *run = PySequence_Fast_GET_ITEM(runs, i);
        if (!PyTuple_CheckExact(run) || PyTuple_GET_SIZE(run) != 2)
            Py_RETURN_FALSE;
        PyObject *pl = PyTuple_GET_ITEM(run, 1);
        if (!(PyList_CheckExact(pl) || PyTuple_CheckExact(pl)))
            Py_RETURN_FALSE;
        total += PySequence_Fast_GET_SIZE(pl);
    }
    uint32_t cv[2];
    for (Py_ssize_t i = 0; i < nc; i++) {
        PyObject *c = PySequence_Fast_GET_ITEM(credits, i);
        if (!PyTuple_CheckExact(c) || PyTuple_GET_SIZE(c) != 3)
            Py_RETURN_FALSE;
        for (int k = 0; k < 2; k++)
            if (entry_uint(PyTuple_GET_ITEM(c, 1 + k), 0xFFFFFFFFUL) < 0
                || !PyLong_CheckExact(PyTuple_GET_ITEM(c, 1 + k)))
                Py_RETURN_FALSE; /* struct.pack's to judge (it raises for most) */
    }
    PyObject *entries = PyList_New(total);
    if (entries == NULL)
        return NULL;
    /* Nothing below runs Python code, but an allocation may start a garbage
     * collection whose finalizers could: every item is checked again as it
     * is read, and held while its fields are used. */
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < nr; i++) {
        if (i >= PySequence_Fast_GET_SIZE(runs))
            goto changed;
        PyObject *run = PySequence_Fast_GET_ITEM(runs, i);
        if (!PyTuple_CheckExact(run) || PyTuple_GET_SIZE(run) != 2)
            goto changed;
        Py_INCREF(run); /* its conn_id and payloads live while it does */
        PyObject *conn = PyTuple_GET_ITEM(run, 0), *pl = PyTuple_GET_ITEM(run, 1);
        if (!(PyList_CheckExact(pl) || PyTuple_CheckExact(pl))) {
            Py_DECREF(run);
            goto changed;
        }
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(pl); j++) {
            if (n >= total - nc) {
                Py_DECREF(run);
                goto changed;
            }
            PyObject *t = PyTuple_New(4);
            if (t == NULL) {
                Py_DECREF(run);
                goto error;
            }
            PyObject *payload = PySequence_Fast_GET_ITEM(pl, j); /* read after the allocation */
            Py_INCREF(o_data);
            PyTuple_SET_ITEM(t, 0, o_data);
            Py_INCREF(conn);
            PyTuple_SET_ITEM(t, 1, conn);
            Py_INCREF(o_zero);
            PyTuple_SET_ITEM(t, 2, o_zero);
            Py_INCREF(payload);
            PyTuple_SET_ITEM(t, 3, payload);
            PyList_SET_ITEM(entries, n++, t);
        }
        Py_DECREF(run);
    }
    if (n != total - nc || PySequence_Fast_GET_SIZE(credits) != nc)
        goto changed;
    for (Py_ssize_t i = 0; i < nc; i++) {
        PyObject *body = PyBytes_FromStringAndSize(NULL, CREDIT_BODY);
        if (body == NULL)
            goto error;
        PyObject *t = PyTuple_New(4);
        if (t == NULL) {
            Py_DECREF(body);
            goto error;
        }
        /* read after the allocations; a tuple's fields never change */
        PyObject *c = i < PySequence_Fast_GET_SIZE(credits) ? PySequence_Fast_GET_ITEM(credits, i)
                                                            : NULL;
        if (c == NULL || !PyTuple_CheckExact(c) || PyTuple_GET_SIZE(c) != 3) {
            Py_DECREF(body);
            Py_DECREF(t);
            goto changed;
        }
        for (int k = 0; k < 2; k++) {
            long long v = PyLong_CheckExact(PyTuple_GET_ITEM(c, 1 + k))
                              ? entry_uint(PyTuple_GET_ITEM(c, 1 + k), 0xFFFFFFFFUL)
                              : -1;
            if (v < 0) {
                Py_DECREF(body);
                Py_DECREF(t);
                goto changed;
            }
            cv[k] = (uint32_t)v;
        }
        unsigned char *b = (unsigned char *)PyBytes_AS_STRING(body);
        put32(b, cv[0]);
        put32(b + 4, cv[1]);
        PyObject *conn = PyTuple_GET_ITEM(c, 0);
        Py_INCREF(o_credit);
        PyTuple_SET_ITEM(t, 0, o_credit);
        Py_INCREF(conn);
        PyTuple_SET_ITEM(t, 1, conn);
        Py_INCREF(o_zero);
        PyTuple_SET_ITEM(t, 2, o_zero);
        PyTuple_SET_ITEM(t, 3, body);
        PyList_SET_ITEM(entries, n++, t);
    }
    PyObject *r = PyObject_CallMethodOneArg(queue, s_extend, entries);
    Py_DECREF(entries);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_TRUE;
changed:
    PyErr_SetString(PyExc_RuntimeError, "queue_runs: runs or credits changed during the call");
error:
    Py_DECREF(entries); /* items not yet set are NULL: list_dealloc skips them */
    return NULL;
}

/* docs/protocol.md §1 link header fields, offsets from the frame's start */
#define ETHERTYPE 0x88B5
#define FLAG_CREDIT_ONLY 0x01

/* LinkCredit's receive-side counters rx_frames reads and writes back */
enum { LC_FRAMES_RX, LC_CO_RECV, LC_CO_RX, LC_PEER_POSTED, LC_PEER_ACK, LC_N };
static const char *const lc_names[LC_N] = {"frames_rx", "co_recv", "co_rx", "peer_posted",
                                           "peer_ack"};
static PyObject *lc_attr[LC_N]; /* interned names, set at module init */
#define LC_LIMIT ((long long)1 << 62) /* beyond: Python (ints never overflow there) */

/* The counters' object slots in LinkCredit (a __slots__ class), found once
 * per type: read and written in place, as their member descriptors do, when
 * the type is one lc_slots accepts; else through getattr/setattr. */
static PyTypeObject *lc_type; /* strong: keeps the offsets' type alive */
static Py_ssize_t lc_off[LC_N];

/* 1 if *cached (with offs) is tp, or tp's n attributes `names` are plain
 * writable object slots of tp itself - then offs and *cached are set for it;
 * 0 if tp takes getattr/setattr. */
static int
slot_offsets(PyTypeObject *tp, PyObject *const *names, int n, PyTypeObject **cached,
             Py_ssize_t *offs)
{
    if (tp == *cached)
        return 1;
    /* plain attribute access only: no __getattr__/__setattr__ of its own */
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr
        || tp->tp_dict == NULL || n > 32)
        return 0;
    Py_ssize_t off[32];
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemWithError(tp->tp_dict, names[i]); /* borrowed */
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)
            || ((PyDescrObject *)d)->d_type != tp) {
            PyErr_Clear();
            return 0;
        }
        PyMemberDef *def = ((PyMemberDescrObject *)d)->d_member;
        if (def->type != T_OBJECT_EX || (def->flags & READONLY) || def->offset <= 0
            || def->offset + (Py_ssize_t)sizeof(PyObject *) > tp->tp_basicsize)
            return 0;
        off[i] = def->offset;
    }
    Py_INCREF(tp);
    Py_XSETREF(*cached, tp);
    memcpy(offs, off, (size_t)n * sizeof off[0]);
    return 1;
}

/* 1 if lc_off holds tp's counter slots, 0 if tp takes getattr/setattr. */
static int
lc_slots(PyTypeObject *tp)
{
    return slot_offsets(tp, lc_attr, LC_N, &lc_type, lc_off);
}

/* xport._linkcredit.unwrap_u32: the counter whose low 32 bits are `wire`,
 * nearest after `last` (a step of 2**31 or more reads as a step back). */
static inline long long
unwrap_u32(long long last, uint32_t wire)
{
    uint32_t d = wire - (uint32_t)last;
    return last + (long long)d - (d >= 0x80000000u ? (1LL << 32) : 0);
}

/* rx_frames(rx, start, lc, raw, out) -> (index, off, left, merged, credit_only)
 * Link.poll's per-frame loop for the clean case, from rx[start] on: a frame
 * is taken when its link header is valid (§1: length, EtherType, version,
 * payload_length, msg_count against CREDIT_ONLY) and LinkCredit.on_frame
 * would find no anomaly (§4.3 seq in order, §4.1 no credit regress); its
 * credit is accounted into `lc` (as on_frame, and on_credit_only_released
 * for a credit-only frame) and its whole DATA/CREDIT messages appended to
 * `out` as rx_whole does. The caller never calls it before the peer's
 * HELLO (§3.1.6). Returns at the first frame it does not take, untouched
 * (`off` 0: Python's loop handles it whole), or at a frame taken whose
 * messages from `off` (with `left` of them) it leaves to Python (fragments,
 * control messages, anything malformed). `merged`: payloads that joined a
 * run already in `out`; `credit_only`: credit-only frames taken. */
static PyObject *rx_frames_impl(PyObject *rx, Py_ssize_t start, PyObject *lc, long raw,
                                PyObject *out);

static PyObject *
rx_frames(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "rx_frames(rx: list, start, lc, raw, out: list)");
        return NULL;
    }
    long raw;
    if (rx_ready("rx_frames", args[3], &raw) < 0)
        return NULL;
    Py_ssize_t start;
    if (ssize_arg(args[1], &start) < 0)
        return NULL;
    return rx_frames_impl(args[0], start, args[2], raw, args[4]);
}

/* rx_frames with its arguments checked (rx and out lists, raw 0..2) */
static PyObject *
rx_frames_impl(PyObject *rx, Py_ssize_t start, PyObject *lc, long raw, PyObject *out)
{
    Py_ssize_t nrx = PyList_GET_SIZE(rx);
    if (start < 0 || start > nrx) {
        PyErr_SetString(PyExc_ValueError, "rx_frames: start outside rx");
        return NULL;
    }
    long long v[LC_N], v0[LC_N];
    int in_place = lc_slots(Py_TYPE(lc));
    for (int i = 0; i < LC_N; i++) {
        PyObject *o = in_place ? *(PyObject **)((char *)lc + lc_off[i]) : NULL;
        if (o != NULL)
            Py_INCREF(o);
        else if ((o = PyObject_GetAttr(lc, lc_attr[i])) == NULL)
            return NULL; /* (an unset slot: getattr raises AttributeError) */
        int overflow = 0;
        v[i] = PyLong_Check(o) ? PyLong_AsLongLongAndOverflow(o, &overflow) : 0;
        int bad = !PyLong_Check(o);
        Py_DECREF(o);
        if (v[i] == -1 && PyErr_Occurred())
            return NULL;
        if (bad) {
            PyErr_Format(PyExc_TypeError, "rx_frames: lc.%s is not an int", lc_names[i]);
            return NULL;
        }
        if (overflow || v[i] >= LC_LIMIT || v[i] <= -LC_LIMIT)
            return Py_BuildValue("(nnnnn)", start, (Py_ssize_t)0, (Py_ssize_t)0,
                                 (Py_ssize_t)0, (Py_ssize_t)0); /* Python's, all of it */
    }
    memcpy(v0, v, sizeof v);
    long long frames_rx = v[LC_FRAMES_RX], co_recv = v[LC_CO_RECV], co_rx = v[LC_CO_RX];
    long long posted = v[LC_PEER_POSTED], ack = v[LC_PEER_ACK];
    Py_ssize_t index = start, off = 0, left = 0, merged = 0, co_in = 0;
    int rc = 0;
    for (; index < nrx; index++) {
        PyObject *frame = PyList_GET_ITEM(rx, index);
        if (!PyBytes_CheckExact(frame))
            break;
        const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(frame);
        Py_ssize_t n = PyBytes_GET_SIZE(frame);
        /* §1: bounds check before reading the header, then the header */
        if (n < FRAME_HEADER_SIZE || be16(data + 12) != ETHERTYPE || data[14] != LINK_VERSION)
            break;
        Py_ssize_t end = FRAME_HEADER_SIZE + (Py_ssize_t)be16(data + 30);
        unsigned count = be16(data + 16);
        int credit_only = (data[15] & FLAG_CREDIT_ONLY) != 0;
        if (end > n || credit_only != (count == 0))
            break;
        uint32_t seq = be32(data + 18);
        /* LinkCredit.on_frame with no anomaly (§4.1, §4.3); else Python's */
        if (seq != (uint32_t)frames_rx)
            break;
        long long p = unwrap_u32(posted, be32(data + 22));
        long long a = unwrap_u32(ack, be32(data + 26));
        if (p < posted || a < ack || p - a < posted - ack)
            break;
        frames_rx++;
        posted = p;
        ack = a;
        if (credit_only) {
            co_recv++;
            co_rx++; /* released at once: the frame is our copy */
            co_in++;
            continue;
        }
        off = FRAME_HEADER_SIZE;
        left = count;
        rc = rx_msgs(data, &off, end, &left, raw, out, &merged);
        if (rc < 0 || left > 0)
            break; /* the rest of this frame is Python's (off != 0) */
        off = 0;
    }
    /* the credit of the frames taken, even on an error (they were accounted) */
    v[LC_FRAMES_RX] = frames_rx;
    v[LC_CO_RECV] = co_recv;
    v[LC_CO_RX] = co_rx;
    v[LC_PEER_POSTED] = posted;
    v[LC_PEER_ACK] = ack;
    if (index > start || off != 0) {
        PyObject *et, *ev, *tb; /* an error of rx_msgs, kept across the writes */
        PyErr_Fetch(&et, &ev, &tb);
        for (int i = 0; i < LC_N; i++) {
            if (v[i] == v0[i])
                continue; /* unchanged (often co_recv, co_rx): nothing to write */
            PyObject *o = PyLong_FromLongLong(v[i]);
            if (o != NULL && in_place) {
                Py_XSETREF(*(PyObject **)((char *)lc + lc_off[i]), o);
                continue;
            }
            if (o == NULL || PyObject_SetAttr(lc, lc_attr[i], o) < 0) {
                Py_XDECREF(o);
                Py_XDECREF(et);
                Py_XDECREF(ev);
                Py_XDECREF(tb);
                return NULL;
            }
            Py_DECREF(o);
        }
        PyErr_Restore(et, ev, tb);
    }
    if (rc < 0)
        return NULL;
    return Py_BuildValue("(nnnnn)", index, off, left, merged, co_in);
}

/* Export `obj` into *view (flags | PyBUF_FORMAT) as an array of `format`
 * items of `itemsize` bytes, at least `min_items` of them (exactly one for a
 * live word). 0, or -1 with ValueError naming `who` and `what`; view->obj is
 * NULL whenever there is nothing to release. */
static int
export_array(PyObject *obj, Py_buffer *view, int flags, const char *format, Py_ssize_t itemsize,
             Py_ssize_t min_items, int exactly, const char *who, const char *what)
{
    if (PyObject_GetBuffer(obj, view, flags | PyBUF_FORMAT) < 0) {
        view->obj = NULL; /* nothing to release (whatever the exporter left) */
        return -1;
    }
    Py_ssize_t items = view->len / itemsize;
    if (view->itemsize != itemsize || view->format == NULL || strcmp(view->format, format) != 0
        || items < min_items || (exactly && items != min_items)) {
        PyErr_Format(PyExc_ValueError, "%s: %s", who, what);
        return -1;
    }
    return 0;
}

/* the socket's live word: array('Q') of one item (the context's address, 0 once closed) */
static int
export_live(PyObject *live, Py_buffer *view, int flags, const char *who)
{
    return export_array(live, view, flags, "Q", 8, 1, 1, who, "live must be array('Q') of one item");
}

/* StrideTx(fn, live, keep, buf, stride, lens, error): XskSocket.tx_stride_sender's
 * send(n) as a C callable (no Python frame, no argument conversion per call):
 * `fn` is the address of mux_xsk_tx_stride(ctx, buf, stride, lens, n) (an
 * int), `live` a writable array('Q') of one item holding the context's
 * address (the socket zeroes it before freeing the context), `keep` what
 * keeps the context alive (the socket), `buf` the slots (`stride` bytes
 * each), `lens` an array('I') with one length per slot, `error(rc)` raises
 * for rc < 0 (xport._xsk.check). send(n): ValueError once the socket is
 * closed or for n outside 0..slots; else fn's result. buf, lens and live
 * stay exported (none can be resized) while the sender lives. */
typedef int (*stride_fn)(void *, const char *, uint32_t, const uint32_t *, uint32_t);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    stride_fn fn;
    Py_buffer live, buf, lens;
    uint32_t stride;
    Py_ssize_t slots;
    PyObject *keep, *error;
} StrideTxObject;

static PyObject *
stride_tx_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    StrideTxObject *t = (StrideTxObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "send(n)");
        return NULL;
    }
    Py_ssize_t n;
    if (ssize_arg(args[0], &n) < 0)
        return NULL;
    uint64_t ctx = *(const uint64_t *)t->live.buf;
    if (ctx == 0) {
        PyErr_SetString(PyExc_ValueError, "XskSocket is closed");
        return NULL;
    }
    if (n < 0 || n > t->slots) {
        PyErr_Format(PyExc_ValueError, "%zd frames of %zd slots", n, t->slots);
        return NULL;
    }
    int rc = t->fn((void *)(uintptr_t)ctx, (const char *)t->buf.buf, t->stride,
                   (const uint32_t *)t->lens.buf, (uint32_t)n);
    if (rc >= 0)
        return PyLong_FromLong(rc);
    PyObject *rco = PyLong_FromLong(rc);
    if (rco == NULL)
        return NULL;
    PyObject *r = PyObject_CallOneArg(t->error, rco);
    Py_DECREF(rco);
    return r;
}

static void
stride_tx_release(StrideTxObject *t)
{
    if (t->live.obj != NULL)
        PyBuffer_Release(&t->live);
    if (t->buf.obj != NULL)
        PyBuffer_Release(&t->buf);
    if (t->lens.obj != NULL)
        PyBuffer_Release(&t->lens);
}

static PyObject *
stride_tx_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fn, *live, *keep, *buf, *lens, *error;
    unsigned long stride;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "StrideTx takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOkOO:StrideTx", &fn, &live, &keep, &buf, &stride, &lens,
                          &error))
        return NULL;
    uintptr_t addr = (uintptr_t)PyLong_AsUnsignedLongLong(fn);
    if (addr == (uintptr_t)-1 && PyErr_Occurred())
        return NULL;
    if (addr == 0 || !PyCallable_Check(error) || stride == 0 || stride > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "StrideTx: fn, stride or error invalid");
        return NULL;
    }
    StrideTxObject *t = (StrideTxObject *)type->tp_alloc(type, 0);
    if (t == NULL)
        return NULL;
    t->vectorcall = stride_tx_call;
    t->fn = (stride_fn)addr;
    t->stride = (uint32_t)stride;
    if (export_live(live, &t->live, PyBUF_WRITABLE, "StrideTx") < 0)
        goto error;
    if (PyObject_GetBuffer(buf, &t->buf, PyBUF_WRITABLE) < 0) {
        t->buf.obj = NULL;
        goto error;
    }
    if (export_array(lens, &t->lens, PyBUF_WRITABLE, "I", 4, 0, 0, "StrideTx",
                     "lens must be array('I')") < 0)
        goto error;
    t->slots = t->lens.len / 4;
    if (t->slots * (Py_ssize_t)stride > t->buf.len) {
        PyErr_SetString(PyExc_ValueError, "StrideTx: buf must hold len(lens) frames of stride bytes");
        goto error;
    }
    Py_INCREF(keep);
    t->keep = keep;
    Py_INCREF(error);
    t->error = error;
    return (PyObject *)t;
error:
    Py_DECREF(t);
    return NULL;
}

static int
stride_tx_traverse(StrideTxObject *t, visitproc visit, void *arg)
{
    Py_VISIT(t->keep);
    Py_VISIT(t->error);
    Py_VISIT(t->live.obj);
    Py_VISIT(t->buf.obj);
    Py_VISIT(t->lens.obj);
    return 0;
}

static int
stride_tx_clear(StrideTxObject *t)
{
    stride_tx_release(t);
    Py_CLEAR(t->keep);
    Py_CLEAR(t->error);
    return 0;
}

static void
stride_tx_dealloc(StrideTxObject *t)
{
    PyObject_GC_UnTrack(t);
    stride_tx_clear(t);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyTypeObject StrideTxType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.StrideTx",
    .tp_basicsize = sizeof(StrideTxObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "StrideTx(fn, live, keep, buf, stride, lens, error): send(n) of "
              "XskSocket.tx_stride_sender in C.",
    .tp_new = stride_tx_new,
    .tp_dealloc = (destructor)stride_tx_dealloc,
    .tp_traverse = (traverseproc)stride_tx_traverse,
    .tp_clear = (inquiry)stride_tx_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StrideTxObject, vectorcall),
};

/* CounterReader(live, offset, keep, pending, slow): AfXdpBackend.rx_buffers_posted
 * as a C callable: the uint64_t at `offset` in the context whose address
 * `live` (the socket's array('Q') of one item) holds, while it is not 0 and
 * the list `pending` (released buffers not yet posted) is empty; else
 * slow() (the Python method: it posts them, or raises once closed). `keep`
 * keeps the context alive. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    Py_buffer live;
    Py_ssize_t offset;
    PyObject *keep, *pending, *slow;
} CounterReaderObject;

static PyObject *
counter_reader_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    CounterReaderObject *r = (CounterReaderObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "takes no arguments");
        return NULL;
    }
    uint64_t ctx = *(const uint64_t *)r->live.buf;
    if (ctx != 0 && PyList_GET_SIZE(r->pending) == 0) {
        uint64_t v;
        memcpy(&v, (const char *)(uintptr_t)ctx + r->offset, sizeof v);
        return PyLong_FromUnsignedLongLong(v);
    }
    return PyObject_CallNoArgs(r->slow);
}

static PyObject *
counter_reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *live, *keep, *pending, *slow;
    Py_ssize_t offset;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "CounterReader takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OnOOO:CounterReader", &live, &offset, &keep, &pending, &slow))
        return NULL;
    if (!PyList_CheckExact(pending) || !PyCallable_Check(slow) || offset < 0
        || offset % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "CounterReader: pending list, slow callable, offset");
        return NULL;
    }
    CounterReaderObject *r = (CounterReaderObject *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->vectorcall = counter_reader_call;
    r->offset = offset;
    if (export_live(live, &r->live, 0, "CounterReader") < 0) {
        Py_DECREF(r);
        return NULL;
    }
    Py_INCREF(keep);
    r->keep = keep;
    Py_INCREF(pending);
    r->pending = pending;
    Py_INCREF(slow);
    r->slow = slow;
    return (PyObject *)r;
}

static int
counter_reader_traverse(CounterReaderObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->keep);
    Py_VISIT(r->pending);
    Py_VISIT(r->slow);
    Py_VISIT(r->live.obj);
    return 0;
}

static int
counter_reader_clear(CounterReaderObject *r)
{
    if (r->live.obj != NULL)
        PyBuffer_Release(&r->live);
    Py_CLEAR(r->keep);
    Py_CLEAR(r->pending);
    Py_CLEAR(r->slow);
    return 0;
}

static void
counter_reader_dealloc(CounterReaderObject *r)
{
    PyObject_GC_UnTrack(r);
    counter_reader_clear(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyTypeObject CounterReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.CounterReader",
    .tp_basicsize = sizeof(CounterReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "CounterReader(live, offset, keep, pending, slow): "
              "AfXdpBackend.rx_buffers_posted in C.",
    .tp_new = counter_reader_new,
    .tp_dealloc = (destructor)counter_reader_dealloc,
    .tp_traverse = (traverseproc)counter_reader_traverse,
    .tp_clear = (inquiry)counter_reader_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(CounterReaderObject, vectorcall),
};

/* RxCopies(rx_fn, kick_fn, stalled_off, live, keep, out, lens, batch, pending, slow):
 * AfXdpBackend.recv_copies as a C callable, recv(max_frames) -> list[bytes]:
 * when the context (its address in `live`, as for StrideTx) is open, the
 * list `pending` empty and 0 < max_frames <= batch, kick first if the
 * context's uint32_t at `stalled_off` (tx_stalled) is set (kick_fn(ctx), as
 * mux_xsk_kick), then rx_fn(ctx, out, lens, max_frames) (mux_xsk_rx_burst:
 * frames copied back to back into `out`, their lengths into `lens`, a
 * uint32_t array of `batch`) and each frame as bytes; anything else:
 * slow(max_frames) (the Python method). */
typedef uint32_t (*rx_burst_fn)(void *, char *, uint32_t *, uint32_t);
typedef int (*kick_fn)(void *);

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    rx_burst_fn rx;
    kick_fn kick;
    Py_ssize_t stalled_off, batch;
    Py_buffer live, out, lens;
    PyObject *keep, *pending, *slow;
} RxCopiesObject;

static PyObject *
rx_copies_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RxCopiesObject *r = (RxCopiesObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "recv(max_frames)");
        return NULL;
    }
    Py_ssize_t max;
    if (ssize_arg(args[0], &max) < 0)
        return NULL;
    uint64_t ctx = *(const uint64_t *)r->live.buf;
    if (ctx == 0 || max <= 0 || max > r->batch || PyList_GET_SIZE(r->pending) != 0)
        return PyObject_CallOneArg(r->slow, args[0]);
    void *c = (void *)(uintptr_t)ctx;
    uint32_t stalled;
    memcpy(&stalled, (const char *)c + r->stalled_off, sizeof stalled);
    if (stalled)
        (void)r->kick(c); /* keep TX moving even when the owner only receives */
    const uint32_t *lens = (const uint32_t *)r->lens.buf;
    uint32_t n = r->rx(c, (char *)r->out.buf, (uint32_t *)r->lens.buf, (uint32_t)max);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL)
        return NULL;
    const char *p = (const char *)r->out.buf;
    Py_ssize_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        Py_ssize_t ln = (Py_ssize_t)lens[i];
        if (off + ln > r->out.len) { /* rx_burst never writes beyond out: never trust it */
            Py_DECREF(list);
            PyErr_SetString(PyExc_RuntimeError, "RxCopies: frames beyond the buffer");
            return NULL;
        }
        PyObject *b = PyBytes_FromStringAndSize(p + off, ln);
        if (b == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, b);
        off += ln;
    }
    return list;
}

static PyObject *
rx_copies_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *rx, *kick, *live, *keep, *out, *lens, *pending, *slow;
    Py_ssize_t stalled_off, batch;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "RxCopies takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOnOOOOnOO:RxCopies", &rx, &kick, &stalled_off, &live, &keep,
                          &out, &lens, &batch, &pending, &slow))
        return NULL;
    uintptr_t rx_addr = (uintptr_t)PyLong_AsUnsignedLongLong(rx);
    if (rx_addr == (uintptr_t)-1 && PyErr_Occurred())
        return NULL;
    uintptr_t kick_addr = (uintptr_t)PyLong_AsUnsignedLongLong(kick);
    if (kick_addr == (uintptr_t)-1 && PyErr_Occurred())
        return NULL;
    if (rx_addr == 0 || kick_addr == 0 || stalled_off < 0 || stalled_off % 4 != 0 || batch < 1
        || batch > 0xFFFFFFFFLL || !PyList_CheckExact(pending) || !PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_ValueError, "RxCopies: invalid arguments");
        return NULL;
    }
    RxCopiesObject *r = (RxCopiesObject *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->vectorcall = rx_copies_call;
    r->rx = (rx_burst_fn)rx_addr;
    r->kick = (kick_fn)kick_addr;
    r->stalled_off = stalled_off;
    r->batch = batch;
    if (export_live(live, &r->live, 0, "RxCopies") < 0)
        goto error;
    if (PyObject_GetBuffer(out, &r->out, PyBUF_WRITABLE) < 0) {
        r->out.obj = NULL;
        goto error;
    }
    if (PyObject_GetBuffer(lens, &r->lens, PyBUF_WRITABLE) < 0) {
        r->lens.obj = NULL;
        goto error;
    }
    if (r->lens.len < 4 * batch) {
        PyErr_SetString(PyExc_ValueError, "RxCopies: lens must hold batch uint32_t");
        goto error;
    }
    Py_INCREF(keep);
    r->keep = keep;
    Py_INCREF(pending);
    r->pending = pending;
    Py_INCREF(slow);
    r->slow = slow;
    return (PyObject *)r;
error:
    Py_DECREF(r);
    return NULL;
}

static int
rx_copies_traverse(RxCopiesObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->keep);
    Py_VISIT(r->pending);
    Py_VISIT(r->slow);
    Py_VISIT(r->live.obj);
    Py_VISIT(r->out.obj);
    Py_VISIT(r->lens.obj);
    return 0;
}

static int
rx_copies_clear(RxCopiesObject *r)
{
    if (r->live.obj != NULL)
        PyBuffer_Release(&r->live);
    if (r->out.obj != NULL)
        PyBuffer_Release(&r->out);
    if (r->lens.obj != NULL)
        PyBuffer_Release(&r->lens);
    Py_CLEAR(r->keep);
    Py_CLEAR(r->pending);
    Py_CLEAR(r->slow);
    return 0;
}

static void
rx_copies_dealloc(RxCopiesObject *r)
{
    PyObject_GC_UnTrack(r);
    rx_copies_clear(r);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyTypeObject RxCopiesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.RxCopies",
    .tp_basicsize = sizeof(RxCopiesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RxCopies(rx_fn, kick_fn, stalled_off, live, keep, out, lens, batch, pending, "
              "slow): AfXdpBackend.recv_copies in C.",
    .tp_new = rx_copies_new,
    .tp_dealloc = (destructor)rx_copies_dealloc,
    .tp_traverse = (traverseproc)rx_copies_traverse,
    .tp_clear = (inquiry)rx_copies_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(RxCopiesObject, vectorcall),
};

/* Flusher(queue, backlog, buf, frame_size, max_frames, lens, tx, posted, stats):
 * Link.flush in one call for a link that sends from its slots (`tx`, the
 * backend's strided sender; `posted`, its rx_buffers_posted callable; the
 * other arguments the link's own queue, backlog, slot buffer and lengths,
 * statistics), flusher(link, now) -> int | tuple | None, read from `link`
 * each call: _head_sent, credit (a LinkCredit), _posted_base, _queued_bytes.
 * None, having changed nothing: Python's flush does all of it (a backlog, a
 * fragment in progress, counters out of range, odd types). An int: frames
 * sent, all of Link.flush done (data frames as _send_data_frames builds them,
 * credit stalls, the credit-only frame through link._send_credit_only,
 * _last_tx). A tuple (nf, off, count, msgs, nbytes, nframes, seq, credit,
 * ack, posted): the link's credit advertised and frames packed until an
 * entry for Python (pack_frames' result): Link._send_packed and
 * Link._flush_end go on from there. The caller checked link.closed and
 * link.accelerated. */
enum { LT_SENT, LT_CO_SENT, LT_PEER_POSTED, LT_PEER_ACK, LT_RESERVE, LT_ADV_POSTED, LT_ADV_ACK,
       LT_CO_RX, LT_N };
static const char *const lt_names[LT_N] = {"sent", "co_sent", "peer_posted", "peer_ack",
                                           "reserve", "adv_posted", "adv_ack", "co_rx"};
static PyObject *lt_attr[LT_N];
static PyTypeObject *lt_type; /* strong */
static Py_ssize_t lt_off[LT_N];
static PyObject *s_head_sent, *s_credit, *s_posted_base, *s_queued_bytes, *s_last_tx,
    *s_want_credit_only, *s_send_credit_only, *s_append;

/* 1 if lt_off holds tp's slots for lt_names (as lc_slots), else 0 */
static int
lt_slots(PyTypeObject *tp)
{
    return slot_offsets(tp, lt_attr, LT_N, &lt_type, lt_off);
}

/* obj.name as a long long in (-LC_LIMIT, LC_LIMIT): 1; 0 if it is not such
 * an int (no exception); -1 with an exception set */
static int
get_ll(PyObject *obj, PyObject *name, long long *v)
{
    PyObject *o = PyObject_GetAttr(obj, name);
    if (o == NULL)
        return -1;
    int overflow = 0;
    int ok = PyLong_CheckExact(o);
    *v = ok ? PyLong_AsLongLongAndOverflow(o, &overflow) : 0;
    Py_DECREF(o);
    if (*v == -1 && PyErr_Occurred())
        return -1;
    return ok && !overflow && *v < LC_LIMIT && *v > -LC_LIMIT;
}

static int
set_ll(PyObject *obj, PyObject *name, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, o);
    Py_DECREF(o);
    return rc;
}

/* obj.name += delta (an int attribute; Python's arithmetic for any int) */
static int
add_attr(PyObject *obj, PyObject *name, long long delta)
{
    if (delta == 0)
        return 0;
    PyObject *o = PyObject_GetAttr(obj, name);
    if (o == NULL)
        return -1;
    PyObject *d = PyLong_FromLongLong(delta);
    PyObject *r = d ? PyNumber_Add(o, d) : NULL;
    Py_DECREF(o);
    Py_XDECREF(d);
    if (r == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, r);
    Py_DECREF(r);
    return rc;
}

/* The LinkStats counters the Flusher and Poller add to (the Waker's path):
 * read-add-written in place through their slots (slot_offsets) when LinkStats
 * is a __slots__ class and the counter an int in range, else by add_attr. */
enum { ST_FRAMES_IN, ST_FRAMES_OUT, ST_MESSAGES_IN, ST_MESSAGES_OUT, ST_CREDIT_ONLY_IN,
       ST_TX_SHORT, ST_CREDIT_STALLS, ST_N };
static const char *const st_names[ST_N] = {
    [ST_FRAMES_IN] = "frames_in",         [ST_FRAMES_OUT] = "frames_out",
    [ST_MESSAGES_IN] = "messages_in",     [ST_MESSAGES_OUT] = "messages_out",
    [ST_CREDIT_ONLY_IN] = "credit_only_in", [ST_TX_SHORT] = "tx_short",
    [ST_CREDIT_STALLS] = "credit_stalls"};
static PyObject *st_attr[ST_N];
static PyTypeObject *st_type; /* strong */
static Py_ssize_t st_off[ST_N];

/* stats.<st_names[i]> += delta */
static int
add_stat(PyObject *stats, int i, long long delta)
{
    if (delta == 0)
        return 0;
    if (!slot_offsets(Py_TYPE(stats), st_attr, ST_N, &st_type, st_off))
        return add_attr(stats, st_attr[i], delta);
    PyObject **slot = (PyObject **)((char *)stats + st_off[i]);
    PyObject *old = *slot;
    if (old != NULL && PyLong_CheckExact(old) && delta < LC_LIMIT && delta > -LC_LIMIT) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(old, &overflow);
        if (!overflow && v < LC_LIMIT && v > -LC_LIMIT) {
            PyObject *r = PyLong_FromLongLong(v + delta);
            if (r == NULL)
                return -1;
            Py_SETREF(*slot, r); /* (an int's dealloc runs no code) */
            return 0;
        }
    }
    /* unset (AttributeError, as getattr), not an int, or large: Python's arithmetic */
    return add_attr(stats, st_attr[i], delta);
}

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *queue, *popleft, *backlog, *buf, *tx, *posted, *stats;
    Py_buffer lens;
    Py_ssize_t frame_size, max_frames;
} FlusherObject;

static PyObject *
flusher_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    FlusherObject *f = (FlusherObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "flusher(link, now)");
        return NULL;
    }
    PyObject *link = args[0], *now = args[1];
    /* -- what decides whether C takes it, nothing changed yet -- */
    Py_ssize_t nb = PySequence_Size(f->backlog);
    if (nb < 0)
        return NULL;
    if (nb > 0)
        Py_RETURN_NONE; /* _send_backlog first: Python's */
    long long head_sent, posted_base, queued;
    int ok = get_ll(link, s_head_sent, &head_sent);
    if (ok <= 0 || head_sent != 0)
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    if ((ok = get_ll(link, s_posted_base, &posted_base)) <= 0
        || (ok = get_ll(link, s_queued_bytes, &queued)) <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *lc = PyObject_GetAttr(link, s_credit);
    if (lc == NULL)
        return NULL;
    int in_place = lt_slots(Py_TYPE(lc));
    long long v[LT_N];
    for (int i = 0; i < LT_N; i++) {
        PyObject *o = in_place ? *(PyObject **)((char *)lc + lt_off[i]) : NULL;
        if (o != NULL)
            Py_INCREF(o);
        else if ((o = PyObject_GetAttr(lc, lt_attr[i])) == NULL) {
            Py_DECREF(lc);
            return NULL;
        }
        int overflow = 0;
        int isint = PyLong_CheckExact(o);
        v[i] = isint ? PyLong_AsLongLongAndOverflow(o, &overflow) : 0;
        Py_DECREF(o);
        if (v[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(lc);
            return NULL;
        }
        if (!isint || overflow || v[i] >= LC_LIMIT || v[i] <= -LC_LIMIT) {
            Py_DECREF(lc);
            Py_RETURN_NONE;
        }
    }
    /* -- Link.flush from here on -- */
    PyObject *po = PyObject_CallNoArgs(f->posted);
    if (po == NULL)
        goto error;
    int overflow = 0;
    long long posted = PyLong_CheckExact(po) ? PyLong_AsLongLongAndOverflow(po, &overflow) : 0;
    int bad = !PyLong_CheckExact(po) || overflow || posted >= LC_LIMIT || posted <= -LC_LIMIT;
    Py_DECREF(po);
    if (posted == -1 && PyErr_Occurred())
        goto error;
    if (bad) {
        PyErr_SetString(PyExc_TypeError, "flusher: rx_buffers_posted() is not a counter");
        goto error;
    }
    posted -= posted_base;
    Py_ssize_t qlen = PySequence_Size(f->queue);
    if (qlen < 0)
        goto error;
    long long sent = 0;
    int stalled = 0;
    if (qlen > 0) {
        long long credit = (v[LT_PEER_POSTED] - v[LT_SENT]) - v[LT_RESERVE]
                           + (v[LT_CO_SENT] - v[LT_PEER_ACK]);
        if (credit > 0) {
            Py_ssize_t nframes = credit < f->max_frames ? (Py_ssize_t)credit : f->max_frames;
            /* LinkCredit.advertise(posted), as _send_data_frames inlines it */
            long long last = v[LT_ADV_POSTED];
            uint32_t delta = (uint32_t)((uint64_t)posted - (uint64_t)last);
            long long p = delta >= 0x80000000u ? last : last + (long long)delta;
            long long a = p - (last - v[LT_ADV_ACK]);
            if (v[LT_CO_RX] < a)
                a = v[LT_CO_RX];
            v[LT_ADV_POSTED] = p;
            v[LT_ADV_ACK] = a;
            for (int i = LT_ADV_POSTED; i <= LT_ADV_ACK; i++) {
                PyObject *o = PyLong_FromLongLong(v[i]);
                if (o == NULL)
                    goto error;
                if (in_place)
                    Py_XSETREF(*(PyObject **)((char *)lc + lt_off[i]), o);
                else {
                    int rc = PyObject_SetAttr(lc, lt_attr[i], o);
                    Py_DECREF(o);
                    if (rc < 0)
                        goto error;
                }
            }
            long long seq = v[LT_SENT];
            uint32_t hv[3] = {(uint32_t)seq, (uint32_t)p, (uint32_t)a};
            Py_ssize_t nf, off, count, msgs, nbytes;
            if (pack_loop(f->queue, f->popleft, f->buf, f->frame_size, nframes, hv,
                          (uint32_t *)f->lens.buf, &nf, &off, &count, &msgs, &nbytes) < 0)
                goto error;
            Py_ssize_t left = PySequence_Size(f->queue);
            if (left < 0)
                goto error;
            if (left > 0 && nf < nframes) {
                Py_DECREF(lc); /* Python's loop goes on (fragments, odd entries) */
                return Py_BuildValue("(nnnnnnLkkL)", nf, off, count, msgs, nbytes, nframes, seq,
                                     (unsigned long)hv[1], (unsigned long)hv[2], posted);
            }
            /* _send_data_frames' tail: counters first, then the frames go */
            if (set_ll(link, s_queued_bytes, queued - nbytes) < 0)
                goto error;
            v[LT_SENT] = seq + nf;
            PyObject *o = PyLong_FromLongLong(v[LT_SENT]);
            if (o == NULL)
                goto error;
            if (in_place)
                Py_XSETREF(*(PyObject **)((char *)lc + lt_off[LT_SENT]), o);
            else {
                int rc = PyObject_SetAttr(lc, lt_attr[LT_SENT], o);
                Py_DECREF(o);
                if (rc < 0)
                    goto error;
            }
            if (add_stat(f->stats, ST_MESSAGES_OUT, msgs) < 0)
                goto error;
            PyObject *nfo = PyLong_FromSsize_t(nf);
            if (nfo == NULL)
                goto error;
            PyObject *to = PyObject_CallOneArg(f->tx, nfo);
            Py_DECREF(nfo);
            if (to == NULL)
                goto error;
            Py_ssize_t taken = PyLong_AsSsize_t(to);
            Py_DECREF(to);
            if (taken == -1 && PyErr_Occurred())
                goto error;
            if (add_stat(f->stats, ST_FRAMES_OUT, taken) < 0)
                goto error;
            if (taken < nf) {
                if (add_stat(f->stats, ST_TX_SHORT, 1) < 0)
                    goto error;
                /* the frames the ring refused wait in the backlog, as bytes */
                for (Py_ssize_t i = taken; i < nf; i++) {
                    const char *fr = PyByteArray_AS_STRING(f->buf) + i * f->frame_size;
                    PyObject *b = PyBytes_FromStringAndSize(fr, ((uint32_t *)f->lens.buf)[i]);
                    if (b == NULL)
                        goto error;
                    PyObject *r = PyObject_CallMethodOneArg(f->backlog, s_append, b);
                    Py_DECREF(b);
                    if (r == NULL)
                        goto error;
                    Py_DECREF(r);
                }
            }
            sent = taken;
            /* lc.data_credit() < 1 with what is left queued: a stall */
            if (left > 0 && (v[LT_PEER_POSTED] - v[LT_SENT]) - v[LT_RESERVE]
                                    + (v[LT_CO_SENT] - v[LT_PEER_ACK]) < 1)
                stalled = 1;
        }
        else
            stalled = 1;
    }
    if (stalled && add_stat(f->stats, ST_CREDIT_STALLS, 1) < 0)
        goto error;
    /* Link._flush_end: a credit-only frame (its early answer first) */
    if ((((uint64_t)posted ^ (uint64_t)v[LT_ADV_POSTED]) & 0xFFFFFFFFu) != 0) {
        nb = PySequence_Size(f->backlog);
        if (nb < 0)
            goto error;
        if (nb == 0) {
            PyObject *pobj = PyLong_FromLongLong(posted);
            if (pobj == NULL)
                goto error;
            PyObject *w = PyObject_CallMethodOneArg(lc, s_want_credit_only, pobj);
            int want = w ? PyObject_IsTrue(w) : -1;
            Py_XDECREF(w);
            if (want > 0) {
                PyObject *r = PyObject_CallMethodOneArg(link, s_send_credit_only, pobj);
                long long k = r ? PyLong_AsLongLong(r) : -1;
                Py_XDECREF(r);
                if (k == -1 && PyErr_Occurred())
                    want = -1;
                else
                    sent += k;
            }
            Py_DECREF(pobj);
            if (want < 0)
                goto error;
        }
    }
    Py_DECREF(lc);
    if (sent && now != Py_None && PyObject_SetAttr(link, s_last_tx, now) < 0)
        return NULL;
    return PyLong_FromLongLong(sent);
error:
    Py_DECREF(lc);
    return NULL;
}

static PyObject *
flusher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *queue, *backlog, *buf, *lens, *tx, *posted, *stats;
    Py_ssize_t frame_size, max_frames;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Flusher takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOnnOOOO:Flusher", &queue, &backlog, &buf, &frame_size,
                          &max_frames, &lens, &tx, &posted, &stats))
        return NULL;
    if (!PyByteArray_CheckExact(buf) || !PyCallable_Check(tx) || !PyCallable_Check(posted)
        || frame_size < FRAME_HEADER_SIZE + HEADER_SIZE || max_frames < 1
        || max_frames > PyByteArray_GET_SIZE(buf) / frame_size) {
        PyErr_SetString(PyExc_ValueError, "Flusher: invalid arguments");
        return NULL;
    }
    FlusherObject *f = (FlusherObject *)type->tp_alloc(type, 0);
    if (f == NULL)
        return NULL;
    f->vectorcall = flusher_call;
    f->frame_size = frame_size;
    f->max_frames = max_frames;
    if (export_array(lens, &f->lens, PyBUF_WRITABLE, "I", 4, max_frames, 0, "Flusher",
                     "lens must be array('I') of max_frames") < 0)
        goto error;
    if ((f->popleft = PyObject_GetAttrString(queue, "popleft")) == NULL)
        goto error;
    f->queue = Py_NewRef(queue);
    f->backlog = Py_NewRef(backlog);
    f->buf = Py_NewRef(buf);
    f->tx = Py_NewRef(tx);
    f->posted = Py_NewRef(posted);
    f->stats = Py_NewRef(stats);
    return (PyObject *)f;
error:
    Py_DECREF(f);
    return NULL;
}

static int
flusher_traverse(FlusherObject *f, visitproc visit, void *arg)
{
    Py_VISIT(f->queue);
    Py_VISIT(f->popleft);
    Py_VISIT(f->backlog);
    Py_VISIT(f->buf);
    Py_VISIT(f->tx);
    Py_VISIT(f->posted);
    Py_VISIT(f->stats);
    Py_VISIT(f->lens.obj);
    return 0;
}

static int
flusher_clear(FlusherObject *f)
{
    if (f->lens.obj != NULL)
        PyBuffer_Release(&f->lens);
    Py_CLEAR(f->queue);
    Py_CLEAR(f->popleft);
    Py_CLEAR(f->backlog);
    Py_CLEAR(f->buf);
    Py_CLEAR(f->tx);
    Py_CLEAR(f->posted);
    Py_CLEAR(f->stats);
    return 0;
}

static void
flusher_dealloc(FlusherObject *f)
{
    PyObject_GC_UnTrack(f);
    flusher_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyTypeObject FlusherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.Flusher",
    .tp_basicsize = sizeof(FlusherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Flusher(queue, backlog, buf, frame_size, max_frames, lens, tx, posted, stats): "
              "Link.flush in C.",
    .tp_new = flusher_new,
    .tp_dealloc = (destructor)flusher_dealloc,
    .tp_traverse = (traverseproc)flusher_traverse,
    .tp_clear = (inquiry)flusher_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(FlusherObject, vectorcall),
};

/* Poller(recv, stats): Link.poll for a link past the peer's HELLO, in one
 * call, poller(link, max_frames, now) -> list | tuple: `recv` is the link's
 * receive callable (recv(max_frames) -> list[bytes]), `stats` its LinkStats.
 * Receives a batch, records `now` (link._last_rx), counts frames_in, takes
 * the clean frames with rx_frames (raw from link.raw_runs / link.raw_data,
 * the credit in link.credit) and returns the messages (messages_in counted)
 * when it took every frame; else (rx, start, off, left, merged, out) for
 * Link._poll_rest to go on from rx_frames' stop. The caller checked
 * link.closed, link.accelerated and link.peer_session. */
static PyObject *s_last_rx, *s_raw_runs, *s_raw_data;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *recv, *stats;
} PollerObject;

static PyObject *
poller_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PollerObject *pl = (PollerObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "poller(link, max_frames, now)");
        return NULL;
    }
    PyObject *link = args[0], *now = args[2];
    PyObject *rx = PyObject_CallOneArg(pl->recv, args[1]);
    if (rx == NULL)
        return NULL;
    if (!PyList_CheckExact(rx)) {
        Py_DECREF(rx);
        PyErr_SetString(PyExc_TypeError, "poller: recv() did not return a list");
        return NULL;
    }
    Py_ssize_t nrx = PyList_GET_SIZE(rx);
    if (nrx == 0)
        return rx; /* (Link.poll's []) */
    PyObject *out = NULL, *lc = NULL, *res = NULL, *r = NULL;
    if (now != Py_None && PyObject_SetAttr(link, s_last_rx, now) < 0)
        goto done;
    long raw = 0;
    for (int k = 0; k < 2 && raw == 0; k++) {
        PyObject *o = PyObject_GetAttr(link, k == 0 ? s_raw_runs : s_raw_data);
        int t = o ? PyObject_IsTrue(o) : -1;
        Py_XDECREF(o);
        if (t < 0)
            goto done;
        if (t)
            raw = k == 0 ? 2 : 1;
    }
    if ((lc = PyObject_GetAttr(link, s_credit)) == NULL)
        goto done;
    if (add_stat(pl->stats, ST_FRAMES_IN, nrx) < 0 || (out = PyList_New(0)) == NULL)
        goto done;
    if ((r = rx_frames_impl(rx, 0, lc, raw, out)) == NULL)
        goto done;
    Py_ssize_t start = PyLong_AsSsize_t(PyTuple_GET_ITEM(r, 0));
    Py_ssize_t off = PyLong_AsSsize_t(PyTuple_GET_ITEM(r, 1));
    Py_ssize_t merged = PyLong_AsSsize_t(PyTuple_GET_ITEM(r, 3));
    Py_ssize_t co_in = PyLong_AsSsize_t(PyTuple_GET_ITEM(r, 4));
    if (PyErr_Occurred() || add_stat(pl->stats, ST_CREDIT_ONLY_IN, co_in) < 0)
        goto done;
    if (off == 0 && start == nrx) {
        if (add_stat(pl->stats, ST_MESSAGES_IN, PyList_GET_SIZE(out) + merged) < 0)
            goto done;
        res = Py_NewRef(out);
        goto done;
    }
    /* Python's from here: (rx, start, off, left, merged, out) */
    res = Py_BuildValue("(OOOOOO)", rx, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1),
                        PyTuple_GET_ITEM(r, 2), PyTuple_GET_ITEM(r, 3), out);
done:
    Py_XDECREF(r);
    Py_XDECREF(out);
    Py_XDECREF(lc);
    Py_DECREF(rx);
    return res;
}

static PyObject *
poller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *recv, *stats;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Poller takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO:Poller", &recv, &stats))
        return NULL;
    if (!PyCallable_Check(recv)) {
        PyErr_SetString(PyExc_ValueError, "Poller: recv must be callable");
        return NULL;
    }
    if (data_cls.cls == NULL || credit_cls.cls == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Poller: init(Data, Credit) not called");
        return NULL;
    }
    PollerObject *pl = (PollerObject *)type->tp_alloc(type, 0);
    if (pl == NULL)
        return NULL;
    pl->vectorcall = poller_call;
    pl->recv = Py_NewRef(recv);
    pl->stats = Py_NewRef(stats);
    return (PyObject *)pl;
}

static int
poller_traverse(PollerObject *pl, visitproc visit, void *arg)
{
    Py_VISIT(pl->recv);
    Py_VISIT(pl->stats);
    return 0;
}

static int
poller_clear(PollerObject *pl)
{
    Py_CLEAR(pl->recv);
    Py_CLEAR(pl->stats);
    return 0;
}

static void
poller_dealloc(PollerObject *pl)
{
    PyObject_GC_UnTrack(pl);
    poller_clear(pl);
    Py_TYPE(pl)->tp_free((PyObject *)pl);
}

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.Poller",
    .tp_basicsize = sizeof(PollerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Poller(recv, stats): Link.poll in C.",
    .tp_new = poller_new,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_traverse = (traverseproc)poller_traverse,
    .tp_clear = (inquiry)poller_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PollerObject, vectorcall),
};

/* Waker(alink, monotonic): AsyncLink._on_readable in one call, with no Python
 * frame on the common path: the callable AsyncLink registers with add_reader
 * (waker() -> None). Each call reads from `alink` (an AsyncLink) what
 * _on_readable reads, in the same order, and does what it does:
 *   now = alink._clock(): CLOCK_MONOTONIC read here, as time.monotonic
 *     returns it, when _clock is `monotonic` (time.monotonic); else called;
 *   msgs = link.poll(alink._max_frames, now): the Poller itself when
 *     link._poll_c is one and Link.poll would call it (not link.closed,
 *     link.accelerated, link.peer_session), link._poll_rest(*r) for its
 *     tuple; else the method link.poll;
 *   when msgs and alink._on_messages is not None: the callback with
 *     alink._flush_scheduled True, restored after it even when it raises;
 *   link.flush(now): the Flusher itself when link._flush_c is one and
 *     Link.flush would call it (not link.closed, link.accelerated), its int
 *     the end of it, link._flush_packed(r, now) for its tuple, and for None
 *     the method link.flush(now) (the Flusher then answers None again, having
 *     changed nothing, and Python's flush does it all); else link.flush;
 *   the backpressure release (alink._blocked, alink._writable.set()) and,
 *   without a callback, alink._inbox.extend(msgs); alink._inbox_ready.set().
 * Exceptions propagate as from _on_readable. It holds the AsyncLink only: the
 * socket is reached through the link's Poller and Flusher (their RxCopies and
 * StrideTx check the live word), never by an address of its own.
 * tests/xport/test_waker.py compares it with _on_readable. */
static PyObject *s_link, *s_clock, *s_max_frames, *s_closed, *s_poll_c, *s_accelerated,
    *s_peer_session, *s_poll_rest, *s_poll, *s_on_messages, *s_flush_scheduled, *s_flush_c,
    *s_flush, *s_flush_packed, *s_blocked, *s_max_queued, *s_writable, *s_set, *s_inbox,
    *s_inbox_ready;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *alink, *monotonic;
} WakerObject;

/* time.monotonic(), as CPython computes it (pytime.c: the nanoseconds of
 * CLOCK_MONOTONIC, whole seconds divided as integers, else as a double) */
static PyObject *
monotonic_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    int64_t ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    volatile double d; /* as pytime.c: no other rounding */
    if (ns % 1000000000 == 0)
        d = (double)(ns / 1000000000);
    else {
        d = (double)ns;
        d /= 1e9;
    }
    return PyFloat_FromDouble(d);
}

static PyObject *
monotonic(PyObject *mod, PyObject *unused)
{
    return monotonic_now();
}

/* bool(obj.name): 1, 0, or -1 with an exception */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *o = PyObject_GetAttr(obj, name);
    if (o == NULL)
        return -1;
    int t = o == Py_True ? 1 : o == Py_False || o == Py_None ? 0 : PyObject_IsTrue(o);
    Py_DECREF(o);
    return t;
}

/* link.poll(max_frames, now) (a new reference) */
static PyObject *
waker_poll(PyObject *link, PyObject *max_frames, PyObject *now)
{
    int t = attr_true(link, s_closed);
    if (t != 0)
        return t < 0 ? NULL : PyList_New(0);
    PyObject *pc = PyObject_GetAttr(link, s_poll_c);
    if (pc == NULL)
        return NULL;
    int fast = Py_IS_TYPE(pc, &PollerType);
    if (fast && (fast = attr_true(link, s_accelerated)) > 0)
        fast = attr_true(link, s_peer_session);
    PyObject *args[4] = {NULL, link, max_frames, now};
    PyObject *r = NULL;
    if (fast > 0) {
        r = poller_call(pc, args + 1, 3, NULL);
        if (r != NULL && !PyList_CheckExact(r)) {
            /* (rx, start, off, left, merged, out): link._poll_rest(*r) */
            PyObject *rest = PyObject_GetAttr(link, s_poll_rest);
            PyObject *msgs = rest ? PyObject_Call(rest, r, NULL) : NULL;
            Py_XDECREF(rest);
            Py_SETREF(r, msgs);
        }
    }
    else if (fast == 0)
        r = PyObject_VectorcallMethod(s_poll, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(pc);
    return r;
}

/* link.flush(now): 0, or -1 with an exception */
static int
waker_flush(PyObject *link, PyObject *now)
{
    int t = attr_true(link, s_closed);
    if (t != 0)
        return t < 0 ? -1 : 0;
    PyObject *fc = PyObject_GetAttr(link, s_flush_c);
    if (fc == NULL)
        return -1;
    int fast = Py_IS_TYPE(fc, &FlusherType);
    if (fast)
        fast = attr_true(link, s_accelerated);
    PyObject *args[3] = {NULL, link, now};
    PyObject *r = NULL;
    if (fast > 0) {
        r = flusher_call(fc, args + 1, 2, NULL);
        if (r != NULL && !PyLong_CheckExact(r)) {
            PyObject *a[3] = {link, r, now};
            PyObject *r2 = r == Py_None
                ? PyObject_VectorcallMethod(s_flush, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL)
                : PyObject_VectorcallMethod(s_flush_packed, a, 3, NULL);
            Py_SETREF(r, r2);
        }
    }
    else if (fast == 0)
        r = PyObject_VectorcallMethod(s_flush, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(fc);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* obj.name = value, in a `finally:` after an exception (or none): a failure
 * raises its own exception with the first as its __context__, as Python does */
static int
set_in_finally(PyObject *obj, PyObject *name, PyObject *value)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (PyObject_SetAttr(obj, name, value) == 0) {
        PyErr_Restore(et, ev, tb);
        return et == NULL ? 0 : -1;
    }
    if (et != NULL) {
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb != NULL)
            PyException_SetTraceback(ev, tb);
        PyObject *nt, *nv, *ntb;
        PyErr_Fetch(&nt, &nv, &ntb);
        PyErr_NormalizeException(&nt, &nv, &ntb);
        PyException_SetContext(nv, ev); /* steals ev */
        PyErr_Restore(nt, nv, ntb);
        Py_DECREF(et);
        Py_XDECREF(tb);
    }
    return -1;
}

static PyObject *
waker_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WakerObject *w = (WakerObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "waker() takes no arguments");
        return NULL;
    }
    if (w->alink == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "waker: cleared");
        return NULL;
    }
    PyObject *al = Py_NewRef(w->alink);
    PyObject *now = NULL, *link = NULL, *msgs = NULL, *cb = NULL, *res = NULL;
    /* now = self._clock() */
    PyObject *clock = PyObject_GetAttr(al, s_clock);
    if (clock == NULL)
        goto done;
    now = clock == w->monotonic ? monotonic_now() : PyObject_CallNoArgs(clock);
    Py_DECREF(clock);
    if (now == NULL || (link = PyObject_GetAttr(al, s_link)) == NULL)
        goto done;
    PyObject *mf = PyObject_GetAttr(al, s_max_frames);
    if (mf == NULL)
        goto done;
    msgs = waker_poll(link, mf, now);
    Py_DECREF(mf);
    if (msgs == NULL)
        goto done;
    int have = PyList_CheckExact(msgs) ? PyList_GET_SIZE(msgs) > 0 : PyObject_IsTrue(msgs);
    if (have < 0)
        goto done;
    if (have) {
        if ((cb = PyObject_GetAttr(al, s_on_messages)) == NULL)
            goto done;
        if (cb != Py_None) {
            /* what the callback sends at once goes out with the flush below */
            PyObject *scheduled = PyObject_GetAttr(al, s_flush_scheduled);
            if (scheduled == NULL)
                goto done;
            if (PyObject_SetAttr(al, s_flush_scheduled, Py_True) < 0) {
                Py_DECREF(scheduled);
                goto done;
            }
            PyObject *r = PyObject_CallOneArg(cb, msgs);
            Py_XDECREF(r);
            int rc = set_in_finally(al, s_flush_scheduled, scheduled);
            Py_DECREF(scheduled);
            if (rc < 0)
                goto done;
            have = 0; /* (msgs = []) */
        }
    }
    /* new credit may have arrived, or our posted buffers grew: flush now */
    if (waker_flush(link, now) < 0)
        goto done;
    int blocked = attr_true(al, s_blocked);
    if (blocked < 0)
        goto done;
    if (blocked) {
        PyObject *q = PyObject_GetAttr(link, s_queued_bytes);
        PyObject *m = q ? PyObject_GetAttr(al, s_max_queued) : NULL;
        int le = m ? PyObject_RichCompareBool(q, m, Py_LE) : -1;
        Py_XDECREF(q);
        Py_XDECREF(m);
        if (le < 0)
            goto done;
        if (le) {
            if (PyObject_SetAttr(al, s_blocked, Py_False) < 0)
                goto done;
            PyObject *ev = PyObject_GetAttr(al, s_writable);
            PyObject *r = ev ? PyObject_CallMethodNoArgs(ev, s_set) : NULL;
            Py_XDECREF(ev);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    if (have) {
        PyObject *inbox = PyObject_GetAttr(al, s_inbox);
        PyObject *r = inbox ? PyObject_CallMethodOneArg(inbox, s_extend, msgs) : NULL;
        Py_XDECREF(inbox);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
        PyObject *ev = PyObject_GetAttr(al, s_inbox_ready);
        r = ev ? PyObject_CallMethodNoArgs(ev, s_set) : NULL;
        Py_XDECREF(ev);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    res = Py_NewRef(Py_None);
done:
    Py_XDECREF(cb);
    Py_XDECREF(msgs);
    Py_XDECREF(link);
    Py_XDECREF(now);
    Py_DECREF(al);
    return res;
}

static PyObject *
waker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *alink, *mono;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Waker takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO:Waker", &alink, &mono))
        return NULL;
    WakerObject *w = (WakerObject *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    w->vectorcall = waker_call;
    w->alink = Py_NewRef(alink);
    w->monotonic = Py_NewRef(mono);
    return (PyObject *)w;
}

static int
waker_traverse(WakerObject *w, visitproc visit, void *arg)
{
    Py_VISIT(w->alink);
    Py_VISIT(w->monotonic);
    return 0;
}

static int
waker_clear(WakerObject *w)
{
    Py_CLEAR(w->alink);
    Py_CLEAR(w->monotonic);
    return 0;
}

static void
waker_dealloc(WakerObject *w)
{
    PyObject_GC_UnTrack(w);
    waker_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyTypeObject WakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.Waker",
    .tp_basicsize = sizeof(WakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Waker(alink, monotonic): AsyncLink._on_readable in C.",
    .tp_new = waker_new,
    .tp_dealloc = (destructor)waker_dealloc,
    .tp_traverse = (traverseproc)waker_traverse,
    .tp_clear = (inquiry)waker_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(WakerObject, vectorcall),
};

/* RunSender(alink): AsyncLink.try_send_runs in one C call - the host's run
 * engine calls it once per received batch with the batch's replies and
 * CREDITs. The same steps: the backpressure check, queue_runs, the queued
 * byte count, blocking, one flush scheduled. Whatever queue_runs leaves to
 * Python's loop (it queued nothing), and a link that is not accelerated,
 * go to the Python method, which repeats the side-effect-free check. It holds
 * only the AsyncLink. tests/xport/test_link_send_runs.py compares the two. */
static PyObject *s_aclosed, *s_queue, *s_clear, *s_schedule_flush, *s_try_send_runs;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *alink;
} RunSenderObject;

static PyObject *
run_sender_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    RunSenderObject *rs = (RunSenderObject *)self;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "run_sender(runs, credits, nbytes)");
        return NULL;
    }
    if (rs->alink == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "run_sender: cleared");
        return NULL;
    }
    PyObject *al = Py_NewRef(rs->alink), *link = NULL, *queue = NULL, *res = NULL;
    long long queued, max_queued, nbytes;
    int ok;
    if ((link = PyObject_GetAttr(al, s_link)) == NULL)
        goto done;
    /* if self._closed or queued > self._max_queued: return False */
    int closed = attr_true(al, s_aclosed);
    if (closed < 0)
        goto done;
    if (closed) {
        res = Py_NewRef(Py_False);
        goto done;
    }
    if ((ok = get_ll(link, s_queued_bytes, &queued)) < 0
        || (ok && (ok = get_ll(al, s_max_queued, &max_queued)) < 0))
        goto done;
    if (ok && queued > max_queued) {
        res = Py_NewRef(Py_False);
        goto done;
    }
    /* counts beyond small ints, other shapes: Python's arithmetic and loop */
    nbytes = ok && PyLong_CheckExact(args[2]) ? PyLong_AsLongLong(args[2]) : -1;
    if (nbytes == -1 && PyErr_Occurred())
        PyErr_Clear();
    Py_ssize_t ncredits = PyList_CheckExact(args[1]) ? PyList_GET_SIZE(args[1]) : -1;
    int accelerated = ok && nbytes >= 0 && nbytes < LC_LIMIT && ncredits >= 0
                      ? attr_true(link, s_accelerated) : 0;
    if (accelerated < 0)
        goto done;
    if (accelerated) {
        if ((queue = PyObject_GetAttr(link, s_queue)) == NULL)
            goto done;
        PyObject *qargs[3] = {queue, args[0], args[1]};
        PyObject *r = queue_runs(NULL, qargs, 3);
        if (r == NULL)
            goto done;
        accelerated = r == Py_True;
        Py_DECREF(r);
    }
    if (!accelerated) {
        /* the Python method: its loop, its arithmetic, its errors */
        PyObject *margs[4] = {al, args[0], args[1], args[2]};
        res = PyObject_VectorcallMethod(s_try_send_runs, margs,
                                        4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        goto done;
    }
    /* self._queued(queued + nbytes + 8 * len(credits)), inline */
    queued += nbytes + 8 * (long long)ncredits;
    if (set_ll(link, s_queued_bytes, queued) < 0)
        goto done;
    if (queued > max_queued) {
        PyObject *ev = PyObject_GetAttr(al, s_writable);
        PyObject *r = ev ? PyObject_CallMethodNoArgs(ev, s_clear) : NULL;
        Py_XDECREF(ev);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
        if (PyObject_SetAttr(al, s_blocked, Py_True) < 0)
            goto done;
    }
    int scheduled = attr_true(al, s_flush_scheduled);
    if (scheduled < 0)
        goto done;
    if (!scheduled) {
        PyObject *r = PyObject_CallMethodNoArgs(al, s_schedule_flush);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    res = Py_NewRef(Py_True);
done:
    Py_XDECREF(queue);
    Py_XDECREF(link);
    Py_DECREF(al);
    return res;
}

static PyObject *
run_sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *alink;
    if (kwds != NULL && PyDict_GET_SIZE(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "RunSender takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O:RunSender", &alink))
        return NULL;
    RunSenderObject *rs = (RunSenderObject *)type->tp_alloc(type, 0);
    if (rs == NULL)
        return NULL;
    rs->vectorcall = run_sender_call;
    rs->alink = Py_NewRef(alink);
    return (PyObject *)rs;
}

static int
run_sender_traverse(RunSenderObject *rs, visitproc visit, void *arg)
{
    Py_VISIT(rs->alink);
    return 0;
}

static int
run_sender_clear(RunSenderObject *rs)
{
    Py_CLEAR(rs->alink);
    return 0;
}

static void
run_sender_dealloc(RunSenderObject *rs)
{
    PyObject_GC_UnTrack(rs);
    run_sender_clear(rs);
    Py_TYPE(rs)->tp_free((PyObject *)rs);
}

static PyTypeObject RunSenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xport._linkfast.RunSender",
    .tp_basicsize = sizeof(RunSenderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RunSender(alink): AsyncLink.try_send_runs in C.",
    .tp_new = run_sender_new,
    .tp_dealloc = (destructor)run_sender_dealloc,
    .tp_traverse = (traverseproc)run_sender_traverse,
    .tp_clear = (inquiry)run_sender_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(RunSenderObject, vectorcall),
};

static PyObject *
init(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    static const char *const data_names[3] = {"conn_id", "payload", "header_length"};
    static const char *const credit_names[3] = {"conn_id", "messages", "bytes"};
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "init(Data, Credit)");
        return NULL;
    }
    if (slot_class_init(&data_cls, args[0], data_names) < 0
        || slot_class_init(&credit_cls, args[1], credit_names) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", (PyCFunction)(void (*)(void))init, METH_FASTCALL,
     "init(Data, Credit): the message classes rx_whole builds."},
    {"rx_whole", (PyCFunction)(void (*)(void))rx_whole, METH_FASTCALL,
     "rx_whole(data, off, end, left, raw, out) -> (off, left, merged): whole DATA and CREDIT "
     "messages of one frame (the hot path of xport._link.Link.poll)."},
    {"rx_frames", (PyCFunction)(void (*)(void))rx_frames, METH_FASTCALL,
     "rx_frames(rx, start, lc, raw, out) -> (index, off, left, merged, credit_only): the "
     "clean frames of a receive batch (the per-frame loop of xport._link.Link.poll)."},
    {"pack_frames", (PyCFunction)(void (*)(void))pack_frames, METH_FASTCALL,
     "pack_frames(queue, buf, frame_size, nframes, seq, credit, ack, lens) -> (frames, off, "
     "count, msgs, nbytes): the frames of one flush (Link._send_data_frames)."},
    {"queue_runs", (PyCFunction)(void (*)(void))queue_runs, METH_FASTCALL,
     "queue_runs(queue, runs, credits) -> bool: AsyncLink.try_send_runs's queue entries "
     "built and appended in one call (False: inputs left to the Python loop)."},
    {"monotonic", monotonic, METH_NOARGS,
     "monotonic() -> float: time.monotonic() as the Waker reads it (CLOCK_MONOTONIC)."},
    {"pack_whole", (PyCFunction)(void (*)(void))pack_whole, METH_FASTCALL,
     "pack_whole(queue, buf, off, count, frame_size) -> (off, n, nbytes): pack whole "
     "queued messages into one frame (the hot path of Link._send_data_frames)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "xport._linkfast",
    .m_doc = "Optional accelerator for xport._link's per-message loops.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__linkfast(void)
{
    for (int i = 0; i < LC_N; i++)
        if (lc_attr[i] == NULL && (lc_attr[i] = PyUnicode_InternFromString(lc_names[i])) == NULL)
            return NULL;
    if ((s_extend == NULL && (s_extend = PyUnicode_InternFromString("extend")) == NULL)
        || (o_data == NULL && (o_data = PyLong_FromLong(TYPE_DATA)) == NULL)
        || (o_credit == NULL && (o_credit = PyLong_FromLong(TYPE_CREDIT)) == NULL)
        || (o_zero == NULL && (o_zero = PyLong_FromLong(0)) == NULL))
        return NULL;
    if (PyType_Ready(&StrideTxType) < 0 || PyType_Ready(&CounterReaderType) < 0
        || PyType_Ready(&RxCopiesType) < 0 || PyType_Ready(&FlusherType) < 0
        || PyType_Ready(&PollerType) < 0 || PyType_Ready(&WakerType) < 0
        || PyType_Ready(&RunSenderType) < 0)
        return NULL;
    for (int i = 0; i < LT_N; i++)
        if (lt_attr[i] == NULL && (lt_attr[i] = PyUnicode_InternFromString(lt_names[i])) == NULL)
            return NULL;
    for (int i = 0; i < ST_N; i++)
        if (st_attr[i] == NULL && (st_attr[i] = PyUnicode_InternFromString(st_names[i])) == NULL)
            return NULL;
    struct {
        PyObject **p;
        const char *name;
    } names[] = {{&s_head_sent, "_head_sent"}, {&s_credit, "credit"},
                 {&s_posted_base, "_posted_base"}, {&s_queued_bytes, "_queued_bytes"},
                 {&s_last_tx, "_last_tx"}, {&s_want_credit_only, "want_credit_only"},
                 {&s_send_credit_only, "_send_credit_only"}, {&s_append, "append"},
                 {&s_last_rx, "_last_rx"}, {&s_raw_runs, "raw_runs"}, {&s_raw_data, "raw_data"},
                 {&s_link, "link"}, {&s_clock, "_clock"}, {&s_max_frames, "_max_frames"},
                 {&s_closed, "closed"}, {&s_poll_c, "_poll_c"}, {&s_accelerated, "accelerated"},
                 {&s_peer_session, "peer_session"}, {&s_poll_rest, "_poll_rest"},
                 {&s_poll, "poll"}, {&s_on_messages, "_on_messages"},
                 {&s_flush_scheduled, "_flush_scheduled"}, {&s_flush_c, "_flush_c"},
                 {&s_flush, "flush"}, {&s_flush_packed, "_flush_packed"},
                 {&s_blocked, "_blocked"}, {&s_max_queued, "_max_queued"},
                 {&s_writable, "_writable"}, {&s_set, "set"}, {&s_inbox, "_inbox"},
                 {&s_inbox_ready, "_inbox_ready"}, {&s_aclosed, "_closed"},
                 {&s_queue, "_queue"}, {&s_clear, "clear"},
                 {&s_schedule_flush, "_schedule_flush"}, {&s_try_send_runs, "try_send_runs"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (*names[i].p == NULL && (*names[i].p = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod == NULL)
        return NULL;
    Py_INCREF(&StrideTxType);
    if (PyModule_AddObject(mod, "StrideTx", (PyObject *)&StrideTxType) < 0) {
        Py_DECREF(&StrideTxType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&CounterReaderType);
    if (PyModule_AddObject(mod, "CounterReader", (PyObject *)&CounterReaderType) < 0) {
        Py_DECREF(&CounterReaderType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&RxCopiesType);
    if (PyModule_AddObject(mod, "RxCopies", (PyObject *)&RxCopiesType) < 0) {
        Py_DECREF(&RxCopiesType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&FlusherType);
    if (PyModule_AddObject(mod, "Flusher", (PyObject *)&FlusherType) < 0) {
        Py_DECREF(&FlusherType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&PollerType);
    if (PyModule_AddObject(mod, "Poller", (PyObject *)&PollerType) < 0) {
        Py_DECREF(&PollerType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&WakerType);
    if (PyModule_AddObject(mod, "Waker", (PyObject *)&WakerType) < 0) {
        Py_DECREF(&WakerType);
        Py_DECREF(mod);
        return NULL;
    }
    Py_INCREF(&RunSenderType);
    if (PyModule_AddObject(mod, "RunSender", (PyObject *)&RunSenderType) < 0) {
        Py_DECREF(&RunSenderType);
        Py_DECREF(mod);
        return NULL;
    }
    if (PyModule_AddIntConstant(mod, "PROTOCOL_VERSION", PROTOCOL_VERSION) < 0
        || PyModule_AddIntConstant(mod, "HEADER_SIZE", HEADER_SIZE) < 0
        || PyModule_AddIntConstant(mod, "DATA", TYPE_DATA) < 0
        || PyModule_AddIntConstant(mod, "CREDIT", TYPE_CREDIT) < 0
        /* 2: rx_whole returns (off, left, merged) and takes raw = 2 (runs) */
        || PyModule_AddIntConstant(mod, "API", 2) < 0
        /* 3: pack_frames; 4: rx_frames; 5: queue_runs */
        || PyModule_AddIntConstant(mod, "FEATURES", 5) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
