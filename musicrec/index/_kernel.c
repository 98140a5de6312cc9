/* musicrec.index._kernel: a scored answer's numpy glue, in two calls (musicrec/index/recommend.py).
 *
 * candidates(): the seeds' neighbour-table rows and their artists' and co-listened tracks as one
 * sorted, unique list without the banned songs, by a bitmap instead of concatenate-sort-mask.
 * score(): Recommender._score after its matrix product.
 *
 * Why: after BLAS has made the candidates x seeds similarities, what is left (the sparse
 * artist and co-listening terms, seed weights, max or mean over seeds, the popularity prior,
 * the skip penalty, ranking with its tie-breaks, one id per song, the best seed and the reason)
 * is a few dozen numpy calls of a few microseconds each: most of a scored answer's time. Here it
 * is one pass over the matrix and a bounded selection. The arithmetic is numpy's, operation for
 * operation and type for type, so the answer is the same bits (tests/test_kernel.py checks it
 * against the numpy path). Arrays come in through the buffer protocol; no numpy C API.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- buffers ------------------------------------------------------------------------------ */

static char kind_of(const char *format) {
    while (*format == '@' || *format == '=' || *format == '<') format++;
    switch (*format) {
        case 'b': case 'h': case 'i': case 'l': case 'q': return 'i';
        case 'B': case '?': case 'H': case 'I': case 'L': case 'Q': return 'u';
        case 'f': case 'd': return 'f';
        default: return 0;
    }
}

/* A C-contiguous buffer of `kind` ('i' signed int, 'u' unsigned byte, 'f' float) and `itemsize`. */
static int get(PyObject *obj, Py_buffer *view, char kind, Py_ssize_t itemsize, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != itemsize || kind_of(view->format) != kind) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous array of %c%zd items, got format %s",
                     name, kind, itemsize, view->format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#define ITEMS(view) ((view).len / (view).itemsize)

/* ---- the total order of the ranking: score desc (NaN last), popularity desc, column asc ------ */

typedef struct {
    const float *score;
    const int16_t *pop;   /* popularity by column */
} Order;

static inline int better(const Order *o, Py_ssize_t a, Py_ssize_t b) {
    float sa = o->score[a], sb = o->score[b];
    if (sa > sb) return 1;                 /* the common cases first: neither is NaN here */
    if (sa < sb) return 0;
    int na = isnan(sa), nb = isnan(sb);
    if (na != nb) return nb;               /* numpy sorts NaN after every number */
    if (o->pop[a] != o->pop[b]) return o->pop[a] > o->pop[b];
    return a < b;
}

/* A heap of column numbers with the worst at the root. */
static void sift_down(const Order *o, Py_ssize_t *heap, Py_ssize_t size, Py_ssize_t at) {
    for (;;) {
        Py_ssize_t left = 2 * at + 1, worst = at;
        if (left < size && better(o, heap[worst], heap[left])) worst = left;
        if (left + 1 < size && better(o, heap[worst], heap[left + 1])) worst = left + 1;
        if (worst == at) return;
        Py_ssize_t t = heap[at]; heap[at] = heap[worst]; heap[worst] = t;
        at = worst;
    }
}

/* The best `m` of `count` columns, best first, into `out`; returns how many (min(m, count)). */
static Py_ssize_t best_columns(const Order *o, Py_ssize_t count, Py_ssize_t m, Py_ssize_t *out) {
    if (m > count) m = count;
    if (m <= 0) return 0;
    for (Py_ssize_t i = 0; i < m; i++) out[i] = i;
    for (Py_ssize_t i = m / 2; i-- > 0;) sift_down(o, out, m, i);
    for (Py_ssize_t i = m; i < count; i++) {
        if (better(o, i, out[0])) {
            out[0] = i;
            sift_down(o, out, m, 0);
        }
    }
    for (Py_ssize_t size = m; size > 1; size--) {   /* pop the worst to the back: best first */
        Py_ssize_t t = out[0]; out[0] = out[size - 1]; out[size - 1] = t;
        sift_down(o, out, size - 1, 0);
    }
    return m;
}

/* ---- a small set of song keys (open addressing) -------------------------------------------- */

typedef struct { int32_t *slot; uint8_t *used; size_t mask; } KeySet;

