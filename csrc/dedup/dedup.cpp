// megatron_ar._ext.dedup: exact hashing, MinHash signatures, LSH band keys and union-find
// clustering for document deduplication.
//
// Design choices (why):
// * Every hash is defined in closed form (FNV-1a 64 folded, then the MurmurHash3 64-bit
//   finalizer) so that megatron_ar/text/dedup.py can reproduce it bit for bit in numpy when this
//   extension is missing; tests check that both give identical clusters.
// * Shingles are built from "units": Unicode code points (char mode) or whitespace-separated
//   words, split exactly like Python's str.split() (word mode). A shingle is n consecutive units;
//   a document shorter than n units gives one shingle of all its units (as datatrove does), so
//   short documents still deduplicate. This is the shingle set datasketch users build with
//   `[" ".join(w[i:i+n]) for i ...]` / `[s[i:i+n] for i ...]`, hashed to 64 bits.
// * The permutation family is pi_k(x) = (x ^ s_k) * a_k mod 2^64 with odd a_k (a bijection of the
//   64-bit space). Shingle hashes are already finalizer-mixed, so like datasketch's
//   (a*x+b) mod (2^61-1) it is a 2-universal family applied to random-looking keys; the test
//   measures the Jaccard estimate against the exact Jaccard. One multiply per (shingle, perm)
//   instead of datasketch's 128-bit mod-prime arithmetic.
// * Only the band keys (bands x 8 bytes per document) have to be kept for LSH, not the 132
//   signature values: that is what keeps terabyte runs memory-bounded.
// * Clustering: for each key column, sort (key, doc) and union neighbours with equal keys;
//   columns are sorted in parallel, unions are applied serially (cheap). The root of a component
//   is its smallest document index, i.e. the first occurrence in input order is the one kept.
// * Work is split over std::threads in blocks of documents taken from an atomic counter, with
//   the GIL released; UTF-8 buffers come from PyUnicode_AsUTF8AndSize (cached by CPython).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

inline uint64_t fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

inline uint64_t nonzero(uint64_t x) { return x ? x : 1; }  // 0 marks "no key"

inline uint64_t bytes_hash(const char* p, size_t n) {
  uint64_t h = kFnvOffset;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<uint8_t>(p[i]);
    h *= kFnvPrime;
  }
  return nonzero(fmix64(h));
}

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Decode one UTF-8 code point at p[i] (input comes from CPython, so it is valid UTF-8).
inline uint32_t next_cp(const unsigned char* p, size_t n, size_t& i) {
  uint32_t c = p[i];
  if (c < 0x80) {
    i += 1;
    return c;
  }
  if ((c >> 5) == 0x6 && i + 1 < n) {
    uint32_t r = ((c & 0x1f) << 6) | (p[i + 1] & 0x3f);
    i += 2;
    return r;
  }
  if ((c >> 4) == 0xe && i + 2 < n) {
    uint32_t r = ((c & 0x0f) << 12) | ((p[i + 1] & 0x3f) << 6) | (p[i + 2] & 0x3f);
    i += 3;
    return r;
  }
  if (i + 3 < n) {
    uint32_t r = ((c & 0x07) << 18) | ((p[i + 1] & 0x3f) << 12) | ((p[i + 2] & 0x3f) << 6) |
                 (p[i + 3] & 0x3f);
    i += 4;
    return r;
  }
  i = n;
  return c;
}

