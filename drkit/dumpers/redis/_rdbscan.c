/*
 * Native fast path of drkit.dumpers.redis.rdb.rewrite(): scan a window of RDB key records and
 * copy / drop / re-prefix them, stopping at the first record it does not fully handle.
 *
 * scan(buf, pos, run, out, used, at_ms, shift) -> (next, run, kept, expired, with_ttl, used, full)
 *
 *   buf    the parser's current window (any contiguous buffer)
 *   pos    where the next record starts in buf
 *   run    start of the pending run of unchanged bytes (buf[run:pos] not yet copied to out)
 *   out    a writable buffer of fixed size (the caller's output buffer, never resized here)
 *   used   how much of out is already filled; bytes that cannot stay in the pending run go
 *          after it, and the new fill is returned
 *   at_ms  keys whose absolute expiry (Unix ms) is <= at_ms are dropped
 *   shift  added to every kept expiry, which is written as EXPIRETIME_MS
 *
 * Records handled: key records of the types 0-5, 9-14, 16-18 and 20 (strings, the blob encodings,
 * lists, sets, sorted sets, hashes, quicklists) with any EXPIRETIME / EXPIRETIME_MS / IDLE / FREQ
 * prefix.  It stops at everything else (AUX, SELECTDB, RESIZEDB, FUNCTION, EOF, streams, modules,
 * unknown types), at anything malformed, and at expiries that do not fit signed 64 bits; the
 * Python parser then handles (or reports) that record, so results and errors are exactly those of
 * the Python path.  The walk mirrors rdb_types.py byte for byte: a record is "incomplete" only if
 * the Python code would run past the window end before meeting any structural error in it.
 *
 * next >= 0: the record at next was not handled (next == pos: none was handled).
 * next < 0:  the record at ~next is incomplete in buf (the caller reads more and calls again).
 * Bytes of unchanged records stay in the run; for a dropped or rewritten record, buf[run:start]
 * is copied into out (then the rewritten record) and run moves past the record.
 * full = 1: that copy did not fit in out; next is the record's start, and the caller empties
 * out, writes buf[run:next] itself and calls again (run = next).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define S_OK 0
#define S_SHORT 1 /* needs bytes beyond the window */
#define S_STOP 2  /* not handled here: the Python parser takes the record */

#define MAX_PREFIX 16

typedef const unsigned char *buf_t;

/* rdb_types.read_len */
static inline int
read_len(buf_t b, Py_ssize_t n, Py_ssize_t *pp, uint64_t *val)
{
    Py_ssize_t p = *pp;
    if (p >= n)
        return S_SHORT;
    unsigned c = b[p];
    unsigned t = c >> 6;
    if (t == 0) {
        *val = c;
        *pp = p + 1;
        return S_OK;
    }
    if (t == 1) {
        if (p + 1 >= n)
            return S_SHORT;
        *val = ((uint64_t)(c & 0x3F) << 8) | b[p + 1];
        *pp = p + 2;
        return S_OK;
    }
    if (c == 0x80) {
        if (n - p < 5)
            return S_SHORT;
        *val = ((uint64_t)b[p + 1] << 24) | ((uint64_t)b[p + 2] << 16) | ((uint64_t)b[p + 3] << 8) | b[p + 4];
        *pp = p + 5;
        return S_OK;
    }
    if (c == 0x81) {
        if (n - p < 9)
            return S_SHORT;
        uint64_t v = 0;
        for (int i = 1; i <= 8; i++)
            v = (v << 8) | b[p + i];
        *val = v;
        *pp = p + 9;
        return S_OK;
    }
    return S_STOP; /* BadEncoding in Python */
}

/* p += len, or S_SHORT if that passes the window end (Python then only meets IndexError/short). */
static inline int
advance(Py_ssize_t n, Py_ssize_t *pp, uint64_t len)
{
    if (*pp > n || len > (uint64_t)(n - *pp))
        return S_SHORT;
    *pp += (Py_ssize_t)len;
    return S_OK;
}

