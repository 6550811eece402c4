// Package s3 is a replica.ObjectStore on S3-compatible object storage
// (AWS S3, versitygw, MinIO, ...) with aws-sdk-go-v2; package backends wires
// it to the scheme "s3":
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1&path-style=true&timeout=10s
//
// Credentials come from the usual AWS chain (AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws, instance roles).
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
)

// OpenURL opens the store of an s3://bucket/prefix URL (a
// replica.StoreOpener; package backends wires it to s3: URLs).
func OpenURL(ctx context.Context, u *url.URL, q url.Values) (replica.ObjectStore, error) {
	st, err := Open(ctx, u, q)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Params are the query parameters the S3 store itself reads.
var Params = []string{"endpoint", "region", "path-style", "timeout"}

// DefaultTimeout bounds the wait for the store's next bytes (connecting, an
// answer, a body): a black-holed request is given up and retried (the SDK's
// 3 attempts) instead of holding a db_write for ever. A PUT of a segment
// takes milliseconds on a LAN and about a hundred over the internet.
const DefaultTimeout = 10 * time.Second

// Attempts of one request, and the longest pause between two: a link that
// drops for a few seconds costs a db_write a few seconds, not the node (a
// db_write that fails stops lightningd). No client-side retry quota: a
// flaky link must not use up the right to retry.
const (
	maxAttempts = 8
	maxBackoff  = 2 * time.Second
)

// Store keeps objects in Bucket under Prefix.
type Store struct {
	Client   *s3.Client
	Bucket   string
	Prefix   string // "" or ends with "/"
	endpoint string
}

// Open connects to the bucket named by u (s3://bucket/prefix) with the
// endpoint, region and path-style parameters of q, and checks that the
// bucket is reachable.
func Open(ctx context.Context, u *url.URL, q url.Values) (*Store, error) {
	if u.Host == "" {
		return nil, fmt.Errorf("s3 URL %q names no bucket: use s3://BUCKET/PREFIX", u.Redacted())
	}
	region := q.Get("region")
	opts := []func(*config.LoadOptions) error{}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: loading AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1" // custom endpoints rarely care; AWS redirects
	}
	pathStyle := false
	if v := q.Get("path-style"); v != "" {
		if pathStyle, err = strconv.ParseBool(v); err != nil {
			return nil, fmt.Errorf("s3 URL parameter path-style=%q: want true or false", v)
		}
	}
	endpoint := q.Get("endpoint")
	if endpoint != "" {
		eu, err := url.Parse(endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return nil, fmt.Errorf("s3 URL parameter endpoint=%q: want http://host:port or https://host", endpoint)
		}
	}
	timeout := DefaultTimeout
	if v := q.Get("timeout"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil || timeout < 100*time.Millisecond {
			return nil, fmt.Errorf("s3 URL parameter timeout=%q: want a duration of at least 100ms, such as 10s", v)
		}
	}
	cfg.HTTPClient = boundedLists{awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = timeout }).
		WithTransportOptions(func(tr *http.Transport) { tr.ResponseHeaderTimeout = timeout }).
		WithReadTimeout(timeout)}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts, so.MaxBackoff, so.RateLimiter = maxAttempts, maxBackoff, ratelimit.None
		})
		// Objects carry their own CRC-32C; only send checksums the API
		// requires, which every S3-compatible server understands.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		prefix += "/"
	}
	s := &Store{Client: client, Bucket: u.Host, Prefix: prefix, endpoint: endpoint}
	if _, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.Bucket)}); err != nil {
		return nil, s.explain("checking bucket", err)
	}
	return s, nil
}

// maxListResponse bounds the body of a listing's page: S3 sends at most
// 1,000 keys, a few hundred KiB; a hostile store's endless page is cut here
// instead of being decoded into memory.
const maxListResponse = 16 << 20

// boundedLists limits the bodies of answers to requests other than object
// GETs (listings, multi-object deletes), which the SDK decodes in memory.
type boundedLists struct{ c aws.HTTPClient }

func (b boundedLists) Do(r *http.Request) (*http.Response, error) {
	resp, err := b.c.Do(r)
	if err == nil && r.URL.Query().Has("list-type") || err == nil && r.URL.Query().Has("delete") {
		resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxListResponse}
	}
	return resp, err
}