static int keyset_init(KeySet *s, Py_ssize_t items) {
    size_t size = 16;
    while (size < (size_t)items * 2) size <<= 1;
    s->slot = malloc(size * sizeof(int32_t));
    s->used = calloc(size, 1);
    s->mask = size - 1;
    if (!s->slot || !s->used) {
        free(s->slot); free(s->used);
        s->slot = NULL; s->used = NULL;
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void keyset_free(KeySet *s) { free(s->slot); free(s->used); }

static int keyset_has(const KeySet *s, int32_t key) {
    size_t at = ((uint32_t)key * 2654435761u) & s->mask;
    while (s->used[at]) {
        if (s->slot[at] == key) return 1;
        at = (at + 1) & s->mask;
    }
    return 0;
}

/* 1 if `key` was new (and is now in the set), 0 if it was there. */
static int keyset_add(KeySet *s, int32_t key) {
    size_t at = ((uint32_t)key * 2654435761u) & s->mask;
    while (s->used[at]) {
        if (s->slot[at] == key) return 0;
        at = (at + 1) & s->mask;
    }
    s->used[at] = 1;
    s->slot[at] = key;
    return 1;
}

/* ---- the sparse terms ------------------------------------------------------------------------ */

/* sims[c, s] += (float)weight * value for each of seed s's (row, value) pairs whose row is
 * candidate c (positions: row -> candidate, -1 elsewhere); the cell's link flag becomes `flag`.
 * Seed s's pairs are the last two items of the list's s-th tuple: (..., rows int64, values float32). */
static int add_sparse(float *sims, uint8_t *linked, const int32_t *positions, Py_ssize_t n,
                      PyObject *per_seed_pairs, Py_ssize_t seeds, double weight, uint8_t flag, const char *name) {
    if (!PyList_Check(per_seed_pairs) || PyList_GET_SIZE(per_seed_pairs) != seeds) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list of one (rows, values) pair per seed", name);
        return -1;
    }
    float w = (float)weight;   /* numpy: a Python float times a float32 array is float32 */
    for (Py_ssize_t s = 0; s < seeds; s++) {
        PyObject *pair = PyList_GET_ITEM(per_seed_pairs, s);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) < 2) {
            PyErr_Format(PyExc_TypeError, "%s: expected tuples ending in (rows, values)", name);
            return -1;
        }
        Py_ssize_t last = PyTuple_GET_SIZE(pair) - 1;
        Py_buffer rows, values;
        if (get(PyTuple_GET_ITEM(pair, last - 1), &rows, 'i', 8, 0, name) < 0) return -1;
        if (get(PyTuple_GET_ITEM(pair, last), &values, 'f', 4, 0, name) < 0) { PyBuffer_Release(&rows); return -1; }
        const int64_t *r = rows.buf;
        const float *v = values.buf;
        Py_ssize_t count = ITEMS(rows);
        if (ITEMS(values) != count) {
            PyErr_Format(PyExc_ValueError, "%s: rows and values differ in length", name);
            PyBuffer_Release(&rows); PyBuffer_Release(&values);
            return -1;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (r[i] < 0 || r[i] >= n) continue;
            int32_t c = positions[r[i]];
            if (c < 0) continue;
            sims[c * seeds + s] += w * v[i];
            linked[c * seeds + s] = flag;
        }
        PyBuffer_Release(&rows);
        PyBuffer_Release(&values);
    }
    return 0;
}

/* ---- score ----------------------------------------------------------------------------------- */

PyDoc_STRVAR(score_doc,
"score(sims, candidates, seed_rows, weights, links, artist_weight, colisten, colisten_weight,\n"
"      clamp, mean, popularity, popularity_scale, penalty, song_key, k, positions, reasons)\n"
"-> (rows, scores, because, reasons)\n\n"
"Recommender._score from its candidates x seeds product on (musicrec/index/recommend.py).");

