// Batch-1 (M <= 4 rows) weight-only int8 / int4 GEMV for x86 AVX2 + FMA: y = x W^T (+ bias).
//
// Why: at decode every weight byte is read once per token, so the product must stream at memory speed.
// PyTorch's packed kernels are compute-bound at M = 1 on a CPU without AVX-512 VNNI; this one does only
// what streaming needs: sign/zero-extend bytes -> int32 -> fp32 -> one FMA per weight per activation row.
//
// Formats (lmlab.efficient.quant, read in place, no repacking):
//   int8: qweight int8 [N, K], scales fp32 [N, 1]          w = q * s
//   int4: qweight uint8 [N, ceil(K/2)] (column 2j in the low nibble of byte j, 2j+1 in the high one),
//         scales fp32 [N, G], qzeros uint8 [N, G]          w = (q - z_g) * s_g, groups of `group_size` columns
// int4 applies the group scale once per group on the partial sum:
//   sum_k s_g (q_k - z_g) x_k = s_g * sum_k q_k x_k  -  s_g z_g * sum_k x_k,
// with sum_k x_k per group computed once per call. Activations and accumulation are fp32.
//
// int4 reads 32 bytes = 64 columns at a time and permutes the activations once per call to match (below).
// Requires group_size % 32 == 0.
// Rows are split across threads with at::parallel_for (torch's OpenMP pool).
//
// int8_gemv_a8 / int4_gemv_a8: the same products with the activations quantized to int8 per 32 columns
// (llama.cpp's Q8_0) and integer dot products (maddubs/madd); see "int8 activations" below.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// hsum, UNROLL, LinearPrefetch, kGrainRows: lmlab/core/simd_prelude.h (prepended at build)

namespace {

inline __m256 i8x8_to_ps(const int8_t* p) {  // 8 int8 -> 8 fp32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// The int4 zero-point term of one output row, sum_g s_g z_g sx_g (sx_g: the activations summed over group g),
// eight groups per FMA. As a scalar loop it is one dependent FMA chain of G links per output row (GCC may not
// reorder a float sum), ~4 cycles a group: at group 32 (G = 24..96 on GPT-2 shapes) that was 18-21% of a call
// (measured old/new, BENCHMARKS.md session 9). Whole blocks of 8 groups, then the tail in order.
inline float zero_point_term(const float* s, const uint8_t* z, const float* sx, int64_t G) {
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= G; g += 8) {
    const __m256 zf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z + g))));
    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(s + g), zf), _mm256_loadu_ps(sx + g), acc);
  }
  float t = g > 0 ? hsum(acc) : 0.f;
  for (; g < G; ++g) t += s[g] * float(z[g]) * sx[g];
  return t;
}

// 32 bytes of codes of row `row` at 32-byte block b; the row's last, partial block through a zero-padded copy
// (never read past the row: the tensor may end there).
inline __m256i load_block(const uint8_t* W, int64_t ldw, int64_t row, int64_t b, int64_t full_blocks) {
  if (b < full_blocks) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(W + row * ldw + b * 32));
  alignas(32) uint8_t tmp[32] = {0};
  std::memcpy(tmp, W + row * ldw + b * 32, ldw - b * 32);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
}

