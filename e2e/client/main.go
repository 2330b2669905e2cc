// Command client drives a kubelet-shaped HTTPS endpoint (the fakekubelet, or
// kubelet-guard in front of it) directly with client-go's streaming code, the
// same code kubectl and the apiserver's translators use. It prints one
// "PASS check" / "FAIL check (reason)" line per check and exits 1 on any failure.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"
)

var (
	base      = flag.String("url", "", "kubelet-shaped endpoint, https://HOST:PORT")
	caFile    = flag.String("ca", "", "CA that signed the endpoint's serving cert")
	certFile  = flag.String("cert", "", "client certificate")
	keyFile   = flag.String("key", "", "client key")
	ns        = flag.String("namespace", "default", "pod namespace")
	pod       = flag.String("pod", "", "pod name")
	container = flag.String("container", "", "container name")
	checks    = flag.String("checks", "all", "comma-separated checks, or all: "+strings.Join(order, ","))
	bulkMiB   = flag.Int("bulk-mib", 8, "MiB pushed through exec stdin and pulled through port-forward")
	timeout   = flag.Duration("timeout", 60*time.Second, "per-check timeout")
)

var order = []string{"healthz", "pods", "not-found", "exec-spdy", "exec-spdy-exit-code", "exec-spdy-tty",
	"exec-websocket-fallback", "exec-websocket-v5", "portforward-spdy", "portforward-websocket"}

var all = map[string]func(context.Context, *rest.Config) error{
	"healthz":                 checkHealthz,
	"pods":                    checkPods,
	"not-found":               checkNotFound,
	"exec-spdy":               checkExecSPDY,
	"exec-spdy-exit-code":     checkExitCode,
	"exec-spdy-tty":           checkTTY,
	"exec-websocket-fallback": checkWebSocketFallback,
	"exec-websocket-v5":       checkWebSocketOnly,
	"portforward-spdy":        func(ctx context.Context, c *rest.Config) error { return checkPortForward(ctx, c, false) },
	"portforward-websocket":   func(ctx context.Context, c *rest.Config) error { return checkPortForward(ctx, c, true) },
}

