// Bit-packed binary / ternary convolution on the CPU: XOR + popcount over 64-bit words.
//
// Input activations are sign(x) (0 -> +1) packed along channels: bit 1 = +1, bit 0 = -1,
// one group's channels in ceil(C_g / 64) words per pixel, zero words around the image where
// the conv pads. Weights are two bit-planes per tap: p (1 = +1) and, for ternary, m (1 = non-zero).
// Per output channel and tap, with a the input bits:
//     sum_i a_i t_i = popcount(m) - 2 popcount((a ^ p) & m)      (binary: m = all channels)
// Integer accumulation is exact. A padded tap holds a = 0 bits, which this formula reads as
// -1 inputs contributing -S (S = sum of the tap's weights), whereas the float conv's zero
// padding contributes 0: border pixels add S back for each padded tap (summed once per call for
// each pattern of padded taps and output channel).
// Epilogue per output channel: y = count * scale (rounded), then y * out_scale + bias as
// torch.addcmul computes a quantized layer's folded epilogue: a fused multiply-add where the CPU
// has FMA. The file is built with -ffp-contract=off so the compiler adds no other fusions.
//
// Three compiled paths in this one file, chosen at run time from what the CPU reports (never
// by compiler flags for the whole file): AVX-512 VPOPCNTQ (8 output channels per zmm, 4 pixels
// per call), AVX2 (vpshufb nibble popcount, 8 output channels per pair of ymm registers, 2
// pixels), and a portable kernel (SWAR popcount, no special instructions); the input packing
// and the epilogue have AVX-512 / AVX2 versions too. The SIMD code is built with function-level
// target attributes. Rows of output pixels are split over threads with at::parallel_for; each
// block of 8 output channels' weights stays in L1 while a row's pixels stream past it, read in
// place from the packed image (one run of kw * words words per kernel row when dw == 1, else
// from gathered patches). ``bitconv`` packs and convolves in one call (one dispatch at batch 1).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NS_X86 1
#else
#define NS_X86 0
#endif

namespace {

constexpr int64_t kLanes = 8;  // output channels per weight block

inline int popcount_portable(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((v * 0x0101010101010101ULL) >> 56);
}

struct Geometry {
  int64_t n, groups, hp, wp, words;  // packed input [n, groups, hp, wp, words]
  int64_t cout, cout_g, blocks;      // weight blocks per group of 8 output channels
  int64_t kh, kw, sh, sw, dh, dw, ph, pw, h, w, oh, ow;
  int64_t k() const { return kh * kw * words; }
};

// Where one kernel call's output pixels read their input words: `segs` runs of `len`
// contiguous words, `seg_stride` words apart, from x for the first pixel; each next pixel
// `pixel` words further on. A gathered patch is one run (segs 1, len k, pixel k); read in
// place, a conv with dw == 1 has one run per kernel row: kw * words contiguous words. Run r
// meets the weight words r * len onwards (tap-major: the same order).
struct Src {
  const uint64_t* x;
  int64_t pixel, segs, len, seg_stride;
};

// popcount((x ^ p) & m) over the taps, for 8 output channels of one block and `npix` pixels:
// out[j * os + q] (channel-major, so that the epilogue reads each channel's row in order).
void block_portable(const Src& s, int64_t npix, const uint64_t* p, const uint64_t* m,
                    int32_t* out, int64_t os) {
  for (int64_t q = 0; q < npix; ++q) {
    for (int64_t j = 0; j < kLanes; ++j) {
      int32_t c = 0;
      for (int64_t r = 0; r < s.segs; ++r) {
        const uint64_t* x = s.x + q * s.pixel + r * s.seg_stride;
        const int64_t w0 = r * s.len;
        for (int64_t i = 0; i < s.len; ++i) {
          uint64_t v = x[i] ^ p[(w0 + i) * kLanes + j];
          if (m) v &= m[(w0 + i) * kLanes + j];
          c += popcount_portable(v);
        }
      }
      out[j * os + q] = c;
    }
  }
}

#if NS_X86
__attribute__((target("avx2,popcnt"))) inline __m256i pop_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(v, low));
  __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}

// Two pixels x 8 output channels: 4 ymm byte accumulators, flushed to 64-bit lanes with
// vpsadbw every 31 words (a byte then holds at most 31 * 8 = 248).
__attribute__((target("avx2,popcnt"))) void block_avx2(const Src& s, const uint64_t* p,
                                                       const uint64_t* m, int32_t* out,
                                                       int64_t os) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
  __m256i a00 = zero, a01 = zero, a10 = zero, a11 = zero;
  int since = 0;  // words added to the byte accumulators since their last flush
  for (int64_t r = 0; r < s.segs; ++r) {
    const uint64_t* x0 = s.x + r * s.seg_stride;
    const uint64_t* x1 = x0 + s.pixel;
    const uint64_t* pr = p + r * s.len * kLanes;
    const uint64_t* mr = m ? m + r * s.len * kLanes : nullptr;
    for (int64_t i = 0; i < s.len; ++i) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pr + i * kLanes));
      const __m256i w1 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pr + i * kLanes + 4));
      const __m256i v0 = _mm256_set1_epi64x(static_cast<long long>(x0[i]));
      const __m256i v1 = _mm256_set1_epi64x(static_cast<long long>(x1[i]));
      __m256i v00 = _mm256_xor_si256(v0, w0), v01 = _mm256_xor_si256(v0, w1);
      __m256i v10 = _mm256_xor_si256(v1, w0), v11 = _mm256_xor_si256(v1, w1);
      if (mr) {
        const __m256i m0 =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mr + i * kLanes));
        const __m256i m1 =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(mr + i * kLanes + 4));
        v00 = _mm256_and_si256(v00, m0);
        v01 = _mm256_and_si256(v01, m1);
        v10 = _mm256_and_si256(v10, m0);
        v11 = _mm256_and_si256(v11, m1);
      }
      a00 = _mm256_add_epi8(a00, pop_bytes(v00));
      a01 = _mm256_add_epi8(a01, pop_bytes(v01));
      a10 = _mm256_add_epi8(a10, pop_bytes(v10));
      a11 = _mm256_add_epi8(a11, pop_bytes(v11));
      if (++since == 31) {
        s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(a00, zero));
        s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(a01, zero));
        s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(a10, zero));
        s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(a11, zero));
        a00 = a01 = a10 = a11 = zero;
        since = 0;
      }
    }
  }
  s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(a00, zero));
  s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(a01, zero));
  s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(a10, zero));
  s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(a11, zero));
  alignas(32) int64_t t[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), s00);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 4), s01);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), s10);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 12), s11);
  for (int j = 0; j < 8; ++j) {  // t: pixel 0's 8 channels, then pixel 1's
    out[j * os] = static_cast<int32_t>(t[j]);
    out[j * os + 1] = static_cast<int32_t>(t[8 + j]);
  }
}