/* rdb_types.skip_str */
static inline int
skip_str(buf_t b, Py_ssize_t n, Py_ssize_t *pp)
{
    Py_ssize_t p = *pp;
    if (p >= n)
        return S_SHORT;
    unsigned c = b[p];
    unsigned t = c >> 6;
    int r;
    uint64_t len;
    if (t == 0)
        return advance(n, pp, 1 + (uint64_t)c);
    if (t == 1) {
        if (p + 1 >= n)
            return S_SHORT;
        return advance(n, pp, 2 + (((uint64_t)(c & 0x3F) << 8) | b[p + 1]));
    }
    if (t == 2) {
        if ((r = read_len(b, n, &p, &len)) != S_OK)
            return r;
        *pp = p;
        return advance(n, pp, len);
    }
    switch (c & 0x3F) {
    case 0:
        return advance(n, pp, 2);
    case 1:
        return advance(n, pp, 3);
    case 2:
        return advance(n, pp, 5);
    case 3: {
        uint64_t clen, ulen;
        p += 1;
        if ((r = read_len(b, n, &p, &clen)) != S_OK)
            return r;
        if ((r = read_len(b, n, &p, &ulen)) != S_OK)
            return r;
        *pp = p;
        return advance(n, pp, clen);
    }
    }
    return S_STOP;
}

/* Does rdb_types.lzf_decompress(data, ulen) succeed?  (Only the output length matters.) */
static int
lzf_ok(buf_t d, Py_ssize_t n, uint64_t ulen)
{
    Py_ssize_t i = 0;
    uint64_t olen = 0;
    while (i < n) {
        unsigned ctrl = d[i++];
        if (ctrl < 32) {
            Py_ssize_t take = (Py_ssize_t)ctrl + 1;
            if (take > n - i)
                take = n - i;
            olen += (uint64_t)take;
            i += (Py_ssize_t)ctrl + 1;
            continue;
        }
        uint64_t len = ctrl >> 5;
        if (len == 7) {
            if (i >= n)
                return 0;
            len += d[i++];
        }
        if (i >= n)
            return 0;
        uint64_t back = ((uint64_t)(ctrl & 0x1F) << 8) + d[i++] + 1;
        if (back > olen)
            return 0;
        olen += len + 2;
    }
    return olen == ulen;
}

/* rdb_types.read_str for a key (the c >= 64 branch of the parser), without building the key. */
static inline int
skip_key(buf_t b, Py_ssize_t n, Py_ssize_t *pp)
{
    Py_ssize_t p = *pp;
    if (p >= n)
        return S_SHORT;
    unsigned c = b[p];
    unsigned t = c >> 6;
    if (t < 3)
        return skip_str(b, n, pp);
    unsigned enc = c & 0x3F;
    if (enc <= 2) {
        Py_ssize_t w = (Py_ssize_t)1 << enc;
        if (n - p < 1 + w)
            return S_SHORT;
        *pp = p + 1 + w;
        return S_OK;
    }
    if (enc == 3) {
        uint64_t clen, ulen;
        int r;
        p += 1;
        if ((r = read_len(b, n, &p, &clen)) != S_OK)
            return r;
        if ((r = read_len(b, n, &p, &ulen)) != S_OK)
            return r;
        if (clen > (uint64_t)(n - p))
            return S_SHORT;
        if (!lzf_ok(b + p, (Py_ssize_t)clen, ulen))
            return S_STOP; /* Python reports the corrupt LZF string */
        *pp = p + (Py_ssize_t)clen;
        return S_OK;
    }
    return S_STOP;
}

