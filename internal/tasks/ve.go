package tasks

import "uniter/internal/model"

// VEAnswers are SNLI-VE's labels in the official VE head's order (its
// ans2label.json).
var VEAnswers = []string{"contradiction", "entailment", "neutral"}

// NewVE registers the visual entailment head on m: the official
// UniterForVisualEntailment is the VQA model with the three VEAnswers, so
// its head, loss, metric and output files are VQA's.
func NewVE(m *model.Model, fp16 bool) (*VQA, error) { return NewVQA(m, "ve", VEAnswers, fp16) }
