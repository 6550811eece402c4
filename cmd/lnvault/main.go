// Command lnvault is the Core Lightning backup plugin, the command line tool
// and the backup server, in one binary. lightningd starts it as a plugin with
// LIGHTNINGD_PLUGIN=1; otherwise it runs the sub-command given.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/lnvault/lnvault/backends"
	"github.com/spf13/cobra"
)

var logLevel = new(slog.LevelVar)

// newRootCmd is the command line: every sub-command the binary has, each
// built in its own file.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "lnvault",
		Short:         "Synchronous backups of a Core Lightning node, restored exactly",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			v, _ := cmd.Flags().GetBool("verbose")
			if v {
				logLevel.Set(slog.LevelDebug)
			}
			return nil
		},
	}
	root.PersistentFlags().BoolP("verbose", "v", false, "log debug details to stderr")
	root.AddCommand(
		newInitCmd(), newStatusCmd(), newVerifyCmd(), newRestoreCmd(), newCompactCmd(), newDeleteCmd(),
		newGenerationsCmd(), newSnapshotsCmd(), newScbCmd(), newServerCmd(), newBenchCmd(), newDemoCmd(),
		newPluginCmd(),
	)
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel})))
	logLevel.Set(slog.LevelWarn)
	backends.Register()
	if os.Getenv("LIGHTNINGD_PLUGIN") == "1" {
		os.Exit(pluginMain(ctx))
	}
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "lnvault: %v\n", err)
		var ec exitCoder
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(1)
	}
}

// exitCoder lets a command choose its exit code (verify uses 2 for a damaged
// backup, 1 for an error reading it).
type exitCoder interface{ ExitCode() int }
