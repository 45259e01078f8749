package data

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestBuiltinVocabs(t *testing.T) {
	if got := BuiltinVocabs(); !reflect.DeepEqual(got, []string{"bert-base-cased", "bert-base-uncased"}) {
		t.Fatalf("BuiltinVocabs() = %v", got)
	}
	for _, c := range []struct {
		name   string
		sha256 string
		size   int
		bang   int32 // id of "!", the first id of meta.json's v_range
	}{
		{"bert-base-cased", "eeaa9875b23b04b4c54ef759d03db9d1ba1554838f8fb26c5d96fa551df93d02", 28996, 106},
		{"bert-base-uncased", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3", 30522, 999},
	} {
		t.Run(c.name, func(t *testing.T) {
			sum := sha256.Sum256(builtinVocabs[c.name])
			if got := hex.EncodeToString(sum[:]); got != c.sha256 {
				t.Errorf("sha256 %s, want %s (vocab/README.md)", got, c.sha256)
			}
			v, err := BuiltinVocab(c.name)
			if err != nil {
				t.Fatal(err)
			}
			if v.Len() != c.size {
				t.Errorf("Len = %d, want %d", v.Len(), c.size)
			}
			for tok, want := range map[string]int32{TokPAD: 0, TokUNK: 100, TokCLS: 101, TokSEP: 102, TokMASK: 103, "!": c.bang} {
				if id, ok := v.ID(tok); !ok || id != want {
					t.Errorf("ID(%q) = %d, %v, want %d", tok, id, ok, want)
				}
			}
		})
	}
	if _, err := BuiltinVocab("bert-large-cased"); err == nil || !strings.Contains(err.Error(), `"bert-large-cased"`) ||
		!strings.Contains(err.Error(), "bert-base-cased, bert-base-uncased") {
		t.Errorf("unknown name: %v", err)
	}
}

func TestBertTokenizer(t *testing.T) {
	for _, c := range []struct {
		name, in string
		toks     []string
		ids      []int32
	}{
		{"bert-base-cased", "Hello, world!", []string{"Hello", ",", "world", "!"}, []int32{8667, 117, 1362, 106}},
		{"bert-base-uncased", "Hello, world!", []string{"hello", ",", "world", "!"}, []int32{7592, 1010, 2088, 999}},
		// Uncased strips accents; cased keeps them.
		{"bert-base-uncased", "Café", []string{"cafe"}, []int32{7668}},
		{"bert-base-cased", "Café", []string{"Café"}, []int32{21036}},
	} {
		tok, err := BertTokenizer(c.name, "")
		if err != nil {
			t.Fatal(err)
		}
		if got := tok.Tokenize(c.in); !reflect.DeepEqual(got, c.toks) {
			t.Errorf("%s: Tokenize(%q) = %q, want %q", c.name, c.in, got, c.toks)
		}
		if got := tok.Encode(c.in); !reflect.DeepEqual(got, c.ids) {
			t.Errorf("%s: Encode(%q) = %v, want %v", c.name, c.in, got, c.ids)
		}
	}

	// A vocab file overrides the built-in one; the name still decides the
	// casing.
	path := filepath.Join(t.TempDir(), "vocab.txt")
	if err := os.WriteFile(path, []byte("[UNK]\nhello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := BertTokenizer("my-uncased-bert", path)
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("HELLO there"); !reflect.DeepEqual(got, []int32{1, 0}) || tok.Vocab().Len() != 2 {
		t.Errorf("override: Encode = %v, vocab size %d", got, tok.Vocab().Len())
	}
	if _, err := BertTokenizer("roberta-base", ""); err == nil || !strings.Contains(err.Error(), "roberta-base") {
		t.Errorf("unknown built-in: %v", err)
	}
	noUNK := filepath.Join(t.TempDir(), "nounk.txt")
	if err := os.WriteFile(noUNK, []byte("a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := BertTokenizer("bert-base-cased", noUNK); err == nil || !strings.Contains(err.Error(), noUNK) {
		t.Errorf("vocab without [UNK]: %v", err)
	}
}
