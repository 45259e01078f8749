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
package data
