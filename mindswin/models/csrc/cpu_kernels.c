/*
 * Fused float32 CPU kernels for mindswin (MindSpore "aot" Custom ops).
 *
 * MindSpore's CPU backend runs LayerNorm backward, erf-GELU and the other row-wise pieces of
 * a Swin V2 block as many separate passes over memory (or as a slow fused kernel); each
 * function here does one pass per row block instead. Built by mindswin/models/kernels.py
 * with -O3 -march=native and sums reassociated so they vectorise, but not -ffast-math: IEEE
 * inf/NaN semantics are kept, because dynamic loss scaling detects an overflow by the inf or
 * NaN it leaves in the gradients. Every kernel passes NaN and inf on; no comparison turns a
 * NaN into a number. erff/expf run as glibc's vector functions (libmvec, declared below).
 *
 * Every entry point has MindSpore's aot signature: params holds the inputs then the
 * outputs, shapes/ndims describe them. Rows are split across threads with pthreads.
 */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* glibc declares the vector variants of erff/expf (libmvec: SSE4/AVX/AVX2/AVX-512 clones,
 * NaN/inf handled like the scalar functions) only under __FAST_MATH__; declaring them here
 * lets GCC vectorise the GELU and softmax loops without -ffast-math. erff's clones exist
 * from glibc 2.35, expf's from 2.22; older systems call the scalar functions. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#if __GLIBC_PREREQ(2, 22)
float expf(float) __attribute__((simd("notinbranch")));
#endif
#if __GLIBC_PREREQ(2, 35)
float erff(float) __attribute__((simd("notinbranch")));
#endif
#endif

/* Status returned for an input or output that is not of the kernel's dtype (MindSpore raises on it). */
#define WRONG_DTYPE 2

/* Every input and output must be float32, except those whose bit is set in `int32_params` (int32):
 * the boundary check the official CUDA kernels make with CHECK_INPUT, here on dtypes. */
static int check_dtypes(int nparam, const char **dtypes, unsigned int32_params) {
  for (int i = 0; i < nparam; ++i) {
    const char *expected = (int32_params >> i) & 1u ? "int32" : "float32";
    if (dtypes == NULL || dtypes[i] == NULL || strcmp(dtypes[i], expected) != 0) return WRONG_DTYPE;
  }
  return 0;
}

/* MindSpore's aot entry signature, checking dtypes before the body runs; each body reads only
 * some of the arguments. AOT_KERNEL_INT32(name, mask): parameters in `mask` are int32. */
#define AOT_KERNEL_INT32(name, int32_params)                                                            \
  static int name##_body(void **params, int *ndims, int64_t **shapes);                                  \
  int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,                \
           void *stream __attribute__((unused)), void *extra __attribute__((unused))) {                 \
    const int status = check_dtypes(nparam, dtypes, int32_params);                                      \
    return status ? status : name##_body(params, ndims, shapes);                                        \
  }                                                                                                     \
  static int name##_body(void **params, int *ndims __attribute__((unused)), int64_t **shapes)
#define AOT_KERNEL(name) AOT_KERNEL_INT32(name, 0u)

#define MAX_PARTS 64
/* Below this many elements a kernel runs on the calling thread only. */
#define PARALLEL_MIN_ELEMENTS 65536

typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end, int part);

typedef struct {
  range_fn fn;
  void *ctx;
  int64_t begin, end;
  int part;
} range_task;

static void *run_range(void *arg) {
  range_task *task = (range_task *)arg;
  task->fn(task->ctx, task->begin, task->end, task->part);
  return NULL;
}

static int thread_count(void) {
  static int cached = 0;
  if (cached == 0) {
    const char *env = getenv("MINDSWIN_CPU_THREADS");
    long n = env ? atol(env) : sysconf(_SC_NPROCESSORS_ONLN);
    cached = (int)(n < 1 ? 1 : (n > MAX_PARTS ? MAX_PARTS : n));
  }
  return cached;
}

/* Number of parts parallel_for will use for `rows` rows of `width` elements. */
static int part_count(int64_t rows, int64_t width) {
  int parts = rows * width < PARALLEL_MIN_ELEMENTS ? 1 : thread_count();
  return parts > rows ? (int)(rows > 0 ? rows : 1) : parts;
}

/* Split [0, rows) into part_count() contiguous ranges; part 0 runs on the caller. */
static void parallel_for(range_fn fn, void *ctx, int64_t rows, int64_t width) {
  const int parts = part_count(rows, width);
  range_task tasks[MAX_PARTS];
  pthread_t threads[MAX_PARTS];
  int started[MAX_PARTS] = {0};
  for (int p = 0; p < parts; ++p) {
    tasks[p].fn = fn;
    tasks[p].ctx = ctx;
    tasks[p].begin = rows * p / parts;
    tasks[p].end = rows * (p + 1) / parts;
    tasks[p].part = p;
  }
  for (int p = 1; p < parts; ++p) started[p] = pthread_create(&threads[p], NULL, run_range, &tasks[p]) == 0;
  run_range(&tasks[0]);
  for (int p = 1; p < parts; ++p) {
    if (started[p]) pthread_join(threads[p], NULL);
    else run_range(&tasks[p]);
  }
}

/* Row lengths that Swin uses (head_dim 16 and 32, window areas 16, 49, 64, 144): a call with
 * the length as a constant lets the compiler unroll the row's loops into whole vectors and a
 * fixed reduction tree, where a run-time length costs a vector loop, a remainder loop and the
 * checks between them per row (rows are short: 16-64 elements). Other lengths take the general
 * path. `body(n)` is an always-inlined function call. */
