package db

import "fmt"

// PutLen records example id's length n in the {id: len} side file name
// (written by Close, in PutLen order), for dbs whose reader takes its
// lengths from a file other than id2len.json: VCR's id2len_qa.json and
// id2len_qar.json (VcrTxtTokLmdb). id must have been Put.
func (w *TxtWriter) PutLen(name, id string, n int) error {
	if _, ok := w.id2len[id]; !ok {
		return fmt.Errorf("txt_db %s: %s: key %q was not put", w.dir, name, id)
	}
	if name == "id2len.json" || n < 0 {
		return fmt.Errorf("txt_db %s: %s: key %q: cannot record length %d there", w.dir, name, id, n)
	}
	if w.lensFiles == nil {
		w.lensFiles = map[string]*orderedLensJSON{}
	}
	f := w.lensFiles[name]
	if f == nil {
		f = &orderedLensJSON{lens: map[string]int{}}
		w.lensFiles[name] = f
		w.lensNames = append(w.lensNames, name)
	}
	if _, dup := f.lens[id]; !dup {
		f.ids = append(f.ids, id)
	}
	f.lens[id] = n
	return nil
}
