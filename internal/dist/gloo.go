package dist

// Gloo collectives between CPU processes.
//
// The binary must start on machines without libgloo, so it does not link
// it: glooshim/shim.cc (a C API over Gloo) is built by `make gloo-shim`
// into glooshim/libuniter_gloo.so, embedded here, and at first use written
// into an anonymous file and dlopen'ed. Only that dlopen needs libgloo.
// The C calls go through function pointers resolved with dlsym and the
// small trampolines below, since cgo cannot call a C function pointer.

/*
#cgo LDFLAGS: -ldl
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct uniter_gloo uniter_gloo;

static int (*ug_abi)(void);
static uniter_gloo* (*ug_new)(int, int, const char*, long long, char*, size_t);
static int (*ug_address)(uniter_gloo*, int, char*, size_t, size_t*, char*, size_t);
static int (*ug_connect)(uniter_gloo*, int, const char*, size_t, char*, size_t);
static int (*ug_allreduce)(uniter_gloo*, int, void*, size_t, char*, size_t);
static int (*ug_broadcast)(uniter_gloo*, void*, size_t, int, char*, size_t);
static int (*ug_allgatherv)(uniter_gloo*, const void*, void*, const size_t*, char*, size_t);
static void (*ug_free)(uniter_gloo*);

static void ug_seterr(char* err, size_t errlen, const char* what, const char* detail) {
	snprintf(err, errlen, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

static int ug_writeall(int fd, const char* p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

// ug_open writes the shim image to an anonymous memory file and dlopens it
// through /proc/self/fd, so nothing is left on disk. Where memfd_create is
// refused (old kernels, seccomp) it falls back to a temporary file in
// tmpdir that is unlinked right after dlopen. Returns the handle or NULL
// with the reason in err; *dl is 1 when the failure came from dlopen
// (missing libgloo or one of its dependencies).
static void* ug_open(const char* img, size_t n, const char* tmpdir, int* dl, char* err, size_t errlen) {
	char path[4096];
	int fd = memfd_create("libuniter_gloo.so", MFD_CLOEXEC);
	int tmp = 0;
	*dl = 0;
	if (fd >= 0) {
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	} else {
		snprintf(path, sizeof path, "%s/libuniter_gloo-XXXXXX", tmpdir);
		fd = mkstemp(path);
		if (fd < 0) {
			ug_seterr(err, errlen, "gloo shim: temporary file", strerror(errno));
			return NULL;
		}
		tmp = 1;
	}
	if (ug_writeall(fd, img, n) != 0) {
		ug_seterr(err, errlen, "gloo shim: write", strerror(errno));
		close(fd);
		if (tmp) unlink(path);
		return NULL;
	}
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		*dl = 1;
		ug_seterr(err, errlen, dlerror(), NULL);
	}
	// The mapping dlopen made keeps the contents alive; the name is not
	// needed any more.
	close(fd);
	if (tmp) unlink(path);
	return h;
}

// ug_bind resolves the C API; NULL on success, else the missing symbol.
static const char* ug_bind(void* h) {
#define UG_SYM(var, name) if ((*(void**)&var = dlsym(h, name)) == NULL) return name
	UG_SYM(ug_abi, "uniter_gloo_abi");
	UG_SYM(ug_new, "uniter_gloo_new");
	UG_SYM(ug_address, "uniter_gloo_address");
	UG_SYM(ug_connect, "uniter_gloo_connect");
	UG_SYM(ug_allreduce, "uniter_gloo_allreduce");
	UG_SYM(ug_broadcast, "uniter_gloo_broadcast");
	UG_SYM(ug_allgatherv, "uniter_gloo_allgatherv");
	UG_SYM(ug_free, "uniter_gloo_free");
#undef UG_SYM
	return NULL;
}

static int ug_call_abi(void) { return ug_abi(); }
static uniter_gloo* ug_call_new(int rank, int size, const char* ip, long long ms, char* err, size_t errlen) {
	return ug_new(rank, size, ip, ms, err, errlen);
}
static int ug_call_address(uniter_gloo* g, int peer, char* buf, size_t len, size_t* n, char* err, size_t errlen) {
	return ug_address(g, peer, buf, len, n, err, errlen);
}
static int ug_call_connect(uniter_gloo* g, int peer, const char* addr, size_t len, char* err, size_t errlen) {
	return ug_connect(g, peer, addr, len, err, errlen);
}
static int ug_call_allreduce(uniter_gloo* g, int dtype, void* buf, size_t n, char* err, size_t errlen) {
	return ug_allreduce(g, dtype, buf, n, err, errlen);
}
static int ug_call_broadcast(uniter_gloo* g, void* buf, size_t n, int root, char* err, size_t errlen) {
	return ug_broadcast(g, buf, n, root, err, errlen);
}
static int ug_call_allgatherv(uniter_gloo* g, const void* in, void* out, const size_t* counts, char* err, size_t errlen) {
	return ug_allgatherv(g, in, out, counts, err, errlen);
}
static void ug_call_free(uniter_gloo* g) { ug_free(g); }
*/
import "C"

