// fp32 decode kernels for x86 AVX2 + FMA: a GEMV for small weight matrices, one-query attention, RMSNorm.
//
// Why: a batch-1 decode step of a small model is dominated by fixed costs, not by bytes. On the machine of
// BENCHMARKS.md a 256 x 768 fp32 projection through oneDNN takes ~170 us (~6 GB/s of a 17.8 GB/s bus), and
// PyTorch's CPU flash attention spends ~170 us on one query over 100 cached keys (buffers, blocking for long
// queries). These two kernels do only what one decode token needs.
//
// f32_gemv: y [M, N] = x [M, K] @ W [N, K]^T (+ bias), M <= 4, W row-major. Rows of W are split across
// torch's threads (at::parallel_for); a block of R rows is read as R interleaved short streams, which the
// hardware prefetcher does not follow, so the kernel prefetches linearly ahead (as lmlab.efficient's int8
// kernel does).
//
// decode_attention: out [B, H, 1, D] = softmax(q k^T * scale) v for one query per row over S cached keys,
// grouped-query heads (head h reads KV head h / (H / Hkv)), no mask (every cached key is visible: the caller
// checks). The keys of each (row, KV head) are split into chunks so that both threads have work even with
// few KV heads; each chunk keeps its own running max, sum and weighted values (split-K "flash decoding"),
// combined exactly at the end. exp is a degree-6 polynomial after range reduction (relative error < 2e-7).
//
// rms_norm: one call instead of PyTorch's ~15 ops (F.rms_norm on CPU is a composite: ~17 us a decode call
// here, ~17 calls a step on an 8-layer model). layer_norm, gelu_tanh and silu_mul: the same for LayerNorm
// (~9 us a call), GPT-2's tanh GELU (~14 us for 3,072 values: PyTorch's CPU tanh is not vectorised here) and
// a gated MLP's silu(gate) * up (two ops); the activations reuse the attention's exp (see sigmoid_times).
//
// accumulate_scores: H2O's / Keyformer's per-step score update over every layer in one pass. decode_layer: a
// whole pre-norm block at decode in one call (fp32 or int8 / int4 projections: this file is compiled after
// lmlab/efficient/gemv_kernel.cpp, in one unit, and calls its entry points).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

// hsum, UNROLL, LinearPrefetch, kGrainRows: simd_prelude.h (prepended at build)

namespace {

// ----------------------------------------------------------------------------------------------------------
// GEMV

template <int M, int R>
inline void gemv_block(const float* W, int64_t K, const float* X, const float* bias, float* Y, int64_t N,
                       int64_t n, LinearPrefetch& pf) {
  __m256 acc[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const int64_t K8 = K & ~int64_t(7);
  const char* block = reinterpret_cast<const char*>(W + n * K);
  for (int64_t k = 0; k < K8; k += 8) {
    pf.upto(block + R * k * int64_t(sizeof(float)));  // R rows x k columns of this block consumed
    __m256 xv[M];
    UNROLL for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(X + m * K + k);
    UNROLL for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_loadu_ps(W + (n + r) * K + k);
      UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(w, xv[m], acc[r][m]);
    }
  }
  // constant-bound loops only below: a runtime loop over acc[][] would keep it in memory above
  float sums[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) sums[r][m] = hsum(acc[r][m]);
  UNROLL for (int r = 0; r < R; ++r) {
    const float* row = W + (n + r) * K;
    UNROLL for (int m = 0; m < M; ++m) {
      float s = sums[r][m];
      for (int64_t k = K8; k < K; ++k) s += row[k] * X[m * K + k];
      Y[m * N + n + r] = s + (bias ? bias[n + r] : 0.f);
    }
  }
}

template <int M, int R>
void gemv_rows(const float* W, int64_t K, const float* X, const float* bias, float* Y, int64_t N, int64_t n0,
               int64_t n1) {
  LinearPrefetch pf{reinterpret_cast<const char*>(W + n0 * K), reinterpret_cast<const char*>(W + n1 * K)};
  int64_t n = n0;
  for (; n + R <= n1; n += R) gemv_block<M, R>(W, K, X, bias, Y, N, n, pf);
  for (; n < n1; ++n) gemv_block<M, 1>(W, K, X, bias, Y, N, n, pf);
}

// ----------------------------------------------------------------------------------------------------------
// exp for x <= 0 (scores minus their max): x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor polynomial to
// degree 6 (truncation error |r|^7 / 7! < 1.3e-7 relative), 2^n through the exponent bits.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // e^-87 ~ 1.6e-38: still a normal float
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in a part exact in float and the rest
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// ----------------------------------------------------------------------------------------------------------
// one-query attention, one chunk [s0, s1) of one (row b, KV head g): the rep query heads that share g.
// Writes, per query head r: the chunk's max score, sum of exp(score - max), and sum of exp(...) * v [D];
// exp(score - max) itself is left in scores[r * stride + (s - s0)] (a scratch buffer, or the probabilities'
// row when the caller wants them: the combine step then rescales them to the softmax).
struct Strides {
  int64_t b, h, s;
};

void attend_chunk(const float* q, const float* K, const float* V, Strides ks, Strides vs, int64_t D, int64_t rep,
                  float scale, int64_t s0, int64_t s1, float* scores, int64_t stride, float* out_max,
                  float* out_sum, float* out_acc) {
  const int64_t n = s1 - s0;
  // rows ahead to prefetch: ~kPrefetchAhead bytes (a key row is D floats; cached rows are contiguous per head)
  const int64_t ahead = std::max<int64_t>(1, kPrefetchAhead / (D * int64_t(sizeof(float))));
  // scores [rep, n]
  for (int64_t s = s0; s < s1; ++s) {
    const float* k = K + s * ks.s;
    if (s + ahead < s1)
      for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(K + (s + ahead) * ks.s + d), _MM_HINT_T0);
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t d = 0;
      for (; d + 16 <= D; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(k + d), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d + 8), _mm256_loadu_ps(k + d + 8), a1);
      }
      for (; d < D; d += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), _mm256_loadu_ps(k + d), a0);
      scores[r * stride + (s - s0)] = hsum(_mm256_add_ps(a0, a1)) * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    float* sr = scores + r * stride;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, sr[i]);
    const __m256 mv = _mm256_set1_ps(mx);
    __m256 sumv = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(sr + i), mv));
      _mm256_storeu_ps(sr + i, e);
      sumv = _mm256_add_ps(sumv, e);
    }
    float sum = hsum(sumv);
    if (i < n) {  // the tail through a zero-padded vector
      alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = i; j < n; ++j) tail[j - i] = sr[j] - mx;
      alignas(32) float e[8];
      _mm256_store_ps(e, exp_nonpositive(_mm256_load_ps(tail)));
      for (int64_t j = i; j < n; ++j) {
        sr[j] = e[j - i];
        sum += e[j - i];
      }
    }
    out_max[r] = mx;
    out_sum[r] = sum;
  }
  // weighted values [rep, D]
  std::fill(out_acc, out_acc + rep * D, 0.f);
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = V + s * vs.s;
    if (s + ahead < s1)
      for (int64_t d = 0; d < D; d += 16) _mm_prefetch(reinterpret_cast<const char*>(V + (s + ahead) * vs.s + d), _MM_HINT_T0);
    for (int64_t r = 0; r < rep; ++r) {
      const __m256 p = _mm256_set1_ps(scores[r * stride + (s - s0)]);
      float* acc = out_acc + r * D;
      for (int64_t d = 0; d < D; d += 8)
        _mm256_storeu_ps(acc + d, _mm256_fmadd_ps(p, _mm256_loadu_ps(v + d), _mm256_loadu_ps(acc + d)));
    }
  }
}

