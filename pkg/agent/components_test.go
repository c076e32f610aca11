package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// kubeadm's manifests name their probe ports ("probe-port").
func TestStaticPodsFromKubeadmManifests(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	want := map[string]string{
		"kube-apiserver":          "https://192.0.2.10:6443/readyz",
		"etcd":                    "http://127.0.0.1:2381/livez",
		"kube-controller-manager": "https://127.0.0.1:10257/healthz",
		"kube-scheduler":          "https://127.0.0.1:10259/healthz",
	}
	for name, u := range want {
		sp, err := readStaticPod(root, name)
		if err != nil {
			t.Fatal(err)
		}
		got, err := sp.healthURL()
		if err != nil || got != u {
			t.Errorf("%s: health URL %q (%v), want %q", name, got, err, u)
		}
	}
	sp, _ := readStaticPod(root, "etcd")
	if addr, err := hostPort(sp.flags["listen-client-urls"]); err != nil || addr != "127.0.0.1:2379" {
		t.Errorf("etcd client address %q %v", addr, err)
	}
}

func TestFindProcessesByArgv0(t *testing.T) {
	proc := t.TempDir()
	fake := func(pid int, argv0 string) {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		must(t, os.MkdirAll(dir, 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte(argv0+"\x00--flag=x\x00"), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "stat"), []byte(strconv.Itoa(pid)+" (with space) S 1 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0"), 0o644))
	}
	fake(10, "/usr/bin/kubelet")
	fake(11, "kube-controller-manager")
	fake(12, "/usr/local/bin/kube-controller-manager-helper")
	p, err := onlyProcess(proc, "kube-controller-manager")
	if err != nil || p.pid != 11 || p.startTick != 4242 {
		t.Errorf("got %+v %v", p, err)
	}
	if _, err := onlyProcess(proc, "etcd"); err == nil {
		t.Error("found an etcd that is not there")
	}
}