// The characters Python's str.split() treats as whitespace (str.isspace()).
inline bool py_isspace(uint32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 ||
         c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

struct Params {
  int ngram = 8;
  bool word = true;
  std::vector<uint64_t> seed_x, seed_a;  // one pair per permutation
};

Params make_params(int ngram, int num_perm, bool word, uint64_t seed) {
  if (ngram < 1) throw std::invalid_argument("ngram must be >= 1");
  if (num_perm < 1) throw std::invalid_argument("num_perm must be >= 1");
  Params p;
  p.ngram = ngram;
  p.word = word;
  uint64_t st = seed;
  for (int k = 0; k < num_perm; ++k) {
    p.seed_x.push_back(splitmix64(st));
    p.seed_a.push_back(splitmix64(st) | 1ULL);
  }
  return p;
}

// Unit hashes of one document: code points, or finalised FNV hashes of words.
void units_of(const char* s, size_t n, bool word, std::vector<uint64_t>& out) {
  out.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  size_t i = 0;
  if (!word) {
    while (i < n) out.push_back(next_cp(p, n, i));
    return;
  }
  size_t start = 0;
  bool in_word = false;
  while (i < n) {
    size_t at = i;
    uint32_t c = next_cp(p, n, i);
    bool sp = py_isspace(c);
    if (!sp && !in_word) {
      start = at;
      in_word = true;
    } else if (sp && in_word) {
      out.push_back(bytes_hash(s + start, at - start));
      in_word = false;
    }
  }
  if (in_word) out.push_back(bytes_hash(s + start, n - start));
}

void shingles_of(const std::vector<uint64_t>& units, int ngram, std::vector<uint64_t>& out) {
  out.clear();
  const size_t m = units.size();
  if (m == 0) return;
  const size_t len = std::min<size_t>(m, static_cast<size_t>(ngram));
  for (size_t i = 0; i + len <= m; ++i) {
    uint64_t h = kFnvOffset;
    for (size_t k = 0; k < len; ++k) h = (h ^ units[i + k]) * kFnvPrime;
    out.push_back(fmix64(h));
  }
}

// Signature of one document; returns false when it has no shingle (empty text).
bool signature_of(const char* s, size_t n, const Params& p, std::vector<uint64_t>& units,
                  std::vector<uint64_t>& sh, uint64_t* sig) {
  units_of(s, n, p.word, units);
  shingles_of(units, p.ngram, sh);
  const size_t np = p.seed_x.size();
  if (sh.empty()) {
    std::fill(sig, sig + np, ~0ULL);
    return false;
  }
  for (size_t k = 0; k < np; ++k) {
    const uint64_t x = p.seed_x[k], a = p.seed_a[k];
    uint64_t mn = ~0ULL;
    for (uint64_t v : sh) {
      uint64_t y = (v ^ x) * a;
      mn = y < mn ? y : mn;
    }
    sig[k] = mn;
  }
  return true;
}

inline uint64_t band_key(const uint64_t* sig, int band, int rows) {
  uint64_t h = kFnvOffset ^ (static_cast<uint64_t>(band + 1) * 0x9e3779b97f4a7c15ULL);
  for (int r = 0; r < rows; ++r) h = (h ^ sig[band * rows + r]) * kFnvPrime;
  return nonzero(fmix64(h));
}

struct Utf8Views {
  std::vector<const char*> ptr;
  std::vector<size_t> len;
};

// Must be called with the GIL held; the views stay valid while `texts` is alive.
Utf8Views views_of(const py::list& texts) {
  Utf8Views v;
  const size_t n = texts.size();
  v.ptr.resize(n);
  v.len.resize(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* o = texts[i].ptr();
    if (!PyUnicode_Check(o)) throw py::type_error("texts[" + std::to_string(i) + "] is not a str");
    Py_ssize_t sz = 0;
    const char* c = PyUnicode_AsUTF8AndSize(o, &sz);
    if (c == nullptr) throw py::error_already_set();
    v.ptr[i] = c;
    v.len[i] = static_cast<size_t>(sz);
  }
  return v;
}

int resolve_threads(int threads, size_t work) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t cap = std::max<size_t>(1, work / 16);
  return static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), cap));
}

// Run fn(begin, end) over [0, n) in blocks, on `threads` threads.
template <class Fn>
void parallel_blocks(size_t n, int threads, Fn fn) {
  constexpr size_t kBlock = 64;
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    for (;;) {
      size_t b = next.fetch_add(kBlock);
      if (b >= n) return;
      fn(b, std::min(n, b + kBlock));
    }
  };
  if (threads <= 1) {
    worker();
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
}

