package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
)

// A client deletes the backup the server serves: refused while another
// connection is the writer and when the head moved since the client looked,
// nothing touched; then done, and the server goes on serving the backup
// empty, so a new one starts there.
func TestDeleteOverSocket(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, server.Config{})
	changes := corpusChanges(t)[:30]
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	for _, c := range changes[:20] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	want := w.Metadata()

	// The writer (lightningd's plugin) is connected.
	d := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	if err := d.Delete(ctx); err == nil || !strings.Contains(err.Error(), "not deleted: another connection is the writer") {
		t.Fatalf("delete beside a writer: %v", err)
	}
	if m := ts.b.Metadata(); m != want {
		t.Fatalf("a refused delete changed the backup: %+v, want %+v", m, want)
	}

	// The head moves after the client looked (d opened at 20 changes).
	d = openSocket(t, ts.url(""), lnvault.OpenOptions{})
	for _, c := range changes[20:] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	want = ts.b.Metadata()
	if err := d.Delete(ctx); err == nil || !strings.Contains(err.Error(), "as shown before; look again") {
		t.Fatalf("delete of a head that moved: %v", err)
	}
	if m := ts.b.Metadata(); m != want {
		t.Fatalf("a refused delete changed the backup: %+v, want %+v", m, want)
	}
	checkExact(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}), changes)

	// Now: deleted, the server keeps serving it, empty.
	d = openSocket(t, ts.url(""), lnvault.OpenOptions{})
	if err := d.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if m := ts.b.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("after delete the server's backup is %+v, want empty", m)
	}
	r := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})
	if m := r.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("after delete a client sees %+v, want empty", m)
	}
	if got := streamVersions(t, r); len(got) != 0 {
		t.Fatalf("after delete a restore streams %v", got)
	}
	// A new backup starts there (from any version, as a new one does) and
	// is what the store holds after a restart of the server.
	w = openSocket(t, ts.url(""), lnvault.OpenOptions{})
	for _, c := range changes[:10] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatalf("appending to the emptied backup: %v", err)
		}
	}
	w.Close()
	restartServer(t, ts, nil)
	checkExact(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}), changes[:10])
}

// A read-only client cannot delete, and a server whose store cannot be
// emptied does not offer it.
func TestDeleteRefusals(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, server.Config{})
	if err := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}).Delete(ctx); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("read-only delete: %v", err)
	}
	ts.stop(t)
	restartServer(t, ts, func(b lnvault.Backend) lnvault.Backend { return plainBackend{b} })
	err := openSocket(t, ts.url(""), lnvault.OpenOptions{}).Delete(ctx)
	if !errors.Is(err, socket.ErrRefused) || !strings.Contains(err.Error(), "cannot delete its backup") {
		t.Fatalf("delete on a server that cannot: %v", err)
	}
}

// The Python reference server has no extension: the client says so at once
// and what to do instead.
func TestDeleteAgainstPythonServer(t *testing.T) {
	url := startPythonServer(t)
	err := openSocket(t, url, lnvault.OpenOptions{Create: true}).Delete(context.Background())
	if !errors.Is(err, socket.ErrRefused) || !strings.Contains(err.Error(), "delete the store it serves on its host") {
		t.Fatalf("delete on the reference server: %v", err)
	}
}

// plainBackend hides every optional interface of the backend it wraps.
type plainBackend struct{ lnvault.Backend }