// ----------------------------------------------------------------------------------------------------------
// RMSNorm of rows [r0, r1): y = x * rsqrt(mean(x^2) + eps) * w, in that order (as HF Llama).
void rms_norm_rows(const float* X, const float* W, float* Y, int64_t D, float eps, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = X + r * D;
    float* y = Y + r * D;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
      const __m256 u = _mm256_loadu_ps(x + d), w = _mm256_loadu_ps(x + d + 8);
      a0 = _mm256_fmadd_ps(u, u, a0);
      a1 = _mm256_fmadd_ps(w, w, a1);
    }
    float ss = hsum(_mm256_add_ps(a0, a1));
    for (; d < D; ++d) ss += x[d] * x[d];
    const float inv = 1.f / std::sqrt(ss / float(D) + eps);
    const __m256 iv = _mm256_set1_ps(inv);
    d = 0;
    for (; d + 8 <= D; d += 8)
      _mm256_storeu_ps(y + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + d), iv), _mm256_loadu_ps(W + d)));
    for (; d < D; ++d) y[d] = (x[d] * inv) * W[d];
  }
}

// LayerNorm of rows [r0, r1): y = (x - mean) * rsqrt(var + eps) * w + b, var the biased variance (as
// torch), computed in two passes over the row (mean, then squared deviations). w, b may be null.
void layer_norm_rows(const float* X, const float* W, const float* Bv, float* Y, int64_t D, float eps, int64_t r0,
                     int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = X + r * D;
    float* y = Y + r * D;
    __m256 a = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + d));
    float sum = hsum(a);
    for (; d < D; ++d) sum += x[d];
    const float mean = sum / float(D);
    const __m256 mv = _mm256_set1_ps(mean);
    a = _mm256_setzero_ps();
    for (d = 0; d + 8 <= D; d += 8) {
      const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(x + d), mv);
      a = _mm256_fmadd_ps(c, c, a);
    }
    float ss = hsum(a);
    for (; d < D; ++d) ss += (x[d] - mean) * (x[d] - mean);
    const float inv = 1.f / std::sqrt(ss / float(D) + eps);
    const __m256 iv = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    for (d = 0; d + 8 <= D; d += 8) {
      const __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + d), mv), iv);
      const __m256 w = W ? _mm256_loadu_ps(W + d) : one, b = Bv ? _mm256_loadu_ps(Bv + d) : zero;
      _mm256_storeu_ps(y + d, _mm256_fmadd_ps(n, w, b));
    }
    for (; d < D; ++d) y[d] = (x[d] - mean) * inv * (W ? W[d] : 1.f) + (Bv ? Bv[d] : 0.f);
  }
}

