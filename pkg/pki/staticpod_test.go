package pki_test

import (
	"reflect"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

func TestParseStaticPodAndContainerFlags(t *testing.T) {
	pod, err := pki.ParseStaticPod([]byte(`apiVersion: v1
kind: Pod
spec:
  containers:
  - name: etcd
    command: [etcd, --name=cp-1, --data-dir=/var/lib/etcd, --snapshot-count, "10000", --name=cp-2]
    args: [--listen-client-urls=https://127.0.0.1:2379, -v=2, --empty=]
  - name: sidecar
    command: [sleep, --other=1]
`))
	must(t, err)
	got := pki.ContainerFlags(pod.Spec.Containers[0])
	want := map[string]string{"name": "cp-2", "data-dir": "/var/lib/etcd", "listen-client-urls": "https://127.0.0.1:2379", "empty": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("flags %v, want %v", got, want)
	}
	for name, bad := range map[string]string{"no container": "apiVersion: v1\nkind: Pod\nspec: {}\n", "not YAML": "spec: [", "wrong type": "spec: {containers: 3}"} {
		if _, err := pki.ParseStaticPod([]byte(bad)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
