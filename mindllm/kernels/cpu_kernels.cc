// Fused float32 CPU kernels for mindllm's Transformer layers, called by MindSpore as ops.Custom(func_type="aot").
// Each replaces a chain of small MindSpore ops (and the reductions of their gradients) with one pass over memory.
// Every kernel has the same signature; params holds the inputs and then the outputs, shapes their dims.
// Built by mindllm/kernels/__init__.py with -ffast-math, which lets g++ call glibc's vector expf/tanhf (8 floats
// per instruction; scalar calls made the fused step slower than MindSpore's own ops). One thread per kernel:
// MindSpore's pool runs the matmuls, and OpenMP threads here only competed with it (measured, see docs/performance.md).
#include <cmath>
#include <cstdint>

#define AOT extern "C" int
#define ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra

static int64_t numel(int nd, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < nd; ++i) n *= shape[i];
  return n;
}

// One row of LayerNorm; returns the row's mean and 1/std for the backward pass.
static void layer_norm_row(const float *x, const float *w, const float *b, float eps, int64_t C, float *y,
                           float *mean = nullptr, float *rstd = nullptr) {
  float m = 0.f, v = 0.f;
  for (int64_t c = 0; c < C; ++c) m += x[c];
  m /= C;
  for (int64_t c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  const float s = 1.f / std::sqrt(v / C + eps);
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - m) * s * w[c] + b[c];
  if (mean) *mean = m;
  if (rstd) *rstd = s;
}

// ---- LayerNorm over the last axis: y = (x - mean) * rstd * w + b; saves mean and rstd for the backward.
// inputs x (..., C), w (C), b (C), eps (1) ; outputs y (..., C), mean (N), rstd (N)
AOT LayerNormFwd(ARGS) {
  const float *x = (const float *)params[0], *w = (const float *)params[1], *b = (const float *)params[2];
  const float eps = ((const float *)params[3])[0];
  float *y = (float *)params[4], *mean = (float *)params[5], *rstd = (float *)params[6];
  const int64_t C = shapes[0][ndims[0] - 1], N = numel(ndims[0], shapes[0]) / C;
  for (int64_t r = 0; r < N; ++r) layer_norm_row(x + r * C, w, b, eps, C, y + r * C, mean + r, rstd + r);
  return 0;
}

// inputs dy, x, w, mean, rstd ; outputs dx, dw, db
AOT LayerNormBwd(ARGS) {
  const float *dy = (const float *)params[0], *x = (const float *)params[1], *w = (const float *)params[2];
  const float *mean = (const float *)params[3], *rstd = (const float *)params[4];
  float *dx = (float *)params[5], *dw = (float *)params[6], *db = (float *)params[7];
  const int64_t C = shapes[0][ndims[0] - 1], N = numel(ndims[0], shapes[0]) / C;
  for (int64_t c = 0; c < C; ++c) dw[c] = db[c] = 0.f;
  for (int64_t r = 0; r < N; ++r) {
    const float *xr = x + r * C, *g = dy + r * C;
    const float m = mean[r], s = rstd[r];
    float sum_gw = 0.f, sum_gwx = 0.f;
#pragma omp simd reduction(+ : sum_gw, sum_gwx)
    for (int64_t c = 0; c < C; ++c) {
      const float xh = (xr[c] - m) * s, gw = g[c] * w[c];
      sum_gw += gw;
      sum_gwx += gw * xh;
      dw[c] += g[c] * xh;
      db[c] += g[c];
    }
    sum_gw /= C;
    sum_gwx /= C;
    float *dr = dx + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) dr[c] = s * (g[c] * w[c] - sum_gw - (xr[c] - m) * s * sum_gwx);
  }
  return 0;
}

// ---- GELU, tanh approximation (GPT-2's gelu_new). inputs x ; outputs y
static const float kA = 0.7978845608028654f, kB = 0.044715f;
static inline float gelu(float v) { return 0.5f * v * (1.f + std::tanh(kA * (v + kB * v * v * v))); }
AOT GeluFwd(ARGS) {
  const float *x = (const float *)params[0];
  float *y = (float *)params[1];
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
  return 0;
}

