/*
 * Fused float32 CPU kernels for mindswin (MindSpore "aot" Custom ops).
 *
 * MindSpore's CPU backend runs LayerNorm backward, erf-GELU and the other row-wise pieces of
 * a Swin V2 block as many separate passes over memory (or as a slow fused kernel); each
 * function here does one pass per row block instead. Built by mindswin/models/kernels.py
 * with -O3 -march=native -ffast-math so erff/expf use glibc's vector math (libmvec).
 *
 * Every entry point has MindSpore's aot signature: params holds the inputs then the
 * outputs, shapes/ndims describe them. Rows are split across threads with pthreads.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static int64_t leading(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim - 1; ++i) n *= shape[i];
  return n;
}

static int64_t numel(int ndim, const int64_t *shape) { return leading(ndim, shape) * shape[ndim - 1]; }

/* ---------------------------------------------------------------- LayerNorm (last axis) */

typedef struct {
  const float *x, *w, *b, *dy, *mean, *rstd;
  float *y, *dx, *partial;
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
    ((float *)c->mean)[r] = mean;
    ((float *)c->rstd)[r] = rstd;
  }
}

/* inputs x (..., C), weight (C), bias (C), eps (1); outputs y, mean (...), rstd (...) */
int LayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                     void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  layer_norm_ctx c = {0};
  c.x = params[0]; c.w = params[1]; c.b = params[2]; c.eps = *(const float *)params[3];
  c.y = params[4]; c.mean = params[5]; c.rstd = params[6];
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
int LayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                      void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  layer_norm_ctx c = {0};
  c.dy = params[0]; c.x = params[1]; c.w = params[2]; c.mean = params[3]; c.rstd = params[4];
  c.dx = params[5];
  float *d_weight = params[6], *d_bias = params[7];
  c.cols = shapes[1][ndims[1] - 1];
  const int64_t rows = leading(ndims[1], shapes[1]);
  const int parts = part_count(rows, c.cols);
  c.partial = calloc((size_t)parts * 2 * (size_t)c.cols, sizeof(float));
  if (c.partial == NULL) return 1;
  parallel_for(layer_norm_backward_rows, &c, rows, c.cols);
  memset(d_weight, 0, (size_t)c.cols * sizeof(float));
  memset(d_bias, 0, (size_t)c.cols * sizeof(float));
  for (int p = 0; p < parts; ++p) {
    for (int64_t i = 0; i < c.cols; ++i) {
      d_weight[i] += c.partial[(int64_t)p * 2 * c.cols + i];
      d_bias[i] += c.partial[(int64_t)p * 2 * c.cols + c.cols + i];
    }
  }
  free(c.partial);
  return 0;
}

/* ---------------------------------------------------------------- exact (erf) GELU */

typedef struct {
  const float *x, *dy;
  float *out;
} elementwise_ctx;

static void gelu_forward_range(void *arg, int64_t begin, int64_t end, int part) {
  elementwise_ctx *c = (elementwise_ctx *)arg;
  const float *x = c->x;
  float *y = c->out;
  (void)part;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) y[i] = x[i] * (0.5f + 0.5f * erff(x[i] * (float)M_SQRT1_2));
}

static void gelu_backward_range(void *arg, int64_t begin, int64_t end, int part) {
  elementwise_ctx *c = (elementwise_ctx *)arg;
  const float *x = c->x, *dy = c->dy;
  float *dx = c->out;
  const float inv_sqrt_2pi = 0.39894228040143267794f;
  (void)part;
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float cdf = 0.5f + 0.5f * erff(x[i] * (float)M_SQRT1_2);
    const float pdf = expf(-0.5f * x[i] * x[i]) * inv_sqrt_2pi;
    dx[i] = dy[i] * (cdf + x[i] * pdf);
  }
}

/* input x; output y */
int GeluForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  elementwise_ctx c = {params[0], NULL, params[1]};
  parallel_for(gelu_forward_range, &c, numel(ndims[0], shapes[0]), 1);
  return 0;
}

/* inputs dy, x; output dx */
int GeluBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                 void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  elementwise_ctx c = {params[1], params[0], params[2]};
  parallel_for(gelu_backward_range, &c, numel(ndims[0], shapes[0]), 1);
  return 0;
}

/* ---------------------------------------------------------------- softmax backward (last axis) */

typedef struct {
  const float *dy, *y;
  float *dx;
  int64_t cols;
} softmax_ctx;

