package data

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Special token strings of the BERT vocabularies.
const (
	TokPAD  = "[PAD]"
	TokUNK  = "[UNK]"
	TokCLS  = "[CLS]"
	TokSEP  = "[SEP]"
	TokMASK = "[MASK]"
)

// maxWordChars is WordPiece's limit: longer words become [UNK] whole.
const maxWordChars = 100

// neverSplit are kept intact by the basic tokenizer, as in
// pytorch-pretrained-bert (the tokenizer UNITER's preprocessing used).
var neverSplit = map[string]bool{TokUNK: true, TokSEP: true, TokPAD: true, TokCLS: true, TokMASK: true}

// Vocab maps WordPiece tokens to ids and back.
type Vocab struct {
	ids    map[string]int32
	tokens []string
}

// NewVocab builds a vocabulary whose token i has id i. A repeated token
// maps to its last id, as BERT's loader (a Python dict) does.
func NewVocab(tokens []string) *Vocab {
	v := &Vocab{ids: make(map[string]int32, len(tokens)), tokens: append([]string(nil), tokens...)}
	for i, t := range tokens {
		v.ids[t] = int32(i)
	}
	return v
}

// LoadVocab reads a BERT vocab.txt: one token per line, id = line number
// from 0. Surrounding whitespace is stripped as BERT's loader does.
func LoadVocab(path string) (*Vocab, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vocab: %w", err)
	}
	return parseVocab(raw, path)
}

// parseVocab parses the contents of a vocab.txt; name says where it came
// from in errors.
func parseVocab(raw []byte, name string) (*Vocab, error) {
	var toks []string
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		toks = append(toks, strings.TrimFunc(sc.Text(), isPySpace))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("vocab %s: %w", name, err)
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("vocab %s: empty", name)
	}
	return NewVocab(toks), nil
}

// Len is the number of tokens.
func (v *Vocab) Len() int { return len(v.tokens) }

// ID returns the id of tok and whether it is in the vocabulary.
func (v *Vocab) ID(tok string) (int32, bool) {
	id, ok := v.ids[tok]
	return id, ok
}

// Token returns the token with the given id, or "" when out of range.
func (v *Vocab) Token(id int32) string {
	if id < 0 || int(id) >= len(v.tokens) {
		return ""
	}
	return v.tokens[id]
}

// Tokenizer is BERT's full tokenizer: the basic tokenizer (cleaning,
// CJK separation, optional lowercasing with accent stripping, punctuation
// split) followed by greedy longest-match-first WordPiece.
type Tokenizer struct {
	vocab     *Vocab
	lowercase bool
	unk       int32
}

// NewTokenizer returns a tokenizer over vocab; lowercase selects the uncased
// behaviour (lowercasing and accent stripping). The vocabulary must hold
// [UNK] since WordPiece falls back to it.
func NewTokenizer(vocab *Vocab, lowercase bool) (*Tokenizer, error) {
	unk, ok := vocab.ID(TokUNK)
	if !ok {
		return nil, fmt.Errorf("vocab has no %s token", TokUNK)
	}
	return &Tokenizer{vocab: vocab, lowercase: lowercase, unk: unk}, nil
}

// Vocab returns the tokenizer's vocabulary.
func (t *Tokenizer) Vocab() *Vocab { return t.vocab }

// Tokenize returns the WordPiece tokens of text.
func (t *Tokenizer) Tokenize(text string) []string {
	var out []string
	for _, w := range t.basic(text) {
		out = append(out, t.wordPiece(w)...)
	}
	return out
}

// Encode is UNITER's preprocessing (bert_tokenize in prepro.py): split on
// whitespace, tokenize each word, drop words that yield no token, and map
// the pieces to ids. No specials are added and nothing is truncated.
func (t *Tokenizer) Encode(text string) []int32 {
	var ids []int32
	for _, word := range strings.FieldsFunc(text, isPySpace) {
		for _, piece := range t.Tokenize(word) {
			ids = append(ids, t.id(piece))
		}
	}
	return ids
}

// IDs maps tokens to ids, unknown tokens to [UNK].
func (t *Tokenizer) IDs(tokens []string) []int32 {
	ids := make([]int32, len(tokens))
	for i, tok := range tokens {
		ids[i] = t.id(tok)
	}
	return ids
}

