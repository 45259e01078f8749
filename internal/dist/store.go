package dist

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Wire format (all integers big-endian):
//
//	hello    client→server: "UNKV" version:u16 rank:u32 world:u32 tokenLen:u16 token
//	welcome  server→client: status:u8 msgLen:u16 msg (status 0 admits, 1 refuses and closes)
//	request  client→server: op:u8 keyLen:u32 valLen:u32 key val
//	response server→client: status:u8 len:u32 body
//
// Get carries its timeout (ns, i64) and Add its delta (i64) as the 8-byte val.
// One request is outstanding per connection; the client waits for the answer.
//
// A welcomed connection joins the run with its first request, which Dial
// sends (a Dead) before it returns. Until then its client may have given up
// waiting for the welcome and be retrying on a new connection, so hanging
// up does not count as the rank dying, and a second hello for the rank
// waits to see whether the first joins or goes.

const (
	storeMagic   = "UNKV"
	storeVersion = 1
)

// Defaults of StoreOptions and DialOptions.
const (
	// DefaultStorePort is where torchrun and most launchers put the master,
	// so a run started by hand meets ranks started by a launcher.
	DefaultStorePort = 29500
	// DefaultMaxValue bounds one stored value: rendezvous data are small,
	// and a bound keeps a stranger's length field from costing memory.
	DefaultMaxValue = 64 << 20
	// DefaultMaxTotal bounds what the whole store holds.
	DefaultMaxTotal = 1 << 30
	// DefaultDialTimeout is how long Dial waits for rank 0 to come up:
	// ranks on other nodes often start minutes before or after it.
	DefaultDialTimeout = 5 * time.Minute
)

const (
	maxKey      = 1 << 10
	maxToken    = 1 << 10
	maxHelloMsg = 1 << 10
	// entryOverhead is charged per key so that many empty values still
	// count against MaxTotal.
	entryOverhead = 64
	readChunk     = 256 << 10
	hostBufSize   = 4 << 10

	defaultHelloTimeout = 10 * time.Second
	defaultBodyTimeout  = 30 * time.Second
	// writeTimeout bounds a reply to a peer that stopped reading.
	writeTimeout = 2 * time.Minute
	// clientSlack is added to a request's own wait so a frozen store
	// (a node that went away without closing its socket) still ends the call.
	clientSlack = 30 * time.Second
	// maxWait caps a Get's timeout so deadlines cannot overflow.
	maxWait = 365 * 24 * time.Hour
)

const (
	opSet    = 1
	opGet    = 2
	opAdd    = 3
	opDead   = 4
	opBye    = 5
	opRefuse = 0xff // internal: the reader hands the handler an error to send
)

const (
	stOK      = 0
	stErr     = 1
	stTimeout = 2
	stDead    = 3
)

const (
	helloOK      = 0
	helloRefused = 1
)

// keepAlive makes a peer whose machine vanished (no FIN, no RST) count as
// gone in about half a minute instead of the kernel's two hours.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 10 * time.Second, Interval: 5 * time.Second, Count: 4}

// ErrTimeout is wrapped by Get's error when the key was not set in time;
// Rendezvous and Barrier use it to tell a late rank from a broken store,
// so other KV implementations should wrap it too.
var ErrTimeout = errors.New("timed out")

// DeadRankError is what a Get returns once a rank's connection dropped
// without a goodbye: the run cannot finish, and waiting would hang.
type DeadRankError struct {
	Rank int
}

// Error is worded for the log of a rank that is about to exit because of it.
func (e *DeadRankError) Error() string {
	return fmt.Sprintf("rank %d disconnected from the rendezvous store without closing", e.Rank)
}

type keyTimeoutError struct {
	key     string
	timeout time.Duration
}

func (e *keyTimeoutError) Error() string {
	return fmt.Sprintf("rendezvous store: key %q was not set within %s", e.key, e.timeout)
}

func (e *keyTimeoutError) Is(target error) bool { return target == ErrTimeout }

