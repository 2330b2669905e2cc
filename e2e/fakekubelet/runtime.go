package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	criapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// runtime is the fake container runtime behind the streaming server. A
// "container" is ns/pod/name; exec runs the argv as a local process; each
// container has one main process (--attach-command) started on first attach,
// whose stdout/stderr go to every attached client and, CRI-formatted, to the
// container's log file; port-forward dials 127.0.0.1:<port>.
type runtime struct {
	logDir  string
	mainCmd []string

	mu    sync.Mutex
	procs map[string]*mainProc
}

func newRuntime(logDir string, mainCmd []string) *runtime {
	return &runtime{logDir: logDir, mainCmd: mainCmd, procs: map[string]*mainProc{}}
}

// statusOnly is what the kubelet's log reader gets as its CRI RuntimeService:
// it only asks ContainerStatus (while following); the embedded nil interface
// leaves every other method unimplemented.
type statusOnly struct{ criapi.RuntimeService }

// ContainerStatus reports every container as running, so `logs -f` follows
// until the client goes away, as it would for a live container.
func (statusOnly) ContainerStatus(context.Context, string, bool) (*runtimeapi.ContainerStatusResponse, error) {
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}, nil
}

func (r *runtime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	log.Printf("exec in %s: %q tty=%v", id, cmd, tty)
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	if tty {
		return execTTY(c, in, out, resize)
	}
	if out != nil {
		c.Stdout = out
	}
	if errw != nil {
		c.Stderr = errw
	}
	var stdin io.WriteCloser
	if in != nil {
		// A pipe we feed ourselves: with c.Stdin = in, Wait would block until the
		// client closes stdin even after the process has exited.
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		go func() { _, _ = io.Copy(stdin, in); _ = stdin.Close() }()
	}
	return exitError(c.Wait())
}

// execTTY runs c on a pty: one output stream, terminal resizes applied.
func execTTY(c *exec.Cmd, in io.Reader, out io.Writer, resize <-chan remotecommandserver.TerminalSize) error {
	ptmx, err := pty.StartWithSize(c, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		return err
	}
	defer func() { _ = ptmx.Close() }()
	if resize != nil {
		go func() {
			for size := range resize {
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			}
		}()
	}
	if in != nil {
		go func() { _, _ = io.Copy(ptmx, in) }()
	}
	copied := make(chan struct{})
	go func() {
		if out != nil {
			_, _ = io.Copy(out, ptmx) // ends with EIO once the process side closes
		} else {
			_, _ = io.Copy(io.Discard, ptmx)
		}
		close(copied)
	}()
	err = c.Wait()
	select { // drain what the process wrote before exiting
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	return exitError(err)
}

// exitError turns a non-zero exit into the utilexec.ExitError that ServeExec
// reports as NonZeroExitCode with the code.
func exitError(err error) error {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return err
	}
	code := ee.ExitCode()
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal()) // what a shell and container runtimes report
	}
	return utilexec.CodeExitError{Err: err, Code: code}
}

// mainProc is a container's main process; output fans out to attachers.
type mainProc struct {
	stdin io.WriteCloser
	done  chan struct{}

	mu   sync.Mutex
	subs map[*attacher]struct{}
}

type attacher struct{ out, err io.Writer }

func (r *runtime) mainProcess(id string) (*mainProc, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[id]; p != nil {
		return p, nil
	}
	c := exec.Command(r.mainCmd[0], r.mainCmd[1:]...)
	stdin, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := c.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, err
	}
	log.Printf("started main process of %s: %q pid %d", id, r.mainCmd, c.Process.Pid)
	p := &mainProc{stdin: stdin, done: make(chan struct{}), subs: map[*attacher]struct{}{}}
	r.procs[id] = p
	logFile := filepath.Join(r.logDir, strings.ReplaceAll(id, "/", "_")+".log")
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(stdout, "stdout", logFile) }()
	go func() { defer wg.Done(); p.pump(stderr, "stderr", logFile) }()
	go func() {
		wg.Wait() // all output delivered before attachers are released
		err := c.Wait()
		log.Printf("main process of %s exited: %v", id, err)
		r.mu.Lock()
		delete(r.procs, id)
		r.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// pump copies one output stream to the attachers as it arrives and, line by
// line in CRI log format, to the container's log file, like a runtime's log
// driver.
func (p *mainProc) pump(src io.Reader, stream, logFile string) {
	buf := make([]byte, 32<<10)
	var pending []byte // log text not yet ended by a newline
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for a := range p.subs {
				w := a.out
				if stream == "stderr" && a.err != nil {
					w = a.err
				}
				if w != nil {
					_, _ = w.Write(buf[:n])
				}
			}
			p.mu.Unlock()
			pending = append(pending, buf[:n]...)
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				appendCRILog(logFile, stream, "F", pending[:i])
				pending = pending[i+1:]
			}
		}
		if err != nil {
			if len(pending) > 0 {
				appendCRILog(logFile, stream, "P", pending)
			}
			return
		}
	}
}

// criTimeFormat is RFC3339NanoFixed, the form `logs --timestamps` prints, so a
// test can compare a file's timestamps with the kubelet's output verbatim.
const criTimeFormat = "2006-01-02T15:04:05.000000000Z07:00"

func appendCRILog(path, stream, tag string, text []byte) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		log.Printf("log %s: %v", path, err)
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintf(f, "%s %s %s %s\n", time.Now().UTC().Format(criTimeFormat), stream, tag, text)
}

// Attach joins the container's main process. Stdin follows stdinOnce
// semantics: when the attached client closes stdin, the process's stdin is
// closed, the process ends, and the next attach starts a fresh one.
func (r *runtime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommandserver.TerminalSize) error {
	p, err := r.mainProcess(id)
	if err != nil {
		return err
	}
	if resize != nil {
		go func() {
			for range resize { // the main process has no pty; sizes are ignored
			}
		}()
	}
	a := &attacher{}
	if out != nil {
		a.out = out
	}
	if errw != nil && !tty {
		a.err = errw
	}
	p.mu.Lock()
	p.subs[a] = struct{}{}
	p.mu.Unlock()
	defer func() { p.mu.Lock(); delete(p.subs, a); p.mu.Unlock() }()
	if in != nil {
		go func() { _, _ = io.Copy(p.stdin, in); _ = p.stdin.Close() }()
	}
	select {
	case <-ctx.Done():
	case <-p.done:
	}
	return nil
}

func (r *runtime) PortForward(ctx context.Context, sandbox string, port int32, stream io.ReadWriteCloser) error {
	defer func() { _ = stream.Close() }()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace %q: %w", port, sandbox, err)
	}
	defer func() { _ = conn.Close() }()
	go func() {
		_, _ = io.Copy(conn, stream)
		_ = conn.(*net.TCPConn).CloseWrite() // client finished sending
	}()
	_, err = io.Copy(stream, conn)
	return err
}
