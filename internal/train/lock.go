package train

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// LockFile in an output directory is held (flock) by the run writing there,
// so a second run on the same --output refuses instead of interleaving
// checkpoints and logs. The kernel drops the lock when the holder dies, so
// a crashed run never leaves a stale lock behind.
const LockFile = ".lock"

// dirLock is a held output-directory lock.
type dirLock struct{ f *os.File }

// lockDir takes the lock of dir (creating dir) or names the run that holds
// it.
func lockDir(dir, name string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: output directory %s is in use by another run (%s); wait for it or choose another --output", name, dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("%s: lock %s: %w", name, path, err)
	}
	host, _ := os.Hostname()
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d on host %s\n", os.Getpid(), host)
	}
	return &dirLock{f: f}, nil
}

// release unlocks; a nil lock is a no-op.
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