#define WITH_ROW_LENGTH(n, body)        \
  switch (n) {                          \
    case 16: body(16); break;           \
    case 32: body(32); break;           \
    case 49: body(49); break;           \
    case 64: body(64); break;           \
    case 144: body(144); break;         \
    default: body(n); break;            \
  }
#define INLINE static inline __attribute__((always_inline))

static int64_t leading(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim - 1; ++i) n *= shape[i];
  return n;
}

static int64_t numel(int ndim, const int64_t *shape) { return leading(ndim, shape) * shape[ndim - 1]; }

/* Per-thread partial sums: `parts` blocks of `stride` floats, zeroed (NULL when out of memory).
 * Each part of a parallel_for accumulates into its own block; reduce_parts adds them up. */
static float *partial_sums(int parts, int64_t stride) { return calloc((size_t)parts * (size_t)stride, sizeof(float)); }

/* out[i] = the sum over parts p, in order, of partial[p * stride + offset + i], for i < count. */
static void reduce_parts(const float *partial, int parts, int64_t stride, int64_t offset, int64_t count,
                         float *out) {
  for (int64_t i = 0; i < count; ++i) {
    float sum = 0.f;
    for (int p = 0; p < parts; ++p) sum += partial[(int64_t)p * stride + offset + i];
    out[i] = sum;
  }
}

/* ---------------------------------------------------------------- LayerNorm (last axis) */

typedef struct {
  const float *x, *w, *b, *dy, *mean, *rstd;  /* inputs (mean and rstd: of the backward pass) */
  float *y, *mean_out, *rstd_out, *dx, *partial;
  float eps;
  int64_t cols;
} layer_norm_ctx;

static void layer_norm_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  layer_norm_ctx *c = (layer_norm_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n;
    float *y = c->y + r * n;
    float sum = 0.f;
    for (int64_t i = 0; i < n; ++i) sum += x[i];
    const float mean = sum / (float)n;
    float var = 0.f;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.f / sqrtf(var / (float)n + c->eps);
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * c->w[i] + c->b[i];
    c->mean_out[r] = mean;
    c->rstd_out[r] = rstd;
  }
}

/* inputs x (..., C), weight (C), bias (C), eps (1); outputs y, mean (...), rstd (...) */
AOT_KERNEL(LayerNormForward) {
  layer_norm_ctx c = {0};
  c.x = params[0]; c.w = params[1]; c.b = params[2]; c.eps = *(const float *)params[3];
  c.y = params[4]; c.mean_out = params[5]; c.rstd_out = params[6];
  c.cols = shapes[0][ndims[0] - 1];
  parallel_for(layer_norm_forward_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

static void layer_norm_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  layer_norm_ctx *c = (layer_norm_ctx *)arg;
  const int64_t n = c->cols;
  float *d_weight = c->partial + (int64_t)part * 2 * n;
  float *d_bias = d_weight + n;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n, *dy = c->dy + r * n;
    float *dx = c->dx + r * n;
    const float mean = c->mean[r], rstd = c->rstd[r];
    float sum_g = 0.f, sum_gx = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float xhat = (x[i] - mean) * rstd;
      const float g = dy[i] * c->w[i];
      sum_g += g;
      sum_gx += g * xhat;
      d_weight[i] += dy[i] * xhat;
      d_bias[i] += dy[i];
    }
    sum_g /= (float)n;
    sum_gx /= (float)n;
    for (int64_t i = 0; i < n; ++i) {
      const float xhat = (x[i] - mean) * rstd;
      dx[i] = rstd * (dy[i] * c->w[i] - sum_g - xhat * sum_gx);
    }
  }
}

/* inputs dy, x (..., C), weight (C), mean, rstd; outputs dx, d_weight (C), d_bias (C) */
AOT_KERNEL(LayerNormBackward) {
  layer_norm_ctx c = {0};
  c.dy = params[0]; c.x = params[1]; c.w = params[2]; c.mean = params[3]; c.rstd = params[4];
  c.dx = params[5];
  float *d_weight = params[6], *d_bias = params[7];
  c.cols = shapes[1][ndims[1] - 1];
  const int64_t rows = leading(ndims[1], shapes[1]);
  const int parts = part_count(rows, c.cols);
  c.partial = partial_sums(parts, 2 * c.cols);
  if (c.partial == NULL) return 1;
  parallel_for(layer_norm_backward_rows, &c, rows, c.cols);
  reduce_parts(c.partial, parts, 2 * c.cols, 0, c.cols, d_weight);
  reduce_parts(c.partial, parts, 2 * c.cols, c.cols, c.cols, d_bias);
  free(c.partial);
  return 0;
}

/* ---------------------------------------------------------------- bias add, exact (erf) and tanh GELU */
/* Both take the bias of the preceding matmul, so a linear layer's bias costs no extra pass and
 * its gradient (the column sums of dy) comes out of the backward pass. */

typedef struct {
  const float *x, *bias, *dy;
  float *out, *partial;
  int64_t cols;
} bias_ctx;

static void bias_add_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n;
    float *y = c->out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] + c->bias[i];
  }
}

static void column_sum_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  float *sums = c->partial + (int64_t)part * n;
  for (int64_t r = begin; r < end; ++r) {
    const float *dy = c->dy + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) sums[i] += dy[i];
  }
}

static void gelu_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n;
    float *y = c->out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float z = x[i] + c->bias[i];
      y[i] = z * (0.5f + 0.5f * erff(z * (float)M_SQRT1_2));
    }
  }
}

