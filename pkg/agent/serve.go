package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// aliveFile is touched by every request; the agent pod exits when it has
// not been touched for its idle time (the plugin is gone).
const aliveFile = ".alive"

// ServeOptions shape the agent pod's main process.
type ServeOptions struct {
	ResultsDir string
	// Idle ends the pod when no request came for this long (the plugin
	// pings pods it keeps waiting). Zero: never.
	Idle time.Duration
	// Drain bounds how long a stop waits for running actions; their
	// transactions end on their own within api.TransactionTimeout.
	Drain time.Duration
	// Log receives what the pod's log should say.
	Log io.Writer
}

// Serve is the pod's main process: it waits while the plugin execs actions
// beside it. Stopped (SIGTERM, SIGINT, SIGHUP: the pod is deleted or
// reaches its deadline), it first waits for every running action to end,
// so a transaction is never cut off by its pod going away: its detached
// process runs in this container and dies with it.
func Serve(ctx context.Context, o ServeOptions) error {
	if o.Log == nil {
		o.Log = io.Discard
	}
	touch(o.ResultsDir)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(o.Log, "stopping: waiting for running actions to end")
			if running := waitActions(o.ResultsDir, o.Drain); len(running) > 0 {
				return fmt.Errorf("stopped with actions still running after %s: %s", o.Drain, strings.Join(running, ", "))
			}
			return nil
		case <-tick.C:
			if o.Idle <= 0 {
				continue
			}
			st, err := os.Stat(filepath.Join(o.ResultsDir, aliveFile))
			if err == nil && time.Since(st.ModTime()) > o.Idle && len(runningActions(o.ResultsDir)) == 0 {
				fmt.Fprintf(o.Log, "no request for %s: the plugin is gone; exiting\n", o.Idle)
				return nil
			}
		}
	}
}

// touch records a request (creating the results directory, private, where
// a transport runs the agent on the host).
func touch(dir string) {
	_ = os.MkdirAll(dir, 0o700)
	p := filepath.Join(dir, aliveFile)
	now := time.Now()
	if err := os.Chtimes(p, now, now); errors.Is(err, fs.ErrNotExist) {
		_ = os.WriteFile(p, nil, 0o600)
	}
}

