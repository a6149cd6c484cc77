// Tilewise: a caching allocator for large CPU tensors, active only while the engine runs.
//
// Why: in a thread other than the main one (every host runs nodes and scripts in a worker
// thread), glibc serves each block of a megabyte or more from a fresh mapping and unmaps it
// on free, so every large tensor pays one page fault per 4 KiB each time it is created. A
// whole-image forward creates hundreds of them. This allocator keeps freed large blocks and
// hands them out again, so each is faulted in once per run.
//
// It wraps the allocator it replaces: small requests, and every request while no run is
// active, go to that allocator untouched. When the last active run ends, the kept blocks are
// returned to the system. Built and loaded by cpu_cache.py; the API is plain C for ctypes.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>

namespace {

constexpr size_t kLargeBlock = size_t{1} << 20;  // below this glibc reuses memory itself

struct Stats {
  size_t hits, misses, kept_bytes, live_blocks, runs;
};

class CachingCPUAllocator final : public c10::Allocator {
 public:
  explicit CachingCPUAllocator(c10::Allocator* wrapped) : wrapped_(wrapped) {}

  c10::DataPtr allocate(size_t n) override {
    if (n >= kLargeBlock) {
      if (void* block = take(n)) {
        return {block, block, &release, c10::Device(c10::DeviceType::CPU)};
      }
    }
    return wrapped_->allocate(n);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void enter(size_t limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (depth_++ == 0) {
      limit_ = limit;
      peak_live_ = live_bytes_;
    } else if (limit < limit_) {
      limit_ = limit;
    }
    stats_.runs++;
  }

  // While paused (for memory measurements), large blocks behave as without this allocator.
  void pause(bool on) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (on) {
      paused_++;
      drop_kept();
    } else if (paused_ > 0) {
      paused_--;
    }
  }

  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (depth_ > 0 && --depth_ == 0) drop_kept();
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    Stats s = stats_;
    s.kept_bytes = kept_bytes_;
    s.live_blocks = sizes_.size() - kept_.size();
    return s;
  }

  static CachingCPUAllocator* instance;

 private:
  // A kept block of at least n bytes and at most 1/8 more, else a new one; nullptr when no
  // run is active (the wrapped allocator then serves the request).
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (depth_ == 0 || paused_ > 0) return nullptr;
    auto it = kept_.lower_bound(n);
    if (it != kept_.end() && it->first <= n + n / 8) {
      void* block = it->second;
      kept_bytes_ -= it->first;
      live_bytes_ += it->first;
      kept_.erase(it);
      stats_.hits++;
      return block;
    }
    // Kept blocks must not raise the footprint much above the run's peak demand (what glibc
    // alone would have used), or memory estimates made without the cache would not hold:
    // give back the largest kept blocks until live + kept + n is within 1.25x of that peak.
    const size_t peak = std::max(peak_live_, live_bytes_ + n);
    const size_t budget = peak + peak / 4;
    while (!kept_.empty() && live_bytes_ + kept_bytes_ + n > budget) {
      auto largest = std::prev(kept_.end());
      free_kept(largest);
    }
    void* block = nullptr;
    try {
      block = c10::alloc_cpu(n);
    } catch (...) {  // out of memory: give back what is kept, then try once more
      drop_kept();
      block = c10::alloc_cpu(n);
    }
    sizes_[block] = n;
    live_bytes_ += n;
    peak_live_ = peak;
    stats_.misses++;
    return block;
  }

  static void release(void* block) {
    CachingCPUAllocator* self = instance;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      auto it = self->sizes_.find(block);
      if (it != self->sizes_.end()) {
        size_t n = it->second;
        self->live_bytes_ -= n;
        if (self->depth_ > 0 && self->paused_ == 0 && self->kept_bytes_ + n <= self->limit_) {
          self->kept_.emplace(n, block);
          self->kept_bytes_ += n;
          return;
        }
        self->sizes_.erase(it);
        c10::free_cpu(block);
        return;
      }
    }
    self->wrapped_->raw_deleter()(block);  // raw_allocate'd by the wrapped allocator
  }

  void free_kept(std::multimap<size_t, void*>::iterator it) {  // with mutex_ held
    kept_bytes_ -= it->first;
    sizes_.erase(it->second);
    c10::free_cpu(it->second);
    kept_.erase(it);
  }

  void drop_kept() {  // with mutex_ held
    while (!kept_.empty()) free_kept(kept_.begin());
  }

  c10::Allocator* wrapped_;
  std::mutex mutex_;
  std::multimap<size_t, void*> kept_;       // free blocks by size
  std::unordered_map<void*, size_t> sizes_;  // every block this allocator owns
  size_t kept_bytes_ = 0;
  size_t live_bytes_ = 0;  // blocks of this allocator in use
  size_t peak_live_ = 0;   // the most live_bytes_ (plus a request) since the outermost run began
  size_t limit_ = 0;
  int depth_ = 0;
  int paused_ = 0;
  Stats stats_{};
};

CachingCPUAllocator* CachingCPUAllocator::instance = nullptr;
std::mutex install_mutex;

}  // namespace

extern "C" {

// Installs the allocator in front of the current CPU allocator (once; never removed, since
// tensors it served may outlive any run). Returns 1 when installed or already installed.
int tilewise_cache_install() {
  std::lock_guard<std::mutex> lock(install_mutex);
  if (CachingCPUAllocator::instance == nullptr) {
    // Leaked on purpose: it must outlive every tensor, including those freed at exit.
    CachingCPUAllocator::instance = new CachingCPUAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(CachingCPUAllocator::instance, /*priority=*/UINT8_MAX);
  }
  return c10::GetCPUAllocator() == CachingCPUAllocator::instance;
}

void tilewise_cache_enter(size_t limit) { CachingCPUAllocator::instance->enter(limit); }

void tilewise_cache_leave() { CachingCPUAllocator::instance->leave(); }

void tilewise_cache_pause(int on) { CachingCPUAllocator::instance->pause(on != 0); }

void tilewise_cache_stats(size_t* out) {
  Stats s = CachingCPUAllocator::instance->stats();
  out[0] = s.hits;
  out[1] = s.misses;
  out[2] = s.kept_bytes;
  out[3] = s.live_blocks;
  out[4] = s.runs;
}

}  // extern "C"
