// Package realnode runs a real regtest Lightning network for tests: Bitcoin
// Core and Core Lightning from ../shared/ (or $LNVAULT_BITCOIND_BIN and
// $LNVAULT_LIGHTNINGD_BIN), with lnvault as a node's important plugin. Every
// wait has a timeout and says what it waited for.
package realnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lnvault/lnvault/clnrpc"
)

// Tools are the binaries a network needs.
type Tools struct {
	BitcoinBin   string // directory with bitcoind and bitcoin-cli
	LightningBin string // directory with lightningd and lightning-cli
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Find locates the binaries. The error names what to install.
func Find() (Tools, error) {
	shared := filepath.Join(repoRoot(), "..", "shared")
	t := Tools{
		BitcoinBin:   envOr("LNVAULT_BITCOIND_BIN", filepath.Join(shared, "bitcoind", "v31.0", "bin")),
		LightningBin: envOr("LNVAULT_LIGHTNINGD_BIN", filepath.Join(shared, "lightningd", "v26.06.6", "bin")),
	}
	for _, p := range []string{filepath.Join(t.BitcoinBin, "bitcoind"), filepath.Join(t.BitcoinBin, "bitcoin-cli"), filepath.Join(t.LightningBin, "lightningd")} {
		if _, err := os.Stat(p); err != nil {
			return t, fmt.Errorf("the real-node tests need Bitcoin Core v31 and Core Lightning v26.06 (../shared/bitcoind and ../shared/lightningd beside the repository, or set LNVAULT_BITCOIND_BIN and LNVAULT_LIGHTNINGD_BIN to their bin directories): %w", err)
		}
	}
	return t, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Bitcoind is a regtest bitcoind with a funded wallet.
type Bitcoind struct {
	tools   Tools
	Dir     string
	RPCPort int
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartBitcoind starts bitcoind in dir, creates wallet "w" and mines 101
// blocks so it has coins to spend.
func StartBitcoind(ctx context.Context, tools Tools, dir string) (*Bitcoind, error) {
	rpc, err := FreePort()
	if err != nil {
		return nil, err
	}
	p2p, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b := &Bitcoind{tools: tools, Dir: dir, RPCPort: rpc, done: make(chan struct{})}
	b.cmd = exec.Command(filepath.Join(tools.BitcoinBin, "bitcoind"), "-regtest", "-daemon=0", "-datadir="+dir,
		"-printtoconsole=0", "-rpcuser=u", "-rpcpassword=p", fmt.Sprintf("-rpcport=%d", rpc), "-rpcbind=127.0.0.1",
		"-rpcallowip=127.0.0.1", fmt.Sprintf("-port=%d", p2p), fmt.Sprintf("-bind=127.0.0.1:%d", p2p), "-listenonion=0",
		"-discover=0", "-dnsseed=0", "-fixedseeds=0", "-natpmp=0", "-fallbackfee=0.0002", "-txindex=1")
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	b.cmd.Stderr = &stderr
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting bitcoind: %w", err)
	}
	go func() { b.cmd.Wait(); close(b.done) }()
	if err := WaitFor(ctx, 60*time.Second, "bitcoind to answer RPC", func() (bool, error) {
		select {
		case <-b.done:
			return false, fmt.Errorf("bitcoind exited: %s", strings.TrimSpace(stderr.String()))
		default:
		}
		_, err := b.CLI(ctx, "getblockchaininfo")
		return err == nil, nil
	}); err != nil {
		b.Stop()
		return nil, err
	}
	if _, err := b.CLI(ctx, "createwallet", "w"); err != nil {
		b.Stop()
		return nil, err
	}
	if err := b.Mine(ctx, 101); err != nil {
		b.Stop()
		return nil, err
	}
	return b, nil
}

// CLIArgs are bitcoin-cli's connection arguments.
func (b *Bitcoind) CLIArgs() []string {
	return []string{"-regtest", "-datadir=" + b.Dir, "-rpcconnect=127.0.0.1", fmt.Sprintf("-rpcport=%d", b.RPCPort), "-rpcuser=u", "-rpcpassword=p"}
}

// CLI runs bitcoin-cli (wallet "w" for wallet calls) and returns its output.
func (b *Bitcoind) CLI(ctx context.Context, args ...string) (string, error) {
	all := append(b.CLIArgs(), "-rpcwallet=w")
	if len(args) > 0 && (args[0] == "createwallet" || args[0] == "getblockchaininfo" || args[0] == "getblockcount") {
		all = b.CLIArgs()
	}
	cmd := exec.CommandContext(ctx, filepath.Join(b.tools.BitcoinBin, "bitcoin-cli"), append(all, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("bitcoin-cli %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// Mine mines n blocks to the wallet.
func (b *Bitcoind) Mine(ctx context.Context, n int) error {
	addr, err := b.CLI(ctx, "getnewaddress")
	if err != nil {
		return err
	}
	_, err = b.CLI(ctx, "generatetoaddress", strconv.Itoa(n), addr)
	return err
}

// Height is the chain's height.
func (b *Bitcoind) Height(ctx context.Context) (int, error) {
	s, err := b.CLI(ctx, "getblockcount")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(s)
}

// Stop ends bitcoind.
func (b *Bitcoind) Stop() {
	if b.cmd.Process == nil {
		return
	}
	syscall.Kill(-b.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	}
}

// Node is one lightningd.
type Node struct {
	Name    string
	Dir     string // --lightning-dir
	Port    int
	Plugins []string // --important-plugin paths
	Args    []string // more options
	Env     []string // more environment, e.g. LNVAULT_SHUTDOWN=leave
	tools   Tools
	btc     *Bitcoind

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	rpc  *clnrpc.Client
	id   string
}

// NewNode prepares a node in dir (nothing runs yet).
func NewNode(tools Tools, btc *Bitcoind, name, dir string) (*Node, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "regtest"), 0o700); err != nil {
		return nil, err
	}
	return &Node{Name: name, Dir: dir, Port: port, tools: tools, btc: btc}, nil
}

// NetDir is the node's network directory: its database, lightning-rpc,
// backup.lock and the plugins' cwd.
func (n *Node) NetDir() string { return filepath.Join(n.Dir, "regtest") }

// DBPath is the node's database.
func (n *Node) DBPath() string { return filepath.Join(n.NetDir(), "lightningd.sqlite3") }

// LogPath is lightningd's log file.
func (n *Node) LogPath() string { return filepath.Join(n.Dir, "log") }

// RPC is a client for the node's lightning-rpc.
func (n *Node) RPC() *clnrpc.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.rpc == nil {
		n.rpc = clnrpc.New(filepath.Join(n.NetDir(), "lightning-rpc"))
	}
	return n.rpc
}

// Call is a shorthand for RPC().Call.
func (n *Node) Call(ctx context.Context, method string, params, result any) error {
	return n.RPC().Call(ctx, method, params, result)
}

// Start starts lightningd (in its own process group) with the plugins and
// waits until it answers getinfo. plugins nil: n.Plugins.
func (n *Node) Start(ctx context.Context) error {
	if err := n.Launch(); err != nil {
		return err
	}
	return n.WaitReady(ctx)
}

// Launch starts lightningd without waiting.
func (n *Node) Launch() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done:
		default:
			return fmt.Errorf("%s is already running", n.Name)
		}
	}
	args := []string{"--network=regtest", "--lightning-dir=" + n.Dir,
		"--bitcoin-cli=" + filepath.Join(n.tools.BitcoinBin, "bitcoin-cli"), "--bitcoin-datadir=" + n.btc.Dir,
		"--bitcoin-rpcconnect=127.0.0.1", fmt.Sprintf("--bitcoin-rpcport=%d", n.btc.RPCPort),
		"--bitcoin-rpcuser=u", "--bitcoin-rpcpassword=p", fmt.Sprintf("--bind-addr=127.0.0.1:%d", n.Port),
		"--log-file=" + n.LogPath(), "--log-level=debug", "--developer", "--dev-bitcoind-poll=1", "--dev-fast-gossip",
		"--alias=" + n.Name}
	for _, p := range n.Plugins {
		args = append(args, "--important-plugin="+p)
	}
	args = append(args, n.Args...)
	cmd := exec.Command(filepath.Join(n.tools.LightningBin, "lightningd"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), n.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done = cmd, done
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		if s := strings.TrimSpace(stderr.String()); s != "" && err != nil {
			n.err = fmt.Errorf("%w: %s", err, s)
		}
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// Running tells whether lightningd's process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// WaitReady waits until lightningd answers getinfo (and remembers its id).
func (n *Node) WaitReady(ctx context.Context) error {
	return WaitFor(ctx, 90*time.Second, n.Name+" to answer getinfo", func() (bool, error) {
		if !n.Running() {
			return false, fmt.Errorf("%s exited while starting: %v; log tail:\n%s", n.Name, n.ExitErr(), n.LogTail(25))
		}
		var info struct {
			ID string `json:"id"`
		}
		if err := n.Call(ctx, "getinfo", nil, &info); err != nil {
			return false, nil
		}
		n.mu.Lock()
		n.id = info.ID
		n.mu.Unlock()
		return true, nil
	})
}

// ID is the node's id (known once it has started).
func (n *Node) ID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.id
}

// ExitErr is how the last run ended.
func (n *Node) ExitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// Stop asks lightningd to stop (the `stop` RPC) and waits for its exit.
func (n *Node) Stop(ctx context.Context) error {
	if !n.Running() {
		return nil
	}
	var s any
	err := n.Call(ctx, "stop", nil, &s)
	if werr := n.WaitExit(ctx, 60*time.Second); werr != nil {
		return fmt.Errorf("%w (stop: %v)", werr, err)
	}
	return nil
}

// WaitExit waits for lightningd's process to end.
func (n *Node) WaitExit(ctx context.Context, d time.Duration) error {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("%s did not exit within %s; log tail:\n%s", n.Name, d, n.LogTail(25))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill SIGKILLs lightningd's whole process group (it, its subdaemons and
// plugins) and waits for it.
func (n *Node) Kill() {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
	// Plugins and subdaemons are in the group; give the kernel a moment to
	// reap them so the next start finds the database free.
	time.Sleep(50 * time.Millisecond)
}

// LogTail is the last n lines of lightningd's log.
func (n *Node) LogTail(k int) string {
	b, _ := os.ReadFile(n.LogPath())
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, "\n")
}

// LogCount counts the log lines that contain s.
func (n *Node) LogCount(s string) int {
	f, err := os.Open(n.LogPath())
	if err != nil {
		return 0
	}
	defer f.Close()
	c := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			c++
		}
	}
	return c
}