type limitedBody struct {
	io.ReadCloser
	left int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, fmt.Errorf("the store's answer is longer than %d bytes, far more than an S3 listing page: a hostile or broken store", maxListResponse)
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.ReadCloser.Read(p)
	l.left -= int64(n)
	return n, err
}

func (s *Store) String() string {
	return "s3://" + s.Bucket + "/" + strings.TrimSuffix(s.Prefix, "/")
}

// explain turns SDK errors into one line that says what to do.
func (s *Store) explain(op string, err error) error {
	where := s.String()
	if s.endpoint != "" {
		where += " at " + s.endpoint
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchBucket", "NotFound":
			if op == "checking bucket" {
				return fmt.Errorf("s3: bucket %q does not exist at %s: create it first (aws s3 mb s3://%s)", s.Bucket, where, s.Bucket)
			}
		case "BadRequest", "InvalidBucketName":
			if op == "checking bucket" {
				return fmt.Errorf("s3: bucket %q at %s was refused (%s): check the bucket name (3-63 lowercase letters, digits, dots, hyphens) and region=", s.Bucket, where, ae.ErrorCode())
			}
		case "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch":
			return fmt.Errorf("s3: %s %s: access denied (%s): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile's rights", op, where, ae.ErrorCode())
		}
		return fmt.Errorf("s3: %s %s: %s: %s", op, where, ae.ErrorCode(), ae.ErrorMessage())
	}
	if strings.Contains(err.Error(), "failed to retrieve credentials") || strings.Contains(err.Error(), "no EC2 IMDS") {
		return fmt.Errorf("s3: %s %s: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE): %w", op, where, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("s3: %s %s: %w", op, where, err)
	}
	return fmt.Errorf("s3: %s %s: cannot reach the endpoint (check endpoint= and the network): %w", op, where, err)
}

// Put stores an object; it returns once S3 has acknowledged it.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(s.Prefix + key),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return s.explain("writing "+key+" to", err)
	}
	return nil
}

// PutFile uploads the first size bytes of f in one PUT, streaming: the
// body is seekable, so the SDK can hash it for the signature and rewind.
func (s *Store) PutFile(ctx context.Context, key string, f *os.File, size int64) error {
	_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(s.Prefix + key),
		Body: io.NewSectionReader(f, 0, size), ContentLength: aws.Int64(size),
	})
	if err != nil {
		return s.explain("writing "+key+" to", err)
	}
	return nil
}

var _ replica.MetaStore = (*Store)(nil)

// PutIf is a conditional PUT (If-None-Match: * or If-Match: etag).
func (s *Store) PutIf(ctx context.Context, key string, data []byte, match string) (string, error) {
	return s.putIf(ctx, key, data, match, nil)
}

// PutIfAbsentMeta is a PUT with If-None-Match: * and user metadata.
func (s *Store) PutIfAbsentMeta(ctx context.Context, key string, data []byte, meta map[string]string) error {
	_, err := s.putIf(ctx, key, data, "", meta)
	return err
}

func (s *Store) putIf(ctx context.Context, key string, data []byte, match string, meta map[string]string) (string, error) {
	in := &s3.PutObjectInput{
		Bucket: aws.String(s.Bucket), Key: aws.String(s.Prefix + key),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		Metadata: meta,
	}
	if match == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(match)
	}
	out, err := s.Client.PutObject(ctx, in)
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			switch ae.ErrorCode() {
			case "PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey":
				return "", fmt.Errorf("%s: %w", key, replica.ErrPrecondition)
			}
		}
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusPreconditionFailed {
			return "", fmt.Errorf("%s: %w", key, replica.ErrPrecondition)
		}
		return "", s.explain("writing "+key+" to", err)
	}
	return aws.ToString(out.ETag), nil
}

// getObject sends a GET; a missing object is fs.ErrNotExist.
func (s *Store) getObject(ctx context.Context, in *s3.GetObjectInput, key string) (*s3.GetObjectOutput, error) {
	in.Bucket, in.Key = aws.String(s.Bucket), aws.String(s.Prefix+key)
	out, err := s.Client.GetObject(ctx, in)
	if err != nil {
		var nsk *types.NoSuchKey
		var ae smithy.APIError
		if errors.As(err, &nsk) || (errors.As(err, &ae) && ae.ErrorCode() == "NotFound") {
			return nil, fmt.Errorf("%s/%s: %w", s, key, fs.ErrNotExist)
		}
		return nil, err
	}
	return out, nil
}