// The int4 outputs of rows n .. n + R - 1 from their scaled sums tot [R][M] (8 lanes each): minus the zero-point
// term, plus the bias. Constant-bound loops only (see int8_block).
template <int M, int R>
inline void int4_store(__m256 (&tot)[R][M], const float* scales, const uint8_t* zeros, const float* SX, int64_t G,
                       const float* bias, float* Y, int64_t N, int64_t n) {
  float sums[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) sums[r][m] = hsum(tot[r][m]);
  UNROLL for (int r = 0; r < R; ++r) {
    const float* s = scales + (n + r) * G;
    const uint8_t* z = zeros + (n + r) * G;
    UNROLL for (int m = 0; m < M; ++m) {
      const float zterm = zero_point_term(s, z, SX + m * G, G);  // sum_g s_g z_g sum_{k in g} x_k
      Y[m * N + n + r] = sums[r][m] - zterm + (bias ? bias[n + r] : 0.f);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// int8: R rows of W against M activation rows.
template <int M, int R>
inline void int8_block(const int8_t* W, int64_t ldw, int64_t K, const float* X, const float* scale,
                       const float* bias, float* Y, int64_t N, int64_t n, LinearPrefetch& pf) {
  __m256 acc[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const int64_t K8 = K & ~int64_t(7);
  const char* block = reinterpret_cast<const char*>(W + n * ldw);
  for (int64_t k = 0; k < K8; k += 8) {
    pf.upto(block + R * k);  // linear position: R rows x k columns of this block consumed
    __m256 xv[M];
    UNROLL for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(X + m * K + k);
    UNROLL for (int r = 0; r < R; ++r) {
      const __m256 w = i8x8_to_ps(W + (n + r) * ldw + k);
      UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(w, xv[m], acc[r][m]);
    }
  }
  // reduce with constant-bound loops only: a runtime loop touching acc[][] would make GCC keep the whole
  // accumulator array in memory, storing it every iteration of the loop above (measured: ~2.5x slower)
  float sums[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) sums[r][m] = hsum(acc[r][m]);
  UNROLL for (int r = 0; r < R; ++r) {
    const int8_t* row = W + (n + r) * ldw;
    UNROLL for (int m = 0; m < M; ++m) {
      float s = sums[r][m];
      for (int64_t k = K8; k < K; ++k) s += float(row[k]) * X[m * K + k];
      Y[m * N + n + r] = s * scale[n + r] + (bias ? bias[n + r] : 0.f);
    }
  }
}

template <int M, int R>
void int8_rows(const int8_t* W, int64_t K, const float* X, const float* scale, const float* bias, float* Y,
               int64_t N, int64_t n0, int64_t n1) {
  LinearPrefetch pf{reinterpret_cast<const char*>(W + n0 * K), reinterpret_cast<const char*>(W + n1 * K)};
  int64_t n = n0;
  for (; n + R <= n1; n += R) int8_block<M, R>(W, K, K, X, scale, bias, Y, N, n, pf);
  for (; n < n1; ++n) int8_block<M, 1>(W, K, K, X, scale, bias, Y, N, n, pf);
}

// ---------------------------------------------------------------------------------------------------
// int4: 32 bytes = 64 columns a load. Byte j of a row holds column 2j (low nibble) and 2j+1 (high), so
// 32-bit lane i of the load holds columns 64b + 8i .. 64b + 8i + 7 as its nibbles 0..7; nibble t of every
// lane is (v >> 4t) & 15, i.e. the columns 64b + 8i + t, i = 0..7. The activations are permuted once per
// call to match: xp[64b + 8t + i] = x[64b + 8i + t] * 16^-t (zero-padded to a whole block), so each nibble
// index t costs one AND, one int->float conversion and one FMA per activation row, for 8 weights.
// Lanes 0-3 (columns 64b .. 64b+31) and lanes 4-7 (64b+32 .. 64b+63) each lie in one group (group_size is a
// multiple of 32); a run of blocks with the same pair of groups (a segment) is accumulated, then scaled
// once by [s_gA x4, s_gB x4].
// The kernel masks nibble t in place (one AND, no shift) and converts q * 16^t to float, so the activations
// it meets are pre-scaled by 16^-t (a power of two: exact). Nibble 7 is shifted down instead (q * 16^7 would
// overflow a signed int32), so its scale is 1.
constexpr float kNibbleScale[8] = {1.f, 1.f / 16, 1.f / 256, 1.f / 4096, 1.f / 65536, 1.f / 1048576,
                                   1.f / 16777216, 1.f};

struct Segment {
  int64_t b0, b1, ga, gb;
};

template <int M, int R>
inline void int4_block(const uint8_t* W, int64_t ldw, int64_t Kp, int64_t G, const std::vector<Segment>& segs,
                       const float* XP, const float* SX, const float* scales, const uint8_t* zeros,
                       const float* bias, float* Y, int64_t N, int64_t n, LinearPrefetch& pf) {
  // independent FMA chains per (row, activation row); more than ~4 accumulators spill registers (measured,
  // one core: M = 1 with 2 rows x 2 chains beats 2 x 4 and 4 x 1)
  constexpr int C = (M == 1 && R <= 2) ? 2 : 1;
  const int64_t full_blocks = ldw / 32;  // blocks whose 32 bytes all lie inside the row
  __m256 tot[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) tot[r][m] = _mm256_setzero_ps();
  for (const Segment& sg : segs) {
    __m256 acc[R][M][C];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < M; ++m)
        UNROLL for (int c = 0; c < C; ++c) acc[r][m][c] = _mm256_setzero_ps();
    for (int64_t b = sg.b0; b < sg.b1; ++b) {
      pf.upto(reinterpret_cast<const char*>(W + n * ldw + R * b * 32));  // linear position in the block
      UNROLL for (int r = 0; r < R; ++r) {
        const __m256i v = load_block(W, ldw, n + r, b, full_blocks);
        UNROLL for (int t = 0; t < 8; ++t) {
          // nibble t left in place: q * 16^t (exact in fp32: 4 significant bits), the 16^-t is in xp
          const __m256i q = t == 7 ? _mm256_srli_epi32(v, 28) : _mm256_and_si256(v, _mm256_set1_epi32(0xF << (4 * t)));
          const __m256 w = _mm256_cvtepi32_ps(q);
          UNROLL for (int m = 0; m < M; ++m)
            acc[r][m][t % C] = _mm256_fmadd_ps(w, _mm256_loadu_ps(XP + m * Kp + b * 64 + 8 * t), acc[r][m][t % C]);
        }
      }
    }
    UNROLL for (int r = 0; r < R; ++r) {  // the groups' scales once per segment, on the partial sums
      const float sa = scales[(n + r) * G + sg.ga], sb = scales[(n + r) * G + sg.gb];
      const __m256 sv = _mm256_set_m128(_mm_set1_ps(sb), _mm_set1_ps(sa));
      UNROLL for (int m = 0; m < M; ++m) {
        __m256 a = acc[r][m][0];
        UNROLL for (int c = 1; c < C; ++c) a = _mm256_add_ps(a, acc[r][m][c]);
        tot[r][m] = _mm256_fmadd_ps(a, sv, tot[r][m]);
      }
    }
  }
  int4_store<M, R>(tot, scales, zeros, SX, G, bias, Y, N, n);
}

template <int M, int R>
void int4_rows(const uint8_t* W, int64_t ldw, int64_t Kp, int64_t G, const std::vector<Segment>& segs,
               const float* XP, const float* SX, const float* scales, const uint8_t* zeros, const float* bias,
               float* Y, int64_t N, int64_t n0, int64_t n1) {
  LinearPrefetch pf{reinterpret_cast<const char*>(W + n0 * ldw), reinterpret_cast<const char*>(W + n1 * ldw)};
  int64_t n = n0;
  for (; n + R <= n1; n += R) int4_block<M, R>(W, ldw, Kp, G, segs, XP, SX, scales, zeros, bias, Y, N, n, pf);
  for (; n < n1; ++n) int4_block<M, 1>(W, ldw, Kp, G, segs, XP, SX, scales, zeros, bias, Y, N, n, pf);
}


// ---------------------------------------------------------------------------------------------------
// int8 activations (llama.cpp's Q8_0): each activation row is quantized once per call in blocks of 32
// columns, d_b = max|x_b| / 127, xq = round-to-nearest-even(x / d_b) in [-127, 127] (0 where d_b = 0); the
// dot product over a block is exact integer arithmetic (_mm256_maddubs_epi16: u8 x s8 -> s16 pairs, then
// _mm256_madd_epi16 with ones -> s32), converted to fp32 and scaled by d_b with one FMA per 32 weights.
//
// int4: 32 bytes = 64 columns per load, as above; the low nibbles are columns 64b + 2j (j = 0..31), the high
// ones 64b + 2j + 1, so the quantized activations are stored per 64-column block as [32 even columns, 32 odd
// columns]: byte j of each half then lies in 128-bit lane j / 16, i.e. Q8 block 2b (lane 0) or 2b + 1
// (lane 1), and s32 lanes 0-3 / 4-7 of the result belong to those two blocks: they are scaled by
// [d_2b x4, d_2b+1 x4] (precomputed per call). Codes are unsigned 0..15: exactly maddubs' unsigned operand;
// pair sums reach at most 2 * 15 * 127 = 3810 and the sum of the even and odd halves 7620: no saturation.
// Zero points: sum_k s_g (q_k - z_g) xd_k = s_g sum_k q_k xd_k - s_g z_g sum_{k in g} xd_k, with
// xd = d_b * xq the dequantized activation and sum_{k in g} xd_k precomputed per activation row.
//
// int8 (signed codes): the sign trick, maddubs(|w|, sign(xq, w)) = w * xq pairwise (|w|, |xq| <= 127:
// pair sums at most 2 * 127 * 127 = 32258 < 32767), per 32 columns one madd, one convert and one FMA with d_b.
struct ActQ8 {
  std::vector<int8_t> q;  // [M, Kq] quantized activations (int4: permuted per 64-column block)
  std::vector<float> d;   // int8: [M, Kq / 32] block scales; int4: [M, Kq / 64 * 8] lane scales
  int64_t Kq;
};

// Quantize one row x [K] into blocks of 32 (zero-padded to Kq); writes xq [Kq] (natural order) and d [Kq/32].
// Whole blocks are vectorised with the same arithmetic as the scalar tail (an IEEE division by d, rounding to
// nearest with ties to even, a clamp), so both give the codes of quant.q8_0_activations: a decode call used to
// spend ~13 ns an element here, single-threaded before the rows are split (~40 us at K = 3072).
inline void quantize_row_q8(const float* x, int64_t K, int64_t Kq, int8_t* xq, float* d) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes packs' per-lane interleaving
  int64_t b = 0;
  for (; b < K / 32; ++b) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    UNROLL for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + b * 32 + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_and_ps(v[i], abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float db = _mm_cvtss_f32(m4) / 127.f;
    d[b] = db;
    __m256i codes = _mm256_setzero_si256();
    if (db > 0.f) {
      const __m256 dv = _mm256_set1_ps(db);
      __m256i c[4];
      UNROLL for (int i = 0; i < 4; ++i) {
        const __m256 r = _mm256_round_ps(_mm256_div_ps(v[i], dv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c[i] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
      }
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
      codes = _mm256_permutevar8x32_epi32(packed, order);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + b * 32), codes);
  }
  for (; b < Kq / 32; ++b) {  // the last, partial block and the zero padding
    float amax = 0.f;
    for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k) amax = std::max(amax, std::fabs(x[k]));
    const float db = amax / 127.f;
    d[b] = db;
    for (int64_t k = b * 32; k < b * 32 + 32; ++k) {
      float v = (k < K && db > 0.f) ? std::nearbyint(x[k] / db) : 0.f;  // nearest, ties to even (like torch.round)
      v = std::min(127.f, std::max(-127.f, v));
      xq[k] = static_cast<int8_t>(v);
    }
  }
}

// The int4 kernel's Q8_0 activations of 64-column block b: even / odd columns and the 8 lane scales, per row m.
template <int M>
inline void load_q8_block(const ActQ8& A, int64_t nb, int64_t b, __m256i (&xe)[M], __m256i (&xo)[M],
                          __m256 (&dv)[M]) {
  UNROLL for (int m = 0; m < M; ++m) {
    const int8_t* xq = A.q.data() + m * A.Kq + b * 64;
    xe[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq));
    xo[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32));
    dv[m] = _mm256_loadu_ps(A.d.data() + (m * nb + b) * 8);
  }
}

