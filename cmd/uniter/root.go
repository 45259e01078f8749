package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
)

// subcommands holds the constructors of every subcommand. Each command file
// appends its constructor in init, so commands stay one file each.
var subcommands []func() *cobra.Command

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "uniter",
		Short: "UNITER image-text transformer: pretrain, fine-tune, evaluate, benchmark",
		Long: `uniter is UNITER (Chen et al., ECCV 2020) as one program. It reads the
official checkpoints and data dbs, pretrains and fine-tunes on the CPU or on
CUDA GPUs, and gives the original's numbers.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, mk := range subcommands {
		root.AddCommand(mk())
	}
	registerCompletions(root)
	return root
}

// newConfig returns a viper instance that reads UNITER_* environment
// variables (UNITER_MODEL_HIDDEN_SIZE for model.hidden_size) so that any
// config key can be set from the environment.
func newConfig() *viper.Viper {
	v := viper.New()
	v.SetEnvPrefix("UNITER")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	return v
}

// applySets applies repeated --set key=value overrides to v.
func applySets(v *viper.Viper, sets []string) error {
	for _, s := range sets {
		k, val, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("--set %q: want key=value", s)
		}
		v.Set(k, val)
	}
	return nil
}