// inputs dy, x ; outputs dx
AOT GeluBwd(ARGS) {
  const float *dy = (const float *)params[0], *x = (const float *)params[1];
  float *dx = (float *)params[2];
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i], t = std::tanh(kA * (v + kB * v * v * v));
    dx[i] = dy[i] * (0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * kA * (1.f + 3.f * kB * v * v));
  }
  return 0;
}

// ---- GELU, exact (BERT's): 0.5 x (1 + erf(x / sqrt 2)). inputs x ; outputs y
static const float kR2 = 0.7071067811865476f, kR2Pi = 0.3989422804014327f;  // 1/sqrt(2), 1/sqrt(2 pi)
AOT GeluErfFwd(ARGS) {
  const float *x = (const float *)params[0];
  float *y = (float *)params[1];
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * kR2));
  return 0;
}

// inputs dy, x ; outputs dx. d/dx = Phi(x) + x phi(x)
AOT GeluErfBwd(ARGS) {
  const float *dy = (const float *)params[0], *x = (const float *)params[1];
  float *dx = (float *)params[2];
  const int64_t n = numel(ndims[0], shapes[0]);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    dx[i] = dy[i] * (0.5f * (1.f + std::erf(v * kR2)) + v * kR2Pi * std::exp(-0.5f * v * v));
  }
  return 0;
}

// ---- Causal softmax of attention scores: y = softmax(x * scale + causal mask) over the last axis.
// inputs x (BH, T, T), scale (1) ; outputs y. Entries above the diagonal are exactly 0 and are never read.
AOT CausalSoftmaxFwd(ARGS) {
  const float *x = (const float *)params[0];
  const float scale = ((const float *)params[1])[0];
  float *y = (float *)params[2];
  const int64_t T = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0]) / T;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t q = r % T;  // the query position: keys 0..q are visible
    const float *xr = x + r * T;
    float *yr = y + r * T;
    float mx = -3.4e38f;  // not -INFINITY: -ffast-math assumes finite values
    for (int64_t k = 0; k <= q; ++k) mx = std::fmax(mx, xr[k] * scale);
    float s = 0.f;
    for (int64_t k = 0; k <= q; ++k) { yr[k] = std::exp(xr[k] * scale - mx); s += yr[k]; }
    const float inv = 1.f / s;
    for (int64_t k = 0; k <= q; ++k) yr[k] *= inv;
    for (int64_t k = q + 1; k < T; ++k) yr[k] = 0.f;
  }
  return 0;
}

// inputs dy, y, scale ; outputs dx = scale * y * (dy - sum(dy * y))
AOT CausalSoftmaxBwd(ARGS) {
  const float *dy = (const float *)params[0], *y = (const float *)params[1];
  const float scale = ((const float *)params[2])[0];
  float *dx = (float *)params[3];
  const int64_t T = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0]) / T;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t q = r % T;
    const float *g = dy + r * T, *yr = y + r * T;
    float *d = dx + r * T;
    float dot = 0.f;
    for (int64_t k = 0; k <= q; ++k) dot += g[k] * yr[k];
    for (int64_t k = 0; k <= q; ++k) d[k] = scale * yr[k] * (g[k] - dot);
    for (int64_t k = q + 1; k < T; ++k) d[k] = 0.f;
  }
  return 0;
}

