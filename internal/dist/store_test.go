package dist

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuf is a log sink the server may write from several goroutines.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startStore(t *testing.T, o StoreOptions) *Server {
	t.Helper()
	s, err := Serve("127.0.0.1:0", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dialStore(t *testing.T, s *Server, rank int, o DialOptions) *Client {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	c, err := Dial(s.Addr(), rank, o)
	if err != nil {
		t.Fatalf("dial rank %d: %v", rank, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// kill drops the connection without a goodbye, as a crashed process would.
func kill(c *Client) { c.conn.Close() }

// rawHello opens a connection and introduces it as rank, for tests that
// then misbehave on the wire.
func rawHello(t *testing.T, addr string, rank, world int, token string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write(appendHello(nil, rank, world, token)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [3]byte
	if _, err := io.ReadFull(br, b[:]); err != nil || b[0] != helloOK {
		t.Fatalf("welcome: %v %v", b, err)
	}
	conn.SetReadDeadline(time.Time{})
	return conn, br
}

func reqHeader(op byte, kl, vl uint32) []byte {
	b := []byte{op}
	b = binary.BigEndian.AppendUint32(b, kl)
	return binary.BigEndian.AppendUint32(b, vl)
}

// readReply reads one response and then expects the server to hang up.
func readReplyThenEOF(t *testing.T, conn net.Conn, br *bufio.Reader) (byte, string) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [5]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		t.Fatalf("reply: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(b[1:]))
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatalf("reply body: %v", err)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection still open after a refusal")
	}
	return b[0], string(body)
}

func TestStoreSetGetAdd(t *testing.T) {
	s := startStore(t, StoreOptions{World: 3})
	c := []*Client{dialStore(t, s, 0, DialOptions{World: 3}), dialStore(t, s, 1, DialOptions{World: 3}), dialStore(t, s, 2, DialOptions{World: 3})}
	if err := c[0].Set("k", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	for _, cl := range c {
		v, err := cl.Get("k", time.Second)
		if err != nil || string(v) != "v1" {
			t.Fatalf("rank %d Get = %q, %v", cl.Rank(), v, err)
		}
	}
	if err := c[2].Set("k", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if v, _ := c[1].Get("k", time.Second); string(v) != "v2" {
		t.Fatalf("after overwrite: %q", v)
	}
	if err := c[0].Set("empty", nil); err != nil {
		t.Fatal(err)
	}
	if v, err := c[1].Get("empty", time.Second); err != nil || len(v) != 0 {
		t.Fatalf("empty value: %q, %v", v, err)
	}

	// Many goroutines on each client: the client must serialize them.
	var wg sync.WaitGroup
	for _, cl := range c {
		for range 10 {
			wg.Go(func() {
				if _, err := cl.Add("n", 3); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	n, err := c[0].Add("n", -1)
	if err != nil || n != 89 {
		t.Fatalf("Add = %d, %v, want 89", n, err)
	}
	if v, _ := c[2].Get("n", time.Second); string(v) != "89" {
		t.Fatalf("counter reads back as %q", v)
	}
	if _, err := c[0].Add("k", 1); err == nil || !strings.Contains(err.Error(), `"k" does not hold an integer`) {
		t.Fatalf("Add on text: %v", err)
	}
	if err := c[0].Set(strings.Repeat("x", maxKey+1), nil); err == nil {
		t.Fatal("long key accepted")
	}
}

func TestStoreGetWaitsAndTimesOut(t *testing.T) {
	s := startStore(t, StoreOptions{World: 2})
	c0 := dialStore(t, s, 0, DialOptions{})
	c1 := dialStore(t, s, 1, DialOptions{})
	got := make(chan string, 1)
	go func() {
		v, err := c1.Get("late", 5*time.Second)
		got <- fmt.Sprint(string(v), err)
	}()
	time.Sleep(100 * time.Millisecond)
	if err := c0.Set("late", []byte("here")); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != "here<nil>" {
		t.Fatalf("waiting Get = %s", g)
	}

	start := time.Now()
	_, err := c1.Get("never", 150*time.Millisecond)
	el := time.Since(start)
	if !errors.Is(err, ErrTimeout) || err.Error() != `rendezvous store: key "never" was not set within 150ms` {
		t.Fatalf("err = %v", err)
	}
	if el < 150*time.Millisecond || el > 2*time.Second {
		t.Fatalf("timed out after %s", el)
	}
	if _, err := c1.Get("never", 0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("zero timeout: %v", err)
	}
}

func TestStoreToken(t *testing.T) {
	log := &syncBuf{}
	s := startStore(t, StoreOptions{World: 2, Token: "s3cret", Log: log})
	for _, tok := range []string{"", "wrong", "s3cret!"} {
		start := time.Now()
		_, err := Dial(s.Addr(), 1, DialOptions{Token: tok, Timeout: 5 * time.Second})
		if err == nil || !strings.Contains(err.Error(), "refused rank 1: wrong token") {
			t.Fatalf("token %q: %v", tok, err)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("a refusal was retried (%s)", time.Since(start))
		}
	}
	c := dialStore(t, s, 1, DialOptions{Token: "s3cret"})
	if err := c.Set("a", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "wrong token") {
		t.Fatalf("log: %q", log.String())
	}

	open := startStore(t, StoreOptions{World: 1})
	dialStore(t, open, 0, DialOptions{Token: "anything"})
}

func TestStoreRefusesRanks(t *testing.T) {
	s := startStore(t, StoreOptions{World: 2})
	c1 := dialStore(t, s, 1, DialOptions{World: 2})
	for _, tc := range []struct {
		rank, world int
		want        string
	}{
		{2, 0, "rank 2 is outside [0, 2)"},
		{1, 2, "rank 1 is connected already"},
		{0, 3, "world size 3, but this store serves 2 ranks"},
	} {
		_, err := Dial(s.Addr(), tc.rank, DialOptions{World: tc.world, Timeout: time.Second})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rank %d world %d: %v, want %q", tc.rank, tc.world, err, tc.want)
		}
	}
	if _, err := Dial(s.Addr(), 5, DialOptions{World: 2}); err == nil {
		t.Error("client let rank 5 of 2 dial")
	}
	// A rank that left cleanly may come back.
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	c1 = dialStore(t, s, 1, DialOptions{World: 2})
	if err := c1.Set("x", nil); err != nil {
		t.Fatal(err)
	}
}

func TestStoreBadVersionAndGarbage(t *testing.T) {
	log := &syncBuf{}
	s := startStore(t, StoreOptions{World: 2, Log: log, HelloTimeout: 300 * time.Millisecond})
	c0 := dialStore(t, s, 0, DialOptions{})

	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h := appendHello(nil, 1, 2, "")
	h[5] = 9
	conn.Write(h)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(conn)
	if len(reply) < 3 || reply[0] != helloRefused || !strings.Contains(string(reply[3:]), "protocol version 9") {
		t.Fatalf("bad version reply %q", reply)
	}

	for _, junk := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "\x00", strings.Repeat("\xff", 5000)} {
		conn, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(junk))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		// EOF or a reset (unread junk) both mean dropped; a timeout does not.
		if _, err := io.ReadAll(conn); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("junk %q: connection not dropped", junk[:1])
		}
		conn.Close()
	}
	if err := c0.Set("still", []byte("fine")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(log.String(), "bad magic") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestStoreDeadRank(t *testing.T) {
	log := &syncBuf{}
	s := startStore(t, StoreOptions{World: 3, Log: log})
	c0 := dialStore(t, s, 0, DialOptions{})
	c1 := dialStore(t, s, 1, DialOptions{})
	c2 := dialStore(t, s, 2, DialOptions{})

	errc := make(chan error, 1)
	go func() {
		_, err := c1.Get("never", time.Minute)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	kill(c2)
	var err error
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("pending Get did not fail after rank 2 died")
	}
	var dre *DeadRankError
	if !errors.As(err, &dre) || dre.Rank != 2 || err.Error() != "rank 2 disconnected from the rendezvous store without closing" {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
	if _, err := c0.Get("anything", time.Minute); !errors.As(err, &dre) || dre.Rank != 2 {
		t.Fatalf("later Get: %v", err)
	}
	dead, err := c0.Dead()
	if err != nil || !slices.Equal(dead, []int{2}) {
		t.Fatalf("Dead = %v, %v", dead, err)
	}
	if _, err := Dial(s.Addr(), 2, DialOptions{Timeout: time.Second}); err == nil || !strings.Contains(err.Error(), "recorded dead") {
		t.Fatalf("dead rank came back: %v", err)
	}
	if !strings.Contains(log.String(), "rank 2 disconnected without closing") {
		t.Fatalf("log: %q", log.String())
	}
}

func TestStoreCleanCloseIsNotDeath(t *testing.T) {
	s := startStore(t, StoreOptions{World: 2})
	c0 := dialStore(t, s, 0, DialOptions{})
	c1 := dialStore(t, s, 1, DialOptions{})
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c1.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c1.Set("x", nil); err == nil {
		t.Fatal("Set on a closed client")
	}
	if _, err := c0.Get("x", 50*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Get after a clean leave: %v", err)
	}
	if dead, _ := c0.Dead(); len(dead) != 0 {
		t.Fatalf("Dead = %v", dead)
	}
}

func TestStoreServerGone(t *testing.T) {
	s := startStore(t, StoreOptions{World: 2})
	c0 := dialStore(t, s, 0, DialOptions{})
	c1 := dialStore(t, s, 1, DialOptions{})
	errc := make(chan error, 1)
	go func() {
		_, err := c1.Get("never", time.Minute)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	addr := s.Addr()
	s.Close()
	want := "rendezvous store " + addr + " (rank 0) is gone: "
	select {
	case err := <-errc:
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Fatalf("pending Get: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending Get hangs after the store closed")
	}
	if err := c0.Set("k", nil); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Set: %v", err)
	}
	if err := c0.Close(); err != nil {
		t.Fatalf("Close after the store went: %v", err)
	}
}

func TestDialWaitsForStore(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	start := time.Now()
	_, err = Dial(addr, 0, DialOptions{Timeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "rendezvous store "+addr+" (rank 0) not reachable within 200ms") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}

	done := make(chan error, 1)
	go func() {
		c, err := Dial(addr, 1, DialOptions{Timeout: 10 * time.Second})
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	s, err := Serve(addr, StoreOptions{World: 2})
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	defer s.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestStoreSlowLoris(t *testing.T) {
	s := startStore(t, StoreOptions{World: 3, HelloTimeout: 700 * time.Millisecond, BodyTimeout: 700 * time.Millisecond})
	// A stranger that sends half a hello and stalls.
	stranger, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	stranger.Write([]byte(storeMagic[:2]))
	// A rank that sends half a request header and stalls.
	stalled, sbr := rawHello(t, s.Addr(), 2, 3, "")
	stalled.Write(reqHeader(opSet, 1, 1)[:4])

	start := time.Now()
	c0 := dialStore(t, s, 0, DialOptions{})
	c1 := dialStore(t, s, 1, DialOptions{})
	if err := c0.Set("k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if v, err := c1.Get("k", time.Second); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Fatalf("other clients were held up for %s", el)
	}
	// Both stallers are dropped once their clocks run out.
	stranger.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(stranger); err != nil {
		t.Fatalf("stranger not dropped: %v", err)
	}
	stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [5]byte
	if _, err := io.ReadFull(sbr, b[:]); err != nil || b[0] != stErr {
		t.Fatalf("stalled rank: %v %v", b, err)
	}
}

func TestStoreOversizedLengths(t *testing.T) {
	s := startStore(t, StoreOptions{World: 4})
	cases := []struct {
		name string
		hdr  []byte
		want string
	}{
		{"value", reqHeader(opSet, 1, DefaultMaxValue+1), "larger than the store's limit"},
		{"value 4G", reqHeader(opSet, 1, 0xffffffff), "larger than the store's limit"},
		{"key", reqHeader(opSet, 0xfffffff0, 1), "key of 4294967280 bytes is longer than 1024"},
		{"get", reqHeader(opGet, 1, 1<<30), "not 8"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, br := rawHello(t, s.Addr(), i, 4, "")
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			conn.Write(tc.hdr)
			st, msg := readReplyThenEOF(t, conn, br)
			runtime.ReadMemStats(&after)
			if st != stErr || !strings.Contains(msg, tc.want) {
				t.Fatalf("reply %d %q, want %q", st, msg, tc.want)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
				t.Fatalf("allocated %d bytes for a refused length", d)
			}
		})
	}
}

func TestReadRequestAllocatesOnlyWhatArrives(t *testing.T) {
	msg := append(reqHeader(opSet, 1, 60<<20), 'k', 1, 2, 3)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := readRequest(bufio.NewReader(bytes.NewReader(msg)), nil, limits{maxValue: DefaultMaxValue})
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "truncated value") {
		t.Fatalf("err = %v", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 2*readChunk+64<<10 {
		t.Fatalf("allocated %d bytes for 3 that arrived", d)
	}
}

func TestStoreFull(t *testing.T) {
	s := startStore(t, StoreOptions{World: 1, MaxTotal: 1000})
	c := dialStore(t, s, 0, DialOptions{})
	if err := c.Set("a", make([]byte, 600)); err != nil {
		t.Fatal(err)
	}
	err := c.Set("b", make([]byte, 600))
	if err == nil || !strings.Contains(err.Error(), "store is full") {
		t.Fatalf("err = %v", err)
	}
	if err := c.Set("a", make([]byte, 800)); err != nil {
		t.Fatalf("replacing a value: %v", err)
	}
	if err := c.Set("c", nil); err != nil {
		t.Fatalf("the connection must survive a full store: %v", err)
	}
}

func TestStoreMaxConns(t *testing.T) {
	s := startStore(t, StoreOptions{World: 1, MaxConns: 2, HelloTimeout: 5 * time.Second})
	var idle []net.Conn
	for range 2 {
		conn, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, conn)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := Dial(s.Addr(), 0, DialOptions{Timeout: -1}); err == nil {
		t.Fatal("a connection past MaxConns was served")
	}
	done := make(chan error, 1)
	go func() {
		c, err := Dial(s.Addr(), 0, DialOptions{Timeout: 5 * time.Second})
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	for _, c := range idle {
		c.Close()
	}
	if err := <-done; err != nil {
		t.Fatalf("Dial did not get in once a slot freed: %v", err)
	}
}

func TestRendezvous(t *testing.T) {
	s := startStore(t, StoreOptions{World: 4})
	var wg sync.WaitGroup
	for r := range 4 {
		c := dialStore(t, s, r, DialOptions{World: 4})
		wg.Go(func() {
			if err := Rendezvous(c, r, 4, 5*time.Second); err != nil {
				t.Error(err)
			}
			if err := Barrier(c, "b1", r, 4, 5*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func TestRendezvousNamesMissingRanks(t *testing.T) {
	for _, tc := range []struct {
		come []int
		want string
	}{
		{[]int{0, 2}, "rendezvous: ranks 1, 3 of 4 did not arrive within 300ms (master %s)"},
		{[]int{0, 1, 2}, "rendezvous: rank 3 of 4 did not arrive within 300ms (master %s)"},
	} {
		s := startStore(t, StoreOptions{World: 4})
		want := fmt.Sprintf(tc.want, s.Addr())
		var wg sync.WaitGroup
		start := time.Now()
		for _, r := range tc.come {
			c := dialStore(t, s, r, DialOptions{})
			wg.Go(func() {
				err := Rendezvous(c, r, 4, 300*time.Millisecond)
				if err == nil || err.Error() != want {
					t.Errorf("rank %d: %v\nwant %s", r, err, want)
				}
			})
		}
		wg.Wait()
		if el := time.Since(start); el > 1500*time.Millisecond {
			t.Errorf("rendezvous took %s for a 300ms timeout", el)
		}
	}
}

func TestBarrierNamesMissingAndDeadRanks(t *testing.T) {
	s := startStore(t, StoreOptions{World: 3})
	c := []*Client{dialStore(t, s, 0, DialOptions{}), dialStore(t, s, 1, DialOptions{}), dialStore(t, s, 2, DialOptions{})}
	err := Barrier(c[0], "save", 0, 3, 100*time.Millisecond)
	want := fmt.Sprintf(`barrier "save": ranks 1, 2 of 3 did not arrive within 100ms (master %s)`, s.Addr())
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	errc := make(chan error, 1)
	go func() { errc <- Barrier(c[1], "step", 1, 3, time.Minute) }()
	time.Sleep(50 * time.Millisecond)
	kill(c[2])
	select {
	case err := <-errc:
		if err == nil || err.Error() != `barrier "step": rank 2 disconnected from the rendezvous store without closing` {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("barrier hangs after a rank died")
	}
}

// TestStoreAbandonedDialIsNotDeath plays a store too loaded to welcome in
// time: each rank's first attempts are welcomed only after the client gave
// up on them and retried. No rank may be refused or recorded dead for the
// connections it abandoned, and ranks that leave cleanly while others wait
// must not be either.
func TestStoreAbandonedDialIsNotDeath(t *testing.T) {
	const world = 6
	const helloWait = 150 * time.Millisecond
	for round := range 3 {
		log := &syncBuf{}
		var mu sync.Mutex
		attempts := map[int]int{}
		s := startStore(t, StoreOptions{World: world, Log: log, beforeWelcome: func(rank int) {
			mu.Lock()
			attempts[rank]++
			n := attempts[rank]
			mu.Unlock()
			// Rank r's first 1+(r+round)%3 attempts are answered late.
			if n <= 1+(rank+round)%3 {
				time.Sleep(helloWait + 150*time.Millisecond)
			}
		}})
		clients := make([]*Client, world)
		var wg sync.WaitGroup
		for r := range world {
			wg.Go(func() {
				c, err := Dial(s.Addr(), r, DialOptions{World: world, Timeout: 20 * time.Second, helloWait: helloWait})
				if err != nil {
					t.Errorf("round %d: dial rank %d: %v", round, r, err)
					return
				}
				clients[r] = c
			})
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("log:\n%s", log)
		}
		for r := range world {
			wg.Go(func() {
				if err := Rendezvous(clients[r], r, world, 10*time.Second); err != nil {
					t.Errorf("round %d: rank %d: %v", round, r, err)
				}
			})
		}
		wg.Wait()
		// The upper half leaves cleanly while the lower half waits.
		got := make(chan error, world)
		for r := range world / 2 {
			wg.Go(func() {
				_, err := clients[r].Get("late", 10*time.Second)
				got <- err
			})
		}
		time.Sleep(20 * time.Millisecond)
		var closers sync.WaitGroup
		for r := world / 2; r < world; r++ {
			closers.Go(func() {
				if err := clients[r].Close(); err != nil {
					t.Errorf("round %d: close rank %d: %v", round, r, err)
				}
			})
		}
		closers.Wait()
		if err := clients[world/2].Set("late", []byte("x")); err == nil {
			t.Errorf("round %d: Set on a closed client", round)
		}
		back, err := Dial(s.Addr(), world-1, DialOptions{World: world, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("round %d: rank %d back after a clean leave: %v\nlog:\n%s", round, world-1, err, log)
		}
		if err := back.Set("late", []byte("x")); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(got)
		for err := range got {
			if err != nil {
				t.Errorf("round %d: Get: %v", round, err)
			}
		}
		if dead, err := clients[0].Dead(); err != nil || len(dead) != 0 {
			t.Errorf("round %d: Dead = %v, %v\nlog:\n%s", round, dead, err, log)
		}
		if strings.Contains(log.String(), "without closing") {
			t.Errorf("round %d: log:\n%s", round, log)
		}
		for _, c := range append(slices.Clone(clients[:world/2]), back) {
			if err := c.Close(); err != nil {
				t.Error(err)
			}
		}
		s.Close()
	}
}

// TestStoreUnjoinedConnection: a connection that was welcomed but sent no
// request has not joined (its client may have given up on the welcome).
// It keeps its rank from a second connection only while it may still
// join, and its hanging up does not make the rank dead.
func TestStoreUnjoinedConnection(t *testing.T) {
	log := &syncBuf{}
	s := startStore(t, StoreOptions{World: 2, Log: log, HelloTimeout: 300 * time.Millisecond})
	c0 := dialStore(t, s, 0, DialOptions{})
	held, _ := rawHello(t, s.Addr(), 1, 2, "")
	start := time.Now()
	if _, err := Dial(s.Addr(), 1, DialOptions{Timeout: 5 * time.Second}); err == nil || !strings.Contains(err.Error(), "rank 1 is connected already") {
		t.Fatalf("second rank 1 while the first may still join: %v", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("refusal took %s", el)
	}

	// A second hello waiting for the slot gets it once the first hangs up.
	done := make(chan error, 1)
	go func() {
		c, err := Dial(s.Addr(), 1, DialOptions{Timeout: 5 * time.Second})
		if err == nil {
			err = c.Set("one", nil)
			c.Close()
		}
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	held.Close()
	if err := <-done; err != nil {
		t.Fatalf("rank 1 after the unjoined connection hung up: %v\nlog:\n%s", err, log)
	}
	if v, err := c0.Get("one", time.Second); err != nil || len(v) != 0 {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if dead, err := c0.Dead(); err != nil || len(dead) != 0 {
		t.Fatalf("Dead = %v, %v\nlog:\n%s", dead, err, log)
	}

	// A rank whose Dial returned is a member even before its first call.
	c1 := dialStore(t, s, 1, DialOptions{})
	kill(c1)
	var dre *DeadRankError
	if _, err := c0.Get("never", 5*time.Second); !errors.As(err, &dre) || dre.Rank != 1 {
		t.Fatalf("Get after rank 1 died: %v", err)
	}
}