// x * sigmoid(z) for 8 lanes, with exp only of non-positive arguments (no overflow): t = e^-|z|, then
// sigmoid(z) = 1 / (1 + t) for z >= 0 and t / (1 + t) for z < 0.
inline __m256 sigmoid_times(__m256 x, __m256 z) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256 nz = _mm256_or_ps(z, sign);  // -|z|
  // e^-|z|, flushed to 0 below -87 (where exp_nonpositive clamps): x * t stays 0 for a huge |x|
  const __m256 t = _mm256_and_ps(exp_nonpositive(nz), _mm256_cmp_ps(nz, _mm256_set1_ps(-87.f), _CMP_GT_OQ));
  const __m256 num = _mm256_blendv_ps(_mm256_set1_ps(1.f), t, z);  // blendv picks t where z's sign bit is set
  return _mm256_div_ps(_mm256_mul_ps(x, num), _mm256_add_ps(_mm256_set1_ps(1.f), t));
}

inline float sigmoid_times(float x, float z) {
  const float t = std::fabs(z) < 87.f ? std::exp(-std::fabs(z)) : 0.f;
  return x * (z < 0.f ? t : 1.f) / (1.f + t);
}

// GPT-2's GELU, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), as x * sigmoid(2u) (the same
// function: 0.5 (1 + tanh(u)) = sigmoid(2u)).
void gelu_tanh_range(const float* X, float* Y, int64_t n) {
  const float c = 0.7978845608028654f, k = 0.044715f;
  const __m256 c2 = _mm256_set1_ps(2.f * c), kv = _mm256_set1_ps(k);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(X + i);
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(kv, x), _mm256_mul_ps(x, x), x);  // x + k x^3
    _mm256_storeu_ps(Y + i, sigmoid_times(x, _mm256_mul_ps(c2, inner)));
  }
  for (; i < n; ++i) Y[i] = sigmoid_times(X[i], 2.f * c * (X[i] + k * X[i] * X[i] * X[i]));
}

// A gated MLP's SiLU(gate) * up = gate * sigmoid(gate) * up.
void silu_mul_range(const float* G, const float* U, float* Y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(G + i);
    _mm256_storeu_ps(Y + i, _mm256_mul_ps(sigmoid_times(g, g), _mm256_loadu_ps(U + i)));
  }
  for (; i < n; ++i) Y[i] = sigmoid_times(G[i], G[i]) * U[i];
}

// ----------------------------------------------------------------------------------------------------------
// A 32-bit multiply-xorshift hash (lmlab.efficient.kv_policies._mix32: the same bits).
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x45D9F3Bu;
  x ^= x >> 16;
  x *= 0x45D9F3Bu;
  x ^= x >> 16;
  return x;
}

}  // namespace

// Keyformer's noise source, the uniform half of lmlab.efficient.kv_policies.layers_gumbel_noise, bit for bit:
// u [L', B, n_kv * group, T, S] in (0, 1), a pure function of (seed, layer, query head, query index, key
// position): bits = mix(mix(mix(head * 0x9E3779B + layer * 0x7F4A7C1 + seed) ^ query) ^ key), u = (bits >> 8
// + 0.5) / 2^24 in float32. One call instead of ~20 int64 tensor ops over [L', B, H, T, S] per decode step.
torch::Tensor hash_uniform(int64_t seed, torch::Tensor layers, torch::Tensor query_index, torch::Tensor key_pos,
                           int64_t group) {
  TORCH_CHECK(layers.dim() == 1 && query_index.dim() == 2 && key_pos.dim() == 4 && group >= 1 &&
              layers.scalar_type() == torch::kLong && query_index.scalar_type() == torch::kLong &&
              key_pos.scalar_type() == torch::kLong && layers.size(0) == key_pos.size(0) &&
              query_index.size(0) == key_pos.size(1),
              "lmlab hash_uniform: layers [L'], query_index [B, T], key_pos [L', B, n_kv, S] (int64)");
  auto lay = layers.contiguous(), qi = query_index.contiguous(), kp = key_pos.contiguous();
  const int64_t Lp = kp.size(0), B = kp.size(1), n_kv = kp.size(2), S = kp.size(3), T = qi.size(1);
  auto u = torch::empty({Lp, B, n_kv * group, T, S}, torch::TensorOptions().dtype(torch::kFloat));
  const int64_t* L = lay.data_ptr<int64_t>();
  const int64_t* Q = qi.data_ptr<int64_t>();
  const int64_t* K = kp.data_ptr<int64_t>();
  float* U = u.data_ptr<float>();
  const uint64_t seed32 = uint64_t(seed) & 0xFFFFFFFFull;
  at::parallel_for(0, Lp * B * n_kv, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g = i % n_kv, b = (i / n_kv) % B, l = i / (n_kv * B);
      const int64_t* keys = K + i * S;  // [S] of (l, b, g)
      for (int64_t r = 0; r < group; ++r) {
        const uint64_t head = uint64_t(g * group + r);
        const uint32_t base = mix32(uint32_t((head * 0x9E3779Bull + uint64_t(L[l]) * 0x7F4A7C1ull + seed32) &
                                             0xFFFFFFFFull));
        for (int64_t t = 0; t < T; ++t) {
          const uint32_t bq = mix32(base ^ uint32_t(uint64_t(Q[b * T + t]) & 0xFFFFFFFFull));
          float* out = U + (((l * B + b) * n_kv + g) * group + r) * T * S + t * S;
          for (int64_t s = 0; s < S; ++s) {
            const uint32_t bits = mix32(bq ^ uint32_t(uint64_t(keys[s]) & 0xFFFFFFFFull));
            const float f = float(bits >> 8) + 0.5f;
            out[s] = f * 5.9604644775390625e-08f;  // 2^-24
          }
        }
      }
    }
  });
  return u;
}

