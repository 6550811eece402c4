// Package pyref runs the real Python reference (lightningd/plugins backup/:
// backup-cli and its socket server), from ../shared/peers/python-backup
// beside the repository or $LNVAULT_PYREF, as a peer in tests.
package pyref

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Python is the interpreter the reference needs: Debian's, which sees
// python3-click, python3-socks and python3-psutil.
const Python = "/usr/bin/python3"

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	findOnce sync.Once
	dir      string
	findErr  error
)

// Dir returns the reference's directory (holding backup-cli), or an error
// naming what to install.
func Dir() (string, error) {
	findOnce.Do(func() {
		d := os.Getenv("LNVAULT_PYREF")
		if d == "" {
			d = filepath.Join(repoRoot(), "..", "shared", "peers", "python-backup")
		}
		if _, err := os.Stat(filepath.Join(d, "plugins", "backup", "backup-cli")); err != nil {
			findErr = fmt.Errorf("the Python reference backup plugin is not at %s: put ../shared/peers/python-backup beside the repository or set LNVAULT_PYREF to its directory: %w", d, err)
			return
		}
		out, err := exec.Command(Python, "-c", "import click, socks, psutil").CombinedOutput()
		if err != nil {
			findErr = fmt.Errorf("the Python reference needs Debian's python3 with its packages (apt-get install -y --no-install-recommends python3-click python3-socks python3-psutil): %v: %s", err, strings.TrimSpace(string(out)))
			return
		}
		dir = d
	})
	return dir, findErr
}

// Need returns the reference's directory; without it a test fails under
// CI=true and is skipped otherwise, naming what to install.
func Need(t testing.TB) string {
	t.Helper()
	d, err := Dir()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return d
}

// CLI runs backup-cli with args and returns its combined output.
func CLI(ctx context.Context, d string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, Python, append([]string{filepath.Join(d, "plugins", "backup", "backup-cli")}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("backup-cli %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

// Server is `backup-cli server` serving one reference file backup.
type Server struct {
	t    testing.TB
	dir  string
	File string // the reference's backup file
	Addr string // host:port it listens on
	cmd  *exec.Cmd
	log  *os.File
}

// StartServer initialises a new reference backup (backup-cli init) and
// serves it with backup-cli server on 127.0.0.1.
func StartServer(t testing.TB) *Server {
	t.Helper()
	d := Need(t)
	s := &Server{t: t, dir: d, File: filepath.Join(t.TempDir(), "backup.dbak")}
	if _, err := CLI(context.Background(), d, "init", "file://"+s.File); err != nil {
		t.Fatal(err)
	}
	s.Addr = freeAddr(t)
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL is the socket: URL of the server.
func (s *Server) URL() string { return "socket:" + s.Addr }

// Start starts the server process on s.Addr and waits until it accepts.
func (s *Server) Start() {
	t := s.t
	t.Helper()
	logf, err := os.CreateTemp(filepath.Dir(s.File), "server-*.log")
	if err != nil {
		t.Fatal(err)
	}
	s.log = logf
	s.cmd = exec.Command(Python, filepath.Join(s.dir, "plugins", "backup", "backup-cli"), "server", "file://"+s.File, s.Addr)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Probe with a connect that the server sees as a client that
		// closes at once ("Connection closed"): it serves one at a time.
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if s.cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("the reference server did not listen on %s: %v\n%s", s.Addr, err, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop kills the server (it has no other way to stop).
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
	s.log.Close()
}

// Restart stops the server and starts it again on the same address.
func (s *Server) Restart() {
	s.Stop()
	s.Start()
}

// Log returns what the server printed.
func (s *Server) Log() string {
	if s.log == nil {
		return ""
	}
	b, _ := os.ReadFile(s.log.Name())
	var out []string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	if len(out) > 40 {
		out = out[len(out)-40:]
	}
	return strings.Join(out, "\n")
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return "127.0.0.1:" + strconv.Itoa(port)
}

// Plugin is the path of the reference plugin (backup.py run with Debian's
// python3 and the pyln shim), for lightningd or the harness.
func Plugin(d string) string { return filepath.Join(d, "backup-plugin") }
