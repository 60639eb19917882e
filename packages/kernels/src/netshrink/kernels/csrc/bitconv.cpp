// Bit-packed binary / ternary convolution on the CPU: XOR + popcount over 64-bit words.
//
// Input activations are sign(x) (0 -> +1) packed along channels: bit 1 = +1, bit 0 = -1,
// one group's channels in ceil(C_g / 64) words per pixel, zero words around the image where
// the conv pads. Weights are two bit-planes per tap: p (1 = +1) and, for ternary, m (1 = non-zero).
// Per output channel and tap, with a the input bits:
//     sum_i a_i t_i = popcount(m) - 2 popcount((a ^ p) & m)      (binary: m = all channels)
// Integer accumulation is exact. A padded tap holds a = 0 bits, which this formula reads as
// -1 inputs contributing -S (S = sum of the tap's weights), whereas the float conv's zero
// padding contributes 0: border pixels add S back for each padded tap.
// Epilogue per output channel: y = count * scale (rounded), then y * out_scale + bias as
// torch.addcmul computes a quantized layer's folded epilogue: a fused multiply-add where the CPU
// has FMA. The file is built with -ffp-contract=off so the compiler adds no other fusions.
//
// Three compiled paths in this one file, chosen at run time from what the CPU reports (never
// by compiler flags for the whole file): AVX-512 VPOPCNTQ (8 output channels per zmm), AVX2
// (vpshufb nibble popcount, 8 output channels per pair of ymm registers), and a portable kernel
// (SWAR popcount, no special instructions). The SIMD kernels are built with function-level
// target attributes. Rows of output pixels are split over threads with at::parallel_for; each
// block of 8 output channels' weights stays in L1 while a row's pixels stream past it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

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

// popcount((patch ^ p) & m) for 8 output channels of one block; out[j] += count.
void block_portable(const uint64_t* patch, const uint64_t* p, const uint64_t* m, int64_t k,
                    int32_t* out) {
  for (int64_t j = 0; j < kLanes; ++j) {
    int32_t c = 0;
    for (int64_t i = 0; i < k; ++i) {
      uint64_t v = patch[i] ^ p[i * kLanes + j];
      if (m) v &= m[i * kLanes + j];
      c += popcount_portable(v);
    }
    out[j] = c;
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
__attribute__((target("avx2,popcnt"))) void block_avx2(
    const uint64_t* patch0, const uint64_t* patch1, const uint64_t* p, const uint64_t* m,
    int64_t k, int32_t* out0, int32_t* out1) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;
  for (int64_t start = 0; start < k; start += 31) {
    const int64_t stop = start + 31 < k ? start + 31 : k;
    __m256i a00 = zero, a01 = zero, a10 = zero, a11 = zero;
    for (int64_t i = start; i < stop; ++i) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * kLanes));
      const __m256i w1 =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * kLanes + 4));
      const __m256i x0 = _mm256_set1_epi64x(static_cast<long long>(patch0[i]));
      const __m256i x1 = _mm256_set1_epi64x(static_cast<long long>(patch1[i]));
      __m256i v00 = _mm256_xor_si256(x0, w0), v01 = _mm256_xor_si256(x0, w1);
      __m256i v10 = _mm256_xor_si256(x1, w0), v11 = _mm256_xor_si256(x1, w1);
      if (m) {
        const __m256i m0 =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + i * kLanes));
        const __m256i m1 =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + i * kLanes + 4));
        v00 = _mm256_and_si256(v00, m0);
        v01 = _mm256_and_si256(v01, m1);
        v10 = _mm256_and_si256(v10, m0);
        v11 = _mm256_and_si256(v11, m1);
      }
      a00 = _mm256_add_epi8(a00, pop_bytes(v00));
      a01 = _mm256_add_epi8(a01, pop_bytes(v01));
      a10 = _mm256_add_epi8(a10, pop_bytes(v10));
      a11 = _mm256_add_epi8(a11, pop_bytes(v11));
    }
    s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(a00, zero));
    s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(a01, zero));
    s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(a10, zero));
    s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(a11, zero));
  }
  alignas(32) int64_t t[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), s00);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 4), s01);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 8), s10);
  _mm256_store_si256(reinterpret_cast<__m256i*>(t + 12), s11);
  for (int j = 0; j < 8; ++j) {
    out0[j] = static_cast<int32_t>(t[j]);
    out1[j] = static_cast<int32_t>(t[8 + j]);
  }
}

// AVX-512 with VPOPCNTQ: 8 output channels in one zmm, 2 pixels; 64-bit counts directly.
__attribute__((target("avx512f,avx512vpopcntdq"))) void block_avx512(
    const uint64_t* patch0, const uint64_t* patch1, const uint64_t* p, const uint64_t* m,
    int64_t k, int32_t* out0, int32_t* out1) {
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (int64_t i = 0; i < k; ++i) {
    const __m512i w = _mm512_loadu_si512(p + i * kLanes);
    __m512i v0 = _mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(patch0[i])), w);
    __m512i v1 = _mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(patch1[i])), w);
    if (m) {
      const __m512i mm = _mm512_loadu_si512(m + i * kLanes);
      v0 = _mm512_and_si512(v0, mm);
      v1 = _mm512_and_si512(v1, mm);
    }
    s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(v0));
    s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(v1));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out0), _mm512_cvtepi64_epi32(s0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out1), _mm512_cvtepi64_epi32(s1));
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