// y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension of a contiguous float32 x [..., D]
torch::Tensor layer_norm(torch::Tensor x, c10::optional<torch::Tensor> weight, c10::optional<torch::Tensor> bias,
                         double eps) {
  const int64_t D = x.dim() ? x.size(-1) : 0;
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.is_contiguous() && x.dim() >= 1,
              "lmlab layer_norm: contiguous float32 x [..., D]");
  for (const auto* t : {&weight, &bias})
    TORCH_CHECK(!t->has_value() || ((*t)->scalar_type() == torch::kFloat && (*t)->is_contiguous() && (*t)->numel() == D),
                "lmlab layer_norm: weight and bias must be contiguous float32 [D]");
  auto y = torch::empty_like(x);
  const int64_t rows = D ? x.numel() / D : 0;
  const float* X = x.data_ptr<float>();
  const float* W = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) { layer_norm_rows(X, W, B, Y, D, float(eps), r0, r1); });
  return y;
}

// GPT-2's tanh GELU of a contiguous float32 tensor, elementwise (single-threaded: decode-sized inputs)
torch::Tensor gelu_tanh(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.is_contiguous(), "lmlab gelu_tanh: contiguous float32 x");
  auto y = torch::empty_like(x);
  gelu_tanh_range(x.data_ptr<float>(), y.data_ptr<float>(), x.numel());
  return y;
}

// silu(gate) * up for contiguous float32 tensors of one shape (single-threaded: decode-sized inputs)
torch::Tensor silu_mul(torch::Tensor gate, torch::Tensor up) {
  TORCH_CHECK(gate.scalar_type() == torch::kFloat && up.scalar_type() == torch::kFloat && gate.is_contiguous() &&
              up.is_contiguous() && gate.sizes() == up.sizes(), "lmlab silu_mul: contiguous float32 gate, up of one shape");
  auto y = torch::empty_like(gate);
  silu_mul_range(gate.data_ptr<float>(), up.data_ptr<float>(), y.data_ptr<float>(), gate.numel());
  return y;
}

// y = x * rsqrt(mean(x^2, -1) + eps) * weight for x [..., D] contiguous float32, weight [D]
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat && x.is_contiguous() &&
              weight.is_contiguous() && x.dim() >= 1 && weight.numel() == x.size(-1),
              "lmlab rms_norm: contiguous float32 x [..., D] and weight [D]");
  auto y = torch::empty_like(x);
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  const float* X = x.data_ptr<float>();
  const float* W = weight.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) { rms_norm_rows(X, W, Y, D, float(eps), r0, r1); });
  return y;
}

// y [M, N] = x [M, K] @ w [N, K]^T + bias; x, w, bias float32 contiguous on CPU, 1 <= M <= 4
torch::Tensor f32_gemv(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "lmlab f32_gemv: x [M, K], w [N, K]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && w.scalar_type() == torch::kFloat && x.is_contiguous() &&
              w.is_contiguous(), "lmlab f32_gemv: x and w must be contiguous float32");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(M >= 1 && M <= 4, "lmlab f32_gemv: 1 to 4 rows");
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == N,
                "lmlab f32_gemv: bias must be contiguous float32 [N]");
  auto y = torch::empty({M, N}, x.options());
  const float* W = w.data_ptr<float>();
  const float* X = x.data_ptr<float>();
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, kGrainRows, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: gemv_rows<1, 8>(W, K, X, B, Y, N, n0, n1); break;
      case 2: gemv_rows<2, 4>(W, K, X, B, Y, N, n0, n1); break;
      case 3: gemv_rows<3, 2>(W, K, X, B, Y, N, n0, n1); break;
      default: gemv_rows<4, 2>(W, K, X, B, Y, N, n0, n1); break;
    }
  });
  return y;
}

