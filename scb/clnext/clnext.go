// Package clnext runs static channel backups inside lnvault's Core Lightning
// plugin: New returns the backupplugin.Extension (the binary hands it to
// backupplugin.Main) that:
//
//   - subscribes to channel_opened and channel_state_changed, and after init
//     and after each burst of those events calls `staticbackup` over the
//     lightning-rpc socket (never from the db_write hook, which would
//     deadlock lightningd) and stores the set when it changed;
//   - ships the node's own emergency.recover (in the plugin's cwd, the
//     network directory) whenever it changes;
//   - stores both at every backup destination of backup.lock whose scheme
//     has an SCB store (file: → <backup>.scb/, s3: → <prefix>/scb/, ...), as
//     immutable versions, optionally age-encrypted, and keeps a plain local
//     copy in the network directory (lnvault-scb.json and
//     lnvault-emergency.recover, previous versions in <file>.archive/);
//   - retries a failing destination with backoff without ever holding up
//     db_write or the other destinations, and reports every destination's
//     state under extensions.scb of backup-status.
package clnext

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/clnplugin"
	"github.com/lnvault/lnvault/scb"
)

// Plugin options.
const (
	OptEncryptTo      = "backup-scb-encrypt-to"
	OptRecipientsFile = "backup-scb-recipients-file"
	OptLocalCopy      = "backup-scb-local-copy"
	OptEmergencyCopy  = "backup-scb-emergency-copy"
	OptDisable        = "backup-scb-disable"
)

// Defaults, relative to the network directory.
const (
	DefaultLocalCopy     = "lnvault-scb.json"
	DefaultEmergencyCopy = "lnvault-emergency.recover"
	// EmergencyFile is the file lightningd keeps in the network directory.
	EmergencyFile = "emergency.recover"
)

// Tunables; variables so tests can shorten them.
var (
	// Debounce: events closer together than this make one fetch.
	Debounce = 500 * time.Millisecond
	// RetryMin and RetryMax bound a failing destination's backoff.
	RetryMin = time.Second
	RetryMax = 5 * time.Minute
	// Refresh re-fetches without events: peer addresses inside the SCBs
	// change without a channel event.
	Refresh = time.Hour
	// EmergencyPoll is how often emergency.recover is checked.
	EmergencyPoll = time.Second
	// FetchTimeout bounds one staticbackup call.
	FetchTimeout = time.Minute
)

// Extension is the SCB extension of the backup plugin. Its zero value is not
// usable; New returns one.
type Extension struct {
	mu        sync.Mutex
	state     string
	err       string
	encrypted bool
	skipped   []Skipped
	cln       *scb.Keeper
	emergency *scb.Keeper
	emPath    string
	stores    []*lazyStore
}

// Skipped is a destination that gets no SCBs, and why.
type Skipped struct {
	URL    string `json:"url"`
	Reason string `json:"reason"`
}

// Status is what backup-status shows under extensions.scb.
type Status struct {
	// State: "waiting for init", "running" or "disabled".
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// Healthy: the last staticbackup call worked and every destination
	// holds the current set (and emergency.recover, once it exists).
	Healthy   bool      `json:"healthy"`
	Encrypted bool      `json:"encrypted"`
	Skipped   []Skipped `json:"skipped,omitempty"`
	// CLN is the keeper of the staticbackup set.
	CLN *scb.Status `json:"cln_scb,omitempty"`
	// Emergency is the keeper of emergency.recover, nil until the file
	// exists (EmergencyWaiting says where it is expected).
	Emergency        *scb.Status `json:"emergency_recover,omitempty"`
	EmergencyWaiting string      `json:"emergency_recover_waiting,omitempty"`
}

// New returns an extension; the package registers one from init.
func New() *Extension { return &Extension{state: "waiting for init"} }

// Name implements backupplugin.Extension.
func (e *Extension) Name() string { return "scb" }

// Setup implements backupplugin.Extension.
func (e *Extension) Setup(p *clnplugin.Plugin) {
	p.AddOption(clnplugin.Option{Name: OptEncryptTo, Type: "string",
		Description: "Encrypt static channel backups sent to the backup destinations for these age recipients (age1..., comma-separated); the local copy stays plain"})
	p.AddOption(clnplugin.Option{Name: OptRecipientsFile, Type: "string",
		Description: "Encrypt static channel backups sent to the backup destinations for the age recipients in this file (one age1... per line; relative to the network directory)"})
	p.AddOption(clnplugin.Option{Name: OptLocalCopy, Type: "string", Default: DefaultLocalCopy,
		Description: "Local copy of the staticbackup set, in the form recoverchannel takes (relative to the network directory; previous versions in FILE.archive/; 'none' disables)"})
	p.AddOption(clnplugin.Option{Name: OptEmergencyCopy, Type: "string", Default: DefaultEmergencyCopy,
		Description: "Local copy of emergency.recover with an archive of previous versions (relative to the network directory; 'none' disables)"})
	p.AddOption(clnplugin.Option{Name: OptDisable, Type: "bool", Default: false,
		Description: "Do not keep static channel backups (staticbackup and emergency.recover) at the backup destinations"})
	for _, topic := range scb.CLNSubscriptions {
		p.Subscribe(topic, func(_ context.Context, params json.RawMessage) { e.onEvent(topic, params) })
	}
}