// One 32-byte int4 block (64 columns) against the Q8 activations of that block, for each activation row m:
// low nibbles (even columns) with xe, high ones (odd) with xo, exact integer pair sums (no saturation, see
// above), as fp32 lanes 0-3 (Q8 block 2b) and 4-7 (2b + 1). Shared by both int4 block loops.
template <int M>
inline void int4_q8_products(__m256i v, const __m256i (&xe)[M], const __m256i (&xo)[M], __m256 (&p)[M]) {
  const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_and_si256(v, low4);                        // even columns
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);  // odd columns
  UNROLL for (int m = 0; m < M; ++m) {
    const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe[m]), _mm256_maddubs_epi16(hi, xo[m]));
    p[m] = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
  }
}

template <int M, int R>
inline void int8a8_block(const int8_t* W, int64_t K, const ActQ8& A, const float* scale, const float* bias,
                         float* Y, int64_t N, int64_t n, LinearPrefetch& pf) {
  const int64_t nb = A.Kq / 32, full = K / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const char* block = reinterpret_cast<const char*>(W + n * K);
  for (int64_t b = 0; b < nb; ++b) {
    pf.upto(block + R * b * 32);
    __m256i xv[M];
    __m256 dv[M];
    UNROLL for (int m = 0; m < M; ++m) {
      xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A.q.data() + m * A.Kq + b * 32));
      dv[m] = _mm256_set1_ps(A.d[m * nb + b]);
    }
    UNROLL for (int r = 0; r < R; ++r) {
      const __m256i w = load_block(reinterpret_cast<const uint8_t*>(W), K, n + r, b, full);
      const __m256i wabs = _mm256_sign_epi8(w, w);
      UNROLL for (int m = 0; m < M; ++m) {
        const __m256i p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xv[m], w));
        const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[r][m] = _mm256_fmadd_ps(p, dv[m], acc[r][m]);
      }
    }
  }
  float sums[R][M];  // constant-bound loops only (see int8_block)
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) sums[r][m] = hsum(acc[r][m]);
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m)
      Y[m * N + n + r] = sums[r][m] * scale[n + r] + (bias ? bias[n + r] : 0.f);
}