// [out [B, H, 1, D]] = softmax(q k^T * scale) v, and with want_probs also the softmax [B, H, 1, S] (what
// score-based cache policies observe); q [B, H, 1, D] contiguous, k / v [B, Hkv, S, D] with unit stride over D
// (views of a larger cache are fine), float32, H a multiple of Hkv, D a multiple of 8
std::vector<torch::Tensor> decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale,
                                            bool want_probs) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1,
              "lmlab decode_attention: q [B, H, 1, D], k / v [B, Hkv, S, D]");
  TORCH_CHECK(q.scalar_type() == torch::kFloat && k.scalar_type() == torch::kFloat &&
              v.scalar_type() == torch::kFloat, "lmlab decode_attention: float32 only");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(q.is_contiguous() && k.stride(3) == 1 && v.stride(3) == 1, "lmlab decode_attention: layout");
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S && k.size(3) == D &&
              v.size(3) == D && Hkv > 0 && H % Hkv == 0 && D % 8 == 0 && S >= 1,
              "lmlab decode_attention: shapes");
  const int64_t rep = H / Hkv;
  // chunks: enough work items for every thread (4 per thread) at batch 1, but at least 64 keys per chunk; the
  // split does not depend on B, so a row's result does not depend on what else is in its batch
  const int64_t threads = at::get_num_threads();
  const int64_t want = std::max<int64_t>(1, (4 * threads + Hkv - 1) / Hkv);
  const int64_t per_head = std::max<int64_t>(1, std::min(want, (S + 63) / 64));
  const int64_t chunk = (S + per_head - 1) / per_head;
  const int64_t nc = (S + chunk - 1) / chunk;
  const int64_t items = B * Hkv * nc;
  std::vector<float> pmax(items * rep), psum(items * rep), pacc(items * rep * D);
  const Strides ks{k.stride(0), k.stride(1), k.stride(2)}, vs{v.stride(0), v.stride(1), v.stride(2)};
  const float* Q = q.data_ptr<float>();
  const float* Kp = k.data_ptr<float>();
  const float* Vp = v.data_ptr<float>();
  torch::Tensor probs = want_probs ? torch::empty({B, H, 1, S}, q.options()) : torch::Tensor();
  float* P = want_probs ? probs.data_ptr<float>() : nullptr;
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scratch(want_probs ? 0 : rep * chunk);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t c = item % nc, bg = item / nc, g = bg % Hkv, b = bg / Hkv;
      const int64_t s0 = c * chunk, s1 = std::min(S, s0 + chunk);
      float* scores = want_probs ? P + (b * H + g * rep) * S + s0 : scratch.data();
      attend_chunk(Q + (b * H + g * rep) * D, Kp + b * ks.b + g * ks.h, Vp + b * vs.b + g * vs.h, ks, vs, D, rep,
                   float(scale), s0, s1, scores, want_probs ? S : chunk, pmax.data() + item * rep,
                   psum.data() + item * rep, pacc.data() + item * rep * D);
    }
  });
  auto out = torch::empty({B, H, 1, D}, q.options());
  float* O = out.data_ptr<float>();
  for (int64_t bg = 0; bg < B * Hkv; ++bg) {  // combine the chunks: rescale each to the common max
    for (int64_t r = 0; r < rep; ++r) {
      float mx = -INFINITY;
      for (int64_t c = 0; c < nc; ++c) mx = std::max(mx, pmax[(bg * nc + c) * rep + r]);
      float* o = O + (bg * rep + r) * D;  // (b * Hkv + g) * rep + r == b * H + g * rep + r
      std::fill(o, o + D, 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < nc; ++c) {
        const int64_t at = (bg * nc + c) * rep + r;
        const float f = std::exp(pmax[at] - mx);
        total += f * psum[at];
        const float* a = pacc.data() + at * D;
        for (int64_t d = 0; d < D; ++d) o[d] += f * a[d];
      }
      const float inv = 1.f / total;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
      if (want_probs) {  // each chunk's exp(score - its max), to exp(score - max) / total
        float* pr = P + (bg * rep + r) * S;
        for (int64_t c = 0; c < nc; ++c) {
          const float f = std::exp(pmax[(bg * nc + c) * rep + r] - mx) * inv;
          for (int64_t s = c * chunk, e = std::min(S, s + chunk); s < e; ++s) pr[s] *= f;
        }
      }
    }
  }
  if (want_probs) return {out, probs};
  return {out};
}

// ----------------------------------------------------------------------------------------------------------
// Score-based KV policies (lmlab.efficient.kv_policies): what one forward's attention adds to each cached slot.

namespace {

// natural log of x > 0 (x = m 2^e, m in [sqrt(1/2), sqrt(2)), log m by the atanh series in t = (m - 1) / (m + 1)
// to t^9: relative error < 2e-7 over the normal floats); x == 0 gives -inf, as std::log
inline __m256 log_positive(__m256 x) {
  const __m256i bits = _mm256_castps_si256(x);
  __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F800000)));  // [1, 2)
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GE_OQ);  // to [sqrt(1/2), sqrt(2))
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are all ones (-1): e + 1
  const __m256 t = _mm256_div_ps(_mm256_sub_ps(m, _mm256_set1_ps(1.0f)), _mm256_add_ps(m, _mm256_set1_ps(1.0f)));
  const __m256 t2 = _mm256_mul_ps(t, t);
  __m256 p = _mm256_set1_ps(1.0f / 9);
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(1.0f / 7));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(1.0f / 5));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(1.0f / 3));
  p = _mm256_fmadd_ps(p, t2, _mm256_set1_ps(1.0f));
  const __m256 log_m = _mm256_mul_ps(_mm256_mul_ps(p, t), _mm256_set1_ps(2.0f));
  const __m256 y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), _mm256_set1_ps(0.693147180559945f), log_m);
  return _mm256_blendv_ps(y, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
}

inline __m256i mix32x8(__m256i x) {  // mix32 on 8 lanes
  const __m256i k = _mm256_set1_epi32(0x45D9F3B);
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, k);
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, k);
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

}  // namespace

