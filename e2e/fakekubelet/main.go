// Command fakekubelet is a kubelet stand-in for kubelet-guard's e2e tests.
//
// It is built the way a v1.37 kubelet with a CRI runtime is: the kubelet-facing
// HTTPS handlers (this file) validate the request like pkg/kubelet/server does,
// ask a CRI streaming server (k8s.io/cri-streaming, the library CRI-O and the
// kubelet's dockershim used) for a one-time URL and proxy the upgrade to it with
// apimachinery's UpgradeAwareHandler. WebSocket v5 exec/attach and tunnelled
// WebSocket port-forward are translated to SPDY with the apiserver's translator
// exactly as the kubelet does under ExtendWebSocketsToKubelet (beta, on in 1.36+).
// Container logs are read with the kubelet's own CRI log reader
// (k8s.io/cri-client/pkg/logs). Only the "containers" are fake: see runtime.go.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream/wsstream"
	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/apiserver/pkg/util/flushwriter"
	translator "k8s.io/apiserver/pkg/util/proxy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/logs"
	"k8s.io/cri-streaming/pkg/streaming"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	_ "k8s.io/kubernetes/pkg/apis/core/install" // url.Values -> v1.PodLogOptions conversions, as in the kubelet
	"k8s.io/kubernetes/pkg/apis/core/v1/validation"
)

type kubelet struct {
	logDir  string
	streams streaming.Server
}

func main() {
	listen := flag.String("listen", "127.0.0.1:10250", "loopback host:port to serve HTTPS on")
	certFile := flag.String("tls-cert-file", "", "serving certificate (PEM)")
	keyFile := flag.String("tls-private-key-file", "", "serving key (PEM)")
	clientCA := flag.String("client-ca-file", "", "if set, require client certificates signed by this CA")
	logDir := flag.String("log-dir", "", "directory of <ns>_<pod>_<container>.log CRI-format logs; these files define the pods and containers that exist")
	attachCmd := flag.String("attach-command", "cat", "main process of every container (what attach attaches to), split on spaces")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *logDir == "" {
		log.Fatal("--tls-cert-file, --tls-private-key-file and --log-dir are required")
	}
	if err := requireLoopback(*listen); err != nil {
		log.Fatal(err)
	}

	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *clientCA != "" {
		pem, err := os.ReadFile(*clientCA)
		if err != nil {
			log.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			log.Fatalf("no certificates in %s", *clientCA)
		}
		// The real kubelet requests a cert and lets its authenticator verify it;
		// requiring one at the TLS layer gives the same identity check here.
		tlsCfg.ClientAuth = tls.RequireAndVerifyClientCert
		tlsCfg.ClientCAs = pool
	}

	// The CRI streaming server listens on loopback over plain HTTP, like
	// containerd's and CRI-O's default stream server.
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = sln.Addr().String()
	cfg.BaseURL = &url.URL{Scheme: "http", Host: cfg.Addr}
	rt := newRuntime(*logDir, strings.Fields(*attachCmd))
	streams, err := streaming.NewServer(cfg, rt)
	if err != nil {
		log.Fatal(err)
	}
	go func() { log.Fatal(http.Serve(sln, streams)) }()

	k := &kubelet{logDir: *logDir, streams: streams}
	mux := http.NewServeMux()
	for _, m := range []string{"GET", "POST"} {
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{container}", k.serveExec)
		mux.HandleFunc(m+" /exec/{ns}/{pod}/{uid}/{container}", k.serveExec)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{container}", k.serveExec)
		mux.HandleFunc(m+" /attach/{ns}/{pod}/{uid}/{container}", k.serveExec)
		mux.HandleFunc(m+" /portForward/{ns}/{pod}", k.servePortForward)
		mux.HandleFunc(m+" /portForward/{ns}/{pod}/{uid}", k.servePortForward)
	}
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", k.serveLogs)
	mux.HandleFunc("GET /pods", k.servePods)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("GET /metrics/resource", k.serveResourceMetrics)

	srv := &http.Server{
		Addr:      *listen,
		Handler:   logRequests(mux),
		TLSConfig: tlsCfg,
		// Same limits as the kubelet's server (pkg/kubelet/server.ListenAndServeKubeletServer).
		ReadTimeout:    4 * 60 * time.Minute,
		WriteTimeout:   4 * 60 * time.Minute,
		IdleTimeout:    90 * time.Second,
		MaxHeaderBytes: 1 << 20,
	}
	log.Printf("fakekubelet serving on https://%s (streaming server http://%s)", *listen, cfg.Addr)
	log.Fatal(srv.ListenAndServeTLS(*certFile, *keyFile))
}

func requireLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("--listen %s: only loopback addresses are allowed", hostport)
	}
	return nil
}

func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := "-"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			user = r.TLS.PeerCertificates[0].Subject.String()
		}
		// Stream protocols offered, minus any bearer token carried in the
		// WebSocket protocol list.
		var offered []string
		for _, h := range []string{"X-Stream-Protocol-Version", "Sec-Websocket-Protocol"} {
			for _, v := range r.Header.Values(h) {
				for _, p := range strings.Split(v, ",") {
					if p = strings.TrimSpace(p); !strings.HasPrefix(p, "base64url.bearer.authorization.k8s.io.") {
						offered = append(offered, p)
					}
				}
			}
		}
		log.Printf("%s %s %s proto=%s upgrade=%q protocols=%q user=%q", r.RemoteAddr, r.Method, r.URL.RequestURI(),
			r.Proto, r.Header.Get("Upgrade"), strings.Join(offered, ","), user)
		h.ServeHTTP(w, r)
	})
}

// containers lists the containers of a pod from the log files in --log-dir.
func (k *kubelet) containers(ns, pod string) []string {
	files, _ := filepath.Glob(filepath.Join(k.logDir, ns+"_"+pod+"_*.log"))
	var out []string
	for _, f := range files {
		out = append(out, strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), ns+"_"+pod+"_"), ".log"))
	}
	return out
}

func (k *kubelet) hasContainer(ns, pod, c string) bool {
	for _, x := range k.containers(ns, pod) {
		if x == c {
			return true
		}
	}
	return false
}

// responder matches the kubelet's: proxy errors become a plain 500.
type responder struct{}

func (responder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	log.Printf("error while proxying request: %v", err)
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

// serveExec mirrors the kubelet's getExec/getAttach.
func (k *kubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	attach := strings.HasPrefix(r.URL.Path, "/attach/")
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if len(k.containers(ns, pod)) == 0 {
		http.Error(w, "pod does not exist", http.StatusNotFound)
		return
	}
	var loc string
	switch {
	case !k.hasContainer(ns, pod, ctr):
		// The kubelet's findContainer error is not a gRPC status, hence 500.
		err = fmt.Errorf("container not found (%q)", ctr)
	case attach:
		var resp *runtimeapi.AttachResponse
		resp, err = k.streams.GetAttach(&runtimeapi.AttachRequest{ContainerId: ns + "/" + pod + "/" + ctr,
			Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY})
		if err == nil {
			loc = resp.Url
		}
	default:
		var resp *runtimeapi.ExecResponse
		resp, err = k.streams.GetExec(&runtimeapi.ExecRequest{ContainerId: ns + "/" + pod + "/" + ctr,
			Cmd: r.URL.Query()["command"], Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY})
		if err == nil {
			loc = resp.Url
		}
	}
	if err != nil {
		_ = streaming.WriteError(err, w)
		return
	}
	u, _ := url.Parse(loc)
	var h http.Handler = proxy.NewUpgradeAwareHandler(u, nil, false, true, responder{})
	if wsstream.IsWebSocketRequestWithStreamCloseProtocol(r) {
		h = translator.NewStreamTranslatorHandler(u, nil, 0, translator.Options{
			Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Tty: opts.TTY})
	}
	h.ServeHTTP(w, r)
}

// servePortForward mirrors the kubelet's getPortForward.
func (k *kubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	ns, pod := r.PathValue("ns"), r.PathValue("pod")
	tunnel := wsstream.IsWebSocketRequestWithTunnelingProtocol(r)
	opts := &portforward.V4Options{}
	if !tunnel {
		var err error
		if opts, err = portforward.NewV4Options(r); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	if len(k.containers(ns, pod)) == 0 {
		http.Error(w, "pod does not exist", http.StatusNotFound)
		return
	}
	if uid := r.PathValue("uid"); uid != "" && types.UID(uid) != podUID(ns, pod) {
		http.Error(w, "pod not found", http.StatusNotFound)
		return
	}
	resp, err := k.streams.GetPortForward(&runtimeapi.PortForwardRequest{PodSandboxId: ns + "/" + pod, Port: opts.Ports})
	if err != nil {
		_ = streaming.WriteError(err, w)
		return
	}
	u, _ := url.Parse(resp.Url)
	var h http.Handler = proxy.NewUpgradeAwareHandler(u, nil, false, true, responder{})
	if tunnel {
		h = translator.NewTunnelingHandler(h)
	}
	h.ServeHTTP(w, r)
}

// serveLogs mirrors the kubelet's getContainerLogs, down to its error texts.
func (k *kubelet) serveLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("ns"), r.PathValue("pod"), r.PathValue("container")
	query := r.URL.Query()
	if tail := query.Get("tail"); tail != "" { // legacy alias, as in the kubelet
		query["tailLines"] = []string{tail}
		if tail == "all" {
			delete(query, "tailLines")
		}
	}
	opts := &v1.PodLogOptions{}
	if err := legacyscheme.ParameterCodec.DecodeParameters(query, v1.SchemeGroupVersion, opts); err != nil {
		http.Error(w, `{"message": "Unable to decode query."}`, http.StatusBadRequest)
		return
	}
	opts.TypeMeta = metav1.TypeMeta{}
	if errs := validation.ValidatePodLogOptions(opts); len(errs) > 0 {
		http.Error(w, `{"message": "Invalid request."}`, http.StatusUnprocessableEntity)
		return
	}
	if len(k.containers(ns, pod)) == 0 {
		http.Error(w, fmt.Sprintf("pod %q does not exist", pod), http.StatusNotFound)
		return
	}
	if !k.hasContainer(ns, pod, ctr) {
		http.Error(w, fmt.Sprintf("container %q not found in pod %q", ctr, pod), http.StatusNotFound)
		return
	}
	if opts.Previous {
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", ctr, pod), http.StatusBadRequest)
		return
	}
	fw := flushwriter.Wrap(w)
	stdout, stderr := fw, fw
	if opts.Stream != nil {
		switch *opts.Stream {
		case v1.LogStreamStdout:
			stderr = nil
		case v1.LogStreamStderr:
			stdout = nil
		case v1.LogStreamAll:
		default:
			http.Error(w, fmt.Sprintf("invalid stream type %q", *opts.Stream), http.StatusBadRequest)
			return
		}
	}
	lo := &logs.LogOptions{TailLines: opts.TailLines, LimitBytes: opts.LimitBytes, Follow: opts.Follow, Timestamp: opts.Timestamps}
	now := time.Now()
	if opts.SinceSeconds != nil {
		lo.Since = now.Add(-time.Duration(*opts.SinceSeconds) * time.Second)
	}
	if opts.SinceTime != nil && opts.SinceTime.After(lo.Since) {
		lo.Since = opts.SinceTime.Time
	}
	w.Header().Set("Transfer-Encoding", "chunked")
	path := filepath.Join(k.logDir, ns+"_"+pod+"_"+ctr+".log")
	if err := logs.ReadLogs(r.Context(), path, ns+"/"+pod+"/"+ctr, lo, statusOnly{}, stdout, stderr); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
	}
}