import (
	"embed"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// glooShimABI must equal kABI in glooshim/shim.cc: a stale .so embedded
// from an older shim.cc is refused rather than called wrongly.
const glooShimABI = 1

// glooShimFS holds shim.cc always and libuniter_gloo.so when make built
// it. Embedding the directory rather than the .so keeps plain `go build`
// working without the shim; loading then reports errGlooShimMissing.
//
//go:embed glooshim
var glooShimFS embed.FS

const glooShimPath = "glooshim/libuniter_gloo.so"

var errGlooShimMissing = errors.New("this uniter was built without the Gloo shim (build it with make)")

// glooErrLen is the size of the buffer the shim writes error messages to.
const glooErrLen = 1024

var glooLoad struct {
	once sync.Once
	err  error
}

// loadGloo dlopens the embedded shim once per process.
func loadGloo() error {
	glooLoad.once.Do(func() { glooLoad.err = openGlooShim() })
	return glooLoad.err
}

func openGlooShim() error {
	img, err := fs.ReadFile(glooShimFS, glooShimPath)
	if err != nil || len(img) == 0 {
		return errGlooShimMissing
	}
	cimg := C.CBytes(img)
	defer C.free(cimg)
	ctmp := C.CString(os.TempDir())
	defer C.free(unsafe.Pointer(ctmp))
	var dl C.int
	cerr := (*C.char)(C.malloc(glooErrLen))
	defer C.free(unsafe.Pointer(cerr))
	h := C.ug_open((*C.char)(cimg), C.size_t(len(img)), ctmp, &dl, cerr, glooErrLen)
	if h == nil {
		msg := C.GoString(cerr)
		if dl != 0 {
			return fmt.Errorf("multi-process CPU training needs Gloo: apt-get install libgloo0 (dlopen: %s)", msg)
		}
		return errors.New(msg)
	}
	// The library stays loaded for the life of the process: Gloo starts
	// threads and registers destructors that must not outlive its code.
	if sym := C.ug_bind(h); sym != nil {
		return fmt.Errorf("gloo shim: missing symbol %s (rebuild with make gloo-shim)", C.GoString(sym))
	}
	if abi := int(C.ug_call_abi()); abi != glooShimABI {
		return fmt.Errorf("gloo shim: ABI %d, want %d (rebuild with make gloo-shim)", abi, glooShimABI)
	}
	return nil
}

// GlooAvailable reports why Gloo cannot be used, or nil. It loads the
// shim (and so libgloo) on first call; later calls are free.
func GlooAvailable() error { return loadGloo() }

// Gloo is a communicator over Gloo's TCP transport between the ranks of
// one run. Collectives must be called in the same order with matching
// sizes on every rank. One collective runs at a time per Gloo (calls are
// serialised); each blocks the calling OS thread for its whole duration.
// After any error the communicator is unusable (Gloo closes all its
// connections on a failure or timeout): Close it and build a new one.
type Gloo struct {
	mu      sync.Mutex
	h       *C.uniter_gloo
	rank    int
	world   int
	timeout time.Duration
}

// NewGloo connects rank of world through the store kv. prefix namespaces
// the keys it writes (several communicators may share one store; a prefix
// must not be reused within one store). timeout bounds connecting and
// every later collective.
//
// host is the address the other ranks reach this one at: an IP, a host
// name, or a network interface name (its first IPv4 address, else its
// first global IPv6 one). "" takes the interface in GLOO_SOCKET_IFNAME
// (PyTorch's variable) when set, else the first address this machine's
// host name resolves to (as Gloo and PyTorch do), else 127.0.0.1. Debian
// often maps the host name to 127.0.1.1, which only works when all ranks
// share the machine: pass host (or GLOO_SOCKET_IFNAME) across machines.
func NewGloo(kv KV, prefix string, rank, world int, host string, timeout time.Duration) (*Gloo, error) {
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("gloo: rank %d of world %d", rank, world)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("gloo: timeout %v must be positive", timeout)
	}
	if err := loadGloo(); err != nil {
		return nil, err
	}
	ip, err := glooHostIP(host)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)

	cip := C.CString(ip)
	defer C.free(unsafe.Pointer(cip))
	cerr := (*C.char)(C.malloc(glooErrLen))
	defer C.free(unsafe.Pointer(cerr))
	h := C.ug_call_new(C.int(rank), C.int(world), cip, C.longlong(timeout.Milliseconds()), cerr, glooErrLen)
	if h == nil {
		return nil, fmt.Errorf("gloo: device on %s: %s", ip, C.GoString(cerr))
	}
	g := &Gloo{h: h, rank: rank, world: world, timeout: timeout}
	if err := g.connect(kv, prefix, deadline, cerr); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// glooKey is where rank publishes the addresses of its pairs.