// score[first + l, b, g, :S] += the contribution of probs[l] [B, H, T, S] (l < L'), summed over the rep = H / n_kv
// query heads of KV head g and over the real queries t (real [B, T] as uint8, or empty: all real):
//   H2O (keyformer false): the probabilities themselves;
//   Keyformer: softmax_s((log p + G) / tau_b) per query, G = -log(-log u) Gumbel noise whose uniform u is
//   hash_uniform's (seed, layer first + l, query head, query_index [B, T], key_pos [L', B, n_kv, S] (any
//   strides)), tau [B]; a query whose probabilities are all 0 adds 0 (the tensor path's nan_to_num).
// The tensor ops of AccumulatedScorePolicy._accumulate / Keyformer.contribution in one pass (~20 ops and their
// [L', B, H, T, S] temporaries per decode step), with vectorised log / exp: the same values to ~1e-6 relative.
void accumulate_scores(torch::Tensor score, std::vector<torch::Tensor> probs, int64_t first, torch::Tensor real,
                       bool keyformer, int64_t seed, torch::Tensor tau, torch::Tensor query_index,
                       torch::Tensor key_pos) {
  TORCH_CHECK(score.dim() == 4 && score.scalar_type() == torch::kFloat && score.is_contiguous() && !probs.empty(),
              "lmlab accumulate_scores: score [L, B, n_kv, capacity] contiguous float32, probs non-empty");
  const int64_t Lp = int64_t(probs.size()), B = score.size(1), n_kv = score.size(2), cap = score.size(3);
  const int64_t H = probs[0].size(1), T = probs[0].size(2), S = probs[0].size(3);
  for (const auto& pr : probs)
    TORCH_CHECK(pr.dim() == 4 && pr.size(0) == B && pr.size(1) == H && pr.size(2) == T && pr.size(3) == S &&
                pr.scalar_type() == torch::kFloat && pr.is_contiguous(),
                "lmlab accumulate_scores: every probs [B, H, T, S] contiguous float32, of one shape");
  TORCH_CHECK(H % n_kv == 0 && S <= cap && first >= 0 && first + Lp <= score.size(0),
              "lmlab accumulate_scores: shapes");
  const bool masked = real.numel() > 0;
  TORCH_CHECK(!masked || (real.scalar_type() == torch::kByte && real.is_contiguous() && real.numel() == B * T),
              "lmlab accumulate_scores: real [B, T] uint8");
  if (keyformer)
    TORCH_CHECK(tau.scalar_type() == torch::kFloat && tau.numel() == B && tau.is_contiguous() &&
                query_index.scalar_type() == torch::kLong && query_index.is_contiguous() &&
                query_index.numel() == B * T && key_pos.scalar_type() == torch::kLong && key_pos.dim() == 4 &&
                key_pos.size(0) == Lp && key_pos.size(1) == B && key_pos.size(2) == n_kv && key_pos.size(3) >= S,
                "lmlab accumulate_scores: Keyformer needs tau [B] float32, query_index [B, T], key_pos [L', B, n_kv, S]");
  const int64_t rep = H / n_kv;
  float* SC = score.data_ptr<float>();
  const uint8_t* REAL = masked ? real.data_ptr<uint8_t>() : nullptr;
  const float* TAU = keyformer ? tau.data_ptr<float>() : nullptr;
  const int64_t* QI = keyformer ? query_index.data_ptr<int64_t>() : nullptr;
  const int64_t* KP = keyformer ? key_pos.data_ptr<int64_t>() : nullptr;
  const auto kps = keyformer ? key_pos.strides() : score.strides();
  std::vector<const float*> P(Lp);
  for (int64_t l = 0; l < Lp; ++l) P[l] = probs[l].data_ptr<float>();
  const uint32_t seed32 = uint32_t(uint64_t(seed) & 0xFFFFFFFFull);
  at::parallel_for(0, Lp * B * n_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint32_t> keys(keyformer ? S + 8 : 0);
    std::vector<float> z(keyformer ? S + 8 : 0);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t g = i % n_kv, b = (i / n_kv) % B, l = i / (n_kv * B);
      float* out = SC + (((first + l) * B + b) * n_kv + g) * cap;
      if (keyformer)
        for (int64_t s = 0; s < S; ++s)
          keys[s] = uint32_t(uint64_t(KP[l * kps[0] + b * kps[1] + g * kps[2] + s * kps[3]]) & 0xFFFFFFFFull);
      for (int64_t r = 0; r < rep; ++r) {
        const int64_t h = g * rep + r;
        for (int64_t t = 0; t < T; ++t) {
          if (masked && !REAL[b * T + t]) continue;
          const float* p = P[l] + ((b * H + h) * T + t) * S;
          if (!keyformer) {
            int64_t s = 0;
            for (; s + 8 <= S; s += 8)
              _mm256_storeu_ps(out + s, _mm256_add_ps(_mm256_loadu_ps(out + s), _mm256_loadu_ps(p + s)));
            for (; s < S; ++s) out[s] += p[s];
            continue;
          }
          // z = (log p + G) / tau, G = -log(-log u), u = ((hash >> 8) + 0.5) 2^-24 (hash_uniform's bits)
          const uint32_t base = mix32(uint32_t(uint64_t(h) * 0x9E3779Bull + uint64_t(first + l) * 0x7F4A7C1ull +
                                               seed32));
          const uint32_t bq = mix32(base ^ uint32_t(uint64_t(QI[b * T + t]) & 0xFFFFFFFFull));
          const __m256 inv_tau = _mm256_set1_ps(1.0f / TAU[b]);
          const __m256i vbq = _mm256_set1_epi32(int32_t(bq));
          __m256 vmax = _mm256_set1_ps(-INFINITY);
          int64_t s = 0;
          for (; s < S; s += 8) {  // the last block reads past S into the padding of keys / p: masked below
            const __m256i bits = mix32x8(_mm256_xor_si256(vbq, _mm256_loadu_si256(
                                                                     reinterpret_cast<const __m256i*>(keys.data() + s))));
            const __m256 u = _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 8)),
                                                         _mm256_set1_ps(0.5f)), _mm256_set1_ps(5.9604644775390625e-08f));
            const __m256 gumbel = _mm256_sub_ps(_mm256_setzero_ps(),
                                                log_positive(_mm256_sub_ps(_mm256_setzero_ps(), log_positive(u))));
            __m256 pv;
            if (s + 8 <= S) {
              pv = _mm256_loadu_ps(p + s);
            } else {
              alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
              std::copy(p + s, p + S, tail);
              pv = _mm256_load_ps(tail);
            }
            const __m256 zv = _mm256_mul_ps(_mm256_add_ps(log_positive(pv), gumbel), inv_tau);  // p = 0: -inf
            _mm256_storeu_ps(z.data() + s, zv);
            vmax = _mm256_max_ps(vmax, zv);
          }
          float mx = -INFINITY;
          alignas(32) float lanes[8];
          _mm256_store_ps(lanes, vmax);
          for (float v : lanes) mx = std::max(mx, v);
          if (mx == -INFINITY) continue;  // no probability mass (all keys masked): adds 0
          const __m256 vmx = _mm256_set1_ps(mx);
          __m256 vsum = _mm256_setzero_ps();
          for (s = 0; s < S; s += 8) {  // the padding past S is -inf: exp gives ~0 there, and it is not stored
            const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(z.data() + s), vmx));
            _mm256_storeu_ps(z.data() + s, e);
            vsum = _mm256_add_ps(vsum, e);
          }
          float total = 0.f;
          _mm256_store_ps(lanes, vsum);
          for (int j = 0; j < 8; ++j) total += lanes[j];
          // exp_nonpositive floors its argument at -87 (e^-87 ~ 1.6e-38 for a key of probability 0, which the
          // tensor path gives exactly 0): far below anything a selection can tell apart
          const float inv = 1.f / total;
          for (s = 0; s < S; ++s) out[s] += z[s] * inv;
        }
      }
    }
  });
}

