/* CPU kernels built on first use by asmg/cpu_kernels.py: the coordinate GRU's window (forward and backward),
 * the model's weighted sums of embedding rows (forward and backward) and a meta step's rows by last use.
 *
 * The GRU of asmg/generator.py: every (row, coordinate) pair is its own tiny recurrence (hidden size H, scalar
 * input and output); the coordinate's weights are shared by all rows. torch runs it as ~20 whole-tensor ops
 * per step, each a pass over [rows, coords, H] floats in memory. Here a tile of V coordinates of one row lives
 * in registers for the whole window (a few rows' tiles step together, for the core's parallelism), the lanes of
 * a tile are the SIMD lanes (one vector of the compiler's vector extensions, so the code is the same for every
 * target), and exp is a vectorisable polynomial (Cephes' expf, ~1 ulp) because libm's is scalar.
 *
 * Layouts (contiguous float32): x[s] [N_s, C] (the window's tables, one per step); h0 [N, C, H]; y, dy
 * [S, R, C]; h_first [R, C, H]; u [3, C, H] (gates z, r, g); w [3, C, H, H] (w[gate][c][i][j]: h_i -> gate_j);
 * why [C, H]; by [C]. Output row r reads row rows[r] of the tables and of h0 (rows: R ids below every N_s, or
 * NULL for rows 0..R-1): a meta step's rows are read where they are, not gathered into copies first.
 * Gradients are for the weights only (inputs and h0 are constants of a meta step). Rows are summed in
 * fixed chunks whatever the thread count, so results do not depend on it.
 *
 * keep (optional, [S], non-increasing): only rows 0..keep[s]-1 take step s. A meta step's loss at window step
 * s reads only the rows its batch uses, so rows ordered by their last used step need no later steps: their y
 * there is left unwritten and counts as zero in dy, which the untrimmed run would carry back as exact zeros.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define V 8
#define MAX_H 16
#define MAX_S 32
#define CHUNKS 32
/* rows whose tiles step together (see cell). 3 ran ~5% faster, but the compiler then fused a multiply-add of
 * the generic-H copy differently, changing its outputs in the last bit; 2 keeps them, 4 ran no faster. */
#define ROWS 2
#define INLINE static inline __attribute__((always_inline))

/* V lanes as one vector (GCC/Clang vector extensions: one AVX register here, several SSE/NEON ones elsewhere) */
typedef float vf __attribute__((vector_size(V * sizeof(float))));
typedef int vi __attribute__((vector_size(V * sizeof(int))));

_Static_assert(V == 8, "vset spells out V lanes");
INLINE vf vset(float a) { return (vf){a, a, a, a, a, a, a, a}; }

/* a lane-wise select through the comparison masks (C has no ?: on vectors) */
INLINE vf vclamp(vf x, float lo, float hi) {
    vi low = x < vset(lo), high = x > vset(hi);
    return (vf)(((vi)x & ~(low | high)) | ((vi)vset(lo) & low) | ((vi)vset(hi) & high));
}

INLINE vf vfloor(vf x) {
    vf out;
    for (int v = 0; v < V; v++) out[v] = floorf(x[v]);  /* one vroundps where the target has it */
    return out;
}

/* Cephes' expf (~1 ulp), vectorised */
INLINE vf vexp(vf x) {
    x = vclamp(x, -87.0f, 88.0f);
    vf n = vfloor(x * vset(1.44269504088896341f) + vset(0.5f));
    x = x - n * vset(0.693359375f) + n * vset(2.12194440e-4f);
    vf z = x * x;
    vf p = ((((vset(1.9875691500e-4f) * x + vset(1.3981999507e-3f)) * x + vset(8.3334519073e-3f)) * x
             + vset(4.1665795894e-2f)) * x + vset(1.6666665459e-1f)) * x + vset(5.0000001201e-1f);
    p = p * z + x + vset(1.0f);
    vi scale = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)scale;
}

INLINE vf vsigm(vf v) { return vset(1.0f) / (vset(1.0f) + vexp(-v)); }
INLINE vf vtanh(vf v) { return vset(2.0f) / (vset(1.0f) + vexp(vset(-2.0f) * v)) - vset(1.0f); }

/* weights of one tile, a vector per (gate, i, j): lane v is coordinate c0 + v */
typedef struct {
    vf U[3][MAX_H], W[3][MAX_H][MAX_H], WHY[MAX_H], BY;
} Tile;

/* A Tile is sized for MAX_H (~27 KB), so the kernels keep it on each thread's stack, one block's weights at a time,
 * and keep only a tile's H-sized parts between a parallel loop and the sums after it: heap tiles of MAX_H cost a
 * 3.5 MB allocation and fill per call for the MLP's 131 blocks (~40% of that group's forward, 0.19 -> 0.11 ms).
 * Offsets of a packed tile's parts: U[3][H], W[3][H][H], WHY[H], BY. */
static inline size_t at_u(int H, int g, int j) { return (size_t)g * H + j; }
static inline size_t at_w(int H, int g, int i, int j) { return (size_t)3 * H + ((size_t)g * H + i) * H + j; }
static inline size_t at_why(int H, int j) { return (size_t)3 * H + (size_t)3 * H * H + j; }
static inline size_t at_by(int H) { return at_why(H, H); }
static inline size_t packed_size(int H) { return at_by(H) + 1; }

