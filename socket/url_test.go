package socket

import (
	"compress/zlib"
	"net"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url   string
		addr  string
		proxy string
		err   string
		check func(Config) bool
	}{
		{url: "socket:127.0.0.1:8700", addr: "127.0.0.1:8700"},
		{url: "socket:[::1]:1234", addr: "[::1]:1234"},
		{url: "socket:[::]:1234", addr: "[::]:1234"},
		{url: "socket://backup.example.com:8700", addr: "backup.example.com:8700"},
		{url: "socket:abcdefghij234567.onion:8700?proxy=socks5:127.0.0.1:9050", addr: "abcdefghij234567.onion:8700", proxy: "127.0.0.1:9050"},
		{url: "socket:h:1?proxy=socks5:[::1]:9050", addr: "h:1", proxy: "[::1]:9050"},
		{url: "socket:h:1?timeout=2s&connect_timeout=1s&retries=0&retry_delay=50ms&compact_timeout=1h", addr: "h:1",
			check: func(c Config) bool {
				return c.Timeout == 2*time.Second && c.ConnectTimeout == time.Second && c.Retries == 0 && c.RetryDelay == 50*time.Millisecond && c.CompactTimeout == time.Hour
			}},
		{url: "socket:h:1", addr: "h:1", check: func(c Config) bool {
			return c.Timeout == DefaultTimeout && c.ConnectTimeout == DefaultConnectTimeout && c.Retries == DefaultRetries
		}},
		{url: "socket:h:1", addr: "h:1", check: func(c Config) bool { return c.Compress == CompressAuto }},
		{url: "socket:h:1?compress=none", addr: "h:1", check: func(c Config) bool { return c.Compress == CompressNone }},
		{url: "socket:h:1?compress=fast", addr: "h:1", check: func(c Config) bool { return c.Compress == CompressFast }},
		{url: "socket:h:1?compress=best", err: `compress="best": use auto, none or fast`},
		{url: "socket:127.0.0.1", err: "port missing"},
		{url: "socket::8700", err: "host missing"},
		{url: "socket:h:0", err: "bad port"},
		{url: "socket:h:99999", err: "bad port"},
		{url: "socket:h:port", err: "bad port"},
		{url: "socket:::1:8700", err: "must be in brackets"},
		{url: "socket:[::1:8700", err: "unterminated"},
		{url: "socket:[::1]8700", err: "port missing"},
		{url: "socket:[1.2.3.4]:8700", err: "not an IPv6 address"},
		{url: "socket:h:1?foo=bar", err: `unknown parameter "foo"`},
		{url: "socket:h:1?proxy=http:1.2.3.4:80", err: "only socks5"},
		{url: "socket:h:1?proxy=socks5:1.2.3.4", err: "port missing"},
		{url: "socket:h:1?timeout=soon", err: "timeout=\"soon\""},
		{url: "socket:h:1?timeout=0s", err: "not a positive duration"},
		{url: "socket:h:1?retries=-1", err: "retries"},
		{url: "socket:h:1?timeout=1s&timeout=2s", err: "given 2 times"},
		{url: "file:///x", err: "socket:HOST:PORT"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			c, err := ParseURL(tc.url)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if !strings.Contains(err.Error(), tc.url) {
					t.Fatalf("error %q does not name the URL", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Addr() != tc.addr || c.Proxy != tc.proxy {
				t.Fatalf("addr %q proxy %q", c.Addr(), c.Proxy)
			}
			if tc.check != nil && !tc.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

// FuzzParseURL: any input gives a config or an error naming the URL, never
// a panic, and an accepted URL has a dialable address.
func FuzzParseURL(f *testing.F) {
	f.Add("socket:127.0.0.1:8700")
	f.Add("socket:[::1]:1234?proxy=socks5:127.0.0.1:9050&timeout=5s")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseURL(s)
		if err != nil {
			return
		}
		if c.Host == "" || c.Port == "" || c.Timeout <= 0 || c.ConnectTimeout <= 0 {
			t.Fatalf("accepted %q as %+v", s, c)
		}
	})
}

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// compress=auto sends stored zlib blocks where bytes are cheap (a server on
// loopback or a private network, reached directly) and compresses where
// they are not (a public address, or through a proxy such as Tor).
func TestZlibLevel(t *testing.T) {
	tcp := func(ip string) net.Conn { return addrConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 8700}} }
	tests := []struct {
		url  string
		peer string
		want int
	}{
		{"socket:h:1", "127.0.0.1", zlib.NoCompression},
		{"socket:h:1", "::1", zlib.NoCompression},
		{"socket:h:1", "192.168.1.20", zlib.NoCompression},
		{"socket:h:1", "10.1.2.3", zlib.NoCompression},
		{"socket:h:1", "fd00::5", zlib.NoCompression},
		{"socket:h:1", "fe80::1", zlib.NoCompression},
		{"socket:h:1", "203.0.113.7", zlib.BestSpeed},
		{"socket:h:1", "2001:db8::1", zlib.BestSpeed},
		{"socket:h:1?proxy=socks5:127.0.0.1:9050", "127.0.0.1", zlib.BestSpeed},
		{"socket:h:1?compress=fast", "127.0.0.1", zlib.BestSpeed},
		{"socket:h:1?compress=none", "203.0.113.7", zlib.NoCompression},
	}
	for _, tc := range tests {
		c, err := ParseURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.zlibLevel(tcp(tc.peer)); got != tc.want {
			t.Errorf("%s to %s: zlib level %d, want %d", tc.url, tc.peer, got, tc.want)
		}
	}
}