static PyObject *score(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 17) {
        PyErr_Format(PyExc_TypeError, "score() takes 17 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer sims_b = {0}, cand_b = {0}, seed_b = {0}, weight_b = {0}, pop_b = {0}, pen_b = {0},
              key_b = {0}, pos_b = {0};
    PyObject *links = args[4], *colisten = args[6], *penalty = args[12], *reason_names = args[16];
    PyObject *result = NULL, *rows_out = NULL, *scores_out = NULL, *because_out = NULL, *reasons_out = NULL;
    float *score = NULL;
    int16_t *col_pop = NULL;
    uint8_t *linked = NULL;
    Py_ssize_t *ranked = NULL, *chosen = NULL;
    KeySet keys = {0};
    int positions_set = 0;

    double artist_weight = PyFloat_AsDouble(args[5]);
    double colisten_weight = PyFloat_AsDouble(args[7]);
    int clamp = PyObject_IsTrue(args[8]), mean = PyObject_IsTrue(args[9]);
    double popularity_scale = PyFloat_AsDouble(args[11]);
    Py_ssize_t k = PyLong_AsSsize_t(args[14]);
    if (PyErr_Occurred() || clamp < 0 || mean < 0) return NULL;
    if (!PyTuple_Check(reason_names) || PyTuple_GET_SIZE(reason_names) != 3) {
        PyErr_SetString(PyExc_TypeError, "reasons: expected a tuple of 3 names (by link flag 0, 1, 2)");
        return NULL;
    }

    if (get(args[0], &sims_b, 'f', 4, 1, "sims") < 0) goto done;
    if (get(args[1], &cand_b, 'i', 8, 0, "candidates") < 0) goto done;
    if (get(args[2], &seed_b, 'i', 8, 0, "seed_rows") < 0) goto done;
    if (get(args[3], &weight_b, 'f', 4, 0, "weights") < 0) goto done;
    if (get(args[10], &pop_b, 'i', 2, 0, "popularity") < 0) goto done;
    if (penalty != Py_None && get(penalty, &pen_b, 'f', 4, 0, "penalty") < 0) goto done;
    if (get(args[13], &key_b, 'i', 4, 0, "song_key") < 0) goto done;
    if (get(args[15], &pos_b, 'i', 4, 1, "positions") < 0) goto done;

    Py_ssize_t columns = ITEMS(cand_b), seeds = ITEMS(seed_b), n = ITEMS(pos_b);
    const int64_t *candidates = cand_b.buf;
    const int16_t *popularity = pop_b.buf;
    const int32_t *song_key = key_b.buf;
    int32_t *positions = pos_b.buf;
    float *sims = sims_b.buf;   /* sims[c * seeds + s]: candidate c's similarity to seed s, as BLAS wrote it */
    const float *weights = weight_b.buf;
    if (ITEMS(sims_b) != seeds * columns || ITEMS(weight_b) != seeds || seeds < 1 ||
        (penalty != Py_None && ITEMS(pen_b) != columns) || ITEMS(pop_b) != n || ITEMS(key_b) != n) {
        PyErr_SetString(PyExc_ValueError, "score(): array shapes do not agree");
        goto done;
    }
    for (Py_ssize_t c = 0; c < columns; c++) {
        if (candidates[c] < 0 || candidates[c] >= n) {
            PyErr_SetString(PyExc_IndexError, "score(): a candidate row is outside the catalog");
            goto done;
        }
    }
    if (k < 0) k = 0;

    if (clamp) {   /* np.maximum(per_seed, 0.0): a power mean needs terms >= 0 (NaN stays NaN) */
        for (Py_ssize_t i = 0; i < seeds * columns; i++)
            sims[i] = sims[i] < 0.0f ? 0.0f : sims[i];
    }
    int sparse = links != Py_None || colisten != Py_None;
    if (sparse) {
        linked = calloc((size_t)(seeds * columns), 1);
        if (!linked) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t c = 0; c < columns; c++) positions[candidates[c]] = (int32_t)c;
        positions_set = 1;
        if (links != Py_None && add_sparse(sims, linked, positions, n, links, seeds, artist_weight, 1, "links") < 0)
            goto done;
        if (colisten != Py_None && add_sparse(sims, linked, positions, n, colisten, seeds, colisten_weight, 2,
                                              "colisten") < 0) goto done;
    }
    score = malloc((size_t)(columns ? columns : 1) * sizeof(float));
    col_pop = malloc((size_t)(columns ? columns : 1) * sizeof(int16_t));
    if (!score || !col_pop) { PyErr_NoMemory(); goto done; }
    /* per_seed *= weights[:, None], then its max or mean over seeds: one candidate's seeds at a
     * time, in seed order. The products are not written back: the best seed of the few chosen
     * candidates is found from them again below. */
    for (Py_ssize_t c = 0; c < columns; c++) {
        const float *cells = sims + c * seeds;
        float acc = cells[0] * weights[0];
        if (mean && seeds > 1) {   /* per_seed.mean(axis=0): seeds summed in order, then float64 division */
            for (Py_ssize_t s = 1; s < seeds; s++) acc += cells[s] * weights[s];
            acc = (float)((double)acc / (double)seeds);
        } else if (seeds > 1) {    /* per_seed.max(axis=0): NaN if any term is NaN */
            int nan = acc != acc;
            for (Py_ssize_t s = 1; s < seeds; s++) {
                float v = cells[s] * weights[s];
                nan |= v != v;
                acc = v > acc ? v : acc;
            }
            if (nan) acc = NAN;
        }
        score[c] = acc;
    }
    for (Py_ssize_t c = 0; c < columns; c++) col_pop[c] = popularity[candidates[c]];
    if (popularity_scale > 0) {   /* the float64 prior, added to the float32 score */
        for (Py_ssize_t c = 0; c < columns; c++)
            score[c] = (float)((double)score[c] + popularity_scale * (double)col_pop[c]);
    }
    if (penalty != Py_None) {
        const float *pen = pen_b.buf;
        for (Py_ssize_t c = 0; c < columns; c++) score[c] -= pen[c];
    }

    /* The first k distinct songs of the ranking: rank a head, widen it while it holds too few. */
    Order order = {score, col_pop};
    ranked = malloc((size_t)(columns ? columns : 1) * sizeof(Py_ssize_t));
    chosen = malloc((size_t)(k ? k : 1) * sizeof(Py_ssize_t));
    if (!ranked || !chosen) { PyErr_NoMemory(); goto done; }
    Py_ssize_t taken = 0, head = k + 32;
    for (;;) {
        Py_ssize_t got = best_columns(&order, columns, head, ranked);
        if (keyset_init(&keys, got) < 0) goto done;
        taken = 0;
        for (Py_ssize_t i = 0; i < got && taken < k; i++)
            if (keyset_add(&keys, song_key[candidates[ranked[i]]])) chosen[taken++] = ranked[i];
        keyset_free(&keys);
        keys.slot = NULL; keys.used = NULL;
        if (taken >= k || got >= columns) break;
        head *= 4;
    }

    rows_out = PyList_New(taken);
    scores_out = PyList_New(taken);
    because_out = PyList_New(taken);
    reasons_out = PyList_New(taken);
    if (!rows_out || !scores_out || !because_out || !reasons_out) goto done;
    const int64_t *seed_rows = seed_b.buf;
    for (Py_ssize_t i = 0; i < taken; i++) {
        Py_ssize_t c = chosen[i], best = 0;
        const float *cells = sims + c * seeds;
        float top = cells[0] * weights[0];
        if (!isnan(top)) {   /* argmax over seeds: the first largest, or the first NaN */
            for (Py_ssize_t s = 1; s < seeds; s++) {
                float v = cells[s] * weights[s];
                if (isnan(v)) { best = s; break; }
                if (v > top) { top = v; best = s; }
            }
        }
        uint8_t flag = linked ? linked[c * seeds + best] : 0;
        PyObject *row = PyLong_FromLongLong(candidates[c]);
        PyObject *value = PyFloat_FromDouble((double)score[c]);
        PyObject *seed = PyLong_FromLongLong(seed_rows[best]);
        if (!row || !value || !seed) { Py_XDECREF(row); Py_XDECREF(value); Py_XDECREF(seed); goto done; }
        PyObject *reason = PyTuple_GET_ITEM(reason_names, flag <= 2 ? flag : 0);
        Py_INCREF(reason);
        PyList_SET_ITEM(rows_out, i, row);
        PyList_SET_ITEM(scores_out, i, value);
        PyList_SET_ITEM(because_out, i, seed);
        PyList_SET_ITEM(reasons_out, i, reason);
    }
    result = PyTuple_Pack(4, rows_out, scores_out, because_out, reasons_out);

done:
    if (positions_set) {   /* the map is back to all -1 for the next request */
        const int64_t *cand = cand_b.buf;
        for (Py_ssize_t c = 0; c < ITEMS(cand_b); c++) positions[cand[c]] = -1;
    }
    keyset_free(&keys);
    free(score); free(col_pop); free(linked); free(ranked); free(chosen);
    Py_XDECREF(rows_out); Py_XDECREF(scores_out); Py_XDECREF(because_out); Py_XDECREF(reasons_out);
    if (sims_b.obj) PyBuffer_Release(&sims_b);
    if (cand_b.obj) PyBuffer_Release(&cand_b);
    if (seed_b.obj) PyBuffer_Release(&seed_b);
    if (weight_b.obj) PyBuffer_Release(&weight_b);
    if (pop_b.obj) PyBuffer_Release(&pop_b);
    if (pen_b.obj) PyBuffer_Release(&pen_b);
    if (key_b.obj) PyBuffer_Release(&key_b);
    if (pos_b.obj) PyBuffer_Release(&pos_b);
    return result;
}

