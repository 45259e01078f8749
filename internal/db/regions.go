package db

// Regions returns how many regions Get returns for image fname without
// converting any array: nbb, or every stored row of a fixed-count
// (feat_numbb) db holding fewer, as the official arr[:num_bb] slice gives
// a ground-truth image's boxes.
func (d *ImgDB) Regions(fname string) (int, error) {
	rows := 0
	err := d.view(fname, []string{"features"}, func(arrays map[string]Array) error {
		feat, ok := arrays["features"]
		if !ok || len(feat.Shape) != 2 {
			return d.errorf(fname, "no [N, D] features array (has %v)", orderedNames(arrays))
		}
		rows = feat.Shape[0]
		return nil
	})
	if err != nil {
		return 0, err
	}
	n, err := d.NBB(fname)
	if err != nil {
		return 0, err
	}
	return min(n, rows), nil
}