// StoreOptions configures Serve. Zero fields take the defaults named.
type StoreOptions struct {
	// World is the number of ranks; hello messages claiming a rank outside
	// [0, World) or another world size are refused.
	World int
	// Token, when set, must be presented by every peer: the port is open
	// to the whole network.
	Token string
	// MaxValue bounds one value (default DefaultMaxValue).
	MaxValue int
	// MaxTotal bounds the bytes held, keys included (default DefaultMaxTotal).
	MaxTotal int64
	// MaxConns bounds open connections, strangers included (default World*4+16).
	MaxConns int
	// HelloTimeout is how long a new connection may take to introduce
	// itself (default 10s).
	HelloTimeout time.Duration
	// BodyTimeout is how long a message may take to arrive once its first
	// byte has (default 30s).
	BodyTimeout time.Duration
	// Log, when set, receives one line per refused connection or dead rank.
	Log io.Writer

	// beforeWelcome, when set (tests only), runs between admitting a hello
	// and writing the welcome, to play a store too loaded to answer.
	beforeWelcome func(rank int)
}

// Server is the rendezvous store rank 0 serves; every rank, rank 0 included,
// reaches it through a Client.
type Server struct {
	o        StoreOptions
	ln       net.Listener
	tokenSum [sha256.Size]byte

	mu      sync.Mutex
	data    map[string][]byte
	used    int64
	changed chan struct{}   // closed and replaced whenever waiters should look again
	live    map[int]*member // the connection holding each rank
	isDead  map[int]bool
	dead    []int // in the order the ranks died: the first is the likely cause
	conns   map[net.Conn]struct{}
	closed  bool

	done chan struct{}
	wg   sync.WaitGroup

	logMu     sync.Mutex
	logWindow time.Time
	logLines  int
}

func newServer(o StoreOptions) (*Server, error) {
	if o.World < 1 {
		return nil, fmt.Errorf("rendezvous store: world size %d is not positive", o.World)
	}
	if o.MaxValue <= 0 {
		o.MaxValue = DefaultMaxValue
	}
	if o.MaxTotal <= 0 {
		o.MaxTotal = DefaultMaxTotal
	}
	if o.MaxConns <= 0 {
		o.MaxConns = o.World*4 + 16
	}
	if o.HelloTimeout <= 0 {
		o.HelloTimeout = defaultHelloTimeout
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = defaultBodyTimeout
	}
	if len(o.Token) > maxToken {
		return nil, fmt.Errorf("rendezvous store: token of %d bytes is longer than %d", len(o.Token), maxToken)
	}
	return &Server{
		o:        o,
		tokenSum: sha256.Sum256([]byte(o.Token)),
		data:     map[string][]byte{},
		changed:  make(chan struct{}),
		live:     map[int]*member{},
		isDead:   map[int]bool{},
		conns:    map[net.Conn]struct{}{},
		done:     make(chan struct{}),
	}, nil
}

// Serve listens on addr (":29500", "127.0.0.1:0") and serves the store until
// Close. Rank 0 should close it only after the other ranks said goodbye,
// since their next call fails once it is gone.
func Serve(addr string, o StoreOptions) (*Server, error) {
	s, err := newServer(o)
	if err != nil {
		return nil, err
	}
	lc := net.ListenConfig{KeepAliveConfig: keepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("rendezvous store: %w", err)
	}
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr is the address the store listens on, with the port chosen when
// addr asked for port 0.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the store and drops every connection; it waits for the
// connection goroutines so none outlives it.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off instead of spinning.
			s.logf("accept: %v", err)
			select {
			case <-s.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if !s.track(c) {
			s.logf("refused %s: %d connections open already", c.RemoteAddr(), s.o.MaxConns)
			c.Close()
			continue
		}
		go s.serveConn(c)
	}
}

