package tasks

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"uniter/internal/model"
)

// DownstreamTasks are the fine-tuning tasks NewDownstream builds.
var DownstreamTasks = []string{"vqa", "ve", "nlvr2", "re", "itr", "vcr"}

// DownstreamOptions configure a downstream task's head.
type DownstreamOptions struct {
	// Answers is VQA's label2ans (index -> answer); see LoadAnswers.
	Answers []string
	// Variant is NLVR2's model (NLVR2Variants; "" is paired-attn).
	Variant string
	// UseImgType gives NLVR2's right image token type 2 (the official
	// configs set it).
	UseImgType bool
	// FP16 emulates fp16 gradients into the backbone.
	FP16 bool
	// CheckpointFrom is VCR's checkpoint_from for the configured initial
	// checkpoint ("" checks nothing: a resume, an evaluation).
	CheckpointFrom string
	// VCRAllRationales makes VCR evaluation sets score every rationale
	// after every answer (uniter eval, as inf_vcr.py).
	VCRAllRationales bool
	// MLP is the RE head's depth, the official "mlp" (0 means 1).
	MLP int
	// Margin, HardNegSize and InfMinibatch configure ITR: the hinge
	// margin, the hard negatives trained on (0: the plain recipe) and the
	// rows per scoring forward.
	Margin       float64
	HardNegSize  int
	InfMinibatch int
}

// NewDownstream registers task name's head on m.
func NewDownstream(name string, m *model.Model, o DownstreamOptions) (Downstream, error) {
	switch name {
	case "vqa":
		return NewVQA(m, "vqa", o.Answers, o.FP16)
	case "ve":
		return NewVE(m, o.FP16)
	case "vcr":
		return NewVCR(m, o.CheckpointFrom, o.VCRAllRationales, o.FP16), nil
	case "nlvr2":
		v := o.Variant
		if v == "" {
			v = NLVR2PairedAttn
		}
		return NewNLVR2(m, v, o.UseImgType, o.FP16)
	case "re":
		return NewRE(m, o.MLP, o.FP16)
	case "itr":
		return NewITR(m, o.Margin, o.HardNegSize, o.InfMinibatch, o.FP16)
	}
	return nil, fmt.Errorf("task %q: want one of %s", name, strings.Join(DownstreamTasks, ", "))
}

// officialAnswers is the official VQA answer vocabulary (utils/ans2label.json
// of the original: 3129 answers, index 0 "net"), the default when neither
// the config nor the checkpoint names one.
//
//go:embed ans2label.json
var officialAnswers []byte

// Ans2LabelFile is the name under which a VQA run stores its answer
// vocabulary beside its checkpoints, as the official train_vqa.py does.
const Ans2LabelFile = "ans2label.json"

// LoadAnswers returns VQA's label2ans and where it came from: the file
// path when given; else an ans2label.json beside the checkpoint (in our
// checkpoint directory or the directory above it, or next to an official
// .pt); else the official 3129 answers.
func LoadAnswers(path, checkpoint string) ([]string, string, error) {
	if path == "" && checkpoint != "" {
		dir := filepath.Dir(checkpoint)
		if st, err := os.Stat(checkpoint); err == nil && st.IsDir() {
			dir = checkpoint
		}
		for _, cand := range []string{filepath.Join(dir, Ans2LabelFile), filepath.Join(filepath.Dir(dir), Ans2LabelFile)} {
			if _, err := os.Stat(cand); err == nil {
				path = cand
				break
			}
		}
	}
	if path == "" {
		a, err := ParseAnswers(officialAnswers, "the built-in ans2label.json")
		return a, "the official 3129 answers", err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("ans2label: %w", err)
	}
	a, err := ParseAnswers(b, path)
	return a, path, err
}

// ParseAnswers turns an ans2label.json ({answer: index}) into label2ans,
// requiring the indices to be exactly 0..n-1.
func ParseAnswers(b []byte, source string) ([]string, error) {
	var m map[string]int
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("ans2label %s: want a JSON object {answer: index}: %w", source, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("ans2label %s: no answers", source)
	}
	out := make([]string, len(m))
	seen := make([]bool, len(m))
	for ans, i := range m {
		if i < 0 || i >= len(m) || seen[i] {
			return nil, fmt.Errorf("ans2label %s: answer %q has index %d: want each of 0..%d once", source, ans, i, len(m)-1)
		}
		seen[i] = true
		out[i] = ans
	}
	return out, nil
}

// AnswersJSON renders label2ans as an ans2label.json.
func AnswersJSON(answers []string) []byte {
	m := make(map[string]int, len(answers))
	for i, a := range answers {
		m[a] = i
	}
	b, _ := json.Marshal(m)
	return b
}
