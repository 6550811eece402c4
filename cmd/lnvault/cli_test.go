package main

// End-to-end tests of the CLI: the real binary, built once, run as a
// subprocess against real backup files.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

// lnvaultBin is the binary under test, built by TestMain. Other test files
// of this package may use runCLI too.
var lnvaultBin string

// testDir is removed after all tests; it holds the binary and the cached
// corpus backups.
var testDir string

func TestMain(m *testing.M) {
	backends.Register()
	dir, err := os.MkdirTemp("", "lnvault-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testDir = dir
	lnvaultBin = filepath.Join(dir, "lnvault")
	args := []string{"build", "-o", lnvaultBin}
	// The race detector makes SQLite (transpiled C) many times slower; the
	// code the binary runs is race-tested in its own packages, so the
	// subprocess gets -race only in long runs.
	if raceEnabled && os.Getenv("LNVAULT_LONG") == "1" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building lnvault:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// runCLI runs the binary with args and returns its output and exit code.
func runCLI(t *testing.T, args ...string) cliResult {
	t.Helper()
	return runCLIWithInput(t, "", args...)
}

// runCLIWithInput is runCLI with stdin reading input.
func runCLIWithInput(t *testing.T, input string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(lnvaultBin, args...)
	cmd.Stdin = strings.NewReader(input)
	cmd.Env = append(os.Environ(), "LIGHTNINGD_PLUGIN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running lnvault %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return cliResult{out.String(), errb.String(), code}
}

// mustRun runs the binary and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) cliResult {
	t.Helper()
	r := runCLI(t, args...)
	if r.code != 0 {
		t.Fatalf("lnvault %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// assertOneLineError checks the shape of a failure: non-zero exit, one line
// on stderr, "lnvault: " and every wanted fragment.
func assertOneLineError(t *testing.T, r cliResult, want ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("exit 0, want a failure; stdout %q", r.stdout)
	}
	line := strings.TrimSuffix(r.stderr, "\n")
	if line == "" || strings.Contains(line, "\n") || !strings.HasPrefix(line, "lnvault: ") {
		t.Fatalf("stderr is not one 'lnvault: ' line: %q", r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("error %q does not mention %q", line, w)
		}
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// writeBackup stores the corpus requests with data_version <= cut (0: all)
// in a new file backup of the given format.
func writeBackup(t *testing.T, path string, format int, cut uint32) string {
	t.Helper()
	ctx := context.Background()
	url := "file://" + path
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: format})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if cut != 0 && r.DataVersion > cut {
			break
		}
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	return url
}

var (
	corpusMu      sync.Mutex
	corpusBackups = map[int]string{}
)

// corpusBackup returns a copy, at dst, of a file backup (of the given format)
// holding the whole corpus. The pristine file is written once per test
// binary: appending 2994 changes with an fsync each is slow.
func corpusBackup(t *testing.T, format int, dst string) string {
	t.Helper()
	corpusMu.Lock()
	src, ok := corpusBackups[format]
	if !ok {
		src = filepath.Join(testDir, fmt.Sprintf("corpus-v%d.dbak", format))
		writeBackup(t, src, format, 0)
		corpusBackups[format] = src
	}
	corpusMu.Unlock()
	copyFile(t, src, dst)
	return "file://" + dst
}

// replayCorpus applies the corpus up to cut directly with dbapply.
func replayCorpus(t *testing.T, path string, cut uint32) {
	t.Helper()
	ctx := context.Background()
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if cut != 0 && r.DataVersion > cut {
			break
		}
		if err := a.Apply(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

func dumpOf(t *testing.T, path string) string {
	t.Helper()
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3, or run ./scripts/test which installs it)")
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestAcceptanceRestoreCorpus is THE acceptance test: every corpus request
// in a file backup (v1 and v2), restored by the real binary, gives the
// corpus's final dump; --to-version 1500 gives the dump of a direct replay
// cut at 1500.
func TestAcceptanceRestoreCorpus(t *testing.T) {
	ref1500 := filepath.Join(t.TempDir(), "ref1500.sqlite3")
	replayCorpus(t, ref1500, 1500)
	want1500 := dumpOf(t, ref1500)
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			dir := t.TempDir()
			url := corpusBackup(t, format, filepath.Join(dir, "backup.dbak"))

			dest := filepath.Join(dir, "lightningd.sqlite3")
			r := mustRun(t, "restore", url, dest)
			if !strings.Contains(r.stdout, "version 2992") || !strings.Contains(r.stdout, dest) {
				t.Errorf("restore output %q does not name the version and path", r.stdout)
			}
			if got, want := dumpOf(t, dest), corpus.FinalDumpSHA256(); got != want {
				t.Fatalf("restored dump %s, want %s", got, want)
			}

			mid := filepath.Join(dir, "mid.sqlite3")
			mustRun(t, "restore", url, mid, "--to-version", "1500")
			if got := dumpOf(t, mid); got != want1500 {
				t.Fatalf("--to-version 1500 dump %s, want %s", got, want1500)
			}
			if v, err := dbapply.DataVersion(context.Background(), mid); err != nil || v != 1500 {
				t.Fatalf("data_version %d, %v", v, err)
			}

			r = mustRun(t, "verify", url)
			if !strings.Contains(r.stdout, "backup ok") || !strings.Contains(r.stdout, "2994 changes") {
				t.Errorf("verify output %q", r.stdout)
			}
		})
	}
}

func TestRestorePre4090Vector(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile("../../testdata/pre-4090-backup.dbak")
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "pre-4090.dbak")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "restored.sqlite3")
	r := mustRun(t, "restore", "file://"+src, dest)
	if !strings.Contains(r.stdout, "version 46") {
		t.Errorf("restore output %q", r.stdout)
	}
	ctx := context.Background()
	if err := dbapply.Check(ctx, dest, true); err != nil {
		t.Fatal(err)
	}
	if v, err := dbapply.DataVersion(ctx, dest); err != nil || v != 46 {
		t.Fatalf("data_version %d, %v; want 46", v, err)
	}
	mustRun(t, "verify", "file://"+src)
}

func TestCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	good := writeBackup(t, filepath.Join(dir, "good.dbak"), 2, 20)
	foreign := filepath.Join(dir, "foreign.dbak")
	if err := os.WriteFile(foreign, bytes.Repeat([]byte("this is not a backup\n"), 100), 0o600); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing.sqlite3")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	unwritable := filepath.Join(dir, "ro", "db.sqlite3")
	if os.Geteuid() == 0 {
		unwritable = "/sys/lnvault-cli-test.sqlite3" // root ignores permission bits; sysfs does not
	} else if err := os.Mkdir(filepath.Dir(unwritable), 0o500); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.sqlite3")
	missing := filepath.Join(dir, "missing.dbak")

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"missing backup", []string{"restore", "file://" + missing, out}, []string{"missing.dbak", "lnvault init"}},
		{"missing backup verify", []string{"verify", "file://" + missing}, []string{"missing.dbak"}},
		{"missing backup status", []string{"status", "file://" + missing}, []string{"missing.dbak"}},
		{"foreign file", []string{"restore", "file://" + foreign, out}, []string{"foreign.dbak"}},
		{"foreign file verify", []string{"verify", "file://" + foreign}, []string{"foreign.dbak"}},
		{"wrong scheme", []string{"restore", "ftp://x", out}, []string{"ftp://x", "file:"}},
		{"wrong scheme init", []string{"init", "ftp://x"}, []string{"ftp://x"}},
		{"unwritable dest", []string{"restore", good, unwritable}, []string{"writable"}},
		{"dest exists", []string{"restore", good, existing}, []string{existing, "--force"}},
		{"to-version above head", []string{"restore", good, out, "--to-version", "99"}, []string{"99", "latest version is 20"}},
		{"to-time on a file", []string{"restore", good, out, "--to-time", "2025-01-01T00:00:00Z"}, []string{"--to-time", "--to-version"}},
		{"bad to-time", []string{"restore", good, out, "--to-time", "yesterday"}, []string{"RFC 3339"}},
		{"no args", []string{"restore"}, []string{"arg"}},
	}
	before := listDir(t, dir)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, tt.args...)
			assertOneLineError(t, r, tt.want...)
			if got := listDir(t, dir); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Fatalf("directory changed: %v, was %v", got, before)
			}
		})
	}
	if got, _ := os.ReadFile(existing); string(got) != "keep me" {
		t.Fatal("existing destination modified")
	}
	// With --force the existing destination is replaced.
	mustRun(t, "restore", good, existing, "--force")
	if v, err := dbapply.DataVersion(context.Background(), existing); err != nil || v != 20 {
		t.Fatalf("after --force: data_version %d, %v", v, err)
	}
}