// track registers c and reserves its goroutine in wg; it refuses when the
// store is closing or full. wg.Add under mu keeps Add ordered before
// Close's Wait.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns) >= s.o.MaxConns {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// logf writes one line, at most 50 a minute, so a port scan cannot fill
// the disk through the log.
func (s *Server) logf(format string, args ...any) {
	if s.o.Log == nil {
		return
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	now := time.Now()
	if now.Sub(s.logWindow) > time.Minute {
		s.logWindow, s.logLines = now, 0
	}
	s.logLines++
	switch {
	case s.logLines <= 50:
		fmt.Fprintf(s.o.Log, "rendezvous store: "+format+"\n", args...)
	case s.logLines == 51:
		fmt.Fprintf(s.o.Log, "rendezvous store: more than 50 lines this minute, suppressing\n")
	}
}

// member is one connection admitted for a rank.
type member struct {
	joined bool          // it sent a request: its client is past Dial
	left   bool          // its connection ended
	settle chan struct{} // closed once it joined or left
}

type hello struct {
	version uint16
	rank    uint32
	world   uint32
	token   []byte
}

func readHello(r io.Reader) (hello, error) {
	var h hello
	var b [16]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return h, fmt.Errorf("no hello: %w", err)
	}
	if string(b[:4]) != storeMagic {
		return h, errors.New("not a rendezvous client (bad magic)")
	}
	h.version = binary.BigEndian.Uint16(b[4:6])
	h.rank = binary.BigEndian.Uint32(b[6:10])
	h.world = binary.BigEndian.Uint32(b[10:14])
	n := int(binary.BigEndian.Uint16(b[14:16]))
	if n > maxToken {
		return h, fmt.Errorf("token of %d bytes is longer than %d", n, maxToken)
	}
	h.token = make([]byte, n)
	if _, err := io.ReadFull(r, h.token); err != nil {
		return h, fmt.Errorf("truncated hello: %w", err)
	}
	return h, nil
}

func appendHello(b []byte, rank, world int, token string) []byte {
	b = append(b, storeMagic...)
	b = binary.BigEndian.AppendUint16(b, storeVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(rank))
	b = binary.BigEndian.AppendUint32(b, uint32(world))
	b = binary.BigEndian.AppendUint16(b, uint16(len(token)))
	return append(b, token...)
}

func writeWelcome(c net.Conn, status byte, msg string) error {
	if len(msg) > maxHelloMsg {
		msg = msg[:maxHelloMsg]
	}
	b := []byte{status}
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	b = append(b, msg...)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Write(b)
	return err
}

// admit decides on a hello and, when it admits, makes the connection the
// rank's member. While the rank is held by a connection that has not
// joined yet (most likely an attempt its own client gave up on), it waits
// up to HelloTimeout for that one to join (then the rank is taken) or to
// go (then this one takes its place).
func (s *Server) admit(h hello) (*member, string) {
	if h.version != storeVersion {
		return nil, fmt.Sprintf("protocol version %d, this store speaks %d", h.version, storeVersion)
	}
	if s.o.Token != "" {
		sum := sha256.Sum256(h.token)
		if subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
			return nil, "wrong token"
		}
	}
	if h.world != 0 && int64(h.world) != int64(s.o.World) {
		return nil, fmt.Sprintf("world size %d, but this store serves %d ranks", h.world, s.o.World)
	}
	if int64(h.rank) >= int64(s.o.World) {
		return nil, fmt.Sprintf("rank %d is outside [0, %d)", h.rank, s.o.World)
	}
	rank := int(h.rank)
	taken := fmt.Sprintf("rank %d is connected already", rank)
	var expired <-chan time.Time
	for {
		s.mu.Lock()
		m := s.live[rank]
		switch {
		case s.closed:
			s.mu.Unlock()
			return nil, "store is closing"
		case m != nil && m.joined:
			s.mu.Unlock()
			return nil, taken
		case s.isDead[rank]:
			s.mu.Unlock()
			return nil, fmt.Sprintf("rank %d was recorded dead; the run cannot continue", rank)
		case m == nil:
			m = &member{settle: make(chan struct{})}
			s.live[rank] = m
			s.mu.Unlock()
			return m, ""
		}
		settle := m.settle
		s.mu.Unlock()
		if expired == nil {
			t := time.NewTimer(s.o.HelloTimeout)
			defer t.Stop()
			expired = t.C
		}
		select {
		case <-settle:
		case <-expired:
			return nil, taken
		case <-s.done:
			return nil, "store is closing"
		}
	}
}

// join records that m's client is past Dial: from now on, hanging up
// without a goodbye is the rank dying.
func (s *Server) join(m *member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !m.joined && !m.left {
		m.joined = true
		close(m.settle)
	}
}