func main() {
	klog.InitFlags(nil)
	flag.Parse()
	if *base == "" || *pod == "" || *container == "" {
		fmt.Fprintln(os.Stderr, "--url, --pod and --container are required")
		os.Exit(2)
	}
	cfg := &rest.Config{Host: *base, TLSClientConfig: rest.TLSClientConfig{CAFile: *caFile, CertFile: *certFile, KeyFile: *keyFile}}
	names := order
	if *checks != "all" {
		names = strings.Split(*checks, ",")
	}
	failed := 0
	for _, name := range names {
		fn := all[name]
		if fn == nil {
			fmt.Printf("FAIL %s (unknown check)\n", name)
			failed++
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		err := fn(ctx, cfg)
		cancel()
		if err != nil {
			fmt.Printf("FAIL %s (%v)\n", name, err)
			failed++
		} else {
			fmt.Printf("PASS %s\n", name)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

func endpoint(path string, q url.Values) *url.URL {
	u, _ := url.Parse(strings.TrimSuffix(*base, "/") + path)
	u.RawQuery = q.Encode()
	return u
}

func execURL(tty bool, cmd ...string) *url.URL {
	q := url.Values{"command": cmd, "input": {"1"}, "output": {"1"}}
	if tty {
		q.Set("tty", "1")
	} else {
		q.Set("error", "1")
	}
	return endpoint(fmt.Sprintf("/exec/%s/%s/%s", *ns, *pod, *container), q)
}

func get(ctx context.Context, cfg *rest.Config, path string) (int, []byte, error) {
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return 0, nil, err
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", endpoint(path, nil).String(), nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

func checkHealthz(ctx context.Context, cfg *rest.Config) error {
	code, body, err := get(ctx, cfg, "/healthz")
	if err != nil {
		return err
	}
	if code != 200 || string(body) != "ok" {
		return fmt.Errorf("got %d %q", code, body)
	}
	return nil
}

func checkPods(ctx context.Context, cfg *rest.Config) error {
	code, body, err := get(ctx, cfg, "/pods")
	if err != nil {
		return err
	}
	var list v1.PodList
	if err := json.Unmarshal(body, &list); err != nil || code != 200 {
		return fmt.Errorf("got %d, %v", code, err)
	}
	for _, p := range list.Items {
		if p.Namespace == *ns && p.Name == *pod {
			return nil
		}
	}
	return fmt.Errorf("pod %s/%s not in /pods", *ns, *pod)
}

func checkNotFound(ctx context.Context, cfg *rest.Config) error {
	code, body, err := get(ctx, cfg, "/no-such-path")
	if err != nil {
		return err
	}
	if code != 404 {
		return fmt.Errorf("got %d %q", code, body)
	}
	return nil
}

type result struct {
	stdout, stderr bytes.Buffer
	err            error
}

func run(ctx context.Context, e remotecommand.Executor, stdin io.Reader, tty bool) *result {
	r := &result{}
	opts := remotecommand.StreamOptions{Stdin: stdin, Stdout: &r.stdout, Tty: tty}
	if !tty {
		opts.Stderr = &r.stderr
	}
	r.err = e.StreamWithContext(ctx, opts)
	return r
}

// bulkCat pushes random bytes through `cat` and compares checksums.
func bulkCat(ctx context.Context, e remotecommand.Executor) error {
	data := make([]byte, *bulkMiB<<20)
	_, _ = rand.Read(data)
	r := run(ctx, e, bytes.NewReader(data), false)
	if r.err != nil {
		return r.err
	}
	if got, want := sha256.Sum256(r.stdout.Bytes()), sha256.Sum256(data); got != want {
		return fmt.Errorf("stdout %d bytes sha256 %s, sent %d bytes sha256 %s", r.stdout.Len(), hex.EncodeToString(got[:8]), len(data), hex.EncodeToString(want[:8]))
	}
	return nil
}

func checkExecSPDY(ctx context.Context, cfg *rest.Config) error {
	e, err := remotecommand.NewSPDYExecutor(cfg, "POST", execURL(false, "cat"))
	if err != nil {
		return err
	}
	return bulkCat(ctx, e)
}

func checkExitCode(ctx context.Context, cfg *rest.Config) error {
	e, err := remotecommand.NewSPDYExecutor(cfg, "POST", execURL(false, "sh", "-c", "cat; echo to-stderr >&2; exit 3"))
	if err != nil {
		return err
	}
	r := run(ctx, e, strings.NewReader("to-stdout\n"), false)
	var ee utilexec.ExitError
	if !errors.As(r.err, &ee) || ee.ExitStatus() != 3 {
		return fmt.Errorf("want exit code 3, got %v", r.err)
	}
	if r.stdout.String() != "to-stdout\n" || r.stderr.String() != "to-stderr\n" {
		return fmt.Errorf("stdout %q stderr %q", r.stdout.String(), r.stderr.String())
	}
	return nil
}

func checkTTY(ctx context.Context, cfg *rest.Config) error {
	e, err := remotecommand.NewSPDYExecutor(cfg, "POST", execURL(true, "sh", "-c", "tty; stty size"))
	if err != nil {
		return err
	}
	r := run(ctx, e, strings.NewReader(""), true)
	if r.err != nil {
		return r.err
	}
	if !strings.HasPrefix(r.stdout.String(), "/dev/pts/") {
		return fmt.Errorf("not a tty: %q", r.stdout.String())
	}
	return nil
}

func upgradeFailure(err error) bool {
	return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
}

// checkWebSocketFallback builds the executor exactly as kubectl exec does:
// WebSocket (v5) first, SPDY if the upgrade fails. It reports which one ran.
func checkWebSocketFallback(ctx context.Context, cfg *rest.Config) error {
	u := execURL(false, "cat")
	spdyExec, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
	if err != nil {
		return err
	}
	wsExec, err := remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
	if err != nil {
		return err
	}
	fellBack := false
	e, err := remotecommand.NewFallbackExecutor(wsExec, spdyExec, func(err error) bool {
		fellBack = upgradeFailure(err)
		if fellBack {
			fmt.Printf("INFO exec-websocket-fallback: websocket upgrade failed (%v), falling back to SPDY\n", err)
		}
		return fellBack
	})
	if err != nil {
		return err
	}
	if err := bulkCat(ctx, e); err != nil {
		return err
	}
	if !fellBack {
		fmt.Println("INFO exec-websocket-fallback: served over WebSocket v5, no fallback needed")
	}
	return nil
}

// checkWebSocketOnly uses the v5-only WebSocket executor with no fallback.
func checkWebSocketOnly(ctx context.Context, cfg *rest.Config) error {
	e, err := remotecommand.NewWebSocketExecutor(cfg, "GET", execURL(false, "cat").String())
	if err != nil {
		return err
	}
	return bulkCat(ctx, e)
}

// checkPortForward serves random bytes on a loopback port, forwards a local
// port to it through the endpoint and compares the downloaded checksum.
func checkPortForward(ctx context.Context, cfg *rest.Config, websocket bool) error {
	data := make([]byte, *bulkMiB<<20)
	_, _ = rand.Read(data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(data) })}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Close() }()
	podPort := ln.Addr().(*net.TCPAddr).Port

	u := endpoint(fmt.Sprintf("/portForward/%s/%s", *ns, *pod), nil)
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return err
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	if websocket {
		// No fallback: this check is about the tunnelled protocol itself.
		if dialer, err = portforward.NewSPDYOverWebsocketDialer(u, cfg); err != nil {
			return err
		}
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", podPort)}, stop, ready, io.Discard, os.Stderr)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	defer close(stop)
	select {
	case <-ready:
	case err := <-errc:
		return fmt.Errorf("port-forward ended: %v", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/", ports[0].Local), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return err
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("downloaded %d bytes, checksum mismatch", n)
	}
	return nil
}
