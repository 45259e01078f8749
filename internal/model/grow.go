package model

import "fmt"

// WordEmbeddingName is the official key of the word embedding table.
const WordEmbeddingName = "uniter.embeddings.word_embeddings.weight"

// mlmBiasName is the MLM decoder's bias, one entry per word.
const mlmBiasName = "cls.predictions.bias"

// GrowWordVocab gives the word embedding table n rows: the old rows keep
// their values and the new ones are drawn from N(0, initializer_range), as
// the official init_word_embedding builds a fresh nn.Embedding and copies
// the old rows in (VCR adds 81 words for its person tags). The MLM
// decoder, tied to the table, follows it, and its bias (when the model has
// pretraining heads) grows with zeros, as a new BertOnlyMLMHead starts. A
// table that already has n rows is left as it is.
func (m *Model) GrowWordVocab(n int) error {
	p := m.Params.Get(WordEmbeddingName)
	old := p.Shape[0]
	if old == n {
		return nil
	}
	if n < old {
		return fmt.Errorf("word embeddings: cannot shrink %d rows to %d", old, n)
	}
	if _, err := m.Params.Resize(WordEmbeddingName, n, InitNormal); err != nil {
		return err
	}
	if m.Params.Get(mlmBiasName) != nil {
		if _, err := m.Params.Resize(mlmBiasName, n, InitZeros); err != nil {
			return err
		}
	}
	m.Cfg.VocabSize = n
	return nil
}