// popcount(broadcast(x) ^ w) per 64-bit lane, masked by mm for ternary weights.
__attribute__((target("avx512f,avx512vpopcntdq"))) inline __m512i pop_xor512(uint64_t x,
                                                                          __m512i w) {
  return _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(x)), w));
}
__attribute__((target("avx512f,avx512vpopcntdq"))) inline __m512i pop_xor512(uint64_t x,
                                                                          __m512i w,
                                                                          __m512i mm) {
  return _mm512_popcnt_epi64(_mm512_and_si512(
      _mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(x)), w), mm));
}

// AVX-512 with VPOPCNTQ: 8 output channels in one zmm, 4 pixels (a weight load serves 4
// accumulator chains); 64-bit counts directly.
__attribute__((target("avx512f,avx512vpopcntdq,avx2"))) void block_avx512(
    const Src& s, const uint64_t* p, const uint64_t* m, int32_t* out, int64_t os) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  for (int64_t r = 0; r < s.segs; ++r) {
    const uint64_t* x0 = s.x + r * s.seg_stride;
    const uint64_t *x1 = x0 + s.pixel, *x2 = x1 + s.pixel, *x3 = x2 + s.pixel;
    const uint64_t* pr = p + r * s.len * kLanes;
    if (m) {
      const uint64_t* mr = m + r * s.len * kLanes;
      for (int64_t i = 0; i < s.len; ++i) {
        const __m512i w = _mm512_loadu_si512(pr + i * kLanes);
        const __m512i mm = _mm512_loadu_si512(mr + i * kLanes);
        s0 = _mm512_add_epi64(s0, pop_xor512(x0[i], w, mm));
        s1 = _mm512_add_epi64(s1, pop_xor512(x1[i], w, mm));
        s2 = _mm512_add_epi64(s2, pop_xor512(x2[i], w, mm));
        s3 = _mm512_add_epi64(s3, pop_xor512(x3[i], w, mm));
      }
      continue;
    }
    for (int64_t i = 0; i < s.len; ++i) {
      const __m512i w = _mm512_loadu_si512(pr + i * kLanes);
      s0 = _mm512_add_epi64(s0, pop_xor512(x0[i], w));
      s1 = _mm512_add_epi64(s1, pop_xor512(x1[i], w));
      s2 = _mm512_add_epi64(s2, pop_xor512(x2[i], w));
      s3 = _mm512_add_epi64(s3, pop_xor512(x3[i], w));
    }
  }
  // transpose to channel-major: channel j's 4 pixels are out[j * os .. j * os + 3]
  const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
  const __m512i hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  for (int half = 0; half < 2; ++half) {  // channels 0-3, then 4-7
    const __m512i idx = half ? hi : lo;
    // [p0 c, p1 c, p0 c+1, p1 c+1, ...] and the same for pixels 2, 3, as int32
    const __m256i a = _mm512_cvtepi64_epi32(_mm512_permutex2var_epi64(s0, idx, s1));
    const __m256i c = _mm512_cvtepi64_epi32(_mm512_permutex2var_epi64(s2, idx, s3));
    const __m256i even = _mm256_unpacklo_epi64(a, c);  // channels c, c+2: pixels 0-3 each
    const __m256i odd = _mm256_unpackhi_epi64(a, c);   // channels c+1, c+3
    int32_t* o = out + 4 * half * os;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm256_castsi256_si128(even));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + os), _mm256_castsi256_si128(odd));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 2 * os), _mm256_extracti128_si256(even, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 3 * os), _mm256_extracti128_si256(odd, 1));
  }
}

bool cpu_has(int level) {  // 1: AVX2 + POPCNT, 2: AVX-512F + VPOPCNTDQ, 3: FMA
  __builtin_cpu_init();
  if (level == 3) return __builtin_cpu_supports("fma");
  if (level == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
}
#else
bool cpu_has(int) { return false; }
#endif

// One output channel's row: its counts (cnt, one per pixel) -> the sum over valid taps
// (each pixel adds back its padded taps' weight sum, corr[pid]: 0 inside), then count * scale
// and the layer's epilogue: o = fma(acc * sc, os, bi) with kFma (one rounding for the product
// and sum, as torch.addcmul's vectorized fmadd gives on a CPU with FMA), else multiply, add.
template <bool kFma>
__attribute__((always_inline)) inline void finish_impl(
    const int32_t* cnt, int64_t ow, int32_t t0, const int32_t* pid,
    const int32_t* corr, float sc, const float* os, const float* bi, float* o) {
  // one pass per pixel (an int array written, then read back as vectors, stalls on store
  // forwarding)
  const auto count = [&](int64_t ox) {
    return static_cast<float>(t0 - 2 * cnt[ox] + corr[pid[ox]]) * sc;
  };
  if (os) {
    const float s2 = *os, b2 = *bi;
    for (int64_t ox = 0; ox < ow; ++ox)
      o[ox] = kFma ? __builtin_fmaf(count(ox), s2, b2) : count(ox) * s2 + b2;
  } else if (bi) {
    const float b2 = *bi;
    for (int64_t ox = 0; ox < ow; ++ox) o[ox] = count(ox) + b2;
  } else {
    for (int64_t ox = 0; ox < ow; ++ox) o[ox] = count(ox);
  }
}

#define NS_FINISH_ARGS                                                                    \
  const int32_t *cnt, int64_t ow, int32_t t0, const int32_t *pid,                           \
      const int32_t *corr, float sc, const float *os, const float *bi, float *o
#define NS_FINISH_CALL cnt, ow, t0, pid, corr, sc, os, bi, o
#if NS_X86
// Vectorized 8 wide where the CPU has AVX2 and FMA (results identical: IEEE operations).
__attribute__((target("avx2,fma"))) void finish_avx2(NS_FINISH_ARGS) {
  finish_impl<true>(NS_FINISH_CALL);
}
#endif
// Elsewhere: FMA through the correctly rounded fmaf where the CPU has FMA (torch then fuses).
void finish_fmaf(NS_FINISH_ARGS) { finish_impl<true>(NS_FINISH_CALL); }
void finish_plain(NS_FINISH_ARGS) { finish_impl<false>(NS_FINISH_CALL); }

// Packed output instead of floats: one output channel's row of counts -> its sign bits for the
// next binary layer. The exact sum v = t0 - 2 cnt + corr[pid] (an integer in [-t0, t0]) gives
// bit 1 iff lo <= v <= hi: the interval where the float epilogue and the layers up to the next
// sign (folded BN, hardtanh, ...) give a non-negative value, tabulated once in Python by running
// those very operations on every possible v (monotone in v: an interval). ``rb`` is the row's
// word for this channel (unit stride over pixels); ``uniform``: no padded taps (corr[0] only).
template <bool kUniform>
__attribute__((always_inline)) inline void emit_impl(const int32_t* cnt, int64_t ow, int32_t t0,
                                                     const int32_t* pid, const int32_t* corr,
                                                     int32_t lo, int32_t hi, uint64_t* rb,
                                                     int bit) {
  if (lo > hi) return;
  if (kUniform) {
    // lo <= t0 + c0 - 2 cnt <= hi  <=>  (t0 + c0 - hi) <= 2 cnt <= (t0 + c0 - lo)
    const int32_t a = t0 + corr[0] - hi, b = t0 + corr[0] - lo;
    for (int64_t ox = 0; ox < ow; ++ox) {
      const int32_t c2 = 2 * cnt[ox];
      rb[ox] |= static_cast<uint64_t>(c2 >= a && c2 <= b) << bit;
    }
    return;
  }
  for (int64_t ox = 0; ox < ow; ++ox) {
    const int32_t v = t0 - 2 * cnt[ox] + corr[pid[ox]];
    rb[ox] |= static_cast<uint64_t>(v >= lo && v <= hi) << bit;
  }
}
#define NS_EMIT_ARGS                                                                        \
  const int32_t *cnt, int64_t ow, int32_t t0, const int32_t *pid, const int32_t *corr,       \
      int32_t lo, int32_t hi, uint64_t *rb, int bit, bool uniform
#define NS_EMIT_BODY                                                                        \
  if (uniform)                                                                              \
    emit_impl<true>(cnt, ow, t0, pid, corr, lo, hi, rb, bit);                               \
  else                                                                                      \
    emit_impl<false>(cnt, ow, t0, pid, corr, lo, hi, rb, bit);
#if NS_X86
__attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) void emit_avx512(NS_EMIT_ARGS) {
  NS_EMIT_BODY
}
__attribute__((target("avx2"))) void emit_avx2(NS_EMIT_ARGS) { NS_EMIT_BODY }
#endif
void emit_plain(NS_EMIT_ARGS) { NS_EMIT_BODY }