/* rdb_types.skip_value for the types handled here; S_STOP for the others. */
static int
skip_value(unsigned t, buf_t b, Py_ssize_t n, Py_ssize_t *pp)
{
    Py_ssize_t p = *pp;
    uint64_t cnt;
    int r;
    switch (t) {
    case 0: case 9: case 10: case 11: case 12: case 13: case 16: case 17: case 20:
        return skip_str(b, n, pp);
    case 1: case 2: case 4: case 14: {
        if ((r = read_len(b, n, &p, &cnt)) != S_OK)
            return r;
        int per = t == 4 ? 2 : 1;
        for (uint64_t i = 0; i < cnt; i++) {
            for (int k = 0; k < per; k++)
                if ((r = skip_str(b, n, &p)) != S_OK)
                    return r;
        }
        break;
    }
    case 5:
        if ((r = read_len(b, n, &p, &cnt)) != S_OK)
            return r;
        for (uint64_t i = 0; i < cnt; i++) {
            if ((r = skip_str(b, n, &p)) != S_OK)
                return r;
            if ((r = advance(n, &p, 8)) != S_OK) /* the binary double score */
                return r;
        }
        break;
    case 18:
        if ((r = read_len(b, n, &p, &cnt)) != S_OK)
            return r;
        for (uint64_t i = 0; i < cnt; i++) {
            uint64_t container;
            if ((r = read_len(b, n, &p, &container)) != S_OK)
                return r;
            if ((r = skip_str(b, n, &p)) != S_OK)
                return r;
        }
        break;
    case 3:
        if ((r = read_len(b, n, &p, &cnt)) != S_OK)
            return r;
        for (uint64_t i = 0; i < cnt; i++) {
            if ((r = skip_str(b, n, &p)) != S_OK)
                return r;
            if (p >= n)
                return S_SHORT;
            unsigned c = b[p];
            if ((r = advance(n, &p, c >= 253 ? 1 : 1 + (uint64_t)c)) != S_OK)
                return r;
        }
        break;
    default:
        return S_STOP; /* streams, modules, 7.4 types, unknown */
    }
    *pp = p;
    return S_OK;
}

typedef struct {
    Py_ssize_t end;   /* position after the record */
    Py_ssize_t body;  /* position of the type byte */
    int has_exp;
    int64_t exp;      /* absolute expiry, Unix ms */
    int npre;
    Py_ssize_t pre[MAX_PREFIX][2]; /* IDLE/FREQ opcode spans, in file order */
} keyrec;

