package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func at(s string) *time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return &t
}

// rotation is a report with every field set somewhere.
func rotation() *RotationReport {
	rep := NewRotationReport(KindRotation)
	rep.RunID, rep.User, rep.Result = "rc-0123456789abcdef", "kubernetes-admin", Failed
	rep.Error = "node w-1: kubelet-install: injected failure"
	rep.Notes = []string{"resuming run rc-00000000000000aa (interrupted, begun 2026-03-01T10:00:00Z): already done by it, and skipped: none"}
	rep.Nodes = []NodeReport{{
		Name: "cp-1", ControlPlane: true,
		Certificates: []Certificate{
			{Name: "apiserver", Path: "/etc/kubernetes/pki/apiserver.crt", OldSerial: "1234", NewSerial: "98765432109876543210",
				OldNotAfter: at("2026-04-01T10:00:00Z"), NewNotAfter: at("2027-03-01T10:00:00Z")},
			{Name: "etcd-server", Path: "/etc/kubernetes/pki/etcd/server.crt", OldSerial: "5", NewSerial: "6",
				OldNotAfter: at("2026-04-01T10:00:00Z"), NewNotAfter: at("2035-01-01T00:00:00Z"), CappedToCA: true},
		},
		Restarted: []Restart{{Component: "kube-controller-manager", OldPID: 100, NewPID: 200, DowntimeSeconds: 1.25}},
		Verified:  []string{"kube-apiserver serves apiserver serial 98765432109876543210 on 127.0.0.1:6443"},
		Backups:   []string{"20260301T100000Z-rc-0123456789abcdef-renew"},
		Notes:     []string{"etcd-server: validity capped at CA etcd-ca expiry 2035-01-01T00:00:00Z"},
	}, {
		Name: "w-1", Certificates: []Certificate{},
		Failure: &Failure{Step: "kubelet-install", Outcome: "restored", Message: "injected failure"},
	}}
	return rep
}

func rollbackPlan() *RotationReport {
	rep := NewRotationReport(KindRollback)
	rep.RunID, rep.DryRun, rep.RolledBackRun, rep.Result = "rc-00000000000000bb", true, "rc-0123456789abcdef", Succeeded
	rep.Nodes = []NodeReport{{Name: "cp-1", ControlPlane: true, Certificates: []Certificate{},
		FilesToRestore: []string{"/etc/kubernetes/admin.conf", "/etc/kubernetes/pki/apiserver.crt"}}}
	return rep
}

func status() *StatusReport {
	rep := NewStatusReport()
	rep.Certificates = []CertInfo{
		{Node: "cp-1", Name: "apiserver", Path: "/etc/kubernetes/pki/apiserver.crt", Service: "kube-apiserver", Subject: "CN=kube-apiserver",
			Serial: "1234", NotBefore: at("2026-03-01T10:00:00Z"), NotAfter: at("2027-03-01T10:00:00Z"), ResidualSeconds: 31536000,
			CA: "ca", KeyAlgorithm: "RSA-2048", SANs: []string{"kubernetes", "10.96.0.1"}},
		{Node: "cp-1", Name: "super-admin.conf", Path: "/etc/kubernetes/super-admin.conf", CA: "ca", Missing: true},
	}
	rep.CertificateAuthorities = []CertInfo{{Node: "cp-1", Name: "ca", Path: "/etc/kubernetes/pki/ca.crt", NotAfter: at("2036-03-01T10:00:00Z"), ResidualSeconds: 315360000}}
	rep.Errors = []NodeError{{Node: "w-1", Error: "the agent pod did not start within 5m0s"}}
	return rep
}

