package dist

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

func fuzzMsg(op byte, key string, val []byte) []byte {
	b := reqHeader(op, uint32(len(key)), uint32(len(val)))
	return append(append(b, key...), val...)
}

func fuzzI64(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

// FuzzStoreStream feeds arbitrary bytes as one peer's side of a connection:
// first to the decoders alone, then to a whole server over a pipe, which
// must neither panic nor keep the connection once the peer hangs up.
func FuzzStoreStream(f *testing.F) {
	h := appendHello(nil, 1, 4, "")
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(h)
	f.Add(cat(h, fuzzMsg(opSet, "k", []byte("v")), fuzzMsg(opGet, "k", fuzzI64(int64(time.Second))),
		fuzzMsg(opAdd, "n", fuzzI64(7)), fuzzMsg(opDead, "", nil), fuzzMsg(opBye, "", nil)))
	f.Add(cat(h, fuzzMsg(opGet, "absent", fuzzI64(int64(time.Hour)))))
	f.Add(cat(h, fuzzMsg(opSet, "k", []byte("v")), fuzzMsg(opAdd, "k", fuzzI64(1))))
	f.Add(cat(h, reqHeader(opSet, 1, 0xffffffff)))
	f.Add(cat(h, reqHeader(opSet, 0xffffffff, 1)))
	f.Add(cat(h, []byte{opSet, 0, 0}))
	f.Add(cat(appendHello(nil, 7, 4, ""), fuzzMsg(opDead, "", nil)))
	f.Add(cat(appendHello(nil, 0, 4, "token")[:14], []byte{0xff, 0xff}))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		lim := limits{maxValue: 1 << 16}
		br := bufio.NewReader(bytes.NewReader(data))
		if hl, err := readHello(br); err == nil {
			if len(hl.token) > maxToken {
				t.Fatalf("token of %d bytes decoded", len(hl.token))
			}
			for {
				req, err := readRequest(br, nil, lim)
				if err != nil {
					break
				}
				if len(req.key) > maxKey || len(req.val) > lim.maxValue {
					t.Fatalf("decoded a key of %d and a value of %d bytes", len(req.key), len(req.val))
				}
			}
		}

		s, err := newServer(StoreOptions{World: 4, MaxValue: lim.maxValue, MaxTotal: 1 << 20,
			HelloTimeout: 2 * time.Second, BodyTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		peer, srv := net.Pipe()
		if !s.track(srv) {
			t.Fatal("track refused")
		}
		done := make(chan struct{})
		go func() { s.serveConn(srv); close(done) }()
		go io.Copy(io.Discard, peer)
		peer.SetWriteDeadline(time.Now().Add(5 * time.Second))
		peer.Write(data)
		peer.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the server kept a connection whose peer hung up")
		}
		s.Close()
	})
}