// ---- Softmax of attention scores with an additive mask: y = softmax(x * scale + mask) over the last axis.
// inputs x (BH, Tq, Tk), mask (M, Mq, Tk) with M 1 or BH and Mq 1 or Tq (broadcast, never copied), scale (1) ;
// outputs y
AOT MaskedSoftmaxFwd(ARGS) {
  const float *x = (const float *)params[0], *mask = (const float *)params[1];
  const float scale = ((const float *)params[2])[0];
  float *y = (float *)params[3];
  const int64_t BH = shapes[0][0], Tq = shapes[0][1], Tk = shapes[0][2];
  const int64_t M = shapes[1][0], Mq = shapes[1][1];
  for (int64_t b = 0; b < BH; ++b)
    for (int64_t q = 0; q < Tq; ++q) {
      const float *xr = x + (b * Tq + q) * Tk, *mr = mask + ((M == 1 ? 0 : b) * Mq + (Mq == 1 ? 0 : q)) * Tk;
      float *yr = y + (b * Tq + q) * Tk;
      float mx = -3.4e38f;
      for (int64_t k = 0; k < Tk; ++k) { yr[k] = xr[k] * scale + mr[k]; mx = std::fmax(mx, yr[k]); }
      float s = 0.f;
      for (int64_t k = 0; k < Tk; ++k) { yr[k] = std::exp(yr[k] - mx); s += yr[k]; }
      const float inv = 1.f / s;
      for (int64_t k = 0; k < Tk; ++k) yr[k] *= inv;
    }
  return 0;
}

// inputs dy, y, scale ; outputs dx = scale * y * (dy - sum(dy * y)), every row whole
AOT MaskedSoftmaxBwd(ARGS) {
  const float *dy = (const float *)params[0], *y = (const float *)params[1];
  const float scale = ((const float *)params[2])[0];
  float *dx = (float *)params[3];
  const int64_t T = shapes[0][ndims[0] - 1], rows = numel(ndims[0], shapes[0]) / T;
  for (int64_t r = 0; r < rows; ++r) {
    const float *g = dy + r * T, *yr = y + r * T;
    float *d = dx + r * T;
    float dot = 0.f;
    for (int64_t k = 0; k < T; ++k) dot += g[k] * yr[k];
    for (int64_t k = 0; k < T; ++k) d[k] = scale * yr[k] * (g[k] - dot);
  }
  return 0;
}

// ---- The bias gradient: the column sums of dy (N, C), which MindSpore's CPU ReduceSum over axis 0 does slowly.
// inputs dy ; outputs db (C)
AOT ColumnSum(ARGS) {
  const float *dy = (const float *)params[0];
  float *db = (float *)params[1];
  const int64_t C = shapes[0][ndims[0] - 1], N = numel(ndims[0], shapes[0]) / C;
  for (int64_t c = 0; c < C; ++c) db[c] = 0.f;
  for (int64_t r = 0; r < N; ++r) {
    const float *g = dy + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) db[c] += g[c];
  }
  return 0;
}

// ---- y = x + b with b broadcast over rows; its backward is (dy, ColumnSum(dy)). inputs x (..., C), b (C)
AOT AddBias(ARGS) {
  const float *x = (const float *)params[0], *b = (const float *)params[1];
  float *y = (float *)params[2];
  const int64_t C = shapes[0][ndims[0] - 1], N = numel(ndims[0], shapes[0]) / C;
  for (int64_t r = 0; r < N; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = x[r * C + c] + b[c];
  }
  return 0;
}