static void zero_tile(Tile *t, int H) {
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < H; j++) {
            t->U[g][j] = vset(0.0f);
            for (int i = 0; i < H; i++) t->W[g][i][j] = vset(0.0f);
        }
    for (int j = 0; j < H; j++) t->WHY[j] = vset(0.0f);
    t->BY = vset(0.0f);
}

static void pack_tile(vf *out, const Tile *t, int H) {
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < H; j++) {
            out[at_u(H, g, j)] = t->U[g][j];
            for (int i = 0; i < H; i++) out[at_w(H, g, i, j)] = t->W[g][i][j];
        }
    for (int j = 0; j < H; j++) out[at_why(H, j)] = t->WHY[j];
    out[at_by(H)] = t->BY;
}

/* the weights of coordinates c0..c0+V-1 (lanes past C repeat coordinate C-1; their results are dropped) */
static void load_tile(Tile *t, int C, int H, int c0, const float *u, const float *w, const float *why,
                      const float *by) {
    for (int v = 0; v < V; v++) {
        int c = c0 + v < C ? c0 + v : C - 1;
        for (int g = 0; g < 3; g++)
            for (int j = 0; j < H; j++) {
                t->U[g][j][v] = u[((size_t)g * C + c) * H + j];
                for (int i = 0; i < H; i++) t->W[g][i][j][v] = w[(((size_t)g * C + c) * H + i) * H + j];
            }
        for (int j = 0; j < H; j++) t->WHY[j][v] = why[(size_t)c * H + j];
        t->BY[v] = by ? by[c] : 0.0f;
    }
}

/* one step for the tiles of ROWS rows (one block, so one Tile): h -> hn, keeping z, r, g. A row alone is a chain
 * of dependent FMAs, exps and divides that leaves the core waiting on latencies; the rows' chains are
 * independent, so each op is issued for every row in turn. A row's own ops and their order are those of a
 * one-row step. */
INLINE void cell(const Tile *t, const int H, const vf *x, vf (*h)[MAX_H], vf (*z)[MAX_H], vf (*r)[MAX_H],
                 vf (*g)[MAX_H], vf (*hn)[MAX_H]) {
    vf q[ROWS][MAX_H];
    for (int j = 0; j < H; j++) {
        vf pz[ROWS], pr[ROWS];
        for (int p = 0; p < ROWS; p++) {
            pz[p] = x[p] * t->U[0][j];
            pr[p] = x[p] * t->U[1][j];
        }
        for (int i = 0; i < H; i++)
            for (int p = 0; p < ROWS; p++) {
                pz[p] += h[p][i] * t->W[0][i][j];
                pr[p] += h[p][i] * t->W[1][i][j];
            }
        for (int p = 0; p < ROWS; p++) {
            z[p][j] = vsigm(pz[p]);
            r[p][j] = vsigm(pr[p]);
        }
    }
    for (int p = 0; p < ROWS; p++)
        for (int i = 0; i < H; i++) q[p][i] = r[p][i] * h[p][i];
    for (int j = 0; j < H; j++) {
        vf pg[ROWS];
        for (int p = 0; p < ROWS; p++) pg[p] = x[p] * t->U[2][j];
        for (int i = 0; i < H; i++)
            for (int p = 0; p < ROWS; p++) pg[p] += q[p][i] * t->W[2][i][j];
        for (int p = 0; p < ROWS; p++) {
            g[p][j] = vtanh(pg[p]);
            hn[p][j] = h[p][j] + z[p][j] * (g[p][j] - h[p][j]);
        }
    }
}

static inline int lanes(int C, int c0) { return C - c0 < V ? C - c0 : V; }

/* the steps a row takes: all S without keep, else the s with row < keep[s] (a prefix of the window) */
static inline int steps_of(int S, const int *keep, long row) {
    if (!keep) return S;
    int n = 0;
    while (n < S && row < keep[n]) n++;
    return n;
}

/* keep must be a prefix length per step, non-increasing (rows dropped at a step never come back) */
static int keep_valid(int S, long R, const int *keep) {
    if (!keep) return 1;
    for (int s = 0; s < S; s++)
        if (keep[s] < 0 || keep[s] > (s ? keep[s - 1] : R)) return 0;
    return 1;
}

/* A group of ROWS rows from row0 (rows up to end exist): each row's steps, where its outputs go (base) and where
 * its inputs and start state are read (src: row rows[row] of the tables, or row itself without rows). A row that
 * takes no step (past end, or trimmed from every step) repeats row0, and at steps past its own a row's lanes run
 * on row0's input (row0 takes the most steps, keep being non-increasing): finite values whose results are
 * dropped, so the group's rows always step together. */
INLINE void group(int S, const int *keep, long row0, long end, int C, int c0, const long *rows, int *steps,
                  size_t *base, size_t *src) {
    for (int p = 0; p < ROWS; p++) {
        steps[p] = row0 + p < end ? steps_of(S, keep, row0 + p) : 0;
        long row = steps[p] ? row0 + p : row0;
        base[p] = (size_t)row * C + c0;
        src[p] = (size_t)(rows ? rows[row] : row) * C + c0;
    }
}

INLINE size_t at(const size_t *base, const int *steps, int p, int s) { return s < steps[p] ? base[p] : base[0]; }

/* Rows read through an index are scattered over the tables: ask for a later group's inputs and state while this
 * one computes, as the hardware does for the contiguous copies it replaces. */
