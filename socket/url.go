package socket

import (
	"compress/zlib"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lnvault/lnvault/tlskey"
)

// Defaults of the URL's optional parameters. timeout and retry_delay depend
// on where the server is: a server reached directly at a loopback, private
// or link-local address (a LAN, a datacenter) answers in milliseconds, so a
// silent link is given up after LANTimeout and reconnected at once: a
// db_write (and every HTLC behind it) waits seconds, not half a minute. One
// reached by host name or through a proxy (Tor: round trips of a second or
// more, circuits that take seconds to build) gets the patient defaults.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultTimeout        = 30 * time.Second
	DefaultCompactTimeout = 30 * time.Minute
	DefaultRetries        = 5
	DefaultRetryDelay     = 2 * time.Second
	LANTimeout            = 5 * time.Second
	LANRetryDelay         = 200 * time.Millisecond
	LANRetries            = 8
	retryBackoff          = 1.5
)

// IsLAN tells whether c reaches its server directly at a loopback, private
// or link-local address.
func (c Config) IsLAN() bool {
	if c.Proxy != "" {
		return false
	}
	if c.Host == "localhost" {
		return true
	}
	ip := net.ParseIP(c.Host)
	return ip != nil && (ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast())
}

// Config is what a socket: URL says.
//
//	socket:HOST:PORT[?PARAM=VALUE&...]
//
// HOST is an IPv4 address, a bracketed IPv6 address ([::1]) or a host name.
// Parameters:
//
//	proxy=socks5:HOST:PORT   connect through a SOCKS5 proxy (Tor); host names
//	                         are resolved by the proxy, so .onion works
//	connect_timeout=10s      TCP (and proxy) connection timeout
//	timeout=30s              how long to wait for the server's answer (ACK,
//	                         METADATA) and for a write to go through (5s for
//	                         a server on a LAN: see IsLAN)
//	compact_timeout=30m      how long a remote compaction may take
//	retries=5                reconnections tried when the connection is lost
//	                         while sending a change (0: fail at once; 8 on a
//	                         LAN)
//	retry_delay=2s           first delay between reconnections; ×1.5 each time
//	                         (200ms on a LAN)
//	compress=auto            zlib level of changes on the wire: none (stored
//	                         blocks), fast, or auto: none to a loopback or
//	                         private address reached directly, fast otherwise
//	pin=sha256:HEX           speak TLS 1.3 and accept only the server whose
//	                         key has this pin (`lnvault server --tls-key`
//	                         logs it): no certificate authority is needed
//	key=PATH                 with pin: this client's key (as `lnvault init`
//	                         writes it), for a server with --authorized-keys
type Config struct {
	Host, Port     string
	Proxy          string // "host:port" of a SOCKS5 proxy, "" for a direct connection
	ConnectTimeout time.Duration
	Timeout        time.Duration
	CompactTimeout time.Duration
	Retries        int
	RetryDelay     time.Duration
	Compress       Compression
	Pin            string      // the server's key pin: TLS when set
	KeyFile        string      // the client's key, with Pin
	key            *tlskey.Key // loaded from KeyFile
}

// Compression is the zlib level a client uses for changes.
type Compression string

// Compression choices. Compressing a change costs ~40 µs of CPU on the ack
// path (compress/flate's fastest level, and ~20 µs more for the server to
// inflate it) to save ~40% of its bytes: worth it where bytes are slow (the
// internet, Tor), not on a LAN or loopback, where sending them costs a few µs.
const (
	CompressAuto Compression = "auto"
	CompressNone Compression = "none"
	CompressFast Compression = "fast"
)

// Addr is the server's address for net.Dial.
func (c Config) Addr() string { return net.JoinHostPort(c.Host, c.Port) }

// ParseURL parses a socket: URL. Errors name what is wrong.
func ParseURL(raw string) (Config, error) {
	cfg := Config{
		ConnectTimeout: DefaultConnectTimeout, Timeout: DefaultTimeout, CompactTimeout: DefaultCompactTimeout,
		Retries: DefaultRetries, RetryDelay: DefaultRetryDelay, Compress: CompressAuto,
	}
	rest, ok := strings.CutPrefix(raw, "socket:")
	if !ok {
		return cfg, fmt.Errorf("backup URL %q: the socket backend needs socket:HOST:PORT", raw)
	}
	rest = strings.TrimPrefix(rest, "//") // tolerate socket://host:port
	target, query, _ := strings.Cut(rest, "?")
	var err error
	if cfg.Host, cfg.Port, err = parseHostPort(target); err != nil {
		return cfg, fmt.Errorf("backup URL %q: %w (expected socket:HOST:PORT, socket:[IPv6]:PORT)", raw, err)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return cfg, fmt.Errorf("backup URL %q: bad query string: %w", raw, err)
	}
	if err := cfg.parseParams(raw, q); err != nil {
		return cfg, err
	}
	if cfg.KeyFile != "" {
		if cfg.Pin == "" {
			return cfg, fmt.Errorf("backup URL %q: key= is a TLS client key: give the server's pin= too", raw)
		}
		if cfg.key, err = tlskey.Load(cfg.KeyFile); err != nil {
			return cfg, fmt.Errorf("backup URL %q: %w", raw, err)
		}
	}
	if cfg.IsLAN() {
		if !q.Has("timeout") {
			cfg.Timeout = LANTimeout
		}
		if !q.Has("retry_delay") {
			cfg.RetryDelay = LANRetryDelay
		}
		if !q.Has("retries") {
			cfg.Retries = LANRetries
		}
	}
	return cfg, nil
}

