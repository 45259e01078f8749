package train

import (
	"context"
	"fmt"
	"sort"

	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/tasks"
)

// Dataset is what the trainer and the evaluator read a task's batches
// from: a set of the data package, or several concatenated.
type Dataset = tasks.Dataset

// member is one dataset of a concatenation with how to read its example i
// as batch rows.
type member struct {
	Dataset
	n    int
	rows func(key string, epoch, i int) ([]*data.Example, error)
}

// concatSet joins the (txt_db, img_db) pairs of one configured dataset
// into one index space, as the reference's ConcatDatasetWithLens: the
// sampler mixes their examples, and each example is built by its own set
// (ITM negatives are drawn within that set's images).
type concatSet struct {
	sets       []member
	starts     []int // index of each set's first example
	imgDim     int
	perExample int
}

func newConcat(sets []member, imgDim, perExample int) *concatSet {
	c := &concatSet{sets: sets, imgDim: imgDim, perExample: perExample}
	n := 0
	for _, s := range sets {
		c.starts = append(c.starts, n)
		n += s.n
	}
	return c
}

func (c *concatSet) Lens(key string, epoch int) ([]int, error) {
	var lens []int
	for _, s := range c.sets {
		l, err := s.Lens(key, epoch)
		if err != nil {
			return nil, err
		}
		lens = append(lens, l...)
	}
	return lens, nil
}

func (c *concatSet) Build(key string) data.BuildFunc[*data.Batch] {
	return func(ctx context.Context, j data.Job) (*data.Batch, error) {
		var exs []*data.Example
		for _, i := range j.Indices {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			s := sort.Search(len(c.starts), func(n int) bool { return c.starts[n] > i }) - 1
			rows, err := c.sets[s].rows(key, j.Pos.Epoch, i-c.starts[s])
			if err != nil {
				return nil, err
			}
			exs = append(exs, rows...)
		}
		return data.CollateRows(exs, c.imgDim, c.perExample)
	}
}

// DBs opens each txt_db and img_db once, however many datasets name it
// (the reference's ImageLmdbGroup).
type DBs struct {
	imgOpts db.ImgDBOptions
	txt     map[string]*db.TxtDB
	img     map[string]*db.ImgDB
}

// NewDBs returns an empty cache reading img_dbs with opts.
func NewDBs(opts db.ImgDBOptions) *DBs {
	return &DBs{imgOpts: opts, txt: map[string]*db.TxtDB{}, img: map[string]*db.ImgDB{}}
}

// Txt opens (once) the txt_db in dir.
func (c *DBs) Txt(dir string) (*db.TxtDB, error) {
	if t, ok := c.txt[dir]; ok {
		return t, nil
	}
	t, err := db.OpenTxtDB(dir)
	if err != nil {
		return nil, err
	}
	c.txt[dir] = t
	return t, nil
}

// Img opens (once) the img_db in dir.
func (c *DBs) Img(dir string) (*db.ImgDB, error) {
	if d, ok := c.img[dir]; ok {
		return d, nil
	}
	d, err := db.OpenImgDB(dir, c.imgOpts)
	if err != nil {
		return nil, err
	}
	c.img[dir] = d
	return d, nil
}

// Close closes every db opened.
func (c *DBs) Close() {
	for _, t := range c.txt {
		t.Close()
	}
	for _, d := range c.img {
		d.Close()
	}
}

// OpenDataset opens the pairs of txt and img dbs as one Dataset. Every
// txt_db's vocabulary must fit a model of vocabSize words.
func OpenDataset(c *DBs, txtDirs, imgDirs []string, opts data.PretrainOptions, vocabSize int) (Dataset, error) {
	if len(txtDirs) != len(imgDirs) || len(txtDirs) == 0 {
		return nil, fmt.Errorf("dataset: %d txt_dbs and %d img_dbs, want matching non-empty lists", len(txtDirs), len(imgDirs))
	}
	var sets []member
	for i, dir := range txtDirs {
		txt, err := c.Txt(dir)
		if err != nil {
			return nil, err
		}
		if err := checkVocab(txt.Meta(), dir, vocabSize); err != nil {
			return nil, err
		}
		var set pretrainSet
		if data.IsVCRTxtDB(dir) {
			// The second-stage VCR pretraining (pretrain_vcr.py).
			set, err = openVCRPretrain(c, txt, imgDirs[i], opts)
		} else {
			var img *db.ImgDB
			if img, err = c.Img(imgDirs[i]); err == nil {
				set, err = data.NewPretrainSet(txt, img, opts)
			}
		}
		if err != nil {
			return nil, err
		}
		if len(txtDirs) == 1 {
			return set, nil
		}
		sets = append(sets, member{Dataset: set, n: set.Len(), rows: func(key string, epoch, i int) ([]*data.Example, error) {
			ex, err := set.Example(key, epoch, i)
			return []*data.Example{ex}, err
		}})
	}
	return newConcat(sets, opts.ImgDim, 1), nil
}

// checkVocab rejects a txt_db whose token ids do not fit the model.
func checkVocab(m db.Meta, dir string, vocabSize int) error {
	if m.VRange[1] > vocabSize || max(m.CLS, m.SEP, m.MASK, m.UNK) >= vocabSize {
		return fmt.Errorf("txt_db %s: vocabulary of %d ids (meta.json v_range %v) does not fit the model's vocab_size %d",
			dir, max(m.VRange[1], m.CLS+1, m.SEP+1, m.MASK+1), m.VRange, vocabSize)
	}
	return nil
}