// leave ends a rank's connection; without a goodbye a member that had
// joined is dead, and every waiter is woken to say so. One that had not
// joined only frees the rank. Only the first call for m counts.
func (s *Server) leave(rank int, m *member, clean bool) {
	s.mu.Lock()
	if m.left {
		s.mu.Unlock()
		return
	}
	if s.live[rank] == m {
		delete(s.live, rank)
	}
	unjoined := !m.joined
	if unjoined {
		close(m.settle)
	}
	m.left = true
	died := m.joined && !clean && !s.closed && !s.isDead[rank]
	if died {
		s.isDead[rank] = true
		s.dead = append(s.dead, rank)
		s.broadcast()
	}
	closed := s.closed
	s.mu.Unlock()
	if died {
		s.logf("rank %d disconnected without closing", rank)
	} else if unjoined && !clean && !closed {
		s.logf("rank %d: a connection that never completed a request ended; not counted as dead (likely a dial its client gave up on)", rank)
	}
}

// broadcast must be called with mu held.
func (s *Server) broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

type request struct {
	op  byte
	key string
	val []byte
	msg string // opRefuse
}

type limits struct {
	maxValue    int
	bodyTimeout time.Duration
}

// readRequest decodes one request. Lengths are checked before anything is
// allocated, and bodies are read in chunks so a length that is allowed but
// never sent costs only what arrived. setDeadline, when not nil, starts the
// body clock at the first byte: an idle rank is fine, a stalled message not.
func readRequest(br *bufio.Reader, setDeadline func(time.Time) error, lim limits) (request, error) {
	var req request
	op, err := br.ReadByte()
	if err != nil {
		return req, err
	}
	if setDeadline != nil {
		setDeadline(time.Now().Add(lim.bodyTimeout))
		defer setDeadline(time.Time{})
	}
	var b [8]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		return req, fmt.Errorf("truncated header: %w", err)
	}
	kl := binary.BigEndian.Uint32(b[:4])
	vl := binary.BigEndian.Uint32(b[4:])
	switch op {
	case opSet:
		if int64(vl) > int64(lim.maxValue) {
			return req, fmt.Errorf("value of %d bytes is larger than the store's limit of %d", vl, lim.maxValue)
		}
	case opGet, opAdd:
		if vl != 8 {
			return req, fmt.Errorf("op %d carries %d bytes, not 8", op, vl)
		}
	case opDead, opBye:
		if kl != 0 || vl != 0 {
			return req, fmt.Errorf("op %d carries a key or value", op)
		}
	default:
		return req, fmt.Errorf("unknown op %d", op)
	}
	if kl > maxKey {
		return req, fmt.Errorf("key of %d bytes is longer than %d", kl, maxKey)
	}
	if (op == opSet || op == opGet || op == opAdd) && kl == 0 {
		return req, errors.New("empty key")
	}
	key, err := readN(br, int(kl))
	if err != nil {
		return req, fmt.Errorf("truncated key: %w", err)
	}
	val, err := readN(br, int(vl))
	if err != nil {
		return req, fmt.Errorf("truncated value: %w", err)
	}
	req.op, req.key, req.val = op, string(key), val
	return req, nil
}

// readN reads n bytes, growing the buffer only as data arrives.
func readN(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, readChunk))
	for len(b) < n {
		k := min(n-len(b), readChunk)
		b = slices.Grow(b, k)
		m, err := io.ReadFull(r, b[len(b):len(b)+k])
		b = b[:len(b)+m]
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer s.untrack(c)
	defer c.Close()
	br := bufio.NewReaderSize(c, hostBufSize)
	c.SetDeadline(time.Now().Add(s.o.HelloTimeout))
	h, err := readHello(br)
	if err != nil {
		s.logf("dropped %s: %v", c.RemoteAddr(), err)
		return
	}
	m, reason := s.admit(h)
	if reason != "" {
		s.logf("refused %s claiming rank %d: %s", c.RemoteAddr(), h.rank, reason)
		writeWelcome(c, helloRefused, reason)
		return
	}
	rank := int(h.rank)
	if s.o.beforeWelcome != nil {
		s.o.beforeWelcome(rank)
	}
	if err := writeWelcome(c, helloOK, ""); err != nil {
		// The peer never learnt it was admitted, so it is not a member yet.
		s.leave(rank, m, true)
		return
	}
	c.SetDeadline(time.Time{})

	// A separate reader notices a dropped connection while the handler
	// waits in a Get; that is what lets the other ranks hear of a death.
	reqs := make(chan request, 1)
	gone := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(gone)
		clean := false
		defer func() { s.leave(rank, m, clean) }()
		lim := limits{maxValue: s.o.MaxValue, bodyTimeout: s.o.BodyTimeout}
		for {
			req, err := readRequest(br, c.SetReadDeadline, lim)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
					s.logf("rank %d (%s): %v", rank, c.RemoteAddr(), err)
					req = request{op: opRefuse, msg: err.Error()}
					select {
					case reqs <- req:
					default:
					}
				}
				return
			}
			s.join(m)
			if req.op == opBye {
				// Free the rank before the goodbye is answered, so the
				// client may dial again as soon as Close returns.
				clean = true
				s.leave(rank, m, true)
			}
			select {
			case reqs <- req:
			default:
				s.logf("rank %d (%s) sent a request before its previous one was answered", rank, c.RemoteAddr())
				return
			}
			if clean {
				return
			}
		}
	}()

	for {
		select {
		case req := <-reqs:
			if !s.handle(c, rank, req, gone) {
				return
			}
		case <-gone:
			// The last request may be the goodbye or a refusal, whose answer
			// the peer is waiting for.
			select {
			case req := <-reqs:
				s.handle(c, rank, req, gone)
			default:
			}
			return
		case <-s.done:
			return
		}
	}
}