#define AHEAD 4
INLINE void prefetch_group(int S, const int *keep, long row0, long end, int C, int H, int c0, const float *const *x,
                           const long *rows, const float *h0) {
    if (!rows) return;
    for (int p = 0; p < ROWS; p++) {
        long row = row0 + (long)AHEAD * ROWS + p;
        if (row >= end) return;
        size_t src = (size_t)rows[row] * C + c0;
        for (int s = 0; s < S && (!keep || row < keep[s]); s++) __builtin_prefetch(x[s] + src);
        for (int i = 0; i < V * H; i += 64 / (int)sizeof(float)) __builtin_prefetch(h0 + src * H + i);
    }
}

INLINE vf load_x(const float *src, int n) {
    vf out;
    if (n == V) {
        memcpy(&out, src, sizeof(out));
        return out;
    }
    for (int v = 0; v < V; v++) out[v] = src[v < n ? v : n - 1];
    return out;
}

/* a whole tile apart, so the common case has constant sizes the compiler turns into moves (no calls or loops) */
INLINE void store_y(float *dst, vf out, int n) {
    if (n == V) memcpy(dst, &out, sizeof(out));
    else memcpy(dst, &out, sizeof(float) * n);
}

INLINE void load_h(vf *h, const float *src, int n, const int H) {
    if (n == V) {
        for (int v = 0; v < V; v++)
            for (int i = 0; i < H; i++) h[i][v] = src[v * H + i];
        return;
    }
    for (int v = 0; v < V; v++) {
        const float *at = src + (size_t)(v < n ? v : n - 1) * H;
        for (int i = 0; i < H; i++) h[i][v] = at[i];
    }
}

/* ROWS rows from row0 through the window, on tile t (coordinates c0..) */
INLINE void forward_group(const Tile *t, int S, int R, int C, const int H, long row0, int c0, const float *const *x,
                          const long *rows, const float *h0, int residual, int anchor_mean, const int *keep, float *y,
                          float *h_first) {
    int n = lanes(C, c0), steps[ROWS];
    size_t base[ROWS], src[ROWS];
    group(S, keep, row0, R, C, c0, rows, steps, base, src);
    prefetch_group(S, keep, row0, R, C, H, c0, x, rows, h0);
    vf h[ROWS][MAX_H], hn[ROWS][MAX_H], z[ROWS][MAX_H], r[ROWS][MAX_H], g[ROWS][MAX_H], xs[ROWS], total[ROWS];
    for (int p = 0; p < ROWS; p++) {
        load_h(h[p], h0 + src[p] * H, n, H);
        total[p] = vset(0.0f);
    }
    for (int s = 0; s < steps[0]; s++) {
        for (int p = 0; p < ROWS; p++) xs[p] = load_x(x[s] + at(src, steps, p, s), n);
        cell(t, H, xs, h, z, r, g, hn);
        for (int p = 0; p < ROWS; p++) {
            vf out = t->BY;
            for (int j = 0; j < H; j++) out += hn[p][j] * t->WHY[j];
            total[p] += xs[p];
            if (residual) out += anchor_mean ? total[p] / vset((float)(s + 1)) : xs[p];
            if (s < steps[p]) store_y(y + (size_t)s * R * C + base[p], out, n);
            memcpy(h[p], hn[p], sizeof(vf) * H);
            if (s == 0 && h_first && steps[p])
                for (int v = 0; v < n; v++)
                    for (int i = 0; i < H; i++) h_first[(base[p] + v) * H + i] = h[p][i][v];
        }
    }
}

/* Weight gradients of sum_s <dy_s, y_s> from rows first..last-1 on tile t (coordinates c0..), added to gt: recompute
 * a group's window forward, then run it back (restrict: the weights' loads need not wait on the sums' stores). */
