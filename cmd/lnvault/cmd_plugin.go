package main

import (
	"os"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/spf13/cobra"
)

func init() {
	pluginMain = backupplugin.Main
	addCommand(&cobra.Command{
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
	})
}