// ---- One decoding step of causal self-attention with a static KV cache (generation only, no backward).
// qkv (B, T, 3C) = c_attn's output for T new tokens at positions pos..pos+T-1; caches (B*nh, S, hs) are copied to
// nk, nv with the new keys/values written at pos..pos+T-1; y (B, T, C) gets the attention output, heads merged.
static void cached_attention(const float *qkv, const float *ck, const float *cv, int64_t pos, float scale,
                             int64_t B, int64_t T, int64_t C, int64_t BH, int64_t S, int64_t hs,
                             float *y, float *nk, float *nv) {
  const int64_t C3 = 3 * C, nh = BH / B;
  for (int64_t i = 0; i < BH * S * hs; ++i) { nk[i] = ck[i]; nv[i] = cv[i]; }
  for (int64_t b = 0; b < B; ++b)  // write the new keys and values
    for (int64_t t = 0; t < T && pos + t < S; ++t)
      for (int64_t h = 0; h < nh; ++h)
        for (int64_t d = 0; d < hs; ++d) {
          const float *row = qkv + (b * T + t) * C3 + h * hs + d;
          nk[((b * nh + h) * S + pos + t) * hs + d] = row[C];
          nv[((b * nh + h) * S + pos + t) * hs + d] = row[2 * C];
        }
  float *w = new float[S];
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h) {
        const float *q = qkv + (b * T + t) * C3 + h * hs;
        const float *K = nk + (b * nh + h) * S * hs, *V = nv + (b * nh + h) * S * hs;
        const int64_t last = pos + t < S ? pos + t : S - 1;  // keys 0..last are visible
        float mx = -3.4e38f, sum = 0.f;
        for (int64_t k = 0; k <= last; ++k) {
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t d = 0; d < hs; ++d) s += q[d] * K[k * hs + d];
          w[k] = s * scale;
          mx = w[k] > mx ? w[k] : mx;
        }
        for (int64_t k = 0; k <= last; ++k) { w[k] = std::exp(w[k] - mx); sum += w[k]; }
        float *out = y + (b * T + t) * C + h * hs;
        for (int64_t d = 0; d < hs; ++d) out[d] = 0.f;
        for (int64_t k = 0; k <= last; ++k) {
          const float p = w[k] / sum;
#pragma omp simd
          for (int64_t d = 0; d < hs; ++d) out[d] += p * V[k * hs + d];
        }
      }
  delete[] w;
}

// inputs qkv (B, T, 3C), cache_k, cache_v (B*nh, S, hs), pos (int32 scalar), scale (1); outputs y, new k, new v
AOT CachedAttention(ARGS) {
  const int64_t C = shapes[0][2] / 3;
  cached_attention((const float *)params[0], (const float *)params[1], (const float *)params[2],
                   ((const int32_t *)params[3])[0], ((const float *)params[4])[0], shapes[0][0], shapes[0][1], C,
                   shapes[1][0], shapes[1][1], shapes[1][2], (float *)params[5], (float *)params[6],
                   (float *)params[7]);
  return 0;
}

// ---- A whole GPT block for decoding: x + attn(ln_1(x)), then + mlp(ln_2(x)), with the KV cache. The per-token
// matrices are single rows, so the ~14 MindSpore ops of a block cost more in launches than in arithmetic.

// y = x W + bias for one row, W stored (in, out) as GPT-2's Conv1D
static void row_matmul(const float *x, const float *W, const float *bias, int64_t n_in, int64_t n_out, float *y) {
  for (int64_t o = 0; o < n_out; ++o) y[o] = bias[o];
  for (int64_t i = 0; i < n_in; ++i) {
    const float xi = x[i], *row = W + i * n_out;
#pragma omp simd
    for (int64_t o = 0; o < n_out; ++o) y[o] += xi * row[o];
  }
}

// One GPT block on N = B*T rows: w holds ln_1 w b, c_attn w b, attn c_proj w b, ln_2 w b, c_fc w b, mlp c_proj w b;
// caches (BH, S, hs) are copied to nk, nv with the new keys/values written; C model width, H the MLP's width.
static void decode_block(const float *x, const float *const *w, const float *ck, const float *cv, int64_t pos,
                         float scale, float eps, int64_t B, int64_t T, int64_t C, int64_t H, int64_t BH, int64_t S,
                         int64_t hs, float *y, float *nk, float *nv) {
  const int64_t N = B * T;
  float *qkv = new float[N * 3 * C], *att = new float[N * C], *h = new float[C], *f = new float[H];
  for (int64_t r = 0; r < N; ++r) {
    layer_norm_row(x + r * C, w[0], w[1], eps, C, h);
    row_matmul(h, w[2], w[3], C, 3 * C, qkv + r * 3 * C);
  }
  cached_attention(qkv, ck, cv, pos, scale, B, T, C, BH, S, hs, att, nk, nv);
  for (int64_t r = 0; r < N; ++r) {
    float *yr = y + r * C;
    row_matmul(att + r * C, w[4], w[5], C, C, yr);
    for (int64_t c = 0; c < C; ++c) yr[c] += x[r * C + c];  // residual
    layer_norm_row(yr, w[6], w[7], eps, C, h);
    row_matmul(h, w[8], w[9], C, H, f);
#pragma omp simd
    for (int64_t i = 0; i < H; ++i) f[i] = gelu(f[i]);
    float *m = qkv + r * 3 * C;  // this row's qkv is no longer needed: reuse it for the MLP output
    row_matmul(f, w[10], w[11], H, C, m);
    for (int64_t c = 0; c < C; ++c) yr[c] += m[c];  // residual
  }
  delete[] qkv;
  delete[] att;
  delete[] h;
  delete[] f;
}