INLINE void backward_chunk(const Tile *restrict t, Tile *restrict gt, int S, int R, int C, const int H, long first,
                           long last, int c0, const float *const *x, const long *rows, const float *h0,
                           const int *keep, const float *dy) {
    int n = lanes(C, c0);
    vf hs[MAX_S + 1][ROWS][MAX_H], zs[MAX_S][ROWS][MAX_H], rs[MAX_S][ROWS][MAX_H], gs[MAX_S][ROWS][MAX_H];
    vf xs[MAX_S][ROWS], live = vset(0.0f);
    for (int v = 0; v < n; v++) live[v] = 1.0f;  /* padded lanes add nothing */
    for (long row0 = first; row0 < last; row0 += ROWS) {
        int steps[ROWS];
        size_t base[ROWS], src[ROWS];
        group(S, keep, row0, last, C, c0, rows, steps, base, src);
        prefetch_group(S, keep, row0, last, C, H, c0, x, rows, h0);
        for (int p = 0; p < ROWS; p++) load_h(hs[0][p], h0 + src[p] * H, n, H);
        for (int s = 0; s < steps[0]; s++) {
            for (int p = 0; p < ROWS; p++) xs[s][p] = load_x(x[s] + at(src, steps, p, s), n);
            cell(t, H, xs[s], hs[s], zs[s], rs[s], gs[s], hs[s + 1]);
        }
        vf dh[ROWS][MAX_H];
        for (int p = 0; p < ROWS; p++)
            for (int j = 0; j < H; j++) dh[p][j] = vset(0.0f);
        /* a row's steps past its own get d = 0: with dh still 0 they add exact zeros */
        for (int s = steps[0] - 1; s >= 0; s--) {
            vf (*h)[MAX_H] = hs[s], (*hn)[MAX_H] = hs[s + 1], (*z)[MAX_H] = zs[s], (*r)[MAX_H] = rs[s];
            vf (*g)[MAX_H] = gs[s], *xp = xs[s], d[ROWS];
            vf dpz[ROWS][MAX_H], dpr[ROWS][MAX_H], dpg[ROWS][MAX_H], next[ROWS][MAX_H];
            for (int p = 0; p < ROWS; p++) {
                d[p] = s < steps[p] ? load_x(dy + (size_t)s * R * C + base[p], n) * live : vset(0.0f);
                gt->BY += d[p];
            }
            for (int j = 0; j < H; j++)
                for (int p = 0; p < ROWS; p++) {
                    vf dhn = dh[p][j] + d[p] * t->WHY[j];
                    gt->WHY[j] += d[p] * hn[p][j];
                    dpg[p][j] = dhn * z[p][j] * (vset(1.0f) - g[p][j] * g[p][j]);
                    dpz[p][j] = dhn * (g[p][j] - h[p][j]) * z[p][j] * (vset(1.0f) - z[p][j]);
                    next[p][j] = dhn * (vset(1.0f) - z[p][j]);
                }
            for (int i = 0; i < H; i++) {
                vf dq[ROWS], q[ROWS];
                for (int p = 0; p < ROWS; p++) {
                    dq[p] = vset(0.0f);
                    q[p] = r[p][i] * h[p][i];
                }
                for (int j = 0; j < H; j++)
                    for (int p = 0; p < ROWS; p++) {
                        dq[p] += t->W[2][i][j] * dpg[p][j];
                        gt->W[2][i][j] += q[p] * dpg[p][j];
                    }
                for (int p = 0; p < ROWS; p++) {
                    dpr[p][i] = dq[p] * h[p][i] * r[p][i] * (vset(1.0f) - r[p][i]);
                    next[p][i] += dq[p] * r[p][i];
                }
            }
            for (int j = 0; j < H; j++)
                for (int p = 0; p < ROWS; p++) {
                    gt->U[0][j] += dpz[p][j] * xp[p];
                    gt->U[1][j] += dpr[p][j] * xp[p];
                    gt->U[2][j] += dpg[p][j] * xp[p];
                }
            for (int i = 0; i < H; i++)
                for (int j = 0; j < H; j++)
                    for (int p = 0; p < ROWS; p++) {
                        gt->W[0][i][j] += h[p][i] * dpz[p][j];
                        gt->W[1][i][j] += h[p][i] * dpr[p][j];
                        next[p][i] += t->W[0][i][j] * dpz[p][j] + t->W[1][i][j] * dpr[p][j];
                    }
            for (int p = 0; p < ROWS; p++) memcpy(dh[p], next[p], sizeof(vf) * H);
        }
    }
}

/* Entry points. The usual hidden sizes get their own copies of the loop bodies, with H a constant the compiler
 * unrolls; the choice is made inside the parallel loops because OpenMP outlines their bodies before anything is
 * inlined (a constant H passed in from outside would not reach them). */
int asmg_gru_forward(int S, int R, int C, int H, const float *const *x, const long *rows, const float *h0, const float *u,
                     const float *w, const float *why, const float *by, int residual, int anchor_mean,
                     const int *keep, float *y, float *h_first, int threads) {
    if (H > MAX_H || S > MAX_S || H < 1 || S < 1 || C < 1) return 1;
    if (!keep_valid(S, R, keep)) return 4;
    const int blocks = (C + V - 1) / V;
    /* rows come in decreasing work with keep: interleaved chunks share it out (no sums here, any order) */
    const long groups = (R + ROWS - 1) / ROWS;
#pragma omp parallel num_threads(threads)
    {
        Tile t;  /* this thread's copy of one block's weights, loaded when the block changes */
        int loaded = -1;
#pragma omp for schedule(dynamic, 8)
        for (long gb = 0; gb < groups * blocks; gb++) {
            int b = (int)(gb % blocks), c0 = b * V;
            long row0 = gb / blocks * ROWS;
            if (b != loaded) {
                load_tile(&t, C, H, c0, u, w, why, by);
                loaded = b;
            }
            if (H == 4) forward_group(&t, S, R, C, 4, row0, c0, x, rows, h0, residual, anchor_mean, keep, y, h_first);
            else if (H == 8) forward_group(&t, S, R, C, 8, row0, c0, x, rows, h0, residual, anchor_mean, keep, y, h_first);
            else forward_group(&t, S, R, C, H, row0, c0, x, rows, h0, residual, anchor_mean, keep, y, h_first);
        }
    }
    return 0;
}