/* ---- candidates ------------------------------------------------------------------------------ */

/* uint64 words of the two-level bitmap for n rows: a bit per row, then a bit per word of those. */
static Py_ssize_t bitmap_words(Py_ssize_t n) {
    Py_ssize_t words = (n + 63) / 64;
    return words + (words + 63) / 64;
}

/* Every marked row in order (sorted and unique), cleared as it is read; with `out`, those whose
 * song key is not in `banned` are written there. Returns how many were written. */
static Py_ssize_t drain(uint64_t *marks, uint64_t *summary, Py_ssize_t n, const KeySet *banned,
                        const int32_t *song_key, int64_t *out) {
    Py_ssize_t count = 0, summary_words = ((n + 63) / 64 + 63) / 64;
    for (Py_ssize_t s = 0; s < summary_words; s++) {
        uint64_t marked = summary[s];
        if (!marked) continue;
        summary[s] = 0;
        while (marked) {
            Py_ssize_t w = (s << 6) + __builtin_ctzll(marked);
            marked &= marked - 1;
            uint64_t word = marks[w];
            marks[w] = 0;
            while (out && word) {
                Py_ssize_t row = (w << 6) + __builtin_ctzll(word);
                word &= word - 1;
                if (!keyset_has(banned, song_key[row])) out[count++] = row;
            }
        }
    }
    return count;
}