static void gelu_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  const float inv_sqrt_2pi = 0.39894228040143267794f;
  float *sums = c->partial + (int64_t)part * n;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n, *dy = c->dy + r * n;
    float *dx = c->out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float z = x[i] + c->bias[i];
      const float cdf = 0.5f + 0.5f * erff(z * (float)M_SQRT1_2);
      const float pdf = expf(-0.5f * z * z) * inv_sqrt_2pi;
      dx[i] = dy[i] * (cdf + z * pdf);
      sums[i] += dx[i];
    }
  }
}

/* tanh-approximated GELU, MindSpore nn.GELU's default (mindcv's Swin V2 numerics):
 * 0.5 z (1 + tanh(u)), u = sqrt(2/pi) (z + 0.044715 z^3). tanh(u) = 1 - 2 / (exp(2u) + 1), so
 * the loop vectorises through libmvec's expf; exp overflows to inf for large u and gives 1. */
#define GELU_TANH_SCALE 0.79788456080286535588f /* sqrt(2 / pi) */
#define GELU_TANH_CUBIC 0.044715f

static inline float gelu_tanh_t(float z) {
  const float u = GELU_TANH_SCALE * (z + GELU_TANH_CUBIC * z * z * z);
  return 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
}

static void gelu_tanh_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n;
    float *y = c->out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float z = x[i] + c->bias[i];
      y[i] = 0.5f * z * (1.0f + gelu_tanh_t(z));
    }
  }
}

static void gelu_tanh_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  bias_ctx *c = (bias_ctx *)arg;
  const int64_t n = c->cols;
  float *sums = c->partial + (int64_t)part * n;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n, *dy = c->dy + r * n;
    float *dx = c->out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float z = x[i] + c->bias[i];
      const float t = gelu_tanh_t(z);
      const float du = GELU_TANH_SCALE * (1.0f + 3.0f * GELU_TANH_CUBIC * z * z);
      dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * z * (1.0f - t * t) * du);
      sums[i] += dx[i];
    }
  }
}

/* Run a row kernel that accumulates per-part column sums, then reduce them into `sums`. */
static int with_column_sums(range_fn fn, bias_ctx *c, int64_t rows, float *sums) {
  const int parts = part_count(rows, c->cols);
  c->partial = partial_sums(parts, c->cols);
  if (c->partial == NULL) return 1;
  parallel_for(fn, c, rows, c->cols);
  reduce_parts(c->partial, parts, c->cols, 0, c->cols, sums);
  free(c->partial);
  return 0;
}

