// GroupNorm followed by SiLU in one kernel, for bf16 channels_last tensors on the CPU, and its gradient.
//
// PyTorch runs the two as separate kernels: GroupNorm reads the tensor twice and writes it, SiLU reads and writes it
// again, and its channels_last GroupNorm slows sharply when a group's channel count is not a multiple of the vector
// width. Here each sample is read once for the statistics and once (from cache: one sample's activations fit the
// core's L2 at 64 px) to write silu(a_c x + b_c), in fp32 with one rounding to bf16 at the end, optionally after
// adding a per-sample, per-channel term (a ResNet block's time embedding) that eager code adds, and rounds, before
// the norm. Once the norm is fused, the SiLU's exp and division are what the kernel spends its time on, so on a CPU
// with AVX-512 (and its bf16 conversion) the arithmetic is written out in 16-lane vectors: exp as 2^k p(f) with a
// degree-5 polynomial and a vscalef (no clamping, no integer tricks), the sigmoid's division as a 14-bit reciprocal
// estimate, bf16 rounding in one instruction. Elsewhere (or built with MASKRAY_PORTABLE_KERNEL) the same loops run
// one float at a time through plain C++. Both paths are tested against fp32 arithmetic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#ifndef MASKRAY_KERNEL_NAMESPACE
#define MASKRAY_KERNEL_NAMESPACE maskray_kernels
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__) && !defined(MASKRAY_PORTABLE_KERNEL)
#define MASKRAY_AVX512 1
#include <immintrin.h>
#endif

namespace {

#ifdef MASKRAY_AVX512
// 16 fp32 lanes; loads and stores of n < 16 lanes are masked (channel counts that are not a multiple of 16)
struct Vec {
  static constexpr int64_t width = 16;
  static constexpr const char* name = "avx512";
  __m512 v;
  static __mmask16 mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec splat(float f) { return {_mm512_set1_ps(f)}; }
  static Vec load(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(mask(n), p)}; }
  static void store(float* p, Vec x, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), x.v); }
  static Vec load_bf16(const uint16_t* p, int64_t n) {
    const __m256i h = _mm256_maskz_loadu_epi16(mask(n), p);
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
  }
  static void store_bf16(uint16_t* p, Vec x, int64_t n) {  // round to nearest even
    _mm256_mask_storeu_epi16(p, mask(n), (__m256i)_mm512_cvtneps_pbh(x.v));
  }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec exp(Vec x) {  // 2^k 2^f with k = round(x log2 e), |f| <= 1/2; relative error about 3e-6
    const __m512 t = _mm512_mul_ps(x.v, _mm512_set1_ps(1.44269504088896341f));
    const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, k), _mm512_set1_ps(0.693147180559945f));  // f ln 2
    __m512 p = _mm512_set1_ps(1.f / 120.f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24.f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6.f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
    return {_mm512_scalef_ps(p, k)};  // overflows to inf and underflows to 0 as exp does
  }
  static Vec reciprocal(Vec x) { return {_mm512_rcp14_ps(x.v)}; }  // relative error under 2^-14
};
#else
// one float at a time: the portable path, and the reference the vector path is tested against
struct Vec {
  static constexpr int64_t width = 1;
  static constexpr const char* name = "portable";
  float v;
  static Vec zero() { return {0.f}; }
  static Vec splat(float f) { return {f}; }
  static Vec load(const float* p, int64_t) { return {*p}; }
  static void store(float* p, Vec x, int64_t) { *p = x.v; }
  static Vec load_bf16(const uint16_t* p, int64_t) { return {__builtin_bit_cast(float, uint32_t(*p) << 16)}; }
  static void store_bf16(uint16_t* p, Vec x, int64_t) {  // round to nearest even, NaN kept as NaN
    const uint32_t u = __builtin_bit_cast(uint32_t, x.v);
    *p = (x.v != x.v) ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  friend Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
  friend Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
  friend Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
  static Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  static Vec exp(Vec x) { return {std::exp(x.v)}; }
  static Vec reciprocal(Vec x) { return {1.f / x.v}; }
};
#endif

inline Vec silu_of(Vec v) {  // v sigmoid(v)
  return v * Vec::reciprocal(Vec::splat(1.f) + Vec::exp(Vec::zero() - v));
}

// dy silu'(v) = dy s (1 + v (1 - s)) with s = sigmoid(v) and 1 - s = e s, e = exp(-v): no cancellation for large v
inline Vec silu_grad(Vec dy, Vec v) {
  const Vec e = Vec::exp(Vec::zero() - v);
  const Vec s = Vec::reciprocal(Vec::splat(1.f) + e);
  return dy * s * Vec::fma(v, e * s, Vec::splat(1.f));
}

void check_inputs(const at::Tensor& x, const at::Tensor& affine, const at::Tensor& add, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 4, "x: a 4-d bf16 CPU tensor");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "x must be channels_last");
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(groups > 0 && C % groups == 0, "channels not divisible by groups");
  TORCH_CHECK(affine.scalar_type() == at::kFloat && affine.is_contiguous() && affine.numel() == 2 * C,
              "affine: fp32 (2, C)");
  TORCH_CHECK(add.numel() == 0 || (add.scalar_type() == at::kFloat && add.is_contiguous() && add.numel() == N * C),
              "add: fp32 (N, C) or empty");
}

