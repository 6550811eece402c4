package powercut

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

// swapCase is an operation that replaces or creates a file in one step (temp
// file, fsync, rename or link, directory fsync). Cut at any point, it must
// leave the old state or the new one, never a partial file.
type swapCase struct {
	name string
	rgx  string // the paths whose operations are cut points
	// setup prepares dir (on the mount) durably and returns what run and
	// check need.
	setup func(t *testing.T, dir string) string
	run   func(dir, arg string) error
	check func(t *testing.T, dir, arg string) error
}

func lnv(args ...string) error {
	out, err := exec.Command(lnvaultBin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("lnvault %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// replay applies the first n corpus requests to a new database at path.
func replay(t *testing.T, path string, n int) {
	t.Helper()
	ctx := context.Background()
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad()[:n] {
		if err := a.Apply(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

// backupOf writes the first n corpus requests into a new format-2 backup.
func backupOf(t *testing.T, path string, n int) string {
	t.Helper()
	ctx := context.Background()
	url := "file://" + path
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad()[:n] {
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return url
}

func TestPowerCutsAtomicSwaps(t *testing.T) {
	fs := mount(t)
	const n = 600
	ref := filepath.Join(t.TempDir(), "ref.sqlite3")
	replay(t, ref, n)
	want, err := dumphash.Of(ref)
	if err != nil {
		t.Fatal(err)
	}
	restoresTo := func(url string) error {
		dest := filepath.Join(t.TempDir(), fmt.Sprint(len(url), "-", os.Getpid(), "-r.sqlite3"))
		os.Remove(dest)
		if err := lnv("restore", url, dest); err != nil {
			return err
		}
		got, err := dumphash.Of(dest)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("restore of %s differs from the %d changes it holds", url, n)
		}
		return nil
	}
	backups := t.TempDir() // on the real disk
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(backups, "scb.key")
	rcptFile := filepath.Join(backups, "scb.rcpt")
	os.WriteFile(keyFile, []byte(id.String()+"\n"), 0o600)
	os.WriteFile(rcptFile, []byte(id.Recipient().String()+"\n"), 0o600)
	scbInput := func(dir string, k int) string {
		p := filepath.Join(backups, fmt.Sprintf("%s-%d.json", filepath.Base(dir), k))
		os.WriteFile(p, []byte(fmt.Sprintf(`{"scb": ["%016x%s"]}`, k, strings.Repeat("ab", 40))), 0o600)
		return p
	}

	cases := []swapCase{{
		name: "compaction replaces the backup file",
		rgx:  `node\.dbak`,
		setup: func(t *testing.T, dir string) string {
			return backupOf(t, filepath.Join(dir, "node.dbak"), n)
		},
		run:   func(dir, url string) error { return lnv("compact", url) },
		check: func(t *testing.T, dir, url string) error { return restoresTo(url) },
	}, {
		name: "restore's temp file and rename",
		rgx:  `lightningd\.sqlite3`,
		setup: func(t *testing.T, dir string) string {
			p := filepath.Join(backups, filepath.Base(dir)+".dbak")
			if _, err := os.Stat(p); err == nil {
				return "file://" + p
			}
			return backupOf(t, p, n)
		},
		run: func(dir, url string) error { return lnv("restore", url, filepath.Join(dir, "lightningd.sqlite3")) },
		check: func(t *testing.T, dir, url string) error {
			dest := filepath.Join(dir, "lightningd.sqlite3")
			if _, err := os.Stat(dest); os.IsNotExist(err) {
				return nil // absent: the restore did not finish
			}
			got, err := dumphash.Of(dest)
			if err != nil {
				return fmt.Errorf("the restored database is there but unreadable: %w", err)
			}
			if got != want {
				return fmt.Errorf("the restored database is there but not whole")
			}
			return nil
		},
	}, {
		name: "init's backup.lock",
		rgx:  `backup\.lock`,
		setup: func(t *testing.T, dir string) string {
			os.MkdirAll(filepath.Join(dir, "node"), 0o700)
			return "file://" + filepath.Join(backups, filepath.Base(dir)+"-init.dbak")
		},
		run: func(dir, url string) error { return lnv("init", url, "--lightning-dir", filepath.Join(dir, "node")) },
		check: func(t *testing.T, dir, url string) error {
			data, err := os.ReadFile(filepath.Join(dir, "node", "backup.lock"))
			if os.IsNotExist(err) {
				return nil
			}
			var l struct {
				BackendURL string `json:"backend_url"`
			}
			if err := json.Unmarshal(data, &l); err != nil || l.BackendURL != url {
				return fmt.Errorf("backup.lock is there but not whole: %q (%v)", data, err)
			}
			return nil
		},
	}, {
		name: "static channel backup versions",
		rgx:  `scb`,
		setup: func(t *testing.T, dir string) string {
			url := "file://" + filepath.Join(dir, "scb")
			if err := lnv("scb", "put", url, "--kind", "cln-scb", "--file", scbInput(dir, 1), "--recipients-file", rcptFile); err != nil {
				t.Fatal(err)
			}
			return url
		},
		run: func(dir, url string) error {
			return lnv("scb", "put", url, "--kind", "cln-scb", "--file", scbInput(dir, 2), "--recipients-file", rcptFile)
		},
		check: func(t *testing.T, dir, url string) error {
			if err := lnv("scb", "list", url, "--json"); err != nil {
				return err
			}
			return lnv("scb", "get", url, "-o", filepath.Join(t.TempDir(), "scb.json"), "--identity", keyFile)
		},
	}}

	var points []string
	for _, timing := range []string{"before", "after"} {
		for _, op := range []string{"create", "write", "fsync", "rename", "link", "unlink"} {
			points = append(points, timing+":"+op)
		}
	}
	points = append(points, "clear-after-success")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hit := 0
			for i, p := range points {
				dir := filepath.Join(fs.Mnt, fmt.Sprintf("c%d", i))
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				arg := c.setup(t, dir)
				if p != "clear-after-success" {
					timing, op, _ := strings.Cut(p, ":")
					if err := fs.Crash(timing, op, c.rgx); err != nil {
						t.Fatal(err)
					}
				}
				err := c.run(dir, arg)
				crashed := fs.Crashed()
				if err != nil && !crashed {
					crashed = fs.WaitCrashed(3 * time.Second) // the exit is seen a moment later
				}
				if crashed {
					hit++
				} else if err != nil {
					t.Fatalf("%s: failed without a cut: %v", p, err)
				}
				if p == "clear-after-success" {
					if err := fs.ClearCache(); err != nil {
						t.Fatal(err)
					}
				}
				if err := fs.Remount(); err != nil {
					t.Fatal(err)
				}
				if err := c.check(t, dir, arg); err != nil {
					t.Fatalf("cut %s (lazyfs crashed: %v): %v; in the directory: %v", p, crashed, err, listing(dir))
				}
			}
			t.Logf("%d cut points, %d of them hit an operation of the swap", len(points), hit)
		})
	}
}

func listing(dir string) []string {
	var out []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		info, _ := e.Info()
		size := int64(-1)
		if info != nil {
			size = info.Size()
		}
		out = append(out, fmt.Sprintf("%s (%d bytes)", e.Name(), size))
	}
	return out
}