// inputs x (B, T, C), ln_1 w b, c_attn w b, attn c_proj w b, ln_2 w b, c_fc w b, mlp c_proj w b,
// cache_k, cache_v (B*nh, S, hs), pos (int32 scalar), scale (1), eps (1); outputs y (B, T, C), new k, new v
AOT DecodeBlock(ARGS) {
  const float *const *p = (const float *const *)params;
  decode_block(p[0], p + 1, p[13], p[14], ((const int32_t *)params[15])[0], p[16][0], p[17][0], shapes[0][0],
               shapes[0][1], shapes[0][2], shapes[9][1], shapes[13][0], shapes[13][1], shapes[13][2],
               (float *)params[18], (float *)params[19], (float *)params[20]);
  return 0;
}

// ---- A whole GPT decoding step in one kernel: token + position embeddings, every block, ln_f and the tied LM head.
// Measured on the course's GPT: the arithmetic of one new token takes 0.09 ms, a MindSpore call of the per-block
// graph ~0.7 ms, mostly spent handling its inputs and outputs; so the weights and the caches travel packed, one
// buffer each, and the call has six inputs. inputs idx (B, T) int32, wte (V, C), weights (the rest, flat: wpe (P, C),
// ln_f w b, then per layer the 12 weights of DecodeBlock), cache (L, 2, B*nh, S, hs), meta (P, H, scale, eps),
// pos (int32 scalar); outputs logits (B, T, V), new cache
AOT DecodeGPT(ARGS) {
  const int32_t *idx = (const int32_t *)params[0];
  const float *wte = (const float *)params[1], *w = (const float *)params[2], *cache = (const float *)params[3];
  const float *meta = (const float *)params[4];
  const int64_t pos = ((const int32_t *)params[5])[0];
  float *logits = (float *)params[6], *ncache = (float *)params[7];
  const int64_t B = shapes[0][0], T = shapes[0][1], V = shapes[1][0], C = shapes[1][1], N = B * T;
  const int64_t L = shapes[3][0], BH = shapes[3][2], S = shapes[3][3], hs = shapes[3][4], kv = BH * S * hs;
  const int64_t P = (int64_t)meta[0], H = (int64_t)meta[1];
  const float scale = meta[2], eps = meta[3];
  const float *wpe = w, *lnfw = w + P * C, *lnfb = lnfw + C;
  const float *layer = lnfb + C;
  const int64_t sizes[12] = {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * H, H, H * C, C};
  float *a = new float[N * C], *b = new float[N * C];
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < C; ++c) a[r * C + c] = wte[idx[r] * C + c] + wpe[(pos + r % T) * C + c];
  for (int64_t l = 0; l < L; ++l) {
    const float *lw[12];
    for (int i = 0; i < 12; ++i) { lw[i] = layer; layer += sizes[i]; }
    decode_block(a, lw, cache + 2 * l * kv, cache + (2 * l + 1) * kv, pos, scale, eps, B, T, C, H, BH, S, hs, b,
                 ncache + 2 * l * kv, ncache + (2 * l + 1) * kv);
    float *t = a; a = b; b = t;
  }
  for (int64_t r = 0; r < N; ++r) {
    layer_norm_row(a + r * C, lnfw, lnfb, eps, C, b + r * C);
    for (int64_t v = 0; v < V; ++v) {
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += b[r * C + c] * wte[v * C + c];
      logits[r * V + v] = s;
    }
  }
  delete[] a;
  delete[] b;
  return 0;
}

