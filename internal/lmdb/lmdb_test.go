package lmdb

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestRoundTripAndGrowth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	// A tiny map forces several MDB_MAP_FULL -> grow -> replay cycles.
	w, err := Create(dir, Options{MapSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	val := bytes.Repeat([]byte{7}, 10000)
	const n = 2500
	for i := 0; i < n; i++ {
		if err := w.Put([]byte(fmt.Sprintf("k%05d", i)), append(val, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Put([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := r.Len(); err != nil || got != n+1 {
		t.Fatalf("Len = %d, %v; want %d", got, err, n+1)
	}
	got, err := r.Get([]byte("k00042"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(val, 42)) {
		t.Fatal("value mismatch")
	}
	var viewed int
	if err := r.View([]byte("k00042"), func(v []byte) error {
		if !bytes.Equal(v, append(val, 42)) {
			return errors.New("View value mismatch")
		}
		viewed = len(v)
		return nil
	}); err != nil || viewed != len(val)+1 {
		t.Fatalf("View: %v (saw %d bytes)", err, viewed)
	}
	fnErr := errors.New("from fn")
	if err := r.View([]byte("k00001"), func([]byte) error { return fnErr }); err != fnErr {
		t.Fatalf("View did not return fn's error: %v", err)
	}
	if err := r.View([]byte("nope"), func([]byte) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("View missing key: %v", err)
	}
	if err := r.View([]byte("empty"), func(v []byte) error {
		if len(v) != 0 {
			return errors.New("non-empty")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Get([]byte("empty")); err != nil || len(got) != 0 {
		t.Fatalf("empty value: %v %v", got, err)
	}
	_, err = r.Get([]byte("nope"))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing key error = %v", err)
	}
	if err := r.Put([]byte("x"), nil); err == nil {
		t.Fatal("Put on read-only env succeeded")
	}

	var prev []byte
	count := 0
	if err := r.ForEach(func(k, v []byte) error {
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			return fmt.Errorf("keys out of order: %q then %q", prev, k)
		}
		prev = k
		count++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if count != n+1 {
		t.Fatalf("ForEach saw %d entries, want %d", count, n+1)
	}
	stop := errors.New("stop")
	if err := r.ForEach(func(k, v []byte) error { return stop }); err != stop {
		t.Fatalf("ForEach error = %v", err)
	}
}

func TestConcurrentReads(t *testing.T) {
	dir := t.TempDir()
	w, err := Create(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if err := w.Put([]byte(fmt.Sprint(i)), []byte(fmt.Sprint(i*i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for j := 0; j < 2000; j++ {
				i := (j*7 + g) % 100
				v, err := r.Get([]byte(fmt.Sprint(i)))
				if err != nil {
					errs <- err
					return
				}
				if string(v) != fmt.Sprint(i*i) {
					errs <- fmt.Errorf("key %d: got %q", i, v)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestWriterSeesCommits(t *testing.T) {
	w, err := Create(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Put([]byte("a"), []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Get([]byte("a")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unflushed put visible: %v", err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Get([]byte("a")); err != nil || string(v) != "1" {
		t.Fatalf("Get after Flush = %q, %v", v, err)
	}
	if err := w.Put([]byte("a"), []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Get([]byte("a")); err != nil || string(v) != "2" {
		t.Fatalf("Get after overwrite = %q, %v", v, err)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Open missing dir: %v", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "data.mdb") {
		t.Fatalf("Open dir without data.mdb: %v", err)
	}
	w, err := Create(filepath.Join(dir, "w"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Put(nil, []byte("v")); err == nil {
		t.Fatal("empty key accepted")
	}
	if err := w.Put(bytes.Repeat([]byte("k"), 600), []byte("v")); err == nil {
		t.Fatal("600-byte key accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Get([]byte("k")); err == nil {
		t.Fatal("Get after Close succeeded")
	}
}
