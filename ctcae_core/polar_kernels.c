/* Fused CPU kernels for the complex layer's elementwise arithmetic, the contrastive loss's
 * pair-mining keys and its InfoNCE term over gathered pairs (ctcae_core/fused.py, docs/model.md).
 *
 * Each kernel is one pass over flat buffers that share one memory layout: the 3x batch of the
 * layer's real map is three planes of n elements (Re, Im, |z|), the polar pair (m, phi) one plane
 * each. The planes of the map's input and output are float32 or bfloat16 (the autocast dtype);
 * the polar arithmetic is float32 throughout, as in the ATen path it replaces. bfloat16 rounding
 * is round-to-nearest-even, as torch's casts.
 *
 * Built by fused.py with -O3 -march=native and the fast-math flags that let gcc call glibc's
 * vector sinf, cosf, hypotf and atan2 (libmvec), with infinities, NaNs and signed zeros kept.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define PHASE_EPS 1e-8f

/* glibc declares its vector variants only under -ffast-math, which would also drop NaN, infinity
   and signed-zero semantics; declared here, gcc calls them on -fno-math-errno alone. */
#define VECTOR_VARIANT __attribute__((simd("notinbranch"), const))
VECTOR_VARIANT float sinf(float);
VECTOR_VARIANT float cosf(float);
VECTOR_VARIANT double atan2(double, double);
VECTOR_VARIANT float hypotf(float, float);
VECTOR_VARIANT float expf(float);

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t rounded = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)0x7fc0u : rounded;
}

/* The same four kernels for float and bfloat16 planes.
 *
 * arg psi is atan2 in double, rounded to float: correctly rounded near the real line, where the
 * symmetric start puts every phase (0 or pi up to a few ulps). There the last ulp decides the
 * sign of sin(phi), hence the 0-or-pi phase the paper's angle() gives a unit the ReLU switches
 * off, and the contrastive loss sees those (docs/model.md). libmvec's float atan2f is one ulp
 * off for a fifth of such inputs; in double the result agrees with torch.atan2 there (and with
 * it to an ulp elsewhere). */
#define KERNELS(SUFFIX, T, LOAD, STORE)                                                              \
    /* (m, phi) -> (m cos phi, m sin phi, m) */                                                      \
    static void polar_fwd_##SUFFIX(const float *restrict m, const float *restrict phi,              \
                                   T *restrict out, int64_t n, int64_t lo, int64_t hi) {           \
        for (int64_t i = lo; i < hi; i++) {                                                          \
            float c = cosf(phi[i]), s = sinf(phi[i]);                                                \
            out[i] = STORE(m[i] * c);                                                                \
            out[n + i] = STORE(m[i] * s);                                                            \
            out[2 * n + i] = STORE(m[i]);                                                            \
        }                                                                                            \
    }                                                                                                \
    /* (Re psi, Im psi, chi) -> (0.5 (|psi| + chi), arg of the guarded psi) */                      \
    static void act_fwd_##SUFFIX(const T *restrict y, float *restrict mo, float *restrict po,       \
                                 int64_t n, int64_t lo, int64_t hi) {                               \
        for (int64_t i = lo; i < hi; i++) {                                                          \
            float re = LOAD(y[i]), im = LOAD(y[n + i]), chi = LOAD(y[2 * n + i]);                   \
            float im_g = fabsf(im) < PHASE_EPS ? PHASE_EPS : im;                                     \
            mo[i] = 0.5f * (hypotf(re, im) + chi);                                                   \
            po[i] = (float)atan2((double)im_g, (double)re); /* see above */                          \
        }                                                                                            \
    }                                                                                                \
    /* its backward: d|psi| = (re, im) / |psi| (0 at 0); the angle's gradient to im not where    \
       guarded */                                                                                    \
    static void act_bwd_##SUFFIX(const T *restrict y, const float *restrict gm,                     \
                                 const float *restrict gp, T *restrict g, int64_t n, int64_t lo,    \
                                 int64_t hi) {                                                       \
        for (int64_t i = lo; i < hi; i++) {                                                          \
            float re = LOAD(y[i]), im = LOAD(y[n + i]);                                              \
            float r = hypotf(re, im);                                                                \
            float h = r > 0.0f ? 0.5f * gm[i] / r : 0.0f;                                            \
            int guarded = fabsf(im) < PHASE_EPS;                                                     \
            float im_g = guarded ? PHASE_EPS : im;                                                   \
            float q = gp[i] / (re * re + im_g * im_g);                                               \
            g[i] = STORE(h * re - q * im_g);                                                         \
            g[n + i] = STORE(h * im + (guarded ? 0.0f : q * re));                                    \
            g[2 * n + i] = STORE(gm[i] * 0.5f);                                                      \
        }                                                                                            \
    }                                                                                                \
    /* backward of (m, phi) -> (m cos phi, m sin phi, m) */                                          \
    static void polar_bwd_##SUFFIX(const T *restrict g, const float *restrict m,                    \
                                   const float *restrict phi, float *restrict gm,                   \
                                   float *restrict gp, int64_t n, int64_t lo, int64_t hi) {         \
        for (int64_t i = lo; i < hi; i++) {                                                          \
            float c = cosf(phi[i]), s = sinf(phi[i]);                                                \
            float g_re = LOAD(g[i]), g_im = LOAD(g[n + i]), g_m = LOAD(g[2 * n + i]);               \
            gm[i] = g_re * c + g_im * s + g_m;                                                       \
            gp[i] = m[i] * (g_im * c - g_re * s);                                                    \
        }                                                                                            \
    }