/* The key record at p (RdbParser.__iter__'s key branch). */
static int
parse_key(buf_t b, Py_ssize_t n, Py_ssize_t p, keyrec *k)
{
    int r;
    if (p >= n)
        return S_SHORT;
    unsigned op = b[p++];
    k->has_exp = 0;
    k->exp = 0;
    k->npre = 0;
    k->end = k->body = p - 1;
    int exp_big = 0;
    while (op >= 0xF8 && op != 0xFA && op != 0xFB && op != 0xFE && op != 0xFF) { /* F8 F9 FC FD */
        if (op == 0xFC) {
            if (n - p < 8)
                return S_SHORT;
            uint64_t v = 0;
            for (int i = 7; i >= 0; i--)
                v = (v << 8) | b[p + i];
            p += 8;
            k->has_exp = 1;
            exp_big = v > (uint64_t)INT64_MAX;
            k->exp = (int64_t)(exp_big ? 0 : v);
        } else if (op == 0xFD) {
            if (n - p < 4)
                return S_SHORT;
            uint32_t v = (uint32_t)b[p] | ((uint32_t)b[p + 1] << 8) | ((uint32_t)b[p + 2] << 16)
                         | ((uint32_t)b[p + 3] << 24);
            p += 4;
            k->has_exp = 1;
            exp_big = 0;
            k->exp = (int64_t)(int32_t)v * 1000;
        } else {
            if (k->npre == MAX_PREFIX)
                return S_STOP;
            Py_ssize_t a = p - 1;
            if (op == 0xF8) {
                uint64_t idle;
                if ((r = read_len(b, n, &p, &idle)) != S_OK)
                    return r;
            } else {
                if (p >= n)
                    return S_SHORT;
                p += 1;
            }
            k->pre[k->npre][0] = a;
            k->pre[k->npre][1] = p;
            k->npre++;
        }
        if (p >= n)
            return S_SHORT;
        op = b[p++];
    }
    if (op >= 0xF4)
        return S_STOP; /* not a key, or an opcode after a prefix (an error in Python) */
    switch (op) {
    case 0: case 1: case 2: case 3: case 4: case 5: case 9: case 10: case 11: case 12: case 13:
    case 14: case 16: case 17: case 18: case 20:
        break;
    default:
        return S_STOP;
    }
    k->body = p - 1;
    if ((r = skip_key(b, n, &p)) != S_OK)
        return r;
    if ((r = skip_value(op, b, n, &p)) != S_OK)
        return r;
    if (exp_big)
        return S_STOP; /* expiry beyond int64: the Python path decides */
    k->end = p;
    return S_OK;
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "scan(buf, pos, run, out, used, at_ms, shift) takes 7 arguments");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t run = PyLong_AsSsize_t(args[2]);
    Py_ssize_t used = PyLong_AsSsize_t(args[4]);
    long long at = PyLong_AsLongLong(args[5]);
    long long shift = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view, outv;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &outv, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    buf_t b = (buf_t)view.buf;
    Py_ssize_t n = view.len;
    char *obuf = (char *)outv.buf;
    Py_ssize_t cap = outv.len;
    if (pos < 0 || pos > n || run < 0 || run > pos || used < 0 || used > cap) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&outv);
        PyErr_SetString(PyExc_ValueError, "scan: need 0 <= run <= pos <= len(buf) and 0 <= used <= len(out)");
        return NULL;
    }
    Py_ssize_t kept = 0, expired = 0, with_ttl = 0, next;
    int full = 0;
    keyrec k;
    unsigned char ms[9];
    for (;;) {
        int r = parse_key(b, n, pos, &k);
        if (r == S_SHORT) {
            next = ~pos;
            break;
        }
        if (r == S_STOP) {
            next = pos;
            break;
        }
        if (!k.has_exp) {
            kept++;
        } else if (k.exp <= at) {
            if (used + (pos - run) > cap) { /* the run before it does not fit: the caller writes it */
                next = pos;
                full = 1;
                break;
            }
            memcpy(obuf + used, b + run, (size_t)(pos - run));
            used += pos - run;
            expired++;
            run = k.end;
        } else {
            int64_t v = k.exp;
            if ((shift > 0 && v > INT64_MAX - shift) || (shift < 0 && v < INT64_MIN - shift)
                || v + shift < 0) {
                next = pos; /* out of the Python path's range ('<BQ'): let it raise */
                break;
            }
            Py_ssize_t total = (pos - run) + 9 + (k.end - k.body);
            for (int i = 0; i < k.npre; i++)
                total += k.pre[i][1] - k.pre[i][0];
            if (used + total > cap) {
                next = pos;
                full = 1;
                break;
            }
            uint64_t nv = (uint64_t)(v + shift);
            ms[0] = 0xFC;
            for (int i = 0; i < 8; i++)
                ms[1 + i] = (unsigned char)(nv >> (8 * i));
            char *o = obuf + used;
            memcpy(o, b + run, (size_t)(pos - run));
            o += pos - run;
            memcpy(o, ms, 9);
            o += 9;
            for (int i = 0; i < k.npre; i++) {
                memcpy(o, b + k.pre[i][0], (size_t)(k.pre[i][1] - k.pre[i][0]));
                o += k.pre[i][1] - k.pre[i][0];
            }
            memcpy(o, b + k.body, (size_t)(k.end - k.body));
            used += total;
            kept++;
            with_ttl++;
            run = k.end;
        }
        pos = k.end;
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&outv);
    return Py_BuildValue("(nnnnnni)", next, run, kept, expired, with_ttl, used, full);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, run, out, used, at_ms, shift) -> (next, run, kept, expired, with_ttl, used, full)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_rdbscan", "Native fast path of drkit.dumpers.redis.rdb.rewrite().", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__rdbscan(void)
{
    PyObject *m = PyModule_Create(&moddef);
    /* The scan() interface version; rdb.py uses this module only if it expects the same one. */
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", 2) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