/* Weight gradients of sum_s <dy_s, y_s>. */
int asmg_gru_backward(int S, int R, int C, int H, const float *const *x, const long *rows, const float *h0, const float *u,
                      const float *w, const float *why, const int *keep, const float *dy, float *du, float *dw,
                      float *dwhy, float *dby, int threads) {
    if (H > MAX_H || S > MAX_S || H < 1 || S < 1 || C < 1) return 1;
    if (!keep_valid(S, R, keep)) return 4;
    const int blocks = (C + V - 1) / V;
    /* of rows (at least one, so no rows give zero gradients); a (chunk, block) pair owns its accumulator */
    const int chunks = R < 1 ? 1 : (R < CHUNKS ? R : CHUNKS);
    const size_t P = packed_size(H);
    vf *grads = aligned_alloc(sizeof(vf), (size_t)chunks * blocks * P * sizeof(vf));  /* [chunk][block], packed */
    if (!grads) return 2;
    /* dynamic: with keep the first chunks carry the most steps; each pair still sums alone, in a fixed order */
#pragma omp parallel num_threads(threads)
    {
        Tile t, sums;  /* this thread's copy of one block's weights, and the sums of the pair at hand */
        int loaded = -1;
#pragma omp for schedule(dynamic, 1)
        for (long kb = 0; kb < (long)chunks * blocks; kb++) {
            int k = (int)(kb / blocks), b = (int)(kb % blocks), c0 = b * V;
            long first = (long)R * k / chunks, last = (long)R * (k + 1) / chunks;
            if (b != loaded) {
                load_tile(&t, C, H, c0, u, w, why, NULL);
                loaded = b;
            }
            zero_tile(&sums, H);
            if (H == 4) backward_chunk(&t, &sums, S, R, C, 4, first, last, c0, x, rows, h0, keep, dy);
            else if (H == 8) backward_chunk(&t, &sums, S, R, C, 8, first, last, c0, x, rows, h0, keep, dy);
            else backward_chunk(&t, &sums, S, R, C, H, first, last, c0, x, rows, h0, keep, dy);
            pack_tile(grads + (size_t)kb * P, &sums, H);
        }
    }
    /* chunk sums in a fixed order, back to the weights' layouts */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int c = 0; c < C; c++) {
        int b = c / V, v = c % V;
        const vf *pair = grads + (size_t)b * P;  /* chunk k's is pair[k * blocks * P] */
        const size_t next = (size_t)blocks * P;
        for (int j = 0; j < H; j++) {
            for (int gate = 0; gate < 3; gate++) {
                float su = 0.0f;
                for (int k = 0; k < chunks; k++) su += pair[k * next + at_u(H, gate, j)][v];
                du[((size_t)gate * C + c) * H + j] = su;
                for (int i = 0; i < H; i++) {
                    float sw = 0.0f;
                    for (int k = 0; k < chunks; k++) sw += pair[k * next + at_w(H, gate, i, j)][v];
                    dw[(((size_t)gate * C + c) * H + i) * H + j] = sw;
                }
            }
            float sy = 0.0f;
            for (int k = 0; k < chunks; k++) sy += pair[k * next + at_why(H, j)][v];
            dwhy[(size_t)c * H + j] = sy;
        }
        float sb = 0.0f;
        for (int k = 0; k < chunks; k++) sb += pair[k * next + at_by(H)][v];
        dby[c] = sb;
    }
    free(grads);
    return 0;
}

/* ---- weighted sums of embedding rows: out[b] = sum_l weight[b, l] * table[index[b, l]] ----------------------
 * The model's look-ups (user, item, history mean, category means) as one kernel each way. torch's gather and
 * scatter-add run per element through strided iterators (~1 ms for a batch's 30k history rows on CPU); a row
 * here is D contiguous floats. Zero weights (padding, masked categories) are skipped. */

int asmg_rows_forward(long B, int L, int D, const float *table, long N, const long *index, const float *weight,
                      float *out, int threads) {
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
    for (long b = 0; b < B; b++) {
        float *o = out + b * D;
        for (int d = 0; d < D; d++) o[d] = 0.0f;
        for (int l = 0; l < L; l++) {
            float wt = weight[b * L + l];
            long k = index[b * L + l];
            if (k < 0 || k >= N) { bad = 1; continue; }
            if (wt == 0.0f) continue;
            const float *row = table + k * D;
            for (int d = 0; d < D; d++) o[d] += wt * row[d];
        }
    }
    return bad ? 3 : 0;
}

/* grad (zeroed, [N, D]) += the rows' share of g [B, D]; thread t owns table rows [N t / T, N (t + 1) / T), so
 * every row is summed in batch order whatever the thread count */
int asmg_rows_backward(long B, int L, int D, const float *g, long N, const long *index, const float *weight,
                       float *grad, int threads) {
    int bad = 0;
#pragma omp parallel num_threads(threads) reduction(| : bad)
    {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        T = omp_get_num_threads();
#endif
        long first = N * t / T, last = N * (t + 1) / T;
        for (long b = 0; b < B; b++) {
            const float *gb = g + b * D;
            for (int l = 0; l < L; l++) {
                long k = index[b * L + l];
                if (k < 0 || k >= N) { bad = 1; continue; }
                if (k < first || k >= last) continue;
                float wt = weight[b * L + l];
                if (wt == 0.0f) continue;
                float *row = grad + k * D;
                for (int d = 0; d < D; d++) row[d] += wt * gb[d];
            }
        }
    }
    return bad ? 3 : 0;
}

/* ---- a meta step's rows of one table, ordered by their last used window step --------------------------------
 * ids: the step batches' ids, step by step (seg[s] of window step s; 0 for a step without a batch). Out: rows
 * (every used row once, latest last use first, then by id; the count is returned), local (each id's position
 * in rows) and keep[s] (how many leading rows are used at step s or later: the prefix step s reads).
 * scratch: 2N ints. Two passes over the ids and one scan of the table; torch needed ~15 ops a table (fills,
 * nonzeros, gathers) for the same. Returns -1 for an id outside 0..N-1, -2 for bad sizes. */