func glooKey(prefix string, rank int) string {
	return prefix + "/gloo/addr/" + strconv.Itoa(rank)
}

// connect publishes this rank's pair addresses and connects every pair to
// its peer, the exchange gloo::rendezvous::Context::connectFullMesh does.
// Peers are taken in ascending order as there; a pair's listening side
// blocks until the peer connects, and that order cannot deadlock.
func (g *Gloo) connect(kv KV, prefix string, deadline time.Time, cerr *C.char) error {
	// Record: for each peer, uint32 peer, uint32 length, address bytes.
	var rec []byte
	addr := (*C.char)(C.malloc(1024))
	defer C.free(unsafe.Pointer(addr))
	for j := 0; j < g.world; j++ {
		if j == g.rank {
			continue
		}
		var n C.size_t
		if C.ug_call_address(g.h, C.int(j), addr, 1024, &n, cerr, glooErrLen) != 0 {
			return fmt.Errorf("gloo: address of pair %d: %s", j, C.GoString(cerr))
		}
		rec = binary.LittleEndian.AppendUint32(rec, uint32(j))
		rec = binary.LittleEndian.AppendUint32(rec, uint32(n))
		rec = append(rec, C.GoBytes(unsafe.Pointer(addr), C.int(n))...)
	}
	if err := kv.Set(glooKey(prefix, g.rank), rec); err != nil {
		return fmt.Errorf("gloo: publish address: %w", err)
	}
	for j := 0; j < g.world; j++ {
		if j == g.rank {
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("gloo: rank %d: timed out connecting to rank %d", g.rank, j)
		}
		peerRec, err := kv.Get(glooKey(prefix, j), left)
		if err != nil {
			return fmt.Errorf("gloo: address of rank %d: %w", j, err)
		}
		a, err := glooPeerAddr(peerRec, g.rank)
		if err != nil {
			return fmt.Errorf("gloo: address of rank %d: %w", j, err)
		}
		ca := C.CBytes(a)
		rc := C.ug_call_connect(g.h, C.int(j), (*C.char)(ca), C.size_t(len(a)), cerr, glooErrLen)
		C.free(ca)
		if rc != 0 {
			return fmt.Errorf("gloo: rank %d: connect to rank %d: %s", g.rank, j, C.GoString(cerr))
		}
	}
	return nil
}

// glooPeerAddr finds, in a peer's record, the address of its pair for rank.
func glooPeerAddr(rec []byte, rank int) ([]byte, error) {
	for len(rec) >= 8 {
		peer := int(binary.LittleEndian.Uint32(rec))
		n := int(binary.LittleEndian.Uint32(rec[4:]))
		rec = rec[8:]
		if n > len(rec) {
			break
		}
		if peer == rank {
			return rec[:n], nil
		}
		rec = rec[n:]
	}
	return nil, fmt.Errorf("no address for rank %d (malformed record or different world size)", rank)
}

// glooHostIP turns NewGloo's host argument into a numeric IP, because the
// shim accepts only literal addresses (see uniter_gloo_new).
func glooHostIP(host string) (string, error) {
	if host == "" {
		if ifname := os.Getenv("GLOO_SOCKET_IFNAME"); ifname != "" {
			// PyTorch allows a comma-separated list; one device is used here.
			host, _, _ = strings.Cut(ifname, ",")
		}
	}
	if host == "" {
		name, err := os.Hostname()
		if err == nil {
			if ips, err := net.LookupIP(name); err == nil && len(ips) > 0 {
				return pickIP(ips).String(), nil
			}
		}
		return "127.0.0.1", nil
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil {
		return ip.String(), nil
	}
	if ifi, err := net.InterfaceByName(host); err == nil {
		addrs, err := ifi.Addrs()
		if err != nil {
			return "", fmt.Errorf("gloo: interface %s: %w", host, err)
		}
		var ips []net.IP
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				ips = append(ips, n.IP)
			}
		}
		if len(ips) == 0 {
			return "", fmt.Errorf("gloo: interface %s has no usable IP address", host)
		}
		return pickIP(ips).String(), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("gloo: host %q is neither an IP, an interface nor a resolvable name: %v", host, err)
	}
	return pickIP(ips).String(), nil
}

// pickIP prefers IPv4, which every rank of a cluster is likeliest to share.
func pickIP(ips []net.IP) net.IP {
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip
		}
	}
	return ips[0]
}

