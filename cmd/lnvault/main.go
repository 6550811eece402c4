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

var rootCmd = &cobra.Command{
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

func init() {
	rootCmd.PersistentFlags().BoolP("verbose", "v", false, "log debug details to stderr")
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel})))
	logLevel.Set(slog.LevelWarn)
}

// addCommand registers a sub-command; each sub-command lives in its own file.
func addCommand(c *cobra.Command) { rootCmd.AddCommand(c) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	backends.Register()
	if os.Getenv("LIGHTNINGD_PLUGIN") == "1" {
		os.Exit(pluginMain(ctx))
	}
	if err := rootCmd.ExecuteContext(ctx); err != nil {
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