long asmg_last_use(long N, int S, const long *seg, const long *ids, int *scratch, long *rows, long *local,
                   long *keep) {
    if (S < 1 || S > MAX_S || N < 1 || N > 2147483647L) return -2;
    int *last = scratch, *used = scratch + N;
    long count[MAX_S] = {0}, start[MAX_S], total = 0, at = 0, n = 0;
    memset(last, 0xff, (size_t)N * sizeof(int));  /* -1: not used */
    for (int s = 0; s < S; s++) {
        if (seg[s] < 0) return -2;
        for (long j = 0; j < seg[s]; j++, at++) {
            long k = ids[at];
            if (k < 0 || k >= N) return -1;
            last[k] = s;  /* later steps overwrite: each row ends with its last */
        }
    }
    for (long r = 0; r < N; r++)
        if (last[r] >= 0) {
            used[n++] = (int)r;  /* ascending ids */
            count[last[r]]++;
        }
    for (int s = S - 1; s >= 0; s--) {
        start[s] = total;
        total += count[s];
        keep[s] = total;
    }
    for (long q = 0; q < n; q++) {
        int r = used[q];
        long p = start[last[r]]++;
        rows[p] = r;
        last[r] = (int)p;  /* r is not read as a step again: its slot now holds its position */
    }
    for (long j = 0; j < at; j++) local[j] = last[ids[j]];
    return total;
}

/* ---- one window step's loss: sum_b scale * BCE(MLP(features(b)), label(b)) -----------------------------------
 * The base model's whole forward (asmg/model.py: _features, _mlp, the logistic loss) for one batch, and its
 * backward to the three tables and the MLP. A meta step scores every window step's generated model this way:
 * torch needed ~60 small ops a step for it (concatenations of ids and tables, masks turned into weights, three
 * batched matmuls, their backward, the scatter to the tables). Features per sample, as model.py's:
 * [user ; history items' mean ; history's category means' mean ; item ; item's categories' mean], each a
 * weighted sum of table rows in the look-up kernel's order. Layer l's weight is [sizes[l+1], sizes[l]] (ReLU
 * between layers, none after the last, whose width is 1).
 * act [B, A] keeps each sample's features, hidden activations (after ReLU) and logit for the backward; wts
 * [B, K] the weight of every row it read (FOR_ROWS's order). Sums over samples (the loss, the MLP's gradients)
 * are taken over fixed chunks, then in chunk order; the tables' gradients are summed in sample order: results
 * do not depend on the thread count. */

#define MAX_LAYERS 4
#define MAX_WIDTH 128

typedef struct {
    long B;
    int D, L, C, layers;
    const int *sizes;
    const float *tables[3];  /* user, item, category: [N_t, D] */
    long n[3];
    const long *user, *item, *item_cats, *history, *history_cats;  /* [B], [B], [B, C], [B, L], [B, L, C] */
    const unsigned char *item_cat_mask, *history_mask, *history_cat_mask;
} LossBatch;

static int loss_sizes_ok(const LossBatch *p) {
    if (p->B < 0 || p->D < 1 || p->L < 0 || p->C < 0 || p->layers < 1 || p->layers > MAX_LAYERS) return 0;
    if (p->sizes[0] != 5 * p->D || p->sizes[p->layers] != 1) return 0;
    for (int l = 0; l <= p->layers; l++)
        if (p->sizes[l] < 1 || p->sizes[l] > MAX_WIDTH) return 0;
    return 1;
}

static inline long loss_act_width(const LossBatch *p) {
    long a = 0;
    for (int l = 0; l <= p->layers; l++) a += p->sizes[l];
    return a;
}

/* the divisor of model.py's _mean_weights: how many entries are set, at least 1 (none set: all weights zero) */
static inline float set_count(const unsigned char *mask, int n) {
    int set = 0;
    for (int i = 0; i < n; i++) set += mask[i] != 0;
    return (float)(set < 1 ? 1 : set);
}

/* VISIT(table, row, weight, block) for every row sample b reads, block by block in feature order */
#define FOR_ROWS(p, b, VISIT)                                                                                      \
    do {                                                                                                           \
        const int L_ = (p)->L, C_ = (p)->C;                                                                        \
        const unsigned char *hm_ = (p)->history_mask + (b) * L_;                                                   \
        float hn_ = set_count(hm_, L_);                                                                            \
        VISIT(0, (p)->user[b], 1.0f, 0);                                                                           \
        for (int l_ = 0; l_ < L_; l_++) VISIT(1, (p)->history[(b) * L_ + l_], (float)hm_[l_] / hn_, 1);            \
        for (int l_ = 0; l_ < L_; l_++) {                                                                          \
            const unsigned char *cm_ = (p)->history_cat_mask + ((b) * L_ + l_) * C_;                               \
            float slot_ = (float)hm_[l_] / hn_, cn_ = set_count(cm_, C_);                                          \
            for (int c_ = 0; c_ < C_; c_++)                                                                        \
                VISIT(2, (p)->history_cats[((b) * L_ + l_) * C_ + c_], (float)cm_[c_] / cn_ * slot_, 2);           \
        }                                                                                                          \
        VISIT(1, (p)->item[b], 1.0f, 3);                                                                           \
        const unsigned char *im_ = (p)->item_cat_mask + (b) * C_;                                                  \
        float in_ = set_count(im_, C_);                                                                            \
        for (int c_ = 0; c_ < C_; c_++) VISIT(2, (p)->item_cats[(b) * C_ + c_], (float)im_[c_] / in_, 4);          \
    } while (0)