// Rank is this process's rank.
func (g *Gloo) Rank() int { return g.rank }

// World is the number of ranks.
func (g *Gloo) World() int { return g.world }

// call runs fn on the open handle with an error buffer, one at a time.
func (g *Gloo) call(what string, fn func(h *C.uniter_gloo, cerr *C.char) C.int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.h == nil {
		return fmt.Errorf("gloo: %s on a closed communicator", what)
	}
	cerr := (*C.char)(C.malloc(glooErrLen))
	defer C.free(unsafe.Pointer(cerr))
	if fn(g.h, cerr) != 0 {
		return fmt.Errorf("gloo: rank %d: %s: %s", g.rank, what, C.GoString(cerr))
	}
	return nil
}

// AllReduceF32 sums buf in place across ranks with the ring algorithm.
// Each element is reduced once and copied to the others, so every rank
// ends with the same bits.
func (g *Gloo) AllReduceF32(buf []float32) error {
	if len(buf) == 0 {
		return nil
	}
	return g.call("allreduce", func(h *C.uniter_gloo, cerr *C.char) C.int {
		return C.ug_call_allreduce(h, 0, unsafe.Pointer(&buf[0]), C.size_t(len(buf)), cerr, glooErrLen)
	})
}

// AllReduceF64 is AllReduceF32 for float64.
func (g *Gloo) AllReduceF64(buf []float64) error {
	if len(buf) == 0 {
		return nil
	}
	return g.call("allreduce", func(h *C.uniter_gloo, cerr *C.char) C.int {
		return C.ug_call_allreduce(h, 1, unsafe.Pointer(&buf[0]), C.size_t(len(buf)), cerr, glooErrLen)
	})
}

// Broadcast copies root's buf into buf on every other rank; buf must have
// the same length everywhere.
func (g *Gloo) Broadcast(buf []byte, root int) error {
	if root < 0 || root >= g.world {
		return fmt.Errorf("gloo: broadcast root %d of world %d", root, g.world)
	}
	if len(buf) == 0 {
		return nil
	}
	return g.call("broadcast", func(h *C.uniter_gloo, cerr *C.char) C.int {
		return C.ug_call_broadcast(h, unsafe.Pointer(&buf[0]), C.size_t(len(buf)), C.int(root), cerr, glooErrLen)
	})
}

// AllGather returns every rank's local, indexed by rank; the lengths may
// differ between ranks. The sizes are exchanged first, so it costs two
// collectives. The returned slices share one buffer.
func (g *Gloo) AllGather(local []byte) ([][]byte, error) {
	// Sizes: one uint64 per rank.
	counts := make([]C.size_t, g.world)
	for i := range counts {
		counts[i] = 8
	}
	var mine [8]byte
	binary.LittleEndian.PutUint64(mine[:], uint64(len(local)))
	sizes := make([]byte, 8*g.world)
	if err := g.allgatherv(mine[:], sizes, counts); err != nil {
		return nil, err
	}
	total := 0
	for r := range counts {
		n := binary.LittleEndian.Uint64(sizes[8*r:])
		counts[r] = C.size_t(n)
		total += int(n)
	}
	out := make([]byte, total)
	if total > 0 {
		if err := g.allgatherv(local, out, counts); err != nil {
			return nil, err
		}
	}
	res := make([][]byte, g.world)
	off := 0
	for r := range res {
		n := int(counts[r])
		res[r] = out[off : off+n : off+n]
		off += n
	}
	return res, nil
}

func (g *Gloo) allgatherv(in, out []byte, counts []C.size_t) error {
	// counts goes to C, so it lives in C memory: a Go slice of it would
	// be fine too, but this keeps the cgo pointer rules obvious.
	cc := (*C.size_t)(C.malloc(C.size_t(len(counts)) * C.size_t(unsafe.Sizeof(C.size_t(0)))))
	defer C.free(unsafe.Pointer(cc))
	copy(unsafe.Slice(cc, len(counts)), counts)
	var pin, pout unsafe.Pointer
	if len(in) > 0 {
		pin = unsafe.Pointer(&in[0])
	}
	if len(out) > 0 {
		pout = unsafe.Pointer(&out[0])
	}
	return g.call("allgather", func(h *C.uniter_gloo, cerr *C.char) C.int {
		return C.ug_call_allgatherv(h, pin, pout, cc, cerr, glooErrLen)
	})
}

// Close closes every connection, so peers blocked in a collective with
// this rank fail promptly rather than at their timeout, and frees the
// communicator. It is safe to call more than once.
func (g *Gloo) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.h != nil {
		C.ug_call_free(g.h)
		g.h = nil
	}
	return nil
}
