/* CPU kernels built on first use by asmg/cpu_kernels.py: the coordinate GRU's window (forward and backward)
 * and the model's weighted sums of embedding rows (forward and backward).
 *
 * The GRU of asmg/generator.py: every (row, coordinate) pair is its own tiny recurrence (hidden size H, scalar
 * input and output); the coordinate's weights are shared by all rows. torch runs it as ~20 whole-tensor ops
 * per step, each a pass over [rows, coords, H] floats in memory. Here a tile of V coordinates of one row lives
 * in registers for the whole window, the lanes of a tile are the SIMD lanes, and exp is a vectorisable
 * polynomial (Cephes' expf, ~1 ulp) because libm's is scalar.
 *
 * Layouts (contiguous float32): x, y, dy [S, R, C]; h0, h_first [R, C, H]; u [3, C, H] (gates z, r, g);
 * w [3, C, H, H] (w[gate][c][i][j]: h_i -> gate_j); why [C, H]; by [C].
 * Gradients are for the weights only (inputs and h0 are constants of a meta step). Rows are summed in
 * fixed chunks whatever the thread count, so results do not depend on it.
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
#define INLINE static inline __attribute__((always_inline))

/* weights of one tile, lane-major: U[g][j][v], W[g][i][j][v], WHY[j][v], BY[v] */
typedef struct {
    float U[3][MAX_H][V], W[3][MAX_H][MAX_H][V], WHY[MAX_H][V], BY[V];
} Tile;

static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    float z = x * x;
    float p = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x
               + 1.6666665459e-1f) * x + 5.0000001201e-1f;
    p = p * z + x + 1.0f;
    union { int i; float f; } scale;
    scale.i = ((int)n + 127) << 23;
    return p * scale.f;
}

static inline float sigm(float v) { return 1.0f / (1.0f + exp_poly(-v)); }
static inline float tanh_poly(float v) { return 2.0f / (1.0f + exp_poly(-2.0f * v)) - 1.0f; }

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

/* one step for a tile: h -> hn, keeping z, r, g */
INLINE void cell(const Tile *t, int H, const float *x, float h[][V], float z[][V], float r[][V],
                        float g[][V], float hn[][V]) {
    float q[MAX_H][V];
    for (int j = 0; j < H; j++) {
        float pz[V], pr[V];
#pragma omp simd
        for (int v = 0; v < V; v++) {
            pz[v] = x[v] * t->U[0][j][v];
            pr[v] = x[v] * t->U[1][j][v];
        }
        for (int i = 0; i < H; i++)
#pragma omp simd
            for (int v = 0; v < V; v++) {
                pz[v] += h[i][v] * t->W[0][i][j][v];
                pr[v] += h[i][v] * t->W[1][i][j][v];
            }
#pragma omp simd
        for (int v = 0; v < V; v++) {
            z[j][v] = sigm(pz[v]);
            r[j][v] = sigm(pr[v]);
        }
    }
    for (int i = 0; i < H; i++)
#pragma omp simd
        for (int v = 0; v < V; v++) q[i][v] = r[i][v] * h[i][v];
    for (int j = 0; j < H; j++) {
        float pg[V];
#pragma omp simd
        for (int v = 0; v < V; v++) pg[v] = x[v] * t->U[2][j][v];
        for (int i = 0; i < H; i++)
#pragma omp simd
            for (int v = 0; v < V; v++) pg[v] += q[i][v] * t->W[2][i][j][v];
#pragma omp simd
        for (int v = 0; v < V; v++) {
            g[j][v] = tanh_poly(pg[v]);
            hn[j][v] = h[j][v] + z[j][v] * (g[j][v] - h[j][v]);
        }
    }
}

static inline int lanes(int C, int c0) { return C - c0 < V ? C - c0 : V; }

INLINE void load_x(float *dst, const float *src, int n) {
    if (n == V) {
        memcpy(dst, src, sizeof(float) * V);
        return;
    }
    for (int v = 0; v < V; v++) dst[v] = src[v < n ? v : n - 1];
}

INLINE void load_h(float h[][V], const float *src, int n, const int H) {
    if (n == V) {
        for (int v = 0; v < V; v++)
            for (int i = 0; i < H; i++) h[i][v] = src[(size_t)v * H + i];
        return;
    }
    for (int v = 0; v < V; v++)
        for (int i = 0; i < H; i++) h[i][v] = src[(size_t)(v < n ? v : n - 1) * H + i];
}

