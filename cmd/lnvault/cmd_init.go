package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/seal"
	"github.com/lnvault/lnvault/sealed"
	"github.com/lnvault/lnvault/socket"
	"github.com/lnvault/lnvault/tlskey"
	"github.com/spf13/cobra"
)

// newInitCmd is `lnvault init`.
func newInitCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "init URL [URL...]",
		Short: "Create a backup (and, with --lightning-dir, seed it from the node's database)",
		Long: `Init creates an empty backup at each URL. With --lightning-dir (the
directory holding lightningd.sqlite3, e.g. ~/.lightning/bitcoin) it also takes
a consistent snapshot of the database at its data_version, stores it as the
backup's first change, and writes DIR/backup.lock naming the backup(s) so the
plugin knows where to write. lightningd must be stopped while init runs.

With --encrypt-to/--recipients-file (age public keys) or --new-identity, every
change is sealed on the node before it leaves it: the destinations hold
ciphertext their hosts cannot read, alter or reorder unnoticed. The node keeps
only the public keys; restore, verify and status need the identity
(--identity FILE). Losing the identity means losing the backup.`,
		Example: `  lnvault init file:///var/backups/node.dbak --lightning-dir ~/.lightning/bitcoin
  lnvault init file:///mnt/a/node.dbak socket:backup.example.com:8700 --lightning-dir ~/.lightning/bitcoin
  lnvault init socket:friend.example:8700 --lightning-dir ~/.lightning/bitcoin --new-identity /media/usb/lnvault.key`,
		Args: cobra.MinimumNArgs(1),
		RunE: runInit,
	}
	f := c.Flags()
	f.String("lightning-dir", "", "the node's directory (with lightningd.sqlite3): snapshot it and write backup.lock there")
	f.Int("format", 0, "file format for file: backups: 1 (the reference plugin's) or 2 (checksummed); default: the backend's")
	f.Bool("force", false, "go on even if lightningd answers on DIR/lightning-rpc or DIR/backup.lock exists")
	addEncryptFlags(c)
	f.String("new-identity", "", "generate a new age identity in this file (mode 0600) and encrypt for it; keep it off the node: without it the backup cannot be restored")
	f.Bool("no-pad", false, "with encryption: store changes at their size instead of padded to size buckets (the host learns more about what changed)")
	f.Bool("no-heal", false, `stop the node, as the reference does, when its database is ahead of the backup (commits that escaped the plugin), instead of storing the database as a snapshot at the first write ("heal": false in backup.lock)`)
	return c
}

