package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// A static pod manifest is a file on the node: untrusted input.
func FuzzReadStaticPod(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - command: [etcd, --listen-client-urls=https://127.0.0.1:2379]\n    ports: [{containerPort: 2381, name: probe-port}]\n    livenessProbe: {httpGet: {host: 127.0.0.1, path: /livez, port: probe-port}}\n"))
	f.Add([]byte("spec: {containers: [{readinessProbe: {httpGet: {port: nope}}}]}"))
	root := f.TempDir()
	dir := filepath.Join(root, pki.ManifestsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, "etcd.yaml"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		sp, err := readStaticPod(root, "etcd")
		if err != nil {
			return
		}
		_, _ = sp.healthURL()
		_, _ = hostPort(sp.flags["listen-client-urls"])
	})
}