func caStatus() *CAStatusReport {
	rep := NewCAStatusReport()
	rep.CertificateAuthorities = []Authority{
		{ID: "3f1c0a9e5b7d2c48", CommonName: "kubernetes", NotAfter: *at("2036-03-01T10:00:00Z")},
		{ID: "a0b1c2d3e4f56789", CommonName: "kubernetes-next", NotAfter: *at("2036-06-01T10:00:00Z")},
	}
	rep.TrustPoints = []TrustPoint{
		{Node: "cp-1", Path: "/etc/kubernetes/pki/ca.crt", Reader: "kubeadm", Setting: "ca", CA: "ca", CAs: []string{"3f1c0a9e5b7d2c48"}},
		{Node: "w-1", Path: "/etc/kubernetes/kubelet.conf", Reader: "kubelet", Setting: "kubelet.conf certificate-authority-data", CA: "ca", CAs: []string{"3f1c0a9e5b7d2c48", "a0b1c2d3e4f56789"}},
		{Node: "w-1", Path: "/var/lib/kubelet/config.yaml", Reader: "kubelet", Setting: "clientCAFile", CA: "ca", CAs: []string{}, Error: "/var/lib/kubelet/config.yaml: file does not exist"},
	}
	rep.Signers = []TrustPoint{{Node: "cp-1", Path: "/etc/kubernetes/pki/ca.crt", Reader: "kube-controller-manager", Setting: "--cluster-signing-cert-file", CA: "ca", CAs: []string{"3f1c0a9e5b7d2c48"}}}
	rep.Certificates = []CertInfo{
		{Node: "cp-1", Name: "apiserver", Path: "/etc/kubernetes/pki/apiserver.crt", Service: "kube-apiserver", Subject: "CN=kube-apiserver",
			Serial: "1234", NotAfter: at("2027-03-01T10:00:00Z"), ResidualSeconds: 31536000, CA: "ca", Issuer: "3f1c0a9e5b7d2c48"},
		{Node: "w-1", Name: "kubelet-serving", Path: "/var/lib/kubelet/pki/kubelet.crt", Service: "kubelet", Issuer: "self-signed"},
	}
	rep.Findings = []string{"CA a0b1c2d3e4f56789 (kubernetes-next) is trusted by 1 of the 2 trust points of ca; not by cp-1:/etc/kubernetes/pki/ca.crt (kubeadm ca)"}
	return rep
}

// The JSON and YAML of each kind are what testdata/*.golden hold (go test
// -update rewrites them: review the diff, it is the schema scripts see), and
// both parse back into the same report.
func TestGoldenAndRoundTrip(t *testing.T) {
	for name, tc := range map[string]struct {
		obj   any
		fresh func() any
	}{
		"rotation":      {rotation(), func() any { return &RotationReport{} }},
		"rollback-plan": {rollbackPlan(), func() any { return &RotationReport{} }},
		"status":        {status(), func() any { return &StatusReport{} }},
		"ca-status":     {caStatus(), func() any { return &CAStatusReport{} }},
	} {
		t.Run(name, func(t *testing.T) {
			js, err := json.MarshalIndent(tc.obj, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			js = append(js, '\n')
			ym, err := yaml.Marshal(tc.obj)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name+".json.golden", js)
			golden(t, name+".yaml.golden", ym)

			fromJSON, fromYAML := tc.fresh(), tc.fresh()
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(fromJSON); err != nil {
				t.Fatal(err)
			}
			if err := yaml.UnmarshalStrict(ym, fromYAML); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(fromJSON, tc.obj) {
				t.Errorf("JSON does not round-trip:\n got %+v\nwant %+v", fromJSON, tc.obj)
			}
			if !reflect.DeepEqual(fromYAML, tc.obj) {
				t.Errorf("YAML does not round-trip:\n got %+v\nwant %+v", fromYAML, tc.obj)
			}
		})
	}
}

// Every report names its apiVersion and kind first, as Kubernetes objects do.
func TestTypeMeta(t *testing.T) {
	for _, obj := range []any{NewRotationReport(KindRecover), NewStatusReport(), NewCAStatusReport()} {
		js, _ := json.Marshal(obj)
		var meta struct{ APIVersion, Kind string }
		if err := json.Unmarshal(js, &meta); err != nil || meta.APIVersion != APIVersion || meta.Kind == "" {
			t.Errorf("%s: apiVersion %q kind %q (%v)", js, meta.APIVersion, meta.Kind, err)
		}
		if !bytes.HasPrefix(js, []byte(`{"apiVersion":`)) {
			t.Errorf("%s does not start with its type", js)
		}
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/report -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed (if on purpose: go test ./pkg/report -update, and say so in the README):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