// Get downloads an object.
func (s *Store) Get(ctx context.Context, key string) ([]byte, string, error) {
	out, err := s.getObject(ctx, &s3.GetObjectInput{}, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", err
	}
	if err != nil {
		return nil, "", s.explain("reading "+key+" from", err)
	}
	defer out.Body.Close()
	if n := aws.ToInt64(out.ContentLength); n > replica.MaxInMemoryObject {
		return nil, "", s.tooLarge(key, n)
	}
	var buf bytes.Buffer
	if n := aws.ToInt64(out.ContentLength); n > 0 {
		buf.Grow(int(n))
	}
	// The length announced may lie: never read more than the bound.
	if _, err := io.Copy(&buf, io.LimitReader(out.Body, replica.MaxInMemoryObject+1)); err != nil {
		return nil, "", s.explain("reading "+key+" from", err)
	}
	if buf.Len() > replica.MaxInMemoryObject {
		return nil, "", s.tooLarge(key, int64(buf.Len()))
	}
	return buf.Bytes(), aws.ToString(out.ETag), nil
}

func (s *Store) tooLarge(key string, n int64) error {
	return fmt.Errorf("s3: %s in %s holds at least %d bytes, more than lnvault ever writes in such an object (%d): not an lnvault object, or a hostile store; it was not read: %w",
		key, s, n, replica.MaxInMemoryObject, lnvault.ErrCorrupt)
}

// GetTo downloads an object into w.
func (s *Store) GetTo(ctx context.Context, key string, w io.Writer) (string, error) {
	out, err := s.getObject(ctx, &s3.GetObjectInput{}, key)
	if errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err != nil {
		return "", s.explain("reading "+key+" from", err)
	}
	defer out.Body.Close()
	we := &errWriter{w: w}
	if _, err := io.Copy(we, out.Body); err != nil {
		if we.err != nil {
			return "", we.err
		}
		return "", s.explain("reading "+key+" from", err)
	}
	return aws.ToString(out.ETag), nil
}

// errWriter tells w's errors from the download's.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

// GetRange downloads the first n bytes of an object (a ranged GET).
func (s *Store) GetRange(ctx context.Context, key string, n int64) ([]byte, error) {
	data, _, err := s.GetMeta(ctx, key, n)
	return data, err
}

// GetMeta returns at most the first n bytes of an object and its metadata.
func (s *Store) GetMeta(ctx context.Context, key string, n int64) ([]byte, map[string]string, error) {
	if n <= 0 {
		return nil, nil, nil
	}
	out, err := s.getObject(ctx, &s3.GetObjectInput{Range: aws.String(fmt.Sprintf("bytes=0-%d", n-1))}, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "InvalidRange" {
			return nil, nil, nil // an empty object
		}
		return nil, nil, s.explain("reading "+key+" from", err)
	}
	defer out.Body.Close()
	// A server that ignores Range sends the whole object: read n bytes only.
	data, err := io.ReadAll(io.LimitReader(out.Body, n))
	if err != nil {
		return nil, nil, s.explain("reading "+key+" from", err)
	}
	return data, out.Metadata, nil
}

// List lists every object under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]replica.ObjectInfo, error) {
	var out []replica.ObjectInfo
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.Bucket), Prefix: aws.String(s.Prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, s.explain("listing", err)
		}
		if len(out)+len(page.Contents) > replica.MaxListed {
			return nil, fmt.Errorf("s3: %s lists more than %d objects, far more than an lnvault replica holds (compact it, or is the prefix shared with something else?)", s, replica.MaxListed)
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), s.Prefix)
			out = append(out, replica.ObjectInfo{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)})
		}
	}
	return out, nil
}

// Delete removes objects with DeleteObjects (up to 1000 per request).
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		ids := make([]types.ObjectIdentifier, n)
		for i, k := range keys[:n] {
			ids[i] = types.ObjectIdentifier{Key: aws.String(s.Prefix + k)}
		}
		out, err := s.Client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(s.Bucket), Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return s.explain("deleting objects in", err)
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) == "NoSuchKey" {
				continue
			}
			return fmt.Errorf("s3: deleting %s in %s: %s: %s", aws.ToString(e.Key), s, aws.ToString(e.Code), aws.ToString(e.Message))
		}
		keys = keys[n:]
	}
	return nil
}

func (s *Store) Close() error { return nil }
