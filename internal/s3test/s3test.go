// Package s3test runs a real S3 server (versitygw v1.8.0 on a temp
// directory) for tests.
package s3test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Credentials the server is started with; Start sets them in the
// environment so the AWS default chain finds them.
const (
	AccessKey = "lnvaultAK"
	SecretKey = "lnvaultSecretKey"
	Region    = "us-east-1"
	Version   = "v1.8.0"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary finds versitygw: $LNVAULT_VERSITYGW, <repo>/.tools/bin, PATH, or
// installs it into <repo>/.tools/bin with go install.
func Binary() (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv("LNVAULT_VERSITYGW"); p != "" {
			binPath = p
			return
		}
		local := filepath.Join(repoRoot(), ".tools", "bin", "versitygw")
		if _, err := os.Stat(local); err == nil {
			binPath = local
			return
		}
		if p, err := exec.LookPath("versitygw"); err == nil {
			binPath = p
			return
		}
		cmd := exec.Command("go", "install", "github.com/versity/versitygw/cmd/versitygw@"+Version)
		cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(local))
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("versitygw is needed for the S3 tests and could not be installed (GOBIN=%s go install github.com/versity/versitygw/cmd/versitygw@%s): %v\n%s",
				filepath.Dir(local), Version, err, out)
			return
		}
		binPath = local
	})
	return binPath, binErr
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Server is a running versitygw.
type Server struct {
	Endpoint string
	Dir      string
	cmd      *exec.Cmd
}

// Start runs versitygw on 127.0.0.1 with a temp directory, creates a bucket
// and returns the endpoint (http://127.0.0.1:PORT) and the bucket name. The
// server stops when the test ends. It sets AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_REGION for the test.
func Start(t testing.TB) (endpoint, bucket string) {
	t.Helper()
	srv := StartServer(t)
	bucket = "lnvault-test"
	if err := CreateBucket(context.Background(), srv.Endpoint, bucket); err != nil {
		t.Fatalf("s3test: creating bucket: %v", err)
	}
	return srv.Endpoint, bucket
}

func credentialEnv(dir string) map[string]string {
	none := filepath.Join(dir, "none")
	return map[string]string{
		"AWS_ACCESS_KEY_ID": AccessKey, "AWS_SECRET_ACCESS_KEY": SecretKey, "AWS_REGION": Region,
		"AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none, "AWS_EC2_METADATA_DISABLED": "true",
	}
}

var processEnv bool

// SetProcessEnv sets the servers' credentials in the process environment
// once, from TestMain, for packages whose tests run in parallel (t.Setenv
// forbids it); StartServer then leaves the environment alone.
func SetProcessEnv() {
	for k, v := range credentialEnv(os.TempDir()) {
		os.Setenv(k, v)
	}
	processEnv = true
}

// StartServer runs versitygw without creating a bucket.
func StartServer(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	if !processEnv {
		for k, v := range credentialEnv(t.TempDir()) {
			t.Setenv(k, v)
		}
	}
	dir := t.TempDir()
	var lastErr error
	for range 5 { // a port taken between freePort and the server's bind
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		// One writer for both streams: two would each lock their own mutex
		// around the same builder.
		logs := &syncWriter{w: &strings.Builder{}}
		cmd := exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--region", Region,
			"--port", addr, "--quiet", "posix", dir)
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatalf("s3test: starting %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		srv := &Server{Endpoint: "http://" + addr, Dir: dir, cmd: cmd}
		if err := waitReady(srv.Endpoint, exited); err != nil {
			cmd.Process.Kill()
			lastErr = fmt.Errorf("%v (output: %s)", err, logs.String())
			continue
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		return srv
	}
	t.Fatalf("s3test: versitygw did not start: %v", lastErr)
	return nil
}

type syncWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func waitReady(endpoint string, exited <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("versitygw exited: %v", err)
		default:
		}
		resp, err := http.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("versitygw at %s did not answer within 15s", endpoint)
}

// Client returns an S3 client for the server.
func Client(endpoint string) *s3.Client {
	return s3.New(s3.Options{
		Region:       Region,
		BaseEndpoint: aws.String(endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
}

// Objects reads every object of bucket under prefix, by key: what a host
// holds, for tests that search it.
func Objects(tb testing.TB, endpoint, bucket, prefix string) map[string][]byte {
	tb.Helper()
	ctx := context.Background()
	c := Client(endpoint)
	out := map[string][]byte{}
	pages := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		for _, o := range page.Contents {
			r, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: o.Key})
			if err != nil {
				tb.Fatal(err)
			}
			b, err := io.ReadAll(r.Body)
			r.Body.Close()
			if err != nil {
				tb.Fatal(err)
			}
			out[aws.ToString(o.Key)] = b
		}
	}
	return out
}

// CreateBucket creates a bucket on the server.
func CreateBucket(ctx context.Context, endpoint, bucket string) error {
	_, err := Client(endpoint).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	return err
}

// URL returns the lnvault s3:// URL of prefix in bucket on endpoint.
func URL(endpoint, bucket, prefix string, extra ...string) string {
	u := fmt.Sprintf("s3://%s/%s?endpoint=%s&region=%s&path-style=true", bucket, prefix, endpoint, Region)
	for _, e := range extra {
		u += "&" + e
	}
	return u
}