// waitActions waits up to d for the running actions to end and returns
// those still running.
func waitActions(dir string, d time.Duration) []string {
	deadline := time.Now().Add(d)
	for {
		running := runningActions(dir)
		if len(running) == 0 || time.Now().After(deadline) {
			return running
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runningActions lists the filed requests whose process still holds them.
func runningActions(dir string) []string {
	matches, _ := filepath.Glob(filepath.Join(dir, "*.request"))
	var out []string
	for _, m := range matches {
		id := strings.TrimSuffix(filepath.Base(m), ".request")
		if _, err := os.Stat(filepath.Join(dir, id+".json")); err == nil {
			continue
		}
		if held(m) {
			out = append(out, id)
		}
	}
	return out
}

var validID = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// Launcher starts the action filed under id so that it outlives the exec
// that asked for it, and returns a function that waits for its end.
type Launcher func(id string) (wait func() error, err error)

// DetachedLauncher runs "<self> agent run --id ID" (with the same root and
// results directory) in its own session.
// The container runtime kills an exec'd process when its stream goes away,
// and the stream goes away exactly when an action restarts kube-apiserver
// or the kubelet (they carry it). A detached child finishes the action (or
// its rollback) and files the result whatever happens to the stream.
func DetachedLauncher(root, resultsDir string) Launcher {
	return func(id string) (func() error, error) {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		logFile, err := os.OpenFile(filepath.Join(resultsDir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(self, "agent", "--root", root, "--results", resultsDir, "run", "--id", id)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		detach(cmd)
		if err := cmd.Start(); err != nil {
			logFile.Close()
			return nil, err
		}
		return func() error {
			defer logFile.Close()
			return cmd.Wait()
		}, nil
	}
}

// writeResult prints one result as a line of JSON.
func writeResult(out io.Writer, res api.Result) error {
	if res.AgentVersion == "" {
		res.AgentVersion = version.Version
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = out.Write(append(data, '\n'))
	return err
}

// Exec reads one request from in, files it under its ID, has launch run
// it, and writes the result to out once it is filed. Whatever goes wrong,
// out gets a Result that says what became of the request.
func Exec(ctx context.Context, in io.Reader, out io.Writer, resultsDir string, launch Launcher) error {
	touch(resultsDir)
	var req api.Request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return writeResult(out, api.Result{Outcome: api.Unchanged, Error: fmt.Sprintf("reading the request: %v", err)})
	}
	if !validID.MatchString(req.ID) {
		return writeResult(out, api.Result{Node: req.Node, Outcome: api.Unchanged, Error: fmt.Sprintf("invalid request id %q", req.ID)})
	}
	// Writes to a stdout whose stream is gone must not end this process
	// with SIGPIPE; the result is filed anyway.
	signal.Ignore(syscall.SIGPIPE)
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := pki.WriteAtomic(resultsDir, pki.File{Path: req.ID + ".request", Data: data, Mode: 0o600}); err != nil {
		return writeResult(out, api.Result{Node: req.Node, Outcome: api.Unchanged, Error: err.Error()})
	}
	wait, err := launch(req.ID)
	if err != nil {
		return writeResult(out, api.Result{Node: req.Node, Outcome: api.Unchanged, Error: fmt.Sprintf("starting the action: %v", err)})
	}
	runErr := wait()
	return fileOrLost(out, resultsDir, req.ID, req.Node, runErr)
}

// fileOrLost writes the filed result of id, or a Lost one with the end of
// the action's log.
func fileOrLost(out io.Writer, resultsDir, id, node string, runErr error) error {
	result, err := os.ReadFile(filepath.Join(resultsDir, id+".json"))
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(resultsDir, id+".log"))
		return writeResult(out, api.Result{Node: node, Outcome: api.Lost,
			Error: fmt.Sprintf("the action ended without a result (%v): %s", runErr, tail(log))})
	}
	_, err = out.Write(append(result, '\n'))
	return err
}

// justFiled tells a request whose process may not have started yet.
func justFiled(path string) bool {
	st, err := os.Stat(path)
	return err == nil && time.Since(st.ModTime()) < 5*time.Second
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// RunFiled performs the request filed under id and files its result. It
// holds a lock on the request while it runs, which tells Serve and
// FetchResult that it is still running.
func (a *Agent) RunFiled(ctx context.Context, resultsDir, id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid request id %q", id)
	}
	path := filepath.Join(resultsDir, id+".request")
	release, err := hold(path)
	if err != nil {
		return err
	}
	defer release()
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var req api.Request
	if err := json.Unmarshal(data, &req); err != nil {
		return fmt.Errorf("request %s: %w", id, err)
	}
	res := a.Handle(ctx, req)
	out, err := json.Marshal(res)
	if err != nil {
		return err
	}
	return pki.WriteAtomic(resultsDir, pki.File{Path: id + ".json", Data: out, Mode: 0o600})
}

// FetchResult writes the result of request id to out, waiting up to wait
// while it runs: the filed result, or one whose outcome says the request
// never arrived, is still running, or was lost.
func FetchResult(ctx context.Context, id, resultsDir string, wait time.Duration, out io.Writer) error {
	touch(resultsDir)
	if !validID.MatchString(id) {
		return writeResult(out, api.Result{Outcome: api.Unchanged, Error: fmt.Sprintf("invalid request id %q", id)})
	}
	request := filepath.Join(resultsDir, id+".request")
	if _, err := os.Stat(request); errors.Is(err, fs.ErrNotExist) {
		return writeResult(out, api.Result{Outcome: api.NotReceived, Error: fmt.Sprintf("request %s never reached the agent", id)})
	}
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(filepath.Join(resultsDir, id+".json")); err == nil {
			return fileOrLost(out, resultsDir, id, "", nil)
		}
		if !held(request) && !justFiled(request) {
			// Not running: either it just filed its result, or it died.
			return fileOrLost(out, resultsDir, id, "", errors.New("its process is gone"))
		}
		if time.Now().After(deadline) {
			return writeResult(out, api.Result{Outcome: api.Running, Error: fmt.Sprintf("request %s is still running after %s", id, wait)})
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Ping records that the plugin is still there.
func Ping(resultsDir string) error {
	touch(resultsDir)
	return nil
}
