// Plain C API over Gloo's TCP transport for internal/dist (gloo.go).
//
// Why a shim: uniter must start on machines without libgloo, so the Go
// binary never links it. This file is built into libuniter_gloo.so (make
// gloo-shim), embedded into the binary, and dlopen'ed at first use; only
// then is libgloo needed. A C API keeps the dlsym side free of C++ name
// mangling, and every entry point catches all exceptions, because a C++
// exception unwinding into cgo frames aborts the process.
//
// Rendezvous is left to the caller: uniter_gloo_new creates the device and
// one listening pair per peer, uniter_gloo_address hands out each pair's
// address, the caller exchanges them through its own store and then calls
// uniter_gloo_connect per peer. This is what
// gloo::rendezvous::Context::connectFullMesh does, without calling back
// into Go for the store.
//
// Errors: functions returning int give 0 on success and -1 on failure with
// a NUL-terminated message in err (errlen bytes, truncated).

#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/broadcast.h>
#include <gloo/context.h>
#include <gloo/math.h>
#include <gloo/transport/context.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

// Bump together with glooShimABI in gloo.go when the C API changes, so a
// stale .so is refused instead of being called with the wrong arguments.
constexpr int kABI = 1;

// Largest piece handed to one Gloo call. Gloo's own sizes are size_t, so
// this is insurance against any narrower counter inside a given release,
// not a known limit; 1 GiB pieces cost nothing in bandwidth.
constexpr size_t kMaxChunkBytes = size_t(1) << 30;

// gloo::Context keeps the device and transport context protected; the
// rendezvous Context sets them in connectFullMesh, and so does this.
class MeshContext : public gloo::Context {
 public:
  MeshContext(int rank, int size) : gloo::Context(rank, size) {}

  void setTransport(
      std::shared_ptr<gloo::transport::Device> dev,
      std::shared_ptr<gloo::transport::Context> tc) {
    device_ = std::move(dev);
    transportContext_ = std::move(tc);
  }

  gloo::transport::Context* transport() {
    return transportContext_.get();
  }
};

// createDevice creates the TCP device, and with it Gloo's event-loop
// thread, from a helper thread that blocks SIGPIPE: the loop thread
// inherits that mask. It writes to sockets, and a peer that went away
// makes those writes raise SIGPIPE, which on a thread Go did not create
// kills the process (os/signal, "Go programs that use cgo"). Blocked, the
// write fails with EPIPE and Gloo reports an error. Go's own threads are
// left alone; Go ignores SIGPIPE there for sockets.
std::shared_ptr<gloo::transport::Device> createDevice(
    const gloo::transport::tcp::attr& attr) {
  std::shared_ptr<gloo::transport::Device> dev;
  std::exception_ptr ex;
  std::thread t([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    try {
      dev = gloo::transport::tcp::CreateDevice(attr);
    } catch (...) {
      ex = std::current_exception();
    }
  });
  t.join();
  if (ex) {
    std::rethrow_exception(ex);
  }
  return dev;
}

void setErr(char* err, size_t errlen, const char* msg) {
  if (err == nullptr || errlen == 0) {
    return;
  }
  std::strncpy(err, msg, errlen - 1);
  err[errlen - 1] = 0;
}

// guard runs fn and turns any exception into -1 plus a message.
template <typename F>
int guard(char* err, size_t errlen, F fn) {
  try {
    fn();
    return 0;
  } catch (const std::exception& e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "unknown C++ exception in Gloo");
  }
  return -1;
}

} // namespace

struct uniter_gloo {
  std::shared_ptr<MeshContext> ctx;
  std::chrono::milliseconds timeout;
};

extern "C" {

int uniter_gloo_abi(void) {
  return kABI;
}

// uniter_gloo_new binds a TCP device to the numeric address ip (IPv4 or
// IPv6; numeric so Gloo never resolves names itself) and creates a
// listening pair for every peer. timeout_ms bounds connecting and every
// collective. Returns NULL on failure.
uniter_gloo* uniter_gloo_new(
    int rank,
    int size,
    const char* ip,
    long long timeout_ms,
    char* err,
    size_t errlen) {
  uniter_gloo* h = nullptr;
  int rc = guard(err, errlen, [&] {
    // Gloo's hostname lookup treats getaddrinfo failures as success, so
    // refuse anything that is not a literal address before it gets there.
    unsigned char tmp[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, ip, tmp) != 1 && inet_pton(AF_INET6, ip, tmp) != 1) {
      throw std::runtime_error(std::string("not a numeric IP address: ") + ip);
    }
    gloo::transport::tcp::attr attr;
    attr.hostname = ip;
    auto dev = createDevice(attr);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto ctx = std::make_shared<MeshContext>(rank, size);
    ctx->setTimeout(timeout);
    auto tc = dev->createContext(rank, size);
    tc->setTimeout(timeout);
    for (int i = 0; i < size; i++) {
      if (i != rank) {
        tc->createPair(i);
      }
    }
    ctx->setTransport(dev, tc);
    h = new uniter_gloo{ctx, timeout};
  });
  return rc == 0 ? h : nullptr;
}