// rows of one sample taken together when a pass walks down the channels: about 16384 values, which stay in the
// core's cache between channel chunks (measured a little faster than 1024 or 4096, and than walking row by row)
int64_t block_rows(int64_t channels) { return std::max<int64_t>(1, 16384 / channels); }

const uint16_t* bf16_data(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.const_data_ptr()); }
uint16_t* bf16_data(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.mutable_data_ptr()); }

// x: bf16 (N, C, H, W) in channels_last; affine: fp32 (2, C), GroupNorm's weight then bias; add: fp32 (N, C) or
// empty. Returns bf16 silu(group_norm(x + add)) (or the norm alone when silu is false), channels_last, and each
// (sample, group)'s mean and reciprocal standard deviation, fp32 (N, groups), for the backward pass.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu(const at::Tensor& x, const at::Tensor& affine,
                                                               const at::Tensor& add, int64_t groups, double eps,
                                                               bool silu) {
  check_inputs(x, affine, add, groups);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), per_group = C / groups;
  const bool has_add = add.numel() > 0;
  at::Tensor y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor means = at::empty({N, groups}, affine.options());
  at::Tensor rstds = at::empty({N, groups}, affine.options());
  float* mp = means.mutable_data_ptr<float>();
  float* rp = rstds.mutable_data_ptr<float>();
  const uint16_t* xp = bf16_data(x);
  uint16_t* yp = bf16_data(y);
  const float* gamma = affine.const_data_ptr<float>();
  const float* beta = gamma + C;
  const float* addp = has_add ? add.const_data_ptr<float>() : nullptr;
  const int64_t rows = block_rows(C);
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> zeros(C, 0.f), sum(C), sumsq(C), pivot(C), scale(C), shift(C);
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* xs = xp + n * HW * C;
      uint16_t* ys = yp + n * HW * C;
      const float* a = has_add ? addp + n * C : zeros.data();
      // statistics about a pivot (the group's first value) so that E[v^2] - E[v]^2 does not cancel; a block of
      // rows at a time (it stays in cache), one channel chunk down the block's rows, two rows per step
      for (int64_t c = 0; c < C; ++c) {
        const int64_t first = (c / per_group) * per_group;
        pivot[c] = __builtin_bit_cast(float, uint32_t(xs[first]) << 16) + a[first];
        sum[c] = 0.f; sumsq[c] = 0.f;
      }
      for (int64_t p0 = 0; p0 < HW; p0 += rows) {
        const int64_t p1 = std::min(HW, p0 + rows);
        for (int64_t c = 0; c < C; c += Vec::width) {
          const int64_t w = std::min(Vec::width, C - c);
          const Vec shift_in = Vec::load(a + c, w) - Vec::load(pivot.data() + c, w);
          Vec s0 = Vec::load(sum.data() + c, w), s1 = Vec::zero(), q0 = Vec::load(sumsq.data() + c, w),
              q1 = Vec::zero();
          int64_t p = p0;
          for (; p + 1 < p1; p += 2) {
            const Vec v0 = Vec::load_bf16(xs + p * C + c, w) + shift_in;
            const Vec v1 = Vec::load_bf16(xs + (p + 1) * C + c, w) + shift_in;
            s0 = s0 + v0; q0 = Vec::fma(v0, v0, q0);
            s1 = s1 + v1; q1 = Vec::fma(v1, v1, q1);
          }
          if (p < p1) {
            const Vec v0 = Vec::load_bf16(xs + p * C + c, w) + shift_in;
            s0 = s0 + v0; q0 = Vec::fma(v0, v0, q0);
          }
          Vec::store(sum.data() + c, s0 + s1, w);
          Vec::store(sumsq.data() + c, q0 + q1, w);
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        double gs = 0, gq = 0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) { gs += sum[c]; gq += sumsq[c]; }
        const double count = double(HW * per_group), m = gs / count;
        const double var = std::max(gq / count - m * m, 0.0);
        const double rstd = 1.0 / std::sqrt(var + eps), mean = m + pivot[g * per_group];
        mp[n * groups + g] = float(mean);
        rp[n * groups + g] = float(rstd);
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          scale[c] = float(gamma[c] * rstd);
          shift[c] = float(beta[c] + (a[c] - mean) * gamma[c] * rstd);
        }
      }
      for (int64_t p = 0; p < HW; ++p) {
        for (int64_t c = 0; c < C; c += Vec::width) {
          const int64_t w = std::min(Vec::width, C - c);
          const Vec v = Vec::fma(Vec::load_bf16(xs + p * C + c, w), Vec::load(scale.data() + c, w),
                                 Vec::load(shift.data() + c, w));
          Vec::store_bf16(ys + p * C + c, silu ? silu_of(v) : v, w);
        }
      }
    }
  });
  return {y, means, rstds};
}