func TestCLIStatusCompact(t *testing.T) {
	dir := t.TempDir()
	url := corpusBackup(t, 2, filepath.Join(dir, "b.dbak"))

	r := mustRun(t, "status", url, "--json")
	var st lnvault.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v: %q", err, r.stdout)
	}
	if st.Metadata.Version != 2992 || st.Records != 2994 || st.Size <= 0 || st.Format == "" {
		t.Fatalf("status %+v", st)
	}
	r = mustRun(t, "status", url)
	for _, w := range []string{"version:        2992", "records:        2994"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("status output lacks %q:\n%s", w, r.stdout)
		}
	}

	r = mustRun(t, "compact", url)
	var cs lnvault.CompactStats
	if err := json.Unmarshal([]byte(r.stdout), &cs); err != nil {
		t.Fatalf("compact output: %v: %q", err, r.stdout)
	}
	if cs.Before.VersionCount == 0 || cs.After.BackupSize <= 0 || cs.After.BackupSize >= cs.Before.BackupSize {
		t.Fatalf("compact stats %+v", cs)
	}
	// The compacted backup still restores the exact final state.
	dest := filepath.Join(dir, "db")
	mustRun(t, "restore", url, dest)
	if got, want := dumpOf(t, dest), corpus.FinalDumpSHA256(); got != want {
		t.Fatal("dump after compaction differs from the corpus")
	}
	mustRun(t, "verify", url)
	// A version compacted away is refused clearly.
	r = runCLI(t, "restore", url, filepath.Join(dir, "old"), "--to-version", "100")
	assertOneLineError(t, r, "100", "oldest")
}

// copyFile copies src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// Reading a dir: backup that does not exist says how to create one and
// leaves no directory behind.
func TestCLIMissingDirCreatesNothing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "nothing", "here")
	for _, args := range [][]string{{"status", "dir://" + root}, {"verify", "dir://" + root}} {
		assertOneLineError(t, runCLI(t, args...), "lnvault init")
	}
	if _, err := os.Stat(filepath.Dir(root)); !os.IsNotExist(err) {
		t.Fatalf("reading a missing dir: backup created %s: %v", filepath.Dir(root), err)
	}
}