func (cfg *Config) parseParams(raw string, q url.Values) error {
	for key, vals := range q {
		if len(vals) != 1 {
			return fmt.Errorf("backup URL %q: parameter %q given %d times", raw, key, len(vals))
		}
		v := vals[0]
		switch key {
		case "proxy":
			typ, addr, ok := strings.Cut(v, ":")
			if !ok || typ != "socks5" {
				return fmt.Errorf("backup URL %q: proxy=%q: only socks5:HOST:PORT is supported", raw, v)
			}
			h, p, err := parseHostPort(addr)
			if err != nil {
				return fmt.Errorf("backup URL %q: proxy=%q: %w", raw, v, err)
			}
			cfg.Proxy = net.JoinHostPort(h, p)
		case "connect_timeout", "timeout", "compact_timeout", "retry_delay":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 && key != "retry_delay" || d < 0 {
				return fmt.Errorf("backup URL %q: %s=%q is not a positive duration (e.g. 10s)", raw, key, v)
			}
			switch key {
			case "connect_timeout":
				cfg.ConnectTimeout = d
			case "timeout":
				cfg.Timeout = d
			case "compact_timeout":
				cfg.CompactTimeout = d
			default:
				cfg.RetryDelay = d
			}
		case "compress":
			switch c := Compression(v); c {
			case CompressAuto, CompressNone, CompressFast:
				cfg.Compress = c
			default:
				return fmt.Errorf("backup URL %q: compress=%q: use auto, none or fast", raw, v)
			}
		case "pin":
			p, err := tlskey.ParsePin(v)
			if err != nil {
				return fmt.Errorf("backup URL %q: pin=: %w", raw, err)
			}
			cfg.Pin = p
		case "key":
			if v == "" {
				return fmt.Errorf("backup URL %q: key= names no file", raw)
			}
			cfg.KeyFile = v
		case "retries":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("backup URL %q: retries=%q is not a count", raw, v)
			}
			cfg.Retries = n
		default:
			return fmt.Errorf("backup URL %q: unknown parameter %q (known: proxy, connect_timeout, timeout, compact_timeout, retries, retry_delay, compress, pin, key)", raw, key)
		}
	}
	return nil
}

// zlibLevel is the level for changes sent over conn.
func (c Config) zlibLevel(conn net.Conn) int {
	switch c.Compress {
	case CompressNone:
		return zlib.NoCompression
	case CompressFast:
		return zlib.BestSpeed
	}
	if c.Proxy == "" && conn != nil {
		if ta, ok := conn.RemoteAddr().(*net.TCPAddr); ok && (ta.IP.IsLoopback() || ta.IP.IsPrivate() || ta.IP.IsLinkLocalUnicast()) {
			return zlib.NoCompression
		}
	}
	return zlib.BestSpeed
}

// parseHostPort splits HOST:PORT where HOST may be [IPv6].
func parseHostPort(s string) (host, port string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", fmt.Errorf("unterminated [ in %q", s)
		}
		host = s[1:end]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil && !strings.Contains(host, ":") {
			return "", "", fmt.Errorf("%q is not an IPv6 address", host)
		}
		rest := s[end+1:]
		if !strings.HasPrefix(rest, ":") {
			return "", "", fmt.Errorf("port missing after %q", s[:end+1])
		}
		port = rest[1:]
	} else {
		i := strings.LastIndexByte(s, ':')
		if i < 0 {
			return "", "", fmt.Errorf("port missing in %q", s)
		}
		host, port = s[:i], s[i+1:]
		if strings.Contains(host, ":") {
			return "", "", fmt.Errorf("IPv6 address %q must be in brackets, as in [%s]:%s", host, host, port)
		}
		if host == "" {
			return "", "", fmt.Errorf("host missing in %q", s)
		}
		if strings.ContainsAny(host, "/@ ") {
			return "", "", fmt.Errorf("bad host name %q", host)
		}
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("bad port %q (1-65535)", port)
	}
	return host, strconv.Itoa(n), nil
}