// The gradients of group_norm_silu from dy (bf16, channels_last, x's shape), recomputing the activation from x and
// the saved statistics: dx (bf16, channels_last), and per sample the gradients of the weight, the bias and the
// added term, fp32 (N, C) each (summed over samples by the caller). With g = dy * silu'(v) and xh the normalised
// input, dx = rstd (gamma g - mean_group(gamma g) - xh mean_group(gamma g xh)), written as g k1 + x k2 + k3. The
// first pass keeps g (fp32, one sample at a time) for the second.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_silu_backward(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& affine, const at::Tensor& add, const at::Tensor& means,
    const at::Tensor& rstds, int64_t groups, bool silu) {
  check_inputs(x, affine, add, groups);
  TORCH_CHECK(dy.scalar_type() == at::kBFloat16 && dy.sizes() == x.sizes() &&
              dy.is_contiguous(at::MemoryFormat::ChannelsLast), "dy: bf16 channels_last, x's shape");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), per_group = C / groups;
  const bool has_add = add.numel() > 0;
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  at::Tensor dgamma = at::empty({N, C}, affine.options());
  at::Tensor dbeta = at::empty({N, C}, affine.options());
  at::Tensor dadd = at::empty({N, C}, affine.options());
  const uint16_t* xp = bf16_data(x);
  const uint16_t* dyp = bf16_data(dy);
  uint16_t* dxp = bf16_data(dx);
  const float* gamma = affine.const_data_ptr<float>();
  const float* beta = gamma + C;
  const float* addp = has_add ? add.const_data_ptr<float>() : nullptr;
  const float* mp = means.const_data_ptr<float>();
  const float* rp = rstds.const_data_ptr<float>();
  float* dgp = dgamma.mutable_data_ptr<float>();
  float* dbp = dbeta.mutable_data_ptr<float>();
  float* dap = dadd.mutable_data_ptr<float>();
  const int64_t rows = block_rows(C);
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    std::vector<float> zeros(C, 0.f), mean_c(C), scale(C), shift(C), sg(C), sgx(C), sx(C), k1(C), k2(C), k3(C);
    std::unique_ptr<float[]> grads(new float[HW * C]);  // g of one sample, written before it is read
    for (int64_t n = n0; n < n1; ++n) {
      const uint16_t* xs = xp + n * HW * C;
      const uint16_t* dys = dyp + n * HW * C;
      uint16_t* dxs = dxp + n * HW * C;
      const float* a = has_add ? addp + n * C : zeros.data();
      for (int64_t c = 0; c < C; ++c) {
        const float m = mp[n * groups + c / per_group], r = rp[n * groups + c / per_group];
        mean_c[c] = m; scale[c] = gamma[c] * r; shift[c] = beta[c] - m * gamma[c] * r;  // v = (x + add) sc + sh
      }
      std::fill(sg.begin(), sg.end(), 0.f); std::fill(sgx.begin(), sgx.end(), 0.f);
      std::fill(sx.begin(), sx.end(), 0.f);
      for (int64_t p0 = 0; p0 < HW; p0 += rows) {  // a block of rows (in cache), one channel chunk down it at a time
        const int64_t p1 = std::min(HW, p0 + rows);
        for (int64_t c = 0; c < C; c += Vec::width) {
          const int64_t w = std::min(Vec::width, C - c);
          const Vec ad = Vec::load(a + c, w), mu = Vec::load(mean_c.data() + c, w);
          const Vec sc = Vec::load(scale.data() + c, w), sh = Vec::load(shift.data() + c, w);
          Vec s_g = Vec::load(sg.data() + c, w), s_gx = Vec::load(sgx.data() + c, w), s_x = Vec::load(sx.data() + c, w);
          for (int64_t p = p0; p < p1; ++p) {
            const Vec xv = Vec::load_bf16(xs + p * C + c, w) + ad;
            const Vec d = Vec::load_bf16(dys + p * C + c, w);
            const Vec g = silu ? silu_grad(d, Vec::fma(xv, sc, sh)) : d;
            Vec::store(grads.get() + p * C + c, g, w);
            s_g = s_g + g; s_gx = Vec::fma(g, xv - mu, s_gx); s_x = s_x + xv;
          }
          Vec::store(sg.data() + c, s_g, w);
          Vec::store(sgx.data() + c, s_gx, w);
          Vec::store(sx.data() + c, s_x, w);
        }
      }
      for (int64_t g = 0; g < groups; ++g) {
        const float r = rp[n * groups + g], m = mp[n * groups + g];
        double ga = 0, gb = 0;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          ga += double(gamma[c]) * sg[c]; gb += double(gamma[c]) * sgx[c];
        }
        const double count = double(HW * per_group);
        const float mean_dxh = float(ga / count), mean_dxh_xh = float(gb / count * r);
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          k1[c] = r * gamma[c];
          k2[c] = -r * r * mean_dxh_xh;
          k3[c] = r * r * mean_dxh_xh * m - r * mean_dxh + k2[c] * a[c];  // x enters as x + add
          dgp[n * C + c] = sgx[c] * r;
          dbp[n * C + c] = sg[c];
          dap[n * C + c] = k1[c] * sg[c] + k2[c] * sx[c] + (k3[c] - k2[c] * a[c]) * float(HW);
        }
      }
      for (int64_t p = 0; p < HW; ++p) {
        for (int64_t c = 0; c < C; c += Vec::width) {
          const int64_t w = std::min(Vec::width, C - c);
          const Vec d = Vec::fma(Vec::load(grads.get() + p * C + c, w), Vec::load(k1.data() + c, w),
                                 Vec::fma(Vec::load_bf16(xs + p * C + c, w), Vec::load(k2.data() + c, w),
                                          Vec::load(k3.data() + c, w)));
          Vec::store_bf16(dxs + p * C + c, d, w);
        }
      }
    }
  });
  return {dx, dgamma, dbeta, dadd};
}

std::string vector_path() { return Vec::name; }

}  // namespace

TORCH_LIBRARY(MASKRAY_KERNEL_NAMESPACE, m) {
  m.def("group_norm_silu(Tensor x, Tensor affine, Tensor add, int groups, float eps, bool silu) -> "
        "(Tensor, Tensor, Tensor)");
  m.def("group_norm_silu_backward(Tensor dy, Tensor x, Tensor affine, Tensor add, Tensor means, Tensor rstds, "
        "int groups, bool silu) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("vector_path", vector_path);
}

TORCH_LIBRARY_IMPL(MASKRAY_KERNEL_NAMESPACE, CPU, m) {
  m.impl("group_norm_silu", group_norm_silu);
  m.impl("group_norm_silu_backward", group_norm_silu_backward);
}
