package backupplugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// Why the plugin stays through lightningd's shutdown (Core Lightning v26.06,
// lightningd.c and plugin.c): lightningd kills at once every plugin that is
// not subscribed to `shutdown`, then runs its event loop for up to 30 s
// until the subscribed ones have exited. Meanwhile it still commits (the
// per-channel subdaemons it just killed, other plugins' RPC calls, network
// events), and once no plugin is registered for db_write those commits go
// through unreported. So lnvault subscribes, keeps answering db_write, and
// leaves when nothing else can write: every other plugin has exited and no
// db_write came for a moment. Its exit ends lightningd's wait.
const (
	// shutdownQuiet is how long after the last other plugin is gone and the
	// last db_write the plugin leaves: lightningd handles a plugin's exit
	// (and what that fails) in the next turns of its loop.
	shutdownQuiet = 150 * time.Millisecond
	// shutdownMax stays below lightningd's 30 s, after which it kills us.
	shutdownMax  = 25 * time.Second
	shutdownTick = 10 * time.Millisecond
)

// shutdownWaiter decides when the plugin leaves during lightningd's shutdown.
type shutdownWaiter struct {
	vault  *Vault
	log    *slog.Logger
	stop   func()
	others func() (int, error) // lightningd's other live plugins
	quiet  time.Duration
	max    time.Duration
	now    func() time.Time
}

func newShutdownWaiter(v *Vault, log *slog.Logger, stop func()) *shutdownWaiter {
	ppid := os.Getppid()
	return &shutdownWaiter{vault: v, log: log, stop: stop, quiet: shutdownQuiet, max: shutdownMax, now: time.Now,
		others: func() (int, error) { return otherPlugins(ppid, os.Getpid()) }}
}

// wait runs from the shutdown notification until it is time to leave, then
// stops the plugin.
func (w *shutdownWaiter) wait(ctx context.Context) {
	start := w.now()
	writes0 := w.vault.Writes()
	var goneAt time.Time
	procErr := false
	reason := ""
	for {
		now := w.now()
		if now.Sub(start) >= w.max {
			reason = fmt.Sprintf("still not quiet after %s", w.max)
			break
		}
		n, err := w.others()
		if err != nil && !procErr {
			procErr = true
			w.log.Debug("cannot see lightningd's other plugins; leaving after a quiet moment", "err", err)
		}
		if err != nil {
			n = 0
		}
		if n > 0 {
			goneAt = time.Time{}
		} else if goneAt.IsZero() {
			goneAt = now
		}
		last := w.vault.LastWrite()
		if n == 0 && now.Sub(goneAt) >= w.quiet && now.Sub(start) >= w.quiet && (last.IsZero() || now.Sub(last) >= w.quiet) {
			reason = "no other plugin is left and no db_write came for a moment"
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(shutdownTick):
		}
	}
	w.log.Info("lightningd is shutting down: leaving",
		"why", reason, "stayed_ms", ms(w.now().Sub(start)), "db_writes_during_shutdown", w.vault.Writes()-writes0)
	w.stop()
}

// otherPlugins counts the live children of lightningd (ppid) that are
// plugins: not us, not its subdaemons (lightning_*), not zombies (lightningd
// stops reaping its children when it shuts down).
func otherPlugins(ppid, self int) (int, error) {
	if ppid <= 1 {
		return 0, nil // lightningd is gone
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	n, seen := 0, false
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		seen = true
		comm, state, parent, ok := parseStat(b)
		if !ok || parent != ppid {
			continue
		}
		if state == 'Z' || state == 'X' || bytes.HasPrefix(comm, []byte("lightning_")) {
			continue
		}
		n++
	}
	if !seen {
		return 0, errors.New("/proc lists no process")
	}
	return n, nil
}

// parseStat reads comm, state and ppid from /proc/PID/stat: "pid (comm) S ppid ...";
// comm may hold spaces and parentheses, so it ends at the last ')'.
func parseStat(b []byte) (comm []byte, state byte, ppid int, ok bool) {
	i, j := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if i < 0 || j < i || j+2 >= len(b) {
		return nil, 0, 0, false
	}
	f := bytes.Fields(b[j+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return nil, 0, 0, false
	}
	p, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return nil, 0, 0, false
	}
	return b[i+1 : j], f[0][0], p, true
}
