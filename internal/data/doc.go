// Package data is UNITER's input pipeline: the BERT WordPiece tokenizer, the
// token-bucket batch sampler, example decoding and collation into padded
// batches (with the gather index that joins text and regions), the
// pretraining input transforms (MLM and region masking, ITM negatives, task
// mixing), a prefetching loader, and a seeded synthetic image-text world
// written as official-format dbs.
//
// Everything here is plain data (Go slices and ints); the package knows
// nothing of the model. All randomness is derived from explicit seeds and
// positions (epoch, batch index, example index) rather than from shared
// generators, so a batch is the same whichever worker builds it and training
// resumes exactly from a recorded position.
//
// Pretraining wires the pieces like this, once per task key (task and
// dataset):
//
//	set, _ := data.NewPretrainSet(txt, img, data.PretrainOptions{MaxTxtLen: 60, Rank: r, World: w, Seed: seed,
//		MaskProb: data.MaskProb, ITMNegProb: data.ITMNegProb})
//	stream := data.NewBatchStream(data.NewTokenBucketSampler(10240, seed, true), set.LensFunc(data.TaskMLM), 0)
//	stream.Seek(saved.Next()) // when resuming after the batch at saved
//	loader := data.NewLoader(ctx, stream, set.Build(data.TaskMLM), workers, prefetch)
//	defer loader.Close()
//
// and a TaskMixer picks the task key of each optimizer update; every
// micro-batch of that update comes from the task's loader, whose Next
// returns the batch and the Position to record in the checkpoint. Batch
// holds the model's inputs and targets; Release hands its feature buffer
// back once the batch has been copied to the device. Evaluation uses
// SequentialBatches with a SliceSource instead of the sampler.
//
// Fine-tuning reads VQASet (VQA, and visual entailment as VQA with three
// answers) and NLVR2Set through the same Lens and Build, with
// DownstreamOptions for the text limit, sharding and feature size. Their
// batches carry soft Targets (VQA) or per-example Labels (NLVR2), nil on a
// split without targets. An NLVR2 paired example spans two consecutive
// rows (Batch.RowsPerExample 2), and its IDs and Labels stay per example.
package data