// o = fma(acc * sc, os, bi): one rounding for the product and sum, as torch.addcmul's vectorized
// fmadd gives on a CPU with FMA (without FMA, torch and this code multiply, then add).
#if NS_X86
__attribute__((target("fma"))) void affine_fma(const int32_t* acc, int64_t n, float sc, float os,
                                               float bi, float* o) {
  for (int64_t i = 0; i < n; ++i) o[i] = __builtin_fmaf(static_cast<float>(acc[i]) * sc, os, bi);
}
#endif

inline void affine(const int32_t* acc, int64_t n, float sc, float os, float bi, float* o,
                   bool fma) {
#if NS_X86
  if (fma) return affine_fma(acc, n, sc, os, bi, o);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float y = static_cast<float>(acc[i]) * sc;
    o[i] = y * os + bi;
  }
}

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
                std::vector<int64_t> in_size, int64_t path) {
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
  auto out = at::empty({g.n, g.cout, g.oh, g.ow}, xp.options().dtype(at::kFloat));
  const int64_t kpath = choose_path(path);
  const bool fma = cpu_has(3);
  const auto* xdata = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  const auto* pdata = reinterpret_cast<const uint64_t*>(p.data_ptr<int64_t>());
  const auto* mdata = ternary ? reinterpret_cast<const uint64_t*>(m.data_ptr<int64_t>()) : nullptr;
  const int32_t* tot = total.data_ptr<int32_t>();
  const int32_t* tsum = tap_sum.data_ptr<int32_t>();
  const float* al = alpha.data_ptr<float>();
  float* odata = out.data_ptr<float>();
  const float* osd = out_scale.numel() ? out_scale.data_ptr<float>() : nullptr;
  const float* bd = bias.numel() ? bias.data_ptr<float>() : nullptr;
  const int64_t k = g.k(), rows = g.n * g.oh, plane = g.oh * g.ow, ntaps = g.kh * g.kw;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    // one row of output pixels: every pixel's patch (plus a spare for an odd count), the
    // pixels with padded taps and those taps, and one block's counts for the whole row
    std::vector<uint64_t> patches((g.ow + 1) * k);
    std::vector<std::vector<int64_t>> pads(g.ow);
    std::vector<int64_t> border;
    std::vector<int32_t> cnt((g.ow + 1) * kLanes);
    std::vector<int32_t> acc(g.ow);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ni = row / g.oh, oy = row % g.oh;
      border.clear();
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        padded_taps(g, oy, ox, pads[ox]);
        if (!pads[ox].empty()) border.push_back(ox);
      }
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const uint64_t* img = xdata + (ni * g.groups + gi) * g.hp * g.wp * g.words;
        for (int64_t ox = 0; ox < g.ow; ++ox) gather(img, g, oy, ox, patches.data() + ox * k);
        if (g.ow % 2) std::memcpy(patches.data() + g.ow * k, patches.data(),
                                  k * sizeof(uint64_t));
        for (int64_t blk = 0; blk < g.blocks; ++blk) {
          const uint64_t* pb = pdata + (gi * g.blocks + blk) * k * kLanes;
          const uint64_t* mb = mdata ? mdata + (gi * g.blocks + blk) * k * kLanes : nullptr;
          const int64_t c0 = gi * g.cout_g + blk * kLanes;  // first output channel
          const int64_t lanes = std::min<int64_t>(kLanes, (gi + 1) * g.cout_g - c0);
          for (int64_t ox = 0; ox < g.ow; ox += 2) {
            const uint64_t* patch0 = patches.data() + ox * k;
            int32_t* c = cnt.data() + ox * kLanes;
            switch (kpath) {
#if NS_X86
              case kAvx512: block_avx512(patch0, patch0 + k, pb, mb, k, c, c + kLanes); break;
              case kAvx2: block_avx2(patch0, patch0 + k, pb, mb, k, c, c + kLanes); break;
#endif
              default:
                block_portable(patch0, pb, mb, k, c);
                block_portable(patch0 + k, pb, mb, k, c + kLanes);
            }
          }
          // the sum over valid taps, then the float epilogue, one output channel at a time
          for (int64_t j = 0; j < lanes; ++j) {
            const int64_t ch = c0 + j;
            const int32_t t0 = tot[ch];
            for (int64_t ox = 0; ox < g.ow; ++ox) acc[ox] = t0 - 2 * cnt[ox * kLanes + j];
            for (int64_t ox : border)
              for (int64_t t : pads[ox]) acc[ox] += tsum[ch * ntaps + t];
            float* o = odata + (ni * g.cout + ch) * plane + oy * g.ow;
            const float sc = al[ch];
            if (osd) {
              affine(acc.data(), g.ow, sc, osd[ch], bd[ch], o, fma);
            } else if (bd) {
              const float bi = bd[ch];
              for (int64_t ox = 0; ox < g.ow; ++ox) o[ox] = static_cast<float>(acc[ox]) * sc + bi;
            } else {
              for (int64_t ox = 0; ox < g.ow; ++ox) o[ox] = static_cast<float>(acc[ox]) * sc;
            }
          }
        }
      }
    }
  });
  return out;
}

