package ckpt

import (
	"bufio"
	"errors"
	"fmt"
)

// The pickle decoder allocates whatever length a string, bytes or frame
// opcode declares before reading it, and indexes its dispatch table with
// the raw opcode byte, so a corrupt pickle could exhaust memory or panic.
// pickleLen walks the opcode stream first: only pickles whose every declared
// length fits in the bytes actually present reach the decoder. The walk also
// finds where a pickle ends, which the legacy format needs because its
// pickles and raw storages follow one another in one stream.

type argKind uint8

const (
	opInvalid argKind = iota
	opNoArg
	opFixed   // an argument of n bytes
	opCount   // an unsigned little-endian length of n bytes, then that many bytes
	opSCount  // a signed 4-byte little-endian length, then that many bytes
	opLines   // n newline-terminated lines
	opFrame   // an 8-byte frame length; the frame itself holds ordinary opcodes
	opStopArg // STOP: the pickle ends here
)

type opcodeArg struct {
	kind argKind
	n    int
}

// pickleOpcodes describes the argument of every opcode of pickle protocols
// 0 to 5 (see Python's pickletools).
var pickleOpcodes = func() [256]opcodeArg {
	var t [256]opcodeArg
	for _, c := range []byte("(012NQRabde}lo])stu\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98") {
		t[c] = opcodeArg{opNoArg, 0}
	}
	for c, n := range map[byte]int{'J': 4, 'K': 1, 'M': 2, 'h': 1, 'j': 4, 'q': 1, 'r': 4, 'G': 8, 0x80: 1, 0x82: 1, 0x83: 2, 0x84: 4} {
		t[c] = opcodeArg{opFixed, n}
	}
	for c, n := range map[byte]int{'U': 1, 'C': 1, 0x8c: 1, 0x8a: 1, 'B': 4, 'X': 4, 0x8e: 8, 0x8d: 8, 0x96: 8} {
		t[c] = opcodeArg{opCount, n}
	}
	t['T'] = opcodeArg{opSCount, 4}
	t[0x8b] = opcodeArg{opSCount, 4}
	for _, c := range []byte("ILFSVgpP") {
		t[c] = opcodeArg{opLines, 1}
	}
	t['c'] = opcodeArg{opLines, 2}
	t['i'] = opcodeArg{opLines, 2}
	t[0x95] = opcodeArg{opFrame, 8}
	t['.'] = opcodeArg{opStopArg, 0}
	return t
}()

var errTruncatedPickle = errors.New("truncated pickle")

// pickleLen reads one pickle from r, which holds at most limit bytes, and
// returns its length in bytes up to and including STOP.
func pickleLen(r *bufio.Reader, limit int64) (int64, error) {
	var pos int64
	readByte := func() (byte, error) {
		b, err := r.ReadByte()
		if err != nil {
			return 0, errTruncatedPickle
		}
		pos++
		return b, nil
	}
	skip := func(n int64) error {
		if n > limit-pos {
			return errTruncatedPickle
		}
		if _, err := r.Discard(int(n)); err != nil {
			return errTruncatedPickle
		}
		pos += n
		return nil
	}
	for {
		op, err := readByte()
		if err != nil {
			return 0, err
		}
		arg := pickleOpcodes[op]
		switch arg.kind {
		case opInvalid:
			return 0, fmt.Errorf("corrupt pickle: invalid opcode 0x%02x at byte %d", op, pos-1)
		case opNoArg:
		case opFixed:
			if err := skip(int64(arg.n)); err != nil {
				return 0, err
			}
		case opCount, opSCount, opFrame:
			var n uint64
			for i := 0; i < arg.n; i++ {
				b, err := readByte()
				if err != nil {
					return 0, err
				}
				n |= uint64(b) << (8 * i)
			}
			if arg.kind == opSCount && int32(uint32(n)) < 0 {
				return 0, fmt.Errorf("corrupt pickle: negative length at byte %d", pos-int64(arg.n))
			}
			if n > uint64(limit-pos) {
				return 0, errTruncatedPickle
			}
			if arg.kind != opFrame {
				if err := skip(int64(n)); err != nil {
					return 0, err
				}
			}
		case opLines:
			for i := 0; i < arg.n; i++ {
				for {
					b, err := readByte()
					if err != nil {
						return 0, err
					}
					if b == '\n' {
						break
					}
				}
			}
		case opStopArg:
			return pos, nil
		}
	}
}