INLINE int forward(int S, int R, int C, const int H, const float *x, const float *h0, const float *u,
                   const float *w, const float *why, const float *by, int residual, int anchor_mean,
                   float *y, float *h_first, int threads) {
    if (H > MAX_H || S > MAX_S || H < 1 || S < 1 || C < 1) return 1;
    const int blocks = (C + V - 1) / V;
    Tile *tiles = malloc(sizeof(Tile) * (size_t)blocks);
    if (!tiles) return 2;
    for (int b = 0; b < blocks; b++) load_tile(&tiles[b], C, H, b * V, u, w, why, by);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long rb = 0; rb < (long)R * blocks; rb++) {
        long row = rb / blocks;
        int b = (int)(rb % blocks), c0 = b * V, n = lanes(C, c0);
        const Tile *t = &tiles[b];
        size_t base = (size_t)row * C + c0;
        float h[MAX_H][V], hn[MAX_H][V], z[MAX_H][V], r[MAX_H][V], g[MAX_H][V], xs[V], total[V] = {0};
        load_h(h, h0 + base * H, n, H);
        for (int s = 0; s < S; s++) {
            load_x(xs, x + (size_t)s * R * C + base, n);
            cell(t, H, xs, h, z, r, g, hn);
            float out[V];
#pragma omp simd
            for (int v = 0; v < V; v++) {
                float acc = t->BY[v];
                for (int j = 0; j < H; j++) acc += hn[j][v] * t->WHY[j][v];
                total[v] += xs[v];
                float anchor = anchor_mean ? total[v] / (float)(s + 1) : xs[v];
                out[v] = acc + (residual ? anchor : 0.0f);
            }
            memcpy(y + (size_t)s * R * C + base, out, sizeof(float) * n);
            memcpy(h, hn, sizeof(h));
            if (s == 0 && h_first)
                for (int v = 0; v < n; v++)
                    for (int i = 0; i < H; i++) h_first[(base + v) * H + i] = h[i][v];
        }
    }
    free(tiles);
    return 0;
}

