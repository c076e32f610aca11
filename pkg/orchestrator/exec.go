package orchestrator

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
)

// Executor runs a command in a pod's container and returns its stdout. It
// is an interface so the orchestration is tested without a cluster.
type Executor interface {
	Exec(ctx context.Context, namespace, pod, container string, command []string, stdin []byte) (stdout []byte, err error)
}

// NewExecutor returns an Executor that uses the pods/exec subresource, over
// WebSocket with a fallback to SPDY for older API servers (as kubectl does).
func NewExecutor(config *rest.Config, client kubernetes.Interface) Executor {
	return &podExecutor{config: config, client: client}
}

type podExecutor struct {
	config *rest.Config
	client kubernetes.Interface
}

func (e *podExecutor) Exec(ctx context.Context, namespace, pod, container string, command []string, stdin []byte) ([]byte, error) {
	req := e.client.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: command, Stdin: stdin != nil, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(e.config, http.MethodGet, req.URL().String())
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(e.config, http.MethodPost, req.URL())
	if err != nil {
		return nil, err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}
	if stdin != nil {
		opts.Stdin = bytes.NewReader(stdin)
	}
	if err := exec.StreamWithContext(ctx, opts); err != nil {
		return stdout.Bytes(), fmt.Errorf("exec in %s/%s: %w (stderr: %s)", namespace, pod, err, tail(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}