#if NS_X86
// A whole block at once where nothing pads (1x1 convs and the like): 8 channels' bits go to
// bits [bit, bit + 8) of the same word, 16 pixels per step: two compares per channel, a masked
// OR builds each pixel's byte, one widen and OR into the row's words. Lane j's bit is set iff
// a[j] <= 2 cnt <= b[j] (see emit_impl) and on[j].
__attribute__((target("avx512f,avx512bw,avx512vl,avx2"))) void emit8_avx512(
    const int32_t* cnt, int64_t cs, int64_t ow, const int32_t* a, const int32_t* b,
    const bool* on, uint64_t* rb, int bit) {
  for (int64_t ox = 0; ox < ow; ox += 16) {
    const int64_t left = std::min<int64_t>(16, ow - ox);
    const __mmask16 valid = static_cast<__mmask16>((1u << left) - 1);
    __m512i acc = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      if (!on[j]) continue;
      const __m512i c = _mm512_maskz_loadu_epi32(valid, cnt + j * cs + ox);
      const __m512i c2 = _mm512_add_epi32(c, c);
      const __mmask16 k = _mm512_cmp_epi32_mask(c2, _mm512_set1_epi32(a[j]), _MM_CMPINT_NLT) &
                          _mm512_cmp_epi32_mask(c2, _mm512_set1_epi32(b[j]), _MM_CMPINT_LE) &
                          valid;
      acc = _mm512_mask_or_epi32(acc, k, acc, _mm512_set1_epi32(1 << j));
    }
    const __m512i lo = _mm512_slli_epi64(
        _mm512_cvtepu32_epi64(_mm512_castsi512_si256(acc)), static_cast<unsigned>(bit));
    const __m512i hi = _mm512_slli_epi64(
        _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(acc, 1)), static_cast<unsigned>(bit));
    const __mmask8 v0 = static_cast<__mmask8>(valid), v1 = static_cast<__mmask8>(valid >> 8);
    _mm512_mask_storeu_epi64(rb + ox, v0,
                             _mm512_or_si512(_mm512_maskz_loadu_epi64(v0, rb + ox), lo));
    _mm512_mask_storeu_epi64(rb + ox + 8, v1,
                             _mm512_or_si512(_mm512_maskz_loadu_epi64(v1, rb + ox + 8), hi));
  }
}
#endif

// Where a conv writes packed sign bits instead of floats (see emit_impl): per output channel the
// interval [lo, hi], and the layout the next layer reads: [N, groups, oh + 2 ph, ow + 2 pw,
// words] (its groups; zero words where it pads).
struct Emit {
  const int32_t* lo;
  const int32_t* hi;
  int64_t groups, ph, pw;
};

enum Path : int64_t { kAuto = 0, kPortable = 1, kAvx2 = 2, kAvx512 = 3 };

// The best path this CPU has, or the one asked for (ValueError-like check when it lacks it).
int64_t choose_path(int64_t asked) {
  if (asked == kAuto) return cpu_has(2) ? kAvx512 : cpu_has(1) ? kAvx2 : kPortable;
  TORCH_CHECK(asked == kPortable || (asked == kAvx2 && cpu_has(1)) ||
                  (asked == kAvx512 && cpu_has(2)),
              "kernel path ", asked, " is not available on this CPU");
  return asked;
}

// Copy the kh x kw taps of output pixel (oy, ox) into one contiguous patch of k() words.
inline void gather(const uint64_t* img, const Geometry& g, int64_t oy, int64_t ox,
                   uint64_t* patch) {
  for (int64_t a = 0; a < g.kh; ++a) {
    const int64_t y = oy * g.sh + a * g.dh;
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t x = ox * g.sw + b * g.dw;
      std::memcpy(patch, img + (y * g.wp + x) * g.words, g.words * sizeof(uint64_t));
      patch += g.words;
    }
  }
}