template <int M, int R>
void int8a8_rows(const int8_t* W, int64_t K, const ActQ8& A, const float* scale, const float* bias, float* Y,
                 int64_t N, int64_t n0, int64_t n1) {
  LinearPrefetch pf{reinterpret_cast<const char*>(W + n0 * K), reinterpret_cast<const char*>(W + n1 * K)};
  int64_t n = n0;
  for (; n + R <= n1; n += R) int8a8_block<M, R>(W, K, A, scale, bias, Y, N, n, pf);
  for (; n < n1; ++n) int8a8_block<M, 1>(W, K, A, scale, bias, Y, N, n, pf);
}

template <int M, int R>
inline void int4a8_block(const uint8_t* W, int64_t ldw, int64_t G, const std::vector<Segment>& segs,
                         const ActQ8& A, const float* SX, const float* scales, const uint8_t* zeros,
                         const float* bias, float* Y, int64_t N, int64_t n, LinearPrefetch& pf) {
  const int64_t full_blocks = ldw / 32, nb = A.Kq / 64;
  __m256 tot[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) tot[r][m] = _mm256_setzero_ps();
  for (const Segment& sg : segs) {
    __m256 acc[R][M];
    UNROLL for (int r = 0; r < R; ++r)
      UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
    for (int64_t b = sg.b0; b < sg.b1; ++b) {
      pf.upto(reinterpret_cast<const char*>(W + n * ldw + R * b * 32));
      __m256i xe[M], xo[M];
      __m256 dv[M];
      load_q8_block<M>(A, nb, b, xe, xo, dv);
      UNROLL for (int r = 0; r < R; ++r) {
        __m256 p[M];
        int4_q8_products<M>(load_block(W, ldw, n + r, b, full_blocks), xe, xo, p);
        UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(p[m], dv[m], acc[r][m]);
      }
    }
    UNROLL for (int r = 0; r < R; ++r) {  // the groups' scales once per segment, on the partial sums
      const float sa = scales[(n + r) * G + sg.ga], sb = scales[(n + r) * G + sg.gb];
      const __m256 sv = _mm256_set_m128(_mm_set1_ps(sb), _mm_set1_ps(sa));
      UNROLL for (int m = 0; m < M; ++m) tot[r][m] = _mm256_fmadd_ps(acc[r][m], sv, tot[r][m]);
    }
  }
  int4_store<M, R>(tot, scales, zeros, SX, G, bias, Y, N, n);
}