/* the same walk, with the weights FOR_ROWS computed (saved in visit order, K = 2 + L + L C + C per sample) */
#define FOR_SAVED_ROWS(p, b, wts, VISIT)                                                                           \
    do {                                                                                                           \
        const int L_ = (p)->L, C_ = (p)->C;                                                                        \
        const float *w_of_ = (wts) + (b) * (2 + L_ + L_ * C_ + C_);                                                \
        VISIT(0, (p)->user[b], *w_of_++, 0);                                                                       \
        for (int l_ = 0; l_ < L_; l_++) VISIT(1, (p)->history[(b) * L_ + l_], *w_of_++, 1);                        \
        for (long q_ = (b) * L_ * C_; q_ < ((b) + 1) * L_ * C_; q_++) VISIT(2, (p)->history_cats[q_], *w_of_++, 2); \
        VISIT(1, (p)->item[b], *w_of_++, 3);                                                                       \
        for (int c_ = 0; c_ < C_; c_++) VISIT(2, (p)->item_cats[(b) * C_ + c_], *w_of_++, 4);                      \
    } while (0)

static inline float log1p_exp_neg_abs(float x) { return log1pf(expf(-fabsf(x))); }

/* o += w src over D floats; D = V (the default embedding size) as one vector: the compiler's loop moved floats
 * one at a time and stalled on stores a later visit of the same row read back */
INLINE void axpy(float *restrict o, const float *restrict src, float w, int D) {
    if (D == V) {
        vf acc, row;
        memcpy(&acc, o, sizeof(vf));
        memcpy(&row, src, sizeof(vf));
        acc += vset(w) * row;
        memcpy(o, &acc, sizeof(vf));
        return;
    }
    for (int d = 0; d < D; d++) o[d] += w * src[d];
}

