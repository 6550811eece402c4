package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault/internal/durable"
	"github.com/lnvault/lnvault/scb"
	"github.com/spf13/cobra"
)

// newScbCmd is `lnvault scb`.
func newScbCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "scb",
		Short: "Static channel backups: watch, list and get them",
		Long: `Static channel backups (SCBs) are the last resort when a node's database is lost:
they let the channel peers close the channels so the funds return on chain.

Destinations are URLs: file:///path/node.dbak (versions in /path/node.dbak.scb/)
or dir:///path/folder. Every version is kept; list shows them, get writes one
in the form recovery takes:
  cln-scb                the JSON array for: lightning-cli recoverchannel -k scb="$(cat FILE)"
  cln-emergency-recover  the emergency.recover file, for: lightning-cli emergencyrecover
  lnd-multi              the channel.backup file, for: lncli restorechanbackup --multi_file FILE`,
	}
	c.AddCommand(scbWatchCmd(), scbListCmd(), scbGetCmd(), scbPutCmd())
	return c
}

func addEncryptFlags(c *cobra.Command) {
	c.Flags().StringArray("encrypt-to", nil, "encrypt for this age recipient (age1...); repeatable")
	c.Flags().StringArray("recipients-file", nil, "encrypt for the age recipients in this file; repeatable")
}

func recipientsFromFlags(c *cobra.Command) ([]age.Recipient, error) {
	keys, _ := c.Flags().GetStringArray("encrypt-to")
	files, _ := c.Flags().GetStringArray("recipients-file")
	return scb.ParseRecipients(keys, files)
}

func scbWatchCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "watch --file PATH/channel.backup --to URL [--to URL...]",
		Short: "Follow lnd's channel.backup (or CLN's emergency.recover) and ship every complete version",
		Long: `watch checks the file every --interval; a changed file is read twice --settle apart
and shipped only if both reads agree, no process has it open for writing (where the
kernel can tell) and it has the shape of a whole backup of --kind. Each new version
is stored at every --to destination; a failing destination is retried with backoff
and does not hold up the others. Runs until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			path, _ := cmd.Flags().GetString("file")
			tos, _ := cmd.Flags().GetStringArray("to")
			kindS, _ := cmd.Flags().GetString("kind")
			interval, _ := cmd.Flags().GetDuration("interval")
			settle, _ := cmd.Flags().GetDuration("settle")
			localCopy, _ := cmd.Flags().GetString("local-copy")
			if path == "" {
				return errors.New("scb watch needs --file PATH (lnd: <lnddir>/data/chain/bitcoin/mainnet/channel.backup)")
			}
			if len(tos) == 0 && localCopy == "" {
				return errors.New("scb watch needs at least one destination: --to URL (e.g. dir:///var/backups/scb) or --local-copy FILE")
			}
			kind, err := scb.ParseKind(kindS)
			if err != nil {
				return err
			}
			if kind == scb.KindCLN {
				return errors.New("scb watch follows a file lnd or lightningd writes: --kind lnd-multi or cln-emergency-recover (cln-scb comes from the plugin)")
			}
			if interval <= 0 || settle <= 0 {
				return errors.New("--interval and --settle must be positive durations, e.g. 1s and 300ms")
			}
			abs, err := filepath.Abs(path)
			if err != nil {
				return err
			}
			rcpts, err := recipientsFromFlags(cmd)
			if err != nil {
				return err
			}
			var swappers []scb.Swapper
			for _, u := range tos {
				st, err := scb.OpenStore(ctx, u, scb.StoreOptions{})
				if err != nil {
					return err
				}
				defer st.Close()
				swappers = append(swappers, &scb.StoreSwapper{Store: st, Recipients: rcpts})
			}
			if localCopy != "" {
				swappers = append(swappers, &scb.FileSwapper{Path: localCopy})
			}
			k, err := scb.New(scb.Config{
				Kind:     kind,
				Source:   &scb.FileSource{Path: abs, Kind: kind, Settle: settle},
				Swappers: swappers,
				Debounce: settle,
				RetryMin: time.Second,
				Logger:   slog.Default(),
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "lnvault: watching %s (%s) for %d destination(s)\n", abs, kind, len(swappers))
			go scb.WatchFile(ctx, abs, interval, k, slog.Default())
			go logChanges(ctx, k, cmd.ErrOrStderr())
			err = k.Run(ctx)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	c.Flags().String("file", "", "the backup file to follow (lnd's channel.backup)")
	c.Flags().StringArray("to", nil, "destination URL; repeatable")
	c.Flags().String("kind", string(scb.KindLNDMulti), "what the file is: lnd-multi or cln-emergency-recover")
	c.Flags().Duration("interval", time.Second, "how often to check the file")
	c.Flags().Duration("settle", 300*time.Millisecond, "the file must be unchanged for this long before it is shipped")
	c.Flags().String("local-copy", "", "also keep a local copy in this file (swapped atomically, previous versions in FILE.archive/)")
	addEncryptFlags(c)
	return c
}

// logChanges prints one line per stored version and per new failure, so a
// foreground watch shows what it does.
func logChanges(ctx context.Context, k *scb.Keeper, w io.Writer) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	swaps := map[string]uint64{}
	fails := map[string]int{}
	fetchErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := k.Status()
		if st.FetchError != fetchErr {
			fetchErr = st.FetchError
			if fetchErr != "" && !strings.Contains(fetchErr, scb.ErrUnstable.Error()) {
				fmt.Fprintf(w, "lnvault: %s\n", fetchErr)
			}
		}
		for _, d := range st.Destinations {
			if d.Swaps != swaps[d.Name] {
				swaps[d.Name] = d.Swaps
				fmt.Fprintf(w, "lnvault: stored %s (%d bytes) at %s\n", d.SHA256, st.Size, d.Name)
			}
			if d.Failures > fails[d.Name] {
				fmt.Fprintf(w, "lnvault: %s failed (%d in a row, retry at %s): %s\n", d.Name, d.Failures, d.NextRetry.Format(time.TimeOnly), d.LastError)
			}
			fails[d.Name] = d.Failures
		}
	}
}

func scbListCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "list URL",
		Short: "List the stored versions (no key needed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			asJSON, _ := cmd.Flags().GetBool("json")
			kindS, _ := cmd.Flags().GetString("kind")
			st, err := scb.OpenStore(ctx, args[0], scb.StoreOptions{})
			if err != nil {
				return err
			}
			defer st.Close()
			vs, err := st.List(ctx)
			if err != nil {
				return err
			}
			if kindS != "" {
				kind, err := scb.ParseKind(kindS)
				if err != nil {
					return err
				}
				var f []scb.Version
				for _, v := range vs {
					if v.Kind == kind {
						f = append(f, v)
					}
				}
				vs = f
			}
			damaged := 0
			for _, v := range vs {
				if v.Err != nil {
					damaged++
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				type jv struct {
					ID        string    `json:"id"`
					Seq       uint64    `json:"seq"`
					Kind      string    `json:"kind"`
					Stored    time.Time `json:"stored"`
					Created   time.Time `json:"created"`
					Channels  int       `json:"channels"`
					Size      int64     `json:"size"`
					Encrypted bool      `json:"encrypted"`
					Error     string    `json:"error,omitempty"`
				}
				list := []jv{}
				for _, v := range vs {
					j := jv{ID: v.ID, Seq: v.Seq, Kind: string(v.Kind), Stored: v.Stored, Created: v.Created,
						Channels: v.Channels, Size: v.Size, Encrypted: v.Encrypted}
					if v.Err != nil {
						j.Error = v.Err.Error()
					}
					list = append(list, j)
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(list); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tKIND\tCREATED\tCHANNELS\tSIZE\tENCRYPTED\tSTATUS")
				for _, v := range vs {
					ch := "?"
					if v.Channels >= 0 {
						ch = fmt.Sprint(v.Channels)
					}
					status := "ok"
					created := v.Created.Local().Format("2006-01-02 15:04:05")
					if v.Err != nil {
						status = "DAMAGED: " + v.Err.Error()
						created = "-"
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%v\t%s\n", v.Seq, v.Kind, created, ch, v.Size, v.Encrypted, status)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if damaged > 0 {
				return scbExitErr{code: 2, err: fmt.Errorf("%d of %d versions in %s are damaged", damaged, len(vs), st)}
			}
			return nil
		},
	}
	c.Flags().Bool("json", false, "print JSON")
	c.Flags().String("kind", "", "only this kind")
	return c
}

// scbExitErr carries an exit code to main (2: damaged data found).
type scbExitErr struct {
	code int
	err  error
}

func (e scbExitErr) Error() string { return e.err.Error() }
func (e scbExitErr) Unwrap() error { return e.err }
func (e scbExitErr) ExitCode() int { return e.code }

func scbGetCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "get URL -o FILE",
		Short: "Write one version (default: the latest) in the form recovery takes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			out, _ := cmd.Flags().GetString("output")
			ver, _ := cmd.Flags().GetString("version")
			kindS, _ := cmd.Flags().GetString("kind")
			idFiles, _ := cmd.Flags().GetStringArray("identity")
			force, _ := cmd.Flags().GetBool("force")
			if out == "" {
				return errors.New("scb get needs -o FILE (or -o - for stdout)")
			}
			var kind scb.Kind
			if kindS != "" {
				k, err := scb.ParseKind(kindS)
				if err != nil {
					return err
				}
				kind = k
			}
			ids, err := scb.ReadIdentities(idFiles)
			if err != nil {
				return err
			}
			if out != "-" && !force {
				if _, err := os.Lstat(out); err == nil {
					return fmt.Errorf("%s exists: choose another -o or pass --force to replace it", out)
				}
			}
			st, err := scb.OpenStore(ctx, args[0], scb.StoreOptions{})
			if err != nil {
				return err
			}
			defer st.Close()
			v, err := scb.Select(ctx, st, kind, ver)
			if err != nil {
				return err
			}
			data, _, err := scb.Fetch(ctx, st, v, ids)
			if err != nil {
				return err
			}
			if out == "-" {
				_, err := cmd.OutOrStdout().Write(data)
				return err
			}
			if err := durable.WriteFile(out, data, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "lnvault: wrote version %d (%s, %s, %d bytes) to %s\n%s\n",
				v.Seq, v.Kind, v.Created.Local().Format("2006-01-02 15:04:05"), len(data), out, recoverHint(v.Kind, out))
			return nil
		},
	}
	c.Flags().StringP("output", "o", "", "file to write (- for stdout)")
	c.Flags().String("version", "", "version number or id from scb list (default: the latest)")
	c.Flags().String("kind", "", "kind to get when the store holds several (cln-scb, cln-emergency-recover, lnd-multi)")
	c.Flags().StringArray("identity", nil, "age identity file to decrypt with; repeatable")
	c.Flags().Bool("force", false, "replace -o FILE if it exists")
	return c
}

func recoverHint(k scb.Kind, out string) string {
	switch k {
	case scb.KindCLN:
		return fmt.Sprintf("recover with: lightning-cli recoverchannel -k scb=\"$(cat %s)\"", out)
	case scb.KindCLNEmergency:
		return "recover with: copy it to <lightning-dir>/<network>/emergency.recover, then lightning-cli emergencyrecover"
	case scb.KindLNDMulti:
		return fmt.Sprintf("recover with: lncli restorechanbackup --multi_file %s", out)
	}
	return ""
}

func scbPutCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "put URL --kind KIND --file FILE",
		Short: "Store one backup file as a new version (e.g. the output of lightning-cli staticbackup)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			kindS, _ := cmd.Flags().GetString("kind")
			file, _ := cmd.Flags().GetString("file")
			kind, err := scb.ParseKind(kindS)
			if err != nil {
				return err
			}
			if file == "" {
				return errors.New("scb put needs --file FILE (- for stdin)")
			}
			var data []byte
			if file == "-" {
				data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), scb.MaxPayload+1))
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("reading backup: %w", err)
			}
			var b scb.Backup
			if kind == scb.KindCLN {
				set, err := scb.ParseCLN(data)
				if err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
				b = set.Backup()
			} else {
				n, err := scb.Validate(kind, data)
				if err != nil {
					return fmt.Errorf("%s: %w", file, err)
				}
				b = scb.NewBackup(kind, data, n)
			}
			rcpts, err := recipientsFromFlags(cmd)
			if err != nil {
				return err
			}
			st, err := scb.OpenStore(ctx, args[0], scb.StoreOptions{})
			if err != nil {
				return err
			}
			defer st.Close()
			env, err := scb.Seal(b, rcpts)
			if err != nil {
				return err
			}
			v, err := st.Put(ctx, env)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored version %d (%s) in %s\n", v.Seq, v.ID, st)
			return nil
		},
	}
	c.Flags().String("kind", "", "cln-scb, cln-emergency-recover or lnd-multi")
	c.Flags().String("file", "", "the backup to store (- for stdin)")
	addEncryptFlags(c)
	return c
}