// The taps of output pixel (oy, ox) that fall on zero padding.
inline void padded_taps(const Geometry& g, int64_t oy, int64_t ox, std::vector<int64_t>& taps) {
  taps.clear();
  for (int64_t a = 0; a < g.kh; ++a) {
    const int64_t y = oy * g.sh + a * g.dh;
    const bool row_in = y >= g.ph && y < g.ph + g.h;
    for (int64_t b = 0; b < g.kw; ++b) {
      const int64_t x = ox * g.sw + b * g.dw;
      if (!(row_in && x >= g.pw && x < g.pw + g.w)) taps.push_back(a * g.kw + b);
    }
  }
}

at::Tensor conv(const at::Tensor& xp, const at::Tensor& p, const at::Tensor& m,
                const at::Tensor& total, const at::Tensor& tap_sum, const at::Tensor& alpha,
                const at::Tensor& out_scale, const at::Tensor& bias,
                std::vector<int64_t> kernel, std::vector<int64_t> stride,
                std::vector<int64_t> dilation, std::vector<int64_t> padding,
                std::vector<int64_t> in_size, int64_t path, const Emit* emit = nullptr) {
  TORCH_CHECK(xp.dim() == 5 && xp.scalar_type() == at::kLong && xp.is_contiguous(),
              "packed input must be a contiguous int64 [N, G, Hp, Wp, words] tensor");
  TORCH_CHECK(p.dim() == 4 && p.scalar_type() == at::kLong && p.is_contiguous() &&
                  p.size(3) == kLanes,
              "packed weight must be a contiguous int64 [G, blocks, K, 8] tensor");
  const bool ternary = m.numel() > 0;
  TORCH_CHECK(!ternary || (m.sizes() == p.sizes() && m.is_contiguous() &&
                           m.scalar_type() == at::kLong),
              "the mask plane must match the sign plane");
  Geometry g{};
  g.n = xp.size(0); g.groups = xp.size(1); g.hp = xp.size(2); g.wp = xp.size(3);
  g.words = xp.size(4);
  g.cout = total.size(0); g.cout_g = g.cout / g.groups; g.blocks = p.size(1);
  g.kh = kernel[0]; g.kw = kernel[1]; g.sh = stride[0]; g.sw = stride[1];
  g.dh = dilation[0]; g.dw = dilation[1]; g.ph = padding[0]; g.pw = padding[1];
  g.h = in_size[0]; g.w = in_size[1];
  g.oh = (g.hp - (g.kh - 1) * g.dh - 1) / g.sh + 1;
  g.ow = (g.wp - (g.kw - 1) * g.dw - 1) / g.sw + 1;
  TORCH_CHECK(p.size(0) == g.groups && p.size(2) == g.k() && g.blocks * kLanes >= g.cout_g &&
                  g.oh > 0 && g.ow > 0,
              "packed weight shape does not match the packed input and kernel size");
  TORCH_CHECK(total.scalar_type() == at::kInt && tap_sum.scalar_type() == at::kInt &&
                  alpha.scalar_type() == at::kFloat && tap_sum.numel() == g.cout * g.kh * g.kw &&
                  alpha.numel() == g.cout,
              "per-channel tensors: total int32 [C], tap_sum int32 [C, kh*kw], alpha float [C]");
  TORCH_CHECK((out_scale.numel() == 0 || out_scale.numel() == g.cout) &&
                  (bias.numel() == 0 || bias.numel() == g.cout) &&
                  (out_scale.numel() == 0 || bias.numel() == g.cout) &&
                  (out_scale.numel() == 0 || out_scale.scalar_type() == at::kFloat) &&
                  (bias.numel() == 0 || bias.scalar_type() == at::kFloat),
              "epilogue: out_scale and bias are empty or float [C] (out_scale needs a bias)");
  // packed sign bits for the next binary layer (emit), else floats
  const int64_t ewords = emit ? (g.cout / emit->groups + 63) / 64 : 0;
  const int64_t ehp = emit ? g.oh + 2 * emit->ph : 0, ewp = emit ? g.ow + 2 * emit->pw : 0;
  TORCH_CHECK(!emit || (emit->groups >= 1 && g.cout % emit->groups == 0 && emit->ph >= 0 &&
                        emit->pw >= 0),
              "packed output: its groups must divide the output channels");
  auto out = !emit ? at::empty({g.n, g.cout, g.oh, g.ow}, xp.options().dtype(at::kFloat))
                   : (emit->ph || emit->pw)
                   ? at::zeros({g.n, emit->groups, ehp, ewp, ewords}, xp.options())
                   : at::empty({g.n, emit->groups, ehp, ewp, ewords}, xp.options());
  const int64_t kpath = choose_path(path);
  const bool fma = cpu_has(3);
  const auto* xdata = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  const auto* pdata = reinterpret_cast<const uint64_t*>(p.data_ptr<int64_t>());
  const auto* mdata = ternary ? reinterpret_cast<const uint64_t*>(m.data_ptr<int64_t>()) : nullptr;
  const int32_t* tot = total.data_ptr<int32_t>();
  const int32_t* tsum = tap_sum.data_ptr<int32_t>();
  const float* al = alpha.data_ptr<float>();
  float* odata = emit ? nullptr : out.data_ptr<float>();
  uint64_t* edata = emit ? reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>()) : nullptr;
  const int64_t ecg = emit ? g.cout / emit->groups : 0;  // channels per group of the next layer
  const float* osd = out_scale.numel() ? out_scale.data_ptr<float>() : nullptr;
  const float* bd = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t k = g.k(), rows = g.n * g.oh, plane = g.oh * g.ow, ntaps = g.kh * g.kw;
  const int64_t step = kpath == kAvx512 ? 4 : 2;  // output pixels per kernel call
  // pixels [0, gathered) of a row are read in place: one run of kw * words contiguous words per
  // kernel row needs dw == 1; the rest (and everything when dw > 1) from gathered patches
  const int64_t gathered = g.dw == 1 ? g.ow / step * step : 0;
  // the taps of each output pixel that fall on padding, the same for every image, found once:
  // each pixel's set of them (its pattern: 9 for a 3x3 conv with padding 1, the first one
  // empty) and per output channel and pattern the weight sum those taps give back
  // A pixel's padded taps are those in the kernel rows that fall off the image for its output
  // row, or in the kernel columns that do for its column: a pattern is a pair (row class,
  // column class), its weight sum Rsum + Csum - (taps in both), found in O(rows + columns).
  std::vector<int32_t> pid(plane);
  int64_t npat = 1;
  std::vector<int32_t> corr;
  if (g.kh <= 64 && g.kw <= 64) {
    const auto classes = [](int64_t outs, int64_t taps, int64_t stride, int64_t dil,
                            int64_t pad, int64_t size, std::vector<uint64_t>& masks,
                            std::vector<int32_t>& cls) {
      masks.assign(1, 0);  // class 0: no padded tap
      cls.resize(outs);
      for (int64_t o = 0; o < outs; ++o) {
        uint64_t mask = 0;
        for (int64_t a = 0; a < taps; ++a) {
          const int64_t y = o * stride + a * dil;
          if (y < pad || y >= pad + size) mask |= 1ULL << a;
        }
        const auto found = std::find(masks.begin(), masks.end(), mask);
        cls[o] = static_cast<int32_t>(found - masks.begin());
        if (found == masks.end()) masks.push_back(mask);
      }
    };
    std::vector<uint64_t> rmask, cmask;
    std::vector<int32_t> rcls, ccls;
    classes(g.oh, g.kh, g.sh, g.dh, g.ph, g.h, rmask, rcls);
    classes(g.ow, g.kw, g.sw, g.dw, g.pw, g.w, cmask, ccls);
    const int64_t nr = static_cast<int64_t>(rmask.size()), nc = static_cast<int64_t>(cmask.size());
    npat = nr * nc;
    for (int64_t i = 0; i < plane; ++i) pid[i] = static_cast<int32_t>(rcls[i / g.ow] * nc + ccls[i % g.ow]);
    corr.assign(g.cout * npat, 0);
    std::vector<int32_t> rs(nr), cs(nc);
    for (int64_t ch = 0; ch < g.cout; ++ch) {
      const int32_t* ts = tsum + ch * ntaps;
      std::fill(rs.begin(), rs.end(), 0);
      std::fill(cs.begin(), cs.end(), 0);
      for (int64_t a = 0; a < g.kh; ++a)
        for (int64_t b = 0; b < g.kw; ++b) {
          for (int64_t r = 1; r < nr; ++r) rs[r] += (rmask[r] >> a & 1) ? ts[a * g.kw + b] : 0;
          for (int64_t c = 1; c < nc; ++c) cs[c] += (cmask[c] >> b & 1) ? ts[a * g.kw + b] : 0;
        }
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < nc; ++c) {
          int32_t both = 0;
          for (int64_t a = 0; a < g.kh && r && c; ++a) {
            if (!(rmask[r] >> a & 1)) continue;
            for (int64_t b = 0; b < g.kw; ++b)
              if (cmask[c] >> b & 1) both += ts[a * g.kw + b];
          }
          corr[ch * npat + r * nc + c] = rs[r] + cs[c] - both;
        }
    }
  } else {  // kernels wider than 64 taps: each pixel's list of padded taps
    std::vector<std::vector<int64_t>> patterns(1);
    std::vector<int64_t> taps;
    for (int64_t i = 0; i < plane; ++i) {
      padded_taps(g, i / g.ow, i % g.ow, taps);
      const auto found = std::find(patterns.begin(), patterns.end(), taps);
      pid[i] = static_cast<int32_t>(found - patterns.begin());
      if (found == patterns.end()) patterns.push_back(taps);
    }
    npat = static_cast<int64_t>(patterns.size());
    corr.assign(g.cout * npat, 0);
    for (int64_t ch = 0; ch < g.cout; ++ch)
      for (int64_t q = 0; q < npat; ++q)
        for (int64_t t : patterns[q]) corr[ch * npat + q] += tsum[ch * ntaps + t];
  }
