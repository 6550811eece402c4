package bench

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/seal"
	"github.com/lnvault/lnvault/sealed"
	"github.com/lnvault/lnvault/server"
)

// BenchmarkCompactUnderLoadSealed is BenchmarkCompactUnderLoad with an
// end-to-end encrypted backup at an lnvault server over loopback: the
// server cannot compact it, so the node does (its shadow copy of the
// database, sealed, sent over a second connection) while db_writes go on.
// Goal: no db_write waits longer than 50 ms.
func BenchmarkCompactUnderLoadSealed(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	netDir := filepath.Join(dir, "node", "regtest")
	if err := os.MkdirAll(netDir, 0o700); err != nil {
		b.Fatal(err)
	}
	nodeDB := filepath.Join(netDir, "lightningd.sqlite3")
	a, err := dbapply.Create(ctx, nodeDB)
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if err := a.Apply(ctx, r.Change()); err != nil {
			b.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		b.Fatal(err)
	}

	fb, err := lnvault.Open(ctx, "file://"+filepath.Join(dir, "server.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- server.New(server.Config{}, fb).Serve(sctx, ln) }()
	defer func() { cancel(); <-served; fb.Close() }()
	url := "socket:" + ln.Addr().String()

	// What `lnvault init --encrypt-to` does: the node's database, sealed,
	// as the backup's first change.
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	bid, err := seal.NewBackupID()
	if err != nil {
		b.Fatal(err)
	}
	enc := &backupplugin.Encryption{BackupID: hex.EncodeToString(bid[:]), Recipients: []string{id.Recipient().String()}}
	cfg, err := enc.Config()
	if err != nil {
		b.Fatal(err)
	}
	s, err := sealed.NewSession(cfg)
	if err != nil {
		b.Fatal(err)
	}
	inner, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	w := sealed.New(inner, s)
	snap := filepath.Join(dir, "snap.sqlite3")
	v, err := dbapply.Snapshot(ctx, nodeDB, snap)
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(snap)
	if err != nil {
		b.Fatal(err)
	}
	st, _ := f.Stat()
	if err := w.Append(ctx, lnvault.NewSnapshot(v, io.NewSectionReader(f, 0, st.Size()))); err != nil {
		b.Fatal(err)
	}
	f.Close()
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	compactUnderLoad(b, backupplugin.Lock{BackendURL: url, Encryption: enc}, dir, true)
}
