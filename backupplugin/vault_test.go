package backupplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
)

func newTestVault(t *testing.T, bs ...*memBackend) *Vault {
	t.Helper()
	var ds []*Destination
	for i, b := range bs {
		ds = append(ds, &Destination{URL: "mem://" + string(rune('a'+i)), Backend: b})
	}
	return NewVault(context.Background(), ds, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

var tx = []string{"UPDATE vars SET intval = intval + 1"}

func fill(t *testing.T, b *memBackend, versions ...uint32) {
	t.Helper()
	for _, v := range versions {
		if err := b.Append(context.Background(), lnvault.NewTransaction(v, tx)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestVaultFirstWriteRewindsAndRepeatsAppend(t *testing.T) {
	ctx := context.Background()
	b := &memBackend{}
	fill(t, b, 1, 1, 2, 2, 3, 4)
	v := newTestVault(t, b)
	// The node committed 3, not 4: the first write carries 4 again.
	if err := v.Write(ctx, 4, tx); err != nil {
		t.Fatal(err)
	}
	if b.rewinds != 1 {
		t.Fatalf("rewinds = %d, want 1", b.rewinds)
	}
	// A later repeat of the previous version is appended.
	if err := v.Write(ctx, 4, []string{"PRAGMA foreign_keys = OFF;"}); err != nil {
		t.Fatal(err)
	}
	if err := v.Write(ctx, 5, tx); err != nil {
		t.Fatal(err)
	}
	want := []uint32{1, 1, 2, 2, 3, 4, 4, 5}
	if got := b.versions(); !slices.Equal(got, want) {
		t.Fatalf("versions = %v, want %v", got, want)
	}
	// A gap is refused, and so is everything after it.
	if err := v.Write(ctx, 7, tx); err == nil {
		t.Fatal("gap accepted")
	}
	if err := v.Write(ctx, 6, tx); err == nil {
		t.Fatal("write after a failure accepted")
	}
}

func TestVaultMigrationRepeatAtStartDoesNotRewind(t *testing.T) {
	b := &memBackend{}
	fill(t, b, 1)
	v := newTestVault(t, b)
	if err := v.Write(context.Background(), 1, []string{"PRAGMA foreign_keys = OFF;"}); err != nil {
		t.Fatal(err)
	}
	if b.rewinds != 0 || !slices.Equal(b.versions(), []uint32{1, 1}) {
		t.Fatalf("rewinds=%d versions=%v", b.rewinds, b.versions())
	}
}

func TestVaultFirstWriteStops(t *testing.T) {
	for _, tc := range []struct {
		name string
		have []uint32
		d    uint32
		want error
	}{
		{"lost state", []uint32{1, 2, 3, 4, 5}, 3, ErrLostState},
		{"out of date", []uint32{1, 2}, 9, ErrOutOfDate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &memBackend{}
			fill(t, b, tc.have...)
			v := newTestVault(t, b)
			err := v.Write(context.Background(), tc.d, tx)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if got := b.versions(); !slices.Equal(got, tc.have) {
				t.Fatalf("backup changed: %v", got)
			}
		})
	}
}

func TestVaultTwoDestinations(t *testing.T) {
	ctx := context.Background()
	a, b := &memBackend{}, &memBackend{}
	v := newTestVault(t, a, b)
	for ver := uint32(1); ver <= 5; ver++ {
		if err := v.Write(ctx, ver, tx); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(a.versions(), b.versions()) || len(a.versions()) != 5 {
		t.Fatalf("a=%v b=%v", a.versions(), b.versions())
	}
	b.failNext = errors.New("disk on fire")
	err := v.Write(ctx, 6, tx)
	if err == nil || !errors.Is(err, b.failNext) {
		t.Fatalf("err = %v", err)
	}
	// The destination that stored 6 took it back: both agree with the node.
	if !slices.Equal(a.versions(), []uint32{1, 2, 3, 4, 5}) {
		t.Fatalf("a kept the unacknowledged change: %v", a.versions())
	}
	st := v.Status(ctx)
	if st.Failed == "" || st.Destinations[1].LastError == "" || st.Destinations[1].OK {
		t.Fatalf("status does not show the failure: %+v", st)
	}
}

func TestVaultDestinationsDisagree(t *testing.T) {
	a, b := &memBackend{}, &memBackend{}
	fill(t, a, 1, 2, 3)
	v := newTestVault(t, a, b)
	if err := v.Write(context.Background(), 4, tx); err == nil {
		t.Fatal("an empty destination next to a full one was accepted")
	}
	// One ahead by an uncommitted change, one in line: both end at the node.
	a, b = &memBackend{}, &memBackend{}
	fill(t, a, 1, 2, 3, 4)
	fill(t, b, 1, 2, 3)
	v = newTestVault(t, a, b)
	if err := v.Write(context.Background(), 4, tx); err != nil {
		t.Fatal(err)
	}
	if a.rewinds != 1 || b.rewinds != 0 || !slices.Equal(a.versions(), b.versions()) {
		t.Fatalf("a=%v (%d rewinds) b=%v (%d)", a.versions(), a.rewinds, b.versions(), b.rewinds)
	}
}

func TestVaultAutoCompact(t *testing.T) {
	ctx := context.Background()
	b := &memBackend{}
	v := newTestVault(t, b)
	v.SetAutoCompact(Thresholds{Changes: 10})
	for ver := uint32(1); ver <= 25; ver++ {
		if err := v.Write(ctx, ver, tx); err != nil {
			t.Fatal(err)
		}
		v.Wait()
	}
	if b.compacts != 2 {
		t.Fatalf("compactions = %d, want 2", b.compacts)
	}
	v.SetAutoCompact(Thresholds{})
	for ver := uint32(26); ver <= 50; ver++ {
		v.Write(ctx, ver, tx)
	}
	v.Wait()
	if b.compacts != 2 {
		t.Fatalf("compactions with thresholds off = %d", b.compacts)
	}
	st := v.Status(ctx)
	if st.Acks != 50 || st.P99AckMs < 0 || st.LastCompact == nil {
		t.Fatalf("status: %+v", st)
	}
}

// sealedMem is a destination whose compaction an encrypted backup's storage
// refuses (a reference server cannot take the node's snapshot).
type sealedMem struct{ *memBackend }

func (s sealedMem) Compact(context.Context) (lnvault.CompactStats, error) {
	s.compacts++
	return lnvault.CompactStats{}, fmt.Errorf("%w: this storage cannot take the node's snapshot", lnvault.ErrSealed)
}

// A destination that cannot be compacted is asked once per run; the others
// go on being compacted; when none can be, automatic compaction stops.
func TestVaultSealedDestinationNotCompacted(t *testing.T) {
	ctx := context.Background()
	good, bad := &memBackend{}, sealedMem{&memBackend{}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	v := NewVault(ctx, []*Destination{{URL: "mem://good", Backend: good}, {URL: "mem://sealed", Backend: bad}}, log)
	v.SetAutoCompact(Thresholds{Changes: 5})
	for ver := uint32(1); ver <= 30; ver++ {
		if err := v.Write(ctx, ver, tx); err != nil {
			t.Fatal(err)
		}
		v.Wait()
	}
	if bad.compacts != 1 || good.compacts < 4 {
		t.Fatalf("compactions: %d of the refusing destination (want 1), %d of the other (want >= 4)", bad.compacts, good.compacts)
	}
	rep := v.Status(ctx).LastCompact
	if rep == nil || !strings.Contains(rep.Errors["mem://sealed"], "not compacted") {
		t.Fatalf("the last compaction does not say the refusing destination was skipped: %+v", rep)
	}

	only := sealedMem{&memBackend{}}
	v = NewVault(ctx, []*Destination{{URL: "mem://sealed", Backend: only}}, log)
	v.SetAutoCompact(Thresholds{Changes: 5})
	for ver := uint32(1); ver <= 30; ver++ {
		if err := v.Write(ctx, ver, tx); err != nil {
			t.Fatal(err)
		}
		v.Wait()
	}
	if only.compacts != 1 {
		t.Fatalf("a lone refusing destination was asked %d times, want once", only.compacts)
	}
	if _, err := v.Compact(ctx); !errors.Is(err, lnvault.ErrSealed) {
		t.Fatalf("backup-compact with no compactable destination: %v, want ErrSealed", err)
	}
	if th := *v.auto.Load(); th != (Thresholds{}) {
		t.Fatalf("automatic compaction still on: %+v", th)
	}
}

type failMem struct{ *memBackend }

func (f failMem) Compact(context.Context) (lnvault.CompactStats, error) {
	f.compacts++
	return lnvault.CompactStats{}, errors.New("disk full")
}

// A failed automatic compaction is not tried again at every change.
func TestVaultAutoCompactBacksOff(t *testing.T) {
	ctx := context.Background()
	b := failMem{&memBackend{}}
	v := NewVault(ctx, []*Destination{{URL: "mem://a", Backend: b}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	v.SetAutoCompact(Thresholds{Changes: 5})
	for ver := uint32(1); ver <= 50; ver++ {
		if err := v.Write(ctx, ver, tx); err != nil {
			t.Fatal(err)
		}
		v.Wait()
	}
	if b.compacts != 1 {
		t.Fatalf("a failing compaction was tried %d times in 45 changes past the threshold, want once", b.compacts)
	}
}