PyDoc_STRVAR(candidates_doc,
"candidates(table, seed_rows, depth, extras, song_key, banned_songs, marks, out) -> count\n\n"
"The sorted union of each seed's first `depth` neighbour-table entries (negative ones skipped) and\n"
"every row of the `extras` arrays, less the rows whose song key is in `banned_songs`, written to\n"
"`out`. `marks` is a two-level bitmap, all zero before and after: one bit per row (bitmap_words(n)\n"
"uint64 words), then one bit per word of those, so reading the rows back visits only marked words.");

static PyObject *candidates(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "candidates() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t depth = PyLong_AsSsize_t(args[2]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    PyObject *extras = args[3];
    if (!PyList_Check(extras)) {
        PyErr_SetString(PyExc_TypeError, "extras: expected a list of int64 arrays");
        return NULL;
    }
    Py_buffer table_b = {0}, seed_b = {0}, key_b = {0}, banned_b = {0}, marks_b = {0}, out_b = {0};
    PyObject *result = NULL;
    KeySet banned = {0};
    Py_ssize_t count = 0;
    uint64_t *marks = NULL, *summary = NULL;

    if (get(args[0], &table_b, 'i', 4, 0, "table") < 0) goto done;
    if (get(args[1], &seed_b, 'i', 8, 0, "seed_rows") < 0) goto done;
    if (get(args[4], &key_b, 'i', 4, 0, "song_key") < 0) goto done;
    if (get(args[5], &banned_b, 'i', 4, 0, "banned_songs") < 0) goto done;
    if (get(args[6], &marks_b, 'u', 8, 1, "marks") < 0) goto done;
    if (get(args[7], &out_b, 'i', 8, 1, "out") < 0) goto done;
    Py_ssize_t n = ITEMS(key_b), seeds = ITEMS(seed_b), capacity = ITEMS(out_b);
    if (table_b.ndim != 2 || table_b.shape[0] != n || depth < 0 || depth > table_b.shape[1] ||
        ITEMS(marks_b) < bitmap_words(n)) {
        PyErr_SetString(PyExc_ValueError, "candidates(): array shapes do not agree");
        goto done;
    }
    Py_ssize_t width = table_b.shape[1], needed = seeds * depth;
    for (Py_ssize_t e = 0; e < PyList_GET_SIZE(extras); e++) {
        PyObject *extra = PyList_GET_ITEM(extras, e);
        Py_ssize_t size = PyObject_Length(extra);
        if (size < 0) goto done;
        needed += size;
    }
    if (capacity < needed) {
        PyErr_SetString(PyExc_ValueError, "candidates(): out is too small");
        goto done;
    }
    const int32_t *table = table_b.buf, *song_key = key_b.buf, *banned_keys = banned_b.buf;
    const int64_t *seed_rows = seed_b.buf;
    marks = marks_b.buf;
    summary = marks + (n + 63) / 64;
    int64_t *out = out_b.buf;

#define MARK(row) do { Py_ssize_t r_ = (row); marks[r_ >> 6] |= (uint64_t)1 << (r_ & 63); \
                       summary[r_ >> 12] |= (uint64_t)1 << ((r_ >> 6) & 63); } while (0)
    for (Py_ssize_t s = 0; s < seeds; s++) {
        int64_t row = seed_rows[s];
        if (row < 0 || row >= n) {
            PyErr_SetString(PyExc_IndexError, "candidates(): a seed row is outside the catalog");
            goto done;
        }
        const int32_t *hits = table + row * width;
        for (Py_ssize_t j = 0; j < depth; j++) {
            int32_t hit = hits[j];
            if (hit < 0) continue;   /* FAISS's "no more neighbours" */
            if (hit >= n) {
                PyErr_SetString(PyExc_IndexError, "candidates(): a neighbour row is outside the catalog");
                goto done;
            }
            MARK(hit);
        }
    }
    for (Py_ssize_t e = 0; e < PyList_GET_SIZE(extras); e++) {
        Py_buffer extra_b;
        if (get(PyList_GET_ITEM(extras, e), &extra_b, 'i', 8, 0, "extras") < 0) goto done;
        const int64_t *rows = extra_b.buf;
        for (Py_ssize_t i = 0; i < ITEMS(extra_b); i++) {
            if (rows[i] < 0 || rows[i] >= n) {
                PyBuffer_Release(&extra_b);
                PyErr_SetString(PyExc_IndexError, "candidates(): an extra row is outside the catalog");
                goto done;
            }
            MARK(rows[i]);
        }
        PyBuffer_Release(&extra_b);
    }
