// Package lmdb is a small cgo binding to the LMDB key-value store, enough to
// read and write the official UNITER txt_db and img_db environments.
//
// liblmdb is linked statically so that the uniter binary runs on machines
// without it; building needs Debian's liblmdb-dev.
//
// A read-only Env is safe for concurrent use by many goroutines: each Get
// borrows a read transaction from a pool, so reads never serialise on a lock.
// A writable Env buffers puts and commits them in batches; it must not be used
// concurrently.
package lmdb

/*
#cgo LDFLAGS: -l:liblmdb.a -lpthread
#include <stdlib.h>
#include <lmdb.h>

// The helpers build MDB_val structs on the C side: cgo forbids passing Go
// memory that itself holds Go pointers, which an MDB_val pointing at a Go
// slice would be.
static int uniter_get(MDB_txn *txn, MDB_dbi dbi, void *k, size_t kn, MDB_val *out) {
	MDB_val key = {kn, k};
	return mdb_get(txn, dbi, &key, out);
}

static int uniter_put(MDB_txn *txn, MDB_dbi dbi, void *k, size_t kn, void *v, size_t vn) {
	MDB_val key = {kn, k};
	MDB_val val = {vn, v};
	return mdb_put(txn, dbi, &key, &val, 0);
}

static int uniter_cursor_get(MDB_cursor *c, MDB_val *k, MDB_val *v, int op) {
	return mdb_cursor_get(c, k, v, (MDB_cursor_op)op);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"
)

// ErrNotFound is returned (wrapped) by Get when the key is absent.
var ErrNotFound = errors.New("key not found")

// DefaultMapSize is the initial map size of a writable environment. The map
// grows by doubling whenever LMDB reports it full, so this only needs to be
// large enough to avoid frequent regrowth on small dbs.
const DefaultMapSize = 64 << 20

// commitEvery bounds how many puts a writer batches into one transaction,
// like the official preprocessing scripts (1000 puts per commit).
const commitEvery = 1000

// commitBytes bounds the bytes a writer holds in memory before committing.
const commitBytes = 256 << 20

// Errno is an LMDB or system error code.
type Errno int

// Error returns LMDB's description of the code.
func (e Errno) Error() string { return C.GoString(C.mdb_strerror(C.int(e))) }

// Env is an open LMDB environment with its unnamed database.
type Env struct {
	path     string
	env      *C.MDB_env
	dbi      C.MDB_dbi
	writable bool

	mu     sync.Mutex
	closed bool
	txns   []*C.MDB_txn // idle read transactions

	// Writer state; only touched by the single writing goroutine.
	mapSize int64
	pending []kv
	pendN   int
}

type kv struct{ k, v []byte }

// Options tune Create.
type Options struct {
	// MapSize is the initial map size in bytes (DefaultMapSize when 0).
	MapSize int64
}

// Open opens the LMDB environment in directory path read-only. It takes no
// lock file (MDB_NOLOCK), so the directory may be read-only and many
// processes may read it; nobody may write it meanwhile.
func Open(path string) (*Env, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("lmdb %s: %w", path, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("lmdb %s: not a directory", path)
	}
	if _, err := os.Stat(path + "/data.mdb"); err != nil {
		return nil, fmt.Errorf("lmdb %s: no data.mdb: %w", path, err)
	}
	flags := C.uint(C.MDB_RDONLY | C.MDB_NOLOCK | C.MDB_NOTLS | C.MDB_NORDAHEAD)
	e, err := open(path, flags, 0)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Create opens (creating if needed) the LMDB environment in directory path
// for writing. Puts are buffered; Flush or Close commits them.
func Create(path string, opt Options) (*Env, error) {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, fmt.Errorf("lmdb %s: %w", path, err)
	}
	size := opt.MapSize
	if size <= 0 {
		size = DefaultMapSize
	}
	e, err := open(path, C.MDB_NOTLS, size)
	if err != nil {
		return nil, err
	}
	e.writable = true
	return e, nil
}

func open(path string, flags C.uint, mapSize int64) (*Env, error) {
	e := &Env{path: path, mapSize: mapSize}
	if rc := C.mdb_env_create(&e.env); rc != 0 {
		return nil, fmt.Errorf("lmdb %s: create env: %w", path, Errno(rc))
	}
	if mapSize > 0 {
		if rc := C.mdb_env_set_mapsize(e.env, C.size_t(mapSize)); rc != 0 {
			C.mdb_env_close(e.env)
			return nil, fmt.Errorf("lmdb %s: set map size %d: %w", path, mapSize, Errno(rc))
		}
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if rc := C.mdb_env_open(e.env, cpath, flags, 0o644); rc != 0 {
		C.mdb_env_close(e.env)
		return nil, fmt.Errorf("lmdb %s: open: %w", path, Errno(rc))
	}
	// The unnamed database needs a transaction to be opened; its handle then
	// stays valid for the life of the environment.
	var txn *C.MDB_txn
	rflags := C.uint(0)
	if flags&C.MDB_RDONLY != 0 {
		rflags = C.MDB_RDONLY
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := C.mdb_txn_begin(e.env, nil, rflags, &txn); rc != 0 {
		C.mdb_env_close(e.env)
		return nil, fmt.Errorf("lmdb %s: begin: %w", path, Errno(rc))
	}
	if rc := C.mdb_dbi_open(txn, nil, 0, &e.dbi); rc != 0 {
		C.mdb_txn_abort(txn)
		C.mdb_env_close(e.env)
		return nil, fmt.Errorf("lmdb %s: open db: %w", path, Errno(rc))
	}
	if rc := C.mdb_txn_commit(txn); rc != 0 {
		C.mdb_env_close(e.env)
		return nil, fmt.Errorf("lmdb %s: commit: %w", path, Errno(rc))
	}
	return e, nil
}

// Path returns the environment directory.
func (e *Env) Path() string { return e.path }

// readTxn borrows a read transaction. With MDB_NOTLS a read transaction is
// not tied to an OS thread, so it may move between goroutines as long as
// only one uses it at a time, which the pool guarantees.
func (e *Env) readTxn() (*C.MDB_txn, error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, fmt.Errorf("lmdb %s: environment closed", e.path)
	}
	if n := len(e.txns); n > 0 {
		t := e.txns[n-1]
		e.txns = e.txns[:n-1]
		e.mu.Unlock()
		if e.writable {
			// Renew so that the reader sees the latest commit.
			if rc := C.mdb_txn_renew(t); rc != 0 {
				C.mdb_txn_abort(t)
				return nil, fmt.Errorf("lmdb %s: renew read txn: %w", e.path, Errno(rc))
			}
		}
		return t, nil
	}
	e.mu.Unlock()
	var t *C.MDB_txn
	if rc := C.mdb_txn_begin(e.env, nil, C.MDB_RDONLY, &t); rc != 0 {
		return nil, fmt.Errorf("lmdb %s: begin read txn: %w", e.path, Errno(rc))
	}
	return t, nil
}

func (e *Env) releaseTxn(t *C.MDB_txn) {
	if e.writable {
		// A writer's readers must not pin old pages across commits.
		C.mdb_txn_reset(t)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		C.mdb_txn_abort(t)
		return
	}
	e.txns = append(e.txns, t)
	e.mu.Unlock()
}

// Get returns a copy of the value stored under key. An absent key gives an
// error wrapping ErrNotFound. Puts not yet flushed are not visible.
func (e *Env) Get(key []byte) ([]byte, error) {
	var b []byte
	err := e.View(key, func(val []byte) error {
		b = append(make([]byte, 0, len(val)), val...)
		return nil
	})
	return b, err
}

// goBytes copies a value out of the memory map, which is only valid while
// its transaction lives.
func goBytes(v C.MDB_val) []byte {
	b := make([]byte, int(v.mv_size))
	if len(b) > 0 {
		copy(b, unsafe.Slice((*byte)(v.mv_data), len(b)))
	}
	return b
}

// View calls fn with the value stored under key without copying it out of
// the memory map. The slice is valid only during fn, which must not retain
// or modify it; this saves a copy when the caller converts the value
// anyway. An absent key gives an error wrapping ErrNotFound, and fn's error
// is returned as is.
func (e *Env) View(key []byte, fn func(val []byte) error) error {
	if len(key) == 0 {
		return fmt.Errorf("lmdb %s: get: empty key", e.path)
	}
	t, err := e.readTxn()
	if err != nil {
		return err
	}
	defer e.releaseTxn(t)
	var val C.MDB_val
	rc := C.uniter_get(t, e.dbi, unsafe.Pointer(&key[0]), C.size_t(len(key)), &val)
	switch rc {
	case 0:
	case C.MDB_NOTFOUND:
		return fmt.Errorf("lmdb %s: key %q: %w", e.path, key, ErrNotFound)
	default:
		return fmt.Errorf("lmdb %s: get %q: %w", e.path, key, Errno(rc))
	}
	var b []byte
	if val.mv_size > 0 {
		b = unsafe.Slice((*byte)(val.mv_data), int(val.mv_size))
	}
	return fn(b[:len(b):len(b)])
}

// Len returns the number of committed entries.
func (e *Env) Len() (int, error) {
	t, err := e.readTxn()
	if err != nil {
		return 0, err
	}
	defer e.releaseTxn(t)
	var st C.MDB_stat
	if rc := C.mdb_stat(t, e.dbi, &st); rc != 0 {
		return 0, fmt.Errorf("lmdb %s: stat: %w", e.path, Errno(rc))
	}
	return int(st.ms_entries), nil
}

// ForEach calls fn with copies of every committed key and value in key
// order, stopping at the first error fn returns.
func (e *Env) ForEach(fn func(key, val []byte) error) error {
	t, err := e.readTxn()
	if err != nil {
		return err
	}
	defer e.releaseTxn(t)
	var cur *C.MDB_cursor
	if rc := C.mdb_cursor_open(t, e.dbi, &cur); rc != 0 {
		return fmt.Errorf("lmdb %s: open cursor: %w", e.path, Errno(rc))
	}
	defer C.mdb_cursor_close(cur)
	var k, v C.MDB_val
	op := C.int(C.MDB_FIRST)
	for {
		rc := C.uniter_cursor_get(cur, &k, &v, op)
		if rc == C.MDB_NOTFOUND {
			return nil
		}
		if rc != 0 {
			return fmt.Errorf("lmdb %s: cursor: %w", e.path, Errno(rc))
		}
		if err := fn(goBytes(k), goBytes(v)); err != nil {
			return err
		}
		op = C.MDB_NEXT
	}
}

// maxKeySize is LMDB's default limit on key length.
const maxKeySize = 511

// Put stores val under key, replacing any previous value. The write is
// buffered and committed with the next batch, Flush or Close.
func (e *Env) Put(key, val []byte) error {
	if !e.writable {
		return fmt.Errorf("lmdb %s: put %q: environment is read-only", e.path, key)
	}
	if len(key) == 0 || len(key) > maxKeySize {
		return fmt.Errorf("lmdb %s: put %q: key length %d not in [1, %d]", e.path, key, len(key), maxKeySize)
	}
	e.pending = append(e.pending, kv{append([]byte(nil), key...), append([]byte(nil), val...)})
	e.pendN += len(key) + len(val)
	if len(e.pending) >= commitEvery || e.pendN >= commitBytes {
		return e.Flush()
	}
	return nil
}

// Flush commits the buffered puts in one transaction, growing the map and
// retrying when LMDB reports it full.
func (e *Env) Flush() error {
	if !e.writable || len(e.pending) == 0 {
		return nil
	}
	for {
		rc, key := e.commit()
		if rc == 0 {
			e.pending = e.pending[:0]
			e.pendN = 0
			return nil
		}
		if rc != C.MDB_MAP_FULL {
			if key != nil {
				return fmt.Errorf("lmdb %s: put %q: %w", e.path, key, Errno(rc))
			}
			return fmt.Errorf("lmdb %s: commit: %w", e.path, Errno(rc))
		}
		newSize := 2 * e.mapSize
		if min := e.mapSize + 2*int64(e.pendN); newSize < min {
			newSize = min
		}
		if rc := C.mdb_env_set_mapsize(e.env, C.size_t(newSize)); rc != 0 {
			return fmt.Errorf("lmdb %s: grow map to %d bytes: %w", e.path, newSize, Errno(rc))
		}
		e.mapSize = newSize
	}
}

// commit writes the pending batch in one write transaction and returns the
// LMDB code and, for a failed put, its key. The transaction is aborted on
// failure so that the batch can be replayed after growing the map.
func (e *Env) commit() (C.int, []byte) {
	// LMDB's writer mutex belongs to the thread that begins the transaction.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var t *C.MDB_txn
	if rc := C.mdb_txn_begin(e.env, nil, 0, &t); rc != 0 {
		return rc, nil
	}
	for _, p := range e.pending {
		var v unsafe.Pointer
		if len(p.v) > 0 {
			v = unsafe.Pointer(&p.v[0])
		}
		rc := C.uniter_put(t, e.dbi, unsafe.Pointer(&p.k[0]), C.size_t(len(p.k)), v, C.size_t(len(p.v)))
		if rc != 0 {
			C.mdb_txn_abort(t)
			return rc, p.k
		}
	}
	if rc := C.mdb_txn_commit(t); rc != 0 {
		return rc, nil
	}
	return 0, nil
}

// Close flushes a writer's buffered puts and closes the environment. No Get
// may be in flight.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.mu.Unlock()
	err := e.Flush()
	e.mu.Lock()
	e.closed = true
	txns := e.txns
	e.txns = nil
	e.mu.Unlock()
	for _, t := range txns {
		C.mdb_txn_abort(t)
	}
	if e.writable && err == nil {
		if rc := C.mdb_env_sync(e.env, 1); rc != 0 {
			err = fmt.Errorf("lmdb %s: sync: %w", e.path, Errno(rc))
		}
	}
	C.mdb_env_close(e.env)
	return err
}