#if NS_X86
  const auto finish = fma ? (cpu_has(1) ? finish_avx2 : finish_fmaf) : finish_plain;
  const auto emit_row = kpath == kAvx512 ? emit_avx512 : kpath == kAvx2 ? emit_avx2 : emit_plain;
#else
  const auto finish = finish_plain;
  const auto emit_row = emit_plain;
#endif
  const bool uniform = npat == 1;
  // rows are handed out one at a time (a shared counter) rather than in one fixed share per
  // thread: where another process holds a core, the thread that runs takes the rows the other
  // has not started (batch 1 has few rows; results do not depend on who computes a row)
  std::atomic<int64_t> next_row{0};
  at::parallel_for(0, rows, 1, [&](int64_t, int64_t) {
    // one row of output pixels: every pixel's patch (plus a spare for an odd count), and one
    // block's counts for the whole row
    std::vector<uint64_t> patches((g.ow + step - 1) * k);
    const int64_t cs = g.ow + step - 1;  // counts per channel row (a partial step's spares)
    std::vector<int32_t> cnt(cs * kLanes);
    // emit: the row's packed words, word-major ([group][word][pixel], unit stride per channel)
    std::vector<uint64_t> rbits(emit ? emit->groups * ewords * g.ow : 0);
    for (int64_t row = next_row++; row < rows; row = next_row++) {
      const int64_t ni = row / g.oh, oy = row % g.oh;
      const int32_t* row_pid = pid.data() + oy * g.ow;
      std::fill(rbits.begin(), rbits.end(), 0);
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const uint64_t* img = xdata + (ni * g.groups + gi) * g.hp * g.wp * g.words;
        // read in place where it can (full steps, dw == 1); gather the other pixels' patches,
        // plus spare copies for a partial last step
        for (int64_t ox = gathered; ox < g.ow; ++ox)
          gather(img, g, oy, ox, patches.data() + ox * k);
        for (int64_t ox = g.ow; ox % step; ++ox)
          std::memcpy(patches.data() + ox * k, patches.data() + gathered * k,
                      k * sizeof(uint64_t));
        const uint64_t* row_in = img + oy * g.sh * g.wp * g.words;
        for (int64_t blk = 0; blk < g.blocks; ++blk) {
          const uint64_t* pb = pdata + (gi * g.blocks + blk) * k * kLanes;
          const uint64_t* mb = mdata ? mdata + (gi * g.blocks + blk) * k * kLanes : nullptr;
          const int64_t c0 = gi * g.cout_g + blk * kLanes;  // first output channel
          const int64_t lanes = std::min<int64_t>(kLanes, (gi + 1) * g.cout_g - c0);
          for (int64_t ox = 0; ox < g.ow; ox += step) {
            const Src src = ox < gathered
                ? Src{row_in + ox * g.sw * g.words, g.sw * g.words, g.kh, g.kw * g.words,
                      g.dh * g.wp * g.words}
                : Src{patches.data() + ox * k, k, 1, k, 0};
            int32_t* c = cnt.data() + ox;
            switch (kpath) {
#if NS_X86
              case kAvx512: block_avx512(src, pb, mb, c, cs); break;
              case kAvx2: block_avx2(src, pb, mb, c, cs); break;
#endif
              default: block_portable(src, step, pb, mb, c, cs);
            }
          }
          // the sum over valid taps, then the float epilogue, one output channel at a time
#if NS_X86
          // a full block, no padding, its 8 bits in one byte of one word: all at once
          if (emit && uniform && kpath == kAvx512 && lanes == kLanes &&
              (c0 % ecg) % 64 <= 56 && (c0 + kLanes - 1) / ecg == c0 / ecg) {
            int32_t a8[kLanes], b8[kLanes];
            bool on[kLanes];
            for (int64_t j = 0; j < kLanes; ++j) {
              const int64_t ch = c0 + j;
              a8[j] = tot[ch] + corr[ch * npat] - emit->hi[ch];
              b8[j] = tot[ch] + corr[ch * npat] - emit->lo[ch];
              on[j] = emit->lo[ch] <= emit->hi[ch];
            }
            const int64_t eg = c0 / ecg, eb = c0 % ecg;
            emit8_avx512(cnt.data(), cs, g.ow, a8, b8, on,
                         rbits.data() + (eg * ewords + eb / 64) * g.ow,
                         static_cast<int>(eb % 64));
            continue;
          }
#endif
          for (int64_t j = 0; j < lanes && emit; ++j) {
            const int64_t ch = c0 + j, eg = ch / ecg, eb = ch % ecg;
            emit_row(cnt.data() + j * cs, g.ow, tot[ch], row_pid, corr.data() + ch * npat,
                     emit->lo[ch], emit->hi[ch],
                     rbits.data() + (eg * ewords + eb / 64) * g.ow, static_cast<int>(eb % 64),
                     uniform);
          }
          for (int64_t j = 0; j < lanes && !emit; ++j) {
            const int64_t ch = c0 + j;
            finish(cnt.data() + j * cs, g.ow, tot[ch], row_pid, corr.data() + ch * npat,
                   al[ch], osd ? osd + ch : nullptr, bd ? bd + ch : nullptr,
                   odata + (ni * g.cout + ch) * plane + oy * g.ow);
          }
        }
      }
      if (!emit) continue;
      for (int64_t eg = 0; eg < emit->groups; ++eg) {
        uint64_t* o = edata + (((ni * emit->groups + eg) * ehp + oy + emit->ph) * ewp + emit->pw) *
                                  ewords;
        for (int64_t wi = 0; wi < ewords; ++wi) {
          const uint64_t* r = rbits.data() + (eg * ewords + wi) * g.ow;
          for (int64_t ox = 0; ox < g.ow; ++ox) o[ox * ewords + wi] = r[ox];
        }
      }
    }
  });
  return out;
}

