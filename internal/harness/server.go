package harness

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ServerProc is a real `lnvault server` process serving the store at URL on
// Addr (127.0.0.1), for tests that cut its power or fail its disk.
type ServerProc struct {
	t    testing.TB
	bin  string
	URL  string
	Addr string
	// Extra are more arguments of `lnvault server` (--replicate URL ...).
	Extra  []string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// NewServerProc prepares a server of the store at url; Start runs it on a
// port the kernel picks (Addr is known once it listens).
func NewServerProc(t testing.TB, bin, url string) *ServerProc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	s := &ServerProc{t: t, bin: bin, URL: url, log: logf}
	t.Cleanup(func() {
		s.Kill()
		logf.Close()
	})
	return s
}

// Start starts the server (with --create, creating the store) and waits
// until it logs that it listens. The first start listens on port 0 and
// reads the port from that line (a port picked by listening and closing
// can be taken by a parallel test before the server binds it, and a
// readiness dial would then reach that test's listener); later starts
// reuse Addr, as a restarted server does.
func (s *ServerProc) Start(create bool) {
	s.t.Helper()
	args := []string{"server", "--scb", "none"}
	if create {
		args = append(args, "--create")
	}
	args = append(args, s.Extra...)
	addr := s.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	from, _ := s.log.Seek(0, io.SeekEnd)
	s.cmd = exec.Command(s.bin, append(args, s.URL, addr)...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	exited := make(chan struct{})
	s.exited = exited
	cmd := s.cmd
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got := s.listening(from); got != "" {
			s.Addr = got
			return
		}
		select {
		case <-exited:
			s.t.Fatalf("lnvault server exited at its start: %s", s.Tail())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("lnvault server does not listen on %s: %s", addr, s.Tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listening returns the address of the first "backup server listening"
// line the server logged after offset from, or "".
func (s *ServerProc) listening(from int64) string {
	b, err := os.ReadFile(s.log.Name())
	if err != nil || int64(len(b)) < from {
		return ""
	}
	for _, line := range strings.Split(string(b[from:]), "\n") {
		if !strings.Contains(line, "backup server listening") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if a, ok := strings.CutPrefix(f, "addr="); ok {
				return strings.Trim(a, `"`)
			}
		}
	}
	return ""
}

// Stop stops the server as its operator does (SIGTERM): it finishes what is
// in flight and ships what its replicas lack. It fails the test if the
// server does not exit within timeout or exits with an error.
func (s *ServerProc) Stop(timeout time.Duration) {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(timeout):
		s.Kill()
		s.t.Fatalf("lnvault server did not stop within %v: %s", timeout, s.Tail())
	}
	if st := s.cmd.ProcessState; st != nil && !st.Success() {
		s.t.Errorf("lnvault server exited with %v: %s", st, s.Tail())
	}
	s.cmd = nil
}

// Kill kills the server: nothing after it runs, as in a power cut.
func (s *ServerProc) Kill() {
	if s.cmd != nil {
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Tail returns the last lines the server logged.
func (s *ServerProc) Tail() string {
	b, _ := os.ReadFile(s.log.Name())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return strings.Join(lines, "\n")
}