py::array_t<uint64_t> hash_texts(const py::list& texts, int threads) {
  Utf8Views v = views_of(texts);
  const size_t n = v.ptr.size();
  py::array_t<uint64_t> out(n);
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    parallel_blocks(n, resolve_threads(threads, n), [&](size_t b, size_t e) {
      for (size_t i = b; i < e; ++i) o[i] = bytes_hash(v.ptr[i], v.len[i]);
    });
  }
  return out;
}

py::array_t<uint64_t> signatures(const py::list& texts, int ngram, int num_perm, bool word,
                                 uint64_t seed, int threads) {
  Params p = make_params(ngram, num_perm, word, seed);
  Utf8Views v = views_of(texts);
  const size_t n = v.ptr.size();
  py::array_t<uint64_t> out({n, static_cast<size_t>(num_perm)});
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    parallel_blocks(n, resolve_threads(threads, n), [&](size_t b, size_t e) {
      std::vector<uint64_t> units, sh;
      for (size_t i = b; i < e; ++i)
        signature_of(v.ptr[i], v.len[i], p, units, sh, o + i * static_cast<size_t>(num_perm));
    });
  }
  return out;
}

py::array_t<uint64_t> band_keys(const py::list& texts, int ngram, int bands, int rows, bool word,
                                uint64_t seed, int threads) {
  if (bands < 1 || rows < 1) throw std::invalid_argument("bands and rows must be >= 1");
  Params p = make_params(ngram, bands * rows, word, seed);
  Utf8Views v = views_of(texts);
  const size_t n = v.ptr.size();
  py::array_t<uint64_t> out({n, static_cast<size_t>(bands)});
  uint64_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    parallel_blocks(n, resolve_threads(threads, n), [&](size_t b, size_t e) {
      std::vector<uint64_t> units, sh, sig(static_cast<size_t>(bands) * rows);
      for (size_t i = b; i < e; ++i) {
        uint64_t* row = o + i * static_cast<size_t>(bands);
        if (!signature_of(v.ptr[i], v.len[i], p, units, sh, sig.data())) {
          std::fill(row, row + bands, 0ULL);  // empty document: no LSH key
          continue;
        }
        for (int bd = 0; bd < bands; ++bd) row[bd] = band_key(sig.data(), bd, rows);
      }
    });
  }
  return out;
}

py::array_t<uint64_t> signatures_to_bands(py::array_t<uint64_t, py::array::c_style> sig, int bands,
                                          int rows) {
  if (sig.ndim() != 2 || sig.shape(1) != static_cast<py::ssize_t>(bands) * rows)
    throw std::invalid_argument("signatures must have shape (n, bands*rows)");
  const size_t n = sig.shape(0);
  py::array_t<uint64_t> out({n, static_cast<size_t>(bands)});
  const uint64_t* s = sig.data();
  uint64_t* o = out.mutable_data();
  for (size_t i = 0; i < n; ++i) {
    const uint64_t* r = s + i * bands * rows;
    const bool empty = std::all_of(r, r + bands * rows, [](uint64_t x) { return x == ~0ULL; });
    for (int b = 0; b < bands; ++b) o[i * bands + b] = empty ? 0 : band_key(r, b, rows);
  }
  return out;
}

struct UnionFind {
  std::vector<int64_t> parent;
  explicit UnionFind(size_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0); }
  int64_t find(int64_t x) {
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];
      x = parent[x];
    }
    return x;
  }
  void unite(int64_t a, int64_t b) {
    a = find(a);
    b = find(b);
    if (a == b) return;
    if (a < b) parent[b] = a;  // the smaller index (first seen) stays the root
    else parent[a] = b;
  }
};