// Group size 32: block b holds groups 2b (lanes 0-3) and 2b + 1 (lanes 4-7), so each segment above is one
// block and its bookkeeping (zeroed partial sums, two scalar scale loads, a second FMA) cost as much as the
// block itself. Here the two group scales are one 8-byte load spread to [s_2b x4, s_2b+1 x4] and folded into
// the activations' lane scales: one multiply and one FMA a block (session 10: see BENCHMARKS.md).
template <int M, int R>
inline void int4a8_block_g32(const uint8_t* W, int64_t ldw, int64_t G, const ActQ8& A, const float* SX,
                             const float* scales, const uint8_t* zeros, const float* bias, float* Y, int64_t N,
                             int64_t n, LinearPrefetch& pf) {
  const int64_t full_blocks = ldw / 32, nb = A.Kq / 64;
  const __m256i spread = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 tot[R][M];
  UNROLL for (int r = 0; r < R; ++r)
    UNROLL for (int m = 0; m < M; ++m) tot[r][m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    pf.upto(reinterpret_cast<const char*>(W + n * ldw + R * b * 32));
    __m256i xe[M], xo[M];
    __m256 dv[M];
    load_q8_block<M>(A, nb, b, xe, xo, dv);
    UNROLL for (int r = 0; r < R; ++r) {
      const __m256i v = load_block(W, ldw, n + r, b, full_blocks);
      const float* s = scales + (n + r) * G + 2 * b;
      const __m256 sv = 2 * b + 1 < G  // a last block of only 32 real columns has one group: never read past it
          ? _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s)))), spread)
          : _mm256_set1_ps(s[0]);
      __m256 p[M];  // lanes 0-3: group 2b, 4-7: group 2b + 1
      int4_q8_products<M>(v, xe, xo, p);
      UNROLL for (int m = 0; m < M; ++m) tot[r][m] = _mm256_fmadd_ps(p[m], _mm256_mul_ps(dv[m], sv), tot[r][m]);
    }
  }
  int4_store<M, R>(tot, scales, zeros, SX, G, bias, Y, N, n);
}