// sign(x) (0 and NaN -> +1) packed along each group's channels, zero-padded around the image.
at::Tensor pack_input(const at::Tensor& x_in, int64_t groups, int64_t ph, int64_t pw) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat,
              "pack_input takes a float32 [N, C, H, W] tensor");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(groups >= 1 && c % groups == 0, "channels must divide into groups");
  const int64_t cg = c / groups, words = (cg + 63) / 64, hp = h + 2 * ph, wp = w + 2 * pw;
  auto out = at::zeros({n, groups, hp, wp, words}, x.options().dtype(at::kLong));
  const float* xd = x.data_ptr<float>();
  auto* od = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, n * groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> word(h * w);
    for (int64_t ng = begin; ng < end; ++ng) {
      const float* src = xd + ng * cg * h * w;
      uint64_t* dst = od + ng * hp * wp * words;
      for (int64_t wi = 0; wi < words; ++wi) {
        std::fill(word.begin(), word.end(), 0);
        const int64_t cstop = std::min<int64_t>(cg, (wi + 1) * 64);
        for (int64_t ci = wi * 64; ci < cstop; ++ci) {
          const float* s = src + ci * h * w;
          const uint64_t bit = ci - wi * 64;
          for (int64_t i = 0; i < h * w; ++i)
            word[i] |= static_cast<uint64_t>(!(s[i] < 0.0f)) << bit;
        }
        for (int64_t y = 0; y < h; ++y)
          for (int64_t xx = 0; xx < w; ++xx)
            dst[((y + ph) * wp + xx + pw) * words + wi] = word[y * w + xx];
      }
    }
  });
  return out;
}

// Max-pooling of sign(x) on packed words: the max of +-1 values is the OR of their bits, and
// sign commutes with max (it is non-decreasing), so pooling the packed signs equals packing the
// pooled floats. Pool padding never wins a max (it is -inf): those positions are skipped. The
// result is zero-padded by (ph, pw) for the conv that reads it.
at::Tensor or_pool(const at::Tensor& xp, int64_t k, int64_t s, int64_t p, int64_t ph,
                   int64_t pw) {
  TORCH_CHECK(xp.dim() == 5 && xp.scalar_type() == at::kLong && xp.is_contiguous(),
              "or_pool takes a contiguous int64 [N, G, H, W, words] tensor");
  TORCH_CHECK(k >= 1 && s >= 1 && p >= 0 && 2 * p <= k, "pool: kernel >= 1, stride >= 1, "
              "0 <= padding <= kernel / 2");
  const int64_t n = xp.size(0), groups = xp.size(1), h = xp.size(2), w = xp.size(3);
  const int64_t words = xp.size(4);
  const int64_t oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
  TORCH_CHECK(oh > 0 && ow > 0, "pool window larger than the padded input");
  const int64_t hp = oh + 2 * ph, wp = ow + 2 * pw;
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
          uint64_t v = 0;
          for (int64_t y = y0; y < y1; ++y)
            for (int64_t x = x0; x < x1; ++x) v |= in[(y * w + x) * words + wi];
          o[ox * words + wi] = v;
        }
      }
    }
  });
  return out;
}

std::string simd_path() {
  const int64_t p = choose_path(kAuto);
  return p == kAvx512 ? "avx512" : p == kAvx2 ? "avx2" : "portable";
}

bool has_path(int64_t path) { return path == kPortable || (path == kAvx2 && cpu_has(1)) || (path == kAvx512 && cpu_has(2)); }

}  // namespace

TORCH_LIBRARY(netshrink_kernels, lib) {
  lib.def("pack_input(Tensor x, int groups, int ph, int pw) -> Tensor", &pack_input);
  lib.def(
      "conv(Tensor xp, Tensor p, Tensor m, Tensor total, Tensor tap_sum, Tensor alpha, "
      "Tensor out_scale, Tensor bias, "
      "int[] kernel, int[] stride, int[] dilation, int[] padding, int[] in_size, "
      "int path) -> Tensor",
      &conv);
  lib.def("or_pool(Tensor xp, int k, int s, int p, int ph, int pw) -> Tensor", &or_pool);
  lib.def("simd_path() -> str", &simd_path);
  lib.def("has_path(int path) -> bool", &has_path);
}