func runInit(cmd *cobra.Command, urls []string) error {
	ctx := cmd.Context()
	f := cmd.Flags()
	dir, _ := f.GetString("lightning-dir")
	format, _ := f.GetInt("format")
	force, _ := f.GetBool("force")
	noHeal, _ := f.GetBool("no-heal")
	if format != 0 && format != 1 && format != 2 {
		return fmt.Errorf("--format %d is not a file format: use 1 (reference) or 2 (checksummed)", format)
	}
	seen := map[string]bool{}
	for _, u := range urls {
		if seen[u] {
			return fmt.Errorf("backup URL %s is given twice: name each destination once", u)
		}
		seen[u] = true
	}

	var lockPath, dbPath string
	if dir != "" {
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			return fmt.Errorf("--lightning-dir %s is not a directory: give the directory holding lightningd.sqlite3 (e.g. ~/.lightning/bitcoin)", dir)
		}
		if err := checkNodeStopped(dir, force); err != nil {
			return err
		}
		lockPath = filepath.Join(dir, "backup.lock")
		if _, err := os.Stat(lockPath); err == nil && !force {
			return fmt.Errorf("%s already exists (this node is already backed up): pass --force to replace it", lockPath)
		}
		dbPath = filepath.Join(dir, "lightningd.sqlite3")
	}

	enc, session, err := initEncryption(cmd, dir)
	if err != nil {
		return err
	}
	if err := clientKeys(cmd, urls, dir); err != nil {
		return err
	}

	// The snapshot, when the node has a database.
	var (
		snap    *os.File
		version uint32
	)
	if dbPath != "" {
		if _, err := os.Stat(dbPath); err == nil {
			tmpDir, err := os.MkdirTemp("", "lnvault-init-")
			if err != nil {
				return fmt.Errorf("init needs a temp directory for the snapshot (set TMPDIR to a writable one): %w", err)
			}
			defer os.RemoveAll(tmpDir)
			sp := filepath.Join(tmpDir, "snapshot.sqlite3")
			if version, err = dbapply.Snapshot(ctx, dbPath, sp); err != nil {
				return fmt.Errorf("cannot snapshot %s (%w): is it a Core Lightning database?", dbPath, err)
			}
			if snap, err = os.Open(sp); err != nil {
				return err
			}
			defer snap.Close()
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cannot read %s: %w", dbPath, err)
		}
	}

	// Create every backup; on any failure remove those created so far.
	var created []string
	ok := false
	defer func() {
		if !ok {
			for _, u := range created {
				removeCreatedBackup(u)
			}
		}
	}()
	for _, u := range urls {
		b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true, Format: format})
		if err != nil {
			if errors.Is(err, lnvault.ErrExists) {
				return fmt.Errorf("%w at %s: choose another URL, or restore from it with `lnvault restore`", err, u)
			}
			if strings.Contains(err.Error(), u) {
				return err
			}
			return fmt.Errorf("creating backup %s: %w", u, err)
		}
		created = append(created, u)
		if session != nil {
			b = sealed.New(b, session)
		}
		if snap != nil {
			st, err := snap.Stat()
			if err == nil {
				err = b.Append(ctx, lnvault.NewSnapshot(version, io.NewSectionReader(snap, 0, st.Size())))
			}
			if err != nil {
				b.Close()
				return fmt.Errorf("storing the snapshot of %s in %s: %w", dbPath, u, err)
			}
		}
		if err := b.Close(); err != nil {
			return fmt.Errorf("closing backup %s: %w", u, err)
		}
	}
	if lockPath != "" {
		lock := backupplugin.Lock{BackendURL: urls[0]}
		if len(urls) > 1 {
			lock.BackendURLs = urls
		}
		if noHeal {
			lock.Heal = new(bool)
		}
		lock.Encryption = enc
		if err := backupplugin.WriteLock(filepath.Dir(lockPath), lock); err != nil {
			return fmt.Errorf("writing %s: %w", lockPath, err)
		}
	}
	ok = true

	out := cmd.OutOrStdout()
	for _, u := range urls {
		if snap != nil {
			st, _ := snap.Stat()
			fmt.Fprintf(out, "created backup %s at version %d (snapshot of %s, %s)\n", u, version, dbPath, formatBytes(st.Size()))
		} else {
			fmt.Fprintf(out, "created empty backup %s at version 0\n", u)
		}
	}
	if enc != nil {
		fmt.Fprintf(out, "the backup is end-to-end encrypted for %s: restore, verify and status need one of their identities (--identity FILE); keep it safe and off this node: losing it loses the backup\n", strings.Join(enc.Recipients, ", "))
	}
	if lockPath != "" {
		fmt.Fprintf(out, "wrote %s; start lightningd with --important-plugin=%s\n", lockPath, pluginPath())
	}
	return nil
}

// initEncryption reads init's encryption flags: nil when the backup is not
// to be encrypted; otherwise what backup.lock records and the session that
// seals the first snapshot.
func initEncryption(cmd *cobra.Command, dir string) (*backupplugin.Encryption, *sealed.Session, error) {
	f := cmd.Flags()
	keys, _ := f.GetStringArray("encrypt-to")
	files, _ := f.GetStringArray("recipients-file")
	newID, _ := f.GetString("new-identity")
	noPad, _ := f.GetBool("no-pad")
	if len(keys) == 0 && len(files) == 0 && newID == "" {
		if noPad {
			return nil, nil, errors.New("--no-pad is about encryption: give --encrypt-to, --recipients-file or --new-identity too")
		}
		return nil, nil, nil
	}
	if dir == "" {
		return nil, nil, errors.New("an encrypted backup needs --lightning-dir: the node reads its encryption from DIR/backup.lock")
	}
	var rs []string
	if len(keys) > 0 || len(files) > 0 {
		var err error
		if rs, err = sealed.Recipients(keys, files); err != nil {
			return nil, nil, err
		}
	}
	if newID != "" {
		r, err := sealed.NewIdentity(newID)
		if err != nil {
			return nil, nil, err
		}
		rs = append(rs, r)
		fmt.Fprintf(cmd.OutOrStdout(), "wrote a new age identity to %s (public key %s): move it off the node to a safe place; without it the backup cannot be restored\n", newID, r)
	}
	id, err := seal.NewBackupID()
	if err != nil {
		return nil, nil, err
	}
	enc := &backupplugin.Encryption{BackupID: hex.EncodeToString(id[:]), Recipients: rs}
	if noPad {
		enc.Pad = new(bool)
	}
	cfg, err := enc.Config()
	if err != nil {
		return nil, nil, err
	}
	s, err := sealed.NewSession(cfg)
	if err != nil {
		return nil, nil, err
	}
	return enc, s, nil
}