// handle answers one request; false ends the connection.
func (s *Server) handle(c net.Conn, rank int, req request, gone <-chan struct{}) bool {
	var st byte
	var body []byte
	switch req.op {
	case opSet:
		st, body = s.set(req.key, req.val)
	case opGet:
		timeout := time.Duration(binary.BigEndian.Uint64(req.val))
		var ok bool
		st, body, ok = s.get(rank, req.key, timeout, gone)
		if !ok {
			return false
		}
	case opAdd:
		st, body = s.add(req.key, int64(binary.BigEndian.Uint64(req.val)))
	case opDead:
		s.mu.Lock()
		dead := slices.Sorted(slices.Values(s.dead))
		s.mu.Unlock()
		body = binary.BigEndian.AppendUint32(nil, uint32(len(dead)))
		for _, r := range dead {
			body = binary.BigEndian.AppendUint32(body, uint32(r))
		}
	case opBye:
	case opRefuse:
		st, body = stErr, []byte(req.msg)
	}
	hdr := binary.BigEndian.AppendUint32([]byte{st}, uint32(len(body)))
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	bufs := net.Buffers{hdr, body}
	if _, err := bufs.WriteTo(c); err != nil {
		return false
	}
	return req.op != opBye && req.op != opRefuse
}

func errBody(format string, args ...any) (byte, []byte) {
	return stErr, fmt.Appendf(nil, format, args...)
}

func (s *Server) set(key string, val []byte) (byte, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, body := s.charge(key, len(val)); st != stOK {
		return st, body
	}
	s.data[key] = val
	s.broadcast()
	return stOK, nil
}

// charge accounts for key holding n bytes, refusing when MaxTotal would be
// passed; mu must be held.
func (s *Server) charge(key string, n int) (byte, []byte) {
	cost := int64(len(key)) + int64(n) + entryOverhead
	var old int64
	if v, ok := s.data[key]; ok {
		old = int64(len(key)) + int64(len(v)) + entryOverhead
	}
	if s.used-old+cost > s.o.MaxTotal {
		return errBody("store is full: %d bytes under %q would pass its limit of %d bytes (%d held)", n, key, s.o.MaxTotal, s.used)
	}
	s.used += cost - old
	return stOK, nil
}

func (s *Server) add(key string, delta int64) (byte, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	if v, ok := s.data[key]; ok {
		var err error
		n, err = strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return errBody("key %q does not hold an integer", key)
		}
	}
	if (delta > 0 && n > math.MaxInt64-delta) || (delta < 0 && n < math.MinInt64-delta) {
		return errBody("adding %d to %d under %q overflows", delta, n, key)
	}
	n += delta
	v := strconv.AppendInt(nil, n, 10)
	if st, body := s.charge(key, len(v)); st != stOK {
		return st, body
	}
	s.data[key] = v
	s.broadcast()
	return stOK, binary.BigEndian.AppendUint64(nil, uint64(n))
}

