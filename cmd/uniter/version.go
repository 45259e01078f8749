package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at link time by the Makefile (-X main.version=...).
var version = "dev"

func init() { subcommands = append(subcommands, newVersionCmd) }

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print the version, build tags and available devices",
		Example: "  uniter version",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "uniter %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			tags := "none"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "-tags" && s.Value != "" {
						tags = s.Value
					}
				}
			}
			fmt.Fprintf(w, "build tags: %s\n", tags)
			fmt.Fprintf(w, "devices: %s\n", deviceSummary())
			return nil
		},
	}
}