#define IDENTITY(x) (x)
KERNELS(f32, float, IDENTITY, IDENTITY)
KERNELS(bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* ------------------------------------------------------------------ pair-mining keys */
/* Rows r = (image i, anchor a) of the (b, A, n) key buffer for contrastive.positions_at_ranks:
 * the cosine distance 1 - u_a . u_j of unit address vectors (unit: (b, d, n)), clamped at 0 (NaN
 * kept), its float bits with the low `bits` bits replaced by the position j, and the anchor's own
 * entry negative (anchor - 2^bits) so that it sorts first. The dot products accumulate into the
 * row itself, channel by channel, which vectorises over positions for any d. */
static void mine_keys_rows(const float *restrict unit, const int64_t *restrict anchors, int32_t *restrict keys,
                           int64_t d, int64_t n, int64_t n_a, int bits, int64_t lo, int64_t hi) {
    const int32_t low = (int32_t)((1u << bits) - 1u);
    for (int64_t r = lo; r < hi; r++) {
        const int64_t i = r / n_a, anchor = anchors[r % n_a];
        const float *u = unit + i * d * n;
        float *acc = (float *)(keys + r * n);
        for (int64_t j = 0; j < n; j++) acc[j] = 0.0f;
        for (int64_t c = 0; c < d; c++) {
            const float ua = u[c * n + anchor];
            const float *uc = u + c * n;
            for (int64_t j = 0; j < n; j++) acc[j] += ua * uc[j];
        }
        int32_t *key = keys + r * n;
        for (int64_t j = 0; j < n; j++) {
            float dist = 1.0f - acc[j];
            dist = dist < 0.0f ? 0.0f : dist;
            int32_t k;
            memcpy(&k, &dist, sizeof k);
            key[j] = (k & ~low) | (int32_t)j;
        }
        key[anchor] = (int32_t)anchor - (int32_t)(1u << bits);
    }
}

/* ------------------------------------------------------------------ InfoNCE over gathered pairs */
/* contrastive.soft_target_infonce for unit vectors unit (b, d, n), pairs idx (b, A, K) (the P
 * positives first) and anchor positions anchors (A,). Rows r = (image i, anchor a): the logits
 * s_k / t with s_k = u_anchor . u_idx[k] (summed over channels in order, as ATen's sum over dim 1),
 * the row's loss -(1/P) sum_{k<P} (logit_k - logsumexp), and the row's d loss / d logit_k up to
 * the mean's 1 / (b A): softmax_k - [k < P] / P, kept for the backward. */
static void infonce_rows(const float *restrict unit, const int64_t *restrict idx, const int64_t *restrict anchors,
                         float *restrict loss, float *restrict coef, int64_t d, int64_t n, int64_t n_a, int64_t n_k,
                         int64_t n_pos, float t, int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
        const int64_t i = r / n_a, anchor = anchors[r % n_a];
        const float *u = unit + i * d * n;
        const int64_t *ix = idx + r * n_k;
        float *logit = coef + r * n_k;
        for (int64_t k = 0; k < n_k; k++) logit[k] = 0.0f;
        for (int64_t c = 0; c < d; c++) {
            const float ua = u[c * n + anchor];
            const float *uc = u + c * n;
            for (int64_t k = 0; k < n_k; k++) logit[k] += ua * uc[ix[k]];
        }
        float top = -INFINITY;
        for (int64_t k = 0; k < n_k; k++) {
            logit[k] /= t;
            top = logit[k] > top ? logit[k] : top;
        }
        float sum = 0.0f;
        for (int64_t k = 0; k < n_k; k++) sum += expf(logit[k] - top);
        const float lse = top + logf(sum);
        float pos = 0.0f;
        for (int64_t k = 0; k < n_pos; k++) pos += logit[k] - lse;
        loss[r] = -(pos / (float)n_pos);
        for (int64_t k = 0; k < n_k; k++) logit[k] = expf(logit[k] - lse) - (k < n_pos ? 1.0f / (float)n_pos : 0.0f);
    }
}