template <int M, int R>
void int4a8_rows(const uint8_t* W, int64_t ldw, int64_t G, const std::vector<Segment>& segs, const ActQ8& A,
                 const float* SX, const float* scales, const uint8_t* zeros, const float* bias, float* Y,
                 int64_t N, int64_t n0, int64_t n1, bool g32) {
  LinearPrefetch pf{reinterpret_cast<const char*>(W + n0 * ldw), reinterpret_cast<const char*>(W + n1 * ldw)};
  int64_t n = n0;
  if (g32) {
    for (; n + R <= n1; n += R) int4a8_block_g32<M, R>(W, ldw, G, A, SX, scales, zeros, bias, Y, N, n, pf);
    for (; n < n1; ++n) int4a8_block_g32<M, 1>(W, ldw, G, A, SX, scales, zeros, bias, Y, N, n, pf);
    return;
  }
  for (; n + R <= n1; n += R) int4a8_block<M, R>(W, ldw, G, segs, A, SX, scales, zeros, bias, Y, N, n, pf);
  for (; n < n1; ++n) int4a8_block<M, 1>(W, ldw, G, segs, A, SX, scales, zeros, bias, Y, N, n, pf);
}

// Segments of 64-column blocks sharing the same pair of groups (padding joins the last group).
inline std::vector<Segment> int4_segments(int64_t nb, int64_t group_size, int64_t G) {
  std::vector<Segment> segs;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t ga = b * 64 / group_size, gb = std::min((b * 64 + 32) / group_size, G - 1);
    if (!segs.empty() && segs.back().ga == ga && segs.back().gb == gb) {
      segs.back().b1 = b + 1;
    } else {
      segs.push_back({b, b + 1, ga, gb});
    }
  }
  return segs;
}

}  // namespace

namespace {

void check_common(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                  const c10::optional<torch::Tensor>& bias, int64_t N) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu(), "lmlab gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "lmlab gemv: x must be a contiguous float32 [M, K]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 4, "lmlab gemv: 1 <= M <= 4 rows, got ", x.size(0));
  TORCH_CHECK(qweight.is_contiguous() && scales.is_contiguous() && scales.scalar_type() == torch::kFloat32,
              "lmlab gemv: contiguous qweight and float32 scales expected");
  TORCH_CHECK(scales.size(0) == N, "lmlab gemv: scales rows ", scales.size(0), " != ", N);
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == N,
                "lmlab gemv: bias must be a contiguous float32 [N]");
  }
}

// Shape checks shared by the fp32- and int8-activation entry points.
void check_int8(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                const c10::optional<torch::Tensor>& bias) {
  const int64_t K = x.size(1), N = qweight.size(0);
  check_common(x, qweight, scales, bias, N);
  TORCH_CHECK(qweight.scalar_type() == torch::kInt8 && qweight.size(1) == K, "lmlab gemv: int8 qweight [N, K]");
  TORCH_CHECK(scales.numel() == N, "lmlab gemv: int8 scales must be [N, 1]");
}

