package s3test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// FaultProxy is an HTTP proxy in front of an S3 server that can answer an
// error after the server handled the request: the object is stored (or
// deleted), the client is told it was not. It is the fault an object store
// gives when it fails between storing an object and answering.
type FaultProxy struct {
	// Endpoint is the proxy's URL, to use in place of the server's.
	Endpoint string

	mu     sync.Mutex
	match  string // a substring of the request path
	method string
	left   int
	// Failed counts the answers replaced by an error.
	Failed atomic.Int64
	// Requests counts the requests proxied, by method.
	Requests sync.Map
}

// StartFaultProxy proxies endpoint until the test ends.
func StartFaultProxy(t testing.TB, endpoint string) *FaultProxy {
	t.Helper()
	up, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	fp := &FaultProxy{}
	rp := httputil.NewSingleHostReverseProxy(up)
	rp.ModifyResponse = func(r *http.Response) error {
		if fp.take(r.Request) {
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
			fp.Failed.Add(1)
			body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected after the request was handled</Message></Error>`
			r.StatusCode, r.Status = http.StatusInternalServerError, "500 Internal Server Error"
			r.Body = io.NopCloser(strings.NewReader(body))
			r.ContentLength = int64(len(body))
			r.Header.Set("Content-Length", strconv.Itoa(len(body)))
			r.Header.Del("ETag")
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := fp.Requests.LoadOrStore(r.Method, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	fp.Endpoint = srv.URL
	return fp
}

// FailAfter makes the next n requests of method whose path contains match
// fail after the server handled them.
func (fp *FaultProxy) FailAfter(method, match string, n int) {
	fp.mu.Lock()
	fp.method, fp.match, fp.left = method, match, n
	fp.mu.Unlock()
}

func (fp *FaultProxy) take(r *http.Request) bool {
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if fp.left <= 0 || r.Method != fp.method || !strings.Contains(r.URL.Path, fp.match) {
		return false
	}
	fp.left--
	return true
}