static void softmax_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  softmax_ctx *c = (softmax_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *dy = c->dy + r * n, *y = c->y + r * n;
    float *dx = c->dx + r * n;
    float dot = 0.f;
    for (int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
    for (int64_t i = 0; i < n; ++i) dx[i] = y[i] * (dy[i] - dot);
  }
}

/* inputs dy, y (softmax output); output dx */
int SoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                    void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  softmax_ctx c = {params[0], params[1], params[2], shapes[0][ndims[0] - 1]};
  parallel_for(softmax_backward_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

/* ---------------------------------------------------------------- scaled L2 normalisation (last axis) */
/* y = s_h * x / max(||x||, 1e-12) for rows of x (B, H, N, D); s has H (or 1) entries. */

#define L2_EPS_SQUARED 1e-24f

typedef struct {
  const float *x, *scale, *dy, *y, *inverse_norm;
  float *out, *inverse_out, *partial;
  int64_t cols, group, heads;
} l2_ctx;

static void l2_forward_rows(void *arg, int64_t begin, int64_t end, int part) {
  l2_ctx *c = (l2_ctx *)arg;
  const int64_t n = c->cols;
  (void)part;
  for (int64_t r = begin; r < end; ++r) {
    const float *x = c->x + r * n;
    float *y = c->out + r * n;
    float squared = 0.f;
    for (int64_t i = 0; i < n; ++i) squared += x[i] * x[i];
    const float inverse = 1.f / sqrtf(squared > L2_EPS_SQUARED ? squared : L2_EPS_SQUARED);
    const float factor = inverse * c->scale[(r / c->group) % c->heads];
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * factor;
    c->inverse_out[r] = inverse;
  }
}

/* inputs x (B, H, N, D), scale (H, 1, 1) or (1, 1, 1); outputs y, inverse_norm (B, H, N, 1) */
int L2NormalizeForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                       void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  l2_ctx c = {0};
  c.x = params[0]; c.scale = params[1]; c.out = params[2]; c.inverse_out = params[3];
  c.cols = shapes[0][ndims[0] - 1];
  c.group = shapes[0][ndims[0] - 2];
  c.heads = numel(ndims[1], shapes[1]);
  parallel_for(l2_forward_rows, &c, leading(ndims[0], shapes[0]), c.cols);
  return 0;
}

static void l2_backward_rows(void *arg, int64_t begin, int64_t end, int part) {
  l2_ctx *c = (l2_ctx *)arg;
  const int64_t n = c->cols;
  float *d_scale = c->partial + (int64_t)part * c->heads;
  for (int64_t r = begin; r < end; ++r) {
    const float *dy = c->dy + r * n, *y = c->y + r * n;
    float *dx = c->out + r * n;
    const int64_t head = (r / c->group) % c->heads;
    const float s = c->scale[head], inverse = c->inverse_norm[r];
    float dot = 0.f;
    for (int64_t i = 0; i < n; ++i) dot += dy[i] * y[i];
    d_scale[head] += dot / s;
    /* The clamp makes the norm a constant: only the projection term disappears. */
    const float projection = inverse < 0.5e12f ? dot / (s * s) : 0.f;
    const float factor = inverse * s;
    for (int64_t i = 0; i < n; ++i) dx[i] = (dy[i] - y[i] * projection) * factor;
  }
}

/* inputs dy, y, inverse_norm, scale; outputs dx, d_scale (shape of scale) */
int L2NormalizeBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                        void *extra) {
  (void)nparam; (void)dtypes; (void)stream; (void)extra;
  l2_ctx c = {0};
  c.dy = params[0]; c.y = params[1]; c.inverse_norm = params[2]; c.scale = params[3];
  c.out = params[4];
  float *d_scale = params[5];
  c.cols = shapes[0][ndims[0] - 1];
  c.group = shapes[0][ndims[0] - 2];
  c.heads = numel(ndims[3], shapes[3]);
  const int64_t rows = leading(ndims[0], shapes[0]);
  const int parts = part_count(rows, c.cols);
  c.partial = calloc((size_t)parts * (size_t)c.heads, sizeof(float));
  if (c.partial == NULL) return 1;
  parallel_for(l2_backward_rows, &c, rows, c.cols);
  for (int64_t h = 0; h < c.heads; ++h) {
    d_scale[h] = 0.f;
    for (int p = 0; p < parts; ++p) d_scale[h] += c.partial[(int64_t)p * c.heads + h];
  }
  free(c.partial);
  return 0;
}