// sign bits of channels [c0, c1) of one image (channel c's plane at src + c * stride, its
// first hw floats; channel c at bit c - c0) into word[0..hw): bit 1 where !(x < 0) (0 and NaN
// -> +1). word holds hw rounded up to 16.
void sign_word_portable(const float* src, int64_t stride, int64_t c0, int64_t c1, int64_t hw, uint64_t* word) {
  std::fill(word, word + hw, 0);
  for (int64_t ci = c0; ci < c1; ++ci) {
    const float* s = src + ci * stride;
    const uint64_t bit = ci - c0;
    for (int64_t i = 0; i < hw; ++i) word[i] |= static_cast<uint64_t>(!(s[i] < 0.0f)) << bit;
  }
}

#if NS_X86
// Channel by channel (each plane read in order), 16 pixels at a time: one compare gives their
// sign bits, a masked OR sets the channel's bit in their 16 words. The tail loads zeros, whose
// words (beyond hw) are not used.
__attribute__((target("avx512f"))) void sign_word_avx512(const float* src, int64_t stride,
                                                         int64_t c0, int64_t c1, int64_t hw,
                                                         uint64_t* word) {
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 tail = static_cast<__mmask16>((1u << (hw % 16)) - 1);
  std::fill(word, word + (hw + 15) / 16 * 16, 0);
  for (int64_t ci = c0; ci < c1; ++ci) {
    const float* s = src + ci * stride;
    const __m512i b = _mm512_set1_epi64(static_cast<long long>(1ULL << (ci - c0)));
    for (int64_t i = 0; i < hw; i += 16) {
      const __m512 v = hw - i >= 16 ? _mm512_loadu_ps(s + i) : _mm512_maskz_loadu_ps(tail, s + i);
      const __mmask16 k = _mm512_cmp_ps_mask(v, zero, _CMP_NLT_UQ);
      __m512i a0 = _mm512_loadu_si512(word + i), a1 = _mm512_loadu_si512(word + i + 8);
      a0 = _mm512_mask_or_epi64(a0, static_cast<__mmask8>(k), a0, b);
      a1 = _mm512_mask_or_epi64(a1, static_cast<__mmask8>(k >> 8), a1, b);
      _mm512_storeu_si512(word + i, a0);
      _mm512_storeu_si512(word + i + 8, a1);
    }
  }
}

// The same, 8 pixels at a time: the compare's 32-bit lane masks widened to 64 bits select the
// channel's bit; the last hw % 8 pixels one by one.
__attribute__((target("avx2"))) void sign_word_avx2(const float* src, int64_t stride, int64_t c0,
                                                     int64_t c1, int64_t hw, uint64_t* word) {
  const __m256 zero = _mm256_setzero_ps();
  const int64_t full = hw / 8 * 8;
  std::fill(word, word + hw, 0);
  for (int64_t ci = c0; ci < c1; ++ci) {
    const float* s = src + ci * stride;
    const uint64_t bit = 1ULL << (ci - c0);
    const __m256i b = _mm256_set1_epi64x(static_cast<long long>(bit));
    for (int64_t i = 0; i < full; i += 8) {
      const __m256i c = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(s + i), zero,
                                                          _CMP_NLT_UQ));
      auto* w0 = reinterpret_cast<__m256i*>(word + i);
      auto* w1 = reinterpret_cast<__m256i*>(word + i + 4);
      _mm256_storeu_si256(w0, _mm256_or_si256(_mm256_loadu_si256(w0), _mm256_and_si256(
                                  _mm256_cvtepi32_epi64(_mm256_castsi256_si128(c)), b)));
      _mm256_storeu_si256(w1, _mm256_or_si256(_mm256_loadu_si256(w1), _mm256_and_si256(
                                  _mm256_cvtepi32_epi64(_mm256_extracti128_si256(c, 1)), b)));
    }
    for (int64_t i = full; i < hw; ++i) word[i] |= static_cast<uint64_t>(!(s[i] < 0.0f)) * bit;
  }
}
#endif

