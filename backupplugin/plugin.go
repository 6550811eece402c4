// Package backupplugin is lnvault's Core Lightning plugin: it answers the
// db_write hook only once the change is durable at every destination named in
// backup.lock, enforces the first-write rule after a restart, and offers the
// backup-status and backup-compact RPC methods. Extensions (static channel
// backups) are handed to Main or Run by the code that builds the binary.
package backupplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/clnplugin"
	"github.com/lnvault/lnvault/clnrpc"
	"github.com/lnvault/lnvault/sealed"
	"github.com/lnvault/lnvault/shadow"
)

// Option names and defaults.
const (
	OptDestination    = "backup-destination"
	OptCompactSize    = "backup-compact-size"
	OptCompactChanges = "backup-compact-changes"

	DefaultCompactSize    = 1 << 30
	DefaultCompactChanges = 100000
)

// EnvShutdown set to "leave" in lightningd's environment makes the plugin
// leave at the start of lightningd's shutdown, as the reference does, instead
// of staying until nothing else can write.
const EnvShutdown = "LNVAULT_SHUTDOWN"

// InitEnv is what an extension gets at init.
type InitEnv struct {
	Init         *clnplugin.InitRequest
	RPC          *clnrpc.Client // lightningd's RPC; never call it from a db_write path
	Log          *slog.Logger
	Dir          string          // the plugin's cwd: <lightning-dir>/<network>
	Destinations []*Destination  // the backup destinations (shared; do not close)
	Recipients   []string        // the age recipients the database backup is sealed for (none: not encrypted)
	Fatal        func(err error) // stops the plugin, and so lightningd
}

// Extension adds features to the plugin without editing it.
type Extension interface {
	// Name names the extension in logs and in backup-status.
	Name() string
	// Setup declares options, RPC methods and subscriptions (before
	// getmanifest is answered).
	Setup(p *clnplugin.Plugin)
	// OnInit runs after the backup plugin's own init checks, in the init
	// request's goroutine (never in the db_write path). An error is logged
	// and disables only the extension; call env.Fatal to stop the node.
	OnInit(ctx context.Context, env *InitEnv) error
	// Status is shown under extensions.<name> in backup-status.
	Status() any
}

// Config is how Run is started; zero fields take the process's own.
type Config struct {
	Stdin  io.Reader
	Stdout io.Writer
	Dir    string // cwd, where backup.lock is
	// Extensions plug into the plugin (options, methods, init, status).
	Extensions []Extension
}

// Main runs the plugin with exts on the process's stdin/stdout and returns
// the exit code.
func Main(ctx context.Context, exts ...Extension) int {
	if err := Run(ctx, Config{Extensions: exts}); err != nil {
		return 1
	}
	return 0
}

// Run runs the plugin until lightningd closes stdin (nil) or a fatal error.
// Fatal errors are logged to lightningd before Run returns them.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	p := clnplugin.New()
	p.SetOutput(cfg.Stdout)
	r := &run{cfg: cfg, p: p, log: p.Log()}

	// backup.lock is read before getmanifest is answered: db_write comes
	// before init, and every change must reach the right destination.
	lock, err := ReadLock(cfg.Dir)
	if err != nil {
		return r.fail(err)
	}
	r.urls = lock.URLs()
	if r.dests, err = openAll(ctx, r.urls, r.log); err != nil {
		return r.fail(err)
	}
	defer r.closeDestinations()
	if err := r.seal(lock); err != nil {
		return r.fail(err)
	}
	r.v = NewVault(ctx, r.dests, r.log)
	if r.shadow != nil {
		r.v.SetShadow(r.shadow)
		defer r.shadow.Close()
	}
	r.v.SetAutoCompact(Thresholds{Size: DefaultCompactSize, Changes: DefaultCompactChanges})
	r.v.SetHeal(HealConfig{Disabled: !lock.HealEnabled(), DBPath: func() (string, error) { return NodeDBPath(cfg.Dir) }})
	defer r.v.Wait()

	r.declare()
	p.OnInit(r.init)
	for _, e := range cfg.Extensions {
		e.Setup(p)
	}
	err = p.Run(ctx, cfg.Stdin, cfg.Stdout)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// seal wraps every destination in the backup's end-to-end encryption when