// WaitFor polls cond every 100 ms until it is true, it errors, or d passes.
func WaitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Fund sends btc to a new address of n, mines a block and waits until n sees
// the confirmed output.
func (n *Node) Fund(ctx context.Context, btc string) error {
	var addr struct {
		Bech32 string `json:"bech32"`
		P2TR   string `json:"p2tr"`
	}
	if err := n.Call(ctx, "newaddr", nil, &addr); err != nil {
		return err
	}
	a := addr.P2TR
	if a == "" {
		a = addr.Bech32
	}
	if a == "" {
		return fmt.Errorf("%s: newaddr gave no address", n.Name)
	}
	if _, err := n.btc.CLI(ctx, "sendtoaddress", a, btc); err != nil {
		return err
	}
	if err := n.btc.Mine(ctx, 1); err != nil {
		return err
	}
	return WaitFor(ctx, 60*time.Second, n.Name+" to see its confirmed funds", func() (bool, error) {
		var f struct {
			Outputs []struct {
				Status string `json:"status"`
			} `json:"outputs"`
		}
		if err := n.Call(ctx, "listfunds", nil, &f); err != nil {
			return false, nil
		}
		for _, o := range f.Outputs {
			if o.Status == "confirmed" {
				return true, nil
			}
		}
		return false, nil
	})
}