func podUID(ns, pod string) types.UID {
	return types.UID(fmt.Sprintf("fake-%s-%s", ns, pod))
}

// servePods lists the pods defined by --log-dir as the kubelet's /pods does.
func (k *kubelet) servePods(w http.ResponseWriter, _ *http.Request) {
	files, _ := filepath.Glob(filepath.Join(k.logDir, "*_*_*.log"))
	byPod := map[[2]string][]string{}
	for _, f := range files {
		parts := strings.SplitN(strings.TrimSuffix(filepath.Base(f), ".log"), "_", 3)
		byPod[[2]string{parts[0], parts[1]}] = append(byPod[[2]string{parts[0], parts[1]}], parts[2])
	}
	list := v1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for key, ctrs := range byPod {
		p := v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: key[0], Name: key[1], UID: podUID(key[0], key[1])},
			Status: v1.PodStatus{Phase: v1.PodRunning}}
		for _, c := range ctrs {
			p.Spec.Containers = append(p.Spec.Containers, v1.Container{Name: c})
		}
		list.Items = append(list.Items, p)
	}
	sort.Slice(list.Items, func(i, j int) bool {
		return list.Items[i].Namespace+"/"+list.Items[i].Name < list.Items[j].Namespace+"/"+list.Items[j].Name
	})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&list)
}

func (k *kubelet) serveResourceMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	now := time.Now().UnixMilli()
	fmt.Fprintf(w, "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n"+
		"# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total %.3f %d\n"+
		"# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n"+
		"# TYPE node_memory_working_set_bytes gauge\nnode_memory_working_set_bytes %d %d\n"+
		"# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n"+
		"# TYPE resource_scrape_error gauge\nresource_scrape_error 0\n",
		time.Since(started).Seconds(), now, 64<<20, now)
}

var started = time.Now()