func (t *Tokenizer) id(tok string) int32 {
	if id, ok := t.vocab.ID(tok); ok {
		return id
	}
	return t.unk
}

// basic is BERT's BasicTokenizer.tokenize.
func (t *Tokenizer) basic(text string) []string {
	text = cleanText(text)
	text = spaceCJK(text)
	var out []string
	for _, tok := range strings.FieldsFunc(text, isPySpace) {
		if t.lowercase && !neverSplit[tok] {
			tok = stripAccents(strings.ToLower(tok))
		}
		out = append(out, splitPunct(tok)...)
	}
	return out
}

// wordPiece is greedy longest-match-first segmentation of one word; a word
// with any unmatchable remainder becomes a single [UNK].
func (t *Tokenizer) wordPiece(word string) []string {
	runes := []rune(word)
	if len(runes) > maxWordChars {
		return []string{TokUNK}
	}
	var out []string
	for start := 0; start < len(runes); {
		end := len(runes)
		cur := ""
		for ; start < end; end-- {
			sub := string(runes[start:end])
			if start > 0 {
				sub = "##" + sub
			}
			if _, ok := t.vocab.ID(sub); ok {
				cur = sub
				break
			}
		}
		if cur == "" {
			return []string{TokUNK}
		}
		out = append(out, cur)
		start = end
	}
	return out
}

// isPySpace matches Python's str.isspace, which str.split() (used by
// UNITER's preprocessing) splits on; it includes the ASCII separators
// U+001C..U+001F that Go's unicode.IsSpace leaves out.
func isPySpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
}

// isBertWhitespace is BERT's _is_whitespace.
func isBertWhitespace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || unicode.Is(unicode.Zs, r)
}

// isBertControl is BERT's _is_control: Unicode category C* (unassigned code
// points included) except the whitespace controls, which are treated as
// whitespace instead.
func isBertControl(r rune) bool {
	if r == '\t' || r == '\n' || r == '\r' {
		return false
	}
	if r >= 0x20 && r < 0x7f {
		return false
	}
	return !unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z)
}

// isBertPunct is BERT's _is_punctuation: all non-alphanumeric ASCII
// printables count (so "$" and "^" split like punctuation) plus category P*.
func isBertPunct(r rune) bool {
	if (r >= 33 && r <= 47) || (r >= 58 && r <= 64) || (r >= 91 && r <= 96) || (r >= 123 && r <= 126) {
		return true
	}
	return unicode.IsPunct(r)
}

// isCJK reports whether r is in the CJK Unified Ideographs blocks BERT
// separates into single-character words.
func isCJK(r rune) bool {
	return (r >= 0x4E00 && r <= 0x9FFF) || (r >= 0x3400 && r <= 0x4DBF) ||
		(r >= 0x20000 && r <= 0x2A6DF) || (r >= 0x2A700 && r <= 0x2B73F) ||
		(r >= 0x2B740 && r <= 0x2B81F) || (r >= 0x2B820 && r <= 0x2CEAF) ||
		(r >= 0xF900 && r <= 0xFAFF) || (r >= 0x2F800 && r <= 0x2FA1F)
}

// cleanText drops NUL, U+FFFD, invalid UTF-8 and control characters and maps
// every whitespace character to a space.
func cleanText(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == 0 || r == utf8.RuneError || isBertControl(r):
		case isBertWhitespace(r):
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func spaceCJK(s string) string {
	var b strings.Builder
	for _, r := range s {
		if isCJK(r) {
			b.WriteByte(' ')
			b.WriteRune(r)
			b.WriteByte(' ')
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// stripAccents removes combining marks after canonical decomposition.
func stripAccents(s string) string {
	var b strings.Builder
	for _, r := range norm.NFD.String(s) {
		if !unicode.Is(unicode.Mn, r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// splitPunct makes every punctuation character a token of its own.
func splitPunct(tok string) []string {
	if neverSplit[tok] {
		return []string{tok}
	}
	var out []string
	var cur []rune
	for _, r := range tok {
		if isBertPunct(r) {
			if len(cur) > 0 {
				out = append(out, string(cur))
				cur = cur[:0]
			}
			out = append(out, string(r))
			continue
		}
		cur = append(cur, r)
	}
	if len(cur) > 0 {
		out = append(out, string(cur))
	}
	return out
}
