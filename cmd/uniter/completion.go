package main

import (
	"slices"

	"github.com/spf13/cobra"

	"uniter/internal/model"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

// registerCompletions gives the shell completion (`uniter completion
// bash|zsh|fish|powershell`) the values of the flags that take a fixed
// set: --task (per command), --device, --variant and the model presets.
func registerCompletions(root *cobra.Command) {
	fixed := func(vals ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return vals, cobra.ShellCompDirectiveNoFileComp
		}
	}
	presetsOrFiles := func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		// A preset name, or an official model JSON file.
		return model.PresetNames, cobra.ShellCompDirectiveDefault
	}
	taskValues := map[string][]string{
		"finetune": train.FinetuneTasks,
		"eval":     append([]string{train.TaskPretrain}, tasks.DownstreamTasks...),
		"bench":    {"vqa"},
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		f := c.Flags()
		if f.Lookup("device") != nil {
			_ = c.RegisterFlagCompletionFunc("device", fixed(deviceNames...))
		}
		if f.Lookup("variant") != nil {
			_ = c.RegisterFlagCompletionFunc("variant", fixed(tasks.NLVR2Variants...))
		}
		if vals, ok := taskValues[c.Name()]; ok && f.Lookup("task") != nil {
			_ = c.RegisterFlagCompletionFunc("task", fixed(slices.Clone(vals)...))
		}
		for _, name := range []string{"model", "model-config"} {
			if f.Lookup(name) != nil {
				_ = c.RegisterFlagCompletionFunc(name, presetsOrFiles)
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