// Connect connects n to peer.
func (n *Node) Connect(ctx context.Context, peer *Node) error {
	return n.Call(ctx, "connect", map[string]any{"id": peer.ID(), "host": "127.0.0.1", "port": peer.Port}, nil)
}

// OpenChannel opens a channel of sat satoshis from n to peer (pushing
// pushMsat to it), mines 6 blocks and waits until both sides are normal.
func (n *Node) OpenChannel(ctx context.Context, peer *Node, sat, pushMsat int64) error {
	if err := n.Connect(ctx, peer); err != nil {
		return err
	}
	params := map[string]any{"id": peer.ID(), "amount": sat, "announce": false}
	if pushMsat > 0 {
		params["push_msat"] = pushMsat
	}
	if err := n.Call(ctx, "fundchannel", params, nil); err != nil {
		return err
	}
	if err := n.btc.Mine(ctx, 6); err != nil {
		return err
	}
	for _, x := range []*Node{n, peer} {
		other := peer
		if x == peer {
			other = n
		}
		if err := x.WaitChannelNormal(ctx, other); err != nil {
			return err
		}
	}
	return nil
}

// Channel is one entry of listpeerchannels.
type Channel struct {
	PeerID      string `json:"peer_id"`
	PeerConn    bool   `json:"peer_connected"`
	State       string `json:"state"`
	ChannelID   string `json:"channel_id"`
	ShortID     string `json:"short_channel_id"`
	ToUsMsat    int64  `json:"to_us_msat"`
	SpendableMs int64  `json:"spendable_msat"`
}

