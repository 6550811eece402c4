package replica_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
)

func newDirClient(t *testing.T) *replica.Client {
	t.Helper()
	ds, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := replica.NewClient(ds)
	if err := c.CreateMarker(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// A writer on another host whose clock is an hour behind keeps renewing its
// lease: its Expires is always in this host's past, yet the lease is not
// taken from it. (It used to be: two writers on one replica.)
func TestLeaseHolderWithSlowClockKeepsIt(t *testing.T) {
	ctx := context.Background()
	c := newDirClient(t)
	stop := make(chan struct{})
	renewed := make(chan error, 1)
	go func() {
		tag := ""
		for {
			l := replica.Lease{Owner: "remote", Host: "otherhost", PID: 1, Expires: time.Now().Add(-time.Hour), TTL: 600 * time.Millisecond}
			var err error
			if tag, err = c.WriteLease(ctx, l, tag); err != nil {
				renewed <- err
				return
			}
			select {
			case <-stop:
				renewed <- nil
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	b, err := replica.OpenBackend(ctx, c, lnvault.OpenOptions{}, replica.DefaultOptions)
	close(stop)
	if err == nil {
		b.Close()
		t.Fatal("took the lease of a live writer whose clock is behind")
	}
	if !errors.Is(err, lnvault.ErrLocked) {
		t.Fatalf("open: %v, want ErrLocked", err)
	}
	if err := <-renewed; err != nil {
		t.Fatalf("the holder lost its lease: %v", err)
	}
}

// A writer on another host whose clock is an hour ahead died: its Expires is
// an hour in this host's future, yet its lease is taken once it went
// unrenewed for its TTL. (It used to lock the replica for the hour.)
func TestLeaseOfDeadHolderWithFastClockTaken(t *testing.T) {
	ctx := context.Background()
	c := newDirClient(t)
	l := replica.Lease{Owner: "remote", Host: "otherhost", PID: 1, Expires: time.Now().Add(time.Hour), TTL: 500 * time.Millisecond}
	if _, err := c.WriteLease(ctx, l, ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b, err := replica.OpenBackend(ctx, c, lnvault.OpenOptions{}, replica.DefaultOptions)
	if err != nil {
		t.Fatalf("the lease of a dead writer was not taken: %v", err)
	}
	defer b.Close()
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("the lease was taken after %v, before its TTL went by unrenewed", d)
	}
	got, _, err := c.ReadLease(ctx)
	if err != nil || got.Owner == "remote" {
		t.Fatalf("lease now %+v, %v", got, err)
	}
}

// ignoresConditions is an S3-compatible store that ignores If-None-Match
// and If-Match, as some do silently.
type ignoresConditions struct{ replica.ObjectStore }

func (s ignoresConditions) PutIf(ctx context.Context, key string, data []byte, match string) (string, error) {
	if err := s.ObjectStore.Put(ctx, key, data); err != nil {
		return "", err
	}
	_, tag, err := s.ObjectStore.Get(ctx, key)
	return tag, err
}

// Opening for writing refuses a store that ignores conditional writes,
// naming it and the way out; the explicit flag opens it; readers need no
// probe.
func TestOpenRefusesStoreIgnoringConditions(t *testing.T) {
	ctx := context.Background()
	ds, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := replica.NewClient(ignoresConditions{ds})
	_, err = replica.OpenBackend(ctx, c, lnvault.OpenOptions{Create: true}, replica.DefaultOptions)
	if err == nil {
		t.Fatal("opened a store that ignores conditional writes")
	}
	for _, want := range []string{ds.String(), "ignores conditional writes", "If-None-Match", "If-Match", "unsafe-no-conditional-writes=1"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not name %q", err, want)
		}
	}
	opts := replica.DefaultOptions
	opts.UnsafeNoConditionalWrites = true
	b, err := replica.OpenBackend(ctx, c, lnvault.OpenOptions{Create: true}, opts)
	if err != nil {
		t.Fatalf("with the flag: %v", err)
	}
	b.Close()
	r, err := replica.OpenBackend(ctx, c, lnvault.OpenOptions{ReadOnly: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatalf("read-only: %v", err)
	}
	r.Close()
	// A store that honours them opens, and keeps no probe object.
	good := replica.NewClient(ds)
	b, err = replica.OpenBackend(ctx, good, lnvault.OpenOptions{}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	objs, err := ds.List(ctx, "probe/")
	if err != nil || len(objs) != 0 {
		t.Fatalf("probe objects left: %v %v", objs, err)
	}
}

// The lease of a process of this host that is gone (a crashed plugin or
// server) is taken at once, not after its expiry: the node restarts without
// waiting. A live one on this host is not (TestLeaseSecondWriter in
// replica/s3).
func TestLeaseOfDeadLocalProcessTakenAtOnce(t *testing.T) {
	t.Run("reaped", func(t *testing.T) {
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		leaseOfDeadTaken(t, cmd.Process.Pid)
	})
	// A plugin killed with lightningd's process group is reparented; where
	// nothing reaps orphans (a container) it stays a zombie. (Seen on a
	// real node: its restart was refused for the lease's whole TTL.)
	t.Run("zombie", func(t *testing.T) {
		cmd := exec.Command("true")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		stat := fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			b, _ := os.ReadFile(stat)
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the child did not become a zombie")
			}
		}
		leaseOfDeadTaken(t, cmd.Process.Pid)
	})
}

func leaseOfDeadTaken(t *testing.T, pid int) {
	ctx := context.Background()
	c := newDirClient(t)
	host, _ := os.Hostname()
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		t.Fatalf("no /proc/self/ns/pid here (lnvault runs on Linux): %v", err)
	}
	l := replica.Lease{Owner: "crashed", Host: host, PID: pid, PIDNS: ns, Expires: time.Now().Add(time.Hour), TTL: time.Hour}
	if _, err := c.WriteLease(ctx, l, ""); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b, err := replica.OpenBackend(ctx, c, lnvault.OpenOptions{}, replica.DefaultOptions)
	if err != nil {
		t.Fatalf("the lease of a dead local process was not taken: %v", err)
	}
	b.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("taking it took %v", d)
	}
}