// backup.lock asks for it: one new generation (data key) for this run,
// shared by all destinations so their heads compare.
func (r *run) seal(lock Lock) error {
	if lock.Encryption == nil {
		return nil
	}
	cfg, err := lock.Encryption.Config()
	if err != nil {
		return fmt.Errorf("%s: %w", LockFile, err)
	}
	s, err := sealed.NewSession(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", LockFile, err)
	}
	// The node compacts what its hosts cannot read, from a copy of its own
	// database kept beside it (package shadow).
	r.shadow = shadow.New(filepath.Join(r.cfg.Dir, ShadowFile), r.log)
	for _, d := range r.dests {
		sb := sealed.New(d.Backend, s)
		sb.SetSnapshotSource(r.shadow.Copy)
		d.Backend = sb
	}
	r.recipients = cfg.Recipients
	r.log.Info("changes are sealed end to end before they leave the node", "generation", fmt.Sprintf("%016x", s.Generation()), "recipients", strings.Join(cfg.Recipients, ", "))
	return nil
}

// withDefaults fills in the process's stdin, stdout and working directory.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Stdin == nil {
		cfg.Stdin = os.Stdin
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return cfg, err
		}
		cfg.Dir = wd
	}
	return cfg, nil
}

// run is one plugin process: the destinations of backup.lock behind a
// Vault, served to lightningd by p.
type run struct {
	cfg   Config
	p     *clnplugin.Plugin
	log   *slog.Logger
	v     *Vault
	urls  []string
	dests []*Destination
	// recipients of the database backup's encryption, for extensions
	recipients []string
	shadow     *shadow.Shadow // an encrypted backup's copy of the node's database
}

// ShadowFile is the shadow copy of the node's database an encrypted backup
// is compacted from, in lightningd's network directory.
const ShadowFile = "lnvault-shadow.sqlite3"

// fail logs err to lightningd and returns it.
func (r *run) fail(err error) error {
	r.log.Error(err.Error())
	return err
}

func (r *run) closeDestinations() {
	for _, d := range r.dests {
		if err := d.Backend.Close(); err != nil {
			r.log.Warn("closing destination", "destination", d.URL, "err", err)
		}
	}
}

// declare adds the plugin's options, subscriptions, db_write hook and
// methods to the manifest.
func (r *run) declare() {
	p, v := r.p, r.v
	p.AddOption(clnplugin.Option{Name: OptDestination, Type: "string",
		Description: "Destination of the database backups (file:///filename/on/another/disk/); must match backup.lock"})
	p.AddOption(clnplugin.Option{Name: OptCompactSize, Type: "int", Default: DefaultCompactSize,
		Description: "Compact the backup automatically when it grows past this many bytes (0: never)"})
	p.AddOption(clnplugin.Option{Name: OptCompactChanges, Type: "int", Default: DefaultCompactChanges,
		Description: "Compact the backup automatically after this many changes (0: never)"})
	// lightningd's shutdown: stay while it can still commit (shutdown.go).
	// EnvShutdown=leave keeps the reference's behaviour (not subscribed, so
	// killed first), for comparison.
	if os.Getenv(EnvShutdown) != "leave" {
		waiter := newShutdownWaiter(v, r.log, p.Stop)
		p.Subscribe("shutdown", func(ctx context.Context, _ json.RawMessage) { go waiter.wait(ctx) })
	}

	// lightningd waits for the db_write answer before anything else, so it is
	// handled where it is read (no goroutine hand-off on the ack path).
	p.OnIdle(v.Idle)
	clnplugin.AddTypedSyncHook(p, "db_write", func(ctx context.Context, req *dbWriteParams) (any, error) {
		if req.DataVersion == nil {
			return nil, errors.New("malformed db_write params: no data_version")
		}
		if err := v.Write(ctx, *req.DataVersion, req.Writes); err != nil {
			return nil, err
		}
		return continueResult, nil
	})
	p.AddMethod(clnplugin.Method{Name: "backup-compact", Usage: "",
		Description: "Compact the backup: replace its old changes with a snapshot (runs alongside db_write)",
		Handler:     r.compact})
	p.AddMethod(clnplugin.Method{Name: "backup-status", Usage: "",
		Description: "Show the backup's versions, destinations, ack latency and size",
		Handler:     r.status})
}

// compact is the backup-compact method.
func (r *run) compact(ctx context.Context, _ json.RawMessage) (any, error) {
	rep, err := r.v.Compact(ctx)
	if err != nil {
		return nil, err
	}
	if len(r.dests) == 1 {
		return rep.Stats[r.dests[0].URL], nil
	}
	return rep.Stats, nil
}

// status is the backup-status method.
func (r *run) status(ctx context.Context, _ json.RawMessage) (any, error) {
	st := r.v.Status(ctx)
	if exts := r.cfg.Extensions; len(exts) > 0 {
		st.Extensions = map[string]any{}
		for _, e := range exts {
			st.Extensions[e.Name()] = e.Status()
		}
	}
	return st, nil
}