struct Int4Shape {
  int64_t G, ldw, nb, Kp;  // groups per row, bytes per row, 64-column blocks, K padded to whole blocks
};

Int4Shape check_int4(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                     const torch::Tensor& qzeros, int64_t group_size, const c10::optional<torch::Tensor>& bias) {
  const int64_t K = x.size(1), N = qweight.size(0);
  check_common(x, qweight, scales, bias, N);
  TORCH_CHECK(group_size > 0 && group_size % 32 == 0, "lmlab gemv: int4 group_size must be a multiple of 32");
  const int64_t G = (K + group_size - 1) / group_size, ldw = (K + 1) / 2, nb = (K + 63) / 64;
  TORCH_CHECK(qweight.scalar_type() == torch::kUInt8 && qweight.size(1) == ldw,
              "lmlab gemv: int4 qweight must be uint8 [N, ceil(K/2)]");
  TORCH_CHECK(scales.size(1) == G && qzeros.scalar_type() == torch::kUInt8 && qzeros.is_contiguous() &&
              qzeros.size(0) == N && qzeros.size(1) == G, "lmlab gemv: int4 scales/qzeros must be [N, G]");
  return {G, ldw, nb, nb * 64};
}

}  // namespace

// y [M, N] = x [M, K] @ (q [N, K] * scale [N, 1])^T + bias
torch::Tensor int8_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                        c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check_int8(x, qweight, scales, bias);
  auto y = torch::empty({M, N}, x.options());
  const int8_t* W = qweight.data_ptr<int8_t>();
  const float* X = x.data_ptr<float>();
  const float* S = scales.data_ptr<float>();
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, kGrainRows, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: int8_rows<1, 8>(W, K, X, S, B, Y, N, n0, n1); break;
      case 2: int8_rows<2, 4>(W, K, X, S, B, Y, N, n0, n1); break;
      case 3: int8_rows<3, 2>(W, K, X, S, B, Y, N, n0, n1); break;
      default: int8_rows<4, 2>(W, K, X, S, B, Y, N, n0, n1); break;
    }
  });
  return y;
}

// y [M, N] = x [M, K] @ ((q - z) * s)^T + bias, groups of `group_size` (a multiple of 32) input columns
torch::Tensor int4_gemv(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales, torch::Tensor qzeros,
                        int64_t group_size, c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  const Int4Shape sh = check_int4(x, qweight, scales, qzeros, group_size, bias);
  const int64_t G = sh.G, ldw = sh.ldw, nb = sh.nb, Kp = sh.Kp;
  // permuted, zero-padded activations [M, Kp] and per-group sums [M, G]
  std::vector<float> xp(M * Kp, 0.f), sx(M * G, 0.f);
  const float* X = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / 64, i = (k % 64) / 8, t = k % 8;
      xp[m * Kp + b * 64 + 8 * t + i] = X[m * K + k] * kNibbleScale[t];
      sx[m * G + k / group_size] += X[m * K + k];
    }
  }
  // segments: runs of blocks whose two halves lie in the same pair of groups
  const std::vector<Segment> segs = int4_segments(nb, group_size, G);
  auto y = torch::empty({M, N}, x.options());
  const uint8_t* W = qweight.data_ptr<uint8_t>();
  const float* S = scales.data_ptr<float>();
  const uint8_t* Z = qzeros.data_ptr<uint8_t>();
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  const float* XP = xp.data();
  const float* SX = sx.data();
  at::parallel_for(0, N, kGrainRows, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: int4_rows<1, 2>(W, ldw, Kp, G, segs, XP, SX, S, Z, B, Y, N, n0, n1); break;
      case 2: int4_rows<2, 1>(W, ldw, Kp, G, segs, XP, SX, S, Z, B, Y, N, n0, n1); break;
      case 3: int4_rows<3, 1>(W, ldw, Kp, G, segs, XP, SX, S, Z, B, Y, N, n0, n1); break;
      default: int4_rows<4, 2>(W, ldw, Kp, G, segs, XP, SX, S, Z, B, Y, N, n0, n1); break;
    }
  });
  return y;
}
// y [M, N] = Q8_0(x) [M, K] @ (q [N, K] * scale [N, 1])^T + bias: int8 activations in blocks of 32 columns
torch::Tensor int8_gemv_a8(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales,
                           c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check_int8(x, qweight, scales, bias);
  ActQ8 A;
  A.Kq = (K + 31) / 32 * 32;
  A.q.assign(M * A.Kq, 0);
  A.d.assign(M * (A.Kq / 32), 0.f);
  const float* X = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) quantize_row_q8(X + m * K, K, A.Kq, A.q.data() + m * A.Kq, A.d.data() + m * (A.Kq / 32));
  auto y = torch::empty({M, N}, x.options());
  const int8_t* W = qweight.data_ptr<int8_t>();
  const float* S = scales.data_ptr<float>();
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, N, kGrainRows, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: int8a8_rows<1, 4>(W, K, A, S, B, Y, N, n0, n1); break;
      case 2: int8a8_rows<2, 4>(W, K, A, S, B, Y, N, n0, n1); break;
      case 3: int8a8_rows<3, 2>(W, K, A, S, B, Y, N, n0, n1); break;
      default: int8a8_rows<4, 2>(W, K, A, S, B, Y, N, n0, n1); break;
    }
  });
  return y;
}