// get waits for key; ok is false when the connection or the store went
// away meanwhile and there is no one to answer.
func (s *Server) get(rank int, key string, timeout time.Duration, gone <-chan struct{}) (st byte, body []byte, ok bool) {
	var timer <-chan time.Time
	for {
		s.mu.Lock()
		for _, d := range s.dead {
			if d != rank {
				s.mu.Unlock()
				return stDead, binary.BigEndian.AppendUint32(nil, uint32(d)), true
			}
		}
		if v, found := s.data[key]; found {
			s.mu.Unlock()
			return stOK, v, true
		}
		ch := s.changed
		s.mu.Unlock()
		if timer == nil {
			if timeout <= 0 {
				return stTimeout, nil, true
			}
			t := time.NewTimer(timeout)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ch:
		case <-timer:
			return stTimeout, nil, true
		case <-gone:
			return 0, nil, false
		case <-s.done:
			return 0, nil, false
		}
	}
}

// DialOptions configures Dial.
type DialOptions struct {
	// Token is presented to the store; it must match the store's.
	Token string
	// Timeout is how long to keep trying while the store is not up yet:
	// 0 means DefaultDialTimeout, a negative value one attempt.
	Timeout time.Duration
	// World is checked against the store's world size; 0 skips the check.
	World int
	// MaxValue bounds values sent and received (default DefaultMaxValue).
	MaxValue int

	// helloWait, when set (tests only), replaces defaultHelloTimeout as how
	// long one attempt waits for the welcome.
	helloWait time.Duration
}

// Client is one rank's connection to the store. It is safe for concurrent
// use; requests take turns on the one connection, so a long Get delays the
// calls queued behind it.
type Client struct {
	addr     string
	rank     int
	maxValue int

	mu   sync.Mutex
	conn net.Conn
	br   *bufio.Reader
	err  error // once set, the connection is unusable and every call returns it
}

var _ KV = (*Client)(nil)

type refusedError struct {
	addr   string
	rank   int
	reason string
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("rendezvous store %s refused rank %d: %s", e.addr, e.rank, e.reason)
}

