/* musicrec.index._kernel: a scored answer's numpy glue, in two calls (musicrec/index/recommend.py).
 *
 * catalog(): one version's per-track arrays (song keys, popularity, the neighbour table, the
 * artist, album and co-listening tables) checked once and held for every later call.
 * candidates(): the seeds' neighbour-table rows and their artists' and co-listened tracks as one
 * sorted, unique list without the banned songs, by a bitmap instead of concatenate-sort-mask.
 * score(): Recommender._score after its matrix product.
 *
 * Why: after BLAS has made the candidates x seeds similarities, what is left (the sparse
 * artist and co-listening terms, seed weights, max or mean over seeds, the popularity prior,
 * the skip penalty, ranking with its tie-breaks, one id per song, the best seed and the reason)
 * is a few dozen numpy calls of a few microseconds each: most of a scored answer's time. Here it
 * is one pass over the matrix and a bounded selection. The seeds' artist, album and co-listened
 * tracks are read here from the catalog's tables, not handed over as an array per seed: a Python
 * loop over the seeds, and the buffer of each array it made, cost more than the terms themselves.
 * The arithmetic is numpy's, operation for operation and type for type, so the answer is the same
 * bits (tests/test_kernel.py checks it against the numpy path). Arrays come in through the buffer
 * protocol; no numpy C API.
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

/* ---- the catalog ----------------------------------------------------------------------------- */

/* One version's arrays, held (and checked) once: a capsule made by catalog(). Per track: its song key,
 * popularity and artists (CSR: track_artists[track_bounds[t]:track_bounds[t + 1]]), its album (-1: none);
 * per artist its tracks, most popular first, and per album its tracks (CSR); optionally the neighbour
 * table (n x width) and the co-listening table (CSR of rows and weights). */
typedef struct {
    Py_buffer song_key, popularity, table, track_bounds, track_artists, artist_bounds, artist_rows,
              album_of, album_bounds, album_rows, col_indptr, col_indices, col_weights;
    Py_ssize_t n, width;
    int has_table, has_colisten;
} Catalog;

static const char CATALOG[] = "musicrec.index._kernel.catalog";

static void catalog_free(PyObject *capsule) {
    Catalog *c = PyCapsule_GetPointer(capsule, CATALOG);
    if (!c) return;
    Py_buffer *views[] = {&c->song_key, &c->popularity, &c->table, &c->track_bounds, &c->track_artists,
                          &c->artist_bounds, &c->artist_rows, &c->album_of, &c->album_bounds, &c->album_rows,
                          &c->col_indptr, &c->col_indices, &c->col_weights};
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    free(c);
}

/* An offsets array of `groups` + 1 int64 entries, from 0 to `items`, never decreasing. */
static int check_bounds(const Py_buffer *bounds, Py_ssize_t groups, Py_ssize_t items, const char *name) {
    const int64_t *b = bounds->buf;
    if (ITEMS(*bounds) != groups + 1 || b[0] != 0 || b[groups] != items) {
        PyErr_Format(PyExc_ValueError, "catalog(): %s does not fit %zd groups of %zd items", name, groups, items);
        return -1;
    }
    for (Py_ssize_t g = 0; g < groups; g++) {
        if (b[g + 1] < b[g]) {
            PyErr_Format(PyExc_ValueError, "catalog(): %s decreases", name);
            return -1;
        }
    }
    return 0;
}