/* The backward of infonce_rows for images [lo, hi): d loss / d unit, with scale = d out / (b A t)
 * applied to the kept coefficients. One thread owns an image, so its scattered adds need no atomics. */
static void infonce_images_bwd(const float *restrict unit, const int64_t *restrict idx,
                               const int64_t *restrict anchors, const float *restrict coef, float *restrict grad,
                               int64_t d, int64_t n, int64_t n_a, int64_t n_k, float scale, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        const float *u = unit + i * d * n;
        float *g = grad + i * d * n;
        for (int64_t a = 0; a < n_a; a++) {
            const int64_t r = i * n_a + a, anchor = anchors[a];
            const int64_t *ix = idx + r * n_k;
            const float *cf = coef + r * n_k;
            for (int64_t c = 0; c < d; c++) {
                const float ua = u[c * n + anchor];
                const float *uc = u + c * n;
                float *gc = g + c * n;
                float acc = 0.0f;
                for (int64_t k = 0; k < n_k; k++) {
                    const float w = scale * cf[k];
                    gc[ix[k]] += w * ua;
                    acc += w * uc[ix[k]];
                }
                gc[anchor] += acc;
            }
        }
    }
}

/* ------------------------------------------------------------------ threads */
typedef struct {
    int kind, bf16;
    const void *a, *b, *c;
    void *d, *e;
    int64_t n;
    int64_t dims, positions, anchors; /* mining keys and InfoNCE: d, n and A; n above counts rows or images */
    int bits;
    const void *f; /* InfoNCE: the anchors */
    int64_t pairs, positives; /* InfoNCE: K and P */
    float scalar; /* InfoNCE: the temperature (forward), the gradient's scale (backward) */
    int64_t grain; /* the least work one thread is started for, in units of n */
} job_t;

typedef struct {
    const job_t *job;
    int64_t lo, hi;
} task_t;

static void run(const job_t *j, int64_t lo, int64_t hi) {
    switch (j->kind * 2 + j->bf16) {
    case 0: polar_fwd_f32(j->a, j->b, j->d, j->n, lo, hi); break;
    case 1: polar_fwd_bf16(j->a, j->b, j->d, j->n, lo, hi); break;
    case 2: act_fwd_f32(j->a, j->d, j->e, j->n, lo, hi); break;
    case 3: act_fwd_bf16(j->a, j->d, j->e, j->n, lo, hi); break;
    case 4: act_bwd_f32(j->a, j->b, j->c, j->d, j->n, lo, hi); break;
    case 5: act_bwd_bf16(j->a, j->b, j->c, j->d, j->n, lo, hi); break;
    case 6: polar_bwd_f32(j->a, j->b, j->c, j->d, j->e, j->n, lo, hi); break;
    case 7: polar_bwd_bf16(j->a, j->b, j->c, j->d, j->e, j->n, lo, hi); break;
    case 8:
        mine_keys_rows(j->a, j->b, j->d, j->dims, j->positions, j->anchors, j->bits, lo, hi);
        break;
    case 10:
        infonce_rows(j->a, j->b, j->f, j->d, j->e, j->dims, j->positions, j->anchors, j->pairs, j->positives,
                     j->scalar, lo, hi);
        break;
    case 12:
        infonce_images_bwd(j->a, j->b, j->f, j->c, j->d, j->dims, j->positions, j->anchors, j->pairs, j->scalar,
                           lo, hi);
        break;
    }
}

