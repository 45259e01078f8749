package data

import (
	_ "embed"
	"fmt"
	"sort"
	"strings"
)

// The vocabularies of the tokenizers UNITER's txt_dbs name in meta.json;
// vocab/README.md says where they come from.
var (
	//go:embed vocab/bert-base-cased.txt
	bertBaseCased []byte
	//go:embed vocab/bert-base-uncased.txt
	bertBaseUncased []byte
)

var builtinVocabs = map[string][]byte{
	"bert-base-cased":   bertBaseCased,
	"bert-base-uncased": bertBaseUncased,
}

// BuiltinVocabs returns, sorted, the tokenizer names whose vocabularies are
// built in.
func BuiltinVocabs() []string {
	names := make([]string, 0, len(builtinVocabs))
	for n := range builtinVocabs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// BuiltinVocab returns the built-in vocabulary of tokenizer name, e.g.
// "bert-base-cased" (28996 tokens) or "bert-base-uncased" (30522).
func BuiltinVocab(name string) (*Vocab, error) {
	raw, ok := builtinVocabs[name]
	if !ok {
		return nil, fmt.Errorf("no built-in vocabulary for tokenizer %q (built in: %s)", name, strings.Join(BuiltinVocabs(), ", "))
	}
	return parseVocab(raw, name)
}

// BertTokenizer returns the tokenizer UNITER's preprocessing builds for
// BERT model name, BertTokenizer.from_pretrained(name, do_lower_case=
// 'uncased' in name): over the vocab.txt at vocabPath when it is given,
// else over name's built-in vocabulary.
func BertTokenizer(name, vocabPath string) (*Tokenizer, error) {
	src := "built-in " + name
	var v *Vocab
	var err error
	if vocabPath != "" {
		src = vocabPath
		v, err = LoadVocab(vocabPath)
	} else {
		v, err = BuiltinVocab(name)
	}
	if err != nil {
		return nil, err
	}
	tok, err := NewTokenizer(v, strings.Contains(name, "uncased"))
	if err != nil {
		return nil, fmt.Errorf("vocab %s: %w", src, err)
	}
	return tok, nil
}