// keys: (n, k) uint64; documents sharing a non-zero key in any column are joined.
// Returns each document's root: the smallest index of its component.
py::array_t<int64_t> cluster(py::array_t<uint64_t, py::array::c_style> keys, int threads) {
  if (keys.ndim() != 2) throw std::invalid_argument("keys must be a 2-D uint64 array (n, k)");
  const size_t n = keys.shape(0), k = keys.shape(1);
  const uint64_t* kp = keys.data();
  UnionFind uf(n);
  {
    py::gil_scoped_release nogil;
    std::vector<std::vector<std::pair<uint64_t, int64_t>>> cols(k);
    std::atomic<size_t> next{0};
    int nt = threads <= 0 ? static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))
                          : threads;
    nt = static_cast<int>(std::min<size_t>(std::max(1, nt), std::max<size_t>(1, k)));
    // Sort and union column by column in waves of nt so at most nt sorted copies are alive.
    for (size_t base = 0; base < k; base += nt) {
      const size_t end = std::min(k, base + nt);
      next = base;
      auto wave = [&]() {
        for (;;) {
          size_t c = next.fetch_add(1);
          if (c >= end) return;
          auto& v = cols[c];
          v.reserve(n);
          for (size_t i = 0; i < n; ++i) {
            uint64_t key = kp[i * k + c];
            if (key) v.emplace_back(key, static_cast<int64_t>(i));
          }
          std::sort(v.begin(), v.end());
        }
      };
      std::vector<std::thread> pool;
      for (size_t t = 1; t < end - base; ++t) pool.emplace_back(wave);
      wave();
      for (auto& t : pool) t.join();
      for (size_t c = base; c < end; ++c) {
        auto& v = cols[c];
        for (size_t j = 1; j < v.size(); ++j)
          if (v[j].first == v[j - 1].first) uf.unite(v[j - 1].second, v[j].second);
        std::vector<std::pair<uint64_t, int64_t>>().swap(v);
      }
    }
  }
  py::array_t<int64_t> out(n);
  int64_t* o = out.mutable_data();
  for (size_t i = 0; i < n; ++i) o[i] = uf.find(static_cast<int64_t>(i));
  return out;
}

py::dict perm_params(int num_perm, uint64_t seed) {
  Params p = make_params(1, num_perm, true, seed);
  py::dict d;
  d["x"] = py::array_t<uint64_t>(p.seed_x.size(), p.seed_x.data());
  d["a"] = py::array_t<uint64_t>(p.seed_a.size(), p.seed_a.data());
  return d;
}

}  // namespace

PYBIND11_MODULE(dedup, m) {
  m.doc() = "Exact hashing, MinHash-LSH band keys and union-find clustering (see dedup.cpp).";
  m.def("hash_texts", &hash_texts, py::arg("texts"), py::arg("threads") = 0,
        "64-bit FNV-1a+fmix64 hash of each str's UTF-8 bytes (never 0).");
  m.def("signatures", &signatures, py::arg("texts"), py::arg("ngram") = 8,
        py::arg("num_perm") = 132, py::arg("word") = true, py::arg("seed") = 1,
        py::arg("threads") = 0, "MinHash signatures, shape (n, num_perm) uint64.");
  m.def("band_keys", &band_keys, py::arg("texts"), py::arg("ngram") = 8, py::arg("bands") = 12,
        py::arg("rows") = 11, py::arg("word") = true, py::arg("seed") = 1,
        py::arg("threads") = 0, "LSH band keys, shape (n, bands) uint64; 0 for empty texts.");
  m.def("signatures_to_bands", &signatures_to_bands, py::arg("signatures"), py::arg("bands"),
        py::arg("rows"));
  m.def("cluster", &cluster, py::arg("keys"), py::arg("threads") = 0,
        "Union documents sharing a non-zero key in any column; returns smallest-index roots.");
  m.def("perm_params", &perm_params, py::arg("num_perm"), py::arg("seed") = 1);
}