/* Weight gradients of sum_s <dy_s, y_s>: recompute a tile's window forward, then run it back. */
INLINE int backward(int S, int R, int C, const int H, const float *x, const float *h0, const float *u,
                    const float *w, const float *why, const float *dy, float *du, float *dw, float *dwhy,
                    float *dby, int threads) {
    if (H > MAX_H || S > MAX_S || H < 1 || S < 1 || C < 1) return 1;
    const int blocks = (C + V - 1) / V;
    /* of rows (at least one, so no rows give zero gradients); a (chunk, block) pair owns its accumulator */
    const int chunks = R < 1 ? 1 : (R < CHUNKS ? R : CHUNKS);
    Tile *tiles = malloc(sizeof(Tile) * (size_t)blocks);
    Tile *grads = calloc((size_t)chunks * blocks, sizeof(Tile));  /* [chunk][block], lane-major */
    if (!tiles || !grads) { free(tiles); free(grads); return 2; }
    for (int b = 0; b < blocks; b++) load_tile(&tiles[b], C, H, b * V, u, w, why, NULL);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long kb = 0; kb < (long)chunks * blocks; kb++) {
        int k = (int)(kb / blocks), b = (int)(kb % blocks), c0 = b * V, n = lanes(C, c0);
        long first = (long)R * k / chunks, last = (long)R * (k + 1) / chunks;
        float hs[MAX_S + 1][MAX_H][V], zs[MAX_S][MAX_H][V], rs[MAX_S][MAX_H][V], gs[MAX_S][MAX_H][V];
        float xs[MAX_S][V], d[V];
        const Tile *t = &tiles[b];
        Tile *gt = &grads[kb];
        for (long row = first; row < last; row++) {
            size_t base = (size_t)row * C + c0;
            load_h(hs[0], h0 + base * H, n, H);
            for (int s = 0; s < S; s++) {
                load_x(xs[s], x + (size_t)s * R * C + base, n);
                cell(t, H, xs[s], hs[s], zs[s], rs[s], gs[s], hs[s + 1]);
            }
            float dh[MAX_H][V];
            memset(dh, 0, sizeof(dh));
            for (int s = S - 1; s >= 0; s--) {
                const float *dys = dy + (size_t)s * R * C + base;
                for (int v = 0; v < V; v++) d[v] = v < n ? dys[v] : 0.0f;  /* padded lanes add nothing */
                float (*h)[V] = hs[s], (*hn)[V] = hs[s + 1], (*z)[V] = zs[s], (*r)[V] = rs[s], (*g)[V] = gs[s];
                float dpz[MAX_H][V], dpr[MAX_H][V], dpg[MAX_H][V], next[MAX_H][V];
#pragma omp simd
                for (int v = 0; v < V; v++) gt->BY[v] += d[v];
                for (int j = 0; j < H; j++)
#pragma omp simd
                    for (int v = 0; v < V; v++) {
                        float dhn = dh[j][v] + d[v] * t->WHY[j][v];
                        gt->WHY[j][v] += d[v] * hn[j][v];
                        dpg[j][v] = dhn * z[j][v] * (1.0f - g[j][v] * g[j][v]);
                        dpz[j][v] = dhn * (g[j][v] - h[j][v]) * z[j][v] * (1.0f - z[j][v]);
                        next[j][v] = dhn * (1.0f - z[j][v]);
                    }
                for (int i = 0; i < H; i++) {
                    float dq[V] = {0};
                    for (int j = 0; j < H; j++)
#pragma omp simd
                        for (int v = 0; v < V; v++) {
                            dq[v] += t->W[2][i][j][v] * dpg[j][v];
                            gt->W[2][i][j][v] += r[i][v] * h[i][v] * dpg[j][v];
                        }
#pragma omp simd
                    for (int v = 0; v < V; v++) {
                        dpr[i][v] = dq[v] * h[i][v] * r[i][v] * (1.0f - r[i][v]);
                        next[i][v] += dq[v] * r[i][v];
                    }
                }
                for (int j = 0; j < H; j++)
#pragma omp simd
                    for (int v = 0; v < V; v++) {
                        gt->U[0][j][v] += dpz[j][v] * xs[s][v];
                        gt->U[1][j][v] += dpr[j][v] * xs[s][v];
                        gt->U[2][j][v] += dpg[j][v] * xs[s][v];
                    }
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < H; j++)
#pragma omp simd
                        for (int v = 0; v < V; v++) {
                            gt->W[0][i][j][v] += h[i][v] * dpz[j][v];
                            gt->W[1][i][j][v] += h[i][v] * dpr[j][v];
                            next[i][v] += t->W[0][i][j][v] * dpz[j][v] + t->W[1][i][j][v] * dpr[j][v];
                        }
                memcpy(dh, next, sizeof(dh));
            }
        }
    }
    /* chunk sums in a fixed order, back to the weights' layouts */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int c = 0; c < C; c++) {
        int b = c / V, v = c % V;
        for (int j = 0; j < H; j++) {
            for (int gate = 0; gate < 3; gate++) {
                float su = 0.0f;
                for (int k = 0; k < chunks; k++) su += grads[(size_t)k * blocks + b].U[gate][j][v];
                du[((size_t)gate * C + c) * H + j] = su;
                for (int i = 0; i < H; i++) {
                    float sw = 0.0f;
                    for (int k = 0; k < chunks; k++) sw += grads[(size_t)k * blocks + b].W[gate][i][j][v];
                    dw[(((size_t)gate * C + c) * H + i) * H + j] = sw;
                }
            }
            float sy = 0.0f;
            for (int k = 0; k < chunks; k++) sy += grads[(size_t)k * blocks + b].WHY[j][v];
            dwhy[(size_t)c * H + j] = sy;
        }
        float sb = 0.0f;
        for (int k = 0; k < chunks; k++) sb += grads[(size_t)k * blocks + b].BY[v];
        dby[c] = sb;
    }
    free(tiles);
    free(grads);
    return 0;
}

/* Entry points: the usual hidden sizes get their own copies, with H a constant the compiler unrolls. */
int asmg_gru_forward(int S, int R, int C, int H, const float *x, const float *h0, const float *u,
                     const float *w, const float *why, const float *by, int residual, int anchor_mean,
                     float *y, float *h_first, int threads) {
    if (H == 4) return forward(S, R, C, 4, x, h0, u, w, why, by, residual, anchor_mean, y, h_first, threads);
    if (H == 8) return forward(S, R, C, 8, x, h0, u, w, why, by, residual, anchor_mean, y, h_first, threads);
    return forward(S, R, C, H, x, h0, u, w, why, by, residual, anchor_mean, y, h_first, threads);
}

int asmg_gru_backward(int S, int R, int C, int H, const float *x, const float *h0, const float *u,
                      const float *w, const float *why, const float *dy, float *du, float *dw, float *dwhy,
                      float *dby, int threads) {
    if (H == 4) return backward(S, R, C, 4, x, h0, u, w, why, dy, du, dw, dwhy, dby, threads);
    if (H == 8) return backward(S, R, C, 8, x, h0, u, w, why, dy, du, dw, dwhy, dby, threads);
    return backward(S, R, C, H, x, h0, u, w, why, dy, du, dw, dwhy, dby, threads);
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