// sign(x) (0 and NaN -> +1) packed along each group's channels, zero-padded around the image.
at::Tensor pack_input(const at::Tensor& x_in, int64_t groups, int64_t ph, int64_t pw,
                      int64_t path) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat,
              "pack_input takes a float32 [N, C, H, W] tensor");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(groups >= 1 && c % groups == 0, "channels must divide into groups");
  const int64_t cg = c / groups, words = (cg + 63) / 64, hp = h + 2 * ph, wp = w + 2 * pw;
  const int64_t hw = h * w;
  const int64_t kpath = choose_path(path);
  // only the padding needs zeros: a padded output is zero-filled, an unpadded one written whole
  auto out = (ph || pw) ? at::zeros({n, groups, hp, wp, words}, x.options().dtype(at::kLong))
                        : at::empty({n, groups, hp, wp, words}, x.options().dtype(at::kLong));
  const float* xd = x.data_ptr<float>();
  auto* od = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  // fewer images than threads (batch 1): a large image is split into runs of pixels too (below
  // ~2^17 floats waking the other threads cost what they saved, measured on 2 cores)
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = n * groups >= threads || cg * hw < (1 << 17) ? 1
                         : std::max<int64_t>(1, std::min<int64_t>(hw / 64, 2 * threads));
  const int64_t run = ((hw + chunks - 1) / chunks + 15) / 16 * 16;  // pixels per chunk
  at::parallel_for(0, n * groups * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> word(run + 16);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t ng = item / chunks, i0 = item % chunks * run;
      const int64_t len = std::min<int64_t>(run, hw - i0);
      if (len <= 0) continue;
      const float* src = xd + ng * cg * hw + i0;
      uint64_t* dst = od + ng * hp * wp * words;
      for (int64_t wi = 0; wi < words; ++wi) {
        const int64_t c0 = wi * 64, c1 = std::min<int64_t>(cg, c0 + 64);
        switch (kpath) {
#if NS_X86
          case kAvx512: sign_word_avx512(src, hw, c0, c1, len, word.data()); break;
          case kAvx2: sign_word_avx2(src, hw, c0, c1, len, word.data()); break;
#endif
          default: sign_word_portable(src, hw, c0, c1, len, word.data());
        }
        if (words == 1 && ph == 0 && pw == 0) {
          std::memcpy(dst + i0, word.data(), len * sizeof(uint64_t));
          continue;
        }
        int64_t y = i0 / w, xx = i0 % w;
        for (int64_t i = 0; i < len; ++i) {
          dst[((y + ph) * wp + xx + pw) * words + wi] = word[i];
          if (++xx == w) xx = 0, ++y;
        }
      }
    }
  });
  return out;
}

// Max-pooling of sign(x) on packed words: the max of +-1 values is the OR of their bits, and
// sign commutes with max (it is non-decreasing), so pooling the packed signs equals packing the
// pooled floats. Pool padding never wins a max (it is -inf): those positions are skipped. The
// result is zero-padded by (ph, pw) for the conv that reads it.
// With ``and_mask`` (int64 [G, words], or empty): the channels whose bits are set there are
// AND-pooled instead (min of signs): where the layers between the pool and the next sign are
// non-increasing (a BatchNorm with a negative scale), sign(f(max x)) = min sign(f(x)).
at::Tensor or_pool(const at::Tensor& xp, int64_t k, int64_t s, int64_t p, int64_t ph,
                   int64_t pw, const at::Tensor& and_mask) {
  TORCH_CHECK(xp.dim() == 5 && xp.scalar_type() == at::kLong && xp.is_contiguous(),
              "or_pool takes a contiguous int64 [N, G, H, W, words] tensor");
  TORCH_CHECK(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "pool: kernel >= 1, stride >= 1, "
              "0 <= padding <= kernel / 2");
  const int64_t n = xp.size(0), groups = xp.size(1), h = xp.size(2), w = xp.size(3);
  const int64_t words = xp.size(4);
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  TORCH_CHECK(oh > 0 && ow > 0, "pool window larger than the padded input");
  const int64_t hp = oh + 2 * ph, wp = ow + 2 * pw;
  TORCH_CHECK(and_mask.numel() == 0 ||
                  (and_mask.numel() == groups * words && and_mask.scalar_type() == at::kLong &&
                   and_mask.is_contiguous()),
              "and_mask: empty or a contiguous int64 tensor of groups * words words");
  const auto* amask =
      and_mask.numel() ? reinterpret_cast<const uint64_t*>(and_mask.data_ptr<int64_t>()) : nullptr;
  auto out = at::zeros({n, groups, hp, wp, words}, xp.options());
  const auto* src = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  auto* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, n * groups * oh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t img = r / oh, oy = r % oh;
      const uint64_t* in = src + img * h * w * words;
      uint64_t* o = dst + ((img * hp + oy + ph) * wp + pw) * words;
      const int64_t y0 = std::max<int64_t>(oy * s - p, 0);
      const int64_t y1 = std::min<int64_t>(oy * s - p + k, h);
      for (int64_t ox = 0; ox < ow; ++ox) {
        const int64_t x0 = std::max<int64_t>(ox * s - p, 0);
        const int64_t x1 = std::min<int64_t>(ox * s - p + k, w);
        for (int64_t wi = 0; wi < words; ++wi) {
          uint64_t v = 0, a = ~0ULL;
          for (int64_t y = y0; y < y1; ++y)
            for (int64_t x = x0; x < x1; ++x) {
              v |= in[(y * w + x) * words + wi];
              a &= in[(y * w + x) * words + wi];
            }
          if (amask) {
            const uint64_t am = amask[(img % groups) * words + wi];
            v = (v & ~am) | (a & am);
          }
          o[ox * words + wi] = v;
        }
      }
    }
  });
  return out;
}