// init checks lightningd's options against backup.lock, takes the
// compaction thresholds, checks the wallet and starts the extensions. A
// mistake in the options stops the node (Fatal), as the reference does.
func (r *run) init(ctx context.Context, req *clnplugin.InitRequest) error {
	if opt := req.String(OptDestination); opt != "" && opt != "null" && !slices.Contains(r.urls, opt) {
		r.p.Fatal(r.fail(fmt.Errorf("the destination given as option %s (%s) does not match the one in %s (%s); please check your settings",
			OptDestination, opt, filepath.Join(r.cfg.Dir, LockFile), strings.Join(r.urls, ", "))))
		return nil
	}
	t, err := thresholds(req)
	if err != nil {
		r.p.Fatal(r.fail(err))
		return nil
	}
	r.v.SetAutoCompact(t)
	rpc := r.rpcClient(req)
	if rpc != nil {
		checkWallet(ctx, rpc, r.log, r.p)
	}
	env := &InitEnv{Init: req, RPC: rpc, Log: r.log, Dir: r.cfg.Dir, Destinations: r.dests, Recipients: r.recipients, Fatal: r.p.Fatal}
	for _, e := range r.cfg.Extensions {
		if err := e.OnInit(ctx, env); err != nil {
			r.log.Error("extension failed to start", "extension", e.Name(), "err", err)
		}
	}
	r.log.Info("lnvault backup plugin ready", "destinations", strings.Join(r.urls, ", "))
	return nil
}

// thresholds reads the automatic compaction options.
func thresholds(req *clnplugin.InitRequest) (Thresholds, error) {
	var t Thresholds
	var err error
	if t.Size, err = req.Int(OptCompactSize, DefaultCompactSize); err != nil {
		return t, err
	}
	if t.Changes, err = req.Int(OptCompactChanges, DefaultCompactChanges); err != nil {
		return t, err
	}
	if t.Size < 0 || t.Changes < 0 {
		return t, fmt.Errorf("options %s and %s must be >= 0 (0 disables)", OptCompactSize, OptCompactChanges)
	}
	return t, nil
}

// rpcClient is a client of lightningd's RPC socket, nil when init names none.
func (r *run) rpcClient(req *clnplugin.InitRequest) *clnrpc.Client {
	if req.Configuration.RPCFile == "" {
		return nil
	}
	path := req.Configuration.RPCFile
	if !filepath.IsAbs(path) {
		path = filepath.Join(r.cfg.Dir, path)
	}
	return clnrpc.New(path)
}

// dbWriteParams are the db_write hook's params.
type dbWriteParams struct {
	DataVersion *uint32  `json:"data_version"`
	Writes      []string `json:"writes"`
}

// continueResult is db_write's answer, pre-encoded: clnplugin writes a
// json.RawMessage result as is.
var continueResult = json.RawMessage(`{"result":"continue"}`)

// checkWallet stops the node when its database is not SQLite, as the
// reference does. An RPC failure is only logged: the backup does not need it.
func checkWallet(ctx context.Context, rpc *clnrpc.Client, log *slog.Logger, p *clnplugin.Plugin) {
	var raw map[string]json.RawMessage
	if err := rpc.Call(ctx, "listconfigs", map[string]any{}, &raw); err != nil {
		log.Warn("could not check the wallet setting with listconfigs", "err", err)
		return
	}
	wallet := ""
	if c, ok := raw["configs"]; ok { // v23.08+: {"configs": {"wallet": {"value_str": ...}}}
		var cs map[string]struct {
			ValueStr string `json:"value_str"`
		}
		if json.Unmarshal(c, &cs) == nil {
			wallet = cs["wallet"].ValueStr
		}
	} else if w, ok := raw["wallet"]; ok {
		json.Unmarshal(w, &wallet)
	}
	if wallet != "" && !strings.HasPrefix(wallet, "sqlite3") {
		err := fmt.Errorf("the backup plugin only works with the sqlite3 database (wallet is %s)", wallet)
		log.Error(err.Error())
		p.Fatal(err)
	}
}

// openAll opens every destination in parallel.
func openAll(ctx context.Context, urls []string, log *slog.Logger) ([]*Destination, error) {
	dests := make([]*Destination, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Logger: log.With("destination", u)})
			if err != nil {
				if errors.Is(err, lnvault.ErrNotFound) {
					// The backend's own advice (plain `lnvault init`) would
					// start the backup empty: here it must hold the node's
					// database.
					errs[i] = fmt.Errorf("opening backup destination %s: %w there; with lightningd stopped, create it from the node's database: `lnvault init %s --lightning-dir <dir>`", u, lnvault.ErrNotFound, u)
					return
				}
				errs[i] = fmt.Errorf("opening backup destination %s: %w", u, err)
				return
			}
			dests[i] = &Destination{URL: u, Backend: b}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, d := range dests {
			if d != nil {
				d.Backend.Close()
			}
		}
		return nil, err
	}
	return dests, nil
}
