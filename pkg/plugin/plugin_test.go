package plugin

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

func TestRotateFlagValidation(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"nothing asked":     {nil, "say what to rotate"},
		"all with service":  {[]string{"--all", "--service", "etcd"}, "exclude each other"},
		"unknown service":   {[]string{"--service", "etcd,kube-apiservr"}, `unknown service "kube-apiservr": valid services are etcd, kube-apiserver`},
		"bad restart":       {[]string{"--all", "--restart", "some"}, "--restart must be"},
		"short validity":    {[]string{"--all", "--validity", "10m"}, "at least 1h"},
		"no parallelism":    {[]string{"--all", "--parallelism", "0"}, `--parallelism: "0" is neither a count of at least 1 nor a percentage like 10%`},
		"empty node name":   {[]string{"--all", "--nodes", "a,,b"}, "empty node name"},
		"arguments refused": {[]string{"--all", "extra"}, "unknown command"},
		// expirationSeconds is an int32: 68 years would wrap around.
		"validity overflows":  {[]string{"--all", "--validity", "600000h"}, "longer than a CertificateSigningRequest can ask for"},
		"no backups kept":     {[]string{"--all", "--keep-backups", "0"}, "--keep-backups must be at least 1"},
		"bad output":          {[]string{"--all", "-o", "xml"}, "--output must be json or yaml"},
		"bad rollback output": {[]string{"rollback", "-o", "wide"}, "--output must be json or yaml"},
		"bad recover output":  {[]string{"recover", "--kind-cluster", "x", "-o", "table"}, "--output must be json or yaml"},
		"bad rollback run":    {[]string{"rollback", "--run", "../etc"}, "is not a run ID"},
		"recover, no nodes":   {[]string{"recover"}, "exactly one of --kind-cluster NAME, --ssh HOSTS or --local"},
		"recover, two ways":   {[]string{"recover", "--local", "--kind-cluster", "x"}, "exactly one of"},
		"recover, bad hosts":  {[]string{"recover", "--ssh", "a,,b@"}, `--ssh: SSH target "b@": no host`},
		"recover, kind file":  {[]string{"recover", "--kind-cluster", "x", "--write-kubeconfig", "f"}, "--write-kubeconfig is for --ssh and --local"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := NewCmdRotateCerts(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
			cmd.SetArgs(append(tc.args, "--kubeconfig", "/nonexistent"))
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestNodesAreDeduplicated(t *testing.T) {
	o := NewRotateOptions(genericiooptions.IOStreams{}, nil)
	o.all, o.nodes, o.parallelism, o.timeout, o.image, o.restart, o.validity, o.keepBackups = true, []string{"a", " a", "b", "a"}, "1", time.Minute, "img", "needed", time.Hour, 1
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.nodes, ",") != "a,b" {
		t.Errorf("nodes %v, want a,b", o.nodes)
	}
}

func TestParseDays(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "1.5d": 36 * time.Hour, "72h": 72 * time.Hour} {
		if got, err := parseDays(in); err != nil || got != want {
			t.Errorf("%s: %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"d", "-1d", "soon", "-3h"} {
		if _, err := parseDays(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func statusNodes(now time.Time) []orchestrator.NodeStatus {
	soon, later := now.Add(10*24*time.Hour), now.Add(300*24*time.Hour)
	return []orchestrator.NodeStatus{
		{Node: "cp-1", Certs: []api.CertInfo{
			{Node: "cp-1", Name: "apiserver", NotAfter: &later, ResidualSeconds: int64(time.Until(later).Seconds()), CA: "ca"},
			{Node: "cp-1", Name: "kubelet-client", NotAfter: &soon, ResidualSeconds: int64(time.Until(soon).Seconds()), CA: "ca"},
			{Node: "cp-1", Name: "super-admin.conf", Missing: true, CA: "ca"},
		}, CAs: []api.CertInfo{{Node: "cp-1", Name: "ca", NotAfter: &later, ResidualSeconds: int64(time.Until(later).Seconds())}}},
		{Node: "w-1", Error: "the agent pod did not start within 5m0s"},
	}
}

func TestStatusReport(t *testing.T) {
	var out bytes.Buffer
	o := &StatusOptions{commonFlags: commonFlags{IOStreams: genericiooptions.IOStreams{Out: &out}}}
	err := o.report(statusNodes(time.Now()))
	if err == nil || !strings.Contains(err.Error(), "node w-1: the agent pod did not start") {
		t.Errorf("an unreadable node must fail the command: %v", err)
	}
	for _, want := range []string{"NODE", "RESIDUAL TIME", "EXTERNALLY MANAGED", "kubelet-client", "9d", "missing", "CERTIFICATE AUTHORITY"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStatusWarnWithinAndJSON(t *testing.T) {
	var out bytes.Buffer
	o := &StatusOptions{commonFlags: commonFlags{IOStreams: genericiooptions.IOStreams{Out: &out}}, output: "json", warnWithin: "30d"}
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	nodes := statusNodes(time.Now())[:1]
	err := o.report(nodes)
	if err == nil || !strings.Contains(err.Error(), "kubelet-client expires") || strings.Contains(err.Error(), "apiserver") {
		t.Errorf("--warn-within 30d must name exactly the certificate expiring in 10 days: %v", err)
	}
	var rep report.StatusReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.APIVersion != report.APIVersion || rep.Kind != report.KindStatus || len(rep.Certificates) != 3 || !rep.Certificates[2].Missing || rep.Certificates[0].Node != "cp-1" {
		t.Errorf("json %+v", rep)
	}
	o.warnWithin, o.warn = "1d", 24*time.Hour
	out.Reset()
	if err := o.report(nodes); err != nil {
		t.Errorf("nothing expires within a day: %v", err)
	}
}