// ----------------------------------------------------------------------------------------------------------
// One decode step of a plain pre-norm block, for B <= 4 rows of one new token each, over a uniform dense cache
// (every stored slot visible): the kernels the layer-by-layer path calls, chained here so that a layer is one
// call instead of ~30 PyTorch ops and the Python around them (lmlab.core.model.Block._native_decode decides
// when it applies). It covers the Llama family (RMSNorm, rotary "half" style over whole heads, grouped-query
// attention, SiLU-gated MLP) and the GPT-2 family (LayerNorm, learned positions added before the blocks, tanh
// GELU MLP), biases optional, and projections in fp32 or in lmlab.efficient's int8 / int4 formats: this source
// is compiled together with lmlab/efficient/gemv_kernel.cpp, whose entry points it calls.

// A projection as its module hands it over (Linear.decode_args, QuantizedLinear.decode_args): `kind` and the
// tensors, an absent bias as an empty tensor.
//   kind 0, fp32:              {weight [N, K], bias}
//   kind 1 / 2, int8:          {qweight, scales, bias}          (2: int8 activations, Q8_0)
//   kind 3 / 4, int4:          {qweight, scales, qzeros, bias}  (4: int8 activations), `group` columns a group
torch::Tensor project(const torch::Tensor& x, const std::vector<torch::Tensor>& t, int64_t kind, int64_t group) {
  static const size_t arity[] = {2, 3, 3, 4, 4};
  TORCH_CHECK(kind >= 0 && kind <= 4 && t.size() == arity[kind], "lmlab decode_layer: projection kind ", kind,
              " with ", t.size(), " tensors");
  const auto& bias = t.back();
  const c10::optional<torch::Tensor> b = bias.numel() ? c10::optional<torch::Tensor>(bias) : c10::nullopt;
  switch (kind) {
    case 0: return f32_gemv(x, t[0], b);
    case 1: return int8_gemv(x, t[0], t[1], b);
    case 2: return int8_gemv_a8(x, t[0], t[1], b);
    case 3: return int4_gemv(x, t[0], t[1], t[2], group, b);
    default: return int4_gemv_a8(x, t[0], t[1], t[2], group, b);
  }
}

// RMSNorm for {weight}, LayerNorm for {weight, bias} (either may be empty: no affine part)
torch::Tensor normalize(const torch::Tensor& x, const std::vector<torch::Tensor>& t, double eps) {
  TORCH_CHECK(t.size() == 1 || t.size() == 2, "lmlab decode_layer: a norm is {weight} or {weight, bias}");
  if (t.size() == 1) return rms_norm(x, t[0], eps);
  auto opt = [](const torch::Tensor& v) { return v.numel() ? c10::optional<torch::Tensor>(v) : c10::nullopt; };
  return layer_norm(x, opt(t[0]), opt(t[1]), eps);
}

