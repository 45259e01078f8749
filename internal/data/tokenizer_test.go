package data

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The cases below are BERT's own tokenization tests (google-research/bert
// tokenization_test.py) plus cased and UNITER-procedure cases worked out by
// hand against the same rules.

var testVocab = []string{"[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ",",
	"[MASK]", "Hé", "##llo", "H", "##é", "hello", "!", "how", "are", "you", "?", "HeLLo", "Are", "yoU", "博", "推", "ah", "zz", "a", "b"}

func newTestTokenizer(t *testing.T, lower bool) *Tokenizer {
	t.Helper()
	tok, err := NewTokenizer(NewVocab(testVocab), lower)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestBasicTokenizer(t *testing.T) {
	cases := []struct {
		name  string
		lower bool
		in    string
		want  []string
	}{
		{"lower", true, " \tHeLLo!how  \n Are yoU?  ", []string{"hello", "!", "how", "are", "you", "?"}},
		{"lower strips accents", true, "H\u00E9llo", []string{"hello"}},
		{"cased keeps case and accents", false, " \tHeLLo!how  \n Are yoU?  ", []string{"HeLLo", "!", "how", "Are", "yoU", "?"}},
		{"cased keeps accent", false, "H\u00E9llo", []string{"H\u00E9llo"}},
		{"chinese", false, "ah\u535A\u63A8zz", []string{"ah", "\u535A", "\u63A8", "zz"}},
		{"control dropped", false, "a\u0005b\x00c", []string{"abc"}},
		{"nbsp is whitespace", false, "a\u00A0b", []string{"a", "b"}},
		{"ascii symbols split", false, "x$y^z", []string{"x", "$", "y", "^", "z"}},
		{"never split specials", true, "[MASK] [unused1]", []string{"[MASK]", "[", "unused1", "]"}},
		{"empty", true, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := newTestTokenizer(t, c.lower).basic(c.in)
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("basic(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestWordPiece(t *testing.T) {
	long := strings.Repeat("a", maxWordChars+1)
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"unwanted running", []string{"un", "##want", "##ed", "runn", "##ing"}},
		{"unwantedX running", []string{"[UNK]", "runn", "##ing"}},
		{long, []string{"[UNK]"}},
	}
	tok := newTestTokenizer(t, false)
	for _, c := range cases {
		var got []string
		for _, w := range strings.Fields(c.in) {
			got = append(got, tok.wordPiece(w)...)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("wordPiece(%.20q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestFullTokenizer(t *testing.T) {
	cases := []struct {
		lower bool
		in    string
		toks  []string
		ids   []int32
	}{
		{true, "UNwant\u00E9d,running", []string{"un", "##want", "##ed", ",", "runn", "##ing"}, []int32{7, 4, 5, 10, 8, 9}},
		// Cased: "UNwant" has no uppercase entries, so the whole word is [UNK].
		{false, "UNwant\u00E9d,running", []string{"[UNK]", ",", "runn", "##ing"}, []int32{0, 10, 8, 9}},
		{false, "H\u00E9llo", []string{"H\u00E9", "##llo"}, []int32{12, 13}},
	}
	for _, c := range cases {
		tok := newTestTokenizer(t, c.lower)
		got := tok.Tokenize(c.in)
		if !reflect.DeepEqual(got, c.toks) {
			t.Errorf("lower=%v Tokenize(%q) = %q, want %q", c.lower, c.in, got, c.toks)
		}
		if ids := tok.IDs(got); !reflect.DeepEqual(ids, c.ids) {
			t.Errorf("lower=%v IDs(%q) = %v, want %v", c.lower, got, ids, c.ids)
		}
	}
}

func TestEncodeDropsEmptyWords(t *testing.T) {
	tok := newTestTokenizer(t, true)
	// "\u0005" cleans to nothing and is dropped; "\x1c" separates words
	// for Python's str.split.
	got := tok.Encode("  want \u0005 a\x1cb\trunning  ")
	want := []int32{3, 29, 30, 8, 9}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
}

func TestCharClasses(t *testing.T) {
	for _, r := range []rune{' ', '\t', '\r', '\n', '\u00A0'} {
		if !isBertWhitespace(r) {
			t.Errorf("isBertWhitespace(%q) = false", r)
		}
	}
	for _, r := range []rune{'A', '-'} {
		if isBertWhitespace(r) {
			t.Errorf("isBertWhitespace(%q) = true", r)
		}
	}
	if !isBertControl('\u0005') {
		t.Error("isBertControl(U+0005) = false")
	}
	for _, r := range []rune{'A', ' ', '\t', '\r', '\U0001F4A9'} {
		if isBertControl(r) {
			t.Errorf("isBertControl(%q) = true", r)
		}
	}
	for _, r := range []rune{'-', '$', '`', '.'} {
		if !isBertPunct(r) {
			t.Errorf("isBertPunct(%q) = false", r)
		}
	}
	for _, r := range []rune{'A', ' '} {
		if isBertPunct(r) {
			t.Errorf("isBertPunct(%q) = true", r)
		}
	}
}

func TestLoadVocab(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vocab.txt")
	if err := os.WriteFile(path, []byte("[PAD]\n[UNK] \nfoo\r\n##bar\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	v, err := LoadVocab(path)
	if err != nil {
		t.Fatal(err)
	}
	if v.Len() != 4 {
		t.Fatalf("Len = %d, want 4", v.Len())
	}
	for tok, want := range map[string]int32{"[PAD]": 0, "[UNK]": 1, "foo": 2, "##bar": 3} {
		if id, ok := v.ID(tok); !ok || id != want {
			t.Errorf("ID(%q) = %d,%v, want %d", tok, id, ok, want)
		}
	}
	if v.Token(3) != "##bar" || v.Token(4) != "" || v.Token(-1) != "" {
		t.Errorf("Token lookups wrong")
	}
	if _, err := LoadVocab(filepath.Join(t.TempDir(), "missing.txt")); err == nil {
		t.Error("LoadVocab(missing) succeeded")
	}
	if _, err := NewTokenizer(NewVocab([]string{"a"}), false); err == nil {
		t.Error("NewTokenizer without [UNK] succeeded")
	}
}