// ---- y = x @ ((q - zero) * scale) for a quantized run's Linear (no backward: int8 weights do not train), without
// building the float weight: per group of inputs g, sum_k x_k q_kn first, then scale_gn * (that - zero_gn * sum_k x_k).
// x (..., K) float; q (K, N) int8, or (K/2, N) uint8 holding int4 codes + 8 (row k < K/2 in the low nibble, row
// k + K/2 in the high one); scale, zero (G, 1, N) or (G, 1, 1); y (..., N). Reads 1 byte (or half) per weight.
AOT QuantMatmul(ARGS) {
  const float *x = (const float *)params[0], *scale = (const float *)params[2], *zero = (const float *)params[3];
  float *y = (float *)params[4];
  const int64_t K = shapes[0][ndims[0] - 1], M = numel(ndims[0], shapes[0]) / K;
  const int64_t Kq = shapes[1][0], N = shapes[1][1], G = shapes[2][0], Ns = shapes[2][2], gsz = K / G;
  const bool int4 = Kq * 2 == K;
  float *acc = new float[M * N], *w = new float[N], *xs = new float[M];
  for (int64_t i = 0; i < M * N; ++i) y[i] = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t i = 0; i < M * N; ++i) acc[i] = 0.f;
    for (int64_t m = 0; m < M; ++m) xs[m] = 0.f;
    for (int64_t k = g * gsz; k < (g + 1) * gsz; ++k) {
      if (int4) {  // the row's codes as floats once, shared by every row of x
        const uint8_t *row = (const uint8_t *)params[1] + (k < Kq ? k : k - Kq) * N;
        const int shift = k < Kq ? 0 : 4;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) w[n] = (float)(((row[n] >> shift) & 15) - 8);
      } else {
        const int8_t *row = (const int8_t *)params[1] + k * N;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) w[n] = (float)row[n];
      }
      for (int64_t m = 0; m < M; ++m) {
        const float xv = x[m * K + k];
        float *a = acc + m * N;
        xs[m] += xv;
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) a[n] += xv * w[n];
      }
    }
    const float *s = scale + g * Ns, *z = zero + g * Ns;
    for (int64_t m = 0; m < M; ++m) {
      float *out = y + m * N, *a = acc + m * N;
      if (Ns == N) {
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) out[n] += s[n] * (a[n] - xs[m] * z[n]);
      } else {
        for (int64_t n = 0; n < N; ++n) out[n] += s[0] * (a[n] - xs[m] * z[0]);
      }
    }
  }
  delete[] acc;
  delete[] w;
  delete[] xs;
  return 0;
}

// ---- Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_) of all gradients in one kernel: as MindSpore
// ops it is a square, a sum and a multiply per gradient (~150 launches for a 4-layer GPT: 7 ms of a 46 ms step,
// and 3 s of its compile). The sum of squares accumulates in double.
// inputs max_norm (1), g_0 .. g_{n-1} ; outputs norm (1), g_0 * s .. g_{n-1} * s with s = min(1, max_norm / (norm
// + 1e-6)); max_norm <= 0 reports the norm and leaves the gradients unscaled
AOT ClipGradNorm(ARGS) {
  const int n = (nparam - 2) / 2;
  const float max_norm = ((const float *)params[0])[0];
  double total = 0.0;
  for (int i = 0; i < n; ++i) {
    const float *g = (const float *)params[1 + i];
    const int64_t m = numel(ndims[1 + i], shapes[1 + i]);
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < m; ++j) acc += (double)g[j] * g[j];
    total += acc;
  }
  const float norm = (float)std::sqrt(total);
  ((float *)params[n + 1])[0] = norm;
  const float scale = max_norm > 0.f ? std::fmin(1.f, max_norm / (norm + 1e-6f)) : 1.f;
  for (int i = 0; i < n; ++i) {
    const float *g = (const float *)params[1 + i];
    float *out = (float *)params[n + 2 + i];
    const int64_t m = numel(ndims[1 + i], shapes[1 + i]);
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) out[j] = g[j] * scale;
  }
  return 0;
}