// uniter_gloo_address copies the address of the pair that waits for peer
// into buf (len bytes) and stores its length in *n.
int uniter_gloo_address(
    uniter_gloo* h,
    int peer,
    char* buf,
    size_t len,
    size_t* n,
    char* err,
    size_t errlen) {
  return guard(err, errlen, [&] {
    auto bytes = h->ctx->transport()->getPair(peer)->address().bytes();
    if (bytes.size() > len) {
      throw std::runtime_error("Gloo pair address larger than buffer");
    }
    std::memcpy(buf, bytes.data(), bytes.size());
    *n = bytes.size();
  });
}

// uniter_gloo_connect connects the pair for peer to the address peer
// published for this rank. It blocks until connected or the timeout.
int uniter_gloo_connect(
    uniter_gloo* h,
    int peer,
    const char* addr,
    size_t len,
    char* err,
    size_t errlen) {
  return guard(err, errlen, [&] {
    std::vector<char> bytes(addr, addr + len);
    h->ctx->transport()->getPair(peer)->connect(bytes);
  });
}

// uniter_gloo_allreduce sums n elements in place across ranks with Gloo's
// ring algorithm, which reduces each segment on one rank and then copies
// it, so every rank ends with the same bits. dtype: 0 float32, 1 float64.
int uniter_gloo_allreduce(
    uniter_gloo* h,
    int dtype,
    void* buf,
    size_t n,
    char* err,
    size_t errlen) {
  return guard(err, errlen, [&] {
    size_t esize;
    gloo::AllreduceOptions::Func fn;
    if (dtype == 0) {
      esize = sizeof(float);
      fn = static_cast<void (*)(void*, const void*, const void*, size_t)>(
          &gloo::sum<float>);
    } else if (dtype == 1) {
      esize = sizeof(double);
      fn = static_cast<void (*)(void*, const void*, const void*, size_t)>(
          &gloo::sum<double>);
    } else {
      throw std::runtime_error("unknown dtype");
    }
    const size_t chunk = kMaxChunkBytes / esize;
    for (size_t off = 0; off < n; off += chunk) {
      size_t m = std::min(chunk, n - off);
      gloo::AllreduceOptions opts(h->ctx);
      opts.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
      opts.setReduceFunction(fn);
      opts.setTimeout(h->timeout);
      if (dtype == 0) {
        opts.setOutput(static_cast<float*>(buf) + off, m);
      } else {
        opts.setOutput(static_cast<double*>(buf) + off, m);
      }
      gloo::allreduce(opts);
    }
  });
}

// uniter_gloo_broadcast copies n bytes of root's buf into every rank's.
int uniter_gloo_broadcast(
    uniter_gloo* h,
    void* buf,
    size_t n,
    int root,
    char* err,
    size_t errlen) {
  return guard(err, errlen, [&] {
    for (size_t off = 0; off < n; off += kMaxChunkBytes) {
      size_t m = std::min(kMaxChunkBytes, n - off);
      gloo::BroadcastOptions opts(h->ctx);
      opts.setRoot(root);
      opts.setTimeout(h->timeout);
      opts.setOutput(static_cast<uint8_t*>(buf) + off, m);
      gloo::broadcast(opts);
    }
  });
}

// uniter_gloo_allgatherv concatenates every rank's bytes into out in rank
// order; counts[r] is rank r's byte count (the same array on every rank)
// and in holds counts[rank] bytes.
int uniter_gloo_allgatherv(
    uniter_gloo* h,
    const void* in,
    void* out,
    const size_t* counts,
    char* err,
    size_t errlen) {
  return guard(err, errlen, [&] {
    const int size = h->ctx->size;
    std::vector<size_t> elements(counts, counts + size);
    gloo::AllgathervOptions opts(h->ctx);
    opts.setTimeout(h->timeout);
    // Gloo only reads the input; its API takes a non-const pointer.
    opts.setInput(const_cast<uint8_t*>(static_cast<const uint8_t*>(in)),
                  elements[h->ctx->rank]);
    opts.setOutput(static_cast<uint8_t*>(out), elements);
    gloo::allgatherv(opts);
  });
}

// uniter_gloo_free closes every connection, so peers blocked on this rank
// fail at once instead of waiting for their timeout, and frees h.
void uniter_gloo_free(uniter_gloo* h) {
  if (h == nullptr) {
    return;
  }
  try {
    h->ctx->closeConnections();
  } catch (...) {
  }
  try {
    delete h;
  } catch (...) {
  }
}

} // extern "C"