static void *run_task(void *p) {
    const task_t *t = p;
    run(t->job, t->lo, t->hi);
    return NULL;
}

#define MAX_THREADS 64
#define MIN_PER_THREAD 16384

/* Split [0, n) over up to `threads` threads (the caller's is one of them). */
static void parallel(const job_t *job, int threads) {
    int64_t n = job->n;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    int64_t grain = job->grain > 0 ? job->grain : MIN_PER_THREAD;
    if (threads > 1 && n / threads < grain) threads = (int)(n / grain);
    if (threads <= 1) {
        run(job, 0, n);
        return;
    }
    int64_t chunk = (n + threads - 1) / threads;
    if (job->grain == 0) chunk = (chunk + 63) / 64 * 64;
    pthread_t ids[MAX_THREADS];
    task_t tasks[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int k = 1; k < threads; k++) {
        int64_t lo = k * chunk, hi = lo + chunk < n ? lo + chunk : n;
        if (lo >= n) break;
        tasks[k] = (task_t){job, lo, hi};
        started[k] = pthread_create(&ids[k], NULL, run_task, &tasks[k]) == 0;
        if (!started[k]) run(job, lo, hi);
    }
    run(job, 0, chunk < n ? chunk : n);
    for (int k = 1; k < threads; k++)
        if (started[k]) pthread_join(ids[k], NULL);
}

/* ------------------------------------------------------------------ entry points (ctypes) */
void ctcae_polar_fwd(int bf16, const float *m, const float *phi, void *out, int64_t n, int threads) {
    job_t j = {0, bf16, m, phi, NULL, out, NULL, n};
    parallel(&j, threads);
}

void ctcae_act_fwd(int bf16, const void *y, float *m_out, float *phi_out, int64_t n, int threads) {
    job_t j = {1, bf16, y, NULL, NULL, m_out, phi_out, n};
    parallel(&j, threads);
}

void ctcae_act_bwd(int bf16, const void *y, const float *g_m, const float *g_phi, void *g_y, int64_t n,
                   int threads) {
    job_t j = {2, bf16, y, g_m, g_phi, g_y, NULL, n};
    parallel(&j, threads);
}

void ctcae_polar_bwd(int bf16, const void *g, const float *m, const float *phi, float *g_m, float *g_phi,
                     int64_t n, int threads) {
    job_t j = {3, bf16, g, m, phi, g_m, g_phi, n};
    parallel(&j, threads);
}

void ctcae_mine_keys(const float *unit, const int64_t *anchors, int32_t *keys, int64_t b, int64_t d, int64_t n,
                     int64_t n_anchors, int bits, int threads) {
    job_t j = {4, 0, unit, anchors, NULL, keys, NULL, b * n_anchors};
    j.dims = d;
    j.positions = n;
    j.anchors = n_anchors;
    j.bits = bits;
    j.grain = 1 + 16384 / (n * (d + 2)); /* rows */
    parallel(&j, threads);
}

void ctcae_infonce_fwd(const float *unit, const int64_t *idx, const int64_t *anchors, float *loss, float *coef,
                       int64_t b, int64_t d, int64_t n, int64_t n_anchors, int64_t n_pairs, int64_t n_pos,
                       float temperature, int threads) {
    job_t j = {5, 0, unit, idx, NULL, loss, coef, b * n_anchors};
    j.dims = d;
    j.positions = n;
    j.anchors = n_anchors;
    j.f = anchors;
    j.pairs = n_pairs;
    j.positives = n_pos;
    j.scalar = temperature;
    j.grain = 1 + 16384 / (n_pairs * (d + 2)); /* rows */
    parallel(&j, threads);
}

void ctcae_infonce_bwd(const float *unit, const int64_t *idx, const int64_t *anchors, const float *coef, float *grad,
                       int64_t b, int64_t d, int64_t n, int64_t n_anchors, int64_t n_pairs, float scale, int threads) {
    job_t j = {6, 0, unit, idx, coef, grad, NULL, b};
    j.dims = d;
    j.positions = n;
    j.anchors = n_anchors;
    j.f = anchors;
    j.pairs = n_pairs;
    j.scalar = scale;
    j.grain = 1 + 16384 / (n_anchors * n_pairs * (d + 1)); /* images */
    parallel(&j, threads);
}