//   x [B, 1, D]; norm1 / norm2 as for `normalize`; qkv: one projection to [(H + 2 Hkv) dh] (q, k, v stacked);
//   cos / sin [B, dh] from prepare_rotary (sin with rotate-half's sign folded in), or empty: no rotary;
//   k_store / v_store [B, Hkv, capacity, dh] (the layer's cache views), written at `slot`, read over [0, slot];
//   up: to [2 F] (gate, up stacked) when `gated` (silu(gate) * up), else to [F] (tanh GELU); kinds / groups:
//   of qkv, o, up, down in that order.
// Returns {x + attn + mlp [B, 1, D]} or, with want_probs, also the softmax [B, H, 1, slot + 1] (H2O/Keyformer).
std::vector<torch::Tensor> decode_layer(torch::Tensor x, std::vector<torch::Tensor> norm1, double eps1,
                                        std::vector<torch::Tensor> qkv_w, int64_t n_heads, int64_t n_kv,
                                        torch::Tensor cos, torch::Tensor sin, torch::Tensor k_store,
                                        torch::Tensor v_store, int64_t slot, std::vector<torch::Tensor> o_w,
                                        std::vector<torch::Tensor> norm2, double eps2, std::vector<torch::Tensor> up_w,
                                        bool gated, std::vector<torch::Tensor> down_w, std::vector<int64_t> kinds,
                                        std::vector<int64_t> groups, bool want_probs) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.is_contiguous() && x.scalar_type() == torch::kFloat,
              "lmlab decode_layer: x must be a contiguous float32 [B, 1, D]");
  TORCH_CHECK(kinds.size() == 4 && groups.size() == 4, "lmlab decode_layer: kinds and groups of 4 projections");
  const int64_t B = x.size(0), D = x.size(2), H = n_heads, Hkv = n_kv;
  const int64_t dh = k_store.size(3);
  const bool rotary = cos.numel() > 0;
  TORCH_CHECK(k_store.size(0) == B && k_store.size(1) == Hkv && v_store.sizes() == k_store.sizes() &&
              k_store.stride(3) == 1 && v_store.stride(3) == 1 && slot >= 0 && slot < k_store.size(2) &&
              (!rotary || (cos.is_contiguous() && sin.is_contiguous() && cos.numel() == B * dh &&
                           sin.numel() == B * dh && dh % 2 == 0)),
              "lmlab decode_layer: shapes");
  const auto rows = x.view({B, D});
  const auto qkv = project(normalize(rows, norm1, eps1), qkv_w, kinds[0], groups[0]);  // [B, (H + 2 Hkv) dh]
  const int64_t half = dh / 2, width = (H + 2 * Hkv) * dh;
  TORCH_CHECK(qkv.size(1) == width, "lmlab decode_layer: q/k/v projection gives ", qkv.size(1), ", not ", width);
  auto q = torch::empty({B, H, 1, dh}, x.options());
  const float* QKV = qkv.data_ptr<float>();
  const float* C = rotary ? cos.data_ptr<float>() : nullptr;
  const float* Sn = rotary ? sin.data_ptr<float>() : nullptr;
  float* Q = q.data_ptr<float>();
  float* Ks = k_store.data_ptr<float>();
  float* Vs = v_store.data_ptr<float>();
  const auto ks = k_store.strides(), vs = v_store.strides();
  // x * cos + roll(x, dh / 2) * sin: the rotary of apply_rotary_prepared ("half" style, whole heads); a copy
  // without rotary
  auto rotate = [&](const float* in, const float* c, const float* s, float* out) {
    if (!rotary) {
      std::copy(in, in + dh, out);
      return;
    }
    for (int64_t i = 0; i < dh; ++i) {
      const float a = in[i] * c[i];
      const float b = in[i < half ? i + half : i - half] * s[i];
      out[i] = a + b;
    }
  };
  for (int64_t b = 0; b < B; ++b) {
    const float* row = QKV + b * width;
    const float* c = rotary ? C + b * dh : nullptr;
    const float* s = rotary ? Sn + b * dh : nullptr;
    for (int64_t hh = 0; hh < H; ++hh) rotate(row + hh * dh, c, s, Q + (b * H + hh) * dh);
    for (int64_t g = 0; g < Hkv; ++g) {
      rotate(row + (H + g) * dh, c, s, Ks + b * ks[0] + g * ks[1] + slot * ks[2]);
      const float* vin = row + (H + Hkv + g) * dh;
      std::copy(vin, vin + dh, Vs + b * vs[0] + g * vs[1] + slot * vs[2]);
    }
  }
  const auto att = decode_attention(q, k_store.narrow(2, 0, slot + 1), v_store.narrow(2, 0, slot + 1),
                                    1.0 / std::sqrt(double(dh)), want_probs);
  const auto mid = rows + project(att[0].view({B, H * dh}), o_w, kinds[1], groups[1]);  // [B, D]
  const auto u = project(normalize(mid, norm2, eps2), up_w, kinds[2], groups[2]);  // [B, 2 F] or [B, F]
  torch::Tensor post;
  if (gated) {
    const int64_t F = u.size(1) / 2;
    post = silu_mul(u.narrow(1, 0, F).contiguous(), u.narrow(1, F, F).contiguous());
  } else {
    post = gelu_tanh(u);
  }
  auto out = (mid + project(post, down_w, kinds[3], groups[3])).view({B, 1, D});
  if (want_probs) return {out, att[1]};
  return {out};
}