// Dial connects rank to the store at addr, retrying while nobody listens
// yet. A refusal (wrong token, rank taken) is final: retrying cannot fix it;
// so is a failure once the join request went out (see dialOnce).
func Dial(addr string, rank int, o DialOptions) (*Client, error) {
	if rank < 0 || (o.World > 0 && rank >= o.World) {
		return nil, fmt.Errorf("rendezvous store: rank %d is outside [0, %d)", rank, o.World)
	}
	if len(o.Token) > maxToken {
		return nil, fmt.Errorf("rendezvous store: token of %d bytes is longer than %d", len(o.Token), maxToken)
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultDialTimeout
	}
	deadline := time.Now().Add(timeout)
	backoff := 50 * time.Millisecond
	for {
		c, err := dialOnce(addr, rank, o, deadline)
		if err == nil {
			return c, nil
		}
		var ref *refusedError
		var jerr *joinError
		if errors.As(err, &ref) || errors.As(err, &jerr) {
			return nil, err
		}
		if timeout < 0 || time.Now().Add(backoff).After(deadline) {
			return nil, fmt.Errorf("rendezvous store %s (rank 0) not reachable within %s: %w", addr, max(timeout, 0), err)
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// joinError is a failure after the join request went out: the store may
// count this connection as the rank already, so a retry cannot help.
type joinError struct {
	addr string
	rank int
	err  error
}

func (e *joinError) Error() string {
	return fmt.Sprintf("rendezvous store %s (rank 0): rank %d joining: %v", e.addr, e.rank, e.err)
}

func (e *joinError) Unwrap() error { return e.err }

// dialOnce makes one attempt. Giving up on the welcome is harmless, since
// the store does not count a connection as the rank until its first
// request; that request (a Dead) is sent here, so a rank whose Dial
// returned is a member, and one that then drops is dead.
func dialOnce(addr string, rank int, o DialOptions, deadline time.Time) (*Client, error) {
	wait := defaultHelloTimeout
	if o.helloWait > 0 {
		wait = o.helloWait
	}
	per := min(time.Until(deadline), wait)
	if per <= 0 {
		per = wait
	}
	d := net.Dialer{Timeout: per, KeepAliveConfig: keepAlive}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(per))
	if _, err := conn.Write(appendHello(nil, rank, o.World, o.Token)); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 32<<10)
	var b [3]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		// A full store closes without a word; that passes, so retry.
		conn.Close()
		return nil, fmt.Errorf("no welcome: %w", err)
	}
	msg := make([]byte, min(int(binary.BigEndian.Uint16(b[1:])), maxHelloMsg))
	if _, err := io.ReadFull(br, msg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("truncated welcome: %w", err)
	}
	if b[0] != helloOK {
		conn.Close()
		return nil, &refusedError{addr: addr, rank: rank, reason: string(msg)}
	}
	mv := o.MaxValue
	if mv <= 0 {
		mv = DefaultMaxValue
	}
	c := &Client{addr: addr, rank: rank, maxValue: mv, conn: conn, br: br}
	st, body, err := c.exchange(opDead, "", nil, time.Now().Add(clientSlack))
	if err == nil && st != stOK {
		err = c.statusErr(st, body)
	}
	if err != nil {
		conn.Close()
		return nil, &joinError{addr: addr, rank: rank, err: err}
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

// Addr is the store's address, for messages that should say which master.
func (c *Client) Addr() string { return c.addr }

// Rank is the rank this client introduced itself as.
func (c *Client) Rank() int { return c.rank }

var errClientClosed = errors.New("rendezvous store client is closed")

// do sends one request and reads its answer; any I/O failure poisons the
// connection, since its framing can no longer be trusted.
func (c *Client) do(op byte, key string, val []byte, wait time.Duration) (byte, []byte, error) {
	if op != opDead && op != opBye && (len(key) == 0 || len(key) > maxKey) {
		return 0, nil, fmt.Errorf("rendezvous store: key of %d bytes is not in [1, %d]", len(key), maxKey)
	}
	if len(val) > c.maxValue {
		return 0, nil, fmt.Errorf("rendezvous store: value of %d bytes under %q is larger than the limit of %d", len(val), key, c.maxValue)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, nil, c.err
	}
	st, body, err := c.exchange(op, key, val, time.Now().Add(max(wait, 0)+clientSlack))
	if err != nil {
		c.err = fmt.Errorf("rendezvous store %s (rank 0) is gone: %w", c.addr, err)
		c.conn.Close()
		return 0, nil, c.err
	}
	return st, body, nil
}

func (c *Client) exchange(op byte, key string, val []byte, deadline time.Time) (byte, []byte, error) {
	c.conn.SetDeadline(deadline)
	hdr := []byte{op}
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(key)))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(val)))
	bufs := net.Buffers{hdr, []byte(key), val}
	if _, err := bufs.WriteTo(c.conn); err != nil {
		return 0, nil, err
	}
	var b [5]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(b[1:])
	if int64(n) > int64(c.maxValue) {
		return 0, nil, fmt.Errorf("answer of %d bytes is larger than the limit of %d", n, c.maxValue)
	}
	body, err := readN(c.br, int(n))
	if err != nil {
		return 0, nil, err
	}
	return b[0], body, nil
}

func (c *Client) statusErr(st byte, body []byte) error {
	switch st {
	case stDead:
		if len(body) == 4 {
			return &DeadRankError{Rank: int(binary.BigEndian.Uint32(body))}
		}
	case stErr:
		if len(body) > 0 {
			return fmt.Errorf("rendezvous store: %s", body)
		}
	}
	return fmt.Errorf("rendezvous store: unexpected answer (status %d, %d bytes)", st, len(body))
}

// Set stores value under key.
func (c *Client) Set(key string, value []byte) error {
	st, body, err := c.do(opSet, key, value, 0)
	if err != nil {
		return err
	}
	if st != stOK {
		return c.statusErr(st, body)
	}
	return nil
}

// Get waits up to timeout (at most maxWait) for key. It fails at once with a
// *DeadRankError when any other rank has died, and wraps ErrTimeout when
// time runs out.
func (c *Client) Get(key string, timeout time.Duration) ([]byte, error) {
	timeout = min(max(timeout, 0), maxWait)
	st, body, err := c.do(opGet, key, binary.BigEndian.AppendUint64(nil, uint64(timeout)), timeout)
	if err != nil {
		return nil, err
	}
	switch st {
	case stOK:
		return body, nil
	case stTimeout:
		return nil, &keyTimeoutError{key: key, timeout: timeout}
	}
	return nil, c.statusErr(st, body)
}

