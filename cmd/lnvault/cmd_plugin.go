package main

import (
	"context"
	"os"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/scb/clnext"
	"github.com/spf13/cobra"
)

// pluginMain runs lnvault as a Core Lightning plugin, with the static
// channel backup extension.
func pluginMain(ctx context.Context) int { return backupplugin.Main(ctx, clnext.New()) }

// newPluginCmd is `lnvault plugin`.
func newPluginCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "plugin",
		Short:  "Run as a Core Lightning plugin on stdin/stdout (lightningd does this with LIGHTNINGD_PLUGIN=1)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if code := pluginMain(cmd.Context()); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
}