// onEvent runs on the plugin's notification goroutine: it must not block,
// and Keeper.Notify never does.
func (e *Extension) onEvent(topic string, params json.RawMessage) {
	ev, ok := scb.CLNEvent(topic, params)
	if !ok {
		return
	}
	e.mu.Lock()
	cln, em := e.cln, e.emergency
	e.mu.Unlock()
	// Before init there is no keeper: its first fetch, right after init,
	// covers the event.
	if cln != nil {
		cln.Notify(ev)
	}
	// lightningd rewrites emergency.recover when channels open: look now
	// rather than at the next poll.
	if em != nil {
		em.Notify(scb.Event{Type: scb.EventFileChanged, ChannelID: ev.ChannelID})
	}
}

func (e *Extension) disable(err error) error {
	e.mu.Lock()
	e.state, e.err = "disabled", err.Error()
	e.mu.Unlock()
	return err
}

// OnInit implements backupplugin.Extension: it reads the options, opens the
// destinations' SCB stores (lazily: one that cannot be reached now is
// retried) and starts the keepers, which run until the plugin stops.
func (e *Extension) OnInit(ctx context.Context, env *backupplugin.InitEnv) error {
	log := env.Log
	if log == nil {
		log = slog.Default()
	}
	if off, _ := optBool(env.Init, OptDisable); off {
		e.mu.Lock()
		e.state = "disabled"
		e.err = "disabled by option " + OptDisable
		e.mu.Unlock()
		log.Info("static channel backups are disabled (" + OptDisable + ")")
		return nil
	}
	if env.RPC == nil {
		return e.disable(errors.New("static channel backups need lightningd's RPC socket, and init named no rpc-file"))
	}
	rcpts, err := recipients(env)
	if err != nil {
		return e.disable(fmt.Errorf("static channel backups are OFF: %w", err))
	}

	var stores []*lazyStore
	var skipped []Skipped
	for _, d := range env.Destinations {
		scheme := lnvault.Scheme(d.URL)
		if !slices.Contains(scb.StoreSchemes(), scheme+":") {
			reason := fmt.Sprintf("no static channel backup store for %s: URLs (stores: %s)", scheme, strings.Join(scb.StoreSchemes(), ", "))
			log.Info("static channel backups skip a destination", "destination", redact(d.URL), "reason", reason)
			skipped = append(skipped, Skipped{URL: redact(d.URL), Reason: reason})
			continue
		}
		stores = append(stores, &lazyStore{url: d.URL, name: redact(d.URL) + " (scb)", log: log})
	}
	swappers := func(local string) []scb.Swapper {
		var out []scb.Swapper
		for _, st := range stores {
			out = append(out, &scb.StoreSwapper{Store: st, Recipients: rcpts})
		}
		if local != "" {
			out = append(out, &scb.FileSwapper{Path: local})
		}
		return out
	}
	localCopy := localPath(env, OptLocalCopy, DefaultLocalCopy)
	emCopy := localPath(env, OptEmergencyCopy, DefaultEmergencyCopy)
	if len(stores) == 0 && localCopy == "" {
		return e.disable(errors.New("static channel backups have no destination: no backup destination has an SCB store and the local copy is disabled"))
	}

	cln, err := scb.New(scb.Config{
		Kind:     scb.KindCLN,
		Source:   timeoutSource{scb.CLNSource{RPC: env.RPC}, FetchTimeout},
		Swappers: swappers(localCopy),
		Debounce: Debounce, RetryMin: RetryMin, RetryMax: RetryMax,
		Refresh: Refresh,
		Logger:  log,
	})
	if err != nil {
		return e.disable(err)
	}
	e.mu.Lock()
	e.state, e.err = "running", ""
	e.encrypted = len(rcpts) > 0
	e.skipped = skipped
	e.cln = cln
	e.stores = stores
	e.emPath = filepath.Join(env.Dir, EmergencyFile)
	e.mu.Unlock()

	go func() {
		<-ctx.Done()
		for _, st := range stores {
			st.Close()
		}
	}()
	go cln.Run(ctx)
	if ems := swappers(emCopy); len(ems) > 0 {
		go e.runEmergency(ctx, ems, log)
	}
	log.Info("static channel backups on", "destinations", len(stores), "local_copy", localCopy,
		"encrypted", len(rcpts) > 0, "emergency_recover", e.emPath)
	return nil
}

