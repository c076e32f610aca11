package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// failedRun is a rotation that renewed cp-1 and failed on w-1.
func failedRun() (*orchestrator.Report, error) {
	old, renewed := time.Date(2026, 4, 1, 10, 0, 0, 0, time.UTC), time.Date(2027, 3, 1, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	proxy := "kube-proxy authenticates with a ServiceAccount token in kubeadm clusters: no certificate file to renew; its pods are restarted"
	rep := &orchestrator.Report{Run: "rc-0123456789abcdef", User: "kubernetes-admin",
		Rows: []orchestrator.Row{{Node: "cp-1", Certificate: "apiserver", Path: "/etc/kubernetes/pki/apiserver.crt", OldSerial: "1", NewSerial: "2", OldNotAfter: old, NewNotAfter: renewed}},
		Nodes: []*orchestrator.NodeRecord{
			{Node: "cp-1", ControlPlane: true, Backups: []string{"b0"}, Verified: []string{"kube-apiserver serves apiserver serial 2 on 127.0.0.1:6443"},
				Restarted: []api.Restarted{{Component: "kube-scheduler", OldPID: 1, NewPID: 2, Seconds: 0.8}}, Notes: []string{proxy}},
			{Node: "w-1", Notes: []string{proxy}, Failure: &orchestrator.NodeFailure{Step: api.KubeletInstall, Outcome: "restored", Message: "injected failure"}},
		},
		Notes: []string{"kube-proxy: its DaemonSet's pods were restarted"}}
	return rep, &orchestrator.AgentError{Node: "w-1", Action: api.KubeletInstall, Outcome: api.Restored, Message: "injected failure"}
}

// With -o the report goes to stdout also when the run failed part-way,
// saying what was done and how it failed; the error is still returned (and
// so printed on stderr, with a non-zero exit).
func TestPrintRunObjectOnFailure(t *testing.T) {
	for _, format := range outputFormats {
		rep, runErr := failedRun()
		var out, errOut bytes.Buffer
		err := printRun(&out, &errOut, format, report.KindRotation, rep, runErr)
		if !errors.Is(err, runErr) {
			t.Errorf("%s: error %v, want the run's", format, err)
		}
		var got report.RotationReport
		data := out.Bytes()
		if format == "yaml" {
			if data, err = yaml.YAMLToJSON(data); err != nil {
				t.Fatal(err)
			}
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s: %v\n%s", format, err, out.String())
		}
		if got.APIVersion != report.APIVersion || got.Kind != report.KindRotation || got.Result != report.Failed || got.Error != runErr.Error() ||
			got.RunID != "rc-0123456789abcdef" || got.User != "kubernetes-admin" || len(got.Nodes) != 2 {
			t.Fatalf("%s: %+v", format, got)
		}
		cp, w := got.Nodes[0], got.Nodes[1]
		if c := cp.Certificates; len(c) != 1 || c[0].NewSerial != "2" || c[0].NewNotAfter.Format(time.RFC3339) != "2027-03-01T09:00:00Z" || c[0].OldNotAfter == nil {
			t.Errorf("%s: cp-1 certificates %+v", format, c)
		}
		if !cp.ControlPlane || cp.Restarted[0].DowntimeSeconds != 0.8 || cp.Backups[0] != "b0" || len(cp.Verified) != 1 {
			t.Errorf("%s: cp-1 %+v", format, cp)
		}
		if w.Failure == nil || w.Failure.Step != "kubelet-install" || w.Failure.Outcome != "restored" || w.Certificates == nil {
			t.Errorf("%s: w-1 %+v", format, w)
		}
		if strings.Contains(out.String(), "NODE") || !strings.Contains(errOut.String(), "note: node cp-1, w-1: kube-proxy authenticates") {
			t.Errorf("%s: stdout %q stderr %q", format, out.String(), errOut.String())
		}
	}
}

// Without -o: the table on stdout; notes, each said once, the backups and
// the run's ID on stderr.
func TestPrintRunTable(t *testing.T) {
	rep, _ := failedRun()
	var out, errOut bytes.Buffer
	if err := printRun(&out, &errOut, "", report.KindRotation, rep, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "cp-1  apiserver    1 -> 2") {
		t.Errorf("table:\n%s", out.String())
	}
	want := []string{
		"note: kube-proxy: its DaemonSet's pods were restarted",
		"note: node cp-1, w-1: kube-proxy authenticates with a ServiceAccount token in kubeadm clusters: no certificate file to renew; its pods are restarted",
		"note: node cp-1: previous files backed up in /etc/kubernetes/rotate-certs-backup/b0",
		"run rc-0123456789abcdef: the nodes keep backups of the replaced files; undo it with: kubectl rotate-certs rollback --run rc-0123456789abcdef",
	}
	if got := strings.TrimSpace(errOut.String()); got != strings.Join(want, "\n") {
		t.Errorf("stderr:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

func TestReportResult(t *testing.T) {
	rep := &orchestrator.Report{}
	for err, want := range map[error]string{
		nil:                report.Succeeded,
		errors.New("boom"): report.Failed,
		fmt.Errorf("%w (x); completed nodes: none", orchestrator.ErrInterrupted): report.Interrupted,
	} {
		if got := toReport(report.KindRotation, rep, err); got.Result != want || got.Nodes == nil {
			t.Errorf("%v: result %s, want %s", err, got.Result, want)
		}
	}
}

func TestRollbackPlanTable(t *testing.T) {
	rep := &orchestrator.Report{DryRun: true, Run: "rc-00000000000000bb", RolledBack: "rc-0123456789abcdef",
		Nodes: []*orchestrator.NodeRecord{{Node: "cp-1", Restore: []string{"/etc/kubernetes/admin.conf"}}}}
	var out, errOut bytes.Buffer
	if err := printRun(&out, &errOut, "", report.KindRollback, rep, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "cp-1  rc-0123456789abcdef  /etc/kubernetes/admin.conf") || !strings.Contains(errOut.String(), "dry run: nothing was changed") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	}
}
