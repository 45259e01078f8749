package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"uniter/internal/train"
)

// subcommands holds the constructors of every subcommand. Each command file
// appends its constructor in init, so commands stay one file each.
var subcommands []func() *cobra.Command

// diag is where newConfig warns: the running command's stderr (set before
// every command runs), os.Stderr until then.
var diag io.Writer = os.Stderr

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "uniter",
		Short: "UNITER image-text transformer: pretrain, fine-tune, evaluate, benchmark",
		Long: `uniter is UNITER (Chen et al., ECCV 2020) as one program. It reads the
official checkpoints and data dbs, pretrains and fine-tunes on the CPU or on
CUDA GPUs, and gives the original's numbers.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			diag = cmd.ErrOrStderr()
		},
	}
	for _, mk := range subcommands {
		root.AddCommand(mk())
	}
	registerCompletions(root)
	return root
}

// envPrefix starts the environment variables that set config keys.
const envPrefix = "UNITER_"

// programEnv are the UNITER_* variables that are the program's (and its
// tests') own settings, not config keys: newConfig does not warn about
// them. Keep this the one list of them.
var programEnv = []string{
	"UNITER_RDZV_TOKEN",   // rendezvous token of multi-process runs
	"UNITER_GLOO_HOST",    // address Gloo binds to
	"UNITER_NCCL_LIB",     // path of libnccl.so.2
	"UNITER_CUDA_SYNC",    // synchronise after every CUDA launch
	"UNITER_FATBIN",       // CUDA kernels from a file instead of the embedded ones
	"UNITER_TEST_MAIN",    // tests: TestMain runs the command line
	"UNITER_REQUIRE_GLOO", // tests: a missing Gloo fails instead of skipping
	"UNITER_NCCL_REQUIRE", // tests: a missing NCCL fails instead of skipping
}

// envName is the variable of a config key: UNITER_MODEL_HIDDEN_SIZE for
// model.hidden_size (the replacer of newConfig).
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// newConfig returns a viper instance that reads UNITER_* environment
// variables (UNITER_MODEL_HIDDEN_SIZE for model.hidden_size) so that any
// config key can be set from the environment. A set variable of a key is
// bound, so it applies even when neither the file nor the defaults hold
// the key (model.*, the db lists); a UNITER_* variable that is neither a
// config key nor one of programEnv is ignored with a warning.
func newConfig() *viper.Viper {
	v := viper.New()
	v.SetEnvPrefix(strings.TrimSuffix(envPrefix, "_"))
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_", "-", "_"))
	v.AutomaticEnv()
	byEnv := map[string]string{}
	var names []string
	for _, k := range train.Keys() {
		byEnv[envName(k)] = k
		names = append(names, envName(k))
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix) || slices.Contains(programEnv, name) {
			continue
		}
		if key, ok := byEnv[name]; ok {
			_ = v.BindEnv(key, name)
			continue
		}
		hint := ""
		if best := train.NearestKey(name, names); best != "" {
			hint = " (did you mean " + best + "?)"
		}
		fmt.Fprintf(diag, "%s is not a config key%s; ignored\n", name, hint)
	}
	return v
}

// applySets applies repeated --set key=value overrides to v. A key no
// config holds is an error naming the --set, with the nearest key.
func applySets(v *viper.Viper, sets []string) error {
	for _, s := range sets {
		k, val, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("--set %q: want key=value", s)
		}
		if err := train.CheckKey(k); err != nil {
			return fmt.Errorf("--set %s: %w", k, err)
		}
		v.Set(k, val)
	}
	return nil
}
