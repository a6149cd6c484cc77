// Tilewise: fused window attention for narrow heads on the CPU.
//
// softmax(q k^T / sqrt(d)) v for every (window, head), read straight from the qkv projection's
// output (windows, n, 3C) and written as (windows, n, C), ready for the output projection: no
// head split or merge copies, no score matrix in memory. Rows of 8 queries share each loaded
// key and value vector; scores, the softmax and the weighted sum stay in a few KiB per thread.
// Accumulation is fp32; bf16 inputs are widened exactly and the output rounded to nearest even.
//
// Written with GCC/Clang vector extensions rather than intrinsics, so the same source builds
// for AVX-512, AVX2 or NEON; it is compiled on the user's machine with -march=native
// (native.py). The API is plain C for ctypes; it returns 0 for shapes it does not take, and
// the caller then uses PyTorch's attention.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int L = 16;  // lanes per vector; scores are handled 16 keys at a time
constexpr int R = 8;   // query rows handled together (measured: 8 beats 2, 4 and 16)
typedef float vf __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));
typedef uint32_t vu __attribute__((vector_size(4 * L)));
typedef uint16_t vh __attribute__((vector_size(2 * L)));

inline vf splat(float x) { return vf{} + x; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

inline float hmax(vf a) {
  float m = a[0];
  for (int l = 1; l < L; ++l) m = std::max(m, a[l]);
  return m;
}

inline float hsum(vf a) {
  float s = 0.0f;
  for (int l = 0; l < L; ++l) s += a[l];
  return s;
}

// e^x for x <= 0: x = k ln2 + r with |r| <= ln2/2, then Cephes' degree-5 polynomial for e^r
// (about 1 ulp in fp32) times 2^k. Inputs below -87 give e^-87 (~1.6e-38) instead of
// denormals or 0; next to the row's maximum, whose term is 1, that difference is invisible.
inline vf exp_nonpositive(vf x) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  x = vmax(x, splat(-87.0f));
  const vf shifted = x * 1.44269504088896341f + magic;
  const vf k = shifted - magic;
  const vi ki = (vi)shifted - (vi)magic;
  vf r = x - k * 0.693359375f;  // ln2 in two parts, so that r is exact
  r = r + k * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * (vf)((ki + 127) << 23);
}

inline float scalar(const float* p) { return *p; }
inline float scalar(const uint16_t* p) {
  const uint32_t u = uint32_t(*p) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vf vload(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  return (vf)(__builtin_convertvector(h, vu) << 16);
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void vstore(uint16_t* p, vf v) {
  vu u = (vu)v;
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  // round to nearest, ties to even
  const vh h = __builtin_convertvector(u, vh);
  std::memcpy(p, &h, sizeof h);
}

// Items [first, last) of windows x heads; head h uses channels [h*D, (h+1)*D) of q, k and v.
template <typename T, int D>
void attend(const T* qkv, T* out, int64_t first, int64_t last, int64_t n, int64_t heads) {
  constexpr int V = D / L;  // vectors per head row
  const int64_t c = heads * D, row = 3 * c, blocks = n / L;
  const float scale = 1.0f / std::sqrt(float(D));
  std::vector<vf> kt(D * blocks), v(n * V), s(R * blocks);
  float* keys = reinterpret_cast<float*>(kt.data());       // (D, n): keys transposed
  const float* p = reinterpret_cast<const float*>(s.data());  // (R, n): scores, then weights
  for (int64_t item = first; item < last; ++item) {
    const int64_t w = item / heads, h = item % heads;
    const T* base = qkv + w * n * row + h * D;
    T* dst = out + w * n * c + h * D;
    for (int64_t j = 0; j < n; ++j) {
      for (int t = 0; t < D; ++t) keys[t * n + j] = scalar(base + j * row + c + t);
      for (int u = 0; u < V; ++u) v[j * V + u] = vload(base + j * row + 2 * c + u * L);
    }
    for (int64_t i0 = 0; i0 < n; i0 += R) {
      float q[R][D];
      for (int r = 0; r < R; ++r)
        for (int t = 0; t < D; ++t) q[r][t] = scalar(base + (i0 + r) * row + t) * scale;
      for (int64_t b = 0; b < blocks; ++b) {
        vf acc[R] = {};
        for (int t = 0; t < D; ++t) {
          const vf k = kt[t * blocks + b];
          for (int r = 0; r < R; ++r) acc[r] += q[r][t] * k;
        }
        for (int r = 0; r < R; ++r) s[r * blocks + b] = acc[r];
      }
      float inv[R];
      for (int r = 0; r < R; ++r) {
        vf* sr = &s[r * blocks];
        vf mx = sr[0];
        for (int64_t b = 1; b < blocks; ++b) mx = vmax(mx, sr[b]);
        const vf m = splat(hmax(mx));
        vf sum = {};
        for (int64_t b = 0; b < blocks; ++b) {
          sr[b] = exp_nonpositive(sr[b] - m);
          sum += sr[b];
        }
        inv[r] = 1.0f / hsum(sum);
      }
      vf o[R][V] = {};
      for (int64_t j = 0; j < n; ++j)
        for (int r = 0; r < R; ++r) {
          const float weight = p[r * n + j];
          for (int u = 0; u < V; ++u) o[r][u] += weight * v[j * V + u];
        }
      for (int r = 0; r < R; ++r)
        for (int u = 0; u < V; ++u) vstore(dst + (i0 + r) * c + u * L, o[r][u] * inv[r]);
    }
  }
}

// Splits the items evenly over `threads` threads (this one included).
template <typename T, int D>
bool run(const void* qkv, void* out, int64_t windows, int64_t n, int64_t heads, int threads) {
  const int64_t items = windows * heads;
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
  std::atomic<bool> failed{false};
  auto part = [&](int i) {
    try {
      attend<T, D>(static_cast<const T*>(qkv), static_cast<T*>(out), items * i / threads, items * (i + 1) / threads, n, heads);
    } catch (...) {  // an allocation failure: report it, never terminate the host
      failed = true;
    }
  };
  std::vector<std::thread> pool;
  try {
    for (int i = 1; i < threads; ++i) pool.emplace_back(part, i);
  } catch (...) {
    failed = true;
  }
  part(0);
  for (auto& t : pool) t.join();
  return !failed && int(pool.size()) == threads - 1;
}

template <int D>
bool dispatch(const void* qkv, void* out, int64_t windows, int64_t n, int64_t heads, int bf16, int threads) {
  return bf16 ? run<uint16_t, D>(qkv, out, windows, n, heads, threads) : run<float, D>(qkv, out, windows, n, heads, threads);
}

}  // namespace

extern "C" {

// qkv: contiguous (windows, n, 3 * heads * head_dim), fp32 or bf16 (bf16 != 0); out: contiguous
// (windows, n, heads * head_dim) of the same type. Returns 1 when done; 0 when the shape is not
// supported (head_dim other than 16 or 32, n not a multiple of 16) or it failed, with `out`
// then undefined.
int tilewise_window_attention(const void* qkv, void* out, int64_t windows, int64_t n, int64_t heads, int64_t head_dim,
                              int bf16, int threads) {
  if (windows < 1 || heads < 1 || n < L || n % L) return 0;
  if (head_dim == 16) return dispatch<16>(qkv, out, windows, n, heads, bf16, threads);
  if (head_dim == 32) return dispatch<32>(qkv, out, windows, n, heads, bf16, threads);
  return 0;
}

}  // extern "C"