/* inputs x (..., N), bias (N); output x + bias */
AOT_KERNEL(BiasAddForward) {
  bias_ctx c = {.x = params[0], .bias = params[1], .out = params[2], .cols = shapes[0][ndims[0] - 1]};
  parallel_for(bias_add_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

/* input dy (..., N); output d_bias (N): the column sums */
AOT_KERNEL(BiasAddBackward) {
  bias_ctx c = {.dy = params[0], .cols = shapes[0][ndims[0] - 1]};
  return with_column_sums(column_sum_rows, &c, leading(ndims[0], shapes[0]), params[1]);
}

/* A GELU's forward: inputs x (..., N), bias (N); output gelu(x + bias), row by row with `rows`. */
static int gelu_forward(range_fn rows, void **params, int *ndims, int64_t **shapes) {
  bias_ctx c = {.x = params[0], .bias = params[1], .out = params[2], .cols = shapes[0][ndims[0] - 1]};
  parallel_for(rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

/* A GELU's backward: inputs dy, x (..., N), bias (N); outputs dx, d_bias (N). */
static int gelu_backward(range_fn rows, void **params, int *ndims, int64_t **shapes) {
  bias_ctx c = {.dy = params[0], .x = params[1], .bias = params[2], .out = params[3],
                .cols = shapes[0][ndims[0] - 1]};
  return with_column_sums(rows, &c, leading(ndims[0], shapes[0]), params[4]);
}

AOT_KERNEL(GeluForward) { return gelu_forward(gelu_forward_rows, params, ndims, shapes); }
AOT_KERNEL(GeluBackward) { return gelu_backward(gelu_backward_rows, params, ndims, shapes); }
AOT_KERNEL(GeluTanhForward) { return gelu_forward(gelu_tanh_forward_rows, params, ndims, shapes); }
AOT_KERNEL(GeluTanhBackward) { return gelu_backward(gelu_tanh_backward_rows, params, ndims, shapes); }

/* ---------------------------------------------------------------- softmax(logits + bias) over the last axis */
/* Logits (B, S) with S = bias size, rows of length N (the window area); the bias (position
 * bias, plus the shifted-window mask) is shared by all B images. */

typedef struct {
  const float *x, *bias, *mask, *dy, *y;
  float *out, *partial;
  int64_t cols, bias_rows, mask_windows;
} softmax_ctx;

#define MAX_LANES 16

static inline float larger(float a, float b) { return a > b ? a : b; }

/* Largest x[i] + bias[i], to keep the exponents below finite. It may skip a NaN; that NaN
 * still reaches the sum through its own exp, so the whole row is NaN, as is a row holding
 * +inf (exp(inf - inf)), like the native softmax. The running maxima are kept in MAX_LANES
 * independent lanes: GCC vectorises a max reduction only under -ffinite-math-only, but an
 * element-wise max over lanes always (`omp simd`: else it unrolls them into scalar code). */
INLINE float max_of_sum(const float *x, const float *bias, int64_t n) {
  float lanes[MAX_LANES];
  for (int j = 0; j < MAX_LANES; ++j) lanes[j] = -INFINITY;
  int64_t i = 0;
  for (; i + MAX_LANES <= n; i += MAX_LANES)
#pragma omp simd
    for (int j = 0; j < MAX_LANES; ++j) lanes[j] = larger(x[i + j] + bias[i + j], lanes[j]);
  float top = -INFINITY;
  for (; i < n; ++i) top = larger(x[i] + bias[i], top);
  for (int j = 0; j < MAX_LANES; ++j) top = larger(lanes[j], top);
  return top;
}

INLINE void bias_softmax_forward_row(const float *x, const float *bias, float *y, int64_t n) {
  const float top = max_of_sum(x, bias, n);
  float sum = 0.f;
  /* omp simd: with n a constant GCC would otherwise unroll the loop completely first, into
   * n calls of the scalar expf */
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    y[i] = expf(x[i] + bias[i] - top);
    sum += y[i];
  }
  const float inverse = 1.f / sum;
  for (int64_t i = 0; i < n; ++i) y[i] *= inverse;
}

static void bias_softmax_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  softmax_ctx *c = (softmax_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
#define ROWS(width)                                                                                   \
  for (int64_t r = begin; r < end; ++r)                                                               \
    bias_softmax_forward_row(c->x + r * (width), c->bias + (r % c->bias_rows) * (width), c->out + r * (width), (width))
  WITH_ROW_LENGTH(n, ROWS)
#undef ROWS
}

/* inputs logits (B, ..., N), bias (S); output softmax(logits + bias) */
AOT_KERNEL(BiasSoftmaxForward) {
  softmax_ctx c = {0};
  c.x = params[0]; c.bias = params[1]; c.out = params[2];
  c.cols = shapes[0][ndims[0] - 1];
  c.bias_rows = numel(ndims[1], shapes[1]) / c.cols;
  parallel_for(bias_softmax_forward_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

/* Longest softmax row WindowBiasSoftmaxForward takes (window 64 x 64); longer rows return ROW_TOO_LONG. */
#define MAX_ROW 4096
#define ROW_TOO_LONG 3

/* One row of a shifted block's attention: its position-bias row plus its window's mask row, added
 * first (as the materialised bias + mask is), then the row's softmax. */
INLINE void window_softmax_forward_row(const softmax_ctx *c, int64_t r, int64_t n) {
  float sum[MAX_ROW];
  const float *bias = c->bias + (r % c->bias_rows) * n;
  const int64_t window = (r / c->bias_rows) % c->mask_windows;
  const float *mask = c->mask + (window * n + r % n) * n;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) sum[i] = bias[i] + mask[i];
  bias_softmax_forward_row(c->x + r * n, sum, c->out + r * n, n);
}

static void window_softmax_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  const softmax_ctx *c = (const softmax_ctx *)arg;
  (void)part;
#define ROWS(width) \
  for (int64_t r = begin; r < end; ++r) window_softmax_forward_row(c, r, (width))
  WITH_ROW_LENGTH(c->cols, ROWS)
#undef ROWS
}

/* inputs logits (B, windows, heads, N, N), bias (heads, N, N), mask (windows, N, N); output
 * softmax(logits + (bias + mask)), the (windows, heads, N, N) sum never built. Its gradient is
 * BiasSoftmaxBackward's with the bias: rows map to bias rows as here, so d_bias sums over images
 * and windows alike (the mask, a constant, has none). */
AOT_KERNEL(WindowBiasSoftmaxForward) {
  softmax_ctx c = {0};
  c.x = params[0]; c.bias = params[1]; c.mask = params[2]; c.out = params[3];
  c.cols = shapes[0][ndims[0] - 1];
  if (c.cols > MAX_ROW) return ROW_TOO_LONG;
  c.bias_rows = numel(ndims[1], shapes[1]) / c.cols;
  c.mask_windows = numel(ndims[2], shapes[2]) / (c.cols * c.cols);
  parallel_for(window_softmax_forward_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

INLINE void bias_softmax_backward_row(const float *dy, const float *y, float *dx, float *db, int64_t n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = y[i] * (dy[i] - dot);
    db[i] += dx[i];
  }
}

static void bias_softmax_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  softmax_ctx *c = (softmax_ctx *)arg;
  const int64_t n = c->cols;
  float *d_bias = c->partial + (int64_t)part * c->bias_rows * n;
#define ROWS(width)                                                                                  \
  for (int64_t r = begin; r < end; ++r)                                                              \
    bias_softmax_backward_row(c->dy + r * (width), c->y + r * (width), c->out + r * (width),           \
                              d_bias + (r % c->bias_rows) * (width), (width))
  WITH_ROW_LENGTH(n, ROWS)
#undef ROWS
}

/* inputs dy, y (the softmax output), bias (S); outputs d_logits, d_bias (S) */
AOT_KERNEL(BiasSoftmaxBackward) {
  softmax_ctx c = {0};
  c.dy = params[0]; c.y = params[1]; c.out = params[3];
  float *d_bias = params[4];
  c.cols = shapes[0][ndims[0] - 1];
  const int64_t bias_size = numel(ndims[2], shapes[2]);
  c.bias_rows = bias_size / c.cols;
  const int64_t rows = leading(ndims[0], shapes[0]);
  const int parts = part_count(rows, c.cols);
  c.partial = partial_sums(parts, bias_size);
  if (c.partial == NULL) return 1;
  parallel_for(bias_softmax_backward_rows, &c, rows, c.cols);
  reduce_parts(c.partial, parts, bias_size, 0, bias_size, d_bias);
  free(c.partial);
  return 0;
}

/* ---------------------------------------------------------------- q, k, v heads from the fused projection */
/* qkv (B, N, 3C) -> q = s_h * unit(q + q_bias), k = unit(k), v = v + v_bias, each (B, H, N, D),
 * with unit(x) = x / max(||x||, 1e-12) over D and s_h the per-head attention temperature. */

#define L2_EPS_SQUARED 1e-24f
/* 1 / norm above this means the norm was clamped (1 / 1e-12, with margin for rounding). */
#define CLAMPED_INVERSE_NORM 0.5e12f

typedef struct {
  const float *qkv, *q_bias, *v_bias, *scale;
  const float *dq, *dk, *dv, *q, *k, *inverse_q, *inverse_k;
  float *q_out, *k_out, *v_out, *inverse_q_out, *inverse_k_out;
  float *d_qkv, *partial;
  int64_t tokens, heads, head_dim;
} qkv_ctx;

INLINE float squared_norm(const float *x, int64_t n) {
  float squared = 0.f;
#pragma omp simd reduction(+ : squared)
  for (int64_t i = 0; i < n; ++i) squared += x[i] * x[i];
  return squared;
}

INLINE float squared_norm_biased(const float *x, const float *bias, int64_t n) {
  float squared = 0.f;
#pragma omp simd reduction(+ : squared)
  for (int64_t i = 0; i < n; ++i) squared += (x[i] + bias[i]) * (x[i] + bias[i]);
  return squared;
}

/* The clamp compares so that a NaN norm stays NaN (and is not clamped to 1e-12). */
static float inverse_norm(float squared) {
  return 1.f / sqrtf(squared < L2_EPS_SQUARED ? L2_EPS_SQUARED : squared);
}

/* One window: rows (t, h) of its qkv to the (h, t) rows of q, k, v. */
INLINE void qkv_heads_forward_window(const qkv_ctx *c, int64_t b, int64_t d) {
  const int64_t n = c->tokens, h_count = c->heads, width = h_count * d;
  for (int64_t t = 0; t < n; ++t) {
    const float *row = c->qkv + (b * n + t) * 3 * width;
    for (int64_t h = 0; h < h_count; ++h) {
      const float *q_bias = c->q_bias + h * d, *v_bias = c->v_bias + h * d;
      const float scale = c->scale[h];
      const int64_t out = ((b * h_count + h) * n + t);
      const float *q = row + h * d, *k = row + width + h * d, *v = row + 2 * width + h * d;
      const float inverse_q = inverse_norm(squared_norm_biased(q, q_bias, d));
      const float inverse_k = inverse_norm(squared_norm(k, d));
      const float factor = inverse_q * scale;
      float *q_out = c->q_out + out * d, *k_out = c->k_out + out * d, *v_out = c->v_out + out * d;
      for (int64_t i = 0; i < d; ++i) {
        q_out[i] = (q[i] + q_bias[i]) * factor;
        k_out[i] = k[i] * inverse_k;
        v_out[i] = v[i] + v_bias[i];
      }
      c->inverse_q_out[out] = inverse_q;
      c->inverse_k_out[out] = inverse_k;
    }
  }
}

static void qkv_heads_forward_windows(void *arg, int64_t begin, int64_t end, int part) {
  const qkv_ctx *c = (const qkv_ctx *)arg;
  (void)part;
#define WINDOWS(dim) \
  for (int64_t b = begin; b < end; ++b) qkv_heads_forward_window(c, b, (dim))
  WITH_ROW_LENGTH(c->head_dim, WINDOWS)
#undef WINDOWS
}

/* inputs qkv (B, N, 3C), q_bias (C), v_bias (C), scale (H, 1, 1);
 * outputs q, k, v (B, H, N, D), inverse_q, inverse_k (B, H, N, 1) */
AOT_KERNEL(QkvHeadsForward) {
  qkv_ctx c = {0};
  c.qkv = params[0]; c.q_bias = params[1]; c.v_bias = params[2]; c.scale = params[3];
  c.q_out = params[4]; c.k_out = params[5]; c.v_out = params[6];
  c.inverse_q_out = params[7]; c.inverse_k_out = params[8];
  c.tokens = shapes[0][1];
  c.heads = numel(ndims[3], shapes[3]);
  c.head_dim = shapes[0][2] / 3 / c.heads;
  parallel_for(qkv_heads_forward_windows, &c, shapes[0][0], c.tokens * shapes[0][2]);
  return 0;
}

/* Gradient of y = s * x * r (r = 1 / max(||x||, eps)) given dy and y; returns sum(dy * y). */
INLINE float unit_backward(const float *dy, const float *y, float s, float inverse, float *dx, int64_t n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
  /* The clamp makes the norm a constant: only the projection term disappears (not for a NaN
   * norm, whose gradient stays NaN). */
  const float projection = inverse >= CLAMPED_INVERSE_NORM ? 0.f : dot / (s * s);
  const float factor = inverse * s;
  for (int64_t i = 0; i < n; ++i) dx[i] = (dy[i] - y[i] * projection) * factor;
  return dot;
}

INLINE void qkv_heads_backward_window(const qkv_ctx *c, int64_t b, int64_t d, float *d_q_bias, float *d_v_bias,
                                      float *d_scale) {
  const int64_t n = c->tokens, h_count = c->heads, width = h_count * d;
  for (int64_t h = 0; h < h_count; ++h) {
    const float s = c->scale[h];
    float dot_sum = 0.f;
    for (int64_t t = 0; t < n; ++t) {
      float *row = c->d_qkv + (b * n + t) * 3 * width;
      const int64_t at = ((b * h_count + h) * n + t);
      dot_sum += unit_backward(c->dq + at * d, c->q + at * d, s, c->inverse_q[at], row + h * d, d);
      unit_backward(c->dk + at * d, c->k + at * d, 1.f, c->inverse_k[at], row + width + h * d, d);
      const float *dv = c->dv + at * d;
      float *dq_row = row + h * d, *dv_row = row + 2 * width + h * d;
      float *dqb = d_q_bias + h * d, *dvb = d_v_bias + h * d;
      for (int64_t i = 0; i < d; ++i) {
        dv_row[i] = dv[i];
        dqb[i] += dq_row[i];
        dvb[i] += dv[i];
      }
    }
    d_scale[h] += dot_sum / s;
  }
}

static void qkv_heads_backward_windows(void *arg, int64_t begin, int64_t end, int part) {
  const qkv_ctx *c = (const qkv_ctx *)arg;
  const int64_t width = c->heads * c->head_dim;
  float *d_q_bias = c->partial + (int64_t)part * (2 * width + c->heads);
  float *d_v_bias = d_q_bias + width, *d_scale = d_v_bias + width;
#define WINDOWS(dim) \
  for (int64_t b = begin; b < end; ++b) qkv_heads_backward_window(c, b, (dim), d_q_bias, d_v_bias, d_scale)
  WITH_ROW_LENGTH(c->head_dim, WINDOWS)
#undef WINDOWS
}

/* inputs dq, dk, dv (B, H, N, D), q, k (outputs of the forward), inverse_q, inverse_k, scale (H, 1, 1);
 * outputs d_qkv (B, N, 3C), d_q_bias (C), d_v_bias (C), d_scale (H, 1, 1) */
AOT_KERNEL(QkvHeadsBackward) {
  qkv_ctx c = {0};
  c.dq = params[0]; c.dk = params[1]; c.dv = params[2]; c.q = params[3]; c.k = params[4];
  c.inverse_q = params[5]; c.inverse_k = params[6]; c.scale = params[7];
  c.d_qkv = params[8];
  float *d_q_bias = params[9], *d_v_bias = params[10], *d_scale = params[11];
  const int64_t windows = shapes[0][0];
  c.heads = shapes[0][1];
  c.tokens = shapes[0][2];
  c.head_dim = shapes[0][3];
  const int64_t width = c.heads * c.head_dim;
  const int parts = part_count(windows, c.tokens * 3 * width);
  const int64_t stride = 2 * width + c.heads;
  c.partial = partial_sums(parts, stride);
  if (c.partial == NULL) return 1;
  parallel_for(qkv_heads_backward_windows, &c, windows, c.tokens * 3 * width);
  reduce_parts(c.partial, parts, stride, 0, width, d_q_bias);
  reduce_parts(c.partial, parts, stride, width, width, d_v_bias);
  reduce_parts(c.partial, parts, stride, 2 * width, c.heads, d_scale);
  free(c.partial);
  return 0;
}

/* ---------------------------------------------------------------- continuous position bias */
/* bias[h, j] = 16 * sigmoid(w2 @ relu(w1 @ table[index[j]] + b1))[h]: the CPB MLP over the
 * (2W-1)^2 coordinate table, gathered to every (query, key) pair of a window. Small enough to
 * run on one thread; one op instead of about twenty graph nodes per block. */

/* inputs table (T, 2), w1 (K, 2), b1 (K), w2 (H, K), index (P) int32; outputs bias (H, ...P), hidden (T, K) */
AOT_KERNEL_INT32(CpbBiasForward, 1u << 4) {
  const float *table = params[0], *w1 = params[1], *b1 = params[2], *w2 = params[3];
  const int32_t *index = params[4];
  float *bias = params[5], *hidden = params[6];
  const int64_t rows = shapes[0][0], width = shapes[1][0], heads = shapes[3][0], pairs = shapes[4][0];
  float *logits = malloc((size_t)rows * (size_t)heads * sizeof(float));
  if (logits == NULL) return 1;
  for (int64_t t = 0; t < rows; ++t) {
    float *h = hidden + t * width;
    for (int64_t k = 0; k < width; ++k) {
      const float z = w1[2 * k] * table[2 * t] + w1[2 * k + 1] * table[2 * t + 1] + b1[k];
      h[k] = z > 0.f || isnan(z) ? z : 0.f; /* ReLU that keeps NaN */
    }
    for (int64_t o = 0; o < heads; ++o) {
      float dot = 0.f;
      for (int64_t k = 0; k < width; ++k) dot += h[k] * w2[o * width + k];
      logits[t * heads + o] = dot;
    }
  }
  for (int64_t o = 0; o < heads; ++o)
    for (int64_t j = 0; j < pairs; ++j) bias[o * pairs + j] = 16.f / (1.f + expf(-logits[index[j] * heads + o]));
  free(logits);
  return 0;
}

/* inputs d_bias (H, ...P), bias, table (T, 2), hidden (T, K), w2 (H, K), index (P); outputs d_w1, d_b1, d_w2 */
AOT_KERNEL_INT32(CpbBiasBackward, 1u << 5) {
  const float *d_bias = params[0], *bias = params[1], *table = params[2], *hidden = params[3], *w2 = params[4];
  const int32_t *index = params[5];
  float *d_w1 = params[6], *d_b1 = params[7], *d_w2 = params[8];
  const int64_t rows = shapes[2][0], width = shapes[3][1], heads = shapes[4][0], pairs = shapes[5][0];
  float *d_logits = calloc((size_t)rows * (size_t)heads, sizeof(float));
  float *d_hidden = malloc((size_t)width * sizeof(float));
  if (d_logits == NULL || d_hidden == NULL) {
    free(d_logits);
    free(d_hidden);
    return 1;
  }
  for (int64_t o = 0; o < heads; ++o) {
    for (int64_t j = 0; j < pairs; ++j) {
      const float s = bias[o * pairs + j] * (1.f / 16.f);
      d_logits[index[j] * heads + o] += d_bias[o * pairs + j] * 16.f * s * (1.f - s);
    }
  }
  memset(d_w1, 0, (size_t)width * 2 * sizeof(float));
  memset(d_b1, 0, (size_t)width * sizeof(float));
  memset(d_w2, 0, (size_t)heads * (size_t)width * sizeof(float));
  for (int64_t t = 0; t < rows; ++t) {
    const float *h = hidden + t * width, *dl = d_logits + t * heads;
    for (int64_t k = 0; k < width; ++k) d_hidden[k] = 0.f;
    for (int64_t o = 0; o < heads; ++o) {
      for (int64_t k = 0; k < width; ++k) {
        d_w2[o * width + k] += dl[o] * h[k];
        d_hidden[k] += dl[o] * w2[o * width + k];
      }
    }
    for (int64_t k = 0; k < width; ++k) {
      /* ReLU gradient; a NaN activation gives a NaN gradient rather than none */
      const float dz = isnan(h[k]) ? h[k] : (h[k] > 0.f ? d_hidden[k] : 0.f);
      d_w1[2 * k] += dz * table[2 * t];
      d_w1[2 * k + 1] += dz * table[2 * t + 1];
      d_b1[k] += dz;
    }
  }
  free(d_logits);
  free(d_hidden);
  return 0;
}

/* ---------------------------------------------------------------- window attention, row block by row block */
/* out = softmax(q k^T + bias + mask) v for q, k, v (B * windows, heads, N, D), bias (heads, N, N)
 * shared by every window and image, and a shifted block's mask given by its factors (2, windows,
 * N, F), mask[w] = factors[0][w] factors[1][w]^T (small integers, so exact). A block of ATTENTION_ROWS
 * query rows at a time: its logits, its mask rows, its softmax and its share of the output, in a
 * per-thread buffer of ATTENTION_ROWS x N floats; the (B * windows, heads, N, N) probabilities
 * are never built, forward or backward, whose pass recomputes each block's probabilities (the
 * same code, so the same floats). The products are oneDNN's sgemm (MindSpore loads libdnnl),
 * single-threaded per call: the threads split the (image-window, head) pairs. */

#define ATTENTION_ROWS 64
#define NO_GEMM 4

typedef int (*sgemm_fn)(char transa, char transb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                        int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc,
                        void *threadpool);

/* oneDNN's row-major sgemm from the libdnnl MindSpore has loaded (a NULL threadpool: sequential). */
static sgemm_fn find_sgemm(void) {
  static sgemm_fn cached = NULL;
  static int looked = 0;
  if (!looked) {
    void *library = dlopen("libdnnl.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (library != NULL) cached = (sgemm_fn)dlsym(library, "dnnl_threadpool_interop_sgemm");
    looked = 1;
  }
  return cached;
}

/* 1 when the attention kernels can run in this process (MindSpore imported), else 0. */
int MindswinAttentionAvailable(void) { return find_sgemm() != NULL; }

typedef struct {
  const float *q, *k, *v, *bias, *factors, *dout;
  float *out, *dq, *dk, *dv, *partial;
  int64_t heads, n, dim, windows, rank;
  sgemm_fn gemm;
  int status;
} attention_ctx;

/* The softmax of rows [row, row + count) of pair `pair`'s logits, in place in `block` (count x n):
 * each row adds its position-bias row plus its mask row (their float32 sum first, as
 * WindowBiasSoftmaxForward does). `mask` is a count x n scratch block, unused without factors. */
static void attention_probabilities(const attention_ctx *c, int64_t pair, int64_t row, int64_t count,
                                    float *block, float *mask) {
  const int64_t n = c->n, d = c->dim, h = pair % c->heads;
  const float *q = c->q + (pair * n + row) * d, *k = c->k + pair * n * d;
  c->gemm('N', 'T', count, n, d, 1.f, q, d, k, d, 0.f, block, n, NULL);
  const float *bias = c->bias + (h * n + row) * n;
  if (c->factors == NULL) {
    for (int64_t r = 0; r < count; ++r) bias_softmax_forward_row(block + r * n, bias + r * n, block + r * n, n);
    return;
  }
  const int64_t w = (pair / c->heads) % c->windows, f = c->rank;
  const float *left = c->factors + (w * n + row) * f, *right = c->factors + (c->windows + w) * n * f;
  c->gemm('N', 'T', count, n, f, 1.f, left, f, right, f, 0.f, mask, n, NULL);
  for (int64_t r = 0; r < count; ++r) {
    float *sum = mask + r * n;
    const float *bias_row = bias + r * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) sum[j] = bias_row[j] + sum[j];
    bias_softmax_forward_row(block + r * n, sum, block + r * n, n);
  }
}

static void attention_forward_pairs(void *arg, int64_t begin, int64_t end, int part) {
  attention_ctx *c = (attention_ctx *)arg;
  const int64_t n = c->n, d = c->dim, rows = n < ATTENTION_ROWS ? n : ATTENTION_ROWS;
  (void)part;
  float *block = malloc((size_t)(2 * rows * n) * sizeof(float));
  if (block == NULL) {
    c->status = 1;
    return;
  }
  for (int64_t pair = begin; pair < end; ++pair) {
    for (int64_t row = 0; row < n; row += rows) {
      const int64_t count = n - row < rows ? n - row : rows;
      attention_probabilities(c, pair, row, count, block, block + rows * n);
      c->gemm('N', 'N', count, d, n, 1.f, block, n, c->v + pair * n * d, d, 0.f, c->out + (pair * n + row) * d, d,
              NULL);
    }
  }
  free(block);
}

/* Gradients of one row block: d_v += p^T dout, d_p = dout v^T, d_logits = p * (d_p - sum(d_p * p))
 * (into d_bias too), d_q = d_logits k, d_k += d_logits^T q. */
static void attention_backward_pairs(void *arg, int64_t begin, int64_t end, int part) {
  attention_ctx *c = (attention_ctx *)arg;
  const int64_t n = c->n, d = c->dim, rows = n < ATTENTION_ROWS ? n : ATTENTION_ROWS;
  float *d_bias = c->partial + (int64_t)part * c->heads * n * n;
  float *block = malloc((size_t)(3 * rows * n) * sizeof(float));
  if (block == NULL) {
    c->status = 1;
    return;
  }
  float *d_p = block + rows * n, *mask = d_p + rows * n;
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t at = pair * n * d, h = pair % c->heads;
    memset(c->dk + at, 0, (size_t)(n * d) * sizeof(float));
    memset(c->dv + at, 0, (size_t)(n * d) * sizeof(float));
    for (int64_t row = 0; row < n; row += rows) {
      const int64_t count = n - row < rows ? n - row : rows, row_at = at + row * d;
      attention_probabilities(c, pair, row, count, block, mask);
      c->gemm('T', 'N', n, d, count, 1.f, block, n, c->dout + row_at, d, 1.f, c->dv + at, d, NULL);
      c->gemm('N', 'T', count, n, d, 1.f, c->dout + row_at, d, c->v + at, d, 0.f, d_p, n, NULL);
      for (int64_t r = 0; r < count; ++r)
        bias_softmax_backward_row(d_p + r * n, block + r * n, d_p + r * n, d_bias + (h * n + row + r) * n, n);
      c->gemm('N', 'N', count, d, n, 1.f, d_p, n, c->k + at, d, 0.f, c->dq + row_at, d, NULL);
      c->gemm('T', 'N', n, d, count, 1.f, d_p, n, c->q + row_at, d, 1.f, c->dk + at, d, NULL);
    }
  }
  free(block);
}

/* Reads q, k, v, bias (and factors) from params; `masked`: the factors are params[4]. */
static int attention_setup(attention_ctx *c, void **params, int *ndims, int64_t **shapes, int masked) {
  c->gemm = find_sgemm();
  if (c->gemm == NULL) return NO_GEMM;
  c->q = params[0]; c->k = params[1]; c->v = params[2]; c->bias = params[3];
  c->heads = shapes[0][1]; c->n = shapes[0][2]; c->dim = shapes[0][3];
  c->factors = masked ? params[4] : NULL;
  c->windows = masked ? shapes[4][1] : 1;
  c->rank = masked ? shapes[4][3] : 0;
  (void)ndims;
  return 0;
}

static int attention_forward(void **params, int *ndims, int64_t **shapes, int masked) {
  attention_ctx c = {0};
  const int status = attention_setup(&c, params, ndims, shapes, masked);
  if (status) return status;
  c.out = params[masked ? 5 : 4];
  parallel_for(attention_forward_pairs, &c, shapes[0][0] * c.heads, c.n * c.n);
  return c.status;
}

static int attention_backward(void **params, int *ndims, int64_t **shapes, int masked) {
  attention_ctx c = {0};
  const int status = attention_setup(&c, params + 1, ndims + 1, shapes + 1, masked);
  if (status) return status;
  const int first_output = masked ? 6 : 5;
  c.dout = params[0];
  c.dq = params[first_output]; c.dk = params[first_output + 1]; c.dv = params[first_output + 2];
  const int64_t pairs = shapes[1][0] * c.heads, bias_size = c.heads * c.n * c.n;
  const int parts = part_count(pairs, c.n * c.n);
  c.partial = partial_sums(parts, bias_size);
  if (c.partial == NULL) return 1;
  parallel_for(attention_backward_pairs, &c, pairs, c.n * c.n);
  reduce_parts(c.partial, parts, bias_size, 0, bias_size, params[first_output + 3]);
  free(c.partial);
  return c.status;
}

/* inputs q, k, v (B * windows, heads, N, D), bias (heads, N, N); output softmax(q k^T + bias) v */
AOT_KERNEL(AttentionForward) { return attention_forward(params, ndims, shapes, 0); }

/* inputs as AttentionForward's plus the mask factors (2, windows, N, F) */
AOT_KERNEL(MaskedAttentionForward) { return attention_forward(params, ndims, shapes, 1); }

/* inputs dout, q, k, v, bias; outputs d_q, d_k, d_v, d_bias (a sum over images and windows) */
AOT_KERNEL(AttentionBackward) { return attention_backward(params, ndims, shapes, 0); }

/* inputs dout, q, k, v, bias, factors; outputs d_q, d_k, d_v, d_bias (the factors, a constant, get none) */
AOT_KERNEL(MaskedAttentionBackward) { return attention_backward(params, ndims, shapes, 1); }
