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
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// Serve is the pod's main process: it only waits to be stopped, while the
// plugin execs actions in the container.
func Serve(ctx context.Context) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	return nil
}

var validID = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// Launcher starts the action filed under id so that it outlives the exec
// that asked for it, and returns a function that waits for its end.
type Launcher func(id string) (wait func() error, err error)

// DetachedLauncher runs "<self> agent run --id ID" in its own session.
// The container runtime kills an exec'd process when its stream goes away,
// and the stream goes away exactly when an action restarts kube-apiserver
// or the kubelet (they carry it). A detached child finishes the action (or
// its rollback) and files the result whatever happens to the stream.
func DetachedLauncher(resultsDir string) Launcher {
	return func(id string) (func() error, error) {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		logFile, err := os.OpenFile(filepath.Join(resultsDir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(self, "agent", "run", "--id", id)
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

// Exec reads one request from in, files it under its ID, has launch run
// it, and writes the result to out once it is filed.
func Exec(ctx context.Context, in io.Reader, out io.Writer, resultsDir string, launch Launcher) error {
	var req api.Request
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if !validID.MatchString(req.ID) {
		return fmt.Errorf("invalid request id %q", req.ID)
	}
	// Writes to a stdout whose stream is gone must not end this process
	// with SIGPIPE; the result is filed anyway.
	signal.Ignore(syscall.SIGPIPE)
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := pki.WriteAtomic(resultsDir, pki.File{Path: req.ID + ".request", Data: data, Mode: 0o600}); err != nil {
		return err
	}
	wait, err := launch(req.ID)
	if err != nil {
		return fmt.Errorf("starting the action: %w", err)
	}
	runErr := wait()
	result, err := os.ReadFile(filepath.Join(resultsDir, req.ID+".json"))
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(resultsDir, req.ID+".log"))
		return fmt.Errorf("the action ended without a result (%v): %s", runErr, log)
	}
	_, err = out.Write(append(result, '\n'))
	return err
}

// RunFiled performs the request filed under id and files its result.
func (a *Agent) RunFiled(ctx context.Context, resultsDir, id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid request id %q", id)
	}
	data, err := os.ReadFile(filepath.Join(resultsDir, id+".request"))
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

// FetchResult waits up to wait for the result of request id and writes it
// to out. A request that was never filed is reported as such at once.
func FetchResult(ctx context.Context, id, resultsDir string, wait time.Duration, out io.Writer) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("invalid request id %q", id)
	}
	if _, err := os.Stat(filepath.Join(resultsDir, id+".request")); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("request %s never reached the agent", id)
	}
	deadline := time.Now().Add(wait)
	for {
		data, err := os.ReadFile(filepath.Join(resultsDir, id+".json"))
		if err == nil {
			_, err = out.Write(append(data, '\n'))
			return err
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("request %s is still running after %s", id, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
