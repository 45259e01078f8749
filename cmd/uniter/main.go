// Command uniter pretrains, fine-tunes, evaluates and benchmarks UNITER, the
// universal image-text representation model, on the CPU or on CUDA GPUs.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "uniter:", err)
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(ec.code)
		}
		os.Exit(1)
	}
}

// exitCode ends the process with a status other than 1: an interrupted
// run exits as a shell reports a process killed by the signal (128+n:
// 130 for SIGINT, 143 for SIGTERM), so schedulers and scripts can tell
// it from a failure.
type exitCode struct {
	code int
	err  error
}

func (e exitCode) Error() string { return e.err.Error() }
func (e exitCode) Unwrap() error { return e.err }