/* Every int32 entry within [low, high). */
static int check_range(const Py_buffer *values, int64_t low, int64_t high, const char *name) {
    const int32_t *v = values->buf;
    for (Py_ssize_t i = 0; i < ITEMS(*values); i++) {
        if (v[i] < low || v[i] >= high) {
            PyErr_Format(PyExc_ValueError, "catalog(): %s holds %d, outside %lld..%lld", name, (int)v[i],
                         (long long)low, (long long)high - 1);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(catalog_doc,
"catalog(song_key, popularity, table, track_bounds, track_artists, artist_bounds, artist_rows,\n"
"        album_of, album_bounds, album_rows, colisten_indptr, colisten_indices, colisten_weights) -> catalog\n\n"
"The arrays candidates() and score() read, checked once (every row, artist and album number in range)\n"
"and held until the catalog is freed. `table` (int32, n x width) may be None: candidates() then\n"
"refuses; the three co-listening arrays may be None: no co-listening term.");

static PyObject *catalog(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 13) {
        PyErr_Format(PyExc_TypeError, "catalog() takes 13 arguments (%zd given)", nargs);
        return NULL;
    }
    Catalog *c = calloc(1, sizeof(Catalog));
    if (!c) return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(c, CATALOG, catalog_free);
    if (!capsule) { free(c); return NULL; }
    if (get(args[0], &c->song_key, 'i', 4, 0, "song_key") < 0) goto fail;
    c->n = ITEMS(c->song_key);
    if (get(args[1], &c->popularity, 'i', 2, 0, "popularity") < 0) goto fail;
    if (args[2] != Py_None) {
        if (get(args[2], &c->table, 'i', 4, 0, "table") < 0) goto fail;
        if (c->table.ndim != 2 || c->table.shape[0] != c->n) {
            PyErr_SetString(PyExc_ValueError, "catalog(): the table is not n x width");
            goto fail;
        }
        c->width = c->table.shape[1];
        c->has_table = 1;
    }
    if (get(args[3], &c->track_bounds, 'i', 8, 0, "track_bounds") < 0) goto fail;
    if (get(args[4], &c->track_artists, 'i', 4, 0, "track_artists") < 0) goto fail;
    if (get(args[5], &c->artist_bounds, 'i', 8, 0, "artist_bounds") < 0) goto fail;
    if (get(args[6], &c->artist_rows, 'i', 4, 0, "artist_rows") < 0) goto fail;
    if (get(args[7], &c->album_of, 'i', 4, 0, "album_of") < 0) goto fail;
    if (get(args[8], &c->album_bounds, 'i', 8, 0, "album_bounds") < 0) goto fail;
    if (get(args[9], &c->album_rows, 'i', 4, 0, "album_rows") < 0) goto fail;
    Py_ssize_t n = c->n, artists = ITEMS(c->artist_bounds) - 1, albums = ITEMS(c->album_bounds) - 1;
    if (ITEMS(c->popularity) != n || ITEMS(c->album_of) != n || artists < 0 || albums < 0) {
        PyErr_SetString(PyExc_ValueError, "catalog(): array shapes do not agree");
        goto fail;
    }
    if (check_bounds(&c->track_bounds, n, ITEMS(c->track_artists), "track_bounds") < 0 ||
        check_range(&c->track_artists, 0, artists, "track_artists") < 0 ||
        check_bounds(&c->artist_bounds, artists, ITEMS(c->artist_rows), "artist_bounds") < 0 ||
        check_range(&c->artist_rows, 0, n, "artist_rows") < 0 ||
        check_range(&c->album_of, -1, albums, "album_of") < 0 ||
        check_bounds(&c->album_bounds, albums, ITEMS(c->album_rows), "album_bounds") < 0 ||
        check_range(&c->album_rows, 0, n, "album_rows") < 0) goto fail;
    if (args[10] != Py_None) {
        if (get(args[10], &c->col_indptr, 'i', 8, 0, "colisten_indptr") < 0) goto fail;
        if (get(args[11], &c->col_indices, 'i', 4, 0, "colisten_indices") < 0) goto fail;
        if (get(args[12], &c->col_weights, 'f', 4, 0, "colisten_weights") < 0) goto fail;
        if (ITEMS(c->col_weights) != ITEMS(c->col_indices) ||
            check_bounds(&c->col_indptr, n, ITEMS(c->col_indices), "colisten_indptr") < 0 ||
            check_range(&c->col_indices, 0, n, "colisten_indices") < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "catalog(): co-listening arrays do not agree");
            goto fail;
        }
        c->has_colisten = 1;
    }
    return capsule;
fail:
    Py_DECREF(capsule);   /* frees what was taken */
    return NULL;
}

static Catalog *catalog_of(PyObject *obj) {
    return PyCapsule_GetPointer(obj, CATALOG);   /* a TypeError/ValueError for anything else */
}

/* ---- the sparse terms ------------------------------------------------------------------------ */

/* The artist and album term: a(s, c) is 1 for seed s's album's tracks, artist_share for its artists'
 * tracks, on the cells of those that are candidates (positions: row -> candidate, -1 elsewhere):
 * sims[c, s] += (float)weight * a(s, c), once per cell, and the cell's link flag becomes 1. */
static void add_links(float *sims, uint8_t *linked, const int32_t *positions, const Catalog *cat,
                      const int64_t *seed_rows, Py_ssize_t seeds, Py_ssize_t columns, double weight, double share) {
    const int64_t *track_bounds = cat->track_bounds.buf, *artist_bounds = cat->artist_bounds.buf,
                  *album_bounds = cat->album_bounds.buf;
    const int32_t *track_artists = cat->track_artists.buf, *artist_rows = cat->artist_rows.buf,
                  *album_of = cat->album_of.buf, *album_rows = cat->album_rows.buf;
    enum { ARTIST = 1, ALBUM = 3 };   /* marked first, added after: an album match wins over an artist's */
    int any = 0;
    for (Py_ssize_t s = 0; s < seeds; s++) {
        int64_t row = seed_rows[s];
        for (int64_t a = track_bounds[row]; a < track_bounds[row + 1]; a++) {
            int32_t artist = track_artists[a];
            for (int64_t i = artist_bounds[artist]; i < artist_bounds[artist + 1]; i++) {
                int32_t c = positions[artist_rows[i]];
                if (c >= 0) { linked[c * seeds + s] = ARTIST; any = 1; }
            }
        }
        int32_t album = album_of[row];
        if (album < 0) continue;
        for (int64_t i = album_bounds[album]; i < album_bounds[album + 1]; i++) {
            int32_t c = positions[album_rows[i]];
            if (c >= 0) { linked[c * seeds + s] = ALBUM; any = 1; }
        }
    }
    if (!any) return;
    float w = (float)weight;   /* numpy: a Python float times a float32 array is float32 */
    float on_artist = w * (float)share, on_album = w * 1.0f;
    for (Py_ssize_t i = 0; i < seeds * columns; i++) {
        if (!linked[i]) continue;
        sims[i] += linked[i] == ALBUM ? on_album : on_artist;
        linked[i] = 1;
    }
}

/* The co-listening term: sims[c, s] += (float)weight * l(s, c) for each co-listened track of seed s
 * that is candidate c, in the table's order; the cell's link flag becomes 2 (it wins the reason). */
static void add_colisten(float *sims, uint8_t *linked, const int32_t *positions, const Catalog *cat,
                         const int64_t *seed_rows, Py_ssize_t seeds, double weight) {
    const int64_t *indptr = cat->col_indptr.buf;
    const int32_t *indices = cat->col_indices.buf;
    const float *values = cat->col_weights.buf;
    float w = (float)weight;
    for (Py_ssize_t s = 0; s < seeds; s++) {
        int64_t row = seed_rows[s];
        for (int64_t i = indptr[row]; i < indptr[row + 1]; i++) {
            int32_t c = positions[indices[i]];
            if (c < 0) continue;
            sims[c * seeds + s] += w * values[i];
            linked[c * seeds + s] = 2;
        }
    }
}

/* ---- score ----------------------------------------------------------------------------------- */

PyDoc_STRVAR(score_doc,
"score(catalog, sims, candidates, seed_rows, weights, artist_weight, artist_share, colisten_weight,\n"
"      clamp, mean, popularity_scale, penalty, k, positions, reasons)\n"
"-> (rows, scores, because, reasons)\n\n"
"Recommender._score from its candidates x seeds product on (musicrec/index/recommend.py). No artist\n"
"term when artist_weight is 0, no co-listening term when colisten_weight is None.");

static PyObject *score(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 15) {
        PyErr_Format(PyExc_TypeError, "score() takes 15 arguments (%zd given)", nargs);
        return NULL;
    }
    Catalog *cat = catalog_of(args[0]);
    if (!cat) return NULL;
    Py_buffer sims_b = {0}, cand_b = {0}, seed_b = {0}, weight_b = {0}, pen_b = {0}, pos_b = {0};
    PyObject *penalty = args[11], *reason_names = args[14];
    PyObject *result = NULL, *rows_out = NULL, *scores_out = NULL, *because_out = NULL, *reasons_out = NULL;
    float *score = NULL;
    int16_t *col_pop = NULL;
    uint8_t *linked = NULL;
    Py_ssize_t *ranked = NULL, *chosen = NULL;
    KeySet keys = {0};
    int positions_set = 0;

    double artist_weight = PyFloat_AsDouble(args[5]), artist_share = PyFloat_AsDouble(args[6]);
    int colisten = args[7] != Py_None;
    double colisten_weight = colisten ? PyFloat_AsDouble(args[7]) : 0.0;
    int clamp = PyObject_IsTrue(args[8]), mean = PyObject_IsTrue(args[9]);
    double popularity_scale = PyFloat_AsDouble(args[10]);
    Py_ssize_t k = PyLong_AsSsize_t(args[12]);
    if (PyErr_Occurred() || clamp < 0 || mean < 0) return NULL;
    if (!PyTuple_Check(reason_names) || PyTuple_GET_SIZE(reason_names) != 3) {
        PyErr_SetString(PyExc_TypeError, "reasons: expected a tuple of 3 names (by link flag 0, 1, 2)");
        return NULL;
    }

    if (colisten && !cat->has_colisten) {
        PyErr_SetString(PyExc_ValueError, "score(): a co-listening term, but the catalog has no co-listening table");
        return NULL;
    }
    if (get(args[1], &sims_b, 'f', 4, 1, "sims") < 0) goto done;
    if (get(args[2], &cand_b, 'i', 8, 0, "candidates") < 0) goto done;
    if (get(args[3], &seed_b, 'i', 8, 0, "seed_rows") < 0) goto done;
    if (get(args[4], &weight_b, 'f', 4, 0, "weights") < 0) goto done;
    if (penalty != Py_None && get(penalty, &pen_b, 'f', 4, 0, "penalty") < 0) goto done;
    if (get(args[13], &pos_b, 'i', 4, 1, "positions") < 0) goto done;

    Py_ssize_t columns = ITEMS(cand_b), seeds = ITEMS(seed_b), n = cat->n;
    const int64_t *candidates = cand_b.buf;
    const int16_t *popularity = cat->popularity.buf;
    const int32_t *song_key = cat->song_key.buf;
    int32_t *positions = pos_b.buf;
    float *sims = sims_b.buf;   /* sims[c * seeds + s]: candidate c's similarity to seed s, as BLAS wrote it */
    const float *weights = weight_b.buf;
    if (ITEMS(sims_b) != seeds * columns || ITEMS(weight_b) != seeds || seeds < 1 ||
        (penalty != Py_None && ITEMS(pen_b) != columns) || ITEMS(pos_b) != n) {
        PyErr_SetString(PyExc_ValueError, "score(): array shapes do not agree");
        goto done;
    }
    for (Py_ssize_t c = 0; c < columns; c++) {
        if (candidates[c] < 0 || candidates[c] >= n) {
            PyErr_SetString(PyExc_IndexError, "score(): a candidate row is outside the catalog");
            goto done;
        }
    }
    const int64_t *seed_rows = seed_b.buf;
    for (Py_ssize_t s = 0; s < seeds; s++) {
        if (seed_rows[s] < 0 || seed_rows[s] >= n) {
            PyErr_SetString(PyExc_IndexError, "score(): a seed row is outside the catalog");
            goto done;
        }
    }
    if (k < 0) k = 0;

    if (clamp) {   /* np.maximum(per_seed, 0.0): a power mean needs terms >= 0 (NaN stays NaN) */
        for (Py_ssize_t i = 0; i < seeds * columns; i++)
            sims[i] = sims[i] < 0.0f ? 0.0f : sims[i];
    }
    int links = artist_weight > 0;
    if (links || colisten) {
        linked = calloc((size_t)(seeds * columns > 0 ? seeds * columns : 1), 1);
        if (!linked) { PyErr_NoMemory(); goto done; }
        for (Py_ssize_t c = 0; c < columns; c++) positions[candidates[c]] = (int32_t)c;
        positions_set = 1;
        if (links) add_links(sims, linked, positions, cat, seed_rows, seeds, columns, artist_weight, artist_share);
        if (colisten) add_colisten(sims, linked, positions, cat, seed_rows, seeds, colisten_weight);
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
    if (pen_b.obj) PyBuffer_Release(&pen_b);
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
"candidates(catalog, seed_rows, depth, artist_cap, colisten, banned_songs, marks, out) -> count\n\n"
"The sorted union of each seed's first `depth` neighbour-table entries (negative ones skipped), the\n"
"first `artist_cap` tracks of each of its artists and, with `colisten`, its co-listened tracks, less\n"
"the rows whose song key is in `banned_songs`, written to `out` (int64, at least as long as the\n"
"catalog). `marks` is a two-level bitmap, all zero before and after: one bit per row (bitmap_words(n)\n"
"uint64 words), then one bit per word of those, so reading the rows back visits only marked words.");

static PyObject *candidates(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError, "candidates() takes 8 arguments (%zd given)", nargs);
        return NULL;
    }
    Catalog *cat = catalog_of(args[0]);
    if (!cat) return NULL;
    Py_ssize_t depth = PyLong_AsSsize_t(args[2]), cap = PyLong_AsSsize_t(args[3]);
    int colisten = PyObject_IsTrue(args[4]);
    if (((depth == -1 || cap == -1) && PyErr_Occurred()) || colisten < 0) return NULL;
    if (!cat->has_table || (colisten && !cat->has_colisten)) {
        PyErr_SetString(PyExc_ValueError, "candidates(): the catalog has no neighbour table, or no co-listening one");
        return NULL;
    }
    Py_buffer seed_b = {0}, banned_b = {0}, marks_b = {0}, out_b = {0};
    PyObject *result = NULL;
    KeySet banned = {0};
    Py_ssize_t count = 0, n = cat->n, width = cat->width;
    uint64_t *marks = NULL, *summary = NULL;

    if (get(args[1], &seed_b, 'i', 8, 0, "seed_rows") < 0) goto done;
    if (get(args[5], &banned_b, 'i', 4, 0, "banned_songs") < 0) goto done;
    if (get(args[6], &marks_b, 'u', 8, 1, "marks") < 0) goto done;
    if (get(args[7], &out_b, 'i', 8, 1, "out") < 0) goto done;
    if (depth < 0 || depth > width || cap < 0 || ITEMS(marks_b) < bitmap_words(n) || ITEMS(out_b) < n) {
        PyErr_SetString(PyExc_ValueError, "candidates(): array shapes do not agree");
        goto done;
    }
    const int32_t *table = cat->table.buf, *song_key = cat->song_key.buf, *banned_keys = banned_b.buf;
    const int64_t *track_bounds = cat->track_bounds.buf, *artist_bounds = cat->artist_bounds.buf;
    const int32_t *track_artists = cat->track_artists.buf, *artist_rows = cat->artist_rows.buf;
    const int64_t *seed_rows = seed_b.buf;
    Py_ssize_t seeds = ITEMS(seed_b);
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
        if (cap > 0) {   /* the catalog's rows are checked: no range test below */
            for (int64_t a = track_bounds[row]; a < track_bounds[row + 1]; a++) {
                int32_t artist = track_artists[a];
                int64_t first = artist_bounds[artist], last = artist_bounds[artist + 1];
                if (last - first > cap) last = first + cap;
                for (int64_t i = first; i < last; i++) MARK(artist_rows[i]);
            }
        }
        if (colisten) {
            const int64_t *indptr = cat->col_indptr.buf;
            const int32_t *indices = cat->col_indices.buf;
            for (int64_t i = indptr[row]; i < indptr[row + 1]; i++) MARK(indices[i]);
        }
    }
#undef MARK
    if (keyset_init(&banned, ITEMS(banned_b)) < 0) goto done;
    for (Py_ssize_t i = 0; i < ITEMS(banned_b); i++) keyset_add(&banned, banned_keys[i]);
    count = drain(marks, summary, n, &banned, song_key, out);
    result = PyLong_FromSsize_t(count);

done:
    if (marks && !result) drain(marks, summary, n, NULL, NULL, NULL);   /* an error: only clear */
    keyset_free(&banned);
    if (seed_b.obj) PyBuffer_Release(&seed_b);
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
    {"catalog", (PyCFunction)(void (*)(void))catalog, METH_FASTCALL, catalog_doc},
    {"score", (PyCFunction)(void (*)(void))score, METH_FASTCALL, score_doc},
    {"candidates", (PyCFunction)(void (*)(void))candidates, METH_FASTCALL, candidates_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "musicrec.index._kernel",
    "The compiled scoring of musicrec.index.recommend.", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