// runEmergency waits for emergency.recover to exist (older nodes have none;
// a new node writes it once it has a channel), then keeps it shipped.
func (e *Extension) runEmergency(ctx context.Context, swappers []scb.Swapper, log *slog.Logger) {
	t := time.NewTicker(EmergencyPoll)
	defer t.Stop()
	for {
		if _, err := os.Stat(e.emPath); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("cannot check emergency.recover", "path", e.emPath, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	k, err := scb.New(scb.Config{
		Kind:     scb.KindCLNEmergency,
		Source:   &scb.FileSource{Path: e.emPath, Kind: scb.KindCLNEmergency},
		Swappers: swappers,
		Debounce: Debounce, RetryMin: RetryMin, RetryMax: RetryMax,
		Logger: log,
	})
	if err != nil {
		log.Error("static channel backups: cannot follow emergency.recover", "err", err)
		return
	}
	e.mu.Lock()
	e.emergency = k
	e.mu.Unlock()
	go scb.WatchFile(ctx, e.emPath, EmergencyPoll, k, log)
	k.Run(ctx)
}

// Status implements backupplugin.Extension.
func (e *Extension) Status() any {
	e.mu.Lock()
	st := Status{State: e.state, Error: e.err, Encrypted: e.encrypted, Skipped: e.skipped}
	cln, em := e.cln, e.emergency
	if e.state == "running" && em == nil {
		st.EmergencyWaiting = e.emPath + " does not exist (yet)"
	}
	e.mu.Unlock()
	if cln != nil {
		s := cln.Status()
		st.CLN = &s
		st.Healthy = s.Healthy()
	}
	if em != nil {
		s := em.Status()
		st.Emergency = &s
		st.Healthy = st.Healthy && s.Healthy()
	}
	return st
}

// recipients reads the encryption options.
func recipients(env *backupplugin.InitEnv) ([]age.Recipient, error) {
	var keys, files []string
	if s := env.Init.String(OptEncryptTo); s != "" {
		keys = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	}
	if f := env.Init.String(OptRecipientsFile); f != "" {
		if !filepath.IsAbs(f) {
			f = filepath.Join(env.Dir, f)
		}
		files = append(files, f)
	}
	if len(keys) == 0 && len(files) == 0 {
		// An encrypted database backup encrypts its SCBs for the same
		// recipients unless told otherwise.
		keys = env.Recipients
	}
	rs, err := scb.ParseRecipients(keys, files)
	if err != nil {
		return nil, fmt.Errorf("options %s/%s: %w", OptEncryptTo, OptRecipientsFile, err)
	}
	if (len(keys) > 0 || len(files) > 0) && len(rs) == 0 {
		return nil, fmt.Errorf("options %s/%s name no age recipient: add an age1... key or remove the options", OptEncryptTo, OptRecipientsFile)
	}
	return rs, nil
}

func localPath(env *backupplugin.InitEnv, opt, def string) string {
	p := def
	if raw, ok := env.Init.Options[opt]; ok && string(raw) != "null" {
		p = env.Init.String(opt)
	}
	if p == "" || strings.EqualFold(p, "none") {
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(env.Dir, p)
	}
	return p
}

// optBool reads a bool option (lightningd sends true/false; users may send
// strings).
func optBool(r *clnplugin.InitRequest, name string) (bool, error) {
	raw, ok := r.Options[name]
	if !ok || string(raw) == "null" {
		return false, nil
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err == nil {
		return b, nil
	}
	s := strings.ToLower(r.String(name))
	return s == "true" || s == "1" || s == "yes", nil
}

// redact drops the query (endpoints, options) and any user info of a URL,
// for logs and status.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Opaque != "" {
		if i := strings.IndexAny(raw, "?#"); i >= 0 {
			return raw[:i]
		}
		return raw
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// timeoutSource bounds one fetch, so a hung lightningd call is retried
// rather than stalling the keeper.
type timeoutSource struct {
	src scb.Source
	d   time.Duration
}

func (s timeoutSource) Fetch(ctx context.Context) (scb.Backup, error) {
	ctx, cancel := context.WithTimeout(ctx, s.d)
	defer cancel()
	return s.src.Fetch(ctx)
}

// lazyStore opens its store on first use and again after a failed open, so
// that a destination unreachable at start (S3 down, a folder not mounted
// yet) is retried by the keeper's backoff instead of being dropped.
type lazyStore struct {
	url  string
	name string
	log  *slog.Logger

	mu     sync.Mutex
	st     scb.Store
	closed bool
}

func (l *lazyStore) get(ctx context.Context) (scb.Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("static channel backup store is closed")
	}
	if l.st != nil {
		return l.st, nil
	}
	st, err := scb.OpenStore(ctx, l.url, scb.StoreOptions{Logger: l.log})
	if err != nil {
		return nil, err
	}
	l.st = st
	return st, nil
}

func (l *lazyStore) Put(ctx context.Context, env []byte) (scb.Version, error) {
	st, err := l.get(ctx)
	if err != nil {
		return scb.Version{}, err
	}
	return st.Put(ctx, env)
}

func (l *lazyStore) List(ctx context.Context) ([]scb.Version, error) {
	st, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return st.List(ctx)
}

func (l *lazyStore) Get(ctx context.Context, id string) ([]byte, error) {
	st, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return st.Get(ctx, id)
}

func (l *lazyStore) String() string { return l.name }

func (l *lazyStore) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.st != nil {
		return l.st.Close()
	}
	return nil
}