// ClientKeyFile is the node's TLS client key for backup servers that admit
// only authorized keys, in lightningd's network directory.
const ClientKeyFile = "lnvault-client.key"

// clientKeys gives every socket: URL that pins its server (pin=) but names
// no client key (key=) the node's key, created in dir when missing, and
// says which pin to authorize on the server.
func clientKeys(cmd *cobra.Command, urls []string, dir string) error {
	for i, u := range urls {
		if lnvault.Scheme(u) != "socket" {
			continue
		}
		cfg, err := socket.ParseURL(u)
		if err != nil {
			return err
		}
		if cfg.Pin == "" || cfg.KeyFile != "" {
			continue
		}
		if dir == "" {
			return fmt.Errorf("%s pins its server: give --lightning-dir (where the node's client key is kept), or key=PATH in the URL", u)
		}
		path, err := filepath.Abs(filepath.Join(dir, ClientKeyFile))
		if err != nil {
			return err
		}
		k, created, err := tlskey.LoadOrCreate(path)
		if err != nil {
			return err
		}
		if created {
			fmt.Fprintf(cmd.OutOrStdout(), "created this node's client key %s\n", path)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "this node's client key pin is %s: a server with --authorized-keys must list it\n", k.Pin)
		urls[i] = u + "&key=" + path
	}
	return nil
}

// checkNodeStopped refuses to go on while lightningd answers on its RPC
// socket: the snapshot would race with the node's writes and the node would
// not yet back them up.
func checkNodeStopped(dir string, force bool) error {
	sock, running := lightningdAnswers(dir)
	if !running {
		return nil
	}
	if force {
		slog.Warn("lightningd answers on its RPC socket; going on because of --force", "socket", sock)
		return nil
	}
	return fmt.Errorf("lightningd is running (it answers on %s): stop lightningd first (lightning-cli stop), or pass --force", sock)
}

// lightningdAnswers reports whether a lightningd answers on dir's
// lightning-rpc socket, and the socket's path.
func lightningdAnswers(dir string) (string, bool) {
	sock := filepath.Join(dir, "lightning-rpc")
	if _, err := os.Stat(sock); err != nil {
		return sock, false
	}
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		slog.Debug("lightning-rpc does not answer; assuming lightningd is stopped", "socket", sock, "err", err)
		return sock, false
	}
	conn.Close()
	return sock, true
}

// removeCreatedBackup undoes init's creation of a backup after a later step
// failed. Only local files can be removed here; for other schemes the empty
// backup is left and reported.
func removeCreatedBackup(rawURL string) {
	if lnvault.Scheme(rawURL) == "file" {
		if u, err := url.Parse(rawURL); err == nil {
			p := u.Path
			if p == "" {
				p = u.Opaque
			}
			if p != "" {
				// The file backend keeps its writer lock in a sidecar file.
				os.Remove(p)
				os.Remove(p + ".lock")
				return
			}
		}
	}
	slog.Warn("init failed after creating this backup; remove it before running init again", "url", rawURL)
}

// pluginPath is this binary's path, for the hint on how to start lightningd.
func pluginPath() string {
	p, err := os.Executable()
	if err != nil {
		return "/path/to/lnvault"
	}
	return p
}