#undef MARK
    if (keyset_init(&banned, ITEMS(banned_b)) < 0) goto done;
    for (Py_ssize_t i = 0; i < ITEMS(banned_b); i++) keyset_add(&banned, banned_keys[i]);
    count = drain(marks, summary, n, &banned, song_key, out);
    result = PyLong_FromSsize_t(count);

done:
    if (marks && !result) drain(marks, summary, n, NULL, NULL, NULL);   /* an error: only clear */
    keyset_free(&banned);
    if (table_b.obj) PyBuffer_Release(&table_b);
    if (seed_b.obj) PyBuffer_Release(&seed_b);
    if (key_b.obj) PyBuffer_Release(&key_b);
    if (banned_b.obj) PyBuffer_Release(&banned_b);
    if (marks_b.obj) PyBuffer_Release(&marks_b);
    if (out_b.obj) PyBuffer_Release(&out_b);
    return result;
}

static PyObject *py_bitmap_words(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) { PyErr_SetString(PyExc_ValueError, "bitmap_words(): n must be >= 0"); return NULL; }
    return PyLong_FromSsize_t(bitmap_words(n));
}

static PyMethodDef methods[] = {
    {"bitmap_words", py_bitmap_words, METH_O, "bitmap_words(n): the uint64 words candidates() needs as marks for n rows."},
    {"score", (PyCFunction)(void (*)(void))score, METH_FASTCALL, score_doc},
    {"candidates", (PyCFunction)(void (*)(void))candidates, METH_FASTCALL, candidates_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "musicrec.index._kernel",
    "The compiled scoring of musicrec.index.recommend.", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
