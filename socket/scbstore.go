package socket

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/wire"
)

// OpenSCBStoreURL is OpenSCBStore as an scb.StoreOpener (package backends
// wires it to socket: URLs).
func OpenSCBStoreURL(_ context.Context, rawURL string, opts scb.StoreOptions) (scb.Store, error) {
	st, err := OpenSCBStore(rawURL, opts)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// ErrNoSCB: the server at the URL does not keep static channel backups (a
// reference server, or an lnvault server without an SCB store).
var ErrNoSCB = errors.New("the server does not support static channel backups")

// SCBStore keeps static channel backups on an lnvault backup server through
// the protocol extension (package wire). Each operation uses a connection of
// its own: SCBs change rarely, and a fresh connection never finds a stale
// one, nor takes the writer role of the database log.
type SCBStore struct {
	cfg Config
	log *slog.Logger
}

var _ scb.Store = (*SCBStore)(nil)

// OpenSCBStore parses rawURL (socket:HOST:PORT[?...], as for the backend);
// it does not connect.
func OpenSCBStore(rawURL string, opts scb.StoreOptions) (*SCBStore, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &SCBStore{cfg: cfg, log: log.With("scb_store", "socket", "server", cfg.Addr())}, nil
}

func (s *SCBStore) String() string { return "socket:" + s.cfg.Addr() }

// Close releases nothing: connections live for one operation.
func (s *SCBStore) Close() error { return nil }

// connect dials and asks for the SCB feature (see dialExt).
func (s *SCBStore) connect(ctx context.Context) (*extConn, error) {
	c, err := dialExt(ctx, s.cfg, wire.FeatureSCB, wire.DefaultMaxSCB, s.cfg.Timeout, false)
	var ne *noExtError
	if !errors.As(err, &ne) {
		return c, err
	}
	switch ne.answer {
	case wire.TypeMetadata:
		return nil, fmt.Errorf("%w: %s speaks only the base backup protocol (a reference server, or an older lnvault); keep static channel backups elsewhere (file:, dir:, s3://)", ErrNoSCB, s.cfg.Addr())
	case wire.TypeNack:
		return nil, fmt.Errorf("%w: %s refused lnvault's extension request (a server without extensions); keep static channel backups elsewhere (file:, dir:, s3://)", ErrNoSCB, s.cfg.Addr())
	case wire.TypeFeatures:
		return nil, fmt.Errorf("%w: the lnvault server at %s keeps no static channel backups (start it with a file: backup, or with --scb URL)", ErrNoSCB, s.cfg.Addr())
	}
	return nil, fmt.Errorf("%w: %s closed the connection when asked for lnvault's extensions (a reference backup server?); keep static channel backups elsewhere (file:, dir:, s3://)", ErrNoSCB, s.cfg.Addr())
}

// Put implements scb.Store: it returns once the server has stored the
// version durably and answered with its metadata.
func (s *SCBStore) Put(ctx context.Context, env []byte) (scb.Version, error) {
	if _, err := scb.DecodeEnvelope(env); err != nil {
		return scb.Version{}, fmt.Errorf("refusing to send an invalid envelope: %w", err)
	}
	if len(env) > wire.DefaultMaxSCB {
		return scb.Version{}, fmt.Errorf("static channel backup envelope of %d bytes exceeds the backup server's %d byte limit", len(env), wire.DefaultMaxSCB)
	}
	c, err := s.connect(ctx)
	if err != nil {
		return scb.Version{}, err
	}
	defer c.close()
	p, err := c.request(ctx, "SCB_PUT", func(w *wire.Writer) error { return w.WriteSCB(wire.TypeSCBPut, env) })
	if err != nil {
		return scb.Version{}, err
	}
	if p.Type != wire.TypeSCBVersions || len(p.SCBVersions) != 1 {
		return scb.Version{}, &protocolError{fmt.Sprintf("backup server %s answered SCB_PUT with %v (%d versions), not the stored version", s.cfg.Addr(), p.Type, len(p.SCBVersions))}
	}
	v, err := SCBVersionFromWire(p.SCBVersions[0])
	if err != nil {
		return v, fmt.Errorf("backup server %s stored the static channel backup but described it badly: %w", s.cfg.Addr(), err)
	}
	s.log.Debug("static channel backup stored", "id", v.ID, "kind", v.Kind)
	return v, nil
}

// List implements scb.Store.
// MaxSCBVersions bounds the versions a server may list (each is held in
// memory): a node that opened or closed a channel every minute for two
// years would have made about a million. (A variable for tests.)
var MaxSCBVersions = 1 << 20

func (s *SCBStore) List(ctx context.Context) ([]scb.Version, error) {
	c, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	p, err := c.request(ctx, "SCB_LIST", func(w *wire.Writer) error { return w.WriteEmpty(wire.TypeSCBList) })
	var out []scb.Version
	for ; err == nil; p, err = c.next(ctx, "SCB_LIST") {
		switch p.Type {
		case wire.TypeDone:
			for i := 1; i < len(out); i++ {
				if out[i].Seq <= out[i-1].Seq {
					return nil, &protocolError{fmt.Sprintf("backup server %s listed static channel backup versions out of order (%d after %d)", s.cfg.Addr(), out[i].Seq, out[i-1].Seq)}
				}
			}
			return out, nil
		case wire.TypeSCBVersions:
			if len(out)+len(p.SCBVersions) > MaxSCBVersions {
				return nil, &protocolError{fmt.Sprintf("backup server %s lists more than %d static channel backup versions, far more than a node makes (a hostile or broken server)", s.cfg.Addr(), MaxSCBVersions)}
			}
			for _, wv := range p.SCBVersions {
				v, err := SCBVersionFromWire(wv)
				if err != nil {
					return nil, &protocolError{fmt.Sprintf("backup server %s listed a bad static channel backup version: %v", s.cfg.Addr(), err)}
				}
				out = append(out, v)
			}
		default:
			return nil, &protocolError{fmt.Sprintf("backup server %s answered SCB_LIST with %v", s.cfg.Addr(), p.Type)}
		}
	}
	return nil, err
}

// Get implements scb.Store. id is a version id (from List); the envelope is
// returned as stored, for the caller to verify.
func (s *SCBStore) Get(ctx context.Context, id string) ([]byte, error) {
	if _, _, err := scb.ParseVersionID(id); err != nil {
		return nil, err
	}
	c, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer c.close()
	p, err := c.request(ctx, "SCB_GET", func(w *wire.Writer) error { return w.WriteSCBGet(id) })
	if err != nil {
		return nil, err
	}
	if p.Type != wire.TypeSCBData {
		return nil, &protocolError{fmt.Sprintf("backup server %s answered SCB_GET with %v", s.cfg.Addr(), p.Type)}
	}
	return p.Data, nil
}

// SCBVersionFromWire checks and converts a version from SCB_VERSIONS.
func SCBVersionFromWire(w wire.SCBVersion) (scb.Version, error) {
	seq, stored, err := scb.ParseVersionID(w.ID)
	if err != nil {
		return scb.Version{}, err
	}
	if seq != w.Seq {
		return scb.Version{}, fmt.Errorf("version %s has sequence number %d", w.ID, w.Seq)
	}
	v := scb.Version{ID: w.ID, Seq: seq, Stored: stored, Kind: scb.Kind(w.Kind), Created: w.Created,
		Channels: w.Channels, Encrypted: w.Encrypted, Size: w.Size}
	if w.Error != "" {
		// The server could not decode it; say so, with its reason.
		v.Err = &lnvault.CorruptError{Offset: -1, Object: w.ID, Reason: "on the backup server: " + w.Error}
		return v, nil
	}
	if !v.Kind.Valid() {
		return v, fmt.Errorf("version %s has invalid kind %q", w.ID, w.Kind)
	}
	if w.Channels < -1 || w.Size < 0 {
		return v, fmt.Errorf("version %s has %d channels, %d bytes", w.ID, w.Channels, w.Size)
	}
	if w.PlainSHA256 != "" {
		h, err := hex.DecodeString(w.PlainSHA256)
		if err != nil || len(h) != 32 {
			return v, fmt.Errorf("version %s has a bad plaintext hash %q", w.ID, w.PlainSHA256)
		}
		copy(v.PlainSHA256[:], h)
	}
	if w.Encrypted && w.PlainSHA256 != "" {
		return v, fmt.Errorf("version %s is encrypted but carries a plaintext hash", w.ID)
	}
	return v, nil
}