// Channels lists n's channels.
func (n *Node) Channels(ctx context.Context) ([]Channel, error) {
	var r struct {
		Channels []Channel `json:"channels"`
	}
	err := n.Call(ctx, "listpeerchannels", nil, &r)
	return r.Channels, err
}

// WaitChannelNormal waits until n has a CHANNELD_NORMAL channel with peer
// and is connected to it.
func (n *Node) WaitChannelNormal(ctx context.Context, peer *Node) error {
	return WaitFor(ctx, 90*time.Second, fmt.Sprintf("%s's channel with %s to be CHANNELD_NORMAL and connected", n.Name, peer.Name), func() (bool, error) {
		if !n.Running() {
			return false, fmt.Errorf("%s is not running: %v", n.Name, n.ExitErr())
		}
		cs, err := n.Channels(ctx)
		if err != nil {
			return false, nil
		}
		for _, c := range cs {
			if c.PeerID == peer.ID() && c.State == "CHANNELD_NORMAL" && c.PeerConn {
				return true, nil
			}
		}
		return false, nil
	})
}

// Invoice makes an invoice of msat on n and returns its bolt11.
func (n *Node) Invoice(ctx context.Context, msat int64, label string) (string, error) {
	var r struct {
		Bolt11 string `json:"bolt11"`
	}
	err := n.Call(ctx, "invoice", map[string]any{"amount_msat": msat, "label": label, "description": "lnvault test"}, &r)
	return r.Bolt11, err
}

// Pay pays bolt11 from n (xpay, the default pay in v26).
func (n *Node) Pay(ctx context.Context, bolt11 string) error {
	var r struct {
		Status string `json:"status"`
	}
	if err := n.Call(ctx, "pay", map[string]any{"bolt11": bolt11}, &r); err != nil {
		return err
	}
	if r.Status != "complete" {
		return fmt.Errorf("payment status %q", r.Status)
	}
	return nil
}

// PayFrom makes an invoice on to and pays it from from.
func PayFrom(ctx context.Context, from, to *Node, msat int64, label string) error {
	inv, err := to.Invoice(ctx, msat, label)
	if err != nil {
		return fmt.Errorf("invoice on %s: %w", to.Name, err)
	}
	if err := from.Pay(ctx, inv); err != nil {
		return fmt.Errorf("%s paying %s: %w", from.Name, to.Name, err)
	}
	return nil
}

// DataVersion is vars.data_version of a stopped node's database, read with
// the sqlite3 command line tool so no Go driver is involved.
func DataVersion(path string) (uint32, error) {
	out, err := exec.Command("sqlite3", "-readonly", path, "SELECT intval FROM vars WHERE name='data_version'").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("sqlite3 %s: %w: %s", path, err, ee.Stderr)
		}
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 32)
	return uint32(v), err
}

// JSON decodes raw JSON output into v.
func JSON(raw []byte, v any) error { return json.Unmarshal(raw, v) }

// DataVersionAfterCrash is DataVersion of a database whose writer was
// killed: a hot journal must be rolled back to read it, which a read-only
// open cannot do. It reads a copy (with its journal or WAL), leaving the
// node's files for lightningd to recover.
func DataVersionAfterCrash(path string) (uint32, error) {
	dir, err := os.MkdirTemp("", "lnv-dv-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	dst := filepath.Join(dir, filepath.Base(path))
	for _, suffix := range []string{"", "-journal", "-wal"} {
		data, err := os.ReadFile(path + suffix)
		if errors.Is(err, os.ErrNotExist) && suffix != "" {
			continue
		}
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(dst+suffix, data, 0o600); err != nil {
			return 0, err
		}
	}
	out, err := exec.Command("sqlite3", dst, "SELECT intval FROM vars WHERE name='data_version'").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return 0, fmt.Errorf("sqlite3 %s (a copy of %s): %w: %s", dst, path, err, ee.Stderr)
		}
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 32)
	return uint32(v), err
}
