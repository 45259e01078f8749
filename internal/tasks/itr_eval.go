package tasks

// RankOf is the 0-based rank of entry at among scores, highest first:
// the entries scoring higher, plus the equal ones before it (torch.topk's
// order on ties).
func RankOf(scores []float32, at int) int {
	v, r := scores[at], 0
	for j, s := range scores {
		if s > v || (s == v && j < at) {
			r++
		}
	}
	return r
}

// ITRMetrics are the retrieval recalls of a score matrix [nt, ni]
// (row-major; text i's image is column gt[i], image c's texts are
// colTexts[c]), as fractions:
//
//	img_r1 img_r5 img_r10: texts whose image ranks in the top K of their row
//	txt_r1 txt_r5 txt_r10: images whose best-ranked text is in the top K of their column
//	img_r_mean, txt_r_mean: the means of the three; r_mean their mean
//
// and img_r1_official ... the original's utils/itm_eval.py image recall,
// which counts every element of nonzero()'s [row, column] pairs below K:
// a text hit in the top 10 adds one more when its row index is below K.
// Its text recall is the true one.
func ITRMetrics(scores []float32, nt, ni int, gt []int, colTexts [][]int) map[string]float64 {
	ks := []int{1, 5, 10}
	var img, imgOff, txt [3]float64
	for i := range nt {
		r := RankOf(scores[i*ni:(i+1)*ni], gt[i])
		for k, lim := range ks {
			if r < lim {
				img[k]++
				imgOff[k]++
			}
			if r < 10 && i < lim {
				imgOff[k]++
			}
		}
	}
	col := make([]float32, nt)
	for c := range ni {
		for i := range nt {
			col[i] = scores[i*ni+c]
		}
		best := nt
		for _, i := range colTexts[c] {
			best = min(best, RankOf(col, i))
		}
		for k, lim := range ks {
			if best < lim {
				txt[k]++
			}
		}
	}
	m := map[string]float64{"n_txt": float64(nt), "n_img": float64(ni)}
	names := []string{"r1", "r5", "r10"}
	var im, imo, tm float64
	for k, n := range names {
		m["img_"+n] = img[k] / float64(nt)
		m["img_"+n+"_official"] = imgOff[k] / float64(nt)
		m["txt_"+n] = txt[k] / float64(ni)
		im += m["img_"+n] / 3
		imo += m["img_"+n+"_official"] / 3
		tm += m["txt_"+n] / 3
	}
	m["img_r_mean"], m["img_r_mean_official"], m["txt_r_mean"] = im, imo, tm
	m["r_mean"] = (im + tm) / 2
	m["r_mean_official"] = (imo + tm) / 2
	return m
}
