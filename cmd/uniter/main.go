// Command uniter pretrains, fine-tunes, evaluates and benchmarks UNITER, the
// universal image-text representation model, on the CPU or on CUDA GPUs.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "uniter:", err)
		os.Exit(1)
	}
}