// y [M, N] = Q8_0(x) [M, K] @ ((q - z) * s)^T + bias: int8 activations, groups a multiple of 32 columns
torch::Tensor int4_gemv_a8(torch::Tensor x, torch::Tensor qweight, torch::Tensor scales, torch::Tensor qzeros,
                           int64_t group_size, c10::optional<torch::Tensor> bias) {
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  const Int4Shape sh = check_int4(x, qweight, scales, qzeros, group_size, bias);
  const int64_t G = sh.G, ldw = sh.ldw, nb = sh.nb, Kp = sh.Kp;
  // quantized activations permuted per 64-column block to [even columns, odd columns], lane scales
  // [M, nb, 8] and per-group sums of the dequantized activations [M, G]
  ActQ8 A;
  A.Kq = Kp;
  A.q.assign(M * Kp, 0);
  A.d.assign(M * nb * 8, 0.f);
  std::vector<int8_t> row(Kp);
  std::vector<float> d(Kp / 32), sx(M * G, 0.f);
  const float* X = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    quantize_row_q8(X + m * K, K, Kp, row.data(), d.data());
    int8_t* q = A.q.data() + m * Kp;
    for (int64_t b = 0; b < nb; ++b) {  // each 64 columns: [32 even, 32 odd]
      const int8_t* src = row.data() + b * 64;
      UNROLL for (int j = 0; j < 32; ++j) {
        q[b * 64 + j] = src[2 * j];
        q[b * 64 + 32 + j] = src[2 * j + 1];
      }
      for (int i = 0; i < 8; ++i) A.d[(m * nb + b) * 8 + i] = d[2 * b + i / 4];
    }
    // group sums of the dequantized activations: a Q8 block lies in one group (group_size % 32 == 0) and its
    // codes sum exactly in integers, so sum_{k in g} d_b xq_k = sum over the group's blocks of d_b * sum xq
    for (int64_t c = 0; c * 32 < K; ++c) {
      int32_t isum = 0;
      for (int j = 0; j < 32; ++j) isum += row[c * 32 + j];
      sx[m * G + c * 32 / group_size] += d[c] * float(isum);
    }
  }
  const std::vector<Segment> segs = int4_segments(nb, group_size, G);
  auto y = torch::empty({M, N}, x.options());
  const uint8_t* W = qweight.data_ptr<uint8_t>();
  const float* S = scales.data_ptr<float>();
  const uint8_t* Z = qzeros.data_ptr<uint8_t>();
  const float* B = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  const float* SX = sx.data();
  const bool g32 = group_size == 32;  // the specialised block loop (int4a8_block_g32)
  at::parallel_for(0, N, kGrainRows, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: int4a8_rows<1, 4>(W, ldw, G, segs, A, SX, S, Z, B, Y, N, n0, n1, g32); break;
      case 2: int4a8_rows<2, 2>(W, ldw, G, segs, A, SX, S, Z, B, Y, N, n0, n1, g32); break;
      case 3: int4a8_rows<3, 2>(W, ldw, G, segs, A, SX, S, Z, B, Y, N, n0, n1, g32); break;
      default: int4a8_rows<4, 2>(W, ldw, G, segs, A, SX, S, Z, B, Y, N, n0, n1, g32); break;
    }
  });
  return y;
}