/* out = in w^T + b over wt = w transposed ([I, O]): each out[j] summed in i order; ReLU when relu */
INLINE void dense(float *restrict out, const float *restrict in, const float *restrict wt, const float *restrict bias,
                  int I, int O, int relu) {
    for (int j = 0; j < O; j++) out[j] = 0.0f;
    for (int i = 0; i < I; i++) {
        const float xi = in[i];
        for (int j = 0; j < O; j++) out[j] += xi * wt[(long)i * O + j];
    }
    for (int j = 0; j < O; j++) {
        const float v = out[j] + bias[j];
        out[j] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* one layer backward for one sample: gw [O, I] += dout in^T, gb += dout, din = dout w (each din[i] summed in j
 * order), through ReLU (din[i] = 0 where in[i] <= 0) when relu */
INLINE void dense_back(float *restrict gw, float *restrict gb, float *restrict din, const float *restrict in,
                       const float *restrict w, const float *restrict dout, int I, int O, int relu) {
    for (int i = 0; i < I; i++) din[i] = 0.0f;
    for (int j = 0; j < O; j++) {
        const float dj = dout[j];
        for (int i = 0; i < I; i++) {
            gw[(long)j * I + i] += dj * in[i];
            din[i] += dj * w[(long)j * I + i];
        }
        gb[j] += dj;
    }
    if (relu)
        for (int i = 0; i < I; i++) din[i] = in[i] > 0.0f ? din[i] : 0.0f;
}

int asmg_loss_forward(const LossBatch *p, const float *const *weights, const float *const *biases,
                      const float *label, float scale, float *act, float *wts, double *loss, int threads) {
    if (!loss_sizes_ok(p)) return 2;
    const long B = p->B, A = loss_act_width(p);
    const int D = p->D, chunks = B < 1 ? 1 : (B < CHUNKS ? (int)B : CHUNKS);
    double partial[CHUNKS] = {0};
    long toffset[MAX_LAYERS + 1] = {0};  /* each layer's weights transposed ([in, out]): the sums run over out */
    for (int l = 0; l < p->layers; l++) toffset[l + 1] = toffset[l] + (long)p->sizes[l] * p->sizes[l + 1];
    float *transposed = malloc((size_t)toffset[p->layers] * sizeof(float));
    if (!transposed) return 4;
    for (int l = 0; l < p->layers; l++)
        for (int j = 0; j < p->sizes[l + 1]; j++)
            for (int i = 0; i < p->sizes[l]; i++)
                transposed[toffset[l] + (long)i * p->sizes[l + 1] + j] = weights[l][(long)j * p->sizes[l] + i];
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
    for (int k = 0; k < chunks; k++) {
        double sum = 0.0;
        for (long b = B * k / chunks; b < B * (k + 1) / chunks; b++) {
            float a[MAX_LAYERS * MAX_WIDTH + 1];  /* this sample's features, activations and logit */
            for (int d = 0; d < 5 * D; d++) a[d] = 0.0f;
            float *saved = wts + b * (2 + p->L + (long)p->L * p->C + p->C);
#define LOOK_UP(t, row, wt, block)                                                                                 \
    do {                                                                                                           \
        long r_ = (row);                                                                                           \
        float w_ = (wt);                                                                                           \
        *saved++ = w_;                                                                                             \
        if (r_ < 0 || r_ >= p->n[t]) { bad = 1; break; }                                                           \
        if (w_ == 0.0f) break;                                                                                     \
        axpy(a + (block) * D, p->tables[t] + r_ * D, w_, D);                                                       \
    } while (0)
            FOR_ROWS(p, b, LOOK_UP);
#undef LOOK_UP
            const float *in = a;
            float *out = a + p->sizes[0];
            for (int l = 0; l < p->layers; l++) {
                const int I = p->sizes[l], O = p->sizes[l + 1];
                const float *wt = transposed + toffset[l];
                const int relu = l < p->layers - 1;
                if (I == 40 && O == 20) dense(out, in, wt, biases[l], 40, 20, relu);  /* the default sizes: */
                else if (I == 20 && O == 10) dense(out, in, wt, biases[l], 20, 10, relu);  /* out in registers */
                else if (I == 10 && O == 1) dense(out, in, wt, biases[l], 10, 1, relu);
                else dense(out, in, wt, biases[l], I, O, relu);
                in = out;
                out += O;
            }
            memcpy(act + b * A, a, (size_t)A * sizeof(float));
            const float x = in[0], y = label[b];
            sum += (double)(scale * (fmaxf(x, 0.0f) - x * y + log1p_exp_neg_abs(x)));
        }
        partial[k] = sum;
    }
    free(transposed);
    double total = 0.0;
    for (int k = 0; k < chunks; k++) total += partial[k];
    *loss = total;
    return bad ? 3 : 0;
}

/* grad: d loss / d act's logit is scale * (sigmoid(x) - y) times the incoming gradient (gscale = both). The
 * tables' gradients (zeroed, [N_t, D]) and every layer's (dweights, dbiases: written, not added to).
 * scratch: chunks * (the MLP's parameter count) floats; dfeat: [B, 5D] floats. */
int asmg_loss_backward(const LossBatch *p, const float *const *weights, const float *label, float gscale,
                       const float *act, const float *wts, float *const *dtables, float *const *dweights, float *const *dbiases,
                       float *scratch, float *dfeat, int threads) {
    if (!loss_sizes_ok(p)) return 2;
    const long B = p->B, A = loss_act_width(p);
    const int D = p->D, F = 5 * D, chunks = B < 1 ? 1 : (B < CHUNKS ? (int)B : CHUNKS);
    long offset[MAX_LAYERS + 1], P = 0;  /* layer l's weights at offset[l], its biases right after */
    for (int l = 0; l < p->layers; l++) {
        offset[l] = P;
        P += (long)p->sizes[l + 1] * (p->sizes[l] + 1);
    }
    offset[p->layers] = P;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int k = 0; k < chunks; k++) {
        float *g = scratch + (long)k * P;
        for (long q = 0; q < P; q++) g[q] = 0.0f;
        float grad[2][MAX_WIDTH];
        for (long b = B * k / chunks; b < B * (k + 1) / chunks; b++) {
            const float *a = act + b * A;
            long at = A - 1;  /* the logit's place; each layer's input sits just before its output */
            const float x = a[at];
            float *dout = grad[0], *din = grad[1];
            dout[0] = gscale * (1.0f / (1.0f + expf(-x)) - label[b]);
            for (int l = p->layers - 1; l >= 0; l--) {
                const int I = p->sizes[l], O = p->sizes[l + 1];
                const long in_at = at - I;
                const float *in = a + in_at;
                float *gw = g + offset[l], *gb = gw + (long)O * I;
                float *target = l == 0 ? dfeat + b * F : din;
                if (I == 40 && O == 20) dense_back(gw, gb, target, in, weights[l], dout, 40, 20, l > 0);
                else if (I == 20 && O == 10) dense_back(gw, gb, target, in, weights[l], dout, 20, 10, l > 0);
                else if (I == 10 && O == 1) dense_back(gw, gb, target, in, weights[l], dout, 10, 1, l > 0);
                else dense_back(gw, gb, target, in, weights[l], dout, I, O, l > 0);
                float *swap = dout;
                dout = din;
                din = swap;
                at = in_at;
            }
        }
    }
    /* chunk sums in a fixed order, back to the layers' layouts */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long q = 0; q < P; q++) {
        float s = 0.0f;
        for (int k = 0; k < chunks; k++) s += scratch[(long)k * P + q];
        int l = 0;
        while (q >= offset[l + 1]) l++;
        const long local = q - offset[l], wsize = (long)p->sizes[l + 1] * p->sizes[l];
        if (local < wsize) dweights[l][local] = s;
        else dbiases[l][local - wsize] = s;
    }
    /* to the tables, in sample order on one thread: threads owning row ranges each walked every visit and
     * mispredicted whether the row was theirs, which cost more than the adds (0.6 ms at 1 thread, 0.8 at 2) */
    int bad = 0;
    float *const dt[3] = {dtables[0], dtables[1], dtables[2]};
    for (long b = 0; b < B; b++) {
        const float *df = dfeat + b * F;
#define SCATTER(tb, row, wt, block)                                                                                \
    do {                                                                                                           \
        long r_ = (row);                                                                                           \
        float w_ = (wt);                                                                                           \
        if (r_ < 0 || r_ >= p->n[tb]) { bad = 1; break; }                                                          \
        if (w_ == 0.0f) break;                                                                                     \
        axpy(dt[tb] + r_ * D, df + (block) * D, w_, D);                                                            \
    } while (0)
        FOR_SAVED_ROWS(p, b, wts, SCATTER);
#undef SCATTER
    }
    return bad ? 3 : 0;
}