// The whole layer in one call (one dispatch: what batch 1 wants): pack sign(x) (optionally
// pooled first: ``pool`` = {kernel, stride, padding} or empty, OR per bit, AND where
// ``pool_and`` has it set), then the conv. ``x`` is a float [N, C, H, W] tensor, or bits a
// previous conv emitted ([N, G, H, W, words]: padded for this conv already unless it pools).
// With ``lo`` / ``hi`` (int32 [C], else empty) the output is packed bits for the next binary
// layer (``out_groups``, ``out_pad``: its groups and padding), see emit_impl.
at::Tensor bitconv(const at::Tensor& x, const at::Tensor& p, const at::Tensor& m,
                   const at::Tensor& total, const at::Tensor& tap_sum, const at::Tensor& alpha,
                   const at::Tensor& out_scale, const at::Tensor& bias,
                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                   std::vector<int64_t> dilation, std::vector<int64_t> padding, int64_t groups,
                   std::vector<int64_t> pool, const at::Tensor& pool_and, const at::Tensor& lo,
                   const at::Tensor& hi, int64_t out_groups, std::vector<int64_t> out_pad,
                   int64_t path) {
  TORCH_CHECK(padding.size() == 2 && (pool.empty() || pool.size() == 3),
              "padding is [ph, pw]; pool is empty or [kernel, stride, padding]");
  const int64_t ph = padding[0], pw = padding[1];
  const bool packed = x.scalar_type() == at::kLong;
  TORCH_CHECK(!packed || (x.dim() == 5 && x.size(1) == groups && x.is_contiguous()),
              "packed input must be a contiguous int64 [N, groups, H, W, words] tensor");
  at::Tensor xp;
  if (pool.empty()) {
    xp = packed ? x : pack_input(x, groups, ph, pw, path);
  } else {
    xp = or_pool(packed ? x : pack_input(x, groups, 0, 0, path), pool[0], pool[1], pool[2], ph,
                 pw, pool_and);
  }
  TORCH_CHECK(xp.size(2) > 2 * ph && xp.size(3) > 2 * pw, "packed input smaller than its padding");
  Emit emit{};
  if (lo.numel()) {
    TORCH_CHECK(lo.scalar_type() == at::kInt && hi.scalar_type() == at::kInt &&
                    lo.numel() == total.numel() && hi.numel() == total.numel() &&
                    lo.is_contiguous() && hi.is_contiguous() && out_pad.size() == 2,
                "packed output: lo and hi are int32 [C], out_pad is [ph, pw]");
    emit = Emit{lo.data_ptr<int32_t>(), hi.data_ptr<int32_t>(), out_groups, out_pad[0],
                out_pad[1]};
  }
  return conv(xp, p, m, total, tap_sum, alpha, out_scale, bias, std::move(kernel),
              std::move(stride), std::move(dilation), std::move(padding),
              {xp.size(2) - 2 * ph, xp.size(3) - 2 * pw}, path, lo.numel() ? &emit : nullptr);
}

// The float epilogue of a conv for given exact sums: v int32 [C, K] (row c: values of output
// channel c) -> float [C, K], through the very function the conv's rows go through. What the
// Python side tabulates a packed output's intervals from.
at::Tensor epilogue(const at::Tensor& v_in, const at::Tensor& alpha, const at::Tensor& out_scale,
                    const at::Tensor& bias) {
  const at::Tensor v = v_in.contiguous();
  TORCH_CHECK(v.dim() == 2 && v.scalar_type() == at::kInt && alpha.scalar_type() == at::kFloat &&
                  alpha.numel() == v.size(0) &&
                  (out_scale.numel() == 0 || (out_scale.numel() == v.size(0) &&
                                              bias.numel() == v.size(0))) &&
                  (bias.numel() == 0 || bias.numel() == v.size(0)),
              "epilogue: v int32 [C, K], alpha float [C], out_scale / bias empty or float [C]");
  const int64_t c = v.size(0), kk = v.size(1);
  auto out = at::empty({c, kk}, v.options().dtype(at::kFloat));
  std::vector<int32_t> pid(kk), zeros(kk, 0);
  for (int64_t i = 0; i < kk; ++i) pid[i] = static_cast<int32_t>(i);
#if NS_X86
  const auto finish =
      cpu_has(3) ? (cpu_has(1) ? finish_avx2 : finish_fmaf) : finish_plain;
#else
  const auto finish = finish_plain;
#endif
  const float* osd = out_scale.numel() ? out_scale.data_ptr<float>() : nullptr;
  const float* bd = bias.numel() ? bias.data_ptr<float>() : nullptr;
  for (int64_t ch = 0; ch < c; ++ch)
    finish(zeros.data(), kk, 0, pid.data(), v.data_ptr<int32_t>() + ch * kk,
           alpha.data_ptr<float>()[ch], osd ? osd + ch : nullptr, bd ? bd + ch : nullptr,
           out.data_ptr<float>() + ch * kk);
  return out;
}

// ``conv`` on a packed input, float output (the op: no emit).
at::Tensor conv_op(const at::Tensor& xp, const at::Tensor& p, const at::Tensor& m,
                   const at::Tensor& total, const at::Tensor& tap_sum, const at::Tensor& alpha,
                   const at::Tensor& out_scale, const at::Tensor& bias,
                   std::vector<int64_t> kernel, std::vector<int64_t> stride,
                   std::vector<int64_t> dilation, std::vector<int64_t> padding,
                   std::vector<int64_t> in_size, int64_t path) {
  return conv(xp, p, m, total, tap_sum, alpha, out_scale, bias, std::move(kernel),
              std::move(stride), std::move(dilation), std::move(padding), std::move(in_size),
              path);
}

std::string simd_path() {
  const int64_t p = choose_path(kAuto);
  return p == kAvx512 ? "avx512" : p == kAvx2 ? "avx2" : "portable";
}

bool has_path(int64_t path) { return path == kPortable || (path == kAvx2 && cpu_has(1)) || (path == kAvx512 && cpu_has(2)); }

}  // namespace

TORCH_LIBRARY(netshrink_kernels, lib) {
  lib.def("pack_input(Tensor x, int groups, int ph, int pw, int path=0) -> Tensor",
          &pack_input);
  lib.def(
      "conv(Tensor xp, Tensor p, Tensor m, Tensor total, Tensor tap_sum, Tensor alpha, "
      "Tensor out_scale, Tensor bias, "
      "int[] kernel, int[] stride, int[] dilation, int[] padding, int[] in_size, "
      "int path) -> Tensor",
      &conv_op);
  lib.def(
      "bitconv(Tensor x, Tensor p, Tensor m, Tensor total, Tensor tap_sum, Tensor alpha, "
      "Tensor out_scale, Tensor bias, int[] kernel, int[] stride, int[] dilation, "
      "int[] padding, int groups, int[] pool, Tensor pool_and, Tensor lo, Tensor hi, "
      "int out_groups, int[] out_pad, int path) -> Tensor",
      &bitconv);
  lib.def("or_pool(Tensor xp, int k, int s, int p, int ph, int pw, Tensor and_mask) -> Tensor",
          &or_pool);
  lib.def("epilogue(Tensor v, Tensor alpha, Tensor out_scale, Tensor bias) -> Tensor",
          &epilogue);
  lib.def("simd_path() -> str", &simd_path);
  lib.def("has_path(int path) -> bool", &has_path);
}