// Add adds delta to the decimal integer under key (0 when absent) and
// returns the sum; ranks use it to count arrivals.
func (c *Client) Add(key string, delta int64) (int64, error) {
	st, body, err := c.do(opAdd, key, binary.BigEndian.AppendUint64(nil, uint64(delta)), 0)
	if err != nil {
		return 0, err
	}
	if st != stOK || len(body) != 8 {
		return 0, c.statusErr(st, body)
	}
	return int64(binary.BigEndian.Uint64(body)), nil
}

// Dead lists, in increasing order, the ranks whose connection dropped
// without a goodbye.
func (c *Client) Dead() ([]int, error) {
	st, body, err := c.do(opDead, "", nil, 0)
	if err != nil {
		return nil, err
	}
	if st != stOK || len(body) < 4 || len(body) != 4+4*int(binary.BigEndian.Uint32(body)) {
		return nil, c.statusErr(st, body)
	}
	dead := make([]int, 0, binary.BigEndian.Uint32(body))
	for b := body[4:]; len(b) >= 4; b = b[4:] {
		dead = append(dead, int(binary.BigEndian.Uint32(b)))
	}
	return dead, nil
}

// Close says goodbye, so the store does not count this rank as dead, and
// closes the connection. When the store is gone already there is nobody to
// tell, and Close returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		c.err = errClientClosed
		return nil
	}
	_, _, err := c.exchange(opBye, "", nil, time.Now().Add(5*time.Second))
	c.err = errClientClosed
	cerr := c.conn.Close()
	if err != nil {
		return fmt.Errorf("rendezvous store %s (rank 0): goodbye: %w", c.addr, err)
	}
	return cerr
}

// Rendezvous waits until all world ranks have reached it, so no rank
// starts talking to peers that are not there. It is meant for once per run;
// on timeout it names the ranks that never came.
func Rendezvous(kv KV, rank, world int, timeout time.Duration) error {
	return gather(kv, "rdzv", "rendezvous", rank, world, timeout)
}

// Barrier waits until all world ranks have reached the barrier called
// name. Each name must be used once per run (e.g. "save/step-1000").
func Barrier(kv KV, name string, rank, world int, timeout time.Duration) error {
	what := fmt.Sprintf("barrier %q", name)
	if name == "" {
		return errors.New("barrier: empty name")
	}
	return gather(kv, "barrier/"+name, what, rank, world, timeout)
}

func gather(kv KV, prefix, what string, rank, world int, timeout time.Duration) error {
	if world < 1 || rank < 0 || rank >= world {
		return fmt.Errorf("%s: rank %d is outside [0, %d)", what, rank, world)
	}
	deadline := time.Now().Add(timeout)
	host, _ := os.Hostname()
	if err := kv.Set(fmt.Sprintf("%s/rank/%d", prefix, rank), []byte(host)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	n, err := kv.Add(prefix+"/arrived", 1)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n > int64(world) {
		return fmt.Errorf("%s: rank %d arrived as number %d of %d (called twice in one run, or two runs share the store)", what, rank, n, world)
	}
	if n == int64(world) {
		if err := kv.Set(prefix+"/done", nil); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	_, err = kv.Get(prefix+"/done", max(time.Until(deadline), 0))
	if err == nil {
		return nil
	}
	if !errors.Is(err, ErrTimeout) {
		return fmt.Errorf("%s: %w", what, err)
	}
	var missing []string
	for r := range world {
		if _, err := kv.Get(fmt.Sprintf("%s/rank/%d", prefix, r), 0); err != nil {
			if !errors.Is(err, ErrTimeout) {
				return fmt.Errorf("%s: %w", what, err)
			}
			missing = append(missing, strconv.Itoa(r))
		}
	}
	master := ""
	if a, ok := kv.(interface{ Addr() string }); ok {
		master = " (master " + a.Addr() + ")"
	}
	switch len(missing) {
	case 0:
		if _, err := kv.Get(prefix+"/done", 0); err == nil {
			return nil
		}
		return fmt.Errorf("%s: all %d ranks registered but did not finish within %s%s", what, world, timeout, master)
	case 1:
		return fmt.Errorf("%s: rank %s of %d did not arrive within %s%s", what, missing[0], world, timeout, master)
	}
	return fmt.Errorf("%s: ranks %s of %d did not arrive within %s%s", what, strings.Join(missing, ", "), world, timeout, master)
}
